//! Bench-only programs. BPF_PROG_TEST_RUN does not restore the frame between repeats, so after
//! one encapsulation every later repeat would see the outer packet and take the pass path. The
//! wrapper undoes the rewrite so each repeat sees the original frame (optionally a new flow).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{bench, IP6_OVERHEAD, IPIP_OVERHEAD};
use network_types::eth::EthHdr;

use crate::{balancer, maps::BENCH, parse::ETH_P_IPV6, pkt};

/// Offset of the last four bytes of the inner source address (untagged frames only).
#[inline(always)]
fn source_tail_offset(ether_type: u16) -> usize {
    if ether_type == ETH_P_IPV6 {
        EthHdr::LEN + 8 + 12
    } else {
        EthHdr::LEN + 12
    }
}

#[inline(always)]
pub fn balancer_undone(ctx: &XdpContext) -> u32 {
    let Some(saved) = pkt::read::<EthHdr>(ctx, 0) else { return xdp_action::XDP_ABORTED };
    let before = pkt::len(ctx);
    let action = balancer::run_in_own_frame(ctx);
    let grown = pkt::len(ctx) - before;
    if action != xdp_action::XDP_TX || (grown != IPIP_OVERHEAD as usize && grown != IP6_OVERHEAD as usize) {
        return action;
    }
    if undo(ctx, grown as i32, saved).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    if BENCH.get(0).copied() == Some(bench::NEW_FLOW) {
        let off = source_tail_offset(u16::from_be(saved.ether_type));
        let Some(tail) = pkt::read::<[u8; 4]>(ctx, off) else { return xdp_action::XDP_ABORTED };
        let bumped = u32::from_be_bytes(tail).wrapping_add(1).to_be_bytes();
        if pkt::write(ctx, off, bumped).is_none() {
            return xdp_action::XDP_ABORTED;
        }
    }
    action
}

#[inline(always)]
fn undo(ctx: &XdpContext, grown: i32, saved: EthHdr) -> Option<()> {
    pkt::adjust_head(ctx, grown)?;
    pkt::write(ctx, 0, saved)
}

/// What the undo costs on its own, with the prepend it undoes: an upper bound on what the
/// wrapper adds to the balancer's figures.
#[inline(always)]
pub fn undo_cost(ctx: &XdpContext) -> u32 {
    let Some(saved) = pkt::read::<EthHdr>(ctx, 0) else { return xdp_action::XDP_ABORTED };
    let grown = IPIP_OVERHEAD as i32;
    let prepended = pkt::adjust_head(ctx, -grown).and_then(|_| pkt::write(ctx, EthHdr::LEN, [0u8; 20]));
    if prepended.and_then(|_| undo(ctx, grown, saved)).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_TX
}
