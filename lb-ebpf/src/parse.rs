//! Header parsing: Ethernet (one 802.1Q tag), IPv4 (with options), IPv6, TCP, UDP.
//!
//! The rule for what is ours: a malformed packet is dropped (by reason) only when its destination
//! address is a VIP address (`VIP_ADDRS`); anything else passes untouched, however odd it looks. A
//! frame cut short before its destination address passes too, counted as `pass_truncated`, as
//! nothing says it is for us (the kernel drops it). Destinations whose `VIP_FILTER` bit is
//! clear pass at once.

use core::mem::MaybeUninit;

use lb_common::{ipv4_mapped, stats::Counter, FlowKey};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};

use crate::{
    maps::{VIP_ADDRS, VIP_FILTER},
    packet::{ClientPacket, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, L3},
    pkt,
};

/// Length of the L2 header and the EtherType after it.
#[inline(always)]
pub fn l2(ctx: &aya_ebpf::programs::XdpContext) -> Result<(usize, u16), Counter> {
    let eth: EthHdr = pkt::read(ctx, 0).ok_or(Counter::PassTruncated)?;
    let ether_type = u16::from_be(eth.ether_type);
    if ether_type != ETH_P_8021Q {
        return Ok((EthHdr::LEN, ether_type));
    }
    let vlan: VlanHdr = pkt::read(ctx, EthHdr::LEN).ok_or(Counter::PassTruncated)?;
    Ok((EthHdr::LEN + VlanHdr::LEN, u16::from_be(vlan.ether_type)))
}

/// Exact: `addr` carries a VIP (a hash lookup).
#[inline(always)]
pub fn is_vip_addr(addr: &[u8; 16]) -> bool {
    // SAFETY: only the presence of the value is used, not the reference.
    unsafe { VIP_ADDRS.get(addr) }.is_some()
}

/// `false` proves `addr` carries no VIP (an inlined array read); `true` may be a collision.
#[inline(always)]
fn may_be_vip_addr(addr: &[u8; 16]) -> bool {
    let bit = lb_common::hash::addr_filter_bit(addr);
    VIP_FILTER.get(bit / 64).is_some_and(|&word| word & (1 << (bit % 64)) != 0)
}

/// `reason` for a malformed packet to a VIP address; anything else malformed just passes.
#[inline(always)]
pub fn drop_if_vip_addr(addr: &[u8; 16], reason: Counter) -> Counter {
    if is_vip_addr(addr) {
        reason
    } else {
        Counter::Pass
    }
}

/// Parses L2 and L3 into `out`; `Ok` means `out` is initialised. `Err` carries why the packet is
/// not balanced (a pass or a drop reason). Writing into the caller's slot, uninitialised until
/// then, keeps the stack small (the verifier allows 512 bytes across calls) and costs nothing up
/// front (zeroing would be a `memset` call in BPF). Returning a reference instead would lose the
/// verifier's track of the pointer.
#[inline(always)]
pub fn l3(ctx: &aya_ebpf::programs::XdpContext, out: &mut MaybeUninit<L3>) -> Result<(), Counter> {
    let (l2_len, ether_type) = l2(ctx)?;
    match ether_type {
        ETH_P_IP => ipv4(ctx, l2_len, out),
        ETH_P_IPV6 => ipv6(ctx, l2_len, out),
        _ => Err(Counter::Pass),
    }
}

#[inline(always)]
fn ipv4(ctx: &aya_ebpf::programs::XdpContext, l2_len: usize, out: &mut MaybeUninit<L3>) -> Result<(), Counter> {
    // The destination alone first: most traffic is not ours and needs nothing else.
    let dst: [u8; 4] = pkt::read(ctx, l2_len + 16).ok_or(Counter::PassTruncated)?;
    let dst = ipv4_mapped(dst);
    if !may_be_vip_addr(&dst) {
        return Err(Counter::Pass);
    }
    let ip: Ipv4Hdr = pkt::read(ctx, l2_len).ok_or(Counter::PassTruncated)?;
    let header_len = ((ip.vihl & 0x0f) as usize) * 4;
    let total_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || total_len < header_len || l2_len + total_len > pkt::len(ctx) {
        return Err(drop_if_vip_addr(&dst, Counter::DropBadIpHeader));
    }
    // More-fragments flag or a fragment offset: no ports to balance on.
    if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
        return Err(drop_if_vip_addr(&dst, Counter::DropFragment));
    }
    out.write(L3 {
        l2_len,
        ipv6: false,
        ip_len: total_len as u32,
        l4_off: l2_len + header_len,
        l4_len: (total_len - header_len) as u32,
        proto: ip.proto,
        tos: ip.tos,
        src: ipv4_mapped(ip.src_addr),
        dst,
    });
    Ok(())
}

#[inline(always)]
fn ipv6(ctx: &aya_ebpf::programs::XdpContext, l2_len: usize, out: &mut MaybeUninit<L3>) -> Result<(), Counter> {
    let dst: [u8; 16] = pkt::read(ctx, l2_len + 24).ok_or(Counter::PassTruncated)?;
    if !may_be_vip_addr(&dst) {
        return Err(Counter::Pass);
    }
    let ip: Ipv6Hdr = pkt::read(ctx, l2_len).ok_or(Counter::PassTruncated)?;
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    if ip.vcf[0] >> 4 != 6 || l2_len + Ipv6Hdr::LEN + payload_len > pkt::len(ctx) {
        return Err(drop_if_vip_addr(&ip.dst_addr, Counter::DropBadIpHeader));
    }
    let next = ip.next_hdr;
    if is_ipv6_extension(next) {
        // We do not walk extension headers: the ports may be anywhere behind them.
        return Err(drop_if_vip_addr(&ip.dst_addr, Counter::DropIpv6ExtHeader));
    }
    out.write(L3 {
        l2_len,
        ipv6: true,
        ip_len: (Ipv6Hdr::LEN + payload_len) as u32,
        l4_off: l2_len + Ipv6Hdr::LEN,
        l4_len: payload_len as u32,
        proto: next,
        tos: (ip.vcf[0] << 4) | (ip.vcf[1] >> 4),
        src: ip.src_addr,
        dst: ip.dst_addr,
    });
    Ok(())
}

/// Hop-by-hop, routing, fragment, ESP, AH, destination options, mobility, HIP, shim6, experiments.
#[inline(always)]
fn is_ipv6_extension(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Writes `flow` (client -> VIP) from a TCP or UDP packet (`Ok`: written); says what the packet
/// tells about where its flow starts.
#[inline(always)]
pub fn flow(ctx: &aya_ebpf::programs::XdpContext, l3: &L3, flow: &mut FlowKey) -> Result<ClientPacket, Counter> {
    let (src_port, dst_port, tcp_flags) = ports(ctx, l3)?;
    *flow = FlowKey {
        src: l3.src,
        dst: l3.dst,
        src_port_be: u16::from_ne_bytes(src_port),
        dst_port_be: u16::from_ne_bytes(dst_port),
        proto: l3.proto,
        _pad: [0; 3],
    };
    Ok(match (l3.proto, tcp_flags & (TCP_SYN | TCP_ACK)) {
        (IPPROTO_TCP, TCP_SYN) => ClientPacket::Syn,
        (IPPROTO_TCP, _) => ClientPacket::MidFlow,
        _ => ClientPacket::Datagram,
    })
}

/// Source and destination port (network byte order) and TCP flags (0 for UDP) of a TCP or UDP
/// packet whose transport header must lie whole inside the IP packet.
#[inline(always)]
fn ports(ctx: &aya_ebpf::programs::XdpContext, l3: &L3) -> Result<([u8; 2], [u8; 2], u8), Counter> {
    let bad = Counter::DropBadL4Header;
    let ports: [[u8; 2]; 2] = pkt::read(ctx, l3.l4_off).ok_or(bad)?;
    if l3.proto == IPPROTO_TCP {
        let [data_offset, flags]: [u8; 2] = pkt::read(ctx, l3.l4_off + 12).ok_or(bad)?;
        let header_len = ((data_offset >> 4) as u32) * 4;
        if header_len < 20 || header_len > l3.l4_len {
            return Err(bad);
        }
        Ok((ports[0], ports[1], flags))
    } else {
        let udp_len: [u8; 2] = pkt::read(ctx, l3.l4_off + 4).ok_or(bad)?;
        let udp_len = u16::from_be_bytes(udp_len) as u32;
        if l3.l4_len < 8 || udp_len < 8 || udp_len > l3.l4_len {
            return Err(bad);
        }
        Ok((ports[0], ports[1], 0))
    }
}
