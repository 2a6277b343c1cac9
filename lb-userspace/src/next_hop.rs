//! The next hop's MAC address: given in the config, or read from the kernel's neighbour table
//! over netlink and followed as the entry changes (a replaced router, a failover of a VRRP
//! address), so encapsulated packets keep going to the router that owns the address.

use std::{net::IpAddr, time::Duration};

use futures_util::{StreamExt as _, TryStreamExt as _};
use netlink_packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    RouteNetlinkMessage,
};
use netlink_sys::AsyncSocket as _;
use tokio::sync::mpsc;

use crate::config::NextHop;

#[derive(Debug, thiserror::Error)]
pub enum NextHopError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("no neighbour entry with a MAC for next hop {0} (ping it once, or give next_hop_mac)")]
    NoEntry(IpAddr),
    #[error("no answer from netlink within {0:?}")]
    Timeout(Duration),
}

/// How long a lookup may take.
const LIMIT: Duration = Duration::from_secs(2);

/// The MAC of `ip` in `msg`, if `msg` is `ip`'s entry with a usable link-layer address.
fn mac_of(msg: &NeighbourMessage, ip: IpAddr) -> Option<[u8; 6]> {
    if matches!(msg.header.state, NeighbourState::Failed | NeighbourState::Incomplete) {
        return None;
    }
    let mut dst = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            NeighbourAttribute::LinkLocalAddress(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    (dst == Some(ip)).then_some(mac).flatten()
}

async fn dump(handle: &rtnetlink::Handle, ip: IpAddr) -> Result<Option<[u8; 6]>, NextHopError> {
    let version = if ip.is_ipv4() { rtnetlink::IpVersion::V4 } else { rtnetlink::IpVersion::V6 };
    let mut entries = handle.neighbours().get().set_family(version).execute();
    let mut found = None;
    while let Some(msg) = entries.try_next().await.map_err(|e| NextHopError::Netlink(e.to_string()))? {
        found = found.or(mac_of(&msg, ip));
    }
    Ok(found)
}

/// The next hop's MAC now: given, or found in the neighbour table.
pub async fn resolve(next_hop: &NextHop) -> Result<[u8; 6], NextHopError> {
    let ip = match next_hop {
        NextHop::Mac(mac) => return Ok(*mac),
        NextHop::Ip(ip) => *ip,
    };
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NextHopError::Netlink(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let found = tokio::time::timeout(LIMIT, dump(&handle, ip)).await.map_err(|_| NextHopError::Timeout(LIMIT));
    conn.abort();
    found??.ok_or(NextHopError::NoEntry(ip))
}

/// A change of the next hop's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHopChanged {
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

/// Follows `ip`'s neighbour entry and reports every new MAC (the first report is the entry as
/// found when watching starts). Runs until the receiver is gone; a failed netlink socket is
/// opened again after a second.
pub async fn watch(ip: IpAddr, events: mpsc::Sender<NextHopChanged>) {
    let mut last = None;
    while !events.is_closed() {
        if let Err(e) = follow(ip, &mut last, &events).await {
            tracing::warn!(next_hop = %ip, error = %e, "watching the next hop's neighbour entry failed; retrying");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow(ip: IpAddr, last: &mut Option<[u8; 6]>, events: &mpsc::Sender<NextHopChanged>) -> Result<(), NextHopError> {
    let (mut conn, handle, mut messages) = rtnetlink::new_connection().map_err(|e| NextHopError::Netlink(e.to_string()))?;
    let neighbour_group = netlink_sys::SocketAddr::new(0, rtnetlink::constants::RTMGRP_NEIGH);
    conn.socket_mut().socket_mut().bind(&neighbour_group).map_err(|e| NextHopError::Netlink(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let mut report = async |mac: Option<[u8; 6]>| {
        if let Some(mac) = mac.filter(|m| Some(*m) != *last) {
            *last = Some(mac);
            let _ = events.send(NextHopChanged { ip, mac }).await;
        }
    };
    // Subscribed first, then read: a change between the two is not missed.
    report(tokio::time::timeout(LIMIT, dump(&handle, ip)).await.map_err(|_| NextHopError::Timeout(LIMIT))??).await;
    while let Some((msg, _)) = messages.next().await {
        if let netlink_packet_core::NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) = msg.payload {
            report(mac_of(&n, ip)).await;
        }
        if events.is_closed() {
            break;
        }
    }
    conn.abort();
    Ok(())
}
