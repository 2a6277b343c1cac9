//! The config's things as the maps hold them: VIP keys, forwarding settings, real flags.

use std::net::IpAddr;

use lb_common::{addr16, ip_of, LbConfig, Real, VipKey, REAL_F_DOWN, REAL_F_IPV6};

use crate::config::{Forwarding, Proto, VipId};

pub fn vip_key(id: &VipId) -> VipKey {
    VipKey { addr: addr16(id.addr), port_be: id.port.to_be(), proto: id.proto.number(), _pad: 0 }
}

pub(super) fn vip_id(key: &VipKey) -> Option<VipId> {
    let addr = ip_of(key.addr);
    let proto = match key.proto {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        _ => return None,
    };
    Some(VipId { addr, port: u16::from_be(key.port_be), proto })
}

pub(super) fn real_addr(real: &Real) -> IpAddr {
    if real.flags & REAL_F_IPV6 != 0 {
        IpAddr::V6(real.addr.into())
    } else {
        ip_of(real.addr)
    }
}

/// The data plane's view of forwarding settings; `quic_lb`: some VIP has QUIC-LB.
pub fn lb_config(f: &Forwarding, next_hop_mac: [u8; 6], quic_lb: bool) -> LbConfig {
    LbConfig {
        next_hop_mac,
        quic_lb: quic_lb as u8,
        _pad: 0,
        mtu: f.mtu,
        src_v4: f.source_v4.0.octets(),
        src_v4_host_bits: f.source_v4.1,
        src_v6: f.source_v6.0.octets(),
        src_v6_host_bits: f.source_v6.1,
    }
}

pub(super) fn real_flags(addr: IpAddr, up: bool) -> u32 {
    (if addr.is_ipv6() { REAL_F_IPV6 } else { 0 }) | (if up { 0 } else { REAL_F_DOWN })
}
