//! `cargo xtask demo`: two anycast sites in network namespaces (site A: two LB nodes, site B: a
//! backup node; three backends each), a BIRD upstream router, the real `lb` daemons and BIRD on
//! every node. Shows who answers, fails a backend and then all of site A while requests keep
//! being answered, drains site A for maintenance with connections open (other sites hand them
//! back), prints the measured failover times, and tears everything down.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use lb_tests::{
    anycast::{client_addr, Anycast},
    bird::wait_for,
    topology::{http_get, Site, VIP},
};

/// Sends `n` requests; counts answers per "site X backend i" and failures.
fn round(net: &Anycast, n: usize) -> (BTreeMap<String, usize>, usize) {
    net.client.run(|| {
        let mut who = BTreeMap::new();
        let mut failed = 0;
        for i in 0..n {
            match http_get(Site::vip_addr(), client_addr(i), &format!("/request/{i}")) {
                Ok(a) => *who.entry(a.text.split(" answered").next().unwrap_or("?").to_owned()).or_default() += 1,
                Err(_) => failed += 1,
            }
        }
        (who, failed)
    })
}

fn show(label: &str, (who, failed): &(BTreeMap<String, usize>, usize)) {
    let list: Vec<String> = who.iter().map(|(w, n)| format!("{w}: {n}")).collect();
    println!("      {label}: {} | failed: {failed}", list.join(", "));
}

/// Time until the first request answered by someone matching `by`.
fn until_answered_by(net: &Anycast, since: Instant, by: &str) -> Duration {
    loop {
        let (who, _) = round(net, 1);
        if who.keys().any(|w| w.starts_with(by)) {
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(20), "never answered by {by}");
    }
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the demo needs root (network namespaces, XDP, BIRD): run it as root");
        std::process::exit(1);
    }
    println!("[1/7] building two anycast sites: site A (2 LB nodes, 3 backends), site B (1 LB node, 3 backends, announces with AS-path prepend), an upstream router running BIRD, a client");
    let net = Anycast::new(&[2, 1], &[3, 3]);
    let a = net.sites[0].servers();
    let _b = net.sites[1].servers();
    println!("      every LB node runs BIRD and `lb` (XDP balancer, health checks every 100 ms, fall 2)");
    let took = wait_for(Duration::from_secs(30), "the router to learn the VIP from site A", || net.next_hops().len() == 2);
    println!("[2/7] router learned {VIP}/32 over BGP after {took:?}: next hops {:?} (ECMP across site A)", net.next_hops());

    println!("[3/7] 60 HTTP requests from 50 client addresses to {VIP}:8080");
    let r = round(&net, 60);
    show("answered by", &r);

    println!("[4/7] killing site A backend 1");
    a.stop(1);
    let killed = Instant::now();
    wait_for(Duration::from_secs(5), "backend 1 down on both nodes", || {
        net.sites[0].nodes.iter().all(|n| n.lb.status()[0].reals[1].slots == 0)
    });
    let backend_failover = killed.elapsed();
    println!("      both site A nodes took it out of their Maglev tables after {backend_failover:?}");
    show("60 more requests", &round(&net, 60));

    println!("[5/7] killing all of site A's backends: site A can no longer serve and withdraws the VIP");
    a.stop(0);
    a.stop(2);
    let site_down = Instant::now();
    wait_for(Duration::from_secs(10), "the route to move to site B", || net.next_hops() == ["10.20.3.2"]);
    let withdrawn = site_down.elapsed();
    let first_b = until_answered_by(&net, site_down, "site B");
    println!("      router moved to site B after {withdrawn:?}; first answer from site B after {first_b:?}");
    show("60 requests", &round(&net, 60));

    println!("[6/7] site A's backends come back: the VIP returns to site A");
    drop(a);
    let _a = net.sites[0].servers();
    let back_at = Instant::now();
    wait_for(Duration::from_secs(10), "the route back to site A", || net.next_hops().len() == 2);
    let back = back_at.elapsed();
    println!("      router back on site A after {back:?}");
    show("60 requests", &round(&net, 60));

    println!("[7/7] maintenance on site A: `lb site drain` on both nodes with 10 connections open and requests running");
    net.wait_serving(0);
    let mut open = net.open_connections(10);
    let during = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let start = Instant::now();
            let mut rounds = Vec::new();
            while start.elapsed() < Duration::from_secs(2) {
                rounds.push(round(&net, 20));
            }
            rounds
        });
        std::thread::sleep(Duration::from_millis(500));
        for node in &net.sites[0].nodes {
            assert!(node.lb.cli(&["site", "drain"]).status.success(), "lb site drain");
        }
        load.join().expect("load")
    });
    let (mut who, mut failed) = (BTreeMap::new(), 0);
    for (w, f) in during {
        failed += f;
        for (k, n) in w {
            *who.entry(k).or_default() += n;
        }
    }
    show("requests during the drain", &(who, failed));
    let kept = net.client.run(|| open.iter_mut().map(|(c, who)| c.exchange("still there?").is_ok_and(|a| a.starts_with(who.as_str()))).filter(|&ok| ok).count());
    let handoffs = |node: &lb_tests::anycast::Node, what: &str| {
        let text = node.lb.metrics();
        let line = format!("lb_xdp_handoffs_total{{what=\"{what}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&line)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64
    };
    let received: u64 = net.sites[0].nodes.iter().map(|n| handoffs(n, "received")).sum();
    println!("      open connections still answered by their site A backend: {kept}/10 (site B handed {} packets back to site A; site A took {received})", handoffs(&net.sites[1].nodes[0], "sent"));
    for node in &net.sites[0].nodes {
        assert!(node.lb.cli(&["site", "undrain"]).status.success(), "lb site undrain");
    }

    println!("\nfailover times: backend {backend_failover:?} (fall 2 x 100 ms), site {withdrawn:?} to withdrawal, {first_b:?} to the first answer from site B, return {back:?}");
    drop(net);
    println!("harness torn down");
}
