//! Prometheus metrics under etcd's names, for the dashboards and alerts built for etcd.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric this member exports.
pub struct Metrics {
    registry: Registry,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
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
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
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

        Metrics {
            has_leader: gauge("etcd_server_has_leader", "Whether or not a leader exists."),
            is_leader: gauge("etcd_server_is_leader", "Whether or not this member is a leader."),
            leader_changes: counter("etcd_server_leader_changes_seen_total", "The number of leader changes seen."),
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
            grpc_started,
            grpc_handled,
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
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
    }
}

/// The go-grpc-prometheus labels of a gRPC path such as `/etcdserverpb.KV/Range`:
/// `(grpc_type, grpc_service, grpc_method)`; `None` for a non-gRPC path.
pub fn grpc_labels(path: &str) -> Option<(&'static str, &str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if !service.contains('.') || method.is_empty() || method.contains('/') {
        return None;
    }
    let kind = match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot") => "server_stream",
        _ => "unary",
    };
    Some((kind, service, method))
}

/// Counts every gRPC call in `grpc_server_started_total` and, once its response headers are
/// out, in `grpc_server_handled_total` with its code: the code in the response headers for
/// calls refused before any message (how tonic sends errors of unary calls), `OK` otherwise.
pub async fn count_grpc(
    axum::extract::State(metrics): axum::extract::State<std::sync::Arc<Metrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let labels = grpc_labels(request.uri().path()).map(|(k, s, m)| (k, s.to_string(), m.to_string()));
    if let Some((kind, service, method)) = &labels {
        metrics.grpc_started.with_label_values(&[kind, service.as_str(), method.as_str()]).inc();
    }
    let response = next.run(request).await;
    if let Some((kind, service, method)) = &labels {
        let code = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(|c| if c == 0 { "OK".to_string() } else { format!("{:?}", tonic::Code::from_i32(c)) })
            .unwrap_or_else(|| "OK".to_string());
        metrics.grpc_handled.with_label_values(&[kind, service.as_str(), method.as_str(), code.as_str()]).inc();
    }
    response
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn grpc_paths() {
        assert_eq!(grpc_labels("/etcdserverpb.KV/Range"), Some(("unary", "etcdserverpb.KV", "Range")));
        assert_eq!(grpc_labels("/etcdserverpb.Watch/Watch"), Some(("bidi_stream", "etcdserverpb.Watch", "Watch")));
        assert_eq!(grpc_labels("/health"), None);
        assert_eq!(grpc_labels("/readyz/linearizable_read"), None);
    }
}
