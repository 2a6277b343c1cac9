//! Every map of the object. Names match `lb_common::maps`; sizes are defaults the loader may
//! override (the connection table's is set at load time).

use crate::packet::Scratch;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerfEventArray},
};
use lb_common::quic_lb::{QuicLbParams, ServerIdKey};
use lb_common::{
    limits,
    stats::{Counter, DecapCounter},
    CaptureCtl, CaptureMeta, CaptureState, ConnEntry, FlowKey, Handoff, LbConfig, LimitState, PrevRing, RateLimit, Real, RealStats,
    SlotPair, VipKey, VipMeta, VipStats, DEFAULT_CONN_TABLE_SIZE, MAX_DECAP_ADDRS, MAX_DECAP_SOURCES, MAX_DECAP_VIPS, MAX_PEERS, MAX_REALS,
    MAX_VIPS, SYN_SEEN_SLOTS, VIP_FILTER_BITS,
};

/// (address, port, protocol) -> the VIP's ring and flags.
#[map]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Addresses that carry at least one VIP (value: how many). Lets the parser tell "malformed
/// packet to a VIP" (drop) from "anything else" (pass) before it can read a port.
#[map]
pub static VIP_ADDRS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Pre-filter in front of `VIP_ADDRS`: a bitmap with the `addr_filter_bit` of every VIP
/// address (and the handoff address) set. A clear bit proves "not a VIP address" with an array
/// read the verifier inlines, so traffic that is not ours never pays for a hash lookup.
#[map]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_BITS / 64, 0);

/// Current generation of each VIP index (0: unused). Connection entries carry the generation
/// they were made under; the loader bumps it when a VIP goes away or its index is reused.
#[map]
pub static VIP_GEN: Array<u32> = Array::with_max_entries(MAX_VIPS, 0);

/// The slot pool of every Maglev ring: a VIP's live ring is slots `ring_base .. ring_base +
/// ring_size` (`VipMeta`), two slots an element; values are real ids. The loader sizes it from
/// the config (two rings per VIP: the live one and the one being rebuilt). Mappable, so the
/// control plane writes a rebuilt ring as memory, not one syscall per slot.
#[map]
pub static MAGLEV: Array<SlotPair> = Array::with_max_entries(1, BPF_F_MMAPABLE);
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Each VIP's previous ring and until when it gives alternatives (by VIP index): written by the
/// control plane around every ring switch of a VIP with the second chance, read only on the
/// new-flow path.
#[map]
pub static VIP_PREV: Array<PrevRing> = Array::with_max_entries(MAX_VIPS, 0);

/// QUIC-LB: how each VIP's connection IDs are read (by VIP index; mode 0: off).
#[map]
pub static QUIC_LB: Array<QuicLbParams> = Array::with_max_entries(MAX_VIPS, 0);

/// QUIC-LB: (VIP index, server ID) -> real id.
#[map]
pub static QUIC_SERVERS: HashMap<ServerIdKey, u32> = HashMap::with_max_entries(MAX_REALS, 0);

/// Real id -> address and flags.
#[map]
pub static REALS: Array<Real> = Array::with_max_entries(MAX_REALS, 0);

/// Connection table: flow -> real id, so a flow keeps its real when a ring changes.
#[map]
pub static CONNS: LruHashMap<FlowKey, ConnEntry> = LruHashMap::with_max_entries(DEFAULT_CONN_TABLE_SIZE, 0);

/// Entry 0: how to build outgoing packets.
#[map]
pub static CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
pub static VIP_STATS: PerCpuArray<VipStats> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map]
pub static REAL_STATS: PerCpuArray<RealStats> = PerCpuArray::with_max_entries(MAX_REALS, 0);

/// Local addresses the decapsulation program strips tunnels for.
#[map]
pub static DECAP_ADDRS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);

/// The balancers' outer source prefixes (IPv4 as IPv4-mapped, /96 + its length): tunnels from
/// elsewhere are dropped.
#[map]
pub static DECAP_SOURCES: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_DECAP_SOURCES, 0);

/// This backend's VIPs: the only inner destinations a tunnel may carry.
#[map]
pub static DECAP_VIPS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(MAX_DECAP_VIPS, 0);

#[map]
pub static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DecapCounter::COUNT, 0);

/// Entry 0: this node's handoff address and state (`lb_common::Handoff`).
#[map]
pub static HANDOFF: Array<Handoff> = Array::with_max_entries(1, 0);

/// Addresses of peer sites' LB nodes that are up; the first `Handoff::peers` count.
#[map]
pub static PEERS: Array<[u8; 16]> = Array::with_max_entries(MAX_PEERS, 0);

/// Every configured peer (up or down): the only sources a tunnel to our handoff address is taken
/// from. Values unused.
#[map]
pub static PEER_SOURCES: HashMap<[u8; 16], u8> = HashMap::with_max_entries(MAX_PEERS, 0);

/// Each rate limit of the data plane (`lb_common::limits`), written by the control plane.
#[map]
pub static RATE_LIMITS: Array<RateLimit> = Array::with_max_entries(limits::COUNT, 0);

/// Each CPU's state of each rate limit.
#[map]
pub static LIMIT_STATE: PerCpuArray<LimitState> = PerCpuArray::with_max_entries(limits::COUNT, 0);

/// Recent client SYNs: slot `flow hash % SYN_SEEN_SLOTS` holds the other bits of the last SYN's
/// flow hash there and the real it went to (`conntrack::remember_syn`). A TCP flow is recorded
/// when its handshake's ACK finds its SYN here, so spoofed SYNs, which never complete, make no
/// connection-table entries. Shared by all CPUs: a lost race or a
/// collision only sends that ACK down the unknown-flow path (a handoff round trip at most).
/// Read only on the new-flow path, never for a known flow.
#[map]
pub static SYN_SEEN: Array<u32> = Array::with_max_entries(SYN_SEEN_SLOTS, 0);

/// Per-CPU room for the balancer's larger working values (`packet::Scratch`), which on the
/// stack would take a fifth of the 512 bytes the verifier allows over a call chain. An XDP
/// program runs to its end on one CPU before the next packet there: one entry per CPU is enough.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// `lb capture`'s switch, lease and rate limit (entry 0).
#[map]
pub static CAPTURE_CTL: Array<CaptureCtl> = Array::with_max_entries(1, 0);

/// Each CPU's capture rate-limit state and counts (entry 0).
#[map]
pub static CAPTURE_STATE: PerCpuArray<CaptureState> = PerCpuArray::with_max_entries(1, 0);

/// Captured packets, a `CaptureMeta` and the packet's first bytes each, to `lb capture`.
#[map]
pub static CAPTURE: PerfEventArray<CaptureMeta> = PerfEventArray::new(0);
