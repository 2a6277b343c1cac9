#![no_std]
//! Types shared by lb-ebpf and lb-userspace. The layout is an ABI: change both sides in one commit.
//!
//! Addresses are 16 bytes everywhere; an IPv4 address is stored IPv4-mapped (`::ffff:a.b.c.d`), so
//! one key type serves both families. Ports are in network byte order (`_be`), as on the wire.

pub mod aes;
pub mod hash;
pub mod quic_lb;
pub mod second_chance;
pub mod stats;

/// Largest Maglev table a VIP may have.
pub const MAX_RING_SIZE: u32 = 65_537;
/// Maglev table size used when the config does not name one (a prime, as Maglev requires).
pub const DEFAULT_RING_SIZE: u32 = 65_537;
/// VIPs one balancer serves.
pub const MAX_VIPS: u32 = 4096;
/// Reals (backends) across all VIPs: ids 1 ..= 65,536. Id 0 is never used: a ring slot holding 0
/// is "unprogrammed".
pub const MAX_REALS: u32 = 65_537;
/// Ring slots per `MAGLEV` element: the kernel stores array values 8 bytes apart, so a slot per
/// element would leave half the pool's memory unused.
pub const SLOTS_PER_ELEMENT: u32 = 2;
/// A `MAGLEV` element: two consecutive slots of the pool (slot `s` is `[s / 2][s % 2]`).
pub type SlotPair = [u32; 2];

/// Where pool slot `slot` lives in `MAGLEV`: its element, and its place in that `SlotPair`.
#[inline(always)]
pub const fn slot_place(slot: u32) -> (u32, usize) {
    (slot / SLOTS_PER_ELEMENT, (slot % SLOTS_PER_ELEMENT) as usize)
}
/// Connection-table entries when the operator does not choose (room for about 1M flows).
pub const DEFAULT_CONN_TABLE_SIZE: u32 = 1 << 20;
/// Bits of the VIP-address pre-filter (`VIP_FILTER`, 64 to an element), a power of two: 16 KiB,
/// which stays in a CPU's first-level cache (a 512 KiB array of counts cost a cache miss per
/// packet that is not ours, 20-50 ns, measured), and with 4,096 VIP addresses about 3% of other
/// addresses share a bit with one.
pub const VIP_FILTER_BITS: u32 = 1 << 17;
/// Local addresses the decapsulation program accepts tunnelled packets for.
pub const MAX_DECAP_ADDRS: u32 = 64;
/// Balancer source prefixes a backend accepts tunnels from, and VIPs it accepts inside them.
pub const MAX_DECAP_SOURCES: u32 = 64;
pub const MAX_DECAP_VIPS: u32 = 4096;
/// LB nodes of other sites a node may hand unknown mid-flow packets to (`PEERS`).
pub const MAX_PEERS: u32 = 16;

/// Bytes the encapsulation adds in front of the inner IP packet.
pub const IPIP_OVERHEAD: u32 = 20;
pub const IP6_OVERHEAD: u32 = 40;

/// Map names, as the eBPF object spells them (at most 15 bytes, so `bpftool map` shows them whole).
pub mod maps {
    pub const VIPS: &str = "VIPS";
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    pub const VIP_FILTER: &str = "VIP_FILTER";
    pub const VIP_GEN: &str = "VIP_GEN";
    pub const MAGLEV: &str = "MAGLEV";
    pub const REALS: &str = "REALS";
    pub const CONNS: &str = "CONNS";
    pub const CONFIG: &str = "CONFIG";
    pub const STATS: &str = "STATS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const REAL_STATS: &str = "REAL_STATS";
    pub const DECAP_ADDRS: &str = "DECAP_ADDRS";
    pub const DECAP_STATS: &str = "DECAP_STATS";
    pub const DECAP_SOURCES: &str = "DECAP_SOURCES";
    pub const DECAP_VIPS: &str = "DECAP_VIPS";
    pub const HANDOFF: &str = "HANDOFF";
    pub const PEERS: &str = "PEERS";
    pub const PEER_SOURCES: &str = "PEER_SOURCES";
    pub const RATE_LIMITS: &str = "RATE_LIMITS";
    pub const LIMIT_STATE: &str = "LIMIT_STATE";
    pub const SYN_SEEN: &str = "SYN_SEEN";
    pub const CAPTURE: &str = "CAPTURE";
    pub const CAPTURE_CTL: &str = "CAPTURE_CTL";
    pub const CAPTURE_STATE: &str = "CAPTURE_STATE";
    pub const VIP_PREV: &str = "VIP_PREV";
    pub const QUIC_LB: &str = "QUIC_LB";
    pub const QUIC_SERVERS: &str = "QUIC_SERVERS";
    /// Maps whose layout changed since version 1, with their version. Bump a map's version
    /// when the meaning of its bytes changes at the same sizes (a field moved, a counter
    /// renamed): the version is in the pin's name, and `lb` recreates or refuses a pin of
    /// another version (see lb-userspace's `dataplane::layout`). Size changes are caught
    /// without a bump.
    pub const LAYOUT_VERSIONS: &[(&str, u32)] = &[
        // 2: a slot holds the hash's high bits and the SYN's real, not the whole hash.
        (SYN_SEEN, 2),
    ];

    /// The layout version of map `name`.
    pub fn layout_version(name: &str) -> u32 {
        LAYOUT_VERSIONS.iter().find(|(n, _)| *n == name).map_or(1, |(_, v)| *v)
    }

    pub const ALL: &[&str] = &[
        VIPS,
        VIP_ADDRS,
        VIP_FILTER,
        VIP_GEN,
        MAGLEV,
        REALS,
        CONNS,
        CONFIG,
        STATS,
        VIP_STATS,
        REAL_STATS,
        DECAP_ADDRS,
        DECAP_STATS,
        DECAP_SOURCES,
        DECAP_VIPS,
        HANDOFF,
        PEERS,
        PEER_SOURCES,
        RATE_LIMITS,
        LIMIT_STATE,
        SYN_SEEN,
        CAPTURE,
        CAPTURE_CTL,
        CAPTURE_STATE,
        VIP_PREV,
        QUIC_LB,
        QUIC_SERVERS,
    ];
}

/// Program names in the eBPF object.
pub mod programs {
    /// The balancer, attached to the edge node's NIC.
    pub const BALANCER: &str = "lb_xdp";
    /// Strips our encapsulation on a backend (this kernel has no ipip device).
    pub const DECAP: &str = "lb_decap";
    /// Returns XDP_PASS: put on a veth peer so XDP_TX frames are received; the bench floor.
    pub const PASS: &str = "xdp_pass";
    /// Returns XDP_TX: bounces every frame; the limit of the XDP_TX path in end-to-end benches.
    pub const BOUNCE: &str = "xdp_bounce";
    /// Finds a known flow's real and encapsulates, nothing more: bench-e2e's middle row.
    pub const LEAST_ENCAP: &str = "xdp_least_encap";
    /// Counts every frame in its object's `drop` verdict counter and drops it: the end-to-end
    /// bench's receiver, the same cost for every frame.
    pub const SINK: &str = "xdp_sink";
}

/// Byte order helpers for the IPv4-mapped form.
pub const fn ipv4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3]]
}

/// An address in the maps' 16-byte form (IPv4 is IPv4-mapped).
pub const fn addr16(addr: core::net::IpAddr) -> [u8; 16] {
    match addr {
        core::net::IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        core::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address `addr16` wrote: a v4-mapped one is IPv4.
pub fn ip_of(addr: [u8; 16]) -> core::net::IpAddr {
    let v6 = core::net::Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(core::net::IpAddr::V6(v6), core::net::IpAddr::V4)
}

/// Key of the `VIPS` map: what a packet's destination must match to be balanced.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// Destination address; IPv4 is IPv4-mapped.
    pub addr: [u8; 16],
    /// Destination port in network byte order; 0 is an "any port" VIP.
    pub port_be: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// Explicit: padding bytes are part of a hash key and must be zero.
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

/// `VipMeta::flags`: new flows are hashed on the source address alone, so a client keeps its real.
pub const VIP_F_SOURCE_AFFINITY: u32 = 1 << 0;
/// `VipMeta::flags`: a mid-flow TCP packet the connection table does not hold carries the real
/// of the VIP's previous ring (`VIP_PREV`) when it differs (`second_chance`).
pub const VIP_F_SECOND_CHANCE: u32 = 1 << 1;
/// `VipMeta::flags`: a UDP VIP whose QUIC short-header packets go to the real whose server ID
/// their connection ID carries (`QUIC_LB`, `QUIC_SERVERS`; see `quic_lb`).
pub const VIP_F_QUIC_LB: u32 = 1 << 2;

/// Value of the `VIP_PREV` array (by VIP index): the ring a VIP had before its last change, kept
/// in `MAGLEV`'s pool until the next change overwrites it, and until when it is used
/// (`CLOCK_MONOTONIC`, as `bpf_ktime_get_ns` reads it). `ring_size` 0: none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrevRing {
    pub ring_base: u32,
    pub ring_size: u32,
    pub until_ns: u64,
}
const _: () = assert!(core::mem::size_of::<PrevRing>() == 16);

/// Value of the `VIPS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// `VIP_F_*` bits.
    pub flags: u32,
    /// Index into `VIP_STATS`; stable for the VIP's life.
    pub vip_index: u32,
    /// First slot of the live ring in `MAGLEV`'s slot pool (slots `ring_base ..
    /// ring_base + ring_size`). Rewriting this field in one map update is the atomic switch to a
    /// rebuilt table.
    pub ring_base: u32,
    /// Slots in that ring (a prime, at most `MAX_RING_SIZE`).
    pub ring_size: u32,
    /// Copied into the connection entries of this VIP; set by the loader from `VIP_GEN`.
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<VipMeta>() == 20);

/// Real flags: the address is IPv6 (otherwise IPv4-mapped IPv4).
pub const REAL_F_IPV6: u32 = 1 << 0;
/// Real flags: the real is down; connection-table entries pointing at it are ignored, so its
/// flows move to a live real. (A draining real is not down: it simply leaves the ring.)
pub const REAL_F_DOWN: u32 = 1 << 1;

/// Value of the `REALS` array, indexed by real id (1 ..= MAX_REALS-1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Real {
    pub addr: [u8; 16],
    /// `REAL_F_*` bits.
    pub flags: u32,
    /// The VIP this real serves (a real id belongs to one VIP). Control-plane bookkeeping, kept
    /// in the pinned map so a restarted `lb` finds the same ids.
    pub vip_index: u32,
}
const _: () = assert!(core::mem::size_of::<Real>() == 24);

impl Real {
    /// Whether its health checks failed: no packet goes to it, whatever the table or a SYN says.
    #[inline(always)]
    pub fn is_down(&self) -> bool {
        self.flags & REAL_F_DOWN != 0
    }

    /// Whether a backend holding a packet for this real can forward it to `other` (the second
    /// chance): programmed, not down (a failed real's connections are gone; forwarding would only
    /// delay the client's reset), and of the same family (the backend rewrites the outer
    /// destination only).
    #[inline(always)]
    pub fn can_forward_to(&self, other: &Real) -> bool {
        other.addr != [0; 16] && !other.is_down() && (other.flags ^ self.flags) & REAL_F_IPV6 == 0
    }
}

/// Key of the `CONNS` connection table: a flow as the client sent it (client -> VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The key of a flow (ports in host order here, in network order in the key).
    pub const fn new(src: core::net::IpAddr, src_port: u16, dst: core::net::IpAddr, dst_port: u16, proto: u8) -> Self {
        Self { src: addr16(src), dst: addr16(dst), src_port_be: src_port.to_be(), dst_port_be: dst_port.to_be(), proto, _pad: [0; 3] }
    }
}

/// Value of the `CONNS` connection table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEntry {
    pub real_id: u32,
    /// The flow's hash, kept so a hit need not recompute it for the outer source's entropy.
    pub flow_hash: u32,
    /// The VIP the flow belongs to (low `VIP_INDEX_BITS` bits; `vip_index()`) and the flow's
    /// alternative real (the bits above; `alt_real_id()`, 0: none). Packed so the entry keeps
    /// its size: entries pinned by an `lb` without alternatives read as "no alternative".
    pub vip_and_alt: u32,
    /// The VIP's generation: the entry counts only while `VIP_GEN[vip_index] == vip_generation`,
    /// so removing a VIP retires its flows at once.
    pub vip_generation: u32,
}
const _: () = assert!(core::mem::size_of::<ConnEntry>() == 16);

/// Bits of `ConnEntry::vip_and_alt` that hold the VIP index.
pub const VIP_INDEX_BITS: u32 = 12;
const _: () = assert!(MAX_VIPS <= 1 << VIP_INDEX_BITS && MAX_REALS <= 1 << (32 - VIP_INDEX_BITS));

impl ConnEntry {
    #[inline(always)]
    pub const fn new(real_id: u32, flow_hash: u32, vip_index: u32, vip_generation: u32, alt_real_id: u32) -> Self {
        Self { real_id, flow_hash, vip_and_alt: vip_index | alt_real_id << VIP_INDEX_BITS, vip_generation }
    }

    #[inline(always)]
    pub const fn vip_index(&self) -> u32 {
        self.vip_and_alt & ((1 << VIP_INDEX_BITS) - 1)
    }

    /// The real a backend forwards the flow's packets to when it has no socket for them.
    #[inline(always)]
    pub const fn alt_real_id(&self) -> u32 {
        self.vip_and_alt >> VIP_INDEX_BITS
    }
}

/// `ConnEntry::real_id` of a flow handed off to a peer node that kept it (did not return it):
/// its later packets are handed off again without taking from the handoff limit, so the open
/// connections of a drained site keep moving however many packets they carry. No real has this
/// id (`REALS` is far smaller), so such an entry is never a hit.
pub const REAL_ID_PEER: u32 = u32::MAX;

/// Value of the single-entry `CONFIG` array: how the balancer builds the packets it sends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    /// Destination MAC of every encapsulated packet: the next-hop router.
    pub next_hop_mac: [u8; 6],
    /// 1: some VIP has QUIC-LB (`VIP_F_QUIC_LB`), so a client's UDP datagram looks for its VIP
    /// before the connection table. 0 spares every other datagram that lookup.
    pub quic_lb: u8,
    pub _pad: u8,
    /// Largest IP packet (L3 bytes) the egress link carries; larger after encapsulation = drop.
    pub mtu: u32,
    /// Outer IPv4 source: these bytes, with the low `src_v4_host_bits` bits taken from the flow
    /// hash, so the backend side's ECMP / RSS sees per-flow entropy.
    pub src_v4: [u8; 4],
    pub src_v4_host_bits: u32,
    /// Outer IPv6 source, likewise (at most 32 host bits).
    pub src_v6: [u8; 16],
    pub src_v6_host_bits: u32,
}
const _: () = assert!(core::mem::size_of::<LbConfig>() == 40);

/// `Handoff::flags`: the node address is IPv6 (otherwise IPv4-mapped IPv4).
pub const HANDOFF_F_IPV6: u32 = 1 << 0;
/// `Handoff::flags`: this node no longer announces its VIPs (site drained, `lb` stopped), so a
/// flow a peer hands over that this node does not know is one of ours the route moved away:
/// balance it here instead of returning it.
pub const HANDOFF_F_ADOPT: u32 = 1 << 1;

/// Outer IPv4 ID / IPv6 flow label of a handoff: a peer asks us to forward a packet of a flow it
/// does not know ...
pub const HANDOFF_REQUEST: u32 = 1;
/// ... or gives back one we asked about and it did not know either.
pub const HANDOFF_RETURN: u32 = 2;

/// Entry 0 of the `HANDOFF` array: cross-site handoff of mid-flow packets. After a route change
/// (a site drained or withdrawn) a TCP packet that is not a SYN may reach a node that never saw
/// its connection; the node tunnels it to a peer (`PEERS`), which forwards it to its own real if
/// it knows the flow and otherwise returns it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handoff {
    /// This node's address: where peers tunnel to, and the outer source of our handoffs.
    pub node_addr: [u8; 16],
    /// `HANDOFF_F_*` bits.
    pub flags: u32,
    /// Live entries at the front of `PEERS` (0: handoff off).
    pub peers: u32,
}
const _: () = assert!(core::mem::size_of::<Handoff>() == 24);

/// Per-CPU rate limits of the data plane (`RATE_LIMITS` holds each limit, `LIMIT_STATE` each
/// CPU's state), indexed by these.
pub mod limits {
    /// ICMP "fragmentation needed" / "packet too big" answers to clients.
    pub const TOO_BIG: u32 = 0;
    /// Connection-table inserts (new flows recorded, UDP included).
    pub const INSERTS: u32 = 1;
    /// Mid-flow packets of unknown flows handed off to peer sites.
    pub const HANDOFFS: u32 = 2;
    /// Echo replies to pings of a VIP address.
    pub const ECHO: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Value of `LIMIT_STATE` (per CPU, per limit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitState {
    /// The GCRA's theoretical arrival time (CLOCK_MONOTONIC ns).
    pub tat: u64,
    /// When the limit last refused an event (CLOCK_MONOTONIC ns; 0: never).
    pub last_refused: u64,
}
const _: () = assert!(core::mem::size_of::<LimitState>() == 16);

/// Slots of `SYN_SEEN`, which remembers recent SYNs by flow hash, and the real each went to (a
/// power of two; 4 MiB): slot `hash % SYN_SEEN_SLOTS` holds the hash's other bits and the real
/// id (0: none), so a handshake's ACK goes to its SYN's real without the ring. A
/// handshake's ACK misses its SYN when other SYNs overwrote the slot meanwhile, with probability
/// about SYN rate x round trip / slots: 5% at 1 M SYNs/s and 50 ms.
pub const SYN_SEEN_SLOTS: u32 = 1 << 20;

/// Value of `RATE_LIMITS`: a GCRA limit, per CPU. Events are spaced `interval_ns` apart on
/// average, and up to `burst_ns / interval_ns + 1` may come at once. `interval_ns` 0: no event
/// is allowed (the limit is off); `u64::MAX` never happens, so "no limit" is `interval_ns` 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub interval_ns: u64,
    pub burst_ns: u64,
}
const _: () = assert!(core::mem::size_of::<RateLimit>() == 16);

impl RateLimit {
    /// As good as no limit: an event every nanosecond, bursts of 0.4 s worth.
    pub const UNLIMITED: Self = Self::per_sec(u32::MAX);

    /// `per_sec` events a second, with bursts of a tenth of a second's worth (at least 1).
    pub const fn per_sec(per_sec: u32) -> Self {
        if per_sec == 0 {
            return Self { interval_ns: 0, burst_ns: 0 };
        }
        // At least 1 ns: above 10^9 a second the interval would round to 0, which means "never".
        let interval_ns = if per_sec > 1_000_000_000 { 1 } else { 1_000_000_000 / per_sec as u64 };
        let burst = if per_sec / 10 > 1 { per_sec as u64 / 10 } else { 1 };
        Self { interval_ns, burst_ns: (burst - 1) * interval_ns }
    }
}

/// Packet capture (`lb capture`): the balancer copies packets of the kinds `CaptureCtl::what`
/// names into the `CAPTURE` perf buffer, each behind a `CaptureMeta`, while `lb capture` holds
/// the lease (`until_ns`) and within the rate limit. Off (`what` 0, or the lease run out) it
/// costs the paths it watches one array read; the path of a known flow has no hook at all.
pub mod capture {
    /// Packets the balancer dropped (`CaptureMeta::reason`: the drop's `Counter`).
    pub const DROP: u32 = 1 << 0;
    /// Mid-flow packets of unknown flows tunnelled to a peer site (reason `HandoffSent`, or
    /// `HandoffReturned` for a peer's handoff sent back), as they arrived.
    pub const HANDOFF: u32 = 1 << 1;
    /// Mid-flow TCP packets of flows the connection table does not know, balanced here by the
    /// ring (no handoff peers, or handoffs over their limit). Reason 0.
    pub const MISS: u32 = 1 << 2;
    /// ICMP to a VIP address (echo requests, errors quoting a flow), as they arrived. Reason 0.
    pub const ICMP: u32 = 1 << 3;
    pub const ALL: u32 = DROP | HANDOFF | MISS | ICMP;
    /// Bytes of a packet copied at most (the rest is counted in `CaptureMeta::packet_len`).
    pub const SNAPLEN: u32 = 256;
}

/// Entry 0 of `CAPTURE_CTL`, written by `lb capture`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureCtl {
    /// `capture::*` bits; 0: off.
    pub what: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC ns until which the capture runs: `lb capture` renews it every second, so a
    /// capture whose process died stops by itself.
    pub until_ns: u64,
    /// Packets copied per CPU (GCRA, as `RATE_LIMITS`): a capture cannot starve forwarding.
    pub rate: RateLimit,
}
const _: () = assert!(core::mem::size_of::<CaptureCtl>() == 32);

/// Per-CPU entry 0 of `CAPTURE_STATE`: the capture's rate-limit state and counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureState {
    pub limit: LimitState,
    /// Packets copied to the perf buffer.
    pub sent: u64,
    /// Packets of a watched kind not copied: over the rate limit.
    pub suppressed: u64,
}
const _: () = assert!(core::mem::size_of::<CaptureState>() == 32);

/// What precedes each captured packet in the perf buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureMeta {
    /// One `capture::*` bit.
    pub what: u32,
    /// A `stats::Counter` value (see `capture`), or 0.
    pub reason: u32,
    /// The frame's length, and how much of it follows.
    pub packet_len: u32,
    pub captured_len: u32,
    /// CLOCK_MONOTONIC ns.
    pub time_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CaptureMeta>() == 24);

/// Per-VIP counters (`VIP_STATS`, per CPU, indexed by `VipMeta::vip_index`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub conn_hits: u64,
    pub conn_misses: u64,
}

impl core::ops::Add for VipStats {
    type Output = Self;
    /// Two CPUs' counts summed.
    fn add(self, o: Self) -> Self {
        Self {
            packets: self.packets + o.packets,
            bytes: self.bytes + o.bytes,
            new_flows: self.new_flows + o.new_flows,
            conn_hits: self.conn_hits + o.conn_hits,
            conn_misses: self.conn_misses + o.conn_misses,
        }
    }
}

/// Per-real counters (`REAL_STATS`, per CPU, indexed by real id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RealStats {
    pub packets: u64,
    pub bytes: u64,
}

impl core::ops::Add for RealStats {
    type Output = Self;
    /// Two CPUs' counts summed.
    fn add(self, o: Self) -> Self {
        Self { packets: self.packets + o.packets, bytes: self.bytes + o.bytes }
    }
}

#[cfg(feature = "user")]
mod pod {
    //! Every map value and key is `#[repr(C)]` plain data with explicit padding fields and no
    //! invalid bit patterns (integers and byte arrays only), which is what `Pod` asks.
    use super::*;
    // SAFETY: repr(C) integers and byte arrays, padding explicit (see the module comment).
    unsafe impl aya::Pod for VipKey {}
    // SAFETY: repr(C) integers and byte arrays, padding explicit (see the module comment).
    unsafe impl aya::Pod for VipMeta {}
    // SAFETY: repr(C) integers and byte arrays, padding explicit (see the module comment).
    unsafe impl aya::Pod for Real {}
    // SAFETY: repr(C) integers and byte arrays, padding explicit (see the module comment).
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: repr(C) integers and byte arrays, padding explicit (see the module comment).
    unsafe impl aya::Pod for ConnEntry {}
    // SAFETY: repr(C) integers and byte arrays, padding explicit (see the module comment).
    unsafe impl aya::Pod for LbConfig {}
    // SAFETY: repr(C) integers and byte arrays, padding explicit (see the module comment).
    unsafe impl aya::Pod for VipStats {}
    // SAFETY: repr(C) integers and byte arrays, padding explicit (see the module comment).
    unsafe impl aya::Pod for RealStats {}
    // SAFETY: repr(C) integers and byte arrays, padding explicit (see the module comment).
    unsafe impl aya::Pod for Handoff {}
    // SAFETY: repr(C) integers and byte arrays, padding explicit (see the module comment).
    unsafe impl aya::Pod for RateLimit {}
    // SAFETY: repr(C) integers and byte arrays, padding explicit (see the module comment).
    unsafe impl aya::Pod for LimitState {}
    // SAFETY: repr(C) integers and byte arrays, padding explicit (see the module comment).
    unsafe impl aya::Pod for CaptureCtl {}
    // SAFETY: repr(C) integers and byte arrays, padding explicit (see the module comment).
    unsafe impl aya::Pod for CaptureState {}
    // SAFETY: repr(C) integers and byte arrays, padding explicit (see the module comment).
    unsafe impl aya::Pod for PrevRing {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::quic_lb::QuicLbParams {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::quic_lb::ServerIdKey {}
}

#[cfg(test)]
mod tests {
    use super::{slot_place, stats::Counter, RateLimit};

    #[test]
    fn counters_are_numbered_in_list_order_with_unique_names() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?}");
            assert!(Counter::ALL[..i].iter().all(|o| o.name() != c.name()), "{} twice", c.name());
        }
        // A change here changes STATS' size: an upgrade recreates the pinned map (lb-userspace's
        // dataplane::layout), so the counters restart at zero.
        assert_eq!((Counter::Pass.name(), Counter::DropHandoffNotPeer as u32), ("pass", 28), "the ABI of STATS");
    }

    #[test]
    fn slots_pair_up_in_elements() {
        assert_eq!([slot_place(0), slot_place(1), slot_place(2), slot_place(65_537)], [(0, 0), (0, 1), (1, 0), (32_768, 1)]);
    }

    #[test]
    fn a_rate_limit_allows_its_rate_with_bursts_of_a_tenth_of_a_second() {
        let l = RateLimit::per_sec(1000);
        assert_eq!((l.interval_ns, l.burst_ns), (1_000_000, 99_000_000), "100 events at once, then one a millisecond");
        assert_eq!(RateLimit::per_sec(5), RateLimit { interval_ns: 200_000_000, burst_ns: 0 }, "at least one at once");
        assert_eq!(RateLimit::per_sec(0).interval_ns, 0, "0: nothing allowed");
        // Above 10^9 a second the interval is 1 ns, and the burst still a tenth of the rate: a
        // coarse clock that stands still for a tick still lets events through.
        let unlimited = RateLimit::UNLIMITED;
        assert_eq!(unlimited.interval_ns, 1);
        assert!(unlimited.burst_ns >= 400_000_000, "{unlimited:?}");
    }
}
