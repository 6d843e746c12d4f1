//! The driver: one thread that owns a `raft::RawNode` per group, feeds it ticks, proposals
//! and messages from a bounded inbox, and runs the Ready loop (see `ready.rs`).
//!
//! The public surface is runtime-agnostic: blocking calls return quickly (bounded queues
//! fail with `Busy` instead of waiting), and read-index results come back through a
//! callback, so a tokio server can use it without blocking its workers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt as _};
use parking_lot::RwLock;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message};
use raft::{RawNode, SnapshotStatus};

use crate::apply::{Applier, ApplyTask};
use crate::batch::WriteBatch;
use crate::driver_config::DriverConfig;
use crate::error::{Error, Result};
use crate::mailbox::{self, Receiver, Sender};
use crate::storage::GroupStorage;
use crate::types::{GroupId, LogIndex, NodeId, Term};
use crate::wal::Wal;

/// Most inbox messages handled before the driver looks at Readys again, so that a flood
/// of proposals cannot starve ticks and persistence (raised to the inbox's capacity when
/// that is larger, so a pass always covers what was queued when it began).
pub(crate) const INBOX_DRAIN_MAX: usize = 4096;

/// Raft messages from peers waiting in the peer inbox; more are refused with `Busy` (the
/// transport drops them, and Raft recovers as from any lost message).
pub(crate) const PEER_INBOX_MAX: usize = 4096;

/// Inbox messages handled between two looks at the peer inbox, so that a flood of client
/// requests delays a heartbeat, vote or append answer by at most this many messages.
const PEER_INBOX_EVERY: usize = 64;

/// Ticks between re-issues of an unanswered read-index request. raft-rs drops a read
/// index silently when the leader is unknown, when the leader has not committed in its
/// term yet, or when a message is lost; the request is asked again until its deadline.
pub(crate) const READ_INDEX_RETRY_TICKS: u32 = 3;

/// Most leader transfers waiting for their outcome at once; more fail with `Busy`. A
/// transfer is a rare operator action (etcd's `MoveLeader`), so a few suffice.
pub(crate) const LEADER_TRANSFERS_PENDING_MAX: usize = 16;

/// Bytes of a read-index context: this node's id, then the request id (both little
/// endian), so contexts of different nodes never collide at the leader.
pub(crate) const READ_CTX_BYTES: usize = 16;

/// Sends Raft messages of one group to peers. Implemented over gRPC by grpc-api.
pub trait Transport: Send + Sync + 'static {
    /// Sends `msgs` (all of `group`). Must not block; may drop messages (Raft retries).
    fn send(&self, group: GroupId, msgs: Vec<Message>);
}

/// Pins a consistent point of the state machine of a group so that a leader can send it to
/// a follower whose log it has already purged. Implemented by the server over its store.
pub trait SnapshotSource: Send + Sync + 'static {
    /// Pins the state of `group` as of its applied index, to be sent to `to`, and returns that
    /// applied index with an opaque token that rides in the Raft snapshot's data. Called on
    /// the driver thread once the state machine has applied everything dispatched to it
    /// (see `apply.rs`), so the applied index is the driver's own and the group's current
    /// ConfState is the one in force at it.
    fn pin(&self, group: GroupId, to: NodeId) -> Result<(LogIndex, Vec<u8>)>;
}

/// How a group starts on this node the first time.
#[derive(Clone, Debug)]
pub enum Bootstrap {
    /// The voters are written as the group's ConfState, with an empty log.
    Voters(Vec<NodeId>),
    /// Like etcd's `StartNode`: one `AddNode` conf change per member at indexes `1..=n` of
    /// term 1, committed, each carrying the member's context bytes. A member that joins
    /// later replays them from the log and learns the initial membership with its details.
    Members(Vec<(NodeId, Bytes)>),
    /// Joins a running group: no ConfState and an empty log. The leader brings the group
    /// here with its log or a snapshot; until then this node never campaigns.
    Join,
}

/// A committed normal entry handed to the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedEntry {
    /// Its log index.
    pub index: LogIndex,
    /// The term it was proposed in.
    pub term: Term,
    /// The proposed bytes (empty for a leader's no-op entry).
    pub data: Bytes,
}

/// What the driver applies committed entries to.
pub trait StateMachine: Send + 'static {
    /// Applied index the state machine has durably recorded for `group` (entries after it
    /// are re-delivered on start).
    fn applied_index(&self, group: GroupId) -> LogIndex;
    /// Committed normal entries of one group, in log order, exactly once per index after
    /// `applied_index`. Empty-data entries (leader no-ops) are included so the applied
    /// index advances. Runs on the apply worker's thread (a `Driver`; see `apply.rs`) or the
    /// caller's (a `ManualDriver`): must not call blocking `DriverHandle` methods
    /// (`create_group`), and must not wait for the driver.
    fn apply(&mut self, group: GroupId, entries: Vec<CommittedEntry>);
    /// Leadership changed for a group (leader id 0 = none).
    fn on_leader_change(&mut self, _group: GroupId, _leader: NodeId, _term: Term) {}
    /// A conf change at `index` was applied to Raft and its resulting `state` made durable.
    /// Normal entries before it were applied first; the state machine then receives an
    /// empty entry at `index` so its applied index passes the conf change. Replayed after
    /// a restart when the state machine had not applied past it: handle it idempotently.
    fn on_conf_change(&mut self, _group: GroupId, _index: LogIndex, _change: &ConfChange, _state: &ConfState) {}
    /// Raft installed a snapshot at `index`: the state machine was replaced before the
    /// snapshot reached Raft (the transport installs it), and entries after `index` follow.
    fn on_snapshot(&mut self, _group: GroupId, _index: LogIndex) {}
}

/// A group's Raft status as last published by the driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStatus {
    /// The leader this node knows of (0 = none).
    pub leader: NodeId,
    /// Current term.
    pub term: Term,
    /// Commit index.
    pub commit: LogIndex,
    /// Index of the last entry handed to the state machine (or skipped as already applied).
    pub applied: LogIndex,
    /// First index still in the log.
    pub first_index: LogIndex,
    /// Last index in the log.
    pub last_index: LogIndex,
    /// True when this node is the leader.
    pub is_leader: bool,
    /// Voters of the group's configuration in force.
    pub voters: Vec<NodeId>,
    /// Learners of the group's configuration in force.
    pub learners: Vec<NodeId>,
    /// On the leader: each other member's matched log index (empty elsewhere).
    pub progress: Vec<(NodeId, LogIndex)>,
    /// True while the group sleeps on this node (no ticks, no heartbeats; see the crate's
    /// "Hibernation" section).
    pub hibernating: bool,
    /// True when the commit index is an entry of the current term (raft-rs's
    /// `commit_to_current_term`): a new leader has committed its first entry, so every entry
    /// an earlier leader committed is committed here too.
    pub committed_in_term: bool,
    /// On a leader: the index of the first entry of its term (the empty entry raft-rs appends
    /// when it is elected); 0 elsewhere, or when the log no longer holds it.
    pub term_start: LogIndex,
    /// True while this follower holds proposals of the group because it has not heard its
    /// leader since it last slept (see the crate's "Hibernation" section): they have not
    /// reached Raft yet, as etcd's raft holds a proposal while its node knows no leader.
    pub holding: bool,
}

/// The index of the first entry of `raft`'s current term in its log, 0 if the log holds
/// none. Terms never decrease along a log, so a binary search finds it; an index the log
/// has compacted counts as an older term.
fn first_index_of_term<T: raft::Storage>(raft: &raft::Raft<T>) -> LogIndex {
    let log = &raft.raft_log;
    let in_term = |i: u64| log.term(i).is_ok_and(|t| t >= raft.term);
    let (mut lo, mut hi) = (log.first_index(), log.last_index() + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if in_term(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    if lo <= log.last_index() && log.term(lo).is_ok_and(|t| t == raft.term) {
        LogIndex(lo)
    } else {
        LogIndex(0)
    }
}

/// Callback receiving the read index (or why there is none).
pub type ReadIndexCallback = Box<dyn FnOnce(Result<LogIndex>) + Send>;

/// Callback receiving the outcome of a leader transfer: `Ok` once the target leads.
pub type TransferLeaderCallback = Box<dyn FnOnce(Result<()>) + Send>;

pub(crate) enum Msg {
    CreateGroup {
        group: GroupId,
        bootstrap: Bootstrap,
        done: SyncSender<Result<()>>,
    },
    RemoveGroup {
        group: GroupId,
        done: SyncSender<Result<()>>,
    },
    Propose {
        group: GroupId,
        data: Bytes,
    },
    ProposeConfChange {
        group: GroupId,
        change: ConfChange,
    },
    ReportSnapshot {
        group: GroupId,
        to: NodeId,
        ok: bool,
    },
    Step {
        group: GroupId,
        msg: Message,
    },
    ReadIndex {
        group: GroupId,
        done: ReadIndexCallback,
    },
    CompactLog {
        group: GroupId,
        index: LogIndex,
    },
    Campaign(GroupId),
    TransferLeader {
        group: GroupId,
        to: NodeId,
        timeout: Duration,
        done: TransferLeaderCallback,
    },
    Unreachable(NodeId),
    /// Wakes a hibernating group (see `DriverHandle::touch`).
    Touch(GroupId),
    /// Peer messages are waiting in the peer inbox.
    Wake,
    /// A pipelined WAL write completed (see [`Flights`]); the loop looks after every message.
    Persisted,
    Stop,
}

/// One group on this node.
pub(crate) struct Peer {
    pub raw: RawNode<GroupStorage>,
    pub leader: u64,
    /// Entries at or below this index were applied before the driver started; they are
    /// not handed to the state machine again.
    pub skip_through: u64,
    /// Highest index handed to (or skipped for) the state machine.
    pub applied: u64,
    /// Ticks since the group was last woken or active (see `hibernate.rs`).
    pub idle_ticks: usize,
    /// Readies of the group handed to the WAL whose write has not completed (see
    /// [`Flights`]); the group does not hibernate while any is out.
    pub unpersisted: usize,
    /// The leader and term of the last message this follower stepped from its leader since
    /// it last slept (`None` after a sleep and at start): a follower forwards proposals only
    /// to a leader it has heard since waking (see `hibernate.rs`, held proposals).
    pub heard: Option<(u64, u64)>,
}

/// How a Ready pass waits for its WAL write (see `ready.rs`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Persist {
    /// Every pass writes and waits (`DriverConfig::pipeline_persistence` off).
    Wait,
    /// The driver thread: a busy pass hands its batch to the WAL writer and goes on; the
    /// completion arrives as [`Msg::Persisted`].
    Pipelined,
    /// `ManualDriver`: every pass takes the asynchronous path, but writes on the calling
    /// thread (so the disk state and a failure's panic stay deterministic); the completion is
    /// handled at the next look, as if the writer had answered in between.
    Deferred,
}

/// One pass's WAL batch in flight, and what waits for it: per group, the Ready's number
/// and its persisted messages (append answers, votes), released only once it is durable.
pub(crate) struct Flight {
    pub seq: u64,
    pub readies: Vec<(GroupId, u64, Vec<Message>)>,
}

/// Completion of the pipelined WAL writes: the highest flight whose batch is durable (the
/// writer completes submissions in queue order, so all before it are too), or why one failed.
#[derive(Default)]
pub(crate) struct Flights {
    state: parking_lot::Mutex<(u64, Option<String>)>,
    done: parking_lot::Condvar,
}

impl Flights {
    pub(crate) fn complete(&self, seq: u64, result: Result<()>) {
        let mut st = self.state.lock();
        match result {
            Ok(()) => st.0 = st.0.max(seq),
            Err(e) => {
                st.1.get_or_insert_with(|| e.to_string());
            }
        }
        drop(st);
        self.done.notify_all();
    }

    /// The highest durable flight; panics if a write failed (the driver cannot go on: what
    /// it promised peers and clients depends on that write).
    pub(crate) fn durable(&self) -> u64 {
        let st = self.state.lock();
        if let Some(e) = &st.1 {
            panic!("raft-log driver cannot persist a Ready: {e}");
        }
        st.0
    }

    /// Blocks until flight `seq` is durable (or a write failed).
    pub(crate) fn wait(&self, seq: u64) {
        let mut st = self.state.lock();
        while st.0 < seq && st.1.is_none() {
            self.done.wait(&mut st);
        }
    }
}

/// One linearizable read waiting for its read point.
pub(crate) struct PendingRead {
    pub done: ReadIndexCallback,
    /// When the read fails with `Timeout` (its start plus `read_index_timeout`).
    pub deadline: Instant,
}

/// Reads of one group that share ONE read-index request (one context, so one round of
/// heartbeats at the leader or one `MsgReadIndex` from a follower). The batch is
/// (re-)issued to Raft whenever `retry_at` has passed and this node can ask: as the leader
/// once it has committed in its term, as a follower once it knows a leader (raft-rs
/// forwards it there). Its answer completes every read in it with the same index.
///
/// Linearizability: a read point must be obtained after the read began. Only a batch that
/// was never issued takes new reads; once its context went to Raft, later reads open the
/// next batch. Re-issuing an issued batch is fine: every read in it began before the first
/// issue, so any later answer is also after it began.
pub(crate) struct ReadBatch {
    pub group: GroupId,
    /// In arrival order, so their deadlines never decrease (same timeout, monotonic clock):
    /// the expired reads are always a prefix.
    pub reads: Vec<PendingRead>,
    pub retry_at: Instant,
}

/// A leader transfer waiting for its target to lead (see `DriverHandle::transfer_leader`).
pub(crate) struct PendingTransfer {
    pub group: GroupId,
    pub to: NodeId,
    pub done: TransferLeaderCallback,
    /// When it fails with `Timeout`.
    pub deadline: Instant,
}

/// Every read waiting for a read point, in batches.
///
/// Invariants: `len` is the number of reads over all batches and never exceeds
/// `read_index_pending_max`; no batch is empty; `open` names only batches that were never
/// issued, at most one per group.
#[derive(Default)]
pub(crate) struct PendingReads {
    /// By request id (the id in the batch's context).
    pub batches: HashMap<u64, ReadBatch>,
    /// The batch of each group still taking reads (not yet issued).
    pub open: HashMap<GroupId, u64>,
    pub len: usize,
    pub next_id: u64,
}

impl PendingReads {
    /// Removes batch `id` and returns its reads.
    pub(crate) fn take(&mut self, id: u64) -> Option<Vec<PendingRead>> {
        let b = self.batches.remove(&id)?;
        if self.open.get(&b.group) == Some(&id) {
            self.open.remove(&b.group);
        }
        self.len -= b.reads.len();
        Some(b.reads)
    }

    /// Whether any read of `group` is waiting (O(batches); asked only when a group may sleep).
    pub(crate) fn has_group(&self, group: GroupId) -> bool {
        self.batches.values().any(|b| b.group == group)
    }

    /// Fails every read of `group` with `Stopped` (the group was removed).
    pub(crate) fn fail_group(&mut self, group: GroupId) {
        let ids: Vec<u64> = self.batches.iter().filter(|(_, b)| b.group == group).map(|(id, _)| *id).collect();
        for id in ids {
            for read in self.take(id).unwrap_or_default() {
                (read.done)(Err(Error::Stopped));
            }
        }
    }
}

/// The driver thread's state.
pub(crate) struct Loop {
    pub cfg: DriverConfig,
    pub wal: Arc<Wal>,
    /// Where committed entries go: the apply worker (a `Driver`) or inline (`ManualDriver`).
    pub applier: Applier,
    pub transport: Arc<dyn Transport>,
    pub snapshots: Option<Arc<dyn SnapshotSource>>,
    pub rx: Receiver<Msg>,
    /// Peers' Raft messages, drained ahead of `rx`.
    pub peer_inbox: Arc<PeerInbox>,
    pub status: Arc<RwLock<HashMap<GroupId, GroupStatus>>>,
    pub peers: BTreeMap<GroupId, Peer>,
    /// Groups that tick and are checked for Readys every pass; the others sleep (see
    /// `hibernate.rs`). Invariant: a subset of `peers`' keys.
    pub awake: BTreeSet<GroupId>,
    /// Groups touched since the last Ready pass (awake or not): the next pass looks at them.
    /// Invariant (`check_hibernation_invariants`): a group in neither set has no Ready.
    pub dirty: BTreeSet<GroupId>,
    /// `awake.len()`, for `DriverHandle::awake_groups` on other threads.
    pub awake_count: Arc<AtomicUsize>,
    pub reads: PendingReads,
    /// Proposals of woken followers waiting to hear from their leader (`hibernate.rs`).
    pub held: crate::hibernate::HeldProposals,
    /// Leader transfers this node started, at most `LEADER_TRANSFERS_PENDING_MAX`.
    pub transfers: Vec<PendingTransfer>,
    /// Records produced outside a Ready (commit index updates from a LightReady); they
    /// ride along with the next WAL batch.
    pub pending: WriteBatch,
    pub persist: Persist,
    /// Pipelined WAL batches not yet handled as durable, oldest first; bounded by the WAL
    /// writer's queue, on which a submission blocks when it is full.
    pub in_flight: std::collections::VecDeque<Flight>,
    /// The number the next flight gets (the first is 1).
    pub next_flight: u64,
    pub flights: Arc<Flights>,
    /// Where a pipelined write's completion wakes the driver thread (`None` when manual).
    pub wake: Option<Sender<Msg>>,
    /// Requests and peer messages handled since the last Ready pass: a pass after one lone
    /// message writes and waits on the driver thread (see `ready.rs`).
    pub pass_messages: usize,
    pub logger: slog::Logger,
    /// The time deadlines and retries are measured against: `None` on the driver thread
    /// (the wall clock); a `ManualDriver` sets it from its ticks, so reads and transfers
    /// time out in simulated time.
    pub clock: Option<Instant>,
}

/// Raft messages from peers, apart from client requests: the driver drains it before its
/// inbox and every [`PEER_INBOX_EVERY`] inbox messages, and a full inbox of proposals never
/// refuses a peer's message. Heartbeats, votes and append answers therefore keep flowing
/// while clients flood a leader, so the flood cannot cost it its quorum.
#[derive(Default)]
pub(crate) struct PeerInbox {
    queue: parking_lot::Mutex<std::collections::VecDeque<(GroupId, Message)>>,
    /// A `Wake` is in the driver's inbox (or could not be sent because the inbox is full,
    /// in which case the driver is busy and looks at this inbox soon anyway).
    wake_sent: std::sync::atomic::AtomicBool,
}

impl PeerInbox {
    /// Queues a message; `Err(Busy)` past [`PEER_INBOX_MAX`]. Wakes the driver when the
    /// queue was empty.
    fn push(&self, tx: &Sender<Msg>, group: GroupId, msg: Message) -> Result<()> {
        {
            let mut q = self.queue.lock();
            if q.len() >= PEER_INBOX_MAX {
                return Err(Error::Busy);
            }
            q.push_back((group, msg));
        }
        if !self.wake_sent.swap(true, std::sync::atomic::Ordering::AcqRel) {
            match tx.try_send(Msg::Wake) {
                Ok(()) | Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => return Err(Error::Stopped),
            }
        }
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.lock().is_empty()
    }

    /// Everything queued, in arrival order.
    fn take(&self) -> std::collections::VecDeque<(GroupId, Message)> {
        // Ordering: the flag is cleared before the queue is taken, so a message pushed after
        // the take sends a new wake-up.
        self.wake_sent.store(false, std::sync::atomic::Ordering::Release);
        std::mem::take(&mut *self.queue.lock())
    }
}

/// The running driver; `stop` (or drop) ends its thread.
pub struct Driver {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

/// A cheap, cloneable handle to talk to the driver from any thread.
#[derive(Clone)]
pub struct DriverHandle {
    tx: Sender<Msg>,
    peer_inbox: Arc<PeerInbox>,
    status: Arc<RwLock<HashMap<GroupId, GroupStatus>>>,
    awake_count: Arc<AtomicUsize>,
}

impl std::fmt::Debug for DriverHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverHandle").finish_non_exhaustive()
    }
}

impl Driver {
    /// Starts the driver thread. Every group with a ConfState in the WAL is re-created,
    /// with Raft's applied index taken from `sm.applied_index` so that later committed
    /// entries are replayed to the state machine.
    pub fn start(
        cfg: DriverConfig,
        wal: Arc<Wal>,
        sm: Box<dyn StateMachine>,
        transport: Arc<dyn Transport>,
    ) -> Result<(Driver, DriverHandle)> {
        Driver::start_with_snapshots(cfg, wal, sm, transport, None)
    }

    /// Like [`Driver::start`], with a source of state-machine snapshots: a leader then sends
    /// a snapshot to a follower that needs entries it has purged (without one it waits).
    pub fn start_with_snapshots(
        cfg: DriverConfig,
        wal: Arc<Wal>,
        sm: Box<dyn StateMachine>,
        transport: Arc<dyn Transport>,
        snapshots: Option<Arc<dyn SnapshotSource>>,
    ) -> Result<(Driver, DriverHandle)> {
        cfg.validate()?;
        let (tx, rx) = mailbox::channel(cfg.proposal_queue_max);
        let mut lp = Loop::new(cfg, wal, sm, transport, snapshots, rx, true)?;
        lp.wake = Some(tx.clone());
        let status = Arc::clone(&lp.status);
        let peer_inbox = Arc::clone(&lp.peer_inbox);
        let awake_count = Arc::clone(&lp.awake_count);
        let thread = std::thread::Builder::new().name("raft-log-driver".into()).spawn(move || lp.run())?;
        Ok((Driver { tx: tx.clone(), thread: Some(thread) }, DriverHandle { tx, peer_inbox, status, awake_count }))
    }

    /// Stops the driver thread and waits for it. Pending read-index and leader-transfer
    /// callbacks complete with `Error::Stopped`.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            // A blocking send is fine here: the driver thread drains its inbox.
            let _ = self.tx.send(Msg::Stop);
            crate::join_thread(t, "raft-log driver thread");
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl DriverHandle {
    fn try_send(&self, msg: Msg) -> Result<()> {
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Error::Busy),
            Err(TrySendError::Disconnected(_)) => Err(Error::Stopped),
        }
    }

    /// Creates `group` with `voters` on first creation (the ConfState is made durable);
    /// idempotent when the group exists. Blocks until done; do not call it from
    /// `StateMachine` callbacks.
    pub fn create_group(&self, group: GroupId, voters: Vec<NodeId>) -> Result<()> {
        self.create_group_with(group, Bootstrap::Voters(voters))
    }

    /// Creates `group` as `bootstrap` says on first creation; idempotent when the group
    /// exists. Blocks until done; do not call it from `StateMachine` callbacks.
    pub fn create_group_with(&self, group: GroupId, bootstrap: Bootstrap) -> Result<()> {
        let (done, rx) = sync_channel(1);
        self.tx.send(Msg::CreateGroup { group, bootstrap, done }).map_err(|_| Error::Stopped)?;
        rx.recv().map_err(|_| Error::Stopped)?
    }

    /// Removes `group` from this node for good: its Raft state stops, and the WAL records an
    /// empty configuration and a compact point past its last entry, so a restart does not
    /// bring it back and its entries no longer hold segments. Pending reads of the group
    /// fail with `Stopped`. Idempotent; blocks until durable; not from `StateMachine`
    /// callbacks. A group id must not be created again after its removal.
    pub fn remove_group(&self, group: GroupId) -> Result<()> {
        let (done, rx) = sync_channel(1);
        self.tx.send(Msg::RemoveGroup { group, done }).map_err(|_| Error::Stopped)?;
        rx.recv().map_err(|_| Error::Stopped)?
    }

    /// Proposes a membership change of `group` (on a follower raft-rs forwards it to the
    /// leader). Raft refuses a second change while one is pending by turning it into an
    /// empty entry, so callers wait for `StateMachine::on_conf_change` with a timeout.
    pub fn propose_conf_change(&self, group: GroupId, change: ConfChange) -> Result<()> {
        self.leader_check(group)?;
        self.try_send(Msg::ProposeConfChange { group, change })
    }

    /// Tells the leader of `group` whether the snapshot it sent to `to` was installed
    /// (raft-rs's `report_snapshot`): on success it resumes appends after the snapshot, on
    /// failure it probes and sends another.
    pub fn report_snapshot(&self, group: GroupId, to: NodeId, ok: bool) -> Result<()> {
        self.try_send(Msg::ReportSnapshot { group, to, ok })
    }

    fn leader_check(&self, group: GroupId) -> Result<()> {
        match self.status.read().get(&group) {
            None => Err(Error::GroupNotFound(group)),
            Some(s) if s.leader.0 == 0 => Err(Error::NoLeader),
            Some(_) => Ok(()),
        }
    }

    /// Proposes `data` to `group`. On a follower, raft-rs forwards the proposal to the
    /// leader it knows. `Err(Busy)` if the inbox is full, `Err(NoLeader)` when this node
    /// knows no leader (nothing was proposed). An accepted proposal may still be lost (a
    /// leader change, a dropped message): callers wait for its apply with a timeout.
    pub fn propose(&self, group: GroupId, data: Bytes) -> Result<()> {
        self.leader_check(group)?;
        self.try_send(Msg::Propose { group, data })
    }

    /// Asks for a linearizable read point of `group`; `done` runs (on the driver thread,
    /// so it must not block) once the read index is known. The caller then waits until
    /// its state machine has applied that index. Works on followers (the request goes to
    /// the leader); unanswered requests are re-issued until `read_index_timeout`.
    pub fn read_index(&self, group: GroupId, done: ReadIndexCallback) {
        if let Err(e) = self.leader_check(group) {
            return done(Err(e));
        }
        match self.tx.try_send(Msg::ReadIndex { group, done }) {
            Ok(()) => {}
            Err(TrySendError::Full(Msg::ReadIndex { done, .. })) => done(Err(Error::Busy)),
            Err(TrySendError::Disconnected(Msg::ReadIndex { done, .. })) => done(Err(Error::Stopped)),
            Err(_) => unreachable!("try_send returns the message it was given"),
        }
    }

    /// Hands a Raft message for `group` received from the transport to the driver, through
    /// the peer inbox (ahead of client requests; see [`PeerInbox`]). `Err(Busy)` when that
    /// inbox is full.
    pub fn step(&self, group: GroupId, msg: Message) -> Result<()> {
        self.peer_inbox.push(&self.tx, group, msg)
    }

    /// The last published status of `group`.
    pub fn status(&self, group: GroupId) -> Option<GroupStatus> {
        self.status.read().get(&group).cloned()
    }

    /// The leader of `group` this node knows (`NodeId(0)` for none), without copying the
    /// whole status: asked on every request's path.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.status.read().get(&group).map(|s| s.leader)
    }

    /// The read point of a linearizable read of `group` that needs no round through the
    /// driver: `Some(i)` when this node leads the group as its only voter and has committed
    /// an entry of its term, where `i` is the first entry of that term; `None` otherwise (ask
    /// [`DriverHandle::read_index`]). The caller waits until its state machine has applied
    /// `i`, then reads the state machine as it is.
    ///
    /// Why that is linearizable, for a state machine that answers each write only once it
    /// has applied it. A sole voter is a quorum by itself, so no other node can be elected or
    /// commit while the configuration in force has this node alone: another voter joins only
    /// through a conf change this node applies, and another leader only with this node's
    /// vote, which it grants in a driver pass that publishes the new configuration or term
    /// before any later pass acknowledges that leader's entries. So while the published
    /// status names this node the sole-voter leader, every write acknowledged to a client
    /// was either answered by this node in this term, after it applied the write (so the
    /// state machine holds it now), or is an entry of an earlier term, which precedes `i`.
    /// Applying `i` therefore covers every write acknowledged before the read began; the
    /// entries committed after it and not yet applied belong to writes not yet answered,
    /// which a read may order either way. Unlike a ReadIndex point (the commit index), `i`
    /// does not move, so a read never waits for its own tenant's writes in flight.
    /// `committed_in_term` says `i` is committed (and so, with it, every earlier entry).
    pub fn sole_voter_read_index(&self, group: GroupId) -> Option<LogIndex> {
        let status = self.status.read();
        let s = status.get(&group)?;
        let sole = s.voters.len() == 1 && s.voters[0] == s.leader;
        (s.is_leader && sole && s.committed_in_term && s.term_start.0 > 0).then_some(s.term_start)
    }

    /// The commit index and term of `group`, without copying the whole status.
    pub fn commit_and_term(&self, group: GroupId) -> Option<(LogIndex, Term)> {
        self.status.read().get(&group).map(|s| (s.commit, s.term))
    }

    /// Wakes `group` if it hibernates, without asking Raft anything: for work a leader does
    /// on its own authority (etcd's lease renewals), so that a leader deposed while asleep
    /// resumes heartbeats and quorum checks and learns of it, as an awake one would within
    /// an election timeout. `Err(Busy)` when the inbox is full (the driver is busy anyway).
    pub fn touch(&self, group: GroupId) -> Result<()> {
        self.try_send(Msg::Touch(group))
    }

    /// [`DriverHandle::touch`], only when the group's published status says it sleeps: a
    /// request on an awake group, nearly all of them, then costs the driver no message. A
    /// group that falls asleep just after the check is woken by the next such request.
    pub fn touch_if_asleep(&self, group: GroupId) -> Result<()> {
        if self.status.read().get(&group).is_some_and(|s| !s.hibernating) {
            return Ok(());
        }
        self.touch(group)
    }

    /// How many groups are awake on this node (ticking; the others hibernate).
    pub fn awake_groups(&self) -> usize {
        self.awake_count.load(Ordering::Relaxed)
    }

    /// The state machine made `durable_applied` durable: the WAL may drop `group`'s
    /// entries at or below it. `Err(Busy)` if the inbox is full (a later call carries a
    /// higher index, so dropping one is harmless).
    pub fn compact_log(&self, group: GroupId, durable_applied: LogIndex) -> Result<()> {
        self.try_send(Msg::CompactLog { group, index: durable_applied })
    }

    /// Makes this node campaign for leadership of `group` (nothing happens when it is not a
    /// voter of the group's configuration).
    pub fn campaign(&self, group: GroupId) -> Result<()> {
        self.try_send(Msg::Campaign(group))
    }

    /// Asks this node, the leader of `group`, to hand leadership to `to` (raft-rs's
    /// `transfer_leader`: the target is caught up, then told to campaign at once). `done`
    /// runs on the driver thread, so it must not block: `Ok` once this node sees `to` as the
    /// leader (at once when `to` is this node), `NotLeader` if this node does not lead,
    /// `BadLeaderTransferee` if `to` is no voter of the group, `Timeout` if `to` does not
    /// lead within `timeout` (raft-rs gives up a transfer after an election timeout; as
    /// etcd's `MoveLeader`, it is not asked again), `Busy` if too many transfers wait.
    pub fn transfer_leader(&self, group: GroupId, to: NodeId, timeout: Duration, done: TransferLeaderCallback) {
        match self.tx.try_send(Msg::TransferLeader { group, to, timeout, done }) {
            Ok(()) => {}
            Err(TrySendError::Full(Msg::TransferLeader { done, .. })) => done(Err(Error::Busy)),
            Err(TrySendError::Disconnected(Msg::TransferLeader { done, .. })) => done(Err(Error::Stopped)),
            Err(_) => unreachable!("try_send returns the message it was given"),
        }
    }

    /// The transport lost its connection to `node`: every group this node leads stops
    /// streaming appends to it and probes again (raft-rs's `report_unreachable`).
    pub fn report_unreachable(&self, node: NodeId) -> Result<()> {
        self.try_send(Msg::Unreachable(node))
    }
}

/// Bytes of the bootstrap of `members`: their `AddNode` conf changes as committed entries
/// `1..=n` of term 1, the HardState that commits them, and the ConfState they produce.
/// Every member of a new cluster writes the same log, so they agree from the start.
fn bootstrap_members(b: &mut WriteBatch, group: GroupId, members: &[(NodeId, Bytes)]) {
    use protobuf::Message as _;
    let mut entries = Vec::with_capacity(members.len());
    for (i, (id, context)) in members.iter().enumerate() {
        let cc = ConfChange {
            change_type: ConfChangeType::AddNode,
            node_id: id.0,
            context: context.clone(),
            ..Default::default()
        };
        let mut e =
            Entry { entry_type: EntryType::EntryConfChange, term: 1, index: i as u64 + 1, ..Default::default() };
        e.data = cc.write_to_bytes().expect("a ConfChange always encodes").into();
        entries.push(e);
    }
    b.add_entries(group, &entries);
    b.set_hard_state(group, &HardState { term: 1, vote: 0, commit: members.len() as u64, ..Default::default() });
    let cs = ConfState { voters: members.iter().map(|(id, _)| id.0).collect(), ..Default::default() };
    b.set_conf_state(group, &cs);
}

impl Loop {
    /// The driver's state, with every group that has a ConfState in the WAL re-created
    /// (Raft's applied index taken from `sm.applied_index`). `Driver::start` runs it on a
    /// thread; `ManualDriver` steps it by hand.
    pub(crate) fn new(
        cfg: DriverConfig,
        wal: Arc<Wal>,
        sm: Box<dyn StateMachine>,
        transport: Arc<dyn Transport>,
        snapshots: Option<Arc<dyn SnapshotSource>>,
        rx: Receiver<Msg>,
        threaded_apply: bool,
    ) -> Result<Loop> {
        let applier = if threaded_apply { Applier::threaded(sm)? } else { Applier::inline(sm) };
        let cfg_pipeline = cfg.pipeline_persistence;
        let mut lp = Loop {
            cfg,
            wal,
            applier,
            transport,
            snapshots,
            rx,
            peer_inbox: Arc::default(),
            status: Arc::new(RwLock::new(HashMap::new())),
            peers: BTreeMap::new(),
            awake: BTreeSet::new(),
            dirty: BTreeSet::new(),
            awake_count: Arc::default(),
            reads: PendingReads { next_id: 1, ..Default::default() },
            held: Default::default(),
            transfers: Vec::new(),
            pending: WriteBatch::new(),
            persist: match (cfg_pipeline, threaded_apply) {
                (false, _) => Persist::Wait,
                (true, true) => Persist::Pipelined,
                (true, false) => Persist::Deferred,
            },
            in_flight: std::collections::VecDeque::new(),
            next_flight: 1,
            flights: Arc::default(),
            wake: None,
            pass_messages: 0,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            clock: None,
        };
        for group in lp.wal.groups() {
            if lp.initialized(group) {
                lp.create_peer(group, &Bootstrap::Join)?;
            }
        }
        Ok(lp)
    }

    /// Whether `group` has a configuration in the WAL (bootstrapped, or learned from the
    /// leader's log or snapshot).
    fn initialized(&self, group: GroupId) -> bool {
        self.wal
            .group_state(group)
            .is_some_and(|s| !s.conf_state.voters.is_empty() || !s.conf_state.learners.is_empty())
    }

    /// Creates the RawNode of `group`. A group with no ConfState in the WAL yet is first
    /// bootstrapped as `bootstrap` says, durably, before Raft sees it.
    pub fn create_peer(&mut self, group: GroupId, bootstrap: &Bootstrap) -> Result<()> {
        if self.peers.contains_key(&group) {
            return Ok(());
        }
        // A flight may still name a removed group of this id; it must not reach the new one.
        self.settle_flights();
        if self.peers.len() >= self.cfg.groups_max {
            return Err(Error::Busy);
        }
        if !self.initialized(group) {
            let mut b = WriteBatch::new();
            match bootstrap {
                Bootstrap::Voters(voters) if !voters.is_empty() => {
                    let cs = ConfState { voters: voters.iter().map(|v| v.0).collect(), ..Default::default() };
                    b.set_conf_state(group, &cs);
                }
                Bootstrap::Members(members) if !members.is_empty() => bootstrap_members(&mut b, group, members),
                Bootstrap::Join => {}
                _ => return Err(Error::Config(format!("group {group} needs at least one voter"))),
            }
            if !b.is_empty() {
                // Durability: the bootstrap state is on disk before Raft sees the group, so a
                // restart finds the same membership.
                self.wal.write(b)?;
            }
        }
        let mut storage = self.wal.storage(group);
        if let Some(source) = &self.snapshots {
            storage = storage.with_snapshot_source(self.applier.settled_source(source.clone()));
        }
        let state = raft::Storage::initial_state(&storage)?;
        let first = raft::Storage::first_index(&storage)?;
        let sm_applied = self.applier.applied_index(group).0;
        if sm_applied + 1 < first {
            return Err(Error::AppliedCompacted { group, applied: LogIndex(sm_applied), first: LogIndex(first) });
        }
        // Raft may not apply past its durable commit index; entries between it and the
        // state machine's applied index are re-committed and then skipped (skip_through).
        let applied = sm_applied.min(state.hard_state.commit);
        let rc = raft::Config {
            id: self.cfg.node_id.0,
            election_tick: self.cfg.election_ticks,
            max_election_tick: self.cfg.election_ticks_max,
            heartbeat_tick: self.cfg.heartbeat_ticks,
            applied,
            max_size_per_msg: self.cfg.max_size_per_msg,
            max_inflight_msgs: self.cfg.max_inflight,
            pre_vote: self.cfg.pre_vote,
            check_quorum: self.cfg.check_quorum,
            ..Default::default()
        };
        rc.validate()?;
        let mut raw = RawNode::new(&rc, storage, &self.logger)?;
        let cs = &state.conf_state;
        if cs.voters == [self.cfg.node_id.0] && cs.learners.is_empty() {
            // A sole voter needs nobody's vote: elect it now instead of after a timeout.
            raw.campaign()?;
        }
        self.peers.insert(
            group,
            Peer { raw, leader: 0, skip_through: sm_applied, applied, idle_ticks: 0, unpersisted: 0, heard: None },
        );
        // A new or recovered group starts awake: it must learn or elect its leader first.
        self.awake.insert(group);
        self.dirty.insert(group);
        self.awake_count.store(self.awake.len(), Ordering::Relaxed);
        self.publish_status(group);
        Ok(())
    }

    /// See [`DriverHandle::remove_group`].
    pub fn remove_peer(&mut self, group: GroupId) -> Result<()> {
        // Ordering: everything dispatched for the group has reached the state machine before
        // the removal is answered, so its owner can delete the group's data without a late
        // apply writing some of it back.
        self.settle_flights();
        self.applier.wait_idle();
        let known = self.peers.remove(&group).is_some();
        self.forget(group);
        if !known && self.wal.group_state(group).is_none() {
            return Ok(());
        }
        let mut b = WriteBatch::new();
        // Durability: the empty ConfState makes recovery skip the group (`initialized`); the
        // compact point (clamped to the last index) releases its entries for purge.
        b.set_conf_state(group, &ConfState::default());
        b.compact(group, LogIndex(u64::MAX));
        self.wal.write(b)?;
        self.status.write().remove(&group);
        self.reads.fail_group(group);
        Ok(())
    }

    /// Now, as deadlines and retries see it (see `clock`).
    pub(crate) fn now(&self) -> Instant {
        self.clock.unwrap_or_else(Instant::now)
    }

    pub fn publish_status(&self, group: GroupId) {
        let Some(p) = self.peers.get(&group) else {
            return;
        };
        let r = &p.raw.raft;
        let cs = r.prs().conf();
        let mut voters: Vec<NodeId> = cs.voters().ids().iter().map(NodeId).collect();
        voters.sort_unstable();
        let mut learners: Vec<NodeId> = cs.learners().iter().copied().map(NodeId).collect();
        learners.sort_unstable();
        let progress = if r.state == raft::StateRole::Leader {
            let mut v: Vec<(NodeId, LogIndex)> = r
                .prs()
                .iter()
                .filter(|(id, _)| **id != self.cfg.node_id.0)
                .map(|(id, pr)| (NodeId(*id), LogIndex(pr.matched)))
                .collect();
            v.sort_unstable();
            v
        } else {
            Vec::new()
        };
        let mut s = GroupStatus {
            leader: NodeId(r.leader_id),
            term: Term(r.term),
            commit: LogIndex(r.raft_log.committed),
            applied: LogIndex(p.applied),
            first_index: LogIndex(r.raft_log.first_index()),
            last_index: LogIndex(r.raft_log.last_index()),
            is_leader: r.state == raft::StateRole::Leader,
            voters,
            learners,
            progress,
            hibernating: !self.awake.contains(&group),
            committed_in_term: r.commit_to_current_term(),
            term_start: LogIndex(0),
            holding: self.held.holds(group),
        };
        if s.is_leader {
            // Searched once per term, at a leader's first publish in it (outside the status
            // lock: the search reads the log). Only this thread writes the status.
            let known = self
                .status
                .read()
                .get(&group)
                .filter(|prev| prev.is_leader && prev.term == s.term && prev.term_start.0 > 0)
                .map(|prev| prev.term_start);
            s.term_start = known.unwrap_or_else(|| first_index_of_term(r));
        }
        self.status.write().insert(group, s);
    }

    /// Handles one inbox message; returns false on `Stop`.
    pub(crate) fn handle(&mut self, msg: Msg) -> bool {
        if !matches!(msg, Msg::Wake | Msg::Persisted) {
            self.pass_messages += 1;
        }
        match msg {
            Msg::CreateGroup { group, bootstrap, done } => {
                let r = self.create_peer(group, &bootstrap);
                let _ = done.send(r);
            }
            Msg::RemoveGroup { group, done } => {
                let r = self.remove_peer(group);
                let _ = done.send(r);
            }
            Msg::ProposeConfChange { group, change } => {
                self.wake(group);
                if let Some(p) = self.peers.get_mut(&group) {
                    if let Err(e) = p.raw.propose_conf_change(Vec::new(), change) {
                        tracing::debug!(%group, error = %e, "conf change dropped");
                    }
                }
            }
            Msg::ReportSnapshot { group, to, ok } => {
                self.wake(group);
                if let Some(p) = self.peers.get_mut(&group) {
                    let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                    p.raw.report_snapshot(to.0, status);
                }
            }
            // Woken followers hold proposals until they hear from their leader (`hibernate.rs`).
            Msg::Propose { group, data } => self.propose_or_hold(group, data),
            Msg::Step { group, msg } => {
                let snapshot_index = (msg.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot)
                    .then(|| msg.get_snapshot().get_metadata().index);
                // Wakes the group unless the message is a hibernation notice or a heartbeat
                // response (`hibernate.rs`).
                self.step_peer_message(group, msg);
                if let Some(index) = snapshot_index {
                    self.snapshot_not_restored(group, index);
                }
            }
            Msg::ReadIndex { group, done } => self.start_read(group, done),
            Msg::CompactLog { group, index } => {
                // Not waited for: the driver thread goes on while the WAL records it.
                let _ = self.compact_log(group, index);
            }
            Msg::Campaign(group) => {
                self.wake(group);
                if let Some(p) = self.peers.get_mut(&group) {
                    if !p.raw.raft.promotable() {
                        // raft-rs's `campaign` does not check this (only its election timer
                        // does): a learner or a removed member could win votes from a stale
                        // configuration and then panic, having no progress of its own.
                        tracing::debug!(%group, "not a voter of the group; no campaign");
                    } else if let Err(e) = p.raw.campaign() {
                        tracing::debug!(%group, error = %e, "campaign failed");
                    }
                }
            }
            Msg::TransferLeader { group, to, timeout, done } => self.start_transfer(group, to, timeout, done),
            Msg::Unreachable(node) => {
                // Awake leaders only: a sleeping one sends nothing to `node` until it wakes,
                // and a send that fails then reports the node again. Telling every sleeping
                // leader would cost O(groups) per lost connection.
                for g in &self.awake {
                    let p = self.peers.get_mut(g).expect("invariant: an awake group exists");
                    if p.raw.raft.state == raft::StateRole::Leader {
                        p.raw.report_unreachable(node.0);
                    }
                }
            }
            Msg::Touch(group) => self.wake(group),
            Msg::Wake => self.drain_peer_inbox(),
            // Handled by the loop after the inbox (`complete_flights`).
            Msg::Persisted => {}
            Msg::Stop => return false,
        }
        true
    }

    /// Queues the compact point of `group` at `index`, never past what this node applied (those
    /// entries may still be needed to re-deliver to the state machine). `None` when the group
    /// is unknown or the WAL refused the record (logged).
    pub(crate) fn compact_log(&self, group: GroupId, index: LogIndex) -> Option<crate::writer::Ticket> {
        let p = self.peers.get(&group)?;
        let to = index.0.min(p.applied);
        match self.wal.compact(group, LogIndex(to)) {
            Ok(ticket) => Some(ticket),
            Err(e) => {
                tracing::warn!(%group, error = %e, "compaction not recorded");
                None
            }
        }
    }

    /// The transport installs a snapshot's data into the state machine before it steps the
    /// message, but raft-rs restores only a snapshot ahead of both its commit index and its
    /// log (otherwise it just moves the commit index). When it did not restore one, the state
    /// machine is nevertheless at `index`: entries up to it that Raft delivers again are
    /// skipped (conf changes still update Raft's configuration), and the state machine hears
    /// of the snapshot as if Raft had restored it.
    fn snapshot_not_restored(&mut self, group: GroupId, index: u64) {
        let Some(p) = self.peers.get_mut(&group) else { return };
        let restored = p.raw.raft.raft_log.unstable.snapshot.as_ref().is_some_and(|s| s.get_metadata().index == index);
        if restored || index <= p.applied || index <= p.skip_through {
            return;
        }
        if self.applier.applied_index(group).0 < index {
            // The data was not installed (the transport found the state machine ahead).
            return;
        }
        p.skip_through = index;
        self.applier.dispatch(ApplyTask::Snapshot(group, LogIndex(index)));
    }

    /// Checks and starts a leader transfer; its answer comes from `service_transfers`.
    fn start_transfer(&mut self, group: GroupId, to: NodeId, timeout: Duration, done: TransferLeaderCallback) {
        let me = self.cfg.node_id;
        self.wake(group);
        let Some(p) = self.peers.get_mut(&group) else {
            return done(Err(Error::GroupNotFound(group)));
        };
        if p.raw.raft.state != raft::StateRole::Leader {
            return done(Err(Error::NotLeader));
        }
        if to == me {
            return done(Ok(()));
        }
        // raft-rs silently ignores a transfer to a learner or to a node it has no progress
        // for; refuse those here so the caller is not left waiting for nothing.
        if !p.raw.raft.prs().conf().voters().contains(to.0) {
            return done(Err(Error::BadLeaderTransferee(to)));
        }
        if self.transfers.len() >= LEADER_TRANSFERS_PENDING_MAX {
            return done(Err(Error::Busy));
        }
        p.raw.transfer_leader(to.0);
        self.transfers.push(PendingTransfer { group, to, done, deadline: self.now() + timeout });
    }

    /// Answers the transfers whose target this node now sees leading, and fails those past
    /// their deadline. Runs after each Ready pass, which is where a new leader is learned.
    pub(crate) fn service_transfers(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.transfers.len() {
            let t = &self.transfers[i];
            let leader = self.peers.get(&t.group).map(|p| p.raw.raft.leader_id);
            let outcome = match leader {
                None => Some(Err(Error::GroupNotFound(t.group))),
                Some(l) if l == t.to.0 => Some(Ok(())),
                Some(_) if t.deadline <= now => Some(Err(Error::Timeout)),
                Some(_) => None,
            };
            match outcome {
                Some(r) => (self.transfers.swap_remove(i).done)(r),
                None => i += 1,
            }
        }
    }

    fn start_read(&mut self, group: GroupId, done: ReadIndexCallback) {
        if self.reads.len >= self.cfg.read_index_pending_max {
            return done(Err(Error::Busy));
        }
        if !self.peers.contains_key(&group) {
            return done(Err(Error::GroupNotFound(group)));
        }
        // A read is activity: a sleeping leader must run a heartbeat round for it, a
        // sleeping follower must tick again (its leader may be gone).
        self.wake(group);
        let now = self.now();
        let read = PendingRead { done, deadline: now + self.cfg.read_index_timeout };
        self.reads.len += 1;
        // Joins the group's batch that was not issued yet (see `ReadBatch` for why an issued
        // one is never joined), or opens one; `service_reads` issues it later in this same
        // loop iteration, after the inbox is drained, so every read that arrived meanwhile
        // shares its request.
        if let Some(id) = self.reads.open.get(&group) {
            let batch = self.reads.batches.get_mut(id).expect("invariant: an open batch exists");
            batch.reads.push(read);
            return;
        }
        let id = self.reads.next_id;
        self.reads.next_id += 1;
        self.reads.batches.insert(id, ReadBatch { group, reads: vec![read], retry_at: now });
        self.reads.open.insert(group, id);
    }

    /// The read-index context of request `id` on this node.
    pub(crate) fn read_ctx(&self, id: u64) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(READ_CTX_BYTES);
        ctx.extend_from_slice(&self.cfg.node_id.0.to_le_bytes());
        ctx.extend_from_slice(&id.to_le_bytes());
        ctx
    }

    /// Fails reads past their deadline, and (re-)issues the batches due whose group can ask
    /// now: a leader that has committed in its term (raft-rs drops earlier requests), or a
    /// follower that knows the leader. Re-issuing the same context is harmless: the leader
    /// ignores a context it already holds, and the first answer completes the batch.
    pub(crate) fn service_reads(&mut self, now: Instant) {
        let mut emptied = Vec::new();
        for (id, b) in self.reads.batches.iter_mut() {
            let expired = b.reads.partition_point(|r| r.deadline <= now);
            for r in b.reads.drain(..expired) {
                (r.done)(Err(Error::Timeout));
            }
            self.reads.len -= expired;
            if b.reads.is_empty() {
                emptied.push(*id);
            }
        }
        for id in emptied {
            self.reads.take(id);
        }
        let retry = self.cfg.tick_interval * READ_INDEX_RETRY_TICKS;
        let mut due: Vec<(u64, GroupId)> =
            self.reads.batches.iter().filter(|(_, b)| b.retry_at <= now).map(|(id, b)| (*id, b.group)).collect();
        // In request order, so the messages a pass sends do not depend on the map's hashing
        // (a simulation replays a run message for message).
        due.sort_unstable();
        for (id, group) in due {
            let ctx = self.read_ctx(id);
            if !self.peers.contains_key(&group) {
                continue;
            }
            // A pending read keeps its group awake (`leader_may_sleep` refuses to sleep with
            // one; this also covers a follower woken by nothing else).
            self.wake(group);
            let p = self.peers.get_mut(&group).expect("invariant: checked above");
            let r = &p.raw.raft;
            let can_ask =
                if r.state == raft::StateRole::Leader { r.commit_to_current_term() } else { r.leader_id != 0 };
            if can_ask {
                p.raw.read_index(ctx);
                // Issued: reads arriving from now on open the next batch.
                if self.reads.open.get(&group) == Some(&id) {
                    self.reads.open.remove(&group);
                }
                if let Some(b) = self.reads.batches.get_mut(&id) {
                    b.retry_at = now + retry;
                }
            }
        }
    }

    fn run(mut self) {
        let mut next_tick = Instant::now() + self.cfg.tick_interval;
        'outer: loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            let first = self.rx.recv_timeout(timeout);
            // Peers first: what woke the driver may be a heartbeat behind a flood.
            self.drain_peer_inbox();
            match first {
                Ok(m) => {
                    if !self.handle(m) {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Fairness: at least as many as the inbox holds, so every message queued when
            // the pass began is handled in it, whichever group sent it (ARCHITECTURE.md).
            for i in 1..=INBOX_DRAIN_MAX.max(self.cfg.proposal_queue_max) {
                if i % PEER_INBOX_EVERY == 0 {
                    self.drain_peer_inbox();
                }
                match self.rx.try_recv() {
                    Ok(m) => {
                        if !self.handle(m) {
                            break 'outer;
                        }
                    }
                    Err(_) => break,
                }
            }
            self.complete_flights();
            let now = Instant::now();
            if now >= next_tick {
                // Only awake groups tick; an idle leader may put its group to sleep here.
                self.tick_awake();
                next_tick = now + self.cfg.tick_interval;
            }
            self.service_reads(now);
            self.service_held(now);
            self.on_ready();
            self.pass_messages = 0;
            self.service_transfers(now);
        }
        self.finish();
    }

    /// Steps every message waiting in the peer inbox.
    fn drain_peer_inbox(&mut self) {
        for (group, msg) in self.peer_inbox.take() {
            self.handle(Msg::Step { group, msg });
        }
    }

    /// Completes pending reads and leader transfers with `Stopped` and persists a last
    /// commit-index update.
    pub(crate) fn finish(&mut self) {
        self.settle_flights();
        for (_, b) in self.reads.batches.drain() {
            for r in b.reads {
                (r.done)(Err(Error::Stopped));
            }
        }
        for t in self.transfers.drain(..) {
            (t.done)(Err(Error::Stopped));
        }
        if !self.pending.is_empty() {
            let b = std::mem::take(&mut self.pending);
            if let Err(e) = self.wal.write(b) {
                tracing::warn!(error = %e, "could not persist final commit index");
            }
        }
        // What was dispatched is applied before the driver reports itself stopped.
        self.applier.stop();
    }
}
