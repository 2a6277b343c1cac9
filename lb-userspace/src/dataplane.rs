//! The only module that talks to aya: loads the eBPF object, attaches programs, and reads and
//! writes the maps with the typed values of `lb_common`.

use std::{
    collections::HashMap as StdHashMap,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use lb_common::{
    maps,
    stats::{Counter, DecapCounter},
    CaptureCtl, CaptureState, ConnEntry, FlowKey, Handoff, LbConfig, LimitState, RateLimit, Real, RealStats, VipKey, VipMeta, VipStats,
    DEFAULT_CONN_TABLE_SIZE, HANDOFF_F_ADOPT, HANDOFF_F_IPV6, MAX_PEERS, MAX_RING_SIZE, SLOTS_PER_ELEMENT,
};

use crate::LB_EBPF;

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

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// Knobs fixed when the object is loaded.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Connection-table entries.
    pub conn_table_size: u32,
    /// Slots of the Maglev ring pool (`MAGLEV`): two rings of every VIP's `ring_size`, and room
    /// to spare for VIPs added at run time (see `config::ring_pool_slots`).
    pub ring_slots: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        // Room for 8 VIPs of the largest ring.
        Self { conn_table_size: DEFAULT_CONN_TABLE_SIZE, ring_slots: 16 * MAX_RING_SIZE }
    }
}

/// `MAGLEV` elements for `slots` ring slots.
fn ring_elements(slots: u32) -> u32 {
    slots.div_ceil(SLOTS_PER_ELEMENT).max(1)
}

/// How to attach to an interface: native (driver) XDP, or generic as a fallback the operator
/// chooses explicitly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
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

/// VIPs and reals found in the maps.
#[derive(Debug, Default)]
pub struct Programmed {
    pub vips: Vec<(VipKey, VipMeta)>,
    pub reals: Vec<(u32, Real)>,
}

/// The `MAGLEV` array mapped into this process (the map is BPF_F_MMAPABLE): a ring is rewritten
/// with memory stores, which the program sees at once, instead of one syscall per slot. Each
/// 8-byte element holds two slots (the kernel stores array values 8 bytes apart), so the mapping
/// is simply the pool's slots as consecutive u32s.
struct RingMemory {
    slots: *mut std::sync::atomic::AtomicU32,
    len: usize,
    bytes: usize,
}

// SAFETY: the mapping is owned by this value and written only through `&mut self` (so through
// `&mut Dataplane`); through a shared reference it is only read, with atomic loads.
unsafe impl Send for RingMemory {}
// SAFETY: as for Send.
unsafe impl Sync for RingMemory {}

impl RingMemory {
    fn map(data: &MapData) -> Option<Self> {
        let elements = data.info().ok()?.max_entries() as usize;
        let len = elements * SLOTS_PER_ELEMENT as usize;
        let page = 4096;
        let bytes = (len * 4).div_ceil(page) * page;
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a shared read-write mapping of the map's values, of the map's size.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
        (ptr != libc::MAP_FAILED).then(|| Self { slots: ptr.cast(), len, bytes })
    }

    fn of(ebpf: &Ebpf) -> Option<Self> {
        let aya::maps::Map::Array(data) = ebpf.map(maps::MAGLEV)? else { return None };
        Self::map(data)
    }

    fn store(&mut self, slot: usize, real_id: u32) {
        assert!(slot < self.len, "ring slot {slot} beyond the map");
        // SAFETY: in bounds; u32 slots are 4-byte aligned in the page-aligned mapping, and an
        // atomic store means the program never reads a torn value.
        unsafe { (*self.slots.add(slot)).store(real_id, std::sync::atomic::Ordering::Relaxed) };
    }

    fn load(&self, slot: usize) -> u32 {
        assert!(slot < self.len, "ring slot {slot} beyond the map");
        // SAFETY: as in `store`.
        unsafe { (*self.slots.add(slot)).load(std::sync::atomic::Ordering::Relaxed) }
    }
}

impl Drop for RingMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.slots.cast(), self.bytes) };
    }
}

/// The loaded object and typed access to its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    /// `None` if the map could not be mapped: slots are then written with syscalls.
    rings: Option<RingMemory>,
    /// Slots in the `MAGLEV` pool.
    ring_slots: u32,
    /// Addresses counted in each `VIP_FILTER` bit.
    filter: std::collections::HashMap<u32, u32>,
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

impl Dataplane {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let ebpf = EbpfLoader::new()
            .map_max_entries(maps::CONNS, opts.conn_table_size)
            .map_max_entries(maps::MAGLEV, ring_elements(opts.ring_slots))
            .load(LB_EBPF)
            .map_err(DataplaneError::Load)?;
        Self::new(ebpf)
    }

    fn new(ebpf: Ebpf) -> Result<Self> {
        let map = ebpf.map(maps::MAGLEV).ok_or(DataplaneError::NoMap { name: maps::MAGLEV })?;
        let aya::maps::Map::Array(data) = map else { return Err(DataplaneError::NoMap { name: maps::MAGLEV }) };
        let ring_slots = data.info().map_err(map_err(maps::MAGLEV))?.max_entries() * SLOTS_PER_ELEMENT;
        let rings = RingMemory::of(&ebpf);
        Ok(Self { ebpf, rings, ring_slots, filter: std::collections::HashMap::new() })
    }

    /// Slots of the Maglev ring pool.
    pub fn ring_slots(&self) -> u32 {
        self.ring_slots
    }

    /// Loads the object with every map pinned under `pin_dir/maps/`: maps already pinned there
    /// (by an earlier `lb run` of this instance) are reused with their contents, so a restart or
    /// upgrade keeps the connection table and the rings.
    pub fn load_pinned(opts: &LoadOptions, pin_dir: &Path) -> Result<Self> {
        let maps_dir = pin_dir.join("maps");
        std::fs::create_dir_all(&maps_dir).map_err(|source| DataplaneError::Pin { path: maps_dir.clone(), source })?;
        // aya would silently reuse a pinned map of another size.
        let conns = maps_dir.join(maps::CONNS);
        if conns.exists() {
            let pinned = aya::maps::MapInfo::from_pin(&conns).map_err(map_err(maps::CONNS))?.max_entries();
            if pinned != opts.conn_table_size {
                return Err(DataplaneError::PinnedSizeMismatch { path: conns, pinned, wanted: opts.conn_table_size });
            }
        }
        let earlier_rings = Self::pinned_rings(&maps_dir.join(maps::MAGLEV), opts.ring_slots)?;
        Self::unpin_if_other_layout(maps::VIP_FILTER, &maps_dir.join(maps::VIP_FILTER), 8, lb_common::VIP_FILTER_BITS / 64)?;
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(maps::CONNS, opts.conn_table_size);
        // A pinned pool at least this large is reused as it is.
        loader.map_max_entries(maps::MAGLEV, ring_elements(opts.ring_slots));
        for name in maps::ALL {
            loader.map_pin_path(name, maps_dir.join(name));
        }
        let ebpf = loader.load(LB_EBPF).map_err(DataplaneError::Load)?;
        let mut dp = Self::new(ebpf)?;
        dp.rebuild_filter()?;
        if let Some(earlier) = earlier_rings.filter(|r| (r.len as u32) < dp.ring_slots) {
            // A larger pool than the pinned one: the rings are copied to the same slots, so the
            // VIPs' `ring_base` stay right for the program attached next.
            let memory = dp.rings.as_mut().ok_or(DataplaneError::NoMap { name: maps::MAGLEV })?;
            for slot in 0..earlier.len {
                memory.store(slot, earlier.load(slot));
            }
        }
        Ok(dp)
    }

    /// Unpins the map at `path` if its values or entries are not what this object has (the
    /// pre-filter of an older `lb`): the loader then makes a new one, which `load_pinned` fills.
    /// The running program keeps its own until it is replaced.
    fn unpin_if_other_layout(name: &'static str, path: &Path, value_size: u32, max_entries: u32) -> Result<()> {
        if !path.exists() {
            return Ok(());
        }
        let info = aya::maps::MapInfo::from_pin(path).map_err(map_err(name))?;
        if info.value_size() != value_size || info.max_entries() != max_entries {
            std::fs::remove_file(path).map_err(|source| DataplaneError::Pin { path: path.to_owned(), source })?;
        }
        Ok(())
    }

    /// The pinned ring pool, if there is one. One at least `wanted` slots large is reused (with
    /// `None` returned); a smaller one is mapped and unpinned, so the loader makes a larger one
    /// into which `load_pinned` copies it. (Should lb die in between, the next start finds the
    /// larger pool empty, and the rings are rewritten by the first apply after the attach.)
    fn pinned_rings(path: &Path, wanted: u32) -> Result<Option<RingMemory>> {
        if !path.exists() {
            return Ok(None);
        }
        let data = MapData::from_pin(path).map_err(map_err(maps::MAGLEV))?;
        let info = data.info().map_err(map_err(maps::MAGLEV))?;
        if info.value_size() != std::mem::size_of::<lb_common::SlotPair>() as u32 {
            return Err(DataplaneError::PinnedRingLayout { path: path.to_owned() });
        }
        if info.max_entries() * SLOTS_PER_ELEMENT >= wanted {
            return Ok(None);
        }
        let memory = RingMemory::map(&data).ok_or(DataplaneError::NoMap { name: maps::MAGLEV })?;
        std::fs::remove_file(path).map_err(|source| DataplaneError::Pin { path: path.to_owned(), source })?;
        Ok(Some(memory))
    }

    /// Attaches program `name` to `iface` through a bpf link pinned at `link_path`, which keeps
    /// it attached after this process exits. If the link is pinned already, the program on it is
    /// replaced atomically (bpf_link_update): no moment without a program.
    pub fn attach_pinned(&mut self, name: &str, iface: &str, mode: AttachMode, link_path: &Path) -> Result<()> {
        self.program_fd(name)?;
        let prog_err = |source| DataplaneError::Program { name: name.to_owned(), source };
        let link_err = |detail: String| DataplaneError::Link { path: link_path.to_owned(), detail };
        if link_path.exists() {
            let pinned = PinnedLink::from_pin(link_path).map_err(|e| link_err(e.to_string()))?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| link_err(e.to_string()))?;
            self.xdp(name)?.attach_to_link(link).map_err(prog_err)?;
            return Ok(());
        }
        let mode = match mode {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        };
        let xdp = self.xdp(name)?;
        let id = xdp.attach(iface, mode).map_err(prog_err)?;
        let link = xdp.take_link(id).map_err(prog_err)?;
        let fd_link = FdLink::try_from(link).map_err(|e| link_err(e.to_string()))?;
        fd_link.pin(link_path).map_err(|e| link_err(e.to_string()))?;
        Ok(())
    }

    /// Removes what `load_pinned` / `attach_pinned` left under `pin_dir`: unpinning the links
    /// detaches the programs, unpinning the maps frees them once nothing holds them.
    pub fn remove_pins(pin_dir: &Path) -> Result<()> {
        match std::fs::remove_dir_all(pin_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataplaneError::Pin { path: pin_dir.to_owned(), source: e }),
            _ => Ok(()),
        }
    }

    /// What the maps hold: VIPs and the reals with an address (after a restart, what an earlier
    /// `lb` programmed).
    pub fn programmed(&self) -> Result<Programmed> {
        let vips_map = self.ebpf.map(maps::VIPS).ok_or(DataplaneError::NoMap { name: maps::VIPS })?;
        let vips = HashMap::<_, VipKey, VipMeta>::try_from(vips_map).map_err(map_err(maps::VIPS))?;
        let vips = vips.iter().collect::<std::result::Result<Vec<_>, _>>().map_err(map_err(maps::VIPS))?;
        let reals_map = self.ebpf.map(maps::REALS).ok_or(DataplaneError::NoMap { name: maps::REALS })?;
        let reals = Array::<_, Real>::try_from(reals_map).map_err(map_err(maps::REALS))?;
        let reals = (1..lb_common::MAX_REALS)
            .filter_map(|id| match reals.get(&id, 0) {
                Ok(real) if real.addr != [0; 16] => Some(Ok((id, real))),
                Ok(_) => None,
                Err(e) => Some(Err(DataplaneError::Map { name: maps::REALS, source: e })),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Programmed { vips, reals })
    }

    fn xdp(&mut self, name: &str) -> Result<&mut Xdp> {
        let no_program = || DataplaneError::NoProgram { name: name.to_owned() };
        let program = self.ebpf.program_mut(name).ok_or_else(no_program)?;
        program.try_into().map_err(|source| DataplaneError::Program { name: name.to_owned(), source })
    }

    /// Loads program `name` into the kernel (verifier included) if it is not yet, and returns its fd.
    pub fn program_fd(&mut self, name: &str) -> Result<i32> {
        let prog_err = |source| DataplaneError::Program { name: name.to_owned(), source };
        let xdp = self.xdp(name)?;
        if xdp.fd().is_err() {
            xdp.load().map_err(prog_err)?;
        }
        Ok(xdp.fd().map_err(prog_err)?.as_fd().as_raw_fd())
    }

    /// Attaches program `name` to `iface` in the calling thread's network namespace. It stays
    /// attached while this `Dataplane` lives.
    pub fn attach(&mut self, name: &str, iface: &str, mode: AttachMode) -> Result<()> {
        self.program_fd(name)?;
        let mode = match mode {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        };
        let prog_err = |source| DataplaneError::Program { name: name.to_owned(), source };
        self.xdp(name)?.attach(iface, mode).map_err(prog_err)?;
        Ok(())
    }

    fn array<T: aya::Pod>(&mut self, name: &'static str) -> Result<Array<&mut MapData, T>> {
        let map = self.ebpf.map_mut(name).ok_or(DataplaneError::NoMap { name })?;
        Array::try_from(map).map_err(map_err(name))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&mut self, name: &'static str) -> Result<HashMap<&mut MapData, K, V>> {
        let map = self.ebpf.map_mut(name).ok_or(DataplaneError::NoMap { name })?;
        HashMap::try_from(map).map_err(map_err(name))
    }

    fn per_cpu<T: aya::Pod>(&self, name: &'static str) -> Result<PerCpuArray<&MapData, T>> {
        per_cpu_of(&self.ebpf, name)
    }

    pub fn set_config(&mut self, cfg: &LbConfig) -> Result<()> {
        self.array::<LbConfig>(maps::CONFIG)?.set(0, cfg, 0).map_err(map_err(maps::CONFIG))
    }

    /// Sets rate limit `limit` (`lb_common::limits`).
    pub fn set_rate_limit(&mut self, limit: u32, rate: &RateLimit) -> Result<()> {
        self.array::<RateLimit>(maps::RATE_LIMITS)?.set(limit, rate, 0).map_err(map_err(maps::RATE_LIMITS))
    }

    /// Each CPU's state of rate limit `limit`.
    pub fn limit_states(&self, limit: u32) -> Result<Vec<LimitState>> {
        limit_states_of(&self.ebpf, limit)
    }

    /// Whether `limit` refused an event on any CPU within `window`: a flood is being held back.
    pub fn limit_refused_within(&self, limit: u32, window: std::time::Duration) -> Result<bool> {
        limit_refused_within_of(&self.ebpf, limit, window)
    }

    /// Entries in the connection table (walks its keys: about 1 s per million entries).
    pub fn conn_entries(&self) -> Result<usize> {
        let map = self.ebpf.map(maps::CONNS).ok_or(DataplaneError::NoMap { name: maps::CONNS })?;
        Ok(count_keys(&HashMap::<_, FlowKey, ConnEntry>::try_from(map).map_err(map_err(maps::CONNS))?))
    }

    pub fn set_real(&mut self, id: u32, real: &Real) -> Result<()> {
        self.array::<Real>(maps::REALS)?.set(id, real, 0).map_err(map_err(maps::REALS))
    }

    /// Adds or updates a VIP. A new VIP gets a new generation of its index (so connection
    /// entries of an earlier VIP at that index no longer count) and its address is counted in
    /// `VIP_ADDRS`; an update keeps the generation, and so its flows.
    pub fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<()> {
        let existing = self.hash::<VipKey, VipMeta>(maps::VIPS)?.get(key, 0).ok();
        let is_new = existing.is_none();
        let generation = match existing {
            Some(old) if old.vip_index == meta.vip_index => old.generation,
            _ => self.bump_generation(meta.vip_index)?,
        };
        let meta = VipMeta { generation, ..*meta };
        let mut vips = self.hash::<VipKey, VipMeta>(maps::VIPS)?;
        vips.insert(key, meta, 0).map_err(map_err(maps::VIPS))?;
        if is_new {
            let mut addrs = self.hash::<[u8; 16], u32>(maps::VIP_ADDRS)?;
            let count = addrs.get(&key.addr, 0).unwrap_or(0);
            addrs.insert(key.addr, count + 1, 0).map_err(map_err(maps::VIP_ADDRS))?;
            if count == 0 {
                self.bump_filter(&key.addr, 1)?;
            }
        }
        Ok(())
    }

    /// Moves VIP index `index` to a new, nonzero generation and returns it.
    fn bump_generation(&mut self, index: u32) -> Result<u32> {
        let mut generations = self.array::<u32>(maps::VIP_GEN)?;
        let current = generations.get(&index, 0).map_err(map_err(maps::VIP_GEN))?;
        let next = current.wrapping_add(1).max(1);
        generations.set(index, next, 0).map_err(map_err(maps::VIP_GEN))?;
        Ok(next)
    }

    /// Counts an address in (+1) or out (-1) of its `VIP_FILTER` bit, which is set while any
    /// address counts there.
    fn bump_filter(&mut self, addr: &[u8; 16], delta: i32) -> Result<()> {
        let bit = lb_common::hash::addr_filter_bit(addr);
        let count = self.filter.entry(bit).or_default();
        let was_set = *count > 0;
        *count = count.saturating_add_signed(delta);
        if was_set != (*count > 0) {
            self.write_filter_word(bit / 64)?;
        }
        Ok(())
    }

    /// Whether `addr`'s pre-filter bit is set in the map (tests and debugging).
    pub fn vip_filter_bit(&self, addr: IpAddr) -> Result<bool> {
        let bit = lb_common::hash::addr_filter_bit(&addr16(addr));
        let map = self.ebpf.map(maps::VIP_FILTER).ok_or(DataplaneError::NoMap { name: maps::VIP_FILTER })?;
        let filter = Array::<_, u64>::try_from(map).map_err(map_err(maps::VIP_FILTER))?;
        Ok(filter.get(&(bit / 64), 0).map_err(map_err(maps::VIP_FILTER))? & (1 << (bit % 64)) != 0)
    }

    /// Writes one `VIP_FILTER` element from the counts.
    fn write_filter_word(&mut self, word: u32) -> Result<()> {
        let bits = (0..64).filter(|b| self.filter.get(&(word * 64 + b)).is_some_and(|&n| n > 0)).fold(0u64, |w, b| w | 1 << b);
        self.array::<u64>(maps::VIP_FILTER)?.set(word, bits, 0).map_err(map_err(maps::VIP_FILTER))
    }

    /// Counts what the maps hold (VIP addresses, the handoff address) into the filter and
    /// writes it whole: after a restart the counts are not known, and the filter is derived data.
    fn rebuild_filter(&mut self) -> Result<()> {
        let map = self.ebpf.map(maps::VIP_ADDRS).ok_or(DataplaneError::NoMap { name: maps::VIP_ADDRS })?;
        let addrs = HashMap::<_, [u8; 16], u32>::try_from(map).map_err(map_err(maps::VIP_ADDRS))?;
        let mut counted: Vec<[u8; 16]> = addrs.keys().collect::<std::result::Result<_, _>>().map_err(map_err(maps::VIP_ADDRS))?;
        let node = self.handoff()?.node_addr;
        if node != [0; 16] {
            counted.push(node);
        }
        self.filter.clear();
        for addr in &counted {
            *self.filter.entry(lb_common::hash::addr_filter_bit(addr)).or_default() += 1;
        }
        for word in 0..lb_common::VIP_FILTER_BITS / 64 {
            self.write_filter_word(word)?;
        }
        Ok(())
    }

    /// Removes a VIP; its address leaves `VIP_ADDRS` with its last VIP.
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        let mut vips = self.hash::<VipKey, VipMeta>(maps::VIPS)?;
        let Ok(old) = vips.get(key, 0) else { return Ok(()) };
        vips.remove(key).map_err(map_err(maps::VIPS))?;
        self.bump_generation(old.vip_index)?; // its connection entries stop counting
        let mut addrs = self.hash::<[u8; 16], u32>(maps::VIP_ADDRS)?;
        match addrs.get(&key.addr, 0).unwrap_or(0) {
            0 | 1 => {
                addrs.remove(&key.addr).map_err(map_err(maps::VIP_ADDRS))?;
                self.bump_filter(&key.addr, -1)
            }
            n => addrs.insert(key.addr, n - 1, 0).map_err(map_err(maps::VIP_ADDRS)),
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
        let mut maglev = self.array::<lb_common::SlotPair>(maps::MAGLEV)?;
        for (slot, real_id) in slots {
            let at = check(slot)?;
            let mut pair = maglev.get(&(at / 2), 0).map_err(map_err(maps::MAGLEV))?;
            pair[(at % 2) as usize] = real_id;
            maglev.set(at / 2, pair, 0).map_err(map_err(maps::MAGLEV))?;
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
        let maglev = Array::<_, lb_common::SlotPair>::try_from(map).map_err(map_err(maps::MAGLEV))?;
        Ok(maglev.get(&(at / 2), 0).map_err(map_err(maps::MAGLEV))?[(at % 2) as usize])
    }

    /// Whether ring writes go through the memory mapping.
    pub fn rings_mapped(&self) -> bool {
        self.rings.is_some()
    }

    /// Writes a whole ring at pool slot `base`.
    pub fn write_ring(&mut self, base: u32, table: &[u32]) -> Result<()> {
        if table.len() > MAX_RING_SIZE as usize {
            return Err(DataplaneError::RingOutOfRange { base, slots: table.len(), pool: self.ring_slots });
        }
        self.write_ring_slots(base, table.iter().enumerate().map(|(slot, &id)| (slot as u32, id)))
    }

    /// The real id the connection table holds for `flow`, if any.
    pub fn conn_real(&self, flow: &FlowKey) -> Result<Option<u32>> {
        let map = self.ebpf.map(maps::CONNS).ok_or(DataplaneError::NoMap { name: maps::CONNS })?;
        let conns = HashMap::<_, FlowKey, ConnEntry>::try_from(map).map_err(map_err(maps::CONNS))?;
        Ok(found(maps::CONNS, conns.get(flow, 0))?.map(|entry| entry.real_id))
    }

    pub fn add_decap_addr(&mut self, addr: IpAddr) -> Result<()> {
        self.hash::<[u8; 16], u32>(maps::DECAP_ADDRS)?.insert(addr16(addr), 1, 0).map_err(map_err(maps::DECAP_ADDRS))
    }

    /// Programs cross-site handoff (`lb_common::Handoff`): this node's address (`None`: off), the
    /// peers to hand to (at most `MAX_PEERS`), every configured peer (the sources handoffs are
    /// taken from), and whether to adopt unknown handed-off flows. The node address is counted
    /// in `VIP_FILTER`, so tunnels to it reach the full parse.
    pub fn set_handoff(&mut self, node: Option<IpAddr>, peers: &[IpAddr], sources: &[IpAddr], adopt: bool) -> Result<()> {
        self.set_peer_sources(sources)?;
        let old = self.handoff()?;
        let node_addr = node.map(addr16).unwrap_or_default();
        if old.node_addr != node_addr {
            if old.node_addr != [0; 16] {
                self.bump_filter(&old.node_addr, -1)?;
            }
            if node.is_some() {
                self.bump_filter(&node_addr, 1)?;
            }
        }
        let peers = &peers[..peers.len().min(MAX_PEERS as usize)];
        let count = peers.len() as u32;
        let flags = if node.is_some_and(|a| a.is_ipv6()) { HANDOFF_F_IPV6 } else { 0 } | if adopt { HANDOFF_F_ADOPT } else { 0 };
        // The live count never covers an entry being rewritten (a 16-byte value is not written
        // atomically): first shrink it to the entries that stay, then write the rest.
        let list = self.array::<[u8; 16]>(maps::PEERS)?;
        let mut same = 0;
        while same < count.min(old.peers) && list.get(&same, 0).map_err(map_err(maps::PEERS))? == addr16(peers[same as usize]) {
            same += 1;
        }
        let mut handoff = self.array::<Handoff>(maps::HANDOFF)?;
        handoff.set(0, Handoff { peers: same, ..old }, 0).map_err(map_err(maps::HANDOFF))?;
        let mut list = self.array::<[u8; 16]>(maps::PEERS)?;
        for (i, peer) in peers.iter().enumerate().skip(same as usize) {
            list.set(i as u32, addr16(*peer), 0).map_err(map_err(maps::PEERS))?;
        }
        let mut handoff = self.array::<Handoff>(maps::HANDOFF)?;
        handoff.set(0, Handoff { node_addr, flags, peers: count }, 0).map_err(map_err(maps::HANDOFF))
    }

    /// `DECAP_ADDRS` to exactly `addrs` (at most `MAX_DECAP_ADDRS`); returns the addresses it
    /// removed (left by an earlier config).
    pub fn set_decap_addrs(&mut self, addrs: &[IpAddr]) -> Result<Vec<IpAddr>> {
        let removed = self.set_address_set::<u32>(maps::DECAP_ADDRS, addrs, 1)?;
        Ok(removed.into_iter().map(ip_of).collect())
    }

    /// `PEER_SOURCES` to exactly `sources` (at most `MAX_PEERS`).
    fn set_peer_sources(&mut self, sources: &[IpAddr]) -> Result<()> {
        self.set_address_set::<u8>(maps::PEER_SOURCES, &sources[..sources.len().min(MAX_PEERS as usize)], 1).map(drop)
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

    pub fn handoff(&self) -> Result<Handoff> {
        let map = self.ebpf.map(maps::HANDOFF).ok_or(DataplaneError::NoMap { name: maps::HANDOFF })?;
        let array = Array::<_, Handoff>::try_from(map).map_err(map_err(maps::HANDOFF))?;
        array.get(&0, 0).map_err(map_err(maps::HANDOFF))
    }

    /// Global counters, summed over CPUs.
    pub fn counters(&self) -> Result<StdHashMap<&'static str, u64>> {
        counters_of(&self.ebpf)
    }

    pub fn counter(&self, c: Counter) -> Result<u64> {
        counter_sum_of(&self.ebpf, maps::STATS, c as u32)
    }

    pub fn decap_counter(&self, c: DecapCounter) -> Result<u64> {
        counter_sum_of(&self.ebpf, maps::DECAP_STATS, c as u32)
    }

    pub fn vip_stats(&self, vip_index: u32) -> Result<VipStats> {
        let per_cpu = self.per_cpu::<VipStats>(maps::VIP_STATS)?;
        let values = per_cpu.get(&vip_index, 0).map_err(map_err(maps::VIP_STATS))?;
        Ok(values.iter().fold(VipStats::default(), |a, s| VipStats {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
            new_flows: a.new_flows + s.new_flows,
            conn_hits: a.conn_hits + s.conn_hits,
            conn_misses: a.conn_misses + s.conn_misses,
        }))
    }

    pub fn real_stats(&self, real_id: u32) -> Result<RealStats> {
        let per_cpu = self.per_cpu::<RealStats>(maps::REAL_STATS)?;
        let values = per_cpu.get(&real_id, 0).map_err(map_err(maps::REAL_STATS))?;
        Ok(values.iter().fold(RealStats::default(), |a, s| RealStats { packets: a.packets + s.packets, bytes: a.bytes + s.bytes }))
    }

    /// Every VIP's counters (indexed by VIP index), summed over CPUs, in one syscall.
    pub fn all_vip_stats(&self) -> Result<Vec<VipStats>> {
        all_vip_stats_of(&self.ebpf)
    }

    /// Every real's counters (indexed by real id), summed over CPUs, in one syscall.
    pub fn all_real_stats(&self) -> Result<Vec<RealStats>> {
        all_real_stats_of(&self.ebpf)
    }

    /// Names of the maps in the loaded object.
    pub fn map_names(&self) -> Vec<String> {
        self.ebpf.maps().map(|(name, _)| name.to_owned()).collect()
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_coarse_ns` (which lags it by a tick at most).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Where the counter readers find maps: the loaded object, or handles opened from the pins.
pub trait MapLookup {
    fn lookup(&self, name: &'static str) -> Option<&aya::maps::Map>;
}

impl MapLookup for aya::Ebpf {
    fn lookup(&self, name: &'static str) -> Option<&aya::maps::Map> {
        self.map(name)
    }
}

/// Read-only handles on the counter maps, opened from an instance's pins: the metrics endpoint
/// reads counters through them, off the loop that owns the data plane.
pub struct Counters {
    maps: StdHashMap<&'static str, aya::maps::Map>,
}

impl MapLookup for Counters {
    fn lookup(&self, name: &'static str) -> Option<&aya::maps::Map> {
        self.maps.get(name)
    }
}

impl Counters {
    /// Opens the counter maps pinned under `pin_dir` (as `Dataplane::load_pinned` pins them).
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let mut maps = StdHashMap::new();
        for name in [maps::STATS, maps::VIP_STATS, maps::REAL_STATS, maps::LIMIT_STATE] {
            let path = pin_dir.join("maps").join(name);
            let data = MapData::from_pin(&path).map_err(map_err(name))?;
            maps.insert(name, aya::maps::Map::PerCpuArray(data));
        }
        Ok(Self { maps })
    }

    pub fn counters(&self) -> Result<StdHashMap<&'static str, u64>> {
        counters_of(self)
    }

    pub fn limit_refused_within(&self, limit: u32, window: std::time::Duration) -> Result<bool> {
        limit_refused_within_of(self, limit, window)
    }

    pub fn all_vip_stats(&self) -> Result<Vec<VipStats>> {
        all_vip_stats_of(self)
    }

    pub fn all_real_stats(&self) -> Result<Vec<RealStats>> {
        all_real_stats_of(self)
    }
}

fn per_cpu_of<'a, T: aya::Pod>(maps_of: &'a impl MapLookup, name: &'static str) -> Result<PerCpuArray<&'a MapData, T>> {
    let map = maps_of.lookup(name).ok_or(DataplaneError::NoMap { name })?;
    PerCpuArray::try_from(map).map_err(map_err(name))
}

/// Entry `index` of per-CPU u64 counter map `name`, summed over CPUs.
fn counter_sum_of(maps_of: &impl MapLookup, name: &'static str, index: u32) -> Result<u64> {
    let stats = per_cpu_of::<u64>(maps_of, name)?;
    Ok(stats.get(&index, 0).map_err(map_err(name))?.iter().sum())
}

fn counters_of(maps_of: &impl MapLookup) -> Result<StdHashMap<&'static str, u64>> {
    Counter::ALL.iter().map(|&c| Ok((c.name(), counter_sum_of(maps_of, maps::STATS, c as u32)?))).collect()
}

fn limit_states_of(maps_of: &impl MapLookup, limit: u32) -> Result<Vec<LimitState>> {
    let per_cpu = per_cpu_of::<LimitState>(maps_of, maps::LIMIT_STATE)?;
    Ok(per_cpu.get(&limit, 0).map_err(map_err(maps::LIMIT_STATE))?.iter().copied().collect())
}

fn limit_refused_within_of(maps_of: &impl MapLookup, limit: u32, window: std::time::Duration) -> Result<bool> {
    let now = monotonic_ns();
    Ok(limit_states_of(maps_of, limit)?
        .iter()
        .any(|s| s.last_refused != 0 && now.saturating_sub(s.last_refused) < window.as_nanos() as u64))
}

fn all_vip_stats_of(maps_of: &impl MapLookup) -> Result<Vec<VipStats>> {
    per_cpu_totals(maps_of, maps::VIP_STATS, |a: VipStats, s: &VipStats| VipStats {
        packets: a.packets + s.packets,
        bytes: a.bytes + s.bytes,
        new_flows: a.new_flows + s.new_flows,
        conn_hits: a.conn_hits + s.conn_hits,
        conn_misses: a.conn_misses + s.conn_misses,
    })
}

fn all_real_stats_of(maps_of: &impl MapLookup) -> Result<Vec<RealStats>> {
    per_cpu_totals(maps_of, maps::REAL_STATS, |a: RealStats, s: &RealStats| RealStats {
        packets: a.packets + s.packets,
        bytes: a.bytes + s.bytes,
    })
}

/// Every entry of the per-CPU array `name`, its CPUs' values folded by `add`, read with one
/// BPF_MAP_LOOKUP_BATCH (aya has no batch call): one lookup per entry took 60 ms for the
/// 65,537 reals' counters.
fn per_cpu_totals<T: aya::Pod + Default>(maps_of: &impl MapLookup, name: &'static str, add: impl Fn(T, &T) -> T) -> Result<Vec<T>> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    let batch_err = |source| DataplaneError::Batch { name, source };
    let map = maps_of.lookup(name).ok_or(DataplaneError::NoMap { name })?;
    let aya::maps::Map::PerCpuArray(data) = map else { return Err(DataplaneError::NoMap { name }) };
    let entries = data.info().map_err(map_err(name))?.max_entries() as usize;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| batch_err(e))?;
    // The kernel lays each entry out as one value per possible CPU, each rounded up to 8 bytes.
    let stride = std::mem::size_of::<T>().next_multiple_of(8);
    let mut keys = vec![0u32; entries];
    let mut values = vec![0u8; entries * cpus * stride];
    let mut out_batch = 0u32;
    let mut attr = BatchAttr {
        out_batch: (&mut out_batch as *mut u32) as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: entries as u32,
        map_fd: data.fd().as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: the attr points at buffers sized for `entries` keys and values, which live
    // until the call returns.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &mut attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>()) };
    let err = std::io::Error::last_os_error();
    // ENOENT: the whole array was read (the batch ran to its end).
    if rc != 0 && err.raw_os_error() != Some(libc::ENOENT) {
        return Err(batch_err(err));
    }
    let mut totals = vec![T::default(); entries];
    for (i, &key) in keys.iter().enumerate().take(attr.count as usize) {
        totals[key as usize] = (0..cpus).fold(T::default(), |total, cpu| {
            let at = (i * cpus + cpu) * stride;
            // SAFETY: `at + size_of::<T>()` is inside `values`; T is plain data.
            let v: T = unsafe { std::ptr::read_unaligned(values[at..].as_ptr().cast()) };
            add(total, &v)
        });
    }
    Ok(totals)
}

/// Handles on the maps that decide where a flow goes, opened from an instance's pins: `lb flow`
/// reads them and `lb flows` walks (and purges) the connection table, on the API's blocking
/// threads, never on the loop that owns the data plane.
pub struct LiveMaps {
    vips: HashMap<MapData, VipKey, VipMeta>,
    maglev: Array<MapData, lb_common::SlotPair>,
    reals: Array<MapData, Real>,
    vip_gen: Array<MapData, u32>,
    conns: HashMap<MapData, FlowKey, ConnEntry>,
    handoff: Array<MapData, Handoff>,
    peers: Array<MapData, [u8; 16]>,
}

/// Keys of a connection table, counted by walking them (a key evicted mid-walk ends nothing).
fn count_keys<T: std::borrow::Borrow<MapData>>(conns: &HashMap<T, FlowKey, ConnEntry>) -> usize {
    conns.keys().filter(|k| k.is_ok()).count()
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

/// A lookup's value, None for a key the map does not hold.
fn found<V>(name: &'static str, got: Result<V, aya::maps::MapError>) -> Result<Option<V>> {
    match got {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(source) => Err(DataplaneError::Map { name, source }),
    }
}

impl LiveMaps {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        use aya::maps::Map;
        Ok(Self {
            vips: open_pinned(pin_dir, maps::VIPS, Map::HashMap)?,
            maglev: open_pinned(pin_dir, maps::MAGLEV, Map::Array)?,
            reals: open_pinned(pin_dir, maps::REALS, Map::Array)?,
            vip_gen: open_pinned(pin_dir, maps::VIP_GEN, Map::Array)?,
            conns: open_pinned(pin_dir, maps::CONNS, Map::LruHashMap)?,
            handoff: open_pinned(pin_dir, maps::HANDOFF, Map::Array)?,
            peers: open_pinned(pin_dir, maps::PEERS, Map::Array)?,
        })
    }

    pub fn vip(&self, key: &VipKey) -> Result<Option<VipMeta>> {
        found(maps::VIPS, self.vips.get(key, 0))
    }

    /// The real id in slot `slot` of the slot pool.
    pub fn ring_slot(&self, slot: u32) -> Result<u32> {
        Ok(self.maglev.get(&(slot / 2), 0).map_err(map_err(maps::MAGLEV))?[(slot % 2) as usize])
    }

    pub fn real(&self, id: u32) -> Result<Option<Real>> {
        found(maps::REALS, self.reals.get(&id, 0))
    }

    pub fn vip_generation(&self, vip_index: u32) -> Result<Option<u32>> {
        found(maps::VIP_GEN, self.vip_gen.get(&vip_index, 0))
    }

    pub fn conn(&self, flow: &FlowKey) -> Result<Option<ConnEntry>> {
        found(maps::CONNS, self.conns.get(flow, 0))
    }

    pub fn handoff(&self) -> Result<Handoff> {
        self.handoff.get(&0, 0).map_err(map_err(maps::HANDOFF))
    }

    pub fn peer(&self, i: u32) -> Result<[u8; 16]> {
        self.peers.get(&i, 0).map_err(map_err(maps::PEERS))
    }

    /// Walks the connection table (two syscalls an entry: a key, then its value) until `visit`
    /// returns false. Entries the data plane adds or evicts meanwhile may be seen or not.
    pub fn walk_conns(&self, mut visit: impl FnMut(&FlowKey, &ConnEntry) -> bool) -> Result<usize> {
        let mut seen = 0;
        for item in self.conns.iter() {
            let (key, entry) = match item {
                Ok(kv) => kv,
                // Evicted between its key and its value.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(source) => return Err(DataplaneError::Map { name: maps::CONNS, source }),
            };
            seen += 1;
            if !visit(&key, &entry) {
                break;
            }
        }
        Ok(seen)
    }

    /// Entries in the connection table (walks its keys only: one syscall an entry).
    pub fn conn_entries(&self) -> usize {
        count_keys(&self.conns)
    }

    /// Deletes these connection entries; returns how many were still there.
    pub fn remove_conns(&mut self, keys: &[FlowKey]) -> Result<usize> {
        let mut removed = 0;
        for key in keys {
            match self.conns.remove(key) {
                Ok(()) => removed += 1,
                // Evicted since the walk (aya reports a delete's ENOENT as a syscall error).
                Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => return Err(DataplaneError::Map { name: maps::CONNS, source }),
            }
        }
        Ok(removed)
    }
}

/// The capture maps of an instance, opened from its pins (`lb capture`).
pub struct CaptureMaps {
    ctl: Array<MapData, CaptureCtl>,
    state: PerCpuArray<MapData, CaptureState>,
    perf: aya::maps::PerfEventArray<MapData>,
}

/// A CPU's perf buffer of captured packets.
pub type CaptureBuffer = aya::maps::perf::PerfEventArrayBuffer<MapData>;

impl CaptureMaps {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        use aya::maps::Map;
        Ok(Self {
            ctl: open_pinned(pin_dir, maps::CAPTURE_CTL, Map::Array)?,
            state: open_pinned(pin_dir, maps::CAPTURE_STATE, Map::PerCpuArray)?,
            perf: open_pinned(pin_dir, maps::CAPTURE, Map::PerfEventArray)?,
        })
    }

    pub fn ctl(&self) -> Result<CaptureCtl> {
        self.ctl.get(&0, 0).map_err(map_err(maps::CAPTURE_CTL))
    }

    pub fn set_ctl(&mut self, ctl: &CaptureCtl) -> Result<()> {
        self.ctl.set(0, ctl, 0).map_err(map_err(maps::CAPTURE_CTL))
    }

    /// (sent, suppressed) summed over the CPUs.
    pub fn totals(&self) -> Result<(u64, u64)> {
        let per_cpu = self.state.get(&0, 0).map_err(map_err(maps::CAPTURE_STATE))?;
        Ok(per_cpu.iter().fold((0, 0), |(sent, suppressed), s| (sent + s.sent, suppressed + s.suppressed)))
    }

    /// Opens a perf buffer of `pages` pages for each online CPU (the program writes to its
    /// CPU's). Closing them takes them out of the map again.
    pub fn open_buffers(&mut self, pages: usize) -> Result<Vec<CaptureBuffer>> {
        let cpus = aya::util::online_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        cpus.into_iter().map(|cpu| self.perf.open(cpu, Some(pages)).map_err(DataplaneError::PerfBuffer)).collect()
    }
}
