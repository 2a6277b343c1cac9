//! `lb` announces servable VIPs through a real BIRD on the LB node to a BIRD upstream router,
//! and withdraws them when it cannot serve, on `lb site drain`, and on exit.

use std::time::Duration;

use lb_tests::{
    bird::{edge_config, wait_for, Bird},
    lbd::{metric, LbDaemon},
    require_root,
    topology::{ask, backend_addr, Net, Site, VIP},
};

/// Whether the router's kernel routes the VIP to the LB node (learned over BGP).
fn routed(net: &Net) -> bool {
    net.router.ip(&["route", "show", &format!("{VIP}/32")]).contains("via 10.10.2.2")
}

/// BGP for the one site of a `Net`: BIRD on the router (the VIP's only route now comes from it)
/// and on the LB node, and the include file lb owns; removed on drop.
struct Bgp {
    router: Bird,
    edge: Option<Bird>,
    edge_conf: String,
    include: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Bgp {
    /// `bfd`: run BFD (100 ms x 3) on both sides of the session.
    fn start(net: &Net, bfd: bool) -> Self {
        Self::start_edited(net, bfd, |conf| conf)
    }

    /// As `start`, with both BIRD configs passed through `edit` first.
    fn start_edited(net: &Net, bfd: bool, edit: fn(String) -> String) -> Self {
        net.router.ip(&["route", "del", &format!("{VIP}/32")]);
        let mut router_conf = edit(std::fs::read_to_string(lb_tests::bird::config_dir().join("e2e/router.conf")).unwrap());
        if bfd {
            router_conf = router_conf.replace("  connect retry time 1;", "  connect retry time 1;\n  bfd on;")
                + "protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }\n";
        }
        let router = Bird::start(&net.router, "router", &router_conf);
        let dir = std::env::temp_dir().join(format!("lbt-bgp-{}", net.lb.name));
        std::fs::create_dir_all(&dir).unwrap();
        let include = dir.join("vips.conf");
        // BIRD starts before lb: the include must exist (empty) from the start.
        std::fs::write(&include, lb_userspace::bgp::bird::render(&[])).unwrap();
        let mut edge_conf = edit(edge_config("10.10.2.2", 65001, "10.10.2.1", 65000, &include));
        if bfd {
            edge_conf = lb_tests::bird::with_bfd(&edge_conf);
        }
        let edge = Some(Bird::start(&net.lb, "edge", &edge_conf));
        Self { router, edge, edge_conf, include, dir }
    }

    /// lb's config: one VIP over `backends` backends, checks every 100 ms, this BIRD.
    fn lb_config(&self, backends: usize) -> String {
        let socket = self.edge.as_ref().expect("edge BIRD").socket.display().to_string();
        let mut config = format!(
            "[[interface]]\nname = \"lb0\"\n[forwarding]\nnext_hop_mac = \"02:00:00:00:00:03\"\n\
             [health]\ninterval_ms = 100\ntimeout_ms = 80\nrise = 2\nfall = 2\n\
             [bgp]\nbird_socket = \"{socket}\"\ninclude_file = \"{}\"\n\
             [[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 8080\nprotocol = \"tcp\"\nmin_healthy = 1\n",
            self.include.display()
        );
        for i in 0..backends {
            config += &format!("[[vip.real]]\naddress = \"{}\"\n", backend_addr(i));
        }
        config
    }

    /// Stops the LB node's BIRD (killed: its session closes).
    fn stop_edge(&mut self) {
        self.edge = None;
    }

    fn start_edge(&mut self, net: &Net) {
        self.edge = Some(Bird::start(&net.lb, "edge", &self.edge_conf));
    }
}

impl Drop for Bgp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn vip_is_announced_while_servable_and_withdrawn_otherwise() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(2);
    let bgp = Bgp::start(&net, false);
    let router_bird = &bgp.router;
    let servers = net.servers();
    let mut d = LbDaemon::start(&net.lb, &bgp.lb_config(2));
    let took = wait_for(Duration::from_secs(20), "the VIP route at the router", || routed(&net));
    println!("announced: route at the router {took:?} after lb came up");
    assert!(router_bird.birdc("show route").contains(&format!("{VIP}/32")), "{}", router_bird.birdc("show route"));
    assert!(d.status()[0].announced);
    let answers = net.client.run(|| (0..10).map(|i| ask(Site::vip_addr(), &format!("r{i}")).is_ok()).filter(|ok| *ok).count());
    assert_eq!(answers, 10, "served through the BGP route");

    // All backends down: the VIP is not servable, so it is withdrawn.
    servers.stop(0);
    servers.stop(1);
    let took = wait_for(Duration::from_secs(10), "withdrawal after all backends failed", || !routed(&net));
    println!("all backends down: route gone from the router after {took:?}");
    assert!(!d.status()[0].announced);
    assert!(d.metrics().contains("lb_bgp_announced{vip=\"web\"} 0"));
    drop(servers);

    // Backends back: announced again.
    let _servers = net.servers();
    let took = wait_for(Duration::from_secs(10), "the route back", || routed(&net));
    println!("backends back: route at the router after {took:?}");

    // Maintenance: withdrawn, while lb keeps its state and forwarding.
    assert!(d.cli(&["site", "drain"]).status.success());
    let took = wait_for(Duration::from_secs(10), "withdrawal on site drain", || !routed(&net));
    println!("site drain: route gone after {took:?}");
    assert!(d.status()[0].reals.iter().all(|r| r.up), "reals stay up while drained");
    assert!(d.metrics().contains("lb_site_drained 1"));
    assert!(d.cli(&["site", "undrain"]).status.success());
    wait_for(Duration::from_secs(10), "the route after undrain", || routed(&net));

    // lb stops: withdrawn before it exits.
    d.terminate();
    wait_for(Duration::from_secs(10), "withdrawal when lb exits", || !routed(&net));
    assert!(d.log().contains("every VIP withdrawn before exit"), "{}", d.log());
}

/// The node's BIRD frozen longer than the hold time (3 s), then thawed. With the shipped
/// `error wait time 1, 30` the route is back within seconds; with BIRD's default (60, 300) the
/// router still has no route 20 s later, and `lb doctor` names the session that is down.
#[test]
fn a_session_error_heals_in_seconds_with_the_shipped_error_wait() {
    require_root!();
    let _serial = lb_tests::serial();
    fn without_error_wait(conf: String) -> String {
        conf.lines().filter(|l| !l.trim_start().starts_with("error wait time")).collect::<Vec<_>>().join("\n") + "\n"
    }
    for shipped in [true, false] {
        let net = Net::new(1);
        let bgp = if shipped { Bgp::start(&net, false) } else { Bgp::start_edited(&net, false, without_error_wait) };
        let _servers = net.servers();
        let d = LbDaemon::start(&net.lb, &bgp.lb_config(1));
        wait_for(Duration::from_secs(20), "the VIP route", || routed(&net));
        let edge = bgp.edge.as_ref().expect("edge BIRD");
        edge.freeze();
        let gone = wait_for(Duration::from_secs(10), "the route to go with the hold timer", || !routed(&net));
        std::thread::sleep(Duration::from_secs(1));
        edge.thaw();
        let thawed = std::time::Instant::now();
        let mut back = None;
        while thawed.elapsed() < Duration::from_secs(20) {
            if routed(&net) {
                back = Some(thawed.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let label = if shipped { "shipped error wait 1, 30" } else { "BIRD's default error wait" };
        println!("{label}: route gone {gone:?} after the freeze; back {back:?} after the thaw");
        if shipped {
            assert!(back.is_some_and(|t| t < Duration::from_secs(10)), "{label}: {back:?}\n{}", bgp.router.log());
        } else {
            assert_eq!(back, None, "{label}: the route came back");
            let doctor = String::from_utf8_lossy(&d.cli(&["doctor", "--window-ms", "100"]).stdout).into_owned();
            println!("{doctor}");
            assert!(doctor.contains("bgp_session_down") && doctor.contains("BGP session upstream"), "{doctor}");
            assert_eq!(metric(&d.metrics(), "lb_bgp_session_established{protocol=\"upstream\"}"), 0.0);
        }
    }
}

#[test]
fn lb_keeps_forwarding_while_bird_is_down_and_catches_up_when_it_returns() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(2);
    let mut bgp = Bgp::start(&net, false);
    let servers = net.servers();
    let d = LbDaemon::start(&net.lb, &bgp.lb_config(2));
    wait_for(Duration::from_secs(20), "the VIP route", || routed(&net));

    bgp.stop_edge(); // BIRD dies; its session goes, so does the route
    wait_for(Duration::from_secs(10), "the route to go with BIRD", || !routed(&net));
    // A change lb must tell BIRD about while BIRD is down: the VIP becomes unservable.
    servers.stop(0);
    servers.stop(1);
    wait_for(Duration::from_secs(10), "lb to count BIRD errors", || metric(&d.metrics(), "lb_bird_errors_total") >= 2.0);
    assert!(d.log().contains("BIRD did not take the announcements"), "{}", d.log());
    assert!(d.status()[0].reals.iter().all(|r| !r.up), "lb itself carries on with health checks");

    bgp.start_edge(&net);
    wait_for(Duration::from_secs(10), "lb to reach BIRD again", || d.log().contains("BGP announcements updated announced= drained=false"));
    let errors = metric(&d.metrics(), "lb_bird_errors_total");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(metric(&d.metrics(), "lb_bird_errors_total"), errors, "no more errors once BIRD is back");
    assert!(!routed(&net), "the unservable VIP stays withdrawn");
    drop(servers);
    let _servers = net.servers();
    let took = wait_for(Duration::from_secs(20), "the route once the backends return", || routed(&net));
    println!("backends back with BIRD running again: route at the router after {took:?}");
    assert!(d.status()[0].announced);
}

#[test]
fn with_bfd_a_crashed_node_leaves_the_router_within_a_second() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(1);
    let bgp = Bgp::start(&net, true);
    let _servers = net.servers();
    let _d = LbDaemon::start(&net.lb, &bgp.lb_config(1));
    wait_for(Duration::from_secs(20), "the VIP route", || routed(&net));
    wait_for(Duration::from_secs(10), "BFD up", || bgp.router.birdc("show bfd sessions").contains("Up"));
    // Frozen, not killed: a killed BIRD's TCP session closes at once and tells the router; a
    // crashed node tells nothing, and only BFD (or the 3 s hold timer) notices.
    bgp.edge.as_ref().expect("edge BIRD").freeze();
    let took = wait_for(Duration::from_secs(10), "the route to go", || !routed(&net));
    println!("node frozen (BIRD stopped): route gone from the router after {took:?} (hold time 3 s without BFD)");
    assert!(took < Duration::from_secs(1), "BFD detects within a second: {took:?}");
    assert!(took > Duration::from_millis(100), "detected by BFD's timers, not by a closed session: {took:?}");
}

/// `lb run` with only the capabilities the systemd unit grants (uid 0, everything else out of
/// its bounding set, no new privileges): it loads and attaches the programs, forwards, and
/// announces through BIRD, and its effective set is exactly those.
#[test]
fn lb_runs_with_only_the_capabilities_the_unit_grants() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(2);
    let bgp = Bgp::start(&net, false);
    let _servers = net.servers();
    let caps = lb_tests::lbd::unit_capabilities("anycast-lb.service");
    let wrapper = lb_tests::lbd::with_only(&caps);
    let d = LbDaemon::start_wrapped(&net.lb, &bgp.lb_config(2), &wrapper);
    let held = lb_tests::lbd::effective_capabilities(d.pid());
    let took = wait_for(Duration::from_secs(20), "the VIP route at the router", || routed(&net));
    let answers = net.client.run(|| (0..10).filter(|i| ask(Site::vip_addr(), &format!("r{i}")).is_ok()).count());
    println!("lb with capabilities {caps} (held: {}): route at the router after {took:?}, {answers}/10 answered", held.join(","));
    assert_eq!(answers, 10, "forwarded");
    assert!(d.status()[0].announced);
    assert_eq!(held, lb_tests::lbd::capability_names(&caps));
}
