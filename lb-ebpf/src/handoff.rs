//! Cross-site handoff of mid-flow packets (see `lb_common::Handoff`).
//!
//! A client's TCP packet that is not a SYN, of a flow this node does not know, is tunnelled to a
//! peer node (`HANDOFF_REQUEST`). The peer forwards it to its own real when its connection table
//! knows the flow (or when it adopts: it no longer announces, so the flow was its own); otherwise
//! it sends it back (`HANDOFF_RETURN`) and we balance it here. A packet crosses at most twice:
//! a handed-off packet is never handed off again.

use core::mem::MaybeUninit;

use aya_ebpf::programs::XdpContext;
use lb_common::{hash::flow_hash, stats::Counter, HANDOFF_F_ADOPT, HANDOFF_F_IPV6, HANDOFF_REQUEST, HANDOFF_RETURN, MAX_PEERS};

use crate::{
    decap,
    maps::{HANDOFF, PEERS, PEER_SOURCES},
    packet::{Arrival, ClientPacket, Outer, Scratch, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, L3},
    parse, pkt, stats,
    step::Step,
};

/// `addr` is this node's handoff address.
#[inline(always)]
pub fn is_node_addr(addr: &[u8; 16]) -> bool {
    HANDOFF.get(0).is_some_and(|h| h.node_addr == *addr)
}

/// `addr` is a configured peer (up or down: a peer we think is down may still return a flow).
#[inline(always)]
pub fn is_peer(addr: &[u8; 16]) -> bool {
    // SAFETY: the value is only tested for presence, never read through.
    unsafe { PEER_SOURCES.get(addr) }.is_some()
}

/// For a flow the connection table does not know: `arrival` calls for a handoff.
#[inline(always)]
pub fn wanted(l3: &L3, arrival: &Arrival) -> bool {
    let Some(h) = HANDOFF.get(0) else { return false };
    match arrival {
        Arrival::Client(ClientPacket::MidFlow) => h.peers != 0 && (!l3.ipv6 || h.flags & HANDOFF_F_IPV6 != 0),
        Arrival::Handoff => h.flags & HANDOFF_F_ADOPT == 0,
        _ => false,
    }
}

/// The tunnel, into `scratch.outer`, for the packet of an unknown flow that goes to a peer: a
/// client's to the flow's peer, a peer's handoff back to it. The balancer encapsulates and
/// counts it.
#[inline(never)] // off the hot path, in its own stack frame
pub fn tunnel(scratch: &mut Scratch, arrival: &Arrival) -> Step {
    Step::of(try_tunnel(scratch, arrival).map(|()| 0))
}

#[inline(always)]
fn try_tunnel(scratch: &mut Scratch, arrival: &Arrival) -> Result<(), Counter> {
    let h = HANDOFF.get(0).ok_or(Counter::DropNoConfig)?;
    let (to, id) = match arrival {
        Arrival::Handoff => (scratch.from, HANDOFF_RETURN),
        _ => {
            // Not `clamp`: after it LLVM no longer knows the divisor is not 0, and keeps a
            // division-by-zero panic path, which the verifier refuses.
            #[allow(clippy::manual_clamp)]
            let count = h.peers.min(MAX_PEERS).max(1);
            (*PEERS.get(flow_hash(&scratch.flow) % count).ok_or(Counter::DropNoConfig)?, HANDOFF_REQUEST)
        }
    };
    // Written in place: built on the stack, the header would double this frame.
    scratch.outer = Outer { dst: to, ipv6: h.flags & HANDOFF_F_IPV6 != 0, src: h.node_addr, id };
    Ok(())
}

/// What `receive` found in a tunnel to our handoff address: a peer's handoff ...
pub const REQUEST: u32 = HANDOFF_REQUEST;
/// ... or our own, given back.
pub const RETURN: u32 = HANDOFF_RETURN;

/// A tunnel to our handoff address, whose outer header `l3` holds: says how the inner packet
/// came (`REQUEST` or `RETURN`), strips the outer header, so the frame is the inner packet from
/// here on, and parses that into `l3`.
///
/// # Safety
/// `l3` is initialised (by `parse::l3`).
#[inline(never)] // off the hot path, in its own stack frame
pub unsafe fn receive(ctx: &XdpContext, l3: &mut MaybeUninit<L3>) -> Step {
    // SAFETY: the caller's promise. The fields are copied out before the slot is rewritten.
    let outer = unsafe { l3.assume_init_ref() };
    let (ipv6, l2_len, outer_len, inner_ipv4) = (outer.ipv6, outer.l2_len, outer.l4_off - outer.l2_len, outer.proto == IPPROTO_IPIP);
    let from = outer.src;
    Step::of(try_receive(ctx, ipv6, l2_len, outer_len, inner_ipv4, &from).and_then(|id| {
        parse::l3(ctx, l3).map_err(|_| Counter::DropBadHandoff)?;
        Ok(id)
    }))
}

/// Reads the tunnel's marker and, for a handoff from a configured peer, strips its outer header.
#[inline(always)]
fn try_receive(ctx: &XdpContext, ipv6: bool, l2_len: usize, outer_len: usize, inner_ipv4: bool, from: &[u8; 16]) -> Result<u32, Counter> {
    let id = if ipv6 {
        let head: [u8; 4] = pkt::read(ctx, l2_len).ok_or(Counter::DropBadHandoff)?;
        u32::from_be_bytes(head) & 0x000f_ffff
    } else {
        let id: [u8; 2] = pkt::read(ctx, l2_len + 4).ok_or(Counter::DropBadHandoff)?;
        u16::from_be_bytes(id) as u32
    };
    let counter = match id {
        REQUEST => Counter::HandoffReceived,
        RETURN => Counter::HandoffCameBack,
        _ => return Err(Counter::Pass), // some other tunnel to this address: the kernel's
    };
    // Only from a configured peer: else anyone could have us forward a packet to a real, or
    // send one back to a spoofed source.
    if !is_peer(from) {
        return Err(Counter::DropHandoffNotPeer);
    }
    stats::count(counter);
    let inner_type = if inner_ipv4 { ETH_P_IP } else { ETH_P_IPV6 };
    decap::strip(ctx, l2_len, outer_len, inner_type).ok_or(Counter::DropBadHandoff)?;
    Ok(id)
}
