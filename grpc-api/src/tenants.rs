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
//!   member is not one of them), its [`Node`], its client router and, with
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
//! **Resolution.** A connection's requests are served by one tenant's router: a tenant port
//! serves its tenant; the shared client port maps the client certificate's Common Name
//! through the registry, and serves the default tenant to plain connections and, when
//! `--default-tenant-for-unmapped` allows it, to certificates that map to no tenant.
//! Everything a tenant sees — revisions, keys, leases, watches, compaction, quota and alarms,
//! auth users — is its group's, so nothing of another tenant is reachable.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

mod import;

pub use import::DEFAULT_TENANT_NAME;

use crate::limits::TenantLimits;
use crate::node::{Groups, Node, DEFAULT_GROUP, SYSTEM_GROUP};
use crate::pb::plinthv1 as pb;

/// Group ids of tenants start here (0 is the system group, 1 the default tenant).
pub const TENANT_GROUP_FIRST: u64 = 1 << 16;
/// Most tenants a cluster holds.
pub const TENANTS_MAX: usize = 4096;
/// Longest tenant name, and the characters it may use (a DNS label, so it fits in paths,
/// metric labels and backup object names).
const NAME_BYTES_MAX: usize = 63;

const RECORD_PREFIX: &[u8] = b"tenant/";
const RECORD_END: &[u8] = b"tenant0";
const NUMBER_PREFIX: &str = "number/";
const NEXT_GROUP_KEY: &[u8] = b"next-group";

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
/// Time between two looks at whether a group is served and led, for a create or show that
/// waits for it.
const SERVED_POLL: Duration = Duration::from_millis(2);
/// Largest `plinth.v1.Tenants` message decoded: an import step of several proposals' worth
/// (the server splits it) and no more.
pub const IMPORT_MESSAGE_BYTES_MAX: usize = 16 << 20;
/// Times a registry txn is retried when a concurrent change won its compares.
const REGISTRY_RETRIES: usize = 8;

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

    fn to_pb(&self) -> pb::Tenant {
        pb::Tenant {
            name: self.name.clone(),
            number: self.number,
            group: self.group,
            state: "active".into(),
            quota_bytes: self.quota_bytes,
            client_cns: self.client_cns.clone(),
            limits: Some(limits_to_pb(&self.limits)),
        }
    }
}

fn limits_to_pb(l: &TenantLimits) -> pb::TenantLimits {
    pb::TenantLimits {
        requests_per_second: l.requests_per_second,
        inflight_proposals: l.inflight_proposals,
        watchers: l.watchers,
        request_bytes_per_second: l.request_bytes_per_second,
    }
}

fn limits_from_pb(l: Option<&pb::TenantLimits>) -> TenantLimits {
    l.map_or_else(TenantLimits::default, |l| TenantLimits {
        requests_per_second: l.requests_per_second,
        inflight_proposals: l.inflight_proposals,
        watchers: l.watchers,
        request_bytes_per_second: l.request_bytes_per_second,
    })
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

/// Builds the client router (every etcd service and the HTTP endpoints) of one group's node.
pub type RouterFactory = Box<dyn Fn(Arc<Node>) -> axum::Router + Send + Sync>;

/// A group served on this member.
struct Served {
    node: Arc<Node>,
    router: axum::Router,
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
    cfg: TenantsConfig,
    groups: Arc<Groups>,
    registry: RwLock<Registry>,
    served: RwLock<HashMap<u64, Served>>,
    make_router: RouterFactory,
    /// Told by the applier when the system group applied something.
    pub changed: Arc<tokio::sync::Notify>,
    /// The last request counts sampled for the rates, per group.
    samples: Mutex<(Option<Instant>, HashMap<u64, u64>)>,
    /// The backup scheduler, when the member takes backups (set once at start).
    pub backups: std::sync::OnceLock<Arc<crate::backup::schedule::Scheduler>>,
}

impl Tenants {
    pub fn new(
        cfg: TenantsConfig,
        groups: Arc<Groups>,
        changed: Arc<tokio::sync::Notify>,
        make_router: RouterFactory,
    ) -> Arc<Tenants> {
        Arc::new(Tenants {
            cfg,
            groups,
            registry: RwLock::default(),
            served: RwLock::default(),
            make_router,
            changed,
            samples: Mutex::default(),
            backups: std::sync::OnceLock::new(),
        })
    }

    /// Serves `node`'s group (the default tenant and the system group at start).
    pub fn serve_group(&self, node: Arc<Node>) {
        let name = if node.runtime.group == SYSTEM_GROUP { "system" } else { crate::backup::manifest::DEFAULT_TENANT };
        let _ = node.runtime.tenant.set(Arc::from(name));
        let router = (self.make_router)(node.clone());
        self.served.write().insert(node.runtime.group, Served { node, router, listener: None });
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

    /// The router that serves a request on the shared client port, by the connection's
    /// client certificate.
    fn route(&self, extensions: &http::Extensions) -> Result<axum::Router, Status> {
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
        Ok(s.router.clone())
    }

    /// The tenant records, by name.
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
    /// already there) and serves it: its node, its router and, with a port base, its port.
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
        let router = (self.make_router)(node.clone());
        // Ordering: the port opens before the group counts as served, so a create that waits
        // for it (`wait_served`) answers with the port open.
        let listener = match self.cfg.port_base {
            Some(base) => match self.listen(base, r, router.clone()).await {
                Ok(l) => Some(l),
                Err(e) => {
                    warn!(tenant = %r.name, error = %e, "cannot open the tenant's port; retrying");
                    None
                }
            },
            None => None,
        };
        info!(tenant = %r.name, number = r.number, group = r.group, "serving tenant");
        self.served.write().insert(r.group, Served { node, router, listener });
        Ok(())
    }

    /// Opens the port of tenant `r`, served here without one; a failure is logged, and the
    /// next pass tries again.
    async fn open_port(&self, r: &TenantRecord) {
        let (Some(base), Some(router)) =
            (self.cfg.port_base, self.served.read().get(&r.group).map(|s| s.router.clone()))
        else {
            return;
        };
        match self.listen(base, r, router).await {
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
        router: axum::Router,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let port = u64::from(base) + r.number;
        anyhow::ensure!(port <= u64::from(u16::MAX), "tenant {} number {} has no port above {base}", r.name, r.number);
        let addr = format!("{}:{port}", self.cfg.client_host);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("listen on {addr} for tenant {}: {e}", r.name))?;
        info!(%addr, tenant = %r.name, "serving tenant clients");
        let router = router.layer(axum::Extension(ListenerTenant(r.group)));
        let name = r.name.clone();
        Ok(tokio::spawn(async move {
            if let Err(e) = crate::serve::serve_router(listener, router).await {
                warn!(tenant = %name, error = %e, "tenant listener failed");
            }
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
fn read_records(store: &store::Store) -> anyhow::Result<BTreeMap<String, TenantRecord>> {
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

/// A tower service that hands each request on the shared client port to the router of the
/// tenant its connection resolves to.
#[derive(Clone)]
pub struct Dispatch {
    pub tenants: Arc<Tenants>,
}

impl tower::Service<http::Request<axum::body::Body>> for Dispatch {
    type Response = http::Response<axum::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let routed = self.tenants.route(req.extensions());
        Box::pin(async move {
            match routed {
                // The router counts the request and applies the tenant's limits.
                Ok(router) => tower::ServiceExt::oneshot(router, req).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

// ---- the admin service ----

/// `plinth.v1.Tenants`, served on every client router; only the default tenant's (reached
/// by the cluster admin) answers.
pub struct TenantsService {
    /// The node of the router it is served on.
    pub node: Arc<Node>,
}

impl TenantsService {
    fn tenants(&self) -> &Arc<Tenants> {
        &self.node.tenants
    }

    fn check_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        check_admin(&self.node, request)
    }

    fn system(&self) -> Result<Arc<Node>, Status> {
        self.tenants().node(SYSTEM_GROUP).ok_or_else(|| Status::unavailable("plinth: the system group is not served"))
    }

    /// The registry after a read barrier on the system group (linearizable).
    async fn read_registry(&self) -> Result<(BTreeMap<String, TenantRecord>, Vec<store::KeyValue>), Status> {
        let system = self.system()?;
        // Right after a start or an election the system group may have no leader yet: wait
        // for one (as etcd's linearizable reads wait), up to the request timeout.
        let deadline = Instant::now() + self.node.cfg.request_timeout;
        while system.leader() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        system.read_barrier().await?;
        let records = read_records(&system.store).map_err(|e| Status::internal(e.to_string()))?;
        let request = store::RangeRequest { key: Bytes::from_static(NEXT_GROUP_KEY), ..Default::default() };
        let next = system.store.range(system.group(), &request).map_err(|e| crate::error::store_status(&e))?.kvs;
        Ok((records, next))
    }

    /// Adds tenant `req` to the registry and waits until this member serves it.
    async fn create_tenant(&self, req: pb::CreateTenantRequest) -> Result<TenantRecord, Status> {
        check_name(&req.name)?;
        let system = self.system()?;
        for _ in 0..REGISTRY_RETRIES {
            let (records, next) = self.read_registry().await?;
            if records.contains_key(&req.name) {
                return Err(Status::already_exists(format!("plinth: tenant {:?} already exists", req.name)));
            }
            if records.len() >= TENANTS_MAX {
                return Err(Status::resource_exhausted(format!(
                    "plinth: a cluster holds at most {TENANTS_MAX} tenants"
                )));
            }
            check_cns(&records, &req.name, &req.client_cns)?;
            let used: std::collections::HashSet<u64> = records.values().map(|r| r.number).collect();
            let number = (1..).find(|n| !used.contains(n)).expect("fewer tenants than numbers");
            let (group, next_mod) = match next.first() {
                Some(kv) => {
                    let g = std::str::from_utf8(&kv.value).ok().and_then(|s| s.parse::<u64>().ok());
                    (g.ok_or_else(|| Status::internal("plinth: corrupt next-group record"))?, kv.mod_revision)
                }
                None => (TENANT_GROUP_FIRST, 0),
            };
            let voters = self.node.membership.identity.read().voter_ids();
            let record = TenantRecord {
                name: req.name.clone(),
                number,
                group,
                quota_bytes: req.quota_bytes,
                client_cns: req.client_cns.clone(),
                voters,
                limits: limits_from_pb(req.limits.as_ref()),
            };
            let number_key = Bytes::from(format!("{NUMBER_PREFIX}{number}"));
            let txn = store::TxnRequest {
                compare: vec![
                    compare_version(record_key(&req.name), 0),
                    compare_version(number_key.clone(), 0),
                    compare_mod(Bytes::from_static(NEXT_GROUP_KEY), next_mod),
                ],
                success: vec![
                    put(record_key(&req.name), serde_json::to_vec(&record).expect("records serialize")),
                    put(number_key, req.name.clone().into_bytes()),
                    put(Bytes::from_static(NEXT_GROUP_KEY), (group + 1).to_string().into_bytes()),
                ],
                failure: Vec::new(),
            };
            match system.propose(store::CommandBody::Txn(txn)).await? {
                store::CommandResponse::Txn(r) if r.succeeded => {
                    info!(tenant = %record.name, number, group, "tenant created");
                    // Answer once the tenant can take requests here: its group exists on
                    // this member and has elected a leader, and its quota is in force.
                    match self.wait_served(group, true).await {
                        Some(node) => {
                            // This member enforces the limits from the answer on; the others
                            // from their next reconcile pass (within a second).
                            node.runtime.limiter.set(record.limits);
                            apply_quota(&node, record.quota_bytes).await?
                        }
                        None => {
                            warn!(tenant = %record.name, "tenant created but not yet served (no leader) by this member")
                        }
                    }
                    return Ok(record);
                }
                _ => continue,
            }
        }
        Err(Status::aborted("plinth: the tenant registry kept changing; try again"))
    }

    /// Waits until this member serves `group` (and, with `led`, knows its leader), up to the
    /// request timeout.
    async fn wait_served(&self, group: u64, led: bool) -> Option<Arc<Node>> {
        let deadline = Instant::now() + self.node.cfg.request_timeout;
        // The applier already told the reconciler of the registry change this member applied;
        // one more pass costs little and covers a change it applied before this call.
        self.tenants().changed.notify_one();
        loop {
            if let Some(node) = self.tenants().node(group) {
                if !led || node.leader() != 0 {
                    return Some(node);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            // A look is two map reads under read locks: cheap enough to poll for the few
            // milliseconds a new group needs.
            tokio::time::sleep(SERVED_POLL).await;
        }
    }
}

/// Puts `quota` in force in `node`'s group: a `GroupSettings` proposal, unless the group has
/// it already. The reconciler calls it on the groups this member leads; `create` and `update`
/// call it before they answer, so a tenant never writes past its quota until the next pass.
async fn apply_quota(node: &Node, quota: u64) -> Result<(), Status> {
    if node.store.quota_setting(node.group()) == quota {
        return Ok(());
    }
    node.propose(store::CommandBody::GroupSettings(store::GroupSettings { quota_bytes: quota })).await.map(|_| ())
}

/// Only the cluster admin: see the module docs of `plinth.v1` (proto/tenants.proto).
pub(crate) fn check_admin<T>(node: &Node, request: &Request<T>) -> Result<(), Status> {
    if !node.is_default() || request.extensions().get::<ListenerTenant>().is_some() {
        // A tenant's connection (its port, or a certificate of a tenant).
        return Err(crate::error::EtcdError::PermissionDenied.status());
    }
    let cn = crate::tls::client_common_name(request).filter(|cn| !cn.is_empty());
    let admin_cn = node.tenants.cfg.admin_cn.as_deref();
    if let (Some(admin), Some(cn)) = (admin_cn, cn.as_deref()) {
        if admin == cn {
            return Ok(());
        }
    }
    let caller = crate::auth::caller(node, request)?;
    if caller.enabled() {
        return caller.check_admin();
    }
    if admin_cn.is_some() && cn.is_some() {
        // Certificates identify clients here: only the admin's may administer.
        return Err(crate::error::EtcdError::PermissionDenied.status());
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if name == crate::backup::manifest::DEFAULT_TENANT {
        // The default tenant's name in backups and in `--tenant` flags.
        return Err(Status::invalid_argument(format!(
            "plinth: tenant name {name:?} is reserved for the default tenant"
        )));
    }
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "plinth: tenant name {name:?} must be 1-{NAME_BYTES_MAX} lowercase letters, digits and '-', not starting \
             or ending with '-'"
        )))
    }
}

fn check_cns(records: &BTreeMap<String, TenantRecord>, name: &str, cns: &[String]) -> Result<(), Status> {
    for cn in cns {
        if cn.is_empty() {
            return Err(Status::invalid_argument("plinth: empty client CN"));
        }
        if let Some(other) = records.values().find(|r| r.name != name && r.client_cns.contains(cn)) {
            return Err(Status::already_exists(format!(
                "plinth: client CN {cn:?} already maps to tenant {:?}",
                other.name
            )));
        }
    }
    Ok(())
}

fn record_key(name: &str) -> Bytes {
    Bytes::from([RECORD_PREFIX, name.as_bytes()].concat())
}

fn compare_version(key: Bytes, version: i64) -> store::Compare {
    compare_version_is(store::CompareResult::Equal, key, version)
}

fn compare_version_is(result: store::CompareResult, key: Bytes, version: i64) -> store::Compare {
    store::Compare {
        result: result as i32,
        target: store::CompareTarget::Version as i32,
        key,
        target_union: Some(store::TargetUnion::Version(version)),
        range_end: Bytes::new(),
    }
}

fn compare_mod(key: Bytes, mod_revision: i64) -> store::Compare {
    store::Compare {
        result: store::CompareResult::Equal as i32,
        target: store::CompareTarget::Mod as i32,
        key,
        target_union: Some(store::TargetUnion::ModRevision(mod_revision)),
        range_end: Bytes::new(),
    }
}

fn put(key: Bytes, value: Vec<u8>) -> store::RequestOp {
    store::RequestOp::put(store::PutRequest { key, value: Bytes::from(value), ..Default::default() })
}

fn delete(key: Bytes) -> store::RequestOp {
    store::RequestOp::delete_range(store::DeleteRangeRequest { key, ..Default::default() })
}

fn not_found(name: &str) -> Status {
    Status::not_found(format!("plinth: tenant {name:?} not found"))
}

#[tonic::async_trait]
impl pb::tenants_server::Tenants for TenantsService {
    async fn create(&self, request: Request<pb::CreateTenantRequest>) -> Result<Response<pb::TenantResponse>, Status> {
        self.check_admin(&request)?;
        let record = self.create_tenant(request.into_inner()).await?;
        Ok(Response::new(pb::TenantResponse { tenant: Some(record.to_pb()) }))
    }

    async fn import(
        &self,
        request: Request<tonic::Streaming<pb::ImportRequest>>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        self.check_admin(&request)?;
        self.run_import(request.into_inner()).await.map(Response::new)
    }

    async fn update(&self, request: Request<pb::UpdateTenantRequest>) -> Result<Response<pb::TenantResponse>, Status> {
        self.check_admin(&request)?;
        let req = request.into_inner();
        let system = self.system()?;
        for _ in 0..REGISTRY_RETRIES {
            let (records, _) = self.read_registry().await?;
            let Some(mut record) = records.get(&req.name).cloned() else { return Err(not_found(&req.name)) };
            let key = record_key(&req.name);
            let kv = system
                .store
                .range(system.group(), &store::RangeRequest { key: key.clone(), ..Default::default() })
                .map_err(|e| crate::error::store_status(&e))?
                .kvs;
            let Some(kv) = kv.first() else { continue };
            if req.set_client_cns {
                check_cns(&records, &req.name, &req.client_cns)?;
                record.client_cns = req.client_cns.clone();
            }
            if req.set_quota_bytes {
                record.quota_bytes = req.quota_bytes;
            }
            let asked = limits_from_pb(req.limits.as_ref());
            let l = &mut record.limits;
            if req.set_requests_per_second {
                l.requests_per_second = asked.requests_per_second;
            }
            if req.set_inflight_proposals {
                l.inflight_proposals = asked.inflight_proposals;
            }
            if req.set_watchers {
                l.watchers = asked.watchers;
            }
            if req.set_request_bytes_per_second {
                l.request_bytes_per_second = asked.request_bytes_per_second;
            }
            let txn = store::TxnRequest {
                compare: vec![compare_mod(key.clone(), kv.mod_revision)],
                success: vec![put(key, serde_json::to_vec(&record).expect("records serialize"))],
                failure: Vec::new(),
            };
            match system.propose(store::CommandBody::Txn(txn)).await? {
                store::CommandResponse::Txn(r) if r.succeeded => {
                    info!(tenant = %record.name, "tenant updated");
                    self.tenants().changed.notify_one();
                    if let Some(node) = self.wait_served(record.group, req.set_quota_bytes).await {
                        // As at create: this member's limits now, the others' within a second.
                        node.runtime.limiter.set(record.limits);
                        if req.set_quota_bytes {
                            apply_quota(&node, record.quota_bytes).await?;
                        }
                    }
                    return Ok(Response::new(pb::TenantResponse { tenant: Some(record.to_pb()) }));
                }
                _ => continue,
            }
        }
        Err(Status::aborted("plinth: the tenant registry kept changing; try again"))
    }

    async fn delete(&self, request: Request<pb::DeleteTenantRequest>) -> Result<Response<pb::TenantResponse>, Status> {
        self.check_admin(&request)?;
        let req = request.into_inner();
        let system = self.system()?;
        let (records, _) = self.read_registry().await?;
        let Some(record) = records.get(&req.name).cloned() else { return Err(not_found(&req.name)) };
        let txn = store::TxnRequest {
            compare: vec![compare_version_is(store::CompareResult::Greater, record_key(&req.name), 0)],
            success: vec![
                delete(record_key(&req.name)),
                delete(Bytes::from(format!("{NUMBER_PREFIX}{}", record.number))),
            ],
            failure: Vec::new(),
        };
        match system.propose(store::CommandBody::Txn(txn)).await? {
            store::CommandResponse::Txn(r) if r.succeeded => {
                info!(tenant = %record.name, group = record.group, "tenant deleted");
                self.tenants().changed.notify_one();
                Ok(Response::new(pb::TenantResponse { tenant: Some(record.to_pb()) }))
            }
            _ => Err(not_found(&req.name)),
        }
    }

    async fn list(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        self.check_admin(&request)?;
        let (records, _) = self.read_registry().await?;
        Ok(Response::new(pb::ListTenantsResponse { tenants: records.values().map(TenantRecord::to_pb).collect() }))
    }

    async fn show(&self, request: Request<pb::ShowTenantRequest>) -> Result<Response<pb::TenantStatus>, Status> {
        self.check_admin(&request)?;
        let name = request.into_inner().name;
        let (records, _) = self.read_registry().await?;
        let Some(record) = records.get(&name).cloned() else { return Err(not_found(&name)) };
        let Some(node) = self.wait_served(record.group, false).await else {
            return Err(Status::unavailable(format!("plinth: tenant {name:?} is not served by this member yet")));
        };
        let g = node.group();
        let count = store::RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            count_only: true,
            serializable: true,
            ..Default::default()
        };
        let keys = match node.store.range(g, &count) {
            Ok(r) => r.count,
            // Being restored: its keys are not countable yet.
            Err(store::Error::Importing) => 0,
            Err(e) => return Err(crate::error::store_status(&e)),
        };
        let status = node.raft_status().unwrap_or_default();
        let identity = node.membership.identity.read().clone();
        let voters: Vec<u64> = status.voters.iter().map(|v| v.0).collect();
        let learners: Vec<u64> = status.learners.iter().map(|v| v.0).collect();
        let in_sync = {
            let mut want_v: Vec<u64> = identity.members.iter().filter(|m| !m.is_learner).map(|m| m.id).collect();
            let mut want_l: Vec<u64> = identity.members.iter().filter(|m| m.is_learner).map(|m| m.id).collect();
            let (mut v, mut l) = (voters.clone(), learners.clone());
            want_v.sort_unstable();
            want_l.sort_unstable();
            v.sort_unstable();
            l.sort_unstable();
            want_v == v && want_l == l
        };
        let alarms = node.store.alarms(g).iter().map(|a| format!("{:?}", a.alarm).to_uppercase()).collect();
        let mut tenant = record.to_pb();
        if node.store.import_state(g).is_some() {
            tenant.state = "restoring".into();
        }
        Ok(Response::new(pb::TenantStatus {
            tenant: Some(tenant),
            revision: node.store.current_revision(g),
            compact_revision: node.store.compact_revision(g),
            keys,
            db_size_bytes: node.store.size_bytes(g),
            leader: status.leader.0,
            raft_term: status.term.0,
            applied_index: node.store.applied_index(g),
            requests_total: node.runtime.requests.load(std::sync::atomic::Ordering::Relaxed),
            requests_per_second: node.runtime.request_rate(),
            voters,
            learners,
            membership_in_sync: in_sync,
            alarms,
            backup: Some(match self.tenants().backups.get() {
                Some(scheduler) => scheduler.status(&node),
                None => crate::backup::schedule::status_off(&node),
            }),
        }))
    }
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

    #[test]
    fn tenant_names_are_dns_labels() {
        for ok in ["a", "team-1", "x".repeat(63).as_str()] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-a", "a-", "a/b", "a.b", "x".repeat(64).as_str()] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_client_cn_maps_to_one_tenant_only() {
        let mut records = BTreeMap::new();
        let r = TenantRecord {
            name: "a".into(),
            number: 1,
            group: TENANT_GROUP_FIRST,
            quota_bytes: 0,
            client_cns: vec!["apiserver-a".into()],
            voters: vec![1],
            limits: TenantLimits::default(),
        };
        records.insert("a".into(), r);
        assert!(check_cns(&records, "b", &["apiserver-a".into()]).is_err());
        assert!(check_cns(&records, "a", &["apiserver-a".into()]).is_ok(), "a tenant keeps its own CN");
        assert!(check_cns(&records, "b", &["apiserver-b".into()]).is_ok());
    }
}
