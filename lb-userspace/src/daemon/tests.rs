//! The daemon over a fake data plane: announcements, drains, reloads, admin errors, handoff.

use std::{
    cell::RefCell,
    rc::Rc,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use tokio::sync::{mpsc, watch};

use super::*;
use crate::{
    admin::{AdminError, Command, Reply},
    bgp::bird::Announcement,
    bgp::{
        self,
        tests::{FakeRouter, FAST},
        RouterEvent,
    },
    config::{self, InterfaceCheck, RawConfig},
    dataplane::Handoff,
    health::{HealthEvent, Target},
    journal::{self, Journal},
    next_hop::NextHopChanged,
    reconcile::tests::{ip, Fake},
    reconcile::Reconciler,
    status::SiteStage,
};

const VIPS: &str = "[[vip]]\nname = \"web\"\naddress = \"10.99.0.1\"\nport = 80\nprotocol = \"tcp\"\nring_size = 13\nmin_healthy = 2\n\
                    [[vip.real]]\naddress = \"10.1.0.1\"\n[[vip.real]]\naddress = \"10.1.0.2\"\n\
                    [[vip]]\nname = \"dns\"\naddress = \"10.99.0.2\"\nport = 53\nprotocol = \"udp\"\nring_size = 13\n\
                    [[vip.real]]\naddress = \"10.1.0.3\"\n";

fn file(extra: &str) -> RawConfig {
    file_with_graceful_shutdown(extra, 0)
}

fn file_with_graceful_shutdown(extra: &str, graceful_ms: u64) -> RawConfig {
    let text = format!(
        "[forwarding]\nnext_hop_mac = \"02:00:00:00:00:01\"\n[health]\nkind = \"none\"\n\
         [bgp]\nbird_socket = \"/nonexistent/bird.ctl\"\ninclude_file = \"/nonexistent/vips.conf\"\ngraceful_shutdown_ms = {graceful_ms}\n\
         [handoff]\naddress = \"10.20.0.1\"\npeers = [\"10.20.0.2\", \"10.20.0.3\"]\nhealth = {{ kind = \"none\" }}\n{extra}{VIPS}"
    );
    config::parse_raw(&text).unwrap()
}

/// A daemon over a fake data plane, and the far ends of its outputs.
struct Harness {
    d: Daemon<Fake>,
    announce: watch::Receiver<Vec<Announcement>>,
    journal: mpsc::UnboundedReceiver<journal::Save<AdminError>>,
    graceful_over: mpsc::Receiver<u64>,
    _rest: (mpsc::Receiver<HealthEvent>, mpsc::Receiver<NextHopChanged>, mpsc::Receiver<PreparedReload>),
}

fn start(file: RawConfig, journal: Journal) -> Harness {
    let config = effective_config(&file, &journal, InterfaceCheck::Skip, &Default::default()).unwrap();
    let mut rec = Reconciler::new(Fake::with_pool(200));
    rec.apply(&config, [1; 6]).unwrap();
    let (announce, announce_rx) = watch::channel(Vec::new());
    let (journal_tx, journal_rx) = mpsc::unbounded_channel();
    let (health, h) = mpsc::channel(8);
    let (next_hop, n) = mpsc::channel(8);
    let (reload, r) = mpsc::channel(8);
    let (graceful_over, g) = mpsc::channel(8);
    let out = Outputs { announce, journal: journal_tx, health, next_hop, reload, graceful_over };
    let d = Daemon::start(rec, "/nonexistent.toml".into(), file, config, journal, InterfaceCheck::Skip, out);
    Harness { d, announce: announce_rx, journal: journal_rx, graceful_over: g, _rest: (h, n, r) }
}

fn announced(h: &Harness) -> Vec<String> {
    h.announce.borrow().iter().map(|a| format!("{}{}", a.prefix, if a.prepend { "+" } else { "" })).collect()
}

/// Runs a state-changing command; the journal writer's part is played here (it answers ok).
fn change(h: &mut Harness, make: impl FnOnce(Reply<()>) -> Command) -> Result<(), AdminError> {
    let (tx, mut rx) = oneshot::channel();
    h.d.command(make(tx));
    if let Ok((_, Some(reply))) = h.journal.try_recv() {
        let _ = reply.send(Ok(()));
    }
    rx.try_recv().expect("answered at once")
}

fn flip(h: &mut Harness, vip: &str, real: &str, up: bool) {
    let vip = h.d.config.vips.iter().find(|v| v.name == vip).unwrap().id;
    h.d.health(HealthEvent::Flip { target: Target::Real(vip, ip(real)), up, reason: "test".into() });
}

#[tokio::test]
async fn the_journal_applies_over_the_file_at_start() {
    let added = config::parse_raw(
        "[forwarding]\nnext_hop_mac = \"02:00:00:00:00:01\"\n[[vip]]\nname = \"new\"\naddress = \"10.99.0.9\"\nport = 80\nprotocol = \"tcp\"\nring_size = 13\n[[vip.real]]\naddress = \"10.1.0.9\"\n",
    )
    .unwrap()
    .vips;
    let journal = Journal {
        weights: vec![("web".into(), ip("10.1.0.2"), 0)],
        added_vips: added,
        removed_vips: vec!["dns".into()],
        site_drained: false,
        server_ids: Vec::new(),
    };
    let h = start(file(""), journal);
    let status = h.d.status();
    let names: Vec<&str> = status.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["web", "new"]);
    let web = status.iter().find(|v| v.name == "web").unwrap();
    assert_eq!((web.reals[1].weight, web.reals[1].slots), (0, 0), "the journaled drain holds");
    assert_eq!(announced(&h), ["10.99.0.1", "10.99.0.9"]);
}

#[tokio::test]
async fn a_drain_adopts_before_it_withdraws_and_is_journaled() {
    let mut h = start(file(""), Journal::default());
    let seen = Rc::new(RefCell::new(Vec::new()));
    let (rx, log) = (h.announce.clone(), seen.clone());
    h.d.rec.dataplane_mut().on_handoff = Some(Box::new(move |handoff| log.borrow_mut().push((handoff.adopt, rx.borrow().len()))));
    assert_eq!(announced(&h), ["10.99.0.1", "10.99.0.2"]);
    change(&mut h, |reply| Command::SiteDrain { drained: true, reply }).unwrap();
    assert_eq!(*seen.borrow(), [(true, 2)], "adopt was programmed while both VIPs were still announced");
    assert!(announced(&h).is_empty());
    assert!(h.d.journal().site_drained);
    change(&mut h, |reply| Command::SiteDrain { drained: false, reply }).unwrap();
    assert_eq!(announced(&h), ["10.99.0.1", "10.99.0.2"]);
    assert_eq!(seen.borrow().last(), Some(&(false, 0)), "and stopped adopting before announcing again: new flows at peers stay theirs");
}

fn graceful(h: &Harness) -> Vec<bool> {
    h.announce.borrow().iter().map(|a| a.graceful_shutdown).collect()
}

#[tokio::test]
async fn a_drain_announces_with_graceful_shutdown_then_withdraws_and_an_undrain_cancels_it() {
    let mut h = start(file_with_graceful_shutdown("", 50), Journal::default());
    assert_eq!((announced(&h).len(), graceful(&h)), (2, vec![false, false]));
    assert_eq!(h.d.site_stage(), SiteStage::Announcing);
    change(&mut h, |reply| Command::SiteDrain { drained: true, reply }).unwrap();
    assert_eq!((announced(&h).len(), graceful(&h)), (2, vec![true, true]), "still announced, with GRACEFUL_SHUTDOWN");
    assert!(matches!(h.d.site_stage(), SiteStage::GracefulShutdown { withdraw_in_ms } if withdraw_in_ms <= 50));
    assert!(h.d.rec.handoff().is_some_and(|h| h.adopt), "adopting from the start");
    let first = h.graceful_over.recv().await.expect("the wait ends");
    h.d.graceful_shutdown_over(first);
    assert!(announced(&h).is_empty());
    assert_eq!(h.d.site_stage(), SiteStage::Withdrawn);

    // An undrain during the wait cancels it; the old timer's end is ignored.
    change(&mut h, |reply| Command::SiteDrain { drained: false, reply }).unwrap();
    change(&mut h, |reply| Command::SiteDrain { drained: true, reply }).unwrap();
    let second = h.graceful_over.recv().await.expect("the wait ends");
    change(&mut h, |reply| Command::SiteDrain { drained: false, reply }).unwrap();
    h.d.graceful_shutdown_over(second);
    assert_eq!((announced(&h).len(), graceful(&h)), (2, vec![false, false]), "announced plainly again");
    assert_eq!(h.d.site_stage(), SiteStage::Announcing);

    // Exiting waits the same way; an already drained site is not announced again.
    assert!(h.d.begin_exit());
    assert_eq!(graceful(&h), [true, true]);
    assert!(h.d.graceful_remaining().is_some_and(|left| left <= Duration::from_millis(50)));
}

#[tokio::test]
async fn health_decides_what_is_announced() {
    let mut h = start(file(""), Journal::default());
    flip(&mut h, "web", "10.1.0.2", false);
    assert_eq!(announced(&h), ["10.99.0.2"], "web needs 2 healthy reals");
    flip(&mut h, "web", "10.1.0.2", true);
    assert_eq!(announced(&h), ["10.99.0.1", "10.99.0.2"]);
}

/// A VIP whose up reals are all drained has an empty ring: it is withdrawn, not announced to
/// drop every new flow, and comes back with the first real undrained.
#[tokio::test]
async fn a_vip_with_every_real_drained_is_withdrawn() {
    let mut h = start(file(""), Journal::default());
    let drain = |h: &mut Harness, weight| {
        change(h, |reply| Command::SetWeight { vip: "dns".into(), real: ip("10.1.0.3"), weight, reply }).unwrap();
    };
    drain(&mut h, Some(0));
    assert_eq!(announced(&h), ["10.99.0.1"], "dns's only real is drained");
    drain(&mut h, None);
    assert_eq!(announced(&h), ["10.99.0.1", "10.99.0.2"]);
}

#[tokio::test]
async fn a_rejected_reload_keeps_the_running_state() {
    let mut h = start(file(""), Journal::default());
    let before = (h.d.rec.dataplane().view(), serde_json::to_string(&h.d.status()).unwrap());
    let writes = h.d.rec.dataplane().writes;
    let reload = |h: &mut Harness, prepared: Result<Prepared, AdminError>| {
        let (tx, mut rx) = oneshot::channel();
        h.d.reload(prepared, Some(tx));
        rx.try_recv().unwrap()
    };
    // A restart-only change.
    let mut other = file("");
    other.conn_table_size = 1024;
    assert!(matches!(
        reload(&mut h, Ok(Prepared { file: other, resolved: None, quic_keys: Default::default(), took: Duration::ZERO })),
        Err(AdminError::Conflict(_))
    ));
    // A config that does not validate.
    let mut bad = file("");
    bad.vips[0].reals[0].address = "not an address".into();
    assert!(matches!(
        reload(&mut h, Ok(Prepared { file: bad, resolved: None, quic_keys: Default::default(), took: Duration::ZERO })),
        Err(AdminError::BadRequest(_))
    ));
    // A failed map write half-way through.
    let mut changed = file("");
    changed.vips[0].reals.pop();
    changed.vips[1].ring_size = Some(17);
    h.d.rec.dataplane_mut().fail_at = Some(writes + 3);
    assert!(matches!(
        reload(&mut h, Ok(Prepared { file: changed.clone(), resolved: None, quic_keys: Default::default(), took: Duration::ZERO })),
        Err(AdminError::Internal(_))
    ));
    // The file could not be read or resolved.
    assert!(reload(&mut h, Err(AdminError::BadRequest("reading".into()))).is_err());
    assert_eq!((h.d.rec.dataplane().view(), serde_json::to_string(&h.d.status()).unwrap()), before);
    assert_eq!((h.d.reloads_ok, h.d.reloads_failed), (0, 4));
    h.d.rec.dataplane_mut().fail_at = None;
    reload(&mut h, Ok(Prepared { file: changed, resolved: None, quic_keys: Default::default(), took: Duration::ZERO })).unwrap();
    assert_eq!(h.d.status()[0].reals.len(), 1);
    assert_eq!(h.d.reloads_ok, 1);
}

#[tokio::test]
async fn admin_errors_say_what_kind_they_are() {
    let mut h = start(file(""), Journal::default());
    let weight = |vip: &str, real: &str, weight| {
        let (vip, real) = (vip.to_owned(), ip(real));
        move |reply| Command::SetWeight { vip, real, weight, reply }
    };
    assert!(matches!(change(&mut h, weight("nope", "10.1.0.1", Some(1))), Err(AdminError::NotFound(_))));
    assert!(matches!(change(&mut h, weight("web", "10.9.9.9", Some(1))), Err(AdminError::NotFound(_))));
    assert!(matches!(change(&mut h, weight("web", "10.1.0.1", Some(1_000_000))), Err(AdminError::BadRequest(_))));
    let existing = Box::new(h.d.file.vips[0].clone());
    assert!(matches!(change(&mut h, |reply| Command::AddVip { vip: existing, reply }), Err(AdminError::Conflict(_))));
    assert!(matches!(change(&mut h, |reply| Command::RemoveVip { name: "nope".into(), reply }), Err(AdminError::NotFound(_))));
    assert_eq!(AdminError::Internal(String::new()).status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    // A write that fails: 500, and nothing changed.
    let writes = h.d.rec.dataplane().writes;
    h.d.rec.dataplane_mut().fail_at = Some(writes + 1);
    assert!(matches!(change(&mut h, weight("web", "10.1.0.1", Some(5))), Err(AdminError::Internal(_))));
    assert!(h.d.journal().weights.is_empty(), "not journaled either");
    h.d.rec.dataplane_mut().fail_at = None;
    change(&mut h, weight("web", "10.1.0.1", Some(5))).unwrap();
    assert_eq!(h.d.journal().weights, [("web".to_owned(), ip("10.1.0.1"), 5)]);
    change(&mut h, |reply| Command::RemoveVip { name: "dns".into(), reply }).unwrap();
    assert_eq!(h.d.journal().removed_vips, ["dns"]);
    assert_eq!(announced(&h), ["10.99.0.1"]);
}

#[tokio::test]
async fn a_failed_journal_write_is_reported() {
    let mut h = start(file(""), Journal::default());
    let (tx, rx) = oneshot::channel();
    h.d.command(Command::SiteDrain { drained: true, reply: tx });
    let (saved, reply) = h.journal.try_recv().unwrap();
    assert!(saved.site_drained);
    // The writer answers; here it failed.
    reply.unwrap().send(Err(AdminError::Internal("disk full".into()))).unwrap();
    assert!(matches!(rx.await.unwrap(), Err(AdminError::Internal(_))));
}

#[tokio::test]
async fn handoff_follows_peer_health() {
    let mut h = start(file(""), Journal::default());
    let programmed = |h: &Harness| h.d.rec.dataplane().handoff.clone().unwrap();
    assert_eq!(programmed(&h).peers, [ip("10.20.0.2"), ip("10.20.0.3")]);
    h.d.health(HealthEvent::Flip { target: Target::Peer(ip("10.20.0.2")), up: false, reason: "test".into() });
    let configured = vec![ip("10.20.0.2"), ip("10.20.0.3")];
    let expected = Handoff { node: Some(ip("10.20.0.1")), peers: vec![ip("10.20.0.3")], sources: configured, adopt: false };
    assert_eq!(programmed(&h), expected, "a peer that is down is not handed to, but still taken from");
    h.d.health(HealthEvent::Flip { target: Target::Peer(ip("10.20.0.2")), up: true, reason: "test".into() });
    assert_eq!(programmed(&h).peers, [ip("10.20.0.2"), ip("10.20.0.3")]);
    assert!(h.d.begin_exit(), "withdraw_on_exit is the default");
    assert!(programmed(&h).adopt, "exiting adopts");
    assert!(announced(&h).is_empty(), "and withdraws");
}

#[tokio::test]
async fn bird_failures_are_counted_and_recovery_shows_in_status() {
    let mut h = start(file(""), Journal::default());
    let router = FakeRouter::default();
    *router.failing.lock().unwrap() = 2;
    let (tx, mut events) = mpsc::channel(8);
    tokio::spawn(bgp::run_router(router.clone(), h.announce.clone(), tx, FAST));
    for _ in 0..2 {
        let event = events.recv().await.unwrap();
        assert!(matches!(event, RouterEvent::Failed { .. }), "{event:?}");
        h.d.router_event(event);
        assert!(h.d.status().iter().all(|v| !v.announced), "nothing confirmed yet");
    }
    let event = events.recv().await.unwrap();
    h.d.router_event(event);
    assert!(h.d.status().iter().all(|v| v.announced));
    assert_eq!(h.d.bird_errors, 2);
    let (tx, rx) = oneshot::channel();
    h.d.command(Command::Metrics(tx));
    assert_eq!(rx.await.unwrap().bgp.errors, 2);
    // A withdrawal goes out on the next event.
    flip(&mut h, "dns", "10.1.0.3", false);
    let event = events.recv().await.unwrap();
    assert_eq!(event, RouterEvent::Applied(vec![Announcement { prefix: ip("10.99.0.1"), prepend: false, graceful_shutdown: false }]));
    h.d.router_event(event);
    assert_eq!(h.d.status().iter().map(|v| v.announced).collect::<Vec<_>>(), [true, false]);
    assert_eq!(router.calls.lock().unwrap().len(), 4, "3 tries of the first list, 1 of the second");
}

#[tokio::test]
async fn a_new_mac_of_the_next_hop_is_written_and_other_addresses_are_ignored() {
    let text = config::parse_raw(&format!("[forwarding]\nnext_hop_ip = \"10.255.255.254\"\n[health]\nkind = \"none\"\n{VIPS}")).unwrap();
    let h = &mut start(text, Journal::default());
    let mac = |h: &Harness| h.d.rec.dataplane().config.unwrap().next_hop_mac;
    assert_eq!(mac(h), [1; 6]);
    h.d.next_hop_changed(NextHopChanged { ip: ip("10.255.255.254"), mac: [9; 6] });
    assert_eq!(mac(h), [9; 6]);
    assert_eq!(h.d.rec.dataplane().config.unwrap().mtu, 1500, "the rest stays");
    h.d.next_hop_changed(NextHopChanged { ip: ip("10.0.0.1"), mac: [7; 6] });
    assert_eq!(mac(h), [9; 6], "a watcher of an earlier next hop is ignored");
    // A change made at run time keeps the followed MAC.
    change(h, |reply| Command::RemoveVip { name: "dns".into(), reply }).unwrap();
    assert_eq!(mac(h), [9; 6]);
}

/// The file with a QUIC-LB VIP whose reals are (address, server ID).
fn quic_file(reals: &[(&str, &str)]) -> RawConfig {
    let mut vip = String::from(
        "[[vip]]\nname = \"h3\"\naddress = \"10.99.0.3\"\nport = 443\nprotocol = \"udp\"\nring_size = 13\n\
         [vip.quic_lb]\nconfig_id = 0\nserver_id_len = 1\nnonce_len = 4\nserver_id_hold_s = 3600\n",
    );
    for (a, sid) in reals {
        vip += &format!("[[vip.real]]\naddress = \"{a}\"\nserver_id = \"{sid}\"\n");
    }
    file(&vip)
}

#[tokio::test]
async fn a_server_id_stays_its_reals_through_reloads_restarts_and_its_hold() {
    let mut h = start(quic_file(&[("10.1.0.5", "01"), ("10.1.0.6", "02")]), Journal::default());
    let reload = |h: &mut Harness, file: RawConfig| {
        let (tx, mut rx) = oneshot::channel();
        h.d.reload(Ok(Prepared { file, resolved: None, quic_keys: Default::default(), took: Duration::ZERO }), Some(tx));
        rx.try_recv().unwrap()
    };
    let before = h.d.rec.dataplane().quic_servers.clone();
    assert_eq!(before.len(), 2);
    // Swapped while both run: refused, and the maps keep the running IDs.
    let swapped = reload(&mut h, quic_file(&[("10.1.0.5", "02"), ("10.1.0.6", "01")]));
    assert!(matches!(&swapped, Err(AdminError::Conflict(why)) if why.contains("was 10.1.0.6's and still has it")), "{swapped:?}");
    assert_eq!(h.d.rec.dataplane().quic_servers, before);
    // 10.1.0.5 leaves: its ID is held, so a new real cannot take it, even after a restart.
    reload(&mut h, quic_file(&[("10.1.0.6", "02")])).unwrap();
    let held = h.d.journal().server_ids.iter().find(|r| r.server_id == "01").cloned().unwrap();
    assert_eq!((held.real, held.hold_s, held.released_s.is_some()), (ip("10.1.0.5"), 3600, true));
    let taken = quic_file(&[("10.1.0.6", "02"), ("10.1.0.7", "01")]);
    let refused = reload(&mut h, taken.clone());
    assert!(matches!(&refused, Err(AdminError::Conflict(why)) if why.contains("held for")), "{refused:?}");
    let journal = h.d.journal().clone();
    let config = effective_config(&taken, &journal, InterfaceCheck::Skip, &Default::default()).unwrap();
    assert!(super::server_ids::check(&journal.server_ids, &config, super::server_ids::now_s()).is_err(), "a restart checks too");
    // Its own real may come back.
    reload(&mut h, quic_file(&[("10.1.0.5", "01"), ("10.1.0.6", "02")])).unwrap();
}

#[tokio::test]
async fn adapted_weights_follow_the_checks_round_trip_and_come_back() {
    let vip = "[[vip]]\nname = \"api\"\naddress = \"10.99.0.4\"\nport = 8443\nprotocol = \"tcp\"\nring_size = 61\n\
               [vip.adapt]\nsignal = \"latency\"\nfloor = 0.1\ninterval_ms = 1000\n\
               [[vip.real]]\naddress = \"10.1.0.7\"\n[[vip.real]]\naddress = \"10.1.0.8\"\n[[vip.real]]\naddress = \"10.1.0.9\"\n";
    let mut h = start(file(vip), Journal::default());
    let id = h.d.config.vips.iter().find(|v| v.name == "api").unwrap().id;
    let slots =
        |h: &Harness| -> Vec<u32> { h.d.status().into_iter().find(|v| v.vip == id).unwrap().reals.iter().map(|r| r.slots).collect() };
    let before = slots(&h);
    let mut now = Instant::now();
    let mut round = |h: &mut Harness, slow_ms: u64| {
        for (real, ms) in [("10.1.0.7", slow_ms), ("10.1.0.8", 1), ("10.1.0.9", 1)] {
            let latency = Some(Duration::from_millis(ms));
            h.d.health(HealthEvent::Checked { target: Target::Real(id, ip(real)), latency, load: None });
        }
        now += Duration::from_secs(1);
        h.d.adapt_tick(now);
    };
    for _ in 0..8 {
        round(&mut h, 50);
    }
    let slow = slots(&h);
    assert!(
        slow[0] * 3 <= slow[1] && slow[0] * 3 <= slow[2],
        "the slow real's share fell to a third of the others': {before:?} -> {slow:?}"
    );
    let status = h.d.status();
    let real = &status.iter().find(|v| v.vip == id).unwrap().reals[0];
    assert_eq!((real.adapt_percent, real.effective_weight()), (Some(10), 0.1));
    let rebuilds = h.d.adapt_rebuilds;
    assert!((1..=8).contains(&rebuilds), "{rebuilds} rebuilds");
    for _ in 0..30 {
        round(&mut h, 1);
    }
    assert_eq!(slots(&h), before, "back to the configured shares");
    // The other VIPs are not adapted.
    assert!(h.d.status().iter().filter(|v| v.vip != id).all(|v| v.reals.iter().all(|r| r.adapt_percent.is_none())));
}
