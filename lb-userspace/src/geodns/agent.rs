//! `lb geodns run`: follows the whole fleet prefix (the document, every node's report, the
//! drain keys) and keeps gdnsd's state file, and the JSON beside it, equal to what `judge`
//! says. A file is written (atomically: a temporary file renamed over it) only when its
//! content changes. When the store stops answering, the state file keeps the last state and
//! the JSON says `store_reachable: false`; after a compaction the agent reads everything again.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};
use etcd_client::{EventType, GetOptions, WatchOptions};
use tracing::{info, warn};

use super::{gdnsd, judge, SiteAnswer};
use crate::fleet::{self, report::NodeReport, store::StoreAccess, RawFleet};

/// Where the agent writes.
#[derive(Debug, Clone)]
pub struct Files {
    /// gdnsd's extfile state file.
    pub state: PathBuf,
    /// The same state as JSON (None: not written).
    pub json: Option<PathBuf>,
}

/// What the agent knows of the store.
#[derive(Default)]
pub struct View {
    /// The last valid document and its revision.
    pub doc: Option<(i64, RawFleet)>,
    pub reports: BTreeMap<String, NodeReport>,
    pub drained: BTreeSet<String>,
}

impl View {
    /// Takes one key's new value (None: deleted).
    fn take(&mut self, access: &StoreAccess, key: &str, revision: i64, value: Option<&[u8]>) {
        let drain_prefix = format!("{}/drain/", access.prefix);
        if key == access.document_key() {
            let Some(value) = value else { return warn!("the fleet document was deleted; answering from the last one") };
            let parsed = std::str::from_utf8(value).map_err(|e| e.to_string()).and_then(fleet::parse_valid);
            match parsed {
                Ok(doc) => self.doc = Some((revision, doc)),
                Err(e) => warn!(revision, error = %e, "fleet revision refused; answering from the last good one"),
            }
        } else if let Some(site) = key.strip_prefix(&drain_prefix) {
            match value {
                Some(_) => self.drained.insert(site.to_owned()),
                None => self.drained.remove(site),
            };
        } else if let Some(node) = key.strip_prefix(&access.nodes_prefix()) {
            match value.map(serde_json::from_slice::<NodeReport>) {
                Some(Ok(report)) => {
                    self.reports.insert(node.to_owned(), report);
                }
                Some(Err(e)) => warn!(node, error = %e, "a node report does not parse; leaving it out"),
                None => {
                    self.reports.remove(node);
                }
            }
        }
    }

    /// Each site's answer per VIP (empty before a document).
    pub fn answers(&self) -> Vec<SiteAnswer> {
        self.doc.as_ref().map(|(_, doc)| judge(doc, self.reports.values(), &self.drained)).unwrap_or_default()
    }
}

/// Reads everything under the prefix into a view; returns it with the store's revision.
pub async fn read_view(client: &mut etcd_client::Client, access: &StoreAccess) -> Result<(View, i64)> {
    let got = client.get(format!("{}/", access.prefix), Some(GetOptions::new().with_prefix())).await.context("reading the fleet prefix")?;
    let mut view = View::default();
    for kv in got.kvs() {
        view.take(access, kv.key_str().unwrap_or_default(), kv.mod_revision(), Some(kv.value()));
    }
    Ok((view, got.header().map_or(0, |h| h.revision())))
}

/// Waits between attempts to reach the store, doubling up to the last.
const RETRY: [Duration; 4] = [Duration::from_millis(250), Duration::from_millis(500), Duration::from_secs(1), Duration::from_secs(2)];

/// Runs until killed.
pub async fn run(access: StoreAccess, files: Files) -> Result<()> {
    let mut writer = Writer { files, last_state: None, last_json: None, last: BTreeMap::new() };
    let mut view = View::default();
    let mut failures = 0;
    loop {
        if let Err(e) = session(&access, &mut view, &mut writer, &mut failures).await {
            warn!(error = %format!("{e:#}"), "fleet store unreachable; the state file keeps the last state");
            writer.write(&view, false).await;
        }
        tokio::time::sleep(RETRY[failures.min(RETRY.len() - 1)]).await;
        failures += 1;
    }
}

async fn session(access: &StoreAccess, view: &mut View, writer: &mut Writer, failures: &mut usize) -> Result<()> {
    let mut client = access.connect().await?;
    let (fresh, revision) = read_view(&mut client, access).await?;
    // A document that does not validate keeps the last good one.
    let kept = view.doc.take();
    *view = fresh;
    if view.doc.is_none() {
        view.doc = kept;
    }
    writer.write(view, true).await;
    let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1).with_progress_notify();
    let mut stream = client.watch(format!("{}/", access.prefix), Some(options)).await.context("watching the fleet prefix")?;
    info!(from = revision + 1, "fleet store: watching");
    *failures = 0;
    while let Some(response) = stream.message().await.context("the fleet watch broke")? {
        if fleet::store::watch_compacted(&response)? {
            return Ok(());
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let value = (event.event_type() == EventType::Put).then(|| kv.value());
            view.take(access, kv.key_str().unwrap_or_default(), kv.mod_revision(), value);
        }
        writer.write(view, true).await;
    }
    anyhow::bail!("the fleet watch ended")
}

/// Writes the files when their content changed, and logs each state that changed.
struct Writer {
    files: Files,
    last_state: Option<String>,
    last_json: Option<String>,
    /// (VIP, site) -> up, as last written.
    last: BTreeMap<(String, String), bool>,
}

impl Writer {
    async fn write(&mut self, view: &View, reachable: bool) {
        let Some((revision, doc)) = &view.doc else { return };
        let answers = view.answers();
        if reachable {
            for a in &answers {
                let key = (a.vip.clone(), a.site.clone());
                if self.last.get(&key) != Some(&a.up) {
                    info!(vip = %a.vip, site = %a.site, state = if a.up { "UP" } else { "DOWN" }, why = %a.why, "geodns state");
                    self.last.insert(key, a.up);
                }
            }
            let state = gdnsd::extfile(doc, &answers);
            if self.last_state.as_ref() != Some(&state) {
                match crate::durable::write_async(self.files.state.clone(), state.clone().into_bytes()).await {
                    Ok(()) => self.last_state = Some(state),
                    Err(e) => warn!(file = %self.files.state.display(), error = %e, "could not write the state file"),
                }
            }
        }
        let Some(path) = &self.files.json else { return };
        let json = serde_json::to_string_pretty(&gdnsd::JsonState::new(doc, *revision, reachable, &answers)).expect("plain data encodes");
        if self.last_json.as_ref() != Some(&json) {
            match crate::durable::write_async(path.clone(), json.clone().into_bytes()).await {
                Ok(()) => self.last_json = Some(json),
                Err(e) => warn!(file = %path.display(), error = %e, "could not write the JSON state"),
            }
        }
    }
}
