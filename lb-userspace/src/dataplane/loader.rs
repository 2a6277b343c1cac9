//! Loading the eBPF object (pinned, so a restart or upgrade keeps the maps), attaching its
//! programs (through pinned links), and reading what an earlier `lb` programmed.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::{
    maps::{Array, HashMap, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use lb_common::{
    maps, PrevRing, Real, VipKey, VipMeta, DEFAULT_CONN_TABLE_SIZE, MAX_REALS, MAX_RING_SIZE, MAX_VIPS, SLOTS_PER_ELEMENT, VIP_FILTER_BITS,
};

use super::{
    error::{map_err, DataplaneError, Result},
    ring_memory::RingMemory,
};
use crate::{config::AttachMode, LB_EBPF};

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

/// What an earlier `lb` left in the maps: the reconciler starts from it after a restart.
#[derive(Debug, Default)]
pub struct Programmed {
    pub vips: Vec<(VipKey, VipMeta)>,
    /// Reals with an address.
    pub reals: Vec<(u32, Real)>,
    /// `VIP_GEN`'s nonzero entries (VIP index, generation).
    pub generations: Vec<(u32, u32)>,
    /// `VIP_ADDRS`: each VIP address with its count of VIPs.
    pub vip_addrs: Vec<([u8; 16], u32)>,
    /// `VIP_FILTER`'s nonzero words.
    pub filter: Vec<(u32, u64)>,
    /// The handoff address the pre-filter counts (zeroes: none).
    pub handoff_node: [u8; 16],
    /// `VIP_PREV`'s nonzero entries (VIP index, previous ring).
    pub prev_rings: Vec<(u32, PrevRing)>,
    /// `QUIC_LB`'s entries that are on, and `QUIC_SERVERS`.
    pub quic_params: Vec<(u32, lb_common::quic_lb::QuicLbParams)>,
    pub quic_servers: Vec<(lb_common::quic_lb::ServerIdKey, u32)>,
}

/// The loaded object and typed access to its maps.
pub struct Dataplane {
    pub(super) ebpf: Ebpf,
    /// `None` if the map could not be mapped: slots are then written with syscalls.
    pub(super) rings: Option<RingMemory>,
    /// Slots in the `MAGLEV` pool.
    pub(super) ring_slots: u32,
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
        Ok(Self { ebpf, rings, ring_slots })
    }

    /// Slots of the Maglev ring pool.
    pub fn ring_slots(&self) -> u32 {
        self.ring_slots
    }

    /// Loads the object with every map pinned under `pin_dir/maps/`: maps already pinned there
    /// (by an earlier `lb run` of this instance) are reused with their contents, so a restart or
    /// upgrade keeps the connection table and the rings.
    pub fn load_pinned(opts: &LoadOptions, pin_dir: &Path) -> Result<Self> {
        let maps_dir = super::pins::maps_dir(pin_dir);
        for dir in [pin_dir, &maps_dir] {
            super::pins::secure_dir(dir)?;
        }
        // aya would silently reuse a pinned map of any layout.
        for (name, why) in super::layout::prepare(&maps_dir, LB_EBPF)? {
            tracing::warn!(map = name, %why, "pinned map of another layout recreated (its counters or config start afresh)");
        }
        let conns = super::pins::map(pin_dir, maps::CONNS);
        if conns.exists() {
            let pinned = aya::maps::MapInfo::from_pin(&conns).map_err(map_err(maps::CONNS))?.max_entries();
            if pinned != opts.conn_table_size {
                return Err(DataplaneError::PinnedSizeMismatch { path: conns, pinned, wanted: opts.conn_table_size });
            }
        }
        let earlier_rings = Self::pinned_rings(&super::pins::map(pin_dir, maps::MAGLEV), opts.ring_slots)?;
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(maps::CONNS, opts.conn_table_size);
        // A pinned pool at least this large is reused as it is.
        loader.map_max_entries(maps::MAGLEV, ring_elements(opts.ring_slots));
        for name in maps::ALL {
            loader.map_pin_path(name, super::pins::map(pin_dir, name));
        }
        let ebpf = loader.load(LB_EBPF).map_err(DataplaneError::Load)?;
        let mut dp = Self::new(ebpf)?;
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

    /// The pinned ring pool, if there is one. One at least `wanted` slots large is reused (with
    /// `None` returned); a smaller one is mapped and unpinned, so the loader makes a larger one
    /// into which `load_pinned` copies it. (Should lb die in between, the next start finds the
    /// larger pool empty, and the rings are rewritten by the first apply after the attach.)
    fn pinned_rings(path: &Path, wanted: u32) -> Result<Option<RingMemory>> {
        if !path.exists() {
            return Ok(None);
        }
        let data = MapData::from_pin(path).map_err(map_err(maps::MAGLEV))?;
        // Its value layout was checked with every pin's (`layout::prepare`, before this).
        let info = data.info().map_err(map_err(maps::MAGLEV))?;
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
        Ok(Programmed {
            vips: self.hash_entries(maps::VIPS)?,
            // A real never written, or whose write was undone, is all zeroes (id 0 is never used).
            reals: self.array_entries::<Real>(maps::REALS, MAX_REALS)?,
            generations: self.array_entries(maps::VIP_GEN, MAX_VIPS)?,
            vip_addrs: self.hash_entries(maps::VIP_ADDRS)?,
            filter: self.array_entries(maps::VIP_FILTER, VIP_FILTER_BITS / 64)?,
            handoff_node: self.handoff()?.node_addr,
            prev_rings: self.array_entries(maps::VIP_PREV, MAX_VIPS)?,
            quic_params: self.array_entries(maps::QUIC_LB, MAX_VIPS)?,
            quic_servers: self.hash_entries(maps::QUIC_SERVERS)?,
        })
    }

    /// Every entry of the hash map `name`.
    fn hash_entries<K: aya::Pod, V: aya::Pod>(&self, name: &'static str) -> Result<Vec<(K, V)>> {
        let map = self.ebpf.map(name).ok_or(DataplaneError::NoMap { name })?;
        let hash = HashMap::<_, K, V>::try_from(map).map_err(map_err(name))?;
        hash.iter().collect::<std::result::Result<_, _>>().map_err(map_err(name))
    }

    /// The nonzero entries among the first `len` of the array `name`.
    fn array_entries<T: aya::Pod + Default + PartialEq>(&self, name: &'static str, len: u32) -> Result<Vec<(u32, T)>> {
        let map = self.ebpf.map(name).ok_or(DataplaneError::NoMap { name })?;
        let array = Array::<_, T>::try_from(map).map_err(map_err(name))?;
        let mut entries = Vec::new();
        for i in 0..len {
            let value = array.get(&i, 0).map_err(map_err(name))?;
            if value != T::default() {
                entries.push((i, value));
            }
        }
        Ok(entries)
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

    /// Names of the maps in the loaded object.
    pub fn map_names(&self) -> Vec<String> {
        self.ebpf.maps().map(|(name, _)| name.to_owned()).collect()
    }
}
