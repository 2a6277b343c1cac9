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
    dataplane::Dataplane,
    reconcile::{Reconciler, VipStatus},
};

/// The daemon's BGP state, for metrics.
pub struct BgpState {
    pub enabled: bool,
    pub errors: u64,
    pub drained: bool,
}

/// The last check of one real.
#[derive(Debug, Clone, Copy)]
pub struct HealthSample {
    pub latency: Option<Duration>,
    pub checks: u64,
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

/// `status` is the reconciler's status as the daemon has it (announcements filled in).
pub fn render(
    rec: &Reconciler<Dataplane>,
    status: &[VipStatus],
    samples: &HashMap<(VipId, IpAddr), HealthSample>,
    reloads_ok: u64,
    reloads_failed: u64,
    bgp: &BgpState,
    handoff_peers: &[(IpAddr, bool)],
) -> String {
    let dp = rec.dataplane();
    let mut r = Registry::with_prefix("lb");

    let packets = counter_family(&mut r, "xdp_packets", "Packets by the balancer's verdict");
    let drops = counter_family(&mut r, "xdp_drops", "Packets dropped, by reason");
    let events = counter_family(&mut r, "xdp_events", "Other data-plane events (pass_truncated, icmp_echo_replied, icmp_to_real, icmp_too_big_sent, conn_insert_failed, flow_unrecorded)");
    let handoffs = counter_family(&mut r, "xdp_handoffs", "Cross-site handoffs of mid-flow packets (sent, received, returned, came_back, suppressed)");
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

    let vip_packets = counter_family(&mut r, "vip_packets", "Packets forwarded per VIP");
    let vip_bytes = counter_family(&mut r, "vip_bytes", "Bytes forwarded per VIP");
    let vip_new_flows = counter_family(&mut r, "vip_new_flows", "Connection-table entries made per VIP");
    let vip_hits = counter_family(&mut r, "vip_conn_table_hits", "Packets whose flow the connection table knew");
    let vip_misses = counter_family(&mut r, "vip_conn_table_misses", "Packets whose flow the connection table did not know");
    let real_packets = counter_family(&mut r, "real_packets", "Packets sent to each real");
    let real_bytes = counter_family(&mut r, "real_bytes", "Bytes sent to each real");
    let real_up = gauge_family(&mut r, "real_up", "1 if the real passes its health checks");
    let real_weight = gauge_family(&mut r, "real_weight", "Effective weight (0: draining or down)");
    let real_share = gauge_family(&mut r, "real_ring_share", "Share of the VIP's Maglev slots (of new flows)");
    let check_latency = gauge_family(&mut r, "health_check_latency_seconds", "Latency of the last passing health check");
    let vip_healthy = gauge_family(&mut r, "vip_healthy_reals", "Reals up per VIP");

    for vip in status {
        let vl: Labels = vec![("vip", vip.name.clone())];
        if let Ok(s) = dp.vip_stats(vip.index) {
            vip_packets.get_or_create(&vl).inc_by(s.packets);
            vip_bytes.get_or_create(&vl).inc_by(s.bytes);
            vip_new_flows.get_or_create(&vl).inc_by(s.new_flows);
            vip_hits.get_or_create(&vl).inc_by(s.conn_hits);
            vip_misses.get_or_create(&vl).inc_by(s.conn_misses);
        }
        vip_healthy.get_or_create(&vl).set(vip.healthy() as f64);
        for real in &vip.reals {
            let rl: Labels = vec![("vip", vip.name.clone()), ("real", real.address.to_string())];
            if let Ok(s) = dp.real_stats(real.id) {
                real_packets.get_or_create(&rl).inc_by(s.packets);
                real_bytes.get_or_create(&rl).inc_by(s.bytes);
            }
            real_up.get_or_create(&rl).set(if real.up { 1.0 } else { 0.0 });
            real_weight.get_or_create(&rl).set(if real.up { real.weight as f64 } else { 0.0 });
            real_share.get_or_create(&rl).set(real.slots as f64 / vip.ring_size as f64);
            if let Some(latency) = samples.get(&(vip.vip, real.address)).and_then(|s| s.latency) {
                check_latency.get_or_create(&rl).set(latency.as_secs_f64());
            }
        }
    }

    let rebuilds: Counter = Counter::default();
    rebuilds.inc_by(rec.rebuilds.count);
    r.register("ring_rebuilds", "Maglev table rebuilds", rebuilds);
    let rebuild_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    rebuild_seconds.set(rec.rebuilds.last.as_secs_f64());
    r.register("ring_rebuild_last_seconds", "Duration of the last rebuild (table + map writes)", rebuild_seconds);
    let reloads = counter_family(&mut r, "config_reloads", "Config reloads by result");
    reloads.get_or_create(&vec![("result", "ok".into())]).inc_by(reloads_ok);
    reloads.get_or_create(&vec![("result", "rejected".into())]).inc_by(reloads_failed);

    if bgp.enabled {
        let announced = gauge_family(&mut r, "bgp_announced", "1 if the VIP's prefix is announced through BIRD");
        for vip in status {
            announced.get_or_create(&vec![("vip", vip.name.clone())]).set(if vip.announced { 1.0 } else { 0.0 });
        }
        let errors: Counter = Counter::default();
        errors.inc_by(bgp.errors);
        r.register("bird_errors", "Times BIRD could not be reached or refused the announcements", errors);
        let drained = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        drained.set(if bgp.drained { 1.0 } else { 0.0 });
        r.register("site_drained", "1 while `lb site drain` holds every VIP withdrawn", drained);
    }

    if !handoff_peers.is_empty() {
        let peer_up = gauge_family(&mut r, "handoff_peer_up", "1 if the handoff peer passes its checks (only peers that are up get handoffs)");
        for (peer, up) in handoff_peers {
            peer_up.get_or_create(&vec![("peer", peer.to_string())]).set(if *up { 1.0 } else { 0.0 });
        }
    }

    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String");
    out
}
