//! `lb run`: load and attach (pinned), program the maps from the config, and run one loop that
//! owns all state. Health probers, the admin API, signals, the router task, the next-hop watcher
//! and reload preparation send it events; it answers from memory and writes only to the data
//! plane (through the reconciler). Everything slow (BIRD, netlink, files) runs in other tasks.
//!
//! Exiting leaves the programs attached and the maps pinned under /sys/fs/bpf/<instance>: traffic
//! keeps flowing on the last state, and the next `lb run` (same or newer binary) picks it up,
//! connection table included. `lb stop --instance NAME` removes everything.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use lb_common::programs;
use serde::{Deserialize, Serialize};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    admin::{AdminError, Command, HandoffStatus, Reply},
    bird::Announcement,
    config::{self, Config, ConfigError, InterfaceCheck, NextHop, RawConfig, VipId},
    dataplane::{Counters, Dataplane, LiveMaps, LoadOptions},
    doctor,
    health::{HealthEvent, Probers, Target},
    journal::{self, Journal},
    metrics::{self, HealthSample},
    next_hop::{self, NextHopChanged},
    reconcile::{DataplaneOps, Handoff, ReconcileError, Reconciler, VipStatus},
    router::{self, BirdRouter, RouterEvent},
};

/// Where an instance's programs and maps are pinned.
pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new("/sys/fs/bpf").join(format!("anycast-lb-{instance}"))
}

/// How long one BIRD step (connect, write, reply) may take.
const BIRD_LIMIT: Duration = Duration::from_secs(2);
/// How long `lb` waits at exit for BIRD to withdraw the VIPs.
const EXIT_WITHDRAW_LIMIT: Duration = Duration::from_millis(1500);

/// Where the daemon's decisions go: each is taken up by a task that does the slow part.
pub struct Outputs {
    /// The announcements this site wants now; the router task follows it.
    pub announce: watch::Sender<Vec<Announcement>>,
    /// Journals to write, with the admin command waiting to hear it was.
    pub journal: mpsc::UnboundedSender<journal::Save>,
    /// Health events, for the probers the daemon starts.
    pub health: mpsc::Sender<HealthEvent>,
    /// MAC changes of the next hop, for the watcher the daemon starts.
    pub next_hop: mpsc::Sender<NextHopChanged>,
    /// Reloads prepared off the loop, for `Daemon::reload`.
    pub reload: mpsc::Sender<PreparedReload>,
    /// The end of a graceful shutdown's wait (its number), for `Daemon::graceful_shutdown_over`.
    pub graceful_over: mpsc::Sender<u64>,
}

/// Health flips within this window count towards "flapping".
const FLAP_WINDOW: Duration = Duration::from_secs(doctor::FLAP_WINDOW_SECS);

/// What the loop gives `lb doctor`: its view, and the config file it runs (to compare the file
/// on disk with, off the loop).
#[derive(Debug)]
pub struct DoctorInputs {
    pub view: doctor::LoopView,
    pub config_path: PathBuf,
    pub running: Box<RawConfig>,
}

/// Where the site's announcements stand, as `lb status` and GET /site show them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum SiteStage {
    /// Servable VIPs are announced.
    Announcing,
    /// Drained or exiting: the VIPs are announced with GRACEFUL_SHUTDOWN (RFC 8326) so
    /// upstreams move traffic away; withdrawn in `withdraw_in_ms`.
    GracefulShutdown { withdraw_in_ms: u64 },
    /// Drained or exiting: nothing is announced.
    Withdrawn,
    /// No `[bgp]`: this site announces nothing.
    NoBgp,
}

/// A graceful shutdown under way: announced with GRACEFUL_SHUTDOWN until `until`.
#[derive(Debug, Clone, Copy)]
struct GracefulShutdown {
    until: tokio::time::Instant,
    /// Told apart from an earlier one that an undrain cancelled.
    number: u64,
}

/// A prepared reload, and who asked for it (None: SIGHUP).
pub type PreparedReload = (Result<Prepared, AdminError>, Option<Reply<()>>);

/// A reload read off the loop: the config file, and the MAC of its next hop when the file names
/// it by address (validation is left to the loop, which validates the file with the journal).
#[derive(Debug)]
pub struct Prepared {
    pub file: RawConfig,
    pub resolved: Option<(IpAddr, [u8; 6])>,
    /// How long reading, parsing and resolving took.
    pub took: Duration,
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
    flips: HashMap<(VipId, IpAddr), std::collections::VecDeque<std::time::Instant>>,
    /// BIRD's last failure, until the router task next succeeds.
    bird_failing: Option<String>,
    graceful_count: u64,
    out: Outputs,
}

/// The config to run: the file with the journal's VIP changes; if those no longer fit the file
/// (say the file now has a conflicting VIP), the file alone, with a warning.
pub fn effective_config(file: &RawConfig, journal: &Journal, interfaces: InterfaceCheck) -> Result<Config, ConfigError> {
    match journal.over(file).validate(interfaces) {
        Ok(config) => Ok(config),
        Err(e) if !journal.added_vips.is_empty() || !journal.removed_vips.is_empty() => {
            warn!(error = %e, "run-time VIP changes do not fit the config file; using the file alone");
            file.validate(interfaces)
        }
        Err(e) => Err(e),
    }
}

/// Reads the config file and resolves its next hop: the slow half of a reload, run in a task.
pub async fn prepare_reload(path: PathBuf) -> Result<Prepared, AdminError> {
    let started = std::time::Instant::now();
    let text = tokio::fs::read_to_string(&path).await.map_err(|e| AdminError::BadRequest(format!("reading {}: {e}", path.display())))?;
    let file = config::parse_raw(&text).map_err(|e| AdminError::BadRequest(format!("{}: {e}", path.display())))?;
    let resolved = match file.forwarding.next_hop_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()) {
        Some(ip) => Some((ip, next_hop::resolve(&NextHop::Ip(ip)).await.map_err(|e| AdminError::Conflict(e.to_string()))?)),
        None => None,
    };
    Ok(Prepared { file, resolved, took: started.elapsed() })
}

fn reconcile_error(e: ReconcileError) -> AdminError {
    match e {
        ReconcileError::NoVip(_) | ReconcileError::NoReal { .. } => AdminError::NotFound(e.to_string()),
        ReconcileError::Full { .. } | ReconcileError::PoolTooSmall { .. } | ReconcileError::PoolFragmented { .. } => {
            AdminError::Conflict(e.to_string())
        }
        ReconcileError::Dataplane(_) | ReconcileError::NoConfig => {
            AdminError::Internal(format!("{:#} (the data plane is as it was before the command)", anyhow::Error::from(e)))
        }
    }
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

    /// The site withdraws by choice: drained, or `lb` exiting.
    fn withdrawing(&self) -> bool {
        self.journal.site_drained || self.exiting
    }

    /// The VIPs this site should announce now: servable ones, unless the site is drained or
    /// `lb` is exiting (then nothing, after the graceful shutdown's wait).
    fn wanted_announcements(&self) -> Vec<Announcement> {
        let Some(bgp) = &self.config.bgp else { return Vec::new() };
        let withdrawing = self.withdrawing();
        if withdrawing && self.graceful.is_none() {
            return Vec::new();
        }
        let mut list: Vec<Announcement> = self
            .rec
            .status()
            .iter()
            .filter(|v| v.servable())
            .map(|v| Announcement {
                prefix: v.vip.addr,
                prepend: bgp.prepend_below.is_some_and(|t| v.capacity() < t),
                graceful_shutdown: withdrawing,
            })
            .collect();
        list.sort();
        list.dedup_by(|a, b| {
            a.prefix == b.prefix && {
                b.prepend |= a.prepend;
                true
            }
        });
        list
    }

    /// Hands the wanted announcements to the router task (which skips a list it already applied).
    fn publish_announcements(&mut self) {
        let wanted = self.wanted_announcements();
        self.out.announce.send_if_modified(|current| {
            let changed = *current != wanted;
            *current = wanted;
            changed
        });
    }

    /// The router task's report.
    pub fn router_event(&mut self, event: RouterEvent) {
        match event {
            RouterEvent::Applied(list) => {
                let shown: Vec<String> =
                    list.iter().map(|a| format!("{}{}", a.prefix, if a.prepend { " (prepended)" } else { "" })).collect();
                info!(announced = %shown.join(", "), drained = self.journal.site_drained, "BGP announcements updated");
                self.announced = Some(list);
                self.bird_failing = None;
            }
            RouterEvent::Failed { error, retry_in } => {
                self.bird_errors += 1;
                self.bird_failing = Some(error.to_string());
                warn!(%error, retry_in_ms = retry_in.as_millis() as u64, "BIRD did not take the announcements; forwarding continues");
            }
        }
    }

    /// Handoff peers in config order with their state (peers start up, like reals).
    fn handoff_peers(&self) -> Vec<(IpAddr, bool)> {
        let peers = self.config.handoff.iter().flat_map(|h| &h.peers);
        peers.map(|&p| (p, self.peers_up.get(&p).copied().unwrap_or(true))).collect()
    }

    /// Programs handoff: this node's address, the peers that are up, and whether to adopt
    /// handed-off flows we do not know, which holds while the site withdrew by choice (drained,
    /// or `lb` exiting) and still forwards: such flows are ours, moved away by the withdrawal.
    fn sync_handoff(&mut self) {
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

    /// Applies `config` (already validated) if its restart-only fields are unchanged.
    fn install(&mut self, config: Config, mac: [u8; 6]) -> Result<(), AdminError> {
        let bgp_socket = |c: &Config| c.bgp.as_ref().map(|b| (b.bird_socket.clone(), b.include_file.clone()));
        if config.instance != self.config.instance
            || config.interfaces != self.config.interfaces
            || config.conn_table_size != self.config.conn_table_size
            || bgp_socket(&config) != bgp_socket(&self.config)
        {
            return Err(AdminError::Conflict(
                "instance, interfaces, conn_table_size and the [bgp] section's presence, socket and include file change only with a restart"
                    .into(),
            ));
        }
        self.rec.apply(&config, mac).map_err(reconcile_error)?;
        self.config = config;
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
    fn save_journal(&self, reply: Option<Reply<()>>) {
        if let Err(mpsc::error::SendError((_, Some(reply)))) = self.out.journal.send((self.journal.clone(), reply)) {
            let _ = reply.send(Err(AdminError::Internal("the journal writer is gone; the change is not saved".into())));
        }
    }

    /// Tries a journal change: applied (and saved) if the resulting config is valid, else undone.
    fn change_vips(&mut self, change: impl FnOnce(&mut Journal) -> Result<(), AdminError>, reply: Reply<()>) {
        let mut journal = self.journal.clone();
        let result = change(&mut journal).and_then(|()| {
            let config = journal.over(&self.file).validate(self.interfaces).map_err(|e| AdminError::BadRequest(e.to_string()))?;
            let mac = self.rec.next_hop().ok_or_else(|| AdminError::Internal("no next hop written yet".into()))?;
            self.install(config, mac)
        });
        match result {
            Ok(()) => {
                self.journal = journal;
                self.save_journal(Some(reply));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

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
            let config = effective_config(&p.file, &self.journal, self.interfaces).map_err(|e| AdminError::BadRequest(e.to_string()))?;
            let mac = match (config.forwarding.next_hop, p.resolved) {
                (NextHop::Mac(mac), _) => mac,
                (NextHop::Ip(ip), Some((resolved, mac))) if ip == resolved => mac,
                (NextHop::Ip(ip), _) => return Err(AdminError::Conflict(format!("next hop {ip} was not resolved"))),
            };
            self.install(config, mac)?;
            self.file = p.file;
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

    fn reapply_journal(&mut self) {
        for (vip, real, weight) in self.journal.weights.clone() {
            if let Err(e) = self.rec.set_weight(&vip, real, Some(weight)) {
                warn!(%vip, %real, error = %e, "journaled weight no longer applies");
            }
        }
    }

    fn set_weight(&mut self, vip: &str, real: IpAddr, weight: Option<u32>, reply: Reply<()>) {
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

    fn site_drain(&mut self, drained: bool, reply: Reply<()>) {
        if self.config.bgp.is_none() {
            let _ = reply.send(Err(AdminError::Conflict("no [bgp] section: this site announces nothing".into())));
            return;
        }
        let was_announcing = !self.withdrawing();
        self.journal.site_drained = drained;
        info!(drained, "site drain changed");
        self.sync_handoff(); // adopt before the withdrawal moves our flows to peers
        if drained && was_announcing {
            self.begin_graceful_shutdown();
        } else if !drained {
            self.graceful = None; // an undrain cancels a graceful shutdown under way
        }
        self.publish_announcements();
        self.save_journal(Some(reply));
    }

    /// Starts the wait before a withdrawal, when `[bgp] graceful_shutdown_ms` asks for one: the
    /// VIPs stay announced, with GRACEFUL_SHUTDOWN, until the timer reports back.
    fn begin_graceful_shutdown(&mut self) {
        let wait = self.config.bgp.as_ref().map_or(Duration::ZERO, |b| b.graceful_shutdown);
        if wait.is_zero() {
            return;
        }
        self.graceful_count += 1;
        let number = self.graceful_count;
        self.graceful = Some(GracefulShutdown { until: tokio::time::Instant::now() + wait, number });
        info!(wait_ms = wait.as_millis() as u64, "graceful shutdown: announcing with GRACEFUL_SHUTDOWN (65535:0), then withdrawing");
        let over = self.out.graceful_over.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = over.send(number).await;
        });
    }

    /// The graceful shutdown's wait is over: withdraw (unless an undrain cancelled it).
    pub fn graceful_shutdown_over(&mut self, number: u64) {
        if self.graceful.is_some_and(|g| g.number == number) {
            self.graceful = None;
            info!("graceful shutdown: wait over, withdrawing");
            self.publish_announcements();
        }
    }

    /// How long the graceful shutdown under way still waits.
    pub fn graceful_remaining(&self) -> Option<Duration> {
        self.graceful.map(|g| g.until.saturating_duration_since(tokio::time::Instant::now()))
    }

    /// The loop's part of `lb doctor`'s evidence, and what to compare the config file with.
    fn doctor_inputs(&self) -> DoctorInputs {
        let name_of = |vip: &VipId| self.config.vips.iter().find(|v| v.id == *vip).map_or_else(|| vip.to_string(), |v| v.name.clone());
        let flips = self
            .flips
            .iter()
            .map(|((vip, real), times)| (name_of(vip), *real, times.iter().filter(|t| t.elapsed() <= FLAP_WINDOW).count() as u32))
            .collect();
        let latency = self
            .samples
            .iter()
            .filter(|(_, s)| s.recent_ms > 0.0)
            .map(|((vip, real), s)| (name_of(vip), *real, s.recent_ms, s.long_run_ms))
            .collect();
        let view = doctor::LoopView {
            status: self.status(),
            site: Some(self.site_stage()),
            prepend_below: self.config.bgp.as_ref().and_then(|b| b.prepend_below),
            bird_errors: self.bird_errors,
            bird_failing: self.bird_failing.clone(),
            peers: self.handoff_peers(),
            flips,
            latency,
            conn_table_size: self.config.conn_table_size,
        };
        DoctorInputs { view, config_path: self.config_path.clone(), running: Box::new(self.file.clone()) }
    }

    fn site_stage(&self) -> SiteStage {
        if self.config.bgp.is_none() {
            return SiteStage::NoBgp;
        }
        match (self.withdrawing(), self.graceful_remaining()) {
            (false, _) => SiteStage::Announcing,
            (true, Some(left)) => SiteStage::GracefulShutdown { withdraw_in_ms: left.as_millis() as u64 },
            (true, None) => SiteStage::Withdrawn,
        }
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
                let snapshot = metrics::Snapshot {
                    status: self.status(),
                    samples: self.samples.clone(),
                    reloads_ok: self.reloads_ok,
                    reloads_failed: self.reloads_failed,
                    bgp: metrics::BgpState {
                        enabled: self.config.bgp.is_some(),
                        errors: self.bird_errors,
                        drained: self.journal.site_drained,
                        graceful_shutdown: self.graceful.is_some(),
                    },
                    handoff_peers: self.handoff_peers(),
                    rebuilds: self.rec.rebuilds(),
                };
                let _ = reply.send(snapshot);
            }
            Command::SiteDrain { drained, reply } => self.site_drain(drained, reply),
            Command::Reload(reply) => self.start_reload(Some(reply)),
            Command::SetWeight { vip, real, weight, reply } => self.set_weight(&vip, real, weight, reply),
            Command::AddVip { vip, reply } => {
                let name = vip.name.clone();
                let exists = self.config.vips.iter().any(|v| v.name == name);
                info!(vip = %name, "adding a VIP at run time");
                self.change_vips(
                    |j| {
                        if exists {
                            return Err(AdminError::Conflict(format!("VIP {name:?} exists")));
                        }
                        j.removed_vips.retain(|n| n != &name);
                        j.added_vips.push(*vip);
                        Ok(())
                    },
                    reply,
                );
            }
            Command::RemoveVip { name, reply } => {
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
                let flips = self.flips.entry((vip, real)).or_default();
                flips.push_back(std::time::Instant::now());
                while flips.front().is_some_and(|t| t.elapsed() > FLAP_WINDOW) {
                    flips.pop_front();
                }
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

    /// On the way out: probers stop; if the config says so, handoff adopts (we keep forwarding:
    /// flows handed back to us after the withdrawal are ours) and the VIPs are withdrawn. Returns
    /// whether there is a withdrawal to wait for.
    pub fn begin_exit(&mut self) -> bool {
        self.probers.stop_all();
        if let Some((_, task)) = self.next_hop_watch.take() {
            task.abort();
        }
        if !self.config.bgp.as_ref().is_some_and(|b| b.withdraw_on_exit) {
            return false;
        }
        let was_announcing = !self.withdrawing();
        self.exiting = true;
        self.sync_handoff();
        if was_announcing {
            self.begin_graceful_shutdown();
        }
        self.publish_announcements();
        true
    }
}

pub async fn run(config_path: PathBuf) -> Result<()> {
    let interfaces = InterfaceCheck::OnThisHost;
    let file_config = config::load(&config_path, interfaces)?; // the file alone must be valid
    let journal_path = journal::path(&file_config.instance);
    let journal = journal::load(&journal_path)?;
    let file = config::load_raw(&config_path)?;
    let config = effective_config(&file, &journal, interfaces)?;
    let mac = next_hop::resolve(&config.forwarding.next_hop).await?;
    // Before the data plane is touched: a second `lb` of a running instance stops here.
    let bound = crate::api::bind(&config.api, config.metrics_listen).await?;
    let pins = pin_dir(&config.instance);
    let mut dp = Dataplane::load_pinned(&LoadOptions { conn_table_size: config.conn_table_size, ring_slots: config.ring_slots }, &pins)?;
    for iface in &config.interfaces {
        let link = pins.join(format!("link-{}", iface.name));
        let reused = link.exists();
        dp.attach_pinned(programs::BALANCER, &iface.name, iface.mode, &link).with_context(|| format!("attaching to {}", iface.name))?;
        info!(interface = %iface.name, mode = ?iface.mode, replaced_running_program = reused, "balancer attached");
    }
    let programmed = dp.programmed()?;
    if !programmed.vips.is_empty() {
        info!(vips = programmed.vips.len(), reals = programmed.reals.len(), "picked up the running data plane");
    }
    let mut rec = Reconciler::recover(dp, &programmed);
    rec.apply(&config, mac)?;

    let (health_tx, mut health_rx) = mpsc::channel(1024);
    let (cmd_tx, mut cmd_rx) = mpsc::channel(64);
    let (router_tx, mut router_rx) = mpsc::channel(16);
    let (next_hop_tx, mut next_hop_rx) = mpsc::channel(16);
    let (reload_tx, mut reload_rx) = mpsc::channel(4);
    let (journal_tx, journal_rx) = mpsc::unbounded_channel();
    let (announce_tx, announce_rx) = watch::channel(Vec::new());
    tokio::spawn(journal::run_writer(journal_path, journal_rx));
    let (metrics_listen, api, bgp) = (config.metrics_listen, config.api.clone(), config.bgp.clone());
    let (graceful_tx, mut graceful_rx) = mpsc::channel(4);
    let out = Outputs {
        announce: announce_tx,
        journal: journal_tx,
        health: health_tx,
        next_hop: next_hop_tx,
        reload: reload_tx,
        graceful_over: graceful_tx,
    };
    let mut daemon = Daemon::start(rec, config_path, file, config, journal, interfaces, out);
    if let Some(bgp) = bgp {
        let bird = BirdRouter { include: bgp.include_file, socket: bgp.bird_socket, limit: BIRD_LIMIT };
        tokio::spawn(router::run_router(bird, announce_rx, router_tx, router::Backoff::DEFAULT));
    }
    let counters = Arc::new(Counters::open(&pins)?);
    bound.serve(cmd_tx, counters, LiveMaps::open(&pins)?);
    let tcp = api.listen.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
    info!(vips = daemon.config().vips.len(), socket = %api.socket.display(), api_tcp = %tcp, metrics = %metrics_listen, "running");

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            Some(event) = health_rx.recv() => daemon.health(event),
            Some(cmd) = cmd_rx.recv() => daemon.command(cmd),
            Some(event) = router_rx.recv() => daemon.router_event(event),
            Some(change) = next_hop_rx.recv() => daemon.next_hop_changed(change),
            Some((prepared, reply)) = reload_rx.recv() => daemon.reload(prepared, reply),
            Some(number) = graceful_rx.recv() => daemon.graceful_shutdown_over(number),
            _ = hangup.recv() => daemon.start_reload(None),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    if daemon.begin_exit() {
        // The graceful shutdown's own timer ends the wait (an earlier, cancelled one's end is
        // ignored by `graceful_shutdown_over`).
        while daemon.graceful_remaining().is_some() {
            match graceful_rx.recv().await {
                Some(number) => daemon.graceful_shutdown_over(number),
                None => break,
            }
        }
        let withdrawn = tokio::time::timeout(EXIT_WITHDRAW_LIMIT, async {
            while let Some(event) = router_rx.recv().await {
                if event == RouterEvent::Applied(Vec::new()) {
                    return true;
                }
            }
            false
        });
        match withdrawn.await {
            Ok(true) => info!("every VIP withdrawn before exit"),
            _ => warn!(waited_ms = EXIT_WITHDRAW_LIMIT.as_millis() as u64, "BIRD did not confirm the withdrawal before exit"),
        }
    }
    let _ = std::fs::remove_file(&api.socket);
    info!(instance = %daemon.config().instance, "exiting; the data plane stays attached with its last state (`lb stop` removes it)");
    Ok(())
}

/// `lb stop`: detaches the programs and removes the maps of an instance.
pub fn stop(instance: &str) -> Result<()> {
    let pins = pin_dir(instance);
    if !pins.exists() {
        bail!("no instance {instance:?} ({} does not exist)", pins.display());
    }
    Dataplane::remove_pins(&pins)?;
    info!(%instance, "data plane detached and removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use tokio::sync::oneshot;

    use super::*;
    use crate::{
        reconcile::tests::{ip, Fake},
        router::tests::{FakeRouter, FAST},
    };

    const VIPS: &str = "[[vip]]\nname = \"web\"\naddress = \"10.99.0.1\"\nport = 80\nprotocol = \"tcp\"\nring_size = 13\nmin_healthy = 2\n\
                        [[vip.real]]\naddress = \"10.1.0.1\"\n[[vip.real]]\naddress = \"10.1.0.2\"\n\
                        [[vip]]\nname = \"dns\"\naddress = \"10.99.0.2\"\nport = 53\nprotocol = \"udp\"\nring_size = 13\n\
                        [[vip.real]]\naddress = \"10.1.0.3\"\n";

    fn file(extra: &str) -> RawConfig {
        file_with_graceful_shutdown(extra, 0)
    }

    fn file_with_graceful_shutdown(extra: &str, graceful_ms: u64) -> RawConfig {
        let text = format!(
            "[forwarding]\nnext_hop_mac = \"02:00:00:00:00:01\"\n[health]\nkind = \"none\"\n\
             [bgp]\nbird_socket = \"/nonexistent/bird.ctl\"\ninclude_file = \"/nonexistent/vips.conf\"\ngraceful_shutdown_ms = {graceful_ms}\n\
             [handoff]\naddress = \"10.20.0.1\"\npeers = [\"10.20.0.2\", \"10.20.0.3\"]\nhealth = {{ kind = \"none\" }}\n{extra}{VIPS}"
        );
        config::parse_raw(&text).unwrap()
    }

    /// A daemon over a fake data plane, and the far ends of its outputs.
    struct Harness {
        d: Daemon<Fake>,
        announce: watch::Receiver<Vec<Announcement>>,
        journal: mpsc::UnboundedReceiver<journal::Save>,
        graceful_over: mpsc::Receiver<u64>,
        _rest: (mpsc::Receiver<HealthEvent>, mpsc::Receiver<NextHopChanged>, mpsc::Receiver<PreparedReload>),
    }

    fn start(file: RawConfig, journal: Journal) -> Harness {
        let config = effective_config(&file, &journal, InterfaceCheck::Skip).unwrap();
        let mut rec = Reconciler::new(Fake::with_pool(200));
        rec.apply(&config, [1; 6]).unwrap();
        let (announce, announce_rx) = watch::channel(Vec::new());
        let (journal_tx, journal_rx) = mpsc::unbounded_channel();
        let (health, h) = mpsc::channel(8);
        let (next_hop, n) = mpsc::channel(8);
        let (reload, r) = mpsc::channel(8);
        let (graceful_over, g) = mpsc::channel(8);
        let out = Outputs { announce, journal: journal_tx, health, next_hop, reload, graceful_over };
        let d = Daemon::start(rec, "/nonexistent.toml".into(), file, config, journal, InterfaceCheck::Skip, out);
        Harness { d, announce: announce_rx, journal: journal_rx, graceful_over: g, _rest: (h, n, r) }
    }

    fn announced(h: &Harness) -> Vec<String> {
        h.announce.borrow().iter().map(|a| format!("{}{}", a.prefix, if a.prepend { "+" } else { "" })).collect()
    }

    /// Runs a state-changing command; the journal writer's part is played here (it answers ok).
    fn change(h: &mut Harness, make: impl FnOnce(Reply<()>) -> Command) -> Result<(), AdminError> {
        let (tx, mut rx) = oneshot::channel();
        h.d.command(make(tx));
        if let Ok((_, Some(reply))) = h.journal.try_recv() {
            let _ = reply.send(Ok(()));
        }
        rx.try_recv().expect("answered at once")
    }

    fn flip(h: &mut Harness, vip: &str, real: &str, up: bool) {
        let vip = h.d.config.vips.iter().find(|v| v.name == vip).unwrap().id;
        h.d.health(HealthEvent::Flip { target: Target::Real(vip, ip(real)), up, reason: "test".into() });
    }

    #[tokio::test]
    async fn the_journal_applies_over_the_file_at_start() {
        let added = config::parse_raw(
            "[forwarding]\nnext_hop_mac = \"02:00:00:00:00:01\"\n[[vip]]\nname = \"new\"\naddress = \"10.99.0.9\"\nport = 80\nprotocol = \"tcp\"\nring_size = 13\n[[vip.real]]\naddress = \"10.1.0.9\"\n",
        )
        .unwrap()
        .vips;
        let journal = Journal {
            weights: vec![("web".into(), ip("10.1.0.2"), 0)],
            added_vips: added,
            removed_vips: vec!["dns".into()],
            site_drained: false,
        };
        let h = start(file(""), journal);
        let status = h.d.status();
        let names: Vec<&str> = status.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["web", "new"]);
        let web = status.iter().find(|v| v.name == "web").unwrap();
        assert_eq!((web.reals[1].weight, web.reals[1].slots), (0, 0), "the journaled drain holds");
        assert_eq!(announced(&h), ["10.99.0.1", "10.99.0.9"]);
    }

    #[tokio::test]
    async fn a_drain_adopts_before_it_withdraws_and_is_journaled() {
        let mut h = start(file(""), Journal::default());
        let seen = Rc::new(RefCell::new(Vec::new()));
        let (rx, log) = (h.announce.clone(), seen.clone());
        h.d.rec.dataplane_mut().on_handoff = Some(Box::new(move |handoff| log.borrow_mut().push((handoff.adopt, rx.borrow().len()))));
        assert_eq!(announced(&h), ["10.99.0.1", "10.99.0.2"]);
        change(&mut h, |reply| Command::SiteDrain { drained: true, reply }).unwrap();
        assert_eq!(*seen.borrow(), [(true, 2)], "adopt was programmed while both VIPs were still announced");
        assert!(announced(&h).is_empty());
        assert!(h.d.journal().site_drained);
        change(&mut h, |reply| Command::SiteDrain { drained: false, reply }).unwrap();
        assert_eq!(announced(&h), ["10.99.0.1", "10.99.0.2"]);
        assert_eq!(seen.borrow().last(), Some(&(false, 0)), "and stopped adopting before announcing again: new flows at peers stay theirs");
    }

    fn graceful(h: &Harness) -> Vec<bool> {
        h.announce.borrow().iter().map(|a| a.graceful_shutdown).collect()
    }

    #[tokio::test]
    async fn a_drain_announces_with_graceful_shutdown_then_withdraws_and_an_undrain_cancels_it() {
        let mut h = start(file_with_graceful_shutdown("", 50), Journal::default());
        assert_eq!((announced(&h).len(), graceful(&h)), (2, vec![false, false]));
        assert_eq!(h.d.site_stage(), SiteStage::Announcing);
        change(&mut h, |reply| Command::SiteDrain { drained: true, reply }).unwrap();
        assert_eq!((announced(&h).len(), graceful(&h)), (2, vec![true, true]), "still announced, with GRACEFUL_SHUTDOWN");
        assert!(matches!(h.d.site_stage(), SiteStage::GracefulShutdown { withdraw_in_ms } if withdraw_in_ms <= 50));
        assert!(h.d.rec.handoff().is_some_and(|h| h.adopt), "adopting from the start");
        let first = h.graceful_over.recv().await.expect("the wait ends");
        h.d.graceful_shutdown_over(first);
        assert!(announced(&h).is_empty());
        assert_eq!(h.d.site_stage(), SiteStage::Withdrawn);

        // An undrain during the wait cancels it; the old timer's end is ignored.
        change(&mut h, |reply| Command::SiteDrain { drained: false, reply }).unwrap();
        change(&mut h, |reply| Command::SiteDrain { drained: true, reply }).unwrap();
        let second = h.graceful_over.recv().await.expect("the wait ends");
        change(&mut h, |reply| Command::SiteDrain { drained: false, reply }).unwrap();
        h.d.graceful_shutdown_over(second);
        assert_eq!((announced(&h).len(), graceful(&h)), (2, vec![false, false]), "announced plainly again");
        assert_eq!(h.d.site_stage(), SiteStage::Announcing);

        // Exiting waits the same way; an already drained site is not announced again.
        assert!(h.d.begin_exit());
        assert_eq!(graceful(&h), [true, true]);
        assert!(h.d.graceful_remaining().is_some_and(|left| left <= Duration::from_millis(50)));
    }

    #[tokio::test]
    async fn health_decides_what_is_announced() {
        let mut h = start(file(""), Journal::default());
        flip(&mut h, "web", "10.1.0.2", false);
        assert_eq!(announced(&h), ["10.99.0.2"], "web needs 2 healthy reals");
        flip(&mut h, "web", "10.1.0.2", true);
        assert_eq!(announced(&h), ["10.99.0.1", "10.99.0.2"]);
    }

    #[tokio::test]
    async fn a_rejected_reload_keeps_the_running_state() {
        let mut h = start(file(""), Journal::default());
        let before = (h.d.rec.dataplane().view(), serde_json::to_string(&h.d.status()).unwrap());
        let writes = h.d.rec.dataplane().writes;
        let reload = |h: &mut Harness, prepared: Result<Prepared, AdminError>| {
            let (tx, mut rx) = oneshot::channel();
            h.d.reload(prepared, Some(tx));
            rx.try_recv().unwrap()
        };
        // A restart-only change.
        let mut other = file("");
        other.conn_table_size = 1024;
        assert!(matches!(reload(&mut h, Ok(Prepared { file: other, resolved: None, took: Duration::ZERO })), Err(AdminError::Conflict(_))));
        // A config that does not validate.
        let mut bad = file("");
        bad.vips[0].reals[0].address = "not an address".into();
        assert!(matches!(reload(&mut h, Ok(Prepared { file: bad, resolved: None, took: Duration::ZERO })), Err(AdminError::BadRequest(_))));
        // A failed map write half-way through.
        let mut changed = file("");
        changed.vips[0].reals.pop();
        changed.vips[1].ring_size = Some(17);
        h.d.rec.dataplane_mut().fail_at = Some(writes + 3);
        assert!(matches!(
            reload(&mut h, Ok(Prepared { file: changed.clone(), resolved: None, took: Duration::ZERO })),
            Err(AdminError::Internal(_))
        ));
        // The file could not be read or resolved.
        assert!(reload(&mut h, Err(AdminError::BadRequest("reading".into()))).is_err());
        assert_eq!((h.d.rec.dataplane().view(), serde_json::to_string(&h.d.status()).unwrap()), before);
        assert_eq!((h.d.reloads_ok, h.d.reloads_failed), (0, 4));
        h.d.rec.dataplane_mut().fail_at = None;
        reload(&mut h, Ok(Prepared { file: changed, resolved: None, took: Duration::ZERO })).unwrap();
        assert_eq!(h.d.status()[0].reals.len(), 1);
        assert_eq!(h.d.reloads_ok, 1);
    }

    #[tokio::test]
    async fn admin_errors_say_what_kind_they_are() {
        let mut h = start(file(""), Journal::default());
        let weight = |vip: &str, real: &str, weight| {
            let (vip, real) = (vip.to_owned(), ip(real));
            move |reply| Command::SetWeight { vip, real, weight, reply }
        };
        assert!(matches!(change(&mut h, weight("nope", "10.1.0.1", Some(1))), Err(AdminError::NotFound(_))));
        assert!(matches!(change(&mut h, weight("web", "10.9.9.9", Some(1))), Err(AdminError::NotFound(_))));
        assert!(matches!(change(&mut h, weight("web", "10.1.0.1", Some(1_000_000))), Err(AdminError::BadRequest(_))));
        let existing = Box::new(h.d.file.vips[0].clone());
        assert!(matches!(change(&mut h, |reply| Command::AddVip { vip: existing, reply }), Err(AdminError::Conflict(_))));
        assert!(matches!(change(&mut h, |reply| Command::RemoveVip { name: "nope".into(), reply }), Err(AdminError::NotFound(_))));
        assert_eq!(AdminError::Internal(String::new()).status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        // A write that fails: 500, and nothing changed.
        let writes = h.d.rec.dataplane().writes;
        h.d.rec.dataplane_mut().fail_at = Some(writes + 1);
        assert!(matches!(change(&mut h, weight("web", "10.1.0.1", Some(5))), Err(AdminError::Internal(_))));
        assert!(h.d.journal().weights.is_empty(), "not journaled either");
        h.d.rec.dataplane_mut().fail_at = None;
        change(&mut h, weight("web", "10.1.0.1", Some(5))).unwrap();
        assert_eq!(h.d.journal().weights, [("web".to_owned(), ip("10.1.0.1"), 5)]);
        change(&mut h, |reply| Command::RemoveVip { name: "dns".into(), reply }).unwrap();
        assert_eq!(h.d.journal().removed_vips, ["dns"]);
        assert_eq!(announced(&h), ["10.99.0.1"]);
    }

    #[tokio::test]
    async fn a_failed_journal_write_is_reported() {
        let mut h = start(file(""), Journal::default());
        let (tx, rx) = oneshot::channel();
        h.d.command(Command::SiteDrain { drained: true, reply: tx });
        let (saved, reply) = h.journal.try_recv().unwrap();
        assert!(saved.site_drained);
        // The writer answers; here it failed.
        reply.unwrap().send(Err(AdminError::Internal("disk full".into()))).unwrap();
        assert!(matches!(rx.await.unwrap(), Err(AdminError::Internal(_))));
    }

    #[tokio::test]
    async fn handoff_follows_peer_health() {
        let mut h = start(file(""), Journal::default());
        let programmed = |h: &Harness| h.d.rec.dataplane().handoff.clone().unwrap();
        assert_eq!(programmed(&h).peers, [ip("10.20.0.2"), ip("10.20.0.3")]);
        h.d.health(HealthEvent::Flip { target: Target::Peer(ip("10.20.0.2")), up: false, reason: "test".into() });
        let configured = vec![ip("10.20.0.2"), ip("10.20.0.3")];
        let expected = Handoff { node: Some(ip("10.20.0.1")), peers: vec![ip("10.20.0.3")], sources: configured, adopt: false };
        assert_eq!(programmed(&h), expected, "a peer that is down is not handed to, but still taken from");
        h.d.health(HealthEvent::Flip { target: Target::Peer(ip("10.20.0.2")), up: true, reason: "test".into() });
        assert_eq!(programmed(&h).peers, [ip("10.20.0.2"), ip("10.20.0.3")]);
        assert!(h.d.begin_exit(), "withdraw_on_exit is the default");
        assert!(programmed(&h).adopt, "exiting adopts");
        assert!(announced(&h).is_empty(), "and withdraws");
    }

    #[tokio::test]
    async fn bird_failures_are_counted_and_recovery_shows_in_status() {
        let mut h = start(file(""), Journal::default());
        let router = FakeRouter::default();
        *router.failing.lock().unwrap() = 2;
        let (tx, mut events) = mpsc::channel(8);
        tokio::spawn(router::run_router(router.clone(), h.announce.clone(), tx, FAST));
        for _ in 0..2 {
            let event = events.recv().await.unwrap();
            assert!(matches!(event, RouterEvent::Failed { .. }), "{event:?}");
            h.d.router_event(event);
            assert!(h.d.status().iter().all(|v| !v.announced), "nothing confirmed yet");
        }
        let event = events.recv().await.unwrap();
        h.d.router_event(event);
        assert!(h.d.status().iter().all(|v| v.announced));
        assert_eq!(h.d.bird_errors, 2);
        let (tx, rx) = oneshot::channel();
        h.d.command(Command::Metrics(tx));
        assert_eq!(rx.await.unwrap().bgp.errors, 2);
        // A withdrawal goes out on the next event.
        flip(&mut h, "dns", "10.1.0.3", false);
        let event = events.recv().await.unwrap();
        assert_eq!(event, RouterEvent::Applied(vec![Announcement { prefix: ip("10.99.0.1"), prepend: false, graceful_shutdown: false }]));
        h.d.router_event(event);
        assert_eq!(h.d.status().iter().map(|v| v.announced).collect::<Vec<_>>(), [true, false]);
        assert_eq!(router.calls.lock().unwrap().len(), 4, "3 tries of the first list, 1 of the second");
    }

    #[tokio::test]
    async fn a_new_mac_of_the_next_hop_is_written_and_other_addresses_are_ignored() {
        let text =
            config::parse_raw(&format!("[forwarding]\nnext_hop_ip = \"10.255.255.254\"\n[health]\nkind = \"none\"\n{VIPS}")).unwrap();
        let h = &mut start(text, Journal::default());
        let mac = |h: &Harness| h.d.rec.dataplane().config.unwrap().next_hop_mac;
        assert_eq!(mac(h), [1; 6]);
        h.d.next_hop_changed(NextHopChanged { ip: ip("10.255.255.254"), mac: [9; 6] });
        assert_eq!(mac(h), [9; 6]);
        assert_eq!(h.d.rec.dataplane().config.unwrap().mtu, 1500, "the rest stays");
        h.d.next_hop_changed(NextHopChanged { ip: ip("10.0.0.1"), mac: [7; 6] });
        assert_eq!(mac(h), [9; 6], "a watcher of an earlier next hop is ignored");
        // A change made at run time keeps the followed MAC.
        change(h, |reply| Command::RemoveVip { name: "dns".into(), reply }).unwrap();
        assert_eq!(mac(h), [9; 6]);
    }
}
