//! The journal: changes made at run time (admin API / CLI), kept across reloads and restarts in
//! /var/lib/anycast-lb/<instance>.json. Only a missing file means "no changes"; a journal that
//! cannot be read or parsed stops `lb run` with the reason, and is never overwritten.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::config::{RawConfig, RawVip};

/// Run-time changes. They apply on top of the config file; a VIP the file itself defines or
/// removes by name wins over them.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    /// (VIP name, real address, weight)
    #[serde(default)]
    pub weights: Vec<(String, IpAddr, u32)>,
    /// VIPs added with `lb vip add`.
    #[serde(default)]
    pub added_vips: Vec<RawVip>,
    /// Names of file VIPs removed with `lb vip remove`.
    #[serde(default)]
    pub removed_vips: Vec<String>,
    /// `lb site drain`: every VIP withdrawn, forwarding kept.
    #[serde(default)]
    pub site_drained: bool,
    /// QUIC-LB server IDs and their reals, kept for the hold after they leave the config
    /// (`daemon::server_ids`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_ids: Vec<crate::daemon::ServerIdRecord>,
}

impl Journal {
    /// The file's config with the run-time VIP changes applied.
    pub fn over(&self, file: &RawConfig) -> RawConfig {
        let mut raw = file.clone();
        raw.vips.retain(|v| !self.removed_vips.contains(&v.name));
        let file_names: Vec<&str> = file.vips.iter().map(|v| v.name.as_str()).collect();
        raw.vips.extend(self.added_vips.iter().filter(|v| !file_names.contains(&v.name.as_str())).cloned());
        raw
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot read the journal {path} ({source}); lb will not start over it: fix its permissions or move it away (it holds run-time changes)")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error(
        "the journal {path} is not valid ({source}); lb will not start over it: repair it or move it away (it holds run-time changes)"
    )]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

/// Where lb keeps state on disk: /var/lib/anycast-lb, or LB_STATE_DIR.
pub fn state_dir() -> PathBuf {
    std::env::var_os("LB_STATE_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/lib/anycast-lb"))
}

/// Where runtime changes are journaled: <state dir>/<instance>.json.
pub fn path(instance: &str) -> PathBuf {
    state_dir().join(format!("{instance}.json"))
}

pub fn load(path: &Path) -> Result<Journal, JournalError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|source| JournalError::Corrupt { path: path.to_owned(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
        Err(source) => Err(JournalError::Unreadable { path: path.to_owned(), source }),
    }
}

/// Writes the journal durably (`durable::write`).
pub async fn save(path: &Path, journal: &Journal) -> std::io::Result<()> {
    crate::durable::write_async(path.to_owned(), serde_json::to_vec_pretty(journal)?).await
}

/// A journal that could not be written: the change it holds is applied, but not kept.
#[derive(Debug, thiserror::Error)]
#[error("applied, but not saved to {path} ({source}): it is lost on restart")]
pub struct NotSaved {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// A journal to write, and who waits to hear that it was (with the error type the waiter
/// wants: the admin protocol's, whose 500 this becomes).
pub type Save<E> = (Journal, Option<oneshot::Sender<Result<(), E>>>);

/// Writes journals in the order they come, off the state loop, and answers each waiting admin
/// command with the outcome (the change itself is already applied).
pub async fn run_writer<E: From<NotSaved>>(path: PathBuf, mut saves: mpsc::UnboundedReceiver<Save<E>>) {
    while let Some((journal, reply)) = saves.recv().await {
        let result = save(&path, &journal).await.map_err(|source| {
            tracing::error!(path = %path.display(), error = %source, "writing the journal failed; the change is applied but not kept across a restart");
            E::from(NotSaved { path: path.clone(), source })
        });
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_raw;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lb-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn only_a_missing_journal_is_empty() {
        let d = dir("load");
        assert_eq!(load(&d.join("none.json")).unwrap(), Journal::default());
        let corrupt = d.join("corrupt.json");
        std::fs::write(&corrupt, "{\"weights\": [").unwrap();
        assert!(matches!(load(&corrupt), Err(JournalError::Corrupt { .. })));
        assert_eq!(std::fs::read_to_string(&corrupt).unwrap(), "{\"weights\": [", "left as it was");
        // A directory where the file should be: unreadable (as EACCES would be; root reads anything).
        assert!(matches!(load(&d), Err(JournalError::Unreadable { .. })));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn saved_journals_load_back() {
        let d = dir("save");
        let path = d.join("sub").join("i.json");
        let j = Journal { weights: vec![("web".into(), "10.1.0.1".parse().unwrap(), 0)], site_drained: true, ..Journal::default() };
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(save(&path, &j)).unwrap();
        assert_eq!(load(&path).unwrap(), j);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_file_wins_over_the_journal() {
        let vip = |name: &str, addr: &str| {
            format!(
                "[[vip]]\nname = \"{name}\"\naddress = \"{addr}\"\nport = 80\nprotocol = \"tcp\"\n[[vip.real]]\naddress = \"10.1.0.1\"\n"
            )
        };
        let forwarding = "[forwarding]\nnext_hop_mac = \"02:00:00:00:00:01\"\n";
        let file = parse_raw(&format!("{forwarding}{}{}", vip("a", "10.0.0.1"), vip("b", "10.0.0.2"))).unwrap();
        let added = parse_raw(&format!("{forwarding}{}{}", vip("b", "10.0.0.9"), vip("c", "10.0.0.3"))).unwrap().vips;
        let j = Journal { added_vips: added, removed_vips: vec!["a".into()], ..Journal::default() };
        let names: Vec<String> = j.over(&file).vips.iter().map(|v| v.name.clone()).collect();
        assert_eq!(names, ["b", "c"], "a removed, c added, the file's b kept over the journal's");
        assert_eq!(j.over(&file).vips[0].address, file.vips[1].address);
    }
}
