//! `lb backend run` (the real binary) in a backend's namespace: decapsulates on `b0`, holds the
//! VIPs on `lo`, serves /healthz, /load and /metrics on port 9180.

use std::{path::PathBuf, process::Child};

use crate::{
    lbd::{http_request, lb_command, metric, over_tcp_in, spawn_until_up, terminate},
    netns::NetNs,
    topology::{VIP, VIP6},
};

/// Where sections a test adds start in the config (`with_sections`).
const SECTIONS_MARK: &str = "# sections a test added\n";

/// The backend endpoint, from inside the backend's namespace.
pub const ENDPOINT: &str = "127.0.0.1:9180";

pub struct BackendDaemon {
    child: Option<Child>,
    /// Runs `lb backend run` under this command (e.g. `setpriv` with a capability set).
    pub wrapper: Vec<String>,
    pub ns: String,
    pub instance: String,
    pub config: PathBuf,
    pub dir: PathBuf,
}

impl BackendDaemon {
    /// Starts `lb backend run` in `ns` for tunnels to `addrs` on `b0`, holding the harness VIPs,
    /// its endpoint on both families (IPv6 reals are asked over IPv6); returns once /healthz
    /// answers.
    pub fn start(ns: &NetNs, addrs: &[&str]) -> Self {
        let instance = format!("b{}-{}", std::process::id(), ns.name.rsplit('-').nth(1).unwrap_or("0"));
        let dir = std::env::temp_dir().join(format!("lbb-{instance}"));
        std::fs::create_dir_all(&dir).expect("backend dir");
        let config = dir.join("backend.toml");
        let text = format!(
            "instance = \"{instance}\"\n[backend]\ninterface = [{{ name = \"b0\" }}]\naddresses = {addrs:?}\nvips = [\"{VIP}\", \"{VIP6}\"]\n\
             [backend.health]\ndrain_file = \"{}\"\ninterval_ms = 200\nlisten = \"[::]:9180\"\n",
            dir.join("drain").display()
        );
        std::fs::write(&config, text).expect("backend config");
        let mut b = Self { child: None, wrapper: Vec::new(), ns: ns.name.clone(), instance, config, dir };
        b.spawn();
        b
    }

    /// Restarts `lb backend run` serving `vip` too (held on `lo`, and taken inside tunnels).
    pub fn serve_also(&mut self, vip: &str) {
        self.terminate();
        let text = std::fs::read_to_string(&self.config).expect("backend config");
        let text = text.replace(&format!("vips = [\"{VIP}\""), &format!("vips = [\"{vip}\", \"{VIP}\""));
        std::fs::write(&self.config, text).expect("backend config");
        self.spawn();
    }

    /// Restarts `lb backend run` with `sections` (TOML, e.g. `[[backend.quic_lb]]`) in place of
    /// the ones an earlier call gave.
    pub fn with_sections(&mut self, sections: &str) {
        self.terminate();
        let text = std::fs::read_to_string(&self.config).expect("backend config");
        let base = text.split(SECTIONS_MARK).next().expect("split").to_owned();
        std::fs::write(&self.config, format!("{base}{SECTIONS_MARK}{sections}")).expect("backend config");
        self.spawn();
    }

    /// Restarts `lb backend run` reporting the load written in `file` (a number 0..1).
    pub fn with_load_file(&mut self, file: &std::path::Path) {
        self.terminate();
        let text = std::fs::read_to_string(&self.config).expect("backend config");
        let text = text.replace("[backend.health]\n", &format!("[backend.health]\nload = \"file:{}\"\n", file.display()));
        std::fs::write(&self.config, text).expect("backend config");
        self.spawn();
    }

    pub fn spawn(&mut self) {
        // Appended: a restart's log follows the first run's.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("backend.log")).expect("log");
        let cmd = lb_command(&self.ns, &self.wrapper, &["backend", "run"], &self.config, &self.dir);
        self.child = Some(spawn_until_up(cmd, log, "lb backend", || self.log(), || self.health().is_some()));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("backend.log")).unwrap_or_default()
    }

    /// `lb backend ARGS --config <this one>` in the namespace.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let args: Vec<&str> = ["backend"].into_iter().chain(args.iter().copied()).collect();
        lb_command(&self.ns, &[], &args, &self.config, &self.dir).output().expect("lb backend")
    }

    /// GET /healthz: status and body, or None while nothing listens.
    pub fn health(&self) -> Option<(u16, String)> {
        over_tcp_in(&self.ns, ENDPOINT, &http_request("GET", "/healthz", &[], ""))
    }

    pub fn metrics(&self) -> String {
        over_tcp_in(&self.ns, ENDPOINT, &http_request("GET", "/metrics", &[], "")).expect("backend metrics").1
    }

    /// A decapsulator counter by name (`decapsulated`, `ipip`, ...), from /metrics.
    pub fn counter(&self, name: &str) -> u64 {
        metric(&self.metrics(), &format!("lb_backend_packets_total{{what=\"{name}\"}}")) as u64
    }

    /// The running process's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM and wait; decapsulation stays attached.
    pub fn terminate(&mut self) {
        terminate(self.child.take().expect("running"), "lb backend", &self.log());
    }
}

impl Drop for BackendDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(lb_userspace::dataplane::pins::backend(&self.instance));
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
