//! The backend's decapsulation program on each encapsulation the balancer produces, and the
//! second chance's GUE: the balancer's format, the backend's deliver or forward-once.

use lb_common::{
    programs,
    second_chance::{GUE4_OVERHEAD, GUE6_OVERHEAD, GUE_PORT},
    stats::{Counter, DecapCounter},
    VIP_F_SECOND_CHANCE,
};
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

// The second chance (docs/second-chance.md): the balancer's GUE, and the backend's deliver or
// forward-once.

/// A balancer whose VIP has the second chance and whose ring just changed completely: the reals
/// `before` drained (weight 0), those `after` added. Every unknown mid-flow packet carries a
/// real of `before` along.
fn changed_ring(vip: &str, flags: u32, before: &[&str], after: &[&str]) -> Balancer {
    let mut lb = Balancer::new();
    let weights = |b: u32, a: u32| before.iter().map(|r| (*r, b)).chain(after.iter().map(|r| (*r, a))).collect::<Vec<_>>();
    let mut meta = lb.add_vip(vip, 80, 6, flags, TEST_RING_SIZE, &weights(1, 0));
    lb.set_reals(&mut meta, &weights(0, 1));
    lb
}

/// Where a tunnel's UDP header is, and whether its outer header is IPv6.
fn udp_of(frame: &[u8]) -> (bool, usize) {
    let ipv6 = frame[12..14] == [0x86, 0xdd];
    (ipv6, if ipv6 { 14 + 40 } else { 14 + 20 })
}

fn outer_dst(frame: &[u8]) -> std::net::IpAddr {
    match udp_of(frame) {
        (true, _) => std::net::IpAddr::from(<[u8; 16]>::try_from(&frame[14 + 24..14 + 40]).unwrap()),
        (false, _) => std::net::IpAddr::from(<[u8; 4]>::try_from(&frame[14 + 16..14 + 20]).unwrap()),
    }
}

/// The outer IPv4 header's checksum holds (IPv6 has none).
fn outer_checksum_holds(frame: &[u8]) -> bool {
    if udp_of(frame).0 {
        return true;
    }
    let sum: u32 = frame[14..34].chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u32).sum();
    (sum & 0xffff) + (sum >> 16) == 0xffff
}

/// Client -> balancer (GUE with the previous real) -> the live real's backend, which holds no
/// socket for the flow and forwards it once -> the previous real's backend, which delivers the
/// client's packet byte for byte. A copy marked forwarded is delivered, never forwarded again.
fn second_chance_round_trip(client: Frame, vip: &str, before: [&str; 2], after: [&str; 2]) {
    let lb = changed_ring(vip, VIP_F_SECOND_CHANCE, &before, &after);
    let input = client.build();
    let out = lb.run(&input);
    assert_eq!(action_name(out.action), "XDP_TX");
    let (ipv6, udp) = udp_of(&out.data);
    let overhead = if ipv6 { GUE6_OVERHEAD } else { GUE4_OVERHEAD } as usize;
    assert_eq!(out.data.len(), input.len() + overhead);
    let (primary, alt) = (outer_dst(&out.data), lb_common::ip_of(out.data[udp + 16..udp + 32].try_into().unwrap()));
    assert!(after.contains(&primary.to_string().as_str()) && before.contains(&alt.to_string().as_str()), "{primary} with {alt}");
    assert_eq!(out.data[14 + if ipv6 { 6 } else { 9 }], 17, "UDP");
    assert_eq!(u16::from_be_bytes([out.data[udp + 2], out.data[udp + 3]]), GUE_PORT);
    let inner_proto = if client.l2_len() == 14 && input[12..14] == [0x86, 0xdd] { 41 } else { 4 };
    assert_eq!(&out.data[udp + 8..udp + 16], &[0x05, inner_proto, 0, 0, 1, 0, 0, 0], "GUE header, kind, hops 0");
    assert!(outer_checksum_holds(&out.data));
    assert_eq!(lb.dp().counter(Counter::SecondChanceSent).unwrap(), 1);

    let first = Decap::new(&[&primary.to_string()], &[vip]);
    let forwarded = first.run(&out.data);
    assert_eq!(action_name(forwarded.action), "XDP_TX", "no socket here: forwarded");
    let fwd = forwarded.data;
    assert_eq!(fwd.len(), out.data.len());
    assert_eq!(outer_dst(&fwd), alt);
    assert_eq!(fwd[udp + 13], 1, "marked forwarded");
    assert_eq!(fwd[14 + if ipv6 { 7 } else { 8 }], 63, "TTL / hop limit spent");
    assert!(outer_checksum_holds(&fwd));
    assert_eq!((&fwd[..6], &fwd[6..12]), (&out.data[6..12], &out.data[..6]), "back to the hop it came from");
    assert_eq!(first.dp.decap_counter(DecapCounter::SecondChanceForwarded).unwrap(), 1);

    let second = Decap::new(&[&alt.to_string()], &[vip]);
    let delivered = second.run(&fwd);
    assert_eq!(action_name(delivered.action), "XDP_PASS");
    let l2 = client.l2_len();
    assert_eq!(&delivered.data[l2..], &input[l2..], "the client's packet, byte for byte");
    let count = |d: &Decap, c| d.dp.decap_counter(c).unwrap();
    assert_eq!((count(&second, DecapCounter::Gue), count(&second, DecapCounter::SecondChanceReceived)), (1, 1));

    // Marked forwarded yet at a backend without the socket (a loop): delivered, not forwarded.
    let mut looped = out.data.clone();
    looped[udp + 13] = 1;
    assert_eq!(action_name(first.run(&looped).action), "XDP_PASS");
    assert_eq!(count(&first, DecapCounter::SecondChanceForwarded), 1, "forwarded once, ever");

    // Without the option the VIP's packets are today's tunnel, byte for byte.
    let plain = changed_ring(vip, 0, &before, &after).run(&input);
    assert_eq!(plain.data.len(), input.len() + if ipv6 { 40 } else { 20 });
    assert_eq!(plain.data[14 + if ipv6 { 6 } else { 9 }], inner_proto);
}

#[test]
fn second_chance_ipv4_in_gue_over_ipv4() {
    require_root!();
    second_chance_round_trip(Frame::tcp("192.0.2.1", 1234, "10.0.0.1", 80), "10.0.0.1", ["10.1.0.1", "10.1.0.2"], ["10.1.0.3", "10.1.0.4"]);
}

#[test]
fn second_chance_ipv6_in_gue_over_ipv6() {
    require_root!();
    second_chance_round_trip(
        Frame::tcp("2001:db8:c::1", 1234, "2001:db8::10", 80),
        "2001:db8::10",
        ["fd00:1::1", "fd00:1::2"],
        ["fd00:1::3", "fd00:1::4"],
    );
}

#[test]
fn second_chance_ipv4_in_gue_over_ipv6() {
    require_root!();
    second_chance_round_trip(
        Frame::tcp("192.0.2.1", 1234, "10.0.0.1", 80),
        "10.0.0.1",
        ["fd00:1::1", "fd00:1::2"],
        ["fd00:1::3", "fd00:1::4"],
    );
}

/// What the backend does not take: a GUE header that is not ours on the port (dropped,
/// counted), a GUE tunnel from outside the balancers' sources, and a SYN, which never carries an
/// alternative (it starts a connection on the live real).
#[test]
fn second_chance_refuses_what_is_not_ours_and_never_sends_a_syn_along() {
    require_root!();
    let lb = changed_ring("10.0.0.1", VIP_F_SECOND_CHANCE, &["10.1.0.1"], &["10.1.0.2"]);
    let out = lb.run(&Frame::tcp("192.0.2.1", 1, "10.0.0.1", 80).build()).data;
    let decap = Decap::new(&["10.1.0.2"], &["10.0.0.1"]);
    let (_, udp) = udp_of(&out);
    let mut bad = out.clone();
    bad[udp + 12] = 9; // an unknown kind
    assert_eq!(action_name(decap.run(&bad).action), "XDP_DROP");
    let mut foreign = out.clone();
    foreign[14 + 12..14 + 16].copy_from_slice(&[198, 51, 100, 7]);
    assert_eq!(action_name(decap.run(&foreign).action), "XDP_DROP");
    let count = |c| decap.dp.decap_counter(c).unwrap();
    assert_eq!((count(DecapCounter::DropSecondChanceMalformed), count(DecapCounter::DropForeignSource)), (1, 1));

    let syn = lb.run(&Frame::tcp("192.0.2.1", 2, "10.0.0.1", 80).syn().build());
    assert_eq!(syn.data[14 + 9], 4, "a SYN goes in plain IPIP");
}

/// The backend's socket check, on sockets of a namespace of the test's own: an established
/// connection's packet is delivered; a packet of a connection the host does not hold (a
/// listener only, or nothing on the port) is forwarded.
#[test]
fn second_chance_delivers_what_a_local_socket_holds() {
    require_root!();
    let ns = lb_tests::netns::NetNs::new("sc-sockets", false);
    ns.run(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _server = listener.accept().unwrap();
        let cport = client.local_addr().unwrap().port();
        // The balancer's VIP is 127.0.0.1 here, so the inner packet's tuple is the connection's.
        let decap = Decap::new(&["10.1.0.2"], &["127.0.0.1"]);
        let mut lb = Balancer::new();
        // Any port: the third tunnel is for a port nothing listens on.
        let mut meta = lb.add_vip("127.0.0.1", 0, 6, VIP_F_SECOND_CHANCE, TEST_RING_SIZE, &[("10.1.0.1", 1), ("10.1.0.2", 0)]);
        lb.set_reals(&mut meta, &[("10.1.0.1", 0), ("10.1.0.2", 1)]);
        let tunnel = |sport: u16, dport: u16| lb.run(&Frame::tcp("127.0.0.1", sport, "127.0.0.1", dport).build()).data;
        let established = decap.run(&tunnel(cport, port));
        assert_eq!(action_name(established.action), "XDP_PASS", "the established connection is here");
        assert_eq!(action_name(decap.run(&tunnel(cport.wrapping_add(1), port)).action), "XDP_TX", "a listener alone holds no connection");
        assert_eq!(action_name(decap.run(&tunnel(cport, port ^ 1)).action), "XDP_TX", "nothing on that port");
        let count = |c| decap.dp.decap_counter(c).unwrap();
        assert_eq!((count(DecapCounter::SecondChanceDelivered), count(DecapCounter::SecondChanceForwarded)), (1, 2));
    });
}
