//! Admin commands that change state: real weights, VIPs added or removed at run time, and
//! installing a new config. Each is applied through the reconciler first and journaled only
//! once it applied; the journal writer answers the command when the change is on disk.

use std::net::IpAddr;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{server_ids, state::Daemon};
use crate::{
    admin::{AdminError, Reply},
    config::{self, Config, RawVip},
    dataplane::DataplaneOps,
    journal::Journal,
    reconcile::ReconcileError,
};

pub(super) fn reconcile_error(e: ReconcileError) -> AdminError {
    match e {
        ReconcileError::NoVip(_) | ReconcileError::NoReal { .. } => AdminError::NotFound(e.to_string()),
        ReconcileError::Full { .. } | ReconcileError::PoolTooSmall { .. } | ReconcileError::PoolFragmented { .. } => {
            AdminError::Conflict(e.to_string())
        }
        ReconcileError::QuicKeyMissing { .. } => AdminError::BadRequest(e.to_string()),
        ReconcileError::Dataplane(_) | ReconcileError::NoConfig => {
            AdminError::Internal(format!("{:#} (the data plane is as it was before the command)", anyhow::Error::from(e)))
        }
    }
}

impl<D: DataplaneOps> Daemon<D> {
    /// Applies `config` (already validated) if its restart-only fields are unchanged.
    pub(super) fn install(&mut self, config: Config, mac: [u8; 6]) -> Result<(), AdminError> {
        let bgp_socket = |c: &Config| c.bgp.as_ref().map(|b| (b.bird_socket.clone(), b.include_file.clone()));
        if config.instance != self.config.instance
            || config.interfaces != self.config.interfaces
            || config.conn_table_size != self.config.conn_table_size
            || bgp_socket(&config) != bgp_socket(&self.config)
            || config.fleet != self.config.fleet
        {
            return Err(AdminError::Conflict(
                "instance, interfaces, conn_table_size, [fleet] and the [bgp] section's presence, socket and include file change only with a restart"
                    .into(),
            ));
        }
        let now_s = server_ids::now_s();
        server_ids::check(&self.journal.server_ids, &config, now_s).map_err(AdminError::Conflict)?;
        self.rec.apply(&config, mac).map_err(reconcile_error)?;
        self.config = config;
        if server_ids::record(&mut self.journal.server_ids, &self.config, now_s) {
            self.save_journal(None);
        }
        self.reapply_journal();
        self.sync_probers();
        self.follow_next_hop();
        let configured: Vec<IpAddr> = self.config.handoff.iter().flat_map(|h| h.peers.clone()).collect();
        self.peers_up.retain(|p, _| configured.contains(p));
        self.sync_handoff();
        self.publish_announcements();
        Ok(())
    }

    /// Sends the journal to the writer, which answers `reply` once it is on disk.
    pub(super) fn save_journal(&self, reply: Option<Reply<()>>) {
        if let Err(mpsc::error::SendError((_, Some(reply)))) = self.out.journal.send((self.journal.clone(), reply)) {
            let _ = reply.send(Err(AdminError::Internal("the journal writer is gone; the change is not saved".into())));
        }
    }

    /// Tries a journal change: applied (and saved) if the resulting config is valid, else undone.
    pub(super) fn change_vips(&mut self, change: impl FnOnce(&mut Journal) -> Result<(), AdminError>, reply: Reply<()>) {
        let mut journal = self.journal.clone();
        let result = change(&mut journal).and_then(|()| {
            let mut config = journal.over(&self.file).validate(self.interfaces).map_err(|e| AdminError::BadRequest(e.to_string()))?;
            config.attach_quic_keys(&self.quic_keys).map_err(|e| AdminError::BadRequest(e.to_string()))?;
            let mac = self.rec.next_hop().ok_or_else(|| AdminError::Internal("no next hop written yet".into()))?;
            self.install(config, mac)
        });
        match result {
            Ok(()) => {
                // `install` kept the server IDs in the running journal.
                let server_ids = std::mem::take(&mut self.journal.server_ids);
                self.journal = Journal { server_ids, ..journal };
                self.save_journal(Some(reply));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    pub(super) fn reapply_journal(&mut self) {
        for (vip, real, weight) in self.journal.weights.clone() {
            if let Err(e) = self.rec.set_weight(&vip, real, Some(weight)) {
                warn!(%vip, %real, error = %e, "journaled weight no longer applies");
            }
        }
    }

    pub(super) fn set_weight(&mut self, vip: &str, real: IpAddr, weight: Option<u32>, reply: Reply<()>) {
        if weight.is_some_and(|w| w > config::MAX_WEIGHT) {
            let _ = reply.send(Err(AdminError::BadRequest(format!("weight out of range 0 ..= {}", config::MAX_WEIGHT))));
            return;
        }
        if let Err(e) = self.rec.set_weight(vip, real, weight) {
            let _ = reply.send(Err(reconcile_error(e)));
            return;
        }
        info!(%vip, %real, weight = ?weight, "real weight set at run time");
        self.journal.weights = self.rec.weight_overrides();
        self.publish_announcements(); // capacity, and so prepending, may have changed
        self.save_journal(Some(reply));
    }

    /// `lb vip add`: journaled as added (and no longer removed), if the result validates.
    pub(super) fn add_vip(&mut self, vip: RawVip, reply: Reply<()>) {
        let name = vip.name.clone();
        let exists = self.config.vips.iter().any(|v| v.name == name);
        info!(vip = %name, "adding a VIP at run time");
        self.change_vips(
            |j| {
                if exists {
                    return Err(AdminError::Conflict(format!("VIP {name:?} exists")));
                }
                j.removed_vips.retain(|n| n != &name);
                j.added_vips.push(vip);
                Ok(())
            },
            reply,
        );
    }

    /// `lb vip remove`: a VIP added at run time leaves the journal; a file VIP is journaled as
    /// removed.
    pub(super) fn remove_vip(&mut self, name: String, reply: Reply<()>) {
        if !self.config.vips.iter().any(|v| v.name == name) {
            let _ = reply.send(Err(AdminError::NotFound(format!("no VIP {name:?}"))));
            return;
        }
        info!(vip = %name, "removing a VIP at run time");
        self.change_vips(
            |j| {
                let before = j.added_vips.len();
                j.added_vips.retain(|v| v.name != name);
                if j.added_vips.len() == before {
                    j.removed_vips.push(name.clone());
                }
                Ok(())
            },
            reply,
        );
    }
}
