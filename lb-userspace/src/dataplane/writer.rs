//! The map writes, one entry each, as `DataplaneOps` gives them to the reconciler, which plans
//! them (and their undo) in order. What to write is decided there; the one read here is
//! `set_handoff`'s of the live peer count, to order its writes so no packet sees a half-written
//! peer.

use std::net::IpAddr;

use aya::maps::{Array, HashMap, MapData};
use lb_common::{
    addr16, ip_of, maps,
    quic_lb::{QuicLbParams, ServerIdKey},
    slot_place, ConnEntry, FlowKey, LbConfig, PrevRing, RateLimit, Real, SlotPair, VipKey, VipMeta, HANDOFF_F_ADOPT, HANDOFF_F_IPV6,
    MAX_PEERS,
};

use super::{
    error::{found, map_err, DataplaneError, Result},
    loader::Dataplane,
    ops::{DataplaneOps, Handoff},
};

impl Dataplane {
    fn array<T: aya::Pod>(&mut self, name: &'static str) -> Result<Array<&mut MapData, T>> {
        let map = self.ebpf.map_mut(name).ok_or(DataplaneError::NoMap { name })?;
        Array::try_from(map).map_err(map_err(name))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&mut self, name: &'static str) -> Result<HashMap<&mut MapData, K, V>> {
        let map = self.ebpf.map_mut(name).ok_or(DataplaneError::NoMap { name })?;
        HashMap::try_from(map).map_err(map_err(name))
    }

    /// Deletes `key` from the hash map `name`; a key that is not there is not an error (aya
    /// reports a delete's ENOENT as a syscall error).
    fn delete<K: aya::Pod, V: aya::Pod>(&mut self, name: &'static str, key: &K) -> Result<()> {
        match self.hash::<K, V>(name)?.remove(key) {
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map_err(map_err(name)),
        }
    }

    /// Writes the given slots of the ring at pool slot `base`: `(slot, real id)` pairs.
    pub fn write_ring_slots(&mut self, base: u32, slots: impl IntoIterator<Item = (u32, u32)>) -> Result<()> {
        let pool = self.ring_slots;
        let check = |slot: u32| {
            let at = base as u64 + slot as u64;
            if at >= pool as u64 {
                return Err(DataplaneError::RingOutOfRange { base, slots: slot as usize + 1, pool });
            }
            Ok(at as u32)
        };
        if let Some(memory) = &mut self.rings {
            for (slot, real_id) in slots {
                memory.store(check(slot)? as usize, real_id);
            }
            return Ok(());
        }
        let mut maglev = self.array::<SlotPair>(maps::MAGLEV)?;
        for (slot, real_id) in slots {
            let (element, place) = slot_place(check(slot)?);
            let mut pair = maglev.get(&element, 0).map_err(map_err(maps::MAGLEV))?;
            pair[place] = real_id;
            maglev.set(element, pair, 0).map_err(map_err(maps::MAGLEV))?;
        }
        Ok(())
    }

    /// Reads one slot of the ring at pool slot `base` back (tests and debugging).
    pub fn ring_slot(&self, base: u32, slot: u32) -> Result<u32> {
        let at = base + slot;
        if let Some(memory) = &self.rings {
            return Ok(memory.load(at as usize));
        }
        let map = self.ebpf.map(maps::MAGLEV).ok_or(DataplaneError::NoMap { name: maps::MAGLEV })?;
        let maglev = Array::<_, SlotPair>::try_from(map).map_err(map_err(maps::MAGLEV))?;
        let (element, place) = slot_place(at);
        Ok(maglev.get(&element, 0).map_err(map_err(maps::MAGLEV))?[place])
    }

    /// Whether ring writes go through the memory mapping.
    pub fn rings_mapped(&self) -> bool {
        self.rings.is_some()
    }

    /// Whether `addr`'s pre-filter bit is set in the map (tests and debugging).
    pub fn vip_filter_bit(&self, addr: IpAddr) -> Result<bool> {
        let bit = lb_common::hash::addr_filter_bit(&addr16(addr));
        let map = self.ebpf.map(maps::VIP_FILTER).ok_or(DataplaneError::NoMap { name: maps::VIP_FILTER })?;
        let filter = Array::<_, u64>::try_from(map).map_err(map_err(maps::VIP_FILTER))?;
        Ok(filter.get(&(bit / 64), 0).map_err(map_err(maps::VIP_FILTER))? & (1 << (bit % 64)) != 0)
    }

    /// The real id the connection table holds for `flow`, if any.
    pub fn conn_real(&self, flow: &FlowKey) -> Result<Option<u32>> {
        let map = self.ebpf.map(maps::CONNS).ok_or(DataplaneError::NoMap { name: maps::CONNS })?;
        let conns = HashMap::<_, FlowKey, ConnEntry>::try_from(map).map_err(map_err(maps::CONNS))?;
        Ok(found(maps::CONNS, conns.get(flow, 0))?.map(|entry| entry.real_id))
    }

    /// `DECAP_ADDRS` to exactly `addrs` (at most `MAX_DECAP_ADDRS`); returns the addresses it
    /// removed (left by an earlier config).
    pub fn set_decap_addrs(&mut self, addrs: &[IpAddr]) -> Result<Vec<IpAddr>> {
        let removed = self.set_address_set::<u32>(maps::DECAP_ADDRS, addrs, 1)?;
        Ok(removed.into_iter().map(ip_of).collect())
    }

    /// The VIPs tunnels to this backend may carry (`lb backend`); returns the ones removed.
    pub fn set_decap_vips(&mut self, vips: &[IpAddr]) -> Result<Vec<IpAddr>> {
        let removed = self.set_address_set::<u32>(maps::DECAP_VIPS, vips, 1)?;
        Ok(removed.into_iter().map(ip_of).collect())
    }

    /// The balancers' source prefixes tunnels are taken from (`lb backend`), as (address, prefix
    /// length): exactly these, new ones first.
    pub fn set_decap_sources(&mut self, prefixes: &[(IpAddr, u8)]) -> Result<()> {
        use aya::maps::lpm_trie::{Key, LpmTrie};
        let name = maps::DECAP_SOURCES;
        let map = self.ebpf.map_mut(name).ok_or(DataplaneError::NoMap { name })?;
        let mut trie = LpmTrie::<_, [u8; 16], u8>::try_from(map).map_err(map_err(name))?;
        // IPv4 prefixes are IPv4-mapped: 96 bits of ::ffff:0:0/96 before theirs.
        let key = |&(addr, len): &(IpAddr, u8)| (u32::from(len) + if addr.is_ipv4() { 96 } else { 0 }, addr16(addr));
        let wanted: Vec<(u32, [u8; 16])> = prefixes.iter().map(key).collect();
        let present: Vec<(u32, [u8; 16])> =
            trie.keys().map(|k| k.map(|k| (k.prefix_len(), k.data()))).collect::<Result<_, _>>().map_err(map_err(name))?;
        for (len, data) in wanted.iter().filter(|k| !present.contains(k)) {
            trie.insert(&Key::new(*len, *data), 1, 0).map_err(map_err(name))?;
        }
        for (len, data) in present.iter().filter(|k| !wanted.contains(k)) {
            trie.remove(&Key::new(*len, *data)).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// The hash map `name`, keyed by address, to exactly `addrs` (each with `value`): new ones
    /// first, then the ones that left, which it returns.
    fn set_address_set<V: aya::Pod>(&mut self, name: &'static str, addrs: &[IpAddr], value: V) -> Result<Vec<[u8; 16]>> {
        let wanted: Vec<[u8; 16]> = addrs.iter().map(|&a| addr16(a)).collect();
        let mut map = self.hash::<[u8; 16], V>(name)?;
        let present: Vec<[u8; 16]> = map.keys().collect::<Result<_, _>>().map_err(map_err(name))?;
        for addr in wanted.iter().filter(|a| !present.contains(a)) {
            map.insert(addr, value, 0).map_err(map_err(name))?;
        }
        let gone: Vec<[u8; 16]> = present.into_iter().filter(|a| !wanted.contains(a)).collect();
        for addr in &gone {
            map.remove(addr).map_err(map_err(name))?;
        }
        Ok(gone)
    }

    pub fn handoff(&self) -> Result<lb_common::Handoff> {
        let map = self.ebpf.map(maps::HANDOFF).ok_or(DataplaneError::NoMap { name: maps::HANDOFF })?;
        let array = Array::<_, lb_common::Handoff>::try_from(map).map_err(map_err(maps::HANDOFF))?;
        array.get(&0, 0).map_err(map_err(maps::HANDOFF))
    }
}

impl DataplaneOps for Dataplane {
    fn set_config(&mut self, cfg: &LbConfig) -> Result<()> {
        self.array::<LbConfig>(maps::CONFIG)?.set(0, cfg, 0).map_err(map_err(maps::CONFIG))
    }

    /// Sets rate limit `limit` (`lb_common::limits`).
    fn set_rate_limit(&mut self, limit: u32, rate: &RateLimit) -> Result<()> {
        self.array::<RateLimit>(maps::RATE_LIMITS)?.set(limit, rate, 0).map_err(map_err(maps::RATE_LIMITS))
    }

    fn set_real(&mut self, id: u32, real: &Real) -> Result<()> {
        self.array::<Real>(maps::REALS)?.set(id, real, 0).map_err(map_err(maps::REALS))
    }

    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<()> {
        self.hash::<VipKey, VipMeta>(maps::VIPS)?.insert(key, meta, 0).map_err(map_err(maps::VIPS))
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.delete::<VipKey, VipMeta>(maps::VIPS, key)
    }

    fn set_vip_generation(&mut self, index: u32, generation: u32) -> Result<()> {
        self.array::<u32>(maps::VIP_GEN)?.set(index, generation, 0).map_err(map_err(maps::VIP_GEN))
    }

    fn set_prev_ring(&mut self, index: u32, prev: &PrevRing) -> Result<()> {
        self.array::<PrevRing>(maps::VIP_PREV)?.set(index, *prev, 0).map_err(map_err(maps::VIP_PREV))
    }

    fn set_vip_addr(&mut self, addr: &[u8; 16], vips: u32) -> Result<()> {
        if vips == 0 {
            return self.delete::<[u8; 16], u32>(maps::VIP_ADDRS, addr);
        }
        self.hash::<[u8; 16], u32>(maps::VIP_ADDRS)?.insert(addr, vips, 0).map_err(map_err(maps::VIP_ADDRS))
    }

    fn set_filter_word(&mut self, word: u32, bits: u64) -> Result<()> {
        self.array::<u64>(maps::VIP_FILTER)?.set(word, bits, 0).map_err(map_err(maps::VIP_FILTER))
    }

    fn write_ring_slots(&mut self, base: u32, slots: impl Iterator<Item = (u32, u32)>) -> Result<()> {
        Dataplane::write_ring_slots(self, base, slots)
    }

    /// Programs cross-site handoff: `PEER_SOURCES` (every configured peer), the peers to hand
    /// to (at most `MAX_PEERS`) and `HANDOFF` (this node's address, `None`: off; whether to
    /// adopt unknown handed-off flows).
    fn set_handoff(&mut self, h: &Handoff) -> Result<()> {
        let sources = &h.sources[..h.sources.len().min(MAX_PEERS as usize)];
        self.set_address_set::<u8>(maps::PEER_SOURCES, sources, 1)?;
        let old = self.handoff()?;
        let node_addr = h.node.map(addr16).unwrap_or_default();
        let peers = &h.peers[..h.peers.len().min(MAX_PEERS as usize)];
        let count = peers.len() as u32;
        let flags = if h.node.is_some_and(|a| a.is_ipv6()) { HANDOFF_F_IPV6 } else { 0 } | if h.adopt { HANDOFF_F_ADOPT } else { 0 };
        // The live count never covers an entry being rewritten (a 16-byte value is not written
        // atomically): first shrink it to the entries that stay, then write the rest.
        let list = self.array::<[u8; 16]>(maps::PEERS)?;
        let mut same = 0;
        while same < count.min(old.peers) && list.get(&same, 0).map_err(map_err(maps::PEERS))? == addr16(peers[same as usize]) {
            same += 1;
        }
        let mut handoff = self.array::<lb_common::Handoff>(maps::HANDOFF)?;
        handoff.set(0, lb_common::Handoff { peers: same, ..old }, 0).map_err(map_err(maps::HANDOFF))?;
        let mut list = self.array::<[u8; 16]>(maps::PEERS)?;
        for (i, peer) in peers.iter().enumerate().skip(same as usize) {
            list.set(i as u32, addr16(*peer), 0).map_err(map_err(maps::PEERS))?;
        }
        let mut handoff = self.array::<lb_common::Handoff>(maps::HANDOFF)?;
        handoff.set(0, lb_common::Handoff { node_addr, flags, peers: count }, 0).map_err(map_err(maps::HANDOFF))
    }

    fn set_quic_params(&mut self, index: u32, params: &QuicLbParams) -> Result<()> {
        self.array::<QuicLbParams>(maps::QUIC_LB)?.set(index, params, 0).map_err(map_err(maps::QUIC_LB))
    }

    fn set_quic_server(&mut self, key: &ServerIdKey, real_id: u32) -> Result<()> {
        if real_id == 0 {
            return self.delete::<ServerIdKey, u32>(maps::QUIC_SERVERS, key);
        }
        self.hash::<ServerIdKey, u32>(maps::QUIC_SERVERS)?.insert(key, real_id, 0).map_err(map_err(maps::QUIC_SERVERS))
    }

    fn ring_slots(&self) -> u32 {
        self.ring_slots
    }
}
