//! Prometheus metrics under etcd's names, for the dashboards and alerts built for etcd.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use std::time::Duration;

/// Every metric this member exports.
pub struct Metrics {
    registry: Registry,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    /// Raft groups of this member that are awake (ticking); the rest hibernate.
    pub raft_groups_awake: IntGauge,
    pub proposals_committed: IntCounter,
    pub proposals_applied: IntCounter,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub db_total_size: IntGauge,
    pub db_in_use_size: IntGauge,
    pub quota_backend_bytes: IntGauge,
    pub current_revision: IntGauge,
    pub compact_revision: IntGauge,
    pub watchers: IntGauge,
    pub wal_fsync_duration: Histogram,
    pub grpc_started: IntCounterVec,
    pub grpc_handled: IntCounterVec,
    /// Handles of `grpc_started` per known method, and of `grpc_handled` with code `OK`,
    /// looked up once: a label lookup hashes every label value, several hundred
    /// instructions per call.
    started_by_method: MethodCounters,
    handled_ok_by_method: MethodCounters,
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    /// Automated backups, per tenant, on the member that took them.
    pub backup_last_success: IntGaugeVec,
    pub backup_duration: HistogramVec,
    pub backup_bytes: IntCounterVec,
    pub backup_failures: IntCounterVec,
    /// Per tenant (label `tenant`; at most one series set per tenant, and tenants are
    /// bounded by the registry): gRPC calls by method and code, size, keys, watchers and
    /// apply latency on this member.
    pub tenant_requests: IntCounterVec,
    pub tenant_db_size: IntGaugeVec,
    pub tenant_keys: IntGaugeVec,
    pub tenant_watchers: IntGaugeVec,
    pub tenant_apply_duration: HistogramVec,
    /// Per group: the revision its keys were last counted at and the count (counting walks
    /// the keys, so it is redone only when the revision moved, at most every
    /// [`KEYS_RECOUNT_INTERVAL`]); and the tenants labelled at the last refresh.
    tenant_state: parking_lot::Mutex<TenantGaugeState>,
    /// `process_*`, read from `/proc/self` at each render.
    process: super::process_metrics::ProcessMetrics,
}

/// Least time between two counts of one tenant's keys for `plinth_tenant_keys`.
pub const KEYS_RECOUNT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Default)]
struct TenantGaugeState {
    keys: std::collections::HashMap<u64, (i64, i64, std::time::Instant)>,
    labelled: std::collections::BTreeSet<String>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new(server_version: &str) -> Metrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let grpc_labels = ["grpc_type", "grpc_service", "grpc_method"];
        let grpc_started =
            IntCounterVec::new(Opts::new("grpc_server_started_total", "RPCs started on the server."), &grpc_labels)
                .expect("valid metric");
        let grpc_handled = IntCounterVec::new(
            Opts::new("grpc_server_handled_total", "RPCs completed on the server."),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )
        .expect("valid metric");
        registry.register(Box::new(grpc_started.clone())).expect("unique metric");
        registry.register(Box::new(grpc_handled.clone())).expect("unique metric");
        let wal_fsync_duration = Histogram::with_opts(
            HistogramOpts::new(
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
            )
            .buckets(exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
        )
        .expect("valid metric");
        registry.register(Box::new(wal_fsync_duration.clone())).expect("unique metric");
        let version =
            IntGaugeVec::new(Opts::new("etcd_server_version", "Which version is running."), &["server_version"])
                .expect("valid metric");
        version.with_label_values(&[server_version]).set(1);
        registry.register(Box::new(version)).expect("unique metric");
        let tenant = ["tenant"];
        let backup_last_success = IntGaugeVec::new(
            Opts::new(
                "plinth_backup_last_success_timestamp_seconds",
                "Unix time of the last backup of the tenant this member took.",
            ),
            &tenant,
        )
        .expect("valid metric");
        let backup_duration = HistogramVec::new(
            HistogramOpts::new(
                "plinth_backup_duration_seconds",
                "Time to take a backup of the tenant (export and upload).",
            )
            .buckets(exponential_buckets(0.01, 2.0, 14).expect("valid buckets")),
            &tenant,
        )
        .expect("valid metric");
        let backup_bytes = IntCounterVec::new(
            Opts::new("plinth_backup_bytes_total", "Bytes of backup objects of the tenant this member stored."),
            &tenant,
        )
        .expect("valid metric");
        let backup_failures = IntCounterVec::new(
            Opts::new("plinth_backup_failures_total", "Failed backup attempts of the tenant on this member."),
            &tenant,
        )
        .expect("valid metric");
        registry.register(Box::new(backup_last_success.clone())).expect("unique metric");
        registry.register(Box::new(backup_duration.clone())).expect("unique metric");
        registry.register(Box::new(backup_bytes.clone())).expect("unique metric");
        registry.register(Box::new(backup_failures.clone())).expect("unique metric");
        let tenant_requests = IntCounterVec::new(
            Opts::new("plinth_tenant_requests_total", "gRPC calls of the tenant completed on this member."),
            &["tenant", "grpc_method", "grpc_code"],
        )
        .expect("valid metric");
        let tenant_gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &tenant).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let tenant_db_size = tenant_gauge("plinth_tenant_db_size_bytes", "Size of the tenant's keyspace in bytes.");
        let tenant_keys = tenant_gauge("plinth_tenant_keys", "Live keys of the tenant (recounted at most every 30 s).");
        let tenant_watchers = tenant_gauge("plinth_tenant_watchers", "Watchers of the tenant open on this member.");
        let tenant_apply_duration = HistogramVec::new(
            HistogramOpts::new(
                "plinth_tenant_apply_duration_seconds",
                "Time to apply one batch of the tenant's entries.",
            )
            .buckets(exponential_buckets(0.0001, 4.0, 8).expect("valid buckets")),
            &tenant,
        )
        .expect("valid metric");
        registry.register(Box::new(tenant_requests.clone())).expect("unique metric");
        registry.register(Box::new(tenant_apply_duration.clone())).expect("unique metric");

        Metrics {
            has_leader: gauge("etcd_server_has_leader", "Whether or not a leader exists."),
            is_leader: gauge("etcd_server_is_leader", "Whether or not this member is a leader."),
            leader_changes: counter("etcd_server_leader_changes_seen_total", "The number of leader changes seen."),
            raft_groups_awake: gauge(
                "plinth_raft_groups_awake",
                "Raft groups of this member that are awake (ticking); the others hibernate.",
            ),
            proposals_committed: counter(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: counter(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            proposals_pending: gauge(
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            proposals_failed: counter(
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            db_total_size: gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            db_in_use_size: gauge(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            ),
            quota_backend_bytes: gauge(
                "etcd_server_quota_backend_bytes",
                "Current backend storage quota size in bytes.",
            ),
            current_revision: gauge("etcd_debugging_mvcc_current_revision", "The current revision of store."),
            compact_revision: gauge(
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
            ),
            watchers: gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers."),
            health_success: counter("etcd_server_health_success", "The total number of successful health checks"),
            health_failures: counter("etcd_server_health_failures", "The total number of failed health checks"),
            wal_fsync_duration,
            backup_last_success,
            backup_duration,
            backup_bytes,
            backup_failures,
            tenant_requests,
            tenant_db_size,
            tenant_keys,
            tenant_watchers,
            tenant_apply_duration,
            tenant_state: parking_lot::Mutex::default(),
            process: super::process_metrics::ProcessMetrics::register(&registry),
            grpc_started,
            grpc_handled,
            started_by_method: MethodCounters::default(),
            handled_ok_by_method: MethodCounters::default(),
            registry,
        }
    }

    /// Sets the per-tenant gauges from the groups `nodes` serves, and drops the series of
    /// tenants no longer served (their request counters stay until restart).
    pub fn refresh_tenants(&self, nodes: &[std::sync::Arc<crate::node::Node>]) {
        let mut state = self.tenant_state.lock();
        let mut seen = std::collections::BTreeSet::new();
        for node in nodes {
            let Some(tenant) = node.runtime.tenant.get() else { continue };
            if node.runtime.group == crate::node::SYSTEM_GROUP {
                continue;
            }
            let g = node.group();
            self.tenant_db_size.with_label_values(&[tenant]).set(node.store.size_bytes(g) as i64);
            self.tenant_watchers
                .with_label_values(&[tenant])
                .set(node.runtime.watchers.load(std::sync::atomic::Ordering::Relaxed));
            let revision = node.store.current_revision(g);
            let stale = match state.keys.get(&g.0) {
                Some((counted_at, _, when)) => *counted_at != revision && when.elapsed() >= KEYS_RECOUNT_INTERVAL,
                None => true,
            };
            if stale {
                let count = store::RangeRequest {
                    key: bytes::Bytes::from_static(b"\0"),
                    range_end: bytes::Bytes::from_static(b"\0"),
                    count_only: true,
                    serializable: true,
                    ..Default::default()
                };
                if let Ok(r) = node.store.range(g, &count) {
                    state.keys.insert(g.0, (revision, r.count, std::time::Instant::now()));
                }
            }
            if let Some((_, keys, _)) = state.keys.get(&g.0) {
                self.tenant_keys.with_label_values(&[tenant]).set(*keys);
            }
            seen.insert(tenant.to_string());
        }
        let live: std::collections::HashSet<u64> = nodes.iter().map(|n| n.runtime.group).collect();
        state.keys.retain(|g, _| live.contains(g));
        for gone in state.labelled.difference(&seen) {
            let _ = self.tenant_db_size.remove_label_values(&[gone]);
            let _ = self.tenant_keys.remove_label_values(&[gone]);
            let _ = self.tenant_watchers.remove_label_values(&[gone]);
            let _ = self.tenant_apply_duration.remove_label_values(&[gone]);
        }
        state.labelled = seen;
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.process.refresh();
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Feeds the WAL's fdatasync durations into `etcd_disk_wal_fsync_duration_seconds`.
#[derive(Debug)]
pub struct WalFsyncMetric(pub Histogram);

impl raft_log::FsyncObserver for WalFsyncMetric {
    fn observe(&self, took: Duration) {
        self.0.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_etcd_names() {
        let m = Metrics::new("3.5.16");
        m.has_leader.set(1);
        m.grpc_started.with_label_values(&["unary", "etcdserverpb.KV", "Range"]).inc();
        let text = m.render();
        assert!(text.contains("etcd_server_has_leader 1"), "{text}");
        assert!(text.contains("etcd_server_version{server_version=\"3.5.16\"} 1"), "{text}");
        assert!(text.contains("grpc_server_started_total{"), "{text}");
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket"), "{text}");
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"), "{text}");
    }
}

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
                ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
                ("etcdserverpb.Maintenance", "Snapshot")
                | ("v3electionpb.Election", "Observe")
                | ("grpc.health.v1.Health", "Watch") => "server_stream",
                _ => "unary",
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
    Some(GrpcMethod { labels: ("unary", UNKNOWN_LABEL, UNKNOWN_LABEL), index: None })
}

/// One counter handle per known method, taken from its vector on the method's first call.
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
            Some(i) => self.0[i].get_or_init(|| vec.with_label_values(labels)).inc(),
            None => vec.with_label_values(labels).inc(),
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

/// One call's `grpc_server_handled_total` increment, made once with the call's outcome. A
/// call dropped before it has one (the client reset the stream or went away, which Go sees
/// as a cancelled context) is counted as `Canceled`.
struct Handled {
    metrics: std::sync::Arc<Metrics>,
    method: GrpcMethod,
    /// The router's group, when it belongs to a tenant (its name labels the tenant's counts).
    runtime: Option<std::sync::Arc<crate::node::GroupRuntime>>,
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
        let name = go_code_name(code);
        // The common outcome of a known method, `OK`, through cached handles.
        let cached = self.method.index.filter(|_| code == 0);
        m.handled_ok_by_method.inc(cached, &m.grpc_handled, &[kind, service, method, name]);
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

/// A gRPC response body that counts its call once the status trailer goes out (or when the
/// body ends or is dropped without one).
struct CountedBody {
    inner: axum::body::Body,
    handled: Handled,
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
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.handled.finish(grpc_status(trailers).unwrap_or(2));
                }
            }
            // The body failed: the stream is reset without a status.
            std::task::Poll::Ready(Some(Err(_))) => this.handled.finish(2),
            std::task::Poll::Ready(None) => this.handled.finish(0),
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
/// that ends without one is `Canceled`. Only requests with a gRPC content type are counted,
/// so HTTP endpoints never appear. The serving layer's one middleware (`serve.rs`) starts it
/// before anything else looks at the request, so refusals are counted too.
pub struct GrpcCall {
    handled: Handled,
}

impl GrpcCall {
    pub fn start(
        metrics: &std::sync::Arc<Metrics>,
        runtime: &std::sync::Arc<crate::node::GroupRuntime>,
        request: &axum::extract::Request,
    ) -> Option<GrpcCall> {
        let is_grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let method = grpc_method(request.uri().path()).filter(|_| is_grpc)?;
        let (kind, service, name) = method.labels;
        metrics.started_by_method.inc(method.index, &metrics.grpc_started, &[kind, service, name]);
        // Made before the call runs: if the client cancels a unary call in flight, the
        // future holding this is dropped and so is the guard, which counts the call as
        // `Canceled`.
        let runtime = runtime.tenant.get().is_some().then(|| runtime.clone());
        Some(GrpcCall { handled: Handled { metrics: metrics.clone(), method, runtime, done: false } })
    }

    /// Counts the call with the status of `response` if it has one already, or else with
    /// the trailer its body ends with.
    pub fn finish(mut self, response: axum::response::Response) -> axum::response::Response {
        if let Some(code) = grpc_status(response.headers()) {
            self.handled.finish(code);
        }
        let handled = self.handled;
        response.map(|inner| axum::body::Body::new(CountedBody { inner, handled }))
    }
}

#[cfg(test)]
mod label_tests {
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
        let metrics = std::sync::Arc::new(Metrics::new("3.5.16"));
        let call = |path: &str| Handled {
            metrics: metrics.clone(),
            method: grpc_method(path).expect("a gRPC path"),
            runtime: None,
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
        let count = |labels: [&str; 4]| metrics.grpc_handled.with_label_values(&labels).get();
        assert_eq!(count(["unary", "etcdserverpb.KV", "Put", "OK"]), 2);
        assert_eq!(count(["unary", "etcdserverpb.KV", "Put", "Unavailable"]), 1);
        assert_eq!(count(["unary", "etcdserverpb.KV", "Put", "Canceled"]), 1);
        assert_eq!(count(["unary", UNKNOWN_LABEL, UNKNOWN_LABEL, "OK"]), 1);
    }
}
