//! Encapsulation toward a real (or a peer node, for a handoff): IPIP for IPv4 targets;
//! IPv6-in-IPv6 and IPv4-in-IPv6 for IPv6 ones; GUE when an alternative real goes along (the
//! second chance, `lb_common::second_chance`). The inner packet is not touched (TTL included);
//! toward a real the outer source carries per-flow entropy so the backend side's ECMP / RSS
//! spreads flows.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    second_chance::{self, Tunnel},
    stats::Counter,
    LbConfig, Real, IP6_OVERHEAD, IPIP_OVERHEAD, REAL_F_IPV6,
};
use network_types::{eth::EthHdr, vlan::VlanHdr};

use crate::{
    csum,
    maps::REALS,
    packet::{Outer, Scratch, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP, L3},
    pkt,
    step::Step,
};

const OUTER_TTL: u8 = 64;

/// Low `bits` bits set (0 ..= 32).
#[inline(always)]
fn host_mask(bits: u32) -> u32 {
    if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    }
}

impl Outer {
    /// Bytes of the outer IP header.
    #[inline(always)]
    pub fn header_len(&self) -> u32 {
        if self.ipv6 {
            IP6_OVERHEAD
        } else {
            IPIP_OVERHEAD
        }
    }

    /// Toward `real`: the source's host bits and the IPv6 flow label carry the flow hash.
    #[inline(always)]
    pub fn to_real(real: &Real, cfg: &LbConfig, hash: u32) -> Self {
        let ipv6 = real.flags & REAL_F_IPV6 != 0;
        let mut src = [0u8; 16];
        if ipv6 {
            src = cfg.src_v6;
            let mask = host_mask(cfg.src_v6_host_bits);
            let low = (u32::from_be_bytes([src[12], src[13], src[14], src[15]]) & !mask) | (hash & mask);
            src[12..16].copy_from_slice(&low.to_be_bytes());
        } else {
            let mask = host_mask(cfg.src_v4_host_bits);
            let low = (u32::from_be_bytes(cfg.src_v4) & !mask) | (hash & mask);
            src[12..16].copy_from_slice(&low.to_be_bytes());
        }
        Self { dst: real.addr, ipv6, src, id: if ipv6 { hash } else { 0 } }
    }
}

/// An outer IPv6 header as it goes on the wire.
#[repr(C)]
struct Ipv6Outer {
    vcf: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Ipv6Outer>() == 40);

/// Prepends `outer` and points the frame at the next hop.
#[inline(always)]
pub fn encapsulate(ctx: &XdpContext, l3: &L3, outer: &Outer, cfg: &LbConfig) -> Result<(), Counter> {
    let inner = if l3.ipv6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };
    push_headers(ctx, l3, outer, cfg, 0, inner).map(|_| ())
}

/// `encapsulate`, with the real `alt_real_id` carried along for the backend (the second chance:
/// GUE, `lb_common::second_chance`). A subprogram: only packets the table could not place with
/// certainty come here. `Ok(0)` when sent.
#[inline(never)]
pub fn with_alternative(ctx: &XdpContext, l3: &L3, scratch: &Scratch, alt_real_id: u32, cfg: &LbConfig) -> Step {
    Step::of(try_with_alternative(ctx, l3, scratch, alt_real_id, cfg))
}

#[inline(always)]
fn try_with_alternative(ctx: &XdpContext, l3: &L3, scratch: &Scratch, alt_real_id: u32, cfg: &LbConfig) -> Result<u32, Counter> {
    let outer = &scratch.outer;
    let alternative = REALS.get(alt_real_id).ok_or(Counter::DropNoReal)?.addr;
    let ip = push_headers(ctx, l3, outer, cfg, second_chance::TUNNEL_LEN, IPPROTO_UDP)?;
    let outer_len = outer.header_len() as usize;
    let tunnel = Tunnel {
        // Entropy for the ECMP and RSS of the backend side (the client's port and address), kept
        // out of the well-known ports.
        src_port_be: (0x8000 | (scratch.flow.src_port_be ^ u16::from_ne_bytes([scratch.flow.src[14], scratch.flow.src[15]])) & 0x7fff)
            .to_be(),
        dst_port_be: second_chance::GUE_PORT.to_be(),
        udp_len_be: ((l3.ip_len + second_chance::TUNNEL_LEN) as u16).to_be(),
        udp_csum: 0,
        gue_flags_hlen: second_chance::GUE_FLAGS_HLEN,
        gue_proto: if l3.ipv6 { IPPROTO_IPV6 } else { IPPROTO_IPIP },
        gue_flags: 0,
        kind: second_chance::KIND_ALTERNATIVE,
        hops: 0,
        _reserved: [0; 2],
        alternative,
    };
    pkt::write(ctx, ip + outer_len, tunnel).ok_or(Counter::DropEncapFailed)?;
    Ok(0)
}

/// Prepends the L2 header and `outer`'s IP header (protocol `protocol`), leaving `extra` bytes
/// between it and the inner packet for the caller; returns the outer IP header's offset.
#[inline(always)]
fn push_headers(ctx: &XdpContext, l3: &L3, outer: &Outer, cfg: &LbConfig, extra: u32, protocol: u8) -> Result<usize, Counter> {
    if l3.ipv6 && !outer.ipv6 {
        return Err(Counter::DropFamilyMismatch);
    }
    let overhead = outer.header_len() + extra;
    if l3.ip_len + overhead > cfg.mtu {
        return Err(Counter::DropMtuExceeded);
    }

    // Read what we keep of the old L2 header before the head moves over it.
    let fail = Counter::DropEncapFailed;
    let old_eth: EthHdr = pkt::read(ctx, 0).ok_or(fail)?;
    let tagged = l3.l2_len > EthHdr::LEN;
    let tci: [u8; 2] = if tagged { pkt::read(ctx, EthHdr::LEN).ok_or(fail)? } else { [0; 2] };

    pkt::adjust_head(ctx, -(overhead as i32)).ok_or(fail)?;

    let outer_type = if outer.ipv6 { ETH_P_IPV6 } else { ETH_P_IP };
    let eth = EthHdr {
        dst_addr: cfg.next_hop_mac,
        src_addr: old_eth.dst_addr, // the address the frame came in on: ours
        ether_type: if tagged { ETH_P_8021Q } else { outer_type }.to_be(),
    };
    pkt::write(ctx, 0, eth).ok_or(fail)?;
    if tagged {
        pkt::write(ctx, EthHdr::LEN, VlanHdr { tci, ether_type: outer_type.to_be() }).ok_or(fail)?;
    }

    // Each header is built whole and written at once: one bounds check and a few word stores.
    let ip = l3.l2_len;
    if outer.ipv6 {
        let vcf = (6u32 << 28) | ((l3.tos as u32) << 20) | (outer.id & 0x000f_ffff);
        let header = Ipv6Outer {
            vcf: vcf.to_be_bytes(),
            payload_len: ((l3.ip_len + extra) as u16).to_be_bytes(),
            next_header: protocol,
            hop_limit: OUTER_TTL,
            src: outer.src,
            dst: outer.dst,
        };
        pkt::write(ctx, ip, header).ok_or(fail)?;
    } else {
        let src = [outer.src[12], outer.src[13], outer.src[14], outer.src[15]];
        let dst = [outer.dst[12], outer.dst[13], outer.dst[14], outer.dst[15]];
        let mut words = [
            0x4500 | l3.tos as u16,
            (l3.ip_len + IPIP_OVERHEAD + extra) as u16,
            outer.id as u16,
            0x4000, // don't fragment: oversize packets were dropped above
            (OUTER_TTL as u16) << 8 | protocol as u16,
            0, // checksum, below
            u16::from_be_bytes([src[0], src[1]]),
            u16::from_be_bytes([src[2], src[3]]),
            u16::from_be_bytes([dst[0], dst[1]]),
            u16::from_be_bytes([dst[2], dst[3]]),
        ];
        words[5] = csum::ipv4_header(&words);
        pkt::write(ctx, ip, words.map(u16::to_be)).ok_or(fail)?;
    }
    Ok(ip)
}
