//! Global counters (`STATS`, per CPU; every drop has its own reason) and the decapsulator's
//! (`DECAP_STATS`): each enum's variants, `ALL` list and names come from one list.

/// Defines a counter enum (`#[repr(u32)]`, numbered in order: the index in its map) with its
/// `ALL` list and each counter's stable snake_case name for metrics and the CLI, all from one
/// list, so a counter cannot be added to one and forgotten in another.
macro_rules! counters {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// Stable snake_case name for metrics and the CLI.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }
    };
}

counters! {
    /// The balancer's counters (`STATS`): verdicts, drop and pass reasons, handoffs.
    Counter {
        /// Verdicts of the balancer, one per packet.
        Pass = "pass",
        Tx = "tx",
        Drop = "drop",
        Aborted = "aborted",
        /// Passed because the frame is too short to tell whether it is for a VIP.
        PassTruncated = "pass_truncated",
        /// Echo requests to a VIP address answered by the balancer.
        IcmpEchoReplied = "icmp_echo_replied",
        /// Frag-needed / packet-too-big forwarded to the real of the quoted flow.
        IcmpToReal = "icmp_to_real",
        /// The connection table refused an insert; the packet was still forwarded.
        ConnInsertFailed = "conn_insert_failed",
        /// Drop reasons, for packets to a VIP address.
        DropBadIpHeader = "drop_bad_ip_header",
        DropFragment = "drop_fragment",
        DropIpv6ExtHeader = "drop_ipv6_ext_header",
        DropBadL4Header = "drop_bad_l4_header",
        DropBadIcmp = "drop_bad_icmp",
        DropNoReal = "drop_no_real",
        /// Over the MTU once encapsulated and nothing to tell the client: IPv4 without DF (we do
        /// not fragment), or an ICMP error being forwarded.
        DropMtuExceeded = "drop_mtu_exceeded",
        DropFamilyMismatch = "drop_family_mismatch",
        DropEncapFailed = "drop_encap_failed",
        DropNoConfig = "drop_no_config",
        /// Mid-flow TCP packets of unknown flows tunnelled to a peer site's node.
        HandoffSent = "handoff_sent",
        /// Handoffs from peers (forwarded to our real unless counted as returned).
        HandoffReceived = "handoff_received",
        /// Handoffs from peers for flows we do not know either, sent back.
        HandoffReturned = "handoff_returned",
        /// Our handoffs that came back; balanced here.
        HandoffCameBack = "handoff_came_back",
        /// A tunnel to our handoff address whose inner packet is not for a VIP or is malformed.
        DropBadHandoff = "drop_bad_handoff",
        /// Packets over the MTU once encapsulated, answered with ICMP "fragmentation needed" /
        /// "packet too big" (the packet itself is not sent: the answer is).
        IcmpTooBigSent = "icmp_too_big_sent",
        /// Over the MTU, and the too-big answers are over their rate limit: dropped unanswered.
        DropTooBigSuppressed = "drop_too_big_suppressed",
        /// Echo requests to a VIP over their rate limit: dropped unanswered (a spoofed flood
        /// would otherwise be reflected 1:1).
        DropEchoSuppressed = "drop_echo_suppressed",
        /// New flows forwarded by the ring but not recorded: inserts were over their rate limit.
        FlowUnrecorded = "flow_unrecorded",
        /// Unknown mid-flow packets balanced here instead of handed off: handoffs were over their
        /// rate limit.
        HandoffSuppressed = "handoff_suppressed",
        /// A tunnel to our handoff address from a source that is not a configured peer.
        DropHandoffNotPeer = "drop_handoff_not_peer",
        /// Sent to a real with an alternative (the second chance): a mid-flow TCP packet the
        /// table did not hold whose previous ring named another real, or a hit on an entry made
        /// so.
        SecondChanceSent = "second_chance_sent",
        /// QUIC-LB (`quic_lb`): short-header packets sent to the real whose server ID their
        /// destination connection ID carries.
        QuicRoutedByCid = "quic_routed_by_cid",
        /// Packets to a QUIC-LB VIP that went by the connection table and ring instead: the
        /// server ID is not configured ...
        QuicUnknownServerId = "quic_unknown_server_id",
        /// ... its real is down ...
        QuicRealDown = "quic_real_down",
        /// ... the connection ID has other config rotation bits (0b111: unroutable on purpose) ...
        QuicOtherConfig = "quic_other_config",
        /// ... a long header (Initial, 0-RTT, Handshake, Retry): the client chose the ID ...
        QuicLongHeader = "quic_long_header",
        /// ... not QUIC: an empty datagram (the fixed bit is not required: RFC 9287 greases it) ...
        QuicNotQuic = "quic_not_quic",
        /// ... or too short to hold the configured connection ID (a truncated header).
        QuicBadLength = "quic_bad_length",
    }
}

counters! {
    /// Counters of the decapsulation program (`DECAP_STATS`, per CPU).
    DecapCounter {
        /// Tunnelled packets for a local address, stripped and passed up.
        Decapsulated = "decapsulated",
        /// Everything else, passed untouched.
        Pass = "pass",
        /// Tunnelled to a local address but the inner packet is cut short.
        DropMalformed = "drop_malformed",
        DropAdjustFailed = "drop_adjust_failed",
        /// A tunnel to a local address from outside the balancers' source prefixes: anyone who
        /// can reach the real could otherwise inject spoofed-source packets.
        DropForeignSource = "drop_foreign_source",
        /// A tunnel whose inner packet is not for one of this backend's VIPs (with forwarding
        /// on, the host would relay it anywhere).
        DropNotVip = "drop_not_vip",
        /// Of `Decapsulated`, by tunnel: IPv4 in IPv4 (IPIP), IPv6 in IPv6, IPv4 in IPv6, GUE.
        Ipip = "ipip",
        Ip6ip6 = "ip6ip6",
        Ip4in6 = "ip4in6",
        /// GUE over UDP to `second_chance::GUE_PORT`, IPv4 or IPv6 outside and in.
        Gue = "gue",
        /// Of `Decapsulated`: GUE tunnels with an alternative real (the second chance), by what
        /// became of them: a local socket held the flow, or it came forwarded by another backend.
        SecondChanceDelivered = "second_chance_delivered",
        SecondChanceReceived = "second_chance_received",
        /// GUE tunnels sent on to their alternative real: no local socket held the flow.
        SecondChanceForwarded = "second_chance_forwarded",
        /// The alternative could not be reached from here (no route or no neighbour entry), or it
        /// is of the other family than the tunnel.
        DropSecondChanceNoRoute = "drop_second_chance_no_route",
        /// A GUE tunnel whose header or data is not ours (version, kind, length, inner protocol).
        DropSecondChanceMalformed = "drop_second_chance_malformed",
    }
}
