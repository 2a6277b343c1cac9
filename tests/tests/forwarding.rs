//! The balancer on TCP and UDP to VIPs, run in the kernel with BPF_PROG_TEST_RUN.

use std::collections::{HashMap, HashSet};

use lb_common::{stats::Counter, DEFAULT_RING_SIZE, VIP_F_SOURCE_AFFINITY};
use lb_tests::test_run::action_name;
use lb_tests::{
    expect::{encapsulated_to, passed_untouched},
    fixture::{Balancer, MTU, TEST_RING_SIZE},
    packet::{ip, Frame},
    require_root,
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const REALS4: [(&str, u32); 3] = [("10.1.0.1", 1), ("10.1.0.2", 1), ("10.1.0.3", 1)];
const REALS6: [(&str, u32); 3] = [("fd00:1::1", 1), ("fd00:1::2", 1), ("fd00:1::3", 1)];

/// Sends `flows` frames (source port varied) and checks each lands on Maglev's real; returns
/// how many went to each real.
fn check_flows(lb: &Balancer, vip: &lb_tests::fixture::Vip, make: impl Fn(u16) -> Frame, flows: u16) -> HashMap<std::net::IpAddr, u32> {
    let mut per_real = HashMap::new();
    for i in 0..flows {
        let frame = make(10_000 + i);
        let input = frame.build();
        let real = lb.expected_real(vip, &frame);
        encapsulated_to(&lb.run(&input), &input, frame.l2_len(), real);
        *per_real.entry(real).or_default() += 1;
    }
    per_real
}

#[test]
fn ipv4_tcp_to_vip_is_encapsulated_to_the_maglev_real() {
    require_root!();
    let mut lb = Balancer::new();
    let vip = lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    let per_real = check_flows(&lb, &vip, |p| Frame::tcp("192.0.2.1", p, "10.0.0.1", 80), 60);
    assert_eq!(per_real.len(), 3, "every real gets flows: {per_real:?}");
    let stats = lb.dp().vip_stats(vip.meta.vip_index).unwrap();
    assert_eq!((stats.packets, stats.new_flows, stats.conn_misses, stats.conn_hits), (60, 60, 60, 0));
    assert_eq!(lb.dp().counter(Counter::Tx).unwrap(), 60);
}

#[test]
fn ipv4_udp_to_vip_is_encapsulated_to_the_maglev_real() {
    require_root!();
    let mut lb = Balancer::new();
    let vip = lb.add_vip("10.0.0.1", 53, UDP, 0, TEST_RING_SIZE, &REALS4);
    check_flows(&lb, &vip, |p| Frame::udp("192.0.2.1", p, "10.0.0.1", 53), 20);
}

#[test]
fn ipv6_vip_is_encapsulated_ipv6_in_ipv6() {
    require_root!();
    let mut lb = Balancer::new();
    let vip = lb.add_vip("2001:db8::10", 443, TCP, 0, TEST_RING_SIZE, &REALS6);
    check_flows(&lb, &vip, |p| Frame::tcp("2001:db8:c::1", p, "2001:db8::10", 443), 20);
    let vip = lb.add_vip("2001:db8::10", 53, UDP, 0, TEST_RING_SIZE, &REALS6);
    check_flows(&lb, &vip, |p| Frame::udp("2001:db8:c::1", p, "2001:db8::10", 53), 20);
}

#[test]
fn ipv4_vip_with_ipv6_reals_is_encapsulated_ipv4_in_ipv6() {
    require_root!();
    let mut lb = Balancer::new();
    let vip = lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS6);
    check_flows(&lb, &vip, |p| Frame::tcp("192.0.2.1", p, "10.0.0.1", 80), 20);
}

#[test]
fn any_port_vip_takes_every_port_and_a_port_vip_wins() {
    require_root!();
    let mut lb = Balancer::new();
    let any = lb.add_vip("10.0.0.2", 0, TCP, 0, TEST_RING_SIZE, &[("10.1.0.1", 1)]);
    let https = lb.add_vip("10.0.0.2", 443, TCP, 0, TEST_RING_SIZE, &[("10.1.0.9", 1)]);
    for port in [1, 22, 80, 8080, 65535] {
        let f = Frame::tcp("192.0.2.1", 5555, "10.0.0.2", port);
        encapsulated_to(&lb.run(&f.build()), &f.build(), 14, ip("10.1.0.1"));
    }
    let f = Frame::tcp("192.0.2.1", 5555, "10.0.0.2", 443);
    encapsulated_to(&lb.run(&f.build()), &f.build(), 14, ip("10.1.0.9"));
    assert_eq!(lb.dp().vip_stats(any.meta.vip_index).unwrap().packets, 5);
    assert_eq!(lb.dp().vip_stats(https.meta.vip_index).unwrap().packets, 1);
    // The any-port VIP is TCP only: UDP to the same address is not ours.
    let udp = Frame::udp("192.0.2.1", 5555, "10.0.0.2", 53).build();
    passed_untouched(&lb.run(&udp), &udp);
}

#[test]
fn traffic_not_for_a_vip_passes_untouched() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    let frames = [
        Frame::tcp("192.0.2.1", 1234, "10.0.0.99", 80).build(), // other address
        Frame::tcp("192.0.2.1", 1234, "10.0.0.1", 81).build(),  // VIP address, other port
        Frame::udp("192.0.2.1", 1234, "10.0.0.1", 80).build(),  // VIP address, other protocol
        Frame::tcp("2001:db8::1", 1234, "2001:db8::99", 80).build(),
        Frame::echo("192.0.2.1", "10.0.0.99").build(),
    ];
    // ARP request (who has 10.0.0.1): not IP at all.
    let mut arp = vec![0xff; 6];
    arp.extend([0x02, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend([0x02, 0, 0, 0, 0, 1, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
    for frame in frames.iter().chain([&arp]) {
        passed_untouched(&lb.run(frame), frame);
    }
    assert_eq!(lb.dp().counter(Counter::Pass).unwrap(), 6);
}

#[test]
fn a_flow_keeps_its_real_when_the_ring_changes() {
    require_root!();
    let mut lb = Balancer::new();
    let mut vip = lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4[..1]);
    let flows: Vec<Frame> = (0..40).map(|p| Frame::tcp("192.0.2.7", 20_000 + p, "10.0.0.1", 80)).collect();
    for f in &flows {
        encapsulated_to(&lb.run(&f.build()), &f.build(), 14, ip("10.1.0.1"));
    }
    lb.set_reals(&mut vip, &REALS4); // two more reals: most slots now point elsewhere
    let moved_in_ring = flows.iter().filter(|f| lb.expected_real(&vip, f) != ip("10.1.0.1")).count();
    assert!(moved_in_ring > 10, "the new ring sends {moved_in_ring} of 40 flows elsewhere");
    for f in &flows {
        encapsulated_to(&lb.run(&f.build()), &f.build(), 14, ip("10.1.0.1"));
    }
    let stats = lb.dp().vip_stats(vip.meta.vip_index).unwrap();
    assert_eq!((stats.conn_misses, stats.conn_hits, stats.new_flows), (40, 40, 40));
    // New flows follow the new ring.
    check_flows(&lb, &vip, |p| Frame::tcp("192.0.2.8", p, "10.0.0.1", 80), 30);
}

/// A TCP flow is recorded on its handshake's ACK, not on its SYN (spoofed SYNs never complete):
/// the SYN goes where the ring says (a retransmitted one too), and an entry an earlier
/// connection on the same 5-tuple left no longer counts; the ACK after it records the ring's real.
#[test]
fn a_flow_is_recorded_on_its_handshake_ack_and_a_syn_overrides_an_earlier_entry() {
    require_root!();
    let mut lb = Balancer::new();
    let mut vip = lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4[..1]);
    let flows: Vec<Frame> = (0..40).map(|p| Frame::tcp("192.0.2.9", 20_000 + p, "10.0.0.1", 80)).collect();
    for f in &flows {
        let syn = f.clone().syn().build();
        for _ in 0..2 {
            // The SYN and its retransmission.
            encapsulated_to(&lb.run(&syn), &syn, 14, ip("10.1.0.1"));
        }
        assert_eq!(lb.dp_conn_real(f), None, "a SYN makes no entry");
        encapsulated_to(&lb.run(&f.build()), &f.build(), 14, ip("10.1.0.1"));
        assert_eq!(lb.dp_conn_real(f), Some(ip("10.1.0.1")), "the handshake's ACK does");
    }
    lb.set_reals(&mut vip, &REALS4);
    let moved: Vec<&Frame> = flows.iter().filter(|f| lb.expected_real(&vip, f) != ip("10.1.0.1")).collect();
    assert!(moved.len() > 10, "the new ring sends {} of 40 flows elsewhere", moved.len());
    for f in &moved {
        encapsulated_to(&lb.run(&f.build()), &f.build(), 14, ip("10.1.0.1"));
        // A new connection on the same 5-tuple: the ring's real now, for its SYN and its ACK.
        let syn = (*f).clone().syn().build();
        let now = lb.expected_real(&vip, f);
        encapsulated_to(&lb.run(&syn), &syn, 14, now);
        assert_eq!(lb.dp_conn_real(f), None, "the SYN removed the old connection's entry");
        encapsulated_to(&lb.run(&f.build()), &f.build(), 14, now);
        assert_eq!(lb.dp_conn_real(f), Some(now), "its ACK recorded the new real");
    }
    let stats = lb.dp().vip_stats(vip.meta.vip_index).unwrap();
    let moved = moved.len() as u64;
    assert_eq!(stats.new_flows, 40 + moved, "one entry per handshake");
    assert_eq!(stats.conn_hits, moved, "only the old connections' packets after the ring change hit");
}

#[test]
fn flows_of_a_down_real_move_to_a_live_one() {
    require_root!();
    let mut lb = Balancer::new();
    let mut vip = lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    let flows: Vec<Frame> = (0..60).map(|p| Frame::tcp("192.0.2.7", 20_000 + p, "10.0.0.1", 80)).collect();
    for f in &flows {
        lb.run(&f.build());
    }
    lb.mark_down("10.1.0.2");
    lb.set_reals(&mut vip, &[REALS4[0], REALS4[2]]);
    let on_down: Vec<&Frame> = flows.iter().filter(|f| lb.dp_conn_real(f) == Some(ip("10.1.0.2"))).collect();
    assert!(!on_down.is_empty());
    for f in flows.iter() {
        let out = lb.run(&f.build());
        let e = lb_tests::packet::parse_encapsulated(&out.data);
        assert_ne!(e.outer.dst(), ip("10.1.0.2"), "nothing goes to the down real");
    }
    for f in on_down {
        encapsulated_to(&lb.run(&f.build()), &f.build(), 14, lb.expected_real(&vip, f));
    }
    // Draining (weight 0, not down): existing flows stay, new ones avoid it.
    let mut lb = Balancer::new();
    let mut vip = lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    for f in &flows {
        lb.run(&f.build());
    }
    let before: Vec<_> = flows.iter().map(|f| lb.dp_conn_real(f)).collect();
    lb.set_reals(&mut vip, &[REALS4[0], ("10.1.0.2", 0), REALS4[2]]);
    for (f, real) in flows.iter().zip(before) {
        encapsulated_to(&lb.run(&f.build()), &f.build(), 14, real.unwrap());
    }
    let per_real = check_flows(&lb, &vip, |p| Frame::tcp("192.0.2.9", p, "10.0.0.1", 80), 40);
    assert!(!per_real.contains_key(&ip("10.1.0.2")), "no new flow to a draining real");
}

#[test]
fn source_affinity_keeps_a_client_on_one_real() {
    require_root!();
    let mut lb = Balancer::new();
    let vip = lb.add_vip("10.0.0.1", 0, TCP, VIP_F_SOURCE_AFFINITY, TEST_RING_SIZE, &REALS4);
    let mut reals_seen = HashSet::new();
    for client in 1..=30u8 {
        let src = format!("192.0.2.{client}");
        let mut per_client = HashSet::new();
        for port in 0..8u16 {
            let f = Frame::tcp(&src, 30_000 + port * 7, "10.0.0.1", 80 + port);
            let real = lb.expected_real(&vip, &f);
            encapsulated_to(&lb.run(&f.build()), &f.build(), 14, real);
            per_client.insert(real);
        }
        assert_eq!(per_client.len(), 1, "client {src} stays on one real");
        reals_seen.extend(per_client);
    }
    assert!(reals_seen.len() > 1, "clients still spread over reals");
}

#[test]
fn vip_without_reals_drops_and_counts() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &[]);
    let out = lb.run(&Frame::tcp("192.0.2.1", 1, "10.0.0.1", 80).build());
    assert_eq!(action_name(out.action), "XDP_DROP");
    assert_eq!(lb.dp().counter(Counter::DropNoReal).unwrap(), 1);
    assert_eq!(lb.dp().counter(Counter::Drop).unwrap(), 1);
}

#[test]
fn vlan_tag_is_kept_and_ttl_is_not_touched() {
    require_root!();
    let mut lb = Balancer::new();
    let vip = lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    let f = Frame::tcp("192.0.2.1", 4242, "10.0.0.1", 80).vlan(42).ttl(1);
    let input = f.build();
    let e = encapsulated_to(&lb.run(&input), &input, 18, lb.expected_real(&vip, &f));
    assert_eq!(e.vlan_tci, Some([input[14], input[15]]), "same VLAN tag");
    assert_eq!(e.inner[8], 1, "inner TTL 1 delivered as is");
    let f6 = Frame::tcp("2001:db8:c::1", 4242, "2001:db8::10", 80).vlan(7).ttl(1);
    let vip6 = lb.add_vip("2001:db8::10", 80, TCP, 0, TEST_RING_SIZE, &REALS6);
    let input = f6.build();
    encapsulated_to(&lb.run(&input), &input, 18, lb.expected_real(&vip6, &f6));
}

#[test]
fn packets_that_would_exceed_the_mtu_are_answered_or_dropped() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    lb.add_vip("2001:db8::10", 80, TCP, 0, TEST_RING_SIZE, &REALS6);
    let tcp4_overhead = 20 + 20;
    let fits = Frame::tcp("192.0.2.1", 1, "10.0.0.1", 80).payload(MTU as usize - 20 - tcp4_overhead).build();
    assert_eq!(lb.run(&fits).data.len(), fits.len() + 20, "exactly the MTU after IPIP: forwarded");
    // Without DF there is nothing to tell the client, and we do not fragment: dropped.
    let too_big = Frame::tcp("192.0.2.1", 1, "10.0.0.1", 80).payload(MTU as usize - 20 - tcp4_overhead + 1).fragmentable().build();
    assert_eq!(action_name(lb.run(&too_big).action), "XDP_DROP");
    assert_eq!(lb.dp().counter(Counter::DropMtuExceeded).unwrap(), 1);
    // With DF, and always for IPv6: answered (tests/tests/pmtu.rs has the details).
    let too_big_df = Frame::tcp("192.0.2.1", 1, "10.0.0.1", 80).payload(MTU as usize - 20 - tcp4_overhead + 1).build();
    assert_eq!(lb.run(&too_big_df).data.len(), 14 + 576, "an ICMP answer");
    let too_big6 = Frame::tcp("2001:db8::1", 1, "2001:db8::10", 80).payload(MTU as usize - 40 - 60 + 1).build();
    assert_eq!(lb.run(&too_big6).data.len(), 14 + 1280, "an ICMPv6 answer");
    assert_eq!(lb.dp().counter(Counter::IcmpTooBigSent).unwrap(), 2);
}

#[test]
fn outer_source_carries_per_flow_entropy() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4[..1]);
    let sources: HashSet<_> = (0..64)
        .map(|p| {
            let out = lb.run(&Frame::tcp("192.0.2.1", 40_000 + p, "10.0.0.1", 80).build());
            lb_tests::packet::parse_encapsulated(&out.data).outer.src()
        })
        .collect();
    assert!(sources.len() >= 60, "{} distinct outer sources for 64 flows", sources.len());
    let again = lb.run(&Frame::tcp("192.0.2.1", 40_000, "10.0.0.1", 80).build());
    let first = lb.run(&Frame::tcp("192.0.2.1", 40_000, "10.0.0.1", 80).build());
    assert_eq!(
        lb_tests::packet::parse_encapsulated(&again.data).outer.src(),
        lb_tests::packet::parse_encapsulated(&first.data).outer.src(),
        "stable for a flow"
    );
}

#[test]
fn full_size_ring_balances_like_userspace_maglev() {
    require_root!();
    let mut lb = Balancer::new();
    let vip = lb.add_vip("10.0.0.1", 80, TCP, 0, DEFAULT_RING_SIZE, &REALS4);
    let per_real = check_flows(&lb, &vip, |p| Frame::tcp("192.0.2.3", p, "10.0.0.1", 80), 300);
    for (real, n) in &per_real {
        assert!(*n > 60, "{real} got {n} of 300 flows");
    }
    let id = lb.real_id_of("10.1.0.1");
    assert_eq!(lb.dp().real_stats(id).unwrap().packets, per_real[&ip("10.1.0.1")] as u64);
}

#[test]
fn without_config_packets_to_a_vip_are_dropped() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    lb_userspace::dataplane::DataplaneOps::set_config(lb.dp_mut(), &lb_common::LbConfig::default()).unwrap();
    let out = lb.run(&Frame::tcp("192.0.2.1", 1, "10.0.0.1", 80).build());
    assert_eq!(action_name(out.action), "XDP_DROP");
    assert_eq!(lb.dp().counter(Counter::DropNoConfig).unwrap(), 1);
}

#[test]
fn object_has_every_map_by_name() {
    require_root!();
    let lb = Balancer::new();
    let names = lb.dp().map_names();
    for name in lb_common::maps::ALL {
        assert!(names.iter().any(|n| n == name), "map {name} missing from {names:?}");
        assert!(name.len() <= 15, "{name} fits bpftool's column");
    }
}

#[test]
fn removing_a_vip_retires_its_flows_and_re_adding_starts_afresh() {
    require_root!();
    let mut lb = Balancer::new();
    let mut vip = lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4[..1]);
    let f = Frame::tcp("192.0.2.1", 4000, "10.0.0.1", 80);
    encapsulated_to(&lb.run(&f.build()), &f.build(), 14, ip("10.1.0.1"));
    assert!(lb.dp_conn_real(&f).is_some());
    lb.remove_vip(&vip);
    let input = f.build();
    passed_untouched(&lb.run(&input), &input); // the entry is still in the table, but retired
    vip = lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4[1..2]); // the VIP comes back with another real
    encapsulated_to(&lb.run(&input), &input, 14, ip("10.1.0.2"));
    let stats = lb.dp().vip_stats(vip.meta.vip_index).unwrap();
    assert_eq!((stats.new_flows, stats.conn_hits), (2, 0), "the flow started afresh");
}

#[test]
fn rings_are_written_through_the_memory_mapping() {
    require_root!();
    use lb_userspace::dataplane::{Dataplane, DataplaneError, LoadOptions};
    let pins = lb_tests::PinDir::new("pins");
    let opts = LoadOptions { conn_table_size: 1024, ring_slots: 200 };
    let plain = Dataplane::load(&opts).unwrap();
    let pinned = Dataplane::load_pinned(&opts, &pins.0).unwrap();
    for mut dp in [plain, pinned] {
        assert!(dp.rings_mapped(), "MAGLEV is mmap-able; ring writes are memory stores");
        assert_eq!(dp.ring_slots(), 200);
        // A ring at an odd slot: its slots straddle the two-slot elements.
        dp.write_ring_slots(3, [(0, 7), (1, 8), (99, 9)]).unwrap();
        let read: Vec<u32> = [(3, 0), (3, 1), (3, 99), (2, 99), (5, 0)].iter().map(|&(r, s)| dp.ring_slot(r, s).unwrap()).collect();
        assert_eq!(read, [7, 8, 9, 0, 0], "what the kernel sees");
        let beyond = dp.write_ring_slots(150, [(50, 1)]);
        assert!(matches!(beyond, Err(DataplaneError::RingOutOfRange { pool: 200, .. })), "{beyond:?}");
    }
}

#[test]
fn a_restart_with_a_larger_ring_pool_keeps_the_rings_where_they_were() {
    require_root!();
    use lb_userspace::dataplane::{Dataplane, LoadOptions};
    let pins = lb_tests::PinDir::new("grow");
    let mut first = Dataplane::load_pinned(&LoadOptions { conn_table_size: 1024, ring_slots: 200 }, &pins.0).unwrap();
    first.write_ring_slots(190, (0..10).map(|s| (s, 100 + s))).unwrap();
    let larger = Dataplane::load_pinned(&LoadOptions { conn_table_size: 1024, ring_slots: 1000 }, &pins.0).unwrap();
    assert_eq!(larger.ring_slots(), 1000, "grown");
    let copied: Vec<u32> = (0..10).map(|s| larger.ring_slot(190, s).unwrap()).collect();
    assert_eq!(copied, (100..110).collect::<Vec<_>>(), "the rings at the same slots");
    assert_eq!(first.ring_slot(190, 0).unwrap(), 100, "the running program's pool is untouched until it is replaced");
    let smaller = Dataplane::load_pinned(&LoadOptions { conn_table_size: 1024, ring_slots: 100 }, &pins.0).unwrap();
    assert_eq!(smaller.ring_slots(), 1000, "never shrunk under a running program");
    assert_eq!(smaller.ring_slot(190, 9).unwrap(), 109);
}

#[test]
fn the_pre_filter_is_counted_again_from_the_pinned_maps_after_a_restart() {
    require_root!();
    use lb_userspace::dataplane::{Dataplane, LoadOptions};
    let pins = lb_tests::PinDir::new("filter");
    let opts = LoadOptions { conn_table_size: 1024, ring_slots: 4 * TEST_RING_SIZE };
    let mut first = Balancer::with_dataplane(Dataplane::load_pinned(&opts, &pins.0).unwrap(), lb_common::programs::BALANCER);
    let web = first.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &REALS4);
    let dns = first.add_vip("10.0.0.1", 53, UDP, 0, TEST_RING_SIZE, &REALS4);
    first.set_handoff(Some(ip("10.20.9.2")), &[ip("10.20.1.2")], false).unwrap();
    let config = first.config().clone();
    drop(first);
    let mut second = Balancer::recovered(Dataplane::load_pinned(&opts, &pins.0).unwrap(), lb_common::programs::BALANCER, config);
    for addr in ["10.0.0.1", "10.20.9.2"] {
        assert!(second.dp().vip_filter_bit(ip(addr)).unwrap(), "{addr} in the filter");
    }
    // Two VIPs on the address: it stays until the second goes (counted again, not just read).
    second.remove_vip(&web);
    assert!(second.dp().vip_filter_bit(ip("10.0.0.1")).unwrap(), "one VIP left on the address");
    second.remove_vip(&dns);
    assert!(!second.dp().vip_filter_bit(ip("10.0.0.1")).unwrap(), "the address's bit is clear with its last VIP");
    second.set_handoff(None, &[], false).unwrap();
    assert!(!second.dp().vip_filter_bit(ip("10.20.9.2")).unwrap(), "and the handoff address's without handoff");
}

#[test]
fn a_pinned_connection_table_of_another_size_is_refused() {
    require_root!();
    use lb_userspace::dataplane::{Dataplane, DataplaneError, LoadOptions};
    let pins = lb_tests::PinDir::new("size");
    let dir = pins.0.clone();
    let first = Dataplane::load_pinned(&LoadOptions { conn_table_size: 1024, ring_slots: 2 }, &dir).unwrap();
    let same = Dataplane::load_pinned(&LoadOptions { conn_table_size: 1024, ring_slots: 2 }, &dir);
    assert!(same.is_ok(), "the same size reuses the pinned maps");
    let other = Dataplane::load_pinned(&LoadOptions { conn_table_size: 2048, ring_slots: 2 }, &dir);
    assert!(matches!(other, Err(DataplaneError::PinnedSizeMismatch { pinned: 1024, wanted: 2048, .. })), "{:?}", other.err());
    drop((first, same));
}
