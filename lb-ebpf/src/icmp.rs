//! ICMP to a VIP address: echo requests are answered here; "fragmentation needed" and "packet
//! too big" go to the real of the flow they quote, so path-MTU discovery works through the LB.
//! Other ICMP passes to the kernel. And ICMP from the balancer: a client's packet that would not
//! fit the tunnel is answered with "fragmentation needed" / "packet too big" (`too_big`).

use aya_ebpf::{bindings::xdp_action, helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::{ipv4_mapped, limits, stats::Counter, FlowKey};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    csum, limit,
    packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, L3},
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
        (false, ICMP_ECHO_REQUEST, 0) | (true, ICMPV6_ECHO_REQUEST, 0) => {
            if !limit::allow(limits::ECHO) {
                return Err(Counter::DropEchoSuppressed);
            }
            echo_reply(ctx, l3).map(|()| REPLIED)
        }
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

/// Bytes of the client's packet an answer quotes: the answer then fills 576 bytes (IPv4, RFC
/// 1812) or 1280 (IPv6, its minimum MTU), and the ICMP part is a multiple of 4 bytes (for the
/// checksum helper). The packet is always longer: it exceeded `forwarding.mtu` (at least 1280)
/// less the tunnel overhead (at most 40).
const TOO_BIG_QUOTE_V4: usize = 576 - 20 - ICMP_HEADER_LEN;
const TOO_BIG_QUOTE_V6: usize = 1280 - 40 - ICMP_HEADER_LEN;

/// Answers a client's packet that would exceed the MTU once encapsulated: ICMP "fragmentation
/// needed" (IPv4 with DF) or "packet too big" (IPv6) naming `mtu`, what fits the tunnel, from the
/// VIP the packet was sent to (so stateful firewalls in front of the client pass it), quoting
/// the packet's start; sent back with `XDP_TX`. IPv4 without DF is dropped: we do not fragment.
#[inline(never)] // off the hot path, in its own stack frame
pub fn too_big(ctx: &XdpContext, l3: &L3, mtu: u32) -> Step {
    Step::of(try_too_big(ctx, l3, mtu))
}

#[inline(always)]
fn try_too_big(ctx: &XdpContext, l3: &L3, mtu: u32) -> Result<u32, Counter> {
    let fail = Counter::DropEncapFailed;
    let ip = l3.l2_len;
    if !l3.ipv6 {
        let [flags, _]: [u8; 2] = pkt::read(ctx, ip + 6).ok_or(fail)?;
        if flags & 0x40 == 0 {
            return Err(Counter::DropMtuExceeded);
        }
    }
    if !limit::allow(limits::TOO_BIG) {
        return Err(Counter::DropTooBigSuppressed);
    }
    // The L2 header goes back where it came from, MACs swapped (VLAN tag kept).
    let eth: EthHdr = pkt::read(ctx, 0).ok_or(fail)?;
    let tag: [u8; 4] = if ip > EthHdr::LEN { pkt::read(ctx, EthHdr::LEN).ok_or(fail)? } else { [0; 4] };
    let (header, quote) = if l3.ipv6 { (40, TOO_BIG_QUOTE_V6) } else { (20, TOO_BIG_QUOTE_V4) };
    // New IP and ICMP headers go in front of the packet, which becomes the quote, cut short.
    pkt::adjust_head(ctx, -((header + ICMP_HEADER_LEN) as i32)).ok_or(fail)?;
    let cut = (ip + header + ICMP_HEADER_LEN + quote) as i32 - pkt::len(ctx) as i32;
    // SAFETY: the helper only moves the frame's end (it refuses to grow it past its buffer).
    if cut > 0 || unsafe { bpf_xdp_adjust_tail(ctx.ctx, cut) } != 0 {
        return Err(fail);
    }
    pkt::write(ctx, 0, EthHdr { dst_addr: eth.src_addr, src_addr: eth.dst_addr, ..eth }).ok_or(fail)?;
    if ip > EthHdr::LEN {
        pkt::write(ctx, EthHdr::LEN, tag).ok_or(fail)?;
    }
    let icmp = ip + header;
    let sum = if l3.ipv6 {
        let (vip, client) = (l3.dst, l3.src);
        let len = (ICMP_HEADER_LEN + quote) as u16;
        let [len_hi, len_lo] = len.to_be_bytes();
        pkt::write(ctx, ip, [0x60, 0, 0, 0, len_hi, len_lo, IPPROTO_ICMPV6, REPLY_TTL]).ok_or(fail)?;
        pkt::write(ctx, ip + 8, vip).ok_or(fail)?;
        pkt::write(ctx, ip + 24, client).ok_or(fail)?;
        let [m0, m1, m2, m3] = mtu.to_be_bytes();
        pkt::write(ctx, icmp, [ICMPV6_PACKET_TOO_BIG, 0, 0, 0, m0, m1, m2, m3]).ok_or(fail)?;
        let mut pseudo = [0u8; 40];
        pseudo[..16].copy_from_slice(&vip);
        pseudo[16..32].copy_from_slice(&client);
        pseudo[34] = len_hi;
        pseudo[35] = len_lo;
        pseudo[39] = IPPROTO_ICMPV6;
        let sum = csum::add_bytes(&pseudo, 0).ok_or(fail)?;
        let sum = csum::add_packet::<512>(ctx, icmp, sum).ok_or(fail)?;
        let sum = csum::add_packet::<512>(ctx, icmp + 512, sum).ok_or(fail)?;
        csum::add_packet::<{ ICMP_HEADER_LEN + TOO_BIG_QUOTE_V6 - 1024 }>(ctx, icmp + 1024, sum).ok_or(fail)?
    } else {
        let (vip, client) = (&l3.dst[12..16], &l3.src[12..16]);
        let mut words = [
            0x4500,
            (header + ICMP_HEADER_LEN + quote) as u16,
            0,
            0,
            (REPLY_TTL as u16) << 8 | IPPROTO_ICMP as u16,
            0, // checksum, below
            u16::from_be_bytes([vip[0], vip[1]]),
            u16::from_be_bytes([vip[2], vip[3]]),
            u16::from_be_bytes([client[0], client[1]]),
            u16::from_be_bytes([client[2], client[3]]),
        ];
        words[5] = csum::ipv4_header(&words);
        pkt::write(ctx, ip, words.map(u16::to_be)).ok_or(fail)?;
        let [m0, m1] = (mtu as u16).to_be_bytes();
        pkt::write(ctx, icmp, [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, 0, 0, m0, m1]).ok_or(fail)?;
        let sum = csum::add_packet::<512>(ctx, icmp, 0).ok_or(fail)?;
        csum::add_packet::<{ ICMP_HEADER_LEN + TOO_BIG_QUOTE_V4 - 512 }>(ctx, icmp + 512, sum).ok_or(fail)?
    };
    // The helper sums words as the CPU loads them: the folded sum goes back in that order.
    pkt::write(ctx, icmp + 2, (!csum::fold(sum)).to_ne_bytes()).ok_or(fail)?;
    stats::count(Counter::IcmpTooBigSent);
    Ok(xdp_action::XDP_TX)
}
