//! The one place that touches packet memory: every read and write goes through a bounds check
//! against `data_end`, in the form the verifier proves (`start + off + size <= end`).
//!
//! Accesses are at least two bytes wide: for one byte LLVM rewrites `p + 1 > end` as `p >= end`,
//! from which the verifier learns no range when `p` has a variable offset (kernel
//! `find_good_pkt_pointers` ignores right-open compares at offset 0), and rejects the access.

use core::mem;

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};

/// Frame length in bytes.
#[inline(always)]
pub fn len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// A pointer to a `T` at `off`, or `None` when the frame is too short to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    ptr_at_mut(ctx, off).map(|p| p as *const T)
}

#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    const { assert!(mem::size_of::<T>() >= 2, "packet accesses are at least 2 bytes (see module doc)") };
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + off + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Copies a `T` out of the packet (packet data has no alignment promise).
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    ptr_at::<T>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

/// Writes a `T` into the packet.
#[inline(always)]
pub fn write<T>(ctx: &XdpContext, off: usize, value: T) -> Option<()> {
    ptr_at_mut::<T>(ctx, off).map(|p| unsafe { p.write_unaligned(value) })
}

/// Grows (negative `delta`) or shrinks the front of the frame. Every pointer taken before this is
/// stale: callers take new ones through `ptr_at`, which reloads `data` / `data_end`.
#[inline(always)]
pub fn adjust_head(ctx: &XdpContext, delta: i32) -> Option<()> {
    (unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } == 0).then_some(())
}
