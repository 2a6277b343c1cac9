//! Cross-site handoff in the balancer, run in the kernel with BPF_PROG_TEST_RUN: a mid-flow TCP
//! packet of an unknown flow goes to a peer; a peer's handoff is forwarded when the flow is
//! known (or adopted) and returned when not; a returned one is balanced here.

use lb_common::{stats::Counter, HANDOFF_REQUEST, HANDOFF_RETURN, REAL_ID_PEER};
use lb_tests::test_run::action_name;
use lb_tests::{
    expect::{encapsulated_to, passed_untouched},
    fixture::{flow_of, Balancer, Vip, TEST_RING_SIZE},
    packet::{ip, parse_encapsulated, tunnel, Encapsulated, Frame, Outer, LB_MAC, ROUTER_MAC},
    require_root,
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const REALS4: [(&str, u32); 3] = [("10.1.0.1", 1), ("10.1.0.2", 1), ("10.1.0.3", 1)];
const NODE: &str = "10.20.9.2";
const PEERS: [&str; 2] = ["10.20.1.2", "10.20.2.2"];

fn balancer(adopt: bool) -> (Balancer, Vip) {
    let mut lb = Balancer::new();
    let vip = lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    lb.add_vip("10.0.0.1", 53, UDP, 0, TEST_RING_SIZE, &REALS4);
    lb.set_handoff(Some(ip(NODE)), &PEERS.map(ip), adopt).expect("set handoff");
    (lb, vip)
}

/// Asserts `out` is `inner` (a client frame) tunnelled from our node to `to` with marker `id`.
fn tunnelled_to(out: &lb_tests::test_run::TestRun, inner: &Frame, from: &str, to: &str, id: u32) -> Encapsulated {
    assert_eq!(action_name(out.action), "XDP_TX", "verdict");
    let e = parse_encapsulated(&out.data);
    assert_eq!((e.eth.destination, e.eth.source), (ROUTER_MAC, LB_MAC), "to the next hop, from our MAC");
    assert_eq!((e.outer.src(), e.outer.dst()), (ip(from), ip(to)), "outer addresses");
    match &e.outer {
        Outer::V4(h) => {
            assert_eq!(h.identification as u32, id, "IPv4 ID marks request / return");
            assert_eq!(h.header_checksum, h.calc_header_checksum(), "outer checksum");
        }
        Outer::V6(h) => assert_eq!(h.flow_label.value(), id, "flow label marks request / return"),
    }
    assert_eq!(e.inner, inner.build()[inner.l2_len()..], "inner packet byte-identical");
    e
}

#[test]
fn mid_flow_packet_of_an_unknown_flow_goes_to_a_peer_and_opening_packets_stay() {
    require_root!();
    let (lb, vip) = balancer(false);
    let mut peers_used = std::collections::HashSet::new();
    for port in 0..40 {
        let ack = Frame::tcp("192.0.2.1", 20_000 + port, "10.0.0.1", 80);
        let e = tunnelled_to(&lb.run(&ack.build()), &ack, NODE, &peer_of(&ack), HANDOFF_REQUEST);
        peers_used.insert(e.outer.dst());
        let entry = lb.dp().conn_real(&flow_of(&ack)).unwrap();
        assert_eq!(entry, Some(REAL_ID_PEER), "a handoff's entry names no real, only the peer's claim");
    }
    assert_eq!(peers_used.len(), 2, "flows spread over both peers");
    assert_eq!(lb.dp().counter(Counter::HandoffSent).unwrap(), 40);

    // A SYN opens the flow here; its later packets follow the connection table, not a peer.
    let syn = Frame::tcp("192.0.2.1", 30_000, "10.0.0.1", 80).syn();
    let input = syn.build();
    let real = lb.expected_real(&vip, &syn);
    encapsulated_to(&lb.run(&input), &input, 14, real);
    let ack = Frame::tcp("192.0.2.1", 30_000, "10.0.0.1", 80);
    let input = ack.build();
    encapsulated_to(&lb.run(&input), &input, 14, real);

    // UDP has no connection start to tell: always balanced here.
    let udp = Frame::udp("192.0.2.1", 4000, "10.0.0.1", 53);
    let input = udp.build();
    let real = lb.expected_real(&vip, &udp);
    encapsulated_to(&lb.run(&input), &input, 14, real);
    assert_eq!(lb.dp().counter(Counter::HandoffSent).unwrap(), 40, "nothing else was handed off");

    // One peer left (the other failed its checks): every handoff goes to it.
    let mut lb = lb;
    lb.set_handoff_with_sources(Some(ip(NODE)), &[ip(PEERS[1])], &PEERS.map(ip), false).unwrap();
    for port in 0..10 {
        let ack = Frame::tcp("192.0.2.1", 21_000 + port, "10.0.0.1", 80);
        tunnelled_to(&lb.run(&ack.build()), &ack, NODE, PEERS[1], HANDOFF_REQUEST);
    }

    // No peers up: mid-flow packets are balanced here like before.
    lb.set_handoff(Some(ip(NODE)), &[], false).unwrap();
    let ack = Frame::tcp("192.0.2.1", 30_001, "10.0.0.1", 80);
    let input = ack.build();
    encapsulated_to(&lb.run(&input), &input, 14, lb.expected_real(&vip, &ack));
}

/// The peer the data plane picks for a flow: by the flow's hash over the peers list.
fn peer_of(frame: &Frame) -> String {
    let hash = lb_common::hash::flow_hash(&lb_tests::fixture::flow_of(frame));
    PEERS[(hash % PEERS.len() as u32) as usize].to_owned()
}

#[test]
fn a_peers_handoff_is_forwarded_when_known_and_returned_when_not() {
    require_root!();
    let (lb, vip) = balancer(false);
    // Known here: the SYN came straight to us.
    let syn = Frame::tcp("192.0.2.7", 40_000, "10.0.0.1", 80).syn();
    let real = lb.expected_real(&vip, &syn);
    encapsulated_to(&lb.run(&syn.build()), &syn.build(), 14, real);
    let ack = Frame::tcp("192.0.2.7", 40_000, "10.0.0.1", 80);
    let out = lb.run(&tunnel(&ack, PEERS[0], NODE, HANDOFF_REQUEST));
    encapsulated_to(&out, &ack.build(), 14, real);

    // Unknown here: back to the peer that asked, marked as returned.
    let other = Frame::tcp("192.0.2.7", 40_001, "10.0.0.1", 80);
    let out = lb.run(&tunnel(&other, PEERS[1], NODE, HANDOFF_REQUEST));
    tunnelled_to(&out, &other, NODE, PEERS[1], HANDOFF_RETURN);
    assert_eq!(lb.dp_conn_real(&other), None, "a returned flow leaves no entry here");
    assert_eq!(lb.dp().counter(Counter::HandoffReceived).unwrap(), 2);
    assert_eq!(lb.dp().counter(Counter::HandoffReturned).unwrap(), 1);
}

#[test]
fn a_withdrawn_node_adopts_unknown_handoffs_and_a_returned_handoff_is_balanced_here() {
    require_root!();
    let (lb, vip) = balancer(true);
    let ack = Frame::tcp("192.0.2.8", 41_000, "10.0.0.1", 80);
    let real = lb.expected_real(&vip, &ack);
    encapsulated_to(&lb.run(&tunnel(&ack, PEERS[0], NODE, HANDOFF_REQUEST)), &ack.build(), 14, real);
    assert_eq!(lb.dp_conn_real(&ack), Some(real), "adopted: the flow is ours from now on");

    let came_back = Frame::tcp("192.0.2.8", 41_001, "10.0.0.1", 80);
    let real = lb.expected_real(&vip, &came_back);
    encapsulated_to(&lb.run(&tunnel(&came_back, PEERS[1], NODE, HANDOFF_RETURN)), &came_back.build(), 14, real);
    assert_eq!(lb.dp_conn_real(&came_back), Some(real), "nobody else knows it: ours");
    assert_eq!(lb.dp().counter(Counter::HandoffCameBack).unwrap(), 1);
    assert_eq!(lb.dp().counter(Counter::HandoffReturned).unwrap(), 0);
}

#[test]
fn bad_handoffs_are_dropped_and_other_traffic_to_the_node_passes() {
    require_root!();
    let (lb, _vip) = balancer(false);
    let not_vip = Frame::tcp("192.0.2.9", 42_000, "10.0.0.99", 80);
    let out = lb.run(&tunnel(&not_vip, PEERS[0], NODE, HANDOFF_REQUEST));
    assert_eq!(action_name(out.action), "XDP_DROP", "a handoff's inner packet must be for a VIP");
    let mut cut = tunnel(&Frame::tcp("192.0.2.9", 42_001, "10.0.0.1", 80), PEERS[0], NODE, HANDOFF_REQUEST);
    cut.truncate(14 + 20 + 20 + 10); // inner TCP header cut short
    let total = (cut.len() - 14) as u16;
    cut[16..18].copy_from_slice(&total.to_be_bytes());
    let out = lb.run(&cut);
    assert_eq!(action_name(out.action), "XDP_DROP", "a malformed inner packet");
    assert_eq!(lb.dp().counter(Counter::DropBadHandoff).unwrap(), 2);

    // A tunnel to the node without a handoff marker, and BGP to the node: the kernel's.
    let other = tunnel(&Frame::tcp("192.0.2.9", 42_002, "10.0.0.1", 80), PEERS[0], NODE, 0);
    passed_untouched(&lb.run(&other), &other);
    let bgp = Frame::tcp("10.20.9.1", 179, NODE, 40_000).build();
    passed_untouched(&lb.run(&bgp), &bgp);

    // Handoff off: the node address leaves the pre-filter and tunnels to it pass.
    lb_off(lb, &tunnel(&Frame::tcp("192.0.2.9", 42_003, "10.0.0.1", 80), PEERS[0], NODE, HANDOFF_REQUEST));
}

fn lb_off(mut lb: Balancer, frame: &[u8]) {
    lb.set_handoff(None, &[], false).unwrap();
    passed_untouched(&lb.run(frame), frame);
}

#[test]
fn ipv6_handoff_uses_the_flow_label_as_marker() {
    require_root!();
    let mut lb = Balancer::new();
    let vip = lb.add_vip("2001:db8::10", 443, TCP, 0, TEST_RING_SIZE, &[("fd00:1::1", 1), ("fd00:1::2", 1)]);
    lb.set_handoff(Some(ip("fd00:20::9")), &[ip("fd00:20::1")], false).unwrap();
    let ack = Frame::tcp("2001:db8:c::1", 5000, "2001:db8::10", 443);
    let e = tunnelled_to(&lb.run(&ack.build()), &ack, "fd00:20::9", "fd00:20::1", HANDOFF_REQUEST);
    assert_eq!(e.outer.proto().0, 41, "IPv6-in-IPv6");
    let out = lb.run(&tunnel(&ack, "fd00:20::1", "fd00:20::9", HANDOFF_REQUEST));
    tunnelled_to(&out, &ack, "fd00:20::9", "fd00:20::1", HANDOFF_RETURN);
    let out = lb.run(&tunnel(&ack, "fd00:20::1", "fd00:20::9", HANDOFF_RETURN));
    encapsulated_to(&out, &ack.build(), 14, lb.expected_real(&vip, &ack));

    // An IPv4 node cannot carry IPv6 flows: they stay here.
    lb.set_handoff(Some(ip(NODE)), &PEERS.map(ip), false).unwrap();
    let other = Frame::tcp("2001:db8:c::1", 5001, "2001:db8::10", 443);
    encapsulated_to(&lb.run(&other.build()), &other.build(), 14, lb.expected_real(&vip, &other));
}

/// Handoffs (requests and returns) are taken only from configured peers; a peer whose checks
/// fail is not handed to, but its handoffs still arrive.
#[test]
fn handoffs_are_taken_only_from_configured_peers() {
    require_root!();
    let (mut lb, vip) = balancer(false);
    let stranger = "10.66.6.6";
    let ack = Frame::tcp("192.0.2.10", 43_000, "10.0.0.1", 80);
    for id in [HANDOFF_REQUEST, HANDOFF_RETURN] {
        let out = lb.run(&tunnel(&ack, stranger, NODE, id));
        assert_eq!(action_name(out.action), "XDP_DROP", "marker {id:#x} from a stranger");
    }
    assert_eq!(lb.dp().counter(Counter::DropHandoffNotPeer).unwrap(), 2);
    assert_eq!(lb.dp().counter(Counter::HandoffReceived).unwrap() + lb.dp().counter(Counter::HandoffCameBack).unwrap(), 0);
    assert_eq!(lb.dp_conn_real(&ack), None, "nothing recorded");
    // A stranger's tunnel without a marker is still the kernel's.
    let other = tunnel(&ack, stranger, NODE, 0);
    passed_untouched(&lb.run(&other), &other);

    // PEERS[0] fails its checks: no handoffs go to it, but its requests and returns arrive.
    lb.set_handoff_with_sources(Some(ip(NODE)), &[ip(PEERS[1])], &PEERS.map(ip), false).unwrap();
    let out = lb.run(&tunnel(&ack, PEERS[0], NODE, HANDOFF_REQUEST));
    tunnelled_to(&out, &ack, NODE, PEERS[0], HANDOFF_RETURN);
    let came_back = Frame::tcp("192.0.2.10", 43_001, "10.0.0.1", 80);
    let out = lb.run(&tunnel(&came_back, PEERS[0], NODE, HANDOFF_RETURN));
    encapsulated_to(&out, &came_back.build(), 14, lb.expected_real(&vip, &came_back));
    // A peer removed from the config: its handoffs are a stranger's.
    lb.set_handoff(Some(ip(NODE)), &[ip(PEERS[1])], false).unwrap();
    let out = lb.run(&tunnel(&ack, PEERS[0], NODE, HANDOFF_REQUEST));
    assert_eq!(action_name(out.action), "XDP_DROP");
    assert_eq!(lb.dp().counter(Counter::DropHandoffNotPeer).unwrap(), 3);
}
