//! Reloads: the file is read and its next hop resolved in a task (`prepare_reload`), then the
//! loop validates it with the journal and installs it, or rejects it and keeps the running state.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use tracing::{info, warn};

use super::state::{Daemon, Prepared};
use crate::{
    admin::{AdminError, Reply},
    config::{self, Config, ConfigError, InterfaceCheck, NextHop, QuicKeys, RawConfig},
    dataplane::DataplaneOps,
    journal::Journal,
    next_hop,
};

/// The config to run: the file with the journal's VIP changes; if those no longer fit the file
/// (say the file now has a conflicting VIP), the file alone, with a warning.
/// QUIC-LB VIPs get their keys from `keys` (read off the loop).
pub fn effective_config(file: &RawConfig, journal: &Journal, interfaces: InterfaceCheck, keys: &QuicKeys) -> Result<Config, ConfigError> {
    let mut config = match journal.over(file).validate(interfaces) {
        Ok(config) => config,
        Err(e) if !journal.added_vips.is_empty() || !journal.removed_vips.is_empty() => {
            warn!(error = %e, "run-time VIP changes do not fit the config file; using the file alone");
            file.validate(interfaces)?
        }
        Err(e) => return Err(e),
    };
    config.attach_quic_keys(keys)?;
    Ok(config)
}

/// Reads the config file and resolves its next hop: the slow half of a reload, run in a task.
pub async fn prepare_reload(path: PathBuf) -> Result<Prepared, AdminError> {
    let started = std::time::Instant::now();
    let text = tokio::fs::read_to_string(&path).await.map_err(|e| AdminError::BadRequest(format!("reading {}: {e}", path.display())))?;
    let file = config::parse_raw(&text).map_err(|e| AdminError::BadRequest(format!("{}: {e}", path.display())))?;
    let quic_keys = config::read_quic_keys(config::quic_key_files(&file.vips)).map_err(|e| AdminError::BadRequest(e.to_string()))?;
    let resolved = match file.forwarding.next_hop_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()) {
        Some(ip) => Some((ip, next_hop::resolve(&NextHop::Ip(ip)).await.map_err(|e| AdminError::Conflict(e.to_string()))?)),
        None => None,
    };
    Ok(Prepared { file, resolved, quic_keys, took: started.elapsed() })
}

impl<D: DataplaneOps> Daemon<D> {
    /// Starts a reload: the file is read and the next hop resolved in a task, which hands the
    /// result to `reload`.
    pub fn start_reload(&self, reply: Option<Reply<()>>) {
        let (path, done) = (self.config_path.clone(), self.out.reload.clone());
        tokio::spawn(async move {
            let prepared = prepare_reload(path).await;
            let _ = done.send((prepared, reply)).await;
        });
    }

    /// Installs a reload prepared off the loop. A rejected reload keeps the running state.
    pub fn reload(&mut self, prepared: Result<Prepared, AdminError>, reply: Option<Reply<()>>) {
        let started = std::time::Instant::now();
        let read = prepared.as_ref().map_or(Duration::ZERO, |p| p.took);
        let result = prepared.and_then(|p| {
            super::fleet::check_node_file(&p.file).map_err(AdminError::BadRequest)?;
            let file = match &self.fleet {
                Some(fleet) => fleet.over(&p.file),
                None => p.file,
            };
            self.quic_keys.extend(p.quic_keys);
            let config = effective_config(&file, &self.journal, self.interfaces, &self.quic_keys)
                .map_err(|e| AdminError::BadRequest(e.to_string()))?;
            let mac = match (config.forwarding.next_hop, p.resolved) {
                (NextHop::Mac(mac), _) => mac,
                (NextHop::Ip(ip), Some((resolved, mac))) if ip == resolved => mac,
                (NextHop::Ip(ip), _) => return Err(AdminError::Conflict(format!("next hop {ip} was not resolved"))),
            };
            self.install(config, mac)?;
            self.file = file;
            Ok(())
        });
        match &result {
            Ok(()) => {
                self.reloads_ok += 1;
                let applied = started.elapsed();
                info!(
                    vips = self.config.vips.len(),
                    read_ms = read.as_millis() as u64,
                    apply_ms = applied.as_millis() as u64,
                    "config reloaded"
                );
            }
            Err(e) => {
                self.reloads_failed += 1;
                warn!(error = %e, "config reload rejected; running state kept");
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}
