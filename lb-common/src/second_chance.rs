//! The second chance's wire format: a packet the balancer cannot place with certainty goes to
//! the real of the VIP's live ring with the real of its previous ring along. The backend
//! (`lb_decap`) delivers it if it has a socket for it, else forwards it once to that
//! alternative. (docs/second-chance.md has the full story.)
//!
//! The encapsulation is GUE (draft-ietf-intarea-gue, variant 0) over UDP, with our data in its
//! private-data field:
//!
//! ```text
//! outer IPv4 or IPv6 header, protocol / next header 17 (UDP)
//! UDP    source port: flow entropy | destination port: GUE_PORT | length | checksum 0
//! GUE    0x05 (version 0, C 0, Hlen 5 words) | inner protocol (4 or 41) | flags 0x0000
//! data   kind (KIND_ALTERNATIVE) | hops (0 from the balancer, 1 forwarded by a backend) | 0 | 0
//!        the alternative real's address: 16 bytes (IPv4 as ::ffff:a.b.c.d)
//! inner IP packet, untouched
//! ```
//!
//! A packet with `hops` 1 is delivered wherever it lands, never forwarded again: no loops,
//! whatever the inputs. The outer source stays the balancer's, so the second backend's source
//! check (`balancer_sources`) takes it as it takes the first. The UDP checksum is 0 for both
//! families: only `lb_decap` reads these packets, and it strips them before any socket sees them.

/// UDP port GUE tunnels arrive on (the one the Linux FOU / GUE examples use).
pub const GUE_PORT: u16 = 6080;
/// GUE's first byte: version 0, not a control message, `Hlen` = the private data's words.
pub const GUE_FLAGS_HLEN: u8 = (PRIVATE_LEN / 4) as u8;
/// `Private::kind` of an alternative real.
pub const KIND_ALTERNATIVE: u8 = 1;
/// `Private::hops` once a backend forwarded the packet: deliver, never forward.
pub const HOPS_FORWARDED: u8 = 1;

/// UDP header, GUE header and private data: what the second chance adds to the outer IP header.
pub const UDP_LEN: u32 = 8;
pub const GUE_LEN: u32 = 4;
pub const PRIVATE_LEN: u32 = 20;
pub const TUNNEL_LEN: u32 = UDP_LEN + GUE_LEN + PRIVATE_LEN;
/// Bytes in front of the inner IP packet, outer IP header included.
pub const GUE4_OVERHEAD: u32 = crate::IPIP_OVERHEAD + TUNNEL_LEN;
pub const GUE6_OVERHEAD: u32 = crate::IP6_OVERHEAD + TUNNEL_LEN;

/// UDP, GUE and private data as they go on the wire (after the outer IP header).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tunnel {
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub udp_len_be: u16,
    pub udp_csum: u16,
    pub gue_flags_hlen: u8,
    pub gue_proto: u8,
    pub gue_flags: u16,
    pub kind: u8,
    pub hops: u8,
    pub _reserved: [u8; 2],
    pub alternative: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Tunnel>() == TUNNEL_LEN as usize);

/// The window a VIP's previous ring is used for when the config does not say: long enough for
/// every connection the table lost to send a packet after the change (five-minute idle timeouts
/// of NATs and proxies and more), short enough that new connections in moved slots stop paying
/// the tunnel's 32 bytes soon after a change.
pub const DEFAULT_WINDOW_S: u32 = 600;
