//! Planning a change on a copy of the state: VIP indexes, real ids, rings in the pool and their
//! tables, and the ordered map writes (`write`), each with its undo. Nothing here writes a map.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::Instant,
};

use lb_common::{
    addr16, limits,
    quic_lb::{QuicLbParams, ServerIdKey},
    PrevRing, RateLimit, Real, VipMeta, MAX_REALS, MAX_VIPS, VIP_F_QUIC_LB, VIP_F_SECOND_CHANCE, VIP_F_SOURCE_AFFINITY,
};

use super::{
    entries::{lb_config, real_flags, vip_key},
    error::ReconcileError,
    ring_pool::{Region, RingPool},
    write::{Write, Writes},
};
use crate::{
    config::{Config, RealConfig, Vip, VipId},
    dataplane::monotonic_ns,
    maglev::{build_table, MaglevReal},
    status::RebuildStats,
};

/// One of a VIP's rings: where it lives in the pool, and what it holds when known (after a
/// restart it is not: the first write is whole).
#[derive(Clone)]
pub(super) struct Ring {
    pub(super) region: Region,
    pub(super) table: Option<Arc<Vec<u32>>>,
}

#[derive(Clone)]
pub(super) struct VipState {
    pub(super) config: Vip,
    pub(super) index: u32,
    /// Which of `rings` is live (0 or 1).
    pub(super) active: usize,
    pub(super) rings: [Option<Ring>; 2],
    /// What the live ring was built from (ring size and up reals with their weights): a rebuild
    /// with the same input builds nothing.
    pub(super) built_from: Option<(u32, Vec<MaglevReal>)>,
    /// Slots of each real id in the live ring, counted when it was built.
    pub(super) slots: HashMap<u32, u32>,
    /// The id of each of its reals (also in `State::real_ids`; kept here so that a rebuild or a
    /// status of this VIP looks up nothing shared).
    pub(super) ids: HashMap<IpAddr, u32>,
    /// Health per real address (absent: up).
    pub(super) up: HashMap<IpAddr, bool>,
    /// Weights set at run time, over the config's.
    pub(super) weights: HashMap<IpAddr, u32>,
    /// Reals whose backend says it drains (`lb backend drain`): weight 0 while it does.
    pub(super) draining: HashSet<IpAddr>,
    /// Adapted reals' share of their weight, in percent (`adapt`; absent: 100).
    pub(super) adapt_percent: HashMap<IpAddr, u32>,
}

impl VipState {
    pub(super) fn new(config: Vip, index: u32, live: Option<Region>, up: HashMap<IpAddr, bool>) -> Self {
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
            adapt_percent: HashMap::new(),
        }
    }
    /// `VipMeta::flags` of this VIP's config.
    pub(super) fn flags(&self) -> u32 {
        let affinity = if self.config.source_affinity { VIP_F_SOURCE_AFFINITY } else { 0 };
        let quic = if self.config.quic_lb.is_some() { VIP_F_QUIC_LB } else { 0 };
        affinity | quic | if self.config.second_chance.is_some() { VIP_F_SECOND_CHANCE } else { 0 }
    }

    /// `QUIC_SERVERS` entries this VIP wants: each real's server ID to its real id.
    fn quic_servers(&self) -> impl Iterator<Item = (ServerIdKey, u32)> + '_ {
        self.config.reals.iter().filter_map(|r| {
            let id = self.ids.get(&r.addr)?;
            Some((ServerIdKey::new(self.index, r.server_id.as_deref()?), *id))
        })
    }

    /// The `VIPS` entry of the live ring with the config's flags (None: no ring yet).
    pub(super) fn live_meta(&self) -> Option<VipMeta> {
        let region = self.rings[self.active].as_ref()?.region;
        (region.len > 0).then_some(VipMeta {
            flags: self.flags(),
            vip_index: self.index,
            ring_base: region.base,
            ring_size: region.len,
            generation: 0,
        })
    }

    pub(super) fn is_up(&self, real: IpAddr) -> bool {
        self.up.get(&real).copied().unwrap_or(true)
    }
    pub(super) fn weight(&self, real: &RealConfig) -> u32 {
        if self.draining.contains(&real.addr) {
            return 0;
        }
        self.weights.get(&real.addr).copied().unwrap_or(real.weight)
    }

    /// The weight the ring is built with: with adaptation every weight is scaled by 100 and
    /// an adapted real's by its percent instead, so shares keep their proportions.
    pub(super) fn ring_weight(&self, real: &RealConfig) -> u32 {
        match self.config.adapt {
            Some(_) => self.weight(real) * self.adapt_percent.get(&real.addr).copied().unwrap_or(100),
            None => self.weight(real),
        }
    }
}

/// Everything the reconciler knows. A transaction plans on a copy, so the large parts are
/// persistent maps (`imbl`: a copy shares everything until it is changed) and VIP states and
/// ring tables sit behind `Arc`s: a copy costs microseconds at 4,096 VIPs, not a pass over them.
#[derive(Clone)]
pub(super) struct State {
    pub(super) vips: imbl::OrdMap<VipId, Arc<VipState>>,
    /// (VIP index, real address) -> real id.
    pub(super) real_ids: imbl::HashMap<(u32, IpAddr), u32>,
    /// Ids that held a real once and were given up: reused only when no fresh id is left, so a
    /// stale connection entry rarely meets someone else's real.
    pub(super) retired_ids: imbl::Vector<u32>,
    /// Every id ever given out (held or retired), and the lowest id that may still be fresh.
    pub(super) ids_taken: imbl::HashSet<u32>,
    pub(super) next_fresh_id: u32,
    /// VIPs found in the maps but not yet matched by a config: index and live ring.
    pub(super) recovered: HashMap<VipId, (u32, Region)>,
    /// Where the rings live in `MAGLEV`.
    pub(super) pool: RingPool,
    pub(super) recovered_down: imbl::HashSet<(u32, IpAddr)>,
    /// What every entry holds, and the writes this change plans.
    pub(super) writes: Writes,
    pub(super) rebuilds: RebuildStats,
    /// Rings freed by this transaction with their content, so a write that reuses them can be
    /// undone. A ring whose content is unknown is freed only once the plan is complete.
    pub(super) freed: Vec<(Region, Arc<Vec<u32>>)>,
    pub(super) deferred_frees: Vec<Region>,
}

impl State {
    /// After an undo failed: nothing written is known, so the next change writes everything.
    pub(super) fn forget_written(&mut self) {
        self.writes.written.forget();
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
    pub(super) fn free_ring(&mut self, ring: &Ring) {
        match &ring.table {
            Some(table) => {
                self.pool.free(ring.region);
                self.freed.push((ring.region, table.clone()));
            }
            None => self.deferred_frees.push(ring.region),
        }
    }

    /// The lowest VIP index not in `used`, which then holds it too.
    pub(super) fn free_index(used: &mut BTreeSet<u32>) -> Result<u32, ReconcileError> {
        // `used` is sorted: the first gap is where the run 0, 1, 2, .. breaks.
        let index = used.iter().enumerate().find(|&(i, &u)| i as u32 != u).map_or(used.len() as u32, |(i, _)| i as u32);
        if index >= MAX_VIPS {
            return Err(ReconcileError::Full { what: "VIP index", max: MAX_VIPS });
        }
        used.insert(index);
        Ok(index)
    }

    pub(super) fn real_id(&mut self, vip_index: u32, addr: IpAddr) -> Result<u32, ReconcileError> {
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

    pub(super) fn apply(&mut self, config: &Config, next_hop_mac: [u8; 6]) -> Result<(), ReconcileError> {
        let needed = crate::config::ring_slots_needed(&config.vips);
        if needed > self.pool.size() as u64 {
            return Err(ReconcileError::PoolTooSmall { needed, pool: self.pool.size() });
        }
        let quic_lb = config.vips.iter().any(|v| v.quic_lb.is_some());
        self.writes.write(Write::Config(lb_config(&config.forwarding, next_hop_mac, quic_lb)));
        self.writes.write(Write::RateLimit(limits::TOO_BIG, RateLimit::per_sec(config.forwarding.too_big_per_sec)));
        self.writes.write(Write::RateLimit(limits::INSERTS, RateLimit::per_sec(config.flood.inserts_per_sec)));
        self.writes.write(Write::RateLimit(limits::HANDOFFS, RateLimit::per_sec(config.flood.handoffs_per_sec)));
        self.writes.write(Write::RateLimit(limits::ECHO, RateLimit::per_sec(config.forwarding.echo_per_sec)));
        // Previous rings an earlier `lb` left point at slots this change may give other rings.
        let owned: HashSet<u32> = self.vips.values().map(|v| v.index).collect();
        let stale: Vec<u32> = self.writes.written.prev_rings.keys().filter(|i| !owned.contains(i)).copied().collect();
        for index in stale {
            self.writes.write(Write::PrevRing(index, PrevRing::default()));
        }
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
                    state.adapt_percent.retain(|a, _| addrs.contains(a));
                    if vip.adapt.is_none() {
                        state.adapt_percent.clear();
                    }
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
            self.writes.remove_vip(vip_key(&id));
            if live.len > 0 {
                self.deferred_frees.push(live);
            }
        }
        self.writes.sync_filter();
        self.remove_unwanted_quic();
        Ok(())
    }

    /// Plans removing `QUIC_LB` and `QUIC_SERVERS` entries no VIP wants: an earlier `lb`'s (the
    /// maps outlive it) or a change's leftovers.
    fn remove_unwanted_quic(&mut self) {
        let wanted: HashSet<ServerIdKey> = self.vips.values().flat_map(|v| v.quic_servers().map(|(k, _)| k).collect::<Vec<_>>()).collect();
        let stale: Vec<ServerIdKey> = self.writes.written.quic_servers.keys().filter(|k| !wanted.contains(k)).copied().collect();
        for key in stale {
            self.writes.write(Write::QuicServer(key, 0));
        }
        let on: HashSet<u32> = self.vips.values().filter(|v| v.config.quic_lb.is_some()).map(|v| v.index).collect();
        let stale: Vec<u32> = self.writes.written.quic_params.keys().filter(|i| !on.contains(i)).copied().collect();
        for index in stale {
            self.writes.write(Write::QuicParams(index, Box::new(QuicLbParams::OFF)));
        }
    }

    /// Plans a VIP's `QUIC_LB` entry and its server IDs' reals, before the `VIPS` entry that
    /// turns them on; entries of server IDs it no longer has go.
    fn plan_quic(&mut self, id: &VipId) -> Result<(), ReconcileError> {
        let state = self.vips.get(id).expect("planned by the caller").clone();
        let params = match &state.config.quic_lb {
            Some(q) if q.key_file.is_some() && q.key.is_none() => {
                return Err(ReconcileError::QuicKeyMissing { vip: state.config.name.clone() });
            }
            Some(q) => q.codec().params(),
            None => QuicLbParams::OFF,
        };
        self.writes.write(Write::QuicParams(state.index, Box::new(params)));
        let wanted: HashMap<ServerIdKey, u32> = state.quic_servers().collect();
        let stale: Vec<ServerIdKey> =
            self.writes.written.quic_servers.keys().filter(|k| k.vip_index == state.index && !wanted.contains_key(k)).copied().collect();
        for key in stale {
            self.writes.write(Write::QuicServer(key, 0));
        }
        for (key, real_id) in wanted {
            self.writes.write(Write::QuicServer(key, real_id));
        }
        Ok(())
    }

    pub(super) fn remove(&mut self, id: &VipId) -> Result<(), ReconcileError> {
        let Some(state) = self.vips.remove(id) else { return Ok(()) };
        self.writes.remove_vip(vip_key(id));
        // Its server IDs after the VIP: no packet looks for them any more.
        let servers: Vec<ServerIdKey> = self.writes.written.quic_servers.keys().filter(|k| k.vip_index == state.index).copied().collect();
        for key in servers {
            self.writes.write(Write::QuicServer(key, 0));
        }
        self.writes.write(Write::QuicParams(state.index, Box::new(QuicLbParams::OFF)));
        // Its rings' slots go back to the pool: no previous ring may point at them.
        self.writes.write(Write::PrevRing(state.index, PrevRing::default()));
        for ring in state.rings.iter().flatten() {
            self.free_ring(ring);
        }
        for real in &state.config.reals {
            self.retire_real(state.index, real.addr);
        }
        Ok(())
    }

    /// Marks the real down in the maps (its flows move on) and frees its id.
    pub(super) fn retire_real(&mut self, vip_index: u32, addr: IpAddr) {
        if let Some(id) = self.real_ids.remove(&(vip_index, addr)) {
            self.writes.write(Write::Real(id, Real { addr: addr16(addr), flags: real_flags(addr, false), vip_index }));
            self.retired_ids.push_back(id);
        }
    }

    pub(super) fn find(&self, vip: &str) -> Result<VipId, ReconcileError> {
        self.vips
            .iter()
            .find(|(id, s)| s.config.name == vip || id.to_string() == vip)
            .map(|(id, _)| *id)
            .ok_or_else(|| ReconcileError::NoVip(vip.to_owned()))
    }

    /// Plans one VIP's table into its spare ring and the switch to it; returns whether it
    /// switched.
    pub(super) fn rebuild(&mut self, id: &VipId) -> Result<bool, ReconcileError> {
        let started = Instant::now();
        let state = self.vips.get(id).ok_or_else(|| ReconcileError::NoVip(id.to_string()))?;
        let index = state.index;
        let reals: Vec<(IpAddr, bool, u32, Option<u32>)> = state
            .config
            .reals
            .iter()
            .map(|r| (r.addr, state.is_up(r.addr), state.ring_weight(r), state.ids.get(&r.addr).copied()))
            .collect();
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
                    s.writes.write(Write::Real(real_id, Real { addr: addr16(addr), flags: real_flags(addr, up), vip_index: index }));
                }
            }
        };
        // Up before the switch: the new ring may send flows there.
        set_reals(self, true);
        self.plan_quic(id)?;
        let switch = self.plan_ring(id, maglev)?;
        let switched = switch.is_some();
        if let Some((meta, previous)) = switch {
            self.writes.write_vip(vip_key(id), meta);
            // After the switch, the ring left behind gives the second chance its alternatives.
            let window = self.vips.get(id).and_then(|s| s.config.second_chance);
            if let (Some(window), Some(previous)) = (window, previous) {
                let until_ns = monotonic_ns().saturating_add(window.as_nanos() as u64);
                self.writes.write(Write::PrevRing(index, PrevRing { ring_base: previous.base, ring_size: previous.len, until_ns }));
            }
            self.rebuilds.count += 1;
            self.rebuilds.last = started.elapsed();
            self.rebuilds.total += self.rebuilds.last;
        } else if let Some(meta) = self.vips.get(id).and_then(|s| s.live_meta()) {
            // The same ring, other flags (second chance or source affinity switched).
            self.writes.write_vip(vip_key(id), meta);
        }
        // Down after the switch: the ring no longer holds it; its flows move on.
        set_reals(self, false);
        Ok(switched)
    }

    /// Builds the table of `maglev` and, if the live ring does not hold it, plans writing it into
    /// the spare ring; returns the `VIPS` entry that switches to it, and the ring it leaves.
    pub(super) fn plan_ring(&mut self, id: &VipId, maglev: Vec<MaglevReal>) -> Result<Option<(VipMeta, Option<Region>)>, ReconcileError> {
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
        let previous = state.rings[state.active].as_ref().map(|r| r.region).filter(|r| r.len > 0);
        let index = state.index;
        let old_spare = state.rings[spare].take();
        // The spare ring is the previous one the second chance reads: forgotten before it is
        // rewritten (a no-op when the VIP has none).
        self.writes.write(Write::PrevRing(index, PrevRing::default()));
        // The spare ring must have this ring size (a VIP's ring_size may have changed).
        let ring = match old_spare {
            Some(ring) if ring.region.len == ring_size => ring,
            other => {
                if let Some(old) = other {
                    self.free_ring(&old);
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
        self.writes.plan.push((write, undo));
        let state = Arc::make_mut(self.vips.get_mut(id).expect("planned by the caller"));
        state.slots.clear();
        for &real in table.iter() {
            *state.slots.entry(real).or_default() += 1;
        }
        state.rings[spare] = Some(Ring { region: ring.region, table: Some(table) });
        state.active = spare;
        Ok(Some((state.live_meta().expect("the ring just planned"), previous)))
    }
}
