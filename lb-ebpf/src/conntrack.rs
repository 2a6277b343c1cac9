//! Connection tracking: which real a known flow has (the connection table, `CONNS`), and for a
//! flow the table does not know, whether to record it, hand it to a peer, or forward it by the
//! ring unrecorded (`new_flow`). The ring lookup itself is `maglev`'s.

use core::mem::MaybeUninit;

use lb_common::{
    hash::{flow_hash, source_hash},
    limits,
    stats::Counter,
    ConnEntry, FlowKey, Real, MAX_REALS, REAL_ID_PEER, SYN_SEEN_SLOTS, VIP_F_SOURCE_AFFINITY,
};

use crate::{
    handoff, limit, maglev,
    maps::{CONNS, REALS, SYN_SEEN, VIP_GEN},
    packet::{Arrival, ClientPacket, IPPROTO_TCP, L3},
    stats,
    step::Step,
};

/// The real chosen for a flow, by the connection table or the ring.
#[derive(Clone, Copy)]
pub struct Chosen {
    pub real_id: u32,
    pub vip_index: u32,
    /// Entropy for the outer header.
    pub flow_hash: u32,
    /// A connection-table entry was made for the flow.
    pub recorded: bool,
    /// A client's mid-flow TCP packet whose connection neither the table nor `SYN_SEEN` knew,
    /// balanced here (for `lb capture`).
    pub unknown_mid_flow: bool,
    /// The real the backend forwards the packet to when it has no socket for it (the second
    /// chance); 0: none.
    pub alt_real_id: u32,
}

/// `new_flow`'s `Step` value: the flow goes to the real written into `out` ...
pub const TO_REAL: u32 = 0;
/// ... or to a peer node (`handoff::tunnel`): a step result, not a counter.
pub const TO_PEER: u32 = 1;

/// The real the connection table holds for `flow`, if the entry still counts: its VIP is the
/// same generation and its real is not down.
#[inline(always)]
pub fn known(flow: &FlowKey) -> Option<(Chosen, &'static Real)> {
    // SAFETY: the entry is copied out at once.
    let entry = *unsafe { CONNS.get(flow) }?;
    if VIP_GEN.get(entry.vip_index()).copied() != Some(entry.vip_generation) {
        return None;
    }
    let real = REALS.get(entry.real_id)?;
    if real.is_down() {
        return None;
    }
    let alt_real_id = maglev::forwardable(real, entry.alt_real_id());
    let chosen = Chosen {
        real_id: entry.real_id,
        vip_index: entry.vip_index(),
        flow_hash: entry.flow_hash,
        recorded: false,
        unknown_mid_flow: false,
        alt_real_id,
    };
    Some((chosen, real))
}

/// For a flow the connection table does not know (or was not asked about): `TO_REAL` with the
/// real of the flow's hash (the source's, for source affinity) in its VIP's ring written into
/// `out`, or `TO_PEER`: `arrival` calls for a handoff. `Err(Pass)`: no VIP.
///
/// What is recorded, against floods of spoofed packets: a TCP flow when its handshake's ACK
/// comes (its SYN is only remembered, in `SYN_SEEN`), a UDP flow at once, a handed-off one when
/// it is ours; never for an ICMP error. A mid-flow packet of a connection whose SYN did not come
/// here (another node's or site's, or spoofed) is handed off, or without peers recorded, within
/// the per-CPU handoff limit, and over it forwarded unrecorded: a flood of spoofed ACKs takes no
/// more than that of the insert limit, which the handshakes of real clients need.
#[inline(never)] // off the hot path, in its own stack frame
pub fn new_flow(l3: &L3, flow: &FlowKey, arrival: &Arrival, out: &mut MaybeUninit<Chosen>) -> Step {
    Step::of(try_new_flow(l3, flow, arrival).map(|decided| match decided {
        Some(chosen) => {
            out.write(chosen);
            TO_REAL
        }
        None => TO_PEER,
    }))
}

/// `Some(chosen)`: to that real; `None`: to a peer.
#[inline(always)]
fn try_new_flow(l3: &L3, flow: &FlowKey, arrival: &Arrival) -> Result<Option<Chosen>, Counter> {
    let meta = maglev::vip(&flow.dst, flow.dst_port_be.to_ne_bytes(), flow.proto).ok_or(Counter::Pass)?;
    let hash = flow_hash(flow);
    let is_syn = *arrival == Arrival::Client(ClientPacket::Syn);
    // The real this flow's SYN went to, if one came here lately and no packet recorded it yet.
    let syn_real = match arrival {
        Arrival::Client(ClientPacket::MidFlow) | Arrival::Handoff => real_of_syn(hash),
        _ => 0,
    };
    let mut unknown_mid_flow = false;
    let record = match arrival {
        Arrival::Client(ClientPacket::Syn) => {
            // Remembered below, with its real: its ACK will be recorded. An entry an earlier
            // connection on this 5-tuple left goes now (a lookup first: a delete costs more,
            // and is rare).
            // SAFETY: the value is only tested for presence.
            if unsafe { CONNS.get(flow) }.is_some() {
                let _ = CONNS.remove(flow);
            }
            false
        }
        // The handshake's ACK (or a later packet) of a connection whose SYN came here, straight
        // or (after a route change) through a peer. Its entry replaces the SYN's memory.
        Arrival::Client(ClientPacket::MidFlow) | Arrival::Handoff if syn_real != 0 => {
            remember_syn(hash, 0);
            true
        }
        Arrival::Client(ClientPacket::MidFlow) => {
            unknown_mid_flow = true;
            let wanted = handoff::wanted(l3, arrival);
            // SAFETY: the value is copied out at once.
            if wanted && unsafe { CONNS.get(flow) }.is_some_and(|e| e.real_id == REAL_ID_PEER) {
                return Ok(None); // a peer kept it: no limit
            }
            match (limit::allow(limits::HANDOFFS), wanted) {
                (true, true) => {
                    // Marked as the peer's until it comes back (then the real's entry replaces it).
                    if limit::allow(limits::INSERTS) {
                        let entry = ConnEntry::new(REAL_ID_PEER, hash, meta.vip_index, meta.generation, 0);
                        let _ = CONNS.insert(flow, entry, 0);
                    }
                    return Ok(None);
                }
                (true, false) => true,
                (false, wanted) => {
                    stats::count(if wanted { Counter::HandoffSuppressed } else { Counter::FlowUnrecorded });
                    false
                }
            }
        }
        Arrival::Handoff if handoff::wanted(l3, arrival) => return Ok(None),
        Arrival::IcmpError => false,
        _ => true,
    };
    let ring_hash = if meta.flags & VIP_F_SOURCE_AFFINITY != 0 { source_hash(&flow.src) } else { hash };
    // A handshake's ACK goes where its SYN went, without the ring: the same real even when the
    // ring changed between the two (unless that real went down meanwhile).
    let real_id = if syn_real != 0 && usable(syn_real) { syn_real } else { maglev::real_in_ring(meta, ring_hash)? };
    if is_syn {
        remember_syn(hash, real_id);
    }
    // The second chance: a TCP packet that does not start a connection may belong to one the
    // previous ring placed. Recorded with the flow, so it outlives the ring's window.
    let mid_flow_tcp = flow.proto == IPPROTO_TCP && !matches!(arrival, Arrival::Client(ClientPacket::Syn) | Arrival::IcmpError);
    let alt_real_id = if mid_flow_tcp { maglev::alternative(meta, ring_hash, real_id) } else { 0 };
    let recorded = record && {
        if limit::allow(limits::INSERTS) {
            let entry = ConnEntry::new(real_id, hash, meta.vip_index, meta.generation, alt_real_id);
            let inserted = CONNS.insert(flow, entry, 0).is_ok();
            if !inserted {
                stats::count(Counter::ConnInsertFailed);
            }
            inserted
        } else {
            stats::count(Counter::FlowUnrecorded);
            false
        }
    };
    Ok(Some(Chosen { real_id, vip_index: meta.vip_index, flow_hash: hash, recorded, unknown_mid_flow, alt_real_id }))
}

/// Records `flow` to `real_id` of VIP `vip_index` (its current generation), within the insert
/// limit; returns whether it did. For a flow whose real something other than the ring chose
/// (QUIC-LB's connection ID).
#[inline(always)]
pub fn record(flow: &FlowKey, real_id: u32, hash: u32, vip_index: u32) -> bool {
    let Some(&generation) = VIP_GEN.get(vip_index) else { return false };
    if !limit::allow(limits::INSERTS) {
        stats::count(Counter::FlowUnrecorded);
        return false;
    }
    let inserted = CONNS.insert(flow, ConnEntry::new(real_id, hash, vip_index, generation, 0), 0).is_ok();
    if !inserted {
        stats::count(Counter::ConnInsertFailed);
    }
    inserted
}

/// The bits of a flow hash that `SYN_SEEN` keeps beside the real: the rest are the slot's index,
/// so slot and tag together check all 32 bits of the hash.
const SYN_TAG: u32 = !(SYN_SEEN_SLOTS - 1);
const _: () = assert!(SYN_SEEN_SLOTS.is_power_of_two() && MAX_REALS <= SYN_SEEN_SLOTS);

/// Remembers in `SYN_SEEN` that the flow with `hash` had a SYN sent to `real_id`; 0 forgets it.
#[inline(always)]
fn remember_syn(hash: u32, real_id: u32) {
    if let Some(slot) = SYN_SEEN.get_ptr_mut(hash & !SYN_TAG) {
        let value = if real_id == 0 { 0 } else { hash & SYN_TAG | real_id };
        // SAFETY: an aligned u32 in map memory; a racing writer on another CPU only replaces it.
        unsafe { *slot = value };
    }
}

/// The real the flow with `hash` had its SYN sent to here lately, if no packet recorded the
/// flow since (0: none, or another SYN took the slot).
#[inline(always)]
fn real_of_syn(hash: u32) -> u32 {
    match SYN_SEEN.get(hash & !SYN_TAG) {
        Some(&seen) if seen & SYN_TAG == hash & SYN_TAG => seen & !SYN_TAG,
        _ => 0,
    }
}

/// Whether `real_id` can still take a handshake its SYN started: configured and not down.
#[inline(always)]
fn usable(real_id: u32) -> bool {
    REALS.get(real_id).is_some_and(|real| !real.is_down())
}
