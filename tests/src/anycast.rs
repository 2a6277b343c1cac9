//! Two anycast sites in network namespaces: a client, an upstream router running BIRD, and per
//! site one or more LB nodes (each with BIRD and the real `lb`) and several backends. Site B
//! announces with one AS-path prepend, so the router prefers site A (ECMP across A's nodes) and
//! falls back to B when A withdraws.
//!
//! ```text
//! client 10.10.1.2 -- router -- 10.20.k.2  LB node k (lb0, BIRD AS 6500{1,2}, lb)
//!                           \--- 10.3s.i.2 backend i of site s (lb_decap, VIP on lo)
//! ```

use std::{path::PathBuf, time::Duration};

use lb_common::programs;
use lb_userspace::dataplane::{AttachMode, Dataplane, LoadOptions};

use crate::{
    bird::{edge_config, wait_for, Bird},
    lbd::LbDaemon,
    netns::{veth, End, NetNs},
    packet::ip,
    topology::{LineConn, Servers, Site, VIP},
};

/// Extra client source addresses: 10.10.1.100 ..
pub const CLIENT_ADDRS: usize = 50;

/// The client address to use for request `i` (rotating over all of them).
pub fn client_addr(i: usize) -> std::net::IpAddr {
    ip(&format!("10.10.1.{}", 100 + i % CLIENT_ADDRS))
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
    pub decaps: Vec<Dataplane>,
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
}

/// `node` and `peers` (the LB nodes of the other sites) set up cross-site handoff.
fn lb_config(backends: &[String], opts: &Options, bird: &Bird, include: &std::path::Path, node: &str, peers: &[String]) -> String {
    let weights = &opts.weights;
    let prepend = opts.prepend_below.map(|p| format!("prepend_below = {p}\n")).unwrap_or_default();
    let handoff = if peers.is_empty() {
        String::new()
    } else {
        format!("[handoff]\naddress = \"{node}\"\npeers = {peers:?}\nhealth = {{ interval_ms = 200, timeout_ms = 100, fall = 2 }}\n")
    };
    let mut c = format!(
        "[[interface]]\nname = \"lb0\"\n[forwarding]\nnext_hop_mac = \"02:00:00:00:00:03\"\n\
         [metrics]\nlisten = \"0.0.0.0:9100\"\n\
         [health]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = 100\ntimeout_ms = 80\nrise = 2\nfall = 2\n\
         [bgp]\nbird_socket = \"{}\"\ninclude_file = \"{}\"\n{prepend}\
         {handoff}\
         [[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 8080\nprotocol = \"tcp\"\n",
        bird.socket.display(),
        include.display()
    );
    for (i, b) in backends.iter().enumerate() {
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
        router.exec(&["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"]); // ECMP on the 5-tuple
        veth(
            End { ns: &client, dev: "c0", mac: "02:00:00:00:00:01", addr: "10.10.1.2/24" },
            End { ns: &router, dev: "r-c", mac: "02:00:00:00:01:01", addr: "10.10.1.1/24" },
        );
        client.ip(&["route", "add", "default", "via", "10.10.1.1"]);
        for i in 0..CLIENT_ADDRS {
            client.ip(&["addr", "add", &format!("10.10.1.{}/24", 100 + i), "dev", "c0"]);
        }

        let mut router_conf = String::from(
            "router id 10.10.1.1;\nlog stderr all;\nprotocol device {}\n\
             protocol kernel { merge paths on; ipv4 { import none; export all; }; }\n",
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
                     connect retry time 1; ipv4 {{ import all; export none; }}; }}\n",
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
                        veth(
                            End { ns: &router, dev: &format!("r-n{k}"), mac: &format!("02:00:00:00:00:{:02x}", 0x10 + k), addr: &format!("10.20.{k}.1/24") },
                            End { ns: &ns, dev: "lb0", mac: &format!("02:00:00:00:01:{:02x}", 0x10 + k), addr: &format!("10.20.{k}.2/24") },
                        );
                        ns.ip(&["route", "add", "default", "via", &format!("10.20.{k}.1")]);
                        // The router's MAC on this link is what lb sends to (next_hop_mac in lb_config).
                        router.ip(&["link", "set", &format!("r-n{k}"), "address", "02:00:00:00:00:03"]);
                        ns.ip(&["neigh", "flush", "all"]);
                        ns
                    })
                    .collect()
            })
            .collect();
        let router_bird = Bird::start(&router, "router", &router_conf);
        let router_xdp = router.run(|| {
            let mut dp = Dataplane::load(&LoadOptions { conn_table_size: 16 }).expect("load");
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
                    let net = format!("10.{}.{i}", 30 + s);
                    veth(
                        End { ns: &router, dev: &format!("r-{name}{i}"), mac: &format!("02:00:00:00:{:02x}:{i:02x}", 0x30 + s), addr: &format!("{net}.1/24") },
                        End { ns: &ns, dev: "b0", mac: &format!("02:00:00:01:{:02x}:{i:02x}", 0x30 + s), addr: &format!("{net}.2/24") },
                    );
                    ns.ip(&["route", "add", "default", "via", &format!("{net}.1")]);
                    ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
                    ns
                })
                .collect();
            let addrs: Vec<String> = (0..nb).map(|i| format!("10.{}.{i}.2", 30 + s)).collect();
            let decaps = backend_ns
                .iter()
                .zip(&addrs)
                .map(|(ns, a)| {
                    ns.run(|| {
                        let mut dp = Dataplane::load(&LoadOptions { conn_table_size: 16 }).expect("load");
                        dp.add_decap_addr(ip(a)).expect("decap addr");
                        dp.attach(programs::DECAP, "b0", AttachMode::Native).expect("decap");
                        dp
                    })
                })
                .collect();
            let nodes = ns_list
                .into_iter()
                .zip(&node_addrs[s])
                .map(|(ns, &k)| {
                    let include = dir.join(format!("vips-{k}.conf"));
                    std::fs::write(&include, lb_userspace::bird::render(&[])).expect("include");
                    let mut conf = edge_config(&format!("10.20.{k}.2"), 65001 + s as u32, &format!("10.20.{k}.1"), 65000, &include);
                    if s > 0 {
                        let n = opts.backup_prepend.unwrap_or(1); // a backup site
                        conf = conf.replace("define SITE_PREPEND   = 0;", &format!("define SITE_PREPEND   = {n};"));
                    }
                    let bird = Bird::start(&ns, &format!("edge{k}"), &conf);
                    let mut peers: Vec<String> = node_addrs.iter().enumerate().filter(|&(o, _)| o != s).flat_map(|(_, ks)| ks.iter().map(|k| format!("10.20.{k}.2"))).collect();
                    peers.extend(opts.extra_peers.iter().cloned());
                    let lb = LbDaemon::start(&ns, &lb_config(&addrs, opts, &bird, &include, &format!("10.20.{k}.2"), &peers));
                    Node { ns, bird, lb, addr: format!("10.20.{k}.2") }
                })
                .collect();
            sites.push(SiteNet { name, nodes, backends: backend_ns, decaps });
        }
        Self { client, router, router_bird, router_xdp, sites, dir }
    }

    /// Waits until every node of site `site` sees all its reals up and announces the VIP. Nodes
    /// agree on a flow's real only when they agree on which reals are up, and the first health
    /// checks after the servers start take a moment to settle.
    pub fn wait_serving(&self, site: usize) {
        for node in &self.sites[site].nodes {
            wait_for(Duration::from_secs(10), "every real up and the VIP announced", || {
                let status = node.lb.status();
                status[0].announced && status[0].reals.iter().all(|r| r.up)
            });
        }
    }

    /// Opens `n` long-lived connections from the client to the VIP, one line exchanged on each;
    /// returns them with the "site X backend i" that answered.
    pub fn open_connections(&self, n: usize) -> Vec<(LineConn, String)> {
        self.client.run(|| {
            (0..n)
                .map(|i| {
                    let mut c = LineConn::connect(Site::vip_addr()).expect("connect");
                    let who = c.exchange(&format!("hello {i}")).expect("first exchange");
                    (c, who.split(" answered").next().unwrap_or("?").to_owned())
                })
                .collect()
        })
    }

    /// Next hops the router's kernel has for the VIP (empty: no route).
    pub fn next_hops(&self) -> Vec<String> {
        let out = self.router.ip(&["route", "show", &format!("{VIP}/32")]);
        out.split_whitespace().collect::<Vec<_>>().windows(2).filter(|w| w[0] == "via").map(|w| w[1].to_owned()).collect()
    }
}

impl Drop for Anycast {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
