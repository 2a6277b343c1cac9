//! The backend's half of the second chance (`lb_common::second_chance`): a balancer's GUE
//! tunnel carries the flow's alternative real. It is delivered here when a local socket holds
//! the flow (established, a handshake in progress, time-wait, or an ACK that completes a
//! handshake answered with a SYN cookie), when the alternative is this host, or when another
//! backend forwarded it already. Otherwise it is sent on to the alternative, once: marked
//! forwarded, its outer destination rewritten, back to the hop it came from (the router that
//! delivered it routes it on). `decap` has checked the source and the inner VIP before this.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{bpf_sock_tuple, xdp_action, BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN},
    helpers::generated::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie},
    programs::XdpContext,
};
use lb_common::{
    second_chance::{Tunnel, GUE_FLAGS_HLEN, HOPS_FORWARDED, KIND_ALTERNATIVE, TUNNEL_LEN},
    stats::DecapCounter,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    csum, decap,
    packet::{ETH_P_IP, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_TCP},
    pkt,
};

/// What to do with a GUE tunnel of the second chance.
pub enum Decision {
    /// Strip it and pass it up; why it stays here.
    Deliver(DecapCounter),
    /// Sent on with this XDP action.
    Forwarded(u32),
}

/// Bytes of the tuple's IPv4 member (addresses and ports), as `bpf_skc_lookup_tcp` wants them.
const V4_TUPLE_LEN: u32 = 12;

/// Where `Tunnel::hops` is, from the UDP header.
const HOPS_OFFSET: usize = 13;
const _: () = assert!(core::mem::offset_of!(Tunnel, hops) == HOPS_OFFSET && core::mem::offset_of!(Tunnel, kind) == HOPS_OFFSET - 1);

/// The inner protocol (IPIP or IPv6) of the GUE tunnel whose UDP header is at `udp`; a GUE
/// header or data that is not ours is dropped.
#[inline(always)]
pub fn inner_protocol(ctx: &XdpContext, udp: usize) -> Result<u8, DecapCounter> {
    let bad = DecapCounter::DropSecondChanceMalformed;
    let tunnel: Tunnel = pkt::read(ctx, udp).ok_or(bad)?;
    let ours = tunnel.gue_flags_hlen == GUE_FLAGS_HLEN && tunnel.gue_flags == 0 && tunnel.kind == KIND_ALTERNATIVE;
    if !ours || !matches!(tunnel.gue_proto, IPPROTO_IPIP | IPPROTO_IPV6) {
        return Err(bad);
    }
    Ok(tunnel.gue_proto)
}

/// Deliver or forward the GUE tunnel whose outer IP header is at `l2_len` and UDP header at
/// `udp`.
#[inline(always)]
pub fn decide(ctx: &XdpContext, l2_len: usize, outer_ipv6: bool, udp: usize, inner_type: u16) -> Result<Decision, DecapCounter> {
    let inner = udp + TUNNEL_LEN as usize;
    let tunnel: Tunnel = pkt::read(ctx, udp).ok_or(DecapCounter::DropSecondChanceMalformed)?;
    if tunnel.hops >= HOPS_FORWARDED {
        return Ok(Decision::Deliver(DecapCounter::SecondChanceReceived));
    }
    if decap::is_local(&tunnel.alternative) || has_socket(ctx, inner, inner_type) {
        return Ok(Decision::Deliver(DecapCounter::SecondChanceDelivered));
    }
    forward(ctx, l2_len, outer_ipv6, udp, &tunnel.alternative)
}

/// Whether a local TCP socket holds the inner packet's flow. Anything but TCP (the balancer
/// sends none this way) counts as held: it is delivered.
#[inline(always)]
fn has_socket(ctx: &XdpContext, inner: usize, inner_type: u16) -> bool {
    // SAFETY: a plain-data union, all zeroes is a valid value of either member.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let (l4, ip_len, tuple_len) = if inner_type == ETH_P_IP {
        let Some(ip) = pkt::read::<Ipv4Hdr>(ctx, inner) else { return true };
        if ip.proto != IPPROTO_TCP {
            return true;
        }
        let l4 = inner + ((ip.vihl & 0x0f) as usize) * 4;
        let Some(ports) = pkt::read::<[u16; 2]>(ctx, l4) else { return true };
        tuple.__bindgen_anon_1.ipv4.saddr = u32::from_ne_bytes(ip.src_addr);
        tuple.__bindgen_anon_1.ipv4.daddr = u32::from_ne_bytes(ip.dst_addr);
        tuple.__bindgen_anon_1.ipv4.sport = ports[0];
        tuple.__bindgen_anon_1.ipv4.dport = ports[1];
        (l4, Ipv4Hdr::LEN, V4_TUPLE_LEN)
    } else {
        let Some(ip) = pkt::read::<Ipv6Hdr>(ctx, inner) else { return true };
        if ip.next_hdr != IPPROTO_TCP {
            return true;
        }
        let Some(ports) = pkt::read::<[u16; 2]>(ctx, inner + Ipv6Hdr::LEN) else { return true };
        tuple.__bindgen_anon_1.ipv6.saddr = words(ip.src_addr);
        tuple.__bindgen_anon_1.ipv6.daddr = words(ip.dst_addr);
        tuple.__bindgen_anon_1.ipv6.sport = ports[0];
        tuple.__bindgen_anon_1.ipv6.dport = ports[1];
        (inner + Ipv6Hdr::LEN, Ipv6Hdr::LEN, core::mem::size_of::<bpf_sock_tuple>() as u32)
    };
    // SAFETY: `tuple` lives on this stack for the call and `tuple_len` is its member's size; the
    // context is this program's. A non-null socket is released below on every path.
    let sk = unsafe { bpf_skc_lookup_tcp(ctx.ctx as *mut c_void, &mut tuple, tuple_len, BPF_F_CURRENT_NETNS as u64, 0) };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a socket the kernel returned, not yet released; `state` is readable on any.
    let listening = unsafe { (*sk).state } == BPF_TCP_LISTEN;
    let held = !listening || syncookie_valid(ctx, sk as *mut c_void, inner, ip_len, l4);
    // SAFETY: the socket from the lookup above, released once.
    unsafe { bpf_sk_release(sk as *mut c_void) };
    held
}

/// Whether the packet (an ACK to the listener `sk`) completes a handshake the listener answered
/// with a SYN cookie. The kernel checks the flags and whether cookies were sent lately.
#[inline(always)]
fn syncookie_valid(ctx: &XdpContext, sk: *mut c_void, inner: usize, ip_len: usize, l4: usize) -> bool {
    const TCP_LEN: usize = 20;
    let (iph, th) = if ip_len == Ipv4Hdr::LEN {
        (pkt::ptr_at::<[u8; Ipv4Hdr::LEN]>(ctx, inner).map(|p| p as *mut c_void), pkt::ptr_at::<[u8; TCP_LEN]>(ctx, l4))
    } else {
        (pkt::ptr_at::<[u8; Ipv6Hdr::LEN]>(ctx, inner).map(|p| p as *mut c_void), pkt::ptr_at::<[u8; TCP_LEN]>(ctx, l4))
    };
    let (Some(iph), Some(th)) = (iph, th) else { return false };
    // SAFETY: both pointers were bounds-checked for the lengths given; `sk` is a live socket.
    unsafe { bpf_tcp_check_syncookie(sk, iph, ip_len as u32, th as *mut _, TCP_LEN as u32) == 0 }
}

/// An address as the socket tuple holds it: four words in network order.
#[inline(always)]
fn words(addr: [u8; 16]) -> [u32; 4] {
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// Marks the tunnel forwarded, points it at `alternative` and sends it back to the hop that
/// delivered it.
#[inline(always)]
fn forward(ctx: &XdpContext, l2_len: usize, outer_ipv6: bool, udp: usize, alternative: &[u8; 16]) -> Result<Decision, DecapCounter> {
    let no_route = DecapCounter::DropSecondChanceNoRoute;
    let mapped = alternative[..12] == lb_common::ipv4_mapped([0; 4])[..12];
    if outer_ipv6 {
        if mapped {
            return Err(no_route); // the balancer pairs reals of one family only
        }
        let mut ip: Ipv6Hdr = pkt::read(ctx, l2_len).ok_or(no_route)?;
        if ip.hop_limit <= 1 {
            return Err(no_route);
        }
        ip.hop_limit -= 1;
        ip.dst_addr = *alternative;
        pkt::write(ctx, l2_len, ip).ok_or(no_route)?;
    } else {
        if !mapped || udp - l2_len != Ipv4Hdr::LEN {
            return Err(no_route);
        }
        let mut words: [u16; 10] = pkt::read::<[u16; 10]>(ctx, l2_len).ok_or(no_route)?.map(u16::from_be);
        let ttl = (words[4] >> 8) as u8;
        if ttl <= 1 {
            return Err(no_route);
        }
        words[4] -= 1 << 8;
        words[8] = u16::from_be_bytes([alternative[12], alternative[13]]);
        words[9] = u16::from_be_bytes([alternative[14], alternative[15]]);
        words[5] = 0;
        words[5] = csum::ipv4_header(&words);
        pkt::write(ctx, l2_len, words.map(u16::to_be)).ok_or(no_route)?;
    }
    // Two bytes (packet accesses are at least two): the kind, as it was, and the hops.
    pkt::write(ctx, udp + HOPS_OFFSET - 1, [KIND_ALTERNATIVE, HOPS_FORWARDED]).ok_or(no_route)?;
    let eth: EthHdr = pkt::read(ctx, 0).ok_or(no_route)?;
    pkt::write(ctx, 0, EthHdr { dst_addr: eth.src_addr, src_addr: eth.dst_addr, ether_type: eth.ether_type }).ok_or(no_route)?;
    Ok(Decision::Forwarded(xdp_action::XDP_TX))
}
