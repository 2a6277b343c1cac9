//! `lb run`: load and attach (pinned), program the maps from the config, and run one loop that
//! owns all state. Health probers, the admin API, signals, the router task, the next-hop watcher
//! and reload preparation send it events; it answers from memory and writes only to the data
//! plane (through the reconciler). Everything slow (BIRD, netlink, files) runs in other tasks.
//!
//! Exiting leaves the programs attached and the maps pinned under /sys/fs/bpf/anycast-lb-<instance>: traffic
//! keeps flowing on the last state, and the next `lb run` (same or newer binary) picks it up,
//! connection table included. `lb stop --instance NAME` removes everything.

mod announce;
mod changes;
mod handoff;
mod reload;
mod run;
mod snapshot;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use self::{announce::GracefulShutdown, snapshot::Flips};
pub use self::{
    reload::{effective_config, prepare_reload, Prepared, PreparedReload},
    run::{run, stop},
};
use crate::{
    admin::{AdminError, Command},
    bgp::bird::Announcement,
    config::{self, Config, InterfaceCheck, NextHop, RawConfig, VipId},
    dataplane::DataplaneOps,
    health::{HealthEvent, Probers, Target},
    journal::{self, Journal},
    metrics::HealthSample,
    next_hop::{self, NextHopChanged},
    reconcile::Reconciler,
    status::{HandoffStatus, VipStatus},
};

/// Where the daemon's decisions go: each is taken up by a task that does the slow part.
pub struct Outputs {
    /// The announcements this site wants now; the router task follows it.
    pub announce: watch::Sender<Vec<Announcement>>,
    /// Journals to write, with the admin command waiting to hear it was.
    pub journal: mpsc::UnboundedSender<journal::Save<AdminError>>,
    /// Health events, for the probers the daemon starts.
    pub health: mpsc::Sender<HealthEvent>,
    /// MAC changes of the next hop, for the watcher the daemon starts.
    pub next_hop: mpsc::Sender<NextHopChanged>,
    /// Reloads prepared off the loop, for `Daemon::reload`.
    pub reload: mpsc::Sender<PreparedReload>,
    /// The end of a graceful shutdown's wait (its number), for `Daemon::graceful_shutdown_over`.
    pub graceful_over: mpsc::Sender<u64>,
}

/// The state machine `lb run` drives: config, journal, health, handoff and announcements, over a
/// data plane `D` (the kernel's maps, or a fake in tests).
pub struct Daemon<D> {
    config_path: PathBuf,
    config: Config,
    /// The config file as last read: run-time VIP changes apply over it without reading it.
    file: RawConfig,
    interfaces: InterfaceCheck,
    rec: Reconciler<D>,
    journal: Journal,
    probers: Probers,
    samples: HashMap<(VipId, IpAddr), HealthSample>,
    reloads_ok: u64,
    reloads_failed: u64,
    /// What the router last confirmed it announces (None: nothing yet).
    announced: Option<Vec<Announcement>>,
    bird_errors: u64,
    /// Handoff peers whose checks failed (`false`) or passed after a failure (`true`).
    peers_up: HashMap<IpAddr, bool>,
    /// The next hop being followed in the neighbour table, and its watcher.
    next_hop_watch: Option<(IpAddr, JoinHandle<()>)>,
    /// Set on the way out: the site withdraws but keeps forwarding.
    exiting: bool,
    /// Drained or exiting, and still announcing with GRACEFUL_SHUTDOWN.
    graceful: Option<GracefulShutdown>,
    /// Each real's health flips within the last `FLAP_WINDOW` (older ones are dropped as new come).
    flips: Flips,
    /// BIRD's last failure, until the router task next succeeds.
    bird_failing: Option<String>,
    graceful_count: u64,
    out: Outputs,
}

impl<D: DataplaneOps> Daemon<D> {
    /// A daemon over `rec`, which already holds `config` (applied with `mac`). Publishes the
    /// first announcements and starts the probers and the next-hop watcher.
    pub fn start(
        rec: Reconciler<D>,
        config_path: PathBuf,
        file: RawConfig,
        config: Config,
        journal: Journal,
        interfaces: InterfaceCheck,
        out: Outputs,
    ) -> Self {
        let mut d = Self {
            config_path,
            config,
            file,
            interfaces,
            rec,
            journal,
            probers: Probers::default(),
            samples: HashMap::new(),
            reloads_ok: 0,
            reloads_failed: 0,
            announced: None,
            bird_errors: 0,
            peers_up: HashMap::new(),
            next_hop_watch: None,
            exiting: false,
            graceful: None,
            graceful_count: 0,
            flips: HashMap::new(),
            bird_failing: None,
            out,
        };
        d.reapply_journal();
        d.sync_handoff();
        d.sync_probers();
        d.follow_next_hop();
        // Announce only once the rings are programmed; reals start up, so a first health round is
        // not needed before announcing.
        d.publish_announcements();
        d
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn reconciler(&self) -> &Reconciler<D> {
        &self.rec
    }

    fn sync_probers(&mut self) {
        let rec = &self.rec;
        self.probers.sync(&self.config, |vip, real| rec.starts_up(vip, real), &self.out.health);
    }

    /// Follows the next hop's neighbour entry when the config names it by address.
    fn follow_next_hop(&mut self) {
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
    fn status(&self) -> Vec<VipStatus> {
        let announced: HashSet<IpAddr> = self.announced.iter().flatten().map(|a| a.prefix).collect();
        let mut status = self.rec.status();
        for v in &mut status {
            v.announced = announced.contains(&v.vip.addr);
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
            HealthEvent::Checked { target: Target::Real(vip, real), latency } => {
                let sample = self.samples.get(&(vip, real)).copied().unwrap_or_default().then(latency);
                self.samples.insert((vip, real), sample);
            }
        }
    }
}
