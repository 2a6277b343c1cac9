//! A node in a fleet: each revision of the fleet document the follower hands over is installed
//! through the same path as a reload (its site's VIPs over the node file, with the journal's
//! run-time changes over both), or refused, keeping the running one. What the node runs is
//! kept on disk for a restart without the store, and reported to the store.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

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
        report::{CanaryReport, DoctorAnswer, NodeReport, RealReport, Refusal, CANARY_BAD, CANARY_GOOD, CANARY_RUNNING},
        rollout::RolloutAction,
        store::{Canary, StoreAccess},
        RawFleet,
    },
    health::CheckTally,
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
    /// `lb doctor`'s last answer.
    pub doctor: Option<DoctorAnswer>,
    /// The health-check tally at each tick of the last `CHECKS_BEFORE`: a canary's baseline.
    pub checks_history: VecDeque<(Instant, CheckTally)>,
}

/// A candidate this node runs as a canary, and its judgement so far.
pub struct CanaryRun {
    pub key_rev: i64,
    pub canary: Canary,
    pub started: Instant,
    /// The health checks of the `CHECKS_BEFORE` before the candidate, and the tally when it
    /// started: the share failed since must not be worse.
    pub checks_before: CheckTally,
    pub checks_at_start: CheckTally,
    /// None: still judging; Some(Ok): good; Some(Err): bad, and why.
    pub verdict: Option<Result<(), String>>,
}

/// How far back a canary's baseline of health checks reaches: the state the candidate
/// replaces, not the node's start.
const CHECKS_BEFORE: Duration = Duration::from_secs(10);
/// A candidate is bad when the share of health checks that fail under it exceeds the share
/// before by more than this, with at least `MIN_FAILED_CHECKS` failed (fewer take no real down).
const FAILED_SHARE_TOLERANCE: f64 = 0.05;
const MIN_FAILED_CHECKS: u64 = 3;
/// A candidate is bad when `lb doctor` has not answered on it this long past the hold.
const DOCTOR_SILENCE: Duration = Duration::from_secs(30);

impl CanaryRun {
    /// The judgement at `now`: bad as soon as `lb doctor` finds something critical or the
    /// failed share of health checks got worse; good once the hold is over with a doctor's
    /// answer on the candidate; None: not yet.
    pub fn verdict(&self, checks_now: CheckTally, doctor: Option<&DoctorAnswer>, now: Instant) -> Option<Result<(), String>> {
        let doctor = doctor.filter(|d| d.asked >= self.started);
        if let Some(worst) = doctor.and_then(|d| d.worst.as_ref()).filter(|w| w.critical) {
            return Some(Err(format!("lb doctor: {}", worst.text)));
        }
        let (during, before) = (checks_now.since(self.checks_at_start), self.checks_before);
        if during.failed >= MIN_FAILED_CHECKS && during.failed_share() > before.failed_share() + FAILED_SHARE_TOLERANCE {
            return Some(Err(format!(
                "{} of {} health checks failed ({:.0}%), {:.0}% of {} before",
                during.failed,
                during.checked,
                during.failed_share() * 100.0,
                before.failed_share() * 100.0,
                before.checked
            )));
        }
        let ran = now.saturating_duration_since(self.started);
        let hold = Duration::from_secs(self.canary.hold_s);
        match doctor {
            Some(_) if ran >= hold => Some(Ok(())),
            None if ran >= hold + DOCTOR_SILENCE => Some(Err(format!("lb doctor gave no answer in {:?} on the candidate", ran))),
            _ => None,
        }
    }
}

impl FleetState {
    /// The node file as it runs: the node's own file with the applied revision's VIPs.
    pub fn over(&self, node_file: &RawConfig) -> RawConfig {
        with_fleet_vips(node_file, self.applied.as_ref().map(|(_, d)| d), &self.node.site)
    }
}

/// Makes `daemon` a fleet node running `applied` (its copy on disk, if any): starts the
/// follower, the saver of last good revisions, the reporter, the doctor's asker and the rollout
/// task. The follower and the doctor's asker send to `events`, which the caller's loop hands to
/// `fleet_event`.
pub fn start_fleet<D: DataplaneOps>(
    daemon: &mut Daemon<D>,
    node: FleetNode,
    applied: Option<(i64, RawFleet)>,
    events: mpsc::Sender<FleetEvent>,
    admin_socket: PathBuf,
) -> anyhow::Result<()> {
    let access = StoreAccess::of_node(&node)?;
    let (save, saves) = mpsc::unbounded_channel();
    tokio::spawn(run_saver(saves));
    let (report, reports) = watch::channel(NodeReport::starting(&node.site, &node.node));
    let key = access.node_key(&node.site, &node.node);
    info!(site = %node.site, node = %node.node, endpoints = ?node.endpoints, prefix = %node.prefix, "fleet: following the store");
    tokio::spawn(fleet::follow::run(access.clone(), node.site.clone(), events.clone()));
    tokio::spawn(fleet::report::ask_doctor(admin_socket, reports.clone(), events));
    let (rollout_actions, rollout_rx) = mpsc::unbounded_channel();
    tokio::spawn(fleet::rollout::run(access.clone(), rollout_rx));
    tokio::spawn(fleet::report::run(access, key, node.report_ttl, reports));
    daemon.follow_fleet(FleetState {
        node,
        applied,
        refused: None,
        refusals: 0,
        store_error: Some("not reached yet".into()),
        drained: false,
        save,
        report,
        document: None,
        rollout: None,
        rollout_actions,
        doctor: None,
        checks_history: VecDeque::new(),
    });
    Ok(())
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
            FleetEvent::Keys(Ok(keys)) => self.quic_keys.extend(keys),
            FleetEvent::Keys(Err(error)) => warn!(%error, "fleet: a QUIC-LB key file of the document could not be read"),
            FleetEvent::Doctor(answer) => {
                fleet.doctor = Some(answer);
                self.judge_canary();
            }
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

    /// Runs a rollout's candidate on this canary node, or halts the rollout if it is refused.
    fn start_canary(&mut self, key_rev: i64, canary: Canary) {
        let now = Instant::now();
        let fleet = self.fleet.as_ref().expect("a fleet node");
        let oldest = fleet.checks_history.front().map_or(self.checks, |(_, tally)| *tally);
        let (checks_before, checks_at_start) = (self.checks.since(oldest), self.checks);
        info!(candidate = key_rev, base = canary.base, hold_s = canary.hold_s, "rollout: this node is a canary; running the candidate");
        let refused = match self.apply_fleet(key_rev, Some(canary.text.clone())) {
            Ok(()) => None,
            Err(reason) => {
                self.refuse(key_rev, reason.clone());
                Some(format!("refused: {reason}"))
            }
        };
        let fleet = self.fleet.as_mut().expect("a fleet node");
        fleet.rollout = Some(CanaryRun { key_rev, canary, started: now, checks_before, checks_at_start, verdict: None });
        if let Some(reason) = refused {
            self.judged(Err(reason));
        }
    }

    /// Judges the candidate this canary runs, on the loop's tick and on each doctor's answer.
    pub(super) fn judge_canary(&mut self) {
        let Some(fleet) = self.fleet.as_ref() else { return };
        let Some(run) = fleet.rollout.as_ref().filter(|r| r.verdict.is_none()) else { return };
        if let Some(verdict) = run.verdict(self.checks, fleet.doctor.as_ref(), Instant::now()) {
            let node = fleet.node.node.clone();
            self.judged(verdict.map_err(|why| format!("on node {node}: {why}")));
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
        let doc = fleet::parse_valid(&text)?;
        if !doc.has_site(&site) {
            return Err(format!("this node's site {site:?} is not in the document's [[site]]s"));
        }
        let file = with_fleet_vips(&self.file, Some(&doc), &site);
        let config =
            effective_config(&file, &self.journal, self.interfaces, &self.quic_keys).map_err(|e| e.to_string().replace('\n', "; "))?;
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
        if let Some(fleet) = self.fleet.as_mut() {
            let now = Instant::now();
            fleet.checks_history.push_back((now, self.checks));
            while fleet.checks_history.front().is_some_and(|(t, _)| now.duration_since(*t) > CHECKS_BEFORE) {
                fleet.checks_history.pop_front();
            }
        }
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
            doctor: fleet.doctor.as_ref().and_then(|d| d.worst.as_ref()).map(|w| w.text.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::report::WorstFinding;

    fn run(hold_s: u64, checks_before: CheckTally, started: Instant) -> CanaryRun {
        let canary = Canary { base: 1, text: String::new(), canaries: vec!["n1".into()], hold_s, halted: None };
        let checks_at_start = CheckTally { checked: 1000, failed: 10 };
        CanaryRun { key_rev: 2, canary, started, checks_before, checks_at_start, verdict: None }
    }

    fn tally(checked: u64, failed: u64) -> CheckTally {
        CheckTally { checked: 1000 + checked, failed: 10 + failed }
    }

    fn doctor(asked: Instant, critical: Option<bool>) -> DoctorAnswer {
        DoctorAnswer {
            asked,
            worst: critical.map(|critical| WorstFinding { critical, text: "critical vip_below_min_healthy: VIP web".into() }),
        }
    }

    #[test]
    fn a_canary_is_good_after_its_hold_with_a_doctor_answer_on_the_candidate_and_no_worse_checks() {
        let t0 = Instant::now();
        let r = run(3, CheckTally { checked: 100, failed: 0 }, t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Before the hold is over: no verdict.
        assert_eq!(r.verdict(tally(20, 0), Some(&doctor(at(1), None)), at(2)), None);
        // Over, but the only doctor's answer was asked before the candidate ran.
        let early = doctor(t0 - Duration::from_millis(1), None);
        assert_eq!(r.verdict(tally(40, 0), Some(&early), at(4)), None);
        // Over, with an answer on the candidate (a warning is below critical).
        assert_eq!(r.verdict(tally(40, 0), Some(&doctor(at(1), Some(false))), at(4)), Some(Ok(())));
        // Failures as frequent as before are no worse: 10% before, 10% under the candidate.
        let flaky = run(3, CheckTally { checked: 100, failed: 10 }, t0);
        assert_eq!(flaky.verdict(tally(40, 4), Some(&doctor(at(1), None)), at(4)), Some(Ok(())));
    }

    #[test]
    fn a_canary_is_bad_on_a_critical_finding_more_failed_checks_or_a_silent_doctor() {
        let t0 = Instant::now();
        let r = run(3, CheckTally { checked: 100, failed: 0 }, t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let critical = r.verdict(tally(5, 0), Some(&doctor(at(1), Some(true))), at(1));
        assert_eq!(critical, Some(Err("lb doctor: critical vip_below_min_healthy: VIP web".into())));
        // A critical answer asked before the candidate ran is not the candidate's.
        assert_eq!(r.verdict(tally(5, 0), Some(&doctor(t0 - Duration::from_millis(1), Some(true))), at(1)), None);
        // Half the checks fail under the candidate, none did before: bad before the hold ends.
        let worse = r.verdict(tally(20, 10), None, at(1));
        assert_eq!(worse, Some(Err("10 of 20 health checks failed (50%), 0% of 100 before".into())));
        // Two failures take no real down: not yet a verdict.
        assert_eq!(r.verdict(tally(20, 2), None, at(1)), None);
        // No doctor's answer long past the hold.
        let silent = r.verdict(tally(100, 0), None, at(3) + DOCTOR_SILENCE);
        assert!(silent.is_some_and(|v| v.unwrap_err().starts_with("lb doctor gave no answer")));
    }
}
