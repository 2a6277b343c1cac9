//! Real BIRD processes in test namespaces: configs written to a temp folder, the daemon run in
//! the foreground and killed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::netns::NetNs;

pub struct Bird {
    child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
}

/// bird-config/ of this repository.
pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bird-config")
}

/// The edge node's bird.conf with this node's values and lb's include file at `include`.
pub fn edge_config(router_id: &str, local_as: u32, upstream: &str, upstream_as: u32, include: &Path) -> String {
    let conf = std::fs::read_to_string(config_dir().join("bird.conf")).expect("bird.conf");
    let set = |text: String, name: &str, value: &str| -> String {
        text.lines()
            .map(|l| if l.starts_with(&format!("define {name} ")) { format!("define {name} = {value};") } else { l.to_owned() })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let conf = set(conf, "ROUTER_ID", router_id);
    let conf = set(conf, "LOCAL_AS", &local_as.to_string());
    let conf = set(conf, "UPSTREAM_IP", upstream);
    let conf = set(conf, "UPSTREAM_AS", &upstream_as.to_string());
    conf.replace("/run/anycast-lb/vips.conf", include.to_str().expect("utf-8 path"))
}

/// `config` with the commented BFD lines of bird.conf (or any `bfd on;` / `protocol bfd`) enabled.
pub fn with_bfd(config: &str) -> String {
    config.replace("# protocol bfd", "protocol bfd").replace("# bfd on;", "bfd on;")
}

impl Bird {
    /// Starts `bird` in `ns` with `config`; `name` keeps files apart.
    pub fn start(ns: &NetNs, name: &str, config: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("bird-{}-{name}", ns.name));
        std::fs::create_dir_all(&dir).expect("bird dir");
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config).expect("write bird.conf");
        let socket = dir.join("bird.ctl");
        let log = std::fs::File::create(dir.join("bird.log")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "bird", "-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start bird");
        let bird = Self { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !bird.socket.exists() {
            assert!(Instant::now() < deadline, "bird did not start:\n{}", bird.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        bird
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }

    /// Freezes BIRD (SIGSTOP): like a crashed node, it stops answering but closes nothing.
    /// (`ip netns exec` execs bird, so the child's pid is bird's.)
    pub fn freeze(&self) {
        crate::netns::sh(&["kill", "-STOP", &self.child.id().to_string()]);
    }

    /// Lets a frozen BIRD run again (SIGCONT).
    pub fn thaw(&self) {
        crate::netns::sh(&["kill", "-CONT", &self.child.id().to_string()]);
    }

    /// `birdc` output for a command.
    pub fn birdc(&self, cmd: &str) -> String {
        let out = Command::new("birdc").arg("-s").arg(&self.socket).args(cmd.split_whitespace()).output().expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits until `check` holds, up to `limit`; returns how long it took.
pub fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}
