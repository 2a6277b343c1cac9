//! The admin API (HTTP/JSON on a Unix socket; over TCP only when configured, with a token) and
//! the metrics endpoint. Handlers only pass
//! commands to the loop that owns the state and return its answer.

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::{bail, Context as _, Result};
use axum::{
    extract::{Query, Request, State},
    http::{header, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse as _, Response},
    routing::{get, post},
    Json, Router,
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    admin::{AdminError, Command, RealRequest, Reply, VipName},
    config::{Api, Limits, RawVip},
    dataplane::{Counters, LiveMaps},
    metrics::ApiCounters,
    operator::flow::{self, FlowFilter, FlowList, FlowQuery, FlowReport, Purged},
    serve::{self, ListenerCounters},
    status::{HandoffStatus, SiteStage, VipStatus},
};

type Commands = mpsc::Sender<Command>;

/// Sends a command built around a reply channel and waits for the answer.
async fn ask<T>(cmds: &Commands, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, (StatusCode, String)> {
    let (tx, rx) = oneshot::channel();
    let gone = || (StatusCode::SERVICE_UNAVAILABLE, "lb is shutting down\n".to_owned());
    cmds.send(make(tx)).await.map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

/// Runs a command that changes state: "ok", or the error with its status code.
async fn change(cmds: &Commands, make: impl FnOnce(Reply<()>) -> Command) -> (StatusCode, String) {
    match ask(cmds, make).await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n".into()),
        Ok(Err(e)) => (AdminError::status(&e), format!("{e}\n")),
        Err(gone) => gone,
    }
}

async fn status(State(cmds): State<Commands>) -> Result<Json<Vec<VipStatus>>, (StatusCode, String)> {
    ask(&cmds, Command::Status).await.map(Json)
}

async fn handoff(State(cmds): State<Commands>) -> Result<Json<HandoffStatus>, (StatusCode, String)> {
    ask(&cmds, Command::Handoff).await.map(Json)
}

async fn site_status(State(cmds): State<Commands>) -> Result<Json<SiteStage>, (StatusCode, String)> {
    ask(&cmds, Command::Site).await.map(Json)
}

async fn reload(State(cmds): State<Commands>) -> (StatusCode, String) {
    change(&cmds, Command::Reload).await
}

/// A JSON body, or 400 naming where it is wrong ("real: invalid IP address syntax", "unknown
/// field `x`"). Its size and time are bounded where it is read (`crate::serve`).
struct Body<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = (StatusCode, String);

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| (e.status(), format!("{}\n", e.body_text())))?;
        let mut json = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut json).map_err(|e| {
            let at = e.path().to_string();
            let at = if at == "." { String::new() } else { format!("{at}: ") };
            (StatusCode::BAD_REQUEST, format!("bad request body: {at}{}\n", e.inner()))
        })?;
        json.end().map_err(|e| (StatusCode::BAD_REQUEST, format!("bad request body: {e}\n")))?;
        Ok(Body(value))
    }
}

async fn set_weight(cmds: Commands, req: RealRequest, weight: Option<u32>) -> (StatusCode, String) {
    change(&cmds, |reply| Command::SetWeight { vip: req.vip, real: req.real, weight, reply }).await
}

async fn add_vip(State(cmds): State<Commands>, Body(vip): Body<RawVip>) -> (StatusCode, String) {
    change(&cmds, |reply| Command::AddVip { vip: Box::new(vip), reply }).await
}

async fn remove_vip(State(cmds): State<Commands>, Body(v): Body<VipName>) -> (StatusCode, String) {
    change(&cmds, |reply| Command::RemoveVip { name: v.name, reply }).await
}

async fn site(cmds: Commands, drained: bool) -> (StatusCode, String) {
    change(&cmds, |reply| Command::SiteDrain { drained, reply }).await
}

/// A scrape: the loop hands over its state; the counter maps are read and the text written
/// here, on a blocking thread, so the loop never waits on either. OpenMetrics when the scraper
/// asks for it (Prometheus does), else the classic text format.
async fn metrics(
    State((cmds, counters, api)): State<(Commands, Arc<Counters>, Arc<ApiCounters>)>,
    headers: axum::http::HeaderMap,
) -> Result<Response, (StatusCode, String)> {
    let openmetrics = headers.get_all(header::ACCEPT).iter().any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
    let snapshot = ask(&cmds, Command::Metrics).await?;
    let text = tokio::task::spawn_blocking(move || crate::metrics::render(&counters, &snapshot, &api))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering metrics: {e}\n")))?;
    Ok(if openmetrics {
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
    } else {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::metrics::classic_text(&text)).into_response()
    })
}

/// The live maps, shared by the flow handlers: listings read them together, a purge takes
/// them whole while it deletes.
type Live = Arc<std::sync::RwLock<LiveMaps>>;

/// What the flow and doctor handlers read besides asking the loop.
#[derive(Clone)]
struct Readers {
    cmds: Commands,
    live: Live,
    counters: Arc<Counters>,
    /// `[limits] flows_listed`.
    flows_listed: u32,
    /// `[limits] doctor_calls`: a permit per `/doctor` being answered.
    doctor_calls: Arc<tokio::sync::Semaphore>,
    api_counters: Arc<ApiCounters>,
}

/// Runs `work` on a blocking thread: its answer, or 500 with the error.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::dataplane::DataplaneError> + Send + 'static,
) -> Result<T, (StatusCode, String)> {
    let internal = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| internal(e.to_string()))?
        .map_err(|e| internal(format!("{:#}", anyhow::Error::from(e))))
}

/// Runs `work` on the live maps (shared) on a blocking thread, with the loop's status for names.
async fn reading_live_maps<T: Send + 'static>(
    Readers { cmds, live, .. }: &Readers,
    work: impl FnOnce(&LiveMaps, &[VipStatus]) -> Result<T, crate::dataplane::DataplaneError> + Send + 'static,
) -> Result<Json<T>, (StatusCode, String)> {
    let status = ask(cmds, Command::Status).await?;
    let live = live.clone();
    blocking(move || work(&live.read().unwrap_or_else(|poisoned| poisoned.into_inner()), &status)).await.map(Json)
}

async fn flow(State(r): State<Readers>, Query(q): Query<FlowQuery>) -> Result<Json<FlowReport>, (StatusCode, String)> {
    let bgp = ask(&r.cmds, Command::Site).await? != SiteStage::NoBgp;
    reading_live_maps(&r, move |maps, status| flow::explain(maps, status, bgp, q)).await
}

async fn flows(State(r): State<Readers>, Query(f): Query<FlowFilter>) -> Result<Json<FlowList>, (StatusCode, String)> {
    let most = r.flows_listed as usize;
    if f.limit.is_some_and(|l| l > most) {
        return Err((StatusCode::BAD_REQUEST, format!("at most {most} entries in one answer ([limits] flows_listed)\n")));
    }
    let f = FlowFilter { limit: Some(f.limit.unwrap_or(flow::DEFAULT_LIMIT).min(most)), ..f };
    reading_live_maps(&r, move |maps, status| flow::list(maps, status, &f)).await
}

async fn purge(State(r): State<Readers>, Body(f): Body<FlowFilter>) -> Result<Json<Purged>, (StatusCode, String)> {
    if f.real.is_none() {
        return Err((StatusCode::BAD_REQUEST, "a purge needs the real whose entries go (\"real\")\n".into()));
    }
    let status = ask(&r.cmds, Command::Status).await?;
    let live = r.live.clone();
    blocking(move || flow::purge(&mut live.write().unwrap_or_else(|poisoned| poisoned.into_inner()), &status, &f)).await.map(Json)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DoctorQuery {
    /// How long to sample the counters (default 2000, at most `doctor::MAX_WINDOW_MS`).
    window_ms: Option<u64>,
}

/// `lb doctor`: the loop's view, then the counters sampled over the window on a blocking thread.
async fn doctor(
    State(r): State<Readers>,
    Query(q): Query<DoctorQuery>,
) -> Result<Json<crate::operator::doctor::Report>, (StatusCode, String)> {
    let window = std::time::Duration::from_millis(q.window_ms.unwrap_or(2000).min(crate::operator::doctor::MAX_WINDOW_MS));
    // Each call holds a blocking thread for its window: only `doctor_calls` at once.
    let Ok(_permit) = r.doctor_calls.clone().try_acquire_owned() else {
        r.api_counters.doctor_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            "another lb doctor is sampling: try again when it is done ([limits] doctor_calls)\n".into(),
        ));
    };
    let inputs = ask(&r.cmds, Command::Doctor).await?;
    let (sampled, inputs) =
        blocking(move || crate::operator::evidence::sample(&r.counters, &r.live, window, &inputs).map(|s| (s, inputs))).await?;
    let findings = crate::operator::doctor::diagnose(&inputs.view, &sampled);
    Ok(Json(crate::operator::doctor::Report { findings, window_ms: window.as_millis() as u64 }))
}

fn admin_router(readers: Readers) -> Router {
    let cmds = readers.cmds.clone();
    let readers = Router::new()
        .route("/flow", get(flow))
        .route("/flows", get(flows))
        .route("/flows/purge", post(purge))
        .route("/doctor", get(doctor))
        .with_state(readers);
    Router::new()
        .route("/status", get(status))
        .route("/handoff", get(handoff))
        .route("/site", get(site_status))
        .route("/reload", post(reload))
        .route("/vip/add", post(add_vip))
        .route("/site/drain", post(|State(c): State<Commands>| site(c, true)))
        .route("/site/undrain", post(|State(c): State<Commands>| site(c, false)))
        .route("/vip/remove", post(remove_vip))
        .route("/real/drain", post(|State(c): State<Commands>, Body(r): Body<RealRequest>| set_weight(c, r, Some(0))))
        .route("/real/enable", post(|State(c): State<Commands>, Body(r): Body<RealRequest>| set_weight(c, r, None)))
        .route(
            "/real/set-weight",
            post(|State(c): State<Commands>, Body(r): Body<RealRequest>| async move {
                match r.weight {
                    Some(w) => set_weight(c, r, Some(w)).await,
                    None => (StatusCode::BAD_REQUEST, "weight missing\n".into()),
                }
            }),
        )
        .with_state(cmds)
        .merge(readers)
}

/// Who may use the API over TCP: token holders; without a token, reading from loopback.
#[derive(Clone)]
struct TcpGuard {
    token: Option<Arc<str>>,
    loopback: bool,
}

async fn guard(State(g): State<TcpGuard>, req: Request, next: Next) -> Response {
    let presented = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let holds_token = match (&g.token, presented) {
        (Some(token), Some(presented)) => same_secret(token.as_bytes(), presented.trim().as_bytes()),
        _ => false,
    };
    let reading = req.method() == Method::GET;
    if holds_token || (reading && g.loopback) {
        return next.run(req).await;
    }
    let why = if g.token.is_none() {
        "changes over TCP need [api] token_file; or use the admin socket\n"
    } else {
        "missing or wrong bearer token\n"
    };
    (StatusCode::UNAUTHORIZED, why).into_response()
}

/// Compares without stopping at the first difference (no timing hint of a prefix).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Binds the admin socket: mode 0600, or 0660 for `group`. A socket file left by an `lb` that
/// is gone is replaced; one that answers belongs to a running `lb`, and is left alone.
fn bind_socket(path: &Path, group: Option<&str>) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another lb answers on the admin socket {}: is this instance running already?", path.display());
    }
    let _ = std::fs::remove_file(path);
    // Created with the process umask (0022 leaves no write permission, so no one else can
    // connect), then narrowed.
    let listener = tokio::net::UnixListener::bind(path).with_context(|| format!("binding the admin socket {}", path.display()))?;
    let mode = match group {
        Some(name) => {
            std::os::unix::fs::chown(path, None, Some(group_id(name)?)).with_context(|| format!("chown {}", path.display()))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

fn group_id(name: &str) -> Result<u32> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let c = std::ffi::CString::new(name).context("a group name with a NUL byte")?;
    // SAFETY: `c` is NUL-terminated and outlives the call; the result is null or points to
    // libc's static entry, read at once (at start, before anything else looks groups up).
    let entry = unsafe { libc::getgrnam(c.as_ptr()) };
    if entry.is_null() {
        bail!("no group {name:?} ([api] group)");
    }
    // SAFETY: not null, so a valid `group` entry.
    Ok(unsafe { (*entry).gr_gid })
}

/// The API's listeners, bound and the token read, not serving yet.
pub struct Bound {
    socket: tokio::net::UnixListener,
    tcp: Option<(tokio::net::TcpListener, TcpGuard)>,
    metrics: tokio::net::TcpListener,
}

/// Binds every listener and reads the token: run before `lb run` touches the data plane, so a
/// second `lb` of a running instance, a bad address or a bad token file change nothing.
pub async fn bind(api: &Api, metrics_addr: SocketAddr) -> Result<Bound> {
    let socket = bind_socket(&api.socket, api.group.as_deref())?;
    let tcp = match api.listen {
        Some(addr) => {
            let token = api.token_file.as_deref().map(crate::config::read_token).transpose()?;
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the admin API on {addr}"))?;
            Some((listener, TcpGuard { token, loopback: addr.ip().is_loopback() }))
        }
        None => None,
    };
    let metrics = tokio::net::TcpListener::bind(metrics_addr).await.with_context(|| format!("binding metrics on {metrics_addr}"))?;
    Ok(Bound { socket, tcp, metrics })
}

impl Bound {
    /// Serves in the background, each listener under `limits`.
    pub fn serve(self, cmds: Commands, counters: Arc<Counters>, live: LiveMaps, limits: &Limits) {
        let [tcp, socket, metrics_counters] = [(); 3].map(|()| Arc::new(ListenerCounters::default()));
        let listeners = vec![("api_tcp", tcp.clone()), ("api_socket", socket.clone()), ("metrics", metrics_counters.clone())];
        let api_counters = Arc::new(ApiCounters { listeners, doctor_refused: Default::default() });
        let router = admin_router(Readers {
            cmds: cmds.clone(),
            live: Arc::new(std::sync::RwLock::new(live)),
            counters: counters.clone(),
            flows_listed: limits.flows_listed,
            doctor_calls: Arc::new(tokio::sync::Semaphore::new(limits.doctor_calls)),
            api_counters: api_counters.clone(),
        });
        if let Some((listener, guard_state)) = self.tcp {
            let guarded = router.clone().layer(middleware::from_fn_with_state(guard_state, guard));
            tokio::spawn(serve::serve(listener, guarded, limits.listener, tcp));
        }
        tokio::spawn(serve::serve(self.socket, router, limits.listener, socket));
        let metrics_router = Router::new().route("/metrics", get(metrics)).with_state((cmds, counters, api_counters));
        tokio::spawn(serve::serve(self.metrics, metrics_router, limits.listener, metrics_counters));
    }
}
