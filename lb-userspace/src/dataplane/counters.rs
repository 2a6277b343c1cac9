//! Counter readers: the data plane's global, per-VIP and per-real counters and the rate limits'
//! state, summed over CPUs, from the loaded object or from handles opened from the pins (the
//! metrics endpoint reads them off the loop that owns the data plane).

use std::{
    collections::HashMap as StdHashMap,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::maps::{HashMap, MapData, PerCpuArray};
use lb_common::{
    maps,
    stats::{Counter, DecapCounter},
    ConnEntry, FlowKey, LimitState, RealStats, VipStats,
};

use super::{
    error::{map_err, DataplaneError, Result},
    live::count_keys,
    loader::Dataplane,
};

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_coarse_ns` (which lags it by a tick at most).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Dataplane {
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
        let per_cpu = per_cpu_of::<VipStats>(&self.ebpf, maps::VIP_STATS)?;
        Ok(per_cpu.get(&vip_index, 0).map_err(map_err(maps::VIP_STATS))?.iter().fold(VipStats::default(), |a, &s| a + s))
    }

    pub fn real_stats(&self, real_id: u32) -> Result<RealStats> {
        let per_cpu = per_cpu_of::<RealStats>(&self.ebpf, maps::REAL_STATS)?;
        Ok(per_cpu.get(&real_id, 0).map_err(map_err(maps::REAL_STATS))?.iter().fold(RealStats::default(), |a, &s| a + s))
    }

    /// Every VIP's counters (indexed by VIP index), summed over CPUs, in one syscall.
    pub fn all_vip_stats(&self) -> Result<Vec<VipStats>> {
        all_vip_stats_of(&self.ebpf)
    }

    /// Every real's counters (indexed by real id), summed over CPUs, in one syscall.
    pub fn all_real_stats(&self) -> Result<Vec<RealStats>> {
        all_real_stats_of(&self.ebpf)
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
            let path = super::pins::map(pin_dir, name);
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
    per_cpu_totals::<VipStats>(maps_of, maps::VIP_STATS)
}

fn all_real_stats_of(maps_of: &impl MapLookup) -> Result<Vec<RealStats>> {
    per_cpu_totals::<RealStats>(maps_of, maps::REAL_STATS)
}

/// Every entry of the per-CPU array `name`, its CPUs' values summed, read with one
/// BPF_MAP_LOOKUP_BATCH (aya has no batch call): one lookup per entry took 60 ms for the
/// 65,537 reals' counters.
fn per_cpu_totals<T: aya::Pod + Default + std::ops::Add<Output = T>>(maps_of: &impl MapLookup, name: &'static str) -> Result<Vec<T>> {
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
    let info = data.info().map_err(map_err(name))?;
    // The kernel writes values of the pinned map's size: a buffer sized from T must match it.
    let wanted = std::mem::size_of::<T>() as u32;
    if info.value_size() != wanted {
        return Err(DataplaneError::ValueSize { name, pinned: info.value_size(), wanted });
    }
    let entries = info.max_entries() as usize;
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
            total + v
        });
    }
    Ok(totals)
}
