//! `cargo xtask bench-control`: Maglev rebuild time for N reals (M = 65537); the time from a
//! backend failing to the data plane's ring switch, with the real `lb` daemon in namespaces; and
//! at 64 / 1,024 / 4,096 VIPs of 16 reals, with BIRD: the time to program and announce them, the
//! kernel memory of the maps, a reload that changes one real, a scrape and `lb status`.

use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData};
use lb_common::{maps, VipKey, VipMeta};
use lb_tests::{
    lbd::LbDaemon,
    scale::{vip_sections, ScaleSite},
    topology::{backend_addr, Net},
};
use lb_userspace::maglev::{build_table, diff, MaglevReal};

const RUNS: usize = 11;
const M: u32 = 65_537;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn reals(n: u32) -> Vec<MaglevReal> {
    (0..n).map(|i| MaglevReal { identity: lb_common::ipv4_mapped((0x0a00_0000 + i).to_be_bytes()), id: i + 1, weight: 1 + i % 3 }).collect()
}

fn rebuilds() {
    println!("| reals | build table (median of {RUNS}) | diff after one real fails | slots changed |");
    println!("|---:|---:|---:|---:|");
    for n in [10u32, 100, 1000] {
        let all = reals(n);
        let build = median(
            (0..RUNS)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(build_table(&all, M));
                    t.elapsed()
                })
                .collect(),
        );
        let before = build_table(&all, M);
        let after = build_table(&all[1..], M);
        let d = median(
            (0..RUNS)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(diff(&before, &after));
                    t.elapsed()
                })
                .collect(),
        );
        println!("| {n} | {:.2} ms | {:.2} ms | {} |", build.as_secs_f64() * 1e3, d.as_secs_f64() * 1e3, diff(&before, &after).len());
    }
}

const SCALE_RUNS: usize = 3;
const SCALE_REALS: usize = 16;
const SCALE_RING: u32 = 16_381;

/// "median (min-max)" in ms.
fn ms(mut v: Vec<Duration>) -> String {
    v.sort();
    format!("{:.0} ({:.0}-{:.0})", v[v.len() / 2].as_secs_f64() * 1e3, v[0].as_secs_f64() * 1e3, v[v.len() - 1].as_secs_f64() * 1e3)
}

/// What one run at a size measured: (programmed, announced, routed, reload, scrape, status), and
/// the maps' bytes by name.
type ScaleRun = ([Duration; 6], Vec<(String, u64)>);

fn scale_run(vips: usize) -> ScaleRun {
    let site = ScaleSite::new();
    let (d, startup) = site.start(&vip_sections(vips, SCALE_REALS, SCALE_RING, 1), vips);
    let memory = ScaleSite::map_memory(&d);
    std::fs::write(&d.config, format!("instance = \"{}\"\n{}", d.instance, site.config(&vip_sections(vips, SCALE_REALS, SCALE_RING, 3))))
        .unwrap();
    let t = Instant::now();
    assert!(d.cli(&["reload"]).status.success(), "reload:\n{}", d.log());
    let reload = t.elapsed();
    assert!(d.metrics().contains("lb_ring_rebuilds_total"), "a scrape");
    let t = Instant::now();
    let text = d.metrics();
    let scrape = t.elapsed();
    assert_eq!(text.lines().filter(|l| l.starts_with("lb_real_up{")).count(), vips * SCALE_REALS, "a whole scrape");
    let t = Instant::now();
    assert_eq!(d.status().len(), vips);
    let status = t.elapsed();
    ([startup.programmed, startup.announced, startup.routed, reload, scrape, status], memory)
}

fn scale() {
    println!("{SCALE_REALS} reals per VIP, ring_size {SCALE_RING}, health checks off, BIRD on the node and the router; ms, median of {SCALE_RUNS} runs (min-max); times from the test's side (lb reload and lb status: the CLI's whole run)\n");
    println!("| VIPs | programmed (API up) | all announced | all routed at the router | reload, one real changed | /metrics scrape | lb status --json | kernel memory of the maps | of which MAGLEV |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for vips in [64usize, 1024, 4096] {
        let runs: Vec<ScaleRun> = (0..SCALE_RUNS).map(|_| scale_run(vips)).collect();
        let column = |i: usize| ms(runs.iter().map(|r| r.0[i]).collect());
        let memory = &runs[0].1;
        let total: u64 = memory.iter().map(|(_, b)| b).sum();
        let maglev = memory.iter().find(|(n, _)| n == maps::MAGLEV).map_or(0, |(_, b)| *b);
        let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
        println!(
            "| {vips} | {} | {} | {} | {} | {} | {} | {} | {} |",
            column(0),
            column(1),
            column(2),
            column(3),
            column(4),
            column(5),
            mb(total),
            mb(maglev)
        );
    }
    let (_, memory) = scale_run(64);
    let each: Vec<String> = memory.iter().map(|(n, b)| format!("{n} {:.2} MB", *b as f64 / 1e6)).collect();
    println!("\nmaps at 64 VIPs (bpftool map show, memlock): {}\n", each.join(", "));
}

/// Live ring of the only VIP, read from the daemon's pinned map.
fn live_ring(instance: &str) -> u32 {
    let path = lb_userspace::dataplane::pins::balancer(instance).join("maps").join(maps::VIPS);
    let data = MapData::from_pin(&path).expect("pinned VIPS");
    let vips: HashMap<_, VipKey, VipMeta> = HashMap::try_from(Map::HashMap(data)).expect("hash map");
    vips.iter().next().expect("a VIP").expect("read").1.ring_base
}

fn failover(interval_ms: u64, fall: u64) -> Duration {
    let net = Net::new(3);
    let servers = net.servers();
    let mut cfg = format!(
        "[[interface]]\nname = \"lb0\"\n[forwarding]\nnext_hop_mac = \"02:00:00:00:00:03\"\n[health]\ninterval_ms = {interval_ms}\ntimeout_ms = {}\nrise = 2\nfall = {fall}\n[[vip]]\nname = \"web\"\naddress = \"10.99.0.1\"\nport = 8080\nprotocol = \"tcp\"\n",
        interval_ms / 2
    );
    for i in 0..3 {
        cfg += &format!("[[vip.real]]\naddress = \"{}\"\n", backend_addr(i));
    }
    let d = LbDaemon::start(&net.lb, &cfg);
    std::thread::sleep(Duration::from_millis(3 * interval_ms)); // a few passing checks first
    let ring = live_ring(&d.instance);
    servers.stop(1);
    let t0 = Instant::now();
    while live_ring(&d.instance) == ring {
        assert!(t0.elapsed() < Duration::from_secs(10), "no ring switch:\n{}", d.log());
        std::thread::sleep(Duration::from_micros(500));
    }
    t0.elapsed()
}

fn main() {
    scale();
    rebuilds();
    println!("\n| interval | fall | failure -> ring switch (each run) | median | target fall x interval + 50 ms |");
    println!("|---:|---:|---|---:|---:|");
    for (interval, fall) in [(100u64, 2u64), (50, 3)] {
        let runs: Vec<Duration> = (0..5).map(|_| failover(interval, fall)).collect();
        let each: Vec<String> = runs.iter().map(|d| format!("{:.0}", d.as_secs_f64() * 1e3)).collect();
        println!(
            "| {interval} ms | {fall} | {} ms | {:.0} ms | {} ms |",
            each.join(", "),
            median(runs).as_secs_f64() * 1e3,
            fall * interval + 50
        );
    }
}
