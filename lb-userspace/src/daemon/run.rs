//! `lb run` and `lb stop`: read the config and the journal, bind the API, load and attach the
//! data plane (pinned), start the tasks, and run the loop that owns the state until a signal.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use lb_common::programs;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{info, warn};

use super::{
    fleet,
    reload::effective_config,
    state::{Daemon, Outputs},
};
use crate::{
    admin,
    bgp::{self, BirdRouter, RouterEvent},
    config::{self, InterfaceCheck},
    dataplane::{pins, Counters, Dataplane, LiveMaps, LoadOptions},
    journal, next_hop,
    reconcile::Reconciler,
};

/// How long one BIRD step (connect, write, reply) may take.
const BIRD_LIMIT: Duration = Duration::from_secs(2);
/// How often BIRD is asked for its BGP sessions (for `lb doctor` and metrics).
const SESSION_CHECK: Duration = Duration::from_secs(2);

/// How long `lb` waits at exit for BIRD to withdraw the VIPs.
const EXIT_WITHDRAW_LIMIT: Duration = Duration::from_millis(1500);

pub async fn run(config_path: PathBuf) -> Result<()> {
    let interfaces = InterfaceCheck::OnThisHost;
    let node_file = config::load_raw(&config_path)?;
    fleet::check_node_file(&node_file).map_err(anyhow::Error::msg)?;
    let file_config = node_file.validate(interfaces)?; // the file alone must be valid
    let journal_path = journal::path(&file_config.instance);
    let journal = journal::load(&journal_path)?;
    // A fleet node starts from the revision it last applied, kept on disk, whether or not the
    // store answers; the follower brings it up to date.
    let last_good = match &file_config.fleet {
        Some(node) => {
            let last_good = fleet::load_last_good(&node.state_file)?;
            match &last_good {
                Some((saved, _)) => {
                    info!(revision = saved.revision, file = %node.state_file.display(), "fleet: starting from the last good revision")
                }
                None => {
                    warn!(file = %node.state_file.display(), "fleet: no revision kept yet; starting with no VIPs until the store answers")
                }
            }
            last_good
        }
        None => None,
    };
    let file = match &file_config.fleet {
        Some(node) => fleet::with_fleet_vips(&node_file, last_good.as_ref().map(|(_, doc)| doc), &node.site),
        None => node_file,
    };
    let quic_keys = config::read_quic_keys(config::quic_key_files(&file.vips))?;
    let config = effective_config(&file, &journal, interfaces, &quic_keys)?;
    super::server_ids::check(&journal.server_ids, &config, super::server_ids::now_s()).map_err(anyhow::Error::msg)?;
    let descriptors = crate::serve::raise_descriptor_limit()?;
    info!(descriptors, "open-file limit");
    let mac = next_hop::resolve(&config.forwarding.next_hop).await?;
    // Before the data plane is touched: a second `lb` of a running instance stops here.
    let bound = admin::server::bind(&config.api, config.metrics_listen).await?;
    let pins = pins::balancer(&config.instance);
    let rec = start_dataplane(&config, mac, &pins)?;

    let (health_tx, mut health_rx) = mpsc::channel(1024);
    let (cmd_tx, mut cmd_rx) = mpsc::channel(64);
    let (router_tx, mut router_rx) = mpsc::channel(16);
    let (next_hop_tx, mut next_hop_rx) = mpsc::channel(16);
    let (reload_tx, mut reload_rx) = mpsc::channel(4);
    let (journal_tx, journal_rx) = mpsc::unbounded_channel();
    let (announce_tx, announce_rx) = watch::channel(Vec::new());
    tokio::spawn(journal::run_writer(journal_path, journal_rx));
    let (metrics_listen, api, bgp, limits) = (config.metrics_listen, config.api.clone(), config.bgp.clone(), config.limits);
    let (graceful_tx, mut graceful_rx) = mpsc::channel(4);
    let out = Outputs {
        announce: announce_tx,
        journal: journal_tx,
        health: health_tx,
        next_hop: next_hop_tx,
        reload: reload_tx,
        graceful_over: graceful_tx,
    };
    let fleet_node = config.fleet.clone();
    let mut daemon = Daemon::start(rec, config_path, file, config, journal, interfaces, out);
    daemon.keep_quic_keys(quic_keys);
    let (fleet_tx, mut fleet_rx) = mpsc::channel(16);
    if let Some(node) = fleet_node {
        fleet::start_fleet(&mut daemon, node, last_good.map(|(saved, doc)| (saved.revision, doc)), fleet_tx, api.socket.clone())?;
    } else {
        drop(fleet_tx);
    }
    if let Some(bgp) = bgp {
        tokio::spawn(bgp::watch_sessions(bgp.bird_socket.clone(), SESSION_CHECK, BIRD_LIMIT, router_tx.clone()));
        let bird = BirdRouter { include: bgp.include_file, socket: bgp.bird_socket, limit: BIRD_LIMIT };
        tokio::spawn(bgp::run_router(bird, announce_rx, router_tx, bgp::Backoff::DEFAULT));
    }
    let counters = Arc::new(Counters::open(&pins)?);
    bound.serve(cmd_tx, counters, LiveMaps::open(&pins)?, &limits);
    let tcp = api.listen.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
    info!(vips = daemon.config().vips.len(), socket = %api.socket.display(), api_tcp = %tcp, metrics = %metrics_listen, "running");

    // The fleet report follows the state at most this often (it is written only when it
    // changed), a canary judges its candidate, and adapted weights step (each VIP at its
    // interval).
    let mut report_tick = tokio::time::interval(Duration::from_secs(1));
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            Some(event) = health_rx.recv() => daemon.health(event),
            Some(cmd) = cmd_rx.recv() => daemon.command(cmd),
            Some(event) = router_rx.recv() => daemon.router_event(event),
            Some(change) = next_hop_rx.recv() => daemon.next_hop_changed(change),
            Some((prepared, reply)) = reload_rx.recv() => daemon.reload(prepared, reply),
            Some(number) = graceful_rx.recv() => daemon.graceful_shutdown_over(number),
            Some(event) = fleet_rx.recv() => daemon.fleet_event(event),
            _ = report_tick.tick() => {
                daemon.fleet_tick();
                daemon.adapt_tick(std::time::Instant::now());
            }
            _ = hangup.recv() => daemon.start_reload(None),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    if daemon.begin_exit() {
        // The graceful shutdown's own timer ends the wait (an earlier, cancelled one's end is
        // ignored by `graceful_shutdown_over`).
        while daemon.graceful_remaining().is_some() {
            match graceful_rx.recv().await {
                Some(number) => daemon.graceful_shutdown_over(number),
                None => break,
            }
        }
        let withdrawn = tokio::time::timeout(EXIT_WITHDRAW_LIMIT, async {
            while let Some(event) = router_rx.recv().await {
                if event == RouterEvent::Applied(Vec::new()) {
                    return true;
                }
            }
            false
        });
        match withdrawn.await {
            Ok(true) => info!("every VIP withdrawn before exit"),
            _ => warn!(waited_ms = EXIT_WITHDRAW_LIMIT.as_millis() as u64, "BIRD did not confirm the withdrawal before exit"),
        }
    }
    let _ = std::fs::remove_file(&api.socket);
    info!(instance = %daemon.config().instance, "exiting; the data plane stays attached with its last state (`lb stop` removes it)");
    Ok(())
}

/// Loads the data plane onto the pinned maps, picks up what an earlier `lb` left there,
/// programs the config, and only then attaches the program (replacing a running one in one
/// step), so the program starts on maps that are whole: a pre-filter made anew by an upgrade is
/// filled before any packet meets it.
fn start_dataplane(config: &config::Config, mac: [u8; 6], pins: &Path) -> Result<Reconciler<Dataplane>> {
    let dp = Dataplane::load_pinned(&LoadOptions { conn_table_size: config.conn_table_size, ring_slots: config.ring_slots }, pins)?;
    let programmed = dp.programmed()?;
    if !programmed.vips.is_empty() {
        info!(vips = programmed.vips.len(), reals = programmed.reals.len(), "picked up the running data plane");
    }
    let mut rec = Reconciler::recover(dp, &programmed);
    rec.apply(config, mac)?;
    for iface in &config.interfaces {
        let link = pins::link(pins, &iface.name);
        let reused = link.exists();
        rec.dataplane_mut()
            .attach_pinned(programs::BALANCER, &iface.name, iface.mode, &link)
            .with_context(|| format!("attaching to {}", iface.name))?;
        info!(interface = %iface.name, mode = ?iface.mode, replaced_running_program = reused, "balancer attached");
    }
    Ok(rec)
}

/// `lb stop`: detaches the programs and removes the maps of an instance.
pub fn stop(instance: &str) -> Result<()> {
    let pins = pins::balancer(instance);
    if !pins.exists() {
        bail!("no instance {instance:?} ({} does not exist)", pins.display());
    }
    Dataplane::remove_pins(&pins)?;
    info!(%instance, "data plane detached and removed");
    Ok(())
}
