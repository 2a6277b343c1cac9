//! Assertions shared by the packet tests.

use std::net::IpAddr;

use crate::test_run::{action_name, TestRun};

use crate::packet::{parse_encapsulated, Encapsulated, Outer, LB_MAC, ROUTER_MAC};

/// Asserts `out` is `input` encapsulated toward `real`: verdict, MACs, outer header and
/// checksum, per-flow outer source in the configured prefix, and the inner packet byte-identical.
pub fn encapsulated_to(out: &TestRun, input: &[u8], l2_len: usize, real: IpAddr) -> Encapsulated {
    assert_eq!(action_name(out.action), "XDP_TX", "verdict");
    let e = parse_encapsulated(&out.data);
    assert_eq!(e.eth.destination, ROUTER_MAC, "sent to the next hop");
    assert_eq!(e.eth.source, LB_MAC, "from the address it came in on");
    assert_eq!(e.outer.dst(), real, "outer destination is the chosen real");
    let inner = &input[l2_len..];
    assert_eq!(e.inner, inner, "inner packet byte-identical");
    let inner_v4 = inner[0] >> 4 == 4;
    match &e.outer {
        Outer::V4(h) => {
            assert_eq!(h.protocol.0, 4, "IPIP");
            assert_eq!(h.header_checksum, h.calc_header_checksum(), "outer IPv4 checksum");
            assert_eq!(h.time_to_live, 64);
            assert!(h.dont_fragment);
            let IpAddr::V4(src) = e.outer.src() else { unreachable!() };
            assert_eq!(&src.octets()[..2], &[10, 255], "outer source in 10.255.0.0/16");
        }
        Outer::V6(h) => {
            assert_eq!(h.next_header.0, if inner_v4 { 4 } else { 41 }, "IPv4-in-IPv6 / IPv6-in-IPv6");
            assert_eq!(h.hop_limit, 64);
            assert_eq!(&h.source[..12], &[0xfd, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0], "outer source in fd00:ffff::/96");
        }
    }
    e
}

/// Asserts the program passed the frame on untouched.
pub fn passed_untouched(out: &TestRun, input: &[u8]) {
    assert_eq!(action_name(out.action), "XDP_PASS", "verdict");
    assert_eq!(out.data, input, "frame untouched");
}
