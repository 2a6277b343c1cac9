//! The flood guard, in the kernel with BPF_PROG_TEST_RUN: spoofed SYNs make no connection-table
//! entries (a flow is recorded on its handshake's ACK), a foreign mid-flow packet is handed off
//! rather than recorded, a collision in the SYN table costs a handoff and not the connection, and
//! inserts and handoffs over their per-CPU limits are forwarded by the ring, unrecorded.

use std::time::Duration;

use lb_common::{hash::flow_hash, limits, stats::Counter, RateLimit, REAL_ID_PEER, SYN_SEEN_SLOTS};
use lb_tests::{
    expect::encapsulated_to,
    fixture::{flow_of, Balancer, Vip, TEST_RING_SIZE},
    packet::{ip, parse_encapsulated, Frame},
    require_root,
    test_run::action_name,
};
use lb_userspace::dataplane::DataplaneOps as _;

const TCP: u8 = 6;
const UDP: u8 = 17;
const REALS4: [(&str, u32); 3] = [("10.1.0.1", 1), ("10.1.0.2", 1), ("10.1.0.3", 1)];
const NODE: &str = "10.20.9.2";
const PEER: &str = "10.20.1.2";

fn balancer(handoff: bool) -> (Balancer, Vip) {
    let mut lb = Balancer::new();
    let vip = lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    lb.add_vip("10.0.0.1", 53, UDP, 0, TEST_RING_SIZE, &REALS4);
    if handoff {
        lb.set_handoff(Some(ip(NODE)), &[ip(PEER)], false).unwrap();
    }
    (lb, vip)
}

/// Client `n` of 100.64.0.0/10.
fn source(n: u32) -> String {
    std::net::Ipv4Addr::from(0x6440_0000 + n).to_string()
}

#[test]
fn spoofed_syns_are_forwarded_and_make_no_entries() {
    require_root!();
    let (lb, vip) = balancer(true);
    for n in 0..2000 {
        let syn = Frame::tcp(&source(n), 40_000, "10.0.0.1", 80).syn();
        encapsulated_to(&lb.run(&syn.build()), &syn.build(), 14, lb.expected_real(&vip, &syn));
    }
    assert_eq!(lb.dp().conn_entries().unwrap(), 0, "no entries");
    let stats = lb.dp().vip_stats(vip.meta.vip_index).unwrap();
    assert_eq!((stats.packets, stats.new_flows), (2000, 0));
    assert_eq!(lb.dp().counter(Counter::HandoffSent).unwrap(), 0, "a SYN is never handed off");
}

#[test]
fn the_handshake_ack_is_recorded_and_a_foreign_ack_is_handed_off() {
    require_root!();
    let (lb, vip) = balancer(true);
    let ours = Frame::tcp("192.0.2.1", 40_000, "10.0.0.1", 80);
    lb.run(&ours.clone().syn().build());
    encapsulated_to(&lb.run(&ours.build()), &ours.build(), 14, lb.expected_real(&vip, &ours));
    assert_eq!(lb.dp_conn_real(&ours), Some(lb.expected_real(&vip, &ours)), "recorded on the ACK");
    // No SYN seen: a connection another site (or node) started.
    let foreign = Frame::tcp("192.0.2.2", 40_000, "10.0.0.1", 80);
    let e = parse_encapsulated(&lb.run(&foreign.build()).data);
    assert_eq!(e.outer.dst(), ip(PEER), "handed off");
    assert_eq!(lb.dp().conn_real(&flow_of(&foreign)).unwrap(), Some(REAL_ID_PEER), "and marked as the peer's");
    assert_eq!(lb.dp().counter(Counter::HandoffSent).unwrap(), 1);
}

#[test]
fn a_collision_in_the_syn_table_costs_a_handoff_round_trip_not_the_connection() {
    require_root!();
    let (lb, vip) = balancer(true);
    let a = Frame::tcp("192.0.2.1", 40_000, "10.0.0.1", 80);
    let slot = |f: &Frame| flow_hash(&flow_of(f)) % SYN_SEEN_SLOTS;
    // Another flow whose SYN lands in the same slot.
    let b = (3..=254u8)
        .flat_map(|host| (1..=u16::MAX).map(move |p| Frame::tcp(&format!("192.0.2.{host}"), p, "10.0.0.1", 80)))
        .find(|b| slot(b) == slot(&a))
        .expect("a colliding flow");
    lb.run(&a.clone().syn().build());
    lb.run(&b.clone().syn().build()); // overwrites a's slot
                                      // a's ACK no longer finds its SYN: it goes to the peer, which does not know it either and
                                      // returns it; then a is balanced here, by the same ring, to the same real.
    let asked = parse_encapsulated(&lb.run(&a.build()).data);
    assert_eq!(asked.outer.dst(), ip(PEER), "handed off");
    let returned = lb_tests::packet::tunnel(&a, PEER, NODE, lb_common::HANDOFF_RETURN);
    let real = lb.expected_real(&vip, &a);
    let out = lb.run(&returned);
    assert_eq!(parse_encapsulated(&out.data).outer.dst(), real, "the real its SYN went to");
    assert_eq!(lb.dp_conn_real(&a), Some(real), "and recorded");
    // b's ACK finds its SYN.
    lb.run(&b.build());
    assert_eq!(lb.dp_conn_real(&b), Some(lb.expected_real(&vip, &b)));
}

#[test]
fn inserts_over_the_limit_are_forwarded_unrecorded() {
    require_root!();
    let (mut lb, vip) = balancer(false);
    // 100 a second in bursts of 10.
    lb.dp_mut().set_rate_limit(limits::INSERTS, &RateLimit::per_sec(100)).unwrap();
    for n in 0..50 {
        let udp = Frame::udp(&source(n), 5353, "10.0.0.1", 53);
        assert_eq!(action_name(lb.run(&udp.build()).action), "XDP_TX", "forwarded all the same");
    }
    assert_eq!(lb.dp().conn_entries().unwrap(), 10, "a burst's worth recorded");
    assert_eq!(lb.dp().counter(Counter::FlowUnrecorded).unwrap(), 40);
    assert!(lb.dp().limit_refused_within(limits::INSERTS, Duration::from_secs(1)).unwrap(), "a flood is being held back");
    assert!(!lb.dp().limit_refused_within(limits::HANDOFFS, Duration::from_secs(1)).unwrap());
    // TCP handshakes too.
    for n in 100..110 {
        let f = Frame::tcp(&source(n), 40_000, "10.0.0.1", 80);
        lb.run(&f.clone().syn().build());
        encapsulated_to(&lb.run(&f.build()), &f.build(), 14, lb.expected_real(&vip, &f));
    }
    assert_eq!(lb.dp().counter(Counter::FlowUnrecorded).unwrap(), 50, "no room left in this second");
}

#[test]
fn handoffs_over_the_limit_are_forwarded_unrecorded() {
    require_root!();
    let (mut lb, vip) = balancer(true);
    lb.dp_mut().set_rate_limit(limits::HANDOFFS, &RateLimit::per_sec(100)).unwrap();
    let mut to_peer = 0;
    for n in 0..50 {
        let ack = Frame::tcp(&source(n), 40_000, "10.0.0.1", 80);
        let out = lb.run(&ack.build());
        if parse_encapsulated(&out.data).outer.dst() == ip(PEER) {
            to_peer += 1;
        } else {
            encapsulated_to(&out, &ack.build(), 14, lb.expected_real(&vip, &ack));
        }
    }
    assert_eq!(to_peer, 10, "a burst's worth handed off");
    assert_eq!(lb.dp().counter(Counter::HandoffSent).unwrap(), 10);
    assert_eq!(lb.dp().counter(Counter::HandoffSuppressed).unwrap(), 40);
    assert_eq!(lb.dp().conn_entries().unwrap(), 10, "the others went by the ring, unrecorded (the 10 are marked as the peer's)");
    assert!(lb.dp().limit_refused_within(limits::HANDOFFS, Duration::from_secs(1)).unwrap());
}

#[test]
fn a_flow_a_peer_keeps_is_handed_off_beyond_the_limit_until_it_comes_back() {
    require_root!();
    let (mut lb, vip) = balancer(true);
    lb.dp_mut().set_rate_limit(limits::HANDOFFS, &RateLimit::per_sec(100)).unwrap(); // bursts of 10
                                                                                     // An open connection of a drained site: every packet goes to the peer, one token in all.
    let moved = Frame::tcp("192.0.2.1", 40_000, "10.0.0.1", 80);
    for _ in 0..50 {
        assert_eq!(parse_encapsulated(&lb.run(&moved.build()).data).outer.dst(), ip(PEER));
    }
    assert_eq!(lb.dp().counter(Counter::HandoffSent).unwrap(), 50);
    assert_eq!(lb.dp().counter(Counter::HandoffSuppressed).unwrap(), 0);
    // The peer gives one back (it forgot the flow): balanced and recorded here from then on.
    let returned = lb_tests::packet::tunnel(&moved, PEER, NODE, lb_common::HANDOFF_RETURN);
    let real = lb.expected_real(&vip, &moved);
    assert_eq!(parse_encapsulated(&lb.run(&returned).data).outer.dst(), real);
    assert_eq!(lb.dp_conn_real(&moved), Some(real), "the real's entry replaced the peer's mark");
    encapsulated_to(&lb.run(&moved.build()), &moved.build(), 14, real);
}

#[test]
fn without_peers_a_flood_of_spoofed_acks_leaves_the_insert_budget_to_handshakes() {
    require_root!();
    let (mut lb, vip) = balancer(false);
    lb.dp_mut().set_rate_limit(limits::HANDOFFS, &RateLimit::per_sec(50)).unwrap(); // bursts of 5
    lb.dp_mut().set_rate_limit(limits::INSERTS, &RateLimit::per_sec(100)).unwrap(); // bursts of 10
    for n in 0..50 {
        let ack = Frame::tcp(&source(n), 40_000, "10.0.0.1", 80);
        encapsulated_to(&lb.run(&ack.build()), &ack.build(), 14, lb.expected_real(&vip, &ack));
    }
    assert_eq!(lb.dp().conn_entries().unwrap(), 5, "mid-flow packets of unknown connections: recorded within the handoff limit");
    assert_eq!(lb.dp().counter(Counter::FlowUnrecorded).unwrap(), 45);
    assert_eq!(lb.dp().counter(Counter::HandoffSuppressed).unwrap(), 0, "no peers, so nothing to hand off");
    for n in 100..105 {
        let f = Frame::tcp(&source(n), 40_000, "10.0.0.1", 80);
        lb.run(&f.clone().syn().build());
        lb.run(&f.build());
        assert_eq!(lb.dp_conn_real(&f), Some(lb.expected_real(&vip, &f)), "a handshake is recorded");
    }
    assert_eq!(lb.dp().counter(Counter::FlowUnrecorded).unwrap(), 45);
}

#[test]
fn a_handshake_ack_follows_its_syn_when_the_ring_changed_between_them() {
    require_root!();
    let (mut lb, mut vip) = balancer(false);
    let a = Frame::tcp("192.0.2.1", 40_000, "10.0.0.1", 80);
    let syn = a.clone().syn();
    let first = lb.expected_real(&vip, &syn);
    encapsulated_to(&lb.run(&syn.build()), &syn.build(), 14, first);
    // The SYN's real drained before its ACK: the ring now names another one.
    let drained: Vec<(&str, u32)> = REALS4.iter().map(|&(r, w)| (r, if ip(r) == first { 0 } else { w })).collect();
    lb.set_reals(&mut vip, &drained);
    assert_ne!(lb.expected_real(&vip, &a), first, "the ring moved the flow");
    encapsulated_to(&lb.run(&a.build()), &a.build(), 14, first);
    assert_eq!(lb.dp_conn_real(&a), Some(first), "recorded with its SYN's real");
    // A new handshake after the change follows the new ring.
    let b = Frame::tcp("192.0.2.1", 40_001, "10.0.0.1", 80);
    lb.run(&b.clone().syn().build());
    lb.run(&b.build());
    assert_eq!(lb.dp_conn_real(&b), Some(lb.expected_real(&vip, &b)));
}
