//! What the pipeline passes along about a packet: how it arrived, what a client's packet says
//! about its flow, and the per-CPU scratch for the larger working values. The steps of the
//! pipeline (parse, conntrack, handoff, the balancer) import it; it imports none of them (only
//! the tunnel header's type from `encap`).

use lb_common::FlowKey;

use crate::encap::Outer;

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
