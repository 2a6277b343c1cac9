//! The `lb` daemon end to end: the real binary runs in the LB node's namespace with a config
//! file, health-checks real backends over the network, and is driven through its CLI.

use std::time::{Duration, Instant};

use lb_tests::{
    lbd::LbDaemon,
    packet::ip,
    require_root,
    topology::{ask, backend_addr, connections_to_every_backend, lb_config, who, Net, Site},
};

const INTERVAL_MS: u64 = lb_tests::topology::CHECK_INTERVAL_MS;
const FALL: u64 = lb_tests::topology::CHECK_FALL;

/// `n` short requests from the client; the backend of each.
fn spread(net: &Net, n: usize) -> Vec<usize> {
    net.client.run(|| (0..n).map(|i| who(&ask(Site::vip_addr(), &format!("r{i}")).expect("answered").text)).collect())
}

fn real_up(d: &LbDaemon, addr: &str) -> bool {
    d.status()[0].reals.iter().find(|r| r.address == ip(addr)).expect("real").up
}

#[test]
fn a_failed_backend_loses_new_connections_and_others_keep_theirs() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(3);
    let servers = net.servers();
    let d = LbDaemon::start(&net.lb, &lb_config(3));
    let before = spread(&net, 30);
    assert!((0..3).all(|b| before.contains(&b)), "all backends serve: {before:?}");
    let mut open = connections_to_every_backend(&net, 3);

    servers.stop(1);
    let stopped = Instant::now();
    while real_up(&d, &backend_addr(1)) {
        assert!(stopped.elapsed() < Duration::from_secs(5), "backend 1 never marked down:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let detected = stopped.elapsed();
    // Worst case: the stop lands just after a check, then `fall` failing checks.
    let bound = Duration::from_millis((FALL + 1) * INTERVAL_MS + 200);
    println!("backend down detected after {detected:?} (fall {FALL} x interval {INTERVAL_MS} ms; bound {bound:?})");
    assert!(detected <= bound, "{detected:?} > {bound:?}");

    let after = spread(&net, 30);
    assert!(!after.contains(&1), "no new connection to the failed backend: {after:?}");
    net.client.run(|| {
        for b in [0, 2] {
            let answer = open[b].exchange("still there?").expect("connection to a healthy backend survives");
            assert_eq!(who(&answer), b);
        }
    });
    let status = d.status();
    assert_eq!(status[0].reals[1].slots, 0, "the failed backend left the ring");
    assert!(d.log().contains("real health changed"), "logged:\n{}", d.log());
    let _ = &mut open;
}

#[test]
fn draining_keeps_established_connections_and_takes_no_new_ones() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(2);
    let _servers = net.servers();
    // This one finds the next hop's MAC in the neighbour table.
    net.lb.ip(&["neigh", "replace", "10.10.2.1", "lladdr", "02:00:00:00:00:03", "dev", "lb0", "nud", "permanent"]);
    let by_ip = lb_config(2).replace("next_hop_mac = \"02:00:00:00:00:03\"", "next_hop_ip = \"10.10.2.1\"");
    let d = LbDaemon::start(&net.lb, &by_ip);
    let mut open = connections_to_every_backend(&net, 2);
    let out = d.cli(&["real", "drain", "web", &backend_addr(0)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = spread(&net, 30);
    assert!(after.iter().all(|&b| b == 1), "new connections avoid the draining backend: {after:?}");
    net.client.run(|| assert_eq!(who(&open[0].exchange("after drain").expect("drained connection kept")), 0));
    let status = d.status();
    assert_eq!((status[0].reals[0].weight, status[0].reals[0].up), (0, true));
    let text = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("0*"), "the table marks the run-time weight:\n{text}");
    let out = d.cli(&["real", "set-weight", "web", "10.9.9.9", "3"]);
    assert!(!out.status.success(), "unknown real is refused");
    d.cli(&["real", "enable", "web", &backend_addr(0)]);
    assert!(spread(&net, 40).contains(&0), "enabled again");
}

#[test]
fn a_bad_reload_is_rejected_and_service_continues() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(2);
    let _servers = net.servers();
    let d = LbDaemon::start(&net.lb, &lb_config(2));
    let good = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, good.replace("port = 8080", "port = 8080\nring_size = 1000")).unwrap();
    d.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.log().contains("config reload rejected") {
        assert!(Instant::now() < deadline, "no rejection logged:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.log().contains("ring_size: 1000 must be a prime"), "{}", d.log());
    assert_eq!(spread(&net, 20).len(), 20, "still serving");
    let out = d.cli(&["reload"]);
    assert!(!out.status.success(), "the API reload reports the error too");
    assert!(d.metrics().contains("lb_config_reloads_total{result=\"rejected\"} 2"), "{}", d.metrics());
    // A good change applies: one backend removed.
    std::fs::write(&d.config, good.replace(&format!("[[vip.real]]\naddress = \"{}\"\n", backend_addr(1)), "")).unwrap();
    assert!(d.cli(&["reload"]).status.success());
    assert!(spread(&net, 20).iter().all(|&b| b == 0));
}

#[test]
fn restarting_lb_keeps_a_long_lived_connection_and_runtime_changes() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(2);
    let _servers = net.servers();
    let mut d = LbDaemon::start(&net.lb, &lb_config(2));
    let mut open = connections_to_every_backend(&net, 2);
    assert!(d.cli(&["real", "set-weight", "web", &backend_addr(1), "4"]).status.success());
    d.terminate();
    // lb is gone; the data plane keeps forwarding.
    net.client.run(|| {
        for (b, c) in open.iter_mut().enumerate() {
            assert_eq!(who(&c.exchange("while lb is down").expect("served without lb")), b);
        }
    });
    assert_eq!(spread(&net, 10).len(), 10, "new connections while lb is down");
    d.spawn();
    assert!(d.log().contains("picked up the running data plane"), "{}", d.log());
    net.client.run(|| {
        for (b, c) in open.iter_mut().enumerate() {
            assert_eq!(who(&c.exchange("after restart").expect("connection survives the restart")), b);
        }
    });
    let status = d.status();
    assert_eq!(status[0].reals[1].weight, 4, "the run-time weight came back from the journal");
    let metrics = d.metrics();
    assert!(metrics.contains("lb_vip_new_flows_total{vip=\"web\"}"), "{metrics}");
    let out = d.cli(&["stop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!lb_userspace::dataplane::pins::balancer(&d.instance).exists());
}

#[test]
fn vips_added_and_removed_at_run_time_survive_a_restart() {
    require_root!();
    let _serial = lb_tests::serial();
    let mut net = Net::new(2);
    net.router.ip(&["route", "add", "10.99.0.2/32", "via", "10.10.2.2"]);
    for b in &mut net.decaps {
        b.serve_also("10.99.0.2");
    }
    let _servers = net.servers();
    let mut d = LbDaemon::start(&net.lb, &lb_config(2));
    let file = d.dir.join("api-vip.toml");
    std::fs::write(
        &file,
        format!(
            "[[vip]]\nname = \"api\"\naddress = \"10.99.0.2\"\nport = 8080\nprotocol = \"tcp\"\n[[vip.real]]\naddress = \"{}\"\n",
            backend_addr(1)
        ),
    )
    .unwrap();
    let out = d.cli(&["vip", "add", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let api: std::net::SocketAddr = "10.99.0.2:8080".parse().unwrap();
    let ask_api =
        |n: usize| net.client.run(|| (0..n).map(|i| who(&ask(api, &format!("a{i}")).expect("api answered").text)).collect::<Vec<_>>());
    assert!(ask_api(10).iter().all(|&b| b == 1), "the added VIP goes to its one real");
    assert!(!d.cli(&["vip", "add", file.to_str().unwrap()]).status.success(), "adding it twice is refused");

    d.terminate();
    d.spawn();
    assert_eq!(d.status().len(), 2, "the added VIP is back after the restart");
    assert_eq!(ask_api(5).len(), 5);

    assert!(d.cli(&["vip", "remove", "web"]).status.success(), "a VIP of the file can be removed too");
    assert!(!d.cli(&["vip", "remove", "web"]).status.success(), "but only once");
    d.terminate();
    d.spawn();
    let names: Vec<String> = d.status().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["api"], "the removal is kept too");
    assert!(spread_fails(&net), "the removed VIP is no longer served");
}

/// Whether a connection to the `web` VIP fails (quickly: 1 s).
fn spread_fails(net: &Net) -> bool {
    net.client.run(|| std::net::TcpStream::connect_timeout(&Site::vip_addr(), Duration::from_secs(1)).is_err())
}
