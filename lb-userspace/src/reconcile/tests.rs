//! The reconciler over a fake data plane that records every write: rings, switches, ids,
//! recovery, and that a failed write leaves the maps as they were.

use std::collections::BTreeMap;

use std::{collections::HashMap, net::IpAddr};

use lb_common::{
    quic_lb::{QuicLbParams, ServerIdKey, MODE_PLAINTEXT},
    LbConfig, PrevRing, RateLimit, Real, VipKey, VipMeta, REAL_F_DOWN, VIP_F_QUIC_LB,
};

use super::*;
use crate::{
    config::{parse, Config, InterfaceCheck},
    dataplane::{DataplaneError, DataplaneOps, Handoff, Programmed},
};

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
    pub generations: HashMap<u32, u32>,
    pub vip_addrs: HashMap<[u8; 16], u32>,
    pub filter: HashMap<u32, u64>,
    pub prev_rings: HashMap<u32, PrevRing>,
    pub quic_params: HashMap<u32, QuicLbParams>,
    pub quic_servers: HashMap<ServerIdKey, u32>,
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
    generations: BTreeMap<u32, u32>,
    vip_addrs: BTreeMap<[u8; 16], u32>,
    filter: BTreeMap<u32, u64>,
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

    /// What `Dataplane::programmed` would read from these maps after a restart.
    fn programmed(&self) -> Programmed {
        fn entries<K: Copy, V: Copy>(map: &HashMap<K, V>) -> Vec<(K, V)> {
            map.iter().map(|(k, v)| (*k, *v)).collect()
        }
        Programmed {
            vips: entries(&self.vips),
            reals: entries(&self.reals),
            generations: entries(&self.generations),
            vip_addrs: entries(&self.vip_addrs),
            filter: entries(&self.filter),
            handoff_node: [0; 16],
            prev_rings: entries(&self.prev_rings),
            quic_params: entries(&self.quic_params),
            quic_servers: entries(&self.quic_servers),
        }
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
            generations: self.generations.iter().map(|(k, v)| (*k, *v)).collect(),
            vip_addrs: self.vip_addrs.iter().map(|(k, v)| (*k, *v)).collect(),
            filter: self.filter.iter().map(|(k, v)| (*k, *v)).collect(),
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
    fn set_vip_generation(&mut self, index: u32, generation: u32) -> Result<(), DataplaneError> {
        self.attempt(format!("generation {index} {generation}"))?;
        // An array map: 0 is what an entry never written holds.
        match generation {
            0 => self.generations.remove(&index),
            g => self.generations.insert(index, g),
        };
        Ok(())
    }
    fn set_prev_ring(&mut self, index: u32, prev: &PrevRing) -> Result<(), DataplaneError> {
        self.attempt(format!("prev ring {index} {}", prev.ring_size))?;
        // An array map: zeroes are what an entry never written holds.
        match *prev == PrevRing::default() {
            true => self.prev_rings.remove(&index),
            false => self.prev_rings.insert(index, *prev),
        };
        Ok(())
    }
    fn set_vip_addr(&mut self, addr: &[u8; 16], vips: u32) -> Result<(), DataplaneError> {
        self.attempt(format!("vip addr {} {vips}", lb_common::ip_of(*addr)))?;
        match vips {
            0 => self.vip_addrs.remove(addr),
            n => self.vip_addrs.insert(*addr, n),
        };
        Ok(())
    }
    fn set_filter_word(&mut self, word: u32, bits: u64) -> Result<(), DataplaneError> {
        self.attempt(format!("filter word {word}"))?;
        match bits {
            0 => self.filter.remove(&word),
            b => self.filter.insert(word, b),
        };
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
    fn set_quic_params(&mut self, index: u32, params: &QuicLbParams) -> Result<(), DataplaneError> {
        self.attempt(format!("quic params {index} mode {}", params.mode))?;
        match *params == QuicLbParams::OFF {
            true => self.quic_params.remove(&index),
            false => self.quic_params.insert(index, *params),
        };
        Ok(())
    }
    fn set_quic_server(&mut self, key: &ServerIdKey, real_id: u32) -> Result<(), DataplaneError> {
        self.attempt(format!("quic server {:02x?} {real_id}", &key.server_id[..2]))?;
        match real_id {
            0 => self.quic_servers.remove(key),
            id => self.quic_servers.insert(*key, id),
        };
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
    let programmed = fake.programmed();
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
    let programmed = Programmed { vips: fake.vips.iter().map(|(k, m)| (*k, *m)).collect(), ..Programmed::default() };
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
fn a_failed_generation_address_or_filter_write_is_undone_with_the_rest() {
    // v0 and a VIP on another address: adding it writes its index's generation, its address's
    // count and its pre-filter word beside its ring and switch; removing it, the same back.
    let reals = [("10.1.0.1", 1)];
    let one = vips(1, &reals);
    let mut two = vips(2, &reals);
    two.vips[1].id.addr = ip("10.0.0.2");
    let start = |config: &Config| {
        let mut r = Reconciler::new(Fake::with_pool(4 * 13));
        r.apply(config, [1; 6]).unwrap();
        r.dp.log.clear();
        r
    };
    for (from, to) in [(&one, &two), (&two, &one)] {
        let mut clean = start(from);
        clean.apply(to, [1; 6]).unwrap();
        for what in ["generation", "vip addr", "filter word"] {
            let n = clean.dp.log.iter().position(|l| l.starts_with(what)).unwrap_or_else(|| panic!("{what} in {:?}", clean.dp.log)) + 1;
            let mut r = start(from);
            let view = r.dp.view();
            r.dp.fail_at = Some(r.dp.writes + n);
            assert!(matches!(r.apply(to, [1; 6]), Err(ReconcileError::Dataplane(_))), "{what}: write {n} fails");
            assert_eq!(r.dp.view(), view, "{what} failed: the maps are as they were ({:?})", clean.dp.log);
            r.dp.fail_at = None;
            r.apply(to, [1; 6]).unwrap();
            assert_eq!(r.dp.view(), clean.dp.view(), "and the change goes through once the map takes it");
        }
    }
    // What a packet needs: a new generation for the new VIP, its address counted and filtered.
    let r = start(&two);
    assert_eq!(r.dp.vip_addrs.len(), 2);
    assert_eq!(r.dp.generations.values().collect::<Vec<_>>(), [&1, &1]);
    assert!(r.dp.vips.values().all(|m| m.generation == 1));
    assert!(!r.dp.filter.is_empty());
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

#[test]
fn a_second_chance_vip_keeps_its_previous_ring_until_its_slots_are_rewritten() {
    let with = |reals: &[(&str, u32)], on: bool| {
        let mut c = config(reals);
        c.vips[0].second_chance = on.then(|| std::time::Duration::from_secs(600));
        c
    };
    let (two, three) = ([("10.1.0.1", 1), ("10.1.0.2", 1)], [("10.1.0.1", 1), ("10.1.0.2", 1), ("10.1.0.3", 1)]);
    let mut r = Reconciler::new(Fake::with_pool(100));
    r.apply(&with(&two, true), [0; 6]).unwrap();
    assert!(r.dataplane().prev_rings.is_empty(), "the first ring has no previous one");
    let meta = *r.dataplane().vips.values().next().unwrap();
    assert_eq!(meta.flags, lb_common::VIP_F_SECOND_CHANCE);
    let first = r.dataplane().live().to_vec();

    r.dp.log.clear();
    r.apply(&with(&three, true), [0; 6]).unwrap();
    let prev = r.dataplane().prev_rings[&meta.vip_index];
    assert_eq!((prev.ring_base, prev.ring_size), (meta.ring_base, 13), "the ring left behind");
    assert_eq!(&r.dataplane().pool[prev.ring_base as usize..][..13], &first[..], "and it still holds the first table");
    let now = crate::dataplane::monotonic_ns();
    assert!((now + 590_000_000_000..=now + 600_000_000_000).contains(&prev.until_ns), "600 s from now");
    let log = r.dataplane().log.clone();
    let switch = log.iter().position(|l| l.starts_with("switch to ring")).expect("a switch");
    assert!(log[switch + 1..].contains(&"prev ring 0 13".to_string()), "set after the switch: {log:?}");

    // The next change rewrites the first ring's slots: the previous ring is forgotten before.
    r.dp.log.clear();
    r.apply(&with(&two, true), [0; 6]).unwrap();
    let log = r.dataplane().log.clone();
    let (clear, write) = (log.iter().position(|l| l == "prev ring 0 0"), log.iter().position(|l| l.starts_with("ring at")));
    assert!(clear.is_some() && clear < write, "cleared before the slots are written: {log:?}");
    assert_eq!(r.dataplane().prev_rings[&meta.vip_index].ring_size, 13, "and set again after the switch");

    // Switched off: the flag goes at once, though the ring stays; the next change keeps no ring.
    r.apply(&with(&two, false), [0; 6]).unwrap();
    assert_eq!(r.dataplane().vips.values().next().unwrap().flags, 0);
    r.apply(&with(&three, false), [0; 6]).unwrap();
    assert!(r.dataplane().prev_rings.is_empty(), "{:?}", r.dataplane().prev_rings);

    // Removing the VIP frees its slots and forgets its previous ring.
    r.apply(&with(&two, true), [0; 6]).unwrap();
    assert_eq!(r.dataplane().prev_rings.len(), 1);
    let mut empty = with(&two, true);
    empty.vips.clear();
    r.apply(&empty, [0; 6]).unwrap();
    assert!(r.dataplane().prev_rings.is_empty());
}

#[test]
fn previous_rings_an_earlier_lb_left_are_forgotten_at_the_first_change() {
    let mut first = Reconciler::new(Fake::with_pool(100));
    let mut c = config(&[("10.1.0.1", 1)]);
    c.vips[0].second_chance = Some(std::time::Duration::from_secs(600));
    first.apply(&c, [0; 6]).unwrap();
    c.vips[0].reals.push(config(&[("10.1.0.2", 1)]).vips[0].reals[0].clone());
    first.apply(&c, [0; 6]).unwrap();
    let fake = first.dp;
    assert_eq!(fake.prev_rings.len(), 1);
    let programmed = Programmed {
        vips: fake.vips.iter().map(|(k, m)| (*k, *m)).collect(),
        reals: fake.reals.iter().map(|(id, r)| (*id, *r)).collect(),
        prev_rings: fake.prev_rings.iter().map(|(i, p)| (*i, *p)).collect(),
        ..Programmed::default()
    };
    let mut second =
        Reconciler::recover(Fake { pool: fake.pool.clone(), prev_rings: fake.prev_rings.clone(), ..Fake::default() }, &programmed);
    second.apply(&c, [0; 6]).unwrap();
    let log = &second.dataplane().log;
    let (clear, write) = (log.iter().position(|l| l == "prev ring 0 0"), log.iter().position(|l| l.starts_with("ring at")));
    assert!(clear.is_some() && clear < write, "the pool's slots it names are not reserved: cleared first: {log:?}");
}

/// A UDP VIP with QUIC-LB (two-octet server IDs) and `reals` as (address, server ID).
fn quic_config(reals: &[(&str, &str)]) -> Config {
    let mut text = String::from(
        "[forwarding]\nnext_hop_mac = \"02:00:00:00:00:01\"\n[[vip]]\nname = \"h3\"\naddress = \"10.0.0.1\"\nport = 443\nprotocol = \"udp\"\nring_size = 13\n[vip.quic_lb]\nconfig_id = 1\nserver_id_len = 2\nnonce_len = 6\n",
    );
    for (a, sid) in reals {
        text += &format!("[[vip.real]]\naddress = \"{a}\"\nserver_id = \"{sid}\"\n");
    }
    parse(&text, InterfaceCheck::Skip).unwrap()
}

#[test]
fn quic_server_ids_follow_the_reals_and_go_with_the_vip() {
    let mut r = Reconciler::new(Fake::with_pool(100));
    r.apply(&quic_config(&[("10.1.0.1", "0a01"), ("10.1.0.2", "0a02")]), [0; 6]).unwrap();
    let dp = r.dataplane();
    assert_eq!(dp.config.unwrap().quic_lb, 1);
    let meta = dp.vips.values().next().unwrap();
    assert_ne!(meta.flags & VIP_F_QUIC_LB, 0);
    assert_eq!(dp.quic_params[&meta.vip_index].mode, MODE_PLAINTEXT);
    let key = |sid: [u8; 2]| ServerIdKey::new(0, &sid);
    assert_eq!(dp.quic_servers, HashMap::from([(key([0x0a, 1]), 1), (key([0x0a, 2]), 2)]));
    // Written before the VIPS entry that turns them on.
    let log = &dp.log;
    let switch = log.iter().position(|l| l.starts_with("switch")).unwrap();
    assert!(log.iter().position(|l| l.starts_with("quic server")).unwrap() < switch, "{log:?}");

    // A real leaves and another's server ID changes: their old IDs go.
    r.apply(&quic_config(&[("10.1.0.2", "0a07")]), [0; 6]).unwrap();
    assert_eq!(r.dataplane().quic_servers, HashMap::from([(key([0x0a, 7]), 2)]));

    // QUIC-LB off: the entries go, the flag and the CONFIG switch too.
    r.apply(&config(&[("10.1.0.2", 1)]), [0; 6]).unwrap();
    let dp = r.dataplane();
    assert!(dp.quic_servers.is_empty() && dp.quic_params.is_empty());
    assert_eq!(dp.config.unwrap().quic_lb, 0);
}

#[test]
fn recovery_removes_server_ids_no_config_has() {
    let mut first = Reconciler::new(Fake::with_pool(100));
    first.apply(&quic_config(&[("10.1.0.1", "0a01"), ("10.1.0.2", "0a02")]), [0; 6]).unwrap();
    let fake = first.dp;
    let programmed = fake.programmed();
    let kept = Fake { pool: fake.pool.clone(), quic_servers: fake.quic_servers.clone(), ..Fake::default() };
    let mut second = Reconciler::recover(kept, &programmed);
    second.apply(&quic_config(&[("10.1.0.1", "0a01")]), [0; 6]).unwrap();
    assert_eq!(second.dp.quic_servers, HashMap::from([(ServerIdKey::new(0, &[0x0a, 1]), 1)]));
}
