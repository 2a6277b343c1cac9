//! Network namespaces and veth pairs for end-to-end tests. Everything created is removed on
//! drop, also when a test fails; names carry the process id so parallel runs do not collide,
//! and leftovers of killed runs are swept first.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const PREFIX: &str = "lbt";

/// Deletes namespaces left by test processes that no longer run.
fn sweep_stale() {
    let Ok(list) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates `lbt<pid>-<n>-<role>` with loopback up, reverse-path filtering and IPv6 duplicate
    /// address detection off, and forwarding (both families) as asked.
    pub fn new(role: &str, forwarding: bool) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        if SEQ.load(Ordering::Relaxed) == 0 {
            sweep_stale();
        }
        let name = format!("{PREFIX}{}-{}-{role}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        let fwd = if forwarding { "1" } else { "0" };
        for (key, value) in [
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.ip_forward", fwd),
            ("net.ipv6.conf.all.forwarding", fwd),
            // No duplicate address detection: addresses (link-local ones too) usable at once,
            // so the first packets of a test do not wait on neighbour discovery and get resent.
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ] {
            ns.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
        }
        ns
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Runs `f` on a thread inside the namespace (sockets, interface lookups and XDP attach
    /// all use the calling thread's namespace) and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                f()
            })
            .join()
            .expect("thread in namespace panicked")
        })
    }

    /// Moves the calling thread into the namespace (for threads the test spawns itself).
    pub fn enter(&self) {
        enter_path(&format!("/run/netns/{}", self.name));
    }
}

/// Moves the calling thread into the namespace at `path` (/run/netns/NAME).
pub fn enter_path(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: an open namespace fd; setns changes only this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let ok = Command::new("ip").args(["netns", "del", &self.name]).status().is_ok_and(|s| s.success());
        if !ok && !std::thread::panicking() {
            panic!("could not delete netns {}", self.name);
        }
    }
}

/// One end of a veth pair.
pub struct End<'a> {
    pub ns: &'a NetNs,
    pub dev: &'a str,
    pub mac: &'a str,
    /// Addresses with prefix length, e.g. ["10.10.1.2/24", "fd00:10:1::2/64"].
    pub addrs: &'a [&'a str],
}

/// Adds `addr` (with prefix length) to `dev`; an IPv6 address skips duplicate address detection
/// so it is usable at once.
pub fn add_addr(ns: &NetNs, addr: &str, dev: &str) {
    if addr.contains(':') {
        ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]);
    } else {
        ns.ip(&["addr", "add", addr, "dev", dev]);
    }
}

/// Creates a veth pair between two namespaces, addresses and MACs set, checksum offload off
/// (XDP sees and rewrites the bytes as they are: a checksum left for the NIC would be wrong
/// once the frame is tunnelled), both ends up.
pub fn veth(a: End, b: End) {
    a.ns.ip(&["link", "add", a.dev, "type", "veth", "peer", "name", b.dev, "netns", &b.ns.name]);
    for end in [&a, &b] {
        end.ns.ip(&["link", "set", end.dev, "address", end.mac]);
        for addr in end.addrs {
            add_addr(end.ns, addr, end.dev);
        }
        end.ns.exec(&["ethtool", "-K", end.dev, "tx", "off", "rx", "off"]);
        end.ns.ip(&["link", "set", end.dev, "up"]);
    }
}

/// Parses "02:00:..:01" into bytes.
pub fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s.split(':').map(|h| u8::from_str_radix(h, 16).expect("hex")).collect();
    v.try_into().expect("six bytes")
}
