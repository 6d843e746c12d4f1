//! `plinth serve`: opens the data dir, starts the Raft driver and the store, and serves
//! gRPC and HTTP on the client URLs until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::{grpc_message_bytes_max, split_urls, AutoCompaction, ServeArgs, GRPC_OVERHEAD_BYTES};
use crate::conn::Keepalive;
use crate::node::membership::{parse_initial_cluster, ConfContext, Identity, Member, REMOVED_MESSAGE};
use crate::node::metrics::Metrics;
use crate::node::peer::pb::peer_server::PeerServer;
use crate::node::peer::{PeerService, PeerTransport, PEER_MESSAGE_BYTES_MAX};
use crate::node::tenants::{ClientFuture, ClientHandler, ClientService};
use crate::node::{Applier, Groups, Membership, Node, NodeConfig, DEFAULT_GROUP, SYSTEM_GROUP};
use crate::pb::etcdserverpb::{
    cluster_server::ClusterServer, lease_server::LeaseServer, maintenance_server::MaintenanceServer,
};
use crate::watch::server::watch_server::WatchServer;

/// Default per-tenant quota: far above etcd's 2 GiB, since RocksDB has no 8 GiB ceiling.
pub const QUOTA_BYTES_DEFAULT: u64 = 8 << 30;

/// How often the leader looks for expired leases.
const LEASE_EXPIRY_TICK: Duration = Duration::from_millis(250);

/// Sets up structured logging, one line per event, at `level`.
pub fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("--log-level {level:?}: {e}"))?;
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: log files and collectors get plain lines.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init()
        .map_err(|e| anyhow::anyhow!("logging: {e}"))
}

/// Runs a member until it is told to stop.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    args.validate()?;
    let data_dir = PathBuf::from(args.data_dir());
    let existed = data_dir.join("member.json").exists();
    std::fs::create_dir_all(&data_dir)?;
    // Peer TLS first: a member joining a cluster already talks to its peers (over TLS if
    // the peer URLs are https), and files that do not load stop it before anything starts.
    let peer_tls = crate::node::peer_tls::PeerTls::from_args(&args, &data_dir)?;
    anyhow::ensure!(
        matches!(args.initial_cluster_state.as_str(), "new" | "existing"),
        "--initial-cluster-state must be new or existing, not {:?}",
        args.initial_cluster_state
    );
    let identity = if !existed && args.initial_cluster_state == "existing" {
        join_cluster(&args, &data_dir, peer_tls.as_ref()).await?
    } else {
        Identity::load_or_create(
            &data_dir,
            &args.name,
            split_urls(&args.initial_advertise_peer_urls),
            split_urls(&args.advertise_client_urls),
            &args.initial_cluster_token,
            args.initial_cluster.as_deref(),
        )?
        .0
    };
    if identity.removed.contains(&identity.member_id) || identity.me().is_none() {
        anyhow::bail!("{REMOVED_MESSAGE}; this data dir can no longer serve");
    }
    if existed {
        info!(data_dir = %data_dir.display(), "data dir exists; initial cluster flags ignored");
    }
    let peer_ids = identity.peer_ids();
    let quota_bytes = if args.quota_backend_bytes == 0 { QUOTA_BYTES_DEFAULT } else { args.quota_backend_bytes };
    // The backup target opens (and an S3 URL parses) before anything starts.
    let backups = args.backup_schedule()?;

    let metrics = Arc::new(Metrics::new(crate::version::ETCD_COMPAT_VERSION, identity.member_id));
    if args.metrics == "extensive" {
        metrics.enable_extensive();
    }
    let store_cfg = store::StoreConfig {
        commit_observer: Some(Arc::new(crate::node::metrics::BackendCommitMetric(
            metrics.backend_commit_duration.clone(),
        ))),
        quota_bytes_per_group: quota_bytes,
        max_txn_ops: args.max_txn_ops,
        max_request_bytes: args.max_request_bytes,
        live_cache_bytes: args.live_cache_bytes,
        key_counts: args.experimental_key_counts,
        // A member that takes backups keeps each group's history after its backup mark.
        hold_history_for_backups: backups.is_some(),
        ..store::StoreConfig::default()
    };
    let store = store::Store::open(&data_dir.join("store"), store_cfg)?;
    // etcd's initial corruption check runs on the store as it is on disk: before the log is
    // replayed into it and before anything is served.
    if args.experimental_initial_corrupt_check == Some(true) {
        // etcd's request timeout: 5 s plus two election timeouts.
        let timeout = Duration::from_millis(5000 + 2 * args.election_timeout);
        initial_corruption_check(&store, &identity, peer_tls.as_ref(), &data_dir, timeout).await?;
    }
    let wal_cfg = raft_log::WalConfig {
        fsync_observer: Some(Arc::new(crate::node::metrics::WalFsyncMetric(metrics.wal_fsync_duration.clone()))),
        segment_bytes_max: args.experimental_wal_segment_bytes,
        ..raft_log::WalConfig::new(data_dir.join("wal"))
    };
    let wal = Arc::new(raft_log::Wal::open(wal_cfg)?);
    metrics.quota_backend_bytes.set(quota_bytes as i64);
    // etcd's smallest TTL: 1.5 election timeouts, in whole seconds, rounded up.
    let min_ttl = ((args.election_timeout * 3).div_ceil(2)).div_ceil(1000).max(1) as i64;
    // Every group's runtime (waiters, applied index, lease timers), loaded from the store
    // when the driver first replays or applies the group.
    let groups = Groups::with_heavy_proposals(store.clone(), min_ttl, args.heavy_tenant_max_proposals);
    let registry_changed = Arc::new(tokio::sync::Notify::new());
    let transport = PeerTransport::new(identity.member_id, store.clone(), &peer_ids, metrics.clone());
    if let Some(tls) = &peer_tls {
        transport.set_tls(tls.clone());
    }
    let bootstrap = bootstrap_of(&identity);
    let member_id = identity.member_id;
    let (membership, mut removed_rx) = Membership::new(identity, transport.clone(), data_dir.clone());
    let applier = Applier {
        store: store.clone(),
        groups: groups.clone(),
        metrics: metrics.clone(),
        membership: membership.clone(),
        registry_changed: registry_changed.clone(),
        lease_promote_extend: Duration::from_millis(args.election_timeout),
    };
    let driver_cfg = raft_log::DriverConfig {
        node_id: raft_log::NodeId(member_id),
        tick_interval: Duration::from_millis(args.heartbeat_interval),
        election_ticks: (args.election_timeout / args.heartbeat_interval) as usize,
        heartbeat_ticks: 1,
        // Idle groups sleep after two election timeouts (see raft-log's "Hibernation").
        hibernate_after_ticks: 2 * (args.election_timeout / args.heartbeat_interval) as usize,
        pipeline_persistence: args.experimental_wal_pipeline,
        // A linearizable read waits for its read index as long as etcd's does (its request
        // timeout, `requestCurrentIndex`), then fails with "request timed out".
        read_index_timeout: Duration::from_millis(5000 + args.election_timeout * 2),
        ..raft_log::DriverConfig::default()
    };
    let source: Arc<dyn raft_log::SnapshotSource> = transport.clone();
    let (driver, raft) = raft_log::Driver::start_with_snapshots(
        driver_cfg,
        wal.clone(),
        Box::new(applier),
        transport.clone(),
        Some(source),
    )?;
    // Every member of a new cluster bootstraps the default group with the same log (one
    // conf change per member of `--initial-cluster`); a joining member starts empty. On
    // restart the group comes back from the log and this is a no-op. The system group (the
    // tenant registry) starts the same way; its voters then follow the default group's.
    raft.create_group_with(raft_log::GroupId(DEFAULT_GROUP), bootstrap.clone())?;
    raft.create_group_with(raft_log::GroupId(SYSTEM_GROUP), bootstrap)?;

    let node_cfg = NodeConfig {
        max_request_bytes: args.max_request_bytes,
        request_timeout: Duration::from_millis(5000 + args.election_timeout * 2),
        progress_notify_interval: args.progress_notify_interval()?,
        quota_bytes,
        election_timeout: Duration::from_millis(args.election_timeout),
        auth: args.security.auth_config()?,
    };
    let client_host = args
        .client_listeners()?
        .first()
        .map(|(addr, _)| addr.rsplit_once(':').map_or(addr.clone(), |(host, _)| host.to_string()))
        .unwrap_or_else(|| "127.0.0.1".into());
    let tenants_cfg = crate::node::tenants::TenantsConfig {
        port_base: args.tenant_client_port_base,
        client_host,
        admin_cn: args.admin_cn.clone(),
        default_for_unmapped: args.default_tenant_for_unmapped,
    };
    let health = health_service().await;
    let max_request_bytes = args.max_request_bytes;
    // The backup scheduler, when this member takes backups: the admin APIs of every client
    // router reach it, and it runs once the default tenant's node exists.
    let backups = backups.map(|(target, schedule)| {
        (crate::backup::schedule::Scheduler::new(Arc::from(target), schedule.clone()), schedule)
    });
    let scheduler = backups.as_ref().map(|(scheduler, _)| scheduler.clone());
    // Every client port (the shared one and the tenants' own) pings as etcd's gRPC server does.
    let client_keepalive = args.client_keepalive()?;
    let tenants = crate::node::tenants::Tenants::new(
        tenants_cfg,
        groups.clone(),
        registry_changed,
        Box::new(move |node| client_service(node, max_request_bytes, health.clone(), scheduler.clone())),
        Box::new(move |listener, router| Box::pin(serve_router(listener, router, client_keepalive))),
    );
    let node = Arc::new(Node::new(
        node_cfg,
        membership,
        data_dir.clone(),
        store.clone(),
        raft,
        groups.get(DEFAULT_GROUP),
        metrics,
        tenants.clone(),
    ));
    tenants.serve_group(node.clone());
    tenants.serve_group(Arc::new(node.sibling(groups.get(SYSTEM_GROUP))));
    tokio::spawn(tenants.clone().run(node.clone()));
    tokio::spawn(expire_leases(node.clone()));
    tokio::spawn(purge_log(
        node.clone(),
        wal,
        Duration::from_millis(args.experimental_log_purge_interval_ms.max(1)),
        args.experimental_snapshot_catchup_entries,
    ));
    if let Some(policy) = args.auto_compaction()? {
        tokio::spawn(auto_compact(node.clone(), policy));
    }
    if let Some((scheduler, schedule)) = backups {
        info!(
            target = %scheduler.describe_target(),
            full_interval = ?schedule.full_interval,
            delta_interval = ?schedule.delta_interval,
            "automated backups on"
        );
        tokio::spawn(scheduler.run(node.clone()));
    }

    // The shared client port: each request goes to the service of the tenant its connection
    // resolves to (the default tenant, or a client certificate's tenant).
    let dispatch = crate::node::tenants::Dispatch { tenants: tenants.clone() };

    let mut servers = tokio::task::JoinSet::new();
    let mut routes = tonic::service::Routes::builder();
    routes.add_service(
        PeerServer::new(PeerService { node: node.clone() })
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
    );
    let peer_router = routes.routes().into_axum_router();
    for addr in args.peer_listen_addrs()? {
        let listener =
            TcpListener::bind(&addr).await.map_err(|e| anyhow::anyhow!("listen on {addr} for peers: {e}"))?;
        // Without peer client certificates anyone who can reach the port and knows the
        // cluster id can speak for a member: say so once per listener, loudly, rather than
        // let it go unnoticed.
        match &peer_tls {
            Some(tls) => {
                info!(%addr, "serving peer traffic over TLS");
                if !tls.authenticates_peers() {
                    warn!(
                        %addr,
                        "the peer port is unauthenticated (TLS without --peer-client-cert-auth): anyone who reaches \
                         it can send Raft messages as a member; use --peer-client-cert-auth with --peer-trusted-ca-file"
                    );
                }
                // The same server as every other listener (HTTP/2 keepalive, stream limit, TCP
                // settings); handlers check the peer's certificate (`PeerTls::check_identity`).
                servers.spawn(serve_router_tls(listener, peer_router.clone(), tls.server(), Keepalive::DEFAULT));
            }
            None => {
                info!(%addr, "serving peer traffic");
                warn!(
                    %addr,
                    "the peer port is unauthenticated (plain HTTP/2, cluster id check only): anyone who reaches it \
                     can send Raft messages as a member; use https peer URLs with --peer-client-cert-auth"
                );
                servers.spawn(serve_router(listener, peer_router.clone(), Keepalive::DEFAULT));
            }
        }
    }
    transport.start(&node);
    let client_listeners = args.client_listeners()?;
    let client_tls = client_tls(&args, &data_dir, &client_listeners)?;
    for (addr, https) in client_listeners {
        let listener =
            TcpListener::bind(&addr).await.map_err(|e| anyhow::anyhow!("listen on {addr} for clients: {e}"))?;
        match (&client_tls, https) {
            (Some(tls), true) => {
                info!(%addr, "serving client requests (gRPC and HTTP) over TLS");
                servers.spawn(serve_router_tls(listener, dispatch.clone(), tls.clone(), client_keepalive));
            }
            _ => {
                info!(%addr, "serving client requests (gRPC and HTTP)");
                servers.spawn(serve_router(listener, dispatch.clone(), client_keepalive));
            }
        }
    }
    for addr in args.metrics_listen_addrs()? {
        let listener =
            TcpListener::bind(&addr).await.map_err(|e| anyhow::anyhow!("listen on {addr} for metrics: {e}"))?;
        info!(%addr, "serving HTTP endpoints");
        let router = crate::http::router(node.clone()).fallback(crate::http::unknown_path);
        servers.spawn(serve_router(listener, router, Keepalive::DEFAULT));
    }
    info!(
        name = %args.name,
        member_id = format_args!("{:x}", node.member_id()),
        cluster_id = format_args!("{:x}", node.membership.identity.read().cluster_id),
        "member ready"
    );

    tokio::select! {
        _ = shutdown_signal() => info!("shutting down"),
        // The borrow `wait_for` returns is dropped before the branch runs: held across the
        // sleep it would block `mark_removed`'s write, on a runtime worker.
        _ = async { drop(removed_rx.wait_for(|removed| *removed).await) } => {
            // Let the change reach the others before this member goes away.
            tokio::time::sleep(Duration::from_millis(args.heartbeat_interval * 3)).await;
            warn!("{REMOVED_MESSAGE}; stopping");
        }
        Some(done) = servers.join_next() => match done {
            Err(e) => warn!(error = %e, "a listener failed"),
            Ok(()) => warn!("a listener stopped"),
        },
    }
    servers.abort_all();
    driver.stop();
    store.flush()?;
    info!("stopped");
    Ok(())
}

/// Every etcd service, the tenant admin API (`plinth.v1.Tenants`, refused unless `node` is
/// the default tenant's) and the HTTP endpoints, served for `node`'s group.
fn client_service(
    node: Arc<Node>,
    max_request_bytes: usize,
    health: HealthServer,
    backups: Option<Arc<crate::backup::schedule::Scheduler>>,
) -> ClientService {
    let kv = crate::kv::server::k_v_server::KVServer::new(crate::kv::KvService { node: node.clone() })
        .max_decoding_message_size(grpc_message_bytes_max(max_request_bytes))
        .max_encoding_message_size(usize::MAX);
    let watch = WatchServer::new(crate::watch::WatchService { node: node.clone() })
        .max_decoding_message_size(grpc_message_bytes_max(max_request_bytes))
        .max_encoding_message_size(usize::MAX);
    // One lease service (one id generator) for the Lease service and the Lock and Election
    // services' grants.
    let leases = Arc::new(crate::lease::LeaseService::new(node.clone()));
    // etcd's gRPC server has one receive limit for every service (tonic's default is 4 MiB).
    let decode_max = grpc_message_bytes_max(max_request_bytes);
    let lease = LeaseServer::from_arc(leases.clone()).max_decoding_message_size(decode_max);
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(kv.clone())
        .add_service(watch.clone())
        .add_service(lease.clone())
        .add_service(
            ClusterServer::new(crate::cluster::ClusterService { node: node.clone() })
                .max_decoding_message_size(decode_max),
        )
        .add_service(
            crate::pb::etcdserverpb::auth_server::AuthServer::new(crate::auth::AuthService::new(node.clone()))
                .max_decoding_message_size(decode_max),
        )
        .add_service(
            MaintenanceServer::new(crate::maintenance::MaintenanceService { node: node.clone() })
                .max_decoding_message_size(decode_max)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            crate::pb::v3lockpb::lock_server::LockServer::new(crate::lock::LockService {
                node: node.clone(),
                leases: leases.clone(),
            })
            .max_decoding_message_size(decode_max),
        )
        .add_service(
            crate::pb::v3electionpb::election_server::ElectionServer::new(crate::election::ElectionService {
                node: node.clone(),
                leases,
            })
            .max_decoding_message_size(decode_max),
        )
        .add_service(health);
    // On a tenant's router the admin API only answers "permission denied".
    grpc.add_service(
        crate::pb::plinthv1::tenants_server::TenantsServer::new(crate::tenants::TenantsService {
            node: node.clone(),
            backups: backups.clone(),
        })
        .max_decoding_message_size(crate::tenants::IMPORT_MESSAGE_BYTES_MAX),
    )
    .add_service(crate::pb::plinthv1::backups_server::BackupsServer::new(
        crate::backup::schedule::BackupsService { node: node.clone(), scheduler: backups },
    ));
    // The fallback is set before the admission layer, so unknown gRPC methods are admitted
    // and counted like any call.
    let rest = grpc
        .routes()
        .into_axum_router()
        .fallback(crate::http::unknown_path)
        .layer(axum::middleware::from_fn_with_state(node.clone(), admit_layer))
        .merge(crate::http::router(node.clone()));
    // The JSON of a gateway request: base64 and field names make it up to about twice the
    // protobuf it becomes, which the service's decoding limit then checks as any call's.
    let gateway_body_max = 2 * max_request_bytes + GRPC_OVERHEAD_BYTES;
    ClientService::new(ClientRoutes { node, kv, watch, lease, rest, gateway_body_max })
}

/// A group's client requests: the key-value, watch and lease calls (nearly every request a
/// kube-apiserver makes) go straight to their service through [`admit`]; the other etcd
/// services, the admin APIs, the HTTP endpoints and unknown paths go through an axum router
/// with [`admit`] as its layer (unknown gRPC paths answer "unimplemented" there). The direct
/// way saves each hot call two routers' path matches, boxed futures and service clones.
/// etcd's JSON gateway (`/v3/...`, `gateway.rs`) turns its requests into gRPC calls served
/// here again.
#[derive(Clone)]
struct ClientRoutes {
    node: Arc<Node>,
    kv: crate::kv::server::k_v_server::KVServer<crate::kv::KvService>,
    watch: WatchServer<crate::watch::WatchService>,
    lease: LeaseServer<crate::lease::LeaseService>,
    rest: axum::Router,
    /// Bound of a gateway request's JSON body.
    gateway_body_max: usize,
}

impl ClientHandler for ClientRoutes {
    fn handle(&self, request: axum::extract::Request) -> ClientFuture {
        let path = request.uri().path();
        if path.starts_with("/etcdserverpb.KV/") {
            direct(self.node.clone(), self.kv.clone(), request)
        } else if path.starts_with("/etcdserverpb.Watch/") {
            direct(self.node.clone(), self.watch.clone(), request)
        } else if path.starts_with("/etcdserverpb.Lease/") {
            direct(self.node.clone(), self.lease.clone(), request)
        } else if !crate::http::is_grpc(request.headers()) {
            let routes = self.clone();
            crate::http::access_controlled(request, move |request| {
                if crate::gateway::is_gateway_path(request.uri().path()) {
                    let max = routes.gateway_body_max;
                    crate::gateway::serve(request, max, move |grpc| routes.handle(grpc))
                } else {
                    Box::pin(tower::ServiceExt::oneshot(routes.rest, request))
                }
            })
        } else {
            Box::pin(tower::ServiceExt::oneshot(self.rest.clone(), request))
        }
    }
}

/// A hot call: [`admit`], then the generated server.
fn direct<S>(node: Arc<Node>, service: S, request: axum::extract::Request) -> ClientFuture
where
    S: tower::Service<
            axum::extract::Request,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    Box::pin(async move { Ok(admit(&node, request, |r| grpc_call(service, r)).await) })
}

/// One call of a generated gRPC server, its answer as an axum response.
async fn grpc_call<S>(service: S, request: axum::extract::Request) -> axum::response::Response
where
    S: tower::Service<
        axum::extract::Request,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
    >,
{
    match tower::ServiceExt::oneshot(service, request).await {
        Ok(response) => response.map(axum::body::Body::new),
        Err(never) => match never {},
    }
}

/// The etcd calls that read or change a group's data: refused while an import replaces it.
/// Membership, status, alarms, auth reads and the admin API (which runs the import) stay.
const DATA_CALL_PREFIXES: [&str; 6] = [
    "/etcdserverpb.KV/",
    "/etcdserverpb.Watch/",
    "/etcdserverpb.Lease/",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.Maintenance/Defragment",
];

/// Whether a learner serves the call at `path`. etcd's learner serves only `Status`, a
/// serializable `Range` (the service refuses a linearizable one) and `Snapshot` of its own
/// services (its interceptors' `isRPCSupportedForLearner`); every other etcd call, the lock
/// and election services' included, is refused with `Unavailable` "rpc not supported for
/// learner", which etcd's clients take as a cue to try another endpoint. The gRPC health
/// service and Plinth's own admin API are not etcd calls and stay served.
fn served_by_learner(path: &str) -> bool {
    let etcd_call = ["/etcdserverpb.", "/v3lockpb.", "/v3electionpb."].iter().any(|p| path.starts_with(p));
    !etcd_call
        || matches!(
            path,
            "/etcdserverpb.Maintenance/Status" | "/etcdserverpb.KV/Range" | "/etcdserverpb.Maintenance/Snapshot"
        )
}

/// The one middleware of every etcd call, on both ways in (the shared client port, after the
/// certificate picked the tenant, and the tenant's own port). In order:
/// - counts the call in the gRPC metrics ([`GrpcCall`](crate::node::grpc_metrics::GrpcCall)),
///   refusals below included, and every request of the group (the tenant's request rate in
///   `plinth tenant show`);
/// - binds the connection to the group, whose tasks then follow its CPU lane (`conn.rs`);
/// - refuses an etcd call over the tenant's requests per second with etcd's "too many
///   requests" (`node/limits.rs`);
/// - answers a data call on a group being imported with `etcdserver: tenant is being
///   restored` before it reaches the service, so nothing reads a half-imported keyspace
///   (writes that got past this are refused by the store's apply on every replica);
/// - runs a key-value call in the CPU lane its group's load picks (`node/lanes.rs`);
/// - gives a unary call the client's deadline (`grpc-timeout`), where the node's waits end
///   with etcd's errors (`node/deadline.rs`).
///
/// One function rather than a layer per concern: each layer costs a boxed future and a boxed
/// service call per request. The hot calls reach it directly ([`ClientRoutes`]), the others
/// as their router's layer ([`admit_layer`]); `next` serves the request.
async fn admit<F, Fut>(node: &Node, request: axum::extract::Request, next: F) -> axum::response::Response
where
    F: FnOnce(axum::extract::Request) -> Fut,
    Fut: std::future::Future<Output = axum::response::Response> + Send + 'static,
{
    use crate::node::grpc_metrics::{unknown_call, GrpcCall};
    let (call, request) = GrpcCall::start(&node.metrics, &node.runtime, request);
    // A method the server does not have is answered before anything else, as grpc-go does.
    // `call` is `None` for a gRPC path that names no method at all, such as `/x`.
    let named_no_method = match &call {
        Some(call) => !call.is_known(),
        None => crate::http::is_grpc(request.headers()),
    };
    let unknown = if named_no_method { unknown_call(request.uri().path()) } else { None };
    let mut response = match unknown {
        Some(status) => status.into_http(),
        None => admitted(node, request, next).await,
    };
    oversized_as_etcd(&mut response);
    match call {
        Some(call) => call.finish(response),
        None => response,
    }
}

/// tonic refuses a request message above the decoding limit with `OutOfRange` and words of
/// its own; etcd's gRPC server with `ResourceExhausted`, "grpc: received message larger than
/// max (N vs. M)". Such an answer carries its status in its headers (an answer that ran
/// carries it in trailers), so every other answer costs one header lookup here.
fn oversized_as_etcd(response: &mut axum::response::Response) {
    const TONIC_WORDS: &str = "Error, decoded message length too large: found ";
    if response.headers().get("grpc-status").is_none_or(|code| code.as_bytes() != b"11") {
        return;
    }
    let Some(status) = tonic::Status::from_header_map(response.headers()) else { return };
    let sizes = status.message().strip_prefix(TONIC_WORDS).and_then(|rest| rest.strip_suffix(" bytes"));
    let Some((found, limit)) = sizes.and_then(|sizes| sizes.split_once(" bytes, the limit is: ")) else { return };
    let etcd =
        tonic::Status::resource_exhausted(format!("grpc: received message larger than max ({found} vs. {limit})"));
    if etcd.add_header(response.headers_mut()).is_err() {
        warn!("cannot write an oversized request's status");
    }
}

/// [`admit`] as the layer of a group's router.
async fn admit_layer(
    axum::extract::State(node): axum::extract::State<Arc<Node>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    admit(&node, request, |r| next.run(r)).await
}

/// [`admit`] past the metrics.
async fn admitted<F, Fut>(node: &Node, request: axum::extract::Request, next: F) -> axum::response::Response
where
    F: FnOnce(axum::extract::Request) -> Fut,
    Fut: std::future::Future<Output = axum::response::Response> + Send + 'static,
{
    let rt = &node.runtime;
    rt.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Some(lane) = request.extensions().get::<Arc<crate::node::lanes::ConnectionLane>>() {
        lane.bind(&rt.kv_in_flight);
    }
    let path = request.uri().path();
    let deadline = crate::node::deadline::of_request(path, request.headers());
    if path.starts_with("/etcdserverpb.") && !rt.limiter.admit_request() {
        return crate::error::EtcdError::TooManyRequests.status().into_http();
    }
    if node.is_learner() && !served_by_learner(path) {
        return crate::error::EtcdError::NotSupportedForLearner.status().into_http();
    }
    if DATA_CALL_PREFIXES.iter().any(|p| path.starts_with(p)) && node.store.import_state(node.group()).is_some() {
        return crate::error::EtcdError::Restoring.status().into_http();
    }
    let kv = path.starts_with("/etcdserverpb.KV/");
    // The node's waits for this call end at the client's deadline too (`node/deadline.rs`).
    match (kv, deadline) {
        (true, Some(d)) => rt.kv_in_flight.run(crate::node::deadline::scope(d, next(request))).await,
        (true, None) => rt.kv_in_flight.run(next(request)).await,
        (false, Some(d)) => crate::node::deadline::scope(d, next(request)).await,
        (false, None) => next(request).await,
    }
}

/// The server of `--cert-file`/`--key-file`/`--trusted-ca-file`/`--client-cert-auth` (or of
/// `--auto-tls`'s self-signed certificate) when a client URL is `https://`; `None` otherwise.
/// Fails at start-up if the files do not load.
fn client_tls(
    args: &ServeArgs,
    data_dir: &std::path::Path,
    listeners: &[(String, bool)],
) -> anyhow::Result<Option<Arc<crate::tls::ReloadingServerConfig>>> {
    let security = &args.security;
    // `validate` refused the client TLS flags if no client URL is https.
    if !listeners.iter().any(|(_, https)| *https) {
        return Ok(None);
    }
    let client_cert_auth = security.client_cert_auth == Some(true);
    let trusted_ca_file = security.trusted_ca_file.as_ref().map(PathBuf::from);
    let files = match (&security.cert_file, &security.key_file) {
        (Some(cert), Some(key)) => {
            if security.auto_tls == Some(true) {
                warn!("--auto-tls ignored: --cert-file and --key-file are given");
            }
            crate::tls::ServerTlsFiles {
                cert_file: cert.into(),
                key_file: key.into(),
                trusted_ca_file,
                client_cert_auth,
            }
        }
        // `validate` made sure an https URL has files or --auto-tls. Unlike etcd, which drops
        // them with --auto-tls, a given CA and --client-cert-auth still apply.
        _ => {
            let hosts: Vec<String> = listeners
                .iter()
                .filter_map(|(addr, _)| addr.rsplit_once(':').map(|(host, _)| host.trim_matches(['[', ']']).to_owned()))
                .collect();
            let generated = crate::tls::self_signed(
                &data_dir.join("fixtures").join("client"),
                &hosts,
                args.self_signed_cert_validity()?,
            )?;
            crate::tls::ServerTlsFiles { trusted_ca_file, client_cert_auth, ..generated }
        }
    };
    Ok(Some(Arc::new(crate::tls::ReloadingServerConfig::new(files, args.tls_params()?)?)))
}

/// Idle time before the kernel probes a TCP connection (Go's listener default, which etcd's
/// listeners inherit), so connections of vanished clients are reclaimed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// Accepted TCP connections of `listener` with the socket options every client and peer
/// connection gets.
fn tcp_incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    // Small gRPC responses must not wait for Nagle's algorithm (up to 40 ms per round trip
    // with delayed ACKs): every accepted connection gets TCP_NODELAY, as grpc-go sets it.
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(TCP_KEEPALIVE))
}

/// Serves `router` (gRPC and HTTP/1.1 or HTTP/2 endpoints) on `listener` (`conn.rs`).
async fn serve_router(listener: TcpListener, router: impl crate::conn::HttpService, keepalive: Keepalive) {
    crate::conn::serve(tcp_incoming(listener), router, keepalive).await
}

/// Serves `router` over TLS on `listener` (client and peer listeners alike). Handshakes run
/// off the accept loop (bounded, with a timeout: see `tls.rs`), each with the certificate
/// files as they are at that moment; request handlers find the other side's certificate
/// identity in the request extensions (`tls::TlsConnectInfo`).
async fn serve_router_tls(
    listener: TcpListener,
    router: impl crate::conn::HttpService,
    tls: Arc<crate::tls::ReloadingServerConfig>,
    keepalive: Keepalive,
) {
    crate::conn::serve(crate::tls::tls_incoming(tcp_incoming(listener), tls), router, keepalive).await
}

/// The gRPC health service every client router serves.
type HealthServer = tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;

async fn health_service() -> HealthServer {
    let reporter = tonic_health::server::HealthReporter::new();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    tonic_health::pb::health_server::HealthServer::new(tonic_health::server::HealthService::from_health_reporter(
        reporter,
    ))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// On the leader of each group, proposes the revoke of every expired lease of the group.
async fn expire_leases(default: Arc<Node>) {
    let mut tick = tokio::time::interval(LEASE_EXPIRY_TICK);
    loop {
        tick.tick().await;
        let is_leader = default.leader() == default.member_id();
        default.metrics.is_leader.set(i64::from(is_leader));
        for node in default.tenants.nodes() {
            // A group without leases (checked first: it costs a lock, not a copy of the
            // group's Raft status) has nothing to expire.
            if !node.lessor.is_empty() && node.leader() == node.member_id() {
                revoke_expired(&node);
            }
        }
    }
}

/// Proposes the revoke of every lease of `node`'s group whose timer ran out.
fn revoke_expired(node: &Arc<Node>) {
    if node.store.import_state(node.group()).is_some() {
        // The store refuses revokes while an import runs; its finish resets the timers.
        return;
    }
    for id in node.lessor.take_expired() {
        let node = node.clone();
        tokio::spawn(async move {
            let revoke = store::CommandBody::LeaseRevoke(store::LeaseRevokeRequest { id });
            match node.propose(revoke).await {
                Ok(_) => node.lessor.on_revoked(id),
                Err(status) if status.code() == tonic::Code::NotFound => node.lessor.on_revoked(id),
                Err(status) => {
                    warn!(lease = id, error = %status.message(), "revoking an expired lease failed");
                    node.lessor.revoke_failed(id);
                }
            }
        });
    }
}

/// How a member's default group starts the first time: the bootstrap log of a new cluster
/// (every member writes the same conf changes, so their contexts hold only what every member
/// knows alike: ids, names and peer URLs), or empty when joining a running one.
fn bootstrap_of(identity: &Identity) -> raft_log::Bootstrap {
    if identity.joined {
        return raft_log::Bootstrap::Join;
    }
    let members = identity
        .members
        .iter()
        .map(|m| {
            let member = Member { client_urls: Vec::new(), ..m.clone() };
            (raft_log::NodeId(m.id), ConfContext { proposer: 0, request_id: 0, member }.encode())
        })
        .collect();
    raft_log::Bootstrap::Members(members)
}

/// etcd's initial corruption check (`--experimental-initial-corrupt-check`, its
/// `CheckInitialHashKV`): this member's hash of the default keyspace at its current revision
/// against each peer's at that revision. A peer whose hash differs at the same compact
/// revision is a mismatch, and any mismatch stops the member before it serves. A peer that
/// cannot be asked, or that has compacted past the revision or not reached it, is only
/// logged, as by etcd: members restarting together find no peer up yet. Tenant groups are
/// not compared.
async fn initial_corruption_check(
    store: &store::Store,
    identity: &Identity,
    tls: Option<&Arc<crate::node::peer_tls::PeerTls>>,
    data_dir: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let id = identity.member_id;
    info!(local_member_id = format_args!("{id:x}"), ?timeout, "starting initial corruption check");
    let (own, dir) = (store.clone(), data_dir.to_path_buf());
    let group = store::GroupId(crate::node::DEFAULT_GROUP);
    let (hash, compact, revision) =
        tokio::task::spawn_blocking(move || crate::backup::etcd_export::etcd_hash_kv(&own, group, 0, &dir)).await??;
    let mut mismatches = 0;
    for peer in identity.members.iter().filter(|m| m.id != id) {
        let remote = format_args!("{:x}", peer.id);
        // One answer per member: its URLs are tried in turn.
        let mut answer = None;
        for url in &peer.peer_urls {
            match crate::node::peer::fetch_hash_kv(url, tls, revision, timeout).await {
                Ok(a) => {
                    answer = Some(a);
                    break;
                }
                Err(e) => warn!(remote_peer_id = %remote, error = %e, "cannot fetch hash from remote peer"),
            }
        }
        match answer {
            Some(Ok(r)) if r.hash != hash && r.compact_revision == compact => {
                warn!(remote_peer_id = %remote, local_member_hash = hash, remote_peer_hash = r.hash, revision,
                    compact_revision = compact, "found different hash values from remote peer");
                mismatches += 1;
            }
            Some(Ok(r)) if r.hash != hash => warn!(remote_peer_id = %remote, local_member_compact_revision = compact,
                remote_peer_compact_revision = r.compact_revision, "found different compact revision values from remote peer"),
            Some(Ok(_)) => {}
            Some(Err(status)) => {
                warn!(remote_peer_id = %remote, error = %status.message(), "cannot fetch hash from remote peer")
            }
            None => {}
        }
    }
    anyhow::ensure!(mismatches == 0, "{id:x} found data inconsistency with peers");
    info!(local_member_id = format_args!("{id:x}"), "initial corruption checking passed; no corruption");
    Ok(())
}

/// `--initial-cluster-state existing`: asks the other members of `--initial-cluster` for the
/// cluster id and member list, checks the flag lists exactly those members, and finds this
/// member in it by its peer URLs (it was added with `member add` before it started).
async fn join_cluster(
    args: &ServeArgs,
    data_dir: &std::path::Path,
    peer_tls: Option<&Arc<crate::node::peer_tls::PeerTls>>,
) -> anyhow::Result<Identity> {
    let own = split_urls(&args.initial_advertise_peer_urls);
    let cluster = args
        .initial_cluster
        .as_deref()
        .map(parse_initial_cluster)
        .transpose()?
        .ok_or_else(|| anyhow::anyhow!("--initial-cluster-state existing needs --initial-cluster"))?;
    crate::node::membership::verify_initial_cluster(&cluster, &args.name, &own, true)?;
    let own_norm = crate::node::membership::normalize_urls(&own);
    let others: Vec<String> = cluster
        .iter()
        .filter(|(name, urls)| name != &args.name && crate::node::membership::normalize_urls(urls) != own_norm)
        .flat_map(|(_, urls)| urls.iter().cloned())
        .collect();
    let (cluster_id, members) = crate::node::peer::fetch_members(&others, peer_tls)
        .await
        .map_err(|e| anyhow::anyhow!("cannot fetch the member list from --initial-cluster: {e}"))?;
    // `--initial-cluster` must list the cluster as it is now, this member included (what
    // `etcdctl member add` prints for it).
    crate::node::membership::validate_join(&cluster, &members)
        .map_err(|e| anyhow::anyhow!("error validating peerURLs of cluster {cluster_id:x}: {e}"))?;
    let identity =
        Identity::joining(data_dir, cluster_id, members, &args.name, &own, split_urls(&args.advertise_client_urls))?;
    info!(
        member_id = format_args!("{:x}", identity.member_id),
        cluster_id = format_args!("{cluster_id:x}"),
        "joining a running cluster"
    );
    Ok(identity)
}

/// WAL segments, newest first, in which a group keeps its catch-up entries; below them it
/// keeps none. One entry keeps its whole segment, and purge deletes only a prefix of the
/// segments, so without this bound a tenant that writes a few entries a minute (too often to
/// hibernate, too rarely to pass `catch_up_entries` for hours) would keep every segment
/// written since, by every tenant. raft-engine rewrites such a group's live entries into the
/// newest file instead; they are only catch-up entries here (the store holds their effect),
/// and a cold group's followers acknowledged them long ago, so dropping them costs a member
/// that was down that long a snapshot, as it would past `catch_up_entries`.
const CATCH_UP_SEGMENTS: usize = 2;

/// Flushes the store and lets the WAL purge what the flush made redundant, keeping
/// `catch_up_entries` below it in each awake group so that a follower a little behind needs
/// no snapshot (a hibernating group keeps none), as long as they are in the newest
/// [`CATCH_UP_SEGMENTS`] segments.
async fn purge_log(node: Arc<Node>, wal: Arc<raft_log::Wal>, interval: Duration, catch_up_entries: u64) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let store = node.store.clone();
        let flushed = match tokio::task::spawn_blocking(move || store.flush()).await {
            // The flush reports, per group, an applied index it made durable: the log up to
            // it is no longer needed for replay.
            Ok(Ok(flushed)) => flushed,
            // A failed flush (an fsync that failed, a full disk) leaves the store's files in a
            // state nobody can vouch for, and retrying it is not safe after a failed fsync:
            // stop, and recover from the log at the next start.
            Ok(Err(e)) => panic!("store flush failed: {e}; stopping"),
            Err(e) => {
                warn!(error = %e, "store flush task failed; the log is kept");
                continue;
            }
        };
        let held = wal.held_by_old_segments(CATCH_UP_SEGMENTS);
        for (group, applied) in flushed {
            let Some(status) = node.raft.status(raft_log::GroupId(group.0)) else { continue };
            // A hibernating group went to sleep only with every member caught up, so no
            // follower needs its recent entries: it keeps none. Otherwise an idle tenant's
            // last few thousand entries would pin the WAL segments that hold them forever,
            // and with many idle tenants, every segment. A member that falls behind later
            // gets a snapshot, as it would past the catch-up entries.
            // Flush before purge: only entries the store has made durable may leave the log.
            let old = held.get(&raft_log::GroupId(group.0)).map(|i| i.0);
            let Some(purge_to) = purge_index(applied, status.hibernating, catch_up_entries, old) else { continue };
            if let Err(e) = node.raft.compact_log(raft_log::GroupId(group.0), purge_to) {
                warn!(group = group.0, error = %e, "log purge failed");
            }
        }
    }
}

/// Where a group's log may be purged to, given the applied index a flush made durable: all
/// of it for a hibernating group, else all but `catch_up_entries`, and in any case every
/// entry up to `in_old_segments` (the highest the segments past [`CATCH_UP_SEGMENTS`] hold)
/// that is durable; `None` for nothing.
fn purge_index(
    durable_applied: u64,
    hibernating: bool,
    catch_up_entries: u64,
    in_old_segments: Option<u64>,
) -> Option<raft_log::LogIndex> {
    let keep = if hibernating { 0 } else { catch_up_entries };
    let catch_up = durable_applied.saturating_sub(keep);
    // Durability: never past the flushed applied index, whatever the old segments hold.
    let aged = in_old_segments.unwrap_or(0).min(durable_applied);
    let to = catch_up.max(aged);
    (to > 0).then_some(raft_log::LogIndex(to))
}

/// Compacts history automatically, like etcd's `--auto-compaction-*`, in every tenant's
/// group on its leader.
async fn auto_compact(default: Arc<Node>, policy: AutoCompaction) {
    // Periodic mode samples the revision every tenth of the retention and compacts to the
    // revision seen one retention ago; revision mode keeps the last N revisions every 5 min.
    let (tick, keep) = match policy {
        AutoCompaction::Periodic(period) => ((period / 10).max(Duration::from_secs(1)), 10usize),
        AutoCompaction::Revision(_) => (Duration::from_secs(300), 1usize),
    };
    let mut samples: std::collections::HashMap<u64, std::collections::VecDeque<i64>> = Default::default();
    let mut interval = tokio::time::interval(tick);
    loop {
        interval.tick().await;
        let nodes = default.tenants.nodes();
        // Samples of groups no longer served are dropped with them (bounded by the groups).
        samples.retain(|g, _| nodes.iter().any(|n| n.runtime.group == *g));
        for node in nodes {
            if node.runtime.group == SYSTEM_GROUP || node.leader() != node.member_id() {
                continue;
            }
            let samples = samples.entry(node.runtime.group).or_default();
            compact_once(&node, policy, keep, samples).await;
        }
    }
}

/// One auto-compaction step of `node`'s group.
async fn compact_once(
    node: &Arc<Node>,
    policy: AutoCompaction,
    keep: usize,
    samples: &mut std::collections::VecDeque<i64>,
) {
    let current = node.store.current_revision(node.group());
    let target = match policy {
        AutoCompaction::Periodic(_) => {
            samples.push_back(current);
            if samples.len() <= keep {
                return;
            }
            samples.pop_front().expect("non-empty")
        }
        AutoCompaction::Revision(retain) => current - retain,
    };
    if target <= node.store.compact_revision(node.group()) || target <= 0 {
        return;
    }
    let group = node.runtime.group;
    let compact = store::CommandBody::Compact(store::CompactRequest { revision: target, physical: false });
    match node.propose(compact).await {
        Ok(_) => info!(group, revision = target, "auto compaction done"),
        Err(status) => warn!(group, revision = target, error = %status.message(), "auto compaction failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::purge_index;
    use raft_log::LogIndex;

    /// A small idle tenant's log is purged whole once it hibernates; awake, it keeps its
    /// catch-up entries (and, with fewer than those, everything).
    #[test]
    fn a_hibernating_group_keeps_no_catch_up_entries() {
        assert_eq!(purge_index(40, false, 5000, None), None);
        assert_eq!(purge_index(40, true, 5000, None), Some(LogIndex(40)));
        assert_eq!(purge_index(9000, false, 5000, None), Some(LogIndex(4000)));
        assert_eq!(purge_index(9000, true, 5000, None), Some(LogIndex(9000)));
        assert_eq!(purge_index(0, true, 5000, None), None);
    }

    /// Catch-up entries in old segments go, but only as far as the flush made durable.
    #[test]
    fn catch_up_entries_in_old_segments_are_purged_up_to_the_durable_index() {
        assert_eq!(purge_index(40, false, 5000, Some(30)), Some(LogIndex(30)));
        assert_eq!(purge_index(40, false, 5000, Some(70)), Some(LogIndex(40)));
        assert_eq!(purge_index(9000, false, 5000, Some(3000)), Some(LogIndex(4000)));
        assert_eq!(purge_index(9000, false, 5000, Some(8000)), Some(LogIndex(8000)));
        assert_eq!(purge_index(0, false, 5000, Some(8)), None);
    }
}
