//! The seam between the reconciler and the maps: `DataplaneOps`, the writes it plans, one map
//! entry each (`Dataplane` in production, a fake in tests).

use std::net::IpAddr;

use lb_common::{
    quic_lb::{QuicLbParams, ServerIdKey},
    LbConfig, PrevRing, RateLimit, Real, VipKey, VipMeta,
};

use super::error::DataplaneError;

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

/// The writes the reconciler plans, one map entry each: `Dataplane` in production, a fake in
/// tests. Each replaces an entry whole, so the write that undoes it is the same call with the
/// entry's old value.
pub trait DataplaneOps {
    fn set_config(&mut self, cfg: &LbConfig) -> Result<(), DataplaneError>;
    fn set_rate_limit(&mut self, limit: u32, rate: &RateLimit) -> Result<(), DataplaneError>;
    fn set_real(&mut self, id: u32, real: &Real) -> Result<(), DataplaneError>;
    /// A `VIPS` entry, as given (its generation included).
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), DataplaneError>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError>;
    /// `VIP_GEN[index]`: connection entries of another generation of that index stop counting.
    fn set_vip_generation(&mut self, index: u32, generation: u32) -> Result<(), DataplaneError>;
    /// `VIP_PREV[index]`: the VIP's previous ring for the second chance (all zeroes: none).
    fn set_prev_ring(&mut self, index: u32, prev: &PrevRing) -> Result<(), DataplaneError>;
    /// `VIP_ADDRS[addr]`: how many VIPs the address has (0 removes the entry).
    fn set_vip_addr(&mut self, addr: &[u8; 16], vips: u32) -> Result<(), DataplaneError>;
    /// One 64-bit word of the `VIP_FILTER` pre-filter.
    fn set_filter_word(&mut self, word: u32, bits: u64) -> Result<(), DataplaneError>;
    /// Writes `(slot, real id)` pairs of the ring at pool slot `base`.
    fn write_ring_slots(&mut self, base: u32, slots: impl Iterator<Item = (u32, u32)>) -> Result<(), DataplaneError>;
    /// `HANDOFF`, `PEERS` and `PEER_SOURCES` (the node address's filter bit is a filter write).
    fn set_handoff(&mut self, handoff: &Handoff) -> Result<(), DataplaneError>;
    /// `QUIC_LB[index]`: how the VIP's connection IDs are read (`QuicLbParams::OFF`: not).
    fn set_quic_params(&mut self, index: u32, params: &QuicLbParams) -> Result<(), DataplaneError>;
    /// `QUIC_SERVERS[key]`: the real of a server ID (0 removes the entry).
    fn set_quic_server(&mut self, key: &ServerIdKey, real_id: u32) -> Result<(), DataplaneError>;
    /// Slots in the ring pool.
    fn ring_slots(&self) -> u32;
}
