//! Automated backups inside the server: `--backup-dir` or `--backup-url` turns them on,
//! `--backup-full-interval`, `--backup-delta-interval` and `--backup-retention` shape them.
//!
//! Each tenant's backups are taken by the leader of its group, one backup at a time per
//! member. Every tick the scheduler looks at the groups this member leads: a group whose
//! chain is missing or whose newest full backup is older than the full interval (and not at
//! its current revision: an unchanged tenant gets no copy) gets a full backup, one with
//! changes since the end of its chain and no backup for a delta interval gets a delta. After a full backup, retention prunes the tenant's manifest.
//!
//! Where a chain continues is read from the tenant's manifest in the target (cached while
//! the member keeps leading in the same term), never from local memory, so a new leader
//! continues exactly where the old one stopped: no revision is skipped or backed up twice.
//! After each backup the leader proposes a `BackupMark` through the group's own log, so
//! every replica knows the revision the chain reaches. Members that take backups open their
//! store with `hold_history_for_backups`: the purge of a compaction stops at the mark, so
//! the next delta always finds the changes it needs even when clients compact past it. A
//! delta that still cannot be taken (history purged by a member that held nothing) becomes
//! a full backup.
//!
//! Ordering, per backup: object durable in the target → manifest names it (both in
//! [`super::append_backup`]) → mark proposed. A crash between two steps leaves at worst an
//! unnamed object, or a mark behind the manifest (which only holds history longer).
//!
//! Each run takes place on a thread of its own at nice 10, so a backup yields the CPU to
//! client requests on a busy member.
//!
//! Failures are retried with exponential backoff (1 s doubling to the delta interval, at
//! most 5 minutes), logged, counted in metrics and shown by `plinth tenant show`; they never
//! affect `/readyz` or client requests.
//!
//! ## CAVEATS
//!
//! - A deposed leader that is paused between reading and rewriting a manifest can race the
//!   new leader's rewrite (object stores have no compare-and-swap here). Each rewrite checks
//!   the chain's continuity first, so a gap is never recorded; the loser's object is left
//!   unnamed.
//! - A delta is taken only when the group's revision moved: lease and auth changes alone
//!   (which make no revision) wait for the next change or the next full backup.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::manifest::{Entry, Kind, DEFAULT_TENANT};
use super::retention::Retention;
use super::target::BackupTarget;
use crate::node::{Node, DEFAULT_GROUP, SYSTEM_GROUP};
use crate::pb::plinthv1 as pb;

/// The most a failing tenant's retries are spaced.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Nice value of the threads that take backups (0 is the server's own).
const BACKUP_THREAD_NICE: libc::c_int = 10;
/// How often the scheduler looks at the groups at most (also bounded by the intervals).
const TICK_MAX: Duration = Duration::from_secs(1);

/// The schedule from the server's flags.
#[derive(Clone, Debug)]
pub struct ScheduleConfig {
    pub full_interval: Duration,
    pub delta_interval: Duration,
    pub retention: Option<Retention>,
}

/// Where a tenant's chain stands, as this member last read or wrote its manifest.
#[derive(Default)]
struct GroupState {
    /// The leadership term the chain position was read in; a new term reads it again.
    term: u64,
    /// `None` until read from the manifest.
    chain: Option<Chain>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

#[derive(Clone, Copy, Default)]
struct Chain {
    /// The revision the chain reaches (`None`: no full backup yet).
    end: Option<i64>,
    /// The revision of the newest full backup (0: none).
    last_full_revision: i64,
    last_full_ms: u64,
    last_ms: u64,
}

/// The member's backup scheduler.
pub struct Scheduler {
    target: Arc<dyn BackupTarget>,
    cfg: ScheduleConfig,
    state: Mutex<HashMap<u64, GroupState>>,
    /// One backup at a time on this member (scheduled or asked for).
    running: tokio::sync::Mutex<()>,
}

fn now_ms() -> u64 {
    super::now().0
}

impl Scheduler {
    pub fn new(target: Arc<dyn BackupTarget>, cfg: ScheduleConfig) -> Arc<Scheduler> {
        Arc::new(Scheduler { target, cfg, state: Mutex::new(HashMap::new()), running: tokio::sync::Mutex::new(()) })
    }

    pub fn describe_target(&self) -> String {
        self.target.describe()
    }

    /// Runs the schedule over every group this member serves, forever.
    pub async fn run(self: Arc<Self>, default: Arc<Node>) {
        let tick = (self.cfg.delta_interval.min(self.cfg.full_interval) / 4).clamp(Duration::from_millis(50), TICK_MAX);
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let nodes = default.tenants.nodes();
            // State of groups this member no longer leads or serves is dropped: a later
            // term reads the manifest again.
            self.state.lock().retain(|g, _| nodes.iter().any(|n| n.runtime.group == *g && n.is_leader()));
            for node in nodes {
                // A group being imported has no consistent state to back up; its import ends
                // the chain, and the next backup is a full one.
                if node.runtime.group == SYSTEM_GROUP
                    || !node.is_leader()
                    || node.store.import_state(node.group()).is_some()
                {
                    continue;
                }
                // Backups are kept under the tenant's name (`default` for the default group),
                // set on the group's runtime when this member started serving it.
                let Some(tenant) = node.runtime.tenant.get().cloned() else { continue };
                if let Some(full) = self.due(&node, &tenant).await {
                    // A due full backup closes the chain with a delta first (one pin).
                    let _ = self.take(&node, &tenant, full).await;
                }
            }
        }
    }

    /// `Some(full)` when `node`'s group needs a backup now.
    async fn due(&self, node: &Arc<Node>, tenant: &str) -> Option<bool> {
        let g = node.runtime.group;
        let term = node.raft_term();
        let chain = {
            let mut state = self.state.lock();
            let st = state.entry(g).or_default();
            if st.term != term {
                st.term = term;
                st.chain = None;
            }
            if st.retry_at.is_some_and(|at| Instant::now() < at) {
                return None;
            }
            st.chain
        };
        let chain = match chain {
            Some(c) => c,
            None => match self.read_chain(tenant, g).await {
                Ok(c) => {
                    self.state.lock().entry(g).or_default().chain = Some(c);
                    c
                }
                Err(e) => {
                    self.failed(node, tenant, &e);
                    return None;
                }
            },
        };
        let now = now_ms();
        let Some(end) = chain.end else { return Some(true) };
        let current = node.store.current_revision(node.group());
        // A tenant that has not changed since its newest full backup gets no copy of it.
        if now.saturating_sub(chain.last_full_ms) >= self.cfg.full_interval.as_millis() as u64
            && current != chain.last_full_revision
        {
            return Some(true);
        }
        let moved = current > end;
        (moved && now.saturating_sub(chain.last_ms) >= self.cfg.delta_interval.as_millis() as u64).then_some(false)
    }

    /// Reads where `tenant`'s chain stands from its manifest.
    async fn read_chain(&self, tenant: &str, group: u64) -> anyhow::Result<Chain> {
        let target = self.target.clone();
        let tenant = tenant.to_string();
        let manifest = tokio::task::spawn_blocking(move || super::load_manifest(&*target, &tenant)).await??;
        let Some(m) = manifest else { return Ok(Chain::default()) };
        anyhow::ensure!(
            m.group == group,
            "tenant {}'s backups in the target are of group {}, not {group} (a deleted tenant of the same name?): move \
             or prune them",
            m.tenant,
            m.group
        );
        let last_full = m.backups.iter().rev().find(|e| e.kind == Kind::Full);
        Ok(Chain {
            end: m.latest_revision(),
            last_full_revision: last_full.map_or(0, |e| e.to_revision),
            last_full_ms: last_full.map_or(0, |e| e.time_unix_ms),
            last_ms: m.backups.last().map_or(0, |e| e.time_unix_ms),
        })
    }

    /// Takes one backup run of `node`'s group now: a delta, or with `full` a delta that
    /// closes the chain and a full backup from the same point (see [`super::Plan`]); a
    /// delta that cannot continue the chain becomes a full backup. Prunes after a full
    /// backup and proposes the mark. Returns the entries added.
    pub async fn take(&self, node: &Arc<Node>, tenant: &str, full: bool) -> anyhow::Result<Vec<Entry>> {
        let _one = self.running.lock().await;
        let g = node.runtime.group;
        let started = Instant::now();
        let entries = match self.append(node, tenant, full).await {
            Ok(entries) => entries,
            Err(e) => {
                self.failed(node, tenant, &e);
                return Err(e);
            }
        };
        let elapsed = started.elapsed();
        let last = entries.last().expect("a backup run adds at least one entry").clone();
        let took_full = entries.iter().any(|e| e.kind == Kind::Full);
        if let Some(retention) = self.cfg.retention.filter(|_| took_full) {
            let (target, name) = (self.target.clone(), tenant.to_string());
            match tokio::task::spawn_blocking(move || super::prune(&*target, &name, retention)).await {
                Ok(Ok(dropped)) if !dropped.is_empty() => info!(tenant, dropped = dropped.len(), "old backups pruned"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(tenant, error = %e, "pruning old backups failed; retried after the next full backup")
                }
                Err(e) => warn!(tenant, error = %e, "pruning old backups failed"),
            }
        }
        {
            let mut state = self.state.lock();
            let st = state.entry(g).or_default();
            let chain = st.chain.get_or_insert_with(Chain::default);
            chain.end = Some(last.to_revision);
            chain.last_ms = last.time_unix_ms;
            if took_full {
                chain.last_full_ms = last.time_unix_ms;
                chain.last_full_revision = last.to_revision;
            }
            st.failures = 0;
            st.retry_at = None;
            st.last_error.clear();
        }
        let m = &node.metrics;
        m.backup_last_success.with_label_values(&[tenant]).set((last.time_unix_ms / 1000) as i64);
        m.backup_duration.with_label_values(&[tenant]).observe(elapsed.as_secs_f64());
        m.backup_bytes.with_label_values(&[tenant]).inc_by(entries.iter().map(|e| e.size_bytes).sum());
        for e in &entries {
            info!(
                tenant,
                kind = ?e.kind,
                from = e.from_revision,
                to = e.to_revision,
                bytes = e.size_bytes,
                elapsed_ms = elapsed.as_millis() as u64,
                "backup taken"
            );
        }
        // After the manifest names the backups: the mark never runs ahead of the chain.
        let mark = store::CommandBody::BackupMark(store::BackupMark {
            revision: last.to_revision,
            time_unix_ms: last.time_unix_ms,
        });
        if let Err(status) = node.propose(mark).await {
            warn!(tenant, error = %status.message(), "recording the backup mark failed; the next backup records it");
        }
        Ok(entries)
    }

    async fn append(&self, node: &Arc<Node>, tenant: &str, full: bool) -> anyhow::Result<Vec<Entry>> {
        let run = |plan: super::Plan| {
            let (target, store, name, group) =
                (self.target.clone(), node.store.clone(), tenant.to_string(), node.group());
            on_backup_thread(move || super::take_backup(&*target, &name, &store, group, plan))
        };
        if full {
            return run(super::Plan::DeltaThenFull).await;
        }
        match run(super::Plan::Delta).await {
            Ok(entries) => Ok(entries),
            // No chain to continue, or its history is gone: a full backup starts a new one.
            Err(e) if super::needs_full(&e) => {
                info!(tenant, reason = %e, "a delta cannot continue the chain; taking a full backup");
                run(super::Plan::Full).await
            }
            Err(e) => Err(e),
        }
    }

    fn failed(&self, node: &Node, tenant: &str, e: &anyhow::Error) {
        let mut state = self.state.lock();
        let st = state.entry(node.runtime.group).or_default();
        st.failures = st.failures.saturating_add(1);
        let backoff = Duration::from_secs(1u64 << st.failures.min(16).saturating_sub(1))
            .min(self.cfg.delta_interval.max(Duration::from_secs(1)))
            .min(BACKOFF_MAX);
        st.retry_at = Some(Instant::now() + backoff);
        st.last_error = format!("{e:#}");
        // The manifest is read again before the next try: the failure may have been half
        // way (an object stored, the manifest not rewritten).
        st.chain = None;
        node.metrics.backup_failures.with_label_values(&[tenant]).inc();
        warn!(tenant, failures = st.failures, retry_in_ms = backoff.as_millis() as u64, error = %st.last_error, "backup failed");
    }

    /// The status `plinth tenant show` prints for `node`'s group.
    pub fn status(&self, node: &Node) -> pb::BackupStatus {
        let (last_revision, last_time_unix_ms) = node.store.backup_mark(node.group());
        let (failures, last_error) = self
            .state
            .lock()
            .get(&node.runtime.group)
            .map(|st| (st.failures, st.last_error.clone()))
            .unwrap_or_default();
        let overdue = 3 * self.cfg.delta_interval.min(self.cfg.full_interval).as_millis() as u64;
        let state = if failures > 0 {
            "failing"
        } else if last_revision == 0 {
            "pending"
        } else if now_ms().saturating_sub(last_time_unix_ms) > overdue
            && node.store.current_revision(node.group()) > last_revision
        {
            "overdue"
        } else {
            "ok"
        };
        pb::BackupStatus {
            state: state.into(),
            last_revision,
            last_time_unix_ms,
            last_error,
            consecutive_failures: u64::from(failures),
        }
    }
}

/// Runs one backup run on a thread of its own at a lower CPU priority
/// ([`BACKUP_THREAD_NICE`]), so that on a busy member the export and its compression yield
/// to the request path rather than compete with it.
async fn on_backup_thread<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("plinth-backup".into()).spawn(move || {
        // Linux applies a nice value to the calling thread only.
        // SAFETY: setpriority has no memory effects; its failure only leaves the priority.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS as _, libc::gettid() as _, BACKUP_THREAD_NICE);
        }
        let _ = tx.send(f());
    })?;
    rx.await.map_err(|_| anyhow::anyhow!("the backup thread stopped without an answer"))?
}

/// `BackupStatus` of a member without a backup target.
pub fn status_off(node: &Node) -> pb::BackupStatus {
    let (last_revision, last_time_unix_ms) = node.store.backup_mark(node.group());
    pb::BackupStatus { state: "off".into(), last_revision, last_time_unix_ms, ..Default::default() }
}

/// `plinth.v1.Backups`, served on every client router; only the cluster admin's
/// connections (on the default tenant's router) are answered.
pub struct BackupsService {
    pub node: Arc<Node>,
    /// The member's scheduler, when it takes backups.
    pub scheduler: Option<Arc<Scheduler>>,
}

#[tonic::async_trait]
impl pb::backups_server::Backups for BackupsService {
    async fn now(&self, request: Request<pb::BackupNowRequest>) -> Result<Response<pb::BackupNowResponse>, Status> {
        crate::tenants::check_admin(&self.node, &request)?;
        let req = request.into_inner();
        let Some(scheduler) = &self.scheduler else {
            return Err(Status::failed_precondition(
                "plinth: backups are not configured on this member (--backup-dir or --backup-url)",
            ));
        };
        let tenant = if req.tenant.is_empty() { DEFAULT_TENANT.to_string() } else { req.tenant };
        let group = if tenant == DEFAULT_TENANT {
            DEFAULT_GROUP
        } else {
            self.node
                .tenants
                .records()
                .into_iter()
                .find(|r| r.name == tenant)
                .map(|r| r.group)
                .ok_or_else(|| Status::not_found(format!("plinth: tenant {tenant:?} not found")))?
        };
        let node = self.node.tenants.node(group).ok_or_else(|| {
            Status::unavailable(format!("plinth: tenant {tenant:?} is not served by this member yet"))
        })?;
        if !node.is_leader() {
            return Err(Status::failed_precondition(format!(
                "plinth: this member does not lead tenant {tenant:?}'s group; its leader is member {:x}",
                node.leader()
            )));
        }
        let entries = scheduler.take(&node, &tenant, req.full).await.map_err(|e| Status::internal(format!("{e:#}")))?;
        let backups = entries
            .into_iter()
            .map(|e| pb::TakenBackup {
                tenant: tenant.clone(),
                kind: match e.kind {
                    Kind::Full => "full".into(),
                    Kind::Delta => "delta".into(),
                },
                from_revision: e.from_revision,
                to_revision: e.to_revision,
                size_bytes: e.size_bytes,
                records: e.records,
                object: e.object,
                time: e.time,
            })
            .collect();
        Ok(Response::new(pb::BackupNowResponse { backups, member_id: node.member_id() }))
    }
}
