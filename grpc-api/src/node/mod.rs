//! The server core: one member's Raft driver, store, waiters and lessor, and the two
//! operations every service is built from — `propose` (a write through the log) and
//! `read_barrier` (a linearizable read point).
//!
//! This module is the root of the node tree: beside `Node` and the per-group runtime live
//! the applier (`apply`), membership (`membership`), the peer transport (`peer`,
//! `peer_tls`), the tenant registry and reconciler (`tenants`), lease timing (`lessor`),
//! per-tenant limits and fair shares (`limits`, `shares`), alarms (`alarms`) and the
//! metrics (`metrics`, with the gRPC call series in `grpc_metrics` and the `process_*` ones
//! in `process_metrics`). Nothing here uses a service or the binary's wiring
//! (`serve.rs`): the services depend on the node, and what the node needs from the serving
//! layer is handed to it (see `tenants::ServiceFactory`, `tenants::PortServer`).
//!
//! A proposal carries a request id in its first 8 bytes; the member that proposed it keeps a
//! waiter under that id and answers the client with the result its own apply produced. An
//! answer therefore means: durable in the log and applied on this member.

pub mod alarms;
pub mod apply;
pub mod deadline;
pub mod grpc_metrics;
pub mod lanes;
pub mod lessor;
pub mod limits;
pub mod membership;
pub mod metrics;
pub mod peer;
pub mod peer_tls;
pub mod process_metrics;
pub mod read_points;
pub mod shares;
pub mod tenants;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use prost::Message;
use tokio::sync::{oneshot, watch};
use tonic::Status;

use crate::error::{raft_status, EtcdError};
use crate::node::membership::{ConfContext, Member};
use crate::node::metrics::Metrics;
use crate::pb::etcdserverpb as pb;

pub use apply::Applier;
pub use membership::Membership;

/// The Raft group and store group of the default tenant. It also carries the cluster's
/// membership: member changes are its conf changes, and every other group's voters follow it.
pub const DEFAULT_GROUP: u64 = 1;

/// The system group: the tenant registry, replicated on every member.
pub const SYSTEM_GROUP: u64 = 0;

/// Bytes of the prefix of every proposal: the proposer's full member id (8 bytes, big
/// endian), then its request id (8 bytes). The applier answers a waiter only for entries
/// its own member proposed, so two members' request ids may coincide without one answering
/// the other's client.
const REQUEST_ID_BYTES: usize = 16;

/// How long a leader waits to apply what it knows committed before a lease operation
/// (etcd's `applyTimeout`).
const APPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Most proposals waiting for their apply at once; past it clients get "too many requests".
pub const WAITERS_MAX: usize = 64 * 1024;

/// What one applied command produced, as the proposer's waiter receives it.
pub type ApplyResult = Result<store::CommandResponse, store::Error>;

/// Settings of the server core that come from flags.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Largest encoded request accepted into the log. Default: 1.5 MiB.
    pub max_request_bytes: usize,
    /// How long a client waits for its proposal to apply. Default: 7 s (etcd's 5 s plus the
    /// election timeout).
    pub request_timeout: Duration,
    /// Watch progress notification interval. Default: 10 min.
    pub progress_notify_interval: Duration,
    /// Quota of the default tenant in bytes, as `Status.dbSizeQuota` reports it.
    pub quota_bytes: u64,
    /// Raft's election timeout: streams that require a leader end after 3 without one.
    pub election_timeout: Duration,
    /// Token TTL and bcrypt cost (`--auth-token-ttl`, `--bcrypt-cost`).
    pub auth: crate::auth_config::AuthConfig,
}

/// Bits of a request id below the member prefix (etcd's idutil layout: 16 bits of the
/// member id, 40 bits of milliseconds, 8 bits of counter).
const REQUEST_ID_SUFFIX_BITS: u32 = 48;

/// The first request id of a run. Every member applies every entry, so ids must not collide
/// between members (the top 16 bits come from the member id) nor with entries replayed from
/// an earlier run (the rest starts from the wall clock in milliseconds, shifted past an
/// 8-bit counter, as etcd's idutil does).
fn first_request_id(member_id: u64, now: std::time::SystemTime) -> u64 {
    let millis = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(1);
    request_id(member_id, millis << 8)
}

/// The request id of the `counter`-th proposal: the counter wraps inside the suffix so it
/// never spills into the member prefix.
fn request_id(member_id: u64, counter: u64) -> u64 {
    ((member_id & 0xffff) << REQUEST_ID_SUFFIX_BITS) | (counter & ((1 << REQUEST_ID_SUFFIX_BITS) - 1))
}

/// The length etcd gives a command of `encoded_len` bytes proposed by member `member_id`, the
/// length `--max-request-bytes` bounds: its `InternalRaftRequest`, the request behind a
/// header with a request id of that member (16 bits of the member id above 48 bits, so the
/// member sets its varint length). The command's own encoding is the request's field in that
/// message (same field numbers below 16, one byte of tag). With auth on, etcd's header also
/// carries the user's name and the auth revision; those few bytes are not counted here.
pub fn etcd_entry_len(encoded_len: usize, member_id: u64) -> usize {
    // Field 100 (two bytes of tag), its length (one byte), the id's tag and its varint.
    let id = request_id(member_id, u64::MAX);
    2 + 1 + 1 + prost::encoding::encoded_len_varint(id) + encoded_len
}

/// The log entry of a proposal of member `proposer`: the proposer, the request id, then
/// the command (`encoded_len` is its encoded length).
pub fn encode_proposal(proposer: u64, id: u64, command: &store::Command, encoded_len: usize) -> Bytes {
    let mut data = BytesMut::with_capacity(REQUEST_ID_BYTES + encoded_len);
    data.put_u64(proposer);
    data.put_u64(id);
    command.encode(&mut data).expect("BytesMut grows as needed");
    data.freeze()
}

/// What this member knew when a proposal timed out, to tell the client why.
#[derive(Debug, Clone)]
pub struct TimeoutContext {
    /// When the proposal was made.
    pub started: std::time::Instant,
    /// When this member last saw a new leader elected, if ever.
    pub leader_elected_at: Option<std::time::Instant>,
    /// Raft's election timeout.
    pub election_timeout: Duration,
    /// The leader now, 0 for none.
    pub leader: u64,
    /// This member.
    pub me: u64,
    /// The voting members.
    pub voters: Vec<u64>,
    /// Since when each connected peer has been connected.
    pub connected_since: HashMap<u64, std::time::Instant>,
}

/// The error of a proposal that timed out, chosen as etcd's `parseProposeCtxErr` does: a
/// leader elected while the request waited (after a loss that began at most two election
/// timeouts before it) means the old leader failed; a leader that lost its quorum's peers,
/// or a follower that lost its leader, since the request began means the connection was
/// lost; anything else is a plain timeout.
pub fn propose_timeout_error(ctx: &TimeoutContext) -> EtcdError {
    if let Some(elected) = ctx.leader_elected_at {
        let lost = elected.checked_sub(ctx.election_timeout * 2).unwrap_or(elected);
        if ctx.started > lost && ctx.started < elected {
            return EtcdError::TimeoutDueToLeaderFail;
        }
    }
    let connected_since_start = |peer: u64| ctx.connected_since.get(&peer).is_some_and(|since| *since <= ctx.started);
    if ctx.leader == 0 {
        EtcdError::Timeout
    } else if ctx.leader == ctx.me {
        let connected = ctx.voters.iter().filter(|v| **v == ctx.me || connected_since_start(**v)).count();
        if connected < ctx.voters.len() / 2 + 1 {
            EtcdError::TimeoutDueToConnectionLost
        } else {
            EtcdError::Timeout
        }
    } else if !connected_since_start(ctx.leader) {
        EtcdError::TimeoutDueToConnectionLost
    } else {
        EtcdError::Timeout
    }
}

/// Proposals in flight, by request id.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<foldhash::HashMap<u64, oneshot::Sender<ApplyResult>>>,
}

impl Waiters {
    /// Keeps `tx` to be answered when this member applies its own proposal with request id
    /// `id`; "too many requests" past [`WAITERS_MAX`]. An id must not be reused while in flight.
    pub fn insert(&self, id: u64, tx: oneshot::Sender<ApplyResult>) -> Result<(), Status> {
        let mut map = self.map.lock();
        if map.len() >= WAITERS_MAX {
            return Err(EtcdError::TooManyRequests.status());
        }
        let previous = map.insert(id, tx);
        assert!(previous.is_none(), "request id {id} reused while in flight");
        Ok(())
    }

    /// Gives up waiting for request `id` (its proposal timed out); returns its sender if it
    /// was still waiting.
    pub fn remove(&self, id: u64) -> Option<oneshot::Sender<ApplyResult>> {
        self.map.lock().remove(&id)
    }

    /// Number of proposals waiting, for the pending-proposals gauge.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a member keeps per Raft group for the requests of that group: the proposals waiting
/// for their apply, the applied index that reads wait on, and the lease timers. Shared by
/// the group's [`Node`] and the applier.
pub struct GroupRuntime {
    /// The group (Raft group id and store group id are the same number).
    pub group: u64,
    pub waiters: Arc<Waiters>,
    applied_tx: watch::Sender<u64>,
    pub applied: watch::Receiver<u64>,
    pub lessor: Arc<crate::node::lessor::Lessor>,
    /// Requests served for the group by this member (see `Node::resolve`).
    pub requests: AtomicU64,
    /// Requests per second over the last sampling interval, as f64 bits.
    pub request_rate: AtomicU64,
    /// The tenant's name, for metric labels: set when this member starts serving the group.
    pub tenant: std::sync::OnceLock<Arc<str>>,
    /// Handles of the tenant's `plinth_tenant_requests_total` with code `OK`, per method.
    pub tenant_ok_by_method: crate::node::grpc_metrics::MethodCounters,
    /// Watchers open on the group on this member.
    pub watchers: std::sync::atomic::AtomicI64,
    /// The tenant's limits as this member enforces them (none for the default and system
    /// groups).
    pub limiter: crate::node::limits::Limiter,
    /// The group's key-value requests in flight on this member, which choose their CPU lane
    /// (`lanes.rs`).
    pub kv_in_flight: Arc<crate::node::lanes::InFlight>,
    /// Linearizable reads of the group, gathered into one driver request per round.
    pub read_points: Arc<crate::node::read_points::ReadPoints>,
    /// The member's scan permits, and the group's share of them (`shares.rs`).
    reads: Arc<crate::node::shares::ReadPool>,
    scans: tokio::sync::Semaphore,
    /// The member's proposal permits, and the group's share of them (`shares.rs`).
    proposal_shares: Arc<crate::node::shares::Shares>,
    proposals: tokio::sync::Semaphore,
    /// When this member last saw the group elect a leader, to tell a client whose request
    /// timed out that a leader failed meanwhile (see `propose_timeout_error`). Per group: a
    /// tenant's group fails over on its own.
    pub leader_elected_at: Mutex<Option<std::time::Instant>>,
}

impl GroupRuntime {
    /// The runtime of `group` as the store holds it now: applied index and lease timers.
    fn load(group: u64, store: &store::Store, min_ttl: i64, shares: &MemberShares) -> GroupRuntime {
        let (applied_tx, applied) = watch::channel(store.applied_index(store::GroupId(group)));
        let lessor = Arc::new(crate::node::lessor::Lessor::new(min_ttl));
        match store.leases(store::GroupId(group)) {
            Ok(leases) => {
                for lease in leases {
                    lessor.on_granted(lease.id, lease.ttl);
                }
            }
            Err(e) => tracing::warn!(group, error = %e, "cannot read leases; the group starts without timers"),
        }
        GroupRuntime {
            group,
            waiters: Arc::default(),
            applied_tx,
            applied,
            lessor,
            requests: AtomicU64::new(0),
            request_rate: AtomicU64::new(0f64.to_bits()),
            tenant: std::sync::OnceLock::new(),
            tenant_ok_by_method: Default::default(),
            watchers: std::sync::atomic::AtomicI64::new(0),
            limiter: crate::node::limits::Limiter::default(),
            kv_in_flight: Arc::new(crate::node::lanes::InFlight::new(
                group,
                shares.sharing.clone(),
                shares.heavy_proposals,
            )),
            read_points: Arc::default(),
            scans: tokio::sync::Semaphore::new(shares.reads.per_group()),
            reads: shares.reads.clone(),
            proposals: tokio::sync::Semaphore::new(shares.proposals.per_group()),
            proposal_shares: shares.proposals.clone(),
            leader_elected_at: Mutex::new(None),
        }
    }

    /// Requests per second over the last sampling interval.
    pub fn request_rate(&self) -> f64 {
        f64::from_bits(self.request_rate.load(Ordering::Relaxed))
    }
}

/// Every group's runtime on this member, created on first use (by the applier when the
/// driver replays or applies a group, by the tenant registry when a tenant appears).
pub struct Groups {
    map: RwLock<foldhash::HashMap<u64, Arc<GroupRuntime>>>,
    store: store::Store,
    /// etcd's smallest lease TTL, for every group's lessor.
    min_ttl: i64,
    /// The member's scan and proposal permits, shared by every group.
    shares: MemberShares,
}

/// The member's capacity that its groups share fairly (`shares.rs`).
struct MemberShares {
    reads: Arc<crate::node::shares::ReadPool>,
    proposals: Arc<crate::node::shares::Shares>,
    /// Whether more than one group sends key-value requests (`lanes.rs`).
    sharing: Arc<crate::node::lanes::Sharing>,
    /// Proposal slots of a heavy group while the member is shared (`lanes.rs`; 0: no cap).
    heavy_proposals: usize,
}

impl Default for MemberShares {
    fn default() -> Self {
        // Three quarters of the driver's inbox: proposals in flight can never fill it, so
        // reads, peer answers and admin requests always find room.
        let proposals = raft_log::DriverConfig::default().proposal_queue_max * 3 / 4;
        MemberShares {
            reads: Arc::default(),
            proposals: Arc::new(crate::node::shares::Shares::new(proposals)),
            sharing: Arc::default(),
            heavy_proposals: crate::node::lanes::HEAVY_PROPOSALS_MAX,
        }
    }
}

impl Groups {
    pub fn new(store: store::Store, min_ttl: i64) -> Arc<Groups> {
        Groups::with_heavy_proposals(store, min_ttl, crate::node::lanes::HEAVY_PROPOSALS_MAX)
    }

    /// [`Groups::new`] with `heavy_proposals` proposal slots for a heavy group while the
    /// member is shared (0: no cap; `lanes.rs`).
    pub fn with_heavy_proposals(store: store::Store, min_ttl: i64, heavy_proposals: usize) -> Arc<Groups> {
        let shares = MemberShares { heavy_proposals, ..MemberShares::default() };
        Arc::new(Groups { map: RwLock::default(), store, min_ttl, shares })
    }

    /// The runtime of `group`, loaded from the store the first time.
    pub fn get(&self, group: u64) -> Arc<GroupRuntime> {
        if let Some(rt) = self.map.read().get(&group) {
            return rt.clone();
        }
        let mut map = self.map.write();
        map.entry(group)
            .or_insert_with(|| Arc::new(GroupRuntime::load(group, &self.store, self.min_ttl, &self.shares)))
            .clone()
    }

    /// Forgets `group` (a deleted tenant): its waiters are dropped, so their clients get
    /// "server stopped".
    pub fn remove(&self, group: u64) {
        self.map.write().remove(&group);
    }

    /// Every group with a runtime.
    pub fn all(&self) -> Vec<Arc<GroupRuntime>> {
        self.map.read().values().cloned().collect()
    }
}

/// Most membership changes waiting at once (Raft runs one at a time anyway).
const CONF_WAITERS_MAX: usize = 64;

/// The share of the leader's matched index a learner must have reached to be promoted
/// (etcd's `readyPercent`).
const LEARNER_READY_PERCENT: f64 = 0.9;

/// Most learners in a cluster (etcd's default `--max-learners`).
pub const LEARNERS_MAX: usize = 1;

/// One member as the requests of one group (a tenant, or the system group) see it: the
/// member-wide parts (membership, store, Raft driver, metrics, tenant registry) and the
/// group's runtime. Every service holds the default tenant's `Arc<Node>` and serves each
/// request with the node its connection resolves to (`resolve`).
pub struct Node {
    pub cfg: NodeConfig,
    /// Shared with the applier, which changes it as membership changes apply.
    pub membership: Arc<Membership>,
    pub data_dir: std::path::PathBuf,
    pub store: store::Store,
    pub raft: raft_log::DriverHandle,
    pub waiters: Arc<Waiters>,
    pub applied: watch::Receiver<u64>,
    pub lessor: Arc<crate::node::lessor::Lessor>,
    pub alarms: crate::node::alarms::Alarms,
    pub metrics: Arc<Metrics>,
    /// The tenant registry and every group's node on this member. (A cycle of
    /// process-lifetime objects: the registry holds every group's node.)
    pub tenants: Arc<crate::node::tenants::Tenants>,
    /// The group's runtime (the waiters, applied index and lessor above are its).
    pub runtime: Arc<GroupRuntime>,
    next_request_id: Arc<AtomicU64>,
}

impl Node {
    /// Assembles the core of `runtime`'s group around a started driver.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: NodeConfig,
        membership: Arc<Membership>,
        data_dir: std::path::PathBuf,
        store: store::Store,
        raft: raft_log::DriverHandle,
        runtime: Arc<GroupRuntime>,
        metrics: Arc<Metrics>,
        tenants: Arc<crate::node::tenants::Tenants>,
    ) -> Node {
        let start = first_request_id(membership.identity.read().member_id, std::time::SystemTime::now());
        let alarms = crate::node::alarms::Alarms::new(store.clone(), store::GroupId(runtime.group));
        Node {
            cfg,
            membership,
            data_dir,
            store,
            raft,
            waiters: runtime.waiters.clone(),
            applied: runtime.applied.clone(),
            lessor: runtime.lessor.clone(),
            alarms,
            metrics,
            tenants,
            runtime,
            next_request_id: Arc::new(AtomicU64::new(start)),
        }
    }

    /// The node of another group of this member, sharing everything member-wide (request
    /// ids too: one counter per member keeps them unique across its groups).
    pub fn sibling(&self, runtime: Arc<GroupRuntime>) -> Node {
        Node {
            cfg: self.cfg.clone(),
            membership: self.membership.clone(),
            data_dir: self.data_dir.clone(),
            store: self.store.clone(),
            raft: self.raft.clone(),
            waiters: runtime.waiters.clone(),
            applied: runtime.applied.clone(),
            lessor: runtime.lessor.clone(),
            alarms: crate::node::alarms::Alarms::new(self.store.clone(), store::GroupId(runtime.group)),
            metrics: self.metrics.clone(),
            tenants: self.tenants.clone(),
            runtime,
            next_request_id: self.next_request_id.clone(),
        }
    }

    /// Runs `read` on this group's store as its cost says: a point read in place, a scan on a
    /// blocking thread within the group's and the member's permits (`shares.rs`). A store
    /// error is answered as etcd's status for it.
    pub async fn read<T, F>(&self, cost: crate::node::shares::Cost, read: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(&store::Store, store::GroupId) -> store::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (store, group) = (self.store.clone(), self.group());
        self.runtime
            .reads
            .run(&self.runtime.scans, cost, move || read(&store, group))
            .await?
            .map_err(|e| crate::error::store_status(&e))
    }

    /// etcd's `HashKV` of this group at `revision` (0: the current one), computed over the
    /// same entries in the same order as etcd's (`backup::etcd_export`) so it compares with
    /// an etcd's and a peer's: (hash, compact revision or 0, hashed revision).
    pub async fn etcd_hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), tonic::Status> {
        let dir = self.data_dir.clone();
        self.read(crate::node::shares::Cost::Scan, move |store, group| {
            crate::backup::etcd_export::etcd_hash_kv(store, group, revision, &dir)
        })
        .await
    }

    /// The store group this node serves.
    pub fn group(&self) -> store::GroupId {
        store::GroupId(self.runtime.group)
    }

    fn raft_group(&self) -> raft_log::GroupId {
        raft_log::GroupId(self.runtime.group)
    }

    /// Whether this node serves the default tenant (the cluster's membership group).
    pub fn is_default(&self) -> bool {
        self.runtime.group == DEFAULT_GROUP
    }

    /// The member id of this node.
    pub fn member_id(&self) -> u64 {
        self.membership.member_id
    }

    /// The header every response carries.
    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        // No lock: the ids never change while the process runs.
        pb::ResponseHeader {
            cluster_id: self.membership.cluster_id,
            member_id: self.membership.member_id,
            revision,
            raft_term: self.raft_term(),
        }
    }

    /// The header at the current store revision.
    pub fn current_header(&self) -> pb::ResponseHeader {
        self.header(self.store.current_revision(self.group()))
    }

    /// The Raft term this member knows.
    pub fn raft_term(&self) -> u64 {
        self.raft.commit_and_term(self.raft_group()).map(|(_, term)| term.0).unwrap_or(0)
    }

    /// The leader this member knows, 0 for none.
    pub fn leader(&self) -> u64 {
        self.raft.leader(self.raft_group()).map(|l| l.0).unwrap_or(0)
    }

    /// Raft status of the default group.
    pub fn raft_status(&self) -> Option<raft_log::GroupStatus> {
        self.raft.status(self.raft_group())
    }

    /// Rejects a request carrying `hasleader: true` while there is no leader, as etcd does.
    /// Returns whether the request requires a leader.
    pub fn check_leader<T>(&self, request: &tonic::Request<T>) -> Result<bool, Status> {
        let requires = request.metadata().get("hasleader").and_then(|v| v.to_str().ok()).is_some_and(|v| v == "true");
        if requires && self.leader() == 0 {
            return Err(EtcdError::NoLeader.status());
        }
        Ok(requires)
    }

    /// Hands a proposal to Raft with `propose` once this member knows a leader, waiting for
    /// one until `deadline` (made at `started`), and again if the leader is lost between the
    /// check and the proposal. etcd's raft takes no proposal while it knows no leader: its
    /// `Propose` waits and returns the context's error, which etcd's gRPC server sends as
    /// `Unknown` "context deadline exceeded", at the request timeout too.
    async fn propose_when_led(
        &self,
        deadline: std::time::Instant,
        started: std::time::Instant,
        mut propose: impl FnMut() -> Result<(), raft_log::Error>,
    ) -> Result<(), Status> {
        loop {
            if self.wait_for_leader(deadline).await.is_err() {
                return Err(EtcdError::ContextDeadline.status());
            }
            match propose() {
                Ok(()) => return Ok(()),
                // The leader was lost between the check and the proposal: wait again.
                Err(raft_log::Error::NoLeader) => continue,
                Err(raft_log::Error::Timeout) => {
                    return Err(propose_timeout_error(&self.timeout_context(started)).status())
                }
                Err(e) => return Err(driver_status(&e)),
            }
        }
    }

    /// The end of a wait that began at `start`: etcd's request timeout after it, or the
    /// client's deadline if earlier (then `true`; see `deadline.rs`).
    fn request_deadline(&self, start: std::time::Instant) -> (std::time::Instant, bool) {
        deadline::earliest(start + self.cfg.request_timeout)
    }

    /// Proposes a command and waits until this member has applied it. The store's stateless
    /// checks (etcd's request validation: size, txn op count, duplicate keys, ...) run first,
    /// so a bad request never takes a log entry; apply repeats them on every replica.
    pub async fn propose(&self, body: store::CommandBody) -> Result<store::CommandResponse, Status> {
        let started = std::time::Instant::now();
        // The client's deadline ends every wait below as the request timeout does, with
        // etcd's error for either.
        let (deadline, clients) = self.request_deadline(started);
        self.check_not_learner()?;
        let command = store::Command { request_id: 0, body: Some(body) };
        self.store.validate(&command).map_err(|e| crate::error::store_status(&e))?;
        let encoded_len = command.encoded_len();
        // etcd bounds the entry it proposes, header included: a request within the limit by
        // itself can be too large by a few bytes. Checked here only, not at apply, so a log
        // written before this check applies as it did.
        if etcd_entry_len(encoded_len, self.member_id()) > self.cfg.max_request_bytes {
            return Err(EtcdError::RequestTooLarge.status());
        }
        // Held until the answer: the tenant's proposals in flight on this member.
        let _slot = self
            .runtime
            .limiter
            .begin_proposal(encoded_len as u64)
            .ok_or_else(|| EtcdError::TooManyRequests.status())?;
        let rt = &self.runtime;
        // Held until the answer too: while the tenant is heavy beside others, one of its few
        // proposal slots (`lanes.rs`), so that the driver, WAL writer and apply thread it
        // shares with them hold few of its entries when another tenant's write arrives.
        let _heavy_slot = match tokio::time::timeout_at(deadline.into(), rt.kv_in_flight.proposal_slot()).await {
            Ok(slot) => slot,
            Err(_) if clients => return Err(EtcdError::ContextDeadline.status()),
            Err(_) => return Err(EtcdError::TooManyRequests.status()),
        };
        // And the group's fair share of the member's proposals in flight (`shares.rs`),
        // waited for in arrival order, at most a request timeout.
        let _share = match tokio::time::timeout_at(deadline.into(), rt.proposal_shares.acquire(&rt.proposals)).await {
            Ok(share) => share?,
            Err(_) if clients => return Err(EtcdError::ContextDeadline.status()),
            Err(_) => return Err(EtcdError::TooManyRequests.status()),
        };
        let id = request_id(self.member_id(), self.next_request_id.fetch_add(1, Ordering::Relaxed));
        let data = encode_proposal(self.member_id(), id, &command, encoded_len);
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(id, tx)?;
        if let Err(status) =
            self.propose_when_led(deadline, started, || self.raft.propose(self.raft_group(), data.clone())).await
        {
            self.waiters.remove(id);
            self.metrics.proposals_failed.inc();
            return Err(status);
        }
        let outcome = tokio::time::timeout_at(deadline.into(), rx).await;
        match outcome {
            Ok(Ok(result)) => {
                if matches!(result, Err(store::Error::NoSpace)) {
                    self.raise_nospace().await;
                }
                result.map_err(|e| crate::error::store_status(&e))
            }
            // The sender is dropped only when the node stops.
            Ok(Err(_)) => Err(EtcdError::Stopped.status()),
            Err(_) => {
                self.waiters.remove(id);
                self.metrics.proposals_failed.inc();
                // A woken follower that has heard no leader since it slept still holds the
                // group's proposals, this one among them (raft-log's hibernation): it never
                // reached Raft, as etcd's raft holds a proposal while its node knows no
                // leader, and etcd then answers with the context's error.
                if self.raft.status(self.raft_group()).is_some_and(|s| s.holding) {
                    return Err(EtcdError::ContextDeadline.status());
                }
                Err(propose_timeout_error(&self.timeout_context(started)).status())
            }
        }
    }

    /// A write was refused for space: raises NOSPACE for this member through the log, as
    /// etcd's quota check proposes the alarm, so that every member refuses writes that add
    /// data until an operator disarms it. Nothing is proposed while a NOSPACE alarm is
    /// already raised (the quota is the group's, the same on every member). A failure is
    /// only logged: the client's answer is "database space exceeded" either way.
    ///
    /// Boxed with its `Send` bound spelled out: `propose` awaits it and it awaits `propose`,
    /// so neither future can contain the other's type.
    fn raise_nospace(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if self.alarms.nospace() {
                return;
            }
            let me = self.member_id();
            let body = store::CommandBody::Alarm(store::AlarmRequest {
                action: store::AlarmAction::Activate as i32,
                member_id: me,
                alarm: store::AlarmType::Nospace as i32,
            });
            match self.propose(body).await {
                Ok(_) => tracing::warn!(member = format_args!("{me:x}"), "alarm raised: NOSPACE"),
                Err(status) => tracing::warn!(error = %status.message(), "could not raise the NOSPACE alarm"),
            }
        })
    }

    /// What this member knows now about a proposal made at `started` that timed out.
    fn timeout_context(&self, started: std::time::Instant) -> TimeoutContext {
        TimeoutContext {
            started,
            leader_elected_at: *self.runtime.leader_elected_at.lock(),
            election_timeout: self.cfg.election_timeout,
            leader: self.leader(),
            me: self.member_id(),
            voters: self.membership.identity.read().voter_ids(),
            connected_since: self.membership.transport.connected_since(),
        }
    }

    /// Wakes this node's Raft group if it hibernates (see `raft_log::DriverHandle::touch`).
    pub fn touch_raft_group(&self) {
        // Busy means the driver has a full inbox and is awake anyway.
        let _ = self.raft.touch_if_asleep(self.raft_group());
    }

    /// Whether this member leads the default group now.
    pub fn is_leader(&self) -> bool {
        // raft-rs names itself the leader exactly while it is one.
        self.leader() == self.member_id()
    }

    /// Asks the leader about lease `id`: renews it (`renew`) or reads its seconds left. On the
    /// leader this is local; a follower forwards it over the peer connection, as etcd does
    /// (`LeaseRenew`, `LeaseTimeToLive`): while it knows no leader it waits for one, and a
    /// forward that fails (the leader changed, or is unreachable) is sent again to whichever
    /// member leads then, until etcd's request timeout or the client's deadline. Then the
    /// answer is etcd's: `no leader` if none was known, else `request timed out`.
    pub async fn lease_on_leader(&self, id: i64, renew: bool) -> Result<i64, Status> {
        /// Pause before forwarding again after a failed forward.
        const FORWARD_RETRY: std::time::Duration = std::time::Duration::from_millis(50);
        self.check_not_learner()?;
        // The leader's own renewals (every keep-alive of a client of the leader) take no clock
        // read and no deadline.
        if self.leader() == self.member_id() {
            return self.lease_here(id, renew).await;
        }
        let (deadline, _) = self.request_deadline(std::time::Instant::now());
        loop {
            // etcd's `waitLeader`: its context's end while no leader is known is `no leader`.
            self.wait_for_leader(deadline).await.map_err(|()| EtcdError::NoLeader.status())?;
            let leader = self.leader();
            if leader == self.member_id() {
                return self.lease_here(id, renew).await;
            }
            if leader != 0 {
                let outcome = tokio::time::timeout_at(deadline.into(), self.forward_lease(leader, id, renew)).await;
                match outcome {
                    Ok(Ok(ttl)) => return Ok(ttl),
                    Ok(Err(_)) => self.membership.transport.drop_client(leader).await,
                    Err(_) => {
                        self.membership.transport.drop_client(leader).await;
                        return Err(EtcdError::Timeout.status());
                    }
                }
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(EtcdError::Timeout.status());
            }
            tokio::time::sleep(FORWARD_RETRY.min(deadline - now)).await;
        }
    }

    /// One forward of a lease renewal or time-to-live to member `leader`.
    async fn forward_lease(&self, leader: u64, id: i64, renew: bool) -> Result<i64, Status> {
        let mut client = self.membership.transport.client(self, leader).await?;
        let group = if self.is_default() { 0 } else { self.runtime.group };
        let request = crate::node::peer::pb::LeaseRequest { id, group };
        let response = if renew { client.lease_renew(request).await } else { client.lease_remaining(request).await }?;
        Ok(response.into_inner().ttl)
    }

    /// Whether this member is a learner (it serves only serializable reads and Status).
    pub fn is_learner(&self) -> bool {
        self.membership.is_learner()
    }

    /// Whether the group may open one more watcher (its `watchers` limit; `limits.rs`).
    pub fn admit_watcher(&self) -> bool {
        self.runtime.limiter.admit_watcher(self.store.watcher_count(self.group()))
    }

    /// Refuses what a learner does not serve, with etcd's error.
    pub fn check_not_learner(&self) -> Result<(), Status> {
        if self.is_learner() {
            return Err(EtcdError::NotSupportedForLearner.status());
        }
        Ok(())
    }

    /// Takes the member list that came with a snapshot, keeping this member's own name and
    /// client URLs where the list lacks them.
    pub fn adopt_members(&self, mut members: Vec<Member>) {
        self.membership.update(|identity| {
            if let Some(own) = identity.me() {
                for m in members.iter_mut().filter(|m| m.id == own.id) {
                    if m.name.is_empty() {
                        m.name = own.name.clone();
                    }
                    if m.client_urls.is_empty() {
                        m.client_urls = own.client_urls.clone();
                    }
                }
            }
            identity.members = members;
        });
    }

    /// Proposes a membership change and waits until this member has applied it; returns the
    /// member list after it.
    pub async fn propose_conf_change(
        &self,
        change_type: raft::eraftpb::ConfChangeType,
        member: Member,
    ) -> Result<Vec<Member>, Status> {
        self.propose_checked_conf_change(|| Ok((change_type, member))).await
    }

    /// [`Node::propose_conf_change`] of the change and member `check` gives. etcd checks a
    /// change's member id and URLs when the change applies, so a member that knows no leader
    /// answers at the request timeout (or the client's deadline) whatever they are: `check`
    /// (those checks, made here against the members this member knows) runs once a leader is
    /// known, just before the proposal.
    pub async fn propose_checked_conf_change(
        &self,
        check: impl FnOnce() -> Result<(raft::eraftpb::ConfChangeType, Member), Status>,
    ) -> Result<Vec<Member>, Status> {
        let started = std::time::Instant::now();
        let (deadline, _) = self.request_deadline(started);
        if self.wait_for_leader(deadline).await.is_err() {
            return Err(EtcdError::ContextDeadline.status());
        }
        let (change_type, member) = check()?;
        let id = request_id(self.member_id(), self.next_request_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        {
            let mut map = self.membership.waiters.lock();
            if map.len() >= CONF_WAITERS_MAX {
                return Err(EtcdError::TooManyRequests.status());
            }
            map.insert(id, tx);
        }
        let change = raft::eraftpb::ConfChange {
            change_type,
            node_id: member.id,
            context: ConfContext { proposer: self.member_id(), request_id: id, member }.encode(),
            ..Default::default()
        };
        // etcd's `configure` waits on the context for a leader too, as a write does.
        let proposed = self
            .propose_when_led(deadline, started, || self.raft.propose_conf_change(self.raft_group(), change.clone()));
        if let Err(status) = proposed.await {
            self.membership.waiters.lock().remove(&id);
            return Err(status);
        }
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(members)) => Ok(members),
            Ok(Err(_)) => Err(EtcdError::Stopped.status()),
            Err(_) => {
                self.membership.waiters.lock().remove(&id);
                // etcd's `parseProposeCtxErr`, as for any proposal that timed out.
                Err(propose_timeout_error(&self.timeout_context(started)).status())
            }
        }
    }

    /// Promotes learner `id`. On the leader, after etcd's checks in etcd's order; elsewhere
    /// the request is forwarded to the leader, as etcd forwards it.
    pub async fn promote_on_leader(&self, id: u64) -> Result<Vec<Member>, Status> {
        // etcd checks a promotion on its leader only: a member that knows none waits for one
        // (etcd's `waitLeader`), up to the request timeout or the client's deadline, and then
        // answers `no leader`.
        let (deadline, _) = self.request_deadline(std::time::Instant::now());
        if self.wait_for_leader(deadline).await.is_err() {
            return Err(EtcdError::NoLeader.status());
        }
        let status = self.raft_status().ok_or_else(|| EtcdError::NoLeader.status())?;
        if status.leader.0 == 0 {
            return Err(EtcdError::NoLeader.status());
        }
        if !status.is_leader {
            let leader = status.leader.0;
            let mut client = self.membership.transport.client(self, leader).await?;
            let forwarded = client.promote(crate::node::peer::pb::PromoteRequest { member_id: id }).await;
            return match forwarded {
                Ok(r) => serde_json::from_slice(&r.into_inner().members).map_err(|e| Status::internal(e.to_string())),
                Err(s) => {
                    if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown {
                        self.membership.transport.drop_client(leader).await;
                    }
                    Err(s)
                }
            };
        }
        // etcd's order on its leader: first whether Raft's progress of `id`, a learner or a
        // voter, has caught up (`isLearnerReady`; an id Raft does not track passes), then the
        // strict reconfiguration check (`IsReadyToPromoteMember`), and only when the change is
        // validated, whether `id` is a member and a learner. So a voter that never started
        // answers "not in sync", and a caught-up voter "can only promote a learner member".
        let leader_match = status.last_index.0 as f64;
        if let Some((_, matched)) = status.progress.iter().find(|(n, _)| n.0 == id) {
            if (matched.0 as f64) < leader_match * LEARNER_READY_PERCENT {
                return Err(EtcdError::LearnerNotReady.status());
            }
        }
        let member = {
            let identity = self.membership.identity.read();
            // The learner counts as a started voter of the cluster it would make.
            let voters = identity.members.iter().filter(|m| !m.is_learner);
            let (members, started) =
                voters.fold((1usize, 1usize), |(n, s), m| (n + 1, s + usize::from(!m.name.is_empty())));
            if started < members / 2 + 1 {
                return Err(EtcdError::NotEnoughStartedMembers.status());
            }
            identity.members.iter().find(|m| m.id == id).cloned()
        };
        let Some(mut member) = member else {
            return Err(EtcdError::MemberNotFound.status());
        };
        if !member.is_learner {
            return Err(EtcdError::MemberNotLearner.status());
        }
        member.is_learner = false;
        self.propose_conf_change(raft::eraftpb::ConfChangeType::AddNode, member).await
    }

    /// Waits until this member knows a leader of its group, at most until `deadline`
    /// (`Err` then). etcd holds a proposal or a read-index request while its member knows no
    /// leader (raft's node takes no proposals then) and answers only at the request timeout,
    /// so a client that writes during an election, or to a member that has not yet heard
    /// from a new group's leader, is served once the leader is known. Only a request that
    /// requires a leader (`hasleader`) is refused at once, by `check_leader`.
    async fn wait_for_leader(&self, deadline: std::time::Instant) -> Result<(), ()> {
        // Elections take at least an election timeout; polling this often adds little to
        // that, and only requests that arrive while there is no leader ever poll.
        const LEADER_POLL: std::time::Duration = std::time::Duration::from_millis(10);
        if self.leader() != 0 {
            return Ok(());
        }
        // A sleeping group holds no election: wake it.
        self.touch_raft_group();
        while self.leader() == 0 {
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(());
            }
            tokio::time::sleep(LEADER_POLL.min(deadline - now)).await;
        }
        Ok(())
    }

    /// Waits for a linearizable read point: the leader confirms the commit index (ReadIndex),
    /// then this member waits until it has applied at least that far. A member that leads
    /// its group as the only voter is its own quorum and confirms nothing with anyone: its
    /// read point is the first entry of its term, from its published status, without a round
    /// through the Raft driver (`DriverHandle::sole_voter_read_index` argues why that is
    /// linearizable: this member answers a write only once it has applied it), so a lone
    /// member's reads wait neither for the driver's work on other tenants' writes nor for
    /// the apply of their own tenant's writes in flight.
    pub async fn read_barrier(&self) -> Result<(), Status> {
        self.barrier(Barrier::Read).await
    }

    /// [`Node::read_barrier`] for a call that etcd sends through Raft (an alarm or auth
    /// read): on a member that knows no leader etcd's raft holds it as it holds any
    /// proposal, until the context's end, and etcd answers the context's error (`Unknown`
    /// "context deadline exceeded") where a read answers "request timed out".
    pub async fn read_barrier_as_proposal(&self) -> Result<(), Status> {
        self.barrier(Barrier::Proposal).await
    }

    async fn barrier(&self, kind: Barrier) -> Result<(), Status> {
        let sole_voter = self.raft.sole_voter_read_index(self.raft_group()).map(|index| index.0);
        // A lone member's read point is nearly always applied already: no clock read.
        if sole_voter.is_some_and(|index| *self.applied.borrow() >= index) {
            return Ok(());
        }
        // One deadline for waiting for a leader, for the read index and for its apply, as
        // etcd's one context; the client's own, if earlier, ends it with the context's error.
        let (deadline, clients) = self.request_deadline(std::time::Instant::now());
        // etcd's answer at the deadline, chosen when it passes: whether this member knows a
        // leader then is what tells a held proposal from one that was not answered in time.
        let timed_out = || match kind {
            _ if clients => EtcdError::ContextDeadline,
            Barrier::Proposal if self.leader() == 0 => EtcdError::ContextDeadline,
            Barrier::Read | Barrier::Proposal => EtcdError::Timeout,
        };
        let index = match sole_voter {
            Some(index) => index,
            None => loop {
                self.wait_for_leader(deadline).await.map_err(|()| timed_out().status())?;
                let rx = self.runtime.read_points.request(&self.raft, self.raft_group()).await;
                match tokio::time::timeout_at(deadline.into(), rx).await {
                    Ok(Ok(Ok(index))) => break index,
                    // The leader was lost between the check and the request: wait again.
                    Ok(Ok(Err(e))) if matches!(*e, raft_log::Error::NoLeader) => continue,
                    Ok(Ok(Err(e))) => return Err(driver_status(&e)),
                    Ok(Err(_)) => return Err(EtcdError::Stopped.status()),
                    Err(_) => return Err(timed_out().status()),
                }
            },
        };
        self.wait_applied_until(index, deadline, timed_out).await
    }

    /// The read behind health checks: a range of the key `health`, linearizable unless
    /// `serializable`, as etcd's `/health` does.
    pub async fn health_read(&self, serializable: bool) -> Result<(), Status> {
        if !serializable {
            self.read_barrier().await?;
        }
        let request = store::RangeRequest { key: Bytes::from_static(b"health"), ..Default::default() };
        match self.store.range(self.group(), &request) {
            // A tenant being restored is a healthy member doing its work: probes must not
            // restart it for that.
            Ok(_) | Err(store::Error::Importing) => Ok(()),
            Err(e) => Err(crate::error::store_status(&e)),
        }
    }

    /// Brings the gauges that mirror store and Raft state up to date (before a scrape), from
    /// this node's group (the default tenant's, which `/metrics` is served for).
    pub fn refresh_gauges(&self) {
        let m = &self.metrics;
        m.refresh_tenants(&self.tenants.nodes());
        let group = self.group();
        m.db_total_size.set(self.store.db_size_bytes() as i64);
        m.db_in_use_size.set(self.store.size_bytes(group) as i64);
        m.current_revision.set(self.store.current_revision(group));
        m.compact_revision.set(self.store.compact_main_revision(group));
        // etcd's committed and applied "proposals" are its Raft log's commit index and
        // applied index (every entry: conf changes and leaders' empty entries too). The
        // applied index is the store's, which apply moves with each batch it writes.
        if let Some((commit, _)) = self.raft.commit_and_term(self.raft_group()) {
            m.proposals_committed.set(commit.0 as i64);
        }
        m.proposals_applied.set(self.store.applied_index(group) as i64);
        m.proposals_pending.set(self.waiters.len() as i64);
        let leader = self.leader();
        m.has_leader.set(i64::from(leader != 0));
        m.is_leader.set(i64::from(leader != 0 && leader == self.member_id()));
        m.is_learner.set(i64::from(self.is_learner()));
        m.raft_groups_awake.set(self.raft.awake_groups() as i64);
    }

    /// On the leader, for a client or a follower that forwarded the request: renews lease
    /// `id` (`renew`; its TTL, 0 if unknown) or reads its seconds left (-1 if unknown).
    pub async fn lease_here(&self, id: i64, renew: bool) -> Result<i64, Status> {
        // Renewals are leader-local: a leader asleep since before a partition must wake to
        // check its quorum again rather than renew on a stale belief forever.
        self.touch_raft_group();
        self.wait_committed_applied().await?;
        Ok(if renew {
            self.lessor.keep_alive(id).unwrap_or(0)
        } else {
            self.lessor.remaining_seconds(id).unwrap_or(-1)
        })
    }

    /// etcd's `waitAppliedIndex`: before a leader renews a lease or reads its time to live,
    /// it applies every entry it knows committed, at most [`APPLY_TIMEOUT`]. A grant made
    /// through a follower is answered once committed and applied *there*, but reaches this
    /// member's lessor only when this member applies it: without the wait, a renewal sent
    /// right after the grant could find no such lease.
    async fn wait_committed_applied(&self) -> Result<(), Status> {
        let Some(commit) = self.raft.commit_and_term(self.raft_group()).map(|(commit, _)| commit.0) else {
            return Ok(());
        };
        // Nearly always applied already (a lone leader's renewals): no clock read.
        if *self.applied.borrow() >= commit {
            return Ok(());
        }
        // etcd's `waitAppliedIndex` has no context: the client's deadline does not end it.
        let deadline = std::time::Instant::now() + APPLY_TIMEOUT;
        self.wait_applied_until(commit, deadline, || EtcdError::TimeoutWaitAppliedIndex).await
    }

    /// Waits until this member has applied `index`, at most until `deadline`, then answers
    /// `timed_out()`.
    async fn wait_applied_until(
        &self,
        index: u64,
        deadline: std::time::Instant,
        timed_out: impl FnOnce() -> EtcdError,
    ) -> Result<(), Status> {
        // Nearly always applied already: no receiver clone, no timer.
        if *self.applied.borrow() >= index {
            return Ok(());
        }
        let mut applied = self.applied.clone();
        let outcome =
            tokio::time::timeout_at(deadline.into(), async { applied.wait_for(|a| *a >= index).await.is_ok() }).await;
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => Err(EtcdError::Stopped.status()),
            Err(_) => Err(timed_out().status()),
        }
    }
}

/// Which of etcd's paths a read barrier stands for, which decides its answer at the deadline.
#[derive(Clone, Copy, Debug)]
enum Barrier {
    /// A linearizable read (ReadIndex in etcd too).
    Read,
    /// A call etcd sends through Raft as a proposal (alarms, auth reads).
    Proposal,
}

/// Maps a driver error to etcd's status. Errors that only a replicated member meets are
/// mapped here; the rest as `raft_status` does.
fn driver_status(e: &raft_log::Error) -> Status {
    match e {
        raft_log::Error::NoLeader => EtcdError::NoLeader.status(),
        raft_log::Error::Timeout => EtcdError::Timeout.status(),
        other => raft_status(other),
    }
}

/// The proposer and request id of a log entry; `None` for an entry without them (a
/// leader's empty entry).
fn decode_prefix(data: &[u8]) -> Option<(u64, u64)> {
    let proposer = u64::from_be_bytes(data.get(..8)?.try_into().ok()?);
    let id = u64::from_be_bytes(data.get(8..REQUEST_ID_BYTES)?.try_into().ok()?);
    Some((proposer, id))
}

/// Decodes a log entry into its proposer, request id and command, for tools and tests.
pub fn decode_entry(data: &Bytes) -> Option<(u64, u64, store::Command)> {
    let (proposer, id) = decode_prefix(data)?;
    let command = store::Command::decode(&data[REQUEST_ID_BYTES..]).ok()?;
    Some((proposer, id, command))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// etcd 3.5.1 with its default 1.5 MiB limit, as a member whose id's low 16 bits have
    /// their top bit set, took a put of key `big` with a value of 1,572,837 bytes and refused
    /// one byte more.
    #[test]
    fn the_size_limit_counts_etcds_entry_header() {
        let limit = 1536 * 1024;
        let put = |len: usize| store::Command {
            request_id: 0,
            body: Some(store::CommandBody::Put(store::PutRequest {
                key: Bytes::from_static(b"big"),
                value: vec![b'x'; len].into(),
                ..Default::default()
            })),
        };
        let member = 0x8000_0000_0000_8000;
        assert_eq!(etcd_entry_len(put(1_572_837).encoded_len(), member), limit);
        assert_eq!(etcd_entry_len(put(1_572_838).encoded_len(), member), limit + 1);
        // A member id with a shorter prefix gives the header a shorter id.
        assert_eq!(etcd_entry_len(put(1_572_837).encoded_len(), 0x0100), limit - 1);
    }

    #[test]
    fn request_ids_of_two_members_never_meet() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_000);
        let (a, b) = (0x1234_0000_0000_0001, 0x9999_0000_0000_0002);
        let first_a = first_request_id(a, now);
        let first_b = first_request_id(b, now);
        assert_ne!(first_a >> REQUEST_ID_SUFFIX_BITS, first_b >> REQUEST_ID_SUFFIX_BITS);
        // The counter wraps inside the suffix instead of spilling into the prefix.
        let near_top = (1 << REQUEST_ID_SUFFIX_BITS) - 1;
        assert_eq!(request_id(a, near_top + 1) >> REQUEST_ID_SUFFIX_BITS, a & 0xffff);
        let later = first_request_id(a, now + std::time::Duration::from_millis(5));
        assert!(later > first_a + 1000, "a later run starts past the ids of an earlier one");
    }

    #[test]
    fn timeouts_say_why_as_etcd_does() {
        let now = Instant::now();
        let ago = |secs: u64| now.checked_sub(Duration::from_secs(secs)).expect("the clock is past a minute");
        let base = TimeoutContext {
            started: ago(7),
            leader_elected_at: Some(ago(600)),
            election_timeout: Duration::from_secs(1),
            leader: 2,
            me: 1,
            voters: vec![1, 2, 3],
            connected_since: HashMap::from([(2, ago(60)), (3, ago(60))]),
        };
        assert_eq!(propose_timeout_error(&base), EtcdError::Timeout, "nothing changed during the request");
        let elected_during = TimeoutContext { leader_elected_at: Some(ago(6)), ..base.clone() };
        assert_eq!(propose_timeout_error(&elected_during), EtcdError::TimeoutDueToLeaderFail);
        // Started long before the election that followed: the old leader was not lost yet.
        let long_before = TimeoutContext { started: ago(30), leader_elected_at: Some(ago(6)), ..base.clone() };
        assert_eq!(propose_timeout_error(&long_before), EtcdError::Timeout);
        let leader_reconnected = TimeoutContext { connected_since: HashMap::from([(2, ago(3))]), ..base.clone() };
        assert_eq!(propose_timeout_error(&leader_reconnected), EtcdError::TimeoutDueToConnectionLost);
        let lone_leader = TimeoutContext { leader: 1, connected_since: HashMap::new(), ..base.clone() };
        assert_eq!(propose_timeout_error(&lone_leader), EtcdError::TimeoutDueToConnectionLost);
        let leader_with_quorum =
            TimeoutContext { leader: 1, connected_since: HashMap::from([(3, ago(60))]), ..base.clone() };
        assert_eq!(propose_timeout_error(&leader_with_quorum), EtcdError::Timeout);
        let no_leader = TimeoutContext { leader: 0, connected_since: HashMap::new(), ..base.clone() };
        assert_eq!(propose_timeout_error(&no_leader), EtcdError::Timeout);
    }
}
