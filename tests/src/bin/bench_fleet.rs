//! `cargo xtask bench-fleet`: how long a fleet revision takes to reach every node. One etcd on
//! loopback; 200 nodes simulated in this process, each the real control plane (`Daemon`, its
//! follower and its reporter, each node with its own etcd connection, watch and lease) over a
//! data plane held in memory (`dataplane::Memory`). For 64 and 4,096 VIPs (2 sites, 4 reals
//! each per site, ring size 251 so that 200 nodes' rings fit in memory): the time from the
//! write of a revision to each node running it (the node's own applied revision), and the
//! store's size.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_userspace::{
    config::{self, InterfaceCheck},
    daemon::{fleet::start_fleet, Daemon, Outputs},
    dataplane::Memory,
    fleet::{store, store::StoreAccess},
    journal::Journal,
    reconcile::Reconciler,
};
use tokio::sync::{mpsc, watch};

const NODES: usize = 200;
const SITES: usize = 2;
const REALS_PER_SITE: usize = 4;
const RING_SIZE: u32 = 251;
const ENDPOINT: &str = "http://127.0.0.1:23790";
const PREFIX: &str = "/bench";

/// A fleet document of `vips` VIPs; `weight` for every real (changed to make a new revision).
fn document(vips: usize, weight: u32) -> String {
    let mut doc: String = (0..SITES).map(|s| format!("[[site]]\nname = \"s{s}\"\n")).collect();
    for v in 0..vips {
        let addr = format!("10.{}.{}.{}", 100 + v / 65536, (v / 256) % 256, v % 256);
        doc += &format!(
            "[[vip]]\nname = \"v{v}\"\naddress = \"{addr}\"\nport = 80\nprotocol = \"tcp\"\nring_size = {RING_SIZE}\n[vip.reals]\n"
        );
        for s in 0..SITES {
            let reals: Vec<String> = (0..REALS_PER_SITE)
                .map(|r| format!("{{ address = \"172.{}.{}.{}\", weight = {weight} }}", 16 + s, v % 250, r + 1))
                .collect();
            doc += &format!("s{s} = [{}]\n", reals.join(", "));
        }
    }
    doc
}

/// One simulated node: its daemon's loop, on this thread's local task set, with the fleet's
/// tasks as `lb run` starts them. Sends (node, revision, when it ran, how long the loop took to
/// install it) at each new revision.
async fn node(i: usize, state_dir: PathBuf, applied: mpsc::UnboundedSender<(usize, i64, Instant, Duration)>) {
    let text = format!(
        "instance = \"n{i}\"\n[forwarding]\nnext_hop_mac = \"02:00:00:00:00:01\"\n[health]\nkind = \"none\"\n\
         [fleet]\nendpoints = [\"{ENDPOINT}\"]\nprefix = \"{PREFIX}\"\nsite = \"s{}\"\nnode = \"n{i}\"\nstate_file = \"{}\"\nreport_ttl_s = 30\n",
        i % SITES,
        state_dir.join(format!("n{i}.fleet")).display()
    );
    let file = config::parse_raw(&text).expect("node file");
    let config = file.validate(InterfaceCheck::Skip).expect("valid node file");
    let node = config.fleet.clone().expect("[fleet]");
    let mut rec = Reconciler::new(Memory::with_pool(config.ring_slots));
    rec.apply(&config, [2, 0, 0, 0, 0, 1]).expect("programmed");
    let (announce, _announce_rx) = watch::channel(Vec::new());
    let (journal, _journal_rx) = mpsc::unbounded_channel();
    let (health, _health_rx) = mpsc::channel(8);
    let (next_hop, _next_hop_rx) = mpsc::channel(8);
    let (reload, _reload_rx) = mpsc::channel(8);
    let (graceful_over, _graceful_rx) = mpsc::channel(8);
    let out = Outputs { announce, journal, health, next_hop, reload, graceful_over };
    let mut daemon = Daemon::start(rec, state_dir.join("none.toml"), file, config, Journal::default(), InterfaceCheck::Skip, out);
    let (events_tx, mut events) = mpsc::channel(16);
    start_fleet(&mut daemon, node, None, events_tx, state_dir.join("no-admin.sock")).expect("fleet tasks");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = None;
    loop {
        let took = tokio::select! {
            Some(event) = events.recv() => {
                let started = Instant::now();
                daemon.fleet_event(event);
                started.elapsed()
            }
            _ = tick.tick() => {
                daemon.fleet_tick();
                Duration::ZERO
            }
        };
        let now = daemon.fleet_revision();
        if now != last {
            last = now;
            let _ = applied.send((i, now.unwrap_or(0), Instant::now(), took));
        }
    }
}

/// etcd, killed when the bench ends, however it ends.
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_etcd(dir: &std::path::Path) -> Etcd {
    let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log");
    let child = Command::new("etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", ENDPOINT, "--advertise-client-urls", ENDPOINT])
        .args(["--listen-peer-urls", "http://127.0.0.1:23800", "--initial-advertise-peer-urls", "http://127.0.0.1:23800"])
        .args(["--initial-cluster", "bench=http://127.0.0.1:23800", "--max-request-bytes", "8388608"])
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start etcd (cargo xtask setup installs it)");
    Etcd(child)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let dir = std::env::temp_dir().join(format!("lb-bench-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // Each node keeps its last good revision on disk as `lb run` does; on tmpfs, so that 200
    // nodes' fsyncs on one disk are not what is measured.
    let state_dir = PathBuf::from(format!("/dev/shm/lb-bench-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir).expect("state dir");
    let _etcd = start_etcd(&dir);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    let access = StoreAccess { endpoints: vec![ENDPOINT.into()], prefix: PREFIX.into(), login: None, tls: None };
    println!("bench-fleet: {NODES} nodes in one process (the real control plane over an in-memory data plane), one etcd on loopback, {SITES} sites, {REALS_PER_SITE} reals per site per VIP, ring size {RING_SIZE}");
    println!("| VIPs | document bytes | etcd db bytes | nodes | write -> applied: median | p99 | last node | one node's apply (loop), median |\n|---:|---:|---:|---:|---:|---:|---:|---:|");
    local.block_on(&runtime, async {
        let mut client = {
            let started = Instant::now();
            loop {
                match access.connect().await {
                    Ok(c) => break c,
                    Err(e) if started.elapsed() > Duration::from_secs(20) => panic!("etcd did not start: {e:#}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        };
        let (applied_tx, mut applied_rx) = mpsc::unbounded_channel();
        let mut revision = 0;
        for (round, vips) in [64usize, 4096].into_iter().enumerate() {
            // Each round: first the document at this size (the nodes take it, unmeasured), then
            // one weight changed everywhere, measured.
            for (step, weight) in [(0, 1), (1, 2)] {
                let text = document(vips, weight + round as u32 * 10);
                let written_at = Instant::now();
                revision = store::write_document(&mut client, &access, &text, revision).await.expect("write");
                if round == 0 && step == 0 {
                    for i in 0..NODES {
                        tokio::task::spawn_local(node(i, state_dir.clone(), applied_tx.clone()));
                    }
                }
                let mut at: HashMap<usize, (Instant, Duration)> = HashMap::new();
                let limit = Instant::now() + Duration::from_secs(300);
                while at.len() < NODES {
                    let left = limit.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, applied_rx.recv()).await {
                        Ok(Some((i, r, t, apply))) if r == revision => {
                            at.insert(i, (t, apply));
                        }
                        Ok(Some(_)) => {}
                        _ => panic!("only {} of {NODES} nodes ran revision {revision} within 300 s", at.len()),
                    }
                }
                if step == 1 {
                    let mut took: Vec<Duration> = at.values().map(|(t, _)| t.duration_since(written_at)).collect();
                    took.sort();
                    let mut apply: Vec<Duration> = at.values().map(|(_, a)| *a).collect();
                    apply.sort();
                    let status = client.status().await.expect("etcd status");
                    println!(
                        "| {vips} | {} | {} | {NODES} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
                        text.len(),
                        status.db_size(),
                        percentile(&took, 0.5).as_secs_f64() * 1e3,
                        percentile(&took, 0.99).as_secs_f64() * 1e3,
                        took.last().unwrap().as_secs_f64() * 1e3,
                        percentile(&apply, 0.5).as_secs_f64() * 1e3
                    );
                }
            }
        }
        let reports = store::node_reports(&mut client, &access).await.expect("reports");
        println!("node reports in the store: {} (each node writes its own under a lease)", reports.len());
        assert_eq!(reports.len(), NODES, "every node reports");
    });
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&state_dir);
}
