//! One HTTP client for everything `lb` asks over HTTP: the CLI's requests to the admin API (over
//! the admin socket or TCP) and the health checks' GETs. Built on hyper's connection-level
//! client: one request per connection, bounded in time and in the size of the answer.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{client::conn::http1, Request};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpStream, UnixStream},
};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// A request: method, path (with its query), extra headers, body, and how long the whole
/// exchange and how large the answer may be.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<String>,
    pub limit: Duration,
    pub max_body: usize,
}

impl<'a> Call<'a> {
    /// `method path` with no body, 30 s and 1 GiB at most: `lb flows` with a large `--limit`
    /// on a full table answers hundreds of MB (the operator test lists 999,000 entries).
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Self { method, path, headers: Vec::new(), body: None, limit: Duration::from_secs(30), max_body: 1 << 30 }
    }
}

/// The answer: its status code and its body (lossy UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connecting to {to}")]
    Connect {
        to: Endpoint,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from {to} within {limit:?}")]
    Timeout { to: Endpoint, limit: Duration },
    #[error("exchange with {to}")]
    Exchange {
        to: Endpoint,
        #[source]
        source: hyper::Error,
    },
    #[error("bad request to {to}")]
    Request {
        to: Endpoint,
        #[source]
        source: hyper::http::Error,
    },
    #[error("answer from {to} over {max} bytes or cut short")]
    Body { to: Endpoint, max: usize },
}

/// Sends `call` to `to` on a connection of its own and reads the whole answer.
pub async fn request(to: &Endpoint, call: Call<'_>) -> Result<Response, HttpError> {
    let limit = call.limit;
    tokio::time::timeout(limit, async {
        match to {
            Endpoint::Unix(path) => {
                let conn = UnixStream::connect(path).await.map_err(|source| HttpError::Connect { to: to.clone(), source })?;
                exchange(to, conn, call).await
            }
            Endpoint::Tcp(addr) => {
                let conn = TcpStream::connect(addr).await.map_err(|source| HttpError::Connect { to: to.clone(), source })?;
                exchange(to, conn, call).await
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(HttpError::Timeout { to: to.clone(), limit }))
}

/// The same, for a caller with no runtime (the CLI).
pub fn request_blocking(to: &Endpoint, call: Call<'_>) -> Result<Response, HttpError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| HttpError::Connect { to: to.clone(), source })?;
    runtime.block_on(request(to, call))
}

async fn exchange(
    to: &Endpoint,
    conn: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    call: Call<'_>,
) -> Result<Response, HttpError> {
    let exchange_err = |source| HttpError::Exchange { to: to.clone(), source };
    let (mut sender, connection) = http1::handshake(TokioIo::new(conn)).await.map_err(exchange_err)?;
    // The connection task ends with the exchange (the server closes, or the sender is dropped).
    tokio::spawn(connection);
    let host = match to {
        Endpoint::Unix(_) => "localhost".to_owned(),
        Endpoint::Tcp(addr) => addr.to_string(),
    };
    let mut request = Request::builder().method(call.method).uri(call.path).header(hyper::header::HOST, host);
    if call.body.is_some() {
        request = request.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    for (name, value) in &call.headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(call.body.unwrap_or_default())))
        .map_err(|source| HttpError::Request { to: to.clone(), source })?;
    let response = sender.send_request(request).await.map_err(exchange_err)?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), call.max_body)
        .collect()
        .await
        .map_err(|_| HttpError::Body { to: to.clone(), max: call.max_body })?
        .to_bytes();
    Ok(Response { status, body: String::from_utf8_lossy(&body).into_owned() })
}
