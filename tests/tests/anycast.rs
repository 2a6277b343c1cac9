//! Two anycast sites with real BIRD peers (see `lb_tests::anycast`).

use std::time::{Duration, Instant};

use lb_tests::{
    anycast::Anycast,
    bird::wait_for,
    require_root,
    topology::{ask, LineConn, Site},
};

/// Answers to `n` requests: the "site X backend i" part of each (None for a failed request).
fn answers(net: &Anycast, n: usize) -> Vec<Option<String>> {
    net.client.run(|| {
        (0..n)
            .map(|i| ask(Site::vip_addr(), &format!("r{i}")).ok().map(|a| a.text.split(" answered").next().unwrap_or("").to_owned()))
            .collect()
    })
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn site_a_failing_moves_traffic_to_site_b_and_back() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Anycast::new(&[2, 1], &[2, 2]);
    let a = net.sites[0].servers();
    let _b = net.sites[1].servers();
    let took = wait_for(Duration::from_secs(30), "ECMP route to both site A nodes", || sorted(net.next_hops()) == ["10.20.1.2", "10.20.2.2"]);
    println!("router: VIP via both site A nodes after {took:?}");
    let before = answers(&net, 40);
    assert!(before.iter().all(|a| a.as_deref().is_some_and(|t| t.starts_with("site A"))), "{before:?}");

    a.stop(0);
    a.stop(1);
    let stopped = Instant::now();
    wait_for(Duration::from_secs(10), "route to site B", || net.next_hops() == ["10.20.3.2"]);
    let withdrawn = stopped.elapsed();
    let first_b = loop {
        if answers(&net, 1)[0].as_deref().is_some_and(|t| t.starts_with("site B")) {
            break stopped.elapsed();
        }
        assert!(stopped.elapsed() < Duration::from_secs(10), "site B never answered");
    };
    println!("site A down: route moved to site B after {withdrawn:?}, first answer from site B after {first_b:?}");
    let during = answers(&net, 20);
    assert!(during.iter().all(|a| a.as_deref().is_some_and(|t| t.starts_with("site B"))), "{during:?}");

    drop(a);
    let _a = net.sites[0].servers();
    let back = wait_for(Duration::from_secs(10), "route back to site A", || sorted(net.next_hops()) == ["10.20.1.2", "10.20.2.2"]);
    println!("site A back: route returned after {back:?}");
    let after = answers(&net, 20);
    assert!(after.iter().all(|a| a.as_deref().is_some_and(|t| t.starts_with("site A"))), "{after:?}");
}

#[test]
fn connections_survive_when_ecmp_moves_them_to_the_other_node_of_the_site() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Anycast::new(&[2], &[3]);
    let _servers = net.sites[0].servers();
    wait_for(Duration::from_secs(30), "ECMP route to both nodes", || sorted(net.next_hops()) == ["10.20.1.2", "10.20.2.2"]);
    let mut open: Vec<(LineConn, String)> = net.client.run(|| {
        (0..30)
            .map(|i| {
                let mut c = LineConn::connect(Site::vip_addr()).expect("connect");
                let who = c.exchange(&format!("hello {i}")).expect("first exchange");
                (c, who.split(" answered").next().unwrap().to_owned())
            })
            .collect()
    });
    // ECMP spread the flows: both nodes made connection entries.
    let new_flows: Vec<u64> = net.sites[0].nodes.iter().map(|n| metric(&n.lb.metrics(), "lb_vip_new_flows_total{vip=\"web\"}")).collect();
    println!("new flows per node before the move: {new_flows:?}");
    assert!(new_flows.iter().all(|&n| n > 0), "both nodes carried flows: {new_flows:?}");
    // Node 1 leaves (withdraws, keeps forwarding what still reaches it): ECMP moves its flows.
    assert!(net.sites[0].nodes[0].lb.cli(&["site", "drain"]).status.success());
    wait_for(Duration::from_secs(10), "route via node 2 only", || net.next_hops() == ["10.20.2.2"]);
    net.client.run(|| {
        for (i, (c, who)) in open.iter_mut().enumerate() {
            let again = c.exchange(&format!("after the move {i}")).unwrap_or_else(|e| panic!("connection {i} lost: {e}"));
            assert!(again.starts_with(who.as_str()), "connection {i}: {who} then {again}");
        }
    });
    let after = metric(&net.sites[0].nodes[1].lb.metrics(), "lb_vip_new_flows_total{vip=\"web\"}");
    println!("node 2 new flows after the move: {after} (the moved connections were new to it)");
    assert!(after >= new_flows[1] + new_flows[0], "node 2 took over node 1's flows: {after}");
}

/// The value of one metric line.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse::<f64>().unwrap_or(0.0) as u64))
        .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
}
