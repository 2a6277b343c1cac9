//! Per-CPU counters: no atomics needed, userspace sums the CPUs.

use aya_ebpf::maps::PerCpuArray;
use lb_common::{stats::Counter, VipStats};

use crate::maps::{REAL_STATS, STATS, VIP_STATS};

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(p) = map.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU map, valid for the program's run; nothing else
        // on this CPU runs meanwhile.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn count(c: Counter) {
    bump(&STATS, c as u32);
}

#[inline(always)]
pub fn count_decap(c: lb_common::stats::DecapCounter) {
    bump(&crate::maps::DECAP_STATS, c as u32);
}

/// Per-VIP traffic; `hit`: the connection table knew the flow; `new_flow`: an entry was made.
#[inline(always)]
pub fn count_vip(vip_index: u32, bytes: u64, hit: bool, new_flow: bool) {
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_index) {
        // SAFETY: this CPU's entry of a per-CPU map, valid and unshared for the program's run.
        let s: &mut VipStats = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes;
        if hit {
            s.conn_hits += 1;
        } else {
            s.conn_misses += 1;
        }
        if new_flow {
            s.new_flows += 1;
        }
    }
}

#[inline(always)]
pub fn count_real(real_id: u32, bytes: u64) {
    if let Some(s) = REAL_STATS.get_ptr_mut(real_id) {
        // SAFETY: this CPU's entry of a per-CPU map, valid and unshared for the program's run.
        let s = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes;
    }
}
