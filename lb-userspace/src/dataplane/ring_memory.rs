//! The Maglev slot pool (`MAGLEV`, BPF_F_MMAPABLE) mapped into this process.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{maps::MapData, Ebpf};
use lb_common::{maps, SLOTS_PER_ELEMENT};

/// The `MAGLEV` array mapped into this process (the map is BPF_F_MMAPABLE): a ring is rewritten
/// with memory stores, which the program sees at once, instead of one syscall per slot. Each
/// 8-byte element holds two slots (the kernel stores array values 8 bytes apart), so the mapping
/// is simply the pool's slots as consecutive u32s.
pub(super) struct RingMemory {
    slots: *mut std::sync::atomic::AtomicU32,
    pub(super) len: usize,
    bytes: usize,
}

// SAFETY: the mapping is owned by this value and written only through `&mut self` (so through
// `&mut Dataplane`); through a shared reference it is only read, with atomic loads.
unsafe impl Send for RingMemory {}
// SAFETY: as for Send.
unsafe impl Sync for RingMemory {}

impl RingMemory {
    pub(super) fn map(data: &MapData) -> Option<Self> {
        let elements = data.info().ok()?.max_entries() as usize;
        let len = elements * SLOTS_PER_ELEMENT as usize;
        let page = 4096;
        let bytes = (len * 4).div_ceil(page) * page;
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a shared read-write mapping of the map's values, of the map's size.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
        (ptr != libc::MAP_FAILED).then(|| Self { slots: ptr.cast(), len, bytes })
    }

    pub(super) fn of(ebpf: &Ebpf) -> Option<Self> {
        let aya::maps::Map::Array(data) = ebpf.map(maps::MAGLEV)? else { return None };
        Self::map(data)
    }

    pub(super) fn store(&mut self, slot: usize, real_id: u32) {
        assert!(slot < self.len, "ring slot {slot} beyond the map");
        // SAFETY: in bounds; u32 slots are 4-byte aligned in the page-aligned mapping, and an
        // atomic store means the program never reads a torn value.
        unsafe { (*self.slots.add(slot)).store(real_id, std::sync::atomic::Ordering::Relaxed) };
    }

    pub(super) fn load(&self, slot: usize) -> u32 {
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
