//! The events the loop takes, each dispatched to what handles it: admin commands, health
//! results, the next hop's MAC; and the probers and next-hop watcher the config asks for.

use std::{collections::HashSet, net::IpAddr};

use tracing::{info, warn};

use super::state::Daemon;
use crate::{
    admin::Command,
    config::{self, NextHop},
    dataplane::DataplaneOps,
    health::{HealthEvent, Target},
    next_hop::{self, NextHopChanged},
    status::{HandoffStatus, VipStatus},
};

impl<D: DataplaneOps> Daemon<D> {
    pub(super) fn sync_probers(&mut self) {
        let rec = &self.rec;
        self.probers.sync(&self.config, |vip, real| rec.starts_up(vip, real), &self.out.health);
    }

    /// Follows the next hop's neighbour entry when the config names it by address.
    pub(super) fn follow_next_hop(&mut self) {
        let wanted = match self.config.forwarding.next_hop {
            NextHop::Ip(ip) => Some(ip),
            NextHop::Mac(_) => None,
        };
        if self.next_hop_watch.as_ref().map(|(ip, _)| *ip) == wanted {
            return;
        }
        if let Some((_, task)) = self.next_hop_watch.take() {
            task.abort();
        }
        if let Some(ip) = wanted {
            self.next_hop_watch = Some((ip, tokio::spawn(next_hop::watch(ip, self.out.next_hop.clone()))));
        }
    }

    /// The next hop's neighbour entry changed.
    pub fn next_hop_changed(&mut self, change: NextHopChanged) {
        if self.config.forwarding.next_hop != NextHop::Ip(change.ip) {
            return; // from a watcher of an earlier config
        }
        match self.rec.set_next_hop(change.mac) {
            Ok(true) => info!(next_hop = %change.ip, mac = %config::format_mac(&change.mac), "next hop's MAC changed; forwarding follows"),
            Ok(false) => {}
            Err(e) => warn!(next_hop = %change.ip, error = %e, "writing the next hop's new MAC failed; keeping the old one"),
        }
    }

    /// Announced prefixes, for status and metrics.
    pub(super) fn status(&self) -> Vec<VipStatus> {
        let announced: HashSet<IpAddr> = self.announced.iter().flatten().map(|a| a.prefix).collect();
        let mut status = self.rec.status();
        for v in &mut status {
            v.announced = announced.contains(&v.vip.addr);
            if let (Some(a), Some(state)) = (self.adaptation(&v.vip), self.adapt.get(&v.vip)) {
                for r in &mut v.reals {
                    r.adapt_signal = state.controller.describe(&a, &r.address);
                }
            }
        }
        status
    }

    pub fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Handoff(reply) => {
                let adopt = self.rec.handoff().is_some_and(|h| h.adopt);
                let _ =
                    reply.send(HandoffStatus { node: self.config.handoff.as_ref().map(|h| h.address), peers: self.handoff_peers(), adopt });
            }
            Command::Site(reply) => {
                let _ = reply.send(self.site_stage());
            }
            Command::Doctor(reply) => {
                let _ = reply.send(self.doctor_inputs());
            }
            Command::Metrics(reply) => {
                let _ = reply.send(self.metrics_snapshot());
            }
            Command::SiteDrain { drained, reply } => self.site_drain(drained, reply),
            Command::Reload(reply) => self.start_reload(Some(reply)),
            Command::SetWeight { vip, real, weight, reply } => self.set_weight(&vip, real, weight, reply),
            Command::AddVip { vip, reply } => self.add_vip(*vip, reply),
            Command::RemoveVip { name, reply } => self.remove_vip(name, reply),
        }
    }

    pub fn health(&mut self, event: HealthEvent) {
        match event {
            HealthEvent::Flip { target: Target::Peer(peer), up, reason } => {
                info!(%peer, state = if up { "up" } else { "down" }, %reason, "handoff peer health changed");
                self.peers_up.insert(peer, up);
                self.sync_handoff();
            }
            HealthEvent::Checked { target: Target::Peer(_), .. } | HealthEvent::Drain { target: Target::Peer(_), .. } => {}
            HealthEvent::Drain { target: Target::Real(vip, real), draining } => {
                info!(%vip, %real, draining, "backend drain changed (its health endpoint says so)");
                match self.rec.set_draining(&vip, real, draining) {
                    Ok(true) => info!(%vip, rebuild_ms = self.rec.rebuilds().last.as_secs_f64() * 1e3, "table rebuilt"),
                    Ok(false) => {}
                    Err(e) => warn!(%vip, %real, error = %e, "applying a backend drain failed; the maps are as before it"),
                }
                self.publish_announcements();
            }
            HealthEvent::Flip { target: Target::Real(vip, real), up, reason } => {
                info!(%vip, %real, state = if up { "up" } else { "down" }, %reason, "real health changed");
                self.record_flip(vip, real);
                match self.rec.set_health(&vip, real, up) {
                    Ok(true) => info!(%vip, rebuild_ms = self.rec.rebuilds().last.as_secs_f64() * 1e3, "table rebuilt"),
                    Ok(false) => {}
                    Err(e) => warn!(%vip, %real, error = %e, "applying a health change failed; the maps are as before it"),
                }
                self.publish_announcements();
            }
            HealthEvent::Checked { target: Target::Real(vip, real), latency, load } => {
                self.checks.record(latency.is_some());
                self.adapt_observe(vip, real, crate::adapt::Sample { latency, load });
                let sample = self.samples.get(&(vip, real)).copied().unwrap_or_default().then(latency);
                self.samples.insert((vip, real), sample);
            }
        }
    }
}
