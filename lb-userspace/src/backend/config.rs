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
        })
    }
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
}
