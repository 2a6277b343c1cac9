//! `lb run`: load and attach (pinned), program the maps from the config, run health checks, and
//! apply flips, reloads and admin commands from one loop that owns all state.
//!
//! Exiting leaves the programs attached and the maps pinned under /sys/fs/bpf/<instance>: traffic
//! keeps flowing on the last state, and the next `lb run` (same or newer binary) picks it up,
//! connection table included. `lb stop --instance NAME` removes everything.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use lb_common::programs;
use serde::{Deserialize, Serialize};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot, watch},
};
use tracing::{info, warn};

use crate::{
    bird,
    config::{self, Config, HealthCheck, InterfaceCheck, NextHop, RawConfig, RawVip, VipId},
    dataplane::{Dataplane, LoadOptions},
    health::{self, HealthEvent, Target},
    metrics::{self, HealthSample},
    reconcile::{Reconciler, VipStatus},
};

/// Where an instance's programs and maps are pinned.
pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new("/sys/fs/bpf").join(format!("anycast-lb-{instance}"))
}

/// Changes made at run time (admin API / CLI), kept across reloads and restarts. They apply on
/// top of the config file; a VIP the file itself defines or removes by name wins over them.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
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
}

impl Journal {
    /// The file's config with the run-time VIP changes applied.
    fn over(&self, file: &RawConfig) -> RawConfig {
        let mut raw = file.clone();
        raw.vips.retain(|v| !self.removed_vips.contains(&v.name));
        let file_names: Vec<&str> = file.vips.iter().map(|v| v.name.as_str()).collect();
        raw.vips.extend(self.added_vips.iter().filter(|v| !file_names.contains(&v.name.as_str())).cloned());
        raw
    }
}

/// Where runtime changes are journaled: /var/lib/anycast-lb/<instance>.json (override with
/// LB_STATE_DIR).
pub fn journal_path(instance: &str) -> PathBuf {
    let dir = std::env::var_os("LB_STATE_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/lib/anycast-lb"));
    dir.join(format!("{instance}.json"))
}

fn load_journal(path: &Path) -> Journal {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            warn!(path = %path.display(), error = %e, "ignoring unreadable journal");
            Journal::default()
        }),
        Err(_) => Journal::default(),
    }
}

/// Writes the journal atomically (temp file + rename).
fn save_journal(path: &Path, journal: &Journal) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(journal)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The next hop's MAC: given, or found in the neighbour table.
pub fn resolve_next_hop(next_hop: &NextHop) -> Result<[u8; 6]> {
    let ip = match next_hop {
        NextHop::Mac(mac) => return Ok(*mac),
        NextHop::Ip(ip) => *ip,
    };
    let out = std::process::Command::new("ip").args(["neigh", "show", &ip.to_string()]).output().context("running ip neigh")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text.split_whitespace().skip_while(|w| *w != "lladdr").nth(1).and_then(|m| {
        let v: Vec<u8> = m.split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
        v.try_into().ok()
    });
    match mac {
        Some(mac) => Ok(mac),
        None => bail!("no neighbour entry with a MAC for next hop {ip} (ping it once, or give next_hop_mac)"),
    }
}

/// Admin commands, answered by the loop that owns the state.
pub enum Command {
    Status(oneshot::Sender<Vec<VipStatus>>),
    Handoff(oneshot::Sender<HandoffStatus>),
    Metrics(oneshot::Sender<String>),
    Reload(oneshot::Sender<Result<(), String>>),
    /// Set (Some) or clear (None) a real's runtime weight.
    SetWeight {
        vip: String,
        real: IpAddr,
        weight: Option<u32>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    AddVip {
        vip: Box<RawVip>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Withdraw (true) or announce again (false) every VIP of this site.
    SiteDrain {
        drained: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    RemoveVip {
        name: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// One prober task per real of each VIP and per handoff peer, stopped when its check leaves the
/// config or changes.
#[derive(Default)]
struct Probers {
    running: HashMap<Target, (HealthCheck, watch::Sender<bool>)>,
}

impl Probers {
    fn sync(&mut self, config: &Config, rec: &Reconciler<Dataplane>, events: &mpsc::Sender<HealthEvent>) {
        let mut wanted = HashMap::new();
        for vip in &config.vips {
            for real in &vip.reals {
                wanted.insert(Target::Real(vip.id, real.addr), real.health.clone());
            }
        }
        if let Some(h) = &config.handoff {
            for &peer in &h.peers {
                wanted.insert(Target::Peer(peer), h.health.clone());
            }
        }
        self.running.retain(|key, (check, stop)| {
            let keep = wanted.get(key) == Some(check);
            if !keep {
                let _ = stop.send(true);
            }
            keep
        });
        for (key, check) in wanted {
            if self.running.contains_key(&key) || check.kind == config::CheckKind::None {
                continue;
            }
            let (stop_tx, stop_rx) = watch::channel(false);
            let start_up = match key {
                Target::Real(vip, real) => rec.starts_up(&vip, real),
                Target::Peer(_) => true,
            };
            tokio::spawn(health::run_prober(key, check.clone(), start_up, events.clone(), stop_rx));
            self.running.insert(key, (check, stop_tx));
        }
    }

    fn stop_all(&mut self) {
        for (_, (_, stop)) in self.running.drain() {
            let _ = stop.send(true);
        }
    }
}

struct Daemon {
    config_path: PathBuf,
    config: Config,
    rec: Reconciler<Dataplane>,
    probers: Probers,
    health_tx: mpsc::Sender<HealthEvent>,
    samples: HashMap<(VipId, IpAddr), HealthSample>,
    reloads_ok: u64,
    reloads_failed: u64,
    journal_path: PathBuf,
    journal: Journal,
    /// What BIRD was last told successfully (None: nothing yet).
    announced: Option<Vec<bird::Announcement>>,
    bird_errors: u64,
    /// Handoff peers whose checks failed (`false`) or passed after a failure (`true`).
    peers_up: HashMap<IpAddr, bool>,
    /// What the handoff maps were last set to.
    handoff_programmed: Option<HandoffState>,
    /// Set on the way out: the site withdraws but keeps forwarding.
    exiting: bool,
}

/// Cross-site handoff as `GET /handoff` and `lb status` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffStatus {
    /// This node's handoff address (`None`: no `[handoff]`).
    pub node: Option<IpAddr>,
    /// Peers in config order, with whether they pass their checks.
    pub peers: Vec<(IpAddr, bool)>,
    /// Unknown handed-off flows are taken here (the site withdrew by choice).
    pub adopt: bool,
}

/// What the data plane's handoff maps say.
#[derive(Debug, Clone, PartialEq)]
struct HandoffState {
    node: Option<IpAddr>,
    peers: Vec<IpAddr>,
    adopt: bool,
}

/// The config to run: the file with the journal's VIP changes; if those no longer fit the file
/// (say the file now has a conflicting VIP), the file alone, with a warning.
fn effective_config(path: &Path, journal: &Journal) -> Result<Config> {
    let file = config::load_raw(path)?;
    match journal.over(&file).validate(InterfaceCheck::OnThisHost) {
        Ok(config) => Ok(config),
        Err(e) if !journal.added_vips.is_empty() || !journal.removed_vips.is_empty() => {
            warn!(error = %e, "run-time VIP changes do not fit the config file; using the file alone");
            Ok(file.validate(InterfaceCheck::OnThisHost)?)
        }
        Err(e) => Err(e.into()),
    }
}

impl Daemon {
    /// The VIPs this site should announce now: servable ones, unless the site is drained.
    fn wanted_announcements(&self) -> Vec<bird::Announcement> {
        let Some(bgp) = &self.config.bgp else { return Vec::new() };
        if self.journal.site_drained {
            return Vec::new();
        }
        let mut list: Vec<bird::Announcement> = self
            .rec
            .status()
            .iter()
            .filter(|v| v.servable())
            .map(|v| bird::Announcement { prefix: v.vip.addr, prepend: bgp.prepend_below.is_some_and(|t| v.capacity() < t) })
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

    /// Tells BIRD what to announce if that changed (or the last attempt failed). Errors are
    /// logged and counted; forwarding goes on, and the retry tick tries again.
    fn sync_bgp(&mut self) {
        let Some(bgp) = self.config.bgp.clone() else { return };
        let wanted = self.wanted_announcements();
        if self.announced.as_ref() == Some(&wanted) {
            return;
        }
        match bird::apply(&bgp.include_file, &bgp.bird_socket, &bird::render(&wanted)) {
            Ok(()) => {
                let list: Vec<String> =
                    wanted.iter().map(|a| format!("{}{}", a.prefix, if a.prepend { " (prepended)" } else { "" })).collect();
                info!(announced = %list.join(", "), drained = self.journal.site_drained, "BGP announcements updated");
                self.announced = Some(wanted);
            }
            Err(e) => {
                self.bird_errors += 1;
                warn!(error = %e, "BIRD did not take the announcements; forwarding continues, retrying");
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
        let wanted = HandoffState {
            node: self.config.handoff.as_ref().map(|h| h.address),
            peers: self.handoff_peers().into_iter().filter(|&(_, up)| up).map(|(p, _)| p).collect(),
            adopt: self.journal.site_drained || self.exiting,
        };
        if self.handoff_programmed.as_ref() == Some(&wanted) {
            return;
        }
        match self.rec.dataplane_mut().set_handoff(wanted.node, &wanted.peers, wanted.adopt) {
            Ok(()) => {
                let peers: Vec<String> = wanted.peers.iter().map(|p| p.to_string()).collect();
                info!(node = ?wanted.node, peers_up = %peers.join(", "), adopt = wanted.adopt, "handoff programmed");
                self.handoff_programmed = Some(wanted);
            }
            Err(e) => warn!(error = %e, "programming handoff failed"),
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
    fn install(&mut self, config: Config) -> Result<()> {
        if config.instance != self.config.instance
            || config.interfaces != self.config.interfaces
            || config.conn_table_size != self.config.conn_table_size
        {
            bail!("instance, interfaces and conn_table_size change only with a restart");
        }
        let mac = resolve_next_hop(&config.forwarding.next_hop)?;
        self.rec.apply(&config, mac)?;
        self.config = config;
        self.reapply_journal();
        self.probers.sync(&self.config, &self.rec, &self.health_tx);
        let configured: Vec<IpAddr> = self.config.handoff.iter().flat_map(|h| h.peers.clone()).collect();
        self.peers_up.retain(|p, _| configured.contains(p));
        self.sync_handoff();
        self.sync_bgp();
        Ok(())
    }

    /// Tries a journal change: applied and saved if the resulting config is valid, else undone.
    fn change_vips(&mut self, change: impl FnOnce(&mut Journal) -> Result<(), String>) -> Result<(), String> {
        let mut journal = self.journal.clone();
        change(&mut journal)?;
        let result = (|| -> Result<()> {
            let file = config::load_raw(&self.config_path)?;
            let config = journal.over(&file).validate(InterfaceCheck::OnThisHost)?;
            self.install(config)
        })();
        result.map_err(|e| format!("{e:#}"))?;
        self.journal = journal;
        save_journal(&self.journal_path, &self.journal).map_err(|e| format!("{e:#}"))
    }

    fn reload(&mut self) -> Result<(), String> {
        let result = effective_config(&self.config_path, &self.journal).and_then(|config| self.install(config));
        match &result {
            Ok(()) => {
                self.reloads_ok += 1;
                info!(path = %self.config_path.display(), vips = self.config.vips.len(), "config reloaded");
            }
            Err(e) => {
                self.reloads_failed += 1;
                warn!(path = %self.config_path.display(), error = %format!("{e:#}"), "config reload rejected; running state kept");
            }
        }
        result.map_err(|e| format!("{e:#}"))
    }

    fn reapply_journal(&mut self) {
        for (vip, real, weight) in self.journal.weights.clone() {
            if let Err(e) = self.rec.set_weight(&vip, real, Some(weight)) {
                warn!(%vip, %real, error = %e, "journaled weight no longer applies");
            }
        }
    }

    fn set_weight(&mut self, vip: &str, real: IpAddr, weight: Option<u32>) -> Result<(), String> {
        if weight.is_some_and(|w| w > config::MAX_WEIGHT) {
            return Err(format!("weight out of range 0 ..= {}", config::MAX_WEIGHT));
        }
        self.rec.set_weight(vip, real, weight).map_err(|e| e.to_string())?;
        info!(%vip, %real, weight = ?weight, "real weight set at run time");
        self.journal.weights = self.rec.weight_overrides();
        save_journal(&self.journal_path, &self.journal).map_err(|e| format!("{e:#}"))
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Handoff(reply) => {
                let adopt = self.handoff_programmed.as_ref().is_some_and(|h| h.adopt);
                let _ =
                    reply.send(HandoffStatus { node: self.config.handoff.as_ref().map(|h| h.address), peers: self.handoff_peers(), adopt });
            }
            Command::Metrics(reply) => {
                let bgp =
                    metrics::BgpState { enabled: self.config.bgp.is_some(), errors: self.bird_errors, drained: self.journal.site_drained };
                let status = self.status();
                let peers = self.handoff_peers();
                let text = metrics::render(&self.rec, &status, &self.samples, self.reloads_ok, self.reloads_failed, &bgp, &peers);
                let _ = reply.send(text);
            }
            Command::SiteDrain { drained, reply } => {
                let result = if self.config.bgp.is_none() {
                    Err("no [bgp] section: this site announces nothing".to_owned())
                } else {
                    self.journal.site_drained = drained;
                    info!(drained, "site drain changed");
                    self.sync_handoff(); // adopt before the withdrawal moves our flows to peers
                    self.sync_bgp();
                    save_journal(&self.journal_path, &self.journal).map_err(|e| format!("{e:#}"))
                };
                let _ = reply.send(result);
            }
            Command::Reload(reply) => {
                let _ = reply.send(self.reload());
            }
            Command::SetWeight { vip, real, weight, reply } => {
                let _ = reply.send(self.set_weight(&vip, real, weight));
            }
            Command::AddVip { vip, reply } => {
                let name = vip.name.clone();
                let exists = self.config.vips.iter().any(|v| v.name == name);
                let result = self.change_vips(|j| {
                    if exists {
                        return Err(format!("VIP {name:?} exists"));
                    }
                    j.removed_vips.retain(|n| n != &name);
                    j.added_vips.push(*vip);
                    Ok(())
                });
                if result.is_ok() {
                    info!(vip = %name, "VIP added at run time");
                }
                let _ = reply.send(result);
            }
            Command::RemoveVip { name, reply } => {
                let known = self.config.vips.iter().any(|v| v.name == name);
                let result = if !known {
                    Err(format!("no VIP {name:?}"))
                } else {
                    self.change_vips(|j| {
                        let before = j.added_vips.len();
                        j.added_vips.retain(|v| v.name != name);
                        if j.added_vips.len() == before {
                            j.removed_vips.push(name.clone());
                        }
                        Ok(())
                    })
                };
                if result.is_ok() {
                    info!(vip = %name, "VIP removed at run time");
                }
                let _ = reply.send(result);
            }
        }
    }

    fn health(&mut self, event: HealthEvent) {
        match event {
            HealthEvent::Flip { target: Target::Peer(peer), up, reason } => {
                info!(%peer, state = if up { "up" } else { "down" }, %reason, "handoff peer health changed");
                self.peers_up.insert(peer, up);
                self.sync_handoff();
            }
            HealthEvent::Checked { target: Target::Peer(_), .. } => {}
            HealthEvent::Flip { target: Target::Real(vip, real), up, reason } => {
                info!(%vip, %real, state = if up { "up" } else { "down" }, %reason, "real health changed");
                match self.rec.set_health(&vip, real, up) {
                    Ok(_) => info!(%vip, rebuild_ms = self.rec.rebuilds.last.as_secs_f64() * 1e3, "table rebuilt"),
                    Err(e) => warn!(%vip, %real, error = %e, "applying a health change failed"),
                }
                self.sync_bgp();
            }
            HealthEvent::Checked { target: Target::Real(vip, real), latency } => {
                self.samples
                    .insert((vip, real), HealthSample { latency, checks: self.samples.get(&(vip, real)).map_or(1, |s| s.checks + 1) });
            }
        }
    }
}

pub async fn run(config_path: PathBuf) -> Result<()> {
    let file = config::load(&config_path, InterfaceCheck::OnThisHost)?; // the file alone must be valid
    let journal_file = journal_path(&file.instance);
    let journal = load_journal(&journal_file);
    let config = effective_config(&config_path, &journal)?;
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
    rec.apply(&config, resolve_next_hop(&config.forwarding.next_hop)?)?;

    let (health_tx, mut health_rx) = mpsc::channel(1024);
    let (cmd_tx, mut cmd_rx) = mpsc::channel(64);
    let metrics_listen = config.metrics_listen;
    let api_listen = config.api_listen;
    let mut daemon = Daemon {
        journal_path: journal_file,
        journal,
        config_path,
        config,
        rec,
        probers: Probers::default(),
        health_tx,
        samples: HashMap::new(),
        reloads_ok: 0,
        reloads_failed: 0,
        announced: None,
        bird_errors: 0,
        peers_up: HashMap::new(),
        handoff_programmed: None,
        exiting: false,
    };
    daemon.reapply_journal();
    daemon.sync_handoff();
    daemon.probers.sync(&daemon.config, &daemon.rec, &daemon.health_tx);
    // Announce only once the rings are programmed; reals start up, so a first health round is
    // not needed before announcing.
    daemon.sync_bgp();
    crate::api::serve(api_listen, metrics_listen, cmd_tx).await?;
    info!(vips = daemon.config.vips.len(), api = %api_listen, metrics = %metrics_listen, "running");

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = retry.tick() => daemon.sync_bgp(),
            Some(event) = health_rx.recv() => daemon.health(event),
            Some(cmd) = cmd_rx.recv() => daemon.handle(cmd),
            _ = hangup.recv() => { let _ = daemon.reload(); }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    daemon.probers.stop_all();
    if let Some(bgp) = daemon.config.bgp.clone().filter(|b| b.withdraw_on_exit) {
        daemon.exiting = true;
        daemon.sync_handoff(); // we keep forwarding: flows handed back to us after the withdrawal are ours
        match bird::apply(&bgp.include_file, &bgp.bird_socket, &bird::render(&[])) {
            Ok(()) => info!("every VIP withdrawn before exit"),
            Err(e) => warn!(error = %e, "could not withdraw the VIPs before exit"),
        }
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    info!(instance = %daemon.config.instance, "exiting; the data plane stays attached with its last state (`lb stop` removes it)");
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
