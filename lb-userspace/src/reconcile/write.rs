//! The writes the reconciler plans, one map entry each, and what each one undoes: `Written`
//! holds what every entry the reconciler owns holds now, so the write that undoes a planned one
//! is the same write with the entry's old value.
//!
//! A VIP is more than its `VIPS` entry: a VIP new at its index moves the index to its next
//! generation (`VIP_GEN`, so connection entries of an earlier VIP there stop counting), its
//! address is counted in `VIP_ADDRS`, and the pre-filter (`VIP_FILTER`) follows the addresses.
//! Those are planned writes like the rest, so a failed change undoes them too.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use lb_common::{
    hash::addr_filter_bit,
    quic_lb::{QuicLbParams, ServerIdKey},
    LbConfig, PrevRing, RateLimit, Real, VipKey, VipMeta,
};

use crate::dataplane::{DataplaneError, DataplaneOps, Handoff};

/// One map write.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Write {
    Config(LbConfig),
    RateLimit(u32, RateLimit),
    Real(u32, Real),
    Vip(VipKey, VipMeta),
    RemoveVip(VipKey),
    /// `VIP_GEN[index] = generation`.
    VipGeneration(u32, u32),
    /// `VIP_ADDRS[addr] = VIPs on it` (0 removes it).
    VipAddr([u8; 16], u32),
    /// `VIP_FILTER[word] = bits`.
    FilterWord(u32, u64),
    /// `VIP_PREV[index] = previous ring` (all zeroes: none).
    PrevRing(u32, PrevRing),
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
    /// `QUIC_LB[index] = params` (`QuicLbParams::OFF`: none).
    QuicParams(u32, Box<QuicLbParams>),
    /// `QUIC_SERVERS[key] = real id` (0 removes it).
    QuicServer(ServerIdKey, u32),
}

impl Write {
    pub(super) fn run(&self, dp: &mut impl DataplaneOps) -> Result<(), DataplaneError> {
        match self {
            Write::Config(c) => dp.set_config(c),
            Write::RateLimit(limit, rate) => dp.set_rate_limit(*limit, rate),
            Write::Real(id, real) => dp.set_real(*id, real),
            Write::Vip(key, meta) => dp.set_vip(key, meta),
            Write::RemoveVip(key) => dp.remove_vip(key),
            Write::VipGeneration(index, generation) => dp.set_vip_generation(*index, *generation),
            Write::VipAddr(addr, vips) => dp.set_vip_addr(addr, *vips),
            Write::FilterWord(word, bits) => dp.set_filter_word(*word, *bits),
            Write::PrevRing(index, prev) => dp.set_prev_ring(*index, prev),
            Write::RingSlots { base, table, changed: None } => {
                dp.write_ring_slots(*base, table.iter().enumerate().map(|(slot, &real)| (slot as u32, real)))
            }
            Write::RingSlots { base, table, changed: Some(slots) } => {
                dp.write_ring_slots(*base, slots.iter().map(|&slot| (slot, table[slot as usize])))
            }
            Write::RingPairs { base, pairs } => dp.write_ring_slots(*base, pairs.iter().copied()),
            Write::Handoff(h) => dp.set_handoff(h),
            Write::QuicParams(index, params) => dp.set_quic_params(*index, params),
            Write::QuicServer(key, real_id) => dp.set_quic_server(key, *real_id),
        }
    }
}

/// What the reconciler last wrote to each entry it owns: the "before" of every planned write.
/// Entries not held are zeroes in the maps (or absent, in hash maps).
#[derive(Clone, Default)]
pub(super) struct Written {
    pub config: Option<LbConfig>,
    pub limits: HashMap<u32, RateLimit>,
    pub reals: imbl::HashMap<u32, Real>,
    pub vips: imbl::HashMap<VipKey, VipMeta>,
    /// `VIP_GEN`'s nonzero generations by VIP index.
    pub generations: imbl::HashMap<u32, u32>,
    /// `VIP_ADDRS`: the VIPs on each address.
    pub vip_addrs: imbl::HashMap<[u8; 16], u32>,
    /// `VIP_FILTER`'s nonzero words.
    pub filter: imbl::HashMap<u32, u64>,
    /// `VIP_PREV`'s nonzero entries.
    pub prev_rings: imbl::HashMap<u32, PrevRing>,
    pub handoff: Option<Handoff>,
    /// The handoff address the pre-filter counts (known after a restart, when `handoff` is not).
    pub handoff_node: Option<[u8; 16]>,
    /// `QUIC_LB`'s entries that are not off, and `QUIC_SERVERS`.
    pub quic_params: imbl::HashMap<u32, QuicLbParams>,
    pub quic_servers: imbl::HashMap<ServerIdKey, u32>,
}

/// What every entry holds, and the writes a change plans in order, each with the write that
/// undoes it (None: nothing a packet could see changes, e.g. slots of a ring no VIP uses).
#[derive(Clone, Default)]
pub(super) struct Writes {
    pub written: Written,
    pub plan: Vec<(Write, Option<Write>)>,
}

impl Written {
    /// After an undo failed, what the maps hold is not known: the next change writes every entry
    /// whole. Generations and address counts are kept: a generation must never go back (entries
    /// of it may still be in the connection table), and the counts are what the maps count.
    pub(super) fn forget(&mut self) {
        let kept = std::mem::take(self);
        *self = Written {
            generations: kept.generations,
            vip_addrs: kept.vip_addrs,
            filter: kept.filter,
            handoff_node: kept.handoff_node,
            // Kept so a later clear is written: a previous ring must never outlive its slots.
            prev_rings: kept.prev_rings,
            // Kept so that entries no config wants any more are removed.
            quic_servers: kept.quic_servers,
            quic_params: kept.quic_params,
            ..Written::default()
        };
    }
}

impl Writes {
    /// Plans `write` unless the entry already holds exactly that; returns whether it did.
    pub(super) fn write(&mut self, write: Write) -> bool {
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
            Write::VipGeneration(index, generation) => {
                let old = replace_or_remove(&mut w.generations, *index, *generation);
                if old == *generation {
                    return false;
                }
                Some(Write::VipGeneration(*index, old))
            }
            Write::VipAddr(addr, vips) => {
                let old = replace_or_remove(&mut w.vip_addrs, *addr, *vips);
                if old == *vips {
                    return false;
                }
                Some(Write::VipAddr(*addr, old))
            }
            Write::FilterWord(word, bits) => {
                let old = replace_or_remove(&mut w.filter, *word, *bits);
                if old == *bits {
                    return false;
                }
                Some(Write::FilterWord(*word, old))
            }
            Write::PrevRing(index, prev) => {
                let old = replace_or_remove(&mut w.prev_rings, *index, *prev);
                if old == *prev {
                    return false;
                }
                Some(Write::PrevRing(*index, old))
            }
            Write::QuicParams(index, params) => {
                let old = replace_or_remove(&mut w.quic_params, *index, **params);
                if old == **params {
                    return false;
                }
                Some(Write::QuicParams(*index, Box::new(old)))
            }
            Write::QuicServer(key, real_id) => {
                let old = replace_or_remove(&mut w.quic_servers, *key, *real_id);
                if old == *real_id {
                    return false;
                }
                Some(Write::QuicServer(*key, old))
            }
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

    /// Plans a `VIPS` entry with what comes with it: a VIP new at its index gets the index's
    /// next generation, written first, and its address is counted; an update keeps the
    /// generation, and so its flows. (`sync_filter` follows the address.)
    pub(super) fn write_vip(&mut self, key: VipKey, meta: VipMeta) {
        let existing = self.written.vips.get(&key).copied();
        let generation = match existing {
            Some(old) if old.vip_index == meta.vip_index => old.generation,
            _ => self.next_generation(meta.vip_index),
        };
        self.write(Write::Vip(key, VipMeta { generation, ..meta }));
        if existing.is_none() {
            self.count_vip_addr(key.addr, 1);
        }
    }

    /// Plans removing a `VIPS` entry: then its index's next generation (its connection entries
    /// stop counting) and its address's count.
    pub(super) fn remove_vip(&mut self, key: VipKey) {
        let Some(old) = self.written.vips.get(&key).copied() else { return };
        self.write(Write::RemoveVip(key));
        self.next_generation(old.vip_index);
        self.count_vip_addr(key.addr, -1);
    }

    /// Plans moving VIP index `index` to a new, nonzero generation and returns it.
    fn next_generation(&mut self, index: u32) -> u32 {
        let next = self.written.generations.get(&index).copied().unwrap_or(0).wrapping_add(1).max(1);
        self.write(Write::VipGeneration(index, next));
        next
    }

    fn count_vip_addr(&mut self, addr: [u8; 16], delta: i32) {
        let vips = self.written.vip_addrs.get(&addr).copied().unwrap_or(0).saturating_add_signed(delta);
        self.write(Write::VipAddr(addr, vips));
    }

    /// Plans the `VIP_FILTER` words that differ from what the addresses call for: every VIP
    /// address and the handoff address, so packets to them reach the full parse. Run after the
    /// VIP writes of a change: a bit is set once its VIP is there, and cleared once it is gone.
    pub(super) fn sync_filter(&mut self) {
        let mut wanted: HashMap<u32, u64> = HashMap::new();
        for addr in self.written.vip_addrs.keys().chain(self.written.handoff_node.iter()) {
            let bit = addr_filter_bit(addr);
            *wanted.entry(bit / 64).or_default() |= 1 << (bit % 64);
        }
        let words: BTreeSet<u32> = wanted.keys().chain(self.written.filter.keys()).copied().collect();
        for word in words {
            self.write(Write::FilterWord(word, wanted.get(&word).copied().unwrap_or(0)));
        }
    }
}

/// Sets `map[key]` to `value` (removing it when `value` is zero, what a map holds unwritten)
/// and returns what it held.
fn replace_or_remove<K: Clone + std::hash::Hash + Eq, V: Clone + Default + PartialEq>(
    map: &mut imbl::HashMap<K, V>,
    key: K,
    value: V,
) -> V {
    let old = if value == V::default() { map.remove(&key) } else { map.insert(key, value) };
    old.unwrap_or_default()
}
