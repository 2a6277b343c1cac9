//! A node in a fleet: each revision of the fleet document the follower hands over is installed
//! through the same path as a reload (its site's VIPs over the node file, with the journal's
//! run-time changes over both), or refused, keeping the running one. What the node runs is
//! kept on disk for a restart without the store, and reported to the store.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{reload::effective_config, state::Daemon};
use crate::{
    config::{FleetNode, RawConfig},
    dataplane::DataplaneOps,
    fleet::{
        self,
        follow::FleetEvent,
        report::{CanaryReport, NodeReport, RealReport, Refusal, CANARY_BAD, CANARY_GOOD, CANARY_RUNNING},
        rollout::RolloutAction,
        store::Canary,
        RawFleet,
    },
    status::SiteStage,
};

/// The revision a node last applied, as kept on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastGood {
    pub revision: i64,
    pub text: String,
}

/// The last good revision in `path` (None: there is none yet). One that no longer parses is
/// an error: the node must not start without the VIPs it served.
pub fn load_last_good(path: &Path) -> anyhow::Result<Option<(LastGood, RawFleet)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("reading the last good fleet revision {}: {e}", path.display())),
    };
    let saved: LastGood = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let doc = fleet::parse(&saved.text).map_err(|e| anyhow::anyhow!("{}: revision {}: {e}", path.display(), saved.revision))?;
    Ok(Some((saved, doc)))
}

/// The node file with the VIPs its site has in `doc`.
pub fn with_fleet_vips(node_file: &RawConfig, doc: Option<&RawFleet>, site: &str) -> RawConfig {
    RawConfig { vips: doc.map(|d| d.vips_for(site)).unwrap_or_default(), ..node_file.clone() }
}

/// A node file that follows a fleet names no VIPs of its own.
pub fn check_node_file(file: &RawConfig) -> Result<(), String> {
    if file.fleet.is_some() && !file.vips.is_empty() {
        return Err(format!(
            "vip: this node follows a fleet store ([fleet]), which gives its VIPs; remove the {} [[vip]] section(s)",
            file.vips.len()
        ));
    }
    Ok(())
}

/// The daemon's part in a fleet.
pub struct FleetState {
    pub node: FleetNode,
    /// The revision running and its document (None: none yet).
    pub applied: Option<(i64, RawFleet)>,
    pub refused: Option<Refusal>,
    /// Revisions refused since start.
    pub refusals: u64,
    pub store_error: Option<String>,
    /// `lb fleet drain` holds this site out of BGP.
    pub drained: bool,
    /// Last good revisions to write to disk (a task does).
    pub save: mpsc::UnboundedSender<(PathBuf, LastGood)>,
    /// The report the reporter task keeps in the store.
    pub report: watch::Sender<NodeReport>,
    /// The document as the store last gave it (revision, text), applied or not.
    pub document: Option<(i64, Option<String>)>,
    /// The candidate this node runs as a canary of a staged rollout.
    pub rollout: Option<CanaryRun>,
    /// Halts and promotions, for the rollout task.
    pub rollout_actions: mpsc::UnboundedSender<RolloutAction>,
}

/// A candidate this node runs as a canary, and its judgement so far.
pub struct CanaryRun {
    pub key_rev: i64,
    pub canary: Canary,
    pub started: std::time::Instant,
    /// (VIPs not servable, reals down) before the candidate: the candidate must not be worse.
    pub baseline: (usize, usize),
    /// None: still judging; Some(Ok): good; Some(Err): bad, and why.
    pub verdict: Option<Result<(), String>>,
}

impl FleetState {
    /// The node file as it runs: the node's own file with the applied revision's VIPs.
    pub fn over(&self, node_file: &RawConfig) -> RawConfig {
        with_fleet_vips(node_file, self.applied.as_ref().map(|(_, d)| d), &self.node.site)
    }
}

/// Writes each last good revision durably, in order.
pub async fn run_saver(mut saves: mpsc::UnboundedReceiver<(PathBuf, LastGood)>) {
    while let Some((path, saved)) = saves.recv().await {
        let bytes = serde_json::to_vec(&saved).expect("a string and a number encode");
        if let Err(e) = crate::durable::write_async(path.clone(), bytes).await {
            warn!(path = %path.display(), error = %e, "could not keep the fleet revision on disk; a restart without the store would serve an older one");
        }
    }
}

impl<D: DataplaneOps> Daemon<D> {
    pub fn fleet_event(&mut self, event: FleetEvent) {
        let Some(fleet) = self.fleet.as_mut() else { return };
        match event {
            FleetEvent::Store(error) => {
                if error.is_none() && fleet.store_error.is_some() {
                    info!("fleet store reachable again");
                }
                fleet.store_error = error;
            }
            FleetEvent::Drain(drained) if drained != fleet.drained => {
                let was_announcing = !self.withdrawing();
                self.fleet.as_mut().expect("checked above").drained = drained;
                info!(drained, "fleet drain of this site changed");
                self.drain_changed(was_announcing);
            }
            FleetEvent::Drain(_) => {}
            FleetEvent::Document { revision, text } => {
                fleet.document = Some((revision, text.clone()));
                // A canary keeps its candidate until the rollout ends (a promotion writes the
                // document and ends the rollout at once).
                if fleet.rollout.is_none() {
                    self.follow_document(revision, text);
                }
            }
            FleetEvent::Canary(Some((key_rev, canary))) if canary.halted.is_none() && canary.canaries.contains(&fleet.node.node) => {
                if fleet.rollout.as_ref().is_none_or(|r| r.key_rev != key_rev) {
                    self.start_canary(key_rev, canary);
                }
            }
            FleetEvent::Canary(rollout) => {
                if let Some(run) = fleet.rollout.take() {
                    let why = rollout.and_then(|(_, c)| c.halted).unwrap_or_else(|| "ended".into());
                    info!(candidate = run.key_rev, %why, "rollout over on this canary; following the document");
                    if let Some((revision, text)) = fleet.document.clone() {
                        self.follow_document(revision, text);
                    }
                }
            }
        }
        self.publish_report();
    }

    /// Applies document `revision` unless it runs already; a refusal is kept and reported.
    fn follow_document(&mut self, revision: i64, text: Option<String>) {
        let Some(fleet) = self.fleet.as_ref() else { return };
        if fleet.applied.as_ref().is_some_and(|(r, _)| *r == revision) {
            return; // already running (a restart from the copy on disk, then the store)
        }
        match self.apply_fleet(revision, text) {
            Ok(()) => info!(revision, vips = self.config.vips.len(), "fleet revision applied"),
            Err(reason) => self.refuse(revision, reason),
        }
    }

    fn refuse(&mut self, revision: i64, reason: String) {
        warn!(revision, %reason, "fleet revision refused; running the last good one");
        let fleet = self.fleet.as_mut().expect("a fleet node");
        fleet.refusals += 1;
        fleet.refused = Some(Refusal { revision, reason });
    }

    /// (VIPs not servable, reals down) now.
    fn health_tally(&self) -> (usize, usize) {
        let status = self.status();
        (status.iter().filter(|v| !v.servable()).count(), status.iter().flat_map(|v| &v.reals).filter(|r| !r.up).count())
    }

    /// Runs a rollout's candidate on this canary node, or halts the rollout if it is refused.
    fn start_canary(&mut self, key_rev: i64, canary: Canary) {
        let baseline = self.health_tally();
        info!(candidate = key_rev, base = canary.base, hold_s = canary.hold_s, "rollout: this node is a canary; running the candidate");
        let refused = match self.apply_fleet(key_rev, Some(canary.text.clone())) {
            Ok(()) => None,
            Err(reason) => {
                self.refuse(key_rev, reason.clone());
                Some(format!("refused: {reason}"))
            }
        };
        let fleet = self.fleet.as_mut().expect("a fleet node");
        fleet.rollout = Some(CanaryRun { key_rev, canary, started: std::time::Instant::now(), baseline, verdict: None });
        if let Some(reason) = refused {
            self.judged(Err(reason));
        }
    }

    /// Judges the candidate this canary runs (on the loop's one-second tick): bad as soon as
    /// a VIP is not servable or a real is down that was not before; good once it has run for
    /// the rollout's hold without that.
    pub(super) fn judge_canary(&mut self) {
        let Some(run) = self.fleet.as_ref().and_then(|f| f.rollout.as_ref()).filter(|r| r.verdict.is_none()) else { return };
        let ((unservable, down), (was_unservable, was_down)) = (self.health_tally(), run.baseline);
        let hold = std::time::Duration::from_secs(run.canary.hold_s);
        if unservable > was_unservable || down > was_down {
            let reason = format!(
                "on node {}: {unservable} VIPs not servable (before: {was_unservable}), {down} reals down (before: {was_down})",
                self.fleet.as_ref().map_or("", |f| f.node.node.as_str())
            );
            self.judged(Err(reason));
        } else if run.started.elapsed() >= hold {
            self.judged(Ok(()));
        }
    }

    fn judged(&mut self, verdict: Result<(), String>) {
        let fleet = self.fleet.as_mut().expect("a fleet node");
        let run = fleet.rollout.as_mut().expect("a rollout");
        let action = match &verdict {
            Ok(()) => {
                info!(candidate = run.key_rev, "rollout: the candidate is good on this canary");
                RolloutAction::Promote { key_rev: run.key_rev, canary: run.canary.clone() }
            }
            Err(reason) => {
                warn!(candidate = run.key_rev, %reason, "rollout: the candidate is bad on this canary; halting");
                RolloutAction::Halt { key_rev: run.key_rev, canary: run.canary.clone(), reason: reason.clone() }
            }
        };
        run.verdict = Some(verdict);
        let _ = fleet.rollout_actions.send(action);
        self.publish_report();
    }

    /// Installs revision `revision` of the document, or says why not.
    fn apply_fleet(&mut self, revision: i64, text: Option<String>) -> Result<(), String> {
        let fleet = self.fleet.as_ref().expect("a fleet node");
        let site = fleet.node.site.clone();
        let text = text.ok_or("the fleet document was deleted")?;
        let doc = fleet::parse(&text).map_err(|e| e.to_string())?;
        doc.validate().map_err(|e| e.to_string().replace('\n', "; "))?;
        if !doc.has_site(&site) {
            return Err(format!("this node's site {site:?} is not in the document's [[site]]s"));
        }
        let file = with_fleet_vips(&self.file, Some(&doc), &site);
        let config = effective_config(&file, &self.journal, self.interfaces).map_err(|e| e.to_string().replace('\n', "; "))?;
        let mac = self.rec.next_hop().ok_or("no next hop written yet")?;
        self.install(config, mac).map_err(|e| e.to_string())?;
        self.file = file;
        let fleet = self.fleet.as_mut().expect("a fleet node");
        fleet.applied = Some((revision, doc));
        fleet.refused = None;
        let _ = fleet.save.send((fleet.node.state_file.clone(), LastGood { revision, text }));
        Ok(())
    }

    /// The fleet revision this node runs (None: not a fleet node, or none yet).
    pub fn fleet_revision(&self) -> Option<i64> {
        self.fleet.as_ref()?.applied.as_ref().map(|(r, _)| *r)
    }

    /// The loop's one-second tick on a fleet node.
    pub fn fleet_tick(&mut self) {
        self.judge_canary();
        self.publish_report();
    }

    /// Hands the node's report to the reporter task (which writes it when it changed).
    pub(super) fn publish_report(&self) {
        let Some(fleet) = &self.fleet else { return };
        let status = self.status();
        let stage = self.site_stage();
        let report = NodeReport {
            site: fleet.node.site.clone(),
            node: fleet.node.node.clone(),
            revision: fleet.applied.as_ref().map_or(0, |(r, _)| *r),
            refused: fleet.refused.clone(),
            store_reachable: fleet.store_error.is_none(),
            fleet_drained: fleet.drained,
            stage: stage.clone(),
            vips: status.len() as u32,
            announced: status.iter().filter(|v| v.announced).count() as u32,
            // Only while the site announces: drained, exiting or without BGP, every VIP is
            // withdrawn and the stage says so.
            withdrawn: match stage {
                SiteStage::Announcing => status.iter().filter(|v| !v.announced).map(|v| v.name.clone()).collect(),
                _ => Vec::new(),
            },
            reals: RealReport::exceptions(&status),
            doctor: None, // the reporter task adds it
            canary: fleet.rollout.as_ref().map(|r| CanaryReport {
                revision: r.key_rev,
                state: match &r.verdict {
                    None => CANARY_RUNNING,
                    Some(Ok(())) => CANARY_GOOD,
                    Some(Err(_)) => CANARY_BAD,
                }
                .into(),
                reason: r.verdict.as_ref().and_then(|v| v.clone().err()),
            }),
        };
        fleet.report.send_if_modified(|current| {
            let changed = *current != report;
            *current = report;
            changed
        });
    }
}
