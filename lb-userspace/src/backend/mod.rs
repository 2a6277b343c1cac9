//! `lb backend`: the real host's side. Attaches `lb_decap` (pinned, like the balancer, so a
//! restart never stops decapsulation), programs the addresses it strips tunnels for, holds the
//! VIPs on `lo`, sets what direct server return needs, and serves a health and load endpoint.
//! Every host change is recorded in a state file before it is made, so `stop` puts back exactly
//! what `run` changed, and a second `run` changes nothing.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use futures_util::TryStreamExt as _;
use lb_common::{programs, stats::DecapCounter};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::{
    config::{self, ConfigError, Interface, InterfaceCheck, Problems, RawInterface},
    dataplane::{Dataplane, LoadOptions},
};

/// A backend's config file: `instance` and a `[backend]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendFile {
    /// Names the bpffs folder, the state file and the default drain file (default "backend").
    #[serde(default = "default_instance")]
    pub instance: String,
    pub backend: RawBackend,
}

fn default_instance() -> String {
    "backend".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// NICs the tunnels arrive on.
    #[serde(rename = "interface")]
    pub interfaces: Vec<RawInterface>,
    /// This host's addresses the balancer tunnels to (the reals' addresses).
    pub addresses: Vec<String>,
    /// VIPs this host serves: held on `lo`.
    pub vips: Vec<String>,
    /// Reverse-path filtering on the tunnel NICs: "loose" (default) or "off" (the inner source
    /// is the client, which routes back some other way than the NIC only when routing is
    /// asymmetric).
    pub rp_filter: Option<String>,
    #[serde(default)]
    pub health: RawBackendHealth,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendHealth {
    /// Health, load and metrics endpoint (default 0.0.0.0:9180).
    pub listen: Option<String>,
    /// While this file exists the node is draining: /healthz answers 503 (default
    /// /var/lib/anycast-lb/<instance>.drain).
    pub drain_file: Option<String>,
    /// Where the load comes from: "cpu" (default: busy share of all CPUs over the interval),
    /// "file:PATH" (a number 0..1 the operator writes), or "command:CMD" (run with sh -c; its
    /// output is the number).
    pub load: Option<String>,
    /// How often the load is sampled (default 1000).
    pub interval_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LoadSource {
    Cpu,
    File(PathBuf),
    Command(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub instance: String,
    pub interfaces: Vec<Interface>,
    pub addresses: Vec<IpAddr>,
    pub vips: Vec<IpAddr>,
    /// The value for `rp_filter` on the tunnel NICs (2 loose, 0 off).
    pub rp_filter: u8,
    pub listen: SocketAddr,
    pub drain_file: PathBuf,
    pub load: LoadSource,
    pub interval: Duration,
}

/// The health, load and metrics port when the config names none.
pub const DEFAULT_PORT: u16 = 9180;

impl RawBackendFile {
    pub fn validate(&self, check: InterfaceCheck) -> Result<BackendConfig, ConfigError> {
        let mut p = Problems::default();
        let b = &self.backend;
        config::validate_instance(&self.instance, &mut p);
        let interfaces = config::validate_interfaces("backend.interface", &b.interfaces, check, &mut p);
        if b.interfaces.is_empty() {
            p.add("backend.interface", "name at least one NIC the tunnels arrive on");
        }
        let mut addrs = |field: &str, list: &[String]| -> Vec<IpAddr> {
            if list.is_empty() {
                p.add(field, "empty");
            }
            list.iter()
                .enumerate()
                .filter_map(|(i, a)| a.parse().map_err(|_| p.add(format!("{field}[{i}]"), format!("{a:?} is not an IP address"))).ok())
                .collect()
        };
        let addresses = addrs("backend.addresses", &b.addresses);
        let vips = addrs("backend.vips", &b.vips);
        let rp_filter = match b.rp_filter.as_deref().unwrap_or("loose") {
            "loose" => 2,
            "off" => 0,
            other => {
                p.add("backend.rp_filter", format!("{other:?} is not \"loose\" or \"off\""));
                2
            }
        };
        let listen_text = b.health.listen.clone().unwrap_or_else(|| format!("0.0.0.0:{DEFAULT_PORT}"));
        let listen = listen_text.parse().unwrap_or_else(|_| {
            p.add("backend.health.listen", format!("{listen_text:?} is not an address:port"));
            SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))
        });
        let load = match b.health.load.as_deref().unwrap_or("cpu") {
            "cpu" => LoadSource::Cpu,
            other => match other.split_once(':') {
                Some(("file", path)) if !path.is_empty() => LoadSource::File(path.into()),
                Some(("command", cmd)) if !cmd.is_empty() => LoadSource::Command(cmd.into()),
                _ => {
                    p.add("backend.health.load", format!("{other:?} is not \"cpu\", \"file:PATH\" or \"command:CMD\""));
                    LoadSource::Cpu
                }
            },
        };
        let interval_ms = b.health.interval_ms.unwrap_or(1000);
        if !(100..=60_000).contains(&interval_ms) {
            p.add("backend.health.interval_ms", format!("{interval_ms} is outside 100 ..= 60000"));
        }
        let drain_file =
            b.health.drain_file.clone().map_or_else(|| crate::journal::state_dir().join(format!("{}.drain", self.instance)), PathBuf::from);
        p.or(|| BackendConfig {
            instance: self.instance.clone(),
            interfaces,
            addresses,
            vips,
            rp_filter,
            listen,
            drain_file,
            load,
            interval: Duration::from_millis(interval_ms),
        })
    }
}

pub fn parse(text: &str, check: InterfaceCheck) -> Result<BackendConfig, ConfigError> {
    let raw: RawBackendFile =
        toml::from_str(text).map_err(|e| ConfigError::Syntax { path: "backend config".into(), message: e.to_string() })?;
    raw.validate(check)
}

pub fn load(path: &Path, check: InterfaceCheck) -> Result<BackendConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    parse(&text, check).map_err(|e| match e {
        ConfigError::Syntax { message, .. } => ConfigError::Syntax { path: path.display().to_string(), message },
        other => other,
    })
}

/// Whether a config file is a backend's (it has a `[backend]` section).
pub fn is_backend_config(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("backend"))
}

/// Where an instance's program and maps are pinned.
pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new("/sys/fs/bpf").join(format!("anycast-lb-backend-{instance}"))
}

/// What `run` changed on the host, so that `stop` puts it back: kept in
/// `<state dir>/<instance>.backend.json`, written before each change.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostChanges {
    /// sysctl key -> the value before lb changed it.
    pub sysctls: BTreeMap<String, String>,
    /// VIPs lb added to `lo` (ones that were there already are not lb's to remove).
    pub vips_added: Vec<IpAddr>,
}

fn changes_path(instance: &str) -> PathBuf {
    crate::journal::state_dir().join(format!("{instance}.backend.json"))
}

fn load_changes(instance: &str) -> Result<HostChanges> {
    let path = changes_path(instance);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).with_context(|| format!("{} is not valid; move it away to start over", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HostChanges::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_changes(instance: &str, changes: &HostChanges) -> Result<()> {
    let path = changes_path(instance);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(changes)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn read_sysctl(key: &str) -> Result<String> {
    Ok(std::fs::read_to_string(sysctl_path(key)).with_context(|| format!("reading sysctl {key}"))?.trim().to_owned())
}

fn write_sysctl(key: &str, value: &str) -> Result<()> {
    std::fs::write(sysctl_path(key), value).with_context(|| format!("setting sysctl {key} = {value}"))
}

/// The sysctls direct server return needs: the VIPs on `lo` must not be answered for on the
/// NICs (ARP), and the tunnel NICs must accept the clients' sources.
fn wanted_sysctls(config: &BackendConfig) -> Vec<(String, String)> {
    let mut list = Vec::new();
    if config.vips.iter().any(IpAddr::is_ipv4) {
        list.push(("net.ipv4.conf.all.arp_ignore".to_owned(), "1".to_owned()));
        list.push(("net.ipv4.conf.all.arp_announce".to_owned(), "2".to_owned()));
    }
    // The effective rp_filter of a NIC is the larger of `all` and its own.
    let rp = config.rp_filter.to_string();
    list.push(("net.ipv4.conf.all.rp_filter".to_owned(), rp.clone()));
    for iface in &config.interfaces {
        list.push((format!("net.ipv4.conf.{}.rp_filter", iface.name), rp.clone()));
    }
    list
}

/// Sets each wanted sysctl that differs, recording its first value; returns what changed.
fn apply_sysctls(config: &BackendConfig, changes: &mut HostChanges) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    for (key, value) in wanted_sysctls(config) {
        let now = read_sysctl(&key)?;
        if now == value {
            continue;
        }
        changes.sysctls.entry(key.clone()).or_insert(now.clone());
        save_changes(&config.instance, changes)?;
        write_sysctl(&key, &value)?;
        info!(%key, from = %now, to = %value, "sysctl set");
        changed.push(key);
    }
    Ok(changed)
}

async fn netlink() -> Result<rtnetlink::Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening netlink")?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn lo_index(handle: &rtnetlink::Handle) -> Result<u32> {
    let mut links = handle.link().get().match_name("lo".into()).execute();
    let link = links.try_next().await.context("looking up lo")?.context("no lo")?;
    Ok(link.header.index)
}

/// Addresses on `lo` now.
async fn lo_addresses(handle: &rtnetlink::Handle, index: u32) -> Result<Vec<IpAddr>> {
    let mut found = Vec::new();
    let mut addrs = handle.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = addrs.try_next().await.context("listing lo's addresses")? {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(a) = attr {
                found.push(*a);
            }
        }
    }
    Ok(found)
}

/// Adds the VIPs that are not on `lo` yet; returns what it added.
async fn hold_vips(config: &BackendConfig, changes: &mut HostChanges) -> Result<Vec<IpAddr>> {
    let handle = netlink().await?;
    let lo = lo_index(&handle).await?;
    let present = lo_addresses(&handle, lo).await?;
    let mut added = Vec::new();
    for &vip in config.vips.iter().filter(|v| !present.contains(v)) {
        if !changes.vips_added.contains(&vip) {
            changes.vips_added.push(vip);
        }
        save_changes(&config.instance, changes)?;
        let len = if vip.is_ipv4() { 32 } else { 128 };
        let mut req = handle.address().add(lo, vip, len);
        // No duplicate address detection: usable at once, and never answered for on a NIC.
        req.message_mut().header.flags = AddressHeaderFlags::Nodad;
        req.execute().await.with_context(|| format!("adding {vip} to lo"))?;
        info!(%vip, "VIP added to lo");
        added.push(vip);
    }
    Ok(added)
}

/// Removes the VIPs `run` added from `lo`.
async fn release_vips(changes: &HostChanges) -> Result<()> {
    let handle = netlink().await?;
    let lo = lo_index(&handle).await?;
    let mut addrs = handle.address().get().set_link_index_filter(lo).execute();
    let mut doomed = Vec::new();
    while let Some(msg) = addrs.try_next().await.context("listing lo's addresses")? {
        if msg.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(ip) if changes.vips_added.contains(ip))) {
            doomed.push(msg);
        }
    }
    for msg in doomed {
        handle.address().del(msg).execute().await.context("removing a VIP from lo")?;
    }
    for vip in &changes.vips_added {
        info!(%vip, "VIP removed from lo");
    }
    Ok(())
}

/// `lb backend run`: makes the host decapsulate and hold the VIPs, then serves health, load
/// and metrics until SIGTERM. The data plane and host changes stay after exit.
pub async fn run(config_path: &Path) -> Result<()> {
    let config = load(config_path, InterfaceCheck::OnThisHost)?;
    let mut changes = load_changes(&config.instance)?;
    let pins = pin_dir(&config.instance);
    let mut dp = Dataplane::load_pinned(&LoadOptions { conn_table_size: 1024, ring_slots: 2 }, &pins)?;
    for iface in &config.interfaces {
        let link = pins.join(format!("link-{}", iface.name));
        let reused = link.exists();
        dp.attach_pinned(programs::DECAP, &iface.name, iface.mode, &link).with_context(|| format!("attaching to {}", iface.name))?;
        info!(interface = %iface.name, mode = ?iface.mode, replaced_running_program = reused, "decapsulator attached");
    }
    let stale = dp.set_decap_addrs(&config.addresses)?;
    info!(addresses = ?config.addresses, removed = ?stale, "tunnels to these addresses are stripped");
    let sysctls = apply_sysctls(&config, &mut changes)?;
    let vips = hold_vips(&config, &mut changes).await?;
    if sysctls.is_empty() && vips.is_empty() {
        info!("host already as configured: nothing changed");
    }

    let load = Arc::new(Mutex::new(None));
    tokio::spawn(sample_load(config.load.clone(), config.interval, load.clone()));
    let state = Endpoint { dp: Arc::new(dp), drain_file: config.drain_file.clone(), load, vips: config.vips.clone() };
    let app =
        Router::new().route("/healthz", get(healthz)).route("/load", get(load_report)).route("/metrics", get(metrics)).with_state(state);
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    info!(listen = %config.listen, drain_file = %config.drain_file.display(), "backend running");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        served = axum::serve(listener, app).into_future() => served?,
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!(instance = %config.instance, "exiting; decapsulation stays attached (`lb backend stop` removes it)");
    Ok(())
}

use std::future::IntoFuture as _;

/// `lb backend stop`: detaches the decapsulator, removes the VIPs `run` added, and puts the
/// sysctls back as they were.
pub async fn stop(config_path: &Path) -> Result<()> {
    let config = load(config_path, InterfaceCheck::Skip)?;
    let changes = load_changes(&config.instance)?;
    let pins = pin_dir(&config.instance);
    if pins.exists() {
        Dataplane::remove_pins(&pins)?;
        info!(instance = %config.instance, "decapsulator detached and removed");
    }
    release_vips(&changes).await?;
    for (key, value) in &changes.sysctls {
        write_sysctl(key, value)?;
        info!(%key, to = %value, "sysctl restored");
    }
    let path = changes_path(&config.instance);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", path.display())),
        _ => Ok(()),
    }
}

/// `lb backend drain` / `undrain`: creates or removes the drain file.
pub fn drain(config_path: &Path, drained: bool) -> Result<()> {
    let config = load(config_path, InterfaceCheck::Skip)?;
    let file = &config.drain_file;
    if drained {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(file, "drained by `lb backend drain`\n").with_context(|| format!("writing {}", file.display()))?;
        println!("draining: /healthz answers 503 while {} exists", file.display());
    } else {
        match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| format!("removing {}", file.display())),
            _ => println!("serving: /healthz answers 200"),
        }
    }
    Ok(())
}

/// `lb backend status`: what `/load` says, the VIPs held and the decapsulator's counters, read
/// from the pinned maps.
pub fn status(config_path: &Path) -> Result<()> {
    let config = load(config_path, InterfaceCheck::Skip)?;
    let pins = pin_dir(&config.instance);
    if !pins.exists() {
        bail!("instance {:?} is not running (no {})", config.instance, pins.display());
    }
    let dp = Dataplane::load_pinned(&LoadOptions { conn_table_size: 1024, ring_slots: 2 }, &pins)?;
    println!("backend {}  {}", config.instance, if config.drain_file.exists() { "DRAINING" } else { "serving" });
    let vips: Vec<String> = config.vips.iter().map(IpAddr::to_string).collect();
    println!("  VIPs on lo: {}", vips.join(", "));
    for c in DecapCounter::ALL {
        println!("  {:<24} {}", c.name(), dp.decap_counter(c)?);
    }
    Ok(())
}

#[derive(Clone)]
struct Endpoint {
    dp: Arc<Dataplane>,
    drain_file: PathBuf,
    load: Arc<Mutex<Option<f64>>>,
    vips: Vec<IpAddr>,
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

async fn healthz(State(e): State<Endpoint>) -> (StatusCode, Json<LoadReport>) {
    let report = e.report();
    (if report.draining { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }, Json(report))
}

async fn load_report(State(e): State<Endpoint>) -> Json<LoadReport> {
    Json(e.report())
}

async fn metrics(State(e): State<Endpoint>) -> String {
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

async fn sample_load(source: LoadSource, interval: Duration, into: Arc<Mutex<Option<f64>>>) {
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
            LoadSource::Command(cmd) => {
                let out = tokio::time::timeout(interval, tokio::process::Command::new("sh").args(["-c", cmd]).output()).await;
                out.ok().and_then(Result::ok).and_then(|o| parse_load(&String::from_utf8_lossy(&o.stdout)))
            }
        };
        if value.is_some() || !matches!(source, LoadSource::Cpu) {
            *into.lock().expect("not poisoned") = value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "instance = \"be1\"\n[backend]\ninterface = [{ name = \"lo\" }]\naddresses = [\"10.1.0.1\", \"fd00:1::1\"]\n\
                        vips = [\"10.99.0.1\", \"2001:db8::10\"]\n";

    #[test]
    fn a_backend_config_validates_with_defaults() {
        let c = parse(GOOD, InterfaceCheck::OnThisHost).unwrap();
        assert_eq!(c.instance, "be1");
        assert_eq!(c.addresses.len(), 2);
        assert_eq!((c.rp_filter, c.listen, c.load.clone()), (2, "0.0.0.0:9180".parse().unwrap(), LoadSource::Cpu));
        assert!(c.drain_file.ends_with("be1.drain"));
        assert!(is_backend_config(GOOD));
        assert!(!is_backend_config("[forwarding]\nnext_hop_mac = \"02:00:00:00:00:01\"\n"));
    }

    #[test]
    fn backend_problems_are_named() {
        let bad = GOOD.replace("\"10.1.0.1\"", "\"10.1.0.300\"").replace("vips = [", "rp_filter = \"strict\"\nvips = [\"x\", ")
            + "[backend.health]\nload = \"gpu\"\ninterval_ms = 5\n";
        let err = parse(&bad, InterfaceCheck::Skip).unwrap_err();
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["backend.addresses[0]", "backend.vips[0]", "backend.rp_filter", "backend.health.load", "backend.health.interval_ms"],
            "{err}"
        );
        let no_nic = GOOD.replace("interface = [{ name = \"lo\" }]", "interface = [{ name = \"nosuch0\" }]");
        assert!(parse(&no_nic, InterfaceCheck::OnThisHost)
            .unwrap_err()
            .to_string()
            .contains("backend.interface[0].name: unknown interface"));
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
