//! Prometheus metrics under etcd's names, for the dashboards and alerts built for etcd (the
//! etcd mixin's, and the kube tooling's): etcd 3.5's names, label names, types, help texts
//! and buckets. The etcd-named series describe this member, and of its groups the default
//! tenant's (revisions, keys, Raft indexes); `plinth_*` series add the per-tenant view.
//!
//! Where each value comes from:
//! - at each render (`Node::refresh_gauges`, then [`Metrics::render`]): the store's gauges
//!   (sizes, revisions, keys), the default group's Raft indexes, leadership, learner state,
//!   the `process_*` and `os_fd_*` values from `/proc/self`;
//! - as things happen: WAL fsyncs (`raft_log::FsyncObserver`), the store's batch writes
//!   ([`store::CommitObserver`]), proposals, health checks, gRPC calls
//!   (`grpc_metrics.rs`), client message bytes (`codec.rs`) and peer traffic ([`PeerMetrics`],
//!   fed by `peer.rs`).
//!
//! Every label set is bounded: methods by the services' tables, codes by gRPC's 17, peers by
//! the member list (a removed peer's series go with it), tenants by the registry.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use std::time::Duration;

use super::grpc_metrics::GrpcServerMetrics;

/// Every metric this member exports.
pub struct Metrics {
    registry: Registry,
    /// This member's id as etcd prints it (`%x`), the `Local` label of its peer series.
    local: String,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub is_learner: IntGauge,
    pub leader_changes: IntCounter,
    /// Raft groups of this member that are awake (ticking); the rest hibernate.
    pub raft_groups_awake: IntGauge,
    /// The default group's commit index and this member's applied index of it: etcd's
    /// `proposals_committed_total` and `proposals_applied_total` are these indexes (gauges,
    /// conf changes and empty entries included), so they meet whenever apply caught up.
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub db_total_size: IntGauge,
    pub db_in_use_size: IntGauge,
    pub quota_backend_bytes: IntGauge,
    pub current_revision: IntGauge,
    /// -1 while the default group was never compacted, as etcd's.
    pub compact_revision: IntGauge,
    /// Live keys of the default group.
    pub keys_total: IntGauge,
    pub watchers: IntGauge,
    pub wal_fsync_duration: Histogram,
    /// The store's RocksDB write of each apply batch (etcd's bbolt commit).
    pub backend_commit_duration: Histogram,
    /// go-grpc-prometheus's series (`grpc_metrics.rs`).
    pub grpc: GrpcServerMetrics,
    /// etcd's rafthttp series, one set per peer ([`Metrics::peer`]).
    peers: PeerVecs,
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
    /// Per group whose store keeps no key counts: the revision its keys were last counted
    /// at and the count (counting walks the keys, so it is redone only when the revision
    /// moved, at most every [`KEYS_RECOUNT_INTERVAL`]); and the tenants labelled at the last
    /// refresh.
    tenant_state: parking_lot::Mutex<TenantGaugeState>,
    /// `process_*` and `os_fd_*`, read from `/proc/self` at each render.
    process: super::process_metrics::ProcessMetrics,
}

/// The vectors of etcd's peer metrics (`rafthttp/metrics.go`); label values are member ids
/// as etcd prints them (`%x`).
struct PeerVecs {
    sent_bytes: IntCounterVec,
    received_bytes: IntCounterVec,
    sent_failures: IntCounterVec,
    round_trip: HistogramVec,
    active: IntGaugeVec,
}

/// One peer's series, taken from their vectors once when the peer is added, so the peer
/// transport counts through handles, never a label lookup.
#[derive(Debug)]
pub struct PeerMetrics {
    /// `etcd_network_peer_sent_bytes_total{To}`: bytes of Raft messages and snapshot chunks
    /// handed to the peer's streams.
    pub sent_bytes: IntCounter,
    /// `etcd_network_peer_received_bytes_total{From}`: the same, received from the peer.
    pub received_bytes: IntCounter,
    /// `etcd_network_peer_sent_failures_total{To}`: messages for the peer that were dropped
    /// (its queue full, its stream broken or down) and snapshots that failed to reach it.
    pub sent_failures: IntCounter,
    /// `etcd_network_peer_round_trip_time_seconds{To}`: each probe's round trip (`peer.rs`).
    pub round_trip: Histogram,
    /// `etcd_network_active_peers{Local,Remote}`: 1 while this member's stream to the peer is
    /// connected, else 0.
    pub active: IntGauge,
}

/// Least time between two counts of one tenant's keys for `plinth_tenant_keys`.
pub const KEYS_RECOUNT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Default)]
struct TenantGaugeState {
    keys: std::collections::HashMap<u64, (i64, i64, std::time::Instant)>,
    labelled: std::collections::BTreeSet<String>,
}

impl Metrics {
    /// `--metrics extensive`: adds etcd's extensive series (the gRPC handling-time histogram).
    pub fn enable_extensive(&self) {
        self.grpc.enable_handling_time(&self.registry);
    }

    /// Creates and registers every metric, of member `member_id` running `server_version`.
    pub fn new(server_version: &str, member_id: u64) -> Metrics {
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
        // Gauges of one label whose one series says 1, as etcd tells versions and ids.
        let labelled_one = |name: &str, help: &str, label: &str, value: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            g.with_label_values(&[value]).set(1);
            registry.register(Box::new(g)).expect("unique metric");
        };
        // etcd's backend and WAL latencies: 1 ms to about 8 s.
        let disk_histogram = |name: &str, help: &str| {
            let buckets = exponential_buckets(0.001, 2.0, 14).expect("valid buckets");
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let wal_fsync_duration =
            disk_histogram("etcd_disk_wal_fsync_duration_seconds", "The latency distributions of fsync called by WAL.");
        let backend_commit_duration = disk_histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
        );
        labelled_one(
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            "server_version",
            server_version,
        );
        labelled_one(
            "etcd_cluster_version",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
            "cluster_version",
            major_minor(crate::version::CLUSTER_VERSION),
        );
        let local = format!("{member_id:x}");
        labelled_one(
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            "server_id",
            &local,
        );
        // The client message bytes the server's codec counts, process-wide (`codec.rs`).
        registry.register(Box::new(crate::codec::CLIENT_SENT_BYTES.clone())).expect("unique metric");
        registry.register(Box::new(crate::codec::CLIENT_RECEIVED_BYTES.clone())).expect("unique metric");
        let peers = PeerVecs::register(&registry);
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
        let tenant_keys = tenant_gauge(
            "plinth_tenant_keys",
            "Live keys of the tenant (exact where the store keeps key counts, else recounted at most every 30 s).",
        );
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
            local,
            has_leader: gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not."),
            is_leader: gauge("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise."),
            is_learner: gauge(
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            ),
            leader_changes: counter("etcd_server_leader_changes_seen_total", "The number of leader changes seen."),
            raft_groups_awake: gauge(
                "plinth_raft_groups_awake",
                "Raft groups of this member that are awake (ticking); the others hibernate.",
            ),
            proposals_committed: gauge(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: gauge(
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
            compact_revision: {
                let g = gauge("etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store.");
                g.set(-1);
                g
            },
            keys_total: gauge("etcd_debugging_mvcc_keys_total", "Total number of keys."),
            watchers: gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers."),
            health_success: counter("etcd_server_health_success", "The total number of successful health checks"),
            health_failures: counter("etcd_server_health_failures", "The total number of failed health checks"),
            wal_fsync_duration,
            backend_commit_duration,
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
            grpc: GrpcServerMetrics::register(&registry),
            peers,
            registry,
        }
    }

    /// The series of peer `remote` (created at 0 if new), for the peer transport to count
    /// through.
    pub fn peer(&self, remote: u64) -> PeerMetrics {
        let remote = format!("{remote:x}");
        let p = &self.peers;
        PeerMetrics {
            sent_bytes: p.sent_bytes.with_label_values(&[&remote]),
            received_bytes: p.received_bytes.with_label_values(&[&remote]),
            sent_failures: p.sent_failures.with_label_values(&[&remote]),
            round_trip: p.round_trip.with_label_values(&[&remote]),
            active: p.active.with_label_values(&[&self.local, &remote]),
        }
    }

    /// Drops the series of peer `remote`, no longer a member: a peer's series live as long
    /// as it is one, so the label sets stay bounded by the member list.
    pub fn forget_peer(&self, remote: u64) {
        let remote = format!("{remote:x}");
        let p = &self.peers;
        let _ = p.sent_bytes.remove_label_values(&[&remote]);
        let _ = p.received_bytes.remove_label_values(&[&remote]);
        let _ = p.sent_failures.remove_label_values(&[&remote]);
        let _ = p.round_trip.remove_label_values(&[&remote]);
        let _ = p.active.remove_label_values(&[&self.local, &remote]);
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
            let stale = || match state.keys.get(&g.0) {
                Some((counted_at, _, when)) => *counted_at != revision && when.elapsed() >= KEYS_RECOUNT_INTERVAL,
                None => true,
            };
            if let Some(keys) = node.store.live_key_count(g) {
                // The store's own count: exact, and no walk.
                state.keys.insert(g.0, (revision, keys as i64, std::time::Instant::now()));
            } else if stale() {
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
                if node.is_default() {
                    self.keys_total.set(*keys);
                }
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
        self.grpc.derive_message_counts();
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

/// Feeds the store's batch write durations into `etcd_disk_backend_commit_duration_seconds`.
#[derive(Debug)]
pub struct BackendCommitMetric(pub Histogram);

impl store::CommitObserver for BackendCommitMetric {
    fn observe(&self, took: Duration) {
        self.0.observe(took.as_secs_f64());
    }
}

/// `major.minor` of a version, as etcd labels its cluster version (`3.5` for `3.5.0`).
fn major_minor(version: &str) -> &str {
    match version.match_indices('.').nth(1) {
        Some((second_dot, _)) => &version[..second_dot],
        None => version,
    }
}

impl PeerVecs {
    fn register(registry: &Registry) -> PeerVecs {
        let counters = |name: &str, help: &str, label: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry.register(Box::new(v.clone())).expect("unique metric");
            v
        };
        let round_trip = HistogramVec::new(
            HistogramOpts::new("etcd_network_peer_round_trip_time_seconds", "Round-Trip-Time histogram between peers")
                .buckets(exponential_buckets(0.0001, 2.0, 14).expect("valid buckets")),
            &["To"],
        )
        .expect("valid metric");
        let active = IntGaugeVec::new(
            Opts::new("etcd_network_active_peers", "The current number of active peer connections."),
            &["Local", "Remote"],
        )
        .expect("valid metric");
        registry.register(Box::new(round_trip.clone())).expect("unique metric");
        registry.register(Box::new(active.clone())).expect("unique metric");
        PeerVecs {
            sent_bytes: counters(
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                "To",
            ),
            received_bytes: counters(
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                "From",
            ),
            sent_failures: counters(
                "etcd_network_peer_sent_failures_total",
                "The total number of send failures from peers.",
                "To",
            ),
            round_trip,
            active,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `# TYPE` and `# HELP` of every etcd metric this member exports, as etcd 3.5.1's
    /// `/metrics` writes them.
    const ETCD_3_5_1: &[(&str, &str, &str)] = &[
        ("etcd_server_has_leader", "gauge", "Whether or not a leader exists. 1 is existence, 0 is not."),
        ("etcd_server_is_leader", "gauge", "Whether or not this member is a leader. 1 if is, 0 otherwise."),
        ("etcd_server_is_learner", "gauge", "Whether or not this member is a learner. 1 if is, 0 otherwise."),
        ("etcd_server_leader_changes_seen_total", "counter", "The number of leader changes seen."),
        ("etcd_server_proposals_committed_total", "gauge", "The total number of consensus proposals committed."),
        ("etcd_server_proposals_applied_total", "gauge", "The total number of consensus proposals applied."),
        ("etcd_server_proposals_pending", "gauge", "The current number of pending proposals to commit."),
        ("etcd_server_proposals_failed_total", "counter", "The total number of failed proposals seen."),
        (
            "etcd_mvcc_db_total_size_in_bytes",
            "gauge",
            "Total size of the underlying database physically allocated in bytes.",
        ),
        (
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "gauge",
            "Total size of the underlying database logically in use in bytes.",
        ),
        ("etcd_server_quota_backend_bytes", "gauge", "Current backend storage quota size in bytes."),
        ("etcd_debugging_mvcc_current_revision", "gauge", "The current revision of store."),
        ("etcd_debugging_mvcc_compact_revision", "gauge", "The revision of the last compaction in store."),
        ("etcd_debugging_mvcc_keys_total", "gauge", "Total number of keys."),
        ("etcd_debugging_mvcc_watcher_total", "gauge", "Total number of watchers."),
        ("etcd_server_health_success", "counter", "The total number of successful health checks"),
        ("etcd_server_health_failures", "counter", "The total number of failed health checks"),
        ("etcd_disk_wal_fsync_duration_seconds", "histogram", "The latency distributions of fsync called by WAL."),
        (
            "etcd_disk_backend_commit_duration_seconds",
            "histogram",
            "The latency distributions of commit called by backend.",
        ),
        (
            "etcd_server_version",
            "gauge",
            "Which version is running. 1 for 'server_version' label with current version.",
        ),
        (
            "etcd_cluster_version",
            "gauge",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
        ),
        (
            "etcd_server_id",
            "gauge",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        ),
        ("etcd_network_client_grpc_sent_bytes_total", "counter", "The total number of bytes sent to grpc clients."),
        (
            "etcd_network_client_grpc_received_bytes_total",
            "counter",
            "The total number of bytes received from grpc clients.",
        ),
        ("etcd_network_peer_sent_bytes_total", "counter", "The total number of bytes sent to peers."),
        ("etcd_network_peer_received_bytes_total", "counter", "The total number of bytes received from peers."),
        ("etcd_network_peer_sent_failures_total", "counter", "The total number of send failures from peers."),
        ("etcd_network_peer_round_trip_time_seconds", "histogram", "Round-Trip-Time histogram between peers"),
        ("etcd_network_active_peers", "gauge", "The current number of active peer connections."),
        ("os_fd_used", "gauge", "The number of used file descriptors."),
        ("os_fd_limit", "gauge", "The file descriptor limit."),
        ("grpc_server_started_total", "counter", "Total number of RPCs started on the server."),
        (
            "grpc_server_handled_total",
            "counter",
            "Total number of RPCs completed on the server, regardless of success or failure.",
        ),
        ("grpc_server_msg_received_total", "counter", "Total number of RPC stream messages received on the server."),
        ("grpc_server_msg_sent_total", "counter", "Total number of gRPC stream messages sent by the server."),
        ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."),
        ("process_open_fds", "gauge", "Number of open file descriptors."),
        ("process_max_fds", "gauge", "Maximum number of open file descriptors."),
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
        ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds."),
    ];

    /// Every metric of etcd's table is there, with etcd's type and help text.
    #[test]
    fn etcd_metrics_have_etcds_types_and_help() {
        let m = Metrics::new("3.5.16", 0x8e9e05c52164694d);
        let _peer = m.peer(0x91bc3c398fb3c146);
        let text = m.render();
        for (name, kind, help) in ETCD_3_5_1 {
            assert!(text.contains(&format!("\n# TYPE {name} {kind}\n")), "{name} is not a {kind}:\n{text}");
            assert!(text.contains(&format!("# HELP {name} {help}\n")), "{name}'s help differs:\n{text}");
        }
    }

    /// Values a fresh member shows as a fresh etcd does: ids and versions in their labels,
    /// -1 for a store never compacted, etcd's buckets.
    #[test]
    fn a_fresh_member_renders_as_etcd() {
        let m = Metrics::new("3.5.16", 0x8e9e05c52164694d);
        let text = m.render();
        for line in [
            "etcd_server_version{server_version=\"3.5.16\"} 1",
            "etcd_server_id{server_id=\"8e9e05c52164694d\"} 1",
            "etcd_cluster_version{cluster_version=\"3.5\"} 1",
            "etcd_debugging_mvcc_compact_revision -1",
            "etcd_server_is_learner 0",
            "etcd_network_client_grpc_sent_bytes_total ",
            "etcd_disk_backend_commit_duration_seconds_bucket{le=\"0.001\"} 0",
            "etcd_disk_backend_commit_duration_seconds_bucket{le=\"8.192\"} 0",
        ] {
            assert!(text.contains(&format!("\n{line}")), "no {line:?}:\n{text}");
        }
        assert!(!text.contains("etcd_disk_backend_commit_duration_seconds_bucket{le=\"16.384\"}"), "14 buckets");
        assert_eq!(major_minor("3.5.0"), "3.5");
        assert_eq!(major_minor("3.6"), "3.6");
    }

    /// A peer's series carry its id as etcd prints it, with etcd's round-trip buckets
    /// (0.1 ms to about 0.8 s), and go with it.
    #[test]
    fn peer_series_are_labelled_by_member_and_forgotten_with_it() {
        let m = Metrics::new("3.5.16", 0x8e9e05c52164694d);
        let peer = m.peer(0x91bc3c398fb3c146);
        peer.sent_bytes.inc_by(10);
        peer.received_bytes.inc_by(20);
        peer.sent_failures.inc();
        peer.round_trip.observe(0.00025);
        peer.active.set(1);
        let text = m.render();
        for line in [
            "etcd_network_peer_sent_bytes_total{To=\"91bc3c398fb3c146\"} 10",
            "etcd_network_peer_received_bytes_total{From=\"91bc3c398fb3c146\"} 20",
            "etcd_network_peer_sent_failures_total{To=\"91bc3c398fb3c146\"} 1",
            "etcd_network_active_peers{Local=\"8e9e05c52164694d\",Remote=\"91bc3c398fb3c146\"} 1",
            "etcd_network_peer_round_trip_time_seconds_bucket{To=\"91bc3c398fb3c146\",le=\"0.0001\"} 0",
            "etcd_network_peer_round_trip_time_seconds_bucket{To=\"91bc3c398fb3c146\",le=\"0.0004\"} 1",
            "etcd_network_peer_round_trip_time_seconds_bucket{To=\"91bc3c398fb3c146\",le=\"0.8192\"} 1",
        ] {
            assert!(text.contains(&format!("\n{line}\n")), "no {line:?}:\n{text}");
        }
        assert!(!text.contains("le=\"1.6384\""), "14 buckets");
        // Taken again (a stream that arrived first), the handles count into the same series.
        m.peer(0x91bc3c398fb3c146).sent_bytes.inc();
        assert!(m.render().contains("etcd_network_peer_sent_bytes_total{To=\"91bc3c398fb3c146\"} 11\n"));
        m.forget_peer(0x91bc3c398fb3c146);
        assert!(!m.render().contains("91bc3c398fb3c146"), "a removed member's series stay");
    }
}
