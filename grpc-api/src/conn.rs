//! The HTTP server every listener runs: gRPC over HTTP/2, and HTTP/1.1 for `/health`,
//! `/metrics` and the other plain endpoints, on connections accepted by the caller.
//!
//! This is hyper's automatic HTTP/1-or-2 connection with the settings etcd's gRPC server
//! has (see the constants), serving an [`HttpService`]. Each connection is one task; each
//! HTTP/2 stream is another, spawned by the connection. Both kinds are [`Roaming`] tasks
//! tied to the connection's [`ConnectionLane`]: once a request tells which group the
//! connection serves, its tasks run on the CPU lane that group's weight picks
//! (`node/lanes.rs`), and move when it changes. A connection that names no group (peers,
//! metrics scrapes) stays on the runtime that accepted it.
//!
//! A connection gathers each burst of writes into as few syscalls as it can
//! ([`CoalescedWrites`]), so the answers of the streams that are ready in the same turn of
//! the runtime leave together.
//!
//! Every request carries, in its extensions, the connection's identity (`Connected`: the
//! peer address, or the TLS identity `tls::TlsConnectInfo`) and its [`ConnectionLane`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::node::lanes::{ConnectionLane, Roaming, RoamingExecutor};

/// How often the server pings an idle HTTP/2 connection, and how long it waits for the
/// answer before closing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Keepalive {
    /// grpc-go's server defaults, which etcd's `--grpc-keepalive-interval` (2 h) and
    /// `--grpc-keepalive-timeout` (20 s) also default to; the peer and metrics listeners
    /// always use them.
    pub const DEFAULT: Keepalive =
        Keepalive { interval: Duration::from_secs(2 * 60 * 60), timeout: Duration::from_secs(20) };

    /// The client listeners' pings as etcd sets them from its two flags: both positive are
    /// used; otherwise etcd passes no keepalive parameters to grpc-go, whose defaults apply.
    pub fn from_flags(interval: Duration, timeout: Duration) -> Keepalive {
        if interval.is_zero() || timeout.is_zero() {
            Keepalive::DEFAULT
        } else {
            Keepalive { interval, timeout }
        }
    }
}

/// HTTP/2 streams one connection may carry at once. kube-apiserver multiplexes every watch
/// of a resource type on one connection, so the limit is etcd's (grpc-go's `math.MaxUint32`),
/// not hyper's default of 200; each stream is bounded on its own (see `watch.rs`).
const HTTP2_STREAMS_PER_CONNECTION_MAX: u32 = u32::MAX;
/// How long the accept loop waits after a failed accept (out of file descriptors, say)
/// before it tries again, rather than spinning on the error.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// What a listener serves: a router (the peer port), a group's client service (a tenant's
/// port), or the tenant dispatch (the shared client port), served directly rather than behind
/// a router that would only forward every request to it.
pub trait HttpService:
    tower::Service<
        http::Request<axum::body::Body>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl HttpService for axum::Router {}
impl HttpService for crate::node::tenants::Dispatch {}
impl HttpService for crate::node::tenants::ClientService {}

/// Serves `router` on every connection `incoming` yields, until it ends.
///
/// Client pings: hyper's HTTP/2 server enforces no minimum interval between pings and no
/// "pings only with active streams" rule, so it accepts what etcd's `--grpc-keepalive-min-time`
/// (5 s) and permit-without-stream policy accept, and more.
pub async fn serve<I, IO, S>(incoming: I, router: S, keepalive: Keepalive)
where
    S: HttpService,
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
        let connection = serve_connection(io, router.clone(), lane.clone(), keepalive);
        drop(tokio::spawn(Roaming::new(Box::pin(connection), lane)));
    }
}

/// One connection, from its first byte to its close.
async fn serve_connection<IO, S>(io: IO, router: S, lane: Arc<ConnectionLane>, keepalive: Keepalive)
where
    S: HttpService,
    IO: AsyncRead + AsyncWrite + Connected + Send + Unpin + 'static,
{
    let info = io.connect_info();
    let socket = CoalescedWrites::new(io, Arc::clone(&lane));
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
        .keep_alive_interval(keepalive.interval)
        .keep_alive_timeout(keepalive.timeout)
        .max_concurrent_streams(HTTP2_STREAMS_PER_CONNECTION_MAX)
        // No `Date` on HTTP/2 answers: grpc-go sends none with gRPC answers, and it cost each
        // call about 2,400 instructions (2.5 % of a put). The HTTP endpoints add their own
        // (`http.rs`).
        .auto_date_header(false);
    // hyper enforces its HTTP/1 header read timeout (30 s) only with a timer.
    builder.http1().timer(TokioTimer::new());
    let service = hyper_util::service::TowerToHyperService::new(service);
    if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(socket), service).await {
        debug!(error = %e, "connection closed with an error");
    }
}

/// A connection's socket that gathers each burst of writes (up to hyper's flush) into as few
/// syscalls as it can:
///
/// - the first write of a burst, when short, is put off by one turn of the runtime: the write
///   returns `Pending` after waking its own task, which the runtime runs again after the tasks
///   already queued. Each HTTP/2 stream is its own task, and a stream that answers wakes the
///   connection's task, which tokio runs next (its LIFO slot); so a batch of streams that
///   answered together (one read round, one apply) used to leave in a `writev` each. Put off
///   by one turn, the write carries every answer the streams queued in that turn;
/// - writes are held while they total at most [`SMALL_WRITE_BYTES`] and leave with the next
///   write that would overflow them, or at the flush;
/// - the socket reports no vectored writes, so h2 copies frames of up to 1 KiB into its buffer
///   (with vectored writes it chains every DATA payload over 256 bytes, and each ends a write).
///
/// Measured on one member with 100 clients of `range` (linearizable): 1.73 `writev` per answer
/// before, ~0.25 `send` after, and 40 to 70 % more ranges per second.
///
/// A connection with a watch stream open never waits: there the turn, taken behind every task
/// queued (a saturated fan-out queues many), slowed the puts sharing the connections of
/// `watch-sat` and with them the events delivered. The puts of that workload are still ~10 %
/// slower than without coalescing (BENCHMARKS.md).
struct CoalescedWrites<IO> {
    io: IO,
    /// The connection's state; while a watch stream is open on it, no write waits.
    lane: Arc<ConnectionLane>,
    /// The next write starts a burst: it yields once first.
    armed: bool,
    /// Bytes of writes accepted and not yet sent (at most [`SMALL_WRITE_BYTES`]), sent with
    /// the next write that would overflow them, or at the flush. A large DATA frame reaches the
    /// socket as h2's buffer (the frames before it and its 9-byte header), then its payload;
    /// held, the buffer leaves with the payload in one `writev` and not as a packet of its own.
    held: Vec<u8>,
}

/// Writes are held while they total at most this (h2's own write buffer is 16 KiB).
const SMALL_WRITE_BYTES: usize = 16 << 10;

/// A burst whose first write is at least this long goes at once: it is a large answer (a
/// list, a watch response) that waiting for more small answers would not make cheaper.
const YIELD_BELOW_BYTES: usize = 4096;

impl<IO> CoalescedWrites<IO> {
    fn new(io: IO, lane: Arc<ConnectionLane>) -> Self {
        // `held` grows on a connection's first burst: an idle connection holds no buffer.
        CoalescedWrites { io, lane, armed: true, held: Vec::new() }
    }

    /// `Ready` when a write of `len` bytes may go now; otherwise yields once.
    fn turn(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<()> {
        if std::mem::take(&mut self.armed) && len < YIELD_BELOW_BYTES && !self.lane.has_watches() {
            cx.waker().wake_by_ref();
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

impl<IO: AsyncWrite + Unpin> CoalescedWrites<IO> {
    /// Sends the held bytes.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.held.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for CoalescedWrites<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.turn(cx, this.held.len() + buf.len()));
        if this.held.len() + buf.len() <= SMALL_WRITE_BYTES {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        while !this.held.is_empty() {
            let slices = [std::io::IoSlice::new(&this.held), std::io::IoSlice::new(buf)];
            let n = std::task::ready!(Pin::new(&mut this.io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            if n >= this.held.len() {
                let of_buf = n - this.held.len();
                this.held.clear();
                if of_buf > 0 {
                    return Poll::Ready(Ok(of_buf));
                }
            } else {
                this.held.drain(..n);
            }
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_send_held(cx))?;
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        if flushed.is_ready() {
            // The burst is over: the next write waits for one turn again.
            self.armed = true;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_send_held(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn keepalive_flags_at_zero_leave_grpc_gos_defaults() {
        let (zero, s) = (Duration::ZERO, Duration::from_secs);
        assert_eq!(Keepalive::from_flags(zero, s(1)), Keepalive::DEFAULT);
        assert_eq!(Keepalive::from_flags(s(1), zero), Keepalive::DEFAULT);
        assert_eq!(Keepalive::from_flags(s(1), s(2)), Keepalive { interval: s(1), timeout: s(2) });
    }

    /// Counts wake-ups of the task it belongs to.
    struct CountingWaker(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn the_first_write_of_a_burst_yields_once_and_wakes_its_task() {
        let (a, _b) = tokio::io::duplex(1 << 16);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let lane = Arc::new(ConnectionLane::new(rt.handle().clone()));
        let mut w = CoalescedWrites::new(a, Arc::clone(&lane));
        let counter = Arc::new(CountingWaker(Default::default()));
        let waker = std::task::Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        let big = vec![7u8; 1000];
        assert!(Pin::new(&mut w).poll_write(&mut cx, &big).is_pending(), "the burst's first write yields");
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1, "and wakes its task to come back");
        assert!(matches!(Pin::new(&mut w).poll_write(&mut cx, &big), Poll::Ready(Ok(1000))));
        assert!(matches!(Pin::new(&mut w).poll_write(&mut cx, &big), Poll::Ready(Ok(1000))), "the rest go through");
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
        assert!(Pin::new(&mut w).poll_write(&mut cx, &big).is_pending(), "after a flush, the next burst yields");
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(matches!(Pin::new(&mut w).poll_write(&mut cx, &big), Poll::Ready(Ok(1000))));
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
        let large = vec![7u8; YIELD_BELOW_BYTES];
        assert!(
            matches!(Pin::new(&mut w).poll_write(&mut cx, &large), Poll::Ready(Ok(n)) if n == large.len()),
            "a burst that starts with a large write does not wait"
        );
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 2);
        // While a watch stream is open on the connection, no write waits.
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
        let open = lane.watch_opened();
        assert!(matches!(Pin::new(&mut w).poll_write(&mut cx, &big), Poll::Ready(Ok(1000))));
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
        drop(open);
        assert!(Pin::new(&mut w).poll_write(&mut cx, &big).is_pending(), "and once it closed, bursts wait again");
    }

    #[tokio::test]
    async fn small_and_large_writes_arrive_whole_and_in_order() {
        let (a, mut b) = tokio::io::duplex(4096);
        let mut expected = Vec::new();
        let mut chunks = Vec::new();
        for i in 0..300usize {
            // Frame headers (9 bytes), small frames, payloads larger than the pipe.
            let len = [9, 1, 40, 64, 65, 700, 5000][i % 7];
            let chunk: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            expected.extend_from_slice(&chunk);
            chunks.push(chunk);
        }
        let writer = tokio::spawn(async move {
            let lane = Arc::new(ConnectionLane::new(tokio::runtime::Handle::current()));
            let mut w = CoalescedWrites::new(a, lane);
            for (i, chunk) in chunks.iter().enumerate() {
                w.write_all(chunk).await.unwrap();
                if i % 5 == 0 {
                    w.flush().await.unwrap();
                }
            }
            // Held bytes leave with the shutdown too.
            w.write_all(b"end").await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        expected.extend_from_slice(b"end");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes arrive as written");
    }
}
