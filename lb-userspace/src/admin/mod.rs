//! The admin protocol: what the API and the CLI can ask of the loop that owns the state, the
//! request and reply types, and typed errors that map to HTTP status codes. `server` serves it
//! (and `/metrics`) over HTTP; the CLI's side is `cli::client`.

pub mod server;

use std::net::IpAddr;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::{
    config::RawVip,
    status::{HandoffStatus, SiteStage, VipStatus},
};

/// Why a command was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The request itself is wrong (a bad value, a config that does not validate): 400.
    #[error("{0}")]
    BadRequest(String),
    /// It names a VIP or real that does not exist: 404.
    #[error("{0}")]
    NotFound(String),
    /// It conflicts with the current state (a VIP that exists, no room left, no BGP): 409.
    #[error("{0}")]
    Conflict(String),
    /// The daemon could not carry it out (a map write, the journal): 500. The state before the
    /// command is kept unless the message says otherwise.
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::journal::NotSaved> for AdminError {
    fn from(e: crate::journal::NotSaved) -> Self {
        AdminError::Internal(e.to_string())
    }
}

pub type Reply<T> = oneshot::Sender<Result<T, AdminError>>;

/// Admin commands, answered by the loop that owns the state.
#[derive(Debug)]
pub enum Command {
    Status(oneshot::Sender<Vec<VipStatus>>),
    Handoff(oneshot::Sender<HandoffStatus>),
    /// Where the site's announcements stand.
    Site(oneshot::Sender<SiteStage>),
    /// The loop's part of `lb doctor`'s evidence.
    Doctor(oneshot::Sender<crate::operator::doctor::DoctorInputs>),
    /// The control plane's side of a scrape (the API reads the counters itself).
    Metrics(oneshot::Sender<crate::metrics::Snapshot>),
    Reload(Reply<()>),
    /// Set (Some) or clear (None) a real's runtime weight.
    SetWeight {
        vip: String,
        real: IpAddr,
        weight: Option<u32>,
        reply: Reply<()>,
    },
    AddVip {
        vip: Box<RawVip>,
        reply: Reply<()>,
    },
    /// Withdraw (true) or announce again (false) every VIP of this site.
    SiteDrain {
        drained: bool,
        reply: Reply<()>,
    },
    RemoveVip {
        name: String,
        reply: Reply<()>,
    },
}

/// Body of the real commands.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealRequest {
    pub vip: String,
    pub real: IpAddr,
    /// For set-weight.
    pub weight: Option<u32>,
}

/// Body of `/vip/remove`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipName {
    pub name: String,
}
