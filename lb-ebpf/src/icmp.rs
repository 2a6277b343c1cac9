//! ICMP to a VIP address: echo requests are answered here; "fragmentation needed" and "packet
//! too big" go to the real of the flow they quote, so path-MTU discovery works through the LB.
//! Other ICMP passes to the kernel.

use aya_ebpf::programs::XdpContext;
use lb_common::{ipv4_mapped, stats::Counter, FlowKey};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    csum,
    parse::{IPPROTO_TCP, IPPROTO_UDP, L3},
    pkt, stats,
    step::Step,
};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REPLY: u8 = 129;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMP_HEADER_LEN: usize = 8;
/// RFC 792: an error quotes the IP header and at least 8 bytes of what followed it.
const QUOTE_LEN: usize = 8;
const REPLY_TTL: u8 = 64;

/// What `handle` did with ICMP to a VIP address: answered it in place (send it back) ...
pub const REPLIED: u32 = 0;
/// ... or found an error about the flow it wrote: forward it to the flow's real.
pub const ABOUT_FLOW: u32 = 1;

#[inline(never)] // its own stack frame: the balancer's would not fit the 512-byte limit
pub fn handle(ctx: &XdpContext, l3: &L3, flow: &mut FlowKey) -> Step {
    Step::of(try_handle(ctx, l3, flow))
}

#[inline(always)]
fn try_handle(ctx: &XdpContext, l3: &L3, flow: &mut FlowKey) -> Result<u32, Counter> {
    let bad = Counter::DropBadIcmp;
    if (l3.l4_len as usize) < ICMP_HEADER_LEN {
        return Err(bad);
    }
    let [kind, code]: [u8; 2] = pkt::read(ctx, l3.l4_off).ok_or(bad)?;
    let inner = l3.l4_off + ICMP_HEADER_LEN;
    match (l3.ipv6, kind, code) {
        (false, ICMP_ECHO_REQUEST, 0) | (true, ICMPV6_ECHO_REQUEST, 0) => echo_reply(ctx, l3).map(|()| REPLIED),
        (false, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED) => {
            *flow = quoted_flow_v4(ctx, l3, inner)?;
            Ok(ABOUT_FLOW)
        }
        (true, ICMPV6_PACKET_TOO_BIG, 0) => {
            *flow = quoted_flow_v6(ctx, l3, inner)?;
            Ok(ABOUT_FLOW)
        }
        _ => Err(Counter::Pass),
    }
}

/// Turns the request into its reply in place and sends it back where it came from.
#[inline(always)]
fn echo_reply(ctx: &XdpContext, l3: &L3) -> Result<(), Counter> {
    let bad = Counter::DropBadIcmp;
    let eth: EthHdr = pkt::read(ctx, 0).ok_or(bad)?;
    pkt::write(ctx, 0, EthHdr { dst_addr: eth.src_addr, src_addr: eth.dst_addr, ..eth }).ok_or(bad)?;

    let ip = l3.l2_len;
    let check_off = l3.l4_off + 2;
    let check = u16::from_be_bytes(pkt::read(ctx, check_off).ok_or(bad)?);
    // Swapping source and destination leaves both the IPv4 header checksum and the ICMPv6
    // pseudo-header sum unchanged; only the type and the TTL change a checksum.
    let new_check = if l3.ipv6 {
        pkt::write(ctx, ip + 6, [l3.proto, REPLY_TTL]).ok_or(bad)?; // next header, hop limit
        pkt::write(ctx, ip + 8, l3.dst).ok_or(bad)?;
        pkt::write(ctx, ip + 24, l3.src).ok_or(bad)?;
        pkt::write(ctx, l3.l4_off, [ICMPV6_ECHO_REPLY, 0]).ok_or(bad)?;
        csum::replace16(check, 0x8000, 0x8100)
    } else {
        let [ttl, proto]: [u8; 2] = pkt::read(ctx, ip + 8).ok_or(bad)?;
        let ip_check = u16::from_be_bytes(pkt::read(ctx, ip + 10).ok_or(bad)?);
        let ip_check = csum::replace16(ip_check, u16::from_be_bytes([ttl, proto]), u16::from_be_bytes([REPLY_TTL, proto]));
        pkt::write(ctx, ip + 8, [REPLY_TTL, proto]).ok_or(bad)?;
        pkt::write(ctx, ip + 10, ip_check.to_be_bytes()).ok_or(bad)?;
        let src: [u8; 4] = pkt::read(ctx, ip + 12).ok_or(bad)?;
        let dst: [u8; 4] = pkt::read(ctx, ip + 16).ok_or(bad)?;
        pkt::write(ctx, ip + 12, dst).ok_or(bad)?;
        pkt::write(ctx, ip + 16, src).ok_or(bad)?;
        pkt::write(ctx, l3.l4_off, [ICMP_ECHO_REPLY, 0]).ok_or(bad)?;
        csum::replace16(check, 0x0800, 0x0000)
    };
    pkt::write(ctx, check_off, new_check.to_be_bytes()).ok_or(bad)?;
    stats::count(Counter::IcmpEchoReplied);
    Ok(())
}

/// The flow an ICMPv4 error is about, as the client sent it. The quote is the packet the real
/// sent (VIP -> client), so source and destination swap back.
#[inline(always)]
fn quoted_flow_v4(ctx: &XdpContext, l3: &L3, inner: usize) -> Result<FlowKey, Counter> {
    let bad = Counter::DropBadIcmp;
    let ip: Ipv4Hdr = pkt::read(ctx, inner).ok_or(bad)?;
    let header_len = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
        return Err(bad);
    }
    quoted_flow(ctx, l3, inner, header_len, ip.proto, ipv4_mapped(ip.src_addr), ipv4_mapped(ip.dst_addr))
}

#[inline(always)]
fn quoted_flow_v6(ctx: &XdpContext, l3: &L3, inner: usize) -> Result<FlowKey, Counter> {
    let ip: Ipv6Hdr = pkt::read(ctx, inner).ok_or(Counter::DropBadIcmp)?;
    quoted_flow(ctx, l3, inner, Ipv6Hdr::LEN, ip.next_hdr, ip.src_addr, ip.dst_addr)
}

#[inline(always)]
fn quoted_flow(
    ctx: &XdpContext,
    l3: &L3,
    inner: usize,
    header_len: usize,
    proto: u8,
    quoted_src: [u8; 16],
    quoted_dst: [u8; 16],
) -> Result<FlowKey, Counter> {
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(Counter::Pass);
    }
    let quote = inner + header_len;
    if quote + QUOTE_LEN > l3.l4_off + l3.l4_len as usize {
        return Err(Counter::DropBadIcmp);
    }
    let ports: [[u8; 2]; 2] = pkt::read(ctx, quote).ok_or(Counter::DropBadIcmp)?;
    Ok(FlowKey {
        src: quoted_dst,
        dst: quoted_src,
        src_port_be: u16::from_ne_bytes(ports[1]),
        dst_port_be: u16::from_ne_bytes(ports[0]),
        proto,
        _pad: [0; 3],
    })
}
