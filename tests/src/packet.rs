//! Frames for tests: built with etherparse, parsed back for assertions, and checksummed
//! independently of the code under test.

use std::net::IpAddr;

use etherparse::{Ethernet2Header, IpNumber, Ipv4Header, Ipv6Header, PacketBuilder};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
pub const PAYLOAD: &[u8] = b"anycast-lb test payload";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn v4(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("{a} is not IPv4"),
    }
}

fn v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("{a} is not IPv6"),
    }
}

/// The transport part of a test frame.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp { src: u16, dst: u16 },
    Udp { src: u16, dst: u16 },
    EchoRequest { id: u16, seq: u16 },
}

/// A client frame: Ethernet (optionally one VLAN tag), IPv4 or IPv6, TCP/UDP/echo, payload.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub ttl: u8,
    pub vlan: Option<u16>,
    pub payload: Vec<u8>,
    /// TCP: a connection-opening SYN (otherwise an ACK, mid-flow).
    pub syn: bool,
    /// IPv4: the don't-fragment flag (set by default, as TCP stacks send for path-MTU discovery).
    pub df: bool,
}

impl Frame {
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self::new(src, dst, L4::Tcp { src: sport, dst: dport })
    }
    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self::new(src, dst, L4::Udp { src: sport, dst: dport })
    }
    pub fn echo(src: &str, dst: &str) -> Self {
        Self::new(src, dst, L4::EchoRequest { id: 7, seq: 1 })
    }
    /// An echo request with this identifier and sequence number.
    pub fn echo_ids(src: &str, dst: &str, id: u16, seq: u16) -> Self {
        Self::new(src, dst, L4::EchoRequest { id, seq })
    }
    fn new(src: &str, dst: &str, l4: L4) -> Self {
        Self { src: ip(src), dst: ip(dst), l4, ttl: 64, vlan: None, payload: PAYLOAD.to_vec(), syn: false, df: true }
    }
    /// A TCP SYN that opens the flow (frames are mid-flow ACKs otherwise).
    pub fn syn(mut self) -> Self {
        self.syn = true;
        self.payload.clear();
        self
    }
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }
    /// IPv4 without the don't-fragment flag.
    pub fn fragmentable(mut self) -> Self {
        self.df = false;
        self
    }
    pub fn payload(mut self, len: usize) -> Self {
        self.payload = (0..len).map(|i| i as u8).collect();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
        macro_rules! finish {
            ($ip:expr) => {{
                let mut out = Vec::new();
                match self.l4 {
                    L4::Tcp { src, dst } if self.syn => $ip.tcp(src, dst, 1000, 64240).syn().write(&mut out, &self.payload),
                    L4::Tcp { src, dst } => $ip.tcp(src, dst, 1000, 64240).ack(1).write(&mut out, &self.payload),
                    L4::Udp { src, dst } => $ip.udp(src, dst).write(&mut out, &self.payload),
                    L4::EchoRequest { id, seq } if self.src.is_ipv4() => $ip.icmpv4_echo_request(id, seq).write(&mut out, &self.payload),
                    L4::EchoRequest { id, seq } => $ip.icmpv6_echo_request(id, seq).write(&mut out, &self.payload),
                }
                .expect("build frame");
                out
            }};
        }
        let mut frame = match (self.vlan, self.src.is_ipv4()) {
            (None, true) => finish!(eth.ipv4(v4(self.src), v4(self.dst), self.ttl)),
            (None, false) => finish!(eth.ipv6(v6(self.src), v6(self.dst), self.ttl)),
            (Some(id), true) => {
                finish!(eth.single_vlan(id.try_into().unwrap()).ipv4(v4(self.src), v4(self.dst), self.ttl))
            }
            (Some(id), false) => {
                finish!(eth.single_vlan(id.try_into().unwrap()).ipv6(v6(self.src), v6(self.dst), self.ttl))
            }
        };
        let ip = self.l2_len();
        if self.src.is_ipv4() && (frame[ip + 6] & 0x40 != 0) != self.df {
            frame[ip + 6] ^= 0x40;
            frame[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
            let check = !fold(sum16(&frame[ip..ip + 20]));
            frame[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
        }
        frame
    }

    /// Bytes of L2 header in the built frame.
    pub fn l2_len(&self) -> usize {
        if self.vlan.is_some() {
            18
        } else {
            14
        }
    }
}

/// One's-complement sum of `data` (RFC 1071), not folded to 16 bits yet.
pub fn sum16(data: &[u8]) -> u32 {
    data.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum()
}

pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Whether an ICMPv4 message's checksum is right.
pub fn icmpv4_checksum_ok(icmp: &[u8]) -> bool {
    fold(sum16(icmp)) == 0xffff
}

/// Whether an ICMPv6 message's checksum is right (pseudo-header included).
pub fn icmpv6_checksum_ok(src: [u8; 16], dst: [u8; 16], icmp: &[u8]) -> bool {
    let pseudo = sum16(&src) + sum16(&dst) + icmp.len() as u32 + 58;
    fold(pseudo + sum16(icmp)) == 0xffff
}

/// An encapsulated frame as the balancer sent it.
#[derive(Debug)]
pub struct Encapsulated {
    pub eth: Ethernet2Header,
    pub vlan_tci: Option<[u8; 2]>,
    pub outer: Outer,
    /// Everything after the outer IP header: the client's IP packet.
    pub inner: Vec<u8>,
}

#[derive(Debug)]
pub enum Outer {
    V4(Ipv4Header),
    V6(Ipv6Header),
}

impl Outer {
    pub fn src(&self) -> IpAddr {
        match self {
            Outer::V4(h) => IpAddr::from(h.source),
            Outer::V6(h) => IpAddr::from(h.source),
        }
    }
    pub fn dst(&self) -> IpAddr {
        match self {
            Outer::V4(h) => IpAddr::from(h.destination),
            Outer::V6(h) => IpAddr::from(h.destination),
        }
    }
    pub fn proto(&self) -> IpNumber {
        match self {
            Outer::V4(h) => h.protocol,
            Outer::V6(h) => h.next_header,
        }
    }
}

/// Parses an encapsulated frame; panics with the frame when it is not one.
pub fn parse_encapsulated(frame: &[u8]) -> Encapsulated {
    let (eth, mut rest) = Ethernet2Header::from_slice(frame).unwrap_or_else(|e| panic!("{e}: {frame:02x?}"));
    let mut ether_type = eth.ether_type.0;
    let mut vlan_tci = None;
    if ether_type == 0x8100 {
        vlan_tci = Some([rest[0], rest[1]]);
        ether_type = u16::from_be_bytes([rest[2], rest[3]]);
        rest = &rest[4..];
    }
    let (outer, inner) = match ether_type {
        0x0800 => {
            let (h, inner) = Ipv4Header::from_slice(rest).unwrap_or_else(|e| panic!("{e}: {frame:02x?}"));
            assert_eq!(h.total_len as usize, rest.len(), "outer total length covers the frame");
            (Outer::V4(h), inner)
        }
        0x86dd => {
            let (h, inner) = Ipv6Header::from_slice(rest).unwrap_or_else(|e| panic!("{e}: {frame:02x?}"));
            assert_eq!(h.payload_length as usize, inner.len(), "outer payload length covers the frame");
            (Outer::V6(h), inner)
        }
        other => panic!("ether type {other:#06x} is not IP: {frame:02x?}"),
    };
    Encapsulated { eth, vlan_tci, outer, inner: inner.to_vec() }
}

/// An ICMP error from a router on the path about a packet the real sent (`quoted_src` =
/// the VIP, `quoted_dst` = the client), quoting the IP header and `quote_len` transport bytes.
/// IPv4: "fragmentation needed" (3/4); IPv6: "packet too big" (2/0). MTU 1400.
pub fn icmp_too_big(router: &str, vip: &str, quoted_src: (&str, u16), quoted_dst: (&str, u16), quote_len: usize) -> Vec<u8> {
    let (vip, router) = (ip(vip), ip(router));
    let (qs, qd) = (ip(quoted_src.0), ip(quoted_dst.0));
    let mut transport = Vec::new();
    transport.extend(quoted_src.1.to_be_bytes());
    transport.extend(quoted_dst.1.to_be_bytes());
    transport.extend([0, 0, 0x30, 0x39, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff]); // seq, ack, flags
    transport.truncate(quote_len);
    let mut quote = Vec::new();
    let mut out = Vec::new();
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    if vip.is_ipv4() {
        let h = Ipv4Header::new(1480, 63, IpNumber::TCP, v4(qs), v4(qd)).expect("header");
        quote.extend(h.to_bytes());
        quote.extend(transport);
        eth.ipv4(v4(router), v4(vip), 64).icmpv4_raw(3, 4, [0, 0, 0x05, 0x78]).write(&mut out, &quote)
    } else {
        let h = Ipv6Header {
            traffic_class: 0,
            flow_label: Default::default(),
            payload_length: 1440,
            next_header: IpNumber::TCP,
            hop_limit: 63,
            source: v6(qs),
            destination: v6(qd),
        };
        quote.extend(h.to_bytes());
        quote.extend(transport);
        eth.ipv6(v6(router), v6(vip), 64).icmpv6_raw(2, 0, 1400u32.to_be_bytes()).write(&mut out, &quote)
    }
    .expect("build ICMP error");
    out
}

/// `inner` (a client frame) tunnelled from `src` to `dst` as a handoff would be: IPIP with IPv4
/// ID `id`, or IPv6 with flow label `id`, arriving from the router.
pub fn tunnel(inner: &Frame, src: &str, dst: &str, id: u32) -> Vec<u8> {
    let packet = &inner.build()[inner.l2_len()..];
    let (src, dst) = (ip(src), ip(dst));
    let mut out = Ethernet2Header { source: ROUTER_MAC, destination: LB_MAC, ether_type: etherparse::EtherType::IPV4 };
    let mut frame = Vec::new();
    if src.is_ipv4() {
        let mut h = Ipv4Header::new(packet.len() as u16, 63, IpNumber::IPV4, v4(src), v4(dst)).expect("header");
        h.identification = id as u16;
        h.header_checksum = h.calc_header_checksum();
        frame.extend(out.to_bytes());
        frame.extend(h.to_bytes());
    } else {
        out.ether_type = etherparse::EtherType::IPV6;
        let next_header = if inner.src.is_ipv4() { IpNumber::IPV4 } else { IpNumber::IPV6 };
        let h = Ipv6Header {
            traffic_class: 0,
            flow_label: etherparse::Ipv6FlowLabel::try_new(id).expect("flow label"),
            payload_length: packet.len() as u16,
            next_header,
            hop_limit: 63,
            source: v6(src),
            destination: v6(dst),
        };
        frame.extend(out.to_bytes());
        frame.extend(h.to_bytes());
    }
    frame.extend(packet);
    frame
}
