//! The HTTP server every listener runs: gRPC over HTTP/2, and HTTP/1.1 for `/health`,
//! `/metrics` and the other plain endpoints, on connections accepted by the caller.
//!
//! This is hyper's automatic HTTP/1-or-2 connection with the settings etcd's gRPC server
//! has (see the constants), serving an axum router. Each connection is one task; each
//! HTTP/2 stream is another, spawned by the connection. Both kinds are [`Roaming`] tasks
//! tied to the connection's [`ConnectionLane`]: once a request tells which group the
//! connection serves, its tasks run on the CPU lane that group's weight picks
//! (`node/lanes.rs`), and move when it changes. A connection that names no group (peers,
//! metrics scrapes) stays on the runtime that accepted it.
//!
//! Every request carries, in its extensions, the connection's identity (`Connected`: the
//! peer address, or the TLS identity `tls::TlsConnectInfo`) and its [`ConnectionLane`].

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::node::lanes::{ConnectionLane, Roaming, RoamingExecutor};

/// How often the server pings an idle HTTP/2 connection, and how long it waits for the
/// answer before closing it: etcd's `--grpc-keepalive-interval` (2 h) and
/// `--grpc-keepalive-timeout` (20 s) defaults.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2 * 60 * 60);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 streams one connection may carry at once. kube-apiserver multiplexes every watch
/// of a resource type on one connection, so the limit is etcd's (grpc-go's `math.MaxUint32`),
/// not hyper's default of 200; each stream is bounded on its own (see `watch.rs`).
const HTTP2_STREAMS_PER_CONNECTION_MAX: u32 = u32::MAX;
/// How long the accept loop waits after a failed accept (out of file descriptors, say)
/// before it tries again, rather than spinning on the error.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on every connection `incoming` yields, until it ends.
///
/// Client pings: hyper's HTTP/2 server enforces no minimum interval between pings and no
/// "pings only with active streams" rule, so it accepts what etcd's `--grpc-keepalive-min-time`
/// (5 s) and permit-without-stream policy accept, and more.
pub async fn serve<I, IO>(incoming: I, router: axum::Router)
where
    I: Stream<Item = Result<IO, std::io::Error>>,
    IO: AsyncRead + AsyncWrite + Connected + Send + Unpin + 'static,
{
    // The accepting runtime is the normal lane: connections come back to it.
    let normal = tokio::runtime::Handle::current();
    let mut incoming = std::pin::pin!(incoming);
    while let Some(io) = incoming.next().await {
        let io = match io {
            Ok(io) => io,
            Err(e) => {
                warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let lane = Arc::new(ConnectionLane::new(normal.clone()));
        let connection = serve_connection(io, router.clone(), lane.clone());
        drop(tokio::spawn(Roaming::new(Box::pin(connection), lane)));
    }
}

/// One connection, from its first byte to its close.
async fn serve_connection<IO>(io: IO, router: axum::Router, lane: Arc<ConnectionLane>)
where
    IO: AsyncRead + AsyncWrite + Connected + Send + Unpin + 'static,
{
    let info = io.connect_info();
    let executor = RoamingExecutor(lane.clone());
    let service = tower::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(info.clone());
        request.extensions_mut().insert(lane.clone());
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(executor);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(HTTP2_STREAMS_PER_CONNECTION_MAX);
    // hyper enforces its HTTP/1 header read timeout (30 s) only with a timer.
    builder.http1().timer(TokioTimer::new());
    let service = hyper_util::service::TowerToHyperService::new(service);
    if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(io), service).await {
        debug!(error = %e, "connection closed with an error");
    }
}
