//! Where each program's pins live under bpffs: its links and maps stay there after `lb` exits,
//! so traffic keeps flowing and the next start picks them up.

use std::{
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use super::error::DataplaneError;

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

/// Makes `dir` (mode 0700) if it is absent, and refuses one that someone else could have
/// planted or could change: a symlink, not a directory, owned by another user, or writable by
/// group or others. On a bpffs of mode 1777 any local user can create the folder first; `lb`
/// would then pin into it, and that user could unpin the links and stop the data plane.
pub fn secure_dir(dir: &Path) -> Result<(), DataplaneError> {
    let unsafe_dir = |why: String| DataplaneError::UnsafePinDir { path: dir.to_owned(), why };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(|source| DataplaneError::Pin { path: dir.to_owned(), source })?;
            secure_dir(dir)
        }
        Err(source) => Err(DataplaneError::Pin { path: dir.to_owned(), source }),
        Ok(meta) if meta.file_type().is_symlink() => Err(unsafe_dir("it is a symbolic link".into())),
        Ok(meta) if !meta.is_dir() => Err(unsafe_dir("it is not a directory".into())),
        Ok(meta) => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            if meta.uid() != me {
                return Err(unsafe_dir(format!("it is owned by uid {}, not by this process's uid {me}", meta.uid())));
            }
            if meta.mode() & 0o022 != 0 {
                return Err(unsafe_dir(format!("its group or others may write to it (mode {:o})", meta.mode() & 0o7777)));
            }
            Ok(())
        }
    }
}

/// The folder of a program's pinned maps (each pin named by `layout::pin_path`).
pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

/// The pin of map `name` under `pin_dir`, at this `lb`'s layout version of it.
pub fn map(pin_dir: &Path, name: &str) -> PathBuf {
    super::layout::pin_path(&maps_dir(pin_dir), name)
}
