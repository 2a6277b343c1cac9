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

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::{limits, LbConfig, RateLimit, Real, VipKey, VipMeta, MAX_REALS, MAX_VIPS, REAL_F_DOWN, REAL_F_IPV6, VIP_F_SOURCE_AFFINITY};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, Forwarding, Proto, RealConfig, Vip, VipId},
    dataplane::{addr16, ip_of, Dataplane, DataplaneError, Programmed},
    maglev::{build_table, MaglevReal},
    ring_pool::{Region, RingPool},
};

/// The writes the reconciler makes; `Dataplane` in production, a fake in tests.
pub trait DataplaneOps {
    fn set_config(&mut self, cfg: &LbConfig) -> Result<(), DataplaneError>;
    fn set_real(&mut self, id: u32, real: &Real) -> Result<(), DataplaneError>;
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), DataplaneError>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError>;
    /// Writes `(slot, real id)` pairs of the ring at pool slot `base`.
    fn write_ring_slots(&mut self, base: u32, slots: impl Iterator<Item = (u32, u32)>) -> Result<(), DataplaneError>;
    fn set_rate_limit(&mut self, limit: u32, rate: &RateLimit) -> Result<(), DataplaneError>;
    fn set_handoff(&mut self, handoff: &Handoff) -> Result<(), DataplaneError>;
    /// Slots in the ring pool.
    fn ring_slots(&self) -> u32;
}

impl DataplaneOps for Dataplane {
    fn set_config(&mut self, cfg: &LbConfig) -> Result<(), DataplaneError> {
        Dataplane::set_config(self, cfg)
    }
    fn set_real(&mut self, id: u32, real: &Real) -> Result<(), DataplaneError> {
        Dataplane::set_real(self, id, real)
    }
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), DataplaneError> {
        Dataplane::set_vip(self, key, meta)
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        Dataplane::remove_vip(self, key)
    }
    fn write_ring_slots(&mut self, base: u32, slots: impl Iterator<Item = (u32, u32)>) -> Result<(), DataplaneError> {
        Dataplane::write_ring_slots(self, base, slots)
    }
    fn set_rate_limit(&mut self, limit: u32, rate: &RateLimit) -> Result<(), DataplaneError> {
        Dataplane::set_rate_limit(self, limit, rate)
    }
    fn set_handoff(&mut self, h: &Handoff) -> Result<(), DataplaneError> {
        Dataplane::set_handoff(self, h.node, &h.peers, &h.sources, h.adopt)
    }
    fn ring_slots(&self) -> u32 {
        Dataplane::ring_slots(self)
    }
}

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

/// Cross-site handoff as the data plane holds it: this node's address, the peers that are up
/// (handed to), every configured peer (handoffs taken from), and whether unknown handed-off
/// flows are adopted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handoff {
    pub node: Option<IpAddr>,
    pub peers: Vec<IpAddr>,
    pub sources: Vec<IpAddr>,
    pub adopt: bool,
}

/// One map write.
#[derive(Debug, Clone, PartialEq)]
enum Write {
    Config(LbConfig),
    RateLimit(u32, RateLimit),
    Real(u32, Real),
    Vip(VipKey, VipMeta),
    RemoveVip(VipKey),
    /// Slots of the ring at pool slot `base` from `table`: every slot, or the `changed` ones
    /// (the table is the ring state's own, not a copy).
    RingSlots {
        base: u32,
        table: Arc<Vec<u32>>,
        changed: Option<Arc<Vec<u32>>>,
    },
    /// `(slot, real id)` pairs of the ring at `base` (undoing writes into a ring freed earlier in
    /// the same change).
    RingPairs {
        base: u32,
        pairs: Vec<(u32, u32)>,
    },
    Handoff(Handoff),
}

impl Write {
    fn run(&self, dp: &mut impl DataplaneOps) -> Result<(), DataplaneError> {
        match self {
            Write::Config(c) => dp.set_config(c),
            Write::RateLimit(limit, rate) => dp.set_rate_limit(*limit, rate),
            Write::Real(id, real) => dp.set_real(*id, real),
            Write::Vip(key, meta) => dp.set_vip(key, meta),
            Write::RemoveVip(key) => dp.remove_vip(key),
            Write::RingSlots { base, table, changed: None } => {
                dp.write_ring_slots(*base, table.iter().enumerate().map(|(slot, &real)| (slot as u32, real)))
            }
            Write::RingSlots { base, table, changed: Some(slots) } => {
                dp.write_ring_slots(*base, slots.iter().map(|&slot| (slot, table[slot as usize])))
            }
            Write::RingPairs { base, pairs } => dp.write_ring_slots(*base, pairs.iter().copied()),
            Write::Handoff(h) => dp.set_handoff(h),
        }
    }
}

/// What the reconciler last wrote to each entry it owns: the "before" of every planned write.
#[derive(Clone, Default)]
struct Written {
    config: Option<LbConfig>,
    limits: HashMap<u32, RateLimit>,
    reals: imbl::HashMap<u32, Real>,
    vips: imbl::HashMap<VipKey, VipMeta>,
    handoff: Option<Handoff>,
}

/// One of a VIP's rings: where it lives in the pool, and what it holds when known (after a
/// restart it is not: the first write is whole).
#[derive(Clone)]
struct Ring {
    region: Region,
    table: Option<Arc<Vec<u32>>>,
}

#[derive(Clone)]
struct VipState {
    config: Vip,
    index: u32,
    /// Which of `rings` is live (0 or 1).
    active: usize,
    rings: [Option<Ring>; 2],
    /// What the live ring was built from (ring size and up reals with their weights): a rebuild
    /// with the same input builds nothing.
    built_from: Option<(u32, Vec<MaglevReal>)>,
    /// Slots of each real id in the live ring, counted when it was built.
    slots: HashMap<u32, u32>,
    /// The id of each of its reals (also in `State::real_ids`; kept here so that a rebuild or a
    /// status of this VIP looks up nothing shared).
    ids: HashMap<IpAddr, u32>,
    /// Health per real address (absent: up).
    up: HashMap<IpAddr, bool>,
    /// Weights set at run time, over the config's.
    weights: HashMap<IpAddr, u32>,
    /// Reals whose backend says it drains (`lb backend drain`): weight 0 while it does.
    draining: HashSet<IpAddr>,
}

impl VipState {
    fn new(config: Vip, index: u32, live: Option<Region>, up: HashMap<IpAddr, bool>) -> Self {
        let rings = [live.map(|region| Ring { region, table: None }), None];
        Self {
            config,
            index,
            active: 0,
            rings,
            built_from: None,
            slots: HashMap::new(),
            ids: HashMap::new(),
            up,
            weights: HashMap::new(),
            draining: HashSet::new(),
        }
    }
    fn is_up(&self, real: IpAddr) -> bool {
        self.up.get(&real).copied().unwrap_or(true)
    }
    fn weight(&self, real: &RealConfig) -> u32 {
        if self.draining.contains(&real.addr) {
            return 0;
        }
        self.weights.get(&real.addr).copied().unwrap_or(real.weight)
    }
}

/// Rebuild figures, for metrics.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct RebuildStats {
    pub count: u64,
    pub last: Duration,
    pub total: Duration,
}

/// A real as `lb status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RealStatus {
    pub address: IpAddr,
    pub id: u32,
    pub up: bool,
    pub config_weight: u32,
    pub weight: u32,
    /// Slots of the live ring: its share of new flows is slots / ring_size.
    pub slots: u32,
    /// Its backend says it drains: weight 0, established flows kept.
    #[serde(default)]
    pub draining: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VipStatus {
    pub name: String,
    pub vip: VipId,
    pub index: u32,
    pub ring_size: u32,
    pub min_healthy: u32,
    pub reals: Vec<RealStatus>,
    /// Announced over BGP right now (filled in by the daemon).
    #[serde(default)]
    pub announced: bool,
}

impl VipStatus {
    pub fn healthy(&self) -> u32 {
        self.reals.iter().filter(|r| r.up).count() as u32
    }

    /// The site can serve this VIP: enough reals up.
    pub fn servable(&self) -> bool {
        self.healthy() >= self.min_healthy
    }

    /// Share of the configured weight that up reals carry (1.0 with no weight configured).
    pub fn capacity(&self) -> f64 {
        let total: u32 = self.reals.iter().map(|r| r.config_weight).sum();
        let up: u32 = self.reals.iter().filter(|r| r.up).map(|r| r.weight).sum();
        if total == 0 {
            1.0
        } else {
            up as f64 / total as f64
        }
    }
}

/// Everything the reconciler knows. A transaction plans on a copy, so the large parts are
/// persistent maps (`imbl`: a copy shares everything until it is changed) and VIP states and
/// ring tables sit behind `Arc`s: a copy costs microseconds at 4,096 VIPs, not a pass over them.
#[derive(Clone)]
struct State {
    vips: imbl::OrdMap<VipId, Arc<VipState>>,
    /// (VIP index, real address) -> real id.
    real_ids: imbl::HashMap<(u32, IpAddr), u32>,
    /// Ids that held a real once and were given up: reused only when no fresh id is left, so a
    /// stale connection entry rarely meets someone else's real.
    retired_ids: imbl::Vector<u32>,
    /// Every id ever given out (held or retired), and the lowest id that may still be fresh.
    ids_taken: imbl::HashSet<u32>,
    next_fresh_id: u32,
    /// VIPs found in the maps but not yet matched by a config: index and live ring.
    recovered: HashMap<VipId, (u32, Region)>,
    /// Where the rings live in `MAGLEV`.
    pool: RingPool,
    recovered_down: imbl::HashSet<(u32, IpAddr)>,
    written: Written,
    rebuilds: RebuildStats,
    /// The planned writes in order, each with the write that undoes it (None: nothing a packet
    /// could see changes, e.g. slots of a ring no VIP uses).
    plan: Vec<(Write, Option<Write>)>,
    /// Rings freed by this transaction with their content, so a write that reuses them can be
    /// undone. A ring whose content is unknown is freed only once the plan is complete.
    freed: Vec<(Region, Arc<Vec<u32>>)>,
    deferred_frees: Vec<Region>,
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
    /// real ids and which reals were down.
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
        self.transact(|s| Ok(s.write(Write::Handoff(handoff.clone()))))
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

impl State {
    /// Plans `write` unless the entry already holds exactly that; returns whether it did.
    fn write(&mut self, write: Write) -> bool {
        let w = &mut self.written;
        let undo = match &write {
            Write::Config(c) => match w.config.replace(*c) {
                Some(old) if old == *c => return false,
                old => old.map(Write::Config),
            },
            Write::RateLimit(limit, rate) => match w.limits.insert(*limit, *rate) {
                Some(old) if old == *rate => return false,
                old => old.map(|old| Write::RateLimit(*limit, old)),
            },
            // Looked up before the insert: an insert into a persistent map copies a path even
            // when the value is the same.
            Write::Real(id, real) => match w.reals.get(id).copied() {
                Some(old) if old == *real => return false,
                // An entry never written holds zeroes (an array map).
                old => {
                    w.reals.insert(*id, *real);
                    Some(Write::Real(*id, old.unwrap_or_default()))
                }
            },
            Write::Vip(key, meta) => match w.vips.get(key).copied() {
                Some(old) if old == *meta => return false,
                old => {
                    w.vips.insert(*key, *meta);
                    Some(old.map_or(Write::RemoveVip(*key), |old| Write::Vip(*key, old)))
                }
            },
            Write::RemoveVip(key) => w.vips.remove(key).map(|old| Write::Vip(*key, old)),
            Write::Handoff(h) => match w.handoff.replace(h.clone()) {
                Some(old) if old == *h => return false,
                old => old.map(Write::Handoff),
            },
            Write::RingSlots { .. } | Write::RingPairs { .. } => {
                unreachable!("ring writes are planned by `plan_ring`, which knows the old slots")
            }
        };
        self.plan.push((write, undo));
        true
    }

    /// After an undo failed: nothing written is known, so the next change writes everything.
    fn forget_written(&mut self) {
        self.written = Written::default();
        let ids: Vec<VipId> = self.vips.keys().copied().collect();
        for id in ids {
            let v = Arc::make_mut(self.vips.get_mut(&id).expect("listed"));
            v.built_from = None;
            for ring in v.rings.iter_mut().flatten() {
                ring.table = None;
            }
        }
    }

    /// Frees a ring: at once if its content is known (a write reusing it can be undone), else
    /// once the plan is complete.
    fn free_ring(&mut self, ring: &Ring) {
        match &ring.table {
            Some(table) => {
                self.pool.free(ring.region);
                self.freed.push((ring.region, table.clone()));
            }
            None => self.deferred_frees.push(ring.region),
        }
    }

    /// The lowest VIP index not in `used`, which then holds it too.
    fn free_index(used: &mut BTreeSet<u32>) -> Result<u32, ReconcileError> {
        // `used` is sorted: the first gap is where the run 0, 1, 2, .. breaks.
        let index = used.iter().enumerate().find(|&(i, &u)| i as u32 != u).map_or(used.len() as u32, |(i, _)| i as u32);
        if index >= MAX_VIPS {
            return Err(ReconcileError::Full { what: "VIP index", max: MAX_VIPS });
        }
        used.insert(index);
        Ok(index)
    }

    fn real_id(&mut self, vip_index: u32, addr: IpAddr) -> Result<u32, ReconcileError> {
        if let Some(&id) = self.real_ids.get(&(vip_index, addr)) {
            return Ok(id);
        }
        // Fresh ids first (every id below the cursor is taken or retired), then retired ones.
        while self.next_fresh_id < MAX_REALS && self.ids_taken.contains(&self.next_fresh_id) {
            self.next_fresh_id += 1;
        }
        let id = if self.next_fresh_id < MAX_REALS {
            self.ids_taken.insert(self.next_fresh_id);
            self.next_fresh_id
        } else {
            self.retired_ids.pop_back().ok_or(ReconcileError::Full { what: "real id", max: MAX_REALS - 1 })?
        };
        self.real_ids.insert((vip_index, addr), id);
        Ok(id)
    }

    fn apply(&mut self, config: &Config, next_hop_mac: [u8; 6]) -> Result<(), ReconcileError> {
        let needed = crate::config::ring_slots_needed(&config.vips);
        if needed > self.pool.size() as u64 {
            return Err(ReconcileError::PoolTooSmall { needed, pool: self.pool.size() });
        }
        self.write(Write::Config(lb_config(&config.forwarding, next_hop_mac)));
        self.write(Write::RateLimit(limits::TOO_BIG, RateLimit::per_sec(config.forwarding.too_big_per_sec)));
        self.write(Write::RateLimit(limits::INSERTS, RateLimit::per_sec(config.flood.inserts_per_sec)));
        self.write(Write::RateLimit(limits::HANDOFFS, RateLimit::per_sec(config.flood.handoffs_per_sec)));
        let wanted: HashSet<VipId> = config.vips.iter().map(|v| v.id).collect();
        // Indexes of VIPs going away stay taken in this change: no new VIP shares one with them.
        let mut indexes: BTreeSet<u32> = self.vips.values().map(|v| v.index).chain(self.recovered.values().map(|r| r.0)).collect();
        let gone: Vec<VipId> = self.vips.keys().filter(|id| !wanted.contains(id)).copied().collect();
        for id in gone {
            self.remove(&id)?;
        }
        for vip in &config.vips {
            match self.vips.get_mut(&vip.id) {
                Some(state) if state.config == *vip => {}
                Some(state) => {
                    let state = Arc::make_mut(state);
                    let addrs: HashSet<IpAddr> = vip.reals.iter().map(|r| r.addr).collect();
                    state.up.retain(|a, _| addrs.contains(a));
                    state.weights.retain(|a, _| addrs.contains(a));
                    state.draining.retain(|a| addrs.contains(a));
                    let dropped: Vec<IpAddr> = state.config.reals.iter().map(|r| r.addr).filter(|a| !addrs.contains(a)).collect();
                    state.ids.retain(|a, _| addrs.contains(a));
                    state.config = vip.clone();
                    let index = state.index;
                    for addr in dropped {
                        self.retire_real(index, addr);
                    }
                }
                None => {
                    let (index, live) = match self.recovered.remove(&vip.id) {
                        Some((index, live)) => (index, Some(live).filter(|l| l.len > 0)),
                        None => (Self::free_index(&mut indexes)?, None),
                    };
                    let up = vip.reals.iter().filter(|r| self.recovered_down.contains(&(index, r.addr))).map(|r| (r.addr, false)).collect();
                    self.vips.insert(vip.id, Arc::new(VipState::new(vip.clone(), index, live, up)));
                }
            }
            self.rebuild(&vip.id)?;
        }
        // VIPs an earlier run left that the config no longer has.
        for (id, (_, live)) in std::mem::take(&mut self.recovered) {
            self.write(Write::RemoveVip(vip_key(&id)));
            if live.len > 0 {
                self.deferred_frees.push(live);
            }
        }
        Ok(())
    }

    fn remove(&mut self, id: &VipId) -> Result<(), ReconcileError> {
        let Some(state) = self.vips.remove(id) else { return Ok(()) };
        self.write(Write::RemoveVip(vip_key(id)));
        for ring in state.rings.iter().flatten() {
            self.free_ring(ring);
        }
        for real in &state.config.reals {
            self.retire_real(state.index, real.addr);
        }
        Ok(())
    }

    /// Marks the real down in the maps (its flows move on) and frees its id.
    fn retire_real(&mut self, vip_index: u32, addr: IpAddr) {
        if let Some(id) = self.real_ids.remove(&(vip_index, addr)) {
            self.write(Write::Real(id, Real { addr: addr16(addr), flags: real_flags(addr, false), vip_index }));
            self.retired_ids.push_back(id);
        }
    }

    fn find(&self, vip: &str) -> Result<VipId, ReconcileError> {
        self.vips
            .iter()
            .find(|(id, s)| s.config.name == vip || id.to_string() == vip)
            .map(|(id, _)| *id)
            .ok_or_else(|| ReconcileError::NoVip(vip.to_owned()))
    }

    /// Plans one VIP's table into its spare ring and the switch to it; returns whether it
    /// switched.
    fn rebuild(&mut self, id: &VipId) -> Result<bool, ReconcileError> {
        let started = Instant::now();
        let state = self.vips.get(id).ok_or_else(|| ReconcileError::NoVip(id.to_string()))?;
        let index = state.index;
        let reals: Vec<(IpAddr, bool, u32, Option<u32>)> =
            state.config.reals.iter().map(|r| (r.addr, state.is_up(r.addr), state.weight(r), state.ids.get(&r.addr).copied())).collect();
        let mut maglev = Vec::with_capacity(reals.len());
        let mut ids = Vec::with_capacity(reals.len());
        let mut new_ids = Vec::new();
        for &(addr, up, weight, known) in &reals {
            let real_id = match known {
                Some(real_id) => real_id,
                None => {
                    let real_id = self.real_id(index, addr)?;
                    new_ids.push((addr, real_id));
                    real_id
                }
            };
            ids.push(real_id);
            if up {
                maglev.push(MaglevReal { identity: addr16(addr), id: real_id, weight });
            }
        }
        if !new_ids.is_empty() {
            Arc::make_mut(self.vips.get_mut(id).expect("checked above")).ids.extend(new_ids);
        }
        let set_reals = |s: &mut Self, up: bool| {
            for (&(addr, real_up, _, _), &real_id) in reals.iter().zip(&ids) {
                if real_up == up {
                    s.write(Write::Real(real_id, Real { addr: addr16(addr), flags: real_flags(addr, up), vip_index: index }));
                }
            }
        };
        // Up before the switch: the new ring may send flows there.
        set_reals(self, true);
        let switch = self.plan_ring(id, maglev)?;
        let switched = switch.is_some();
        if let Some(meta) = switch {
            self.write(Write::Vip(vip_key(id), meta));
            self.rebuilds.count += 1;
            self.rebuilds.last = started.elapsed();
            self.rebuilds.total += self.rebuilds.last;
        }
        // Down after the switch: the ring no longer holds it; its flows move on.
        set_reals(self, false);
        Ok(switched)
    }

    /// Builds the table of `maglev` and, if the live ring does not hold it, plans writing it into
    /// the spare ring; returns the `VIPS` entry that switches to it.
    fn plan_ring(&mut self, id: &VipId, maglev: Vec<MaglevReal>) -> Result<Option<VipMeta>, ReconcileError> {
        let ring_size = self.vips.get(id).expect("planned by the caller").config.ring_size;
        let input = (ring_size, maglev);
        if self.vips.get(id).and_then(|s| s.built_from.as_ref()) == Some(&input) {
            return Ok(None);
        }
        let state = Arc::make_mut(self.vips.get_mut(id).expect("planned by the caller"));
        let table = Arc::new(build_table(&input.1, ring_size));
        state.built_from = Some(input);
        let live = state.rings[state.active].as_ref().and_then(|r| r.table.as_deref());
        if live == Some(&*table) {
            return Ok(None);
        }
        let spare = 1 - state.active;
        // The spare ring must have this ring size (a VIP's ring_size may have changed).
        let ring = match state.rings[spare].take() {
            Some(ring) if ring.region.len == ring_size => ring,
            other => {
                if let Some(old) = other {
                    match &old.table {
                        Some(t) => {
                            self.pool.free(old.region);
                            self.freed.push((old.region, t.clone()));
                        }
                        None => self.deferred_frees.push(old.region),
                    }
                }
                let (free, pool) = (self.pool.free_slots(), self.pool.size());
                let region = self.pool.alloc(ring_size).ok_or(ReconcileError::PoolFragmented { len: ring_size, free, pool })?;
                Ring { region, table: None }
            }
        };
        let base = ring.region.base;
        // The write, and what undoes it: the same slots from the old table when this ring's is
        // known; else the content of a ring freed earlier in this change (whose VIP an undo
        // brings back), where the new ring overlaps it; else nothing a packet could see.
        let (write, undo) = match &ring.table {
            Some(old) => {
                let changed: Arc<Vec<u32>> =
                    Arc::new(old.iter().zip(table.iter()).enumerate().filter(|(_, (a, b))| a != b).map(|(slot, _)| slot as u32).collect());
                let undo = Write::RingSlots { base, table: old.clone(), changed: Some(changed.clone()) };
                (Write::RingSlots { base, table: table.clone(), changed: Some(changed) }, Some(undo))
            }
            None => {
                let old_at = |at: u32| {
                    self.freed.iter().find(|(r, _)| (r.base..r.base + r.len).contains(&at)).map(|(r, t)| t[(at - r.base) as usize])
                };
                let pairs: Vec<(u32, u32)> = if self.freed.is_empty() {
                    Vec::new()
                } else {
                    (0..ring_size).filter_map(|slot| old_at(base + slot).map(|old| (slot, old))).collect()
                };
                (
                    Write::RingSlots { base, table: table.clone(), changed: None },
                    (!pairs.is_empty()).then_some(Write::RingPairs { base, pairs }),
                )
            }
        };
        self.plan.push((write, undo));
        let flags = if state.config.source_affinity { VIP_F_SOURCE_AFFINITY } else { 0 };
        let meta = VipMeta { flags, vip_index: state.index, ring_base: base, ring_size, generation: 0 };
        state.slots.clear();
        for &real in table.iter() {
            *state.slots.entry(real).or_default() += 1;
        }
        state.rings[spare] = Some(Ring { region: ring.region, table: Some(table) });
        state.active = spare;
        Ok(Some(meta))
    }
}

fn real_flags(addr: IpAddr, up: bool) -> u32 {
    (if addr.is_ipv6() { REAL_F_IPV6 } else { 0 }) | (if up { 0 } else { REAL_F_DOWN })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{parse, InterfaceCheck};

    /// Records what the reconciler writes, and the maps as the kernel would hold them; fails
    /// the write numbered `fail_at` (counting from 1) when set.
    #[derive(Default)]
    pub(crate) struct Fake {
        pub reals: HashMap<u32, Real>,
        pub vips: HashMap<VipKey, VipMeta>,
        /// The ring pool's slots.
        pub pool: Vec<u32>,
        pub config: Option<LbConfig>,
        pub limits: HashMap<u32, RateLimit>,
        pub handoff: Option<Handoff>,
        pub slot_writes: usize,
        /// Writes attempted so far, and the one to fail.
        pub writes: usize,
        pub fail_at: Option<usize>,
        /// Order of operations, for the up-before / down-after rule.
        pub log: Vec<String>,
        /// Called on every handoff write (to see what else held at that moment).
        pub on_handoff: Option<HandoffHook>,
    }

    pub(crate) type HandoffHook = Box<dyn FnMut(&Handoff)>;
    /// A VIP's key fields, its entry and its live ring.
    type VipView = BTreeMap<([u8; 16], u16, u8), (VipMeta, Vec<u32>)>;

    /// What packets can see: forwarding settings, limits, handoff, VIPs, reals, and each VIP's
    /// live ring.
    #[derive(Debug, PartialEq)]
    pub(crate) struct View {
        config: Option<LbConfig>,
        limits: BTreeMap<u32, RateLimit>,
        handoff: Option<Handoff>,
        vips: VipView,
        reals: BTreeMap<u32, Real>,
    }

    impl Fake {
        fn attempt(&mut self, what: String) -> Result<(), DataplaneError> {
            self.writes += 1;
            if self.fail_at == Some(self.writes) {
                return Err(DataplaneError::Batch { name: "fake", source: std::io::Error::other(what) });
            }
            self.log.push(what);
            Ok(())
        }

        /// The live ring of the only VIP.
        pub(crate) fn live(&self) -> &[u32] {
            let meta = self.vips.values().next().expect("a VIP");
            &self.pool[meta.ring_base as usize..(meta.ring_base + meta.ring_size) as usize]
        }

        /// A pool with room for `slots`.
        pub(crate) fn with_pool(slots: usize) -> Self {
            Self { pool: vec![0; slots], ..Self::default() }
        }

        pub(crate) fn view(&self) -> View {
            let vips = self
                .vips
                .iter()
                .map(|(k, m)| {
                    let ring = self.pool[m.ring_base as usize..(m.ring_base + m.ring_size) as usize].to_vec();
                    ((k.addr, k.port_be, k.proto), (*m, ring))
                })
                .collect();
            View {
                config: self.config,
                limits: self.limits.iter().map(|(k, v)| (*k, *v)).collect(),
                handoff: self.handoff.clone(),
                vips,
                reals: self.reals.iter().map(|(k, v)| (*k, *v)).collect(),
            }
        }
    }

    impl DataplaneOps for Fake {
        fn set_config(&mut self, c: &LbConfig) -> Result<(), DataplaneError> {
            self.attempt("config".into())?;
            self.config = Some(*c);
            Ok(())
        }
        fn set_real(&mut self, id: u32, real: &Real) -> Result<(), DataplaneError> {
            self.attempt(format!("real {id} {}", if real.flags & REAL_F_DOWN != 0 { "down" } else { "up" }))?;
            // An array map: zeroes are what an entry never written holds.
            if *real == Real::default() {
                self.reals.remove(&id);
            } else {
                self.reals.insert(id, *real);
            }
            Ok(())
        }
        fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), DataplaneError> {
            self.attempt(format!("switch to ring at {}", meta.ring_base))?;
            self.vips.insert(*key, *meta);
            Ok(())
        }
        fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
            self.attempt("remove vip".into())?;
            self.vips.remove(key);
            Ok(())
        }
        fn set_rate_limit(&mut self, limit: u32, rate: &RateLimit) -> Result<(), DataplaneError> {
            self.attempt(format!("limit {limit}"))?;
            self.limits.insert(limit, *rate);
            Ok(())
        }
        fn set_handoff(&mut self, h: &Handoff) -> Result<(), DataplaneError> {
            self.attempt(format!("handoff adopt={}", h.adopt))?;
            if let Some(hook) = &mut self.on_handoff {
                hook(h);
            }
            self.handoff = Some(h.clone());
            Ok(())
        }
        fn write_ring_slots(&mut self, base: u32, slots: impl Iterator<Item = (u32, u32)>) -> Result<(), DataplaneError> {
            self.attempt(format!("ring at {base}"))?;
            for (s, id) in slots {
                self.pool[(base + s) as usize] = id;
                self.slot_writes += 1;
            }
            Ok(())
        }
        fn ring_slots(&self) -> u32 {
            self.pool.len() as u32
        }
    }

    fn config(reals: &[(&str, u32)]) -> Config {
        let mut text = String::from(
            "[forwarding]\nnext_hop_mac = \"02:00:00:00:00:01\"\n[[vip]]\nname = \"web\"\naddress = \"10.0.0.1\"\nport = 80\nprotocol = \"tcp\"\nring_size = 13\n",
        );
        for (a, w) in reals {
            text += &format!("[[vip.real]]\naddress = \"{a}\"\nweight = {w}\n");
        }
        parse(&text, InterfaceCheck::Skip).unwrap()
    }

    pub(crate) fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_apply_fills_a_ring_and_switches_to_it() {
        let mut r = Reconciler::new(Fake::with_pool(100));
        r.apply(&config(&[("10.1.0.1", 1), ("10.1.0.2", 1)]), [0; 6]).unwrap();
        let live = r.dataplane().live();
        assert!(live.iter().all(|&id| id == 1 || id == 2), "{live:?}");
        assert_eq!(r.dataplane().vips.values().next().unwrap().ring_base, 0, "the first ring of the pool");
    }

    #[test]
    fn a_down_real_leaves_the_ring_after_the_switch_and_returns_before_it() {
        let mut r = Reconciler::new(Fake::with_pool(100));
        r.apply(&config(&[("10.1.0.1", 1), ("10.1.0.2", 1)]), [0; 6]).unwrap();
        let vip = r.status()[0].vip;
        r.dp.log.clear();
        assert!(r.set_health(&vip, ip("10.1.0.2"), false).unwrap());
        assert!(r.dataplane().live().iter().all(|&id| id == 1));
        assert_eq!(r.dp.log, ["ring at 13", "switch to ring at 13", "real 2 down"], "down after the switch; unchanged reals not rewritten");
        r.dp.log.clear();
        assert!(r.set_health(&vip, ip("10.1.0.2"), true).unwrap());
        assert_eq!(r.dp.log, ["real 2 up", "ring at 0", "switch to ring at 0"], "up before the switch");
        assert!(!r.set_health(&vip, ip("10.1.0.2"), true).unwrap(), "no flip, no rebuild");
    }

    #[test]
    fn rebuild_writes_only_changed_slots_once_both_rings_are_known() {
        let mut r = Reconciler::new(Fake::with_pool(100));
        let reals = [("10.1.0.1", 1), ("10.1.0.2", 1), ("10.1.0.3", 1)];
        r.apply(&config(&reals), [0; 6]).unwrap();
        let vip = r.status()[0].vip;
        r.set_health(&vip, ip("10.1.0.3"), false).unwrap(); // fills the second ring whole
        let before = r.dp.slot_writes;
        r.set_health(&vip, ip("10.1.0.3"), true).unwrap();
        assert_eq!(r.dp.slot_writes, before, "the spare ring already held this table");
        assert!(r.dataplane().live().contains(&3));
        let before = r.dp.slot_writes;
        r.set_weight("web", ip("10.1.0.1"), Some(3)).unwrap();
        let written = r.dp.slot_writes - before;
        assert!(written > 0 && written < 13, "wrote {written} of 13 slots");
    }

    #[test]
    fn draining_keeps_the_real_up_but_out_of_the_ring() {
        let mut r = Reconciler::new(Fake::with_pool(100));
        r.apply(&config(&[("10.1.0.1", 1), ("10.1.0.2", 1)]), [0; 6]).unwrap();
        r.set_weight("web", ip("10.1.0.2"), Some(0)).unwrap();
        assert!(r.dataplane().live().iter().all(|&id| id == 1));
        assert_eq!(r.dp.reals[&2].flags & REAL_F_DOWN, 0, "drained, not down: its flows stay");
        let s = &r.status()[0].reals[1];
        assert_eq!((s.weight, s.config_weight, s.slots, s.up), (0, 1, 0, true));
        r.set_weight("web", ip("10.1.0.2"), None).unwrap();
        assert!(r.dataplane().live().contains(&2));
        assert!(matches!(r.set_weight("nope", ip("10.1.0.2"), None), Err(ReconcileError::NoVip(_))));
        assert!(matches!(r.set_weight("web", ip("10.9.9.9"), None), Err(ReconcileError::NoReal { .. })));
    }

    #[test]
    fn removed_reals_and_vips_are_retired() {
        let mut r = Reconciler::new(Fake::with_pool(100));
        r.apply(&config(&[("10.1.0.1", 1), ("10.1.0.2", 1)]), [0; 6]).unwrap();
        r.apply(&config(&[("10.1.0.1", 1)]), [0; 6]).unwrap();
        assert_ne!(r.dp.reals[&2].flags & REAL_F_DOWN, 0, "a removed real is marked down");
        r.apply(&config(&[("10.1.0.1", 1), ("10.1.0.3", 1)]), [0; 6]).unwrap();
        assert_eq!(r.status()[0].reals[1].id, 3, "a retired id is not reused while fresh ones remain");
        let mut empty = config(&[]);
        empty.vips.clear();
        r.apply(&empty, [0; 6]).unwrap();
        assert!(r.dp.vips.is_empty());
    }

    #[test]
    fn recovery_keeps_indexes_ids_and_down_reals() {
        let mut first = Reconciler::new(Fake::with_pool(100));
        first.apply(&config(&[("10.1.0.1", 1), ("10.1.0.2", 1)]), [0; 6]).unwrap();
        let vip = first.status()[0].vip;
        first.set_health(&vip, ip("10.1.0.1"), false).unwrap();
        let fake = first.dp;
        let programmed = Programmed {
            vips: fake.vips.iter().map(|(k, m)| (*k, *m)).collect(),
            reals: fake.reals.iter().map(|(id, r)| (*id, *r)).collect(),
        };
        let mut second = Reconciler::recover(Fake { pool: fake.pool.clone(), ..Fake::default() }, &programmed);
        second.apply(&config(&[("10.1.0.1", 1), ("10.1.0.2", 1)]), [0; 6]).unwrap();
        let s = &second.status()[0];
        assert_eq!((s.reals[0].id, s.reals[1].id), (1, 2), "same ids");
        assert!(!s.reals[0].up, "still down after the restart");
        let meta = second.dp.vips.values().next().unwrap();
        assert_eq!(meta.vip_index, 0);
        assert!(second.dp.live().iter().all(|&id| id == 2));
    }

    /// `n` VIPs "v0" .. of ring size 13, each with `reals`.
    fn vips(n: usize, reals: &[(&str, u32)]) -> Config {
        let mut c = config(reals);
        let first = c.vips[0].clone();
        c.vips = (0..n)
            .map(|i| {
                let mut v = first.clone();
                v.name = format!("v{i}");
                v.id.port = 80 + i as u16;
                v
            })
            .collect();
        c
    }

    fn bases(fake: &Fake) -> Vec<u32> {
        let mut b: Vec<u32> = fake.vips.values().map(|m| m.ring_base).collect();
        b.sort();
        b
    }

    #[test]
    fn rings_share_the_pool_without_overlap_and_a_removed_vips_rings_are_reused() {
        let reals = [("10.1.0.1", 1), ("10.1.0.2", 1)];
        let mut r = Reconciler::new(Fake::with_pool(4 * 26));
        r.apply(&vips(4, &reals), [0; 6]).unwrap();
        assert_eq!(bases(&r.dp), [0, 13, 26, 39], "one ring each so far, side by side");
        for v in 0..4 {
            let id = r.status()[v].vip;
            r.set_health(&id, ip("10.1.0.2"), false).unwrap(); // each VIP's second ring
        }
        assert_eq!(bases(&r.dp), [52, 65, 78, 91]);
        assert!(r.dp.pool.iter().all(|&id| id != 0), "every slot of the pool written: {:?}", r.dp.pool);
        let err = r.apply(&vips(5, &reals), [0; 6]).unwrap_err();
        assert!(matches!(err, ReconcileError::PoolTooSmall { needed: 130, pool: 104 }), "{err}");
        assert_eq!(r.dp.vips.len(), 4, "refused before anything changed");
        // One VIP fewer, another new: the new one takes the freed rings.
        let mut c = vips(4, &reals);
        c.vips[1].name = "new".into();
        c.vips[1].id.port = 1000;
        r.apply(&c, [0; 6]).unwrap();
        assert_eq!(r.dp.vips.len(), 4);
        let new = r.dp.vips.iter().find(|(k, _)| k.port_be == 1000u16.to_be()).unwrap().1;
        assert!([13, 65].contains(&new.ring_base), "in a ring the removed VIP left: {}", new.ring_base);
    }

    #[test]
    fn an_apply_that_changes_one_real_rebuilds_only_that_vips_ring() {
        let reals = [("10.1.0.1", 1), ("10.1.0.2", 1)];
        let mut r = Reconciler::new(Fake::with_pool(100 * 26));
        r.apply(&vips(100, &reals), [0; 6]).unwrap();
        let (rebuilds, writes) = (r.rebuilds().count, r.dp.slot_writes);
        r.dp.log.clear();
        r.apply(&vips(100, &reals), [0; 6]).unwrap();
        assert_eq!((r.rebuilds().count, r.dp.slot_writes), (rebuilds, writes), "the same config builds nothing");
        assert!(r.dp.log.is_empty(), "and writes nothing: {:?}", r.dp.log);
        let mut c = vips(100, &reals);
        c.vips[7].reals[1].weight = 3;
        r.apply(&c, [0; 6]).unwrap();
        assert_eq!(r.rebuilds().count, rebuilds + 1, "one ring rebuilt");
        assert!(r.dp.slot_writes - writes <= 13, "one ring's slots written");
        assert_eq!(r.dp.log.iter().filter(|l| l.starts_with("switch")).count(), 1, "{:?}", r.dp.log);
    }

    #[test]
    fn a_new_ring_size_gets_a_spare_of_that_size() {
        let reals = [("10.1.0.1", 1), ("10.1.0.2", 1)];
        let mut r = Reconciler::new(Fake::with_pool(100));
        r.apply(&config(&reals), [0; 6]).unwrap();
        let mut c = config(&reals);
        c.vips[0].ring_size = 17;
        r.apply(&c, [0; 6]).unwrap();
        let meta = *r.dp.vips.values().next().unwrap();
        assert_eq!((meta.ring_base, meta.ring_size), (13, 17));
        assert!(r.dp.live().iter().all(|&id| id == 1 || id == 2) && r.dp.live().len() == 17);
        assert_eq!(r.status()[0].reals.iter().map(|x| x.slots).sum::<u32>(), 17, "slot counts of the new ring");
    }

    #[test]
    fn after_a_restart_live_rings_are_kept_out_of_the_pool() {
        let reals = [("10.1.0.1", 1), ("10.1.0.2", 1)];
        let mut first = Reconciler::new(Fake::with_pool(60));
        first.apply(&vips(2, &reals), [0; 6]).unwrap();
        let vip = first.status()[0].vip;
        first.set_health(&vip, ip("10.1.0.1"), false).unwrap(); // v0 now lives at 26
        let fake = first.dp;
        let programmed = Programmed { vips: fake.vips.iter().map(|(k, m)| (*k, *m)).collect(), reals: vec![] };
        let mut second = Reconciler::recover(Fake { pool: fake.pool.clone(), ..Fake::default() }, &programmed);
        // v0 goes, v1 stays and a new VIP comes: it must not land on v1's live ring at 13.
        let mut c = vips(2, &reals);
        c.vips[0].name = "new".into();
        c.vips[0].id.port = 1000;
        second.apply(&c, [0; 6]).unwrap();
        let base_of = |port: u16| second.dp.vips.iter().find(|(k, _)| k.port_be == port.to_be()).unwrap().1.ring_base;
        assert_ne!(base_of(1000), 13);
        assert_ne!(base_of(81), base_of(1000));
    }

    /// A change that removes a VIP (its rings reused by a new one), adds VIPs, drops a real,
    /// changes weights and a ring size, run against a data plane that fails its Nth write, for
    /// every N: the maps and the status are as before, and the same change then goes through.
    #[test]
    fn a_failed_write_leaves_the_maps_as_they_were() {
        let reals = [("10.1.0.1", 1), ("10.1.0.2", 1), ("10.1.0.3", 1)];
        let before = || {
            let mut r = Reconciler::new(Fake::with_pool(6 * 13 + 17));
            r.apply(&vips(3, &reals), [1; 6]).unwrap();
            let v0 = r.status()[0].vip;
            r.set_health(&v0, ip("10.1.0.3"), false).unwrap();
            let peers = vec![ip("10.20.0.2")];
            r.set_handoff(&Handoff { node: Some(ip("10.20.0.1")), peers: peers.clone(), sources: peers, adopt: false }).unwrap();
            r
        };
        let mut after = vips(4, &reals);
        after.vips.remove(1); // v1 goes; its ring at 13 is the first free one
        after.vips[0].reals[0].weight = 3;
        after.vips[1].reals.pop();
        after.vips[1].ring_size = 17;
        after.vips[2].name = "new".into();
        after.vips[2].id.port = 1000;
        after.forwarding.mtu = 1400;

        let mut clean = before();
        let start = clean.dp.writes;
        clean.apply(&after, [2; 6]).unwrap();
        let writes = clean.dp.writes - start;
        assert!(clean.dp.log.contains(&"ring at 13".to_owned()), "the new VIP reuses v1's ring: {:?}", clean.dp.log);
        assert!(writes > 10, "{writes} writes");
        for n in 1..=writes {
            let mut r = before();
            let (view, status) = (r.dp.view(), serde_json::to_string(&r.status()).unwrap());
            r.dp.fail_at = Some(r.dp.writes + n);
            assert!(r.apply(&after, [2; 6]).is_err(), "write {n} failed");
            assert_eq!(r.dp.view(), view, "maps after write {n} of {writes} failed");
            assert_eq!(serde_json::to_string(&r.status()).unwrap(), status);
            r.dp.fail_at = None;
            r.apply(&after, [2; 6]).unwrap();
            assert_eq!(r.dp.view(), clean.dp.view(), "the change after a failure at write {n}");
        }
    }

    #[test]
    fn running_out_of_anything_fails_before_the_first_write() {
        let reals = [("10.1.0.1", 1), ("10.1.0.2", 1)];
        let mut r = Reconciler::new(Fake::with_pool(4 * 13));
        r.apply(&vips(2, &reals), [0; 6]).unwrap();
        let writes = r.dp.writes;
        let mut c = vips(2, &reals);
        c.vips[1].ring_size = 17; // 13 + 13 + 17 + 13 fit in 52 only if the pool were not fragmented
        let err = r.apply(&c, [0; 6]).unwrap_err();
        assert!(matches!(err, ReconcileError::PoolTooSmall { .. } | ReconcileError::PoolFragmented { .. }), "{err}");
        assert_eq!(r.dp.writes, writes, "nothing written");
    }

    #[test]
    fn a_draining_backend_leaves_the_ring_but_stays_up_and_returns() {
        let mut r = Reconciler::new(Fake::with_pool(100));
        r.apply(&config(&[("10.1.0.1", 1), ("10.1.0.2", 1)]), [0; 6]).unwrap();
        let vip = r.status()[0].vip;
        assert!(r.set_draining(&vip, ip("10.1.0.2"), true).unwrap());
        assert!(r.dataplane().live().iter().all(|&id| id == 1));
        assert_eq!(r.dp.reals[&2].flags & REAL_F_DOWN, 0, "up: its flows stay");
        let s = &r.status()[0].reals[1];
        assert_eq!((s.draining, s.weight, s.up), (true, 0, true));
        assert!(!r.set_draining(&vip, ip("10.1.0.2"), true).unwrap(), "no change, no rebuild");
        r.set_weight("web", ip("10.1.0.2"), Some(5)).unwrap();
        assert_eq!(r.status()[0].reals[1].weight, 0, "draining wins over a run-time weight");
        assert!(r.set_draining(&vip, ip("10.1.0.2"), false).unwrap());
        assert_eq!(r.status()[0].reals[1].weight, 5);
        assert!(r.dataplane().live().contains(&2));
    }

    #[test]
    fn a_flip_that_changes_no_slot_is_not_a_rebuild() {
        let mut r = Reconciler::new(Fake::with_pool(100));
        r.apply(&config(&[("10.1.0.1", 1), ("10.1.0.2", 1)]), [0; 6]).unwrap();
        r.set_weight("web", ip("10.1.0.2"), Some(0)).unwrap();
        let (vip, rebuilds) = (r.status()[0].vip, r.rebuilds().count);
        assert!(!r.set_health(&vip, ip("10.1.0.2"), false).unwrap(), "a drained real going down changes no slot");
        assert_eq!(r.rebuilds().count, rebuilds);
        assert!(!r.status()[0].reals[1].up, "but its health is kept");
        assert_ne!(r.dp.reals[&2].flags & REAL_F_DOWN, 0, "and written");
    }

    #[test]
    fn handoff_and_next_hop_are_written_once_and_kept_on_failure() {
        let mut r = Reconciler::new(Fake::with_pool(100));
        r.apply(&config(&[("10.1.0.1", 1)]), [1; 6]).unwrap();
        let h = Handoff { node: Some(ip("10.20.0.1")), peers: vec![ip("10.20.0.2")], sources: vec![ip("10.20.0.2")], adopt: true };
        assert!(r.set_handoff(&h).unwrap());
        assert!(!r.set_handoff(&h).unwrap(), "unchanged: not written again");
        r.dp.fail_at = Some(r.dp.writes + 1);
        assert!(r.set_handoff(&Handoff::default()).is_err());
        assert_eq!((r.handoff(), r.dp.handoff.as_ref()), (Some(&h), Some(&h)));
        r.dp.fail_at = None;
        assert!(r.set_next_hop([7; 6]).unwrap());
        assert_eq!(r.dp.config.unwrap().next_hop_mac, [7; 6]);
        assert_eq!(r.dp.config.unwrap().mtu, 1500, "the other settings stay");
    }
}
