//! Runs the real `lb` binary inside the LB node's namespace for end-to-end tests of the daemon,
//! and removes its pinned state afterwards, also when a test fails.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_userspace::status::VipStatus;

use crate::netns::NetNs;

/// The `lb` binary: $LB_BIN (`cargo xtask test` sets it to the release build), or `lb` beside
/// the test's target folder.
pub fn lb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LB_BIN") {
        return PathBuf::from(p);
    }
    // Binaries sit in target/<profile>/, test executables in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    let candidates = [dir.join("lb"), dir.parent().map(|p| p.join("lb")).unwrap_or_default()];
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!("no `lb` beside {}: build it with `cargo build -p lb-userspace --bin lb` (cargo xtask test does)", exe.display())
    })
}

/// A command that runs in network namespace `ns` only. (`ip netns exec` would also give it a
/// fresh /sys without the host's bpffs, where pins would vanish with the process.)
pub(crate) fn in_netns(ns: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}"));
    cmd
}

/// One `lb run`, in the namespace `ns`, with its own instance name, config file and state dir.
pub struct LbDaemon {
    child: Option<Child>,
    /// Runs `lb run` under this command (e.g. `setpriv` with a capability set).
    wrapper: Vec<String>,
    pub ns: String,
    pub instance: String,
    pub config: PathBuf,
    pub dir: PathBuf,
}

impl LbDaemon {
    /// Writes `config` (its `instance` line is set here) and starts `lb run`; returns once the
    /// admin API answers.
    pub fn start(ns: &NetNs, config_body: &str) -> Self {
        Self::start_wrapped(ns, config_body, &[])
    }

    /// As `start`, with `lb run` run under `wrapper` inside the namespace.
    pub fn start_wrapped(ns: &NetNs, config_body: &str, wrapper: &[String]) -> Self {
        let instance = Self::instance_for(ns);
        // On tmpfs: lb answers a change once its journal is fsynced, and on this disk one fsync
        // took 490 ms during other writeback (a build's output). The harness times lb (a drain
        // under a frozen BIRD is answered within 100 ms), not the disk.
        let dir = Path::new("/dev/shm").join(format!("lbd-{instance}"));
        std::fs::create_dir_all(&dir).expect("state dir");
        let config = dir.join("lb.toml");
        std::fs::write(&config, format!("instance = \"{instance}\"\n{config_body}")).expect("write config");
        let mut d = Self { child: None, wrapper: wrapper.to_vec(), ns: ns.name.clone(), instance, config, dir };
        d.spawn();
        d
    }

    /// The instance name `start` gives an `lb` in `ns` (its pins: `pins::balancer(name)`).
    pub fn instance_for(ns: &NetNs) -> String {
        format!("t{}-{}", std::process::id(), ns.name.rsplit('-').nth(1).unwrap_or("0"))
    }

    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("lb.log")).expect("log file");
        let cmd = lb_command(&self.ns, &self.wrapper, &["run"], &self.config, &self.dir);
        self.child = Some(spawn_until_up(cmd, log, "lb", || self.log(), || self.try_status().is_some()));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lb.log")).unwrap_or_default()
    }

    /// Another `lb run` of this instance's config, for a start expected to fail (killed after
    /// 20 s): its output.
    pub fn run_expecting_failure(&self) -> std::process::Output {
        output_within_20s(lb_command(&self.ns, &self.wrapper, &["run"], &self.config, &self.dir))
    }

    /// Runs `lb ARGS` (the CLI) in the namespace, against this instance's admin socket.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        in_netns(&self.ns).arg(lb_bin()).args(args).args(["--instance", &self.instance]).output().expect("run lb cli")
    }

    /// This instance's admin socket.
    pub fn socket(&self) -> PathBuf {
        lb_userspace::config::default_api_socket(&self.instance)
    }

    /// Sends raw `request` bytes over the admin socket; the reply's status (0: none) and body.
    pub fn over_socket(&self, request: &[u8]) -> (u16, String) {
        let conn = std::os::unix::net::UnixStream::connect(self.socket()).expect("admin socket");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        exchange(conn, request)
    }

    /// Sends raw `request` bytes to `addr` over TCP from inside the namespace.
    pub fn over_tcp(&self, addr: &str, request: &[u8]) -> (u16, String) {
        over_tcp_in(&self.ns, addr, request).expect("admin TCP")
    }

    pub fn try_status(&self) -> Option<Vec<VipStatus>> {
        let out = self.cli(&["status", "--json"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    pub fn status(&self) -> Vec<VipStatus> {
        self.try_status().unwrap_or_else(|| panic!("lb status failed:\n{}", self.log()))
    }

    /// Scrapes the metrics endpoint from inside the namespace: the whole HTTP reply, headers
    /// included (tests look at both, as a scraper sees them).
    pub fn metrics(&self) -> String {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            crate::netns::enter_path(&path);
            let mut conn = std::net::TcpStream::connect("127.0.0.1:9100").expect("metrics endpoint");
            conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").expect("send");
            let mut text = String::new();
            conn.read_to_string(&mut text).expect("read");
            text
        })
        .join()
        .expect("scrape thread")
    }

    /// The running `lb`'s pid (nsenter and the wrapper exec it, so the child's pid is lb's).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: &str) {
        signal(self.child.as_ref().expect("running"), sig);
    }

    /// SIGKILL, as a crash: nothing is withdrawn or cleaned up by lb.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM and wait for the exit; the data plane stays attached.
    pub fn terminate(&mut self) {
        terminate(self.child.take().expect("running"), "lb", &self.log());
    }
}

impl Drop for LbDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(lb_userspace::dataplane::pins::balancer(&self.instance));
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `lb ARGS --config CONFIG` in namespace `ns` under `wrapper`, with `state_dir` as its state
/// directory.
pub(crate) fn lb_command(ns: &str, wrapper: &[String], args: &[&str], config: &std::path::Path, state_dir: &std::path::Path) -> Command {
    let mut cmd = in_netns(ns);
    cmd.args(wrapper).arg(lb_bin()).args(args).arg("--config").arg(config).env("LB_STATE_DIR", state_dir);
    cmd
}

/// Starts `cmd` with its output to `log` and returns once `up` holds; panics with the log (from
/// `read_log`) if it exits first or is not up within 20 s.
pub(crate) fn spawn_until_up(
    mut cmd: Command,
    log: std::fs::File,
    what: &str,
    read_log: impl Fn() -> String,
    mut up: impl FnMut() -> bool,
) -> Child {
    let mut child =
        cmd.stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log)).spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !up() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited with {status}:\n{}", read_log());
        }
        assert!(Instant::now() < deadline, "{what} did not come up:\n{}", read_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Sends `sig` to `child` (nsenter and any wrapper exec lb, so the child's pid is lb's).
pub(crate) fn signal(child: &Child, sig: &str) {
    crate::netns::sh(&["kill", &format!("-{sig}"), &child.id().to_string()]);
}

/// SIGTERM and wait for a clean exit.
pub(crate) fn terminate(mut child: Child, what: &str, log: &str) {
    signal(&child, "TERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{what} exited with {status}:\n{log}");
}

/// Runs `lb run` with `config_body` (instance `once<pid>`) in `ns` for a start that is expected
/// to fail; kills it if it is still running after 20 s. Its output.
pub fn run_once(ns: &NetNs, config_body: &str) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!("lbd-once-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("lb.toml");
    std::fs::write(&config, format!("instance = \"once{}\"\n{config_body}", std::process::id())).expect("config");
    let out = output_within_20s(lb_command(&ns.name, &[], &["run"], &config, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// Runs `cmd` to its end, or kills it after 20 s; its output.
fn output_within_20s(mut cmd: Command) -> std::process::Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start lb");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().expect("output")
}

/// The capabilities a unit in deploy/ grants (`CapabilityBoundingSet=`), as setpriv names them:
/// "bpf,net_admin,..." (`LB_TEST_CAPS` overrides, to try other sets).
pub fn unit_capabilities(unit: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(unit);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let line = text.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).expect("CapabilityBoundingSet=");
    let caps: Vec<String> = line.split_whitespace().map(|c| c.trim_start_matches("CAP_").to_lowercase()).collect();
    std::env::var("LB_TEST_CAPS").unwrap_or(caps.join(","))
}

/// A command prefix that runs a program as uid 0 with only `caps` ("bpf,net_admin") and no way
/// to gain others.
pub fn with_only(caps: &str) -> Vec<String> {
    ["setpriv", "--no-new-privs", "--inh-caps=-all", &format!("--bounding-set=-all,+{}", caps.replace(',', ",+"))].map(String::from).into()
}

/// `caps` as setpriv names them ("bpf,net_admin") in capsh's names, sorted ("cap_bpf", ...).
pub fn capability_names(caps: &str) -> Vec<String> {
    let mut names: Vec<String> = caps.split(',').map(|c| format!("cap_{c}")).collect();
    names.sort();
    names
}

/// The capabilities process `pid` holds, sorted ("cap_bpf", ...).
pub fn effective_capabilities(pid: u32) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let mask = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff").trim().to_owned();
    let out = Command::new("capsh").arg(format!("--decode={mask}")).output().expect("capsh");
    let decoded = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut held: Vec<String> = decoded.split_once('=').map_or(Vec::new(), |(_, l)| l.split(',').map(String::from).collect());
    held.sort();
    held
}

/// An HTTP/1.0 request with a JSON body and extra header lines ("Name: value").
pub fn http_request(method: &str, path: &str, headers: &[String], body: &str) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    for h in headers {
        r += h;
        r += "\r\n";
    }
    r += "\r\n";
    r += body;
    r.into_bytes()
}

/// Sends raw `request` bytes to `addr` over TCP from inside namespace `ns`; None if it cannot
/// connect.
pub fn over_tcp_in(ns: &str, addr: &str, request: &[u8]) -> Option<(u16, String)> {
    let (path, addr, request) = (format!("/run/netns/{ns}"), addr.to_owned(), request.to_vec());
    std::thread::spawn(move || {
        crate::netns::enter_path(&path);
        let conn = std::net::TcpStream::connect(&addr).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        Some(exchange(conn, &request))
    })
    .join()
    .expect("TCP thread")
}

/// Writes `request` (as much as the peer takes) and reads the reply: its status (0 when there is
/// none) and body.
fn exchange(mut conn: impl Read + Write, request: &[u8]) -> (u16, String) {
    let _ = conn.write_all(request); // a refused body may be cut off: the reply still comes
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The value of the sample `name` (with its labels, e.g. `lb_xdp_handoffs_total{what="sent"}`)
/// in a scrape.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or_else(|| panic!("{name} missing:\n{text}"))
}
