//! Tables the CLI prints from the API's answers.

use crate::status::{HandoffStatus, SiteStage, VipStatus};

pub fn print_status(vips: &[VipStatus]) {
    for v in vips {
        let bgp = if v.announced { "  announced" } else { "" };
        println!("VIP {} {}  ring {}  healthy {}/{} (min {}){bgp}", v.name, v.vip, v.ring_size, v.healthy(), v.reals.len(), v.min_healthy);
        if let Some(q) = &v.quic_lb {
            let form = if q.encrypted { "encrypted" } else { "plaintext" };
            println!(
                "  QUIC-LB config {}  server ID {} + nonce {} octets, {form}  connection ID {} octets",
                q.config_id, q.server_id_len, q.nonce_len, q.cid_len
            );
        }
        let sid_column = v.quic_lb.is_some();
        let adapted = v.reals.iter().any(|r| r.adapt_percent.is_some());
        println!(
            "  {:<40} {:>4}  {:<5} {:>6} {:>7}{}",
            "REAL",
            "ID",
            "STATE",
            "WEIGHT",
            "SHARE",
            if sid_column { "  SERVER ID" } else { "" }
        );
        if adapted {
            println!("  (adapted weights: WEIGHT is the effective one, configured x share; the share and its signal follow each real)");
        }
        for r in &v.reals {
            let weight = match r.adapt_percent {
                Some(p) if p != 100 => format!("{:.2}", r.effective_weight()),
                _ if r.weight == r.config_weight => r.weight.to_string(),
                _ => format!("{}*", r.weight),
            };
            let share = 100.0 * r.slots as f64 / v.ring_size as f64;
            let state = match (r.up, r.draining) {
                (false, _) => "down",
                (true, true) => "drain",
                (true, false) => "up",
            };
            let sid = r.server_id.as_deref().map_or(String::new(), |s| format!("  {s}"));
            let adapt = match (r.adapt_percent, &r.adapt_signal) {
                (Some(p), Some(signal)) => format!("  share {p}% ({signal})"),
                (Some(p), None) => format!("  share {p}%"),
                _ => String::new(),
            };
            println!("  {:<40} {:>4}  {:<5} {:>6} {:>6.1}%{sid}{adapt}", r.address, r.id, state, weight, share);
        }
    }
    if vips.iter().any(|v| v.reals.iter().any(|r| r.weight != r.config_weight)) {
        println!("(* weight set at run time, or 0 while the backend drains)");
    }
}

pub fn print_site(stage: &SiteStage) {
    match stage {
        SiteStage::NoBgp => {}
        SiteStage::Announcing => println!("SITE announcing"),
        SiteStage::GracefulShutdown { withdraw_in_ms } => {
            println!(
                "SITE graceful shutdown: announced with GRACEFUL_SHUTDOWN (65535:0), withdrawing in {:.1} s",
                *withdraw_in_ms as f64 / 1e3
            )
        }
        SiteStage::Withdrawn => println!("SITE withdrawn (drained or exiting; forwarding continues)"),
    }
}

pub fn print_handoff(h: &HandoffStatus) {
    let Some(node) = h.node else { return };
    let adopt = if h.adopt { "  adopting (site withdrawn: handed-off flows it does not know are taken here)" } else { "" };
    println!("HANDOFF node {node}{adopt}");
    for (peer, up) in &h.peers {
        println!("  peer {peer:<38} {}", if *up { "up" } else { "down" });
    }
}
