//! The config file (TOML) -> validated domain types. Every problem is reported with the field it
//! is in and why, all at once; nothing touches the kernel (interface names are only looked up).
//! `lb.example.toml` at the repository root documents every field.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{MAX_REALS, MAX_RING_SIZE, MAX_VIPS};
use serde::{Deserialize, Serialize};

use crate::{dataplane::AttachMode, maglev::is_prime};

/// Largest weight a real may have (0 drains it).
pub const MAX_WEIGHT: u32 = 1000;

/// The config file as written. Field defaults are noted on each field.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Name of this balancer; programs and maps are pinned under /sys/fs/bpf/<instance>.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Connection-table entries (default 1048576).
    #[serde(default = "default_conn_table_size")]
    pub conn_table_size: u32,
    /// Slots of the Maglev ring pool (default: two rings of every VIP's ring_size, plus two of
    /// the largest size for VIPs added at run time).
    pub ring_slots: Option<u32>,
    /// Interfaces the balancer attaches to.
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<RawInterface>,
    pub forwarding: RawForwarding,
    /// Prometheus endpoint (default 127.0.0.1:9100).
    #[serde(default)]
    pub metrics: RawListen,
    /// Admin API: a Unix socket (default /run/anycast-lb/<instance>.sock), and TCP only when
    /// asked for.
    #[serde(default)]
    pub api: RawApi,
    /// Health-check defaults for every real.
    #[serde(default)]
    pub health: RawHealth,
    /// Announce servable VIPs through BIRD (absent: no BGP).
    pub bgp: Option<RawBgp>,
    /// Cross-site handoff of mid-flow packets (absent: off).
    pub handoff: Option<RawHandoff>,
    /// Per-CPU limits against floods of spoofed packets.
    #[serde(default)]
    pub flood: RawFlood,
    #[serde(default, rename = "vip")]
    pub vips: Vec<RawVip>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlood {
    /// Connection-table inserts per CPU per second (default 50000; 0: record nothing).
    pub inserts_per_sec: Option<u32>,
    /// Handoffs to peer sites per CPU per second (default 10000; 0: hand off nothing).
    pub handoffs_per_sec: Option<u32>,
}

/// Per-CPU limits against floods of spoofed packets (see docs/operations.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flood {
    pub inserts_per_sec: u32,
    pub handoffs_per_sec: u32,
}

/// Defaults, from bench-xdp on the test machine: a new flow (SYN and ACK) costs about 1.5 us of
/// kernel time and a handoff 0.27 us, so 50,000 inserts and 10,000 handoffs a second take at most
/// 7.5% and 0.3% of a CPU, far above what legitimate traffic makes on one CPU of an edge node.
pub const DEFAULT_INSERTS_PER_SEC: u32 = 50_000;
pub const DEFAULT_HANDOFFS_PER_SEC: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawInterface {
    pub name: String,
    /// "native" (driver XDP, default) or "generic" (a fallback the operator chooses).
    #[serde(default = "default_mode")]
    pub mode: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwarding {
    /// MAC of the next-hop router ("02:00:00:00:00:01"); or give `next_hop_ip` to find it in the
    /// neighbour table.
    pub next_hop_mac: Option<String>,
    pub next_hop_ip: Option<String>,
    /// Largest IP packet the egress link carries (default 1500).
    pub mtu: Option<u32>,
    /// Outer IPv4 sources: the host bits carry per-flow entropy (default "10.255.0.0/16").
    pub source_v4: Option<String>,
    /// Outer IPv6 sources, at most 32 host bits (default "fd00:ffff::/96").
    pub source_v6: Option<String>,
    /// ICMP "fragmentation needed" / "packet too big" answers to clients whose packets do not
    /// fit the tunnel, per CPU per second (default 1000; 0: never answer, drop).
    pub too_big_per_sec: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBgp {
    /// BIRD's control socket (default /run/bird/bird.ctl).
    pub bird_socket: Option<String>,
    /// The file bird.conf includes and lb rewrites (default /run/anycast-lb/vips.conf).
    pub include_file: Option<String>,
    /// Capacity steering: when the up reals of a VIP carry less than this fraction of its
    /// configured weight, announce it with AS-path prepend (0 < x <= 1; absent: never).
    pub prepend_below: Option<f64>,
    /// Withdraw every VIP when lb exits (default true; false keeps routes for a quick upgrade).
    pub withdraw_on_exit: Option<bool>,
    /// Graceful BGP shutdown (RFC 8326): `lb site drain` and a withdrawing exit first announce
    /// the VIPs with the GRACEFUL_SHUTDOWN community (65535:0) for this long, so upstreams that
    /// honour it move traffic away before the routes go; then withdraw. 0: withdraw at once
    /// (default 2000; at most 60000).
    pub graceful_shutdown_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHandoff {
    /// This node's address on the balanced interface: peers tunnel to it, and it is the outer
    /// source of our handoffs.
    pub address: String,
    /// Addresses of the LB nodes of other sites that may have started a connection before a
    /// route change brought it here.
    pub peers: Vec<String>,
    /// How peers are checked (default: TCP connect to port 9100, the peer `lb`'s metrics
    /// endpoint, every second; its `[metrics] listen` must be reachable from here).
    #[serde(default)]
    pub health: RawHealth,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// The admin socket (default /run/anycast-lb/<instance>.sock), mode 0600: only lb's user.
    pub socket: Option<String>,
    /// A group whose members may use the socket too (mode 0660).
    pub group: Option<String>,
    /// Also serve the API over TCP at this address (default: not at all). Reading (status)
    /// needs the token unless the address is loopback; changes always need it.
    pub listen: Option<String>,
    /// File (mode 0600) holding the bearer token TCP clients send as `Authorization: Bearer`.
    pub token_file: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub listen: Option<String>,
}
fn default_instance() -> String {
    "lb".into()
}
fn default_conn_table_size() -> u32 {
    lb_common::DEFAULT_CONN_TABLE_SIZE
}
fn default_mode() -> String {
    "native".into()
}

/// A health check; every field is optional so a VIP or a real can override just some.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// "tcp" (connect, default), "http" (GET), "udp" (request / expected reply), "none".
    pub kind: Option<String>,
    /// Port to check (default: the VIP's port; required for any-port VIPs).
    pub port: Option<u16>,
    /// Milliseconds between checks (default 1000), and per check (default 500).
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// Passes in a row that bring a real up (default 2), failures that take it down (default 3).
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    /// http: path (default "/"), expected status (default 200), optional body substring.
    pub path: Option<String>,
    pub expect_status: Option<u16>,
    pub body_contains: Option<String>,
    /// udp: request payload and a substring the reply must contain.
    pub request: Option<String>,
    pub expect: Option<String>,
}

impl RawHealth {
    /// `self` with unset fields taken from `base`.
    fn over(&self, base: &RawHealth) -> RawHealth {
        macro_rules! pick {
            ($($f:ident),*) => { RawHealth { $($f: self.$f.clone().or_else(|| base.$f.clone())),* } };
        }
        pick!(kind, port, interval_ms, timeout_ms, rise, fall, path, expect_status, body_contains, request, expect)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawVip {
    pub name: String,
    pub address: String,
    /// 0 = any port.
    pub port: u16,
    /// "tcp" or "udp".
    pub protocol: String,
    #[serde(default)]
    pub source_affinity: bool,
    /// Maglev table size, a prime up to 65537 (default 65537).
    pub ring_size: Option<u32>,
    /// Reals that must be up for the VIP to be announced (default 1; used by the anycast issue).
    pub min_healthy: Option<u32>,
    pub health: Option<RawHealth>,
    #[serde(default, rename = "real")]
    pub reals: Vec<RawReal>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawReal {
    pub address: String,
    /// 0 ..= 1000 (default 1); 0 drains: no new flows, existing flows kept.
    pub weight: Option<u32>,
    pub health: Option<RawHealth>,
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

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub bgp: Option<Bgp>,
    pub handoff: Option<Handoff>,
    pub flood: Flood,
    pub instance: String,
    pub conn_table_size: u32,
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
    pub reals: Vec<RealConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RealConfig {
    pub addr: IpAddr,
    pub weight: u32,
    pub health: HealthCheck,
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

/// One problem in the file: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{}", .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

impl ConfigError {
    /// The problems of an invalid file (empty for read or syntax errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

/// Collects problems while validating.
#[derive(Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem { field: field.into(), reason: reason.into() });
    }

    /// `value` if nothing was found wrong.
    pub(crate) fn or<T>(self, value: impl FnOnce() -> T) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(ConfigError::Invalid { problems: self.0 })
        }
    }
}

/// An instance name: it names a bpffs folder and state files.
pub(crate) fn validate_instance(instance: &str, p: &mut Problems) {
    if instance.is_empty() || !instance.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        p.add("instance", format!("{instance:?} must be non-empty letters, digits, '-' or '_' (it names a bpffs folder)"));
    }
}

/// The interfaces to attach to, listed under `field` ("interface", "backend.interface").
pub(crate) fn validate_interfaces(field: &str, raw: &[RawInterface], check: InterfaceCheck, p: &mut Problems) -> Vec<Interface> {
    let mut seen = HashSet::new();
    raw.iter()
        .enumerate()
        .filter_map(|(i, raw)| {
            let field = format!("{field}[{i}]");
            if !seen.insert(raw.name.clone()) {
                p.add(format!("{field}.name"), format!("{:?} is listed twice", raw.name));
            }
            if check == InterfaceCheck::OnThisHost && !interface_exists(&raw.name) {
                p.add(format!("{field}.name"), format!("unknown interface {:?}", raw.name));
            }
            let mode = match raw.mode.as_str() {
                "native" => AttachMode::Native,
                "generic" => AttachMode::Generic,
                other => {
                    p.add(format!("{field}.mode"), format!("{other:?} is not \"native\" or \"generic\""));
                    return None;
                }
            };
            Some(Interface { name: raw.name.clone(), mode })
        })
        .collect()
}

/// Port of the metrics endpoint when the config names none; also what handoff peers check.
pub const DEFAULT_METRICS_PORT: u16 = 9100;

/// Whether `validate` looks interface names up on this host.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum InterfaceCheck {
    OnThisHost,
    Skip,
}

pub fn load(path: &Path, interfaces: InterfaceCheck) -> Result<Config, ConfigError> {
    load_raw(path)?.validate(interfaces)
}

pub fn parse(text: &str, interfaces: InterfaceCheck) -> Result<Config, ConfigError> {
    parse_raw(text)?.validate(interfaces)
}

/// The file as written, not yet validated (the daemon merges run-time changes into it).
pub fn parse_raw(text: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Syntax { path: "config".into(), message: e.to_string() })
}

pub fn load_raw(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    parse_raw(&text).map_err(|e| match e {
        ConfigError::Syntax { message, .. } => ConfigError::Syntax { path: path.display().to_string(), message },
        other => other,
    })
}

/// `02:00:00:00:00:01`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s.split(':').map(|h| (h.len() == 2).then(|| u8::from_str_radix(h, 16).ok()).flatten()).collect::<Option<_>>()?;
    parts.try_into().ok()
}

/// "a.b.c.d/len" or "x::/len" -> (address, host bits).
fn parse_prefix(s: &str) -> Option<(IpAddr, u32)> {
    let (addr, len) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    let bits = if addr.is_ipv4() { 32 } else { 128 };
    (len <= bits).then_some((addr, bits - len))
}

pub fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else { return false };
    // SAFETY: a NUL-terminated name that lives through the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

impl RawConfig {
    pub fn validate(&self, interfaces: InterfaceCheck) -> Result<Config, ConfigError> {
        let mut p = Problems::default();

        validate_instance(&self.instance, &mut p);
        if self.conn_table_size < 1024 {
            p.add("conn_table_size", format!("{} is below 1024", self.conn_table_size));
        }

        let ifaces = validate_interfaces("interface", &self.interfaces, interfaces, &mut p);

        let forwarding = self.validate_forwarding(&mut p);
        let mut listen = |field: &str, s: &str| match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                p.add(field, format!("{s:?} is not an address:port"));
                None
            }
        };
        let default_metrics = format!("127.0.0.1:{DEFAULT_METRICS_PORT}");
        let metrics_listen = listen("metrics.listen", self.metrics.listen.as_deref().unwrap_or(&default_metrics));
        let api_tcp = self.api.listen.as_deref().and_then(|l| listen("api.listen", l));
        if let Some(addr) = api_tcp {
            if self.api.token_file.is_none() && !addr.ip().is_loopback() {
                p.add(
                    "api.token_file",
                    format!(
                        "api.listen {addr} is not loopback: name a token_file (mode 0600) so that only holders of the token can use it"
                    ),
                );
            }
        }
        if self.api.token_file.is_some() && self.api.listen.is_none() {
            p.add("api.token_file", "a token is for TCP clients: set api.listen too, or remove it (the socket needs none)".to_owned());
        }
        let api = Api {
            socket: self.api.socket.as_deref().map_or_else(|| default_api_socket(&self.instance), PathBuf::from),
            group: self.api.group.clone(),
            listen: api_tcp,
            token_file: self.api.token_file.as_deref().map(PathBuf::from),
        };

        let vips = self.validate_vips(&mut p);
        let bgp = self.bgp.as_ref().map(|b| {
            if let Some(x) = b.prepend_below {
                if !(x > 0.0 && x <= 1.0) {
                    p.add("bgp.prepend_below", format!("{x} is outside 0 < x <= 1"));
                }
            }
            let graceful_ms = b.graceful_shutdown_ms.unwrap_or(DEFAULT_GRACEFUL_SHUTDOWN_MS);
            if graceful_ms > 60_000 {
                p.add("bgp.graceful_shutdown_ms", format!("{graceful_ms} is more than 60000 (a minute)"));
            }
            Bgp {
                bird_socket: b.bird_socket.as_deref().unwrap_or("/run/bird/bird.ctl").into(),
                include_file: b.include_file.as_deref().unwrap_or("/run/anycast-lb/vips.conf").into(),
                prepend_below: b.prepend_below,
                withdraw_on_exit: b.withdraw_on_exit.unwrap_or(true),
                graceful_shutdown: std::time::Duration::from_millis(graceful_ms),
            }
        });

        let handoff = self.handoff.as_ref().and_then(|h| validate_handoff(h, &mut p));
        if let Some(h) = &handoff {
            if vips.iter().any(|v| v.id.addr == h.address) {
                p.add("handoff.address", format!("{} is a VIP address; give this node's own address", h.address));
            }
        }

        let needed = ring_slots_needed(&vips);
        let ring_slots = match self.ring_slots {
            Some(n) if (n as u64) < needed => {
                p.add("ring_slots", format!("{n} is fewer than the {needed} the VIPs need (two rings of each VIP's ring_size)"));
                n
            }
            Some(n) => n,
            None => (needed + 2 * MAX_RING_SIZE as u64).min(u32::MAX as u64) as u32,
        };
        if !p.0.is_empty() {
            return Err(ConfigError::Invalid { problems: p.0 });
        }
        let flood = Flood {
            inserts_per_sec: self.flood.inserts_per_sec.unwrap_or(DEFAULT_INSERTS_PER_SEC),
            handoffs_per_sec: self.flood.handoffs_per_sec.unwrap_or(DEFAULT_HANDOFFS_PER_SEC),
        };
        Ok(Config {
            bgp,
            handoff,
            flood,
            instance: self.instance.clone(),
            conn_table_size: self.conn_table_size,
            ring_slots,
            interfaces: ifaces,
            forwarding: forwarding.expect("no problems"),
            metrics_listen: metrics_listen.expect("no problems"),
            api,
            vips,
        })
    }

    fn validate_forwarding(&self, p: &mut Problems) -> Option<Forwarding> {
        let f = &self.forwarding;
        let next_hop = match (&f.next_hop_mac, &f.next_hop_ip) {
            (Some(mac), None) => parse_mac(mac).map(NextHop::Mac).or_else(|| {
                p.add("forwarding.next_hop_mac", format!("{mac:?} is not a MAC address like 02:00:00:00:00:01"));
                None
            }),
            (None, Some(ip)) => ip.parse().ok().map(NextHop::Ip).or_else(|| {
                p.add("forwarding.next_hop_ip", format!("{ip:?} is not an IP address"));
                None
            }),
            _ => {
                p.add("forwarding", "give exactly one of next_hop_mac and next_hop_ip");
                None
            }
        };
        let mtu = f.mtu.unwrap_or(1500);
        // At least IPv6's minimum link MTU: the "too big" answers quote a fixed 1232 bytes.
        if !(1280..=9216).contains(&mtu) {
            p.add("forwarding.mtu", format!("{mtu} is outside 1280 ..= 9216"));
        }
        let v4 = f.source_v4.as_deref().unwrap_or("10.255.0.0/16");
        let source_v4 = match parse_prefix(v4) {
            Some((IpAddr::V4(a), bits)) => Some((a, bits)),
            _ => {
                p.add("forwarding.source_v4", format!("{v4:?} is not an IPv4 prefix like 10.255.0.0/16"));
                None
            }
        };
        let v6 = f.source_v6.as_deref().unwrap_or("fd00:ffff::/96");
        let source_v6 = match parse_prefix(v6) {
            Some((IpAddr::V6(a), bits)) if bits <= 32 => Some((a, bits)),
            Some((IpAddr::V6(_), _)) => {
                p.add("forwarding.source_v6", format!("{v6:?}: at most 32 host bits (prefix length >= 96)"));
                None
            }
            _ => {
                p.add("forwarding.source_v6", format!("{v6:?} is not an IPv6 prefix like fd00:ffff::/96"));
                None
            }
        };
        let too_big_per_sec = f.too_big_per_sec.unwrap_or(1000);
        Some(Forwarding { next_hop: next_hop?, mtu, source_v4: source_v4?, source_v6: source_v6?, too_big_per_sec })
    }

    fn validate_vips(&self, p: &mut Problems) -> Vec<Vip> {
        if self.vips.len() > MAX_VIPS as usize {
            p.add("vip", format!("{} VIPs, at most {MAX_VIPS}", self.vips.len()));
        }
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        let mut vips = Vec::new();
        for (i, raw) in self.vips.iter().enumerate() {
            let field = format!("vip[{i}]");
            if raw.name.is_empty() {
                p.add(format!("{field}.name"), "is empty");
            } else if !names.insert(raw.name.clone()) {
                p.add(format!("{field}.name"), format!("{:?} is used by an earlier VIP", raw.name));
            }
            let field = format!("vip[{i}] {:?}", raw.name);
            let addr: Option<IpAddr> = raw.address.parse().ok();
            if addr.is_none() {
                p.add(format!("{field}.address"), format!("{:?} is not an IP address", raw.address));
            }
            let proto = match raw.protocol.as_str() {
                "tcp" => Some(Proto::Tcp),
                "udp" => Some(Proto::Udp),
                other => {
                    p.add(format!("{field}.protocol"), format!("{other:?} is not \"tcp\" or \"udp\""));
                    None
                }
            };
            let ring_size = raw.ring_size.unwrap_or(lb_common::DEFAULT_RING_SIZE);
            if !is_prime(ring_size) || ring_size > MAX_RING_SIZE {
                p.add(format!("{field}.ring_size"), format!("{ring_size} must be a prime no larger than {MAX_RING_SIZE}"));
            }
            let min_healthy = raw.min_healthy.unwrap_or(1);
            if min_healthy == 0 {
                p.add(format!("{field}.min_healthy"), "must be at least 1");
            }
            let (Some(addr), Some(proto)) = (addr, proto) else { continue };
            let id = VipId { addr, port: raw.port, proto };
            if !ids.insert(id) {
                p.add(field.clone(), format!("duplicate VIP {id}"));
            }
            let vip_health = raw.health.clone().unwrap_or_default().over(&self.health);
            let mut real_addrs = HashSet::new();
            let mut reals = Vec::new();
            for (j, real) in raw.reals.iter().enumerate() {
                let rfield = format!("{field}.real[{j}]");
                let Ok(raddr) = real.address.parse::<IpAddr>() else {
                    p.add(format!("{rfield}.address"), format!("{:?} is not an IP address", real.address));
                    continue;
                };
                if !real_addrs.insert(raddr) {
                    p.add(format!("{rfield}.address"), format!("{raddr} is listed twice in this VIP"));
                }
                if addr.is_ipv6() && raddr.is_ipv4() {
                    p.add(format!("{rfield}.address"), format!("IPv4 real {raddr} cannot carry an IPv6 VIP"));
                }
                let weight = real.weight.unwrap_or(1);
                if weight > MAX_WEIGHT {
                    p.add(format!("{rfield}.weight"), format!("{weight} is out of range 0 ..= {MAX_WEIGHT}"));
                }
                let health = real.health.clone().unwrap_or_default().over(&vip_health);
                if let Some(health) = validate_health(&health, raw.port, &format!("{rfield}.health"), p) {
                    reals.push(RealConfig { addr: raddr, weight, health });
                }
            }
            vips.push(Vip { name: raw.name.clone(), id, source_affinity: raw.source_affinity, ring_size, min_healthy, reals });
        }
        // A real has an id per VIP it serves (its connection entries name the VIP's real).
        let real_ids: usize = vips.iter().map(|v| v.reals.len()).sum();
        if real_ids >= MAX_REALS as usize {
            p.add("vip", format!("{real_ids} reals over all VIPs (a real counts once per VIP it serves), at most {}", MAX_REALS - 1));
        }
        vips
    }
}

/// Ring slots `vips` need: two rings of each VIP's `ring_size` (the live one and the spare a
/// rebuild writes before the switch).
pub fn ring_slots_needed(vips: &[Vip]) -> u64 {
    vips.iter().map(|v| 2 * v.ring_size as u64).sum()
}

/// Peers share this node's address family (a handoff tunnel is one family end to end).
fn validate_handoff(h: &RawHandoff, p: &mut Problems) -> Option<Handoff> {
    let before = p.0.len();
    let address = h.address.parse::<IpAddr>().map_err(|_| p.add("handoff.address", format!("{:?} is not an IP address", h.address))).ok();
    if h.peers.is_empty() || h.peers.len() > lb_common::MAX_PEERS as usize {
        p.add("handoff.peers", format!("{} peers: give 1 ..= {}", h.peers.len(), lb_common::MAX_PEERS));
    }
    let mut peers = Vec::new();
    for (i, raw) in h.peers.iter().enumerate() {
        let field = format!("handoff.peers[{i}]");
        match raw.parse::<IpAddr>() {
            Err(_) => p.add(field, format!("{raw:?} is not an IP address")),
            Ok(peer) if Some(peer) == address => p.add(field, format!("{peer} is this node's own address")),
            Ok(peer) if peers.contains(&peer) => p.add(field, format!("{peer} is listed twice")),
            Ok(peer) if address.is_some_and(|a| a.is_ipv4() != peer.is_ipv4()) => {
                p.add(field, format!("{peer} is not the same address family as handoff.address"))
            }
            Ok(peer) => peers.push(peer),
        }
    }
    let health = validate_health(&h.health, DEFAULT_METRICS_PORT, "handoff.health", p);
    if p.0.len() != before {
        return None;
    }
    Some(Handoff { address: address?, peers, health: health? })
}

fn validate_health(h: &RawHealth, vip_port: u16, field: &str, p: &mut Problems) -> Option<HealthCheck> {
    let before = p.0.len();
    let interval = h.interval_ms.unwrap_or(1000);
    let timeout = h.timeout_ms.unwrap_or(500);
    if !(10..=3_600_000).contains(&interval) {
        p.add(format!("{field}.interval_ms"), format!("{interval} is outside 10 ..= 3600000"));
    }
    if timeout == 0 || timeout > interval {
        p.add(format!("{field}.timeout_ms"), format!("{timeout} must be above 0 and at most interval_ms ({interval})"));
    }
    let (rise, fall) = (h.rise.unwrap_or(2), h.fall.unwrap_or(3));
    for (name, v) in [("rise", rise), ("fall", fall)] {
        if !(1..=100).contains(&v) {
            p.add(format!("{field}.{name}"), format!("{v} is outside 1 ..= 100"));
        }
    }
    let port = h.port.unwrap_or(vip_port);
    let kind = match h.kind.as_deref().unwrap_or("tcp") {
        "none" => CheckKind::None,
        "tcp" => CheckKind::Tcp,
        "http" => {
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') {
                p.add(format!("{field}.path"), format!("{path:?} must start with '/'"));
            }
            let expect_status = h.expect_status.unwrap_or(200);
            if !(100..=599).contains(&expect_status) {
                p.add(format!("{field}.expect_status"), format!("{expect_status} is not an HTTP status"));
            }
            CheckKind::Http { path, expect_status, body_contains: h.body_contains.clone() }
        }
        "udp" => match (&h.request, &h.expect) {
            (Some(request), Some(expect)) => CheckKind::Udp { request: request.clone(), expect: expect.clone() },
            _ => {
                p.add(field, "a udp check needs both request and expect");
                CheckKind::None
            }
        },
        other => {
            p.add(format!("{field}.kind"), format!("{other:?} is not tcp, http, udp or none"));
            CheckKind::None
        }
    };
    if port == 0 && kind != CheckKind::None {
        p.add(format!("{field}.port"), "an any-port VIP needs a health-check port");
    }
    (p.0.len() == before).then(|| HealthCheck {
        kind,
        port,
        interval: Duration::from_millis(interval),
        timeout: Duration::from_millis(timeout),
        rise,
        fall,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        instance = "edge1"
        [[interface]]
        name = "lo"
        [forwarding]
        next_hop_mac = "02:00:00:00:00:03"
        [health]
        interval_ms = 200
        timeout_ms = 100
        [[vip]]
        name = "web"
        address = "10.99.0.1"
        port = 80
        protocol = "tcp"
        health = { kind = "http", path = "/healthz", body_contains = "ok" }
        [[vip.real]]
        address = "10.1.0.1"
        [[vip.real]]
        address = "10.1.0.2"
        weight = 3
        health = { fall = 5 }
        [[vip]]
        name = "dns6"
        address = "2001:db8::53"
        port = 0
        protocol = "udp"
        ring_size = 251
        health = { kind = "udp", port = 53, request = "ping", expect = "pong" }
        [[vip.real]]
        address = "fd00::1"
    "#;

    /// The problems of `GOOD` with `from` replaced by `to`.
    fn problems(from: &str, to: &str) -> Vec<Problem> {
        assert!(GOOD.contains(from), "{from:?} not in the good config");
        match parse(&GOOD.replacen(from, to, 1), InterfaceCheck::OnThisHost) {
            Ok(_) => vec![],
            Err(e) => e.problems().to_vec(),
        }
    }

    fn assert_problem(from: &str, to: &str, field: &str, reason: &str) {
        let found = problems(from, to);
        assert!(
            found.iter().any(|p| p.field == field && p.reason.contains(reason)),
            "{from:?} -> {to:?}: want {field}: ..{reason}.., got {found:?}"
        );
    }

    #[test]
    fn good_config_validates_with_inherited_health() {
        let c = parse(GOOD, InterfaceCheck::OnThisHost).unwrap();
        assert_eq!(c.instance, "edge1");
        assert_eq!(c.forwarding.next_hop, NextHop::Mac([2, 0, 0, 0, 0, 3]));
        assert_eq!(c.forwarding.source_v4, (Ipv4Addr::new(10, 255, 0, 0), 16));
        let web = &c.vips[0];
        assert_eq!(web.reals[1].weight, 3);
        let h = &web.reals[1].health;
        assert_eq!((h.interval, h.timeout, h.rise, h.fall), (Duration::from_millis(200), Duration::from_millis(100), 2, 5));
        assert!(matches!(&h.kind, CheckKind::Http { path, expect_status: 200, .. } if path == "/healthz"));
        assert_eq!(h.port, 80, "the VIP's port by default");
        assert_eq!(c.vips[1].reals[0].health.port, 53);
    }

    #[test]
    fn bad_address_is_named() {
        assert_problem("address = \"10.1.0.1\"", "address = \"10.1.0.x\"", "vip[0] \"web\".real[0].address", "not an IP address");
        assert_problem("address = \"10.99.0.1\"", "address = \"10.99.0\"", "vip[0] \"web\".address", "not an IP address");
    }

    #[test]
    fn duplicate_vip_and_name_are_named() {
        let dup = GOOD.replace(
            "name = \"dns6\"\n        address = \"2001:db8::53\"\n        port = 0\n        protocol = \"udp\"",
            "name = \"web\"\n        address = \"10.99.0.1\"\n        port = 80\n        protocol = \"tcp\"",
        );
        let found = parse(&dup, InterfaceCheck::Skip).unwrap_err().problems().to_vec();
        assert!(found.iter().any(|p| p.reason.contains("duplicate VIP 10.99.0.1:80/tcp")), "{found:?}");
        assert!(found.iter().any(|p| p.field == "vip[1].name" && p.reason.contains("used by an earlier VIP")), "{found:?}");
    }

    #[test]
    fn weight_out_of_range_is_named() {
        assert_problem("weight = 3", "weight = 1001", "vip[0] \"web\".real[1].weight", "out of range");
    }

    /// `vips` VIPs of `reals` reals each (ring_size 16381, health off).
    fn many(vips: usize, reals: usize) -> String {
        let mut text = String::from("[forwarding]\nnext_hop_mac = \"02:00:00:00:00:03\"\n[health]\nkind = \"none\"\n");
        for v in 0..vips {
            text += &format!(
                "[[vip]]\nname = \"v{v}\"\naddress = \"10.{}.{}.1\"\nport = 80\nprotocol = \"tcp\"\nring_size = 16381\n",
                100 + v / 256,
                v % 256
            );
            for r in 0..reals {
                text += &format!("[[vip.real]]\naddress = \"10.1.{}.{}\"\n", r / 256, r % 256 + 1);
            }
        }
        text
    }

    #[test]
    fn the_ring_pool_follows_the_vips_unless_set() {
        let c = parse(GOOD, InterfaceCheck::Skip).unwrap();
        assert_eq!(c.ring_slots, 2 * (65_537 + 251) + 2 * 65_537, "two rings of each, and room for one more VIP");
        let set = parse(&format!("ring_slots = 200000\n{GOOD}"), InterfaceCheck::Skip).unwrap();
        assert_eq!(set.ring_slots, 200_000);
        let small = parse(&format!("ring_slots = 131575\n{GOOD}"), InterfaceCheck::Skip).unwrap_err();
        assert!(small.problems().iter().any(|p| p.field == "ring_slots" && p.reason.contains("fewer than the 131576")), "{small}");
    }

    #[test]
    fn four_thousand_and_ninety_six_vips_with_sixteen_reals_each_are_accepted_and_no_more() {
        let c = parse(&many(4096, 16), InterfaceCheck::Skip).unwrap();
        assert_eq!((c.vips.len(), c.ring_slots), (4096, 2 * 4096 * 16381 + 2 * 65_537));
        let too_many = parse(&many(4097, 1), InterfaceCheck::Skip).unwrap_err();
        assert!(too_many.problems().iter().any(|p| p.field == "vip" && p.reason.contains("4097 VIPs, at most 4096")), "{too_many}");
        // A real has an id per VIP: 4096 VIPs of 17 reals need 69,632.
        let too_many_reals = parse(&many(4096, 17), InterfaceCheck::Skip).unwrap_err();
        assert!(too_many_reals.problems().iter().any(|p| p.reason.contains("69632 reals over all VIPs")), "{too_many_reals}");
    }

    #[test]
    fn the_admin_api_is_a_socket_unless_tcp_is_asked_for_and_tcp_beyond_loopback_needs_a_token() {
        let c = parse(GOOD, InterfaceCheck::Skip).unwrap();
        assert_eq!(c.api, Api { socket: "/run/anycast-lb/edge1.sock".into(), group: None, listen: None, token_file: None });
        let with = |api: &str| format!("{GOOD}\n[api]\n{api}");
        let tcp = parse(&with("listen = \"127.0.0.1:9101\""), InterfaceCheck::Skip).unwrap();
        assert_eq!(tcp.api.listen, Some("127.0.0.1:9101".parse().unwrap()), "loopback without a token: reading only");
        let open = parse(&with("listen = \"0.0.0.0:9101\""), InterfaceCheck::Skip).unwrap_err();
        assert!(open.problems().iter().any(|p| p.field == "api.token_file" && p.reason.contains("not loopback")), "{open}");
        let ok = parse(&with("listen = \"0.0.0.0:9101\"\ntoken_file = \"/etc/anycast-lb/token\""), InterfaceCheck::Skip).unwrap();
        assert_eq!(ok.api.token_file, Some("/etc/anycast-lb/token".into()));
        let stray = parse(&with("token_file = \"/etc/anycast-lb/token\""), InterfaceCheck::Skip).unwrap_err();
        assert!(stray.problems().iter().any(|p| p.field == "api.token_file"), "{stray}");
        let unknown = parse_raw(&with("token = \"secret\"")).unwrap_err();
        assert!(unknown.to_string().contains("unknown field `token`"), "the token itself never goes in the config: {unknown}");
    }

    #[test]
    fn ring_size_must_be_prime() {
        assert_problem("ring_size = 251", "ring_size = 250", "vip[1] \"dns6\".ring_size", "must be a prime");
        assert_problem("ring_size = 251", "ring_size = 131071", "vip[1] \"dns6\".ring_size", "no larger than 65537");
    }

    #[test]
    fn unknown_interface_is_named() {
        assert_problem("name = \"lo\"", "name = \"nosuch0\"", "interface[0].name", "unknown interface");
        assert_problem(
            "name = \"lo\"\n",
            "name = \"lo\"\n        mode = \"turbo\"\n",
            "interface[0].mode",
            "not \"native\" or \"generic\"",
        );
    }

    #[test]
    fn forwarding_problems_are_named() {
        assert_problem("next_hop_mac = \"02:00:00:00:00:03\"", "next_hop_mac = \"02:00:00:00:03\"", "forwarding.next_hop_mac", "not a MAC");
        assert_problem("next_hop_mac = \"02:00:00:00:00:03\"", "", "forwarding", "exactly one of");
        assert_problem("[forwarding]\n", "[forwarding]\n        mtu = 100\n", "forwarding.mtu", "outside");
        assert_problem(
            "[forwarding]\n",
            "[forwarding]\n        source_v6 = \"fd00::/64\"\n",
            "forwarding.source_v6",
            "at most 32 host bits",
        );
    }

    #[test]
    fn handoff_validates_and_its_problems_are_named() {
        let with = |h: &str| GOOD.replacen("[[vip]]", &format!("{h}\n        [[vip]]"), 1);
        let c = parse(
            &with("[handoff]\n        address = \"10.20.3.2\"\n        peers = [\"10.20.1.2\", \"10.20.2.2\"]"),
            InterfaceCheck::Skip,
        )
        .unwrap();
        let h = c.handoff.expect("handoff");
        assert_eq!(h.peers, ["10.20.1.2".parse::<IpAddr>().unwrap(), "10.20.2.2".parse().unwrap()]);
        assert_eq!(
            (h.health.kind.clone(), h.health.port, h.health.fall),
            (CheckKind::Tcp, 9100, 3),
            "the peer lb's metrics port by default"
        );
        let bad = |h: &str| parse(&with(h), InterfaceCheck::Skip).unwrap_err().problems().to_vec();
        let found = bad(
            "[handoff]\n        address = \"10.20.3.2\"\n        peers = [\"10.20.3.2\", \"fd00::1\", \"10.20.1.2\", \"10.20.1.2\", \"x\"]",
        );
        let want = [
            ("handoff.peers[0]", "own address"),
            ("handoff.peers[1]", "same address family"),
            ("handoff.peers[3]", "listed twice"),
            ("handoff.peers[4]", "not an IP address"),
        ];
        for (field, reason) in want {
            assert!(found.iter().any(|p| p.field == field && p.reason.contains(reason)), "want {field}: {reason}, got {found:?}");
        }
        let found = bad("[handoff]\n        address = \"10.99.0.1\"\n        peers = [\"10.20.1.2\"]");
        assert!(found.iter().any(|p| p.field == "handoff.address" && p.reason.contains("is a VIP address")), "{found:?}");
        let found = bad("[handoff]\n        address = \"nope\"\n        peers = []\n        health = { fall = 0 }");
        for field in ["handoff.address", "handoff.peers", "handoff.health.fall"] {
            assert!(found.iter().any(|p| p.field == field), "want {field}, got {found:?}");
        }
    }

    #[test]
    fn health_problems_are_named() {
        assert_problem("timeout_ms = 100", "timeout_ms = 300", "vip[0] \"web\".real[0].health.timeout_ms", "at most interval_ms");
        assert_problem("health = { fall = 5 }", "health = { fall = 0 }", "vip[0] \"web\".real[1].health.fall", "outside 1 ..= 100");
        assert_problem("kind = \"udp\", port = 53, ", "kind = \"udp\", ", "vip[1] \"dns6\".real[0].health.port", "any-port VIP needs");
        assert_problem("kind = \"http\"", "kind = \"smtp\"", "vip[0] \"web\".real[0].health.kind", "not tcp, http, udp or none");
        assert_problem(", expect = \"pong\"", "", "vip[1] \"dns6\".real[0].health", "needs both request and expect");
    }

    #[test]
    fn family_mismatch_and_duplicate_real_are_named() {
        assert_problem("address = \"fd00::1\"", "address = \"10.1.0.9\"", "vip[1] \"dns6\".real[0].address", "cannot carry an IPv6 VIP");
        assert_problem("address = \"10.1.0.2\"", "address = \"10.1.0.1\"", "vip[0] \"web\".real[1].address", "listed twice");
    }

    #[test]
    fn syntax_errors_and_unknown_fields_are_reported() {
        assert!(matches!(parse("[[vip]\n", InterfaceCheck::Skip), Err(ConfigError::Syntax { .. })));
        let e = parse(&GOOD.replace("weight = 3", "wieght = 3"), InterfaceCheck::Skip).unwrap_err();
        assert!(e.to_string().contains("wieght"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = GOOD.replace("weight = 3", "weight = 5000").replace("ring_size = 251", "ring_size = 4");
        assert_eq!(parse(&bad, InterfaceCheck::Skip).unwrap_err().problems().len(), 2);
    }

    #[test]
    fn example_config_in_the_repository_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb.example.toml");
        load(&path, InterfaceCheck::Skip).unwrap_or_else(|e| panic!("{e}"));
    }
}
