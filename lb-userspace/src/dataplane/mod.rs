//! The only module that talks to aya: loads the eBPF object, attaches programs, and reads and
//! writes the maps with the typed values of `lb_common`.
//!
//! - `loader`: loading (pinned or not), attaching, what an earlier `lb` left in the maps;
//! - `writer`: the map writes, one entry each, behind `DataplaneOps` (the reconciler plans them);
//! - `ring_memory`: the Maglev slot pool mapped into this process;
//! - `counters`, `live`, `capture`: readers opened from the pins, for metrics, `lb flow` /
//!   `lb doctor` and `lb capture`, off the loop that owns the writer;
//! - `pins`: where each program's pins live.

mod capture;
mod counters;
mod live;
mod loader;
pub mod pins;
mod ring_memory;
mod writer;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::maps::MapData;
use lb_common::{FlowKey, LbConfig, RateLimit, Real, VipKey, VipMeta};

pub use self::{
    capture::{CaptureBuffer, CaptureMaps},
    counters::{monotonic_ns, Counters},
    live::LiveMaps,
    loader::{Dataplane, LoadOptions, Programmed},
};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("program {name} is not in the eBPF object")]
    NoProgram { name: String },
    #[error("program {name}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name} is not in the eBPF object")]
    NoMap { name: &'static str },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinning under {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the connection table pinned at {path} holds {pinned} entries, the config asks for {wanted}: `lb stop` the instance first (this drops established flows: drain before)")]
    PinnedSizeMismatch { path: PathBuf, pinned: u32, wanted: u32 },
    #[error("reading map {name} in one batch")]
    Batch {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("opening a perf buffer of the capture")]
    PerfBuffer(#[source] aya::maps::perf::PerfBufferError),
    #[error("reading the online CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("link pinned at {path}")]
    Link { path: PathBuf, detail: String },
    #[error("a ring of {slots} slots at pool slot {base} does not fit the pool of {pool} slots")]
    RingOutOfRange { base: u32, slots: usize, pool: u32 },
    #[error("the Maglev rings pinned at {path} have the layout of an older lb (one slot per element, a fixed stride per ring): `lb stop` the instance first (this drops established flows: drain before)")]
    PinnedRingLayout { path: PathBuf },
}

/// Knobs fixed when the object is loaded.
type Result<T, E = DataplaneError> = std::result::Result<T, E>;

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// A lookup's value, None for a key the map does not hold.
fn found<V>(name: &'static str, got: Result<V, aya::maps::MapError>) -> Result<Option<V>> {
    match got {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(source) => Err(DataplaneError::Map { name, source }),
    }
}

/// Opens the map pinned as `name` under `pin_dir`, as `variant` says its kind is.
fn open_pinned<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    pin_dir: &Path,
    name: &'static str,
    variant: fn(MapData) -> aya::maps::Map,
) -> Result<T> {
    let data = MapData::from_pin(pin_dir.join("maps").join(name)).map_err(map_err(name))?;
    T::try_from(variant(data)).map_err(map_err(name))
}

/// An address in the maps' 16-byte form (IPv4 is IPv4-mapped).
pub fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => lb_common::ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address `addr16` wrote: a v4-mapped one is IPv4.
pub fn ip_of(addr: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// The connection-table key of a flow (ports in host order here, in network order in the key).
pub fn flow_key(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16, proto: u8) -> FlowKey {
    FlowKey { src: addr16(src), dst: addr16(dst), src_port_be: src_port.to_be(), dst_port_be: dst_port.to_be(), proto, _pad: [0; 3] }
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
    /// `VIP_ADDRS[addr]`: how many VIPs the address has (0 removes the entry).
    fn set_vip_addr(&mut self, addr: &[u8; 16], vips: u32) -> Result<(), DataplaneError>;
    /// One 64-bit word of the `VIP_FILTER` pre-filter.
    fn set_filter_word(&mut self, word: u32, bits: u64) -> Result<(), DataplaneError>;
    /// Writes `(slot, real id)` pairs of the ring at pool slot `base`.
    fn write_ring_slots(&mut self, base: u32, slots: impl Iterator<Item = (u32, u32)>) -> Result<(), DataplaneError>;
    /// `HANDOFF`, `PEERS` and `PEER_SOURCES` (the node address's filter bit is a filter write).
    fn set_handoff(&mut self, handoff: &Handoff) -> Result<(), DataplaneError>;
    /// Slots in the ring pool.
    fn ring_slots(&self) -> u32;
}
