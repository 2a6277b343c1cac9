//! `cargo xtask demo`: two anycast sites in network namespaces (site A: two LB nodes, site B: a
//! backup node; three backends each), a BIRD upstream router, the real `lb` daemons and BIRD on
//! every node, all dual stack: an IPv4 and an IPv6 VIP, announced over BGP and served side by
//! side. Shows who answers, fails a backend and then all of site A while requests keep being
//! answered, drains site A for maintenance with connections open (other sites hand them back,
//! over IPv6), prints the measured failover times of both families, and tears everything down.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    anycast::{client_addr, client_addr6, node_addr, node_addr6, Anycast, Options},
    bird::wait_for,
    topology::{http_get, Site, VIP, VIP6},
};

/// One family's VIP and client addresses, and its route at the router.
struct Family {
    name: &'static str,
    service: SocketAddr,
    client: fn(usize) -> IpAddr,
    next_hops: fn(&Anycast) -> Vec<String>,
}

fn families() -> [Family; 2] {
    [
        Family { name: "IPv4", service: Site::vip_addr(), client: client_addr, next_hops: Anycast::next_hops },
        Family { name: "IPv6", service: Site::vip6_addr(), client: client_addr6, next_hops: Anycast::next_hops6 },
    ]
}

type Tally = (BTreeMap<String, usize>, usize);

/// Sends `n` requests of `family`; counts answers per "site X backend i" and failures.
fn round(net: &Anycast, family: &Family, n: usize) -> Tally {
    net.client.run(|| {
        let mut who = BTreeMap::new();
        let mut failed = 0;
        for i in 0..n {
            match http_get(family.service, (family.client)(i), &format!("/request/{i}")) {
                Ok(a) => *who.entry(a.text.split(" answered").next().unwrap_or("?").to_owned()).or_default() += 1,
                Err(_) => failed += 1,
            }
        }
        (who, failed)
    })
}

fn show(label: &str, (who, failed): &Tally) {
    let list: Vec<String> = who.iter().map(|(w, n)| format!("{w}: {n}")).collect();
    println!("      {label}: {} | failed: {failed}", list.join(", "));
}

/// `n` requests of each family, shown under `label`.
fn both(net: &Anycast, label: &str, n: usize) {
    for f in families() {
        show(&format!("{label} ({})", f.name), &round(net, &f, n));
    }
}

/// Time until the first request of `family` answered by someone matching `by`.
fn until_answered_by(net: &Anycast, family: &Family, since: Instant, by: &str) -> Duration {
    loop {
        let (who, _) = round(net, family, 1);
        if who.keys().any(|w| w.starts_with(by)) {
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(20), "never answered by {by}");
    }
}

/// For each family, the time until the router's next hops satisfy `done`.
fn until_routes(net: &Anycast, since: Instant, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<Duration> {
    families()
        .iter()
        .map(|f| {
            wait_for(Duration::from_secs(30), &format!("{} route {what}", f.name), || done(&(f.next_hops)(net)));
            since.elapsed()
        })
        .collect()
}

fn main() {
    // SAFETY: no arguments, no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the demo needs root (network namespaces, XDP, BIRD): run it as root");
        std::process::exit(1);
    }
    println!("[1/7] building two dual-stack anycast sites: site A (2 LB nodes, 3 backends), site B (1 LB node, 3 backends, announces with AS-path prepend), an upstream router running BIRD, a client");
    let net = Anycast::with(&[2, 1], &[3, 3], &Options { handoff_ipv6: true, ..Default::default() });
    let started = Instant::now();
    let a = net.sites[0].servers();
    let _b = net.sites[1].servers();
    println!(
        "      every LB node runs BIRD and `lb` (XDP balancer, health checks every 100 ms, fall 2), serving {VIP}:8080 and [{VIP6}]:8080"
    );
    let learned = until_routes(&net, started, "via site A", |hops| hops.len() == 2);
    println!(
        "[2/7] router learned {VIP}/32 and {VIP6}/128 over BGP (one IPv4 session per node carries both) after {} / {}: next hops {:?} and {:?} (ECMP across site A)",
        ms(learned[0]),
        ms(learned[1]),
        net.next_hops(),
        net.next_hops6()
    );

    println!("[3/7] 60 HTTP requests of each family from 50 client addresses each");
    both(&net, "answered by", 60);

    println!("[4/7] killing site A backend 1");
    a.stop(1);
    let killed = Instant::now();
    wait_for(Duration::from_secs(5), "backend 1 down on both nodes for both VIPs", || {
        net.sites[0].nodes.iter().all(|n| n.lb.status().iter().all(|vip| vip.reals[1].slots == 0))
    });
    let backend_failover = killed.elapsed();
    println!("      both site A nodes took it out of both VIPs' Maglev tables after {}", ms(backend_failover));
    both(&net, "60 more requests", 60);

    println!("[5/7] killing all of site A's backends: site A can no longer serve and withdraws both VIPs");
    a.stop(0);
    a.stop(2);
    let site_down = Instant::now();
    let withdrawn = until_routes(&net, site_down, "to site B", |hops| hops == [node_addr(3)] || hops == [node_addr6(3)]);
    let first_b: Vec<Duration> = families().iter().map(|f| until_answered_by(&net, f, site_down, "site B")).collect();
    println!(
        "      router moved to site B after {} (IPv4) / {} (IPv6); first answer from site B after {} / {}",
        ms(withdrawn[0]),
        ms(withdrawn[1]),
        ms(first_b[0]),
        ms(first_b[1])
    );
    both(&net, "60 requests", 60);

    println!("[6/7] site A's backends come back: the VIPs return to site A");
    drop(a);
    let _a = net.sites[0].servers();
    let back_at = Instant::now();
    let back = until_routes(&net, back_at, "back to site A", |hops| hops.len() == 2);
    println!("      router back on site A after {} (IPv4) / {} (IPv6)", ms(back[0]), ms(back[1]));
    both(&net, "60 requests", 60);

    println!("[7/7] maintenance on site A: `lb site drain` on both nodes with 10 connections of each family open and requests running");
    net.wait_serving(0);
    let mut open: Vec<_> = families().iter().flat_map(|f| net.open_connections_to(f.service, 10)).collect();
    let during = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let start = Instant::now();
            let mut rounds = Vec::new();
            while start.elapsed() < Duration::from_secs(2) {
                for f in families() {
                    rounds.push((f.name, round(&net, &f, 10)));
                }
            }
            rounds
        });
        std::thread::sleep(Duration::from_millis(500));
        for node in &net.sites[0].nodes {
            assert!(node.lb.cli(&["site", "drain"]).status.success(), "lb site drain");
        }
        load.join().expect("load")
    });
    for f in families() {
        let (mut who, mut failed) = (BTreeMap::new(), 0);
        for (_, (w, n)) in during.iter().filter(|(name, _)| *name == f.name) {
            failed += n;
            for (k, c) in w {
                *who.entry(k.clone()).or_default() += c;
            }
        }
        show(&format!("requests during the drain ({})", f.name), &(who, failed));
    }
    let kept = net.client.run(|| {
        open.iter_mut().map(|(c, who)| c.exchange("still there?").is_ok_and(|a| a.starts_with(who.as_str()))).filter(|&ok| ok).count()
    });
    let handoffs = |node: &lb_tests::anycast::Node, what: &str| {
        let text = node.lb.metrics();
        let line = format!("lb_xdp_handoffs_total{{what=\"{what}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&line)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64
    };
    let received: u64 = net.sites[0].nodes.iter().map(|n| handoffs(n, "received")).sum();
    println!(
        "      open connections still answered by their site A backend: {kept}/20 (site B handed {} packets back to site A over IPv6; site A took {received})",
        handoffs(&net.sites[1].nodes[0], "sent")
    );
    for node in &net.sites[0].nodes {
        assert!(node.lb.cli(&["site", "undrain"]).status.success(), "lb site undrain");
    }

    println!(
        "\nfailover times: backend {} (fall 2 x 100 ms); site A down: withdrawal {} (IPv4) / {} (IPv6), first answer from site B {} / {}; return {} / {}",
        ms(backend_failover),
        ms(withdrawn[0]),
        ms(withdrawn[1]),
        ms(first_b[0]),
        ms(first_b[1]),
        ms(back[0]),
        ms(back[1])
    );
    drop(net);
    println!("harness torn down");
}

/// A duration as milliseconds with one decimal ("196.5 ms").
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
