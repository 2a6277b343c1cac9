//! Handles on the maps that decide where a flow goes, opened from an instance's pins: `lb flow`
//! reads them and `lb flows` walks (and purges) the connection table.

use std::path::Path;

use aya::maps::{Array, HashMap, MapData};
use lb_common::{
    maps,
    quic_lb::{QuicLbParams, ServerIdKey},
    slot_place, ConnEntry, FlowKey, Handoff, PrevRing, Real, SlotPair, VipKey, VipMeta,
};

use super::error::{found, map_err, open_pinned, DataplaneError, Result};

/// Handles on the maps that decide where a flow goes, opened from an instance's pins: `lb flow`
/// reads them and `lb flows` walks (and purges) the connection table, on the API's blocking
/// threads, never on the loop that owns the data plane.
pub struct LiveMaps {
    vips: HashMap<MapData, VipKey, VipMeta>,
    maglev: Array<MapData, SlotPair>,
    reals: Array<MapData, Real>,
    vip_gen: Array<MapData, u32>,
    conns: HashMap<MapData, FlowKey, ConnEntry>,
    handoff: Array<MapData, Handoff>,
    peers: Array<MapData, [u8; 16]>,
    prev_rings: Array<MapData, PrevRing>,
    quic_params: Array<MapData, QuicLbParams>,
    quic_servers: HashMap<MapData, ServerIdKey, u32>,
}

/// Keys of a connection table, counted by walking them (a key evicted mid-walk ends nothing).
pub(super) fn count_keys<T: std::borrow::Borrow<MapData>>(conns: &HashMap<T, FlowKey, ConnEntry>) -> usize {
    conns.keys().filter(|k| k.is_ok()).count()
}

impl LiveMaps {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        use aya::maps::Map;
        Ok(Self {
            vips: open_pinned(pin_dir, maps::VIPS, Map::HashMap)?,
            maglev: open_pinned(pin_dir, maps::MAGLEV, Map::Array)?,
            reals: open_pinned(pin_dir, maps::REALS, Map::Array)?,
            vip_gen: open_pinned(pin_dir, maps::VIP_GEN, Map::Array)?,
            conns: open_pinned(pin_dir, maps::CONNS, Map::LruHashMap)?,
            handoff: open_pinned(pin_dir, maps::HANDOFF, Map::Array)?,
            peers: open_pinned(pin_dir, maps::PEERS, Map::Array)?,
            prev_rings: open_pinned(pin_dir, maps::VIP_PREV, Map::Array)?,
            quic_params: open_pinned(pin_dir, maps::QUIC_LB, Map::Array)?,
            quic_servers: open_pinned(pin_dir, maps::QUIC_SERVERS, Map::HashMap)?,
        })
    }

    pub fn vip(&self, key: &VipKey) -> Result<Option<VipMeta>> {
        found(maps::VIPS, self.vips.get(key, 0))
    }

    /// The real id in slot `slot` of the slot pool.
    pub fn ring_slot(&self, slot: u32) -> Result<u32> {
        let (element, place) = slot_place(slot);
        Ok(self.maglev.get(&element, 0).map_err(map_err(maps::MAGLEV))?[place])
    }

    pub fn real(&self, id: u32) -> Result<Option<Real>> {
        found(maps::REALS, self.reals.get(&id, 0))
    }

    /// The VIP's previous ring for the second chance (`ring_size` 0: none).
    pub fn prev_ring(&self, vip_index: u32) -> Result<PrevRing> {
        self.prev_rings.get(&vip_index, 0).map_err(map_err(maps::VIP_PREV))
    }

    /// The VIP's QUIC-LB parameters (mode 0: none).
    pub fn quic_params(&self, vip_index: u32) -> Result<QuicLbParams> {
        self.quic_params.get(&vip_index, 0).map_err(map_err(maps::QUIC_LB))
    }

    /// The real id of a server ID.
    pub fn quic_server(&self, key: &ServerIdKey) -> Result<Option<u32>> {
        found(maps::QUIC_SERVERS, self.quic_servers.get(key, 0))
    }

    pub fn vip_generation(&self, vip_index: u32) -> Result<Option<u32>> {
        found(maps::VIP_GEN, self.vip_gen.get(&vip_index, 0))
    }

    pub fn conn(&self, flow: &FlowKey) -> Result<Option<ConnEntry>> {
        found(maps::CONNS, self.conns.get(flow, 0))
    }

    pub fn handoff(&self) -> Result<Handoff> {
        self.handoff.get(&0, 0).map_err(map_err(maps::HANDOFF))
    }

    pub fn peer(&self, i: u32) -> Result<[u8; 16]> {
        self.peers.get(&i, 0).map_err(map_err(maps::PEERS))
    }

    /// Walks the connection table (two syscalls an entry: a key, then its value) until `visit`
    /// returns false. Entries the data plane adds or evicts meanwhile may be seen or not.
    pub fn walk_conns(&self, mut visit: impl FnMut(&FlowKey, &ConnEntry) -> bool) -> Result<usize> {
        let mut seen = 0;
        for item in self.conns.iter() {
            let (key, entry) = match item {
                Ok(kv) => kv,
                // Evicted between its key and its value.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(source) => return Err(DataplaneError::Map { name: maps::CONNS, source }),
            };
            seen += 1;
            if !visit(&key, &entry) {
                break;
            }
        }
        Ok(seen)
    }

    /// Entries in the connection table (walks its keys only: one syscall an entry).
    pub fn conn_entries(&self) -> usize {
        count_keys(&self.conns)
    }

    /// Deletes these connection entries; returns how many were still there.
    pub fn remove_conns(&mut self, keys: &[FlowKey]) -> Result<usize> {
        let mut removed = 0;
        for key in keys {
            match self.conns.remove(key) {
                Ok(()) => removed += 1,
                // Evicted since the walk (aya reports a delete's ENOENT as a syscall error).
                Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => return Err(DataplaneError::Map { name: maps::CONNS, source }),
            }
        }
        Ok(removed)
    }
}
