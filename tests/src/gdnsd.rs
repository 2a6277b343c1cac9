//! A real gdnsd for the GeoDNS test, and `lb geodns run` beside it, both in a namespace of the
//! test's. gdnsd reads the snippets `lb geodns render` wrote and a zone `lb.test` with the
//! rendered records, listens on 127.0.0.1 of that namespace, and is asked with `dig`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    bird::wait_for,
    lbd::{in_netns, lb_bin},
    netns::NetNs,
};

/// The GeoLite2 City database `cargo xtask setup` fetches (PyPI's maxminddb-geolite2).
pub const GEOLITE2_CITY: &str = "/var/cache/anycast-lb/GeoLite2-City.mmdb";
/// The zone gdnsd serves the records in.
pub const ZONE: &str = "lb.test";

/// A child process killed when dropped, with its output in a file.
struct Owned {
    child: Child,
    log: PathBuf,
}

impl Owned {
    fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("log file");
        let child = cmd.stdout(Stdio::from(out.try_clone().expect("log"))).stderr(Stdio::from(out)).spawn().expect("spawn");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Gdnsd {
    proc: Owned,
    ns: String,
    port: u16,
}

impl Gdnsd {
    /// Writes gdnsd's config into `dir` (including `rendered`'s snippets, with the records
    /// `records` in zone `ZONE`) and starts it listening on 127.0.0.1:`port` in `ns`.
    pub fn start(ns: &NetNs, dir: &Path, rendered: &Path, records: &str, port: u16) -> Self {
        std::fs::create_dir_all(dir.join("zones")).expect("gdnsd dir");
        let config = format!(
            "options => {{ listen => [ 127.0.0.1:{port} ] }}\n\
             service_types => {{ $include{{{}}} }}\n\
             plugins => {{ $include{{{}}} }}\n",
            rendered.join("anycast-lb.service_types").display(),
            rendered.join("anycast-lb.plugins").display()
        );
        std::fs::write(dir.join("config"), config).expect("gdnsd config");
        let zone = format!("$TTL 300\n@ SOA ns1 hostmaster ( 1 7200 1800 259200 300 )\n@ NS ns1\nns1 A 127.0.0.1\n{records}");
        std::fs::write(dir.join("zones").join(ZONE), zone).expect("zone");
        let mut cmd = in_netns(&ns.name);
        cmd.arg("gdnsd").arg("-c").arg(dir).arg("start");
        let proc = Owned::spawn(cmd, dir.join("gdnsd.log"));
        let gdnsd = Self { proc, ns: ns.name.clone(), port };
        wait_for(Duration::from_secs(60), "gdnsd answering", || {
            assert!(!gdnsd.proc.log().contains("fatal:"), "gdnsd failed:\n{}", gdnsd.proc.log());
            gdnsd.proc.log().contains("DNS listeners started")
        });
        gdnsd
    }

    /// The addresses gdnsd answers for `name` (in `ZONE`) and `qtype` to a client in `subnet`
    /// (EDNS client subnet, "ADDR/LEN").
    pub fn ask(&self, name: &str, qtype: &str, subnet: &str) -> Vec<String> {
        let out = in_netns(&self.ns)
            .args(["dig", "@127.0.0.1", "-p", &self.port.to_string(), "+short", "+time=2", "+tries=1"])
            .arg(format!("+subnet={subnet}"))
            .arg(format!("{name}.{ZONE}"))
            .arg(qtype)
            .output()
            .expect("dig (cargo xtask setup installs it)");
        let mut answers: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
        answers.sort();
        answers
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// `lb geodns run` in a namespace.
pub struct GeoAgent {
    proc: Owned,
}

impl GeoAgent {
    /// Runs `lb geodns run ARGS` in `ns`, logging to `log`.
    pub fn start(ns: &NetNs, args: &[String], log: PathBuf) -> Self {
        let mut cmd = in_netns(&ns.name);
        cmd.arg(lb_bin()).args(["geodns", "run"]).args(args).env("LB_LOG", "info");
        Self { proc: Owned::spawn(cmd, log) }
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}
