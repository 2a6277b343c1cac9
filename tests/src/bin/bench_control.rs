//! `cargo xtask bench-control`: Maglev rebuild time for N reals (M = 65537), and the time from a
//! backend failing to the data plane's ring switch, with the real `lb` daemon in namespaces.

use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData};
use lb_common::{maps, VipKey, VipMeta};
use lb_tests::{lbd::LbDaemon, topology::{backend_addr, Net}};
use lb_userspace::maglev::{build_table, diff, MaglevReal};

const RUNS: usize = 11;
const M: u32 = 65_537;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn reals(n: u32) -> Vec<MaglevReal> {
    (0..n)
        .map(|i| MaglevReal { identity: lb_common::ipv4_mapped((0x0a00_0000 + i).to_be_bytes()), id: i + 1, weight: 1 + i % 3 })
        .collect()
}

fn rebuilds() {
    println!("| reals | build table (median of {RUNS}) | diff after one real fails | slots changed |");
    println!("|---:|---:|---:|---:|");
    for n in [10u32, 100, 1000] {
        let all = reals(n);
        let build = median((0..RUNS).map(|_| { let t = Instant::now(); std::hint::black_box(build_table(&all, M)); t.elapsed() }).collect());
        let before = build_table(&all, M);
        let after = build_table(&all[1..], M);
        let d = median((0..RUNS).map(|_| { let t = Instant::now(); std::hint::black_box(diff(&before, &after)); t.elapsed() }).collect());
        println!("| {n} | {:.2} ms | {:.2} ms | {} |", build.as_secs_f64() * 1e3, d.as_secs_f64() * 1e3, diff(&before, &after).len());
    }
}

/// Live ring of the only VIP, read from the daemon's pinned map.
fn live_ring(instance: &str) -> u32 {
    let path = lb_userspace::daemon::pin_dir(instance).join("maps").join(maps::VIPS);
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
    rebuilds();
    println!("\n| interval | fall | failure -> ring switch (each run) | median | target fall x interval + 50 ms |");
    println!("|---:|---:|---|---:|---:|");
    for (interval, fall) in [(100u64, 2u64), (50, 3)] {
        let runs: Vec<Duration> = (0..5).map(|_| failover(interval, fall)).collect();
        let each: Vec<String> = runs.iter().map(|d| format!("{:.0}", d.as_secs_f64() * 1e3)).collect();
        println!("| {interval} ms | {fall} | {} ms | {:.0} ms | {} ms |", each.join(", "), median(runs).as_secs_f64() * 1e3, fall * interval + 50);
    }
}
