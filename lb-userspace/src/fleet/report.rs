//! What a node tells the fleet about itself, at `P/nodes/SITE/NODE` under a lease of its own:
//! the revision it runs (or refused), its VIPs' announcements, its reals, its drain stage and
//! `lb doctor`'s worst finding. A node that dies stops renewing the lease, and etcd deletes its
//! report within the lease's TTL.

use std::{
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use etcd_client::PutOptions;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{follow::FleetEvent, store::StoreAccess};
use crate::{
    http::{self, Call, Endpoint},
    operator::doctor::{Report as DoctorReport, Severity},
    status::{SiteStage, VipStatus},
};

/// A node's report, as stored (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub site: String,
    pub node: String,
    /// The fleet revision this node runs (0: none yet).
    pub revision: i64,
    /// The last revision it refused, and why (cleared when a later one applies).
    pub refused: Option<Refusal>,
    /// The store answers this node (false: it serves `revision` from its own copy).
    pub store_reachable: bool,
    /// Held out of BGP by `lb fleet drain`.
    pub fleet_drained: bool,
    pub stage: SiteStage,
    /// The node's VIPs, and how many of them it announces.
    pub vips: u32,
    pub announced: u32,
    /// VIPs not announced while the site announces (withdrawn for their health), by name.
    pub withdrawn: Vec<String>,
    /// Reals that are not simply up at their configured weight: down, drained, or reweighted
    /// at run time. The report stays small with thousands of VIPs: every real not listed is up
    /// at its configured weight.
    pub reals: Vec<RealReport>,
    /// `lb doctor`'s worst finding ("critical real_down: VIP web real 10.0.0.1"); None: nothing
    /// above info, or not asked yet.
    pub doctor: Option<String>,
    /// This node's part in a staged rollout (None: not a canary of one under way).
    #[serde(default)]
    pub canary: Option<CanaryReport>,
}

/// A canary's judgement of the candidate it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryReport {
    /// The rollout key's revision (the revision this node runs meanwhile).
    pub revision: i64,
    /// `CANARY_RUNNING`, `CANARY_GOOD` or `CANARY_BAD`.
    pub state: String,
    pub reason: Option<String>,
}

pub const CANARY_RUNNING: &str = "running";
pub const CANARY_GOOD: &str = "good";
pub const CANARY_BAD: &str = "bad";

impl NodeReport {
    /// What a node reports before its loop first fills the report in.
    pub fn starting(site: &str, node: &str) -> Self {
        Self {
            site: site.into(),
            node: node.into(),
            revision: 0,
            refused: None,
            store_reachable: false,
            fleet_drained: false,
            stage: SiteStage::NoBgp,
            vips: 0,
            announced: 0,
            withdrawn: Vec::new(),
            reals: Vec::new(),
            doctor: None,
            canary: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub revision: i64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RealReport {
    pub vip: String,
    pub address: IpAddr,
    /// "up", "down" or "drained" (up with weight 0).
    pub state: String,
    pub weight: u32,
}

impl RealReport {
    /// The reals of `status` worth reporting (see `NodeReport::reals`).
    pub fn exceptions(status: &[VipStatus]) -> Vec<Self> {
        status
            .iter()
            .flat_map(|v| v.reals.iter().map(move |r| (v, r)))
            .filter(|(_, r)| !r.up || r.weight != r.config_weight)
            .map(|(v, r)| RealReport {
                vip: v.name.clone(),
                address: r.address,
                state: match (r.up, r.weight) {
                    (false, _) => "down",
                    (true, 0) => "drained",
                    (true, _) => "up",
                }
                .into(),
                weight: r.weight,
            })
            .collect()
    }
}

/// Keeps `key` equal to the latest report while the node lives, under a lease of `ttl`.
pub async fn run(access: StoreAccess, key: String, ttl: Duration, mut reports: watch::Receiver<NodeReport>) {
    loop {
        if let Err(e) = session(&access, &key, ttl, &mut reports).await {
            warn!(error = %format!("{e:#}"), "fleet report not written; retrying");
        }
        if reports.has_changed().is_err() {
            return; // the daemon is gone
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn session(access: &StoreAccess, key: &str, ttl: Duration, reports: &mut watch::Receiver<NodeReport>) -> Result<()> {
    let mut client = access.connect().await?;
    let lease = client.lease_grant(ttl.as_secs() as i64, None).await.context("granting the report's lease")?.id();
    let (mut keeper, mut kept) = client.lease_keep_alive(lease).await.context("keeping the lease alive")?;
    info!(key, lease, ttl_s = ttl.as_secs(), "fleet report: writing under a lease");
    let mut renew = tokio::time::interval(ttl / 3);
    let mut dirty = true;
    loop {
        if dirty {
            let json = serde_json::to_string(&*reports.borrow_and_update()).context("encoding the report")?;
            client.put(key, json, Some(PutOptions::new().with_lease(lease))).await.context("writing the report")?;
            dirty = false;
        }
        tokio::select! {
            changed = reports.changed() => {
                changed.context("the daemon is gone")?;
                dirty = true;
            }
            _ = renew.tick() => {
                keeper.keep_alive().await.context("renewing the lease")?;
            }
            answer = kept.message() => {
                let answer = answer.context("the lease stream broke")?.context("the lease stream ended")?;
                anyhow::ensure!(answer.ttl() > 0, "the lease expired");
            }
        }
    }
}

/// `lb doctor`'s worst finding above info.
#[derive(Debug, Clone, PartialEq)]
pub struct WorstFinding {
    pub critical: bool,
    /// "critical vip_below_min_healthy: VIP web".
    pub text: String,
}

/// One answer of `lb doctor`, and when it was asked (a canary counts only answers asked after
/// it started its candidate).
#[derive(Debug, Clone, PartialEq)]
pub struct DoctorAnswer {
    pub asked: Instant,
    /// None: nothing above info.
    pub worst: Option<WorstFinding>,
}

/// How often the doctor is asked: while this node judges a candidate as a canary, and otherwise.
const DOCTOR_CANARY_EVERY: Duration = Duration::from_secs(2);
const DOCTOR_EVERY: Duration = Duration::from_secs(10);
/// The window each answer samples the counters over.
const DOCTOR_WINDOW_MS: u64 = 1000;

/// Asks `lb doctor` over the admin socket (I/O kept off the loop) and hands each answer to the
/// loop, for the report and for a canary's judgement.
pub async fn ask_doctor(admin: PathBuf, reports: watch::Receiver<NodeReport>, answers: mpsc::Sender<FleetEvent>) {
    let mut last: Option<Instant> = None;
    loop {
        let canary = reports.borrow().canary.as_ref().is_some_and(|c| c.state == CANARY_RUNNING);
        if canary || last.is_none_or(|t| t.elapsed() >= DOCTOR_EVERY) {
            let asked = Instant::now();
            last = Some(asked);
            if let Some(worst) = worst_finding(&admin).await {
                if answers.send(FleetEvent::Doctor(DoctorAnswer { asked, worst })).await.is_err() {
                    return; // the daemon is gone
                }
            }
        }
        tokio::time::sleep(DOCTOR_CANARY_EVERY).await;
    }
}

/// `lb doctor`'s worst finding above info (`Some(None)`: none), or None when it did not answer.
async fn worst_finding(admin: &std::path::Path) -> Option<Option<WorstFinding>> {
    let path = format!("/doctor?window_ms={DOCTOR_WINDOW_MS}");
    let mut call = Call::new("GET", &path);
    call.limit = Duration::from_millis(DOCTOR_WINDOW_MS + 5000);
    let answer = http::request(&Endpoint::Unix(admin.to_owned()), call).await.ok()?;
    let report: DoctorReport = serde_json::from_str(&answer.body).ok()?;
    let worst = report.findings.iter().filter(|f| f.severity > Severity::Info).max_by_key(|f| f.severity);
    Some(worst.map(|w| {
        let critical = w.severity == Severity::Critical;
        WorstFinding { critical, text: format!("{} {}: {}", if critical { "critical" } else { "warning" }, w.check, w.subject) }
    }))
}
