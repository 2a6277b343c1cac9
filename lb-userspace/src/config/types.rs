//! The validated config the rest of `lb` runs on: VIPs, reals and their checks, forwarding,
//! BGP, handoff and the admin API, each field a domain type.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Per-CPU limits against floods of spoofed packets (see docs/operations.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flood {
    pub inserts_per_sec: u32,
    pub handoffs_per_sec: u32,
}

/// What clients of the listeners and health probes may hold (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub listener: crate::serve::ListenerLimits,
    pub flows_listed: u32,
    pub doctor_calls: usize,
    pub probes_per_host: usize,
}

pub const DEFAULT_FLOWS_LISTED: u32 = 100_000;
pub const DEFAULT_DOCTOR_CALLS: usize = 2;
pub const DEFAULT_PROBES_PER_HOST: usize = 64;

/// Largest weight a real may have (0 drains it).
pub const MAX_WEIGHT: u32 = 1000;

/// How to attach to an interface: native (driver) XDP, or generic as a fallback the operator
/// chooses explicitly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// `[bgp] graceful_shutdown_ms` when the config does not say.
pub const DEFAULT_GRACEFUL_SHUTDOWN_MS: u64 = 2000;
/// The most `[bgp] graceful_shutdown_ms` may be: the unit's `TimeoutStopSec` leaves room for it.
pub const MAX_GRACEFUL_SHUTDOWN_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Bgp {
    pub bird_socket: std::path::PathBuf,
    pub include_file: std::path::PathBuf,
    pub prepend_below: Option<f64>,
    pub withdraw_on_exit: bool,
    /// How long a withdrawal is preceded by GRACEFUL_SHUTDOWN announcements (zero: not at all).
    pub graceful_shutdown: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Handoff {
    pub address: IpAddr,
    pub peers: Vec<IpAddr>,
    pub health: HealthCheck,
}

/// Where the admin API listens and who may use it.
#[derive(Debug, Clone, PartialEq)]
pub struct Api {
    pub socket: PathBuf,
    pub group: Option<String>,
    pub listen: Option<SocketAddr>,
    pub token_file: Option<PathBuf>,
}

/// The admin socket of an instance when the config names none.
pub fn default_api_socket(instance: &str) -> PathBuf {
    PathBuf::from(format!("/run/anycast-lb/{instance}.sock"))
}

/// The node's place in a fleet (`[fleet]`).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetNode {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub site: String,
    pub node: String,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub tls: Option<FleetTls>,
    pub state_file: PathBuf,
    pub report_ttl: Duration,
}

/// TLS to the fleet store: the CA to trust, and the client certificate and key, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetTls {
    pub ca_file: PathBuf,
    pub client: Option<(PathBuf, PathBuf)>,
}

pub const DEFAULT_FLEET_PREFIX: &str = "/anycast-lb";
pub const DEFAULT_REPORT_TTL_S: u32 = 10;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub fleet: Option<FleetNode>,
    pub bgp: Option<Bgp>,
    pub handoff: Option<Handoff>,
    pub flood: Flood,
    pub limits: Limits,
    pub instance: String,
    pub conn_table_size: u32,
    /// `lb backend`'s endpoint port on the reals (`[second_chance] backend_port`).
    pub backend_port: u16,
    /// Slots of the Maglev ring pool (`ring_pool_slots` when not configured).
    pub ring_slots: u32,
    pub interfaces: Vec<Interface>,
    pub forwarding: Forwarding,
    pub metrics_listen: SocketAddr,
    pub api: Api,
    pub vips: Vec<Vip>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Interface {
    pub name: String,
    pub mode: AttachMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    Mac([u8; 6]),
    /// Looked up in the neighbour table at start and on reload.
    Ip(IpAddr),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forwarding {
    pub next_hop: NextHop,
    pub mtu: u32,
    pub source_v4: (Ipv4Addr, u32),
    pub source_v6: (Ipv6Addr, u32),
    pub too_big_per_sec: u32,
    /// Echo replies per CPU per second (`[forwarding] echo_per_sec`).
    pub echo_per_sec: u32,
}

/// A VIP's identity: what a packet's destination must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VipId {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for VipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", std::net::SocketAddr::new(self.addr, self.port), self.proto)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Vip {
    pub name: String,
    pub id: VipId,
    pub source_affinity: bool,
    pub ring_size: u32,
    pub min_healthy: u32,
    /// The second chance's window: how long after a ring change the previous ring gives
    /// alternatives (None: off).
    pub second_chance: Option<std::time::Duration>,
    /// Route QUIC short headers by the server ID in their connection ID (None: off).
    pub quic_lb: Option<QuicLb>,
    /// Weights that follow the backends (None: off).
    pub adapt: Option<crate::adapt::Adaptation>,
    pub reals: Vec<RealConfig>,
}

/// A VIP's QUIC-LB parameters (docs/quic-lb.md).
#[derive(Debug, Clone, PartialEq)]
pub struct QuicLb {
    pub config_id: u8,
    pub server_id_len: u8,
    pub nonce_len: u8,
    pub cid_len: u8,
    /// Where the key is (None: plaintext) ...
    pub key_file: Option<PathBuf>,
    /// ... and the key, once read off the loop (`config::read_quic_keys`, `attach_quic_keys`).
    pub key: Option<[u8; 16]>,
    /// How long a server ID stays its real's after the real leaves the VIP.
    pub server_id_hold: Duration,
}

impl QuicLb {
    /// The codec servers use (`quic_lb`), with the key when one is read.
    pub fn codec(&self) -> crate::quic_lb::QuicLbConfig {
        crate::quic_lb::QuicLbConfig {
            config_id: self.config_id,
            server_id_len: self.server_id_len,
            nonce_len: self.nonce_len,
            cid_len: self.cid_len,
            key: self.key,
        }
    }
}

pub const DEFAULT_SERVER_ID_HOLD_S: u64 = 3600;

#[derive(Debug, Clone, PartialEq)]
pub struct RealConfig {
    pub addr: IpAddr,
    pub weight: u32,
    pub health: HealthCheck,
    /// QUIC-LB: the real's server ID (with the VIP's `quic_lb`).
    pub server_id: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// Always healthy (no probing).
    None,
    Tcp,
    Http {
        path: String,
        expect_status: u16,
        body_contains: Option<String>,
    },
    Udp {
        request: String,
        expect: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub port: u16,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// Port of the metrics endpoint when the config names none; also what handoff peers check.
pub const DEFAULT_METRICS_PORT: u16 = 9100;

/// Whether `validate` looks interface names up on this host.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum InterfaceCheck {
    OnThisHost,
    Skip,
}
