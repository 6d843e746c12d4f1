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

use std::os::fd::{AsRawFd, RawFd};
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
    IO: AsyncRead + AsyncWrite + AsRawFd + Connected + Send + Unpin + 'static,
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
    IO: AsyncRead + AsyncWrite + AsRawFd + Connected + Send + Unpin + 'static,
{
    let info = io.connect_info();
    let fd = io.as_raw_fd();
    let socket = CoalescedWrites::new(io, Arc::clone(&lane)).with_cork(fd);
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
///   (with vectored writes it chains every DATA payload over 256 bytes, and each ends a write);
/// - a large answer leaves in segments of two frames. h2 writes each DATA frame of at most
///   the client's frame size (16 KiB for grpc-go's and h2's clients) as a write of its own and
///   flushes after each one, so a list of 1 MiB left in 64 segments, each carried through
///   loopback's receive path and waking the client, and each of its frames but the first
///   waited a turn as a new burst. A flush after a whole frame ([`WHOLE_FRAME_WRITE_BYTES`])
///   no longer ends the burst, and a whole frame corks the socket (`TCP_CORK`: the kernel
///   sends only full segments until it is uncorked). It is uncorked at the flush after a
///   shorter write (the answer's last frame, its trailers, a small answer), at the flush of
///   the [`CORKED_FRAMES_MAX`]th whole frame, and else, when a burst ends on a whole frame
///   (its stream out of window), at the connection's next read, which that flush wakes the
///   connection for. The kernel sends corked data after 200 ms at the latest; none of these
///   waits that long.
///
/// The first three, measured on one member with 100 clients of `range` (linearizable): 1.73
/// `writev` per answer before, ~0.25 `send` after, and 40 to 70 % more ranges per second.
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
    /// The last write was a whole DATA frame ([`WHOLE_FRAME_WRITE_BYTES`]): its answer may go
    /// on, so the flush after it does not end the burst.
    whole_frame_last: bool,
    /// The TCP socket under `io`, corked while a large answer is going out (`None`: never
    /// corked, as in tests over in-memory pipes).
    cork: Option<Cork>,
}

/// A TCP socket's cork (`TCP_CORK`) and what the writes since it was set were.
struct Cork {
    fd: RawFd,
    /// `TCP_CORK` is set.
    on: bool,
    /// A flush came while corked after a whole frame: the next read uncorks.
    push_due: bool,
    /// Whole frames flushed since the socket was corked.
    frames: usize,
}

impl Cork {
    /// Sets or clears `TCP_CORK`. Clearing it sends what the kernel holds. A socket that
    /// refuses is left as it is, and is not corked again.
    fn set(&mut self, on: bool) -> bool {
        let value: libc::c_int = on.into();
        // SAFETY: `fd` is the socket `CoalescedWrites::io` owns, open for as long as it is; the
        // option value is a live `c_int` of the length given.
        let rc = unsafe {
            libc::setsockopt(
                self.fd,
                libc::IPPROTO_TCP,
                libc::TCP_CORK,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            self.on = on;
        } else {
            debug!(error = %std::io::Error::last_os_error(), on, "TCP_CORK refused");
        }
        rc == 0
    }

    /// Uncorks now if corked.
    fn push(&mut self) {
        self.push_due = false;
        self.frames = 0;
        if self.on {
            self.set(false);
        }
    }
}

/// Writes are held while they total at most this (h2's own write buffer is 16 KiB).
const SMALL_WRITE_BYTES: usize = 16 << 10;

/// A write this long is the payload of a whole DATA frame: the answer it belongs to may go
/// on, so the socket is corked until it ends. Frames are at least 16 KiB long when whole
/// (HTTP/2's smallest `SETTINGS_MAX_FRAME_SIZE`), and h2 copies the first bytes of a payload
/// it chains into its own buffer, up to 1 KiB together with the frame's header (its chain
/// threshold without vectored writes), and writes the rest of the payload on its own.
const WHOLE_FRAME_WRITE_BYTES: usize = (16 << 10) - 1024;

/// Whole frames a cork holds before it is pushed anyway. A client grants an answer's window
/// back as it reads (h2's and grpc-go's clients once half of it is read, 32 KiB of the
/// default 64 KiB): held until the window ran out, a large answer to one client arrived in
/// one piece per window and waited a round trip for each grant (paging at one client was up to
/// 36 % slower). Two frames are 32 KiB, the size of grpc-go's write buffer, which etcd's answers
/// leave in.
const CORKED_FRAMES_MAX: usize = 2;

/// A burst whose first write is at least this long goes at once: it is a large answer (a
/// list, a watch response) that waiting for more small answers would not make cheaper.
const YIELD_BELOW_BYTES: usize = 4096;

impl<IO> CoalescedWrites<IO> {
    fn new(io: IO, lane: Arc<ConnectionLane>) -> Self {
        // `held` grows on a connection's first burst: an idle connection holds no buffer.
        CoalescedWrites { io, lane, armed: true, held: Vec::new(), whole_frame_last: false, cork: None }
    }

    /// Corks the TCP socket `fd` (the one `io` writes to) while large answers go out.
    fn with_cork(mut self, fd: RawFd) -> Self {
        self.cork = Some(Cork { fd, on: false, push_due: false, frames: 0 });
        self
    }

    /// Notes a write of `len` bytes (every write h2 makes), corking the socket before a whole
    /// frame.
    fn note_write(&mut self, len: usize) {
        self.whole_frame_last = len >= WHOLE_FRAME_WRITE_BYTES;
        if let Some(cork) = self.cork.as_mut().filter(|c| self.whole_frame_last && !c.on) {
            if !cork.set(true) {
                self.cork = None;
            }
        }
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
        // A burst that ended on a whole frame is over once the connection reads again.
        if let Some(cork) = self.cork.as_mut().filter(|c| c.push_due) {
            cork.push();
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.turn(cx, this.held.len() + buf.len()));
        this.note_write(buf.len());
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
            // The burst is over, unless h2 flushed after a whole frame of an answer that may go
            // on (it flushes after each one): then the next frame does not wait a turn.
            self.armed = !self.whole_frame_last;
            let whole_frame_last = self.whole_frame_last;
            if let Some(cork) = self.cork.as_mut().filter(|c| c.on) {
                cork.frames += usize::from(whole_frame_last);
                if whole_frame_last && cork.frames < CORKED_FRAMES_MAX {
                    // h2 flushes after every whole frame, and more may follow in this turn:
                    // the push waits for the connection's next read, which this wake brings.
                    cork.push_due = true;
                    cx.waker().wake_by_ref();
                } else {
                    cork.push();
                }
            }
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_send_held(cx))?;
        if let Some(cork) = &mut self.cork {
            cork.push();
        }
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

    #[test]
    fn a_flush_after_a_whole_frame_does_not_end_the_burst() {
        let (a, _b) = tokio::io::duplex(1 << 20);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut w = CoalescedWrites::new(a, Arc::new(ConnectionLane::new(rt.handle().clone())));
        let waker = std::task::Waker::from(Arc::new(CountingWaker(Default::default())));
        let mut cx = Context::from_waker(&waker);
        let (head, rest) = (vec![1u8; 1024], vec![2u8; WHOLE_FRAME_WRITE_BYTES]);
        assert!(Pin::new(&mut w).poll_write(&mut cx, &head).is_pending(), "a burst's first short write yields");
        assert!(Pin::new(&mut w).poll_write(&mut cx, &head).is_ready());
        assert!(Pin::new(&mut w).poll_write(&mut cx, &rest).is_ready());
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
        assert!(Pin::new(&mut w).poll_write(&mut cx, &head).is_ready(), "the answer's next frame does not wait a turn");
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
        assert!(Pin::new(&mut w).poll_write(&mut cx, &head).is_pending(), "a flush after a short write ends the burst");
    }

    /// Whether `TCP_CORK` is set on `fd`.
    fn corked(fd: RawFd) -> bool {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `fd` is an open TCP socket of the test; value and len are live locals.
        let rc = unsafe {
            libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_CORK, (&mut value as *mut libc::c_int).cast(), &mut len)
        };
        assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
        value != 0
    }

    #[tokio::test]
    async fn whole_frames_are_corked_until_their_burst_ends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        server.set_nodelay(true).unwrap();
        let fd = server.as_raw_fd();
        let lane = Arc::new(ConnectionLane::new(tokio::runtime::Handle::current()));
        let _watch = lane.watch_opened(); // no turn waited: every write below is accepted at once
        let mut w = CoalescedWrites::new(server, lane).with_cork(fd);
        let counter = Arc::new(CountingWaker(Default::default()));
        let waker = std::task::Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        let wakes = || counter.0.load(std::sync::atomic::Ordering::SeqCst);
        // As h2 writes a whole 16 KiB DATA frame: its buffer (the header and the payload's
        // first bytes), then the rest of the payload.
        let (head, rest) = (vec![1u8; 1024], vec![2u8; (16 << 10) - 1015]);
        let small = vec![3u8; 600];
        let mut sent = 0;
        let mut write = |w: &mut CoalescedWrites<tokio::net::TcpStream>, cx: &mut Context<'_>, buf: &[u8]| {
            assert!(matches!(Pin::new(w).poll_write(cx, buf), Poll::Ready(Ok(n)) if n == buf.len()));
            sent += buf.len();
        };

        // One whole frame: corked, and still corked after its flush, which wakes the
        // connection; its next read pushes.
        write(&mut w, &mut cx, &head);
        assert!(!corked(fd), "a short write does not cork");
        write(&mut w, &mut cx, &rest);
        assert!(corked(fd), "a whole frame corks");
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
        assert!(corked(fd), "a burst that may go on stays corked at the flush");
        assert_eq!(wakes(), 1, "and the flush wakes the connection to come back");
        let mut scratch = [0u8; 16];
        assert!(Pin::new(&mut w).poll_read(&mut cx, &mut ReadBuf::new(&mut scratch)).is_pending());
        assert!(!corked(fd), "the connection's next read pushes");

        // Two whole frames: the second flush pushes without waiting for a read.
        for _ in 0..2 {
            write(&mut w, &mut cx, &head);
            write(&mut w, &mut cx, &rest);
            assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
        }
        assert!(!corked(fd), "a cork holds at most {CORKED_FRAMES_MAX} frames");

        // A whole frame, then the answer's end (a short last frame, trailers): its flush pushes.
        write(&mut w, &mut cx, &head);
        write(&mut w, &mut cx, &rest);
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
        assert!(corked(fd));
        write(&mut w, &mut cx, &small);
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
        assert!(!corked(fd), "a burst that ends short is pushed at its flush");

        // Everything arrives, long before the kernel's 200 ms limit on a cork.
        let mut got = vec![0u8; sent];
        tokio::time::timeout(Duration::from_millis(100), client.read_exact(&mut got)).await.unwrap().unwrap();
        assert!(got.ends_with(&small));
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
