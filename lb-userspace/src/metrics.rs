//! Prometheus text for one scrape: counters summed over CPUs from the per-CPU maps, plus the
//! control plane's own state. Built fresh per scrape from one consistent snapshot.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use lb_common::{limits, stats::Counter as StatsCounter};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    config::VipId,
    dataplane::Counters,
    serve::ListenerCounters,
    status::{RealStatus, RebuildStats, VipStatus},
};

/// A fleet node's state, for metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetMetrics {
    /// The fleet revision running (0: none).
    pub revision: i64,
    /// Revisions refused since start.
    pub refusals: u64,
    pub store_reachable: bool,
    pub drained: bool,
}

/// The daemon's BGP state, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct BgpState {
    pub enabled: bool,
    pub errors: u64,
    pub drained: bool,
    /// Announcing with GRACEFUL_SHUTDOWN before a withdrawal.
    pub graceful_shutdown: bool,
}

/// The last check of one real, and its passing checks' mean latency: recent (about the last
/// 10 checks) and over the longer run (about 100), for `lb doctor`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HealthSample {
    pub latency: Option<Duration>,
    pub checks: u64,
    pub recent_ms: f64,
    pub long_run_ms: f64,
}

impl HealthSample {
    /// This sample followed by one more check.
    pub fn then(self, latency: Option<Duration>) -> Self {
        let (mut recent_ms, mut long_run_ms) = (self.recent_ms, self.long_run_ms);
        if let Some(l) = latency {
            let ms = l.as_secs_f64() * 1e3;
            // Moving averages: the first passing check starts both.
            (recent_ms, long_run_ms) =
                if recent_ms == 0.0 { (ms, ms) } else { (recent_ms + 0.1 * (ms - recent_ms), long_run_ms + 0.01 * (ms - long_run_ms)) };
        }
        Self { latency, checks: self.checks + 1, recent_ms, long_run_ms }
    }
}

type Labels = Vec<(&'static str, String)>;

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> {
    let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register(name, help, family.clone());
    family
}

/// What the API's listeners and handlers refused, for metrics.
#[derive(Debug)]
pub struct ApiCounters {
    pub listeners: Vec<(&'static str, std::sync::Arc<ListenerCounters>)>,
    /// `/doctor` calls refused because `[limits] doctor_calls` were being answered.
    pub doctor_refused: std::sync::atomic::AtomicU64,
}

/// The listener families (`lb_<prefix>listener_connections`, `lb_<prefix>listener_events_total`),
/// as text: `lb run` and `lb backend` both write them.
pub fn listener_families(out: &mut String, prefix: &str, listeners: &[(&'static str, std::sync::Arc<ListenerCounters>)]) {
    use std::sync::atomic::Ordering::Relaxed;
    family(
        out,
        &format!("{prefix}listener_connections"),
        GAUGE,
        "Open connections per listener",
        listeners.iter().map(|(name, c)| (format!("listener=\"{name}\""), c.open.load(Relaxed))),
    );
    family(
        out,
        &format!("{prefix}listener_events"),
        COUNTER,
        "Connections accepted, and those closed by a limit: evicted (idle, to make room at the cap), refused (at the cap, all busy), timed_out (request not in time), too_large (body over the limit)",
        listeners.iter().flat_map(|(name, c)| c.snapshot().map(|(event, n)| (format!("listener=\"{name}\",event=\"{event}\""), n))),
    );
}

/// The control plane's side of a scrape: a copy the loop hands over, so that reading the
/// counter maps and writing the text happen elsewhere.
#[derive(Debug)]
pub struct Snapshot {
    /// The reconciler's status as the daemon has it (announcements filled in).
    pub status: Vec<VipStatus>,
    pub samples: HashMap<(VipId, IpAddr), HealthSample>,
    /// Every health check of a real since start, and the failed ones.
    pub checks: crate::health::CheckTally,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub bgp: BgpState,
    pub handoff_peers: Vec<(IpAddr, bool)>,
    pub rebuilds: RebuildStats,
    /// Health checks failed for want of a free probe slot of their host (`[limits]
    /// probes_per_host`).
    pub probes_starved: u64,
    /// BIRD's BGP sessions at its last answer: (protocol name, established).
    pub bgp_sessions: Vec<(String, bool)>,
    /// Present on a fleet node.
    pub fleet: Option<FleetMetrics>,
    /// Adapted weights: each adapted real's smoothed signal (seconds of round trip, or load),
    /// and the ring rebuilds adaptation caused.
    pub adapt_signals: HashMap<(VipId, IpAddr), f64>,
    pub adapt_rebuilds: u64,
}

pub fn render(dp: &Counters, snapshot: &Snapshot, api: &ApiCounters) -> String {
    let Snapshot {
        ref status,
        samples: _,
        checks,
        reloads_ok,
        reloads_failed,
        ref bgp,
        ref handoff_peers,
        rebuilds: rebuild_stats,
        probes_starved,
        ref bgp_sessions,
        ref fleet,
        adapt_signals: _,
        adapt_rebuilds,
    } = *snapshot;
    let mut r = Registry::with_prefix("lb");

    let packets = counter_family(&mut r, "xdp_packets", "Packets by the balancer's verdict");
    let drops = counter_family(&mut r, "xdp_drops", "Packets dropped, by reason");
    let events = counter_family(
        &mut r,
        "xdp_events",
        "Other data-plane events (pass_truncated, icmp_echo_replied, icmp_to_real, icmp_too_big_sent, conn_insert_failed, flow_unrecorded)",
    );
    let handoffs =
        counter_family(&mut r, "xdp_handoffs", "Cross-site handoffs of mid-flow packets (sent, received, returned, came_back, suppressed)");
    if let Ok(counters) = dp.counters() {
        for c in StatsCounter::ALL {
            let value = counters.get(c.name()).copied().unwrap_or(0);
            let name = c.name();
            let (family, label, key) = match c {
                StatsCounter::Pass | StatsCounter::Tx | StatsCounter::Drop | StatsCounter::Aborted => (&packets, name, "verdict"),
                _ if name.starts_with("drop_") => (&drops, &name[5..], "reason"),
                _ if name.starts_with("handoff_") => (&handoffs, &name[8..], "what"),
                _ => (&events, name, "event"),
            };
            family.get_or_create(&vec![(key, label.to_owned())]).inc_by(value);
        }
    }

    let flood = gauge_family(&mut r, "xdp_flood_active", "1 if a flood limit (inserts, handoffs) refused something in the last second");
    let window = Duration::from_secs(1);
    let active = [limits::INSERTS, limits::HANDOFFS].iter().any(|&l| dp.limit_refused_within(l, window).unwrap_or(false));
    flood.get_or_create(&vec![]).set(if active { 1.0 } else { 0.0 });

    let rebuilds: Counter = Counter::default();
    rebuilds.inc_by(rebuild_stats.count);
    r.register("ring_rebuilds", "Maglev table rebuilds", rebuilds);
    let adapted: Counter = Counter::default();
    adapted.inc_by(adapt_rebuilds);
    r.register("adapt_rebuilds", "Maglev table rebuilds that adapted weights caused ([vip.adapt])", adapted);
    let rebuild_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    rebuild_seconds.set(rebuild_stats.last.as_secs_f64());
    r.register("ring_rebuild_last_seconds", "Time to build the last Maglev table and plan its writes", rebuild_seconds);
    let starved: Counter = Counter::default();
    starved.inc_by(probes_starved);
    r.register(
        "health_probes_starved",
        "Health checks failed because [limits] probes_per_host probes to the same host were in flight for the whole timeout",
        starved,
    );
    let health_checks = counter_family(&mut r, "health_checks", "Health checks of reals, by result (a canary compares the failed share)");
    health_checks.get_or_create(&vec![("result", "passed".into())]).inc_by(checks.checked - checks.failed);
    health_checks.get_or_create(&vec![("result", "failed".into())]).inc_by(checks.failed);
    let reloads = counter_family(&mut r, "config_reloads", "Config reloads by result");
    reloads.get_or_create(&vec![("result", "ok".into())]).inc_by(reloads_ok);
    reloads.get_or_create(&vec![("result", "rejected".into())]).inc_by(reloads_failed);

    if bgp.enabled {
        let errors: Counter = Counter::default();
        errors.inc_by(bgp.errors);
        r.register("bird_errors", "Times BIRD could not be reached or refused the announcements", errors);
        let drained = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        drained.set(if bgp.drained { 1.0 } else { 0.0 });
        r.register("site_drained", "1 while `lb site drain` holds every VIP withdrawn", drained);
        let graceful = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        graceful.set(if bgp.graceful_shutdown { 1.0 } else { 0.0 });
        let sessions = gauge_family(&mut r, "bgp_session_established", "1 if BIRD's BGP protocol is Established (from `show protocols`)");
        for (name, up) in bgp_sessions {
            sessions.get_or_create(&vec![("protocol", name.clone())]).set(if *up { 1.0 } else { 0.0 });
        }
        r.register(
            "bgp_graceful_shutdown",
            "1 while the VIPs are announced with GRACEFUL_SHUTDOWN (65535:0) before a withdrawal",
            graceful,
        );
    }

    if let Some(f) = fleet {
        let gauge = |value: f64| {
            let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
            g.set(value);
            g
        };
        r.register("fleet_revision", "The fleet document's revision this node runs (0: none yet)", gauge(f.revision as f64));
        let refused: Counter = Counter::default();
        refused.inc_by(f.refusals);
        r.register("fleet_revisions_refused", "Fleet revisions this node refused (it kept the last good one)", refused);
        r.register(
            "fleet_store_reachable",
            "1 while the fleet store (etcd) answers this node",
            gauge(if f.store_reachable { 1.0 } else { 0.0 }),
        );
        r.register(
            "fleet_site_drained",
            "1 while `lb fleet drain` holds this node's site withdrawn",
            gauge(if f.drained { 1.0 } else { 0.0 }),
        );
    }

    if !handoff_peers.is_empty() {
        let peer_up =
            gauge_family(&mut r, "handoff_peer_up", "1 if the handoff peer passes its checks (only peers that are up get handoffs)");
        for (peer, up) in handoff_peers {
            peer_up.get_or_create(&vec![("peer", peer.to_string())]).set(if *up { 1.0 } else { 0.0 });
        }
    }

    let mut out = String::with_capacity(status.iter().map(|v| 300 + v.reals.len() * 400).sum::<usize>() + 16_384);
    encode(&mut out, &r).expect("writing to a String");
    // The registry's text ends with the end-of-exposition marker; the large families go before it.
    let end = out.rfind("# EOF\n").unwrap_or(out.len());
    out.truncate(end);
    per_vip_families(&mut out, dp, snapshot);
    listener_families(&mut out, "", &api.listeners);
    family(
        &mut out,
        "doctor_refused",
        COUNTER,
        "/doctor calls answered 429 because [limits] doctor_calls were being answered",
        std::iter::once(("", api.doctor_refused.load(std::sync::atomic::Ordering::Relaxed))),
    );
    out += "# EOF\n";
    out
}

/// The per-VIP and per-real families, written as OpenMetrics text here rather than through the
/// registry: at 4,096 VIPs of 16 reals they are 330,000 series, for which prometheus-client took
/// about 400 ms a scrape (measured: 280 ms to fill the families, 110 to encode them), more than
/// a scrape may take. The counters come from one batch read of each per-CPU map.
fn per_vip_families(w: &mut String, dp: &Counters, snapshot: &Snapshot) {
    let Snapshot { status, samples, adapt_signals, .. } = snapshot;
    let bgp = snapshot.bgp.enabled;
    use std::fmt::Write as _;
    let vip_stats = dp.all_vip_stats().unwrap_or_default();
    let real_stats = dp.all_real_stats().unwrap_or_default();
    let vip_labels: Vec<String> = status.iter().map(|v| format!("vip=\"{}\"", escape(&v.name))).collect();
    let reals: Vec<(&VipStatus, &RealStatus, String)> = status
        .iter()
        .zip(&vip_labels)
        .flat_map(|(v, vl)| {
            v.reals.iter().map(move |r| {
                let mut l = String::with_capacity(vl.len() + 48);
                l.push_str(vl);
                let _ = write!(l, ",real=\"{}\"", r.address);
                (v, r, l)
            })
        })
        .collect();
    let vips = || status.iter().zip(&vip_labels);
    let vip_stat = |v: &VipStatus| vip_stats.get(v.index as usize).copied().unwrap_or_default();
    let real_stat = |r: &RealStatus| real_stats.get(r.id as usize).copied().unwrap_or_default();

    if bgp {
        family(
            w,
            "bgp_announced",
            GAUGE,
            "1 if the VIP's prefix is announced through BIRD",
            vips().map(|(v, l)| (l, if v.announced { 1.0 } else { 0.0 })),
        );
    }
    family(w, "vip_packets", COUNTER, "Packets forwarded per VIP", vips().map(|(v, l)| (l, vip_stat(v).packets)));
    family(w, "vip_bytes", COUNTER, "Bytes forwarded per VIP", vips().map(|(v, l)| (l, vip_stat(v).bytes)));
    family(w, "vip_new_flows", COUNTER, "Connection-table entries made per VIP", vips().map(|(v, l)| (l, vip_stat(v).new_flows)));
    family(
        w,
        "vip_conn_table_hits",
        COUNTER,
        "Packets whose flow the connection table knew",
        vips().map(|(v, l)| (l, vip_stat(v).conn_hits)),
    );
    family(
        w,
        "vip_conn_table_misses",
        COUNTER,
        "Packets whose flow the connection table did not know",
        vips().map(|(v, l)| (l, vip_stat(v).conn_misses)),
    );
    family(w, "vip_healthy_reals", GAUGE, "Reals up per VIP", vips().map(|(v, l)| (l, v.healthy() as f64)));
    family(w, "real_packets", COUNTER, "Packets sent to each real", reals.iter().map(|(_, r, l)| (l, real_stat(r).packets)));
    family(w, "real_bytes", COUNTER, "Bytes sent to each real", reals.iter().map(|(_, r, l)| (l, real_stat(r).bytes)));
    family(w, "real_up", GAUGE, "1 if the real passes its health checks", reals.iter().map(|(_, r, l)| (l, if r.up { 1.0 } else { 0.0 })));
    family(
        w,
        "real_weight",
        GAUGE,
        "Effective weight (0: draining or down)",
        reals.iter().map(|(_, r, l)| (l, if r.up { r.weight as f64 } else { 0.0 })),
    );
    family(
        w,
        "real_ring_share",
        GAUGE,
        "Share of the VIP's Maglev slots (of new flows)",
        reals.iter().map(|(v, r, l)| (l, r.slots as f64 / v.ring_size as f64)),
    );
    family(
        w,
        "real_effective_weight",
        GAUGE,
        "Weight new flows see: the weight times the adapted share ([vip.adapt]; 0: down)",
        reals.iter().map(|(_, r, l)| (l, if r.up { r.effective_weight() } else { 0.0 })),
    );
    family(
        w,
        "real_adapt_signal",
        GAUGE,
        "What an adapted real's weight follows, smoothed: seconds of round trip, or load 0..1",
        reals.iter().filter_map(|(v, r, l)| Some((l, *adapt_signals.get(&(v.vip, r.address))?))),
    );
    let latency = |v: &VipStatus, r: &RealStatus| samples.get(&(v.vip, r.address)).and_then(|s| s.latency);
    family(
        w,
        "health_check_latency_seconds",
        GAUGE,
        "Latency of the last passing health check",
        reals.iter().filter_map(|(v, r, l)| Some((l, latency(v, r)?.as_secs_f64()))),
    );
}

/// The classic Prometheus text format (0.0.4) of `openmetrics` (as `render` writes it): a
/// counter's `# HELP` and `# TYPE` name its samples (`lb_x_total`), and there is no `# EOF`.
/// Served to scrapers that do not ask for OpenMetrics, and what `promtool check metrics` reads.
pub fn classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 1024);
    let mut lines = openmetrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" {
            break;
        }
        let help = line.strip_prefix("# HELP ");
        let name = help.and_then(|h| h.split(' ').next());
        let counter = name.is_some_and(|n| lines.peek().is_some_and(|t| *t == format!("# TYPE {n} counter")));
        match (name, counter) {
            (Some(name), true) => {
                out.push_str(&format!("# HELP {name}_total{}\n", &help.unwrap_or_default()[name.len()..]));
                lines.next();
                out.push_str(&format!("# TYPE {name}_total counter\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

const COUNTER: bool = true;
const GAUGE: bool = false;

/// A sample's value: counters and most gauges are whole numbers, written without the float
/// formatting machinery (330,000 of them a scrape).
pub trait SampleValue {
    fn write_to(&self, out: &mut String);
}

impl SampleValue for u64 {
    fn write_to(&self, out: &mut String) {
        out.push_str(itoa::Buffer::new().format(*self));
    }
}

impl SampleValue for f64 {
    fn write_to(&self, out: &mut String) {
        if self.fract() == 0.0 && self.abs() < 9.0e15 {
            out.push_str(itoa::Buffer::new().format(*self as i64));
            out.push_str(".0");
        } else {
            use std::fmt::Write as _;
            let _ = write!(out, "{self}");
        }
    }
}

/// One family in the registry's style: `# HELP`, `# TYPE`, then `lb_NAME[_total]{LABELS} VALUE`.
fn family<L: AsRef<str>, V: SampleValue>(out: &mut String, name: &str, counter: bool, help: &str, series: impl Iterator<Item = (L, V)>) {
    let (kind, suffix) = if counter { ("counter", "_total") } else { ("gauge", "") };
    for part in ["# HELP lb_", name, " ", help, ".\n# TYPE lb_", name, " ", kind, "\n"] {
        out.push_str(part);
    }
    for (labels, value) in series {
        let (open, close) = if labels.as_ref().is_empty() { ("", " ") } else { ("{", "} ") };
        for part in ["lb_", name, suffix, open, labels.as_ref(), close] {
            out.push_str(part);
        }
        value.write_to(out);
        out.push('\n');
    }
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_classic_format_names_counters_by_their_samples_and_has_no_eof() {
        let om = "# HELP lb_x Xs.\n# TYPE lb_x counter\nlb_x_total{a=\"1\"} 3\n# HELP lb_g G.\n# TYPE lb_g gauge\nlb_g 1.0\n# EOF\n";
        assert_eq!(
            super::classic_text(om),
            "# HELP lb_x_total Xs.\n# TYPE lb_x_total counter\nlb_x_total{a=\"1\"} 3\n# HELP lb_g G.\n# TYPE lb_g gauge\nlb_g 1.0\n"
        );
    }

    use super::*;

    #[test]
    fn a_family_is_written_as_the_registry_writes_one() {
        let mut ours = String::new();
        family(&mut ours, "vip_packets", COUNTER, "Packets forwarded per VIP", [("vip=\"web\"", 5u64)].into_iter());
        family(&mut ours, "real_up", GAUGE, "1 if up", [("vip=\"web\",real=\"10.0.0.1\"", 1.0)].into_iter());
        let mut r = Registry::with_prefix("lb");
        counter_family(&mut r, "vip_packets", "Packets forwarded per VIP").get_or_create(&vec![("vip", "web".into())]).inc_by(5);
        gauge_family(&mut r, "real_up", "1 if up").get_or_create(&vec![("vip", "web".into()), ("real", "10.0.0.1".into())]).set(1.0);
        let mut theirs = String::new();
        encode(&mut theirs, &r).unwrap();
        assert_eq!(ours + "# EOF\n", theirs);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
