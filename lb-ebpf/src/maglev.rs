//! VIP -> ring -> real: the VIP of a destination, and the real in the slot of a flow's hash in
//! that VIP's live Maglev ring. Which flows are looked up here and which are recorded is the
//! connection tracking's business (`conntrack`).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{slot_place, stats::Counter, Real, VipKey, VipMeta, VIP_F_SECOND_CHANCE};

use crate::maps::{MAGLEV, REALS, VIPS, VIP_PREV};

/// The VIP for (address, port, protocol), falling back to the address's any-port VIP.
// `&key`, not `key`: moved by value into aya's generic `get`, the key took stack the balancer's
// frame does not have (the verifier refused 528 bytes over a call chain).
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
pub fn vip(addr: &[u8; 16], port_be: [u8; 2], proto: u8) -> Option<&'static VipMeta> {
    let mut key = VipKey { addr: *addr, port_be: u16::from_ne_bytes(port_be), proto, _pad: 0 };
    // SAFETY: VIPS values are replaced whole by the control plane (a map update), never
    // written in place, so the reference reads one consistent value.
    if let Some(meta) = unsafe { VIPS.get(&key) } {
        return Some(meta);
    }
    key.port_be = 0;
    // SAFETY: as above.
    unsafe { VIPS.get(&key) }
}

/// The real id in the slot of `ring_hash` in `meta`'s live ring. `Err(DropNoReal)`: the ring is
/// not programmed (a VIP with no reals: its slots hold 0) or names no real.
#[inline(always)]
pub fn real_in_ring(meta: &VipMeta, ring_hash: u32) -> Result<u32, Counter> {
    if meta.ring_size == 0 {
        return Err(Counter::DropNoReal);
    }
    let real_id = slot(meta.ring_base, meta.ring_size, ring_hash).ok_or(Counter::DropNoReal)?;
    if real_id == 0 || REALS.get(real_id).is_none() {
        return Err(Counter::DropNoReal);
    }
    Ok(real_id)
}

/// The real of `ring_hash`'s slot in the VIP's previous ring, when the VIP has the second chance,
/// that ring is still within its window, and it names another real than `real_id` that can take
/// the packet from a backend (`Real::can_forward_to`). 0: none.
#[inline(always)]
pub fn alternative(meta: &VipMeta, ring_hash: u32, real_id: u32) -> u32 {
    if meta.flags & VIP_F_SECOND_CHANCE == 0 {
        return 0;
    }
    let Some(prev) = VIP_PREV.get(meta.vip_index) else { return 0 };
    // SAFETY: a helper without arguments.
    if prev.ring_size == 0 || unsafe { bpf_ktime_get_ns() } >= prev.until_ns {
        return 0;
    }
    let Some(alt) = slot(prev.ring_base, prev.ring_size, ring_hash) else { return 0 };
    match REALS.get(real_id) {
        Some(real) if alt != real_id => forwardable(real, alt),
        _ => 0,
    }
}

/// `alt_real_id` if a backend holding a packet for `real` can forward it there
/// (`Real::can_forward_to`), else 0 (0 stays 0).
#[inline(always)]
pub fn forwardable(real: &Real, alt_real_id: u32) -> u32 {
    if alt_real_id != 0 && REALS.get(alt_real_id).is_some_and(|other| real.can_forward_to(other)) {
        alt_real_id
    } else {
        0
    }
}

/// The real id in slot `ring_hash % ring_size` of the ring at pool slot `ring_base` (`ring_size`
/// nonzero).
#[inline(always)]
fn slot(ring_base: u32, ring_size: u32, ring_hash: u32) -> Option<u32> {
    let (element, place) = slot_place(ring_base.wrapping_add(ring_hash % ring_size));
    let pair = MAGLEV.get(element)?;
    Some(if place == 0 { pair[0] } else { pair[1] })
}
