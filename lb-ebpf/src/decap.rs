//! Backend side: strips IPIP / IPv6-in-IPv6 / IPv4-in-IPv6, and GUE with an alternative real
//! (the second chance, decided in `redirect`), addressed to a local address
//! (`DECAP_ADDRS`) and passes the inner packet up the stack, which delivers it to the VIP on
//! loopback. A tunnel is taken only from a balancer's source prefix (`DECAP_SOURCES`) and only
//! for one of this backend's VIPs (`DECAP_VIPS`); other tunnels to us are dropped and counted.
//! Everything else passes untouched.

use aya_ebpf::programs::XdpContext;
use lb_common::stats::DecapCounter;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};

use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    maps::{DECAP_ADDRS, DECAP_SOURCES, DECAP_VIPS},
    packet::{ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP},
    parse, pkt, redirect,
};
use lb_common::second_chance::{GUE_PORT, TUNNEL_LEN};

#[inline(always)]
pub fn is_local(addr: &[u8; 16]) -> bool {
    // SAFETY: only the presence of the value is used, not the reference.
    unsafe { DECAP_ADDRS.get(addr) }.is_some()
}

/// What became of a frame.
pub enum Decap {
    /// Not a tunnel to us: passed untouched.
    NotOurs,
    /// Stripped and passed up: which kind of tunnel it was, and for the second chance's GUE,
    /// what decided the delivery.
    Stripped(DecapCounter, Option<DecapCounter>),
    /// Sent on to the alternative real (the second chance) with this XDP action.
    Forwarded(u32),
}

/// A tunnel to a local address, as its outer headers tell.
struct Outer {
    /// Bytes from the outer IP header to the inner packet.
    len: usize,
    inner_type: u16,
    tunnel: DecapCounter,
    source: [u8; 16],
    ipv6: bool,
    /// GUE: where its UDP header is (0 for the other tunnels).
    udp: usize,
}

#[inline(always)]
pub fn try_decap(ctx: &XdpContext) -> Result<Decap, DecapCounter> {
    let Ok((l2_len, ether_type)) = parse::l2(ctx) else { return Ok(Decap::NotOurs) };
    let Some(outer) = outer(ctx, l2_len, ether_type)? else { return Ok(Decap::NotOurs) };
    // The inner packet's fixed header must be there, or the stack gets garbage.
    let inner_min = if outer.inner_type == ETH_P_IP { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    if pkt::ptr_at::<[u8; 2]>(ctx, l2_len + outer.len + inner_min - 2).is_none() {
        return Err(DecapCounter::DropMalformed);
    }
    if DECAP_SOURCES.get(Key::new(128, outer.source)).is_none() {
        return Err(DecapCounter::DropForeignSource);
    }
    let inner = l2_len + outer.len;
    let inner_dst = if outer.inner_type == ETH_P_IP {
        lb_common::ipv4_mapped(pkt::read::<[u8; 4]>(ctx, inner + 16).ok_or(DecapCounter::DropMalformed)?)
    } else {
        pkt::read::<[u8; 16]>(ctx, inner + 24).ok_or(DecapCounter::DropMalformed)?
    };
    // SAFETY: only the presence of the value is used, not the reference.
    if unsafe { DECAP_VIPS.get(inner_dst) }.is_none() {
        return Err(DecapCounter::DropNotVip);
    }
    let mut decided = None;
    if outer.tunnel == DecapCounter::Gue {
        match redirect::decide(ctx, l2_len, outer.ipv6, outer.udp, outer.inner_type)? {
            redirect::Decision::Deliver(why) => decided = Some(why),
            redirect::Decision::Forwarded(action) => return Ok(Decap::Forwarded(action)),
        }
    }
    strip(ctx, l2_len, outer.len, outer.inner_type).ok_or(DecapCounter::DropAdjustFailed)?;
    Ok(Decap::Stripped(outer.tunnel, decided))
}

/// The outer headers of a tunnel to a local address: IPIP, IPv6-in-IPv6, IPv4-in-IPv6, or GUE
/// (the second chance) over either family. `None`: not one.
#[inline(always)]
fn outer(ctx: &XdpContext, l2_len: usize, ether_type: u16) -> Result<Option<Outer>, DecapCounter> {
    let (ip_len, proto, source, ipv6) = match ether_type {
        ETH_P_IP => {
            let Some(ip) = pkt::read::<Ipv4Hdr>(ctx, l2_len) else { return Ok(None) };
            if !matches!(ip.proto, IPPROTO_IPIP | IPPROTO_UDP) || !is_local(&lb_common::ipv4_mapped(ip.dst_addr)) {
                return Ok(None);
            }
            let ip_len = ((ip.vihl & 0x0f) as usize) * 4;
            if ip_len < Ipv4Hdr::LEN {
                return Err(DecapCounter::DropMalformed);
            }
            (ip_len, ip.proto, lb_common::ipv4_mapped(ip.src_addr), false)
        }
        ETH_P_IPV6 => {
            let Some(ip) = pkt::read::<Ipv6Hdr>(ctx, l2_len) else { return Ok(None) };
            if !matches!(ip.next_hdr, IPPROTO_IPIP | IPPROTO_IPV6 | IPPROTO_UDP) || !is_local(&ip.dst_addr) {
                return Ok(None);
            }
            (Ipv6Hdr::LEN, ip.next_hdr, ip.src_addr, true)
        }
        _ => return Ok(None),
    };
    let mut udp = 0;
    let (len, inner_proto, tunnel) = match proto {
        IPPROTO_UDP => {
            let Some(ports) = pkt::read::<[u16; 2]>(ctx, l2_len + ip_len) else { return Ok(None) };
            if u16::from_be(ports[1]) != GUE_PORT {
                return Ok(None);
            }
            // The port is ours: from here a tunnel that is not ours is dropped, not passed.
            udp = l2_len + ip_len;
            (ip_len + TUNNEL_LEN as usize, redirect::inner_protocol(ctx, l2_len + ip_len)?, DecapCounter::Gue)
        }
        inner => (
            ip_len,
            inner,
            if !ipv6 {
                DecapCounter::Ipip
            } else if inner == IPPROTO_IPV6 {
                DecapCounter::Ip6ip6
            } else {
                DecapCounter::Ip4in6
            },
        ),
    };
    let inner_type = if inner_proto == IPPROTO_IPV6 { ETH_P_IPV6 } else { ETH_P_IP };
    Ok(Some(Outer { len, inner_type, tunnel, source, ipv6, udp }))
}

/// Removes the `outer_len`-byte outer IP header behind the L2 header; the L2 header (VLAN tag
/// kept) now announces `inner_type`.
#[inline(always)]
pub fn strip(ctx: &XdpContext, l2_len: usize, outer_len: usize, inner_type: u16) -> Option<()> {
    let eth: EthHdr = pkt::read(ctx, 0)?;
    let tagged = l2_len > EthHdr::LEN;
    let tci: [u8; 2] = if tagged { pkt::read(ctx, EthHdr::LEN)? } else { [0; 2] };
    pkt::adjust_head(ctx, outer_len as i32)?;
    let ether_type = if tagged { ETH_P_8021Q } else { inner_type }.to_be();
    pkt::write(ctx, 0, EthHdr { ether_type, ..eth })?;
    if tagged {
        pkt::write(ctx, EthHdr::LEN, VlanHdr { tci, ether_type: inner_type.to_be() })?;
    }
    Some(())
}
