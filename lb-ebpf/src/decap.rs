//! Backend side: strips IPIP / IPv6-in-IPv6 / IPv4-in-IPv6 addressed to a local address
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
    packet::{ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6},
    parse, pkt,
};

#[inline(always)]
fn is_local(addr: &[u8; 16]) -> bool {
    // SAFETY: only the presence of the value is used, not the reference.
    unsafe { DECAP_ADDRS.get(addr) }.is_some()
}

/// `Ok(Some(tunnel))`: stripped, and which kind of tunnel it was. `Ok(None)`: not a tunnel to us.
#[inline(always)]
pub fn try_decap(ctx: &XdpContext) -> Result<Option<DecapCounter>, DecapCounter> {
    let Ok((l2_len, ether_type)) = parse::l2(ctx) else { return Ok(None) };
    let (outer_len, inner_type, tunnel, source) = match ether_type {
        ETH_P_IP => {
            let Some(ip) = pkt::read::<Ipv4Hdr>(ctx, l2_len) else { return Ok(None) };
            if ip.proto != IPPROTO_IPIP || !is_local(&lb_common::ipv4_mapped(ip.dst_addr)) {
                return Ok(None);
            }
            (((ip.vihl & 0x0f) as usize) * 4, ETH_P_IP, DecapCounter::Ipip, lb_common::ipv4_mapped(ip.src_addr))
        }
        ETH_P_IPV6 => {
            let Some(ip) = pkt::read::<Ipv6Hdr>(ctx, l2_len) else { return Ok(None) };
            let (inner_type, tunnel) = match ip.next_hdr {
                IPPROTO_IPV6 => (ETH_P_IPV6, DecapCounter::Ip6ip6),
                IPPROTO_IPIP => (ETH_P_IP, DecapCounter::Ip4in6),
                _ => return Ok(None),
            };
            if !is_local(&ip.dst_addr) {
                return Ok(None);
            }
            (Ipv6Hdr::LEN, inner_type, tunnel, ip.src_addr)
        }
        _ => return Ok(None),
    };
    // The inner packet's fixed header must be there, or the stack gets garbage.
    let inner_min = if inner_type == ETH_P_IP { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    if outer_len < Ipv4Hdr::LEN || pkt::ptr_at::<[u8; 2]>(ctx, l2_len + outer_len + inner_min - 2).is_none() {
        return Err(DecapCounter::DropMalformed);
    }
    if DECAP_SOURCES.get(Key::new(128, source)).is_none() {
        return Err(DecapCounter::DropForeignSource);
    }
    let inner = l2_len + outer_len;
    let inner_dst = if inner_type == ETH_P_IP {
        lb_common::ipv4_mapped(pkt::read::<[u8; 4]>(ctx, inner + 16).ok_or(DecapCounter::DropMalformed)?)
    } else {
        pkt::read::<[u8; 16]>(ctx, inner + 24).ok_or(DecapCounter::DropMalformed)?
    };
    // SAFETY: only the presence of the value is used, not the reference.
    if unsafe { DECAP_VIPS.get(inner_dst) }.is_none() {
        return Err(DecapCounter::DropNotVip);
    }

    strip(ctx, l2_len, outer_len, inner_type).ok_or(DecapCounter::DropAdjustFailed)?;
    Ok(Some(tunnel))
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
