//! A data plane in memory: the maps `lb run` writes, held in this process. For simulating many
//! nodes in one process (`cargo xtask bench-fleet`): the control plane runs unchanged over it.

use std::collections::HashMap;

use lb_common::{LbConfig, PrevRing, RateLimit, Real, VipKey, VipMeta};

use super::{DataplaneError, DataplaneOps, Handoff};

/// The maps as the kernel would hold them, minus what only packets read (limits, handoff and
/// the pre-filter are counted, not kept).
#[derive(Debug, Default)]
pub struct Memory {
    pub pool: Vec<u32>,
    pub vips: HashMap<VipKey, VipMeta>,
    pub reals: HashMap<u32, Real>,
    pub config: Option<LbConfig>,
    /// Writes of every kind so far.
    pub writes: u64,
}

impl Memory {
    /// A data plane whose ring pool has `slots` slots.
    pub fn with_pool(slots: u32) -> Self {
        Self { pool: vec![0; slots as usize], ..Self::default() }
    }
}

impl DataplaneOps for Memory {
    fn set_config(&mut self, cfg: &LbConfig) -> Result<(), DataplaneError> {
        self.writes += 1;
        self.config = Some(*cfg);
        Ok(())
    }
    fn set_rate_limit(&mut self, _limit: u32, _rate: &RateLimit) -> Result<(), DataplaneError> {
        self.writes += 1;
        Ok(())
    }
    fn set_real(&mut self, id: u32, real: &Real) -> Result<(), DataplaneError> {
        self.writes += 1;
        self.reals.insert(id, *real);
        Ok(())
    }
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), DataplaneError> {
        self.writes += 1;
        self.vips.insert(*key, *meta);
        Ok(())
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        self.writes += 1;
        self.vips.remove(key);
        Ok(())
    }
    fn set_vip_generation(&mut self, _index: u32, _generation: u32) -> Result<(), DataplaneError> {
        self.writes += 1;
        Ok(())
    }
    fn set_prev_ring(&mut self, _index: u32, _prev: &PrevRing) -> Result<(), DataplaneError> {
        self.writes += 1;
        Ok(())
    }
    fn set_quic_params(&mut self, _index: u32, _params: &lb_common::quic_lb::QuicLbParams) -> Result<(), DataplaneError> {
        self.writes += 1;
        Ok(())
    }
    fn set_quic_server(&mut self, _key: &lb_common::quic_lb::ServerIdKey, _real_id: u32) -> Result<(), DataplaneError> {
        self.writes += 1;
        Ok(())
    }
    fn set_vip_addr(&mut self, _addr: &[u8; 16], _vips: u32) -> Result<(), DataplaneError> {
        self.writes += 1;
        Ok(())
    }
    fn set_filter_word(&mut self, _word: u32, _bits: u64) -> Result<(), DataplaneError> {
        self.writes += 1;
        Ok(())
    }
    fn write_ring_slots(&mut self, base: u32, slots: impl Iterator<Item = (u32, u32)>) -> Result<(), DataplaneError> {
        self.writes += 1;
        let len = self.pool.len();
        for (s, id) in slots {
            let slot = self.pool.get_mut((base + s) as usize).ok_or_else(|| DataplaneError::Batch {
                name: "memory pool",
                source: std::io::Error::other(format!("slot {} past the pool's {len}", base + s)),
            })?;
            *slot = id;
        }
        Ok(())
    }
    fn set_handoff(&mut self, _handoff: &Handoff) -> Result<(), DataplaneError> {
        self.writes += 1;
        Ok(())
    }
    fn ring_slots(&self) -> u32 {
        self.pool.len() as u32
    }
}
