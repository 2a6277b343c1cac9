//! Two anycast sites in network namespaces: a client, an upstream router running BIRD, and per
//! site one or more LB nodes (each with BIRD and the real `lb`) and several backends. Site B
//! announces with one AS-path prepend, so the router prefers site A (ECMP across A's nodes) and
//! falls back to B when A withdraws.
//!
//! Dual stack: every link has an IPv4 and an IPv6 address, and every node's `lb` serves the IPv4
//! VIP `web` (IPv4 reals) and the IPv6 VIP `web6` (IPv6 reals). BGP carries both families over
//! the one IPv4 session (MP-BGP): the edge's `next hop self` gives the router the node's global
//! IPv6 address on the link as the IPv6 next hop.
//!
//! ```text
//! client 10.10.1.2 fd00:10:1::2 -- router -- 10.20.k.2 fd00:20:k::2  LB node k (lb0, BIRD AS 6500{1,2}, lb)
//!                                        \--- 10.3s.i.2 fd00:3s:i::2 backend i of site s (lb_decap, VIPs on lo)
//! ```

use std::{path::PathBuf, time::Duration};

use lb_common::programs;
use lb_userspace::{
    config::AttachMode,
    dataplane::{Dataplane, LoadOptions},
};

use crate::{
    backend::BackendDaemon,
    bird::{edge_config, wait_for, Bird},
    etcd::EtcdCluster,
    lbd::LbDaemon,
    netns::{add_addr, veth, End, NetNs},
    packet::ip,
    topology::{default_routes, LineConn, Servers, Site, VIP, VIP6},
};

/// Extra client source addresses: 10.10.1.100 ..
pub const CLIENT_ADDRS: usize = 50;

/// The client address to use for request `i` (rotating over all of them).
pub fn client_addr(i: usize) -> std::net::IpAddr {
    ip(&format!("10.10.1.{}", 100 + i % CLIENT_ADDRS))
}

/// The client's IPv6 address for request `i`: fd00:10:1::100 ..
pub fn client_addr6(i: usize) -> std::net::IpAddr {
    ip(&format!("fd00:10:1::{:x}", 0x100 + i % CLIENT_ADDRS))
}

/// Node k's addresses on its link to the router (the router has .1 / ::1).
pub fn node_addr(k: usize) -> String {
    format!("10.20.{k}.2")
}

pub fn node_addr6(k: usize) -> String {
    format!("fd00:20:{k}::2")
}

pub struct Node {
    pub ns: NetNs,
    pub bird: Bird,
    pub lb: LbDaemon,
    pub addr: String,
}

pub struct SiteNet {
    pub name: char,
    pub nodes: Vec<Node>,
    pub backends: Vec<NetNs>,
    /// Each backend's `lb backend run`.
    pub decaps: Vec<BackendDaemon>,
}

impl SiteNet {
    pub fn servers(&self) -> Servers {
        Servers::named(&self.backends, &format!("site {} ", self.name))
    }
}

pub struct Anycast {
    pub client: NetNs,
    pub router: NetNs,
    pub router_bird: Bird,
    pub router_xdp: Dataplane,
    pub sites: Vec<SiteNet>,
    /// The fleet store, with `Options::fleet`.
    pub etcd: Option<EtcdCluster>,
    dir: PathBuf,
}

/// Knobs of the harness.
#[derive(Default, Clone)]
pub struct Options {
    /// Backend i's weight in every site (default 1).
    pub weights: Vec<u32>,
    /// lb's `[bgp] prepend_below` on every node.
    pub prepend_below: Option<f64>,
    /// Extra AS-path prepends of site B and later (default 1: a backup site).
    pub backup_prepend: Option<u32>,
    /// Handoff peers every node lists besides the other sites' nodes (say, one that is dead).
    pub extra_peers: Vec<String>,
    /// Hand off over IPv6: node addresses and peers are the nodes' IPv6 addresses (which carries
    /// the flows of both families); otherwise IPv4 (which carries IPv4 flows only).
    pub handoff_ipv6: bool,
    /// `[bgp] graceful_shutdown_ms` (default 0 here: withdrawals at once, as the timing tests of
    /// drains and exits expect; lb's own default is 2000).
    pub graceful_shutdown_ms: u64,
    /// Run a three-member etcd cluster and have every node follow it (`[fleet]`, sites "a",
    /// "b", ..., nodes "n1", "n2", ...) instead of listing the VIPs in its own file. The fleet
    /// document (`Anycast::fleet_document`) is written before the nodes start.
    pub fleet: Option<FleetOptions>,
}

/// The fleet store's side of the harness.
#[derive(Clone)]
pub struct FleetOptions {
    /// etcd authentication on, with this user (its password in a 0600 file the nodes name).
    pub user: Option<(String, String)>,
    /// Each node's `[fleet] report_ttl_s`.
    pub report_ttl_s: u32,
    /// etcd over TLS, clients authenticated by their certificates (`[fleet] ca_file`,
    /// `cert_file`, `key_file`).
    pub tls: bool,
}

/// The fleet's key prefix in the harness.
pub const FLEET_PREFIX: &str = "/lbt";

/// The name of site `s` in the fleet: "a", "b", ...
pub fn site_name(s: usize) -> String {
    ((b'a' + s as u8) as char).to_string()
}

/// A fleet document for sites with `backends[s]` backends each, the harness's two VIPs, and
/// backend i's weight `weights[i]` (default 1) at every site.
pub fn fleet_document(backends: &[usize], weights: &[u32]) -> String {
    let mut doc = String::new();
    for s in 0..backends.len() {
        doc += &format!("[[site]]\nname = \"{}\"\n", site_name(s));
    }
    for (name, addr, v6) in [("web", VIP, false), ("web6", VIP6, true)] {
        doc += &format!("[[vip]]\nname = \"{name}\"\naddress = \"{addr}\"\nport = 8080\nprotocol = \"tcp\"\n[vip.reals]\n");
        for (s, &n) in backends.iter().enumerate() {
            let reals: Vec<String> = (0..n)
                .map(|i| {
                    let a = if v6 { format!("fd00:{}:{i}::2", 30 + s) } else { format!("10.{}.{i}.2", 30 + s) };
                    format!("{{ address = \"{a}\", weight = {} }}", weights.get(i).copied().unwrap_or(1))
                })
                .collect();
            doc += &format!("{} = [{}]\n", site_name(s), reals.join(", "));
        }
    }
    doc
}

/// `node` and `peers` (the LB nodes of the other sites) set up cross-site handoff. `backends` and
/// `backends6`: the site's backends, each family's reals of the VIP of that family. `fleet`:
/// the node's `[fleet]` section, which replaces the VIPs.
#[allow(clippy::too_many_arguments)]
fn lb_config(
    backends: &[String],
    backends6: &[String],
    opts: &Options,
    bird: &Bird,
    include: &std::path::Path,
    node: &str,
    peers: &[String],
    fleet: Option<String>,
) -> String {
    let weights = &opts.weights;
    let prepend = opts.prepend_below.map(|p| format!("prepend_below = {p}\n")).unwrap_or_default();
    let handoff = if peers.is_empty() {
        String::new()
    } else {
        format!("[handoff]\naddress = \"{node}\"\npeers = {peers:?}\nhealth = {{ interval_ms = 200, timeout_ms = 100, fall = 2 }}\n")
    };
    let mut c = format!(
        "[[interface]]\nname = \"lb0\"\n[forwarding]\nnext_hop_mac = \"02:00:00:00:00:03\"\n\
         [metrics]\nlisten = \"[::]:9100\"\n\
         [health]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = 100\ntimeout_ms = 80\nrise = 2\nfall = 2\n\
         [bgp]\nbird_socket = \"{}\"\ninclude_file = \"{}\"\ngraceful_shutdown_ms = {}\n{prepend}\
         {handoff}",
        bird.socket.display(),
        include.display(),
        opts.graceful_shutdown_ms
    );
    if let Some(fleet) = fleet {
        return c + &fleet;
    }
    c += &format!("[[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 8080\nprotocol = \"tcp\"\n");
    for (i, b) in backends.iter().enumerate() {
        c += &format!("[[vip.real]]\naddress = \"{b}\"\nweight = {}\n", weights.get(i).copied().unwrap_or(1));
    }
    c += &format!("[[vip]]\nname = \"web6\"\naddress = \"{VIP6}\"\nport = 8080\nprotocol = \"tcp\"\n");
    for (i, b) in backends6.iter().enumerate() {
        c += &format!("[[vip.real]]\naddress = \"{b}\"\nweight = {}\n", weights.get(i).copied().unwrap_or(1));
    }
    c
}

impl Anycast {
    /// `nodes[s]` LB nodes and `backends[s]` backends for site s (A, B, ...), equal weights.
    pub fn new(nodes: &[usize], backends: &[usize]) -> Self {
        Self::with(nodes, backends, &Options::default())
    }

    pub fn with(nodes: &[usize], backends: &[usize], opts: &Options) -> Self {
        let dir = std::env::temp_dir().join(format!("lbt-anycast-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let client = NetNs::new("client", false);
        let router = NetNs::new("router", true);
        // ECMP on the 5-tuple, both families.
        router.exec(&["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"]);
        router.exec(&["sysctl", "-qw", "net.ipv6.fib_multipath_hash_policy=1"]);
        veth(
            End { ns: &client, dev: "c0", mac: "02:00:00:00:00:01", addrs: &["10.10.1.2/24", "fd00:10:1::2/64"] },
            End { ns: &router, dev: "r-c", mac: "02:00:00:00:01:01", addrs: &["10.10.1.1/24", "fd00:10:1::1/64"] },
        );
        default_routes(&client, "10.10.1.1", "fd00:10:1::1");
        for i in 0..CLIENT_ADDRS {
            add_addr(&client, &format!("10.10.1.{}/24", 100 + i), "c0");
            add_addr(&client, &format!("{}/64", client_addr6(i)), "c0");
        }

        let mut router_conf = String::from(
            "router id 10.10.1.1;\nlog stderr all;\nprotocol device {}\n\
             filter honour_graceful_shutdown { if (65535, 0) ~ bgp_community then bgp_local_pref = 0; accept; }\n\
             protocol kernel { merge paths on; ipv4 { import none; export all; }; }\n\
             protocol kernel { merge paths on; ipv6 { import none; export all; }; }\n",
        );
        let mut node_addrs = Vec::new();
        let mut k = 0;
        for (s, &n) in nodes.iter().enumerate() {
            let mut site_nodes = Vec::new();
            for _ in 0..n {
                k += 1;
                site_nodes.push(k);
                router_conf += &format!(
                    "protocol bgp node{k} {{ local 10.20.{k}.1 as 65000; neighbor 10.20.{k}.2 as {}; hold time 3; keepalive time 1; \
                     connect retry time 1; ipv4 {{ import filter honour_graceful_shutdown; export none; }}; \
                     ipv6 {{ import filter honour_graceful_shutdown; export none; }}; }}\n",
                    65001 + s
                );
            }
            node_addrs.push(site_nodes);
        }
        // Links first (the router's BIRD needs its addresses), then BIRD on the router.
        let node_ns: Vec<Vec<NetNs>> = node_addrs
            .iter()
            .map(|ks| {
                ks.iter()
                    .map(|&k| {
                        let ns = NetNs::new(&format!("n{k}"), false);
                        let (r4, r6) = (format!("10.20.{k}.1/24"), format!("fd00:20:{k}::1/64"));
                        let (n4, n6) = (format!("{}/24", node_addr(k)), format!("{}/64", node_addr6(k)));
                        veth(
                            End {
                                ns: &router,
                                dev: &format!("r-n{k}"),
                                mac: &format!("02:00:00:00:00:{:02x}", 0x10 + k),
                                addrs: &[&r4, &r6],
                            },
                            End { ns: &ns, dev: "lb0", mac: &format!("02:00:00:00:01:{:02x}", 0x10 + k), addrs: &[&n4, &n6] },
                        );
                        default_routes(&ns, &format!("10.20.{k}.1"), &format!("fd00:20:{k}::1"));
                        // The router's MAC on this link is what lb sends to (next_hop_mac in lb_config).
                        router.ip(&["link", "set", &format!("r-n{k}"), "address", "02:00:00:00:00:03"]);
                        ns.ip(&["neigh", "flush", "all"]);
                        ns.ip(&["-6", "neigh", "flush", "all"]);
                        ns
                    })
                    .collect()
            })
            .collect();
        let router_bird = Bird::start(&router, "router", &router_conf);
        let (etcd, fleet_section) = match &opts.fleet {
            Some(f) => {
                let mut etcd = EtcdCluster::start(&router, 3, f.tls);
                let mut section = format!(
                    "[fleet]\nendpoints = {:?}\nprefix = \"{FLEET_PREFIX}\"\nreport_ttl_s = {}\n",
                    etcd.endpoints(),
                    f.report_ttl_s
                );
                if let Some(tls) = &etcd.tls {
                    section += &format!(
                        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                        tls.ca.display(),
                        tls.cert.display(),
                        tls.key.display()
                    );
                }
                if let Some((user, password)) = &f.user {
                    etcd.enable_auth(user, password, FLEET_PREFIX);
                    let file = dir.join("etcd-password");
                    std::fs::write(&file, password).expect("password file");
                    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
                    section += &format!("user = \"{user}\"\npassword_file = \"{}\"\n", file.display());
                }
                let doc = fleet_document(backends, &opts.weights);
                assert!(etcd.ctl(&["put", &format!("{FLEET_PREFIX}/document"), &doc]).is_some(), "writing the first fleet document");
                (Some(etcd), Some(section))
            }
            None => (None, None),
        };
        let router_xdp = router.run(|| {
            let mut dp = Dataplane::load(&LoadOptions { conn_table_size: 16, ring_slots: 2 }).expect("load");
            for k in 1..=k {
                dp.attach(programs::PASS, &format!("r-n{k}"), AttachMode::Native).expect("pass stub");
            }
            dp
        });

        let mut sites = Vec::new();
        for (s, (ns_list, &nb)) in node_ns.into_iter().zip(backends).enumerate() {
            let name = (b'A' + s as u8) as char;
            let backend_ns: Vec<NetNs> = (0..nb)
                .map(|i| {
                    let ns = NetNs::new(&format!("{name}b{i}"), false);
                    let (net, net6) = (format!("10.{}.{i}", 30 + s), format!("fd00:{}:{i}:", 30 + s));
                    let (r4, r6, b4, b6) = (format!("{net}.1/24"), format!("{net6}:1/64"), format!("{net}.2/24"), format!("{net6}:2/64"));
                    veth(
                        End {
                            ns: &router,
                            dev: &format!("r-{name}{i}"),
                            mac: &format!("02:00:00:00:{:02x}:{i:02x}", 0x30 + s),
                            addrs: &[&r4, &r6],
                        },
                        End { ns: &ns, dev: "b0", mac: &format!("02:00:00:01:{:02x}:{i:02x}", 0x30 + s), addrs: &[&b4, &b6] },
                    );
                    default_routes(&ns, &format!("{net}.1"), &format!("{net6}:1"));
                    ns
                })
                .collect();
            let addrs: Vec<String> = (0..nb).map(|i| format!("10.{}.{i}.2", 30 + s)).collect();
            let addrs6: Vec<String> = (0..nb).map(|i| format!("fd00:{}:{i}::2", 30 + s)).collect();
            let decaps = backend_ns.iter().zip(addrs.iter().zip(&addrs6)).map(|(ns, (a, a6))| BackendDaemon::start(ns, &[a, a6])).collect();
            let nodes = ns_list
                .into_iter()
                .zip(&node_addrs[s])
                .map(|(ns, &k)| {
                    let include = dir.join(format!("vips-{k}.conf"));
                    std::fs::write(&include, lb_userspace::bgp::bird::render(&[])).expect("include");
                    let mut conf = edge_config(&node_addr(k), 65001 + s as u32, &format!("10.20.{k}.1"), 65000, &include);
                    if s > 0 {
                        let n = opts.backup_prepend.unwrap_or(1); // a backup site
                        conf = conf.replace("define SITE_PREPEND   = 0;", &format!("define SITE_PREPEND   = {n};"));
                    }
                    let bird = Bird::start(&ns, &format!("edge{k}"), &conf);
                    let handoff_addr = |k: usize| if opts.handoff_ipv6 { node_addr6(k) } else { node_addr(k) };
                    let mut peers: Vec<String> = node_addrs
                        .iter()
                        .enumerate()
                        .filter(|&(o, _)| o != s)
                        .flat_map(|(_, ks)| ks.iter().map(|&k| handoff_addr(k)))
                        .collect();
                    peers.extend(opts.extra_peers.iter().cloned());
                    let fleet = fleet_section.as_ref().map(|f| format!("{f}site = \"{}\"\nnode = \"n{k}\"\n", site_name(s)));
                    let lb = LbDaemon::start(&ns, &lb_config(&addrs, &addrs6, opts, &bird, &include, &handoff_addr(k), &peers, fleet));
                    Node { ns, bird, lb, addr: node_addr(k) }
                })
                .collect();
            sites.push(SiteNet { name, nodes, backends: backend_ns, decaps });
        }
        Self { client, router, router_bird, router_xdp, sites, etcd, dir }
    }

    /// Waits until every node of site `site` sees all its reals up and announces the VIPs. Nodes
    /// agree on a flow's real only when they agree on which reals are up, and the first health
    /// checks after the servers start take a moment to settle.
    pub fn wait_serving(&self, site: usize) {
        for node in &self.sites[site].nodes {
            wait_for(Duration::from_secs(10), "every real up and the VIPs announced", || {
                node.lb.status().iter().all(|vip| vip.announced && vip.reals.iter().all(|r| r.up))
            });
        }
    }

    /// Opens `n` long-lived connections from the client to the IPv4 VIP, one line exchanged on
    /// each; returns them with the "site X backend i" that answered.
    pub fn open_connections(&self, n: usize) -> Vec<(LineConn, String)> {
        self.open_connections_to(Site::vip_addr(), n)
    }

    /// `open_connections` to `service` (`Site::vip_addr()` or `Site::vip6_addr()`).
    pub fn open_connections_to(&self, service: std::net::SocketAddr, n: usize) -> Vec<(LineConn, String)> {
        self.client.run(|| {
            (0..n)
                .map(|i| {
                    let mut c = LineConn::connect(service).expect("connect");
                    let who = c.exchange(&format!("hello {i}")).expect("first exchange");
                    (c, who.split(" answered").next().unwrap_or("?").to_owned())
                })
                .collect()
        })
    }

    /// Next hops the router's kernel has for the IPv4 VIP (empty: no route).
    pub fn next_hops(&self) -> Vec<String> {
        via(&self.router.ip(&["route", "show", &format!("{VIP}/32")]))
    }

    /// Next hops the router's kernel has for the IPv6 VIP (empty: no route).
    pub fn next_hops6(&self) -> Vec<String> {
        via(&self.router.ip(&["-6", "route", "show", &format!("{VIP6}/128")]))
    }
}

/// The gateways of `ip route show` output, sorted.
fn via(routes: &str) -> Vec<String> {
    let mut hops: Vec<String> =
        routes.split_whitespace().collect::<Vec<_>>().windows(2).filter(|w| w[0] == "via").map(|w| w[1].to_owned()).collect();
    hops.sort();
    hops
}

impl Drop for Anycast {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
