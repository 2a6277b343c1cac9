//! The balancer: parse, find the VIP, pick the real, encapsulate, `XDP_TX`.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{stats::Counter, FlowKey};

use crate::{
    encap, icmp, maglev,
    maps::CONFIG,
    parse::{self, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, L3},
    pkt, stats,
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

#[inline(always)]
fn try_lb_xdp(ctx: &XdpContext) -> Result<u32, Counter> {
    let l3 = parse::l3(ctx)?;
    match (l3.ipv6, l3.proto) {
        (false, IPPROTO_ICMP) | (true, IPPROTO_ICMPV6) if parse::is_vip_addr(&l3.dst) => {
            return icmp::handle(ctx, &l3)
        }
        (_, IPPROTO_TCP) | (_, IPPROTO_UDP) => {}
        _ => return Err(Counter::Pass),
    }
    let (src_port, dst_port) = parse::ports(ctx, &l3).map_err(|r| parse::drop_if_vip_addr(&l3.dst, r))?;
    let flow = FlowKey {
        src: l3.src,
        dst: l3.dst,
        src_port_be: u16::from_ne_bytes(src_port),
        dst_port_be: u16::from_ne_bytes(dst_port),
        proto: l3.proto,
        _pad: [0; 3],
    };
    forward(ctx, &l3, &flow, true)
}

/// Sends the frame to the real that serves `flow`: the one the connection table knows, else
/// the one its VIP's ring gives (remembered with `record`). No VIP: not ours.
#[inline(always)]
pub fn forward(ctx: &XdpContext, l3: &L3, flow: &FlowKey, record: bool) -> Result<u32, Counter> {
    let cfg = CONFIG.get(0).filter(|c| c.mtu != 0).ok_or(Counter::DropNoConfig)?;
    let pick = match maglev::known(flow) {
        Some(pick) => pick,
        None => {
            let meta = maglev::vip(&flow.dst, flow.dst_port_be.to_ne_bytes(), flow.proto).ok_or(Counter::Pass)?;
            maglev::from_ring(&meta, flow, record)?
        }
    };
    let bytes = pkt::len(ctx) as u64;
    encap::encapsulate(ctx, l3, &pick.real, cfg, pick.flow_hash)?;
    stats::count_vip(pick.vip_index, bytes, pick.hit, record && !pick.hit);
    stats::count_real(pick.real_id, bytes);
    Ok(xdp_action::XDP_TX)
}
