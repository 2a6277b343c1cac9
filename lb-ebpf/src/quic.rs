//! QUIC-LB (draft-ietf-quic-load-balancers-21): a short-header packet to a VIP with QUIC-LB goes
//! to the real whose server ID its destination connection ID carries, so a connection keeps its
//! real when the client's address or port changes. Everything else (long headers, other config
//! rotation bits, unknown server IDs, a down real, datagrams too short) goes by the connection
//! table and ring as before, counted by why.
//!
//! The table is read first, so a UDP VIP without QUIC-LB pays one array read for it; a QUIC VIP's
//! datagram is then checked by its ID whatever the table says (the table's entry for a 5-tuple may
//! be an earlier connection's: a NAT reusing the port). A 5-tuple the table did not know is
//! recorded with the ID's real, so the next packets skip the VIP lookup.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    aes::block_words,
    hash::flow_hash as flow_hash_of,
    quic_lb::{MODE_FOUR_PASS, MODE_OFF, SHORT_HEADER_READ},
    stats::Counter,
    FlowKey, Real, VIP_F_QUIC_LB,
};

use crate::{
    conntrack::{self, Chosen},
    maglev,
    maps::{QUIC_LB, QUIC_SERVERS, REALS, SCRATCH},
    packet::L3,
    pkt, stats,
    step::Step,
};

/// Bits of `route`'s value that hold the real id; the VIP index is above them.
pub const REAL_ID_BITS: u32 = 17;
pub const REAL_ID_MASK: u32 = (1 << REAL_ID_BITS) - 1;
const _: () = assert!(lb_common::MAX_REALS <= 1 << REAL_ID_BITS && lb_common::MAX_VIPS <= 1 << (31 - REAL_ID_BITS));

const UDP_HEADER_LEN: usize = 8;
/// First octet of a QUIC packet: the long-header form bit. (The fixed bit next to it is not
/// looked at: peers that agree to it clear it at random, RFC 9287, and quinn does.)
const HEADER_FORM_LONG: u8 = 0x80;

/// `route`'s `vip_index` when the connection table does not know the flow.
pub const VIP_UNKNOWN: u32 = u32::MAX;

/// Whether a datagram of VIP `vip_index` (`VIP_UNKNOWN`: not known yet) may be routed by its
/// connection ID: an array read, so UDP VIPs without QUIC-LB pay nearly nothing for it.
#[inline(always)]
pub fn may_route(vip_index: u32) -> bool {
    vip_index == VIP_UNKNOWN || QUIC_LB.get(vip_index).is_some_and(|p| p.mode != MODE_OFF)
}

/// For a client's UDP datagram to VIP `vip_index` (`VIP_UNKNOWN`: looked up here):
/// `vip_index << REAL_ID_BITS | real_id` when its connection ID routes it, else 0 (not a
/// QUIC-LB VIP, or a fallback, counted).
#[inline(never)] // in its own stack frame: the balancer's has no room for the blocks
pub fn route(ctx: &XdpContext, l3: &L3, flow: &FlowKey, vip_index: u32) -> Step {
    Step::of(Ok(match try_route(ctx, l3, flow, vip_index) {
        Ok(routed) => routed,
        Err(why) => {
            stats::count(why);
            0
        }
    }))
}

#[inline(always)]
fn try_route(ctx: &XdpContext, l3: &L3, flow: &FlowKey, vip_index: u32) -> Result<u32, Counter> {
    let vip_index = if vip_index != VIP_UNKNOWN {
        vip_index
    } else {
        match maglev::vip(&flow.dst, flow.dst_port_be.to_ne_bytes(), flow.proto) {
            Some(meta) if meta.flags & VIP_F_QUIC_LB != 0 => meta.vip_index,
            _ => return Ok(0),
        }
    };
    let Some(params) = QUIC_LB.get(vip_index).filter(|p| p.mode != MODE_OFF) else { return Ok(0) };
    let udp_len: [u8; 2] = pkt::read(ctx, l3.l4_off + 4).ok_or(Counter::QuicBadLength)?;
    let payload_len = (u16::from_be_bytes(udp_len) as usize).saturating_sub(UDP_HEADER_LEN);
    let payload = l3.l4_off + UDP_HEADER_LEN;
    if payload_len == 0 {
        return Err(Counter::QuicNotQuic);
    }
    let [first, _]: [u8; 2] = pkt::read(ctx, payload).ok_or(Counter::QuicBadLength)?;
    if first & HEADER_FORM_LONG != 0 {
        return Err(Counter::QuicLongHeader);
    }
    if payload_len < 1 + params.cid_len as usize {
        return Err(Counter::QuicBadLength);
    }
    // The first octet and a whole 20-octet ID must be in the frame: every QUIC short-header
    // packet holds as much.
    pkt::ptr_at::<[u8; SHORT_HEADER_READ]>(ctx, payload).ok_or(Counter::QuicBadLength)?;
    let [cid_first, _]: [u8; 2] = pkt::read(ctx, payload + 1).ok_or(Counter::QuicBadLength)?;
    if cid_first >> 5 != params.config_id {
        return Err(Counter::QuicOtherConfig);
    }
    let body: [u8; 16] = pkt::read(ctx, payload + 2).ok_or(Counter::QuicBadLength)?;
    let body = block_words(body);
    // The four passes' right half starts 2 to 9 octets into server ID and nonce.
    let right = if params.mode == MODE_FOUR_PASS {
        let octets: [u8; 16] = pkt::read(ctx, payload + 2 + (params.right_offset as usize & 0xf)).ok_or(Counter::QuicBadLength)?;
        block_words(octets)
    } else {
        body
    };
    // The blocks and the key live in the per-CPU scratch: this frame, the balancer's and the
    // cipher's share 512 bytes.
    // SAFETY: this CPU's entry, which nothing else uses before this program ends.
    let scratch = unsafe { &mut *SCRATCH.get_ptr_mut(0).ok_or(Counter::DropNoConfig)? };
    let sid = params.server_id(body, right, &mut scratch.quic_work);
    let key = &mut scratch.server_id;
    key.vip_index = vip_index;
    for (i, word) in sid.iter().enumerate() {
        key.server_id[4 * i..4 * i + 4].copy_from_slice(&word.to_be_bytes());
    }
    // SAFETY: the value is copied out at once.
    let real_id = unsafe { QUIC_SERVERS.get(key) }.copied().ok_or(Counter::QuicUnknownServerId)?;
    let real = REALS.get(real_id).filter(|r| r.vip_index == vip_index).ok_or(Counter::QuicUnknownServerId)?;
    if real.is_down() {
        return Err(Counter::QuicRealDown);
    }
    stats::count(Counter::QuicRoutedByCid);
    Ok(vip_index << REAL_ID_BITS | real_id)
}

/// The real `route` found (`by_cid`), as the balancer sends to it. A flow the table did not know
/// (`flow_hash` None) is recorded, within the insert limit, so its next packets are table hits
/// and the ID is only checked; one it knew with another real keeps its entry (the ID wins).
#[inline(always)]
pub fn chosen(by_cid: u32, flow: &FlowKey, flow_hash: Option<u32>) -> Result<(Chosen, &'static Real), Counter> {
    let (real_id, vip_index) = (by_cid & REAL_ID_MASK, by_cid >> REAL_ID_BITS);
    let real = REALS.get(real_id).ok_or(Counter::DropNoReal)?;
    let (flow_hash, recorded) = match flow_hash {
        Some(hash) => (hash, false),
        None => {
            let hash = flow_hash_of(flow);
            (hash, conntrack::record(flow, real_id, hash, vip_index))
        }
    };
    Ok((Chosen { real_id, vip_index, flow_hash, recorded, unknown_mid_flow: false, alt_real_id: 0 }, real))
}
