//! Weights that follow the backends, on the loop: each adapted VIP's controller (`crate::adapt`)
//! takes its reals' checks as they come and, once an interval, moves their shares; a change
//! rebuilds the VIP's ring through the reconciler (established flows keep their real).

use std::{net::IpAddr, time::Instant};

use tracing::{info, warn};

use super::state::Daemon;
use crate::{
    adapt::{Adaptation, Controller, Sample},
    config::VipId,
    dataplane::DataplaneOps,
};

/// An adapted VIP's controller and when it last stepped.
#[derive(Debug, Default)]
pub struct VipAdapt {
    pub controller: Controller,
    last_step: Option<Instant>,
}

impl<D: DataplaneOps> Daemon<D> {
    pub(super) fn adaptation(&self, vip: &VipId) -> Option<Adaptation> {
        self.config.vips.iter().find(|v| v.id == *vip)?.adapt
    }

    /// One check of `real`: into its VIP's controller, if the VIP adapts.
    pub(super) fn adapt_observe(&mut self, vip: VipId, real: IpAddr, sample: Sample) {
        let Some(a) = self.adaptation(&vip) else { return };
        self.adapt.entry(vip).or_default().controller.observe(&a, real, sample);
    }

    /// Steps every adapted VIP whose interval is over; logs and applies each change.
    pub(super) fn adapt_tick(&mut self, now: Instant) {
        let adaptive: Vec<(VipId, Adaptation)> = self.config.vips.iter().filter_map(|v| Some((v.id, v.adapt?))).collect();
        self.adapt.retain(|id, _| adaptive.iter().any(|(a, _)| a == id));
        if adaptive.is_empty() {
            return;
        }
        let status = self.rec.status();
        for (id, a) in adaptive {
            let state = self.adapt.entry(id).or_default();
            if state.last_step.is_some_and(|t| now.duration_since(t) < a.interval) {
                continue;
            }
            state.last_step = Some(now);
            let Some(vip) = status.iter().find(|v| v.vip == id) else { continue };
            // Drained (by its backend or an operator's weight 0) and down reals are not adapted.
            let reals: Vec<(IpAddr, bool, bool)> = vip.reals.iter().map(|r| (r.address, r.up, r.draining || r.weight == 0)).collect();
            for change in state.controller.step(&a, &reals) {
                info!(
                    vip = %id,
                    real = %change.real,
                    from_percent = change.from,
                    to_percent = change.to,
                    reason = %change.reason,
                    "adapted weight changed"
                );
                match self.rec.set_adapt_percent(&id, change.real, change.to) {
                    Ok(true) => self.adapt_rebuilds += 1,
                    Ok(false) => {}
                    Err(e) => {
                        warn!(vip = %id, real = %change.real, error = %e, "applying an adapted weight failed; the maps are as before it")
                    }
                }
            }
        }
    }
}
