//! Apply off the driver thread.
//!
//! The driver decides what the state machine hears and in which order; a separate *apply
//! worker* thread makes it hear it. Between them is a bounded queue of [`ApplyTask`]s: the
//! driver pushes a group's committed entries (and its conf changes, snapshot installs and
//! leader changes, in the same order as the log) once the Ready that committed them is
//! durable, and goes straight back to ticking, stepping peers' messages and persisting the
//! next Ready while RocksDB writes. A slow apply therefore no longer delays heartbeats,
//! votes or append answers of any group, and the WAL write of Ready `n + 1` overlaps the
//! apply of Ready `n`.
//!
//! ```text
//!  driver thread                      apply worker thread
//!  ──────────────                     ───────────────────
//!  Ready: persist (fdatasync)         held: group → tasks (log order)
//!  dispatch(task) ──► queue ──────►   pass over groups with work, round robin:
//!  (waits when full: backpressure)      ≤ APPLY_BUDGET_ENTRIES entries of each,
//!  advance, tick, step, next Ready      consecutive entries in ONE sm.apply call
//! ```
//!
//! Rules, each enforced where it is noted:
//! - **Per group, log order.** Tasks of one group run in the order they were dispatched
//!   (one FIFO per group on the worker); conf changes are applied to the RawNode and made
//!   durable on the driver thread before their task is queued, exactly as before.
//! - **Fairness.** A pass gives each group with work at most `APPLY_BUDGET_ENTRIES` entries
//!   (a larger Ready is split, in order, over several passes), so a tenant with a deep
//!   backlog or a large Ready delays another tenant's entries by at most one budget per
//!   pass, not by its whole backlog. Within a pass the groups
//!   holding the fewest entries go first, so a quiet tenant's write that arrives while a busy
//!   one is applying waits for the turn in progress only, not for the busy tenant's next
//!   turn too. Every group with work still has its turn in every pass: nothing starves.
//! - **Bounded.** At most `APPLY_QUEUE_MAX` tasks in the queue plus `APPLY_HELD_MAX` held by
//!   the worker; each task is at most one Ready's committed entries of one group (or the
//!   rest of one, after a split).
//! - **Settled points.** Where the driver needs the state machine to be exactly at what
//!   it dispatched (pinning a snapshot for a follower, removing a group), it waits until
//!   the worker has run every task dispatched so far ([`Applier::wait_idle`]). The worker
//!   never waits for the driver, so the wait always ends.
//! - **Failure.** A state machine that panics (an I/O failure while applying) stops the
//!   worker; the driver's next dispatch or wait panics too, so the member stops as it did
//!   when apply ran on the driver thread.
//!
//! A [`crate::ManualDriver`] applies inline on its caller's thread, so deterministic
//! simulations stay deterministic.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::TryRecvError;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use foldhash::HashMap;
use parking_lot::{Condvar, Mutex};
use raft::eraftpb::{ConfChange, ConfState};

use crate::driver::{CommittedEntry, SnapshotSource, StateMachine};
use crate::error::Result;
use crate::mailbox::{self, Receiver, Sender};
use crate::types::{GroupId, LogIndex, NodeId, Term};

/// Tasks in the queue from the driver to the apply worker; the driver waits when it is full.
pub(crate) const APPLY_QUEUE_MAX: usize = 1024;

/// Tasks the worker takes off the queue and holds, sorted by group, for its passes.
const APPLY_HELD_MAX: usize = 1024;

/// Entries of one group applied per pass over the groups with work. A Ready with more is
/// applied over several passes (its entries split, in order), so another group's write
/// waits behind at most this many of a busy group's entries (about 1 ms at 16 µs each),
/// not behind its whole Ready; a group alone costs one more RocksDB write batch per this
/// many entries.
pub(crate) const APPLY_BUDGET_ENTRIES: usize = 64;

/// How often a settled-point wait checks that the worker is still alive.
const WAIT_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// One thing the state machine must hear, for one group.
pub(crate) enum ApplyTask {
    /// Committed normal entries, in log order.
    Entries(GroupId, Vec<CommittedEntry>),
    /// A conf change applied to Raft and made durable (`StateMachine::on_conf_change`).
    ConfChange { group: GroupId, index: LogIndex, change: ConfChange, state: ConfState },
    /// Raft installed a snapshot at this index (`StateMachine::on_snapshot`).
    Snapshot(GroupId, LogIndex),
    /// The group's leader changed (`StateMachine::on_leader_change`).
    LeaderChange(GroupId, NodeId, Term),
}

impl ApplyTask {
    fn group(&self) -> GroupId {
        match self {
            ApplyTask::Entries(g, _) | ApplyTask::Snapshot(g, _) | ApplyTask::LeaderChange(g, _, _) => *g,
            ApplyTask::ConfChange { group, .. } => *group,
        }
    }

    /// The task's share of a backlog: its entries, or 1.
    fn weight(&self) -> usize {
        match self {
            ApplyTask::Entries(_, entries) => entries.len().max(1),
            _ => 1,
        }
    }

    fn run(self, sm: &mut dyn StateMachine) {
        match self {
            ApplyTask::Entries(g, entries) => sm.apply(g, entries),
            ApplyTask::ConfChange { group, index, change, state } => sm.on_conf_change(group, index, &change, &state),
            ApplyTask::Snapshot(g, index) => sm.on_snapshot(g, index),
            ApplyTask::LeaderChange(g, leader, term) => sm.on_leader_change(g, leader, term),
        }
    }
}

/// The state machine, shared by the driver (which only asks `applied_index`, when a group
/// is created or a snapshot was offered) and the apply worker.
type SharedSm = Arc<Mutex<Box<dyn StateMachine>>>;

/// How far the worker got: tasks dispatched (written by the driver thread only) and tasks
/// run, with a condvar for settled-point waits.
struct Progress {
    sent: AtomicU64,
    done: Mutex<u64>,
    ran: Condvar,
    /// False once the worker thread ended (normally or by a panic).
    alive: AtomicBool,
}

impl Progress {
    /// Waits until every task dispatched so far has run. Called on the driver thread, the
    /// only one that dispatches, so the target cannot move while it waits.
    fn wait_idle(&self) {
        let target = self.sent.load(Ordering::Acquire);
        let mut done = self.done.lock();
        while *done < target {
            if !self.alive.load(Ordering::Acquire) {
                panic!("the apply worker stopped with {} tasks not run", target - *done);
            }
            self.ran.wait_for(&mut done, WAIT_CHECK_INTERVAL);
        }
    }
}

/// Marks the worker dead when its thread ends, also by unwinding, and wakes waiters.
struct AliveGuard(Arc<Progress>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
        let _done = self.0.done.lock();
        self.0.ran.notify_all();
    }
}

struct Worker {
    tx: Option<Sender<ApplyTask>>,
    thread: Option<JoinHandle<()>>,
    progress: Arc<Progress>,
}

/// Where the driver sends what the state machine must hear: inline (a `ManualDriver`) or
/// to the apply worker (a `Driver`).
pub(crate) struct Applier {
    sm: SharedSm,
    worker: Option<Worker>,
}

impl Applier {
    /// Runs every task on the dispatching thread.
    pub(crate) fn inline(sm: Box<dyn StateMachine>) -> Applier {
        Applier { sm: Arc::new(Mutex::new(sm)), worker: None }
    }

    /// Runs tasks on a worker thread named `raft-log-apply`.
    pub(crate) fn threaded(sm: Box<dyn StateMachine>) -> std::io::Result<Applier> {
        let sm: SharedSm = Arc::new(Mutex::new(sm));
        let (tx, rx) = mailbox::channel(APPLY_QUEUE_MAX);
        let progress = Arc::new(Progress {
            sent: AtomicU64::new(0),
            done: Mutex::new(0),
            ran: Condvar::new(),
            alive: AtomicBool::new(true),
        });
        let (worker_sm, worker_progress) = (Arc::clone(&sm), Arc::clone(&progress));
        let thread = std::thread::Builder::new()
            .name("raft-log-apply".into())
            .spawn(move || run_worker(&worker_sm, &rx, worker_progress))?;
        Ok(Applier { sm, worker: Some(Worker { tx: Some(tx), thread: Some(thread), progress }) })
    }

    /// Hands `task` to the state machine: now (inline) or through the queue, waiting while
    /// it is full.
    pub(crate) fn dispatch(&self, task: ApplyTask) {
        let Some(w) = &self.worker else {
            task.run(&mut **self.sm.lock());
            return;
        };
        w.progress.sent.fetch_add(1, Ordering::AcqRel);
        let tx = w.tx.as_ref().expect("invariant: the queue is open until the applier stops");
        if tx.send(task).is_err() {
            panic!("the apply worker stopped; this member cannot apply committed entries");
        }
    }

    /// The state machine's applied index of `group` (see `StateMachine::applied_index`).
    pub(crate) fn applied_index(&self, group: GroupId) -> LogIndex {
        self.sm.lock().applied_index(group)
    }

    /// Waits until the state machine has heard everything dispatched so far.
    pub(crate) fn wait_idle(&self) {
        if let Some(w) = &self.worker {
            w.progress.wait_idle();
        }
    }

    /// `source`, pinning only at settled points when tasks run on the worker (see the
    /// module docs): a snapshot's index and the ConfState beside it are then the ones the
    /// driver last dispatched.
    pub(crate) fn settled_source(&self, source: Arc<dyn SnapshotSource>) -> Arc<dyn SnapshotSource> {
        match &self.worker {
            None => source,
            Some(w) => Arc::new(SettledSource { inner: source, progress: Arc::clone(&w.progress) }),
        }
    }

    /// Lets the worker run what is queued, then ends it.
    pub(crate) fn stop(&mut self) {
        let Some(w) = &mut self.worker else { return };
        // Closing the queue ends the worker once it has run everything in it.
        w.tx.take();
        if let Some(t) = w.thread.take() {
            crate::join_thread(t, "raft-log apply worker");
        }
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A snapshot source that pins only once the worker has applied every dispatched task.
struct SettledSource {
    inner: Arc<dyn SnapshotSource>,
    progress: Arc<Progress>,
}

impl SnapshotSource for SettledSource {
    fn pin(&self, group: GroupId, to: NodeId) -> Result<(LogIndex, Vec<u8>)> {
        // Ordering: raft-rs asks for a snapshot on the driver thread, so nothing is
        // dispatched while this waits; once it returns, the state machine's applied index
        // is the driver's and the ConfState in the WAL is the one in force at it.
        self.progress.wait_idle();
        self.inner.pin(group, to)
    }
}

/// Tasks the worker holds: one FIFO per group, and the groups with tasks in turn order.
#[derive(Default)]
struct Held {
    by_group: HashMap<GroupId, VecDeque<ApplyTask>>,
    ring: VecDeque<GroupId>,
    count: usize,
}

impl Held {
    fn push(&mut self, task: ApplyTask) {
        let group = task.group();
        let q = self.by_group.entry(group).or_default();
        if q.is_empty() {
            self.ring.push_back(group);
        }
        q.push_back(task);
        self.count += 1;
    }
}

/// The worker: takes tasks off the queue into per-group FIFOs and passes over the groups
/// with work, round robin, each getting up to `APPLY_BUDGET_ENTRIES` entries per pass.
fn run_worker(sm: &SharedSm, rx: &Receiver<ApplyTask>, progress: Arc<Progress>) {
    let _alive = AliveGuard(Arc::clone(&progress));
    let mut held = Held::default();
    let mut open = true;
    loop {
        if held.count == 0 {
            // Nothing held: sleep until the driver dispatches (or closes the queue).
            match rx.recv() {
                Ok(task) => held.push(task),
                Err(_) => return,
            }
        }
        while open && held.count < APPLY_HELD_MAX {
            match rx.try_recv() {
                Ok(task) => held.push(task),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        // Fairness: shortest backlog first within the pass, counted in entries (a stable sort
        // keeps round-robin order among equals). Each group's backlog is summed once per pass,
        // not once per comparison.
        let Held { by_group, ring, .. } = &mut held;
        ring.make_contiguous()
            .sort_by_cached_key(|g| by_group.get(g).map_or(0, |q| q.iter().map(ApplyTask::weight).sum::<usize>()));
        for _ in 0..held.ring.len() {
            let group = held.ring.pop_front().expect("invariant: the ring holds every group with tasks");
            let q = held.by_group.get_mut(&group).expect("invariant: a group in the ring has tasks");
            let ran = run_turn(&mut **sm.lock(), group, q);
            if q.is_empty() {
                held.by_group.remove(&group);
            } else {
                held.ring.push_back(group);
            }
            held.count -= ran;
            *progress.done.lock() += ran as u64;
            progress.ran.notify_all();
        }
    }
}

/// One group's turn: runs tasks from the front of its FIFO until `APPLY_BUDGET_ENTRIES`
/// entries (or a non-entry task after some) ran, splitting a task that holds more;
/// consecutive entry tasks become ONE `apply` call, so one RocksDB write covers several
/// small Readys. Returns the tasks finished.
fn run_turn(sm: &mut dyn StateMachine, group: GroupId, q: &mut VecDeque<ApplyTask>) -> usize {
    let mut ran = 0;
    let mut batch: Vec<CommittedEntry> = Vec::new();
    while batch.len() < APPLY_BUDGET_ENTRIES && ran < APPLY_BUDGET_ENTRIES {
        match q.pop_front() {
            Some(ApplyTask::Entries(g, mut entries)) => {
                let room = APPLY_BUDGET_ENTRIES - batch.len();
                let split = entries.len() > room;
                if split {
                    // Ordering: the rest goes back to the front of the group's FIFO, so it is
                    // the group's next apply, in log order. The task is not done yet.
                    let rest = entries.split_off(room);
                    q.push_front(ApplyTask::Entries(g, rest));
                }
                if batch.is_empty() {
                    batch = entries;
                } else {
                    batch.extend(entries);
                }
                if split {
                    break;
                }
            }
            // Ordering: a conf change, snapshot or leader change runs only once the entries
            // before it have; entries after it may join the next batch.
            Some(other) if batch.is_empty() => other.run(sm),
            Some(other) => {
                q.push_front(other);
                break;
            }
            None => break,
        }
        ran += 1;
    }
    if !batch.is_empty() {
        sm.apply(group, batch);
    }
    ran
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::mpsc;

    /// What the state machine heard, in order: `(group, first index, entries)` per apply
    /// call, or a marker for the other callbacks.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<(u64, String)>>>);

    /// Records every call; the first `apply` waits for `gate` (when given) so a test can
    /// queue work behind it.
    struct Recorder {
        log: Log,
        gate: Option<mpsc::Receiver<()>>,
        panic_on_apply: bool,
    }

    impl StateMachine for Recorder {
        fn applied_index(&self, _group: GroupId) -> LogIndex {
            LogIndex(0)
        }
        fn apply(&mut self, group: GroupId, entries: Vec<CommittedEntry>) {
            if let Some(gate) = self.gate.take() {
                gate.recv().expect("gate opened");
            }
            assert!(!self.panic_on_apply, "the disk failed");
            let first = entries.first().map_or(0, |e| e.index.0);
            self.log.0.lock().push((group.0, format!("entries {first}+{}", entries.len())));
        }
        fn on_conf_change(&mut self, group: GroupId, index: LogIndex, _change: &ConfChange, _state: &ConfState) {
            self.log.0.lock().push((group.0, format!("conf {}", index.0)));
        }
        fn on_leader_change(&mut self, group: GroupId, leader: NodeId, _term: Term) {
            self.log.0.lock().push((group.0, format!("leader {}", leader.0)));
        }
    }

    fn entries(from: u64, n: u64) -> Vec<CommittedEntry> {
        (from..from + n).map(|i| CommittedEntry { index: LogIndex(i), term: Term(1), data: Bytes::new() }).collect()
    }

    /// Runs `busy` (group 1's dispatches) on a worker whose first apply is held at a gate,
    /// then dispatches group 2's one entry during that apply, opens the gate, and returns
    /// what the state machine heard once everything ran.
    fn one_entry_behind(busy: impl FnOnce(&Applier)) -> Vec<(u64, String)> {
        let (open, gate) = mpsc::channel();
        let log = Log::default();
        let sm = Recorder { log: log.clone(), gate: Some(gate), panic_on_apply: false };
        let applier = Applier::threaded(Box::new(sm)).unwrap();
        busy(&applier);
        std::thread::sleep(Duration::from_millis(50));
        applier.dispatch(ApplyTask::Entries(GroupId(2), entries(1, 1)));
        std::thread::sleep(Duration::from_millis(20));
        open.send(()).unwrap();
        applier.wait_idle();
        let heard = log.0.lock().clone();
        heard
    }

    #[test]
    fn a_deep_backlog_of_one_group_delays_another_by_at_most_one_budget() {
        let budget = APPLY_BUDGET_ENTRIES as u64;
        // Group 1 queues ten budgets of entries, one Ready's worth at a time.
        let log = one_entry_behind(|applier| {
            for r in 0..10 {
                applier.dispatch(ApplyTask::Entries(GroupId(1), entries(1 + r * budget, budget)));
            }
        });
        let second = log.iter().position(|(g, _)| *g == 2).expect("group 2 applied");
        let before: u64 =
            log[..second].iter().map(|(_, what)| what.rsplit('+').next().unwrap().parse::<u64>().unwrap()).sum();
        // Only the call held at the gate: in the next pass group 2, with the shorter backlog,
        // goes first.
        assert!(before <= budget, "group 2 waited behind {before} entries of group 1: {log:?}");
        let ones: Vec<&String> = log.iter().filter(|(g, _)| *g == 1).map(|(_, w)| w).collect();
        let total: u64 = ones.iter().map(|w| w.rsplit('+').next().unwrap().parse::<u64>().unwrap()).sum();
        assert_eq!(total, 10 * budget, "every entry of group 1 applied once");
    }

    #[test]
    fn a_large_ready_is_applied_in_budgets_so_another_group_waits_for_one_only() {
        let budget = APPLY_BUDGET_ENTRIES as u64;
        // ONE Ready of group 1 with ten budgets of entries.
        let log = one_entry_behind(|applier| {
            applier.dispatch(ApplyTask::Entries(GroupId(1), entries(1, 10 * budget + 3)));
        });
        let second = log.iter().position(|(g, _)| *g == 2).expect("group 2 applied");
        assert_eq!(second, 1, "group 2 applied right after the first budget of group 1: {log:?}");
        // Group 1's entries arrive in order, each exactly once, in calls of at most a budget.
        let mut next = 1;
        for (_, what) in log.iter().filter(|(g, _)| *g == 1) {
            let (first, n) = what.trim_start_matches("entries ").split_once('+').unwrap();
            let (first, n): (u64, u64) = (first.parse().unwrap(), n.parse().unwrap());
            assert_eq!(first, next, "{log:?}");
            assert!(n <= budget, "{log:?}");
            next += n;
        }
        assert_eq!(next, 10 * budget + 4, "every entry of group 1 applied once");
    }

    #[test]
    fn a_groups_tasks_run_in_dispatch_order_and_entries_coalesce_between_the_others() {
        let (open, gate) = mpsc::channel();
        let log = Log::default();
        let sm = Recorder { log: log.clone(), gate: Some(gate), panic_on_apply: false };
        let applier = Applier::threaded(Box::new(sm)).unwrap();
        let g = GroupId(7);
        applier.dispatch(ApplyTask::Entries(g, entries(1, 1)));
        applier.dispatch(ApplyTask::Entries(g, entries(2, 2)));
        applier.dispatch(ApplyTask::Entries(g, entries(4, 1)));
        applier.dispatch(ApplyTask::ConfChange {
            group: g,
            index: LogIndex(5),
            change: ConfChange::default(),
            state: ConfState::default(),
        });
        applier.dispatch(ApplyTask::Entries(g, entries(5, 1)));
        applier.dispatch(ApplyTask::LeaderChange(g, NodeId(3), Term(2)));
        applier.dispatch(ApplyTask::Entries(g, entries(6, 2)));
        std::thread::sleep(Duration::from_millis(50));
        open.send(()).unwrap();
        applier.wait_idle();
        let seen: Vec<String> = log.0.lock().iter().map(|(_, w)| w.clone()).collect();
        // The entries before the conf change ran as one call, or (when the worker took the
        // first task before the others were queued) as that task and then the rest.
        let rest = ["conf 5", "entries 5+1", "leader 3", "entries 6+2"];
        let one: Vec<String> = ["entries 1+4"].iter().chain(&rest).map(|s| s.to_string()).collect();
        let two: Vec<String> = ["entries 1+1", "entries 2+3"].iter().chain(&rest).map(|s| s.to_string()).collect();
        assert!(seen == one || seen == two, "unexpected order: {seen:?}");
    }

    #[test]
    fn inline_runs_on_the_callers_thread_at_once() {
        let log = Log::default();
        let applier = Applier::inline(Box::new(Recorder { log: log.clone(), gate: None, panic_on_apply: false }));
        applier.dispatch(ApplyTask::Entries(GroupId(1), entries(1, 3)));
        assert_eq!(log.0.lock().len(), 1);
    }

    #[test]
    fn a_panicking_state_machine_stops_the_driver_instead_of_hanging_it() {
        let sm = Recorder { log: Log::default(), gate: None, panic_on_apply: true };
        let applier = Applier::threaded(Box::new(sm)).unwrap();
        applier.dispatch(ApplyTask::Entries(GroupId(1), entries(1, 1)));
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| applier.wait_idle()));
        assert!(waited.is_err(), "a wait on a dead worker panics");
        // The queue is closed now: a later dispatch panics too.
        std::thread::sleep(Duration::from_millis(20));
        let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            applier.dispatch(ApplyTask::Entries(GroupId(1), entries(2, 1)))
        }));
        assert!(sent.is_err(), "a dispatch to a dead worker panics");
    }
}
