//! Cross-site handoff as the daemon programs it: this node's address, the peers that pass their
//! checks, and whether to adopt handed-off flows (while the site withdrew by choice).

use std::net::IpAddr;

use tracing::{info, warn};

use super::state::Daemon;
use crate::dataplane::{DataplaneOps, Handoff};

impl<D: DataplaneOps> Daemon<D> {
    /// Handoff peers in config order with their state (peers start up, like reals).
    pub(super) fn handoff_peers(&self) -> Vec<(IpAddr, bool)> {
        let peers = self.config.handoff.iter().flat_map(|h| &h.peers);
        peers.map(|&p| (p, self.peers_up.get(&p).copied().unwrap_or(true))).collect()
    }

    /// Programs handoff: this node's address, the peers that are up, and whether to adopt
    /// handed-off flows we do not know, which holds while the site withdrew by choice (drained,
    /// or `lb` exiting) and still forwards: such flows are ours, moved away by the withdrawal.
    pub(super) fn sync_handoff(&mut self) {
        let wanted = Handoff {
            node: self.config.handoff.as_ref().map(|h| h.address),
            peers: self.handoff_peers().into_iter().filter(|&(_, up)| up).map(|(p, _)| p).collect(),
            sources: self.config.handoff.iter().flat_map(|h| h.peers.clone()).collect(),
            adopt: self.withdrawing(),
        };
        match self.rec.set_handoff(&wanted) {
            Ok(false) => {}
            Ok(true) => {
                let peers: Vec<String> = wanted.peers.iter().map(|p| p.to_string()).collect();
                info!(node = ?wanted.node, peers_up = %peers.join(", "), adopt = wanted.adopt, "handoff programmed");
            }
            Err(e) => warn!(error = %e, "programming handoff failed; the previous handoff settings stay"),
        }
    }
}
