//! A backend's config file (`instance` and a `[backend]` section) -> validated `BackendConfig`,
//! every problem named by its field, as the balancer's config is.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::config::{self, ConfigError, Interface, InterfaceCheck, Problems, RawInterface};

/// A backend's config file: `instance` and a `[backend]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendFile {
    /// Names the bpffs folder, the state file and the default drain file (default "backend").
    #[serde(default = "default_instance")]
    pub instance: String,
    pub backend: RawBackend,
}

fn default_instance() -> String {
    "backend".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// NICs the tunnels arrive on.
    #[serde(rename = "interface")]
    pub interfaces: Vec<RawInterface>,
    /// This host's addresses the balancer tunnels to (the reals' addresses).
    pub addresses: Vec<String>,
    /// VIPs this host serves: held on `lo`, and the only inner destinations a tunnel may carry.
    pub vips: Vec<String>,
    /// The balancers' outer source prefixes (their `[forwarding] source_v4` / `source_v6`):
    /// tunnels from anywhere else are dropped (default ["10.255.0.0/16", "fd00:ffff::/96"],
    /// the balancer's defaults).
    pub balancer_sources: Option<Vec<String>>,
    /// Reverse-path filtering on the tunnel NICs: "loose" (default) or "off" (the inner source
    /// is the client, which routes back some other way than the NIC only when routing is
    /// asymmetric).
    pub rp_filter: Option<String>,
    #[serde(default)]
    pub health: RawBackendHealth,
    /// QUIC-LB: the parameters and this host's server IDs per VIP, served at /quic-lb for the
    /// QUIC servers here to issue routable connection IDs (docs/quic-lb.md).
    #[serde(default)]
    pub quic_lb: Vec<RawBackendQuicLb>,
}

/// `[[backend.quic_lb]]`: what the balancer's `[vip.quic_lb]` says, and this real's server IDs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendQuicLb {
    /// The VIP, address:port; its address is one of `vips`.
    pub vip: String,
    pub config_id: u8,
    pub server_id_len: u8,
    pub nonce_len: u8,
    pub cid_len: Option<u8>,
    /// This host's server IDs for the VIP (hex), as the balancer's config gives this real.
    pub server_ids: Vec<String>,
    /// The key file (mode 0600), when the balancer's has one.
    pub key_file: Option<String>,
    /// Put the key in /quic-lb's answer too (default false: a server reads `key_file` itself;
    /// whoever reaches the endpoint could read the key).
    #[serde(default)]
    pub serve_key: bool,
}

/// One VIP's QUIC-LB part of a backend config, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendQuicLb {
    pub vip: SocketAddr,
    pub params: config::QuicLb,
    pub server_ids: Vec<Vec<u8>>,
    pub serve_key: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendHealth {
    /// Health, load and metrics endpoint (default 0.0.0.0:9180).
    pub listen: Option<String>,
    /// While this file exists the node is draining: /healthz answers 503 (default
    /// /var/lib/anycast-lb/<instance>.drain).
    pub drain_file: Option<String>,
    /// Where the load comes from: "cpu" (default: busy share of all CPUs over the interval),
    /// "file:PATH" (a number 0..1 the operator writes), or "command:CMD" (run with sh -c; its
    /// output is the number).
    pub load: Option<String>,
    /// How often the load is sampled (default 1000).
    pub interval_ms: Option<u64>,
    /// Open connections to the endpoint; at the cap the one idle the longest is closed
    /// (default 256).
    pub max_connections: Option<usize>,
    /// From connect or the last answer, a request must arrive within this (default 10000).
    pub request_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LoadSource {
    Cpu,
    File(PathBuf),
    Command(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub instance: String,
    pub interfaces: Vec<Interface>,
    pub addresses: Vec<IpAddr>,
    pub vips: Vec<IpAddr>,
    /// (address, prefix length) the balancers' tunnels come from.
    pub balancer_sources: Vec<(IpAddr, u8)>,
    /// The value for `rp_filter` on the tunnel NICs (2 loose, 0 off).
    pub rp_filter: u8,
    pub listen: SocketAddr,
    pub drain_file: PathBuf,
    pub load: LoadSource,
    pub interval: Duration,
    pub limits: crate::serve::ListenerLimits,
    pub quic_lb: Vec<BackendQuicLb>,
}

/// The balancer's default outer source prefixes (`[forwarding] source_v4` / `source_v6`).
pub const DEFAULT_BALANCER_SOURCES: [&str; 2] = ["10.255.0.0/16", "fd00:ffff::/96"];

/// The health, load and metrics port when the config names none.
pub const DEFAULT_PORT: u16 = 9180;

impl RawBackendFile {
    pub fn validate(&self, check: InterfaceCheck) -> Result<BackendConfig, ConfigError> {
        let mut p = Problems::default();
        let b = &self.backend;
        config::validate_instance(&self.instance, &mut p);
        let interfaces = config::validate_interfaces("backend.interface", &b.interfaces, check, &mut p);
        if b.interfaces.is_empty() {
            p.add("backend.interface", "name at least one NIC the tunnels arrive on");
        }
        let mut addrs = |field: &str, list: &[String]| -> Vec<IpAddr> {
            if list.is_empty() {
                p.add(field, "empty");
            }
            config::usable_addresses(field, list, &mut p)
        };
        let addresses = addrs("backend.addresses", &b.addresses);
        let vips = addrs("backend.vips", &b.vips);
        let sources = b.balancer_sources.clone().unwrap_or_else(|| DEFAULT_BALANCER_SOURCES.map(String::from).to_vec());
        if sources.is_empty() || sources.len() > lb_common::MAX_DECAP_SOURCES as usize {
            p.add("backend.balancer_sources", format!("{} prefixes: give 1 ..= {}", sources.len(), lb_common::MAX_DECAP_SOURCES));
        }
        let balancer_sources = sources
            .iter()
            .enumerate()
            .filter_map(|(i, text)| {
                config::parse_prefix_len(text).or_else(|| {
                    p.add(format!("backend.balancer_sources[{i}]"), format!("{text:?} is not a prefix like 10.255.0.0/16"));
                    None
                })
            })
            .collect();
        let rp_filter = match b.rp_filter.as_deref().unwrap_or("loose") {
            "loose" => 2,
            "off" => 0,
            other => {
                p.add("backend.rp_filter", format!("{other:?} is not \"loose\" or \"off\""));
                2
            }
        };
        let listen_text = b.health.listen.clone().unwrap_or_else(|| format!("0.0.0.0:{DEFAULT_PORT}"));
        let listen = listen_text.parse().unwrap_or_else(|_| {
            p.add("backend.health.listen", format!("{listen_text:?} is not an address:port"));
            SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))
        });
        let load = match b.health.load.as_deref().unwrap_or("cpu") {
            "cpu" => LoadSource::Cpu,
            other => match other.split_once(':') {
                Some(("file", path)) if !path.is_empty() => LoadSource::File(path.into()),
                Some(("command", cmd)) if !cmd.is_empty() => LoadSource::Command(cmd.into()),
                _ => {
                    p.add("backend.health.load", format!("{other:?} is not \"cpu\", \"file:PATH\" or \"command:CMD\""));
                    LoadSource::Cpu
                }
            },
        };
        let interval_ms = b.health.interval_ms.unwrap_or(1000);
        if !(100..=60_000).contains(&interval_ms) {
            p.add("backend.health.interval_ms", format!("{interval_ms} is outside 100 ..= 60000"));
        }
        let limits = config::validate_listener_limits(
            ("backend.health.max_connections", "backend.health.request_timeout_ms"),
            b.health.max_connections,
            b.health.request_timeout_ms,
            &mut p,
        );
        let quic_lb =
            b.quic_lb.iter().enumerate().filter_map(|(i, q)| validate_quic(q, &vips, &format!("backend.quic_lb[{i}]"), &mut p)).collect();
        let drain_file =
            b.health.drain_file.clone().map_or_else(|| crate::journal::state_dir().join(format!("{}.drain", self.instance)), PathBuf::from);
        p.or(|| BackendConfig {
            instance: self.instance.clone(),
            interfaces,
            addresses,
            vips,
            balancer_sources,
            rp_filter,
            listen,
            drain_file,
            load,
            interval: Duration::from_millis(interval_ms),
            limits,
            quic_lb,
        })
    }
}

/// A `[[backend.quic_lb]]`: the balancer's checks of the parameters and server IDs, and a VIP
/// this backend serves.
fn validate_quic(q: &RawBackendQuicLb, vips: &[IpAddr], field: &str, p: &mut Problems) -> Option<BackendQuicLb> {
    let vip: Option<SocketAddr> = q.vip.parse().ok();
    match vip {
        None => p.add(format!("{field}.vip"), format!("{:?} is not an address:port", q.vip)),
        Some(v) if !vips.contains(&v.ip()) => p.add(format!("{field}.vip"), format!("{} is not one of backend.vips", v.ip())),
        Some(_) => {}
    }
    let raw = config::RawQuicLb {
        config_id: q.config_id,
        server_id_len: q.server_id_len,
        nonce_len: q.nonce_len,
        cid_len: q.cid_len,
        key_file: q.key_file.clone(),
        server_id_hold_s: None,
    };
    let params = config::validate_quic_lb(&raw, config::Proto::Udp, field, p);
    if q.server_ids.is_empty() {
        p.add(format!("{field}.server_ids"), "is empty: name this host's server IDs for the VIP");
    }
    let server_ids: Vec<Vec<u8>> = q
        .server_ids
        .iter()
        .enumerate()
        .filter_map(|(i, sid)| config::validate_server_id(Some(&raw), Some(sid), &format!("{field}.server_ids[{i}]"), p))
        .collect();
    if q.serve_key && q.key_file.is_none() {
        p.add(format!("{field}.serve_key"), "there is no key_file to serve");
    }
    Some(BackendQuicLb { vip: vip?, params: params?, server_ids, serve_key: q.serve_key })
}

pub fn parse(text: &str, check: InterfaceCheck) -> Result<BackendConfig, ConfigError> {
    let raw: RawBackendFile =
        toml::from_str(text).map_err(|e| ConfigError::Syntax { path: "backend config".into(), message: e.to_string() })?;
    raw.validate(check)
}

pub fn load(path: &Path, check: InterfaceCheck) -> Result<BackendConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    parse(&text, check).map_err(|e| match e {
        ConfigError::Syntax { message, .. } => ConfigError::Syntax { path: path.display().to_string(), message },
        other => other,
    })
}

/// Whether a config file is a backend's (it has a `[backend]` section).
pub fn is_backend_config(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("backend"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "instance = \"be1\"\n[backend]\ninterface = [{ name = \"lo\" }]\naddresses = [\"10.1.0.1\", \"fd00:1::1\"]\n\
                        vips = [\"10.99.0.1\", \"2001:db8::10\"]\n";

    #[test]
    fn a_backend_config_validates_with_defaults() {
        let c = parse(GOOD, InterfaceCheck::OnThisHost).unwrap();
        assert_eq!(c.instance, "be1");
        assert_eq!(c.addresses.len(), 2);
        assert_eq!((c.rp_filter, c.listen, c.load.clone()), (2, "0.0.0.0:9180".parse().unwrap(), LoadSource::Cpu));
        assert!(c.drain_file.ends_with("be1.drain"));
        assert!(is_backend_config(GOOD));
        assert!(!is_backend_config("[forwarding]\nnext_hop_mac = \"02:00:00:00:00:01\"\n"));
    }

    #[test]
    fn backend_problems_are_named() {
        let bad = GOOD.replace("\"10.1.0.1\"", "\"10.1.0.300\"").replace("vips = [", "rp_filter = \"strict\"\nvips = [\"x\", ")
            + "[backend.health]\nload = \"gpu\"\ninterval_ms = 5\n";
        let err = parse(&bad, InterfaceCheck::Skip).unwrap_err();
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["backend.addresses[0]", "backend.vips[0]", "backend.rp_filter", "backend.health.load", "backend.health.interval_ms"],
            "{err}"
        );
        let no_nic = GOOD.replace("interface = [{ name = \"lo\" }]", "interface = [{ name = \"nosuch0\" }]");
        assert!(parse(&no_nic, InterfaceCheck::OnThisHost)
            .unwrap_err()
            .to_string()
            .contains("backend.interface[0].name: unknown interface"));
    }

    #[test]
    fn quic_lb_names_a_served_vip_and_this_hosts_server_ids() {
        let with = |q: &str| parse(&format!("{GOOD}[[backend.quic_lb]]\n{q}\n"), InterfaceCheck::Skip);
        let ok = with("vip = \"10.99.0.1:443\"\nconfig_id = 1\nserver_id_len = 2\nnonce_len = 6\nserver_ids = [\"0a01\"]").unwrap();
        let q = &ok.quic_lb[0];
        assert_eq!((q.vip.port(), q.params.cid_len, q.server_ids.clone(), q.serve_key), (443, 9, vec![vec![0x0a, 1]], false));
        let offer = super::super::QuicLbOffer::new(q);
        assert_eq!((offer.server_ids, offer.encrypted, offer.key), (vec!["0a01".to_owned()], false, None));
        let bad = with("vip = \"10.98.0.1:443\"\nconfig_id = 9\nserver_id_len = 2\nnonce_len = 6\nserver_ids = [\"0a\"]\nserve_key = true")
            .unwrap_err();
        let fields: Vec<&str> = bad.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "backend.quic_lb[0].vip",
                "backend.quic_lb[0].quic_lb.config_id",
                "backend.quic_lb[0].server_ids[0].server_id",
                "backend.quic_lb[0].serve_key"
            ],
            "{bad}"
        );
    }
}
