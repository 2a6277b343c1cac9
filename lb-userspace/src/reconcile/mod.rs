//! The single writer: config + health + runtime weight changes -> Maglev tables -> data plane.
//!
//! Each VIP owns two rings in the slot pool (`ring_pool`). A rebuild writes the changed slots of
//! the spare ring, then switches the VIP to it with one `VIPS` update, so a packet never sees a
//! half-written table; a VIP whose reals, health and weights did not change is not rebuilt. A real
//! coming up is marked up before the switch; a real going down is marked down after it, which
//! moves its established flows (their connection entries stop counting). Weight 0 drains: the
//! real leaves the ring but stays up, so its flows stay. Real ids belong to one VIP each and are
//! recovered from the pinned maps after a restart, so connection entries keep their meaning.
//!
//! Every change is a transaction: it is first planned on a copy of the state (VIP indexes, real
//! ids, ring regions and tables, and the ordered list of map writes, each with what it replaces),
//! so running out of anything fails before a single write. Then the writes run in order; if one
//! fails, the ones before it are undone in reverse and the state stays as it was.

//!
//! - `plan`: the state and the planning of each kind of change;
//! - `write`: the map writes and their undo;
//! - `ring_pool`: where each ring lives in the pool;
//! - here: `Reconciler`, which runs a plan's writes and undoes them on failure, and what it
//!   answers about the state.

mod plan;
mod ring_pool;
#[cfg(test)]
pub(crate) mod tests;
mod write;

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use lb_common::{LbConfig, Real, VipKey, VipMeta, REAL_F_DOWN, REAL_F_IPV6};

pub use self::ring_pool::Region;
use self::{
    plan::State,
    ring_pool::RingPool,
    write::{Write, Written},
};
use crate::{
    config::{Config, Forwarding, Proto, VipId},
    dataplane::{addr16, ip_of, DataplaneError, DataplaneOps, Handoff, Programmed},
    status::{RealStatus, RebuildStats, VipStatus},
};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("no free {what} (at most {max})")]
    Full { what: &'static str, max: u32 },
    #[error("the VIPs need {needed} Maglev ring slots (two rings of each VIP's ring_size), the ring pool holds {pool}: raise `ring_slots` (or remove it: the default follows the config) and restart lb, which grows the pool and keeps established flows")]
    PoolTooSmall { needed: u64, pool: u32 },
    #[error("no free range of {len} slots in the ring pool ({free} of {pool} free, but fragmented): raise `ring_slots` and restart lb")]
    PoolFragmented { len: u32, free: u32, pool: u32 },
    #[error("no VIP {0}")]
    NoVip(String),
    #[error("VIP {vip} has no real {real}")]
    NoReal { vip: String, real: IpAddr },
    #[error("no forwarding settings written yet")]
    NoConfig,
}

pub fn vip_key(id: &VipId) -> VipKey {
    VipKey { addr: addr16(id.addr), port_be: id.port.to_be(), proto: id.proto.number(), _pad: 0 }
}

fn vip_id(key: &VipKey) -> Option<VipId> {
    let addr = ip_of(key.addr);
    let proto = match key.proto {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        _ => return None,
    };
    Some(VipId { addr, port: u16::from_be(key.port_be), proto })
}

fn real_addr(real: &Real) -> IpAddr {
    if real.flags & REAL_F_IPV6 != 0 {
        IpAddr::V6(real.addr.into())
    } else {
        ip_of(real.addr)
    }
}

/// The data plane's view of forwarding settings.
pub fn lb_config(f: &Forwarding, next_hop_mac: [u8; 6]) -> LbConfig {
    LbConfig {
        next_hop_mac,
        _pad: [0; 2],
        mtu: f.mtu,
        src_v4: f.source_v4.0.octets(),
        src_v4_host_bits: f.source_v4.1,
        src_v6: f.source_v6.0.octets(),
        src_v6_host_bits: f.source_v6.1,
    }
}

pub struct Reconciler<D> {
    dp: D,
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
            written: Written::default(),
            rebuilds: RebuildStats::default(),
            plan: Vec::new(),
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
            s.written.vips.insert(*key, *meta);
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
        s.written.generations = programmed.generations.iter().copied().collect();
        s.written.vip_addrs = programmed.vip_addrs.iter().copied().collect();
        s.written.filter = programmed.filter.iter().copied().collect();
        s.written.handoff_node = Some(programmed.handoff_node).filter(|n| *n != [0; 16]);
        for (id, real) in &programmed.reals {
            let addr = real_addr(real);
            s.real_ids.insert((real.vip_index, addr), *id);
            s.ids_taken.insert(*id);
            s.written.reals.insert(*id, *real);
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
        let plan = std::mem::take(&mut next.plan);
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

    /// Programs cross-site handoff; returns whether anything was written.
    pub fn set_handoff(&mut self, handoff: &Handoff) -> Result<bool, ReconcileError> {
        self.transact(|s| {
            let written = s.write(Write::Handoff(handoff.clone()));
            s.written.handoff_node = handoff.node.map(addr16);
            s.sync_filter();
            Ok(written)
        })
    }

    /// What handoff was last programmed to.
    pub fn handoff(&self) -> Option<&Handoff> {
        self.state.written.handoff.as_ref()
    }

    /// A new MAC for the next hop (its neighbour entry changed); the rest of the forwarding
    /// settings stay. Returns whether anything was written.
    pub fn set_next_hop(&mut self, mac: [u8; 6]) -> Result<bool, ReconcileError> {
        self.transact(|s| {
            let config = s.written.config.ok_or(ReconcileError::NoConfig)?;
            Ok(s.write(Write::Config(LbConfig { next_hop_mac: mac, ..config })))
        })
    }

    /// The next hop's MAC as last written.
    pub fn next_hop(&self) -> Option<[u8; 6]> {
        self.state.written.config.map(|c| c.next_hop_mac)
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
        self.state.written.vips.get(&vip_key(vip)).copied()
    }

    /// The id of `real` of `vip`.
    pub fn real_id(&self, vip: &VipId, real: IpAddr) -> Option<u32> {
        let index = self.state.vips.get(vip)?.index;
        self.state.real_ids.get(&(index, real)).copied()
    }

    /// The address `REALS` holds for `id`.
    pub fn real_address(&self, id: u32) -> Option<IpAddr> {
        self.state.written.reals.get(&id).map(real_addr)
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
                    announced: false,
                }
            })
            .collect()
    }
}
