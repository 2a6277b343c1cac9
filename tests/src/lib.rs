//! Test support for anycast-lb: packet builders and parsers, a fixture that runs the real XDP
//! program through BPF_PROG_TEST_RUN, and network-namespace helpers.

pub mod anycast;
pub mod backend;
pub mod bird;
pub mod etcd;
pub mod expect;
pub mod fixture;
pub mod gdnsd;
pub mod lbd;
pub mod netns;
pub mod packet;
pub mod packetgen;
pub mod scale;
pub mod test_run;
pub mod topology;

/// Whether a privileged test may run. Without root it skips with a line saying so, except when
/// `CI=true` or `LB_REQUIRE_PRIVILEGED=1` (set by `cargo xtask test`): then it fails, so a run
/// can never pass by skipping.
pub fn have_root(test: &str) -> bool {
    // SAFETY: no arguments, no memory.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let required = std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var("LB_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
    assert!(!required, "{test} needs root, and privileged tests are required here");
    eprintln!("skipping {test}: needs root");
    false
}

/// Returns early from a privileged test that cannot run here (see `have_root`).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::have_root(module_path!()) {
            return;
        }
    };
}

/// Serializes tests that measure time against the network harness (2 cores: parallel daemons
/// and health checks would measure the machine, not the code). Poisoning is ignored: a failed
/// test must not fail the next ones.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A bpffs folder of pins, removed on drop (also when the test fails).
pub struct PinDir(pub std::path::PathBuf);

impl PinDir {
    /// A folder under /sys/fs/bpf unique to this process.
    pub fn new(name: &str) -> Self {
        Self(std::path::PathBuf::from(format!("/sys/fs/bpf/lbt-{name}-{}", std::process::id())))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = lb_userspace::dataplane::Dataplane::remove_pins(&self.0);
    }
}
