//! `cargo xtask demo`: brings up one site in network namespaces (client, router, LB node with the
//! XDP balancer, three backends), pushes real TCP requests through the VIP, shows who answered
//! and what the data plane counted, then tears everything down.

use std::collections::BTreeMap;

use lb_common::stats::Counter;
use lb_tests::topology::{ask, Site, PORT, VIP};

const BACKENDS: usize = 3;
const REQUESTS: usize = 60;

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the demo needs root (network namespaces, XDP): run it as root");
        std::process::exit(1);
    }
    println!("[1/4] building the harness: client, router, LB node and {BACKENDS} backends in network namespaces");
    let site = Site::new(BACKENDS);
    println!("[2/4] XDP balancer attached natively on the LB node's lb0; VIP {VIP}:{PORT}/tcp -> {BACKENDS} backends (Maglev)");
    println!("      backends decapsulate with lb_decap, hold the VIP on lo and answer the client directly (DSR)");
    println!("[3/4] sending {REQUESTS} TCP requests from the client (10.10.1.2) to {VIP}:{PORT}");
    let answers = site.with_servers(|| (0..REQUESTS).map(|i| ask(Site::vip_addr(), &format!("request {i}"))).collect::<Vec<_>>());
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0;
    for (i, answer) in answers.iter().enumerate() {
        match answer {
            Ok(a) => {
                if i < 5 {
                    print!("      client port {} -> {}", a.local_port, a.text);
                }
                let who = a.text.split(" answered").next().unwrap_or("?").to_owned();
                *per_backend.entry(who).or_default() += 1;
            }
            Err(e) => {
                failed += 1;
                println!("      request {i} failed: {e}");
            }
        }
    }
    println!("      ...");
    for (backend, n) in &per_backend {
        println!("      {backend}: {n} of {REQUESTS} requests");
    }
    let stats = site.balancer.dp.vip_stats(site.vip.meta.vip_index).expect("stats");
    println!(
        "[4/4] data plane counters: {} packets to the VIP, {} new flows, {} connection-table hits, {} tx, {} dropped",
        stats.packets,
        stats.new_flows,
        stats.conn_hits,
        site.balancer.dp.counter(Counter::Tx).unwrap_or(0),
        site.balancer.dp.counter(Counter::Drop).unwrap_or(0)
    );
    drop(site);
    println!("      harness torn down");
    if failed > 0 {
        eprintln!("{failed} requests failed");
        std::process::exit(1);
    }
}
