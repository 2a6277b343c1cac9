//! Flow -> real: the connection table first (a known flow needs no VIP lookup), then the VIP's
//! live Maglev ring.

use lb_common::{
    hash::{flow_hash, source_hash},
    stats::Counter,
    ConnEntry, FlowKey, Real, VipKey, VipMeta, MAX_RING_SIZE, REAL_F_DOWN, VIP_F_SOURCE_AFFINITY,
};

use crate::{
    maps::{CONNS, MAGLEV, REALS, VIPS, VIP_GEN},
    stats,
};

/// The VIP for (address, port, protocol), falling back to the address's any-port VIP.
#[inline(always)]
pub fn vip(addr: &[u8; 16], port_be: [u8; 2], proto: u8) -> Option<&'static VipMeta> {
    let mut key = VipKey { addr: *addr, port_be: u16::from_ne_bytes(port_be), proto, _pad: 0 };
    if let Some(meta) = unsafe { VIPS.get(&key) } {
        return Some(meta);
    }
    key.port_be = 0;
    unsafe { VIPS.get(&key) }
}

/// The real chosen for a flow. Map values are referenced, not copied: stack is scarce.
pub struct Pick {
    pub real_id: u32,
    pub real: &'static Real,
    pub vip_index: u32,
    /// The connection table knew this flow.
    pub hit: bool,
    pub flow_hash: u32,
}

/// The real the connection table holds for `flow`, if the entry still counts: its VIP is the
/// same generation and its real is not down.
#[inline(always)]
pub fn known(flow: &FlowKey) -> Option<Pick> {
    let entry = *unsafe { CONNS.get(flow) }?;
    if VIP_GEN.get(entry.vip_index).copied() != Some(entry.vip_generation) {
        return None;
    }
    let real = REALS.get(entry.real_id)?;
    if real.flags & REAL_F_DOWN != 0 {
        return None;
    }
    Some(Pick { real_id: entry.real_id, real, vip_index: entry.vip_index, hit: true, flow_hash: entry.flow_hash })
}

/// The real the VIP's ring gives a flow the table does not know: the slot of the flow's hash
/// (the source's, for source affinity). With `record` the choice is remembered.
#[inline(always)]
pub fn from_ring(meta: &VipMeta, flow: &FlowKey, record: bool) -> Result<Pick, Counter> {
    let hash = flow_hash(flow);
    let ring_hash = if meta.flags & VIP_F_SOURCE_AFFINITY != 0 { source_hash(&flow.src) } else { hash };
    if meta.ring_size == 0 || meta.ring_size > MAX_RING_SIZE {
        return Err(Counter::DropNoReal);
    }
    let slot = meta.ring_index * MAX_RING_SIZE + ring_hash % meta.ring_size;
    let real_id = *MAGLEV.get(slot).ok_or(Counter::DropNoReal)?;
    // 0: the ring is not programmed (a VIP with no reals).
    let real = REALS.get(real_id).filter(|_| real_id != 0).ok_or(Counter::DropNoReal)?;
    let entry = ConnEntry { real_id, flow_hash: hash, vip_index: meta.vip_index, vip_generation: meta.generation };
    if record && CONNS.insert(flow, entry, 0).is_err() {
        stats::count(Counter::ConnInsertFailed);
    }
    Ok(Pick { real_id, real, vip_index: meta.vip_index, hit: false, flow_hash: hash })
}
