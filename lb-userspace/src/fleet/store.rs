//! The fleet's keys in etcd, and the calls on them. Under the prefix P:
//!
//! - `P/document`: the fleet document as the operator wrote it; its `mod_revision` is the fleet
//!   revision every node reports;
//! - `P/document.canary`: a staged rollout under way (`Canary`, JSON): the candidate document,
//!   the canary nodes that run it first, and whether it halted;
//! - `P/drain/SITE`: present while `lb fleet drain SITE` holds the site out of BGP;
//! - `P/nodes/SITE/NODE`: each node's report (JSON), under the node's lease.

use std::{path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};
use etcd_client::{Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn, TxnOp};

use crate::config::{read_file, read_private, read_secret, FleetNode, FleetTls};

/// How long connecting to etcd, and each call, may take.
pub const CALL_LIMIT: Duration = Duration::from_secs(3);

/// etcd's user and password, the password read from its file (`field` names the file's
/// setting in errors); None: no login.
pub fn login(user: Option<&str>, password_file: Option<&Path>, field: &str) -> Result<Option<(String, String)>> {
    match (user, password_file) {
        (Some(user), Some(file)) => Ok(Some((user.to_owned(), read_secret(file, field, "password", 1)?.to_string()))),
        (None, None) => Ok(None),
        _ => bail!("a user and its password file come together ({field})"),
    }
}

/// TLS to the store, read from the files `[fleet]` or `lb fleet`'s flags name: the CA's
/// certificate (PEM), and the client's certificate and key when etcd asks for one.
#[derive(Clone, PartialEq)]
pub struct StoreTls {
    pub ca: Vec<u8>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl StoreTls {
    /// Reads the files (the key only if its owner alone may read it); `fields` name the CA,
    /// certificate and key settings in errors.
    pub fn read(tls: &FleetTls, fields: [&str; 3]) -> Result<Self> {
        let client = match &tls.client {
            Some((cert, key)) => Some((read_file(cert, fields[1])?, read_private(key, fields[2])?)),
            None => None,
        };
        Ok(Self { ca: read_file(&tls.ca_file, fields[0])?, client })
    }

    fn options(&self) -> TlsOptions {
        let options = TlsOptions::new().ca_certificate(Certificate::from_pem(&self.ca));
        match &self.client {
            Some((cert, key)) => options.identity(Identity::from_pem(cert, key)),
            None => options,
        }
    }
}

/// Where the fleet's keys are, and how to reach and log in to the store.
#[derive(Clone, PartialEq)]
pub struct StoreAccess {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// etcd user and password.
    pub login: Option<(String, String)>,
    pub tls: Option<StoreTls>,
}

/// Without the password and the key.
impl std::fmt::Debug for StoreAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreAccess")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("user", &self.login.as_ref().map(|(user, _)| user))
            .field("tls", &self.tls.as_ref().map(|t| if t.client.is_some() { "with a client certificate" } else { "server only" }))
            .finish()
    }
}

impl StoreAccess {
    /// A node's access, from its `[fleet]` (the password and TLS files read).
    pub fn of_node(fleet: &FleetNode) -> Result<Self> {
        let login = login(fleet.user.as_deref(), fleet.password_file.as_deref(), "fleet.password_file")?;
        let tls = match &fleet.tls {
            Some(tls) => Some(StoreTls::read(tls, ["fleet.ca_file", "fleet.cert_file", "fleet.key_file"])?),
            None => None,
        };
        Ok(Self { endpoints: fleet.endpoints.clone(), prefix: fleet.prefix.clone(), login, tls })
    }

    pub fn document_key(&self) -> String {
        format!("{}/document", self.prefix)
    }

    pub fn canary_key(&self) -> String {
        format!("{}/document.canary", self.prefix)
    }

    pub fn drain_key(&self, site: &str) -> String {
        format!("{}/drain/{site}", self.prefix)
    }

    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node_key(&self, site: &str, node: &str) -> String {
        format!("{}/nodes/{site}/{node}", self.prefix)
    }

    /// A client of the first member that answers, trying each in turn. One member's client,
    /// not a balanced one: a balanced channel sends some calls to a dead member, and they fail.
    pub async fn connect(&self) -> Result<Client> {
        let mut errors = Vec::new();
        for endpoint in &self.endpoints {
            match self.connect_to(endpoint).await {
                Ok(client) => return Ok(client),
                Err(e) => errors.push(format!("{endpoint}: {e:#}")),
            }
        }
        bail!("no etcd member answered: {}", errors.join("; "))
    }

    async fn connect_to(&self, endpoint: &str) -> Result<Client> {
        // HTTP/2 pings find a member that went silent (no reset), which would stall the watch.
        let mut opts =
            ConnectOptions::new().with_connect_timeout(CALL_LIMIT).with_timeout(CALL_LIMIT).with_keep_alive(CALL_LIMIT, CALL_LIMIT);
        if let Some((user, password)) = &self.login {
            opts = opts.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &self.tls {
            opts = opts.with_tls(tls.options());
        }
        let attempt = async {
            let mut client = Client::connect([endpoint], Some(opts)).await?;
            // A member cut off from the others' quorum cannot serve a linearizable read.
            client.get(self.document_key(), Some(GetOptions::new().with_count_only())).await?;
            Ok::<_, etcd_client::Error>(client)
        };
        tokio::time::timeout(CALL_LIMIT, attempt).await.map_err(|_| anyhow::anyhow!("no answer within {CALL_LIMIT:?}"))?.map_err(Into::into)
    }
}

/// A staged rollout: the canaries run `text` for `hold_s`; then one of them promotes it to the
/// document (if it is still at `base`), or one halts it and they go back.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Canary {
    /// The document revision the candidate replaces.
    pub base: i64,
    pub text: String,
    /// Node names.
    pub canaries: Vec<String>,
    pub hold_s: u64,
    /// Why it halted (None: under way).
    pub halted: Option<String>,
}

/// The rollout under way or halted, with its key's revision.
pub async fn read_canary(client: &mut Client, access: &StoreAccess) -> Result<Option<(i64, Canary)>> {
    let got = client.get(access.canary_key(), None).await.context("reading the rollout")?;
    match got.kvs().first() {
        Some(kv) => Ok(Some((kv.mod_revision(), serde_json::from_slice(kv.value()).context("the rollout key does not parse")?))),
        None => Ok(None),
    }
}

/// Starts a rollout of `canary` if the document is still at `canary.base` and no rollout is
/// under way (a halted one is replaced).
pub async fn start_canary(client: &mut Client, access: &StoreAccess, canary: &Canary) -> Result<i64> {
    let (doc, key) = (access.document_key(), access.canary_key());
    let value = serde_json::to_string(canary)?;
    let running = read_canary(client, access).await?;
    if let Some((_, c)) = running.as_ref().filter(|(_, c)| c.halted.is_none()) {
        bail!("a rollout to {:?} is under way (base revision {}); wait for it to finish or halt", c.canaries, c.base);
    }
    let canary_rev = running.map_or(0, |(r, _)| r);
    let txn = Txn::new()
        .when([Compare::mod_revision(doc, CompareOp::Equal, canary.base), Compare::mod_revision(key.clone(), CompareOp::Equal, canary_rev)])
        .and_then([TxnOp::put(key, value, None)]);
    let done = client.txn(txn).await.context("starting the rollout")?;
    if !done.succeeded() {
        bail!("the fleet document or the rollout changed since revision {}: look again (`lb fleet status`)", canary.base);
    }
    Ok(done.header().map_or(0, |h| h.revision()))
}

/// Marks rollout `canary_rev` halted, unless it changed meanwhile. True if this call halted it.
pub async fn halt_canary(client: &mut Client, access: &StoreAccess, canary_rev: i64, canary: &Canary, reason: &str) -> Result<bool> {
    let key = access.canary_key();
    let value = serde_json::to_string(&Canary { halted: Some(reason.to_owned()), ..canary.clone() })?;
    let txn = Txn::new().when([Compare::mod_revision(key.clone(), CompareOp::Equal, canary_rev)]).and_then([TxnOp::put(key, value, None)]);
    Ok(client.txn(txn).await.context("halting the rollout")?.succeeded())
}

/// Makes rollout `canary_rev`'s candidate the document, if both are as they were. True if this
/// call promoted it.
pub async fn promote_canary(client: &mut Client, access: &StoreAccess, canary_rev: i64, canary: &Canary) -> Result<bool> {
    let (doc, key) = (access.document_key(), access.canary_key());
    let txn = Txn::new()
        .when([
            Compare::mod_revision(key.clone(), CompareOp::Equal, canary_rev),
            Compare::mod_revision(doc.clone(), CompareOp::Equal, canary.base),
        ])
        .and_then([TxnOp::put(doc, canary.text.clone(), None), TxnOp::delete(key, None)]);
    Ok(client.txn(txn).await.context("promoting the rollout")?.succeeded())
}

/// The document at one moment: its text and revision (`None`: none written yet), and the
/// store's revision then.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub text: Option<(i64, String)>,
    pub store_revision: i64,
}

pub async fn read_document(client: &mut Client, access: &StoreAccess) -> Result<Document> {
    let got = client.get(access.document_key(), None).await.context("reading the fleet document")?;
    let store_revision = got.header().map_or(0, |h| h.revision());
    let text = match got.kvs().first() {
        Some(kv) => Some((kv.mod_revision(), kv.value_str().context("the fleet document is not UTF-8")?.to_owned())),
        None => None,
    };
    Ok(Document { text, store_revision })
}

/// Writes `text` as the document if its revision is still `expected` (0: no document yet).
/// Returns the new revision, or fails naming the revision found instead.
pub async fn write_document(client: &mut Client, access: &StoreAccess, text: &str, expected: i64) -> Result<i64> {
    let key = access.document_key();
    let txn = Txn::new()
        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, expected)])
        // A plain apply supersedes any rollout, under way or halted.
        .and_then([TxnOp::put(key.clone(), text, None), TxnOp::delete(access.canary_key(), None)])
        .or_else([TxnOp::get(key.clone(), None)]);
    let done = client.txn(txn).await.context("writing the fleet document")?;
    if !done.succeeded() {
        let now = read_document(client, access).await?.text.map_or(0, |(rev, _)| rev);
        bail!("the fleet document changed since revision {expected}: it is at revision {now} now; look at it again (`lb fleet diff`) and apply with --revision {now}");
    }
    Ok(done.header().map_or(0, |h| h.revision()))
}

pub async fn set_drain(client: &mut Client, access: &StoreAccess, site: &str, drained: bool) -> Result<()> {
    let key = access.drain_key(site);
    if drained {
        client.put(key, "drained", None).await.context("writing the drain key")?;
    } else {
        client.delete(key, None).await.context("deleting the drain key")?;
    }
    Ok(())
}

pub async fn is_drained(client: &mut Client, access: &StoreAccess, site: &str) -> Result<bool> {
    let got = client.get(access.drain_key(site), None).await.context("reading the drain key")?;
    Ok(!got.kvs().is_empty())
}

/// Every drained site.
pub async fn drained_sites(client: &mut Client, access: &StoreAccess) -> Result<Vec<String>> {
    let prefix = format!("{}/drain/", access.prefix);
    let got = client.get(prefix.clone(), Some(GetOptions::new().with_prefix())).await.context("reading the drain keys")?;
    Ok(got.kvs().iter().filter_map(|kv| kv.key_str().ok()?.strip_prefix(&prefix).map(str::to_owned)).collect())
}

/// Every node report, as (key, JSON text).
pub async fn node_reports(client: &mut Client, access: &StoreAccess) -> Result<Vec<(String, String)>> {
    let prefix = access.nodes_prefix();
    let got = client.get(prefix.clone(), Some(GetOptions::new().with_prefix())).await.context("reading the node reports")?;
    got.kvs()
        .iter()
        .map(|kv| Ok((kv.key_str()?.strip_prefix(&prefix).unwrap_or_default().to_owned(), kv.value_str()?.to_owned())))
        .collect::<Result<Vec<_>, etcd_client::Error>>()
        .context("a node report is not UTF-8")
}

/// A watch response's verdict before its events: `Ok(true)` when etcd compacted past the
/// revision the watch started at (the watcher must read everything again), an error when etcd
/// cancelled the watch, else `Ok(false)`.
pub fn watch_compacted(response: &etcd_client::WatchResponse) -> Result<bool> {
    if response.compact_revision() > 0 {
        tracing::warn!(compacted = response.compact_revision(), "fleet store compacted past our revision; reading everything again");
        return Ok(true);
    }
    if response.canceled() {
        bail!("etcd cancelled the watch: {}", response.cancel_reason());
    }
    Ok(false)
}
