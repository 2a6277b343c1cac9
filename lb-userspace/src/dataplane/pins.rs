//! Where each program's pins live under bpffs: its links and maps stay there after `lb` exits,
//! so traffic keeps flowing and the next start picks them up.

use std::path::{Path, PathBuf};

/// The balancer instance's pins (`lb run`): /sys/fs/bpf/anycast-lb-<instance>.
pub fn balancer(instance: &str) -> PathBuf {
    Path::new("/sys/fs/bpf").join(format!("anycast-lb-{instance}"))
}

/// The backend instance's pins (`lb backend run`): /sys/fs/bpf/anycast-lb-backend-<instance>.
pub fn backend(instance: &str) -> PathBuf {
    Path::new("/sys/fs/bpf").join(format!("anycast-lb-backend-{instance}"))
}

/// The pinned link that keeps a program attached to `interface`.
pub fn link(pin_dir: &Path, interface: &str) -> PathBuf {
    pin_dir.join(format!("link-{interface}"))
}
