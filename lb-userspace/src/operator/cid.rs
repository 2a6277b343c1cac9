//! `lb flow --cid`: where a QUIC short-header packet with a given destination connection ID goes
//! at a QUIC-LB VIP, read from the live maps and decoded the way the data plane decodes it
//! (`lb_common::quic_lb`, with the VIP's parameters as `QUIC_LB` holds them).

use std::{fmt, net::IpAddr};

use lb_common::{
    aes::block_words,
    ip_of,
    quic_lb::{QuicLbParams, ServerIdKey, MODE_OFF},
    VipMeta,
};
use serde::{Deserialize, Serialize};

use crate::{
    dataplane::{DataplaneError, LiveMaps},
    quic_lb::{hex, parse_hex},
    status::VipStatus,
};

/// A QUIC-LB VIP's part of `lb flow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuicReport {
    /// Each real's server ID (hex).
    pub server_ids: Vec<(IpAddr, String)>,
    /// The connection ID asked about, and where a short-header packet with it goes.
    pub cid: Option<(String, CidRoute)>,
}

/// Where a short-header packet with a connection ID goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum CidRoute {
    /// To the real with its server ID.
    Real { server_id: String, real: IpAddr, real_id: u32 },
    /// By the connection table and ring, counted as `counter`.
    Fallback { why: String, counter: String },
}

/// The report for VIP `meta` (QUIC-LB on), about connection ID `cid` (hex) if given.
pub fn explain(maps: &LiveMaps, vip: Option<&VipStatus>, meta: &VipMeta, cid: Option<&str>) -> Result<QuicReport, DataplaneError> {
    let server_ids = vip.map_or_else(Vec::new, |v| v.reals.iter().filter_map(|r| Some((r.address, r.server_id.clone()?))).collect());
    let params = maps.quic_params(meta.vip_index)?;
    let cid = match cid {
        Some(text) => Some((text.to_owned(), route(maps, meta, &params, text)?)),
        None => None,
    };
    Ok(QuicReport { server_ids, cid })
}

fn fallback(why: impl Into<String>, counter: &str) -> CidRoute {
    CidRoute::Fallback { why: why.into(), counter: counter.into() }
}

fn route(maps: &LiveMaps, meta: &VipMeta, params: &QuicLbParams, text: &str) -> Result<CidRoute, DataplaneError> {
    let Some(cid) = parse_hex(text) else { return Ok(fallback(format!("{text:?} is not hex"), "-")) };
    if params.mode == MODE_OFF {
        return Ok(fallback("the VIP has no QUIC-LB parameters in the data plane", "-"));
    }
    if cid.len() < params.cid_len as usize {
        return Ok(fallback(format!("{} octets, shorter than the configured {}", cid.len(), params.cid_len), "quic_bad_length"));
    }
    if cid[0] >> 5 != params.config_id {
        return Ok(fallback(format!("config rotation bits {}, not {}", cid[0] >> 5, params.config_id), "quic_other_config"));
    }
    let mut body = [0u8; 40];
    body[..cid.len() - 1].copy_from_slice(&cid[1..]);
    let block = |from: usize| block_words(body[from..from + 16].try_into().expect("16 octets"));
    let sid = params.server_id(block(0), block(params.right_offset as usize), &mut Default::default());
    let octets: Vec<u8> = sid.iter().flat_map(|w| w.to_be_bytes()).collect();
    let server_id = hex(&octets[..params.server_id_len as usize]);
    let Some(real_id) = maps.quic_server(&ServerIdKey::new(meta.vip_index, &octets[..params.server_id_len as usize]))? else {
        return Ok(fallback(format!("server ID {server_id} is no real's"), "quic_unknown_server_id"));
    };
    match maps.real(real_id)? {
        Some(real) if real.vip_index == meta.vip_index && real.is_down() => {
            Ok(fallback(format!("server ID {server_id} is {}'s, which is down", ip_of(real.addr)), "quic_real_down"))
        }
        Some(real) if real.vip_index == meta.vip_index => Ok(CidRoute::Real { server_id, real: ip_of(real.addr), real_id }),
        _ => Ok(fallback(format!("server ID {server_id} names real id {real_id}, not this VIP's"), "quic_unknown_server_id")),
    }
}

impl fmt::Display for CidRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidRoute::Real { server_id, real, real_id } => write!(f, "server ID {server_id}: real {real} (id {real_id})"),
            CidRoute::Fallback { why, counter } => write!(f, "{why}: by the connection table and ring ({counter})"),
        }
    }
}

impl fmt::Display for QuicReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.server_ids.iter().map(|(real, sid)| format!("{real}={sid}")).collect();
        writeln!(f, "  QUIC-LB server IDs: {}", ids.join(" "))?;
        if let Some((cid, route)) = &self.cid {
            writeln!(f, "  short header, connection ID {cid}: {route}")?;
        }
        Ok(())
    }
}
