//! Addresses and flows in the maps' forms: 16 bytes for either family (IPv4 is IPv4-mapped),
//! ports in network byte order.

use std::net::IpAddr;

use lb_common::FlowKey;

/// An address in the maps' 16-byte form (IPv4 is IPv4-mapped).
pub fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => lb_common::ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address `addr16` wrote: a v4-mapped one is IPv4.
pub fn ip_of(addr: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// The connection-table key of a flow (ports in host order here, in network order in the key).
pub fn flow_key(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16, proto: u8) -> FlowKey {
    FlowKey { src: addr16(src), dst: addr16(dst), src_port_be: src_port.to_be(), dst_port_be: dst_port.to_be(), proto, _pad: [0; 3] }
}
