//! QUIC-LB server IDs are never given to another real while clients may still send them: a
//! server ID stays its real's for the VIP's `server_id_hold_s` after the real leaves (or the ID
//! changes), kept in the journal across restarts. A config that breaks this is refused, at
//! start, reload, fleet revision or `lb vip add`, and the running one stays.

use std::{net::IpAddr, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::{config::Config, quic_lb::hex};

/// Who a server ID of a VIP belongs to, and since when it is free (None: in use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerIdRecord {
    /// The VIP's identity (`VipId`'s display: address:port/udp).
    pub vip: String,
    /// Hex.
    pub server_id: String,
    pub real: IpAddr,
    /// Seconds since the epoch when it left the config; held until this plus the hold.
    pub released_s: Option<u64>,
    pub hold_s: u64,
}

pub fn now_s() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Every (VIP, server ID, real) of `config`.
fn in_use(config: &Config) -> Vec<(String, String, IpAddr, u64)> {
    let mut out = Vec::new();
    for vip in &config.vips {
        let Some(q) = &vip.quic_lb else { continue };
        for real in &vip.reals {
            if let Some(sid) = &real.server_id {
                out.push((vip.id.to_string(), hex(sid), real.addr, q.server_id_hold.as_secs()));
            }
        }
    }
    out
}

/// Why `config` may not run: a server ID it gives a real that another real had, within the hold.
pub fn check(records: &[ServerIdRecord], config: &Config, now_s: u64) -> Result<(), String> {
    for (vip, sid, real, _) in in_use(config) {
        let Some(held) = records.iter().find(|r| r.vip == vip && r.server_id == sid && r.real != real) else { continue };
        let why = match held.released_s {
            None => "and still has it".to_owned(),
            Some(at) if now_s < at.saturating_add(held.hold_s) => {
                format!("until {} s ago; it is held for {} s more", now_s.saturating_sub(at), at + held.hold_s - now_s)
            }
            Some(_) => continue,
        };
        return Err(format!(
            "VIP {vip}: server ID {sid} of {real} was {}'s {why} (clients may still send it; server_id_hold_s)",
            held.real
        ));
    }
    Ok(())
}

/// `records` after `config` runs from `now_s`: its server IDs in use, the ones it dropped released
/// (kept until their hold ends). Returns whether anything changed.
pub fn record(records: &mut Vec<ServerIdRecord>, config: &Config, now_s: u64) -> bool {
    let before = records.clone();
    let used = in_use(config);
    for r in records.iter_mut() {
        let still = used.iter().any(|(vip, sid, real, _)| *vip == r.vip && *sid == r.server_id && *real == r.real);
        match (still, r.released_s) {
            (false, None) => r.released_s = Some(now_s),
            (true, Some(_)) => r.released_s = None,
            _ => {}
        }
    }
    for (vip, sid, real, hold_s) in used {
        match records.iter_mut().find(|r| r.vip == vip && r.server_id == sid && r.real == real) {
            Some(r) => r.hold_s = hold_s,
            None => records.push(ServerIdRecord { vip, server_id: sid, real, released_s: None, hold_s }),
        }
    }
    records.retain(|r| r.released_s.is_none_or(|at| now_s < at.saturating_add(r.hold_s)));
    *records != before
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, InterfaceCheck};

    fn config(reals: &[(&str, &str)]) -> Config {
        let mut text = String::from(
            "[forwarding]\nnext_hop_mac = \"02:00:00:00:00:01\"\n[[vip]]\nname = \"h3\"\naddress = \"10.0.0.1\"\nport = 443\nprotocol = \"udp\"\n[vip.quic_lb]\nconfig_id = 0\nserver_id_len = 1\nnonce_len = 4\nserver_id_hold_s = 600\n",
        );
        for (a, sid) in reals {
            text += &format!("[[vip.real]]\naddress = \"{a}\"\nserver_id = \"{sid}\"\n");
        }
        parse(&text, InterfaceCheck::Skip).unwrap()
    }

    #[test]
    fn a_server_id_is_held_for_its_real_until_the_hold_ends() {
        let mut records = Vec::new();
        assert!(record(&mut records, &config(&[("10.1.0.1", "01"), ("10.1.0.2", "02")]), 1000));
        // Swapping two IDs, or giving one to a new real, while the holders have them: refused.
        let swapped = config(&[("10.1.0.1", "02"), ("10.1.0.2", "01")]);
        let why = check(&records, &swapped, 1000).unwrap_err();
        assert!(why.contains("server ID 02 of 10.1.0.1 was 10.1.0.2's and still has it"), "{why}");
        // 10.1.0.1 leaves at 1000: its 01 is held until 1600.
        assert!(record(&mut records, &config(&[("10.1.0.2", "02")]), 1000));
        let taken = config(&[("10.1.0.2", "02"), ("10.1.0.3", "01")]);
        let why = check(&records, &taken, 1599).unwrap_err();
        assert!(why.contains("until 599 s ago; it is held for 1 s more"), "{why}");
        assert_eq!(check(&records, &taken, 1600), Ok(()));
        // Its own real may come back at any time, and then holds it again.
        assert_eq!(check(&records, &config(&[("10.1.0.1", "01"), ("10.1.0.2", "02")]), 1001), Ok(()));
        // Once the hold is over the record goes.
        assert!(record(&mut records, &taken, 1600));
        assert_eq!(records.iter().filter(|r| r.server_id == "01").map(|r| r.real.to_string()).collect::<Vec<_>>(), ["10.1.0.3"]);
        assert!(!record(&mut records, &taken, 1700), "nothing changes");
    }
}
