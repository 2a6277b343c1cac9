//! The balancer: parse, find the VIP, pick the real, encapsulate, `XDP_TX`.
//!
//! Stack: the verifier allows 512 bytes summed over a call chain, and one inlined balancer needs
//! more. So parsing, `forward`, ICMP and the handoff paths are subprograms with their own frames,
//! all called from `try_lb_xdp` (never from each other), and they return a `Step` (one scalar).

use core::mem::MaybeUninit;

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{stats::Counter, FlowKey};

use crate::{
    encap::{self, Outer},
    handoff,
    icmp,
    maglev,
    maps::CONFIG,
    parse::{self, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP, L3},
    pkt, stats,
    step::Step,
};

/// How a packet reached the balancer; decides what happens when its flow is not in the
/// connection table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// From a client.
    Client(ClientPacket),
    /// Handed off by the peer node `from`: sent back unless we adopt it.
    Handoff { from: [u8; 16] },
    /// Our handoff, back from a peer that does not know the flow: ours to balance.
    CameBack,
    /// An ICMP error quoting the flow: forwarded, never recorded.
    IcmpError,
}

/// What a client's packet tells about where its flow starts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClientPacket {
    /// A TCP SYN without ACK: the connection starts with this packet.
    Syn,
    /// Any other TCP packet: its connection began before it, elsewhere (another site, before a
    /// route change) or forgotten here; handed off when peers are configured.
    MidFlow,
    /// UDP: nothing tells where a flow starts.
    Datagram,
}

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
                _ => xdp_action::XDP_DROP,
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

/// `run` as a subprogram with its own stack frame, for the bench wrapper: the wrapper's own
/// locals on top of the inlined balancer would pass the verifier's 512-byte limit.
#[inline(never)]
pub fn run_in_own_frame(ctx: &XdpContext) -> u32 {
    run(ctx)
}

#[inline(always)]
fn try_lb_xdp(ctx: &XdpContext) -> Result<u32, Counter> {
    let mut l3_slot = MaybeUninit::uninit();
    parse::l3(ctx, &mut l3_slot).get()?;
    // SAFETY (both): `parse::l3` returned Ok, so it wrote the slot.
    let outer = unsafe { l3_slot.assume_init_ref() };
    let mut handed_off = None;
    if matches!((outer.ipv6, outer.proto), (_, IPPROTO_IPIP) | (true, IPPROTO_IPV6)) && handoff::is_node_addr(&outer.dst) {
        // A handoff: from here on the frame is the inner packet, which must be a VIP flow.
        let from = outer.src;
        handed_off = Some(match handoff::receive(ctx, outer).get()? {
            handoff::REQUEST => Arrival::Handoff { from },
            _ => Arrival::CameBack,
        });
        parse::l3(ctx, &mut l3_slot).get().map_err(|_| Counter::DropBadHandoff)?;
    }
    let l3 = unsafe { l3_slot.assume_init_ref() };
    let tunnelled = handed_off.is_some();
    let mut arrival = handed_off.unwrap_or(Arrival::Client(ClientPacket::Datagram));
    let mut flow_slot = MaybeUninit::uninit();
    match (l3.ipv6, l3.proto) {
        (false, IPPROTO_ICMP) | (true, IPPROTO_ICMPV6) if !tunnelled && parse::is_vip_addr(&l3.dst) => {
            if icmp::handle(ctx, l3, &mut flow_slot).get()? == icmp::REPLIED {
                return Ok(xdp_action::XDP_TX);
            }
            arrival = Arrival::IcmpError;
        }
        (_, IPPROTO_TCP | IPPROTO_UDP) => {
            let packet = parse::flow(ctx, l3, &mut flow_slot)
                .map_err(|r| if tunnelled { Counter::DropBadHandoff } else { parse::drop_if_vip_addr(&l3.dst, r) })?;
            if !tunnelled {
                arrival = Arrival::Client(packet);
            }
        }
        _ if tunnelled => return Err(Counter::DropBadHandoff),
        _ => return Err(Counter::Pass),
    }
    // SAFETY: both arms that reach here wrote the flow.
    let flow = unsafe { flow_slot.assume_init_ref() };
    let action = match forward(ctx, l3, flow, &arrival).get() {
        Err(Counter::HandoffWanted) => handoff::send(ctx, l3, flow, &arrival).get(),
        action => action,
    };
    match arrival {
        Arrival::IcmpError if action.is_ok() => stats::count(Counter::IcmpToReal),
        // A handed-off packet that is not for a VIP is not for the kernel either.
        Arrival::Handoff { .. } | Arrival::CameBack if action == Err(Counter::Pass) => return Err(Counter::DropBadHandoff),
        _ => {}
    }
    action
}

/// Sends the frame to the real that serves `flow`: the one the connection table knows, else the
/// one its VIP's ring gives (remembered unless `arrival` is an ICMP error). No VIP: not ours.
/// `Err(HandoffWanted)`: the flow is unknown and `arrival` calls for a handoff; nothing was sent.
#[inline(never)] // its own stack frame: the balancer's would not fit the 512-byte limit
pub fn forward(ctx: &XdpContext, l3: &L3, flow: &FlowKey, arrival: &Arrival) -> Step {
    Step::of(try_forward(ctx, l3, flow, arrival))
}

#[inline(always)]
fn try_forward(ctx: &XdpContext, l3: &L3, flow: &FlowKey, arrival: &Arrival) -> Result<u32, Counter> {
    let cfg = CONFIG.get(0).filter(|c| c.mtu != 0).ok_or(Counter::DropNoConfig)?;
    let record = *arrival != Arrival::IcmpError;
    // A client's SYN starts a connection: the ring decides, without searching the table. (A
    // retransmitted SYN gets the real its first copy got while the ring is unchanged.)
    let known = if *arrival == Arrival::Client(ClientPacket::Syn) { None } else { maglev::known(flow) };
    let pick = match known {
        Some(pick) => pick,
        None => {
            let meta = maglev::vip(&flow.dst, flow.dst_port_be.to_ne_bytes(), flow.proto).ok_or(Counter::Pass)?;
            if handoff::wanted(l3, arrival) {
                return Err(Counter::HandoffWanted);
            }
            maglev::from_ring(meta, flow, record)?
        }
    };
    let bytes = pkt::len(ctx) as u64;
    encap::encapsulate(ctx, l3, &Outer::to_real(pick.real, cfg, pick.flow_hash), cfg)?;
    stats::count_vip(pick.vip_index, bytes, pick.hit, record && !pick.hit);
    stats::count_real(pick.real_id, bytes);
    Ok(xdp_action::XDP_TX)
}
