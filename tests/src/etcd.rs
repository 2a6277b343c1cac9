//! A real etcd cluster for the fleet tests: `n` members, each in a namespace of its own linked
//! to a router namespace (member i at 10.40.i.2, the router at 10.40.i.1), so LB nodes behind
//! the same router reach every member. Members can be killed and started again on their data.

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
}

/// The member's client URL.
pub fn client_url(addr: &str) -> String {
    format!("http://{addr}:2379")
}

impl EtcdCluster {
    /// Starts `n` members behind `router` (which forwards) and waits until the cluster answers.
    pub fn start(router: &NetNs, n: usize) -> Self {
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
        let mut cluster = Self { members, dir, initial_cluster, router: router.name.clone(), root_password: None };
        for i in 0..n {
            cluster.start_member(i);
        }
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| client_url(&m.addr)).collect()
    }

    /// Starts member `i` (again, on its data: it rejoins).
    pub fn start_member(&mut self, i: usize) {
        let m = &self.members[i];
        let data = self.dir.join(format!("m{i}"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("m{i}.log"))).expect("log");
        let (client, peer) = (client_url(&m.addr), format!("http://{}:2380", m.addr));
        let child = Command::new("ip")
            .args(["netns", "exec", &m.ns.name, "etcd", "--name", &format!("m{i}"), "--data-dir"])
            .arg(&data)
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
        let running: Vec<String> = self.members.iter().filter(|m| m.child.is_some()).map(|m| client_url(&m.addr)).collect();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.router, "etcdctl"])
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", running.join(",")))
            .args(["--dial-timeout=2s", "--command-timeout=5s"]);
        if let Some(p) = &self.root_password {
            cmd.arg(format!("--user=root:{p}"));
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
