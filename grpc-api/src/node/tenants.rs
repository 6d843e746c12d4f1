//! Tenants: many private etcds in one cluster, each its own Raft group.
//!
//! **The registry** lives in the system group (group 0), replicated on every member like any
//! group: each tenant is a JSON record under `tenant/<name>` in the group's keyspace, written
//! by an ordinary txn whose compares make creation, numbering and group allocation safe
//! against concurrent admins (`number/<k>` claims a number, `next-group` allocates group ids,
//! which are never reused). The applier tells [`Tenants`] when the system group applied
//! something; [`Tenants::run`] then reconciles this member with the registry:
//!
//! - a tenant without a group here gets one: its runtime, its Raft group (bootstrapped with
//!   the voters its record names, exactly as on every other member, or joined empty if this
//!   member is not one of them), its [`Node`], its client service and, with
//!   `--tenant-client-port-base P`, its plaintext listener on port P + number; the group's
//!   first campaigner ([`TenantRecord::first_campaigner`]) elects its first leader at once
//!   instead of after an election timeout, and a tenant that cannot be served yet (its
//!   port taken) is retried at the next pass without holding up the others;
//! - a group whose tenant is gone is removed: listener, Raft group (durably, so a restart
//!   does not bring it back), runtime and store data;
//! - on every group this member leads, the voters and learners follow the default group's,
//!   which carries the cluster's membership (one conf change per group per pass), and the
//!   quota follows the record (a `GroupSettings` command through the group's own log, so
//!   every replica enforces the same quota from the same entry on); `create` and `update`
//!   propose it themselves before they answer, so a tenant never writes past a quota it was
//!   given.
//!
//! **Resolution.** A connection's requests are served by one tenant's service: a tenant port
//! serves its tenant; the shared client port maps the client certificate's Common Name
//! through the registry, and serves the default tenant to plain connections and, when
//! `--default-tenant-for-unmapped` allows it, to certificates that map to no tenant.
//! Everything a tenant sees — revisions, keys, leases, watches, compaction, quota and alarms,
//! auth users — is its group's, so nothing of another tenant is reachable.
//!
//! **What is not here.** The admin API over the registry (`plinth.v1.Tenants`: create,
//! update, delete, list, show, import) is a service, in `crate::tenants`; the client service of
//! a group and the server of a tenant port come from the serving layer ([`ServiceFactory`],
//! [`PortServer`]). This module reaches no service.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tonic::Status;
use tracing::{info, warn};

use crate::node::limits::TenantLimits;
use crate::node::{Groups, Node, DEFAULT_GROUP, SYSTEM_GROUP};

/// Group ids of tenants start here (0 is the system group, 1 the default tenant).
pub const TENANT_GROUP_FIRST: u64 = 1 << 16;

/// Tenant records are `tenant/<name>` keys of the system group.
pub(crate) const RECORD_PREFIX: &[u8] = b"tenant/";
const RECORD_END: &[u8] = b"tenant0";

/// How often the reconciler runs without being told of a change (membership following,
/// request-rate sampling, retries after failures).
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a new tenant's first campaigner (see [`TenantRecord::first_campaigner`]) keeps
/// campaigning for its group until it has a leader (its peers may not have created the group
/// yet, and raft-rs refuses to campaign before the bootstrap's conf changes are applied);
/// past it, the group's election timer elects one as in any group.
const FIRST_ELECTION_WINDOW: Duration = Duration::from_secs(2);
/// Time between two looks at a new group's status while electing its first leader.
const FIRST_ELECTION_POLL: Duration = Duration::from_millis(2);
/// A campaign that has not moved the term in this time lost its pre-votes (no peer had the
/// group yet): campaign again. A loopback or LAN round trip is well under it.
const PRE_VOTE_WAIT: Duration = Duration::from_millis(10);
/// A campaign that moved the term (a candidate) without a leader after this long lost its
/// votes: campaign again.
const VOTE_WAIT: Duration = Duration::from_millis(100);

/// One tenant as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub name: String,
    pub number: u64,
    pub group: u64,
    /// 0 = the member's `--quota-backend-bytes`.
    pub quota_bytes: u64,
    pub client_cns: Vec<String>,
    /// The voters the group is bootstrapped with, as the creating member knew them.
    pub voters: Vec<u64>,
    /// Request, proposal, watcher and byte-rate limits (records written before limits
    /// existed read as none).
    #[serde(default)]
    pub limits: TenantLimits,
}

impl TenantRecord {
    /// The voter that campaigns for the group as soon as it exists, so a new tenant has a
    /// leader at once instead of after an election timeout: picked by the group id among the
    /// record's voters, which spreads the first leaders of many tenants evenly over the
    /// members (as random election timeouts did) instead of piling them on one. When it is
    /// down, the group's election timer elects a leader as in any group.
    pub fn first_campaigner(&self) -> Option<u64> {
        let mut voters = self.voters.clone();
        voters.sort_unstable();
        voters.dedup();
        let n = voters.len() as u64;
        (n > 0).then(|| voters[(self.group % n) as usize])
    }
}

/// Tags the requests of a listener that serves one tenant (a tenant port): an extension.
#[derive(Clone, Copy, Debug)]
pub struct ListenerTenant(pub u64);

/// Settings from flags.
#[derive(Clone, Debug, Default)]
pub struct TenantsConfig {
    /// `--tenant-client-port-base`, and the host its listeners bind.
    pub port_base: Option<u16>,
    pub client_host: String,
    /// `--admin-cn`.
    pub admin_cn: Option<String>,
    /// `--default-tenant-for-unmapped`.
    pub default_for_unmapped: bool,
}

/// The future of one client request: the answer, never an error (a refusal is an answer).
pub type ClientFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send>,
>;

/// Serves one group's client requests (every etcd service and the HTTP endpoints). Built by
/// the serving layer, which owns the services; this module only hands requests to it.
pub trait ClientHandler: Send + Sync + 'static {
    fn handle(&self, request: http::Request<axum::body::Body>) -> ClientFuture;
}

/// One group's [`ClientHandler`], shared by its tenant port and the shared client port: a
/// tower service whose clone is one reference count and whose call is one boxed future.
#[derive(Clone)]
pub struct ClientService(Arc<dyn ClientHandler>);

impl ClientService {
    pub fn new(handler: impl ClientHandler) -> ClientService {
        ClientService(Arc::new(handler))
    }

    /// The same service with every request tagged as coming from `group`'s tenant port.
    fn on_port_of(&self, group: u64) -> ClientService {
        ClientService::new(PortOf { group, inner: self.clone() })
    }
}

impl tower::Service<http::Request<axum::body::Body>> for ClientService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = ClientFuture;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<axum::body::Body>) -> ClientFuture {
        self.0.handle(request)
    }
}

/// A tenant port's service: tags each request with the port's tenant ([`ListenerTenant`]).
struct PortOf {
    group: u64,
    inner: ClientService,
}

impl ClientHandler for PortOf {
    fn handle(&self, mut request: http::Request<axum::body::Body>) -> ClientFuture {
        request.extensions_mut().insert(ListenerTenant(self.group));
        self.inner.0.handle(request)
    }
}

/// Builds the [`ClientService`] of one group's node.
pub type ServiceFactory = Box<dyn Fn(Arc<Node>) -> ClientService + Send + Sync>;

/// Serves a group's client service on a tenant port's listener until the server fails.
/// Given by the serving layer (`serve.rs`) with the [`ServiceFactory`]: the registry opens and
/// closes tenant ports, the serving layer owns the server that runs on them.
pub type PortServer = Box<dyn Fn(tokio::net::TcpListener, ClientService) -> PortServing + Send + Sync>;

/// The server a [`PortServer`] runs on one port, as a future that ends if it stops accepting.
pub type PortServing = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A group served on this member.
struct Served {
    node: Arc<Node>,
    service: ClientService,
    /// The tenant port's listener, aborted when the tenant is deleted.
    listener: Option<tokio::task::JoinHandle<()>>,
}

/// The registry as this member last applied it.
#[derive(Default)]
struct Registry {
    by_name: BTreeMap<String, TenantRecord>,
    /// Client certificate identity → group.
    by_cn: HashMap<String, u64>,
    /// The system group's revision the records were read at (`None` before the first read).
    revision: Option<store::Revision>,
}

/// The tenant registry and every group this member serves.
pub struct Tenants {
    pub(crate) cfg: TenantsConfig,
    groups: Arc<Groups>,
    registry: RwLock<Registry>,
    served: RwLock<foldhash::HashMap<u64, Served>>,
    make_service: ServiceFactory,
    serve_port: PortServer,
    /// Told by the applier when the system group applied something.
    pub changed: Arc<tokio::sync::Notify>,
    /// The last request counts sampled for the rates, per group.
    samples: Mutex<(Option<Instant>, HashMap<u64, u64>)>,
}

impl Tenants {
    pub fn new(
        cfg: TenantsConfig,
        groups: Arc<Groups>,
        changed: Arc<tokio::sync::Notify>,
        make_service: ServiceFactory,
        serve_port: PortServer,
    ) -> Arc<Tenants> {
        Arc::new(Tenants {
            cfg,
            groups,
            registry: RwLock::default(),
            served: RwLock::default(),
            make_service,
            serve_port,
            changed,
            samples: Mutex::default(),
        })
    }

    /// Serves `node`'s group (the default tenant and the system group at start).
    pub fn serve_group(&self, node: Arc<Node>) {
        let name = if node.runtime.group == SYSTEM_GROUP { "system" } else { crate::backup::manifest::DEFAULT_TENANT };
        let _ = node.runtime.tenant.set(Arc::from(name));
        let service = (self.make_service)(node.clone());
        self.served.write().insert(node.runtime.group, Served { node, service, listener: None });
    }

    /// The node of `group` on this member.
    pub fn node(&self, group: u64) -> Option<Arc<Node>> {
        self.served.read().get(&group).map(|s| s.node.clone())
    }

    /// Every group's node on this member (system group, default tenant, tenants).
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.served.read().values().map(|s| s.node.clone()).collect()
    }

    /// The node a peer's lease request is for (`group` 0 = the default tenant).
    pub fn lease_node(&self, default: &Arc<Node>, group: u64) -> Result<Arc<Node>, Status> {
        if group == 0 || group == DEFAULT_GROUP {
            return Ok(default.clone());
        }
        self.node(group).ok_or_else(|| Status::not_found(format!("group {group} is not served by this member")))
    }

    /// The service that serves a request on the shared client port, by the connection's
    /// client certificate.
    fn route(&self, extensions: &http::Extensions) -> Result<ClientService, Status> {
        let group = match extensions.get::<ListenerTenant>() {
            Some(t) => t.0,
            None => {
                let info = extensions.get::<crate::tls::TlsConnectInfo>();
                let cn = info.and_then(|i| i.common_name.clone()).filter(|cn| !cn.is_empty());
                let uris = info.map(|i| i.san_uris.as_slice()).unwrap_or_default();
                // A SAN URI that the registry maps wins over the CN (it names the workload
                // more precisely, as SPIFFE IDs do); then the CN.
                let registry = self.registry.read();
                let mapped = uris.iter().chain(cn.iter()).find_map(|id| registry.by_cn.get(id).copied());
                match (mapped, cn) {
                    (Some(group), _) => group,
                    (None, None) if uris.is_empty() => DEFAULT_GROUP,
                    (None, cn) if self.cfg.default_for_unmapped || (cn.is_some() && self.cfg.admin_cn == cn) => {
                        DEFAULT_GROUP
                    }
                    (None, cn) => {
                        return Err(Status::permission_denied(format!(
                            "plinth: client certificate (CN {:?}, URIs {uris:?}) maps to no tenant, and \
                             --default-tenant-for-unmapped is false",
                            cn.unwrap_or_default()
                        )))
                    }
                }
            }
        };
        let served = self.served.read();
        let s = served
            .get(&group)
            .ok_or_else(|| Status::unavailable(format!("plinth: tenant group {group} is not served by this member")))?;
        Ok(s.service.clone())
    }

    /// The tenant records, by name.
    /// The system group's revision this member's registry (records and client identity map)
    /// was last read at; `None` before the first read.
    pub fn registry_revision(&self) -> Option<store::Revision> {
        self.registry.read().revision
    }

    pub fn records(&self) -> Vec<TenantRecord> {
        self.registry.read().by_name.values().cloned().collect()
    }

    /// Reads the registry from the system group's store (what this member has applied),
    /// unless the group's revision has not moved since the last read: the passes of an idle
    /// member then decode no records (1,000 tenants are 1,000 JSON values).
    fn reload(&self, store: &store::Store) -> anyhow::Result<()> {
        // Ordering: the revision is read before the records, so a change applied in between
        // leaves an older revision beside newer records, and the next pass reads them again.
        let revision = store.current_revision(store::GroupId(SYSTEM_GROUP));
        if self.registry.read().revision == Some(revision) {
            return Ok(());
        }
        let records = read_records(store)?;
        let mut by_cn = HashMap::new();
        for r in records.values() {
            for cn in &r.client_cns {
                by_cn.insert(cn.clone(), r.group);
            }
        }
        *self.registry.write() = Registry { by_name: records, by_cn, revision: Some(revision) };
        Ok(())
    }

    /// Keeps this member in step with the registry and the cluster's membership: see the
    /// module docs. Runs for the life of the member.
    pub async fn run(self: Arc<Self>, default: Arc<Node>) {
        loop {
            if let Err(e) = self.reconcile(&default).await {
                warn!(error = %e, "tenant reconciliation failed; retrying");
            }
            let _ = tokio::time::timeout(RECONCILE_INTERVAL, self.changed.notified()).await;
        }
    }

    async fn reconcile(self: &Arc<Self>, default: &Arc<Node>) -> anyhow::Result<()> {
        self.reload(&default.store)?;
        let records = self.records();
        // Groups to create, and tenant ports to open. One tenant's failure (its port taken by
        // another process, say) is logged and retried at the next pass; it holds up no other
        // tenant.
        for r in &records {
            // (The lock is released before serving: serving takes it for writing.)
            let served = self.served.read().get(&r.group).map(|s| s.listener.is_some());
            match served {
                None => {
                    if let Err(e) = self.serve_tenant(default, r).await {
                        warn!(tenant = %r.name, group = r.group, error = %e, "cannot serve the tenant yet; retrying");
                    }
                }
                Some(false) if self.cfg.port_base.is_some() => self.open_port(r).await,
                Some(_) => {}
            }
        }
        // Groups whose tenant is gone.
        let live: std::collections::HashSet<u64> = records.iter().map(|r| r.group).collect();
        let gone: Vec<u64> =
            self.served.read().keys().copied().filter(|g| *g >= TENANT_GROUP_FIRST && !live.contains(g)).collect();
        for group in gone {
            let Some(served) = self.served.write().remove(&group) else { continue };
            if let Some(l) = served.listener {
                l.abort();
            }
            let raft = default.raft.clone();
            let store = default.store.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                // Ordering: the Raft group goes first, so nothing applies to the store group
                // while it is dropped.
                raft.remove_group(raft_log::GroupId(group))?;
                store.drop_group(store::GroupId(group))?;
                Ok(())
            })
            .await??;
            self.groups.remove(group);
            info!(group, "tenant deleted: group removed from this member");
        }
        // Membership and quotas of the groups this member leads.
        let identity = default.membership.identity.read().clone();
        let voters: Vec<u64> = identity.members.iter().filter(|m| !m.is_learner).map(|m| m.id).collect();
        let learners: Vec<u64> = identity.members.iter().filter(|m| m.is_learner).map(|m| m.id).collect();
        let quotas: HashMap<u64, u64> = records.iter().map(|r| (r.group, r.quota_bytes)).collect();
        let limits: HashMap<u64, TenantLimits> = records.iter().map(|r| (r.group, r.limits)).collect();
        for node in self.nodes() {
            let group = node.runtime.group;
            if group == DEFAULT_GROUP {
                continue;
            }
            // Every member enforces the limits on what it serves, leader or not.
            if let Some(l) = limits.get(&group) {
                node.runtime.limiter.set(*l);
            }
            let Some(status) = node.raft_status() else { continue };
            if !status.is_leader {
                continue;
            }
            if let Some(change) = membership_step(&status, &voters, &learners) {
                if let Err(e) = node.raft.propose_conf_change(raft_log::GroupId(group), change) {
                    warn!(group, error = %e, "could not propose a membership change of the group");
                }
            }
            if let Some(&quota) = quotas.get(&group) {
                // Checked here as well, so an idle pass spawns nothing.
                if node.store.quota_setting(node.group()) != quota {
                    let node = node.clone();
                    tokio::spawn(async move {
                        if let Err(s) = apply_quota(&node, quota).await {
                            warn!(group, error = %s.message(), "could not set the tenant's quota");
                        }
                    });
                }
            }
        }
        self.sample_rates();
        Ok(())
    }

    /// Creates tenant `r`'s group on this member (idempotent: after a restart the group is
    /// already there) and serves it: its node, its service and, with a port base, its port.
    /// When this member is the group's first campaigner, it elects the group's first leader
    /// (see [`elect_first_leader`]).
    async fn serve_tenant(&self, default: &Arc<Node>, r: &TenantRecord) -> anyhow::Result<()> {
        let me = default.member_id();
        let voter = r.voters.contains(&me);
        let bootstrap = if voter {
            raft_log::Bootstrap::Members(r.voters.iter().map(|v| (raft_log::NodeId(*v), Bytes::new())).collect())
        } else {
            raft_log::Bootstrap::Join
        };
        let rt = self.groups.get(r.group);
        let raft = default.raft.clone();
        let group = raft_log::GroupId(r.group);
        // After a restart the driver has already recovered the group from the WAL: a status
        // says so, and saves a round trip through the driver's inbox per tenant (with 1,000
        // tenants, those round trips behind the driver's other work took minutes).
        if default.raft.status(group).is_none() {
            tokio::task::spawn_blocking(move || raft.create_group_with(group, bootstrap)).await??;
        }
        if r.first_campaigner() == Some(me) {
            // A group that never had a leader (term 1 is its bootstrap's) is new: elect one now
            // rather than after an election timeout. A group that had one is left alone.
            if default.raft.status(group).is_some_and(|s| s.term.0 <= 1 && s.leader.0 == 0) {
                tokio::spawn(elect_first_leader(default.raft.clone(), group));
            }
        }
        let node = Arc::new(default.sibling(rt));
        let _ = node.runtime.tenant.set(Arc::from(r.name.as_str()));
        let service = (self.make_service)(node.clone());
        // Ordering: the port opens before the group counts as served, so a create that waits
        // for it (`wait_served`) answers with the port open.
        let listener = match self.cfg.port_base {
            Some(base) => match self.listen(base, r, service.clone()).await {
                Ok(l) => Some(l),
                Err(e) => {
                    warn!(tenant = %r.name, error = %e, "cannot open the tenant's port; retrying");
                    None
                }
            },
            None => None,
        };
        info!(tenant = %r.name, number = r.number, group = r.group, "serving tenant");
        self.served.write().insert(r.group, Served { node, service, listener });
        Ok(())
    }

    /// Opens the port of tenant `r`, served here without one; a failure is logged, and the
    /// next pass tries again.
    async fn open_port(&self, r: &TenantRecord) {
        let (Some(base), Some(service)) =
            (self.cfg.port_base, self.served.read().get(&r.group).map(|s| s.service.clone()))
        else {
            return;
        };
        match self.listen(base, r, service).await {
            Ok(listener) => {
                let mut served = self.served.write();
                match served.get_mut(&r.group) {
                    Some(s) if s.listener.is_none() => s.listener = Some(listener),
                    // Deleted meanwhile, or opened by another pass: this listener is not needed.
                    _ => listener.abort(),
                }
            }
            Err(e) => warn!(tenant = %r.name, error = %e, "cannot open the tenant's port; retrying"),
        }
    }

    /// Opens tenant `r`'s plaintext port.
    async fn listen(
        &self,
        base: u16,
        r: &TenantRecord,
        service: ClientService,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let port = u64::from(base) + r.number;
        anyhow::ensure!(port <= u64::from(u16::MAX), "tenant {} number {} has no port above {base}", r.name, r.number);
        let addr = format!("{}:{port}", self.cfg.client_host);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("listen on {addr} for tenant {}: {e}", r.name))?;
        info!(%addr, tenant = %r.name, "serving tenant clients");
        let service = service.on_port_of(r.group);
        let name = r.name.clone();
        let serving = (self.serve_port)(listener, service);
        Ok(tokio::spawn(async move {
            serving.await;
            warn!(tenant = %name, "tenant listener stopped");
        }))
    }

    /// Requests per second of every group since the last sample.
    fn sample_rates(&self) {
        let now = Instant::now();
        let mut samples = self.samples.lock();
        let elapsed = samples.0.map(|t| now.duration_since(t).as_secs_f64());
        let mut counts = HashMap::new();
        for node in self.nodes() {
            let rt = &node.runtime;
            let count = rt.requests.load(std::sync::atomic::Ordering::Relaxed);
            if let (Some(secs), Some(before)) = (elapsed, samples.1.get(&rt.group)) {
                if secs > 0.0 {
                    let rate = count.saturating_sub(*before) as f64 / secs;
                    rt.request_rate.store(rate.to_bits(), std::sync::atomic::Ordering::Relaxed);
                }
            }
            counts.insert(rt.group, count);
        }
        *samples = (Some(now), counts);
    }
}

/// The one conf change that brings a group's configuration (`status`) closer to the
/// cluster's: add a missing voter, promote a learner the cluster promoted, add a missing
/// learner, then remove a member the cluster no longer has. `None` when in step.
pub fn membership_step(
    status: &raft_log::GroupStatus,
    voters: &[u64],
    learners: &[u64],
) -> Option<raft::eraftpb::ConfChange> {
    use raft::eraftpb::{ConfChange, ConfChangeType};
    let has_voter = |id: u64| status.voters.iter().any(|v| v.0 == id);
    let has_learner = |id: u64| status.learners.iter().any(|v| v.0 == id);
    let change = |change_type, node_id| Some(ConfChange { change_type, node_id, ..Default::default() });
    if let Some(&id) = voters.iter().find(|v| !has_voter(**v)) {
        return change(ConfChangeType::AddNode, id);
    }
    if let Some(&id) = learners.iter().find(|l| !has_learner(**l) && !has_voter(**l)) {
        return change(ConfChangeType::AddLearnerNode, id);
    }
    let wanted = |id: u64| voters.contains(&id) || learners.contains(&id);
    if let Some(v) = status.voters.iter().chain(status.learners.iter()).find(|v| !wanted(v.0)) {
        return change(ConfChangeType::RemoveNode, v.0);
    }
    None
}

/// Campaigns for `group`, a new tenant's group that never had a leader, until it has one
/// (at most [`FIRST_ELECTION_WINDOW`]), so a new tenant is led within a round trip or two
/// instead of an election timeout (1 to 2 s by default). One member runs it, so campaigns of
/// two members rarely split the vote (only when the group's election timer fires meanwhile);
/// the election timer settles that as in any group. (The tenant's quota is put in force by
/// `create` itself, which waits for this leader: see `apply_quota`.)
async fn elect_first_leader(raft: raft_log::DriverHandle, group: raft_log::GroupId) {
    let deadline = Instant::now() + FIRST_ELECTION_WINDOW;
    // When this member last campaigned, and at which term.
    let mut last: Option<(Instant, u64)> = None;
    while Instant::now() < deadline {
        // No status: the group was removed meanwhile.
        let Some(s) = raft.status(group) else { return };
        if s.leader.0 != 0 {
            return;
        }
        // raft-rs ignores a campaign while committed conf changes (the bootstrap's) wait to be
        // applied: wait for the driver's first pass over the group.
        let bootstrapped = s.applied >= s.commit;
        let due = match last {
            None => true,
            Some((at, term)) => at.elapsed() >= if s.term.0 > term { VOTE_WAIT } else { PRE_VOTE_WAIT },
        };
        if bootstrapped && due {
            // A full inbox (`Busy`) is retried at the next look.
            if let Err(e) = raft.campaign(group) {
                tracing::debug!(%group, error = %e, "campaign not queued");
            }
            last = Some((Instant::now(), s.term.0));
        }
        tokio::time::sleep(FIRST_ELECTION_POLL).await;
    }
    tracing::debug!(%group, "no leader yet after campaigning; the election timer takes over");
}

/// The tenant records in the system group's store.
pub(crate) fn read_records(store: &store::Store) -> anyhow::Result<BTreeMap<String, TenantRecord>> {
    let request = store::RangeRequest {
        key: Bytes::from_static(RECORD_PREFIX),
        range_end: Bytes::from_static(RECORD_END),
        serializable: true,
        ..Default::default()
    };
    let resp = store.range(store::GroupId(SYSTEM_GROUP), &request)?;
    let mut out = BTreeMap::new();
    for kv in resp.kvs {
        let record: TenantRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| anyhow::anyhow!("tenant record {:?}: {e}", String::from_utf8_lossy(&kv.key)))?;
        out.insert(record.name.clone(), record);
    }
    Ok(out)
}

/// A tower service that hands each request on the shared client port to the service of the
/// tenant its connection resolves to.
#[derive(Clone)]
pub struct Dispatch {
    pub tenants: Arc<Tenants>,
}

impl tower::Service<http::Request<axum::body::Body>> for Dispatch {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = ClientFuture;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        match self.tenants.route(req.extensions()) {
            // The tenant's service counts the request and applies the tenant's limits.
            Ok(service) => service.0.handle(req),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

/// Puts `quota` in force in `node`'s group: a `GroupSettings` proposal, unless the group has
/// it already. The reconciler calls it on the groups this member leads; `create` and `update`
/// call it before they answer, so a tenant never writes past its quota until the next pass.
pub(crate) async fn apply_quota(node: &Node, quota: u64) -> Result<(), Status> {
    if node.store.quota_setting(node.group()) == quota {
        return Ok(());
    }
    node.propose(store::CommandBody::GroupSettings(store::GroupSettings { quota_bytes: quota })).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(voters: &[u64], learners: &[u64]) -> raft_log::GroupStatus {
        raft_log::GroupStatus {
            voters: voters.iter().map(|v| raft_log::NodeId(*v)).collect(),
            learners: learners.iter().map(|v| raft_log::NodeId(*v)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn group_membership_follows_the_cluster_one_change_at_a_time() {
        use raft::eraftpb::ConfChangeType::*;
        let step = |s: &raft_log::GroupStatus, v: &[u64], l: &[u64]| {
            membership_step(s, v, l).map(|c| (c.get_change_type(), c.node_id))
        };
        assert_eq!(step(&status(&[1, 2, 3], &[]), &[1, 2, 3], &[]), None);
        assert_eq!(step(&status(&[1, 2], &[]), &[1, 2, 3], &[]), Some((AddNode, 3)));
        // A learner the cluster promoted is promoted (AddNode of a learner).
        assert_eq!(step(&status(&[1, 2, 3], &[4]), &[1, 2, 3, 4], &[]), Some((AddNode, 4)));
        assert_eq!(step(&status(&[1, 2, 3], &[]), &[1, 2, 3], &[4]), Some((AddLearnerNode, 4)));
        assert_eq!(step(&status(&[1, 2, 3], &[4]), &[1, 2, 3], &[4]), None);
        assert_eq!(step(&status(&[1, 2, 3], &[]), &[1, 2], &[]), Some((RemoveNode, 3)));
        assert_eq!(step(&status(&[1, 2], &[4]), &[1, 2], &[]), Some((RemoveNode, 4)));
        // Additions come before removals (a replaced member: the group keeps its quorum).
        assert_eq!(step(&status(&[1, 2, 3], &[]), &[1, 2, 4], &[]), Some((AddNode, 4)));
    }

    #[test]
    fn first_campaigners_are_voters_spread_over_the_members() {
        let record = |group: u64, voters: &[u64]| TenantRecord {
            name: "t".into(),
            number: 1,
            group,
            quota_bytes: 0,
            client_cns: Vec::new(),
            voters: voters.to_vec(),
            limits: TenantLimits::default(),
        };
        let mut per_member: HashMap<u64, usize> = HashMap::new();
        for group in TENANT_GROUP_FIRST..TENANT_GROUP_FIRST + 300 {
            let first = record(group, &[30, 10, 20]).first_campaigner().expect("a voter");
            assert!([10, 20, 30].contains(&first), "{first}");
            // The same on every member, whatever order the record lists the voters in.
            assert_eq!(record(group, &[20, 30, 10]).first_campaigner(), Some(first));
            *per_member.entry(first).or_default() += 1;
        }
        assert_eq!(per_member.values().copied().collect::<Vec<_>>(), [100, 100, 100]);
        assert_eq!(record(TENANT_GROUP_FIRST, &[]).first_campaigner(), None);
    }
}
