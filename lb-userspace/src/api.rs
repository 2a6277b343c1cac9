//! The admin API (HTTP/JSON, loopback by default) and the metrics endpoint. Handlers only pass
//! commands to the loop that owns the state and return its answer.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use axum::{
    extract::State,
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    admin::{AdminError, Command, HandoffStatus, RealRequest, Reply, VipName},
    config::RawVip,
    reconcile::VipStatus,
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

async fn reload(State(cmds): State<Commands>) -> (StatusCode, String) {
    change(&cmds, Command::Reload).await
}

async fn set_weight(cmds: Commands, req: RealRequest, weight: Option<u32>) -> (StatusCode, String) {
    change(&cmds, |reply| Command::SetWeight { vip: req.vip, real: req.real, weight, reply }).await
}

async fn add_vip(State(cmds): State<Commands>, Json(vip): Json<RawVip>) -> (StatusCode, String) {
    change(&cmds, |reply| Command::AddVip { vip: Box::new(vip), reply }).await
}

async fn remove_vip(State(cmds): State<Commands>, Json(v): Json<VipName>) -> (StatusCode, String) {
    change(&cmds, |reply| Command::RemoveVip { name: v.name, reply }).await
}

async fn site(cmds: Commands, drained: bool) -> (StatusCode, String) {
    change(&cmds, |reply| Command::SiteDrain { drained, reply }).await
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
