//! A node's follower: reads the fleet document and its site's drain key, then watches both,
//! handing every change to the daemon's loop. When the store is unreachable it says so and
//! retries; on reconnecting it resumes the watch after the last change it saw, and when etcd has
//! compacted that far it reads everything again.

use std::time::Duration;

use anyhow::{Context as _, Result};
use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    report::DoctorAnswer,
    store::{self, StoreAccess},
};

/// What the follower tells the daemon.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetEvent {
    /// The document at `revision`; `None`: there is none (never written, or deleted).
    Document { revision: i64, text: Option<String> },
    /// `lb fleet drain` holds this node's site out of BGP (or no longer).
    Drain(bool),
    /// The staged rollout, with its key's revision (None: none).
    Canary(Option<(i64, store::Canary)>),
    /// The store answered again (`None`), or stopped answering (the error).
    Store(Option<String>),
    /// `lb doctor` answered (from `report::ask_doctor`, not from the store).
    Doctor(DoctorAnswer),
    /// The QUIC-LB keys a document or candidate names, read before it is handed over.
    Keys(Result<crate::config::QuicKeys, String>),
}

/// The QUIC-LB keys the fleet document `text` names (none for a document that does not parse:
/// the daemon refuses it anyway).
fn keys_of(text: &str) -> FleetEvent {
    let Ok(doc) = super::doc::parse(text) else { return FleetEvent::Keys(Ok(Default::default())) };
    let vips: Vec<crate::config::RawVip> = doc.vips.into_iter().map(|v| v.vip).collect();
    FleetEvent::Keys(crate::config::read_quic_keys(crate::config::quic_key_files(&vips)).map_err(|e| e.to_string()))
}

/// Waits between attempts to reach the store, doubling up to the last.
const RETRY: [Duration; 5] =
    [Duration::from_millis(250), Duration::from_millis(500), Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(4)];

/// Follows the store until the daemon is gone.
pub async fn run(access: StoreAccess, site: String, events: mpsc::Sender<FleetEvent>) {
    // The store revision to watch from (0: read everything first).
    let mut watch_from = 0;
    let mut failures = 0;
    loop {
        let result = session(&access, &site, &events, &mut watch_from, &mut failures).await;
        if events.is_closed() {
            return;
        }
        if let Err(e) = result {
            let error = format!("{e:#}");
            warn!(%error, "fleet store unreachable; serving the last good revision");
            if events.send(FleetEvent::Store(Some(error))).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(RETRY[failures.min(RETRY.len() - 1)]).await;
        failures += 1;
    }
}

async fn session(
    access: &StoreAccess,
    site: &str,
    events: &mpsc::Sender<FleetEvent>,
    watch_from: &mut i64,
    failures: &mut usize,
) -> Result<()> {
    let mut client = access.connect().await?;
    let send = |e: FleetEvent| async { events.send(e).await.context("the daemon is gone") };
    if *watch_from == 0 {
        let doc = store::read_document(&mut client, access).await?;
        let drained = store::is_drained(&mut client, access, site).await?;
        let canary = store::read_canary(&mut client, access).await?;
        let (revision, text) = doc.text.map_or((0, None), |(r, t)| (r, Some(t)));
        send(FleetEvent::Store(None)).await?;
        if let Some(text) = &text {
            send(keys_of(text)).await?;
        }
        if let Some((_, canary)) = &canary {
            send(keys_of(&canary.text)).await?;
        }
        send(FleetEvent::Document { revision, text }).await?;
        send(FleetEvent::Drain(drained)).await?;
        send(FleetEvent::Canary(canary)).await?;
        *watch_from = doc.store_revision + 1;
    } else {
        send(FleetEvent::Store(None)).await?;
    }
    // One watch over [document, this site's drain key]: the keys between are the rollout and
    // other sites' drain keys (filtered out below), never node reports.
    let (doc_key, drain_key, canary_key) = (access.document_key(), access.drain_key(site), access.canary_key());
    let mut range_end = drain_key.clone().into_bytes();
    range_end.push(0);
    let options = WatchOptions::new().with_range(range_end).with_start_revision(*watch_from).with_progress_notify();
    let mut stream = client.watch(doc_key.clone(), Some(options)).await.context("watching the fleet document")?;
    info!(from = *watch_from, "fleet store: watching");
    *failures = 0;
    while let Some(response) = stream.message().await.context("the fleet watch broke")? {
        if store::watch_compacted(&response)? {
            *watch_from = 0;
            return Ok(());
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = kv.key_str().unwrap_or_default();
            let put = event.event_type() == EventType::Put;
            if key == doc_key {
                let text = if put { Some(kv.value_str().context("the fleet document is not UTF-8")?.to_owned()) } else { None };
                if let Some(text) = &text {
                    send(keys_of(text)).await?;
                }
                send(FleetEvent::Document { revision: kv.mod_revision(), text }).await?;
            } else if key == canary_key {
                let canary = if put {
                    Some((
                        kv.mod_revision(),
                        serde_json::from_slice::<store::Canary>(kv.value()).context("the rollout key does not parse")?,
                    ))
                } else {
                    None
                };
                if let Some((_, candidate)) = &canary {
                    send(keys_of(&candidate.text)).await?;
                }
                send(FleetEvent::Canary(canary)).await?;
            } else if key == drain_key {
                send(FleetEvent::Drain(put)).await?;
            }
            *watch_from = (*watch_from).max(kv.mod_revision() + 1);
        }
    }
    anyhow::bail!("the fleet watch ended")
}
