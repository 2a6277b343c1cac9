//! Per-CPU rate limits (`lb_common::limits`), GCRA: one timestamp per limit and CPU, and when it
//! last refused (the control plane shows a flood from that).

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

use lb_common::{LimitState, RateLimit};

use crate::maps::{LIMIT_STATE, RATE_LIMITS};

/// Whether one more event of `limit` fits on this CPU now (and if so, counts it).
#[inline(always)]
pub fn allow(limit: u32) -> bool {
    let (Some(l), Some(state)) = (RATE_LIMITS.get(limit), LIMIT_STATE.get_ptr_mut(limit)) else { return false };
    // The coarse clock (a tick's resolution, 1-4 ms) reads no hardware timer: about 30 ns less
    // per new flow here than `bpf_ktime_get_ns`, and bursts are 100 ms anyway.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: this CPU's entry, which nothing else uses before this program ends.
    allow_at(l, unsafe { &mut *state }, now)
}

/// Whether one more event fits limit `l` with this CPU's `state` at `now` (and if so, counts it).
#[inline(always)]
pub fn allow_at(l: &RateLimit, state: &mut LimitState, now: u64) -> bool {
    if l.interval_ns == 0 {
        state.last_refused = now;
        return false;
    }
    if state.tat > now.saturating_add(l.burst_ns) {
        state.last_refused = now;
        return false;
    }
    state.tat = state.tat.max(now).saturating_add(l.interval_ns);
    true
}
