//! Why a change was refused or failed (the maps are then as they were).

use std::net::IpAddr;

use crate::dataplane::DataplaneError;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("no free {what} (at most {max})")]
    Full { what: &'static str, max: u32 },
    #[error("the VIPs need {needed} Maglev ring slots (two rings of each VIP's ring_size), the ring pool holds {pool}: raise `ring_slots` (or remove it: the default follows the config) and restart lb, which grows the pool and keeps established flows")]
    PoolTooSmall { needed: u64, pool: u32 },
    #[error("no free range of {len} slots in the ring pool ({free} of {pool} free, but fragmented): raise `ring_slots` and restart lb")]
    PoolFragmented { len: u32, free: u32, pool: u32 },
    #[error("no VIP {0}")]
    NoVip(String),
    #[error("VIP {vip} has no real {real}")]
    NoReal { vip: String, real: IpAddr },
    #[error(
        "VIP {vip}: its QUIC-LB key was not read (a key file is read with the config file or the fleet document, not by `lb vip add`)"
    )]
    QuicKeyMissing { vip: String },
    #[error("no forwarding settings written yet")]
    NoConfig,
}
