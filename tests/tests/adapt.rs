//! Weights that follow the backends, end to end: the real `lb run` over three backends running
//! `lb backend`, HTTP servers on each. One backend slows down (50 ms added to its answers and
//! checks) or reports a high load; its share of new connections must fall to at most a third of
//! each other backend's, with no failed request, and come back when it recovers.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use lb_tests::{
    lbd::{metric, LbDaemon},
    netns::{enter_path, NetNs},
    require_root,
    topology::{backend_addr, Net, VIP},
};

const PORT: u16 = 8080;
const BACKENDS: usize = 3;
/// New connections per measurement.
const REQUESTS: usize = 300;
/// How long the share may take to fall (or come back), from the change.
const REACT_WITHIN: Duration = Duration::from_secs(20);
/// Ring rebuilds adaptation may cause for one slow-down and recovery: the way down to the floor
/// and back is four steps of 25% each way (4 + 4), and two more for a step the smoothing splits.
const MAX_REBUILDS: f64 = 10.0;

/// HTTP servers on port PORT of each backend (the VIP and the real address: the checks reach
/// them), answering with their name after `delay_ms`.
struct Apps {
    delays: Vec<Arc<AtomicU64>>,
    stop: Arc<AtomicBool>,
}

impl Apps {
    fn start(net: &Net) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let delays: Vec<Arc<AtomicU64>> = (0..BACKENDS).map(|_| Arc::new(AtomicU64::new(0))).collect();
        for (i, ns) in net.backends.iter().enumerate() {
            let (path, delay, stop) = (format!("/run/netns/{}", ns.name), delays[i].clone(), stop.clone());
            let (ready_tx, ready) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                enter_path(&path);
                let listener = TcpListener::bind(("0.0.0.0", PORT)).expect("bind the app");
                ready_tx.send(()).unwrap();
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let delay = delay.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 1024];
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                        let _ = conn.read(&mut buf);
                        std::thread::sleep(Duration::from_millis(delay.load(Ordering::Relaxed)));
                        let body = format!("b{i}");
                        let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    });
                }
            });
            ready.recv_timeout(Duration::from_secs(5)).expect("app listening");
        }
        Self { delays, stop }
    }
}

impl Drop for Apps {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `REQUESTS` new connections from the client: how many each backend answered, and how many
/// failed.
fn requests(client: &NetNs) -> ([usize; BACKENDS], usize) {
    let path = format!("/run/netns/{}", client.name);
    std::thread::spawn(move || {
        enter_path(&path);
        let mut counts = [0; BACKENDS];
        let mut failed = 0;
        let to = SocketAddr::new(VIP.parse().unwrap(), PORT);
        for _ in 0..REQUESTS {
            let answer = (|| -> std::io::Result<String> {
                let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut reply = String::new();
                c.read_to_string(&mut reply)?;
                Ok(reply)
            })();
            match answer.ok().and_then(|r| r.rsplit("\r\n\r\n").next()?.strip_prefix('b')?.parse::<usize>().ok()) {
                Some(i) if i < BACKENDS => counts[i] += 1,
                _ => failed += 1,
            }
        }
        (counts, failed)
    })
    .join()
    .expect("client thread")
}

fn lb_config(check: &str, adapt: &str) -> String {
    let mut c = format!(
        "[[interface]]\nname = \"lb0\"\n[forwarding]\nnext_hop_mac = \"02:00:00:00:00:03\"\n\
         [health]\ninterval_ms = 200\ntimeout_ms = 200\nrise = 2\nfall = 3\n{check}\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\nring_size = 1009\n\
         [vip.adapt]\n{adapt}\nfloor = 0.1\ninterval_ms = 1000\n"
    );
    for i in 0..BACKENDS {
        c += &format!("[[vip.real]]\naddress = \"{}\"\n", backend_addr(i));
    }
    c
}

/// Waits until backend 0's share in `lb status` satisfies `done`; returns how long it took.
fn wait_share(lb: &LbDaemon, done: impl Fn(u32) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let share = lb.status()[0].reals[0].adapt_percent.unwrap_or(100);
        if done(share) {
            return started.elapsed();
        }
        assert!(started.elapsed() < REACT_WITHIN, "backend 0's share is {share}% after {REACT_WITHIN:?}: {:?}", lb.status());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The three phases; `slow` and `recover` change backend 0.
fn phases(label: &str, net: &Net, lb: &LbDaemon, slow: impl Fn(), recover: impl Fn()) {
    let started = Instant::now();
    let rebuilds = || metric(&lb.metrics(), "lb_adapt_rebuilds_total");
    let (before, failed) = requests(&net.client);
    assert_eq!(failed, 0, "{label}: failed requests before");
    assert_eq!(rebuilds(), 0.0, "{label}: steady backends cause no rebuild");
    slow();
    let react = wait_share(lb, |share| share <= 20);
    let (during, failed) = requests(&net.client);
    assert_eq!(failed, 0, "{label}: failed requests while slowed");
    assert!(during[0] * 3 <= during[1] && during[0] * 3 <= during[2], "{label}: {during:?}");
    recover();
    let back = wait_share(lb, |share| share == 100);
    let settled = rebuilds();
    let (after, failed) = requests(&net.client);
    assert_eq!(failed, 0, "{label}: failed requests after");
    assert_eq!(rebuilds(), settled, "{label}: no rebuild once recovered");
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let per_minute = rebuilds() / minutes;
    println!(
        "{label}: shares of {REQUESTS} new connections before {before:?}, during {during:?}, after {after:?}; \
         share fell to 20% or less in {react:.1?}, back to 100% in {back:.1?}; {} adaptation rebuilds in {:.1} s ({per_minute:.1} a minute)",
        rebuilds(),
        minutes * 60.0
    );
    assert!(rebuilds() <= MAX_REBUILDS, "{label}: {} rebuilds", rebuilds());
    for i in 0..BACKENDS {
        assert!(after[i] * 2 >= REQUESTS / BACKENDS, "{label}: back to the configured shares: {after:?}");
    }
}

#[test]
fn a_slow_backend_gets_fewer_new_connections_until_it_recovers() {
    require_root!();
    let net = Net::new(BACKENDS);
    let apps = Apps::start(&net);
    let lb = LbDaemon::start(&net.lb, &lb_config("kind = \"http\"\npath = \"/\"", "signal = \"latency\""));
    wait_share(&lb, |_| lb.status()[0].healthy() == BACKENDS as u32);
    let delay = apps.delays[0].clone();
    phases("latency", &net, &lb, || delay.store(50, Ordering::Relaxed), || delay.store(0, Ordering::Relaxed));
}

#[test]
fn a_loaded_backend_gets_fewer_new_connections_until_its_load_falls() {
    require_root!();
    let mut net = Net::new(BACKENDS);
    let _apps = Apps::start(&net);
    let load_file = std::env::temp_dir().join(format!("adapt-load-{}", std::process::id()));
    std::fs::write(&load_file, "0.2").unwrap();
    for (i, b) in net.decaps.iter_mut().enumerate() {
        let file = if i == 0 { load_file.clone() } else { std::env::temp_dir().join(format!("adapt-load-{}-{i}", std::process::id())) };
        if i != 0 {
            std::fs::write(&file, "0.2").unwrap();
        }
        b.with_load_file(&file);
    }
    let lb = LbDaemon::start(&net.lb, &lb_config("kind = \"http\"\nport = 9180\npath = \"/healthz\"", "signal = \"load\"\ntarget = 0.6"));
    wait_share(&lb, |_| lb.status()[0].healthy() == BACKENDS as u32);
    let file = load_file.clone();
    phases("load", &net, &lb, || std::fs::write(&file, "0.95").unwrap(), || std::fs::write(&file, "0.2").unwrap());
}
