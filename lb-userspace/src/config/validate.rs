//! Raw config -> domain types: every problem is collected with its field, and reported at once.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use lb_common::{second_chance, MAX_REALS, MAX_RING_SIZE, MAX_VIPS};

/// The least ring pool of a fleet node when `ring_slots` is not set: 16 VIPs at the default ring
/// size (two rings each), 8 MiB.
pub const FLEET_RING_SLOTS: u64 = 16 * 2 * lb_common::DEFAULT_RING_SIZE as u64;

/// The longest second-chance window: a week.
pub const MAX_SECOND_CHANCE_WINDOW_S: u32 = 7 * 24 * 3600;

use super::{
    error::{ConfigError, Problems},
    raw::*,
    types::*,
};
use crate::maglev::is_prime;

/// A listener's limits from two fields, named for problems as `(connections, timeout)`.
pub(crate) fn validate_listener_limits(
    fields: (&str, &str),
    connections: Option<usize>,
    timeout_ms: Option<u64>,
    p: &mut Problems,
) -> crate::serve::ListenerLimits {
    use crate::serve::{DEFAULT_MAX_BODY, DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT_MS};
    let max_connections = connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(4..=65_536).contains(&max_connections) {
        p.add(fields.0, format!("{max_connections} is outside 4 ..= 65536"));
    }
    let timeout_ms = timeout_ms.unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS);
    if !(100..=120_000).contains(&timeout_ms) {
        p.add(fields.1, format!("{timeout_ms} is outside 100 ..= 120000"));
    }
    crate::serve::ListenerLimits { max_connections, request_timeout: Duration::from_millis(timeout_ms), max_body: DEFAULT_MAX_BODY }
}

impl RawLimits {
    fn validate(&self, p: &mut Problems) -> Limits {
        let listener = validate_listener_limits(
            ("limits.connections_per_listener", "limits.request_timeout_ms"),
            self.connections_per_listener,
            self.request_timeout_ms,
            p,
        );
        let flows_listed = self.flows_listed.unwrap_or(DEFAULT_FLOWS_LISTED);
        if flows_listed == 0 || flows_listed > 10_000_000 {
            p.add("limits.flows_listed", format!("{flows_listed} is outside 1 ..= 10000000"));
        }
        let doctor_calls = self.doctor_calls.unwrap_or(DEFAULT_DOCTOR_CALLS);
        if !(1..=64).contains(&doctor_calls) {
            p.add("limits.doctor_calls", format!("{doctor_calls} is outside 1 ..= 64"));
        }
        let probes_per_host = self.probes_per_host.unwrap_or(DEFAULT_PROBES_PER_HOST);
        if !(1..=65_536).contains(&probes_per_host) {
            p.add("limits.probes_per_host", format!("{probes_per_host} is outside 1 ..= 65536"));
        }
        Limits { listener, flows_listed, doctor_calls, probes_per_host }
    }
}

/// Why `addr` cannot be a VIP, a real, a handoff address or a backend's address: none of these
/// can be reached through a tunnel or announced (IPv4-mapped IPv6 would share the IPv4
/// address's key in the data plane, and be announced as an IPv6 /128).
pub(crate) fn unusable_address(addr: IpAddr) -> Option<String> {
    let why = match addr {
        IpAddr::V4(a) if a.is_unspecified() || a.octets()[0] == 0 => "is unspecified (0.0.0.0/8)",
        IpAddr::V4(a) if a.is_loopback() => "is a loopback address",
        IpAddr::V4(a) if a.is_multicast() => "is a multicast address",
        IpAddr::V4(a) if a.is_broadcast() => "is the broadcast address",
        IpAddr::V4(a) if a.is_link_local() => "is link-local (169.254.0.0/16)",
        IpAddr::V6(a) if a.is_unspecified() => "is unspecified (::)",
        IpAddr::V6(a) if a.is_loopback() => "is the loopback address",
        IpAddr::V6(a) if a.is_multicast() => "is a multicast address",
        IpAddr::V6(a) if a.is_unicast_link_local() => "is link-local (fe80::/10)",
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            return Some(format!("{addr} is IPv4-mapped: write it as {}", a.to_ipv4_mapped().expect("mapped")));
        }
        _ => return None,
    };
    Some(format!("{addr} {why}"))
}

/// Parses a list of addresses under `field`, each usable (see `unusable_address`).
pub(crate) fn usable_addresses(field: &str, list: &[String], p: &mut Problems) -> Vec<IpAddr> {
    list.iter()
        .enumerate()
        .filter_map(|(i, a)| match a.parse::<IpAddr>() {
            Err(_) => {
                p.add(format!("{field}[{i}]"), format!("{a:?} is not an IP address"));
                None
            }
            Ok(addr) => match unusable_address(addr) {
                Some(why) => {
                    p.add(format!("{field}[{i}]"), why);
                    None
                }
                None => Some(addr),
            },
        })
        .collect()
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

/// "a.b.c.d/len" or "x::/len" -> (address, prefix length).
pub(crate) fn parse_prefix_len(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, host_bits) = parse_prefix(s)?;
    let bits = if addr.is_ipv4() { 32 } else { 128 };
    Some((addr, (bits - host_bits) as u8))
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
            if graceful_ms > MAX_GRACEFUL_SHUTDOWN_MS {
                p.add("bgp.graceful_shutdown_ms", format!("{graceful_ms} is more than {MAX_GRACEFUL_SHUTDOWN_MS} (a minute)"));
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
            // A fleet node's VIPs change without a restart, so its pool starts with room for
            // more than the VIPs it has now.
            None if self.fleet.is_some() => (needed + 2 * MAX_RING_SIZE as u64).max(FLEET_RING_SLOTS).min(u32::MAX as u64) as u32,
            None => (needed + 2 * MAX_RING_SIZE as u64).min(u32::MAX as u64) as u32,
        };
        let limits = self.limits.validate(&mut p);
        let fleet = self.fleet.as_ref().map(|f| validate_fleet(f, &self.instance, &mut p));
        if !p.0.is_empty() {
            return Err(ConfigError::Invalid { problems: p.0 });
        }
        let flood = Flood {
            inserts_per_sec: self.flood.inserts_per_sec.unwrap_or(DEFAULT_INSERTS_PER_SEC),
            handoffs_per_sec: self.flood.handoffs_per_sec.unwrap_or(DEFAULT_HANDOFFS_PER_SEC),
        };
        Ok(Config {
            fleet,
            bgp,
            handoff,
            flood,
            limits,
            instance: self.instance.clone(),
            conn_table_size: self.conn_table_size,
            backend_port: self.second_chance.backend_port.unwrap_or(crate::backend::DEFAULT_PORT),
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
        // The too-big answer advertises the MTU less the 40-byte outer IPv6 header, and IPv6
        // forbids advertising less than its minimum link MTU, 1,280: so at least 1,320.
        if !(1320..=9216).contains(&mtu) {
            p.add("forwarding.mtu", format!("{mtu} is outside 1320 ..= 9216 (the IPv6 too-big answer advertises mtu - 40, at least 1280)"));
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
        let echo_per_sec = f.echo_per_sec.unwrap_or(1000);
        Some(Forwarding { next_hop: next_hop?, mtu, source_v4: source_v4?, source_v6: source_v6?, too_big_per_sec, echo_per_sec })
    }

    /// A VIP's second-chance window: its own setting over `[second_chance]`. UDP VIPs have none
    /// (there is no socket to find), and saying so for one is an error.
    fn second_chance_of(&self, raw: &RawVip, proto: Proto, field: &str, p: &mut Problems) -> Option<Duration> {
        let window_s = raw.second_chance_window_s.or(self.second_chance.window_s).unwrap_or(second_chance::DEFAULT_WINDOW_S);
        if !(1..=MAX_SECOND_CHANCE_WINDOW_S).contains(&window_s) {
            let at = if raw.second_chance_window_s.is_some() {
                format!("{field}.second_chance_window_s")
            } else {
                "second_chance.window_s".into()
            };
            p.add(at, format!("{window_s} is out of range 1 ..= {MAX_SECOND_CHANCE_WINDOW_S} seconds"));
        }
        match (raw.second_chance, proto) {
            (Some(true), Proto::Udp) => {
                p.add(format!("{field}.second_chance"), "is for TCP VIPs: a backend finds no UDP connection to keep");
                None
            }
            (_, Proto::Udp) => None,
            (Some(on), Proto::Tcp) => on.then(|| Duration::from_secs(window_s.into())),
            (None, Proto::Tcp) => self.second_chance.enabled.unwrap_or(false).then(|| Duration::from_secs(window_s.into())),
        }
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
            if let Some(why) = addr.and_then(unusable_address) {
                p.add(format!("{field}.address"), why);
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
                if let Some(why) = unusable_address(raddr) {
                    p.add(format!("{rfield}.address"), why);
                }
                if addr.is_ipv6() && raddr.is_ipv4() {
                    p.add(format!("{rfield}.address"), format!("IPv4 real {raddr} cannot carry an IPv6 VIP"));
                }
                let weight = real.weight.unwrap_or(1);
                if weight > MAX_WEIGHT {
                    p.add(format!("{rfield}.weight"), format!("{weight} is out of range 0 ..= {MAX_WEIGHT}"));
                }
                let health = real.health.clone().unwrap_or_default().over(&vip_health);
                let server_id = validate_server_id(raw.quic_lb.as_ref(), real.server_id.as_deref(), &rfield, p);
                if let Some(server_id) = &server_id {
                    if let Some(other) = reals.iter().find(|r: &&RealConfig| r.server_id.as_ref() == Some(server_id)) {
                        p.add(format!("{rfield}.server_id"), format!("{} is {}'s too", crate::quic_lb::hex(server_id), other.addr));
                    }
                }
                if let Some(health) = validate_health(&health, raw.port, &format!("{rfield}.health"), p) {
                    reals.push(RealConfig { addr: raddr, weight, health, server_id });
                }
            }
            let second_chance = self.second_chance_of(raw, proto, &field, p);
            let quic_lb = raw.quic_lb.as_ref().and_then(|q| validate_quic_lb(q, proto, &field, p));
            let adapt = raw.adapt.as_ref().and_then(|a| validate_adapt(a, &reals, &field, p));
            vips.push(Vip {
                name: raw.name.clone(),
                id,
                source_affinity: raw.source_affinity,
                ring_size,
                min_healthy,
                second_chance,
                quic_lb,
                adapt,
                reals,
            });
        }
        // A real has an id per VIP it serves (its connection entries name the VIP's real).
        let real_ids: usize = vips.iter().map(|v| v.reals.len()).sum();
        if real_ids >= MAX_REALS as usize {
            p.add("vip", format!("{real_ids} reals over all VIPs (a real counts once per VIP it serves), at most {}", MAX_REALS - 1));
        }
        vips
    }
}

/// `[vip.adapt]`: the bounds of each setting; the load signal needs `http` checks (it reads
/// `lb backend`'s /healthz).
fn validate_adapt(a: &RawAdapt, reals: &[RealConfig], field: &str, p: &mut Problems) -> Option<crate::adapt::Adaptation> {
    use crate::adapt::{Adaptation, Signal};
    let field = format!("{field}.adapt");
    let before = p.0.len();
    let mut share = |name: &str, value: f64, min_exclusive: f64, max: f64| {
        if !(value > min_exclusive && value <= max) {
            p.add(format!("{field}.{name}"), format!("{value} is outside {min_exclusive} < x <= {max}"));
        }
        value
    };
    let floor = share("floor", a.floor.unwrap_or(0.2), 0.0, 1.0);
    let step = share("step", a.step.unwrap_or(0.25), 0.0, 1.0);
    let hysteresis = a.hysteresis.unwrap_or(0.1);
    if !(0.0..1.0).contains(&hysteresis) {
        p.add(format!("{field}.hysteresis"), format!("{hysteresis} is outside 0 <= x < 1"));
    }
    let signal = match a.signal.as_str() {
        "latency" => {
            let slow_ratio = a.slow_ratio.unwrap_or(2.0);
            if !(slow_ratio > 1.0 && slow_ratio <= 100.0) {
                p.add(format!("{field}.slow_ratio"), format!("{slow_ratio} is outside 1 < x <= 100"));
            }
            Some(Signal::Latency { slow_ratio })
        }
        "load" => {
            let target = a.target.unwrap_or(0.7);
            if !(target > 0.0 && target < 1.0) {
                p.add(format!("{field}.target"), format!("{target} is outside 0 < x < 1"));
            }
            if let Some(r) = reals.iter().find(|r| !matches!(r.health.kind, CheckKind::Http { .. })) {
                p.add(
                    format!("{field}.signal"),
                    format!("\"load\" is read from each real's http check of lb backend's /healthz; {}'s check is not http", r.addr),
                );
            }
            Some(Signal::Load { target })
        }
        other => {
            p.add(format!("{field}.signal"), format!("{other:?} is not \"latency\" or \"load\""));
            None
        }
    };
    let interval_ms = a.interval_ms.unwrap_or(2000);
    if !(1000..=60_000).contains(&interval_ms) {
        p.add(format!("{field}.interval_ms"), format!("{interval_ms} is outside 1000 ..= 60000"));
    }
    let signal = signal.filter(|_| p.0.len() == before)?;
    Some(Adaptation { signal, floor, step, hysteresis, interval: Duration::from_millis(interval_ms) })
}

/// `[vip.quic_lb]` (the draft's limits: draft-ietf-quic-load-balancers-21 section 5.3).
pub(crate) fn validate_quic_lb(q: &RawQuicLb, proto: Proto, field: &str, p: &mut Problems) -> Option<QuicLb> {
    use lb_common::quic_lb::{MAX_CID_LEN, MAX_PLAINTEXT_LEN, MAX_SERVER_ID_LEN, MIN_NONCE_LEN, UNROUTABLE_CONFIG_ID};
    let field = format!("{field}.quic_lb");
    let before = p.0.len();
    if proto != Proto::Udp {
        p.add(&field, "is for UDP VIPs: QUIC runs over UDP");
    }
    if q.config_id >= UNROUTABLE_CONFIG_ID {
        p.add(format!("{field}.config_id"), format!("{} is out of range 0 ..= 6 (7 means unroutable)", q.config_id));
    }
    if !(1..=MAX_SERVER_ID_LEN).contains(&q.server_id_len) {
        p.add(format!("{field}.server_id_len"), format!("{} is out of range 1 ..= {MAX_SERVER_ID_LEN}", q.server_id_len));
    }
    if q.nonce_len < MIN_NONCE_LEN {
        p.add(format!("{field}.nonce_len"), format!("{} is below {MIN_NONCE_LEN}", q.nonce_len));
    }
    let plaintext = q.server_id_len as u32 + q.nonce_len as u32;
    if plaintext > MAX_PLAINTEXT_LEN as u32 {
        p.add(&field, format!("server_id_len + nonce_len is {plaintext}, at most {MAX_PLAINTEXT_LEN}"));
    }
    let cid_len = q.cid_len.map_or(plaintext + 1, u32::from);
    if cid_len < plaintext + 1 || cid_len > MAX_CID_LEN as u32 {
        p.add(format!("{field}.cid_len"), format!("{cid_len} is out of range {} ..= {MAX_CID_LEN}", plaintext + 1));
    }
    if q.key_file.as_deref() == Some("") {
        p.add(format!("{field}.key_file"), "is empty");
    }
    let hold_s = q.server_id_hold_s.unwrap_or(DEFAULT_SERVER_ID_HOLD_S);
    (p.0.len() == before).then(|| QuicLb {
        config_id: q.config_id,
        server_id_len: q.server_id_len,
        nonce_len: q.nonce_len,
        cid_len: cid_len as u8,
        key_file: q.key_file.as_deref().map(PathBuf::from),
        key: None,
        server_id_hold: Duration::from_secs(hold_s),
    })
}

/// A real's `server_id`: hex of the VIP's `server_id_len` octets, and only with `[vip.quic_lb]`.
pub(crate) fn validate_server_id(q: Option<&RawQuicLb>, server_id: Option<&str>, rfield: &str, p: &mut Problems) -> Option<Vec<u8>> {
    let field = format!("{rfield}.server_id");
    match (q, server_id) {
        (None, None) => None,
        (None, Some(_)) => {
            p.add(field, "is for a VIP with [vip.quic_lb]");
            None
        }
        (Some(_), None) => {
            p.add(field, "is missing: every real of a QUIC-LB VIP has one, the same on every node");
            None
        }
        (Some(q), Some(text)) => match crate::quic_lb::parse_hex(text) {
            Some(octets) if octets.len() == q.server_id_len as usize => Some(octets),
            Some(octets) => {
                p.add(field, format!("{text:?} is {} octets; server_id_len is {}", octets.len(), q.server_id_len));
                None
            }
            None => {
                p.add(field, format!("{text:?} is not hex"));
                None
            }
        },
    }
}

/// `[fleet]`. Whether `[[vip]]`s may be given too is the caller's concern: a node's own file
/// must have none (`lb run` and `lb check-config` say so), while the config a node runs has the
/// fleet's.
fn validate_fleet(f: &RawFleetNode, instance: &str, p: &mut Problems) -> FleetNode {
    if f.endpoints.is_empty() {
        p.add("fleet.endpoints", "is empty: name at least one etcd client URL");
    }
    for (i, e) in f.endpoints.iter().enumerate() {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            p.add(format!("fleet.endpoints[{i}]"), format!("{e:?} is not an http:// or https:// URL"));
        }
    }
    let prefix = f.prefix.clone().unwrap_or_else(|| DEFAULT_FLEET_PREFIX.into());
    if !prefix.starts_with('/') || prefix.ends_with('/') {
        p.add("fleet.prefix", format!("{prefix:?} must start with '/' and not end with one"));
    }
    if !crate::fleet::is_site_name(&f.site) {
        p.add("fleet.site", format!("{:?} is not 1-63 lower-case letters, digits and '-'", f.site));
    }
    let node = f.node.clone().unwrap_or_else(crate::fleet::host_name);
    if !crate::fleet::is_site_name(&node) {
        p.add("fleet.node", format!("{node:?} is not 1-63 lower-case letters, digits and '-' (set it when the host name is not)"));
    }
    if f.user.is_some() != f.password_file.is_some() {
        p.add("fleet.user", "user and password_file come together");
    }
    let tls = fleet_tls(f, p);
    let ttl = f.report_ttl_s.unwrap_or(DEFAULT_REPORT_TTL_S);
    if !(2..=300).contains(&ttl) {
        p.add("fleet.report_ttl_s", format!("{ttl} is outside 2 ..= 300"));
    }
    FleetNode {
        endpoints: f.endpoints.clone(),
        prefix,
        site: f.site.clone(),
        node,
        user: f.user.clone(),
        password_file: f.password_file.as_deref().map(PathBuf::from),
        tls,
        state_file: f.state_file.as_deref().map_or_else(|| crate::journal::state_dir().join(format!("{instance}.fleet")), PathBuf::from),
        report_ttl: Duration::from_secs(ttl as u64),
    }
}

/// `[fleet]`'s TLS: every endpoint `https://` with a CA file, or none; a client certificate
/// with its key.
fn fleet_tls(f: &RawFleetNode, p: &mut Problems) -> Option<FleetTls> {
    let https = f.endpoints.iter().filter(|e| e.starts_with("https://")).count();
    if https > 0 && https < f.endpoints.len() {
        p.add("fleet.endpoints", "mixes http:// and https://: use one for every member");
    }
    if f.cert_file.is_some() != f.key_file.is_some() {
        p.add("fleet.cert_file", "cert_file and key_file come together");
    }
    match (&f.ca_file, https > 0) {
        (Some(ca), true) => Some(FleetTls {
            ca_file: PathBuf::from(ca),
            client: f.cert_file.as_ref().zip(f.key_file.as_ref()).map(|(c, k)| (PathBuf::from(c), PathBuf::from(k))),
        }),
        (None, true) => {
            p.add("fleet.ca_file", "https:// endpoints need the CA that signed the members' certificates");
            None
        }
        (_, false) => {
            if f.ca_file.is_some() || f.cert_file.is_some() {
                p.add("fleet.ca_file", "TLS files are given but the endpoints are http://: use https://");
            }
            None
        }
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
    if let Some(why) = address.and_then(unusable_address) {
        p.add("handoff.address", why);
    }
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
            Ok(peer) => match unusable_address(peer) {
                Some(why) => p.add(field, why),
                None if address.is_some_and(|a| a.is_ipv4() != peer.is_ipv4()) => {
                    p.add(field, format!("{peer} is not the same address family as handoff.address"))
                }
                None => peers.push(peer),
            },
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
