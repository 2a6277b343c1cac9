//! `lb capture`: copies packets of the kinds it watches (`lb_common::capture`) into the `CAPTURE`
//! perf buffer, each behind a `CaptureMeta`; the kernel appends the packet's first bytes itself
//! (the length goes in the helper's flags), so nothing is copied here.
//!
//! Off, a hook is one array read and a test, inlined where it sits; the copy is a subprogram.
//! No hook sits on the path of a known flow.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use lb_common::{capture::SNAPLEN, CaptureMeta};

use crate::{
    limit,
    maps::{CAPTURE, CAPTURE_CTL, CAPTURE_STATE},
    pkt,
    step::Step,
};

/// Offers the packet in `ctx` as a `what` (one `capture::*` bit) with `reason`.
#[inline(always)]
pub fn offer(ctx: &XdpContext, what: u32, reason: u32) {
    if CAPTURE_CTL.get(0).is_some_and(|c| c.what & what != 0) {
        let _ = copy(ctx, what, reason);
    }
}

#[inline(never)] // only while a capture runs, in its own stack frame
fn copy(ctx: &XdpContext, what: u32, reason: u32) -> Step {
    let (Some(ctl), Some(state)) = (CAPTURE_CTL.get(0), CAPTURE_STATE.get_ptr_mut(0)) else { return Step::of(Ok(0)) };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now > ctl.until_ns {
        return Step::of(Ok(0)); // the lease ran out: `lb capture` is gone
    }
    // SAFETY: this CPU's entry, which nothing else uses before this program ends.
    let state = unsafe { &mut *state };
    if !limit::allow_at(&ctl.rate, &mut state.limit, now) {
        state.suppressed += 1;
        return Step::of(Ok(0));
    }
    let packet_len = pkt::len(ctx) as u32;
    let captured_len = packet_len.min(SNAPLEN);
    let meta = CaptureMeta { what, reason, packet_len, captured_len, time_ns: now };
    CAPTURE.output(ctx, meta, captured_len);
    state.sent += 1;
    Step::of(Ok(0))
}
