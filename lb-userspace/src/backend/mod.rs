//! `lb backend`: the real host's side. Attaches `lb_decap` (pinned, like the balancer, so a
//! restart never stops decapsulation), programs the addresses it strips tunnels for, holds the
//! VIPs on `lo`, sets what direct server return needs, and serves a health and load endpoint.
//! Every host change is recorded in a state file before it is made, so `stop` puts back exactly
//! what `run` changed, and a second `run` changes nothing.

//!
//! - `config`: its config file;
//! - `host`: the sysctls and VIPs on `lo`, recorded and put back;
//! - `endpoint`: `/healthz`, `/load`, `/metrics`;
//! - here: `run`, `stop`, `drain`, `status`.

mod config;
mod endpoint;
mod host;

use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context as _, Result};
use axum::{routing::get, Router};
use lb_common::{programs, stats::DecapCounter};
use tracing::info;

pub use self::{
    config::{is_backend_config, load, parse, BackendConfig, LoadSource, RawBackend, RawBackendFile, RawBackendHealth, DEFAULT_PORT},
    endpoint::{cpu_times, parse_load, LoadReport, QuicLbOffer},
    host::HostChanges,
};
use self::{
    endpoint::{healthz, load_report, metrics, quic_lb, sample_load, Endpoint},
    host::{apply_sysctls, changes_path, check_sysctls, hold_vips, load_changes, release_vips, write_sysctl},
};
use crate::{
    config::InterfaceCheck,
    dataplane::{pins, Dataplane, LoadOptions},
    serve::{self, ListenerCounters},
};

/// `lb backend run`: makes the host decapsulate and hold the VIPs, then serves health, load
/// and metrics until SIGTERM. The data plane and host changes stay after exit.
pub async fn run(config_path: &Path) -> Result<()> {
    let mut config = load(config_path, InterfaceCheck::OnThisHost)?;
    let keys = crate::config::read_quic_keys(config.quic_lb.iter().filter_map(|q| q.params.key_file.as_deref()))?;
    for q in &mut config.quic_lb {
        q.params.key = q.params.key_file.as_ref().and_then(|f| keys.get(f).copied());
    }
    let descriptors = serve::raise_descriptor_limit()?;
    info!(descriptors, "open-file limit");
    let mut changes = load_changes(&config.instance)?;
    check_sysctls(&config)?;
    let pins = pins::backend(&config.instance);
    let mut dp = Dataplane::load_pinned(&LoadOptions { conn_table_size: 1024, ring_slots: 2 }, &pins)?;
    // The maps first: the program attached next drops tunnels its maps do not allow.
    let stale = dp.set_decap_addrs(&config.addresses)?;
    dp.set_decap_sources(&config.balancer_sources)?;
    dp.set_decap_vips(&config.vips)?;
    let sources: Vec<String> = config.balancer_sources.iter().map(|(a, len)| format!("{a}/{len}")).collect();
    info!(addresses = ?config.addresses, removed = ?stale, from = ?sources, vips = ?config.vips, "tunnels to these addresses, from these sources, for these VIPs are stripped");
    for iface in &config.interfaces {
        let link = pins::link(&pins, &iface.name);
        let reused = link.exists();
        dp.attach_pinned(programs::DECAP, &iface.name, iface.mode, &link).with_context(|| format!("attaching to {}", iface.name))?;
        info!(interface = %iface.name, mode = ?iface.mode, replaced_running_program = reused, "decapsulator attached");
    }
    let sysctls = apply_sysctls(&config, &mut changes)?;
    let vips = hold_vips(&config, &mut changes).await?;
    if sysctls.is_empty() && vips.is_empty() {
        info!("host already as configured: nothing changed");
    }

    let load = Arc::new(Mutex::new(None));
    tokio::spawn(sample_load(config.load.clone(), config.interval, load.clone()));
    let listener_counters = Arc::new(ListenerCounters::default());
    let state = Endpoint {
        dp: Arc::new(dp),
        drain_file: config.drain_file.clone(),
        load,
        vips: config.vips.clone(),
        listener: listener_counters.clone(),
        quic_lb: Arc::new(config.quic_lb.iter().map(QuicLbOffer::new).collect()),
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/load", get(load_report))
        .route("/metrics", get(metrics))
        .route("/quic-lb", get(quic_lb))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    info!(listen = %config.listen, drain_file = %config.drain_file.display(), "backend running");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = serve::serve(listener, app, config.limits, listener_counters) => {}
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!(instance = %config.instance, "exiting; decapsulation stays attached (`lb backend stop` removes it)");
    Ok(())
}

/// `lb backend stop`: detaches the decapsulator, removes the VIPs `run` added, and puts the
/// sysctls back as they were.
pub async fn stop(config_path: &Path) -> Result<()> {
    let config = load(config_path, InterfaceCheck::Skip)?;
    let changes = load_changes(&config.instance)?;
    let pins = pins::backend(&config.instance);
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
    let pins = pins::backend(&config.instance);
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
