//! Flow -> real: the connection table first (a known flow needs no VIP lookup), then the VIP's
//! live Maglev ring.

use core::mem::MaybeUninit;

use lb_common::{
    hash::{flow_hash, source_hash},
    stats::Counter,
    ConnEntry, FlowKey, Real, VipKey, VipMeta, MAX_RING_SIZE, REAL_F_DOWN, VIP_F_SOURCE_AFFINITY,
};

use crate::{
    balancer::Arrival,
    handoff,
    maps::{CONNS, MAGLEV, REALS, VIPS, VIP_GEN},
    parse::L3,
    stats,
    step::Step,
};

/// The VIP for (address, port, protocol), falling back to the address's any-port VIP.
// `&key`, not `key`: moved by value into aya's generic `get`, the key took stack the balancer's
// frame does not have (the verifier refused 528 bytes over a call chain).
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
pub fn vip(addr: &[u8; 16], port_be: [u8; 2], proto: u8) -> Option<&'static VipMeta> {
    let mut key = VipKey { addr: *addr, port_be: u16::from_ne_bytes(port_be), proto, _pad: 0 };
    if let Some(meta) = unsafe { VIPS.get(&key) } {
        return Some(meta);
    }
    key.port_be = 0;
    unsafe { VIPS.get(&key) }
}

/// The real chosen for a flow, by the connection table or the ring.
#[derive(Clone, Copy)]
pub struct Chosen {
    pub real_id: u32,
    pub vip_index: u32,
    /// Entropy for the outer header.
    pub flow_hash: u32,
}

/// The real the connection table holds for `flow`, if the entry still counts: its VIP is the
/// same generation and its real is not down.
#[inline(always)]
pub fn known(flow: &FlowKey) -> Option<(Chosen, &'static Real)> {
    let entry = *unsafe { CONNS.get(flow) }?;
    if VIP_GEN.get(entry.vip_index).copied() != Some(entry.vip_generation) {
        return None;
    }
    let real = REALS.get(entry.real_id)?;
    if real.flags & REAL_F_DOWN != 0 {
        return None;
    }
    Some((Chosen { real_id: entry.real_id, vip_index: entry.vip_index, flow_hash: entry.flow_hash }, real))
}

/// The real for a flow the connection table does not know (or was not asked about): the slot of
/// the flow's hash (the source's, for source affinity) in its VIP's ring, remembered when
/// `record`. `Err(Pass)`: no VIP; `Err(HandoffWanted)`: `arrival` calls for a handoff.
#[inline(never)] // off the hot path, in its own stack frame
pub fn new_flow(l3: &L3, flow: &FlowKey, arrival: &Arrival, record: bool, out: &mut MaybeUninit<Chosen>) -> Step {
    Step::of(try_new_flow(l3, flow, arrival, record).map(|chosen| {
        out.write(chosen);
        0
    }))
}

#[inline(always)]
fn try_new_flow(l3: &L3, flow: &FlowKey, arrival: &Arrival, record: bool) -> Result<Chosen, Counter> {
    let meta = vip(&flow.dst, flow.dst_port_be.to_ne_bytes(), flow.proto).ok_or(Counter::Pass)?;
    if handoff::wanted(l3, arrival) {
        return Err(Counter::HandoffWanted);
    }
    let hash = flow_hash(flow);
    let ring_hash = if meta.flags & VIP_F_SOURCE_AFFINITY != 0 { source_hash(&flow.src) } else { hash };
    if meta.ring_size == 0 || meta.ring_size > MAX_RING_SIZE {
        return Err(Counter::DropNoReal);
    }
    let slot = meta.ring_index * MAX_RING_SIZE + ring_hash % meta.ring_size;
    let real_id = *MAGLEV.get(slot).ok_or(Counter::DropNoReal)?;
    // 0: the ring is not programmed (a VIP with no reals).
    if real_id == 0 || REALS.get(real_id).is_none() {
        return Err(Counter::DropNoReal);
    }
    let entry = ConnEntry { real_id, flow_hash: hash, vip_index: meta.vip_index, vip_generation: meta.generation };
    if record && CONNS.insert(flow, entry, 0).is_err() {
        stats::count(Counter::ConnInsertFailed);
    }
    Ok(Chosen { real_id, vip_index: meta.vip_index, flow_hash: hash })
}
