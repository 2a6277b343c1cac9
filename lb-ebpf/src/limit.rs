//! Per-CPU rate limits (`lb_common::limits`), GCRA: one timestamp per limit and CPU.

use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::maps::{LIMIT_STATE, RATE_LIMITS};

/// Whether one more event of `limit` fits on this CPU now (and if so, counts it).
#[inline(always)]
pub fn allow(limit: u32) -> bool {
    let (Some(l), Some(tat)) = (RATE_LIMITS.get(limit), LIMIT_STATE.get_ptr_mut(limit)) else { return false };
    if l.interval_ns == 0 {
        return false;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's entry, which nothing else uses before this program ends.
    let tat = unsafe { &mut *tat };
    if *tat > now.saturating_add(l.burst_ns) {
        return false;
    }
    *tat = (*tat).max(now).saturating_add(l.interval_ns);
    true
}
