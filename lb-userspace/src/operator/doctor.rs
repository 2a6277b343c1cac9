//! `lb doctor`: what is wrong or about to go wrong, each finding with its evidence and the
//! action to take. Exit code 0 (fine), 1 (warnings), 2 (critical), for cron and monitoring.
//!
//! The evidence comes in two parts: the loop's view (`LoopView`: status, announcements, the
//! site's stage, health history, BIRD errors) and what the API samples off the loop
//! (`Sampled`, by `evidence::sample`: the data plane's counters at the start and end of a
//! window, the connection table's fill, the config file as it is now, the second chance's
//! backends' forwards). `diagnose` is a pure function of both, so every
//! finding is tested from recorded evidence as well as provoked against a running `lb`.

use std::{collections::HashMap, fmt, net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    config::RawConfig,
    status::{SiteStage, VipStatus},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; does not change the exit code.
    Info,
    Warning,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable name of the check ("real_flapping").
    pub check: String,
    /// What it is about ("VIP web real 10.0.0.1").
    pub subject: String,
    pub evidence: String,
    pub action: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// The counters' sampling window.
    pub window_ms: u64,
}

impl Report {
    /// 0 fine (or only info), 1 warnings, 2 critical.
    pub fn exit_code(&self) -> u8 {
        match self.findings.iter().map(|f| f.severity).max() {
            Some(Severity::Critical) => 2,
            Some(Severity::Warning) => 1,
            _ => 0,
        }
    }
}

/// Flips within this window make a real "flapping" at `FLAP_FLIPS`.
pub const FLAP_WINDOW_SECS: u64 = 600;
pub const FLAP_FLIPS: u32 = 4;

/// The loop's part of the evidence.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoopView {
    pub status: Vec<VipStatus>,
    pub site: Option<SiteStage>,
    /// `[bgp] prepend_below`, when BGP is configured.
    pub prepend_below: Option<f64>,
    pub bird_errors: u64,
    /// BIRD's last refusal or failure while the router task has not caught up since.
    pub bird_failing: Option<String>,
    /// BIRD's BGP sessions at its last answer (`None`: not known).
    pub bgp_sessions: Option<Vec<crate::bgp::Session>>,
    /// Handoff peers and whether they pass their checks.
    pub peers: Vec<(IpAddr, bool)>,
    /// (VIP name, real, health flips in the last `FLAP_WINDOW_SECS`).
    pub flips: Vec<(String, IpAddr, u32)>,
    /// (VIP name, real, recent mean latency ms, long-run mean latency ms) of passing checks.
    pub latency: Vec<(String, IpAddr, f64, f64)>,
    pub conn_table_size: u32,
    /// A fleet node's state (None: not a fleet node).
    #[serde(default)]
    pub fleet: Option<FleetView>,
}

/// What doctor looks at of a fleet node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetView {
    /// The revision running (0: none yet).
    pub revision: i64,
    /// The last revision refused and why (cleared once a later one applies).
    pub refused: Option<(i64, String)>,
    /// Why the store does not answer (None: it does).
    pub store_error: Option<String>,
}

/// What the loop gives `lb doctor`: its view, and the config file it runs (to compare the file
/// on disk with, off the loop).
#[derive(Debug)]
pub struct DoctorInputs {
    pub view: LoopView,
    /// `lb backend`'s endpoints on the reals of VIPs with the second chance (at most
    /// `BACKENDS_SAMPLED`), whose forwards are sampled.
    pub backends: Vec<std::net::SocketAddr>,
    pub config_path: PathBuf,
    pub running: Box<RawConfig>,
}

/// The part sampled off the loop.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sampled {
    /// Data-plane counters (`Counter::name`) at the end of the window, and their increase in it.
    pub counters: HashMap<String, u64>,
    pub increase: HashMap<String, u64>,
    /// Packets each real id got in the window.
    pub real_packets: HashMap<u32, u64>,
    pub conn_entries: usize,
    pub config_file: ConfigFile,
    /// Of each backend sampled (the second chance), the tunnelled packets it took in the window
    /// and how many of them it forwarded to their alternative real.
    #[serde(default)]
    pub backend_forwards: Vec<(IpAddr, u64, u64)>,
    /// Backend endpoints that did not answer (their forwards are not known).
    #[serde(default)]
    pub backends_unread: Vec<std::net::SocketAddr>,
}

/// Backends `lb doctor` samples at most (the first reals of second-chance VIPs, in config order).
pub const BACKENDS_SAMPLED: usize = 64;
/// A backend forwarding this share of what it takes (with at least `FORWARD_MIN_PACKETS` in the
/// window) is flagged: with the table intact a backend forwards only the packets of flows the
/// table lost whose ring slot moved, next to nothing.
pub const FORWARD_SHARE: f64 = 0.05;
pub const FORWARD_MIN_PACKETS: u64 = 100;

/// The config file now, against the config lb runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigFile {
    #[default]
    AsRunning,
    Changed,
    /// It cannot be read or parsed: the reason.
    Unreadable(String),
}

/// Packets a VIP must get in the window before its reals' shares are compared with the ring.
pub const SHARE_MIN_PACKETS: u64 = 200;
/// How far a real's share of packets may stray from its ring share.
/// The longest window `lb doctor` samples counters over (ms): the API clamps to it, the CLI
/// refuses more.
pub const MAX_WINDOW_MS: u64 = 30_000;

pub const SHARE_TOLERANCE: f64 = 0.25;

pub fn diagnose(view: &LoopView, s: &Sampled) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |severity, check: &str, subject: String, evidence: String, action: &str| {
        out.push(Finding { severity, check: check.into(), subject, evidence, action: action.into() })
    };
    let bgp = view.site.as_ref().is_some_and(|s| *s != SiteStage::NoBgp);
    let announcing = view.site == Some(SiteStage::Announcing);

    if let Some(f) = &view.fleet {
        if let Some((refused, why)) = &f.refused {
            add(
                Severity::Warning,
                "fleet_revision_refused",
                format!("fleet revision {refused}"),
                format!("refused: {why}; running revision {}", f.revision),
                "Fix the fleet document (`lb check-config FILE`, `lb fleet diff FILE`) and apply it again; this node keeps its last good revision meanwhile.",
            );
        }
        if let Some(error) = &f.store_error {
            add(
                Severity::Warning,
                "fleet_store_unreachable",
                "the fleet store".into(),
                format!("{error}; serving revision {}", f.revision),
                "Check etcd (`etcdctl endpoint health`) and this node's [fleet] endpoints and credentials; the node serves its last good revision and resumes the watch when the store answers.",
            );
        }
    }

    for v in &view.status {
        let subject = || format!("VIP {}", v.name);
        if !v.servable() {
            add(
                Severity::Critical,
                "vip_below_min_healthy",
                subject(),
                format!(
                    "{} of {} reals healthy, {} of them with weight above 0, min_healthy {}{}",
                    v.healthy(),
                    v.reals.len(),
                    v.serving(),
                    v.min_healthy,
                    if bgp { ": withdrawn" } else { ": new flows are dropped (drop_no_real)" }
                ),
                "Bring backends back (see the reals down below), undrain one (`lb real enable`, `lb backend undrain`), or lower min_healthy.",
            );
        } else if bgp && announcing && !v.announced {
            let why = view.bird_failing.as_deref().map_or_else(|| "BIRD has not confirmed it yet".to_owned(), |e| format!("BIRD: {e}"));
            add(
                Severity::Critical,
                "healthy_vip_not_announced",
                subject(),
                format!("{} of {} reals healthy but not announced; {why}", v.healthy(), v.reals.len()),
                "Check that bird runs and reads lb's include file (`birdc show protocols`, `birdc show route`).",
            );
        }
        if let Some(threshold) = view.prepend_below.filter(|_| bgp && v.servable()) {
            if v.capacity() < threshold {
                add(
                    Severity::Warning,
                    "capacity_under_prepend_threshold",
                    subject(),
                    format!(
                        "healthy reals carry {:.0}% of the configured weight, under prepend_below {:.0}%: announced with AS-path prepend",
                        v.capacity() * 100.0,
                        threshold * 100.0
                    ),
                    "Other sites take most new traffic; restore the reals that are down.",
                );
            }
        }
        if let Some(floor) = v.adapt_floor_percent {
            for r in v.reals.iter().filter(|r| r.up && r.adapt_percent.is_some_and(|p| p <= floor.max(crate::adapt::QUANTUM_PERCENT))) {
                add(
                    Severity::Warning,
                    "real_at_adapt_floor",
                    format!("VIP {} real {}", v.name, r.address),
                    format!(
                        "its adapted share is held at the floor ({}%): {}",
                        r.adapt_percent.unwrap_or(100),
                        r.adapt_signal.as_deref().unwrap_or("signal not measured")
                    ),
                    "The backend is much slower or busier than the VIP's others: look at it (`lb backend status`, its service); the share comes back by itself as it recovers.",
                );
            }
        }
        for r in v.reals.iter().filter(|r| !r.up) {
            add(
                Severity::Warning,
                "real_down",
                format!("VIP {} real {}", v.name, r.address),
                "fails its health checks: out of the ring, its flows moved".into(),
                "Check the backend (`lb backend status` on it, the service's port).",
            );
        }
        let total: u64 = v.reals.iter().map(|r| s.real_packets.get(&r.id).copied().unwrap_or(0)).sum();
        // With an empty ring (every real drained or down) only established flows flow: no share
        // to compare with.
        let ring_slots: u32 = v.reals.iter().map(|r| r.slots).sum();
        if total >= SHARE_MIN_PACKETS && v.ring_size > 0 && ring_slots > 0 {
            for r in &v.reals {
                let got = s.real_packets.get(&r.id).copied().unwrap_or(0) as f64 / total as f64;
                let ring = r.slots as f64 / v.ring_size as f64;
                if (got - ring).abs() > SHARE_TOLERANCE {
                    add(
                        Severity::Warning,
                        "real_share_off_ring_share",
                        format!("VIP {} real {}", v.name, r.address),
                        format!("{:.0}% of the VIP's {total} packets in the window, {:.0}% of its ring", got * 100.0, ring * 100.0),
                        "Heavy flows, or connection-table entries from before a ring change: `lb flows --real ADDR` lists them, `lb flows purge --real ADDR` moves them.",
                    );
                }
            }
        }
    }

    for (vip, real, flips) in &view.flips {
        if *flips >= FLAP_FLIPS {
            add(
                Severity::Warning,
                "real_flapping",
                format!("VIP {vip} real {real}"),
                format!("{flips} health flips in the last {} min", FLAP_WINDOW_SECS / 60),
                "An unstable backend or a check too tight for it: raise rise/fall or timeout_ms, or drain it (`lb real drain`).",
            );
        }
    }
    for (vip, real, recent, long_run) in &view.latency {
        if *recent > 2.0 * long_run && *recent > 5.0 {
            add(
                Severity::Warning,
                "health_latency_rising",
                format!("VIP {vip} real {real}"),
                format!("health checks take {recent:.1} ms lately, {long_run:.1} ms over the longer run"),
                "The backend is slowing down: check its load before its checks time out.",
            );
        }
    }

    if let Some(error) = &view.bird_failing {
        add(
            Severity::Critical,
            "bird_errors",
            "BIRD".into(),
            format!("{} failures so far; the last: {error}", view.bird_errors),
            "Announcements may be stale: check that bird runs and its control socket is [bgp] bird_socket.",
        );
    }
    // Announcements are wanted (the site announces, some VIP is servable) but a session that
    // would carry them is not up: the routers do not hear them.
    let wanted = announcing && view.status.iter().any(|v| v.servable());
    for session in view.bgp_sessions.iter().flatten().filter(|s| wanted && !s.established) {
        add(
            Severity::Critical,
            "bgp_session_down",
            format!("BGP session {}", session.name),
            format!("not established ({}) while servable VIPs should be announced", session.info),
            "Check the neighbour (`birdc show protocols all NAME`); after a hold-timer expiry BIRD waits its `error wait time` before trying again (the shipped bird.conf: 1 to 30 s).",
        );
    }
    for (peer, up) in &view.peers {
        if !up {
            add(
                Severity::Warning,
                "handoff_peer_down",
                format!("handoff peer {peer}"),
                "fails its checks: gets no handoffs; mid-flow packets of moved flows are balanced here".into(),
                "Check that peer's LB node and its handoff address.",
            );
        }
    }
    if let Some(SiteStage::GracefulShutdown { .. } | SiteStage::Withdrawn) = &view.site {
        add(
            Severity::Info,
            "site_drained",
            "site".into(),
            "drained: nothing announced (or about to be)".into(),
            "`lb site undrain` when maintenance is over.",
        );
    }

    let count = |name: &str| s.counters.get(name).copied().unwrap_or(0);
    let rise = |name: &str| s.increase.get(name).copied().unwrap_or(0);
    let (too_big, mtu_drops) = (count("icmp_too_big_sent"), count("drop_mtu_exceeded") + count("drop_too_big_suppressed"));
    if too_big + mtu_drops > 0 {
        let recent = rise("icmp_too_big_sent") + rise("drop_mtu_exceeded") + rise("drop_too_big_suppressed");
        add(
            if recent > 0 { Severity::Warning } else { Severity::Info },
            "mtu_too_small",
            "path MTU".into(),
            format!("{too_big} too-big answers sent, {mtu_drops} packets dropped over the MTU since start ({recent} in the window)"),
            "Raise the MTU of the links behind the balancer by the tunnel's overhead (20 bytes IPv4, 40 IPv6) and [forwarding] mtu with it.",
        );
    }
    if view.conn_table_size > 0 {
        let fill = s.conn_entries as f64 / view.conn_table_size as f64;
        let failed = rise("conn_insert_failed");
        if fill >= 0.9 || failed > 0 {
            add(
                if fill >= 0.99 || failed > 0 { Severity::Critical } else { Severity::Warning },
                "conn_table_full",
                "connection table".into(),
                format!("{} of {} entries used ({:.0}%), {failed} inserts refused in the window", s.conn_entries, view.conn_table_size, fill * 100.0),
                "A full table evicts the oldest flows (they re-hash on a ring change): raise conn_table_size (takes `lb stop`, drain first).",
            );
        }
    }
    match &s.config_file {
        ConfigFile::Changed => add(
            Severity::Warning,
            "config_not_reloaded",
            "config file".into(),
            "the file differs from the config lb runs".into(),
            "`lb check-config FILE`, then `lb reload` (or SIGHUP).",
        ),
        ConfigFile::AsRunning => {}
        ConfigFile::Unreadable(e) => {
            add(Severity::Warning, "config_unreadable", "config file".into(), e.clone(), "A reload or restart would fail: fix the file.")
        }
    }
    for &(backend, taken, forwarded) in &s.backend_forwards {
        if taken >= FORWARD_MIN_PACKETS && forwarded as f64 >= taken as f64 * FORWARD_SHARE {
            add(
                Severity::Warning,
                "backend_forwarding",
                format!("backend {backend}"),
                format!(
                    "forwarded {forwarded} of the {taken} tunnelled packets it took ({:.0}%) to the previous ring's real: connections \
                     are living on the second chance, so the connection table is losing flows",
                    forwarded as f64 * 100.0 / taken as f64
                ),
                "Find what empties the table: a flood (lb_xdp_events_total{event=\"flow_unrecorded\"}, the table's fill here), a restart \
                 with new maps, spoofed SYNs; `lb flows --real` shows what it holds. Past the window the connections it forwards break.",
            );
        }
    }
    if !s.backends_unread.is_empty() {
        let unread: Vec<String> = s.backends_unread.iter().map(|a| a.to_string()).collect();
        add(
            Severity::Info,
            "backend_unread",
            format!("{} backends", unread.len()),
            format!("no /metrics from {}: how much they forward is not known", unread.join(", ")),
            "Check that `lb backend` runs there and listens on that address (IPv6 reals: [backend.health] listen = \"[::]:9180\"), \
             and that [second_chance] backend_port is its port.",
        );
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.findings.is_empty() {
            return writeln!(f, "no findings (counters sampled over {:.1} s)", self.window_ms as f64 / 1e3);
        }
        for x in &self.findings {
            let tag = match x.severity {
                Severity::Critical => "CRITICAL",
                Severity::Warning => "WARNING ",
                Severity::Info => "info    ",
            };
            writeln!(f, "{tag} {} [{}]\n         evidence: {}\n         action:   {}", x.subject, x.check, x.evidence, x.action)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{Proto, VipId},
        status::RealStatus,
    };

    fn real(addr: &str, id: u32, up: bool, slots: u32) -> RealStatus {
        RealStatus {
            address: addr.parse().unwrap(),
            id,
            up,
            config_weight: 1,
            weight: u32::from(up),
            slots,
            draining: false,
            server_id: None,
            adapt_percent: None,
            adapt_signal: None,
        }
    }

    /// A healthy site: VIP web with two reals sharing the ring, announced.
    fn healthy() -> (LoopView, Sampled) {
        let vip = VipStatus {
            name: "web".into(),
            vip: VipId { addr: "10.99.0.1".parse().unwrap(), port: 80, proto: Proto::Tcp },
            index: 0,
            ring_size: 100,
            min_healthy: 1,
            reals: vec![real("10.0.0.1", 1, true, 50), real("10.0.0.2", 2, true, 50)],
            quic_lb: None,
            adapt_floor_percent: None,
            announced: true,
        };
        let view = LoopView {
            status: vec![vip],
            site: Some(SiteStage::Announcing),
            prepend_below: Some(0.6),
            peers: vec![("10.20.0.2".parse().unwrap(), true)],
            flips: vec![("web".into(), "10.0.0.1".parse().unwrap(), 1)],
            latency: vec![("web".into(), "10.0.0.1".parse().unwrap(), 1.2, 1.0)],
            conn_table_size: 1000,
            ..Default::default()
        };
        let sampled = Sampled { real_packets: HashMap::from([(1, 520), (2, 480)]), conn_entries: 10, ..Default::default() };
        (view, sampled)
    }

    /// The findings' (severity, check), sorted.
    fn checks(view: &LoopView, s: &Sampled) -> Vec<(Severity, String)> {
        let mut found: Vec<(Severity, String)> = diagnose(view, s).into_iter().map(|f| (f.severity, f.check)).collect();
        found.sort();
        found
    }

    #[test]
    fn a_healthy_site_has_no_findings() {
        let (view, s) = healthy();
        assert_eq!(checks(&view, &s), []);
        assert_eq!(Report { findings: diagnose(&view, &s), window_ms: 1 }.exit_code(), 0);
    }

    #[test]
    fn each_finding_from_recorded_evidence() {
        type Change = Box<dyn Fn(&mut LoopView, &mut Sampled)>;
        type Case = (&'static str, Change, Vec<(Severity, &'static str)>);
        let cases: Vec<Case> = vec![
            (
                "an adapted real held at the floor",
                Box::new(|v, _| {
                    v.status[0].adapt_floor_percent = Some(20);
                    v.status[0].reals[0].adapt_percent = Some(20);
                    v.status[0].reals[1].adapt_percent = Some(60);
                }),
                vec![(Severity::Warning, "real_at_adapt_floor")],
            ),
            (
                "a real down",
                Box::new(|v, _| v.status[0].reals[1] = real("10.0.0.2", 2, false, 0)),
                vec![
                    (Severity::Warning, "real_share_off_ring_share"),
                    (Severity::Warning, "capacity_under_prepend_threshold"),
                    (Severity::Warning, "real_down"),
                ],
            ),
            (
                "below min_healthy",
                Box::new(|v, _| {
                    v.status[0].min_healthy = 2;
                    v.status[0].reals[1].up = false;
                    v.status[0].announced = false;
                }),
                vec![(Severity::Critical, "vip_below_min_healthy"), (Severity::Warning, "real_down")],
            ),
            (
                "a backend forwarding 5% of what it takes",
                Box::new(|_, s| {
                    s.backend_forwards = vec![("10.0.0.1".parse().unwrap(), 1000, 50), ("10.0.0.2".parse().unwrap(), 1000, 49)]
                }),
                vec![(Severity::Warning, "backend_forwarding")],
            ),
            (
                "a backend that did not answer",
                Box::new(|_, s| s.backends_unread = vec!["10.0.0.1:9180".parse().unwrap()]),
                vec![(Severity::Info, "backend_unread")],
            ),
            (
                "a backend forwarding all of too few packets",
                Box::new(|_, s| s.backend_forwards = vec![("10.0.0.1".parse().unwrap(), 99, 99)]),
                vec![],
            ),
            (
                "every up real drained",
                Box::new(|v, _| {
                    for r in &mut v.status[0].reals {
                        r.weight = 0;
                        r.slots = 0;
                    }
                    v.status[0].announced = false;
                }),
                vec![(Severity::Critical, "vip_below_min_healthy")],
            ),
            (
                "healthy but not announced, BIRD failing",
                Box::new(|v, _| {
                    v.status[0].announced = false;
                    v.bird_failing = Some("connecting to /run/bird/bird.ctl: refused".into());
                    v.bird_errors = 3;
                }),
                vec![(Severity::Critical, "healthy_vip_not_announced"), (Severity::Critical, "bird_errors")],
            ),
            (
                "a BGP session down while announcing",
                Box::new(|v, _| {
                    v.bgp_sessions = Some(vec![
                        crate::bgp::Session { name: "upstream".into(), established: true, info: "up Established".into() },
                        crate::bgp::Session { name: "backup".into(), established: false, info: "start Active".into() },
                    ])
                }),
                vec![(Severity::Critical, "bgp_session_down")],
            ),
            ("flapping", Box::new(|v, _| v.flips[0].2 = 5), vec![(Severity::Warning, "real_flapping")]),
            ("latency rising", Box::new(|v, _| v.latency[0].2 = 30.0), vec![(Severity::Warning, "health_latency_rising")]),
            ("a peer down", Box::new(|v, _| v.peers[0].1 = false), vec![(Severity::Warning, "handoff_peer_down")]),
            (
                "traffic off the ring share",
                Box::new(|_, s| s.real_packets = HashMap::from([(1, 900), (2, 100)])),
                vec![(Severity::Warning, "real_share_off_ring_share"), (Severity::Warning, "real_share_off_ring_share")],
            ),
            ("too few packets to judge shares", Box::new(|_, s| s.real_packets = HashMap::from([(1, 90), (2, 10)])), vec![]),
            (
                "MTU drops in the window",
                Box::new(|_, s| {
                    s.counters.insert("icmp_too_big_sent".into(), 40);
                    s.increase.insert("icmp_too_big_sent".into(), 4);
                }),
                vec![(Severity::Warning, "mtu_too_small")],
            ),
            (
                "MTU drops only long ago",
                Box::new(|_, s| {
                    s.counters.insert("drop_mtu_exceeded".into(), 2);
                }),
                vec![(Severity::Info, "mtu_too_small")],
            ),
            ("connection table 95% full", Box::new(|_, s| s.conn_entries = 950), vec![(Severity::Warning, "conn_table_full")]),
            (
                "inserts refused",
                Box::new(|_, s| {
                    s.increase.insert("conn_insert_failed".into(), 7);
                }),
                vec![(Severity::Critical, "conn_table_full")],
            ),
            ("config changed", Box::new(|_, s| s.config_file = ConfigFile::Changed), vec![(Severity::Warning, "config_not_reloaded")]),
            (
                "config unreadable",
                Box::new(|_, s| s.config_file = ConfigFile::Unreadable("line 3: expected `=`".into())),
                vec![(Severity::Warning, "config_unreadable")],
            ),
            (
                "site drained",
                Box::new(|v, _| {
                    v.site = Some(SiteStage::Withdrawn);
                    v.status[0].announced = false;
                }),
                vec![(Severity::Info, "site_drained")],
            ),
        ];
        for (what, change, expected) in cases {
            let (mut view, mut s) = healthy();
            change(&mut view, &mut s);
            let got = checks(&view, &s);
            let mut expected: Vec<(Severity, String)> = expected.into_iter().map(|(sev, c)| (sev, c.to_owned())).collect();
            expected.sort();
            assert_eq!(got, expected, "{what}");
            let code = Report { findings: diagnose(&view, &s), window_ms: 1 }.exit_code();
            let worst = expected.iter().map(|(s, _)| *s).max();
            assert_eq!(
                code,
                match worst {
                    Some(Severity::Critical) => 2,
                    Some(Severity::Warning) => 1,
                    _ => 0,
                },
                "{what}"
            );
        }
    }
}
