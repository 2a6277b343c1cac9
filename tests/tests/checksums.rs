//! Every checksum the balancer writes, checked from scratch on random valid inputs, run in the
//! kernel with BPF_PROG_TEST_RUN: the outer IPv4 header of IPIP (to a real, and to a handoff
//! peer), the echo replies of both families (the IPv4 header after the TTL change, the ICMP
//! and ICMPv6 checksums after the type change), and the "too big" answers of both families. Inputs: random addresses, ports, identifiers,
//! sequence numbers, TTLs, TOS and IPv4 IDs, and payloads of random length (0 included) that are
//! random, all zero or all ones. The seed is fixed, so a failure repeats.

use etherparse::{Ethernet2Header, Ipv4Header, Ipv6Header};
use fastrand::Rng;
use lb_tests::test_run::action_name;
use lb_tests::{
    fixture::{Balancer, TEST_RING_SIZE},
    packet::{fold, icmpv4_checksum_ok, icmpv6_checksum_ok, ip, parse_encapsulated, sum16, Frame, Outer},
    require_root,
};

const TCP: u8 = 6;
const UDP: u8 = 17;
/// Inputs per path.
const CASES: usize = 3000;
const SEED: u64 = 0x1ba1_ce55;

/// A payload of random length (0 ..= 256) that is random, all zero or all ones.
fn payload(rng: &mut Rng) -> Vec<u8> {
    let len = if rng.u8(..) < 32 { 0 } else { rng.usize(..=256) };
    match rng.u8(..3) {
        0 => vec![0; len],
        1 => vec![0xff; len],
        _ => (0..len).map(|_| rng.u8(..)).collect(),
    }
}

fn v4(rng: &mut Rng) -> String {
    std::net::Ipv4Addr::from(rng.u32(..)).to_string()
}

fn v6(rng: &mut Rng) -> String {
    std::net::Ipv6Addr::from(rng.u128(..)).to_string()
}

/// Sets the IPv4 header's TOS and ID in a built frame and recomputes its checksum, so those
/// fields vary too (the packet builder leaves them 0).
fn vary_ipv4_header(frame: &mut [u8], rng: &mut Rng) {
    let ip = 14;
    frame[ip + 1] = rng.u8(..);
    frame[ip + 4..ip + 6].copy_from_slice(&rng.u16(..).to_be_bytes());
    fix_ipv4_checksum(frame);
}

/// The one's-complement sum of a whole IPv4 header, checksum included, is 0xffff.
fn ipv4_header_ok(header: &[u8]) -> bool {
    fold(sum16(header)) == 0xffff
}

#[test]
fn outer_ipv4_headers_verify_for_random_flows() {
    require_root!();
    let mut rng = Rng::with_seed(SEED);
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 0, TCP, 0, TEST_RING_SIZE, &[("10.1.0.1", 1), ("10.1.0.2", 1)]);
    lb.add_vip("10.0.0.1", 0, UDP, 0, TEST_RING_SIZE, &[("10.1.0.3", 1)]);
    lb.add_vip("10.0.0.2", 0, TCP, 0, TEST_RING_SIZE, &[("255.255.255.254", 1)]);
    for _ in 0..CASES {
        let (src, sport, dport) = (v4(&mut rng), rng.u16(..), rng.u16(..));
        let vip = if rng.bool() { "10.0.0.1" } else { "10.0.0.2" };
        let mut frame =
            if rng.bool() && vip == "10.0.0.1" { Frame::udp(&src, sport, vip, dport) } else { Frame::tcp(&src, sport, vip, dport) };
        frame.payload = payload(&mut rng);
        frame.ttl = rng.u8(1..);
        let mut input = frame.build();
        vary_ipv4_header(&mut input, &mut rng);
        let out = lb.run(&input);
        assert_eq!(action_name(out.action), "XDP_TX", "{frame:?}");
        let outer = &out.data[14..34];
        assert!(ipv4_header_ok(outer), "outer IPv4 checksum of {frame:?}: {outer:02x?}");
    }
}

#[test]
fn handoff_outer_ipv4_headers_verify_for_random_flows() {
    require_root!();
    let mut rng = Rng::with_seed(SEED + 1);
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 0, TCP, 0, TEST_RING_SIZE, &[("10.1.0.1", 1)]);
    lb.set_handoff(Some(ip("10.20.9.2")), &[ip("10.20.1.2"), ip("255.255.255.255")], false).unwrap();
    for _ in 0..CASES {
        // A mid-flow packet of a flow this node does not know: tunnelled to a peer.
        let mut frame = Frame::tcp(&v4(&mut rng), rng.u16(..), "10.0.0.1", rng.u16(..));
        frame.payload = payload(&mut rng);
        let mut input = frame.build();
        vary_ipv4_header(&mut input, &mut rng);
        let out = lb.run(&input);
        assert_eq!(action_name(out.action), "XDP_TX", "{frame:?}");
        let e = parse_encapsulated(&out.data);
        assert!(matches!(e.outer, Outer::V4(_)) && e.outer.src() == ip("10.20.9.2"), "a handoff: {:?}", e.outer);
        assert!(ipv4_header_ok(&out.data[14..34]), "handoff outer IPv4 checksum of {frame:?}");
    }
    assert_eq!(lb.dp().counter(lb_common::stats::Counter::HandoffSent).unwrap(), CASES as u64);
}

#[test]
fn echo_replies_verify_for_random_requests_of_both_families() {
    require_root!();
    let mut rng = Rng::with_seed(SEED + 2);
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &[("10.1.0.1", 1)]);
    lb.add_vip("2001:db8::10", 80, TCP, 0, TEST_RING_SIZE, &[("fd00:1::1", 1)]);
    // Thousands of pings at once: over the default echo limit (tests/tests/icmp.rs tests it).
    use lb_userspace::dataplane::DataplaneOps as _;
    lb.dp_mut().set_rate_limit(lb_common::limits::ECHO, &lb_common::RateLimit::per_sec(u32::MAX)).unwrap();
    let mut all_zero = 0;
    for _ in 0..CASES {
        let (id, seq) = if rng.u8(..) < 32 { (0, 0) } else { (rng.u16(..), rng.u16(..)) };
        let mut frame = Frame::echo_ids(&v4(&mut rng), "10.0.0.1", id, seq);
        frame.payload = payload(&mut rng);
        if (id, seq) == (0, 0) && frame.payload.iter().all(|&b| b == 0) {
            all_zero += 1; // the reply is all zero but its checksum: the RFC 1624 edge
        }
        frame.ttl = rng.u8(1..);
        let mut input = frame.build();
        vary_ipv4_header(&mut input, &mut rng);
        let out = lb.run(&input);
        assert_eq!(action_name(out.action), "XDP_TX", "{frame:?}");
        let (_, rest) = Ethernet2Header::from_slice(&out.data).unwrap();
        let (h, icmp) = Ipv4Header::from_slice(rest).unwrap();
        assert_eq!(icmp[0], 0, "an echo reply");
        assert!(ipv4_header_ok(&rest[..20]), "IPv4 checksum of the reply to {frame:?} (TTL {} -> {})", frame.ttl, h.time_to_live);
        assert!(icmpv4_checksum_ok(icmp), "ICMP checksum of the reply to {frame:?}: {icmp:02x?}");

        let (id, seq) = if rng.u8(..) < 32 { (0, 0) } else { (rng.u16(..), rng.u16(..)) };
        let mut frame = Frame::echo_ids(&v6(&mut rng), "2001:db8::10", id, seq);
        frame.payload = payload(&mut rng);
        frame.ttl = rng.u8(1..);
        let out = lb.run(&frame.build());
        assert_eq!(action_name(out.action), "XDP_TX", "{frame:?}");
        let (_, rest) = Ethernet2Header::from_slice(&out.data).unwrap();
        let (h, icmp) = Ipv6Header::from_slice(rest).unwrap();
        assert_eq!(icmp[0], 129, "an echo reply");
        assert!(icmpv6_checksum_ok(h.source, h.destination, icmp), "ICMPv6 checksum of the reply to {frame:?}: {icmp:02x?}");
    }
    assert_eq!(lb.dp().counter(lb_common::stats::Counter::IcmpEchoReplied).unwrap(), 2 * CASES as u64);
    println!("{all_zero} of {CASES} IPv4 echo requests had an all-zero message");
    assert!(all_zero > 50, "the inputs hit the all-zero edge {all_zero} times");
}

#[test]
fn too_big_answers_verify_for_random_packets_of_both_families() {
    require_root!();
    let mut rng = Rng::with_seed(SEED + 3);
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 0, TCP, 0, TEST_RING_SIZE, &[("10.1.0.1", 1)]);
    lb.add_vip("2001:db8::10", 0, TCP, 0, TEST_RING_SIZE, &[("fd00:1::1", 1)]);
    // No rate limit in the way.
    lb_userspace::dataplane::DataplaneOps::set_rate_limit(
        lb.dp_mut(),
        lb_common::limits::TOO_BIG,
        &lb_common::RateLimit::per_sec(1_000_000),
    )
    .unwrap();
    for _ in 0..CASES {
        // IPv4 with DF, 1481 ..= 1500 bytes: over 1500 once in IPIP.
        let len = rng.usize(1481..=1500);
        let mut frame = Frame::tcp(&v4(&mut rng), rng.u16(..), "10.0.0.1", rng.u16(..));
        frame.payload = payload_of(&mut rng, len - 40);
        frame.ttl = rng.u8(1..);
        let mut input = frame.build();
        vary_ipv4_header(&mut input, &mut rng);
        input[14 + 6] |= 0x40; // DF, whatever vary_ipv4_header left
        fix_ipv4_checksum(&mut input);
        let out = lb.run(&input);
        assert_eq!(out.data.len(), 14 + 576, "an answer to {frame:?}");
        assert!(ipv4_header_ok(&out.data[14..34]), "IPv4 checksum of the answer to {frame:?}");
        assert!(icmpv4_checksum_ok(&out.data[34..]), "ICMP checksum of the answer to {frame:?}");

        let len = rng.usize(1461..=1500);
        let mut frame = Frame::tcp(&v6(&mut rng), rng.u16(..), "2001:db8::10", rng.u16(..));
        frame.payload = payload_of(&mut rng, len - 60);
        let out = lb.run(&frame.build());
        assert_eq!(out.data.len(), 14 + 1280, "an answer to {frame:?}");
        let (h, icmp) = Ipv6Header::from_slice(&out.data[14..]).unwrap();
        assert!(icmpv6_checksum_ok(h.source, h.destination, icmp), "ICMPv6 checksum of the answer to {frame:?}");
    }
    assert_eq!(lb.dp().counter(lb_common::stats::Counter::IcmpTooBigSent).unwrap(), 2 * CASES as u64);
}

/// `len` payload bytes: random, all zero or all ones.
fn payload_of(rng: &mut Rng, len: usize) -> Vec<u8> {
    match rng.u8(..3) {
        0 => vec![0; len],
        1 => vec![0xff; len],
        _ => (0..len).map(|_| rng.u8(..)).collect(),
    }
}

fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ip = 14;
    frame[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    let check = !fold(sum16(&frame[ip..ip + 20]));
    frame[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
}
