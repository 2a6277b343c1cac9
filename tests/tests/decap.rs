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

/// The fixture balancer's outer source prefixes (its `source_v4` / `source_v6`).
const BALANCERS: [(&str, u8); 2] = [("10.255.0.0", 16), ("fd00:ffff::", 96)];

impl Decap {
    /// Strips tunnels to `local` from the fixture balancer's sources, for `vips`.
    fn new(local: &[&str], vips: &[&str]) -> Self {
        Self::from_sources(local, vips, &BALANCERS)
    }

    fn from_sources(local: &[&str], vips: &[&str], sources: &[(&str, u8)]) -> Self {
        let mut dp = Dataplane::load(&LoadOptions { conn_table_size: 1024, ring_slots: 2 }).expect("load");
        let fd = dp.program_fd(programs::DECAP).expect("load lb_decap");
        dp.set_decap_addrs(&local.iter().map(|a| ip(a)).collect::<Vec<_>>()).unwrap();
        dp.set_decap_vips(&vips.iter().map(|a| ip(a)).collect::<Vec<_>>()).unwrap();
        dp.set_decap_sources(&sources.iter().map(|&(a, len)| (ip(a), len)).collect::<Vec<_>>()).unwrap();
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
    let decap = Decap::new(&[real], &[vip.0]);
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
    let decap = Decap::new(&["10.1.0.2"], &["10.0.0.1"]);
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
    let decap = Decap::new(&["10.1.0.1"], &["10.0.0.1"]);
    assert_eq!(action_name(decap.run(&tunnelled).action), "XDP_DROP");
    assert_eq!(decap.dp.decap_counter(DecapCounter::DropMalformed).unwrap(), 1);
}

/// A tunnel to the real from outside the balancers' source prefixes, or carrying a packet for
/// an address that is not one of the backend's VIPs, is dropped and counted; with every source
/// allowed (the filter off) the same foreign tunnel is stripped and its spoofed inner packet
/// delivered.
#[test]
fn decap_takes_tunnels_only_from_balancers_and_only_for_its_vips() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, 6, 0, TEST_RING_SIZE, &[("10.1.0.1", 1)]);
    lb.add_vip("10.0.0.2", 80, 6, 0, TEST_RING_SIZE, &[("10.1.0.1", 1)]);
    let tunnelled = lb.run(&Frame::tcp("192.0.2.1", 1, "10.0.0.1", 80).build()).data;
    // The same tunnel with its outer source rewritten (the checksum is not checked by XDP).
    let mut foreign = tunnelled.clone();
    foreign[14 + 12..14 + 16].copy_from_slice(&[198, 51, 100, 7]);
    let to_other_vip = lb.run(&Frame::tcp("192.0.2.1", 1, "10.0.0.2", 80).build()).data;

    let decap = Decap::new(&["10.1.0.1"], &["10.0.0.1"]);
    assert_eq!(action_name(decap.run(&tunnelled).action), "XDP_PASS");
    assert_eq!(action_name(decap.run(&foreign).action), "XDP_DROP");
    assert_eq!(action_name(decap.run(&to_other_vip).action), "XDP_DROP");
    let count = |c| decap.dp.decap_counter(c).unwrap();
    assert_eq!((count(DecapCounter::Decapsulated), count(DecapCounter::DropForeignSource), count(DecapCounter::DropNotVip)), (1, 1, 1));

    let open = Decap::from_sources(&["10.1.0.1"], &["10.0.0.1"], &[("0.0.0.0", 0), ("::", 0)]);
    assert_eq!(action_name(open.run(&foreign).action), "XDP_PASS", "without the filter a spoofed tunnel is taken");
}
