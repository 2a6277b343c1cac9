//! End to end in network namespaces (see `lb_tests::topology`): real TCP from a client to a
//! VIP, balanced by the XDP program on the LB node's NIC and answered by the backends directly:
//! an IPv4 VIP over IPIP, an IPv6 VIP over IPv6-in-IPv6, and an IPv4 VIP over IPv4-in-IPv6.

use lb_common::stats::{Counter, DecapCounter};
use lb_tests::{
    packet::ip,
    require_root,
    topology::{ask, backend_addr, backend_addr6, expected_backend, LineConn, Site, CLIENT, CLIENT6, VIP, VIP6},
};

const CONNECTIONS: usize = 40;

/// Opens `CONNECTIONS` connections from `client` to the site's VIP, each answered by the backend
/// Maglev predicts (its own answer names it) and not through the LB node; checks the counters.
fn connections_reach_the_maglev_backend(site: &Site, client: &str) {
    let service = site.service();
    let answers =
        site.with_servers(|| (0..CONNECTIONS).map(|i| ask(service, &format!("request {i}")).expect("answered")).collect::<Vec<_>>());
    let mut per_backend = [0usize; 2];
    for (i, a) in answers.iter().enumerate() {
        let expected = expected_backend(site, client, a.local_port);
        let backend = (0..2).find(|&b| [backend_addr(b), backend_addr6(b)].iter().any(|r| ip(r) == expected)).unwrap();
        assert_eq!(a.text, format!("backend {backend} answered request {i} from {client}\n"), "Maglev's backend answers");
        per_backend[backend] += 1;
    }
    println!("{service}: answers per backend: {per_backend:?}");
    assert!(per_backend.iter().all(|&n| n > 0), "both backends served: {per_backend:?}");

    let stats = site.balancer.dp().vip_stats(site.vip.meta.vip_index).unwrap();
    println!("VIP stats after {CONNECTIONS} connections: {stats:?}");
    // One new flow per connection, and one more for each SYN the client had to send again (a
    // SYN remakes its flow's entry).
    let resent = site.net.client.run(|| snmp("Tcp", "RetransSegs"));
    assert!(
        (CONNECTIONS as u64..=CONNECTIONS as u64 + resent).contains(&stats.new_flows),
        "{} new flows for {CONNECTIONS} connections and {resent} resent segments",
        stats.new_flows
    );
    assert!(stats.conn_hits >= 2 * CONNECTIONS as u64, "later packets of a connection hit the table");
    let decapsulated: u64 = site.net.decaps.iter().map(|d| d.counter(DecapCounter::Decapsulated.name())).sum();
    assert_eq!(decapsulated, stats.packets, "every tunnelled packet was stripped by a backend");
    // DSR: the backends' answers (three or more packets a connection) do not pass the LB node,
    // whose program would count them as passed; what it passes is neighbour discovery.
    let passed = site.balancer.dp().counter(Counter::Pass).unwrap();
    assert!(passed < CONNECTIONS as u64, "the LB node passed {passed} frames: answers went through it");
}

#[test]
fn tcp_to_the_vip_is_answered_by_the_maglev_backend_directly() {
    require_root!();
    connections_reach_the_maglev_backend(&Site::new(2), CLIENT);
}

#[test]
fn tcp_to_an_ipv6_vip_reaches_ipv6_reals_over_ipv6_in_ipv6() {
    require_root!();
    connections_reach_the_maglev_backend(&Site::serving(2, VIP6, true), CLIENT6);
}

#[test]
fn tcp_to_an_ipv4_vip_reaches_ipv6_reals_over_ipv4_in_ipv6() {
    require_root!();
    connections_reach_the_maglev_backend(&Site::serving(2, VIP, true), CLIENT);
}

/// A 1 MB upload from the client to the site's VIP, every link at MTU 1500: the client's
/// full-size segments do not fit the tunnel, the balancer answers them with ICMP, the client's
/// kernel learns the path MTU (`path_mtu`) from that and the transfer completes.
fn a_megabyte_upload_completes(site: &Site, client: &str, path_mtu: u32) {
    const UPLOAD: usize = 1 << 20;
    let service = site.service();
    let request = format!("UPLOAD {}", "x".repeat(UPLOAD));
    let (answer, took) = site.with_servers(|| {
        let start = std::time::Instant::now();
        let mut conn = LineConn::connect(service).expect("connect");
        (conn.exchange(&request).expect("the upload is answered"), start.elapsed())
    });
    assert_eq!(answer, format!("backend 0 received {} bytes from {client}\n", request.len() + 1), "all of it arrived");
    let count = |c| site.balancer.dp().counter(c).unwrap();
    let (answered, dropped) = (count(Counter::IcmpTooBigSent), count(Counter::DropMtuExceeded));
    let route = site.net.client.ip(&["route", "get", &service.ip().to_string()]);
    let nstat = site.net.client.exec(&["nstat", "-az", "IcmpInDestUnreachs", "Icmp6InPktTooBigs", "TcpRetransSegs", "TcpExtTCPTimeouts"]);
    let client: Vec<(&str, u64)> = nstat
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?.parse().ok()?))
        })
        .collect();
    println!("{service}: {} bytes in {took:?}; balancer: too-big answers {answered}, dropped {dropped}", request.len() + 1);
    println!("  client: {client:?}; route: {}", route.split_whitespace().collect::<Vec<_>>().join(" "));
    let received: u64 = client.iter().filter(|(n, _)| n.starts_with("Icmp")).map(|(_, v)| v).sum();
    assert_eq!(received, answered, "the client's kernel got every answer");
    assert!(answered > 0, "the balancer answered the segments that did not fit");
    assert_eq!(dropped, 0, "nothing dropped silently");
    assert!(route.contains(&format!("mtu {path_mtu}")), "the client learned the path MTU: {route}");
}

#[test]
fn an_ipv4_upload_of_a_megabyte_completes_through_path_mtu_discovery() {
    require_root!();
    a_megabyte_upload_completes(&Site::new(1), CLIENT, 1480);
}

#[test]
fn an_ipv6_upload_of_a_megabyte_completes_through_path_mtu_discovery() {
    require_root!();
    a_megabyte_upload_completes(&Site::serving(1, VIP6, true), CLIENT6, 1460);
}

/// Counter `name` of `section` ("Icmp", "Tcp", ...) in /proc/net/snmp of the calling thread's
/// network namespace.
fn snmp(section: &str, name: &str) -> u64 {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("read snmp");
    let mut lines = snmp.lines().filter(|l| l.starts_with(&format!("{section}: ")));
    let (names, values) = (lines.next().expect("names"), lines.next().expect("values"));
    let column = names.split_whitespace().position(|n| n == name).unwrap_or_else(|| panic!("no {section} {name}"));
    values.split_whitespace().nth(column).expect("value").parse().expect("a number")
}

/// An all-zero echo request (identifier 0, sequence 0, no data), the input where an incremental
/// checksum update goes wrong, sent from the client's raw ICMP socket: the balancer answers it,
/// the reply reaches the socket with checksum 0xffff, and the client's kernel counts no checksum
/// error.
#[test]
fn an_all_zero_echo_request_is_answered_with_a_checksum_the_client_accepts() {
    use std::io::Read as _;

    use socket2::{Domain, Protocol, Socket, Type};

    require_root!();
    let site = Site::new(1);
    site.net.client.run(|| {
        let before = snmp("Icmp", "InCsumErrors");
        let mut socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).expect("raw ICMP socket");
        socket.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let request = [8, 0, 0xf7, 0xff, 0, 0, 0, 0]; // echo request; !0x0800 is the checksum
        let std::net::IpAddr::V4(vip) = ip(lb_tests::topology::VIP) else { unreachable!("an IPv4 VIP") };
        socket.send_to(&request, &std::net::SocketAddr::from((vip, 0)).into()).expect("send the echo request");
        // The raw socket sees every ICMP message the namespace gets, IP header first.
        let mut buf = [0u8; 1500];
        let reply = loop {
            let n = socket.read(&mut buf).expect("an echo reply within 2 s");
            let header_len = usize::from(buf[0] & 0x0f) * 4;
            if buf[12..16] == vip.octets() && buf[header_len] == 0 {
                break buf[header_len..n].to_vec();
            }
        };
        assert_eq!(reply, [0, 0, 0xff, 0xff, 0, 0, 0, 0], "echo reply, checksum 0xffff, id 0, seq 0");
        // Raw sockets get their copy before the ICMP layer checks the checksum: give it time.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(snmp("Icmp", "InCsumErrors"), before, "the client's kernel counted a bad ICMP checksum");
    });
}
