//! `lb backend` on a real host's namespace: what `run` changes and `stop` puts back, a restart
//! that loses no packet, and a drain from the backend that the balancer follows.

use std::time::{Duration, Instant};

use lb_tests::{
    backend::BackendDaemon,
    bird::wait_for,
    lbd::LbDaemon,
    require_root,
    topology::{backend_addr, connections_to_every_backend, LineConn, Net, Site, VIP, VIP6},
};

/// What `run` touches in a backend's namespace: the DSR sysctls, lo's addresses, b0's XDP.
fn host_state(b: &BackendDaemon, net_ns: &lb_tests::netns::NetNs) -> Vec<String> {
    let mut state: Vec<String> =
        ["net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.b0.rp_filter"]
            .iter()
            .map(|k| format!("{k}={}", net_ns.exec(&["sysctl", "-n", k]).trim()))
            .collect();
    let lo = net_ns.ip(&["addr", "show", "dev", "lo"]);
    state.push(format!("lo has {VIP}: {}", lo.contains(&format!("{VIP}/32"))));
    state.push(format!("lo has {VIP6}: {}", lo.contains(&format!("{VIP6}/128"))));
    state.push(format!("b0 has XDP: {}", net_ns.ip(&["link", "show", "dev", "b0"]).contains("xdp")));
    state.push(format!("pinned: {}", lb_userspace::dataplane::pins::backend(&b.instance).exists()));
    state
}

#[test]
fn run_is_idempotent_a_restart_loses_no_packet_and_stop_puts_the_host_back() {
    require_root!();
    let _serial = lb_tests::serial();
    let mut site = Site::new(1);
    let servers = site.net.servers();
    let ns = &site.net.backends[0];
    let b = &site.net.decaps[0];
    let running = host_state(b, ns);
    assert_eq!(
        running,
        [
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
            "net.ipv4.conf.all.rp_filter=2",
            "net.ipv4.conf.b0.rp_filter=2",
            &format!("lo has {VIP}: true"),
            &format!("lo has {VIP6}: true"),
            "b0 has XDP: true",
            "pinned: true",
        ]
    );

    // A ping-like stream over one connection (a line every 5 ms) while lb backend restarts.
    let real = site.balancer.real_id_of(&backend_addr(0));
    let sent_before = site.balancer.dp().real_stats(real).unwrap().packets;
    let stripped_before = b.counter("decapsulated");
    let service = Site::vip_addr();
    let (exchanges, slowest, restart) = std::thread::scope(|s| {
        let stream = s.spawn(|| {
            site.net.client.run(|| {
                let mut c = LineConn::connect(service).expect("connect");
                let (mut n, mut slowest) = (0, Duration::ZERO);
                let end = Instant::now() + Duration::from_millis(1500);
                while Instant::now() < end {
                    let t = Instant::now();
                    c.exchange(&format!("ping {n}")).expect("answered through the restart");
                    slowest = slowest.max(t.elapsed());
                    n += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                (n, slowest)
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let b = &mut site.net.decaps[0];
        b.terminate();
        b.spawn();
        let restart = t.elapsed();
        let (n, slowest) = stream.join().expect("stream");
        (n, slowest, restart)
    });
    // The connection's close (FIN, its last ACK) is still in flight when the stream ends: let it
    // land before the two counters are read, or one side counts a packet the other has not yet.
    std::thread::sleep(Duration::from_millis(300));
    let b = &site.net.decaps[0];
    let sent = site.balancer.dp().real_stats(real).unwrap().packets - sent_before;
    let stripped = b.counter("decapsulated") - stripped_before;
    println!(
        "restart of lb backend took {restart:?}; {exchanges} exchanges, slowest {slowest:?}; the balancer sent {sent} packets, the backend stripped {stripped}"
    );
    assert_eq!(stripped, sent, "every tunnelled packet stripped: none lost while lb backend restarted");
    assert!(slowest < Duration::from_millis(150), "no retransmission: {slowest:?}");
    let second = b.log();
    let second = second.rsplit("backend running").nth(1).unwrap_or(&second);
    assert!(second.contains("host already as configured: nothing changed"), "a second run changes nothing:\n{second}");
    assert!(second.contains("replaced_running_program=true"), "{second}");
    assert_eq!(host_state(b, ns), running);

    let out = b.cli(&["status"]);
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("lb backend status:\n{status}");
    assert!(status.contains("serving") && status.contains(VIP) && status.contains(VIP6), "{status}");
    assert!(status.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["ipip", &stripped.to_string()]), "{status}");

    // The service stops (the data plane stays: decapsulation goes on), then `lb backend stop`:
    // everything back as the namespace had it.
    site.net.decaps[0].terminate();
    assert_eq!(host_state(&site.net.decaps[0], ns), running, "decapsulation outlives the process");
    let b = &site.net.decaps[0];
    let out = b.cli(&["stop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("lb backend stop:\n{log}");
    assert_eq!(
        host_state(b, ns),
        [
            "net.ipv4.conf.all.arp_ignore=0",
            "net.ipv4.conf.all.arp_announce=0",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.b0.rp_filter=0",
            &format!("lo has {VIP}: false"),
            &format!("lo has {VIP6}: false"),
            "b0 has XDP: false",
            "pinned: false",
        ]
    );
    assert!(!b.dir.join(format!("{}.backend.json", b.instance)).exists(), "its record of changes is gone too");
    drop(servers);
}

#[test]
fn a_backend_drained_from_itself_leaves_the_ring_and_keeps_its_connections() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(2);
    let servers = net.servers();
    let mut config = String::from(
        "[[interface]]\nname = \"lb0\"\n[forwarding]\nnext_hop_mac = \"02:00:00:00:00:03\"\n\
         [health]\nkind = \"http\"\nport = 9180\npath = \"/healthz\"\ninterval_ms = 100\ntimeout_ms = 80\nrise = 2\nfall = 2\n\
         [[vip]]\nname = \"web\"\naddress = \"10.99.0.1\"\nport = 8080\nprotocol = \"tcp\"\n",
    );
    for i in 0..2 {
        config += &format!("[[vip.real]]\naddress = \"{}\"\n", backend_addr(i));
    }
    let d = LbDaemon::start(&net.lb, &config);
    let mut conns = connections_to_every_backend(&net, 2);

    let out = net_backend(&net, 1).cli(&["drain"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, body) = net_backend(&net, 1).health().expect("endpoint");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"draining\":true"), "{body}");
    let took = wait_for(Duration::from_secs(5), "backend 1 out of the ring", || {
        d.status()[0].reals.iter().any(|r| r.address.to_string() == backend_addr(1) && r.draining && r.slots == 0 && r.up)
    });
    let bound = Duration::from_millis(2 * 100 + 100);
    println!("lb backend drain: out of the ring after {took:?} (bound {bound:?})");
    let table = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(table.lines().any(|l| l.contains(&backend_addr(1)) && l.split_whitespace().nth(2) == Some("drain")), "{table}");
    assert!(took <= bound, "{took:?}");
    net.client.run(|| {
        for (b, c) in conns.iter_mut().enumerate() {
            let answer = c.exchange("after the drain").expect("established connections keep working");
            assert!(answer.starts_with(&format!("backend {b} ")), "{answer}");
        }
        for i in 0..10 {
            let mut c = LineConn::connect(Site::vip_addr()).expect("connect");
            let answer = c.exchange(&format!("new {i}")).expect("answered");
            assert!(answer.starts_with("backend 0 "), "new connections avoid the draining backend: {answer}");
        }
    });
    let out = net_backend(&net, 1).cli(&["undrain"]);
    assert!(out.status.success());
    wait_for(Duration::from_secs(5), "backend 1 back in the ring", || d.status()[0].reals[1].slots > 0);
    drop(servers);
}

fn net_backend(net: &Net, i: usize) -> &BackendDaemon {
    &net.decaps[i]
}

/// `lb backend run` with only the capabilities its systemd unit grants: from a clean host it
/// attaches, sets the sysctls, holds the VIPs, and a request goes through it.
#[test]
fn lb_backend_runs_with_only_the_capabilities_its_unit_grants() {
    require_root!();
    let _serial = lb_tests::serial();
    let mut site = Site::new(1);
    let servers = site.net.servers();
    let b = &mut site.net.decaps[0];
    b.terminate();
    assert!(b.cli(&["stop"]).status.success(), "a clean host to start from");
    let caps = lb_tests::lbd::unit_capabilities("anycast-lb-backend.service");
    b.wrapper = lb_tests::lbd::with_only(&caps);
    b.spawn();
    let held = lb_tests::lbd::effective_capabilities(b.pid());
    assert_eq!(held, lb_tests::lbd::capability_names(&caps));
    assert!(b.log().contains("sysctl set") && b.log().contains("VIP added to lo"), "{}", b.log());
    let answer = site.net.client.run(|| lb_tests::topology::ask(Site::vip_addr(), "with three capabilities").expect("answered"));
    println!("lb backend with capabilities {caps}: {}", answer.text.trim());
    assert!(answer.text.starts_with("backend 0 "));
    drop(servers);
}
