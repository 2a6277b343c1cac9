//! A real etcd cluster for the fleet tests: `n` members, each in a namespace of its own linked
//! to a router namespace (member i at 10.40.i.2, the router at 10.40.i.1), so LB nodes behind
//! the same router reach every member. Members can be killed and started again on their data.
//! With TLS, clients reach the members over https and must show a client certificate signed by
//! the cluster's own CA (`--client-cert-auth`); the members talk to each other over http.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::netns::{veth, End, NetNs};

pub struct Member {
    pub ns: NetNs,
    pub addr: String,
    child: Option<Child>,
}

pub struct EtcdCluster {
    pub members: Vec<Member>,
    dir: PathBuf,
    initial_cluster: String,
    /// The router's namespace, where `etcdctl` runs (it reaches every member).
    router: String,
    /// `root`'s password once `enable_auth` ran.
    pub root_password: Option<String>,
    /// With TLS: the CA's and a client's certificate and key.
    pub tls: Option<ClientTls>,
}

/// Files a client of a TLS cluster names: the CA to trust, its certificate and key (0600).
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The member's client URL over plain HTTP.
pub fn client_url(addr: &str) -> String {
    format!("http://{addr}:2379")
}

/// `openssl ARGS` in `dir`, which must succeed.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl (cargo xtask setup installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A certificate `name`.pem and key `name`.key (0600) signed by the CA in `dir`, for `usage`
/// (`serverAuth` with the member's address, or `clientAuth`).
fn issue(dir: &std::path::Path, name: &str, usage: &str, ip: Option<&str>) {
    let ext = format!("extendedKeyUsage={usage}\n{}", ip.map(|ip| format!("subjectAltName=IP:{ip}\n")).unwrap_or_default());
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext file");
    let (key, csr, pem, extfile) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
    let subject = format!("/CN={name}");
    openssl(
        dir,
        &["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subject],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            &extfile,
        ],
    );
    std::fs::set_permissions(dir.join(&key), std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
}

impl EtcdCluster {
    /// Starts `n` members behind `router` (which forwards) and waits until the cluster answers;
    /// with `tls`, clients must come over https with a certificate of the cluster's CA.
    pub fn start(router: &NetNs, n: usize, tls: bool) -> Self {
        // A folder per cluster: a test's members must not find an earlier test's data.
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lbt-etcd-{}-{seq}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd dir");
        let addrs: Vec<String> = (0..n).map(|i| format!("10.40.{i}.2")).collect();
        let initial_cluster = addrs.iter().enumerate().map(|(i, a)| format!("m{i}=http://{a}:2380")).collect::<Vec<_>>().join(",");
        let members = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let ns = NetNs::new(&format!("etcd{i}"), false);
                veth(
                    End {
                        ns: router,
                        dev: &format!("r-e{i}"),
                        mac: &format!("02:00:00:00:40:{i:02x}"),
                        addrs: &[&format!("10.40.{i}.1/24")],
                    },
                    End { ns: &ns, dev: "e0", mac: &format!("02:00:00:01:40:{i:02x}"), addrs: &[&format!("{addr}/24")] },
                );
                ns.ip(&["route", "add", "default", "via", &format!("10.40.{i}.1")]);
                Member { ns, addr: addr.clone(), child: None }
            })
            .collect();
        let tls = tls.then(|| {
            let certs = dir.join("tls");
            std::fs::create_dir_all(&certs).expect("tls dir");
            let ca = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"];
            openssl(&certs, &[&ca[..], &["-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=lbt-etcd-ca"]].concat());
            for (i, addr) in addrs.iter().enumerate() {
                issue(&certs, &format!("m{i}"), "serverAuth", Some(addr));
            }
            issue(&certs, "client", "clientAuth", None);
            ClientTls { ca: certs.join("ca.pem"), cert: certs.join("client.pem"), key: certs.join("client.key") }
        });
        let mut cluster = Self { members, dir, initial_cluster, router: router.name.clone(), root_password: None, tls };
        for i in 0..n {
            cluster.start_member(i);
        }
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| self.url(&m.addr)).collect()
    }

    /// A member's client URL (https with TLS).
    pub fn url(&self, addr: &str) -> String {
        match self.tls {
            Some(_) => format!("https://{addr}:2379"),
            None => client_url(addr),
        }
    }

    /// Starts member `i` (again, on its data: it rejoins).
    pub fn start_member(&mut self, i: usize) {
        let m = &self.members[i];
        let data = self.dir.join(format!("m{i}"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("m{i}.log"))).expect("log");
        let (client, peer) = (self.url(&m.addr), format!("http://{}:2380", m.addr));
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &m.ns.name, "etcd", "--name", &format!("m{i}"), "--data-dir"]).arg(&data);
        if let Some(tls) = &self.tls {
            let certs = tls.ca.parent().expect("tls dir");
            command
                .arg("--cert-file")
                .arg(certs.join(format!("m{i}.pem")))
                .arg("--key-file")
                .arg(certs.join(format!("m{i}.key")))
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", "new", "--initial-cluster-token", "lbt"])
            // Quick elections: a killed leader is replaced within about a second.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000", "--logger", "zap", "--log-outputs", "stderr"])
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// Kills member `i` (SIGKILL: no goodbye to the others).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("m{i}.log"))).unwrap_or_default()
    }

    /// `etcdctl ARGS` against the running members (as root once auth is on), from the router's
    /// namespace; its stdout, or None when it failed.
    pub fn ctl(&self, args: &[&str]) -> Option<String> {
        let running: Vec<String> = self.members.iter().filter(|m| m.child.is_some()).map(|m| self.url(&m.addr)).collect();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.router, "etcdctl"])
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", running.join(",")))
            .args(["--dial-timeout=2s", "--command-timeout=5s"]);
        if let Some(p) = &self.root_password {
            cmd.arg(format!("--user=root:{p}"));
        }
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert").arg(&tls.ca).arg("--cert").arg(&tls.cert).arg("--key").arg(&tls.key);
        }
        let out = cmd.args(args).output().expect("etcdctl");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until every running member says it is healthy.
    pub fn wait_healthy(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let healthy = self.ctl(&["endpoint", "health"]).is_some();
            if healthy {
                return;
            }
            assert!(start.elapsed() < limit, "etcd did not become healthy in {limit:?}:\n{}", self.log(0));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Turns on etcd's authentication: a `root` user, and `user` with read and write on keys
    /// under `prefix`. Returns nothing; the passwords are the caller's.
    pub fn enable_auth(&mut self, user: &str, password: &str, prefix: &str) {
        let root = "root-secret-lbt";
        for args in [
            vec!["user", "add", &format!("root:{root}")],
            vec!["role", "add", "fleet"],
            vec!["role", "grant-permission", "fleet", "--prefix=true", "readwrite", prefix],
            vec!["user", "add", &format!("{user}:{password}")],
            vec!["user", "grant-role", user, "fleet"],
            vec!["auth", "enable"],
        ] {
            assert!(self.ctl(&args).is_some(), "etcdctl {args:?} failed");
        }
        self.root_password = Some(root.into());
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
