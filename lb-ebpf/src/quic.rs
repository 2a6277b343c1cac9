//! QUIC-LB (draft-ietf-quic-load-balancers-21): a short-header packet to a VIP with QUIC-LB goes
//! to the real whose server ID its destination connection ID carries, so a connection keeps its
//! real when the client's address or port changes. Everything else (long headers, other config
//! rotation bits, unknown server IDs, a down real, datagrams too short) goes by the connection
//! table and ring as before, counted by why. CID-routed packets are not recorded: the ID says
//! where they go, and the table keeps its room.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    aes::block_words,
    quic_lb::{MODE_FOUR_PASS, MODE_OFF, SHORT_HEADER_READ},
    stats::Counter,
    FlowKey, VIP_F_QUIC_LB,
};

use crate::{
    maglev,
    maps::{QUIC_LB, QUIC_SERVERS, REALS, SCRATCH},
    packet::L3,
    pkt, stats,
    step::Step,
};

/// Bits of `route`'s value that hold the real id; the VIP index is above them.
pub const REAL_ID_BITS: u32 = 17;
const _: () = assert!(lb_common::MAX_REALS <= 1 << REAL_ID_BITS && lb_common::MAX_VIPS <= 1 << (31 - REAL_ID_BITS));

const UDP_HEADER_LEN: usize = 8;
/// First octet of a QUIC packet: the long-header form bit. (The fixed bit next to it is not
/// looked at: peers that agree to it clear it at random, RFC 9287, and quinn does.)
const HEADER_FORM_LONG: u8 = 0x80;

/// For a client's UDP datagram: `vip_index << REAL_ID_BITS | real_id` when its connection ID
/// routes it, else 0 (not a QUIC-LB VIP, or a fallback, counted).
#[inline(never)] // in its own stack frame: the balancer's has no room for the blocks
pub fn route(ctx: &XdpContext, l3: &L3, flow: &FlowKey) -> Step {
    Step::of(Ok(match try_route(ctx, l3, flow) {
        Ok(routed) => routed,
        Err(why) => {
            stats::count(why);
            0
        }
    }))
}

#[inline(always)]
fn try_route(ctx: &XdpContext, l3: &L3, flow: &FlowKey) -> Result<u32, Counter> {
    let Some(meta) = maglev::vip(&flow.dst, flow.dst_port_be.to_ne_bytes(), flow.proto) else { return Ok(0) };
    if meta.flags & VIP_F_QUIC_LB == 0 {
        return Ok(0);
    }
    let Some(params) = QUIC_LB.get(meta.vip_index).filter(|p| p.mode != MODE_OFF) else { return Ok(0) };
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
    key.vip_index = meta.vip_index;
    for (i, word) in sid.iter().enumerate() {
        key.server_id[4 * i..4 * i + 4].copy_from_slice(&word.to_be_bytes());
    }
    // SAFETY: the value is copied out at once.
    let real_id = unsafe { QUIC_SERVERS.get(key) }.copied().ok_or(Counter::QuicUnknownServerId)?;
    let real = REALS.get(real_id).filter(|r| r.vip_index == meta.vip_index).ok_or(Counter::QuicUnknownServerId)?;
    if real.is_down() {
        return Err(Counter::QuicRealDown);
    }
    stats::count(Counter::QuicRoutedByCid);
    Ok(meta.vip_index << REAL_ID_BITS | real_id)
}
