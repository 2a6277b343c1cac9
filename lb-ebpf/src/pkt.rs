//! The one place that touches packet memory: every read and write goes through a bounds check
//! against `data_end`, in the form the verifier proves (`start + off + size <= end`).
//!
//! Accesses are at least two bytes wide: for one byte LLVM rewrites `p + 1 > end` as `p >= end`,
//! from which the verifier learns no range when `p` has a variable offset (kernel
//! `find_good_pkt_pointers` ignores right-open compares at offset 0), and rejects the access.
//!
//! Packet data has no alignment promise, and LLVM's BPF target splits every access it cannot
//! prove aligned into single bytes: a 16-byte address cost 16 loads and 15 shifts and ors. The
//! kernel itself loads and stores packet data at any alignment on the architectures XDP runs on
//! (the verifier checks packet alignment only where unaligned access is slow, i.e. without
//! `CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS`, and then refuses the program at load time). So the
//! copies between packet and stack are made of 8-, 4- and 2-byte accesses written as BPF
//! instructions (`asm!`), against an 8-aligned buffer on the stack. (LLVM's
//! `allows-misaligned-mem-access` feature would do the same for the packet but also merges stack
//! stores into misaligned ones, which the verifier always refuses.)

use core::{arch::asm, mem, mem::MaybeUninit};

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

/// Copies a `T` out of the packet.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    let from = ptr_at::<T>(ctx, off)? as *const u8;
    let mut buf = Aligned(MaybeUninit::<T>::uninit());
    let to = buf.0.as_mut_ptr() as *mut u8;
    let mut i = 0;
    // SAFETY: `ptr_at` checked that the `size_of::<T>()` bytes at `from` lie inside the frame, and
    // each access stays inside them; `to` is 8-aligned, so each stack store at offset `i` is
    // aligned to its width (the widths only shrink). All bytes are written before `assume_init`.
    unsafe {
        while i + 8 <= mem::size_of::<T>() {
            (to.add(i) as *mut u64).write(load::<8>(from.add(i)));
            i += 8;
        }
        if i + 4 <= mem::size_of::<T>() {
            (to.add(i) as *mut u32).write(load::<4>(from.add(i)) as u32);
            i += 4;
        }
        if i + 2 <= mem::size_of::<T>() {
            (to.add(i) as *mut u16).write(load::<2>(from.add(i)) as u16);
            i += 2;
        }
        if i < mem::size_of::<T>() {
            *to.add(i) = *from.add(i);
        }
        Some(buf.0.assume_init())
    }
}

/// Writes a `T` into the packet.
#[inline(always)]
pub fn write<T>(ctx: &XdpContext, off: usize, value: T) -> Option<()> {
    let to = ptr_at_mut::<T>(ctx, off)? as *mut u8;
    let buf = Aligned(MaybeUninit::new(value));
    let from = buf.0.as_ptr() as *const u8;
    let mut i = 0;
    // SAFETY: as in `read`, with the roles of packet and stack swapped.
    unsafe {
        while i + 8 <= mem::size_of::<T>() {
            store::<8>(to.add(i), (from.add(i) as *const u64).read());
            i += 8;
        }
        if i + 4 <= mem::size_of::<T>() {
            store::<4>(to.add(i), (from.add(i) as *const u32).read() as u64);
            i += 4;
        }
        if i + 2 <= mem::size_of::<T>() {
            store::<2>(to.add(i), (from.add(i) as *const u16).read() as u64);
            i += 2;
        }
        if i < mem::size_of::<T>() {
            *to.add(i) = *from.add(i);
        }
    }
    Some(())
}

/// A stack copy of a packet value, 8-aligned so it is read and written in whole words.
#[repr(C, align(8))]
struct Aligned<T>(MaybeUninit<T>);

/// Loads `WIDTH` (2, 4 or 8) bytes from packet memory at any alignment, zero-extended.
///
/// # Safety
/// `p` points into the packet, with `WIDTH` bytes there that the verifier knows are in bounds.
#[inline(always)]
unsafe fn load<const WIDTH: usize>(p: *const u8) -> u64 {
    let v: u64;
    // SAFETY: the caller's promise; the instruction only reads those bytes.
    unsafe {
        match WIDTH {
            8 => asm!("{v} = *(u64 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v, options(pure, readonly, nostack, preserves_flags)),
            4 => asm!("{v} = *(u32 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v, options(pure, readonly, nostack, preserves_flags)),
            _ => asm!("{v} = *(u16 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v, options(pure, readonly, nostack, preserves_flags)),
        }
    }
    v
}

/// Stores the low `WIDTH` (2, 4 or 8) bytes of `v` to packet memory at any alignment.
///
/// # Safety
/// As `load`.
#[inline(always)]
unsafe fn store<const WIDTH: usize>(p: *mut u8, v: u64) {
    // SAFETY: the caller's promise; the instruction only writes those bytes.
    unsafe {
        match WIDTH {
            8 => asm!("*(u64 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v, options(nostack, preserves_flags)),
            4 => asm!("*(u32 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v, options(nostack, preserves_flags)),
            _ => asm!("*(u16 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v, options(nostack, preserves_flags)),
        }
    }
}

/// Grows (negative `delta`) or shrinks the front of the frame. Every pointer taken before this is
/// stale: callers take new ones through `ptr_at`, which reloads `data` / `data_end`.
#[inline(always)]
pub fn adjust_head(ctx: &XdpContext, delta: i32) -> Option<()> {
    // SAFETY: the helper takes the program's own context; it checks the delta itself.
    (unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } == 0).then_some(())
}
