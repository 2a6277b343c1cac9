//! The config file as written: serde types with each field's default, not yet validated (the
//! daemon merges run-time changes into them).

use serde::{Deserialize, Serialize};

/// The config file as written. Field defaults are noted on each field.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Name of this balancer; programs and maps are pinned under /sys/fs/bpf/anycast-lb-<instance> (default "lb").
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Connection-table entries (default 1048576).
    #[serde(default = "default_conn_table_size")]
    pub conn_table_size: u32,
    /// Slots of the Maglev ring pool (default: two rings of every VIP's ring_size, plus two of
    /// the largest size for VIPs added at run time; with [fleet], at least 16 VIPs' worth at the
    /// default ring size, since the fleet adds VIPs without a restart).
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
    /// Limits on what clients of the listeners and health probes may hold (docs/operations.md,
    /// "Limits").
    #[serde(default)]
    pub limits: RawLimits,
    /// The second chance at the backend, for every TCP VIP that does not say (docs/second-chance.md).
    #[serde(default)]
    pub second_chance: RawSecondChance,
    /// Follow a fleet store (etcd) for the VIPs and their reals (absent: this file has them).
    pub fleet: Option<RawFleetNode>,
    #[serde(default, rename = "vip")]
    pub vips: Vec<RawVip>,
}

/// Where this node's fleet store is and who the node is in it (docs/fleet.md).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleetNode {
    /// etcd client URLs ("http://10.0.0.1:2379").
    pub endpoints: Vec<String>,
    /// The fleet's keys start with this (default "/anycast-lb").
    pub prefix: Option<String>,
    /// This node's site, one of the fleet document's `[[site]]`s.
    pub site: String,
    /// This node's name within its site (default: the host name).
    pub node: Option<String>,
    /// etcd user, with `password_file` (mode 0600).
    pub user: Option<String>,
    pub password_file: Option<String>,
    /// TLS to etcd (`https://` endpoints): the CA that signed the members' certificates, and
    /// this node's client certificate and key (mode 0600) when etcd asks for one
    /// (`--client-cert-auth`).
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// The last fleet revision this node applied, for a restart without the store (default
    /// /var/lib/anycast-lb/<instance>.fleet).
    pub state_file: Option<String>,
    /// Seconds the node's report outlives it (its etcd lease; default 10).
    pub report_ttl_s: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlood {
    /// Connection-table inserts per CPU per second (default 50000; 0: record nothing).
    pub inserts_per_sec: Option<u32>,
    /// Handoffs to peer sites per CPU per second (default 10000; 0: hand off nothing).
    pub handoffs_per_sec: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Open connections per listener (admin socket, admin TCP, metrics); at the cap the one
    /// idle the longest is closed (default 256).
    pub connections_per_listener: Option<usize>,
    /// From connect or the last answer, a request's head and body must arrive within this
    /// (default 10000).
    pub request_timeout_ms: Option<u64>,
    /// Most entries `/flows` lists in one answer (default 100000).
    pub flows_listed: Option<u32>,
    /// `/doctor` calls answered at once; more get 429 (default 2).
    pub doctor_calls: Option<usize>,
    /// Health probes in flight to one host at once (default 64).
    pub probes_per_host: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecondChance {
    /// Mid-flow TCP packets the connection table does not hold carry the previous ring's real,
    /// for `lb backend` to forward to when it has no socket for them (default false: every real
    /// must run an `lb backend` that reads GUE first).
    pub enabled: Option<bool>,
    /// Seconds a VIP's previous ring gives alternatives after a change (default 600).
    pub window_s: Option<u32>,
    /// The port of `lb backend`'s endpoint on every real, where `lb doctor` reads how much each
    /// forwards (default 9180).
    pub backend_port: Option<u16>,
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
    /// Echo replies to pings of a VIP address, per CPU per second (default 1000; 0: never
    /// answer). Bounds what a spoofed ping flood has the balancer reflect.
    pub echo_per_sec: Option<u32>,
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
    pub(super) fn over(&self, base: &RawHealth) -> RawHealth {
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
    /// Over `[second_chance]`, for this VIP (TCP only).
    pub second_chance: Option<bool>,
    pub second_chance_window_s: Option<u32>,
    /// Route QUIC by the server ID in connection IDs (UDP only; docs/quic-lb.md).
    pub quic_lb: Option<RawQuicLb>,
    /// Weights that follow the backends (absent: off; docs/operations.md).
    pub adapt: Option<RawAdapt>,
    #[serde(default, rename = "real")]
    pub reals: Vec<RawReal>,
}

/// `[vip.adapt]`: each real's effective weight follows its health checks' round trip or the
/// load its `lb backend` reports.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdapt {
    /// "latency" (the check's round trip against the VIP's median) or "load" (what `lb backend`
    /// reports in /healthz; the check must be `http` on its endpoint).
    pub signal: String,
    /// latency: a real slower than this times the median gets a smaller weight (default 2.0).
    pub slow_ratio: Option<f64>,
    /// load: above this the weight shrinks, to the floor at load 1 (default 0.7).
    pub target: Option<f64>,
    /// The least share of its weight a real keeps (default 0.2).
    pub floor: Option<f64>,
    /// The most the share moves per interval (default 0.25), and the least change acted on
    /// (default 0.1).
    pub step: Option<f64>,
    pub hysteresis: Option<f64>,
    /// How often the shares move (default 2000; at least 1000).
    pub interval_ms: Option<u64>,
}

/// `[vip.quic_lb]`: the draft's parameters (draft-ietf-quic-load-balancers-21).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuicLb {
    /// Config rotation bits a routable connection ID starts with (0 ..= 6; 7 means unroutable).
    pub config_id: u8,
    /// Octets of server ID (1 ..= 15) and of nonce (at least 4); together at most 19.
    pub server_id_len: u8,
    pub nonce_len: u8,
    /// The connection ID's whole length in short headers, from server_id_len + nonce_len + 1
    /// (the default) to 20: servers may add octets of their own after the nonce.
    pub cid_len: Option<u8>,
    /// A file (mode 0600) with the 16-octet AES key as 32 hex digits: connection IDs are
    /// encrypted (absent: plaintext, which lets observers link a client's connection IDs).
    pub key_file: Option<String>,
    /// Seconds a server ID stays its real's after the real leaves the VIP: no other real may take
    /// it meanwhile, since clients may still send it (default 3600; at least the servers'
    /// idle timeout).
    pub server_id_hold_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawReal {
    pub address: String,
    /// 0 ..= 1000 (default 1); 0 drains: no new flows, existing flows kept.
    pub weight: Option<u32>,
    pub health: Option<RawHealth>,
    /// QUIC-LB: this real's server ID in hex, `server_id_len` octets, unique in the VIP and the
    /// same on every node (`[vip.quic_lb]`).
    pub server_id: Option<String>,
}
