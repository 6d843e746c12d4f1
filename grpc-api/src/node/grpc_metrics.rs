//! go-grpc-prometheus's server series, which etcd exports and its mixin's alerts and
//! dashboards read: `grpc_server_started_total`, `grpc_server_handled_total`,
//! `grpc_server_msg_received_total` and `grpc_server_msg_sent_total`, labelled
//! `grpc_type`, `grpc_service`, `grpc_method` (and `grpc_code`, spelled as Go spells it).
//!
//! ```text
//!  request ──► GrpcCall::start ── started +1 (cached handle)
//!                 │  bidi stream: request body wrapped, its messages counted as they arrive
//!                 ▼
//!              service ──► response ──► GrpcCall::finish ── handled{code} +1 (cached when OK)
//!                                          │ stream: response body wrapped, its messages
//!                                          ▼ counted as they leave
//!  /metrics ──► derive_message_counts: a unary call's one message each way (and a server
//!               stream's one request) copied from started / handled{OK}
//! ```
//!
//! What a request costs: the started and handled increments, each through a handle looked up
//! once per method ([`MethodCounters`]); nothing else for a unary call. go-grpc-prometheus
//! counts a unary call's request when the call starts and its response when it ends `OK`,
//! so those message counts equal `started` and `handled{grpc_code="OK"}` of the same method:
//! they are brought up to them when `/metrics` is rendered instead of being counted again
//! on every call. Streams count their messages from gRPC's framing (a flag byte and a
//! 4-byte length before each message) as the body chunks pass ([`MessageFrames`]).
//!
//! Like etcd, the series of every method of the services etcd registers before its
//! go-grpc-prometheus `Register` (`etcdserverpb`'s six and `grpc.health.v1.Health`) exist
//! from the start, at 0, with every code for `handled`, so ratio alerts see 0, not "no
//! data"; the Lock and Election services' series appear with their first call, as etcd's do.
//!
//! CAVEATS:
//! - A call refused before its service runs (a rate limit, an oversized request) is counted
//!   as started and handled, and a unary one as a message received; etcd's interceptors
//!   that refuse calls run before go-grpc-prometheus's, which then counts nothing.
//! - A stream's messages are counted as they pass the HTTP body, complete; a message that
//!   arrives whole but fails to decode is counted here, not by go-grpc-prometheus.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use super::metrics::Metrics;

/// The label of every gRPC call to a method this server does not know (a made-up path, or
/// a service it does not register): one series however many paths clients invent, where a
/// label per path would let any client grow the registry without bound.
pub const UNKNOWN_LABEL: &str = "unknown";

/// The methods of etcd's services (`etcdserverpb`, the lock and election services, and the
/// standard health service), the only ones that get labels of their own.
const KNOWN_METHODS: &[(&str, &[&str])] = &[
    ("etcdserverpb.KV", &["Range", "Put", "DeleteRange", "Txn", "Compact"]),
    ("etcdserverpb.Watch", &["Watch"]),
    ("etcdserverpb.Lease", &["LeaseGrant", "LeaseRevoke", "LeaseKeepAlive", "LeaseTimeToLive", "LeaseLeases"]),
    ("etcdserverpb.Cluster", &["MemberAdd", "MemberRemove", "MemberUpdate", "MemberList", "MemberPromote"]),
    (
        "etcdserverpb.Maintenance",
        &["Alarm", "Status", "Defragment", "Hash", "HashKV", "Snapshot", "MoveLeader", "Downgrade"],
    ),
    (
        "etcdserverpb.Auth",
        &[
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    ),
    ("v3lockpb.Lock", &["Lock", "Unlock"]),
    ("v3electionpb.Election", &["Campaign", "Proclaim", "Leader", "Observe", "Resign"]),
    ("grpc.health.v1.Health", &["Check", "Watch"]),
];

/// The services whose series exist from the start: those etcd 3.5 registers on its gRPC
/// server before go-grpc-prometheus's `Register` walks it (`v3rpc.Server`); it registers
/// the lock and election services after.
const PRECREATED_SERVICES: &[&str] = &[
    "etcdserverpb.KV",
    "etcdserverpb.Watch",
    "etcdserverpb.Lease",
    "etcdserverpb.Cluster",
    "etcdserverpb.Maintenance",
    "etcdserverpb.Auth",
    "grpc.health.v1.Health",
];

/// gRPC's status codes, 0 (`OK`) to 16 (`Unauthenticated`): every one gets a
/// `grpc_server_handled_total` series per pre-created method.
const GRPC_CODES: std::ops::RangeInclusive<i32> = 0..=16;

/// go-grpc-prometheus's `grpc_type` of each kind of method.
const UNARY: &str = "unary";
const SERVER_STREAM: &str = "server_stream";
const BIDI_STREAM: &str = "bidi_stream";

/// A gRPC call's method: its labels and, for a known method, its place in [`MethodCounters`].
#[derive(Clone, Copy, Debug)]
struct GrpcMethod {
    /// The go-grpc-prometheus labels of its path (such as `/etcdserverpb.KV/Range`):
    /// `(grpc_type, grpc_service, grpc_method)`, with [`UNKNOWN_LABEL`] for service and method
    /// when the path names no known method.
    labels: (&'static str, &'static str, &'static str),
    index: Option<usize>,
}

/// Every known method by path (`/service/method`), with its labels, in `KNOWN_METHODS` order.
struct KnownMethods {
    labels: Vec<(&'static str, &'static str, &'static str)>,
    by_path: foldhash::HashMap<String, usize>,
}

static METHODS: std::sync::LazyLock<KnownMethods> = std::sync::LazyLock::new(|| {
    let mut labels = Vec::new();
    let mut by_path = foldhash::HashMap::default();
    for (service, methods) in KNOWN_METHODS {
        for method in *methods {
            let kind = match (*service, *method) {
                ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => BIDI_STREAM,
                ("etcdserverpb.Maintenance", "Snapshot")
                | ("v3electionpb.Election", "Observe")
                | ("grpc.health.v1.Health", "Watch") => SERVER_STREAM,
                _ => UNARY,
            };
            by_path.insert(format!("/{service}/{method}"), labels.len());
            labels.push((kind, *service, *method));
        }
    }
    KnownMethods { labels, by_path }
});

/// The method a request path names; `None` for a path that is not a gRPC method at all.
fn grpc_method(path: &str) -> Option<GrpcMethod> {
    if let Some(&index) = METHODS.by_path.get(path) {
        return Some(GrpcMethod { labels: METHODS.labels[index], index: Some(index) });
    }
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if !service.contains('.') || method.is_empty() || method.contains('/') {
        return None;
    }
    Some(GrpcMethod { labels: (UNARY, UNKNOWN_LABEL, UNKNOWN_LABEL), index: None })
}

/// grpc-go's answer to a gRPC call of `path` that names no method of the server, or `None`
/// when it names one (or belongs to Plinth's own `plinth.v1` API, whose generated servers
/// answer their unknown methods). grpc-go answers before any interceptor runs: the service is
/// what precedes the path's last `/`, the method what follows it; a path without a second `/`
/// is malformed, with `ResourceExhausted`.
pub fn unknown_call(path: &str) -> Option<tonic::Status> {
    if METHODS.by_path.contains_key(path) {
        return None;
    }
    let name = path.strip_prefix('/').unwrap_or(path);
    let Some((service, method)) = name.rsplit_once('/') else {
        // Go's `%q`; a request path holds no character it would write otherwise.
        return Some(tonic::Status::resource_exhausted(format!("malformed method name: {path:?}")));
    };
    if KNOWN_METHODS.iter().any(|(known, _)| *known == service) {
        Some(tonic::Status::unimplemented(format!("unknown method {method} for service {service}")))
    } else if service.starts_with("plinth.") {
        None
    } else {
        Some(tonic::Status::unimplemented(format!("unknown service {service}")))
    }
}

/// One counter handle per known method, taken from its vector on the method's first use.
pub struct MethodCounters(Box<[std::sync::OnceLock<IntCounter>]>);

impl Default for MethodCounters {
    fn default() -> Self {
        MethodCounters((0..METHODS.labels.len()).map(|_| std::sync::OnceLock::new()).collect())
    }
}

impl MethodCounters {
    /// Increments `vec`'s series of `labels`: through the handle cached for method `index`
    /// (taken with these labels on its first use), or by a label lookup without one.
    fn inc(&self, index: Option<usize>, vec: &IntCounterVec, labels: &[&str]) {
        match index {
            Some(i) => self.handle(i, vec, labels).inc(),
            None => vec.with_label_values(labels).inc(),
        }
    }

    /// The handle of method `index`, taken from `vec` with `labels` if it has none yet.
    fn handle(&self, index: usize, vec: &IntCounterVec, labels: &[&str]) -> &IntCounter {
        self.0[index].get_or_init(|| vec.with_label_values(labels))
    }

    /// The handle of method `index`, if it has one.
    fn get(&self, index: usize) -> Option<&IntCounter> {
        self.0[index].get()
    }
}

/// go-grpc-prometheus's server series, and the handles the request path counts through.
pub struct GrpcServerMetrics {
    pub started: IntCounterVec,
    pub handled: IntCounterVec,
    pub msg_received: IntCounterVec,
    pub msg_sent: IntCounterVec,
    /// Handles of `started` per known method, and of `handled` with code `OK`, looked up
    /// once: a label lookup hashes every label value, several hundred instructions per call.
    started_by_method: MethodCounters,
    handled_ok_by_method: MethodCounters,
    received_by_method: MethodCounters,
    sent_by_method: MethodCounters,
    /// Held while the message counts of unary calls are brought up to the calls' counts, so
    /// that two renders at once do not both add the same difference.
    deriving: parking_lot::Mutex<()>,
    /// `grpc_server_handling_seconds`, only with `--metrics extensive` (etcd turns on
    /// go-grpc-prometheus's handling-time histogram only then).
    handling_seconds: std::sync::OnceLock<HistogramVec>,
}

impl GrpcServerMetrics {
    /// Creates the series, registers them in `registry` and creates every pre-created
    /// service's series at 0 (see the module's essay).
    pub fn register(registry: &Registry) -> GrpcServerMetrics {
        let method = ["grpc_type", "grpc_service", "grpc_method"];
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(v.clone())).expect("unique metric");
            v
        };
        let m = GrpcServerMetrics {
            started: vec("grpc_server_started_total", "Total number of RPCs started on the server.", &method),
            handled: vec(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            ),
            msg_received: vec(
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                &method,
            ),
            msg_sent: vec(
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                &method,
            ),
            started_by_method: MethodCounters::default(),
            handled_ok_by_method: MethodCounters::default(),
            received_by_method: MethodCounters::default(),
            sent_by_method: MethodCounters::default(),
            deriving: parking_lot::Mutex::new(()),
            handling_seconds: std::sync::OnceLock::new(),
        };
        for (index, &(kind, service, name)) in METHODS.labels.iter().enumerate() {
            if !PRECREATED_SERVICES.contains(&service) {
                continue;
            }
            let labels = [kind, service, name];
            m.started_by_method.handle(index, &m.started, &labels);
            m.received_by_method.handle(index, &m.msg_received, &labels);
            m.sent_by_method.handle(index, &m.msg_sent, &labels);
            for code in GRPC_CODES {
                let handled = m.handled.with_label_values(&[kind, service, name, go_code_name(code)]);
                if code == 0 {
                    let _ = m.handled_ok_by_method.0[index].set(handled);
                }
            }
        }
        m
    }

    /// Registers `grpc_server_handling_seconds` (`--metrics extensive`): each known method's
    /// call time, from its start to its status (a stream's whole life), with Prometheus's
    /// default buckets, as go-grpc-prometheus's histogram; the pre-created services' series
    /// exist from the start, as etcd's. Calls started before this are not timed.
    pub fn enable_handling_time(&self, registry: &Registry) {
        let help =
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.";
        let opts =
            HistogramOpts::new("grpc_server_handling_seconds", help).buckets(prometheus::DEFAULT_BUCKETS.to_vec());
        let histogram = HistogramVec::new(opts, &["grpc_type", "grpc_service", "grpc_method"]).expect("valid metric");
        if self.handling_seconds.set(histogram.clone()).is_err() {
            return; // Enabled already.
        }
        registry.register(Box::new(histogram.clone())).expect("unique metric");
        for &(kind, service, name) in &METHODS.labels {
            if PRECREATED_SERVICES.contains(&service) {
                let _ = histogram.with_label_values(&[kind, service, name]);
            }
        }
    }

    /// Brings the message counts that equal call counts up to them (see the module's essay):
    /// for every known method that has been called (or is pre-created), unary and
    /// server-streaming calls received one message each when they started, and unary calls
    /// sent one each when they ended `OK`.
    pub fn derive_message_counts(&self) {
        let _one_at_a_time = self.deriving.lock();
        for (index, &(kind, service, name)) in METHODS.labels.iter().enumerate() {
            let labels = [kind, service, name];
            let raise = |target: u64, counters: &MethodCounters, vec: &IntCounterVec| {
                if target == 0 && counters.get(index).is_none() {
                    return; // Never called and not pre-created: no series.
                }
                let counter = counters.handle(index, vec, &labels);
                // Both counts only grow, and this is the only writer of `counter`.
                counter.inc_by(target.saturating_sub(counter.get()));
            };
            if kind == UNARY || kind == SERVER_STREAM {
                let started = self.started_by_method.get(index).map_or(0, IntCounter::get);
                raise(started, &self.received_by_method, &self.msg_received);
            }
            if kind == UNARY {
                let ok = self.handled_ok_by_method.get(index).map_or(0, IntCounter::get);
                raise(ok, &self.sent_by_method, &self.msg_sent);
            }
        }
    }
}

/// A gRPC status code as Go spells it (`codes.Code.String()`), which is what dashboards and
/// alerts built for etcd match on: `Canceled`, not tonic's `Cancelled`.
pub fn go_code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        // Not a code gRPC defines: one label, as for unknown methods.
        _ => "Unknown",
    }
}

/// The code in a `grpc-status` header or trailer.
fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    // A `HeaderName` rather than a `&str`: a string is parsed into a name on every lookup.
    static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    headers.get(&GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// Counts the messages of a gRPC body (each a flag byte, a 4-byte big-endian length, then
/// that many bytes) as its chunks pass, however the chunks cut the messages.
#[derive(Debug, Default)]
struct MessageFrames {
    /// Bytes of the current message's 5-byte prefix seen so far (0: the next byte starts a
    /// message).
    prefix_seen: u8,
    /// The current message's length, as far as its prefix has been seen.
    length: u32,
    /// Bytes of the current message's body still to come.
    body_left: u64,
}

impl MessageFrames {
    /// Takes the next chunk of the body; answers how many messages ended in it.
    fn feed(&mut self, mut chunk: &[u8]) -> u64 {
        let mut ended = 0;
        while !chunk.is_empty() {
            if self.body_left > 0 {
                let taken = self.body_left.min(chunk.len() as u64);
                self.body_left -= taken;
                chunk = &chunk[taken as usize..];
                ended += u64::from(self.body_left == 0);
                continue;
            }
            // Byte 0 of the prefix is the compression flag; bytes 1 to 4 the length.
            if self.prefix_seen > 0 {
                self.length = (self.length << 8) | u32::from(chunk[0]);
            }
            self.prefix_seen += 1;
            chunk = &chunk[1..];
            if self.prefix_seen == 5 {
                if self.length == 0 {
                    ended += 1;
                } else {
                    self.body_left = u64::from(self.length);
                }
                self.prefix_seen = 0;
                self.length = 0;
            }
        }
        ended
    }
}

/// One call's `grpc_server_handled_total` increment, made once with the call's outcome. A
/// call dropped before it has one (the client reset the stream or went away, which Go sees
/// as a cancelled context) is counted as `Canceled`.
struct Handled {
    metrics: std::sync::Arc<Metrics>,
    method: GrpcMethod,
    /// The router's group, when it belongs to a tenant (its name labels the tenant's counts).
    runtime: Option<std::sync::Arc<crate::node::GroupRuntime>>,
    /// When the call started, if its handling time is measured (`--metrics extensive`).
    started: Option<std::time::Instant>,
    done: bool,
}

impl Handled {
    fn finish(&mut self, code: i32) {
        if self.done {
            return;
        }
        self.done = true;
        let m = &self.metrics;
        let (kind, service, method) = self.method.labels;
        let tenant = self.runtime.as_ref().and_then(|rt| Some((rt, rt.tenant.get()?)));
        if let (Some(started), Some(_), Some(histogram)) =
            (self.started, self.method.index, m.grpc.handling_seconds.get())
        {
            histogram.with_label_values(&[kind, service, method]).observe(started.elapsed().as_secs_f64());
        }
        let name = go_code_name(code);
        // The common outcome of a known method, `OK`, through cached handles.
        let cached = self.method.index.filter(|_| code == 0);
        m.grpc.handled_ok_by_method.inc(cached, &m.grpc.handled, &[kind, service, method, name]);
        if let Some((rt, tenant)) = tenant {
            rt.tenant_ok_by_method.inc(cached, &m.tenant_requests, &[tenant, method, name]);
        }
    }
}

impl Drop for Handled {
    fn drop(&mut self) {
        self.finish(1);
    }
}

/// A stream's messages counted as they pass its body.
struct StreamMessages {
    frames: MessageFrames,
    counter: IntCounter,
}

impl StreamMessages {
    fn count<E>(&mut self, polled: &std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, E>>>) {
        if let std::task::Poll::Ready(Some(Ok(frame))) = polled {
            if let Some(data) = frame.data_ref() {
                let ended = self.frames.feed(data);
                if ended > 0 {
                    self.counter.inc_by(ended);
                }
            }
        }
    }
}

/// A gRPC body whose messages are counted as they pass (a stream's, either way) and, for a
/// response, whose call is counted once the status trailer goes out (or when the body ends
/// or is dropped without one).
struct CountedBody {
    inner: axum::body::Body,
    /// The call's outcome count: a response's; `None` for a request body.
    handled: Option<Handled>,
    messages: Option<StreamMessages>,
}

impl hyper::body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(messages) = &mut this.messages {
            messages.count(&polled);
        }
        let Some(handled) = &mut this.handled else { return polled };
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    handled.finish(grpc_status(trailers).unwrap_or(2));
                }
            }
            // The body failed: the stream is reset without a status.
            std::task::Poll::Ready(Some(Err(_))) => handled.finish(2),
            std::task::Poll::Ready(None) => handled.finish(0),
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// One gRPC call being counted: `grpc_server_started_total` when it starts and, with its
/// outcome, `grpc_server_handled_total` (and `plinth_tenant_requests_total` of the router's
/// tenant): the status of a trailers-only response (how tonic refuses a call before any
/// message) at once, otherwise the status trailer at the end of the response body; a call
/// that ends without one is `Canceled`. A known streaming method's messages are counted in
/// its bodies. Only requests with a gRPC content type are counted, so HTTP endpoints never
/// appear. The serving layer's one middleware (`serve.rs`) starts it before anything else
/// looks at the request, so refusals are counted too.
pub struct GrpcCall {
    handled: Handled,
    sent: Option<StreamMessages>,
}

impl GrpcCall {
    /// Counts the start of `request`'s call if it is a gRPC call, and hands the request
    /// back (its body counted, for a bidirectional stream).
    pub fn start(
        metrics: &std::sync::Arc<Metrics>,
        runtime: &std::sync::Arc<crate::node::GroupRuntime>,
        request: axum::extract::Request,
    ) -> (Option<GrpcCall>, axum::extract::Request) {
        let is_grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let Some(method) = grpc_method(request.uri().path()).filter(|_| is_grpc) else { return (None, request) };
        let grpc = &metrics.grpc;
        let (kind, service, name) = method.labels;
        let labels = [kind, service, name];
        grpc.started_by_method.inc(method.index, &grpc.started, &labels);
        let streamed = |counters: &MethodCounters, vec: &IntCounterVec| {
            let counter = counters.handle(method.index?, vec, &labels).clone();
            Some(StreamMessages { frames: MessageFrames::default(), counter })
        };
        let request = match kind {
            BIDI_STREAM => match streamed(&grpc.received_by_method, &grpc.msg_received) {
                Some(received) => request
                    .map(|inner| axum::body::Body::new(CountedBody { inner, handled: None, messages: Some(received) })),
                None => request,
            },
            _ => request,
        };
        let sent = if kind == UNARY { None } else { streamed(&grpc.sent_by_method, &grpc.msg_sent) };
        // Made before the call runs: if the client cancels a unary call in flight, the
        // future holding this is dropped and so is the guard, which counts the call as
        // `Canceled`.
        let runtime = runtime.tenant.get().is_some().then(|| runtime.clone());
        let started = grpc.handling_seconds.get().map(|_| std::time::Instant::now());
        let handled = Handled { metrics: metrics.clone(), method, runtime, started, done: false };
        (Some(GrpcCall { handled, sent }), request)
    }

    /// Whether the call names one of etcd's methods.
    pub fn is_known(&self) -> bool {
        self.handled.method.index.is_some()
    }

    /// Counts the call with the status of `response` if it has one already, or else with
    /// the trailer its body ends with.
    pub fn finish(mut self, response: axum::response::Response) -> axum::response::Response {
        if let Some(code) = grpc_status(response.headers()) {
            self.handled.finish(code);
        }
        let GrpcCall { handled, sent } = self;
        response.map(|inner| axum::body::Body::new(CountedBody { inner, handled: Some(handled), messages: sent }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths() {
        let grpc_labels = |path| grpc_method(path).map(|m| m.labels);
        assert_eq!(grpc_labels("/etcdserverpb.KV/Range"), Some(("unary", "etcdserverpb.KV", "Range")));
        assert_eq!(grpc_labels("/etcdserverpb.Watch/Watch"), Some(("bidi_stream", "etcdserverpb.Watch", "Watch")));
        assert_eq!(grpc_labels("/health"), None);
        assert_eq!(grpc_labels("/readyz/linearizable_read"), None);
        assert_eq!(grpc_labels("/etcdserverpb.KV/Nope"), Some(("unary", UNKNOWN_LABEL, UNKNOWN_LABEL)));
        assert_eq!(grpc_labels("/a.B/C"), Some(("unary", UNKNOWN_LABEL, UNKNOWN_LABEL)));
        assert_eq!(go_code_name(tonic::Code::Cancelled as i32), "Canceled");
        assert_eq!(go_code_name(tonic::Code::DeadlineExceeded as i32), "DeadlineExceeded");
        assert_eq!(grpc_method("/etcdserverpb.KV/Put").unwrap().labels, ("unary", "etcdserverpb.KV", "Put"));
        assert!(grpc_method("/etcdserverpb.KV/Put").unwrap().index.is_some());
        assert_eq!(grpc_method("/etcdserverpb.KV/Nope").unwrap().index, None);
    }

    /// Cached handles count into the same series as label lookups, once per call, with the
    /// call's code; a call dropped without one is `Canceled`.
    #[test]
    fn handled_calls_count_once_with_their_code() {
        let metrics = std::sync::Arc::new(Metrics::new("3.5.16", 1));
        let call = |path: &str| Handled {
            metrics: metrics.clone(),
            method: grpc_method(path).expect("a gRPC path"),
            runtime: None,
            started: None,
            done: false,
        };
        for _ in 0..2 {
            let mut put = call("/etcdserverpb.KV/Put");
            put.finish(0);
            put.finish(0);
        }
        call("/etcdserverpb.KV/Put").finish(14);
        drop(call("/etcdserverpb.KV/Put"));
        call("/etcdserverpb.KV/Nope").finish(0);
        let count = |labels: [&str; 4]| metrics.grpc.handled.with_label_values(&labels).get();
        assert_eq!(count(["unary", "etcdserverpb.KV", "Put", "OK"]), 2);
        assert_eq!(count(["unary", "etcdserverpb.KV", "Put", "Unavailable"]), 1);
        assert_eq!(count(["unary", "etcdserverpb.KV", "Put", "Canceled"]), 1);
        assert_eq!(count(["unary", UNKNOWN_LABEL, UNKNOWN_LABEL, "OK"]), 1);
    }

    /// Messages are counted where they end, whatever the chunks: split inside the prefix,
    /// inside the body, several in one chunk, and empty messages (a prefix alone).
    #[test]
    fn messages_are_counted_however_the_chunks_cut_them() {
        let message = |body: &[u8]| {
            let mut m = vec![0u8];
            m.extend_from_slice(&(body.len() as u32).to_be_bytes());
            m.extend_from_slice(body);
            m
        };
        let big = vec![7u8; 70_000];
        let stream: Vec<u8> = [message(b"abc"), message(b""), message(&big), message(b"x"), message(b"")].concat();
        for chunk_bytes in [1, 2, 3, 5, 6, 4096, stream.len()] {
            let mut frames = MessageFrames::default();
            let mut ended = Vec::new();
            for chunk in stream.chunks(chunk_bytes) {
                ended.push(frames.feed(chunk));
            }
            assert_eq!(ended.iter().sum::<u64>(), 5, "chunks of {chunk_bytes} bytes");
            assert_eq!((frames.prefix_seen, frames.body_left), (0, 0), "nothing left half-read");
        }
        // A message counts only once its last byte passed.
        let mut frames = MessageFrames::default();
        let one = message(b"hello");
        assert_eq!(frames.feed(&one[..one.len() - 1]), 0);
        assert_eq!(frames.feed(&one[one.len() - 1..]), 1);
    }

    /// etcd's 43 methods have every series from the start, each code of `handled` included;
    /// the lock and election services' come with their first call, as in etcd.
    #[test]
    fn etcds_services_are_pre_created_at_zero() {
        let m = Metrics::new("3.5.16", 1);
        let text = m.render();
        let lines = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).collect::<Vec<_>>();
        let started = lines("grpc_server_started_total{");
        assert_eq!(started.len(), 43, "{started:#?}");
        assert!(started.iter().all(|l| l.ends_with(" 0")), "{started:#?}");
        assert_eq!(lines("grpc_server_handled_total{").len(), 43 * 17);
        assert_eq!(lines("grpc_server_msg_received_total{").len(), 43);
        assert_eq!(lines("grpc_server_msg_sent_total{").len(), 43);
        for code in ["OK", "Canceled", "Unknown", "DeadlineExceeded", "Unavailable", "DataLoss", "Unauthenticated"] {
            let series = format!(
                r#"grpc_server_handled_total{{grpc_code="{code}",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"}} 0"#
            );
            assert!(text.contains(&series), "{series}");
        }
        assert!(text.contains(
            r#"grpc_server_started_total{grpc_method="Snapshot",grpc_service="etcdserverpb.Maintenance",grpc_type="server_stream"} 0"#
        ));
        assert!(text.contains(
            r#"grpc_server_started_total{grpc_method="Watch",grpc_service="grpc.health.v1.Health",grpc_type="server_stream"} 0"#
        ));
        assert!(!text.contains("v3lockpb") && !text.contains("v3electionpb"), "created only when called");
    }

    /// A unary call's messages are its start (received) and its `OK` end (sent), and a server
    /// stream's request is its start, brought up to date at each render; streams' own counts
    /// are left alone.
    #[test]
    fn unary_message_counts_follow_the_call_counts() {
        let metrics = std::sync::Arc::new(Metrics::new("3.5.16", 1));
        let grpc = &metrics.grpc;
        let start = |path: &str| {
            let method = grpc_method(path).expect("a gRPC path");
            let (kind, service, name) = method.labels;
            grpc.started_by_method.inc(method.index, &grpc.started, &[kind, service, name]);
            Handled { metrics: metrics.clone(), method, runtime: None, started: None, done: false }
        };
        let received = |labels: [&str; 3]| grpc.msg_received.with_label_values(&labels).get();
        let sent = |labels: [&str; 3]| grpc.msg_sent.with_label_values(&labels).get();
        let put = ["unary", "etcdserverpb.KV", "Put"];
        start("/etcdserverpb.KV/Put").finish(0);
        start("/etcdserverpb.KV/Put").finish(0);
        start("/etcdserverpb.KV/Put").finish(9);
        start("/v3lockpb.Lock/Lock").finish(0);
        let _observe = start("/v3electionpb.Election/Observe");
        grpc.derive_message_counts();
        assert_eq!((received(put), sent(put)), (3, 2), "three requests, two answers");
        let lock = ["unary", "v3lockpb.Lock", "Lock"];
        assert_eq!((received(lock), sent(lock)), (1, 1));
        let observe = ["server_stream", "v3electionpb.Election", "Observe"];
        assert_eq!(received(observe), 1, "a server stream's one request");
        start("/etcdserverpb.KV/Put").finish(0);
        grpc.derive_message_counts();
        grpc.derive_message_counts();
        assert_eq!((received(put), sent(put)), (4, 3), "counted once however many renders");
        let watch = ["bidi_stream", "etcdserverpb.Watch", "Watch"];
        start("/etcdserverpb.Watch/Watch").finish(0);
        grpc.derive_message_counts();
        assert_eq!((received(watch), sent(watch)), (0, 0), "a stream counts its messages itself");
    }
}
