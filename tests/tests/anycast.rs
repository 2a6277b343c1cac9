//! Two anycast sites with real BIRD peers (see `lb_tests::anycast`), both address families.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    anycast::{client_addr, client_addr6, node_addr, node_addr6, Anycast, Options},
    bird::wait_for,
    lbd::metric,
    require_root,
    topology::{http_get, LineConn, Site, VIP},
};

/// One address family's VIP, client addresses, node addresses and routes at the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn service(self) -> SocketAddr {
        match self {
            Family::V4 => Site::vip_addr(),
            Family::V6 => Site::vip6_addr(),
        }
    }

    fn client(self, i: usize) -> IpAddr {
        match self {
            Family::V4 => client_addr(i),
            Family::V6 => client_addr6(i),
        }
    }

    /// LB node k's address in this family (the router's next hop for it).
    fn node(self, k: usize) -> String {
        match self {
            Family::V4 => node_addr(k),
            Family::V6 => node_addr6(k),
        }
    }

    fn nodes(self, ks: &[usize]) -> Vec<String> {
        ks.iter().map(|&k| self.node(k)).collect()
    }

    fn next_hops(self, net: &Anycast) -> Vec<String> {
        match self {
            Family::V4 => net.next_hops(),
            Family::V6 => net.next_hops6(),
        }
    }

    /// lb's name of this family's VIP in the harness.
    fn vip_name(self) -> &'static str {
        match self {
            Family::V4 => "web",
            Family::V6 => "web6",
        }
    }
}

/// HTTP GETs to the IPv4 VIP from rotating client addresses: the "site X backend i" part of
/// each answer (None for a failed request).
fn answers(net: &Anycast, n: usize) -> Vec<Option<String>> {
    answers_of(net, Family::V4, n)
}

fn answers_of(net: &Anycast, family: Family, n: usize) -> Vec<Option<String>> {
    net.client.run(|| (0..n).map(|i| get_of(family, i)).collect())
}

fn get(i: usize) -> Option<String> {
    get_of(Family::V4, i)
}

fn get_of(family: Family, i: usize) -> Option<String> {
    http_get(family.service(), family.client(i), &format!("/r{i}")).ok().map(|a| a.text.split(" answered").next().unwrap_or("").to_owned())
}

fn all_from(answers: &[Option<String>], site: &str) -> bool {
    answers.iter().all(|a| a.as_deref().is_some_and(|t| t.starts_with(site)))
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
    let took =
        wait_for(Duration::from_secs(30), "ECMP route to both site A nodes", || sorted(net.next_hops()) == ["10.20.1.2", "10.20.2.2"]);
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

/// Opens long-lived connections of `family` through site A's two nodes, drains node 1 so ECMP
/// moves its flows to node 2, and checks every connection still reaches its backend. Returns
/// node 2's handoff counters (sent, came back).
fn ecmp_move_keeps_connections(net: &Anycast, family: Family) -> (u64, u64) {
    wait_for(Duration::from_secs(30), "ECMP route to both site A nodes", || family.next_hops(net) == family.nodes(&[1, 2]));
    net.wait_serving(0);
    let mut open = net.open_connections_to(family.service(), 30);
    let node_metrics = |n: usize| net.sites[0].nodes[n].lb.metrics();
    let new_flows_metric = format!("lb_vip_new_flows_total{{vip=\"{}\"}}", family.vip_name());
    // ECMP spread the flows: both nodes made connection entries.
    let new_flows: Vec<u64> = (0..2).map(|n| counter(&node_metrics(n), &new_flows_metric)).collect();
    println!("new flows per node before the move: {new_flows:?}");
    assert!(new_flows.iter().all(|&n| n > 0), "both nodes carried flows: {new_flows:?}");
    // Node 1 leaves (withdraws, keeps forwarding what still reaches it): ECMP moves its flows.
    assert!(net.sites[0].nodes[0].lb.cli(&["site", "drain"]).status.success());
    wait_for(Duration::from_secs(10), "route via node 2 only", || family.next_hops(net) == family.nodes(&[2]));
    // Timed: the first exchange of a moved flow may take the handoff round trip, the second not.
    let (mut first, mut second): (Vec<Duration>, Vec<Duration>) = net.client.run(|| {
        open.iter_mut()
            .enumerate()
            .map(|(i, (c, who))| {
                let timed = |c: &mut LineConn, line: String| {
                    let start = Instant::now();
                    let again = c.exchange(&line).unwrap_or_else(|e| panic!("connection {i} lost: {e}"));
                    assert!(again.starts_with(who.as_str()), "connection {i}: {who} then {again}");
                    start.elapsed()
                };
                (timed(c, format!("after the move {i}")), timed(c, format!("again {i}")))
            })
            .unzip()
    });
    first.sort();
    second.sort();
    let spread = |v: &[Duration]| format!("median {:?}, max {:?}", v[v.len() / 2], v[v.len() - 1]);
    println!("exchange times after the move: first {}; second {}", spread(&first), spread(&second));
    let text = node_metrics(1);
    let after = counter(&text, &new_flows_metric);
    println!("node 2 new flows after the move: {after} (the moved connections were new to it)");
    assert!(after >= new_flows[1] + new_flows[0], "node 2 took over node 1's flows: {after}");
    let handoffs = |what: &str| counter(&text, &format!("lb_xdp_handoffs_total{{what=\"{what}\"}}"));
    (handoffs("sent"), handoffs("came_back"))
}

#[test]
fn connections_survive_when_ecmp_moves_them_to_the_other_node_of_the_site() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Anycast::new(&[2, 1], &[3, 1]);
    let _a = net.sites[0].servers();
    let _b = net.sites[1].servers();
    // Node 2 did not know the moved flows: it asked site B, which did not either and gave them
    // back; node 2 then sent them where its Maglev table (identical to node 1's) says.
    let (sent, came_back) = ecmp_move_keeps_connections(&net, Family::V4);
    println!("node 2 handoffs: sent {sent}, came back {came_back}");
    assert!(sent > 0 && came_back == sent, "every handoff came back: sent {sent}, came back {came_back}");
}

#[test]
fn a_dead_handoff_peer_gets_no_handoffs_and_connections_still_survive() {
    require_root!();
    let _serial = lb_tests::serial();
    // 10.20.99.2 is nobody: its checks fail, so no handoff may go there.
    let opts = Options { extra_peers: vec!["10.20.99.2".into()], ..Default::default() };
    let net = Anycast::with(&[2], &[3], &opts);
    let _a = net.sites[0].servers();
    for node in &net.sites[0].nodes {
        wait_for(Duration::from_secs(10), "the dead peer marked down", || {
            node.lb.metrics().contains("lb_handoff_peer_up{peer=\"10.20.99.2\"} 0")
        });
    }
    let status = String::from_utf8_lossy(&net.sites[0].nodes[1].lb.cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains("HANDOFF node 10.20.2.2") && status.lines().any(|l| l.contains("10.20.99.2") && l.ends_with("down")),
        "{status}"
    );
    let (sent, _) = ecmp_move_keeps_connections(&net, Family::V4);
    assert_eq!(sent, 0, "nothing handed to a peer that is down");
}

/// A counter's value in a scrape.
fn counter(text: &str, name: &str) -> u64 {
    metric(text, name) as u64
}

/// Requests to the IPv4 VIP in a loop for `duration`, at most `limit`; (time since start,
/// answer) each.
fn load(net: &Anycast, duration: Duration, limit: usize) -> Vec<(Duration, Option<String>)> {
    load_of(net, Family::V4, duration, limit)
}

fn load_of(net: &Anycast, family: Family, duration: Duration, limit: usize) -> Vec<(Duration, Option<String>)> {
    net.client.run(|| {
        let start = Instant::now();
        let mut out = Vec::new();
        while start.elapsed() < duration && out.len() < limit {
            let t = start.elapsed();
            out.push((t, get_of(family, out.len())));
        }
        out
    })
}

#[test]
fn requests_spread_over_backends_in_proportion_to_weights() {
    require_root!();
    let _serial = lb_tests::serial();
    let weights = [1u32, 2, 3];
    let net = Anycast::with(&[1], &[3], &Options { weights: weights.to_vec(), ..Default::default() });
    let _servers = net.sites[0].servers();
    wait_for(Duration::from_secs(30), "the VIP route", || !net.next_hops().is_empty());
    const N: usize = 600;
    let got = answers(&net, N);
    let mut counts = [0f64; 3];
    for a in &got {
        let b: usize = a.as_deref().and_then(|t| t.rsplit(' ').next()).and_then(|n| n.parse().ok()).expect("answered");
        counts[b] += 1.0;
    }
    let total: u32 = weights.iter().sum();
    let chi2: f64 = (0..3)
        .map(|i| {
            let expected = N as f64 * weights[i] as f64 / total as f64;
            (counts[i] - expected).powi(2) / expected
        })
        .sum();
    println!("{N} requests over weights {weights:?}: {counts:?}, chi-square {chi2:.2} (2 degrees of freedom)");
    // p = 0.0001 critical value for 2 degrees of freedom: a fair spread fails 1 run in 10000.
    assert!(chi2 < 18.42, "chi-square {chi2} for {counts:?}");
}

#[test]
fn a_backend_killed_under_load_costs_no_request_after_fall_times_interval() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Anycast::new(&[1], &[3]);
    let servers = net.sites[0].servers();
    wait_for(Duration::from_secs(30), "the VIP route", || !net.next_hops().is_empty());
    let results = std::thread::scope(|s| {
        let load = s.spawn(|| load(&net, Duration::from_secs(3), 100_000));
        std::thread::sleep(Duration::from_millis(1000));
        servers.stop(1);
        load.join().expect("load")
    });
    let kill = Duration::from_millis(1000);
    let bound = kill + Duration::from_millis(2 * 100 + 100); // fall x interval + one interval of phase
    let failed: Vec<Duration> = results.iter().filter(|(_, a)| a.is_none()).map(|(t, _)| *t).collect();
    let last_failure = failed.last().copied();
    println!(
        "{} requests, {} failed, last failure at {last_failure:?} (backend killed at {kill:?}, bound {bound:?})",
        results.len(),
        failed.len()
    );
    // Times are request starts, and the two threads' clocks start a few ms apart: a request
    // begun just before the kill can be cut by it.
    assert!(failed.iter().all(|&t| t + Duration::from_millis(50) >= kill), "no failure well before the kill: {failed:?}");
    assert!(last_failure.is_none_or(|t| t <= bound), "a request failed after {bound:?}: {failed:?}");
    assert!(results.iter().filter(|(t, _)| *t > bound).all(|(_, a)| a.as_deref().is_some_and(|w| !w.ends_with("backend 1"))));
}

/// Drains site A (one node) under a stream of `family` requests with long-lived connections
/// open: no request fails, the connections keep their site A backends (site B hands their
/// packets over), and site A stays healthy and forwarding.
fn site_drain_loses_no_request(family: Family, opts: &Options) {
    let net = Anycast::with(&[1, 1], &[2, 2], opts);
    let _a = net.sites[0].servers();
    let _b = net.sites[1].servers();
    wait_for(Duration::from_secs(30), "route via site A", || family.next_hops(&net) == family.nodes(&[1]));
    for site in 0..net.sites.len() {
        net.wait_serving(site);
    }
    // Long-lived connections open across the drain, besides the stream of short requests.
    let mut open = net.open_connections_to(family.service(), 10);
    assert!(open.iter().all(|(_, who)| who.starts_with("site A")), "opened at site A");
    let results = std::thread::scope(|s| {
        let load = s.spawn(|| load_of(&net, family, Duration::from_secs(3), 100_000));
        std::thread::sleep(Duration::from_millis(1000));
        assert!(net.sites[0].nodes[0].lb.cli(&["site", "drain"]).status.success());
        load.join().expect("load")
    });
    let failed: Vec<Duration> = results.iter().filter(|(_, a)| a.is_none()).map(|(t, _)| *t).collect();
    let by_b = results.iter().find(|(_, a)| a.as_deref().is_some_and(|w| w.starts_with("site B"))).map(|(t, _)| *t);
    println!("{family:?}: {} requests during the drain, failed: {failed:?}; site B answers from {by_b:?}", results.len());
    by_b.expect("traffic moved to site B");
    // Connections site A started still end at site A's backends: site B hands their packets over.
    assert!(failed.is_empty(), "failed requests at {failed:?}");
    net.client.run(|| {
        for (i, (c, who)) in open.iter_mut().enumerate() {
            let again = c.exchange(&format!("after {i}")).unwrap_or_else(|e| panic!("connection {i} lost in the drain: {e}"));
            assert!(again.starts_with(who.as_str()), "connection {i}: {who} then {again}");
        }
    });
    let handoffs =
        |site: usize, what: &str| counter(&net.sites[site].nodes[0].lb.metrics(), &format!("lb_xdp_handoffs_total{{what=\"{what}\"}}"));
    let (sent, received, returned) = (handoffs(1, "sent"), handoffs(0, "received"), handoffs(0, "returned"));
    println!("handoffs: site B sent {sent}, site A received {received}, returned {returned}");
    assert!(sent > 0 && received == sent && returned == 0, "site B handed site A's flows over and site A took them all");
    let status = net.sites[0].nodes[0].lb.status();
    assert!(status.iter().all(|vip| !vip.announced && vip.reals.iter().all(|r| r.up)), "site A withdrawn, still healthy and forwarding");
}

#[test]
fn site_drain_withdraws_before_forwarding_stops_with_no_failed_request() {
    require_root!();
    let _serial = lb_tests::serial();
    site_drain_loses_no_request(Family::V4, &Options::default());
}

#[test]
fn ipv6_site_drain_loses_no_request_with_handoff_over_ipv6() {
    require_root!();
    let _serial = lb_tests::serial();
    site_drain_loses_no_request(Family::V6, &Options { handoff_ipv6: true, ..Default::default() });
}

#[test]
fn ipv6_connections_survive_when_ecmp_moves_them_to_the_other_node_of_the_site() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Anycast::with(&[2, 1], &[3, 1], &Options { handoff_ipv6: true, ..Default::default() });
    let _a = net.sites[0].servers();
    let _b = net.sites[1].servers();
    let (sent, came_back) = ecmp_move_keeps_connections(&net, Family::V6);
    println!("node 2 handoffs over IPv6: sent {sent}, came back {came_back}");
    assert!(sent > 0 && came_back == sent, "every handoff came back: sent {sent}, came back {came_back}");
}

/// Both VIPs' routes at the router, side by side: they appear after `lb` starts (ECMP over
/// site A's nodes), move to site B when site A's reals all fail and when site A drains, and
/// come back; requests of both families follow them.
#[test]
fn ipv6_vip_route_follows_health_and_drain_like_the_ipv4_one() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Anycast::new(&[2, 1], &[2, 2]);
    let started = Instant::now();
    let a = net.sites[0].servers();
    let _b = net.sites[1].servers();
    let families = [Family::V4, Family::V6];
    // Waits, for each family, until the router's next hops are those nodes; the times.
    let routes_to = |ks: &[usize], what: &str, since: Instant| -> Vec<Duration> {
        families
            .iter()
            .map(|&f| {
                wait_for(Duration::from_secs(30), &format!("{f:?} route {what}"), || f.next_hops(&net) == f.nodes(ks));
                since.elapsed()
            })
            .collect()
    };
    let served_by = |site: &str| {
        for f in families {
            let got = answers_of(&net, f, 20);
            assert!(all_from(&got, site), "{f:?} answered by {site}: {got:?}");
        }
    };
    let appeared = routes_to(&[1, 2], "via both site A nodes", started);
    served_by("site A");

    a.stop(0);
    a.stop(1);
    let failed = Instant::now();
    let moved = routes_to(&[3], "to site B (site A's reals down)", failed);
    served_by("site B");
    drop(a);
    let restarted = Instant::now();
    let _a = net.sites[0].servers();
    let back = routes_to(&[1, 2], "back to site A", restarted);
    served_by("site A");

    let drained = Instant::now();
    for node in &net.sites[0].nodes {
        assert!(node.lb.cli(&["site", "drain"]).status.success());
    }
    let drain = routes_to(&[3], "to site B (site A drained)", drained);
    served_by("site B");
    let undrained = Instant::now();
    for node in &net.sites[0].nodes {
        assert!(node.lb.cli(&["site", "undrain"]).status.success());
    }
    let undrain = routes_to(&[1, 2], "back to site A (undrained)", undrained);
    println!("IPv4 / IPv6 route at the router: first announcement {:?} / {:?} after the servers started", appeared[0], appeared[1]);
    println!("  site A's reals down -> site B: {:?} / {:?}; back {:?} / {:?}", moved[0], moved[1], back[0], back[1]);
    println!("  site A drained -> site B: {:?} / {:?}; undrained -> site A: {:?} / {:?}", drain[0], drain[1], undrain[0], undrain[1]);
}

#[test]
fn malformed_packets_from_clients_do_not_disturb_service() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Anycast::new(&[1], &[2]);
    let _servers = net.sites[0].servers();
    wait_for(Duration::from_secs(30), "the VIP route", || !net.next_hops().is_empty());
    let drops_before = drops(&net);
    // Raw IPv4 packets the router forwards but the balancer must drop: truncated TCP header,
    // TCP data offset 0, a first fragment, UDP with a bad length; 200 of each, interleaved with
    // real requests.
    let vip: std::net::Ipv4Addr = lb_tests::topology::VIP.parse().unwrap();
    let served = net.client.run(|| {
        // SAFETY: plain socket call; the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let mut served = 0;
        for round in 0..200u16 {
            for bad in bad_packets(vip, round) {
                let dst = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: 0,
                    sin_addr: libc::in_addr { s_addr: u32::from(vip).to_be() },
                    sin_zero: [0; 8],
                };
                // SAFETY: the buffer and the sockaddr_in live through the call, with their sizes.
                let rc = unsafe {
                    libc::sendto(
                        fd,
                        bad.as_ptr().cast(),
                        bad.len(),
                        0,
                        (&dst as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                assert!(rc > 0, "sendto: {}", std::io::Error::last_os_error());
            }
            if round % 10 == 0 && get(round as usize).is_some() {
                served += 1;
            }
        }
        // SAFETY: our fd, closed once.
        unsafe { libc::close(fd) };
        served
    });
    let dropped = drops(&net) - drops_before;
    println!("malformed packets sent: 800; dropped by the balancer with a reason: {dropped}; requests served in between: {served}/20");
    assert_eq!(served, 20, "every real request in between was served");
    assert!(dropped >= 600, "the balancer dropped and counted them ({dropped})");
}

/// Sum of the balancer's drop counters on site A's node.
fn drops(net: &Anycast) -> u64 {
    let m = net.sites[0].nodes[0].lb.metrics();
    m.lines().filter(|l| l.starts_with("lb_xdp_drops_total{")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum::<f64>() as u64
}

/// Four malformed IPv4 packets from the client to the VIP (IP header checksums left to the kernel).
fn bad_packets(vip: std::net::Ipv4Addr, round: u16) -> Vec<Vec<u8>> {
    let ip = |proto: u8, payload: &[u8], frag: u16| {
        let total = (20 + payload.len()) as u16;
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0, 10, 10, 1, 2];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[4..6].copy_from_slice(&round.to_be_bytes());
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p.extend(vip.octets());
        p.extend(payload);
        p
    };
    let port = (40_000 + round).to_be_bytes();
    let tcp_short = [port[0], port[1], 0x1f, 0x90, 0, 0, 0, 1]; // 8 of 20 bytes
    let mut tcp_doff0 = vec![port[0], port[1], 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0, 0x00, 0x02, 0xff, 0xff, 0, 0, 0, 0];
    tcp_doff0[12] = 0x00;
    let udp_badlen = [port[0], port[1], 0x1f, 0x90, 0x10, 0x00, 0, 0, 1, 2, 3, 4];
    vec![
        ip(6, &tcp_short, 0),
        ip(6, &tcp_doff0, 0),
        ip(6, &tcp_doff0, 0x2000), // more fragments
        ip(17, &udp_badlen, 0),
    ]
}

#[test]
fn a_site_short_of_capacity_is_prepended_and_peers_prefer_the_other() {
    require_root!();
    let _serial = lb_tests::serial();
    // Equal sites (no backup prepend); A steers away below 75% of its capacity.
    let opts = Options { prepend_below: Some(0.75), backup_prepend: Some(0), ..Default::default() };
    let net = Anycast::with(&[1, 1], &[3, 3], &opts);
    let a = net.sites[0].servers();
    let _b = net.sites[1].servers();
    wait_for(Duration::from_secs(30), "ECMP over both sites", || sorted(net.next_hops()) == ["10.20.1.2", "10.20.2.2"]);
    a.stop(0); // site A at 2/3 of its weight: prepended
    let took = wait_for(Duration::from_secs(10), "route to site B only", || net.next_hops() == ["10.20.2.2"]);
    println!("site A at 2/3 capacity: router prefers site B after {took:?}");
    let route = net.router_bird.birdc("show route all");
    assert!(route.contains("65001 65001 65001"), "site A's path carries the steering prepends:\n{route}");
    let served = answers(&net, 20);
    assert!(served.iter().all(|a| a.as_deref().is_some_and(|t| t.starts_with("site B"))), "{served:?}");
}

/// BIRD frozen (SIGSTOP) on the node: lb's loop never waits for it. A killed backend leaves the
/// ring within fall x interval + 100 ms, `lb status` answers within 100 ms, a drain is taken at
/// once and reaches BIRD after SIGCONT (with no restart of lb), and SIGTERM with BIRD frozen
/// again exits within 2 s.
#[test]
fn a_frozen_bird_stalls_nothing_and_is_caught_up_after_it_thaws() {
    require_root!();
    let _serial = lb_tests::serial();
    let mut net = Anycast::new(&[1], &[3]);
    let servers = net.sites[0].servers();
    wait_for(Duration::from_secs(30), "the VIP route", || !net.next_hops().is_empty());
    let node = &net.sites[0].nodes[0];
    let vip_routes = || node.bird.birdc("show route protocol lb_vips4");
    assert!(vip_routes().contains(lb_tests::topology::VIP), "{}", vip_routes());
    let backend1 = node.lb.status()[0].reals[1].address;
    node.bird.freeze();

    servers.stop(1);
    let out_of_ring = wait_for(Duration::from_secs(5), "backend 1 out of the ring", || {
        node.lb.status()[0].reals.iter().any(|r| r.address == backend1 && !r.up && r.slots == 0)
    });
    let bound = Duration::from_millis(2 * 100 + 100); // fall x interval + 100 ms
    let mut status_times = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        node.lb.status();
        status_times.push(t.elapsed());
    }
    let slowest_status = *status_times.iter().max().unwrap();
    let t = Instant::now();
    assert!(node.lb.cli(&["site", "drain"]).status.success(), "{}", node.lb.log());
    let drain_took = t.elapsed();
    let first_error = wait_for(Duration::from_secs(10), "a BIRD timeout", || metric(&node.lb.metrics(), "lb_bird_errors_total") >= 1.0);
    println!(
        "BIRD frozen: backend out of the ring {out_of_ring:?} after the kill (bound {bound:?}), slowest of 10 `lb status` {slowest_status:?}, `lb site drain` {drain_took:?}, first BIRD timeout {first_error:?} after the drain"
    );
    assert!(out_of_ring <= bound, "{out_of_ring:?}");
    assert!(slowest_status < Duration::from_millis(100), "{status_times:?}");
    assert!(drain_took < Duration::from_millis(100), "{drain_took:?}");

    node.bird.thaw();
    let caught_up = wait_for(Duration::from_secs(15), "the drain to reach BIRD", || !vip_routes().contains(lb_tests::topology::VIP));
    assert!(node.lb.log().contains("BGP announcements updated announced= drained=true"), "{}", node.lb.log());
    assert!(node.lb.cli(&["site", "undrain"]).status.success());
    let back = wait_for(Duration::from_secs(15), "the VIP back in BIRD", || vip_routes().contains(lb_tests::topology::VIP));
    println!("BIRD thawed: drain applied after {caught_up:?}, undrain after {back:?}, lb not restarted");

    node.bird.freeze();
    let t = Instant::now();
    net.sites[0].nodes[0].lb.terminate();
    let exit_took = t.elapsed();
    net.sites[0].nodes[0].bird.thaw();
    println!("SIGTERM with BIRD frozen: lb exited after {exit_took:?}");
    assert!(exit_took < Duration::from_secs(2), "{exit_took:?}");
    assert!(net.sites[0].nodes[0].lb.log().contains("BIRD did not confirm the withdrawal before exit"));
}

/// RFC 8326: `lb site drain` first announces site A's VIPs with GRACEFUL_SHUTDOWN (65535:0); the
/// router, which honours it (local preference 0), moves traffic to site B while site A's route
/// is still there; site A withdraws after the configured wait. No request fails, connections
/// site A opened keep working, and `lb status` shows each stage.
#[test]
fn graceful_shutdown_moves_traffic_to_site_b_before_site_a_withdraws() {
    require_root!();
    let _serial = lb_tests::serial();
    const WAIT_MS: u64 = 3000;
    let net = Anycast::with(&[1, 1], &[2, 2], &Options { graceful_shutdown_ms: WAIT_MS, ..Default::default() });
    let _a = net.sites[0].servers();
    let _b = net.sites[1].servers();
    wait_for(Duration::from_secs(30), "route via site A", || net.next_hops() == ["10.20.1.2"]);
    for site in 0..net.sites.len() {
        net.wait_serving(site);
    }
    let mut open = net.open_connections_to(Site::vip_addr(), 10);
    // `lb flow` on site B's node for a connection site A holds: no entry at B, so a mid-flow
    // packet arriving there goes to the peer, site A's node.
    let port = open[0].0.local_port.to_string();
    let out = net.sites[1].nodes[0].lb.cli(&["flow", &format!("10.10.1.2:{port}"), &format!("{VIP}:8080")]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("lb flow at site B for a connection of site A:\n{text}");
    assert!(text.contains("VIP web (announced)") && text.contains("table entry:       none"), "{text}");
    assert!(text.contains("now:               handoff to peer 10.20.1.2"), "{text}");
    let node_a = &net.sites[0].nodes[0].lb;
    let site_line =
        || String::from_utf8_lossy(&node_a.cli(&["status"]).stdout).lines().find(|l| l.starts_with("SITE")).unwrap_or("").to_owned();
    assert_eq!(site_line(), "SITE announcing");
    let a_route_at_router = || net.router_bird.birdc(&format!("show route for {VIP}/32 all")).contains("via 10.20.1.2");
    let (results, moved, gshut_seen, stage_during, withdrawn, stage_after) = std::thread::scope(|s| {
        let load = s.spawn(|| load(&net, Duration::from_secs(6), 100_000));
        std::thread::sleep(Duration::from_millis(1000));
        let drained = Instant::now();
        assert!(node_a.cli(&["site", "drain"]).status.success());
        wait_for(Duration::from_secs(5), "the route to move to site B", || net.next_hops() == ["10.20.2.2"]);
        let moved = drained.elapsed();
        let routes = net.router_bird.birdc(&format!("show route for {VIP}/32 all"));
        let gshut_seen = a_route_at_router() && routes.contains("(65535,0)");
        let stage_during = site_line();
        wait_for(Duration::from_secs(10), "site A's route withdrawn", || !a_route_at_router());
        let withdrawn = drained.elapsed();
        let stage_after = site_line();
        (load.join().expect("load"), moved, gshut_seen, stage_during, withdrawn, stage_after)
    });
    let failed: Vec<Duration> = results.iter().filter(|(_, a)| a.is_none()).map(|(t, _)| *t).collect();
    let by_b = results.iter().filter(|(_, a)| a.as_deref().is_some_and(|w| w.starts_with("site B"))).count();
    println!(
        "graceful shutdown ({WAIT_MS} ms): traffic to site B after {moved:?} (site A's route still at the router with 65535:0: {gshut_seen}), \
         site A withdrawn after {withdrawn:?}; {} requests, {by_b} answered by site B, failed at {failed:?}; `lb status` during: {stage_during:?}, after: {stage_after:?}",
        results.len()
    );
    assert!(gshut_seen, "the router had site A's route with GRACEFUL_SHUTDOWN when traffic moved");
    assert!(moved < withdrawn && withdrawn >= Duration::from_millis(WAIT_MS), "moved {moved:?}, withdrawn {withdrawn:?}");
    assert!(
        stage_during.starts_with("SITE graceful shutdown: announced with GRACEFUL_SHUTDOWN (65535:0), withdrawing in "),
        "{stage_during}"
    );
    assert!(stage_after.starts_with("SITE withdrawn"), "{stage_after}");
    assert!(by_b > 0 && failed.is_empty(), "failed requests at {failed:?}");
    net.client.run(|| {
        for (i, (c, who)) in open.iter_mut().enumerate() {
            let again = c.exchange(&format!("after {i}")).unwrap_or_else(|e| panic!("connection {i} lost in the drain: {e}"));
            assert!(again.starts_with(who.as_str()), "connection {i}: {who} then {again}");
        }
    });
}
