//! What the loop hands to readers that work off it: `lb doctor`'s evidence (health flips,
//! latency, BIRD's state) and the control plane's part of a metrics scrape.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use super::state::Daemon;
use crate::{
    config::VipId,
    dataplane::DataplaneOps,
    metrics,
    operator::doctor::{self, DoctorInputs},
};

/// Health flips within this window count towards "flapping".
pub(super) const FLAP_WINDOW: Duration = Duration::from_secs(doctor::FLAP_WINDOW_SECS);

impl<D: DataplaneOps> Daemon<D> {
    /// The loop's part of `lb doctor`'s evidence, and what to compare the config file with.
    pub(super) fn doctor_inputs(&self) -> DoctorInputs {
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
            bgp_sessions: self.bgp_sessions.clone(),
            peers: self.handoff_peers(),
            flips,
            latency,
            conn_table_size: self.config.conn_table_size,
            fleet: self.fleet.as_ref().map(|f| doctor::FleetView {
                revision: f.applied.as_ref().map_or(0, |(r, _)| *r),
                refused: f.refused.as_ref().map(|r| (r.revision, r.reason.clone())),
                store_error: f.store_error.clone(),
            }),
        };
        let mut backends: Vec<std::net::SocketAddr> = Vec::new();
        for real in self.config.vips.iter().filter(|v| v.second_chance.is_some()).flat_map(|v| &v.reals) {
            let endpoint = std::net::SocketAddr::new(real.addr, self.config.backend_port);
            if backends.len() < doctor::BACKENDS_SAMPLED && !backends.contains(&endpoint) {
                backends.push(endpoint);
            }
        }
        // A fleet node's file on disk has no VIPs: the fleet's are compared with nothing there.
        let running = match &self.fleet {
            Some(_) => crate::config::RawConfig { vips: Vec::new(), ..self.file.clone() },
            None => self.file.clone(),
        };
        DoctorInputs { view, backends, config_path: self.config_path.clone(), running: Box::new(running) }
    }

    /// The control plane's side of a metrics scrape.
    pub(super) fn metrics_snapshot(&self) -> metrics::Snapshot {
        metrics::Snapshot {
            status: self.status(),
            samples: self.samples.clone(),
            checks: self.checks,
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
            probes_starved: self.probers.budget.starved.load(std::sync::atomic::Ordering::Relaxed),
            bgp_sessions: self.bgp_sessions.iter().flatten().map(|s| (s.name.clone(), s.established)).collect(),
            adapt_signals: self
                .adapt
                .iter()
                .flat_map(|(vip, a)| a.controller.reals.iter().filter_map(move |(real, r)| Some(((*vip, *real), r.smoothed?))))
                .collect(),
            adapt_rebuilds: self.adapt_rebuilds,
            fleet: self.fleet.as_ref().map(|f| metrics::FleetMetrics {
                revision: f.applied.as_ref().map_or(0, |(r, _)| *r),
                refusals: f.refusals,
                store_reachable: f.store_error.is_none(),
                drained: f.drained,
            }),
        }
    }

    /// Counts a health flip of `real` of `vip`, forgetting those older than `FLAP_WINDOW`.
    pub(super) fn record_flip(&mut self, vip: VipId, real: IpAddr) {
        let flips = self.flips.entry((vip, real)).or_default();
        flips.push_back(Instant::now());
        while flips.front().is_some_and(|t| t.elapsed() > FLAP_WINDOW) {
            flips.pop_front();
        }
    }
}
