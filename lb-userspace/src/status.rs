//! What `lb status`, `GET /status`, metrics and `lb doctor` show: the state of VIPs, reals, the
//! site's announcements and handoff. A leaf: it imports only the config's VIP id, so the daemon
//! that fills these in and every reader (API, CLI, metrics, doctor) can share them.

use std::{net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config::VipId;

/// Rebuild figures, for metrics.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct RebuildStats {
    pub count: u64,
    pub last: Duration,
    pub total: Duration,
}

/// A real as `lb status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RealStatus {
    pub address: IpAddr,
    pub id: u32,
    pub up: bool,
    pub config_weight: u32,
    pub weight: u32,
    /// Slots of the live ring: its share of new flows is slots / ring_size.
    pub slots: u32,
    /// Its backend says it drains: weight 0, established flows kept.
    #[serde(default)]
    pub draining: bool,
    /// QUIC-LB: its server ID (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// With `[vip.adapt]`: the share of `weight` in force, in percent (effective weight =
    /// weight x percent / 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapt_percent: Option<u32>,
    /// With `[vip.adapt]`: what the share follows, smoothed ("round trip 12.0 ms", "load 0.93").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapt_signal: Option<String>,
}

impl RealStatus {
    /// The weight new flows see: `weight`, times the adapted share.
    pub fn effective_weight(&self) -> f64 {
        self.weight as f64 * self.adapt_percent.unwrap_or(100) as f64 / 100.0
    }
}

/// A VIP's QUIC-LB parameters as `lb status` shows them (the key never).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuicLbStatus {
    pub config_id: u8,
    pub server_id_len: u8,
    pub nonce_len: u8,
    pub cid_len: u8,
    pub encrypted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VipStatus {
    pub name: String,
    pub vip: VipId,
    pub index: u32,
    pub ring_size: u32,
    pub min_healthy: u32,
    pub reals: Vec<RealStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic_lb: Option<QuicLbStatus>,
    /// With `[vip.adapt]`: the least share a real keeps, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapt_floor_percent: Option<u32>,
    /// Announced over BGP right now (filled in by the daemon).
    #[serde(default)]
    pub announced: bool,
}

impl VipStatus {
    pub fn healthy(&self) -> u32 {
        self.reals.iter().filter(|r| r.up).count() as u32
    }

    /// Reals that take new flows: up, with a weight above 0 (not drained).
    pub fn serving(&self) -> u32 {
        self.reals.iter().filter(|r| r.up && r.weight > 0).count() as u32
    }

    /// The site can serve this VIP: enough reals up, and at least one of them takes new flows
    /// (with every up real drained the ring is empty and every new flow would be dropped).
    pub fn servable(&self) -> bool {
        self.healthy() >= self.min_healthy && self.serving() > 0
    }

    /// Share of the configured weight that up reals carry (1.0 with no weight configured).
    pub fn capacity(&self) -> f64 {
        let total: u32 = self.reals.iter().map(|r| r.config_weight).sum();
        let up: u32 = self.reals.iter().filter(|r| r.up).map(|r| r.weight).sum();
        if total == 0 {
            1.0
        } else {
            up as f64 / total as f64
        }
    }
}

/// Where the site's announcements stand, as `lb status` and GET /site show them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum SiteStage {
    /// Servable VIPs are announced.
    Announcing,
    /// Drained or exiting: the VIPs are announced with GRACEFUL_SHUTDOWN (RFC 8326) so
    /// upstreams move traffic away; withdrawn in `withdraw_in_ms`.
    GracefulShutdown { withdraw_in_ms: u64 },
    /// Drained or exiting: nothing is announced.
    Withdrawn,
    /// No `[bgp]`: this site announces nothing.
    NoBgp,
}

/// Cross-site handoff as `GET /handoff` and `lb status` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffStatus {
    /// This node's handoff address (`None`: no `[handoff]`).
    pub node: Option<IpAddr>,
    /// Peers in config order, with whether they pass their checks.
    pub peers: Vec<(IpAddr, bool)>,
    /// Unknown handed-off flows are taken here (the site withdrew by choice).
    pub adopt: bool,
}
