//! `lb` with thousands of VIPs on the one-site harness, announcing through a real BIRD on the LB
//! node to a BIRD upstream router: shared by the scale test and `cargo xtask bench-control`.
//! Health checks are off (`kind = "none"`): the reals are addresses only, and what is measured is
//! the control plane, not probes.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    bird::{edge_config, wait_for, Bird},
    lbd::LbDaemon,
    topology::Net,
};

/// Address of VIP `i`: 10.100.0.1 .. 10.100.0.250, 10.100.1.1 .. (inside 10.100.0.0/16).
pub fn vip_addr(i: usize) -> String {
    assert!(i < 250 * 256, "VIP {i} is beyond 10.100.0.0/16");
    format!("10.100.{}.{}", i / 250, i % 250 + 1)
}

/// Address of real `r` (10.200.0.1 ..); each VIP has the same reals.
pub fn real_addr(r: usize) -> String {
    format!("10.200.{}.{}", r / 250, r % 250 + 1)
}

/// The `[[vip]]` sections: `vips` VIPs of `reals` reals, ring size `ring_size`; real 0 of VIP 0
/// gets `first_weight` (a reload changes it).
pub fn vip_sections(vips: usize, reals: usize, ring_size: u32, first_weight: u32) -> String {
    let mut text = String::with_capacity(vips * (120 + reals * 40));
    for v in 0..vips {
        text +=
            &format!("[[vip]]\nname = \"v{v}\"\naddress = \"{}\"\nport = 80\nprotocol = \"tcp\"\nring_size = {ring_size}\n", vip_addr(v));
        for r in 0..reals {
            let weight = if v == 0 && r == 0 { first_weight } else { 1 };
            text += &format!("[[vip.real]]\naddress = \"{}\"\nweight = {weight}\n", real_addr(r));
        }
    }
    text
}

/// The one-site net with BIRD on the router and the LB node, ready for `lb`.
pub struct ScaleSite {
    pub net: Net,
    pub router: Bird,
    pub edge: Bird,
    dir: PathBuf,
    include: PathBuf,
}

/// What starting `lb` with a config took.
#[derive(Debug, Clone, Copy)]
pub struct Startup {
    /// From starting `lb` to its API answering: everything programmed (the daemon applies the
    /// config before it serves its API).
    pub programmed: Duration,
    /// To `lb status` showing every VIP announced.
    pub announced: Duration,
    /// To the upstream router's kernel holding a route for every VIP.
    pub routed: Duration,
}

impl ScaleSite {
    pub fn new() -> Self {
        let net = Net::new(0);
        let router_conf = std::fs::read_to_string(crate::bird::config_dir().join("e2e/router.conf")).expect("router.conf");
        let router = Bird::start(&net.router, "router", &router_conf);
        let dir = std::env::temp_dir().join(format!("lbt-scale-{}", net.lb.name));
        std::fs::create_dir_all(&dir).expect("scale dir");
        let include = dir.join("vips.conf");
        std::fs::write(&include, lb_userspace::bgp::bird::render(&[])).expect("empty include");
        let edge = Bird::start(&net.lb, "edge", &edge_config("10.10.2.2", 65001, "10.10.2.1", 65000, &include));
        // The session first, so that "routed" times what lb's announcements take, not BGP's start.
        wait_for(Duration::from_secs(30), "the BGP session", || router.birdc("show protocols site_a").contains("Established"));
        Self { net, router, edge, dir, include }
    }

    /// lb's config: `sections` (the VIPs) behind this site's BIRD, health checks off.
    pub fn config(&self, sections: &str) -> String {
        format!(
            "[[interface]]\nname = \"lb0\"\n[forwarding]\nnext_hop_mac = \"02:00:00:00:00:03\"\n[health]\nkind = \"none\"\n\
             [bgp]\nbird_socket = \"{}\"\ninclude_file = \"{}\"\n{sections}",
            self.edge.socket.display(),
            self.include.display()
        )
    }

    /// Routes the router's kernel has to VIPs (10.100.0.0/16).
    pub fn routes(&self) -> usize {
        self.net.router.ip(&["route", "show", "root", "10.100.0.0/16"]).lines().count()
    }

    /// Starts `lb` with `vips` VIPs given as config `sections` and waits for all of them to be
    /// announced and routed.
    pub fn start(&self, sections: &str, vips: usize) -> (LbDaemon, Startup) {
        let started = Instant::now();
        let d = LbDaemon::start(&self.net.lb, &self.config(sections));
        let programmed = started.elapsed();
        wait_for(Duration::from_secs(60), "every VIP announced", || d.status().iter().filter(|v| v.announced).count() == vips);
        let announced = started.elapsed();
        wait_for(Duration::from_secs(60), "a route for every VIP at the router", || self.routes() == vips);
        (d, Startup { programmed, announced, routed: started.elapsed() })
    }

    /// Bytes the kernel charges for each map of `lb`'s instance (`bpftool map show`), by name.
    pub fn map_memory(d: &LbDaemon) -> Vec<(String, u64)> {
        let maps = lb_userspace::dataplane::pins::balancer(&d.instance).join("maps");
        let mut out: Vec<(String, u64)> = std::fs::read_dir(&maps)
            .expect("pinned maps")
            .map(|e| {
                let path = e.expect("entry").path();
                let show = crate::netns::sh(&["bpftool", "map", "show", "pinned", path.to_str().expect("utf-8")]);
                let bytes = show
                    .split_whitespace()
                    .skip_while(|w| *w != "memlock")
                    .nth(1)
                    .and_then(|b| b.trim_end_matches('B').parse().ok())
                    .unwrap_or_else(|| panic!("no memlock in {show:?}"));
                (path.file_name().unwrap().to_string_lossy().into_owned(), bytes)
            })
            .collect();
        out.sort();
        out
    }
}

impl Default for ScaleSite {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ScaleSite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
