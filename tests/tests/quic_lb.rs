//! QUIC-LB in the data plane, run in the kernel with BPF_PROG_TEST_RUN: short headers go to the
//! real their connection ID names, whatever the client's address or port; everything else goes
//! by the ring, counted by why; the draft's test vectors decode in the kernel too.

use lb_common::stats::Counter;
use lb_tests::{
    expect::encapsulated_to,
    fixture::{Balancer, Vip, TEST_RING_SIZE},
    packet::{ip, Frame},
    require_root,
};
use lb_userspace::quic_lb::{parse_hex, QuicLbConfig};

const VIP: &str = "10.0.0.1";
const PORT: u16 = 443;
const REALS: [(&str, &[u8]); 3] = [("10.1.0.1", &[0x0a, 0x01]), ("10.1.0.2", &[0x0a, 0x02]), ("10.1.0.3", &[0x0a, 0x03])];

fn plaintext() -> QuicLbConfig {
    QuicLbConfig { config_id: 1, server_id_len: 2, nonce_len: 6, cid_len: 9, key: None }
}

/// A short-header packet (first octet 0x40 | spin/key bits) with `cid`, then 24 octets of
/// "protected payload".
fn short_header(cid: &[u8]) -> Vec<u8> {
    let mut p = vec![0x41];
    p.extend_from_slice(cid);
    p.extend((0..24).map(|i| i as u8 ^ 0x5a));
    p
}

fn client(src: &str, port: u16, payload: Vec<u8>) -> Frame {
    let mut f = Frame::udp(src, port, VIP, PORT);
    f.payload = payload;
    f
}

/// A connection ID for real `i`'s server ID, with a nonce from `n`.
fn cid_for(config: &QuicLbConfig, sid: &[u8], n: u8) -> Vec<u8> {
    let nonce: Vec<u8> = (0..config.nonce_len).map(|i| n.wrapping_mul(31).wrapping_add(i)).collect();
    config.encode(sid, &nonce, n & 0x1f, &[0xee; 4])
}

fn counter(lb: &Balancer, c: Counter) -> u64 {
    lb.dp().counter(c).unwrap()
}

/// Sends each real's connection IDs from many addresses and ports: every packet lands on the
/// real its ID names. Returns how many of those the ring alone would have sent elsewhere.
fn routed_by_cid(lb: &Balancer, vip: &Vip, config: &QuicLbConfig) -> usize {
    let mut ring_elsewhere = 0;
    for (i, (real, sid)) in REALS.iter().enumerate() {
        for n in 0..20u8 {
            let cid = cid_for(config, sid, n);
            let frame = client(&format!("192.0.2.{}", 1 + n), 20_000 + 7 * n as u16 + i as u16, short_header(&cid));
            let input = frame.build();
            encapsulated_to(&lb.run(&input), &input, frame.l2_len(), ip(real));
            ring_elsewhere += usize::from(lb.expected_real(vip, &frame) != ip(real));
        }
    }
    ring_elsewhere
}

#[test]
fn short_headers_go_to_the_real_their_connection_id_names() {
    require_root!();
    let mut lb = Balancer::new();
    let config = plaintext();
    let vip = lb.add_quic_vip(VIP, PORT, &config, &REALS);
    let elsewhere = routed_by_cid(&lb, &vip, &config);
    assert_eq!(counter(&lb, Counter::QuicRoutedByCid), 60);
    assert!(elsewhere >= 20, "the ring alone would have sent {elsewhere} of 60 elsewhere");
    // Each new 5-tuple is recorded with the ID's real.
    let stats = lb.dp().vip_stats(vip.meta.vip_index).unwrap();
    assert_eq!((stats.packets, stats.new_flows), (60, 60));
}

#[test]
fn without_quic_lb_the_same_packets_follow_the_ring() {
    require_root!();
    let mut lb = Balancer::new();
    let vip = lb.add_vip(VIP, PORT, 17, 0, TEST_RING_SIZE, &[("10.1.0.1", 1), ("10.1.0.2", 1), ("10.1.0.3", 1)]);
    let config = plaintext();
    let mut off_its_real = 0;
    for (real, sid) in REALS {
        for n in 0..20u8 {
            let frame = client(&format!("192.0.2.{}", 1 + n), 20_000 + n as u16, short_header(&cid_for(&config, sid, n)));
            let input = frame.build();
            let ring = lb.expected_real(&vip, &frame);
            encapsulated_to(&lb.run(&input), &input, frame.l2_len(), ring);
            off_its_real += usize::from(ring != ip(real));
        }
    }
    println!("QUIC-LB off: {off_its_real} of 60 packets went to another real than their connection ID names");
    assert!(off_its_real >= 20);
    assert_eq!(counter(&lb, Counter::QuicRoutedByCid), 0);
}

#[test]
fn the_id_outranks_the_tables_entry_for_the_5_tuple() {
    require_root!();
    let mut lb = Balancer::new();
    let config = plaintext();
    lb.add_quic_vip(VIP, PORT, &config, &REALS);
    // A 5-tuple first used by a connection on real 0 (its ID recorded the flow there) ...
    let first = client("192.0.2.50", 7000, short_header(&cid_for(&config, REALS[0].1, 1)));
    let input = first.build();
    encapsulated_to(&lb.run(&input), &input, first.l2_len(), ip(REALS[0].0));
    // ... then by another connection on real 2 (a NAT gave the port to another client): its
    // packets go to real 2, as many as come.
    let second = client("192.0.2.50", 7000, short_header(&cid_for(&config, REALS[2].1, 2)));
    let input = second.build();
    for _ in 0..3 {
        encapsulated_to(&lb.run(&input), &input, second.l2_len(), ip(REALS[2].0));
    }
    assert_eq!(counter(&lb, Counter::QuicRoutedByCid), 4);
}

#[test]
fn a_new_address_or_port_keeps_the_real() {
    require_root!();
    let mut lb = Balancer::new();
    let config = plaintext();
    lb.add_quic_vip(VIP, PORT, &config, &REALS);
    let cid = cid_for(&config, REALS[1].1, 3);
    for (src, port) in [("192.0.2.9", 40_000), ("192.0.2.9", 40_001), ("198.51.100.77", 5_000), ("203.0.113.4", 65_000)] {
        let frame = client(src, port, short_header(&cid));
        let input = frame.build();
        encapsulated_to(&lb.run(&input), &input, frame.l2_len(), ip(REALS[1].0));
    }
    assert_eq!(counter(&lb, Counter::QuicRoutedByCid), 4);
    // The fixed bit cleared (greased, RFC 9287: quinn does it): still routed by the ID.
    let mut greased = short_header(&cid);
    greased[0] &= !0x40;
    let frame = client("192.0.2.10", 41_000, greased);
    let input = frame.build();
    encapsulated_to(&lb.run(&input), &input, frame.l2_len(), ip(REALS[1].0));
    assert_eq!(counter(&lb, Counter::QuicRoutedByCid), 5);
}

/// `payload` from a fresh client goes by the ring, counting `why` once.
fn falls_back(lb: &Balancer, vip: &Vip, payload: Vec<u8>, why: Counter, port: u16) {
    let before = counter(lb, why);
    let frame = client("192.0.2.200", port, payload);
    let input = frame.build();
    encapsulated_to(&lb.run(&input), &input, frame.l2_len(), lb.expected_real(vip, &frame));
    let all = lb.dp().counters().unwrap();
    let quic: std::collections::BTreeMap<_, _> = all.iter().filter(|(k, _)| k.starts_with("quic")).collect();
    assert_eq!(counter(lb, why), before + 1, "{why:?} {quic:?}");
}

#[test]
fn everything_else_goes_by_the_ring_counted_by_why() {
    require_root!();
    let mut lb = Balancer::new();
    let config = plaintext();
    let vip = lb.add_quic_vip(VIP, PORT, &config, &REALS);
    let good = short_header(&cid_for(&config, REALS[0].1, 1));

    // An Initial: the long header's DCID is the client's choice.
    let mut initial = vec![0xc0, 0, 0, 0, 1, 9];
    initial.extend_from_slice(&good[1..10]);
    initial.extend_from_slice(&[0; 40]);
    falls_back(&lb, &vip, initial, Counter::QuicLongHeader, 1000);
    // A server ID no real has.
    falls_back(&lb, &vip, short_header(&cid_for(&config, &[0x0b, 0x09], 1)), Counter::QuicUnknownServerId, 1001);
    // Another config's rotation bits, and the unroutable 0b111.
    for (k, first) in [0b010u8 << 5, 0b111 << 5].into_iter().enumerate() {
        let mut other = good.clone();
        other[1] = first | 8;
        falls_back(&lb, &vip, other, Counter::QuicOtherConfig, 1002 + k as u16);
    }
    // Not QUIC: an empty datagram.
    falls_back(&lb, &vip, Vec::new(), Counter::QuicNotQuic, 1005);
    // A connection ID shorter than configured (the datagram ends inside it), and a header the
    // frame cannot hold 21 octets of (no QUIC packet is that short).
    falls_back(&lb, &vip, good[..6].to_vec(), Counter::QuicBadLength, 1006);
    falls_back(&lb, &vip, good[..12].to_vec(), Counter::QuicBadLength, 1007);
    // The named real down: its packets go by the ring (which no longer has it).
    lb.mark_down(REALS[0].0);
    let vip = lb.vip(vip.id);
    falls_back(&lb, &vip, good.clone(), Counter::QuicRealDown, 1008);
    assert_eq!(counter(&lb, Counter::QuicRoutedByCid), 0);
}

fn key(text: &str) -> Option<[u8; 16]> {
    parse_hex(text).map(|k| k.try_into().unwrap())
}

/// The draft's vectors (draft-ietf-quic-load-balancers-21 appendix B) decoded by the kernel: a
/// VIP with the vector's parameters and a real with its server ID gets the vector's CID.
#[test]
fn the_drafts_test_vectors_decode_in_the_data_plane() {
    require_root!();
    let vectors_key = key("8f95f09245765f80256934e50c66207f");
    let vectors: [(Option<[u8; 16]>, &str, &str, &str); 7] = [
        (None, "c4605e", "4504cc4f", "07c4605e4504cc4f"),
        (None, "a350d28b42", "03487d970b", "20a350d28b4203487d970b"),
        (vectors_key, "ed793a", "ee080dbf", "0720b1d07b359d3c"),
        (vectors_key, "ed793a51d49b8f5fab65", "ee080dbf48", "2fcc381bc74cb4fbad2823a3d1f8fed2"),
        (vectors_key, "ed793a51d49b8f5f", "ee080dbf48c0d1e5", "504dd2d05a7b0de9b2b9907afb5ecf8cc3"),
        (vectors_key, "ed793a51d49b8f5fab", "ee080dbf48c0d1e55d", "125779c9cc86beb3a3a4a3ca96fce4bfe0cdbc"),
        (key("fdf726a9893ec05c0632d3956680baf0"), "31441a", "9c69c275", "0767947d29be054a"),
    ];
    for (i, (key, sid, nonce, cid)) in vectors.into_iter().enumerate() {
        let (sid, nonce, cid) = (parse_hex(sid).unwrap(), parse_hex(nonce).unwrap(), parse_hex(cid).unwrap());
        let config = QuicLbConfig {
            config_id: cid[0] >> 5,
            server_id_len: sid.len() as u8,
            nonce_len: nonce.len() as u8,
            cid_len: cid.len() as u8,
            key,
        };
        let mut lb = Balancer::new();
        // The vector's server ID and one that differs in its last octet.
        let mut other = sid.clone();
        *other.last_mut().unwrap() ^= 1;
        lb.add_quic_vip(VIP, PORT, &config, &[("10.1.0.1", &other), ("10.1.0.2", &sid)]);
        let frame = client("192.0.2.1", 4000 + i as u16, short_header(&cid));
        let input = frame.build();
        encapsulated_to(&lb.run(&input), &input, frame.l2_len(), ip("10.1.0.2"));
        assert_eq!(counter(&lb, Counter::QuicRoutedByCid), 1, "vector {i}");
    }
}

#[test]
fn encrypted_ids_route_at_every_mode() {
    require_root!();
    let k = key("00112233445566778899aabbccddeeff");
    // Four passes with a short server ID (three decryption passes), a long one (four), and the
    // single pass.
    for (sid_len, nonce_len) in [(2u8, 6u8), (9, 4), (4, 12)] {
        let config = QuicLbConfig { config_id: 2, server_id_len: sid_len, nonce_len, cid_len: 1 + sid_len + nonce_len + 2, key: k };
        let sids: Vec<Vec<u8>> = (1..=3u8).map(|r| (0..sid_len).map(|i| r.wrapping_mul(17) ^ i).collect()).collect();
        let reals: Vec<(&str, &[u8])> = REALS.iter().zip(&sids).map(|((a, _), s)| (*a, &s[..])).collect();
        let mut lb = Balancer::new();
        lb.add_quic_vip(VIP, PORT, &config, &reals);
        for (n, (real, sid)) in reals.iter().cycle().take(30).enumerate() {
            let frame = client("192.0.2.7", 30_000 + n as u16, short_header(&cid_for(&config, sid, n as u8)));
            let input = frame.build();
            encapsulated_to(&lb.run(&input), &input, frame.l2_len(), ip(real));
        }
        assert_eq!(counter(&lb, Counter::QuicRoutedByCid), 30, "server ID {sid_len}, nonce {nonce_len}");
    }
}
