//! The backend's decapsulation program on each encapsulation the balancer produces.

use lb_common::{programs, stats::DecapCounter};
use lb_tests::{
    expect::passed_untouched,
    fixture::{Balancer, TEST_RING_SIZE},
    packet::{ip, Frame},
    require_root,
    test_run::{self, action_name},
};
use lb_userspace::dataplane::{Dataplane, LoadOptions};

struct Decap {
    dp: Dataplane,
    fd: i32,
}

impl Decap {
    fn new(local: &[&str]) -> Self {
        let mut dp = Dataplane::load(&LoadOptions { conn_table_size: 1024, ring_slots: 2 }).expect("load");
        let fd = dp.program_fd(programs::DECAP).expect("load lb_decap");
        dp.set_decap_addrs(&local.iter().map(|a| ip(a)).collect::<Vec<_>>()).unwrap();
        Self { dp, fd }
    }
    fn run(&self, frame: &[u8]) -> test_run::TestRun {
        test_run::run(self.fd, frame, 1).expect("test run")
    }
}

/// Client frame -> balancer -> decap: the backend gets the client's packet back, with the
/// L2 header (addresses, VLAN tag) of the frame that reached it.
fn round_trip(client: Frame, vip: (&str, u16), real: &str) {
    let mut lb = Balancer::new();
    lb.add_vip(vip.0, vip.1, 6, 0, TEST_RING_SIZE, &[(real, 1)]);
    let decap = Decap::new(&[real]);
    let input = client.build();
    let tunnelled = lb.run(&input);
    assert_eq!(action_name(tunnelled.action), "XDP_TX");
    let out = decap.run(&tunnelled.data);
    assert_eq!(action_name(out.action), "XDP_PASS");
    let l2 = client.l2_len();
    assert_eq!(&out.data[..12], &tunnelled.data[..12], "MACs of the frame that arrived");
    assert_eq!(&out.data[12..l2], &input[12..l2], "EtherType (and VLAN tag) of the inner packet");
    assert_eq!(&out.data[l2..], &input[l2..], "inner packet byte-identical");
    assert_eq!(decap.dp.decap_counter(DecapCounter::Decapsulated).unwrap(), 1);
}

#[test]
fn decap_ipip() {
    require_root!();
    round_trip(Frame::tcp("192.0.2.1", 1234, "10.0.0.1", 80), ("10.0.0.1", 80), "10.1.0.1");
}

#[test]
fn decap_ipv6_in_ipv6() {
    require_root!();
    round_trip(Frame::tcp("2001:db8:c::1", 1234, "2001:db8::10", 80), ("2001:db8::10", 80), "fd00:1::1");
}

#[test]
fn decap_ipv4_in_ipv6() {
    require_root!();
    round_trip(Frame::tcp("192.0.2.1", 1234, "10.0.0.1", 80), ("10.0.0.1", 80), "fd00:1::1");
}

#[test]
fn decap_keeps_a_vlan_tag() {
    require_root!();
    round_trip(Frame::tcp("192.0.2.1", 1234, "10.0.0.1", 80).vlan(9), ("10.0.0.1", 80), "10.1.0.1");
}

#[test]
fn decap_leaves_other_traffic_alone() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, 6, 0, TEST_RING_SIZE, &[("10.1.0.1", 1)]);
    let to_other_host = lb.run(&Frame::tcp("192.0.2.1", 1, "10.0.0.1", 80).build()).data;
    let decap = Decap::new(&["10.1.0.2"]);
    passed_untouched(&decap.run(&to_other_host), &to_other_host);
    let plain = Frame::tcp("192.0.2.1", 1, "10.1.0.2", 80).build();
    passed_untouched(&decap.run(&plain), &plain);
    assert_eq!(decap.dp.decap_counter(DecapCounter::Pass).unwrap(), 2);
}

#[test]
fn decap_drops_a_tunnel_with_a_cut_inner_packet() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, 6, 0, TEST_RING_SIZE, &[("10.1.0.1", 1)]);
    let mut tunnelled = lb.run(&Frame::tcp("192.0.2.1", 1, "10.0.0.1", 80).build()).data;
    tunnelled.truncate(14 + 20 + 12); // outer header + 12 bytes of the inner one
    let decap = Decap::new(&["10.1.0.1"]);
    assert_eq!(action_name(decap.run(&tunnelled).action), "XDP_DROP");
    assert_eq!(decap.dp.decap_counter(DecapCounter::DropMalformed).unwrap(), 1);
}
