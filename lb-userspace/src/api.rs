//! The admin API (HTTP/JSON, loopback by default) and the metrics endpoint. Handlers only pass
//! commands to the loop that owns the state and return its answer.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, Result};
use axum::{
    extract::State,
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{
    config::RawVip,
    daemon::{Command, HandoffStatus},
    reconcile::VipStatus,
};

type Commands = mpsc::Sender<Command>;

/// Sends a command built around a reply channel and waits for the answer.
async fn ask<T>(cmds: &Commands, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, (StatusCode, String)> {
    let (tx, rx) = oneshot::channel();
    let gone = || (StatusCode::SERVICE_UNAVAILABLE, "lb is shutting down".to_owned());
    cmds.send(make(tx)).await.map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

fn outcome(r: Result<(), String>) -> (StatusCode, String) {
    match r {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// Body of the real commands.
#[derive(Debug, Serialize, Deserialize)]
pub struct RealRequest {
    pub vip: String,
    pub real: IpAddr,
    /// For set-weight.
    pub weight: Option<u32>,
}

async fn status(State(cmds): State<Commands>) -> Result<Json<Vec<VipStatus>>, (StatusCode, String)> {
    ask(&cmds, Command::Status).await.map(Json)
}

async fn handoff(State(cmds): State<Commands>) -> Result<Json<HandoffStatus>, (StatusCode, String)> {
    ask(&cmds, Command::Handoff).await.map(Json)
}

async fn reload(State(cmds): State<Commands>) -> (StatusCode, String) {
    ask(&cmds, Command::Reload).await.map_or_else(|e| e, outcome)
}

async fn set_weight(cmds: Commands, req: RealRequest, weight: Option<u32>) -> (StatusCode, String) {
    ask(&cmds, |reply| Command::SetWeight { vip: req.vip, real: req.real, weight, reply }).await.map_or_else(|e| e, outcome)
}

/// Body of `/vip/remove`.
#[derive(Debug, Serialize, Deserialize)]
pub struct VipName {
    pub name: String,
}

async fn add_vip(State(cmds): State<Commands>, Json(vip): Json<RawVip>) -> (StatusCode, String) {
    ask(&cmds, |reply| Command::AddVip { vip: Box::new(vip), reply }).await.map_or_else(|e| e, outcome)
}

async fn remove_vip(State(cmds): State<Commands>, Json(v): Json<VipName>) -> (StatusCode, String) {
    ask(&cmds, |reply| Command::RemoveVip { name: v.name, reply }).await.map_or_else(|e| e, outcome)
}

async fn site(cmds: Commands, drained: bool) -> (StatusCode, String) {
    ask(&cmds, |reply| Command::SiteDrain { drained, reply }).await.map_or_else(|e| e, outcome)
}

async fn metrics(State(cmds): State<Commands>) -> Result<String, (StatusCode, String)> {
    ask(&cmds, Command::Metrics).await
}

/// Binds both listeners (so a bad address fails `lb run` at once) and serves in the background.
pub async fn serve(api: SocketAddr, metrics_addr: SocketAddr, cmds: Commands) -> Result<()> {
    let api_router = Router::new()
        .route("/status", get(status))
        .route("/handoff", get(handoff))
        .route("/reload", post(reload))
        .route("/vip/add", post(add_vip))
        .route("/site/drain", post(|State(c): State<Commands>| site(c, true)))
        .route("/site/undrain", post(|State(c): State<Commands>| site(c, false)))
        .route("/vip/remove", post(remove_vip))
        .route("/real/drain", post(|State(c): State<Commands>, Json(r): Json<RealRequest>| set_weight(c, r, Some(0))))
        .route("/real/enable", post(|State(c): State<Commands>, Json(r): Json<RealRequest>| set_weight(c, r, None)))
        .route(
            "/real/set-weight",
            post(|State(c): State<Commands>, Json(r): Json<RealRequest>| async move {
                match r.weight {
                    Some(w) => set_weight(c, r, Some(w)).await,
                    None => (StatusCode::BAD_REQUEST, "weight missing\n".into()),
                }
            }),
        )
        .with_state(cmds.clone());
    let metrics_router = Router::new().route("/metrics", get(metrics)).with_state(cmds);
    let api_listener = tokio::net::TcpListener::bind(api).await.with_context(|| format!("binding the admin API on {api}"))?;
    let metrics_listener =
        tokio::net::TcpListener::bind(metrics_addr).await.with_context(|| format!("binding metrics on {metrics_addr}"))?;
    tokio::spawn(async move { axum::serve(api_listener, api_router).await });
    tokio::spawn(async move { axum::serve(metrics_listener, metrics_router).await });
    Ok(())
}
