//! ICMP to a VIP: echo answered by the balancer, "fragmentation needed" / "packet too big"
//! forwarded to the real of the quoted flow, everything else to the kernel.

use etherparse::{Ethernet2Header, Ipv4Header, Ipv6Header};
use lb_common::{limits, stats::Counter, RateLimit};
use lb_tests::test_run::action_name;
use lb_tests::{
    expect::{encapsulated_to, passed_untouched},
    fixture::{Balancer, TEST_RING_SIZE},
    packet::{icmp_too_big, icmpv4_checksum_ok, icmpv6_checksum_ok, ip, Frame, CLIENT_MAC, LB_MAC},
    require_root,
};
use lb_userspace::dataplane::DataplaneOps as _;

const TCP: u8 = 6;
const REALS4: [(&str, u32); 3] = [("10.1.0.1", 1), ("10.1.0.2", 1), ("10.1.0.3", 1)];
const REALS6: [(&str, u32); 3] = [("fd00:1::1", 1), ("fd00:1::2", 1), ("fd00:1::3", 1)];

#[test]
fn echo_request_to_an_ipv4_vip_is_answered() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    let out = lb.run(&Frame::echo("192.0.2.1", "10.0.0.1").ttl(5).build());
    assert_eq!(action_name(out.action), "XDP_TX");
    let (eth, rest) = Ethernet2Header::from_slice(&out.data).unwrap();
    assert_eq!((eth.destination, eth.source), (CLIENT_MAC, LB_MAC), "MACs swapped");
    let (h, icmp) = Ipv4Header::from_slice(rest).unwrap();
    assert_eq!((h.source, h.destination), ([10, 0, 0, 1], [192, 0, 2, 1]), "addresses swapped");
    assert_eq!(h.time_to_live, 64);
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
    assert_eq!(icmp[0], 0, "echo reply");
    assert!(icmpv4_checksum_ok(icmp), "ICMP checksum");
    assert_eq!(&icmp[4..], &Frame::echo("192.0.2.1", "10.0.0.1").build()[14 + 20 + 4..], "id, seq, data kept");
    assert_eq!(lb.dp().counter(Counter::IcmpEchoReplied).unwrap(), 1);
}

/// The input where an incremental update (RFC 1624 equation 3) writes 0x0000: an all-zero echo
/// message (identifier 0, sequence 0, no data). Only 0xffff verifies there.
#[test]
fn echo_reply_to_an_all_zero_request_carries_a_checksum_that_verifies() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    let out = lb.run(&Frame::echo_ids("192.0.2.1", "10.0.0.1", 0, 0).payload(0).build());
    assert_eq!(action_name(out.action), "XDP_TX");
    let icmp = &out.data[14 + 20..];
    assert_eq!(icmp, [0, 0, 0xff, 0xff, 0, 0, 0, 0], "an echo reply, checksum 0xffff, id 0, seq 0, no data");
    assert!(icmpv4_checksum_ok(icmp), "the one's-complement sum over the message is 0xffff");
}

#[test]
fn echo_request_to_an_ipv6_vip_is_answered() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("2001:db8::10", 443, TCP, 0, TEST_RING_SIZE, &REALS6);
    let out = lb.run(&Frame::echo("2001:db8:c::1", "2001:db8::10").build());
    assert_eq!(action_name(out.action), "XDP_TX");
    let (eth, rest) = Ethernet2Header::from_slice(&out.data).unwrap();
    assert_eq!((eth.destination, eth.source), (CLIENT_MAC, LB_MAC));
    let (h, icmp) = Ipv6Header::from_slice(rest).unwrap();
    assert_eq!(h.source, lb_common::addr16(ip("2001:db8::10")));
    assert_eq!(h.destination, lb_common::addr16(ip("2001:db8:c::1")));
    assert_eq!(icmp[0], 129, "echo reply");
    assert!(icmpv6_checksum_ok(h.source, h.destination, icmp), "ICMPv6 checksum");
}

#[test]
fn frag_needed_with_a_short_quote_reaches_the_real_of_the_flow() {
    require_root!();
    let mut lb = Balancer::new();
    let mut vip = lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    // Establish flows, then change the ring: the error must follow the connection table.
    let flows: Vec<Frame> = (0..30).map(|p| Frame::tcp("192.0.2.1", 40_000 + p, "10.0.0.1", 80)).collect();
    let reals: Vec<_> = flows.iter().map(|f| lb.expected_real(&vip, f)).collect();
    for f in &flows {
        lb.run(&f.build());
    }
    lb.set_reals(&mut vip, &[REALS4[0], REALS4[1], REALS4[2], ("10.1.0.4", 1), ("10.1.0.5", 1)]);
    for (p, real) in (0..30).zip(&reals) {
        let err = icmp_too_big("198.51.100.1", "10.0.0.1", ("10.0.0.1", 80), ("192.0.2.1", 40_000 + p), 8);
        encapsulated_to(&lb.run(&err), &err, 14, *real);
    }
    // A flow the table does not know goes where Maglev would send it.
    let f = Frame::tcp("192.0.2.2", 555, "10.0.0.1", 80);
    let err = icmp_too_big("198.51.100.1", "10.0.0.1", ("10.0.0.1", 80), ("192.0.2.2", 555), 8);
    encapsulated_to(&lb.run(&err), &err, 14, lb.expected_real(&vip, &f));
    assert_eq!(lb.dp().counter(Counter::IcmpToReal).unwrap(), 31);
    assert_eq!(lb.dp().conn_real(&lb_tests::fixture::flow_of(&f)).unwrap(), None, "an error makes no entry");
}

#[test]
fn packet_too_big_with_a_short_quote_reaches_the_real_of_the_flow() {
    require_root!();
    let mut lb = Balancer::new();
    let vip = lb.add_vip("2001:db8::10", 443, TCP, 0, TEST_RING_SIZE, &REALS6);
    for p in 0..20 {
        let f = Frame::tcp("2001:db8:c::1", 50_000 + p, "2001:db8::10", 443);
        let err = icmp_too_big("2001:db8:ff::1", "2001:db8::10", ("2001:db8::10", 443), ("2001:db8:c::1", 50_000 + p), 8);
        encapsulated_to(&lb.run(&err), &err, 14, lb.expected_real(&vip, &f));
    }
}

#[test]
fn icmp_error_quoting_too_little_is_dropped() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    let err = icmp_too_big("198.51.100.1", "10.0.0.1", ("10.0.0.1", 80), ("192.0.2.1", 1), 3);
    assert_eq!(action_name(lb.run(&err).action), "XDP_DROP");
    assert_eq!(lb.dp().counter(Counter::DropBadIcmp).unwrap(), 1);
}

#[test]
fn other_icmp_to_a_vip_goes_to_the_kernel() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    // Port unreachable (3/3) and an echo reply: not ours to handle.
    let mut unreachable = icmp_too_big("198.51.100.1", "10.0.0.1", ("10.0.0.1", 80), ("192.0.2.1", 1), 8);
    let icmp = 14 + 20;
    unreachable[icmp + 1] = 3; // the balancer does not read the ICMP checksum
    passed_untouched(&lb.run(&unreachable), &unreachable);
    // An error about a flow of no VIP (quoted source port 81) also goes to the kernel.
    let other = icmp_too_big("198.51.100.1", "10.0.0.1", ("10.0.0.1", 81), ("192.0.2.1", 1), 8);
    passed_untouched(&lb.run(&other), &other);
}

/// Echo replies are rate limited per CPU (a spoofed ping flood is not reflected 1:1): a burst's
/// worth answered, the rest dropped and counted; with a limit that never bites, all answered.
#[test]
fn echo_replies_are_rate_limited_per_cpu() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    let ping = Frame::echo("192.0.2.1", "10.0.0.1").build();
    // 100 a second in bursts of 10: 30 pings at once get 10 answers.
    lb.dp_mut().set_rate_limit(limits::ECHO, &RateLimit::per_sec(100)).unwrap();
    let answered = (0..30).filter(|_| action_name(lb.run(&ping).action) == "XDP_TX").count();
    assert_eq!(answered, 10);
    assert_eq!(lb.dp().counter(Counter::DropEchoSuppressed).unwrap(), 20);
    lb.dp_mut().set_rate_limit(limits::ECHO, &RateLimit::per_sec(1_000_000)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300)); // the earlier burst's debt runs out
    let answered = (0..30).filter(|_| action_name(lb.run(&ping).action) == "XDP_TX").count();
    assert_eq!(answered, 30, "a limit that does not bite answers every ping");
}
