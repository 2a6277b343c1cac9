//! The second chance at the backend (docs/second-chance.md): connections that outlive the
//! balancer's connection table. The real `lb run` on the LB node, the real `lb backend` on each
//! of four backends, kernel TCP between them. 200 long-lived client connections each exchange a
//! line every 100 ms while the table is lost one of four ways, and then the VIP's ring changes:
//!
//! - (a) every entry purged, then a real added;
//! - (b) a random-source flood of handshakes (SYN, ACK, and one more ACK) 32 times the table,
//!   and a real drained during it;
//! - (c) one spoofed SYN with an established connection's 5-tuple, then that connection's real
//!   drained;
//! - (d) `lb stop` and `lb run` with new maps, then a weight change.
//!
//! Each scenario runs for both families, with the second chance off and then on. Off, the
//! connections the ring moved break (printed: the test tests something); on, none does, and the
//! counters show the path: the balancer sent alternatives, a backend forwarded, another
//! delivered what was forwarded.
//!
//! Where the clients pause ((a), (b), (d); (c) holds one connection) they pause between the table's loss and the ring's
//! change: a connection's next packet would otherwise put its entry back (an unknown mid-flow
//! packet is recorded) before the change, and nothing would be left to save.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use lb_common::{hash::flow_hash, SYN_SEEN_SLOTS};
use lb_tests::{
    fixture::flow_of,
    lbd::{metric, LbDaemon},
    netns::{enter_path, veth, End},
    packet::Frame,
    packetgen, require_root,
    topology::{backend_addr, backend_addr6, who, Net, Servers, PORT, VIP, VIP6},
};

const CONNS: usize = 200;
/// Three serve the VIP; (a) adds the fourth.
const BACKENDS: usize = 4;
const SERVING: usize = 3;
const EXCHANGE_EVERY: Duration = Duration::from_millis(100);
const DRIVERS: usize = 4;
/// Small, so the flood of (b) turns it over many times a second.
const TABLE: u32 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn vip(self) -> &'static str {
        match self {
            Family::V4 => VIP,
            Family::V6 => VIP6,
        }
    }

    fn real(self, i: usize) -> String {
        match self {
            Family::V4 => backend_addr(i),
            Family::V6 => backend_addr6(i),
        }
    }

    fn service(self) -> SocketAddr {
        SocketAddr::new(self.vip().parse().unwrap(), PORT)
    }
}

fn config(family: Family, on: bool, reals: usize) -> String {
    config_of(family, on, &(0..reals).collect::<Vec<_>>())
}

/// The config with the reals of these backends. The health checks are slow enough that the flood
/// of (b) on a 2-core machine does not flip a real: a flip is two more ring changes inside the
/// window, and only the last change's previous ring is kept (see `two_changes`).
fn config_of(family: Family, on: bool, reals: &[usize]) -> String {
    let mut c = format!(
        "conn_table_size = {TABLE}\n[[interface]]\nname = \"lb0\"\n[[interface]]\nname = \"lb1\"\n\
         [forwarding]\nnext_hop_mac = \"02:00:00:00:00:03\"\n\
         [health]\ninterval_ms = 250\ntimeout_ms = 250\nrise = 2\nfall = 3\n\
         [second_chance]\nenabled = {on}\n\
         [[vip]]\nname = \"web\"\naddress = \"{}\"\nport = {PORT}\nprotocol = \"tcp\"\n",
        family.vip()
    );
    for &i in reals {
        c += &format!("[[vip.real]]\naddress = \"{}\"\n", family.real(i));
    }
    c
}

/// A client connection that exchanges lines, with a timeout long enough for a restart's gap.
struct Conn {
    reader: BufReader<TcpStream>,
    local: SocketAddr,
    backend: usize,
}

impl Conn {
    fn open(to: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let local = stream.local_addr().unwrap();
        let mut c = Self { reader: BufReader::new(stream), local, backend: 0 };
        c.backend = who(&c.exchange().expect("first exchange"));
        c
    }

    fn exchange(&mut self) -> std::io::Result<String> {
        self.reader.get_mut().write_all(b"ping\n")?;
        let mut text = String::new();
        if self.reader.read_line(&mut text)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(text)
    }
}

/// The clients' exchanges, driven by a few threads; pausable as a whole or one connection.
struct Traffic {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    held: Arc<Vec<AtomicBool>>,
    broken: Arc<Mutex<Vec<String>>>,
    drivers: Vec<thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(conns: Vec<Conn>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let held: Arc<Vec<AtomicBool>> = Arc::new((0..conns.len()).map(|_| AtomicBool::new(false)).collect());
        let broken = Arc::new(Mutex::new(Vec::new()));
        let mut groups: Vec<Vec<(usize, Conn)>> = (0..DRIVERS).map(|_| Vec::new()).collect();
        for (i, c) in conns.into_iter().enumerate() {
            groups[i % DRIVERS].push((i, c));
        }
        let drivers = groups
            .into_iter()
            .map(|mut group| {
                let (stop, paused, held, broken) = (stop.clone(), paused.clone(), held.clone(), broken.clone());
                thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let tick = Instant::now();
                        if !paused.load(Ordering::Relaxed) {
                            group.retain_mut(|(i, c)| {
                                if held[*i].load(Ordering::Relaxed) {
                                    return true;
                                }
                                let why = match c.exchange() {
                                    Ok(answer) if who(&answer) == c.backend => return true,
                                    Ok(answer) => format!("moved: {}", answer.trim()),
                                    Err(e) => e.to_string(),
                                };
                                broken.lock().unwrap().push(format!("{} (backend {}): {why}", c.local, c.backend));
                                false
                            });
                        }
                        thread::sleep(EXCHANGE_EVERY.saturating_sub(tick.elapsed()));
                    }
                })
            })
            .collect();
        Self { stop, paused, held, broken, drivers }
    }

    /// Stops the exchanges and waits out the ones in flight.
    fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(400));
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
    }

    fn hold(&self, i: usize, held: bool) {
        self.held[i].store(held, Ordering::Relaxed);
        if held {
            thread::sleep(Duration::from_millis(400));
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for d in self.drivers.drain(..) {
            d.join().expect("driver");
        }
        std::mem::take(&mut *self.broken.lock().unwrap())
    }
}

/// One site with `lb run` and a flood link, the line servers, and 200 connections.
struct Site {
    net: Net,
    lb: LbDaemon,
    _servers: Servers,
    family: Family,
    on: bool,
}

impl Site {
    fn new(family: Family, on: bool) -> Self {
        let net = Net::new(BACKENDS);
        // The flood's (and the spoofed SYN's) own link into the LB node, as in flood_netns.rs: the
        // clients' link is not what is tested.
        veth(
            End { ns: &net.router, dev: "r-flood", mac: "02:00:00:00:00:03", addrs: &["10.10.8.1/24"] },
            End { ns: &net.lb, dev: "lb1", mac: "02:00:00:00:08:02", addrs: &["10.10.8.2/24"] },
        );
        let mut net = net;
        let router_xdp = &mut net.router_xdp;
        net.router
            .run(|| router_xdp.attach(lb_common::programs::PASS, "r-flood", lb_userspace::config::AttachMode::Native).expect("pass stub"));
        let servers = net.servers();
        let lb = LbDaemon::start(&net.lb, &config(family, on, SERVING));
        let site = Self { net, lb, _servers: servers, family, on };
        site.wait_up(SERVING);
        site
    }

    /// Empties the connection table (every serving real's entries).
    fn purge_table(&self) {
        for i in 0..SERVING {
            self.lb_cli(&["flows", "purge", "--real", &self.family.real(i)]);
        }
    }

    /// Rewrites the config file with the reals of these backends and reloads.
    fn reload_with(&self, reals: &[usize]) {
        std::fs::write(&self.lb.config, format!("instance = \"{}\"\n{}", self.lb.instance, config_of(self.family, self.on, reals)))
            .unwrap();
        self.lb_cli(&["reload"]);
        self.wait_up(reals.len());
    }

    fn wait_up(&self, reals: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.lb.status();
            if status[0].reals.len() == reals && status[0].reals.iter().all(|r| r.up) {
                return;
            }
            assert!(Instant::now() < deadline, "reals never came up: {status:?}\n{}", self.lb.log());
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn connect(&self) -> Vec<Conn> {
        self.connect_n(CONNS)
    }

    fn connect_n(&self, n: usize) -> Vec<Conn> {
        let to = self.family.service();
        self.net.client.run(|| (0..n).map(|_| Conn::open(to)).collect())
    }

    fn lb_cli(&self, args: &[&str]) {
        let out = self.lb.cli(args);
        assert!(out.status.success(), "lb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `lb flow --json` for the client connection from `local`: the alternative a mid-flow
    /// packet the table does not hold carries, or (`entry`) the one its table entry carries.
    fn flow_alternative(&self, local: SocketAddr, entry: bool) -> Option<String> {
        let vip = self.family.service().to_string();
        let out = self.lb.cli(&["flow", &local.to_string(), &vip, "tcp", "--json"]);
        assert!(out.status.success(), "lb flow: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("lb flow --json");
        let at = if entry { "/entry/alternative" } else { "/second_chance/alternative" };
        report.pointer(at).and_then(|a| a.as_str()).map(str::to_owned)
    }

    /// Frames from the router into the LB node's second interface.
    fn send(&self, frames: &[Vec<u8>], count: usize, limit: Duration) -> packetgen::Sent {
        let router = format!("/run/netns/{}", self.net.router.name);
        let frames = frames.to_vec();
        thread::spawn(move || {
            enter_path(&router);
            packetgen::send("r-flood", &frames, count, limit)
        })
        .join()
        .expect("generator")
    }

    /// The balancer's alternatives sent, and the backends' forwards and second hops.
    fn counters(&self) -> [u64; 3] {
        let sent = metric(&self.lb.metrics(), "lb_xdp_events_total{event=\"second_chance_sent\"}") as u64;
        let backends = |name: &str| self.net.decaps.iter().map(|d| d.counter(name)).sum::<u64>();
        [sent, backends("second_chance_forwarded"), backends("second_chance_received")]
    }

    /// The lb log's lines where a real's health changed.
    fn health_changes(&self) -> Vec<String> {
        self.lb.log().lines().filter(|l| l.contains("real health changed")).map(str::to_owned).collect()
    }

    /// Prints and checks what a scenario did: off, something broke; on, nothing did, and the
    /// path shows in the counters.
    fn verdict(&self, scenario: &str, broken: &[String], must_break: Option<&str>) {
        let [sent, forwarded, received] = self.counters();
        let mode = if self.on { "on" } else { "off" };
        println!(
            "{scenario} {:?} second chance {mode}: {} of {CONNS} connections broken; alternatives sent {sent}, forwarded {forwarded}, \
             delivered after a forward {received}",
            self.family,
            broken.len()
        );
        if self.on {
            // A real's flip is a ring change the scenario did not make: the log's are shown (read
            // only when the assertion fails).
            assert!(
                broken.is_empty(),
                "{scenario}: broken with the second chance on: {broken:#?}\nhealth changes: {:#?}",
                self.health_changes()
            );
            assert!(sent > 0 && forwarded > 0 && received > 0, "{scenario}: the second chance's path: {sent} {forwarded} {received}");
        } else {
            assert!(!broken.is_empty(), "{scenario}: nothing broke without the second chance: the scenario saves nothing to save");
            if let Some(conn) = must_break {
                assert!(broken.iter().any(|b| b.starts_with(conn)), "{scenario}: {conn} should have broken: {broken:#?}");
            }
            assert_eq!([sent, forwarded, received], [0; 3], "{scenario}: no second chance when it is off");
        }
    }
}

/// (a) Every entry purged while the clients are idle, then a fourth real added by a reload.
fn table_wiped(family: Family, on: bool) {
    let site = Site::new(family, on);
    let conns = site.connect();
    let clients: Vec<(SocketAddr, usize)> = conns.iter().map(|c| (c.local, c.backend)).collect();
    let traffic = Traffic::start(conns);
    thread::sleep(Duration::from_secs(1));
    traffic.pause();
    site.purge_table();
    // The new real answers every handshake with a SYN cookie: the ACK that completes one comes
    // with an alternative (its slot moved) and must be delivered on the cookie, not forwarded.
    site.net.backends[SERVING].exec(&["sysctl", "-qw", "net.ipv4.tcp_syncookies=2"]);
    site.reload_with(&(0..BACKENDS).collect::<Vec<_>>());
    // What `lb flow` says of the first 40 connections, idle and out of the table: with the
    // second chance on, those the change moved carry their own real as the alternative.
    let alternatives: Vec<(SocketAddr, usize, Option<String>)> =
        clients.iter().take(40).map(|&(local, backend)| (local, backend, site.flow_alternative(local, false))).collect();
    let moved = alternatives.iter().filter(|(_, _, alt)| alt.is_some()).count();
    for (local, backend, alt) in &alternatives {
        if let Some(alt) = alt {
            assert_eq!(alt, &family.real(*backend), "{local}: the previous ring's real is the one it is on");
        }
    }
    assert_eq!(moved > 0, on, "lb flow names alternatives only with the second chance on: {alternatives:?}");
    traffic.resume();
    // The new real forwards every packet of the connections it was given and does not hold.
    let doctor = site.lb.cli(&["doctor", "--window-ms", "1000"]);
    let doctor = String::from_utf8_lossy(&doctor.stdout).into_owned();
    let flagged = format!("backend {}", family.real(SERVING));
    assert_eq!(doctor.contains("backend_forwarding") && doctor.contains(&flagged), on, "lb doctor:\n{doctor}");
    assert!(!doctor.contains("backend_unread"), "every backend answered:\n{doctor}");
    // New connections after the change: those on the new real complete on a cookie.
    let mut fresh = site.connect_n(40);
    for c in &mut fresh {
        for _ in 0..3 {
            let answer = c.exchange().expect("a new connection after the change");
            assert_eq!(who(&answer), c.backend);
        }
    }
    assert!(fresh.iter().any(|c| c.backend == SERVING), "some landed on the new real");
    if on {
        let delivered = site.net.decaps[SERVING].counter("second_chance_delivered");
        assert!(delivered > 0, "the new real delivered alternatives it held the connection of (cookie ACKs included)");
    }
    thread::sleep(Duration::from_secs(1));
    if on {
        // Their next packets made entries that carry the alternative along.
        let (local, backend, _) = alternatives.iter().find(|(_, _, alt)| alt.is_some()).expect("one moved");
        assert_eq!(site.flow_alternative(*local, true), Some(family.real(*backend)), "{local}'s table entry");
    }
    site.verdict("(a) table wiped, real added", &traffic.finish(), None);
}

/// (b) A flood of spoofed handshakes (32,768 flows, 32 times the table) for 4 s while the
/// clients are idle; real 0 drained 1.5 s into it. Each spoofed flow is a SYN, its ACK and one
/// more ACK: with the SYN and ACK alone, the kernel's LRU kept all 200 idle entries (new entries
/// that are never hit again only evict each other), so the second ACK, which hits its entry,
/// is what a flood needs to evict established flows.
fn handshake_flood(family: Family, on: bool) {
    let site = Site::new(family, on);
    let traffic = Traffic::start(site.connect());
    thread::sleep(Duration::from_secs(1));
    traffic.pause();
    let frames = spoofed_flows(family, 0x5eed_0000 + on as u64, true);
    let drained = family.real(0);
    let sent = thread::scope(|s| {
        let flood = s.spawn(|| site.send(&frames, 3_000_000, Duration::from_secs(4)));
        thread::sleep(Duration::from_millis(1500));
        site.lb_cli(&["real", "drain", "web", &drained]);
        flood.join().expect("flood")
    });
    println!("(b) {family:?}: flood of {} frames in {:.2?} ({} refused by the link)", sent.sent, sent.took, sent.refused);
    traffic.resume();
    thread::sleep(Duration::from_secs(2));
    site.verdict("(b) handshake flood, real drained", &traffic.finish(), None);
}

/// 32,768 spoofed flows' SYN then ACK (then one more ACK with `triples`), from sources the
/// router has no route back to.
fn spoofed_flows(family: Family, seed: u64, triples: bool) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut frames = Vec::new();
    for _ in 0..32_768 {
        let r = next();
        let src = match family {
            Family::V4 => std::net::Ipv4Addr::from(0x6440_0000 | (r as u32 & 0x003f_ffff)).to_string(),
            Family::V6 => std::net::Ipv6Addr::new(0xfd00, 0x6440, 0, 0, 0, 0, (r >> 16) as u16, r as u16).to_string(),
        };
        let frame = Frame::tcp(&src, 1024 + (r >> 32) as u16 % 64_000, family.vip(), PORT);
        frames.push(frame.clone().syn().build());
        frames.push(frame.build());
        if triples {
            frames.push(frame.build());
        }
    }
    frames
}

/// (c) A spoofed SYN carrying one established connection's 5-tuple (the connection idle), then
/// another SYN that takes its `SYN_SEEN` slot (as other SYNs do on a busy site), then its real
/// drained. Without that second SYN, the connection's next packet would go where the spoofed SYN
/// went, its own real, and nothing would break even without the second chance.
fn spoofed_syn(family: Family, on: bool) {
    let site = Site::new(family, on);
    let conns = site.connect();
    let (victim, local) =
        conns.iter().enumerate().find(|(_, c)| c.backend == 0).map(|(i, c)| (i, c.local)).expect("a connection on real 0");
    let traffic = Traffic::start(conns);
    thread::sleep(Duration::from_secs(1));
    traffic.hold(victim, true);
    let client = local.ip().to_canonical().to_string();
    let spoofed = Frame::tcp(&client, local.port(), family.vip(), PORT);
    let slot = |f: &Frame| flow_hash(&flow_of(f)) % SYN_SEEN_SLOTS;
    // One slot in 2^20: about a million tries on average, from up to 2^32 (source, port) pairs.
    let other_source = |k: u16| match family {
        Family::V4 => format!("100.65.{}.{}", k >> 8, k & 0xff),
        Family::V6 => format!("fd00:6440::{k:x}"),
    };
    let collider = (0..=u16::MAX)
        .flat_map(|k| (1..=u16::MAX).map(move |port| (k, port)))
        .map(|(k, port)| Frame::tcp(&other_source(k), port, family.vip(), PORT))
        .find(|f| slot(f) == slot(&spoofed))
        .expect("a SYN for the same SYN_SEEN slot");
    site.send(&[spoofed.syn().build(), collider.syn().build()], 2, Duration::from_secs(1));
    thread::sleep(Duration::from_millis(100));
    site.lb_cli(&["real", "drain", "web", &family.real(0)]);
    traffic.hold(victim, false);
    thread::sleep(Duration::from_millis(1500));
    site.verdict("(c) spoofed SYN, its real drained", &traffic.finish(), Some(&local.to_string()));
}

/// (d) `lb stop` and `lb run` afresh (new maps: an empty table), then real 1's weight raised.
fn fresh_node(family: Family, on: bool) {
    let mut site = Site::new(family, on);
    let traffic = Traffic::start(site.connect());
    thread::sleep(Duration::from_secs(1));
    traffic.pause();
    site.lb_cli(&["stop"]);
    assert!(!lb_userspace::dataplane::pins::balancer(&site.lb.instance).exists(), "lb stop removes the pins: the next start is fresh");
    site.lb.terminate();
    site.lb.spawn();
    site.wait_up(SERVING);
    site.lb_cli(&["real", "set-weight", "web", &family.real(1), "3"]);
    traffic.resume();
    thread::sleep(Duration::from_secs(2));
    site.verdict("(d) fresh node, weight changed", &traffic.finish(), None);
}

/// Where the previous ring cannot help (second chance on): two changes while the clients are
/// idle. Real 0 is drained (its connections move, and a few others: Maglev moves some slots
/// beyond the drained real's), then real 1's weight is raised. One previous ring is kept, the
/// one before the latest change, so a connection whose slot moved at the first change has lost
/// its real: every connection of real 0 breaks, and none but those `lb flow` named an
/// alternative for after the first change. With the clients exchanging lines between the
/// changes, their entries carry the alternative, and nothing breaks.
fn two_changes(family: Family, idle_between: bool) {
    let site = Site::new(family, true);
    let conns = site.connect();
    let locals: Vec<SocketAddr> = conns.iter().map(|c| c.local).collect();
    let on_real0: Vec<String> = conns.iter().filter(|c| c.backend == 0).map(|c| c.local.to_string()).collect();
    let traffic = Traffic::start(conns);
    thread::sleep(Duration::from_secs(1));
    traffic.pause();
    site.purge_table();
    site.lb_cli(&["real", "drain", "web", &family.real(0)]);
    let moved_at_first: Vec<String> =
        locals.iter().filter(|&&l| site.flow_alternative(l, false).is_some()).map(|l| l.to_string()).collect();
    if !idle_between {
        traffic.resume();
        thread::sleep(Duration::from_secs(1));
        traffic.pause();
    }
    site.lb_cli(&["real", "set-weight", "web", &family.real(1), "3"]);
    traffic.resume();
    thread::sleep(Duration::from_secs(2));
    let broken = traffic.finish();
    let broken_at = locals_of(&broken);
    println!(
        "two changes {family:?}, clients {}: {} of {CONNS} broken; {} were on real 0, {} moved at the first change",
        if idle_between { "idle between" } else { "busy between" },
        broken.len(),
        on_real0.len(),
        moved_at_first.len()
    );
    if idle_between {
        assert!(on_real0.iter().all(|c| broken_at.contains(c)), "every connection of real 0 breaks: {broken:#?}");
        assert!(broken_at.iter().all(|c| moved_at_first.contains(c)), "only connections that moved at the first change: {broken:#?}");
    } else {
        assert!(broken.is_empty(), "{broken:#?}");
    }
}

/// Where the previous ring cannot help: a real removed from the config (second chance on). Its
/// id is retired (marked down), so it is no alternative; its connections break, as they do
/// with the table intact. The others are untouched.
fn real_removed(family: Family) {
    let site = Site::new(family, true);
    let conns = site.connect();
    let mut on_real0: Vec<String> = conns.iter().filter(|c| c.backend == 0).map(|c| c.local.to_string()).collect();
    let traffic = Traffic::start(conns);
    thread::sleep(Duration::from_secs(1));
    traffic.pause();
    site.purge_table();
    site.reload_with(&[1, 2]);
    traffic.resume();
    thread::sleep(Duration::from_secs(2));
    let broken = traffic.finish();
    let mut broken_at = locals_of(&broken);
    broken_at.sort();
    on_real0.sort();
    println!("real removed {family:?}: {} of {CONNS} broken, {} were on it", broken.len(), on_real0.len());
    assert_eq!(broken_at, on_real0, "the removed real's connections break, and only they");
}

#[test]
fn two_changes_inside_the_window_lose_what_moved_at_the_first_unless_it_spoke_between() {
    require_root!();
    let _serial = lb_tests::serial();
    two_changes(Family::V4, true);
    two_changes(Family::V4, false);
}

#[test]
fn a_real_removed_from_the_config_is_no_alternative() {
    require_root!();
    let _serial = lb_tests::serial();
    real_removed(Family::V4);
}

/// The client addresses of broken connections (each report starts with it).
fn locals_of(broken: &[String]) -> Vec<String> {
    broken.iter().map(|b| b.split(' ').next().unwrap_or_default().to_owned()).collect()
}

fn both_modes(scenario: fn(Family, bool), family: Family) {
    let _serial = lb_tests::serial();
    scenario(family, false);
    scenario(family, true);
}

#[test]
fn a_wiped_table_then_a_real_added_breaks_nothing_v4() {
    require_root!();
    both_modes(table_wiped, Family::V4);
}

#[test]
fn a_wiped_table_then_a_real_added_breaks_nothing_v6() {
    require_root!();
    both_modes(table_wiped, Family::V6);
}

#[test]
fn a_blind_handshake_flood_then_a_drain_breaks_nothing_v4() {
    require_root!();
    both_modes(handshake_flood, Family::V4);
}

#[test]
fn a_blind_handshake_flood_then_a_drain_breaks_nothing_v6() {
    require_root!();
    both_modes(handshake_flood, Family::V6);
}

#[test]
fn a_spoofed_syn_then_a_drain_breaks_nothing_v4() {
    require_root!();
    both_modes(spoofed_syn, Family::V4);
}

#[test]
fn a_spoofed_syn_then_a_drain_breaks_nothing_v6() {
    require_root!();
    both_modes(spoofed_syn, Family::V6);
}

#[test]
fn a_fresh_node_then_a_weight_change_breaks_nothing_v4() {
    require_root!();
    both_modes(fresh_node, Family::V4);
}

#[test]
fn a_fresh_node_then_a_weight_change_breaks_nothing_v6() {
    require_root!();
    both_modes(fresh_node, Family::V6);
}
