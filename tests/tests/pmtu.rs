//! Path MTU, in the kernel with BPF_PROG_TEST_RUN: a client's packet that would exceed `mtu`
//! once encapsulated is answered by the balancer (ICMP "fragmentation needed" for IPv4 with DF,
//! ICMPv6 "packet too big"), from the VIP, naming what fits the tunnel, quoting the packet's
//! start byte for byte; IPv4 without DF is dropped; the answers are rate limited per CPU.

use etherparse::{Ethernet2Header, Ipv4Header, Ipv6Header};
use lb_common::addr16;
use lb_common::{limits, stats::Counter, RateLimit};
use lb_tests::test_run::action_name;
use lb_tests::{
    fixture::{Balancer, MTU, TEST_RING_SIZE},
    packet::{icmpv4_checksum_ok, icmpv6_checksum_ok, ip, Frame, CLIENT_MAC, LB_MAC},
    require_root,
};
use lb_userspace::dataplane::DataplaneOps as _;

const TCP: u8 = 6;
const REALS4: [(&str, u32); 2] = [("10.1.0.1", 1), ("10.1.0.2", 1)];
const REALS6: [(&str, u32); 2] = [("fd00:1::1", 1), ("fd00:1::2", 1)];

/// A full-size TCP segment of a client on a 1500-byte link: 1500 bytes of IP packet (DF set).
fn full_size(src: &str, dst: &str) -> Frame {
    let headers = if ip(src).is_ipv4() { 20 + 20 } else { 40 + 20 };
    Frame::tcp(src, 40_000, dst, 80).payload(MTU as usize - headers)
}

/// Checks an ICMPv4 "fragmentation needed" answer to `input` (an IPv4 frame with `l2` bytes of
/// L2 header) from `vip` naming `mtu`; returns the ICMP message.
fn frag_needed(out: &lb_tests::test_run::TestRun, input: &[u8], l2: usize, vip: &str, mtu: u16) -> Vec<u8> {
    assert_eq!(action_name(out.action), "XDP_TX", "sent back");
    assert_eq!(out.data.len(), l2 + 576, "576 bytes of IP packet (RFC 1812)");
    let (eth, _) = Ethernet2Header::from_slice(&out.data).unwrap();
    assert_eq!((eth.destination, eth.source), (CLIENT_MAC, LB_MAC), "MACs swapped");
    assert_eq!(out.data[..l2][12..], input[..l2][12..], "EtherType (and VLAN tag) kept");
    let (h, icmp) = Ipv4Header::from_slice(&out.data[l2..]).unwrap();
    assert_eq!(
        (h.source, h.destination),
        (addr16(ip(vip))[12..].try_into().unwrap(), input[l2 + 12..l2 + 16].try_into().unwrap()),
        "from the VIP to the client"
    );
    assert_eq!((h.protocol.0, h.total_len, h.time_to_live), (1, 576, 64));
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
    assert_eq!((icmp[0], icmp[1]), (3, 4), "destination unreachable, fragmentation needed");
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), mtu, "next-hop MTU");
    assert!(icmpv4_checksum_ok(icmp), "ICMP checksum");
    assert_eq!(icmp[8..], input[l2..l2 + 548], "quotes the packet's first 548 bytes");
    icmp.to_vec()
}

#[test]
fn an_ipv4_packet_with_df_over_the_mtu_is_answered_with_fragmentation_needed() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    let input = full_size("192.0.2.1", "10.0.0.1").build();
    frag_needed(&lb.run(&input), &input, 14, "10.0.0.1", 1480);
    assert_eq!(lb.dp().counter(Counter::IcmpTooBigSent).unwrap(), 1);
    assert_eq!(lb.dp().vip_stats(0).unwrap().packets, 0, "nothing forwarded");
    // One byte less fits: forwarded as it is.
    let fits = Frame::tcp("192.0.2.1", 40_000, "10.0.0.1", 80).payload(1480 - 40).build();
    assert_eq!(lb.run(&fits).data.len(), fits.len() + 20, "1480 bytes go through IPIP");
}

#[test]
fn an_ipv4_vip_with_ipv6_reals_names_what_fits_ipv4_in_ipv6() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS6);
    let input = full_size("192.0.2.1", "10.0.0.1").build();
    frag_needed(&lb.run(&input), &input, 14, "10.0.0.1", 1460);
}

#[test]
fn a_vlan_tagged_packet_gets_its_answer_on_the_vlan() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    let input = full_size("192.0.2.1", "10.0.0.1").vlan(42).build();
    frag_needed(&lb.run(&input), &input, 18, "10.0.0.1", 1480);
}

#[test]
fn an_ipv6_packet_over_the_mtu_is_answered_with_packet_too_big() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("2001:db8::10", 80, TCP, 0, TEST_RING_SIZE, &REALS6);
    let input = full_size("2001:db8:c::1", "2001:db8::10").build();
    let out = lb.run(&input);
    assert_eq!(action_name(out.action), "XDP_TX", "sent back");
    assert_eq!(out.data.len(), 14 + 1280, "1280 bytes of IPv6 packet: its minimum MTU");
    let (eth, rest) = Ethernet2Header::from_slice(&out.data).unwrap();
    assert_eq!((eth.destination, eth.source), (CLIENT_MAC, LB_MAC), "MACs swapped");
    let (h, icmp) = Ipv6Header::from_slice(rest).unwrap();
    assert_eq!((h.source, h.destination), (addr16(ip("2001:db8::10")), addr16(ip("2001:db8:c::1"))), "from the VIP to the client");
    assert_eq!((h.next_header.0, h.payload_length, h.hop_limit), (58, 1240, 64));
    assert_eq!((icmp[0], icmp[1]), (2, 0), "packet too big");
    assert_eq!(u32::from_be_bytes(icmp[4..8].try_into().unwrap()), 1460, "MTU: 1500 less IPv6-in-IPv6");
    assert!(icmpv6_checksum_ok(h.source, h.destination, icmp), "ICMPv6 checksum");
    assert_eq!(icmp[8..], input[14..14 + 1232], "quotes the packet's first 1232 bytes");
    assert_eq!(lb.dp().counter(Counter::IcmpTooBigSent).unwrap(), 1);
}

#[test]
fn an_ipv4_packet_without_df_over_the_mtu_is_dropped_and_counted() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    let frame = full_size("192.0.2.1", "10.0.0.1").fragmentable();
    assert_eq!(action_name(lb.run(&frame.build()).action), "XDP_DROP");
    assert_eq!(lb.dp().counter(Counter::DropMtuExceeded).unwrap(), 1);
    assert_eq!(lb.dp().counter(Counter::IcmpTooBigSent).unwrap(), 0);
}

#[test]
fn answers_are_rate_limited_per_cpu() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    // 100 a second in bursts of 10: 30 packets at once get 10 answers.
    lb.dp_mut().set_rate_limit(limits::TOO_BIG, &RateLimit::per_sec(100)).unwrap();
    let input = full_size("192.0.2.1", "10.0.0.1").build();
    let sent = (0..30).filter(|_| lb.run(&input).action == 3).count();
    assert_eq!(sent, 10, "a burst's worth answered");
    assert_eq!(lb.dp().counter(Counter::IcmpTooBigSent).unwrap(), 10);
    assert_eq!(lb.dp().counter(Counter::DropTooBigSuppressed).unwrap(), 20, "the rest dropped and counted");
    // 0: never answer.
    lb.dp_mut().set_rate_limit(limits::TOO_BIG, &RateLimit::per_sec(0)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(action_name(lb.run(&input).action), "XDP_DROP");
    assert_eq!(lb.dp().counter(Counter::DropTooBigSuppressed).unwrap(), 21);
}
