//! Cross-site handoff of mid-flow packets (see `lb_common::Handoff`).
//!
//! A client's TCP packet that is not a SYN, of a flow this node does not know, is tunnelled to a
//! peer node (`HANDOFF_REQUEST`). The peer forwards it to its own real when its connection table
//! knows the flow (or when it adopts: it no longer announces, so the flow was its own); otherwise
//! it sends it back (`HANDOFF_RETURN`) and we balance it here. A packet crosses at most twice:
//! a handed-off packet is never handed off again.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    hash::flow_hash, stats::Counter, FlowKey, HANDOFF_F_ADOPT, HANDOFF_F_IPV6, HANDOFF_REQUEST,
    HANDOFF_RETURN, MAX_PEERS,
};

use crate::{
    balancer::{Arrival, ClientPacket},
    decap,
    encap::{self, Outer},
    maps::{CONFIG, HANDOFF, PEERS},
    parse::{ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, L3},
    pkt, stats,
    step::Step,
};

/// `addr` is this node's handoff address.
#[inline(always)]
pub fn is_node_addr(addr: &[u8; 16]) -> bool {
    HANDOFF.get(0).is_some_and(|h| h.node_addr == *addr)
}

/// For a flow the connection table does not know: `arrival` calls for a handoff.
#[inline(always)]
pub fn wanted(l3: &L3, arrival: &Arrival) -> bool {
    let Some(h) = HANDOFF.get(0) else { return false };
    match arrival {
        Arrival::Client(ClientPacket::MidFlow) => h.peers != 0 && (!l3.ipv6 || h.flags & HANDOFF_F_IPV6 != 0),
        Arrival::Handoff { .. } => h.flags & HANDOFF_F_ADOPT == 0,
        _ => false,
    }
}

/// Tunnels the packet of an unknown flow to a peer: a client's to the flow's peer, a peer's
/// handoff back to it.
#[inline(never)] // its own stack frame: the balancer's would not fit the 512-byte limit
pub fn send(ctx: &XdpContext, l3: &L3, flow: &FlowKey, arrival: &Arrival) -> Step {
    Step::of(try_send(ctx, l3, flow, arrival))
}

#[inline(always)]
fn try_send(ctx: &XdpContext, l3: &L3, flow: &FlowKey, arrival: &Arrival) -> Result<u32, Counter> {
    let fail = Counter::DropNoConfig;
    let (h, cfg) = (HANDOFF.get(0).ok_or(fail)?, CONFIG.get(0).ok_or(fail)?);
    let (to, id, counter) = match arrival {
        Arrival::Handoff { from } => (*from, HANDOFF_RETURN, Counter::HandoffReturned),
        _ => {
            let count = h.peers.min(MAX_PEERS).max(1);
            (*PEERS.get(flow_hash(flow) % count).ok_or(fail)?, HANDOFF_REQUEST, Counter::HandoffSent)
        }
    };
    encap::encapsulate(ctx, l3, &Outer { dst: to, ipv6: h.flags & HANDOFF_F_IPV6 != 0, src: h.node_addr, id }, cfg)?;
    stats::count(counter);
    Ok(xdp_action::XDP_TX)
}

/// What `receive` found in a tunnel to our handoff address: a peer's handoff ...
pub const REQUEST: u32 = HANDOFF_REQUEST;
/// ... or our own, given back.
pub const RETURN: u32 = HANDOFF_RETURN;

/// A tunnel to our handoff address (`outer` is its outer header): says how the inner packet
/// came (`REQUEST` or `RETURN`) and strips the outer header, so the frame is the inner packet
/// from here on.
#[inline(never)] // its own stack frame: the balancer's would not fit the 512-byte limit
pub fn receive(ctx: &XdpContext, outer: &L3) -> Step {
    Step::of(try_receive(ctx, outer))
}

#[inline(always)]
fn try_receive(ctx: &XdpContext, outer: &L3) -> Result<u32, Counter> {
    let id = if outer.ipv6 {
        let head: [u8; 4] = pkt::read(ctx, outer.l2_len).ok_or(Counter::DropBadHandoff)?;
        u32::from_be_bytes(head) & 0x000f_ffff
    } else {
        let id: [u8; 2] = pkt::read(ctx, outer.l2_len + 4).ok_or(Counter::DropBadHandoff)?;
        u16::from_be_bytes(id) as u32
    };
    let counter = match id {
        REQUEST => Counter::HandoffReceived,
        RETURN => Counter::HandoffCameBack,
        _ => return Err(Counter::Pass), // some other tunnel to this address: the kernel's
    };
    stats::count(counter);
    let inner_type = if outer.proto == IPPROTO_IPIP { ETH_P_IP } else { ETH_P_IPV6 };
    decap::strip(ctx, outer.l2_len, outer.l4_off - outer.l2_len, inner_type).ok_or(Counter::DropBadHandoff)?;
    Ok(id)
}
