//! Why a flow goes where it goes (`lb flow`), and the connection table's entries (`lb flows`,
//! `lb flows purge`). Read from the live maps (`dataplane::LiveMaps`, opened from the pins) with
//! the data plane's own hash (`lb_common::hash`), on the API's blocking threads: nothing here
//! runs on the loop that owns the state, and nothing writes the table but a purge.
//!
//! The decision mirrors `lb-ebpf/src/maglev.rs`: a packet that is not a TCP SYN takes the
//! connection-table entry when its VIP generation is current and its real is not down; a SYN,
//! a new UDP flow and a mid-flow packet the table does not know take the VIP's ring (the source
//! address's hash for source-affinity VIPs), except that a mid-flow TCP packet of an unknown
//! flow goes to a peer site when handoff is on.

use lb_common::ip_of;
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    hash::{flow_hash, source_hash},
    ConnEntry, FlowKey, VipKey, VipMeta, HANDOFF_F_IPV6, MAX_PEERS, REAL_ID_PEER, VIP_F_QUIC_LB, VIP_F_SECOND_CHANCE,
    VIP_F_SOURCE_AFFINITY,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::Proto,
    dataplane::{DataplaneError, LiveMaps},
    status::VipStatus,
};

/// A flow as the client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowQuery {
    pub src: IpAddr,
    /// 0 with source affinity is fine: the port does not matter then.
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub proto: Proto,
    /// QUIC: a short-header packet's destination connection ID (hex), for a QUIC-LB VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
}

impl FlowQuery {
    pub fn key(&self) -> FlowKey {
        FlowKey::new(self.src, self.src_port, self.dst, self.dst_port, self.proto.number())
    }
}

impl fmt::Display for FlowQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (src, dst) = (SocketAddr::new(self.src, self.src_port), SocketAddr::new(self.dst, self.dst_port));
        write!(f, "{src} -> {dst} {}", self.proto)
    }
}

/// Where a packet goes, and by which rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Choice {
    /// The connection table's entry.
    Table { real: IpAddr, real_id: u32, vip_generation: u32 },
    /// Slot `slot` of the VIP's live ring (`ring_size` slots).
    Ring { slot: u32, ring_size: u32, source_affinity: bool, real: IpAddr, real_id: u32, up: bool, weight: u32 },
    /// Tunnelled to a peer site's LB node (cross-site handoff).
    Peer { peer: IpAddr },
    /// Not balanced: `why`.
    Not { why: String },
}

/// What the connection table holds for the flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableEntry {
    /// None: the entry marks the flow as a peer site's (`REAL_ID_PEER`) or names no real.
    pub real: Option<IpAddr>,
    pub real_id: u32,
    pub vip_generation: u32,
    /// Why the data plane ignores it (None: it counts).
    pub ignored: Option<String>,
    /// The real the flow's packets carry along (the second chance; None: none).
    #[serde(default)]
    pub alternative: Option<IpAddr>,
}

/// `lb flow`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowReport {
    pub flow: FlowQuery,
    /// The VIP's name (None: no VIP matches, the kernel gets the packet).
    pub vip: Option<String>,
    /// Whether the VIP is announced over BGP (None: no `[bgp]`).
    pub announced: Option<bool>,
    pub entry: Option<TableEntry>,
    /// Where the flow's next packet goes (for TCP: one that is not a SYN).
    pub now: Choice,
    /// Where a new connection (a SYN) or a new UDP flow goes: the ring.
    pub new_flow: Choice,
    /// TCP: where a mid-flow packet goes when the table does not know the flow.
    pub unknown_mid_flow: Option<Choice>,
    /// The second chance, for a TCP VIP that has it (None: off).
    #[serde(default)]
    pub second_chance: Option<SecondChance>,
    /// QUIC-LB, for a VIP that has it (None: off): its server IDs, and where the connection ID
    /// asked about sends a short-header packet (ahead of the table).
    #[serde(default)]
    pub quic: Option<super::cid::QuicReport>,
}

/// What the second chance does for a flow's mid-flow packets (`maglev::alternative` in the data
/// plane).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondChance {
    /// The real a mid-flow packet the table does not hold carries along, for its backend to
    /// forward to (None: no previous ring, past its window, the same real, or one that cannot
    /// take it: down or of the other family).
    pub alternative: Option<IpAddr>,
    /// Seconds the VIP's previous ring still gives alternatives (None: it has none).
    pub window_left_s: Option<u64>,
}

/// Works out `query`'s path through the data plane from the live maps; `status` names VIPs
/// and gives reals' health, weights and announcements (`bgp`: announcing is configured).
pub fn explain(maps: &LiveMaps, status: &[VipStatus], bgp: bool, query: FlowQuery) -> Result<FlowReport, DataplaneError> {
    let key = query.key();
    let mut vip_key = VipKey { addr: key.dst, port_be: key.dst_port_be, proto: key.proto, _pad: 0 };
    let meta = match maps.vip(&vip_key)? {
        Some(meta) => Some(meta),
        None => {
            vip_key.port_be = 0;
            maps.vip(&vip_key)?
        }
    };
    let Some(meta) = meta else {
        let not = Choice::Not { why: format!("no VIP {} {}: passed to the kernel", query.dst, query.proto) };
        return Ok(FlowReport {
            flow: query,
            vip: None,
            announced: None,
            entry: None,
            now: not.clone(),
            new_flow: not,
            unknown_mid_flow: None,
            second_chance: None,
            quic: None,
        });
    };
    let vip = status.iter().find(|v| v.index == meta.vip_index);
    let real_status = |id: u32| vip.and_then(|v| v.reals.iter().find(|r| r.id == id));

    let affinity = meta.flags & VIP_F_SOURCE_AFFINITY != 0;
    let new_flow = if meta.ring_size == 0 {
        Choice::Not { why: "the VIP's ring is empty: dropped (drop_no_real)".into() }
    } else {
        let hash = if affinity { source_hash(&key.src) } else { flow_hash(&key) };
        let slot = hash % meta.ring_size;
        match maps.ring_slot(meta.ring_base + slot)? {
            0 => Choice::Not { why: format!("ring slot {slot} holds no real: dropped (drop_no_real)") },
            id => {
                let real = maps.real(id)?.map(|r| ip_of(r.addr));
                let rs = real_status(id);
                Choice::Ring {
                    slot,
                    ring_size: meta.ring_size,
                    source_affinity: affinity,
                    real: real.unwrap_or(IpAddr::from([0u8; 16])),
                    real_id: id,
                    up: rs.is_some_and(|r| r.up),
                    weight: rs.map_or(0, |r| r.weight),
                }
            }
        }
    };

    let entry = match maps.conn(&key)? {
        Some(e) => Some(table_entry(maps, &e)?),
        None => None,
    };
    let tcp = query.proto == Proto::Tcp;
    let unknown_mid_flow = if tcp { Some(unknown_mid_flow(maps, &key, &new_flow)?) } else { None };
    let second_chance = match (&new_flow, tcp && meta.flags & VIP_F_SECOND_CHANCE != 0) {
        (Choice::Ring { slot, real_id, .. }, true) => Some(second_chance(maps, &meta, *slot, *real_id)?),
        (_, true) => Some(SecondChance { alternative: None, window_left_s: None }),
        (_, false) => None,
    };
    let quic = match meta.flags & VIP_F_QUIC_LB {
        0 => None,
        _ => Some(super::cid::explain(maps, vip, &meta, query.cid.as_deref())?),
    };
    let now = match &entry {
        Some(TableEntry { real: Some(real), real_id, vip_generation, ignored: None, .. }) => {
            Choice::Table { real: *real, real_id: *real_id, vip_generation: *vip_generation }
        }
        // No entry, or one that does not count (an entry marking a peer's flow included: that
        // takes the unknown-flow path, which hands it to the peer again).
        _ => unknown_mid_flow.clone().unwrap_or_else(|| new_flow.clone()),
    };
    Ok(FlowReport {
        flow: query,
        vip: vip.map(|v| v.name.clone()),
        announced: bgp.then(|| vip.is_some_and(|v| v.announced)),
        entry,
        now,
        new_flow,
        unknown_mid_flow,
        second_chance,
        quic,
    })
}

/// The alternative a mid-flow packet in ring slot `slot` (live real `real_id`) carries.
fn second_chance(maps: &LiveMaps, meta: &VipMeta, slot: u32, real_id: u32) -> Result<SecondChance, DataplaneError> {
    let prev = maps.prev_ring(meta.vip_index)?;
    let now = crate::dataplane::monotonic_ns();
    if prev.ring_size == 0 || now >= prev.until_ns {
        return Ok(SecondChance { alternative: None, window_left_s: None });
    }
    let window_left_s = Some((prev.until_ns - now) / 1_000_000_000);
    // The data plane takes the same hash modulo the previous ring's size; sizes only differ
    // when the VIP's ring_size changed.
    let hash_slot = if prev.ring_size == meta.ring_size { slot } else { return Ok(SecondChance { alternative: None, window_left_s }) };
    let alt = maps.ring_slot(prev.ring_base + hash_slot)?;
    let alternative = match (maps.real(real_id)?, maps.real(alt)?) {
        (Some(real), Some(other)) if alt != real_id && real.can_forward_to(&other) => Some(ip_of(other.addr)),
        _ => None,
    };
    Ok(SecondChance { alternative, window_left_s })
}

fn table_entry(maps: &LiveMaps, e: &ConnEntry) -> Result<TableEntry, DataplaneError> {
    let current = maps.vip_generation(e.vip_index())?;
    let real = if e.real_id == REAL_ID_PEER { None } else { maps.real(e.real_id)? };
    let ignored = if current != Some(e.vip_generation) {
        Some(format!("made under VIP generation {}, the VIP is at {}", e.vip_generation, current.unwrap_or(0)))
    } else if e.real_id == REAL_ID_PEER {
        None
    } else {
        match real {
            None => Some(format!("real id {} does not exist", e.real_id)),
            Some(r) if r.is_down() => Some("its real is down".into()),
            Some(_) => None,
        }
    };
    let alternative = match e.alt_real_id() {
        0 => None,
        id => maps.real(id)?.map(|r| ip_of(r.addr)),
    };
    Ok(TableEntry { real: real.map(|r| ip_of(r.addr)), real_id: e.real_id, vip_generation: e.vip_generation, ignored, alternative })
}

/// A mid-flow TCP packet the table does not know: handed to a peer when handoff is on for its
/// family, else the ring.
fn unknown_mid_flow(maps: &LiveMaps, key: &FlowKey, ring: &Choice) -> Result<Choice, DataplaneError> {
    let h = maps.handoff()?;
    let ipv6 = ip_of(key.src).is_ipv6();
    if h.peers == 0 || (ipv6 && h.flags & HANDOFF_F_IPV6 == 0) {
        return Ok(ring.clone());
    }
    let peer = maps.peer(flow_hash(key) % h.peers.clamp(1, MAX_PEERS))?;
    Ok(Choice::Peer { peer: ip_of(peer) })
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Choice::Table { real, real_id, vip_generation } => {
                write!(f, "connection table: real {real} (id {real_id}, entry of VIP generation {vip_generation})")
            }
            Choice::Ring { slot, ring_size, source_affinity, real, real_id, up, weight } => {
                let state = if *up { "up" } else { "down" };
                let by = if *source_affinity { ", by source address" } else { "" };
                write!(f, "ring slot {slot} of {ring_size}{by}: real {real} (id {real_id}, {state}, weight {weight})")
            }
            Choice::Peer { peer } => write!(f, "handoff to peer {peer}"),
            Choice::Not { why } => f.write_str(why),
        }
    }
}

impl fmt::Display for FlowReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(vip) = &self.vip else { return writeln!(f, "flow {}\n  {}", self.flow, self.now) };
        let announced = match self.announced {
            Some(true) => "announced",
            Some(false) => "NOT announced",
            None => "no BGP",
        };
        writeln!(f, "flow {}: VIP {vip} ({announced})", self.flow)?;
        writeln!(f, "  now:               {}", self.now)?;
        match &self.entry {
            None => writeln!(f, "  table entry:       none")?,
            Some(e) => {
                let real =
                    e.real.map_or_else(|| if e.real_id == REAL_ID_PEER { "a peer site".into() } else { "-".into() }, |r| r.to_string());
                let counts = e.ignored.as_deref().map_or_else(|| "counts".to_owned(), |why| format!("ignored: {why}"));
                let alt = e.alternative.map_or_else(String::new, |a| format!(", alternative {a} (second chance)"));
                writeln!(f, "  table entry:       real {real} (id {}, VIP generation {}){alt}, {counts}", e.real_id, e.vip_generation)?
            }
        }
        writeln!(f, "  a new connection:  {}", self.new_flow)?;
        if let Some(c) = &self.unknown_mid_flow {
            writeln!(f, "  mid-flow, unknown: {c}")?;
        }
        match &self.second_chance {
            None => {}
            Some(SecondChance { window_left_s: None, .. }) => writeln!(f, "  second chance:     on, no previous ring (no change since start, or past its window)")?,
            Some(SecondChance { alternative: None, window_left_s: Some(left) }) => {
                writeln!(f, "  second chance:     none for this flow: the previous ring names the same real, or one down or of the other family ({left} s of the window left)")?
            }
            Some(SecondChance { alternative: Some(alt), window_left_s: Some(left) }) => writeln!(
                f,
                "  second chance:     a mid-flow packet the table does not hold carries {alt}, the previous ring's real: the backend forwards it there if it has no socket for it ({left} s of the window left)"
            )?,
        }
        if let Some(quic) = &self.quic {
            write!(f, "{quic}")?;
        }
        Ok(())
    }
}

/// One connection-table entry as `lb flows` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowEntry {
    pub flow: FlowQuery,
    pub vip: Option<String>,
    /// None: a peer site's flow, or an id no real holds.
    pub real: Option<IpAddr>,
    pub real_id: u32,
    pub vip_generation: u32,
}

/// Which entries `lb flows` lists or purges.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowFilter {
    pub vip: Option<String>,
    pub real: Option<IpAddr>,
    /// Stop after this many matches (listing only).
    pub limit: Option<usize>,
}

/// `lb flows`' answer: the matching entries and how many entries were read to find them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowList {
    pub entries: Vec<FlowEntry>,
    pub scanned: usize,
    /// The walk stopped at the limit: more may match.
    pub truncated: bool,
}

/// Listing stops at this many entries unless asked for another limit.
pub const DEFAULT_LIMIT: usize = 100;

/// What the table's entries name: each VIP index's name and each real id's address.
struct Names {
    vips: std::collections::HashMap<u32, String>,
    reals: std::collections::HashMap<u32, IpAddr>,
}

impl Names {
    fn of(status: &[VipStatus]) -> Self {
        Self {
            vips: status.iter().map(|v| (v.index, v.name.clone())).collect(),
            reals: status.iter().flat_map(|v| v.reals.iter().map(|r| (r.id, r.address))).collect(),
        }
    }

    /// Whether `filter` selects entry `e`.
    fn selects(&self, filter: &FlowFilter, e: &ConnEntry) -> bool {
        filter.vip.as_ref().is_none_or(|name| self.vips.get(&e.vip_index()) == Some(name))
            && filter.real.is_none_or(|real| self.reals.get(&e.real_id) == Some(&real))
    }
}

fn query_of(key: &FlowKey) -> FlowQuery {
    FlowQuery {
        src: ip_of(key.src),
        src_port: u16::from_be(key.src_port_be),
        dst: ip_of(key.dst),
        dst_port: u16::from_be(key.dst_port_be),
        proto: if key.proto == 17 { Proto::Udp } else { Proto::Tcp },
        cid: None,
    }
}

/// Entries matching `filter`, up to its limit. Cost: the walk reads entries until the limit is
/// reached, the whole table when fewer match (see docs/operations.md for the measured rate).
pub fn list(maps: &LiveMaps, status: &[VipStatus], filter: &FlowFilter) -> Result<FlowList, DataplaneError> {
    let names = Names::of(status);
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT);
    let mut entries = Vec::new();
    let mut truncated = false;
    let scanned = maps.walk_conns(|key, e| {
        if names.selects(filter, e) {
            if entries.len() == limit {
                truncated = true;
                return false;
            }
            entries.push(FlowEntry {
                flow: query_of(key),
                vip: names.vips.get(&e.vip_index()).cloned(),
                real: names.reals.get(&e.real_id).copied(),
                real_id: e.real_id,
                vip_generation: e.vip_generation,
            });
        }
        true
    })?;
    Ok(FlowList { entries, scanned, truncated })
}

/// `lb flows purge`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Purged {
    pub scanned: usize,
    pub removed: usize,
}

/// Deletes every entry of `real` (of `vip`, when named): the whole table is walked.
pub fn purge(maps: &mut LiveMaps, status: &[VipStatus], filter: &FlowFilter) -> Result<Purged, DataplaneError> {
    let names = Names::of(status);
    let mut doomed = Vec::new();
    let scanned = maps.walk_conns(|key, e| {
        if names.selects(filter, e) {
            doomed.push(*key);
        }
        true
    })?;
    let removed = maps.remove_conns(&doomed)?;
    Ok(Purged { scanned, removed })
}

impl fmt::Display for FlowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let real = self.real.map_or_else(
            || if self.real_id == REAL_ID_PEER { "peer site".into() } else { format!("id {}", self.real_id) },
            |r| r.to_string(),
        );
        write!(f, "{}  vip {}  real {real}  gen {}", self.flow, self.vip.as_deref().unwrap_or("-"), self.vip_generation)
    }
}
