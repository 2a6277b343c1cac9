//! `Reconciler`: plans each change on a copy of the state, runs its writes in order, and undoes
//! the ones done when one fails; and what it answers about the state (status, ids, tables).

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use lb_common::{addr16, LbConfig, VipMeta, REAL_F_DOWN};

use super::{
    entries::{real_addr, vip_id, vip_key},
    error::ReconcileError,
    plan::State,
    ring_pool::{Region, RingPool},
    write::{Write, Writes},
};
use crate::{
    config::{Config, VipId},
    dataplane::{DataplaneOps, Handoff, Programmed},
    status::{QuicLbStatus, RealStatus, RebuildStats, VipStatus},
};

pub struct Reconciler<D> {
    // Open to the module's tests, which look into the fake data plane.
    pub(super) dp: D,
    state: State,
}

impl<D: DataplaneOps> Reconciler<D> {
    pub fn new(dp: D) -> Self {
        let state = State {
            pool: RingPool::new(dp.ring_slots()),
            vips: imbl::OrdMap::new(),
            real_ids: imbl::HashMap::new(),
            retired_ids: imbl::Vector::new(),
            ids_taken: imbl::HashSet::new(),
            next_fresh_id: 1,
            recovered: HashMap::new(),
            recovered_down: imbl::HashSet::new(),
            writes: Writes::default(),
            rebuilds: RebuildStats::default(),
            freed: Vec::new(),
            deferred_frees: Vec::new(),
        };
        Self { dp, state }
    }

    /// Starts from what an earlier `lb` left in the pinned maps: VIP indexes and live rings,
    /// real ids and which reals were down, generations, address counts and the pre-filter.
    pub fn recover(dp: D, programmed: &Programmed) -> Self {
        let mut r = Self::new(dp);
        let s = &mut r.state;
        for (key, meta) in &programmed.vips {
            s.writes.written.vips.insert(*key, *meta);
            let Some(id) = vip_id(key) else { continue };
            let live = Region { base: meta.ring_base, len: meta.ring_size };
            if s.pool.reserve(live) {
                s.recovered.insert(id, (meta.vip_index, live));
            } else {
                // Not where a ring can be (an inconsistent pin): rebuilt whole, elsewhere.
                tracing::warn!(vip = %id, base = live.base, len = live.len, "a VIP's live ring is outside the ring pool or overlaps another");
                s.recovered.insert(id, (meta.vip_index, Region { base: 0, len: 0 }));
            }
        }
        s.writes.written.generations = programmed.generations.iter().copied().collect();
        s.writes.written.vip_addrs = programmed.vip_addrs.iter().copied().collect();
        s.writes.written.filter = programmed.filter.iter().copied().collect();
        s.writes.written.handoff_node = Some(programmed.handoff_node).filter(|n| *n != [0; 16]);
        s.writes.written.prev_rings = programmed.prev_rings.iter().copied().collect();
        s.writes.written.quic_params = programmed.quic_params.iter().copied().collect();
        s.writes.written.quic_servers = programmed.quic_servers.iter().copied().collect();
        for (id, real) in &programmed.reals {
            let addr = real_addr(real);
            s.real_ids.insert((real.vip_index, addr), *id);
            s.ids_taken.insert(*id);
            s.writes.written.reals.insert(*id, *real);
            if real.flags & REAL_F_DOWN != 0 {
                s.recovered_down.insert((real.vip_index, addr));
            }
        }
        r
    }

    /// Plans `change` on a copy of the state, then runs its writes; a failed write undoes the
    /// ones before it and keeps the state as it was.
    fn transact<T>(&mut self, change: impl FnOnce(&mut State) -> Result<T, ReconcileError>) -> Result<T, ReconcileError> {
        let mut next = self.state.clone();
        let value = change(&mut next)?;
        for region in std::mem::take(&mut next.deferred_frees) {
            next.pool.free(region);
        }
        next.freed.clear();
        let plan = std::mem::take(&mut next.writes.plan);
        for (done, (write, _)) in plan.iter().enumerate() {
            if let Err(e) = write.run(&mut self.dp) {
                self.undo(&plan[..done]);
                return Err(e.into());
            }
        }
        self.state = next;
        Ok(value)
    }

    fn undo(&mut self, done: &[(Write, Option<Write>)]) {
        for undo in done.iter().rev().filter_map(|(_, u)| u.as_ref()) {
            if let Err(e) = undo.run(&mut self.dp) {
                tracing::error!(error = %e, "undoing a failed change failed too; the next change rewrites every entry whole");
                self.state.forget_written();
                return;
            }
        }
    }

    /// For what the reconciler does not write: attaching, counters, the connection table.
    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    /// Makes the maps match `config` (VIPs added, changed, removed) with current health.
    pub fn apply(&mut self, config: &Config, next_hop_mac: [u8; 6]) -> Result<(), ReconcileError> {
        self.transact(|s| s.apply(config, next_hop_mac))
    }

    /// A health flip; returns whether a ring was rebuilt (the real's state is kept either way).
    pub fn set_health(&mut self, vip: &VipId, real: IpAddr, up: bool) -> Result<bool, ReconcileError> {
        self.transact(|s| {
            let Some(state) = s.vips.get_mut(vip) else { return Ok(false) };
            if !state.config.reals.iter().any(|r| r.addr == real) || state.is_up(real) == up {
                return Ok(false);
            }
            Arc::make_mut(state).up.insert(real, up);
            s.rebuild(vip)
        })
    }

    /// Sets a real's weight at run time (`None`: back to the config's). 0 drains.
    pub fn set_weight(&mut self, vip: &str, real: IpAddr, weight: Option<u32>) -> Result<(), ReconcileError> {
        self.transact(|s| {
            let id = s.find(vip)?;
            let state = Arc::make_mut(s.vips.get_mut(&id).expect("found"));
            if !state.config.reals.iter().any(|r| r.addr == real) {
                return Err(ReconcileError::NoReal { vip: vip.to_owned(), real });
            }
            match weight {
                Some(w) => state.weights.insert(real, w),
                None => state.weights.remove(&real),
            };
            s.rebuild(&id).map(|_| ())
        })
    }

    /// A backend starts or stops draining (its health endpoint says so): weight 0 while it
    /// does, over any other weight; returns whether a ring was rebuilt.
    pub fn set_draining(&mut self, vip: &VipId, real: IpAddr, draining: bool) -> Result<bool, ReconcileError> {
        self.transact(|s| {
            let Some(state) = s.vips.get_mut(vip) else { return Ok(false) };
            if !state.config.reals.iter().any(|r| r.addr == real) || state.draining.contains(&real) == draining {
                return Ok(false);
            }
            let state = Arc::make_mut(state);
            if draining {
                state.draining.insert(real);
            } else {
                state.draining.remove(&real);
            }
            s.rebuild(vip)
        })
    }

    /// An adapted real's share of its weight, in percent (`adapt`); returns whether a ring was
    /// rebuilt (a VIP without adaptation, or a real it does not have: nothing changes).
    pub fn set_adapt_percent(&mut self, vip: &VipId, real: IpAddr, percent: u32) -> Result<bool, ReconcileError> {
        self.transact(|s| {
            let Some(state) = s.vips.get_mut(vip) else { return Ok(false) };
            if state.config.adapt.is_none()
                || !state.config.reals.iter().any(|r| r.addr == real)
                || state.adapt_percent.get(&real).copied().unwrap_or(100) == percent
            {
                return Ok(false);
            }
            Arc::make_mut(state).adapt_percent.insert(real, percent);
            s.rebuild(vip)
        })
    }

    /// Programs cross-site handoff; returns whether anything was written.
    pub fn set_handoff(&mut self, handoff: &Handoff) -> Result<bool, ReconcileError> {
        self.transact(|s| {
            let written = s.writes.write(Write::Handoff(handoff.clone()));
            s.writes.written.handoff_node = handoff.node.map(addr16);
            s.writes.sync_filter();
            Ok(written)
        })
    }

    /// What handoff was last programmed to.
    pub fn handoff(&self) -> Option<&Handoff> {
        self.state.writes.written.handoff.as_ref()
    }

    /// A new MAC for the next hop (its neighbour entry changed); the rest of the forwarding
    /// settings stay. Returns whether anything was written.
    pub fn set_next_hop(&mut self, mac: [u8; 6]) -> Result<bool, ReconcileError> {
        self.transact(|s| {
            let config = s.writes.written.config.ok_or(ReconcileError::NoConfig)?;
            Ok(s.writes.write(Write::Config(LbConfig { next_hop_mac: mac, ..config })))
        })
    }

    /// The next hop's MAC as last written.
    pub fn next_hop(&self) -> Option<[u8; 6]> {
        self.state.writes.written.config.map(|c| c.next_hop_mac)
    }

    /// Whether `real` of `vip` was down when the maps were last written (health starts there).
    pub fn starts_up(&self, vip: &VipId, real: IpAddr) -> bool {
        self.state.vips.get(vip).is_none_or(|v| v.is_up(real))
    }

    /// Runtime weights, to keep across reloads and restarts: (VIP name, real, weight).
    pub fn weight_overrides(&self) -> Vec<(String, IpAddr, u32)> {
        self.state.vips.values().flat_map(|s| s.weights.iter().map(|(a, w)| (s.config.name.clone(), *a, *w))).collect()
    }

    pub fn rebuilds(&self) -> RebuildStats {
        self.state.rebuilds
    }

    /// The table in `vip`'s live ring, when known.
    pub fn live_table(&self, vip: &VipId) -> Option<&[u32]> {
        let s = self.state.vips.get(vip)?;
        s.rings[s.active].as_ref()?.table.as_deref().map(Vec::as_slice)
    }

    /// `vip`'s entry in `VIPS` as written.
    pub fn vip_meta(&self, vip: &VipId) -> Option<VipMeta> {
        self.state.writes.written.vips.get(&vip_key(vip)).copied()
    }

    /// The id of `real` of `vip`.
    pub fn real_id(&self, vip: &VipId, real: IpAddr) -> Option<u32> {
        let index = self.state.vips.get(vip)?.index;
        self.state.real_ids.get(&(index, real)).copied()
    }

    /// The address `REALS` holds for `id`.
    pub fn real_address(&self, id: u32) -> Option<IpAddr> {
        self.state.writes.written.reals.get(&id).map(real_addr)
    }

    pub fn status(&self) -> Vec<VipStatus> {
        let s = &self.state;
        s.vips
            .iter()
            .map(|(id, v)| {
                let reals = v
                    .config
                    .reals
                    .iter()
                    .map(|r| {
                        let rid = v.ids.get(&r.addr).copied().unwrap_or(0);
                        RealStatus {
                            address: r.addr,
                            id: rid,
                            up: v.is_up(r.addr),
                            config_weight: r.weight,
                            weight: v.weight(r),
                            slots: v.slots.get(&rid).copied().unwrap_or(0),
                            draining: v.draining.contains(&r.addr),
                            server_id: r.server_id.as_deref().map(crate::quic_lb::hex),
                            adapt_percent: v.config.adapt.map(|_| v.adapt_percent.get(&r.addr).copied().unwrap_or(100)),
                            adapt_signal: None,
                        }
                    })
                    .collect();
                VipStatus {
                    name: v.config.name.clone(),
                    vip: *id,
                    index: v.index,
                    ring_size: v.config.ring_size,
                    min_healthy: v.config.min_healthy,
                    reals,
                    quic_lb: v.config.quic_lb.as_ref().map(|q| QuicLbStatus {
                        config_id: q.config_id,
                        server_id_len: q.server_id_len,
                        nonce_len: q.nonce_len,
                        cid_len: q.cid_len,
                        encrypted: q.key_file.is_some(),
                    }),
                    adapt_floor_percent: v.config.adapt.map(|a| (a.floor * 100.0).round() as u32),
                    announced: false,
                }
            })
            .collect()
    }
}
