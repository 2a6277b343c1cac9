//! Malformed and odd frames: each gets its documented action and counts its reason.
//! (A frame cut before its destination address passes: nothing says it is for a VIP.)

use lb_common::stats::Counter;
use lb_tests::test_run::action_name;
use lb_tests::{
    fixture::{Balancer, TEST_RING_SIZE},
    packet::Frame,
    require_root,
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const IP4: usize = 14; // IPv4 / IPv6 header offset in an untagged frame
const L4_4: usize = 14 + 20;
const L4_6: usize = 14 + 40;

fn tcp4() -> Vec<u8> {
    Frame::tcp("192.0.2.1", 1111, "10.0.0.1", 80).build()
}
fn udp4() -> Vec<u8> {
    Frame::udp("192.0.2.1", 1111, "10.0.0.1", 53).build()
}
fn tcp6() -> Vec<u8> {
    Frame::tcp("2001:db8:c::1", 1111, "2001:db8::10", 80).build()
}
fn set16(f: &mut [u8], off: usize, v: u16) {
    f[off..off + 2].copy_from_slice(&v.to_be_bytes());
}
fn ip4_total(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[IP4 + 2], f[IP4 + 3]])
}
/// Cuts the frame to `len` bytes and makes the IP header agree, so only the transport is short.
fn cut_transport4(mut f: Vec<u8>, len: usize) -> Vec<u8> {
    f.truncate(len);
    set16(&mut f, IP4 + 2, (len - IP4) as u16);
    f
}
fn cut_transport6(mut f: Vec<u8>, len: usize) -> Vec<u8> {
    f.truncate(len);
    set16(&mut f, IP4 + 4, (len - L4_6) as u16);
    f
}
/// Puts an IPv6 extension header of type `next` (8 bytes) in front of the transport header.
fn with_ext6(next: u8) -> Vec<u8> {
    let mut f = tcp6();
    let upper = f[IP4 + 6];
    f[IP4 + 6] = next;
    let payload = u16::from_be_bytes([f[IP4 + 4], f[IP4 + 5]]) + 8;
    set16(&mut f, IP4 + 4, payload);
    f.splice(L4_6..L4_6, [upper, 0, 0, 0, 0, 0, 0, 0]);
    f
}

struct Case {
    what: &'static str,
    frame: Vec<u8>,
    action: &'static str,
    reason: Counter,
}

fn case(what: &'static str, frame: Vec<u8>, action: &'static str, reason: Counter) -> Case {
    Case { what, frame, action, reason }
}

fn cases() -> Vec<Case> {
    use Counter::*;
    let (pass, drop, tx) = ("XDP_PASS", "XDP_DROP", "XDP_TX");
    vec![
        case("Ethernet header only", tcp4()[..14].to_vec(), pass, PassTruncated),
        case(
            "802.1Q tag cut short",
            {
                let mut f = tcp4()[..16].to_vec();
                set16(&mut f, 12, 0x8100);
                f
            },
            pass,
            PassTruncated,
        ),
        case("IPv4 header cut before the destination", tcp4()[..IP4 + 10].to_vec(), pass, PassTruncated),
        case("IPv6 header cut before the destination", tcp6()[..IP4 + 30].to_vec(), pass, PassTruncated),
        case(
            "IPv4 IHL below 5",
            {
                let mut f = tcp4();
                f[IP4] = 0x44;
                f
            },
            drop,
            DropBadIpHeader,
        ),
        case(
            "IPv4 IHL beyond the packet",
            {
                let mut f = tcp4();
                f[IP4] = 0x4f;
                f.truncate(IP4 + 40);
                set16(&mut f, IP4 + 2, 40);
                f
            },
            drop,
            DropBadIpHeader,
        ),
        case(
            "IPv4 version 6 in an IPv4 frame",
            {
                let mut f = tcp4();
                f[IP4] = 0x65;
                f
            },
            drop,
            DropBadIpHeader,
        ),
        case(
            "IPv4 total length beyond the frame",
            {
                let mut f = tcp4();
                let t = ip4_total(&f);
                set16(&mut f, IP4 + 2, t + 1);
                f
            },
            drop,
            DropBadIpHeader,
        ),
        case(
            "IPv4 total length below the header",
            {
                let mut f = tcp4();
                set16(&mut f, IP4 + 2, 19);
                f
            },
            drop,
            DropBadIpHeader,
        ),
        case(
            "IPv4 first fragment (MF)",
            {
                let mut f = tcp4();
                set16(&mut f, IP4 + 6, 0x2000);
                f
            },
            drop,
            DropFragment,
        ),
        case(
            "IPv4 later fragment (offset)",
            {
                let mut f = tcp4();
                set16(&mut f, IP4 + 6, 0x0010);
                f
            },
            drop,
            DropFragment,
        ),
        case("TCP header cut short", cut_transport4(tcp4(), L4_4 + 10), drop, DropBadL4Header),
        case(
            "TCP data offset below 5",
            {
                let mut f = tcp4();
                f[L4_4 + 12] = 0x40;
                f
            },
            drop,
            DropBadL4Header,
        ),
        case(
            "TCP data offset beyond the packet",
            {
                let mut f = tcp4();
                f[L4_4 + 12] = 0xf0;
                f
            },
            drop,
            DropBadL4Header,
        ),
        case("UDP header cut short", cut_transport4(udp4(), L4_4 + 4), drop, DropBadL4Header),
        case(
            "UDP length beyond the packet",
            {
                let mut f = udp4();
                let t = ip4_total(&f);
                set16(&mut f, L4_4 + 4, t);
                f
            },
            drop,
            DropBadL4Header,
        ),
        case(
            "UDP length below 8",
            {
                let mut f = udp4();
                set16(&mut f, L4_4 + 4, 7);
                f
            },
            drop,
            DropBadL4Header,
        ),
        case(
            "IPv6 payload length beyond the frame",
            {
                let mut f = tcp6();
                set16(&mut f, IP4 + 4, 2000);
                f
            },
            drop,
            DropBadIpHeader,
        ),
        case(
            "IPv6 version 4 in an IPv6 frame",
            {
                let mut f = tcp6();
                f[IP4] = 0x40;
                f
            },
            drop,
            DropBadIpHeader,
        ),
        case("IPv6 hop-by-hop options", with_ext6(0), drop, DropIpv6ExtHeader),
        case("IPv6 routing header", with_ext6(43), drop, DropIpv6ExtHeader),
        case("IPv6 fragment header", with_ext6(44), drop, DropIpv6ExtHeader),
        case("IPv6 destination options", with_ext6(60), drop, DropIpv6ExtHeader),
        case("TCP over IPv6 cut short", cut_transport6(tcp6(), L4_6 + 12), drop, DropBadL4Header),
        case(
            "ICMP echo cut short",
            {
                let f = Frame::echo("192.0.2.1", "10.0.0.1").build();
                cut_transport4(f, L4_4 + 4)
            },
            drop,
            DropBadIcmp,
        ),
        case(
            "oversize after encapsulation, no DF",
            Frame::tcp("192.0.2.1", 1, "10.0.0.1", 80).payload(1500 - 40).fragmentable().build(),
            drop,
            DropMtuExceeded,
        ),
        case(
            "IPv4 fragment to another address",
            {
                let mut f = Frame::tcp("192.0.2.1", 1, "10.9.9.9", 80).build();
                set16(&mut f, IP4 + 6, 0x2000);
                f
            },
            pass,
            Pass,
        ),
        case(
            "garbage to another address",
            {
                let mut f = Frame::tcp("192.0.2.1", 1, "10.9.9.9", 80).build();
                f[IP4] = 0x41;
                f
            },
            pass,
            Pass,
        ),
        case(
            "unknown protocol to a VIP address",
            {
                let mut f = tcp4();
                f[IP4 + 9] = 47;
                f
            },
            pass,
            Pass,
        ),
        case(
            "IPv4 with options (IHL 6) is fine",
            {
                let mut f = tcp4();
                f.splice(L4_4..L4_4, [1, 1, 1, 0]); // NOP, NOP, NOP, end of options
                f[IP4] = 0x46;
                let t = ip4_total(&f);
                set16(&mut f, IP4 + 2, t + 4);
                f
            },
            tx,
            Tx,
        ),
        case("TTL 1 to a VIP is delivered", Frame::tcp("192.0.2.1", 1, "10.0.0.1", 80).ttl(1).build(), tx, Tx),
        case(
            "Ethernet padding after a short IPv4 packet",
            {
                let mut f = tcp4();
                f.extend([0; 16]);
                f
            },
            tx,
            Tx,
        ),
    ]
}

#[test]
fn malformed_frames_get_their_documented_action() {
    require_root!();
    let mut lb = Balancer::new();
    lb.add_vip("10.0.0.1", 80, TCP, 0, TEST_RING_SIZE, &[("10.1.0.1", 1)]);
    lb.add_vip("10.0.0.1", 53, UDP, 0, TEST_RING_SIZE, &[("10.1.0.1", 1)]);
    lb.add_vip("2001:db8::10", 80, TCP, 0, TEST_RING_SIZE, &[("fd00:1::1", 1)]);
    let cases = cases();
    let drops = cases.iter().filter(|c| c.action == "XDP_DROP").count();
    assert!(drops >= 20, "{drops} malformed variants");
    for c in &cases {
        let before = lb.dp().counter(c.reason).unwrap();
        let out = lb.run(&c.frame);
        assert_eq!(action_name(out.action), c.action, "{}", c.what);
        assert_eq!(lb.dp().counter(c.reason).unwrap(), before + 1, "{}: counted as {}", c.what, c.reason.name());
        if c.action == "XDP_PASS" {
            assert_eq!(out.data, c.frame, "{}: passed untouched", c.what);
        }
    }
    println!("{} cases, {drops} drops, counters: {:?}", cases.len(), lb.dp().counters().unwrap());
}
