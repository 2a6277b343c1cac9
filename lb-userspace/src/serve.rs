//! Every HTTP listener (the admin socket, the admin TCP listener, metrics, `lb backend`'s
//! endpoint) is served here, under the same limits:
//! - a cap on open connections. At the cap, the connection idle the longest is closed to make
//!   room (a client that holds idle connections cannot lock out the next scrape); with every
//!   connection busy, the new one is closed;
//! - one timer for a slow or idle client: from connect, or from the last answer, the request's
//!   head and body must arrive within `request_timeout`;
//! - request bodies larger than `max_body` are refused (413).
//!
//! Each listener counts what it refused.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{body::Body, serve::Listener, Router};
use http_body_util::{BodyExt as _, Limited};
use hyper::{body::Incoming, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;
use tower_service::Service as _;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListenerLimits {
    pub max_connections: usize,
    pub request_timeout: Duration,
    pub max_body: usize,
}

/// Defaults of `[limits]` (lb) and `[backend.health]` (lb backend).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// What one listener did, for metrics.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// New connections closed because every open one was busy.
    pub refused: AtomicU64,
    /// Connections closed because the request did not arrive in time.
    pub timed_out: AtomicU64,
    /// Requests refused for a body over `max_body`.
    pub too_large: AtomicU64,
}

impl ListenerCounters {
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        [
            ("accepted", self.accepted.load(Relaxed)),
            ("evicted", self.evicted.load(Relaxed)),
            ("refused", self.refused.load(Relaxed)),
            ("timed_out", self.timed_out.load(Relaxed)),
            ("too_large", self.too_large.load(Relaxed)),
        ]
    }
}

/// Raises the open-file soft limit to the hard limit (no privilege needed), so that the caps
/// above bite before the process runs out of descriptors: systemd's soft limit is 1,024
/// unless the unit sets `LimitNOFILE`. Returns the new limit.
pub fn raise_descriptor_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid, writable rlimit for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid rlimit; the soft limit is not above the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// One open connection, as the cap sees it.
struct Open {
    /// Requests being answered: a busy connection is never closed to make room.
    busy: AtomicUsize,
    /// When it last finished an answer (or connected).
    idle_since: Mutex<Instant>,
}

struct Registry {
    next_id: u64,
    open: HashMap<u64, (Arc<Open>, oneshot::Sender<()>)>,
}

impl Registry {
    /// Closes the connection idle the longest; false when every one is busy.
    fn evict_idlest(&mut self) -> bool {
        let idlest = self
            .open
            .iter()
            .filter(|(_, (o, _))| o.busy.load(Relaxed) == 0)
            .min_by_key(|(_, (o, _))| *o.idle_since.lock().unwrap_or_else(|p| p.into_inner()))
            .map(|(id, _)| *id);
        match idlest.and_then(|id| self.open.remove(&id)) {
            Some((_, close)) => {
                let _ = close.send(());
                true
            }
            None => false,
        }
    }
}

/// Serves `app` on `listener` until the task is dropped.
pub async fn serve<L: Listener>(mut listener: L, app: Router, limits: ListenerLimits, counters: Arc<ListenerCounters>) {
    let registry = Arc::new(Mutex::new(Registry { next_id: 0, open: HashMap::new() }));
    loop {
        let (io, _) = listener.accept().await;
        counters.accepted.fetch_add(1, Relaxed);
        let (id, close) = {
            let mut reg = registry.lock().unwrap_or_else(|p| p.into_inner());
            if reg.open.len() >= limits.max_connections {
                if !reg.evict_idlest() {
                    counters.refused.fetch_add(1, Relaxed);
                    continue;
                }
                counters.evicted.fetch_add(1, Relaxed);
            }
            let open = Arc::new(Open { busy: AtomicUsize::new(0), idle_since: Mutex::new(Instant::now()) });
            let (close_tx, close_rx) = oneshot::channel();
            reg.next_id += 1;
            let id = reg.next_id;
            reg.open.insert(id, (open.clone(), close_tx));
            (id, (open, close_rx))
        };
        counters.open.fetch_add(1, Relaxed);
        let (registry, counters, app) = (registry.clone(), counters.clone(), app.clone());
        tokio::spawn(async move {
            let (open, close_rx) = close;
            connection(io, app, limits, open, close_rx, &counters).await;
            registry.lock().unwrap_or_else(|p| p.into_inner()).open.remove(&id);
            counters.open.fetch_sub(1, Relaxed);
        });
    }
}

/// One connection: HTTP/1 with keep-alive, until the client leaves, the timer fires, or the cap
/// closes it.
async fn connection<Io>(
    io: Io,
    app: Router,
    limits: ListenerLimits,
    open: Arc<Open>,
    close: oneshot::Receiver<()>,
    counters: &Arc<ListenerCounters>,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service_counters = counters.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (mut app, open, counters) = (app.clone(), open.clone(), service_counters.clone());
        async move {
            open.busy.fetch_add(1, Relaxed);
            let answer = match read_body(req, limits).await {
                Ok(req) => app.call(req).await.unwrap_or_else(|never: Infallible| match never {}),
                Err(status) => {
                    if status == StatusCode::PAYLOAD_TOO_LARGE {
                        counters.too_large.fetch_add(1, Relaxed);
                    }
                    plain(status)
                }
            };
            *open.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            open.busy.fetch_sub(1, Relaxed);
            Ok::<_, Infallible>(answer)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::select! {
        served = conn => {
            if served.is_err_and(|e| e.is_timeout()) {
                counters.timed_out.fetch_add(1, Relaxed);
            }
        }
        _ = close => {}
    }
}

/// The request with its whole body read, within the time and size limits: handlers never wait
/// on a slow client.
async fn read_body(req: Request<Incoming>, limits: ListenerLimits) -> Result<Request<Body>, StatusCode> {
    let (parts, body) = req.into_parts();
    let collected = tokio::time::timeout(limits.request_timeout, Limited::new(body, limits.max_body).collect())
        .await
        .map_err(|_| StatusCode::REQUEST_TIMEOUT)?
        .map_err(|e| if e.is::<http_body_util::LengthLimitError>() { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST })?;
    Ok(Request::from_parts(parts, Body::from(collected.to_bytes())))
}

fn plain(status: StatusCode) -> Response<Body> {
    let mut answer = Response::new(Body::from(format!("{status}\n")));
    *answer.status_mut() = status;
    answer
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    async fn start(limits: ListenerLimits) -> (std::net::SocketAddr, Arc<ListenerCounters>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(ListenerCounters::default());
        let app = Router::new()
            .route("/", axum::routing::get(|| async { "hello" }))
            .route("/echo", axum::routing::post(|body: String| async move { body }));
        tokio::spawn(serve(listener, app, limits, counters.clone()));
        (addr, counters)
    }

    async fn get(addr: std::net::SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    /// True when the server closed `s` (EOF or reset) within `within`.
    async fn closed(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout(within, s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    const LIMITS: ListenerLimits = ListenerLimits { max_connections: 8, request_timeout: Duration::from_millis(300), max_body: 16 };

    #[tokio::test]
    async fn idle_connections_are_evicted_so_a_new_client_is_served() {
        let (addr, counters) = start(LIMITS).await;
        let mut idle = Vec::new();
        for _ in 0..20 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let answer = get(addr).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"), "{answer}");
        assert!(counters.evicted.load(Relaxed) >= 13, "{counters:?}");
        assert!(counters.open.load(Relaxed) <= 8, "{counters:?}");
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_or_half_a_head_is_closed_after_the_timeout() {
        let (addr, counters) = start(LIMITS).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost:").await.unwrap();
        assert!(!closed(&mut silent, Duration::from_millis(100)).await, "closed before the timeout");
        assert!(closed(&mut silent, Duration::from_secs(2)).await);
        assert!(closed(&mut slow, Duration::from_secs(2)).await);
        // A kept-alive connection is closed once idle for the timeout after its answer.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        assert!(kept.read(&mut buf).await.unwrap() > 0);
        assert!(closed(&mut kept, Duration::from_secs(2)).await);
        assert_eq!(counters.timed_out.load(Relaxed), 3, "{counters:?}");
    }

    #[tokio::test]
    async fn a_slow_or_large_body_is_refused() {
        let (addr, counters) = start(LIMITS).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789012345678901234567890123456789")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut answer)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert_eq!(counters.too_large.load(Relaxed), 1);
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n01").await.unwrap();
        let mut answer = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut answer)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }

    #[tokio::test]
    async fn with_every_connection_busy_a_new_one_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(ListenerCounters::default());
        let app = Router::new().route("/slow", axum::routing::get(|| tokio::time::sleep(Duration::from_secs(3))));
        let limits = ListenerLimits { max_connections: 2, ..LIMITS };
        tokio::spawn(serve(listener, app, limits, counters.clone()));
        let mut busy = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
            busy.push(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut third, Duration::from_secs(1)).await);
        assert_eq!(counters.refused.load(Relaxed), 1, "{counters:?}");
        assert_eq!(counters.evicted.load(Relaxed), 0);
    }
}
