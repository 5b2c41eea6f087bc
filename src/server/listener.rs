//! The connection layer: accepts TCP connections up to a cap and serves them through hyper with
//! deadlines that axum's own `serve` does not set (it gives hyper no timer, so hyper's header
//! timeout never fires), and ends them within a bounded time at shutdown.
//!
//! - At most `max_connections` connections are open; a connection beyond that is answered 503
//!   (`too_many_connections`, `Retry-After`) at once and closed, never left waiting.
//! - A connection must deliver each request's headers within `header_read_timeout`, and an idle
//!   keep-alive connection is closed after the same time (hyper runs one timer for both): slow
//!   or silent sockets cannot pile up.
//! - Request heads over `max_header_bytes` are answered 431 by hyper.
//! - On shutdown, accepting stops at once, connections finish their in-flight requests within the
//!   grace period (idle ones close at once), and whatever is still open afterwards is cut.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// The HTTP/2 connection preface: the bytes hyper looks for to choose HTTP/2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits, at most `limit`, until `stream` holds enough bytes for hyper to choose the protocol:
/// any bytes that are not a prefix of the HTTP/2 preface, or the whole preface. False when the
/// client sent nothing useful in time or closed.
async fn protocol_readable(stream: &tokio::net::TcpStream, limit: Duration) -> bool {
    let wait = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = stream.peek(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return false;
            }
            if n == H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] {
                return true;
            }
            // A prefix of the HTTP/2 preface: wait for the rest.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(limit, wait).await.unwrap_or(false)
}

/// The body a connection beyond `max_connections` gets, with 503 and `Retry-After`.
const OVER_CAPACITY: &str = r#"{"error":{"code":"too_many_connections","message":"The server has reached its connection limit (server.max_connections); retry shortly","param":null,"type":"overloaded_error"}}"#;

/// Answers a connection over the cap with 503 without reading its request, and closes it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{OVER_CAPACITY}",
        OVER_CAPACITY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Smallest request-head buffer hyper accepts.
const MIN_HEADER_BYTES: usize = 8192;

/// Bounds on connections, from `[server]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time to deliver a request's headers; also how long an idle keep-alive connection lives.
    pub header_read_timeout: Duration,
    /// Largest request head (request line + headers), bytes; at least 8 KiB.
    pub max_header_bytes: usize,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// What happened to the connections at shutdown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open when the grace period ended, cut.
    pub cut: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets open
/// connections finish within the future `grace` returns (it resolves when the grace period
/// ends, after the caller has had a chance to end long responses itself), and cuts the rest.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
    grace: impl Future<Output = ()> + Send,
) -> Drained {
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
    builder.http2().timer(TokioTimer::new());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            // At the cap: answer at once rather than leave the client waiting in the backlog
            // for as long as the open connections last.
            connections.spawn(refuse(stream));
            continue;
        };
        let service = app
            .clone()
            .map_request(|req: Request<Incoming>| req.map(axum::body::Body::new));
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let first_bytes = limits.header_read_timeout;
        connections.spawn(async move {
            // hyper reads the first bytes to tell HTTP/1 from HTTP/2 with no deadline of its
            // own: a client that connects and sends nothing would hold the connection forever.
            if !protocol_readable(&stream, first_bytes).await {
                drop(permit);
                return;
            }
            let conn = builder
                .serve_connection_with_upgrades(
                    TokioIo::new(stream),
                    TowerToHyperService::new(service),
                )
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!("connection ended: {e}");
            }
            drop(permit);
        });
        // Reap finished connection tasks so the set does not grow with the server's lifetime.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let open_now = graceful.count();
    if open_now > 0 {
        tracing::info!(connections = open_now, "draining open connections");
    }
    tokio::select! {
        _ = graceful.shutdown() => {
            // Connections that never sent a byte are not watched: close them too.
            connections.abort_all();
            while connections.join_next().await.is_some() {}
            Drained::default()
        }
        _ = grace => {
            let cut = connections.len();
            connections.abort_all();
            while connections.join_next().await.is_some() {}
            if cut > 0 {
                tracing::warn!(connections = cut, "grace period over: closed connections still open");
            }
            Drained { cut }
        }
    }
}
