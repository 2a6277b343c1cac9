//! One way to write a state file so that a crash or a power cut leaves either the old file or
//! the new one, whole: write a temp file beside it, fsync it, rename it over the old one, fsync
//! the folder (which makes the rename itself durable).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

/// Writes `bytes` to `path` durably, creating its folder if needed.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The same, off the async runtime's threads.
pub async fn write_async(path: PathBuf, bytes: Vec<u8>) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || write(&path, &bytes)).await.map_err(std::io::Error::other)?
}

/// `<name>.tmp` beside the file.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_durable_write_replaces_the_file_whole_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("lb-durable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("state.json");
        super::write(&path, b"first").unwrap();
        super::write(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["state.json"], "no temp file left");
        // A folder where the file should go: the write fails and the temp file is gone too.
        std::fs::create_dir_all(dir.join("taken")).unwrap();
        assert!(super::write(&dir.join("taken"), b"x").is_err());
        assert!(!dir.join("taken.tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
