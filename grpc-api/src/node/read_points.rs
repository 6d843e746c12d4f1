//! Linearizable read points of one group, one driver request per round.
//!
//! A linearizable read needs a read index obtained *after* it began (ReadIndex: the leader
//! confirms its commit index with a quorum). The driver already serves every read waiting at
//! once with one Raft request, but each read still went to it as its own inbox message with
//! its own callback: at 100 clients a profile of `range` (linearizable) had 13 % of the
//! member's CPU in waking the driver thread for those messages and as much again in the
//! driver's loop turning over for them.
//!
//! Here reads of a group are gathered on the serving side, as etcd's `linearizableReadLoop`
//! does: at most one request is out to the driver. A read that arrives while it is out waits
//! for the next one, which is issued the moment the current one is answered and serves every
//! read that arrived in between. Every read so gets an index from a request issued after it
//! arrived, which is all linearizability asks, and a busy group sends the driver one message
//! per round instead of one per read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// What a read is told: the read index, or why there is none.
pub type ReadPoint = Result<u64, Arc<raft_log::Error>>;

/// Most reads served by one round; more wait for the next round (so one answer never wakes
/// an unbounded number of tasks in one go on the driver thread).
pub const READS_PER_ROUND_MAX: usize = 4096;

#[derive(Default)]
struct State {
    /// A request is out to the driver; reads arriving now wait in `next`.
    out: bool,
    /// Reads that arrived since the request out was issued.
    next: Vec<oneshot::Sender<ReadPoint>>,
}

/// The read points of one group (see the module docs).
#[derive(Default)]
pub struct ReadPoints {
    state: Mutex<State>,
    /// Requests sent to the driver so far.
    rounds: AtomicU64,
}

impl ReadPoints {
    /// Asks for a read point of `group` for a read that begins now.
    ///
    /// When no request is out, this read's task sends the next one, after one yield to the
    /// runtime: the reads that other tasks of the same worker are about to make (the rest of
    /// a connection's frames, already read) join it instead of each waking the driver for a
    /// round of one. Without the yield, on a member whose threads share a CPU, the woken
    /// driver preempts the task at once, answers that one read, and every read became a
    /// round of its own.
    pub async fn request(
        self: &Arc<Self>,
        raft: &raft_log::DriverHandle,
        group: raft_log::GroupId,
    ) -> oneshot::Receiver<ReadPoint> {
        let (tx, rx) = oneshot::channel();
        let issue = {
            let mut st = self.state.lock();
            st.next.push(tx);
            !std::mem::replace(&mut st.out, true)
        };
        if issue {
            // Issued when dropped: after the yield, or at once if this read's task is
            // cancelled during it, so the reads that joined never wait for a request that
            // nobody sends.
            let _issue = IssueOnDrop { points: Arc::clone(self), raft: raft.clone(), group };
            tokio::task::yield_now().await;
        }
        rx
    }

    /// Requests sent to the driver so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }
}

/// Sends the request of the reads waiting when dropped (see `ReadPoints::request`).
struct IssueOnDrop {
    points: Arc<ReadPoints>,
    raft: raft_log::DriverHandle,
    group: raft_log::GroupId,
}

impl Drop for IssueOnDrop {
    fn drop(&mut self) {
        Round::issue(Arc::clone(&self.points), self.raft.clone(), self.group);
    }
}

/// One request out to the driver, and the reads it serves.
struct Round {
    points: Arc<ReadPoints>,
    raft: raft_log::DriverHandle,
    group: raft_log::GroupId,
    /// Taken when the round is answered; a round dropped unanswered (the driver stopped)
    /// answers `Stopped` from `drop`.
    reads: Option<Vec<oneshot::Sender<ReadPoint>>>,
}

impl Round {
    /// Sends the driver a request for every read waiting now. Called with `out` set.
    fn issue(points: Arc<ReadPoints>, raft: raft_log::DriverHandle, group: raft_log::GroupId) {
        let reads = {
            let mut st = points.state.lock();
            let n = st.next.len().min(READS_PER_ROUND_MAX);
            // Ordering: these reads all arrived before this point, and the request below is
            // sent after it, so its answer is a valid read point for each of them.
            st.next.drain(..n).collect::<Vec<_>>()
        };
        points.rounds.fetch_add(1, Ordering::Relaxed);
        let round = Round { points, raft: raft.clone(), group, reads: Some(reads) };
        // The callback runs on the driver thread (or here, when the request is refused at
        // once); it must not block, and does not: it sends on oneshots and, when reads wait,
        // queues the next request without waiting.
        raft.read_index(
            group,
            Box::new(move |r| {
                let mut round = round;
                round.answer(r.map(|i| i.0).map_err(Arc::new));
            }),
        );
    }

    /// Tells every read of the round `point`, then sends the next request if reads wait.
    fn answer(&mut self, point: ReadPoint) {
        for read in self.reads.take().unwrap_or_default() {
            let _ = read.send(point.clone());
        }
        let more = {
            let mut st = self.points.state.lock();
            st.out = !st.next.is_empty();
            st.out
        };
        if more {
            Round::issue(Arc::clone(&self.points), self.raft.clone(), self.group);
        }
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        if self.reads.is_some() {
            self.answer(Err(Arc::new(raft_log::Error::Stopped)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_log::{CommittedEntry, Driver, DriverConfig, GroupId, NodeId, Wal, WalConfig};
    use std::time::{Duration, Instant};

    /// Records the last applied index.
    struct Sm(Arc<AtomicU64>);
    impl raft_log::StateMachine for Sm {
        fn applied_index(&self, _: GroupId) -> raft_log::LogIndex {
            raft_log::LogIndex(0)
        }
        fn apply(&mut self, _: GroupId, entries: Vec<CommittedEntry>) {
            if let Some(e) = entries.last() {
                self.0.store(e.index.0, Ordering::SeqCst);
            }
        }
    }

    struct NoPeers;
    impl raft_log::Transport for NoPeers {
        fn send(&self, _: GroupId, _: Vec<raft::eraftpb::Message>) {}
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Reads that begin after a write was applied get a read point at or past it, and
    /// concurrent reads share requests to the driver.
    #[test]
    fn reads_get_a_point_past_every_earlier_write_and_share_driver_requests() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(Wal::open(WalConfig::new(dir.path())).unwrap());
        let applied = Arc::new(AtomicU64::new(0));
        let cfg = DriverConfig { tick_interval: Duration::from_millis(10), ..DriverConfig::default() };
        let (driver, raft) = Driver::start(cfg, wal, Box::new(Sm(Arc::clone(&applied))), Arc::new(NoPeers)).unwrap();
        let group = GroupId(1);
        raft.create_group(group, vec![NodeId(1)]).unwrap();
        wait_until("a leader", || raft.status(group).is_some_and(|s| s.is_leader));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        let points = Arc::new(ReadPoints::default());
        for i in 0..20 {
            raft.propose(group, bytes::Bytes::from(format!("w{i}"))).unwrap();
            let before = applied.load(Ordering::SeqCst);
            wait_until("the write applied", || applied.load(Ordering::SeqCst) > before);
            let written = applied.load(Ordering::SeqCst);
            let point = rt.block_on(async { points.request(&raft, group).await.await }).unwrap().unwrap();
            assert!(point >= written, "read point {point} is before the applied write {written}");
        }
        let rounds_before = points.rounds();
        let reads = 2_000;
        let answered: Vec<ReadPoint> = rt.block_on(async {
            let tasks: Vec<_> = (0..reads)
                .map(|_| {
                    let (points, raft) = (Arc::clone(&points), raft.clone());
                    tokio::spawn(async move { points.request(&raft, group).await.await.unwrap() })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        let last = applied.load(Ordering::SeqCst);
        assert!(answered.iter().all(|p| matches!(p, Ok(i) if *i >= last)), "every read has a point");
        let rounds = points.rounds() - rounds_before;
        assert!(rounds < reads / 2, "{reads} concurrent reads took {rounds} driver requests");
        driver.stop();
        // With the driver gone, a read is told so instead of waiting.
        let after = rt.block_on(async { points.request(&raft, group).await.await }).unwrap();
        assert!(matches!(&after, Err(e) if matches!(**e, raft_log::Error::Stopped)), "got {after:?}");
    }
}
