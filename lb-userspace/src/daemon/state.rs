//! The daemon's state: what `Daemon` holds, where its decisions go (`Outputs`), and starting it.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::{
    admin::{AdminError, Reply},
    bgp::bird::Announcement,
    config::{Config, InterfaceCheck, RawConfig, VipId},
    dataplane::DataplaneOps,
    health::{HealthEvent, Probers},
    journal::{self, Journal},
    metrics::HealthSample,
    next_hop::NextHopChanged,
    reconcile::Reconciler,
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
    pub(super) config_path: PathBuf,
    pub(super) config: Config,
    /// The config file as last read: run-time VIP changes apply over it without reading it.
    pub(super) file: RawConfig,
    pub(super) interfaces: InterfaceCheck,
    pub(super) rec: Reconciler<D>,
    pub(super) journal: Journal,
    pub(super) probers: Probers,
    pub(super) samples: HashMap<(VipId, IpAddr), HealthSample>,
    /// Every health check of a real since start, and the failed ones.
    pub(super) checks: crate::health::CheckTally,
    pub(super) reloads_ok: u64,
    pub(super) reloads_failed: u64,
    /// What the router last confirmed it announces (None: nothing yet).
    pub(super) announced: Option<Vec<Announcement>>,
    pub(super) bird_errors: u64,
    /// Handoff peers whose checks failed (`false`) or passed after a failure (`true`).
    pub(super) peers_up: HashMap<IpAddr, bool>,
    /// The next hop being followed in the neighbour table, and its watcher.
    pub(super) next_hop_watch: Option<(IpAddr, JoinHandle<()>)>,
    /// Set on the way out: the site withdraws but keeps forwarding.
    pub(super) exiting: bool,
    /// Drained or exiting, and still announcing with GRACEFUL_SHUTDOWN.
    pub(super) graceful: Option<GracefulShutdown>,
    /// Each real's health flips within the last `FLAP_WINDOW` (older ones are dropped as new come).
    pub(super) flips: Flips,
    /// BIRD's last failure, until the router task next succeeds.
    pub(super) bird_failing: Option<String>,
    /// BIRD's BGP sessions at its last answer to `show protocols` (`None`: not asked yet, or
    /// BIRD did not answer).
    pub(super) bgp_sessions: Option<Vec<crate::bgp::Session>>,
    pub(super) graceful_count: u64,
    pub(super) out: Outputs,
    /// This node's part in a fleet (None: its VIPs come from its own file).
    pub(super) fleet: Option<super::fleet::FleetState>,
    /// QUIC-LB keys by file, as last read off the loop (at start, by a reload, by the fleet
    /// follower).
    pub(super) quic_keys: crate::config::QuicKeys,
    /// Adapted VIPs' controllers (`[vip.adapt]`), and the ring rebuilds their changes caused.
    pub(super) adapt: HashMap<VipId, super::adapt::VipAdapt>,
    pub(super) adapt_rebuilds: u64,
}

/// A graceful shutdown under way: announced with GRACEFUL_SHUTDOWN until `until`.
#[derive(Debug, Clone, Copy)]
pub(super) struct GracefulShutdown {
    pub(super) until: tokio::time::Instant,
    /// Told apart from an earlier one that an undrain cancelled.
    pub(super) number: u64,
}

/// Each real's recent health flips.
pub(super) type Flips = HashMap<(VipId, IpAddr), VecDeque<Instant>>;

/// A prepared reload, and who asked for it (None: SIGHUP).
pub type PreparedReload = (Result<Prepared, AdminError>, Option<Reply<()>>);

/// A reload read off the loop: the config file, and the MAC of its next hop when the file names
/// it by address (validation is left to the loop, which validates the file with the journal).
#[derive(Debug)]
pub struct Prepared {
    pub file: RawConfig,
    pub resolved: Option<(IpAddr, [u8; 6])>,
    /// The QUIC-LB keys the file names.
    pub quic_keys: crate::config::QuicKeys,
    /// How long reading, parsing and resolving took.
    pub took: Duration,
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
        let probers = Probers::new(config.limits.probes_per_host);
        let mut d = Self {
            config_path,
            config,
            file,
            interfaces,
            rec,
            journal,
            probers,
            samples: HashMap::new(),
            checks: Default::default(),
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
            bgp_sessions: None,
            out,
            fleet: None,
            quic_keys: Default::default(),
            adapt: HashMap::new(),
            adapt_rebuilds: 0,
        };
        d.reapply_journal();
        if super::server_ids::record(&mut d.journal.server_ids, &d.config, super::server_ids::now_s()) {
            d.save_journal(None);
        }
        d.sync_handoff();
        d.sync_probers();
        d.follow_next_hop();
        // Announce only once the rings are programmed; reals start up, so a first health round is
        // not needed before announcing.
        d.publish_announcements();
        d
    }

    /// The QUIC-LB keys the running config was read with, for the changes to come (a reload or
    /// a fleet revision reads its own; `lb vip add` reads none).
    pub fn keep_quic_keys(&mut self, keys: crate::config::QuicKeys) {
        self.quic_keys = keys;
    }

    /// Makes this a fleet node: revisions come through `fleet_event`, the report goes out.
    pub fn follow_fleet(&mut self, fleet: super::fleet::FleetState) {
        self.fleet = Some(fleet);
        self.publish_announcements();
        self.publish_report();
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
}
