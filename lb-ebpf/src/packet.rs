//! What the pipeline passes along about a packet: protocol numbers, the parsed L3 header, how
//! the packet arrived, what a client's packet says about its flow, the tunnel header to put in
//! front of it, and the per-CPU scratch for the larger working values. A leaf: the steps of the
//! pipeline (parse, conntrack, handoff, encap, the balancer) import it; it imports none of them.

use lb_common::FlowKey;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ICMPV6: u8 = 58;

/// What the parser learned about an IP packet to a VIP address.
#[derive(Clone, Copy)]
pub struct L3 {
    /// Bytes of Ethernet header (+ VLAN tag) before the IP header.
    pub l2_len: usize,
    pub ipv6: bool,
    /// Bytes of the IP packet, header included, as its header says (frame padding excluded).
    pub ip_len: u32,
    /// Offset of the transport header and bytes from there to the IP packet's end.
    pub l4_off: usize,
    pub l4_len: u32,
    pub proto: u8,
    /// IPv4 TOS / IPv6 traffic class, copied to the outer header.
    pub tos: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// The outer header to put in front of a packet.
pub struct Outer {
    pub dst: [u8; 16],
    pub ipv6: bool,
    /// IPv4 sources use the last four bytes.
    pub src: [u8; 16],
    /// IPv4 ID, or IPv6 flow label (20 bits).
    pub id: u32,
}

/// How a packet reached the balancer; decides what happens when its flow is not in the
/// connection table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// From a client.
    Client(ClientPacket),
    /// Handed off by the peer node `Scratch::from`: sent back unless we adopt it.
    Handoff,
    /// Our handoff, back from a peer that does not know the flow: ours to balance.
    CameBack,
    /// An ICMP error quoting the flow: forwarded, never recorded.
    IcmpError,
}

/// The balancer's larger working values, kept in the per-CPU `maps::SCRATCH` rather than on the
/// stack. None is a packet offset: the verifier keeps no bounds for values in map memory, and
/// offsets need them for packet accesses.
pub struct Scratch {
    /// The packet's flow (for an ICMP error, the flow it quotes).
    pub flow: FlowKey,
    /// The header that goes in front of the packet.
    pub outer: Outer,
    /// The peer node a handoff came from.
    pub from: [u8; 16],
    /// QUIC-LB: the server ID a connection ID carries, as `QUIC_SERVERS` keys it.
    pub server_id: lb_common::quic_lb::ServerIdKey,
    /// QUIC-LB: the blocks an encrypted connection ID is decrypted in.
    pub quic_work: lb_common::quic_lb::Work,
}

/// What a client's packet tells about where its flow starts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClientPacket {
    /// A TCP SYN without ACK: the connection starts with this packet.
    Syn,
    /// Any other TCP packet: its connection began before it, elsewhere (another site, before a
    /// route change) or forgotten here; handed off when peers are configured.
    MidFlow,
    /// UDP: nothing tells where a flow starts.
    Datagram,
}
