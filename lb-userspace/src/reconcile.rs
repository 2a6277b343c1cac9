//! The single writer: config + health + runtime weight changes -> Maglev tables -> data plane.
//!
//! Each VIP owns two rings. A rebuild writes the changed slots of the spare ring, then switches
//! the VIP to it with one `VIPS` update, so a packet never sees a half-written table. A real
//! coming up is marked up before the switch; a real going down is marked down after it, which
//! moves its established flows (their connection entries stop counting). Weight 0 drains: the
//! real leaves the ring but stays up, so its flows stay. Real ids belong to one VIP each and are
//! recovered from the pinned maps after a restart, so connection entries keep their meaning.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_common::{
    limits, LbConfig, RateLimit, Real, VipKey, VipMeta, MAX_REALS, MAX_VIPS, REAL_F_DOWN, REAL_F_IPV6, VIP_F_SOURCE_AFFINITY,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, Forwarding, Proto, Vip, VipId},
    dataplane::{addr16, Dataplane, DataplaneError, Programmed},
    maglev::{build_table, diff, MaglevReal},
};

/// The writes the reconciler makes; `Dataplane` in production, a fake in tests.
pub trait DataplaneOps {
    fn set_config(&mut self, cfg: &LbConfig) -> Result<(), DataplaneError>;
    fn set_real(&mut self, id: u32, real: &Real) -> Result<(), DataplaneError>;
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), DataplaneError>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError>;
    fn write_ring_slots(&mut self, ring: u32, slots: &[(u32, u32)]) -> Result<(), DataplaneError>;
    fn set_rate_limit(&mut self, limit: u32, rate: &RateLimit) -> Result<(), DataplaneError>;
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
    fn write_ring_slots(&mut self, ring: u32, slots: &[(u32, u32)]) -> Result<(), DataplaneError> {
        Dataplane::write_ring_slots(self, ring, slots.iter().copied())
    }
    fn set_rate_limit(&mut self, limit: u32, rate: &RateLimit) -> Result<(), DataplaneError> {
        Dataplane::set_rate_limit(self, limit, rate)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("no free {what} (at most {max})")]
    Full { what: &'static str, max: u32 },
    #[error("no VIP {0}")]
    NoVip(String),
    #[error("VIP {vip} has no real {real}")]
    NoReal { vip: String, real: IpAddr },
}

pub fn vip_key(id: &VipId) -> VipKey {
    VipKey { addr: addr16(id.addr), port_be: id.port.to_be(), proto: id.proto.number(), _pad: 0 }
}

fn vip_id(key: &VipKey) -> Option<VipId> {
    let addr = std::net::Ipv6Addr::from(key.addr);
    let addr = addr.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(addr));
    let proto = match key.proto {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        _ => return None,
    };
    Some(VipId { addr, port: u16::from_be(key.port_be), proto })
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

struct VipState {
    config: Vip,
    index: u32,
    /// Which of the VIP's two rings is live (0 or 1).
    active: u32,
    /// What each ring holds, when known (after a restart it is not: the first write is whole).
    rings: [Option<Vec<u32>>; 2],
    /// Health per real address (absent: up).
    up: HashMap<IpAddr, bool>,
    /// Weights set at run time, over the config's.
    weights: HashMap<IpAddr, u32>,
}

impl VipState {
    fn ring(&self, which: u32) -> u32 {
        2 * self.index + which
    }
    fn is_up(&self, real: IpAddr) -> bool {
        self.up.get(&real).copied().unwrap_or(true)
    }
    fn weight(&self, real: &crate::config::RealConfig) -> u32 {
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
        if total == 0 { 1.0 } else { up as f64 / total as f64 }
    }
}

pub struct Reconciler<D> {
    dp: D,
    vips: BTreeMap<VipId, VipState>,
    /// (VIP index, real address) -> real id.
    real_ids: HashMap<(u32, IpAddr), u32>,
    /// Ids that held a real once and were given up: reused only when no fresh id is left, so a
    /// stale connection entry rarely meets someone else's real.
    retired_ids: Vec<u32>,
    /// Indexes of VIPs found in the maps but not yet matched by a config.
    recovered: HashMap<VipId, (u32, u32)>,
    recovered_down: HashSet<(u32, IpAddr)>,
    /// What each `REALS` entry holds, so a rebuild writes only the reals that changed.
    written: HashMap<u32, Real>,
    pub rebuilds: RebuildStats,
}

impl<D: DataplaneOps> Reconciler<D> {
    pub fn new(dp: D) -> Self {
        Self {
            dp,
            vips: BTreeMap::new(),
            real_ids: HashMap::new(),
            retired_ids: Vec::new(),
            recovered: HashMap::new(),
            recovered_down: HashSet::new(),
            written: HashMap::new(),
            rebuilds: RebuildStats::default(),
        }
    }

    /// Starts from what an earlier `lb` left in the pinned maps: VIP indexes and live rings,
    /// real ids and which reals were down.
    pub fn recover(dp: D, programmed: &Programmed) -> Self {
        let mut r = Self::new(dp);
        for (key, meta) in &programmed.vips {
            if let Some(id) = vip_id(key) {
                r.recovered.insert(id, (meta.vip_index, meta.ring_index.saturating_sub(2 * meta.vip_index).min(1)));
            }
        }
        for (id, real) in &programmed.reals {
            let addr = std::net::Ipv6Addr::from(real.addr);
            let addr = if real.flags & REAL_F_IPV6 != 0 { IpAddr::V6(addr) } else { addr.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(addr)) };
            r.real_ids.insert((real.vip_index, addr), *id);
            r.written.insert(*id, *real);
            if real.flags & REAL_F_DOWN != 0 {
                r.recovered_down.insert((real.vip_index, addr));
            }
        }
        r
    }

    /// For maps the reconciler does not own (handoff).
    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    /// Whether `real` of `vip` was down when the maps were last written (health starts there).
    pub fn starts_up(&self, vip: &VipId, real: IpAddr) -> bool {
        self.vips.get(vip).is_none_or(|v| v.is_up(real))
    }

    fn free_index(&self) -> Result<u32, ReconcileError> {
        let used: HashSet<u32> = self.vips.values().map(|v| v.index).chain(self.recovered.values().map(|r| r.0)).collect();
        (0..MAX_VIPS).find(|i| !used.contains(i)).ok_or(ReconcileError::Full { what: "VIP index", max: MAX_VIPS })
    }

    fn real_id(&mut self, vip_index: u32, addr: IpAddr) -> Result<u32, ReconcileError> {
        if let Some(&id) = self.real_ids.get(&(vip_index, addr)) {
            return Ok(id);
        }
        let used: HashSet<u32> = self.real_ids.values().copied().chain(self.retired_ids.iter().copied()).collect();
        let id = match (1..MAX_REALS).find(|i| !used.contains(i)) {
            Some(id) => id,
            None => self.retired_ids.pop().ok_or(ReconcileError::Full { what: "real id", max: MAX_REALS - 1 })?,
        };
        self.real_ids.insert((vip_index, addr), id);
        Ok(id)
    }

    /// Makes the maps match `config` (VIPs added, changed, removed) with current health.
    pub fn apply(&mut self, config: &Config, next_hop_mac: [u8; 6]) -> Result<(), ReconcileError> {
        self.dp.set_config(&lb_config(&config.forwarding, next_hop_mac))?;
        self.dp.set_rate_limit(limits::TOO_BIG, &RateLimit::per_sec(config.forwarding.too_big_per_sec))?;
        self.dp.set_rate_limit(limits::INSERTS, &RateLimit::per_sec(config.flood.inserts_per_sec))?;
        self.dp.set_rate_limit(limits::HANDOFFS, &RateLimit::per_sec(config.flood.handoffs_per_sec))?;
        let wanted: HashSet<VipId> = config.vips.iter().map(|v| v.id).collect();
        let gone: Vec<VipId> = self.vips.keys().filter(|id| !wanted.contains(id)).copied().collect();
        for id in gone {
            self.remove(&id)?;
        }
        for vip in &config.vips {
            match self.vips.get_mut(&vip.id) {
                Some(state) => {
                    let addrs: HashSet<IpAddr> = vip.reals.iter().map(|r| r.addr).collect();
                    state.up.retain(|a, _| addrs.contains(a));
                    state.weights.retain(|a, _| addrs.contains(a));
                    let dropped: Vec<IpAddr> = state.config.reals.iter().map(|r| r.addr).filter(|a| !addrs.contains(a)).collect();
                    state.config = vip.clone();
                    let index = state.index;
                    for addr in dropped {
                        self.retire_real(index, addr)?;
                    }
                }
                None => {
                    let (index, active) = match self.recovered.remove(&vip.id) {
                        Some(found) => found,
                        None => (self.free_index()?, 0),
                    };
                    let up = vip
                        .reals
                        .iter()
                        .filter(|r| self.recovered_down.contains(&(index, r.addr)))
                        .map(|r| (r.addr, false))
                        .collect();
                    self.vips.insert(vip.id, VipState { config: vip.clone(), index, active, rings: [None, None], up, weights: HashMap::new() });
                }
            }
            self.rebuild(&vip.id)?;
        }
        // VIPs an earlier run left that the config no longer has.
        for (id, _) in std::mem::take(&mut self.recovered) {
            self.dp.remove_vip(&vip_key(&id))?;
        }
        Ok(())
    }

    fn remove(&mut self, id: &VipId) -> Result<(), ReconcileError> {
        let Some(state) = self.vips.remove(id) else { return Ok(()) };
        self.dp.remove_vip(&vip_key(id))?;
        for real in &state.config.reals {
            self.retire_real(state.index, real.addr)?;
        }
        Ok(())
    }

    /// Writes a `REALS` entry unless it already holds exactly that.
    fn write_real(&mut self, id: u32, real: Real) -> Result<(), ReconcileError> {
        if self.written.get(&id) != Some(&real) {
            self.dp.set_real(id, &real)?;
            self.written.insert(id, real);
        }
        Ok(())
    }

    /// Marks the real down in the maps (its flows move on) and frees its id.
    fn retire_real(&mut self, vip_index: u32, addr: IpAddr) -> Result<(), ReconcileError> {
        if let Some(id) = self.real_ids.remove(&(vip_index, addr)) {
            self.write_real(id, Real { addr: addr16(addr), flags: real_flags(addr, false), vip_index })?;
            self.retired_ids.push(id);
        }
        Ok(())
    }

    /// Rebuilds one VIP's table into its spare ring and switches to it.
    fn rebuild(&mut self, id: &VipId) -> Result<(), ReconcileError> {
        let started = Instant::now();
        let state = self.vips.get(id).ok_or_else(|| ReconcileError::NoVip(id.to_string()))?;
        let index = state.index;
        let reals: Vec<(IpAddr, bool, u32)> = state.config.reals.iter().map(|r| (r.addr, state.is_up(r.addr), state.weight(r))).collect();
        let mut maglev = Vec::with_capacity(reals.len());
        let mut ids = Vec::with_capacity(reals.len());
        for &(addr, up, weight) in &reals {
            let real_id = self.real_id(index, addr)?;
            ids.push(real_id);
            if up {
                maglev.push(MaglevReal { identity: addr16(addr), id: real_id, weight });
            }
        }
        // Up before the switch: the new ring may send flows there.
        for (&(addr, up, _), &real_id) in reals.iter().zip(&ids) {
            if up {
                self.write_real(real_id, Real { addr: addr16(addr), flags: real_flags(addr, true), vip_index: index })?;
            }
        }
        let state = self.vips.get_mut(id).expect("checked above");
        let table = build_table(&maglev, state.config.ring_size);
        if state.rings[state.active as usize].as_ref() != Some(&table) {
            let spare = 1 - state.active;
            let slots = match &state.rings[spare as usize] {
                Some(old) if old.len() == table.len() => diff(old, &table),
                _ => table.iter().enumerate().map(|(slot, &real)| (slot as u32, real)).collect(),
            };
            self.dp.write_ring_slots(state.ring(spare), &slots)?;
            let flags = if state.config.source_affinity { VIP_F_SOURCE_AFFINITY } else { 0 };
            let meta = VipMeta { flags, vip_index: index, ring_index: state.ring(spare), ring_size: state.config.ring_size, generation: 0 };
            self.dp.set_vip(&vip_key(id), &meta)?;
            state.active = spare;
            state.rings[spare as usize] = Some(table);
            self.rebuilds.count += 1;
            self.rebuilds.last = started.elapsed();
            self.rebuilds.total += self.rebuilds.last;
        }
        // Down after the switch: the ring no longer holds it; its flows move on.
        for (&(addr, up, _), &real_id) in reals.iter().zip(&ids) {
            if !up {
                self.write_real(real_id, Real { addr: addr16(addr), flags: real_flags(addr, false), vip_index: index })?;
            }
        }
        Ok(())
    }

    /// A health flip; returns whether anything changed.
    pub fn set_health(&mut self, vip: &VipId, real: IpAddr, up: bool) -> Result<bool, ReconcileError> {
        let Some(state) = self.vips.get_mut(vip) else { return Ok(false) };
        if !state.config.reals.iter().any(|r| r.addr == real) || state.is_up(real) == up {
            return Ok(false);
        }
        state.up.insert(real, up);
        self.rebuild(vip)?;
        Ok(true)
    }

    fn find(&mut self, vip: &str) -> Result<VipId, ReconcileError> {
        self.vips
            .iter()
            .find(|(id, s)| s.config.name == vip || id.to_string() == vip)
            .map(|(id, _)| *id)
            .ok_or_else(|| ReconcileError::NoVip(vip.to_owned()))
    }

    /// Sets a real's weight at run time (`None`: back to the config's). 0 drains.
    pub fn set_weight(&mut self, vip: &str, real: IpAddr, weight: Option<u32>) -> Result<(), ReconcileError> {
        let id = self.find(vip)?;
        let state = self.vips.get_mut(&id).expect("found");
        if !state.config.reals.iter().any(|r| r.addr == real) {
            return Err(ReconcileError::NoReal { vip: vip.to_owned(), real });
        }
        match weight {
            Some(w) => state.weights.insert(real, w),
            None => state.weights.remove(&real),
        };
        self.rebuild(&id)
    }

    /// Runtime weights, to keep across reloads and restarts: (VIP name, real, weight).
    pub fn weight_overrides(&self) -> Vec<(String, IpAddr, u32)> {
        self.vips.values().flat_map(|s| s.weights.iter().map(|(a, w)| (s.config.name.clone(), *a, *w))).collect()
    }

    pub fn status(&self) -> Vec<VipStatus> {
        self.vips
            .iter()
            .map(|(id, s)| {
                let live = s.rings[s.active as usize].as_deref().unwrap_or(&[]);
                let mut slots: HashMap<u32, u32> = HashMap::new();
                for &real in live {
                    *slots.entry(real).or_default() += 1;
                }
                let reals = s
                    .config
                    .reals
                    .iter()
                    .map(|r| {
                        let rid = self.real_ids.get(&(s.index, r.addr)).copied().unwrap_or(0);
                        RealStatus {
                            address: r.addr,
                            id: rid,
                            up: s.is_up(r.addr),
                            config_weight: r.weight,
                            weight: s.weight(r),
                            slots: slots.get(&rid).copied().unwrap_or(0),
                        }
                    })
                    .collect();
                VipStatus {
                    name: s.config.name.clone(),
                    vip: *id,
                    index: s.index,
                    ring_size: s.config.ring_size,
                    min_healthy: s.config.min_healthy,
                    reals,
                    announced: false,
                }
            })
            .collect()
    }
}

fn real_flags(addr: IpAddr, up: bool) -> u32 {
    (if addr.is_ipv6() { REAL_F_IPV6 } else { 0 }) | (if up { 0 } else { REAL_F_DOWN })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, InterfaceCheck};

    /// Records what the reconciler writes, and the ring contents as the kernel would hold them.
    #[derive(Default)]
    struct Fake {
        reals: HashMap<u32, Real>,
        vips: HashMap<VipKey, VipMeta>,
        rings: HashMap<u32, Vec<u32>>,
        slot_writes: usize,
        /// Order of operations, for the up-before / down-after rule.
        log: Vec<String>,
    }

    impl DataplaneOps for Fake {
        fn set_config(&mut self, _: &LbConfig) -> Result<(), DataplaneError> {
            Ok(())
        }
        fn set_real(&mut self, id: u32, real: &Real) -> Result<(), DataplaneError> {
            self.log.push(format!("real {id} {}", if real.flags & REAL_F_DOWN != 0 { "down" } else { "up" }));
            self.reals.insert(id, *real);
            Ok(())
        }
        fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), DataplaneError> {
            self.log.push(format!("switch to ring {}", meta.ring_index));
            self.vips.insert(*key, *meta);
            Ok(())
        }
        fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
            self.vips.remove(key);
            Ok(())
        }
        fn set_rate_limit(&mut self, _: u32, _: &RateLimit) -> Result<(), DataplaneError> {
            Ok(())
        }
        fn write_ring_slots(&mut self, ring: u32, slots: &[(u32, u32)]) -> Result<(), DataplaneError> {
            let r = self.rings.entry(ring).or_insert_with(|| vec![0; 13]);
            for &(s, id) in slots {
                r[s as usize] = id;
            }
            self.slot_writes += slots.len();
            Ok(())
        }
    }

    impl Fake {
        /// The live ring of the only VIP.
        fn live(&self) -> &Vec<u32> {
            let meta = self.vips.values().next().expect("a VIP");
            &self.rings[&meta.ring_index]
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_apply_fills_a_ring_and_switches_to_it() {
        let mut r = Reconciler::new(Fake::default());
        r.apply(&config(&[("10.1.0.1", 1), ("10.1.0.2", 1)]), [0; 6]).unwrap();
        let live = r.dataplane().live();
        assert!(live.iter().all(|&id| id == 1 || id == 2), "{live:?}");
        assert_eq!(r.dataplane().vips.values().next().unwrap().ring_index, 1, "the spare of ring 0");
    }

    #[test]
    fn a_down_real_leaves_the_ring_after_the_switch_and_returns_before_it() {
        let mut r = Reconciler::new(Fake::default());
        r.apply(&config(&[("10.1.0.1", 1), ("10.1.0.2", 1)]), [0; 6]).unwrap();
        let vip = r.status()[0].vip;
        r.dp.log.clear();
        assert!(r.set_health(&vip, ip("10.1.0.2"), false).unwrap());
        assert!(r.dataplane().live().iter().all(|&id| id == 1));
        assert_eq!(r.dp.log, ["switch to ring 0", "real 2 down"], "down after the switch; unchanged reals not rewritten");
        r.dp.log.clear();
        assert!(r.set_health(&vip, ip("10.1.0.2"), true).unwrap());
        assert_eq!(r.dp.log, ["real 2 up", "switch to ring 1"], "up before the switch");
        assert!(!r.set_health(&vip, ip("10.1.0.2"), true).unwrap(), "no flip, no rebuild");
    }

    #[test]
    fn rebuild_writes_only_changed_slots_once_both_rings_are_known() {
        let mut r = Reconciler::new(Fake::default());
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
        let mut r = Reconciler::new(Fake::default());
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
        let mut r = Reconciler::new(Fake::default());
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
        let mut first = Reconciler::new(Fake::default());
        first.apply(&config(&[("10.1.0.1", 1), ("10.1.0.2", 1)]), [0; 6]).unwrap();
        let vip = first.status()[0].vip;
        first.set_health(&vip, ip("10.1.0.1"), false).unwrap();
        let fake = first.dp;
        let programmed = Programmed {
            vips: fake.vips.iter().map(|(k, m)| (*k, *m)).collect(),
            reals: fake.reals.iter().map(|(id, r)| (*id, *r)).collect(),
        };
        let mut second = Reconciler::recover(Fake { rings: fake.rings.clone(), ..Fake::default() }, &programmed);
        second.apply(&config(&[("10.1.0.1", 1), ("10.1.0.2", 1)]), [0; 6]).unwrap();
        let s = &second.status()[0];
        assert_eq!((s.reals[0].id, s.reals[1].id), (1, 2), "same ids");
        assert!(!s.reals[0].up, "still down after the restart");
        let meta = second.dp.vips.values().next().unwrap();
        assert_eq!(meta.vip_index, 0);
        assert!(second.dp.live().iter().all(|&id| id == 2));
    }
}
