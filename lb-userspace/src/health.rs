//! Health checks: the rise/fall state machine, the probes (TCP connect, HTTP GET, UDP request /
//! reply) and the prober task that runs one check on its interval and reports only flips.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpStream, UdpSocket},
    sync::{mpsc, watch},
};

use crate::{
    config::{CheckKind, HealthCheck, VipId},
    http,
};

/// Consecutive-result thresholds. A real starts up, so a restart of `lb` never takes traffic
/// away; a real that is really down leaves after `fall` failed checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    rise: u32,
    fall: u32,
    up: bool,
    /// Results in a row that disagree with `up`.
    streak: u32,
}

impl HealthState {
    pub fn new(rise: u32, fall: u32) -> Self {
        Self::starting(true, rise, fall)
    }

    /// Starts in a known state (after a restart: what the maps say).
    pub fn starting(up: bool, rise: u32, fall: u32) -> Self {
        Self { rise, fall, up, streak: 0 }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one check result; returns true when the state flipped.
    pub fn observe(&mut self, ok: bool) -> bool {
        if ok == self.up {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return false;
        }
        self.up = ok;
        self.streak = 0;
        true
    }
}

/// Health checks of reals since start, and how many failed: a canary compares the share
/// that failed while it runs a candidate with the share before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckTally {
    pub checked: u64,
    pub failed: u64,
}

impl CheckTally {
    pub fn record(&mut self, passed: bool) {
        self.checked += 1;
        self.failed += u64::from(!passed);
    }

    /// The checks made after `earlier` was taken.
    pub fn since(self, earlier: CheckTally) -> CheckTally {
        CheckTally { checked: self.checked.saturating_sub(earlier.checked), failed: self.failed.saturating_sub(earlier.failed) }
    }

    /// The share that failed (0 with no checks).
    pub fn failed_share(self) -> f64 {
        if self.checked == 0 {
            0.0
        } else {
            self.failed as f64 / self.checked as f64
        }
    }
}

/// A passed check: how long it took, and whether the backend said it is draining (`lb backend`
/// answers 503 with `"draining":true`: alive, but wants no new flows).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Passed {
    pub latency: Duration,
    pub draining: bool,
    /// The load an `lb backend` reports in its JSON answer (http checks of its /healthz).
    pub load: Option<f64>,
}

/// What an http check's answer says besides passing: draining, and the load.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Answer {
    draining: bool,
    load: Option<f64>,
}

/// Runs one check against `addr`; `Err` says what failed.
pub async fn probe(check: &HealthCheck, addr: IpAddr) -> Result<Passed, String> {
    let started = Instant::now();
    let target = SocketAddr::new(addr, check.port);
    let result = tokio::time::timeout(check.timeout, async {
        match &check.kind {
            CheckKind::None => Ok(Answer::default()),
            CheckKind::Tcp => TcpStream::connect(target).await.map(|_| Answer::default()).map_err(|e| format!("connect {target}: {e}")),
            CheckKind::Http { path, expect_status, body_contains } => {
                http_get(target, path, *expect_status, body_contains.as_deref(), check.timeout).await
            }
            CheckKind::Udp { request, expect } => udp_exchange(target, request, expect).await.map(|()| Answer::default()),
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer from {target} within {:?}", check.timeout)));
    result.map(|a| Passed { latency: started.elapsed(), draining: a.draining, load: a.load })
}

/// What `lb backend` says in a 503 while it drains.
pub const DRAINING_MARK: &str = "\"draining\":true";

/// A draining backend (503 with `DRAINING_MARK`) passes, saying so; a JSON answer with a number
/// `load` (`lb backend`'s) gives the load.
async fn http_get(
    target: SocketAddr,
    path: &str,
    expect_status: u16,
    body_contains: Option<&str>,
    limit: Duration,
) -> Result<Answer, String> {
    // 64 KiB is more than any health page.
    let call =
        http::Call { headers: vec![("user-agent", "anycast-lb".to_owned())], limit, max_body: 64 * 1024, ..http::Call::new("GET", path) };
    let reply = http::request(&http::Endpoint::Tcp(target), call).await.map_err(|e| format!("{target}{path}: {e:#}"))?;
    let load = serde_json::from_str::<serde_json::Value>(&reply.body).ok().and_then(|v| v.get("load")?.as_f64());
    if reply.status == 503 && reply.body.contains(DRAINING_MARK) {
        return Ok(Answer { draining: true, load });
    }
    if reply.status != expect_status {
        return Err(format!("{target}{path}: status {}, want {expect_status}", reply.status));
    }
    match body_contains {
        Some(want) if !reply.body.contains(want) => Err(format!("{target}{path}: body lacks {want:?}")),
        _ => Ok(Answer { draining: false, load }),
    }
}

async fn udp_exchange(target: SocketAddr, request: &str, expect: &str) -> Result<(), String> {
    let bind: SocketAddr = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let socket = UdpSocket::bind(bind).await.map_err(|e| format!("bind: {e}"))?;
    socket.connect(target).await.map_err(|e| format!("connect {target}: {e}"))?;
    socket.send(request.as_bytes()).await.map_err(|e| format!("send to {target}: {e}"))?;
    let mut reply = [0u8; 2048];
    let n = socket.recv(&mut reply).await.map_err(|e| format!("receive from {target}: {e}"))?;
    if String::from_utf8_lossy(&reply[..n]).contains(expect) {
        Ok(())
    } else {
        Err(format!("{target}: reply lacks {expect:?}"))
    }
}

/// What a prober checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// A real of a VIP.
    Real(VipId, IpAddr),
    /// A peer site's LB node, for handoffs.
    Peer(IpAddr),
}

impl Target {
    pub fn addr(&self) -> IpAddr {
        match *self {
            Target::Real(_, addr) | Target::Peer(addr) => addr,
        }
    }
}

/// What a prober tells the daemon.
#[derive(Debug, Clone)]
pub enum HealthEvent {
    /// The target's state flipped; `reason` is the last check's result.
    Flip { target: Target, up: bool, reason: String },
    /// The backend started (or stopped) saying it drains, as many checks in a row as `fall`
    /// (or `rise`) asks.
    Drain { target: Target, draining: bool },
    /// Every check's latency (or failure), for metrics and adapted weights, and the load the
    /// backend reported.
    Checked { target: Target, latency: Option<Duration>, load: Option<f64> },
}

/// Probes in flight to each host at once (`[limits] probes_per_host`): a host that black-holes
/// its probes holds at most this many sockets, and the others keep theirs.
#[derive(Debug)]
pub struct HostBudget {
    per_host: usize,
    hosts: std::sync::Mutex<std::collections::HashMap<IpAddr, std::sync::Arc<tokio::sync::Semaphore>>>,
    /// Checks that found no free slot within their timeout (counted as failed).
    pub starved: std::sync::atomic::AtomicU64,
}

impl HostBudget {
    pub fn new(per_host: usize) -> Self {
        Self { per_host, hosts: Default::default(), starved: Default::default() }
    }

    fn of(&self, host: IpAddr) -> std::sync::Arc<tokio::sync::Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.entry(host).or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(self.per_host))).clone()
    }

    /// Runs `check` against `addr` once a slot of its host is free; a slot not free within the
    /// check's timeout fails the check.
    async fn probe(&self, check: &HealthCheck, addr: IpAddr) -> Result<Passed, String> {
        let host = self.of(addr);
        let Ok(Ok(_slot)) = tokio::time::timeout(check.timeout, host.acquire()).await else {
            self.starved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(format!("{} probes to {addr} in flight for {:?}: it answers none of them", self.per_host, check.timeout));
        };
        probe(check, addr).await
    }
}

/// Where in its interval `target` is checked: spread over the interval by a hash of the target,
/// so that thousands of probers do not fire at the same instant.
pub fn phase(target: &Target, interval: Duration) -> Duration {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    target.hash(&mut h);
    let nanos = interval.as_nanos().max(1) as u64;
    Duration::from_nanos(h.finish() % nanos)
}

/// Checks `target` every interval, first after its `phase`, until `shutdown` changes or the
/// receiver goes away.
pub async fn run_prober(
    target: Target,
    check: HealthCheck,
    start_up: bool,
    budget: std::sync::Arc<HostBudget>,
    events: mpsc::Sender<HealthEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut state = HealthState::starting(start_up, check.rise, check.fall);
    // "Up" here: not draining.
    let mut serving = HealthState::new(check.rise, check.fall);
    let mut next = tokio::time::Instant::now() + phase(&target, check.interval);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        next += check.interval;
        let result = budget.probe(&check, target.addr()).await;
        let passed = result.as_ref().ok();
        let checked = HealthEvent::Checked { target, latency: passed.map(|p| p.latency), load: passed.and_then(|p| p.load) };
        if events.send(checked).await.is_err() {
            return;
        }
        if let Ok(passed) = &result {
            if serving.observe(!passed.draining) && events.send(HealthEvent::Drain { target, draining: !serving.is_up() }).await.is_err() {
                return;
            }
        }
        let ok = result.is_ok();
        if state.observe(ok) {
            let reason = match result {
                Ok(passed) => format!("{} checks passed, last in {:?}", check.rise, passed.latency),
                Err(e) => format!("{} checks failed, last: {e}", check.fall),
            };
            if events.send(HealthEvent::Flip { target, up: state.is_up(), reason }).await.is_err() {
                return;
            }
        }
    }
}

/// One prober task per real of each VIP and per handoff peer, stopped when its check leaves the
/// config or changes.
pub struct Probers {
    running: std::collections::HashMap<Target, (HealthCheck, watch::Sender<bool>)>,
    pub budget: std::sync::Arc<HostBudget>,
}

impl Probers {
    pub fn new(probes_per_host: usize) -> Self {
        Self { running: Default::default(), budget: std::sync::Arc::new(HostBudget::new(probes_per_host)) }
    }

    /// Starts and stops probers to match `config`; a new prober of a real starts in the state
    /// `starts_up` gives (what the maps say after a restart).
    pub fn sync(&mut self, config: &crate::config::Config, starts_up: impl Fn(&VipId, IpAddr) -> bool, events: &mpsc::Sender<HealthEvent>) {
        let mut wanted = std::collections::HashMap::new();
        for vip in &config.vips {
            for real in &vip.reals {
                wanted.insert(Target::Real(vip.id, real.addr), real.health.clone());
            }
        }
        if let Some(h) = &config.handoff {
            for &peer in &h.peers {
                wanted.insert(Target::Peer(peer), h.health.clone());
            }
        }
        self.running.retain(|key, (check, stop)| {
            let keep = wanted.get(key) == Some(check);
            if !keep {
                let _ = stop.send(true);
            }
            keep
        });
        for (key, check) in wanted {
            if self.running.contains_key(&key) || check.kind == CheckKind::None {
                continue;
            }
            let (stop_tx, stop_rx) = watch::channel(false);
            let start_up = match key {
                Target::Real(vip, real) => starts_up(&vip, real),
                Target::Peer(_) => true,
            };
            tokio::spawn(run_prober(key, check.clone(), start_up, self.budget.clone(), events.clone(), stop_rx));
            self.running.insert(key, (check, stop_tx));
        }
    }

    pub fn stop_all(&mut self) {
        for (_, (_, stop)) in self.running.drain() {
            let _ = stop.send(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds results ('+' pass, '-' fail) and returns the state after each ('U' up, 'D' down).
    fn run(rise: u32, fall: u32, results: &str) -> String {
        let mut s = HealthState::new(rise, fall);
        results
            .chars()
            .map(|c| {
                s.observe(c == '+');
                if s.is_up() {
                    'U'
                } else {
                    'D'
                }
            })
            .collect()
    }

    #[test]
    fn starts_up_and_falls_after_fall_failures_in_a_row() {
        assert_eq!(run(2, 3, "--+---"), "UUUUUD");
    }

    #[test]
    fn rises_after_rise_passes_in_a_row() {
        assert_eq!(run(2, 1, "-+-++"), "DDDDU");
    }

    #[test]
    fn flapping_never_reaches_a_threshold() {
        assert_eq!(run(3, 3, "-+-+-+--+"), "UUUUUUUUU");
        assert_eq!(run(3, 1, "-+-+-++-+++"), "DDDDDDDDDDU");
    }

    #[test]
    fn observe_reports_only_flips() {
        let mut s = HealthState::new(1, 2);
        let flips: Vec<bool> = "+--+-".chars().map(|c| s.observe(c == '+')).collect();
        assert_eq!(flips, [false, false, true, true, false]);
    }

    /// Probers are spread over their interval, not fired at one instant.
    #[test]
    fn probers_are_spread_over_the_interval() {
        let interval = Duration::from_millis(1000);
        let vip = |i: u16| VipId { addr: "10.99.0.1".parse().unwrap(), port: i, proto: crate::config::Proto::Tcp };
        let phases: Vec<Duration> = (0..1000).map(|i| phase(&Target::Real(vip(i), "10.1.0.1".parse().unwrap()), interval)).collect();
        assert!(phases.iter().all(|p| *p < interval));
        // Each tenth of the interval holds about a tenth of them.
        for tenth in 0..10u32 {
            let n = phases.iter().filter(|p| p.as_millis() as u32 / 100 == tenth).count();
            assert!((50..=150).contains(&n), "{n} probers in tenth {tenth}");
        }
    }

    /// 200 probers of a host that accepts connections and never answers, for a second, under a
    /// budget of `per_host`: the most sockets the host saw open at once, the starved checks, and
    /// the passed and failed checks of a healthy host's prober meanwhile.
    async fn black_hole(per_host: usize) -> (usize, u64, u32, u32) {
        use std::sync::{
            atomic::{AtomicUsize, Ordering::SeqCst},
            Arc,
        };
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (o, m) = (open.clone(), most.clone());
        let server = tokio::spawn(async move {
            loop {
                let (mut c, _) = silent.accept().await.unwrap();
                let (o, m) = (o.clone(), m.clone());
                m.fetch_max(o.fetch_add(1, SeqCst) + 1, SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    while tokio::io::AsyncReadExt::read(&mut c, &mut buf).await.is_ok_and(|n| n > 0) {}
                    o.fetch_sub(1, SeqCst);
                });
            }
        });
        let healthy = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let hport = healthy.local_addr().unwrap().port();
        let healthy_server = tokio::spawn(async move {
            loop {
                let (mut c, _) = healthy.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    let _ = tokio::io::AsyncReadExt::read(&mut c, &mut buf).await;
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut c, b"HTTP/1.0 200 OK\r\n\r\nok").await;
                });
            }
        });
        let check = |port| HealthCheck {
            kind: CheckKind::Http { path: "/".into(), expect_status: 200, body_contains: None },
            port,
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(150),
            rise: 1,
            fall: 1,
        };
        let budget = Arc::new(HostBudget::new(per_host));
        let (events, mut results) = mpsc::channel(10_000);
        let (stop, stop_rx) = watch::channel(false);
        let vip = |i: u16| VipId { addr: "10.99.0.1".parse().unwrap(), port: i, proto: crate::config::Proto::Tcp };
        for i in 0..200 {
            let target = Target::Real(vip(i), "127.0.0.1".parse().unwrap());
            tokio::spawn(run_prober(target, check(port), true, budget.clone(), events.clone(), stop_rx.clone()));
        }
        let good = Target::Real(vip(0), "127.0.0.2".parse().unwrap());
        tokio::spawn(run_prober(good, check(hport), true, budget.clone(), events.clone(), stop_rx.clone()));
        let (mut passed, mut failed) = (0, 0);
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Some(e)) = tokio::time::timeout_at(until, results.recv()).await {
            match e {
                HealthEvent::Checked { target, latency: Some(_), .. } if target == good => passed += 1,
                HealthEvent::Checked { target, latency: None, .. } if target == good => failed += 1,
                _ => {}
            }
        }
        let _ = stop.send(true);
        server.abort();
        healthy_server.abort();
        (most.load(SeqCst), budget.starved.load(std::sync::atomic::Ordering::Relaxed), passed, failed)
    }

    #[tokio::test]
    async fn a_black_holing_host_holds_only_its_budget_of_sockets() {
        let (most, starved, passed, failed) = black_hole(8).await;
        println!("budget 8: most sockets open at the silent host {most}, starved checks {starved}; healthy host {passed} passed");
        // The host counts a socket until it reads the close: a few more than 8 may overlap.
        assert!(most <= 16, "{most} sockets");
        assert!(starved > 100, "{starved}");
        assert!(passed >= 4 && failed == 0, "{passed} passed, {failed} failed");
        // Without a budget that bites, every prober holds a socket for its whole timeout.
        let (most, starved, ..) = black_hole(10_000).await;
        println!("budget 10000: most sockets open {most}, starved {starved}");
        assert!(most >= 150 && starved == 0, "{most} sockets, {starved} starved");
    }

    #[tokio::test]
    async fn probes_pass_and_fail_against_local_servers() {
        use tokio::{
            io::{AsyncReadExt as _, AsyncWriteExt as _},
            net::TcpListener,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for reply in
                ["200 OK\r\n\r\nall ok", "503 Busy\r\n\r\nall ok", "503 Service Unavailable\r\n\r\n{\"draining\":true,\"load\":0.1}"]
            {
                let (mut c, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = c.read(&mut buf).await;
                let _ = c.write_all(format!("HTTP/1.0 {reply}").as_bytes()).await;
            }
        });
        let http = |status| HealthCheck {
            kind: CheckKind::Http { path: "/".into(), expect_status: status, body_contains: Some("ok".into()) },
            port,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 1,
        };
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!probe(&http(200), lo).await.unwrap().draining);
        let err = probe(&http(200), lo).await.unwrap_err();
        assert!(err.contains("status 503"), "{err}");
        assert!(probe(&http(200), lo).await.unwrap().draining, "a 503 that says draining: alive, draining");
        let tcp_closed = HealthCheck { kind: CheckKind::Tcp, ..http(200) }; // listener gone
        assert!(probe(&tcp_closed, lo).await.is_err());

        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let uport = udp.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let (_, from) = udp.recv_from(&mut buf).await.unwrap();
            udp.send_to(b"pong!", from).await.unwrap();
        });
        let check = HealthCheck { kind: CheckKind::Udp { request: "ping".into(), expect: "pong".into() }, port: uport, ..http(200) };
        assert!(probe(&check, lo).await.is_ok());
        // The responder is gone: refused (ICMP port unreachable) or no answer in time.
        let timeout = HealthCheck { timeout: Duration::from_millis(50), ..check };
        let err = probe(&timeout, lo).await.unwrap_err();
        assert!(err.contains("refused") || err.contains("no answer"), "{err}");
    }
}
