//! The backend's HTTP endpoint: `/healthz` (503 while draining), `/load`, `/metrics` (the
//! decapsulator's counters) and `/quic-lb` (what QUIC servers here need to issue routable
//! connection IDs), and the load sampling behind them.

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{extract::State, http::StatusCode, Json};
use lb_common::stats::DecapCounter;
use serde::{Deserialize, Serialize};

use super::config::LoadSource;
use crate::dataplane::Dataplane;

#[derive(Clone)]
pub(super) struct Endpoint {
    pub(super) dp: Arc<Dataplane>,
    pub(super) drain_file: PathBuf,
    pub(super) load: Arc<Mutex<Option<f64>>>,
    pub(super) vips: Vec<IpAddr>,
    pub(super) listener: Arc<crate::serve::ListenerCounters>,
    pub(super) quic_lb: Arc<Vec<QuicLbOffer>>,
}

/// One VIP's entry in `/quic-lb` (docs/quic-lb.md): the balancer's QUIC-LB parameters and this
/// host's server IDs. A server writes one of them into every connection ID it issues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuicLbOffer {
    pub vip: std::net::SocketAddr,
    pub config_id: u8,
    pub server_id_len: u8,
    pub nonce_len: u8,
    pub cid_len: u8,
    /// Hex.
    pub server_ids: Vec<String>,
    /// The IDs are encrypted: the server needs the key, from `key_file` or (with `serve_key`)
    /// `key`.
    pub encrypted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Hex; only with `serve_key = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl QuicLbOffer {
    /// `[[backend.quic_lb]]` with its key (read at start) as `/quic-lb` offers it.
    pub fn new(q: &super::config::BackendQuicLb) -> Self {
        let p = &q.params;
        Self {
            vip: q.vip,
            config_id: p.config_id,
            server_id_len: p.server_id_len,
            nonce_len: p.nonce_len,
            cid_len: p.cid_len,
            server_ids: q.server_ids.iter().map(|s| crate::quic_lb::hex(s)).collect(),
            encrypted: p.key_file.is_some(),
            key_file: p.key_file.clone(),
            key: p.key.filter(|_| q.serve_key).map(|k| crate::quic_lb::hex(&k)),
        }
    }

    /// The codec a server issues connection IDs with; `key`: the key when encrypted (from the
    /// offer or the key file).
    pub fn codec(&self, key: Option<[u8; 16]>) -> crate::quic_lb::QuicLbConfig {
        crate::quic_lb::QuicLbConfig {
            config_id: self.config_id,
            server_id_len: self.server_id_len,
            nonce_len: self.nonce_len,
            cid_len: self.cid_len,
            key,
        }
    }
}

pub(super) async fn quic_lb(State(e): State<Endpoint>) -> Json<Vec<QuicLbOffer>> {
    Json(e.quic_lb.as_ref().clone())
}

/// What `/healthz` and `/load` answer (documented in docs/operations.md): whether the node
/// drains, and its load as a share 0..1 (`null` until the first sample).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub draining: bool,
    pub load: Option<f64>,
    pub source: String,
}

impl Endpoint {
    fn report(&self) -> LoadReport {
        let source = "see [backend.health] load".to_owned();
        LoadReport { draining: self.drain_file.exists(), load: *self.load.lock().expect("not poisoned"), source }
    }
}

pub(super) async fn healthz(State(e): State<Endpoint>) -> (StatusCode, Json<LoadReport>) {
    let report = e.report();
    (if report.draining { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }, Json(report))
}

pub(super) async fn load_report(State(e): State<Endpoint>) -> Json<LoadReport> {
    Json(e.report())
}

pub(super) async fn metrics(State(e): State<Endpoint>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "# HELP lb_backend_packets_total Packets seen by the decapsulator, by what it did");
    let _ = writeln!(out, "# TYPE lb_backend_packets_total counter");
    for c in DecapCounter::ALL {
        let _ = writeln!(out, "lb_backend_packets_total{{what=\"{}\"}} {}", c.name(), e.dp.decap_counter(c).unwrap_or(0));
    }
    let report = e.report();
    let _ = writeln!(out, "# HELP lb_backend_draining 1 while the drain file exists (/healthz answers 503)");
    let _ = writeln!(out, "# TYPE lb_backend_draining gauge");
    let _ = writeln!(out, "lb_backend_draining {}", u8::from(report.draining));
    if let Some(load) = report.load {
        let _ = writeln!(out, "# HELP lb_backend_load Load share 0..1 as /load reports it");
        let _ = writeln!(out, "# TYPE lb_backend_load gauge");
        let _ = writeln!(out, "lb_backend_load {load}");
    }
    let _ = writeln!(out, "# HELP lb_backend_vips VIPs held on lo");
    let _ = writeln!(out, "# TYPE lb_backend_vips gauge");
    let _ = writeln!(out, "lb_backend_vips {}", e.vips.len());
    crate::metrics::listener_families(&mut out, "backend_", &[("endpoint", e.listener.clone())]);
    out.push_str("# EOF\n");
    out
}

/// CPU busy share between two /proc/stat readings of the "cpu" line: (busy, total) jiffies.
pub fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let total: u64 = v.iter().take(8).sum(); // user nice system idle iowait irq softirq steal
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// A load number from a file or a command's output: the first word, a share 0..1.
pub fn parse_load(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse::<f64>().ok().filter(|x| (0.0..=1.0).contains(x))
}

pub(super) async fn sample_load(source: LoadSource, interval: Duration, into: Arc<Mutex<Option<f64>>>) {
    let mut last: Option<(u64, u64)> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let value = match &source {
            LoadSource::Cpu => {
                let now = tokio::fs::read_to_string("/proc/stat").await.ok().as_deref().and_then(cpu_times);
                let share = match (last, now) {
                    (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => Some((b1 - b0) as f64 / (t1 - t0) as f64),
                    _ => None,
                };
                last = now;
                share
            }
            LoadSource::File(path) => tokio::fs::read_to_string(path).await.ok().as_deref().and_then(parse_load),
            LoadSource::Command(cmd) => load_from_command(cmd, interval).await,
        };
        if value.is_some() || !matches!(source, LoadSource::Cpu) {
            *into.lock().expect("not poisoned") = value;
        }
    }
}

/// Runs `sh -c cmd` in its own process group and reads a load number from its output. A
/// command still running after `limit` is killed with everything it started, so a stuck
/// command leaves nothing behind, interval after interval.
async fn load_from_command(cmd: &str, limit: Duration) -> Option<f64> {
    let child = tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let group = child.id();
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.ok().and_then(|o| parse_load(&String::from_utf8_lossy(&o.stdout))),
        Err(_) => {
            if let Some(group) = group {
                // SAFETY: a plain syscall; the group is the one the command was started in
                // (its id is the shell's pid), which kill_on_drop alone would leave running.
                unsafe { libc::kill(-(group as i32), libc::SIGKILL) };
            }
            tracing::warn!(command = cmd, limit_ms = limit.as_millis() as u64, "the load command did not finish in time: killed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Processes whose command line contains `marker`.
    fn running(marker: &str) -> usize {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|c| String::from_utf8_lossy(c).contains(marker))
            .count()
    }

    #[tokio::test]
    async fn a_stuck_load_command_is_killed_with_its_children() {
        assert_eq!(load_from_command("echo 0.25", Duration::from_secs(5)).await, Some(0.25));
        // A shell that waits on a child: both must go when the limit passes.
        let marker = format!("{}.{}", 31, std::process::id());
        let started = std::time::Instant::now();
        assert_eq!(load_from_command(&format!("sleep {marker}; echo 0.5"), Duration::from_millis(300)).await, None);
        assert!(started.elapsed() < Duration::from_secs(2));
        let mut left = running(&marker);
        for _ in 0..20 {
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            left = running(&marker);
        }
        assert_eq!(left, 0, "processes left behind");
    }

    #[test]
    fn cpu_share_and_load_numbers() {
        let a = cpu_times("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        let b = cpu_times("cpu  150 0 150 750 150 0 0 0 0 0\n").unwrap();
        assert_eq!((a, b), ((200, 1000), (300, 1200)));
        assert_eq!((b.0 - a.0) as f64 / (b.1 - a.1) as f64, 0.5);
        assert_eq!(parse_load("0.25\n"), Some(0.25));
        assert_eq!(parse_load("1.5"), None, "a share is 0..1");
        assert_eq!(parse_load("busy"), None);
    }
}
