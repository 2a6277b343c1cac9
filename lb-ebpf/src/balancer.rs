//! The balancer: parse, find the VIP, pick the real, encapsulate, `XDP_TX`.
//!
//! Calls are dear: a BPF-to-BPF call is a call and a return in the JIT image, and with the
//! kernel's return-thunk mitigations (Safe RET, call-depth tracking) one cost about 7 ns on the
//! project's machine, as much as a third of a known flow's whole cost. So the common paths, a
//! packet that is not ours and a packet of a known flow, run without subprograms: parsing, the
//! connection table, encapsulation and counting are inlined here. The rare paths are
//! subprograms with their own stack frames (the verifier allows 512 bytes summed over a call
//! chain), all called from `try_lb_xdp`, never from each other, returning a `Step` (one
//! scalar): a new flow's real (`conntrack::new_flow`), ICMP, and the handoff paths.
//!
//! Stack budget: `lb_xdp`'s frame is 264 bytes and its deepest subprogram's (`handoff::tunnel`)
//! 160, so 88 of the 512 are left; QUIC-LB's `quic::route` (88) and the AES subprogram it calls
//! (64) take 152. (Measured by padding a frame until the verifier refused and listed them.) The flow key, the outer header and a handoff's sender live in
//! the per-CPU `SCRATCH` instead of the stack. When a change passes the limit, the verifier says
//! "combined stack size of 2 calls is N" and lists each frame after "stack depth".

use core::mem::MaybeUninit;

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{second_chance::TUNNEL_LEN, stats::Counter};

use crate::{
    capture,
    conntrack::{self, Chosen},
    encap, handoff, icmp,
    maps::{CONFIG, REALS, SCRATCH},
    packet::{Arrival, ClientPacket, Outer, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP},
    parse, pkt, quic, stats,
};

/// Runs the balancer on one frame and counts its verdict (and the reason, for drops).
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let action = match try_lb_xdp(ctx) {
        Ok(action) => action,
        Err(reason) => {
            if reason != Counter::Pass {
                stats::count(reason);
            }
            match reason {
                Counter::Pass | Counter::PassTruncated => xdp_action::XDP_PASS,
                _ => {
                    capture::offer(ctx, lb_common::capture::DROP, reason as u32);
                    xdp_action::XDP_DROP
                }
            }
        }
    };
    stats::count(match action {
        xdp_action::XDP_PASS => Counter::Pass,
        xdp_action::XDP_TX => Counter::Tx,
        xdp_action::XDP_DROP => Counter::Drop,
        _ => Counter::Aborted,
    });
    action
}

#[inline(always)]
fn try_lb_xdp(ctx: &XdpContext) -> Result<u32, Counter> {
    let mut l3_slot = MaybeUninit::uninit();
    parse::l3(ctx, &mut l3_slot)?;
    // SAFETY: `parse::l3` returned Ok, so it wrote the slot.
    let outer = unsafe { l3_slot.assume_init_ref() };
    // SAFETY: this CPU's entry, which nothing else uses before this program ends.
    let scratch = unsafe { &mut *SCRATCH.get_ptr_mut(0).ok_or(Counter::DropNoConfig)? };
    let mut handed_off = None;
    if matches!((outer.ipv6, outer.proto), (_, IPPROTO_IPIP) | (true, IPPROTO_IPV6)) && handoff::is_node_addr(&outer.dst) {
        // A handoff: `receive` strips the tunnel and parses the inner packet into the slot.
        scratch.from = outer.src;
        // SAFETY: the slot holds the outer header's `L3`.
        handed_off = Some(match unsafe { handoff::receive(ctx, &mut l3_slot) }.get()? {
            handoff::REQUEST => Arrival::Handoff,
            _ => Arrival::CameBack,
        });
    }
    // SAFETY: written by `parse::l3`, or rewritten by `handoff::receive` when it returned Ok.
    let l3 = unsafe { l3_slot.assume_init_ref() };
    let tunnelled = handed_off.is_some();
    let arrival = match (l3.ipv6, l3.proto) {
        (false, IPPROTO_ICMP) | (true, IPPROTO_ICMPV6) if !tunnelled && parse::is_vip_addr(&l3.dst) => {
            capture::offer(ctx, lb_common::capture::ICMP, 0);
            if icmp::handle(ctx, l3, &mut scratch.flow).get()? == icmp::REPLIED {
                return Ok(xdp_action::XDP_TX);
            }
            Arrival::IcmpError
        }
        (_, IPPROTO_TCP | IPPROTO_UDP) => {
            let packet = parse::flow(ctx, l3, &mut scratch.flow).map_err(|r| {
                if tunnelled {
                    Counter::DropBadHandoff
                } else {
                    parse::drop_if_vip_addr(&l3.dst, r)
                }
            })?;
            handed_off.unwrap_or(Arrival::Client(packet))
        }
        _ if tunnelled => return Err(Counter::DropBadHandoff),
        _ => return Err(Counter::Pass),
    };
    let cfg = CONFIG.get(0).filter(|c| c.mtu != 0).ok_or(Counter::DropNoConfig)?;

    // The real: the one the connection table knows, else the one the VIP's ring gives. A
    // client's SYN starts a connection, so the table is not searched for it (a retransmitted SYN
    // gets the real its first copy got while the ring is unchanged).
    let known = if arrival == Arrival::Client(ClientPacket::Syn) { None } else { conntrack::known(&scratch.flow) };
    // QUIC-LB: a connection ID that names a server outranks the table, whose entry for this
    // 5-tuple may be an earlier connection's (a NAT reusing the port).
    let vip_index = known.map_or(quic::VIP_UNKNOWN, |(chosen, _)| chosen.vip_index);
    let by_cid = if cfg.quic_lb != 0 && arrival == Arrival::Client(ClientPacket::Datagram) && quic::may_route(vip_index) {
        quic::route(ctx, l3, &scratch.flow, vip_index).get()?
    } else {
        0
    };
    let known = match (by_cid, known) {
        (0, known) => known,
        (_, Some((chosen, _))) if chosen.real_id == by_cid & quic::REAL_ID_MASK => known,
        (_, known) => Some(quic::chosen(by_cid, &scratch.flow, known.map(|(c, _)| c.flow_hash))?),
    };
    let sent = match known {
        Some((chosen, real)) => {
            scratch.outer = Outer::to_real(real, cfg, chosen.flow_hash);
            Sent::Real { chosen, hit: true }
        }
        None => {
            let mut chosen_slot = MaybeUninit::uninit();
            match conntrack::new_flow(l3, &scratch.flow, &arrival, &mut chosen_slot).get() {
                Ok(conntrack::TO_REAL) => {
                    // SAFETY: `new_flow` returned TO_REAL, so it wrote the slot.
                    let chosen = unsafe { chosen_slot.assume_init() };
                    if chosen.unknown_mid_flow {
                        capture::offer(ctx, lb_common::capture::MISS, 0);
                    }
                    let real = REALS.get(chosen.real_id).ok_or(Counter::DropNoReal)?;
                    scratch.outer = Outer::to_real(real, cfg, chosen.flow_hash);
                    Sent::Real { chosen, hit: false }
                }
                Ok(_) => {
                    let reason = if arrival == Arrival::Handoff { Counter::HandoffReturned } else { Counter::HandoffSent };
                    capture::offer(ctx, lb_common::capture::HANDOFF, reason as u32);
                    handoff::tunnel(scratch, &arrival).get()?;
                    Sent::Peer
                }
                // A handed-off packet that is not for a VIP is not for the kernel either.
                Err(Counter::Pass) if tunnelled => return Err(Counter::DropBadHandoff),
                Err(reason) => return Err(reason),
            }
        }
    };

    let bytes = pkt::len(ctx) as u64;
    let alt_real_id = match sent {
        Sent::Real { chosen, .. } => chosen.alt_real_id,
        Sent::Peer => 0,
    };
    let encapsulated = if alt_real_id == 0 {
        encap::encapsulate(ctx, l3, &scratch.outer, cfg)
    } else {
        encap::with_alternative(ctx, l3, scratch, alt_real_id, cfg).get().map(|_| ())
    };
    match encapsulated {
        // Too big for the tunnel: tell the client what fits (not about an ICMP error, though).
        Err(Counter::DropMtuExceeded) if arrival != Arrival::IcmpError => {
            let overhead = scratch.outer.header_len() + if alt_real_id != 0 { TUNNEL_LEN } else { 0 };
            return icmp::too_big(ctx, l3, cfg.mtu - overhead).get();
        }
        done => done?,
    }
    match sent {
        Sent::Real { chosen, hit } => {
            stats::count_vip(chosen.vip_index, bytes, hit, chosen.recorded);
            stats::count_real(chosen.real_id, bytes);
            if arrival == Arrival::IcmpError {
                stats::count(Counter::IcmpToReal);
            }
            if alt_real_id != 0 {
                stats::count(Counter::SecondChanceSent);
            }
        }
        Sent::Peer if arrival == Arrival::Handoff => stats::count(Counter::HandoffReturned),
        Sent::Peer => stats::count(Counter::HandoffSent),
    }
    Ok(xdp_action::XDP_TX)
}

/// Where `try_lb_xdp` sent a packet, for its counters.
enum Sent {
    /// To the real `chosen`; `hit`: the connection table knew the flow.
    Real { chosen: Chosen, hit: bool },
    /// To a peer node (`handoff::tunnel`).
    Peer,
}

/// The least any encapsulating balancer does for a known flow, for bench-e2e's middle row: parse
/// to the 5-tuple, find the flow's real in the connection table, encapsulate, `XDP_TX`. No
/// generation or health check, no second chance, no counters. A flow the table does not know
/// takes the whole balancer (`run`), which records it: its `tx` counter shows how many did.
#[inline(always)]
pub fn least(ctx: &XdpContext) -> u32 {
    try_least(ctx).unwrap_or_else(|_| run(ctx))
}

#[inline(always)]
fn try_least(ctx: &XdpContext) -> Result<u32, Counter> {
    let mut l3_slot = MaybeUninit::uninit();
    parse::l3(ctx, &mut l3_slot)?;
    // SAFETY: `parse::l3` returned Ok, so it wrote the slot.
    let l3 = unsafe { l3_slot.assume_init_ref() };
    // SAFETY: this CPU's entry, which nothing else uses before this program ends.
    let scratch = unsafe { &mut *SCRATCH.get_ptr_mut(0).ok_or(Counter::DropNoConfig)? };
    parse::flow(ctx, l3, &mut scratch.flow)?;
    let cfg = CONFIG.get(0).ok_or(Counter::DropNoConfig)?;
    let flow: &lb_common::FlowKey = &scratch.flow;
    // SAFETY: the entry is copied out at once.
    let entry = *unsafe { crate::maps::CONNS.get(flow) }.ok_or(Counter::Pass)?;
    let real = REALS.get(entry.real_id).ok_or(Counter::DropNoReal)?;
    scratch.outer = Outer::to_real(real, cfg, entry.flow_hash);
    encap::encapsulate(ctx, l3, &scratch.outer, cfg)?;
    Ok(xdp_action::XDP_TX)
}
