//! End to end in network namespaces (see `lb_tests::topology`): real TCP from a client to the
//! VIP, balanced by the XDP program on the LB node's NIC and answered by the backends directly.

use lb_common::stats::DecapCounter;
use lb_tests::{
    packet::ip,
    require_root,
    topology::{ask, backend_addr, expected_backend, Site, CLIENT},
};

const CONNECTIONS: usize = 40;

#[test]
fn tcp_to_the_vip_is_answered_by_the_maglev_backend_directly() {
    require_root!();
    let site = Site::new(2);
    let answers = site.with_servers(|| {
        (0..CONNECTIONS).map(|i| ask(Site::vip_addr(), &format!("request {i}")).expect("answered")).collect::<Vec<_>>()
    });
    let mut per_backend = [0usize; 2];
    for (i, a) in answers.iter().enumerate() {
        let backend = (0..2).find(|&b| ip(&backend_addr(b)) == expected_backend(&site, a.local_port)).unwrap();
        assert_eq!(a.text, format!("backend {backend} answered request {i} from {CLIENT}\n"), "Maglev's backend answers");
        per_backend[backend] += 1;
    }
    println!("answers per backend: {per_backend:?}");
    assert!(per_backend.iter().all(|&n| n > 0), "both backends served: {per_backend:?}");

    let stats = site.balancer.dp.vip_stats(site.vip.meta.vip_index).unwrap();
    println!("VIP stats after {CONNECTIONS} connections: {stats:?}");
    assert_eq!(stats.new_flows, CONNECTIONS as u64, "one new flow per connection");
    assert!(stats.conn_hits >= 2 * CONNECTIONS as u64, "later packets of a connection hit the table");
    let decapsulated: u64 = site.net.decaps.iter().map(|d| d.decap_counter(DecapCounter::Decapsulated).unwrap()).sum();
    assert_eq!(decapsulated, stats.packets, "every tunnelled packet was stripped by a backend");
}

/// `IcmpInCsumErrors` of the calling thread's network namespace.
fn icmp_in_csum_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("read snmp");
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp: "));
    let (names, values) = (icmp.next().expect("Icmp names"), icmp.next().expect("Icmp values"));
    let column = names.split_whitespace().position(|n| n == "InCsumErrors").expect("InCsumErrors column");
    values.split_whitespace().nth(column).expect("InCsumErrors value").parse().expect("a number")
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
        let before = icmp_in_csum_errors();
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
        assert_eq!(icmp_in_csum_errors(), before, "the client's kernel counted a bad ICMP checksum");
    });
}
