//! A flood in network namespaces (see `lb_tests::topology`): a generator on the router sends
//! random-source SYNs to the VIP as fast as it can, then random-source ACKs, while 50 long-lived
//! client connections exchange lines and new ones keep opening; meanwhile one real is drained
//! and another leaves the ring. The LB node has a peer node (its own namespace and balancer) to
//! hand unknown mid-flow packets to, which returns what it does not know, as a peer site would.
//!
//! Asserted: no established connection breaks or changes real; every connection opened during the
//! flood completes and keeps its real across the ring changes; the SYN phase adds fewer entries
//! than 1% of its SYNs; in the ACK phase handoffs and inserts stay within their limits (and the
//! limits did hold the flood back). The rates reached and the table's occupancy are printed.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use lb_common::{limits, programs, stats::Counter, RateLimit};
use lb_tests::{
    fixture::{Balancer, TEST_RING_SIZE},
    netns::{enter_path, veth, End, NetNs},
    packet::{ip, Frame},
    packetgen, require_root,
    topology::{backend_addr, LineConn, Site, PORT, VIP},
};
use lb_userspace::{config::AttachMode, dataplane::DataplaneOps as _};

const LONG_LIVED: usize = 50;
/// Distinct spoofed flows per phase (sent round and round).
const FLOWS: usize = 65_536;
/// Bounds of each flood phase.
const PHASE_FRAMES: usize = 4_000_000;
const PHASE_TIME: Duration = Duration::from_secs(4);
/// Into the phase, the ring change.
const RING_CHANGE_AFTER: Duration = Duration::from_millis(1500);
/// Per-CPU limits, low enough that the flood meets them.
const INSERTS_PER_SEC: u32 = 10_000;
const HANDOFFS_PER_SEC: u32 = 2_000;
const NODE: &str = "10.10.2.2";
const PEER: &str = "10.10.9.2";

/// The peer node: a namespace behind the router with its own balancer, which knows none of the
/// flood's flows and so returns every handoff.
struct Peer {
    _ns: NetNs,
    _balancer: Balancer,
}

impl Peer {
    fn new(site: &mut Site) -> Self {
        let ns = NetNs::new("peer", false);
        // The router side has the MAC the balancers send to (the fixture's ROUTER_MAC).
        veth(
            End { ns: &site.net.router, dev: "r-peer", mac: "02:00:00:00:00:03", addrs: &["10.10.9.1/24"] },
            End { ns: &ns, dev: "p0", mac: "02:00:00:00:09:02", addrs: &[&format!("{PEER}/24")] },
        );
        let router_xdp = &mut site.net.router_xdp;
        site.net.router.run(|| router_xdp.attach(programs::PASS, "r-peer", AttachMode::Native).expect("pass stub"));
        let balancer = ns.run(|| {
            let mut b = Balancer::new();
            b.add_vip(VIP, PORT, 6, 0, TEST_RING_SIZE, &[(&backend_addr(0), 1)]);
            b.set_handoff(Some(ip(PEER)), &[ip(NODE)], false).expect("peer handoff");
            b.dp_mut().attach(programs::BALANCER, "p0", AttachMode::Native).expect("attach peer");
            b
        });
        Self { _ns: ns, _balancer: balancer }
    }
}

/// The flood's own link from the router into the LB node (lb1, the balancer attached there
/// too). Sent through the clients' link instead, the flood overran that link's ring (here 70% of
/// the generator's frames were refused) and the clients' packets were refused with it: a test of
/// an emulated link's capacity. The balancer's program, maps, limits and CPUs are shared all the
/// same; the phase figures show whether this link refused anything.
fn flood_link(site: &mut Site) {
    veth(
        End { ns: &site.net.router, dev: "r-flood", mac: "02:00:00:00:00:03", addrs: &["10.10.8.1/24"] },
        End { ns: &site.net.lb, dev: "lb1", mac: "02:00:00:00:08:02", addrs: &["10.10.8.2/24"] },
    );
    let router_xdp = &mut site.net.router_xdp;
    site.net.router.run(|| router_xdp.attach(programs::PASS, "r-flood", AttachMode::Native).expect("pass stub"));
    let dp = site.balancer.dp_mut();
    site.net.lb.run(|| dp.attach(programs::BALANCER, "lb1", AttachMode::Native).expect("attach on lb1"));
}

/// `FLOWS` frames from random sources in 100.64.0.0/10 (which the router has no route back to).
fn spoofed(seed: u64, syn: bool) -> Vec<Vec<u8>> {
    let mut x = seed;
    let mut next = move || {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..FLOWS)
        .map(|_| {
            let r = next();
            let src = std::net::Ipv4Addr::from(0x6440_0000 | (r as u32 & 0x003f_ffff)).to_string();
            let frame = Frame::tcp(&src, 1024 + (r >> 32) as u16 % 64_000, VIP, PORT);
            if syn { frame.syn() } else { frame }.build()
        })
        .collect()
}

/// The backend an answer names ("backend 2 answered ...").
fn backend_of(answer: &str) -> String {
    answer.split(" answered").next().unwrap_or_default().to_owned()
}

/// What one flood phase did.
struct Phase {
    sent: usize,
    /// Frames the flood link refused (its ring full).
    refused: usize,
    /// Of those, what the LB node's lb1 received (the rest the link's ring dropped).
    received: u64,
    took: Duration,
    entries_after: usize,
}

impl Phase {
    fn show(&self, what: &str) -> String {
        let secs = self.took.as_secs_f64();
        format!(
            "{} {what} sent in {:.2?} ({:.0}/s; {} more refused by the link), {} received by the LB node ({:.0}/s); entries after: {}",
            self.sent,
            self.took,
            self.sent as f64 / secs,
            self.refused,
            self.received,
            self.received as f64 / secs,
            self.entries_after
        )
    }
}

/// Floods with `frames` from the router while, `RING_CHANGE_AFTER` into it, `change` runs.
fn flood(site: &mut Site, frames: &[Vec<u8>], change: impl FnOnce(&mut Site)) -> Phase {
    let router = format!("/run/netns/{}", site.net.router.name);
    let received =
        |site: &Site| site.net.lb.exec(&["cat", "/sys/class/net/lb1/statistics/rx_packets"]).trim().parse::<u64>().expect("rx_packets");
    let received_before = received(site);
    let out = thread::scope(|s| {
        let generator = s.spawn(|| {
            enter_path(&router);
            packetgen::send("r-flood", frames, PHASE_FRAMES, PHASE_TIME)
        });
        thread::sleep(RING_CHANGE_AFTER);
        change(site);
        generator.join().expect("generator")
    });
    Phase {
        sent: out.sent,
        refused: out.refused,
        received: received(site) - received_before,
        took: out.took,
        entries_after: site.balancer.dp().conn_entries().unwrap(),
    }
}

fn counters(site: &Site) -> [u64; 3] {
    [Counter::HandoffSent, Counter::HandoffSuppressed, Counter::FlowUnrecorded].map(|c| site.balancer.dp().counter(c).unwrap())
}

#[test]
fn a_flood_of_spoofed_syns_then_acks_breaks_no_connection_across_ring_changes() {
    require_root!();
    let mut site = Site::new(3);
    let _peer = Peer::new(&mut site);
    flood_link(&mut site);
    site.balancer.set_handoff(Some(ip(NODE)), &[ip(PEER)], false).unwrap();
    let dp = site.balancer.dp_mut();
    dp.set_rate_limit(limits::INSERTS, &RateLimit::per_sec(INSERTS_PER_SEC)).unwrap();
    dp.set_rate_limit(limits::HANDOFFS, &RateLimit::per_sec(HANDOFFS_PER_SEC)).unwrap();
    let (syns, acks) = (spoofed(0x5eed_0001, true), spoofed(0x5eed_0002, false));
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let _servers = site.net.servers();
    let service = Site::vip_addr();

    let long: Vec<(LineConn, String)> = site.net.client.run(|| {
        (0..LONG_LIVED)
            .map(|i| {
                let mut c = LineConn::connect(service).expect("connect");
                let who = backend_of(&c.exchange(&format!("hello {i}")).expect("first answer"));
                (c, who)
            })
            .collect()
    });
    let entries_before = site.balancer.dp().conn_entries().unwrap();
    let long = Mutex::new(long);
    let opened: Mutex<Vec<(LineConn, String)>> = Mutex::default();
    let broken: Mutex<Vec<String>> = Mutex::default();
    let done = AtomicBool::new(false);
    let client = format!("/run/netns/{}", site.net.client.name);

    let (syn_phase, ack_phase, ack_counters) = thread::scope(|s| {
        // The long-lived connections, each exchanging a line every 200 ms.
        s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut round = 0;
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                for (i, (c, who)) in long.lock().unwrap().iter_mut().enumerate() {
                    match c.exchange(&format!("round {round} of {i}")) {
                        Ok(a) if backend_of(&a) == *who => {}
                        other => broken.lock().unwrap().push(format!("long-lived {i} ({who}), round {round}: {other:?}")),
                    }
                }
                round += 1;
                thread::sleep(Duration::from_millis(200));
            }
        });
        // New connections, one every 100 ms, kept open.
        s.spawn(|| {
            enter_path(&client);
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut n = 0;
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                match LineConn::connect(service).and_then(|mut c| Ok((c.exchange(&format!("new {n}"))?, c))) {
                    Ok((a, c)) => opened.lock().unwrap().push((c, backend_of(&a))),
                    Err(e) => broken.lock().unwrap().push(format!("new connection {n}: {e}")),
                }
                n += 1;
                thread::sleep(Duration::from_millis(100));
            }
        });

        // SYN flood; backend 2 drained (weight 0) meanwhile.
        let syn_phase = flood(&mut site, &syns, |site| {
            let reals = [(backend_addr(0), 1), (backend_addr(1), 1), (backend_addr(2), 0)];
            let reals: Vec<(&str, u32)> = reals.iter().map(|(a, w)| (a.as_str(), *w)).collect();
            site.balancer.set_reals(&mut site.vip, &reals);
        });
        // ACK flood; backend 1 is drained too meanwhile (weight 0: it leaves the ring, and the
        // connections it has stay with it).
        let before = counters(&site);
        let ack_phase = flood(&mut site, &acks, |site| {
            let held_back = site.balancer.dp().limit_refused_within(limits::HANDOFFS, Duration::from_secs(1)).unwrap();
            assert!(held_back, "the ACK flood is over the handoff limit (lb_xdp_flood_active)");
            let reals = [(backend_addr(0), 1), (backend_addr(1), 0), (backend_addr(2), 0)];
            let reals: Vec<(&str, u32)> = reals.iter().map(|(a, w)| (a.as_str(), *w)).collect();
            site.balancer.set_reals(&mut site.vip, &reals);
        });
        let after = counters(&site);
        // A second more of traffic on the changed rings before the threads stop.
        thread::sleep(Duration::from_secs(1));
        done.store(true, Ordering::Relaxed);
        (syn_phase, ack_phase, [0, 1, 2].map(|i| after[i] - before[i]))
    });

    // Once more on every connection, after both ring changes.
    let mut long = long.into_inner().unwrap();
    let mut opened = opened.into_inner().unwrap();
    let mut broken = broken.into_inner().unwrap();
    for (i, (c, who)) in long.iter_mut().chain(opened.iter_mut()).enumerate() {
        match c.exchange("last") {
            Ok(a) if backend_of(&a) == *who => {}
            other => broken.push(format!("connection {i} ({who}) at the end: {other:?}")),
        }
    }
    let per_backend = |conns: &[(LineConn, String)]| {
        (0..3).map(|b| conns.iter().filter(|(_, w)| *w == format!("backend {b}")).count()).collect::<Vec<_>>()
    };
    let [handoffs, suppressed, unrecorded] = ack_counters;
    println!("connection table: {entries_before} entries before the flood (65536 slots)");
    println!("SYN phase: {}", syn_phase.show("SYNs"));
    println!("ACK phase: {}", ack_phase.show("ACKs"));
    println!("  handoffs sent {handoffs}, suppressed {suppressed}; flows unrecorded {unrecorded}");
    println!(
        "long-lived per backend {:?}; opened during the flood {} per backend {:?}",
        per_backend(&long),
        opened.len(),
        per_backend(&opened)
    );
    println!("broken: {}", broken.len());

    assert!(broken.is_empty(), "broken connections: {broken:#?}");
    assert!(opened.len() >= 50, "connections kept opening during the flood: {}", opened.len());
    let syn_added = syn_phase.entries_after.saturating_sub(entries_before);
    assert!(syn_added as u64 * 100 < syn_phase.received, "the SYN phase added {syn_added} entries for {} SYNs", syn_phase.received);
    // Per CPU, a limit lets through its rate for the time plus one burst (a tenth of a second).
    let bound = |per_sec: u32, took: Duration| (per_sec as f64 * cpus * (took.as_secs_f64() + 0.1)) as u64;
    let handoff_bound = bound(HANDOFFS_PER_SEC, ack_phase.took);
    assert!(handoffs <= handoff_bound, "{handoffs} handoffs, limit {handoff_bound}");
    assert!(suppressed > handoffs, "the limit held the flood back");
    let ack_added = ack_phase.entries_after.saturating_sub(syn_phase.entries_after) as u64;
    let insert_bound = bound(INSERTS_PER_SEC, ack_phase.took);
    assert!(ack_added <= insert_bound, "{ack_added} entries, limit {insert_bound}");
    // What came back from the peer was recorded; the rest went by the ring.
    assert!(ack_added <= handoffs + opened.len() as u64, "{ack_added} entries for {handoffs} handoffs");
}
