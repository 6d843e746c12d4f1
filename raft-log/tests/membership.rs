//! Membership changes and snapshots over several drivers in one process (in-memory transport):
//! groups bootstrapped with `Bootstrap::Members` report their initial `AddNode` changes; a node
//! started with `Bootstrap::Join` is added as a learner, catches up from the log (replaying the
//! bootstrap changes), is promoted, and a voter is removed while the rest keep committing. With
//! a `SnapshotSource`, a follower cut off past the leader's compacted log, and a new member
//! added after compaction, come in by snapshot (state installed by the transport first) and
//! then apply the same sequence as the leader; a member whose state machine lost everything
//! replays the whole log, conf changes included. A snapshot whose entry the follower already
//! holds makes Raft fast-forward instead of restoring it; the entries up to it must not be
//! handed again to a state machine the transport already replaced.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Message, MessageType};
use raft_log::{
    Bootstrap, CommittedEntry, Driver, DriverConfig, DriverHandle, Error, GroupId, GroupStatus, LogIndex, NodeId,
    SnapshotSource, StateMachine, Transport,
};

const GROUP: GroupId = GroupId(1);
/// Every wait in these tests ends by this deadline (they take well under a second each).
const WAIT: Duration = Duration::from_secs(15);

/// A conf change as the state machine saw it, with the ConfState it produced.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SeenChange {
    index: u64,
    kind: ConfChangeType,
    node: u64,
    context: Bytes,
    voters: Vec<u64>,
    learners: Vec<u64>,
}

/// The state of a test state machine: the entries it applied (its whole "data"), plus what
/// it was told about membership and snapshots. Contract violations are recorded in `errors`
/// rather than panicking on the driver thread (which would only show up as a timeout).
#[derive(Default)]
struct State {
    applied: u64,
    entries: Vec<CommittedEntry>,
    changes: Vec<SeenChange>,
    /// Indexes given to `on_snapshot`.
    snapshots: Vec<u64>,
    /// Indexes of the snapshots the transport installed into this state machine.
    installed: Vec<u64>,
    errors: Vec<String>,
}

#[derive(Clone, Default)]
struct Sm(Arc<Mutex<State>>);

impl StateMachine for Sm {
    fn applied_index(&self, _group: GroupId) -> LogIndex {
        LogIndex(self.0.lock().applied)
    }

    fn apply(&mut self, _group: GroupId, entries: Vec<CommittedEntry>) {
        let mut s = self.0.lock();
        for e in entries {
            if e.index.0 != s.applied + 1 {
                let msg = format!("entry {} applied after {}", e.index.0, s.applied);
                s.errors.push(msg);
            }
            s.applied = e.index.0;
            s.entries.push(e);
        }
    }

    fn on_conf_change(&mut self, _group: GroupId, index: LogIndex, change: &ConfChange, state: &ConfState) {
        let mut s = self.0.lock();
        if index.0 != s.applied + 1 {
            let msg = format!("conf change at {} reported with applied {}", index.0, s.applied);
            s.errors.push(msg);
        }
        let mut voters = state.voters.clone();
        voters.sort_unstable();
        let mut learners = state.learners.clone();
        learners.sort_unstable();
        s.changes.push(SeenChange {
            index: index.0,
            kind: change.get_change_type(),
            node: change.node_id,
            context: change.context.clone(),
            voters,
            learners,
        });
    }

    fn on_snapshot(&mut self, _group: GroupId, index: LogIndex) {
        let mut s = self.0.lock();
        if s.applied != index.0 {
            let msg = format!("on_snapshot({}) but the installed state is at {}", index.0, s.applied);
            s.errors.push(msg);
        }
        s.snapshots.push(index.0);
    }
}

impl Sm {
    fn applied(&self) -> u64 {
        self.0.lock().applied
    }
    fn entries(&self) -> Vec<CommittedEntry> {
        self.0.lock().entries.clone()
    }
    /// The proposed payloads applied, in order (leader no-ops and conf-change entries left out).
    fn data(&self) -> Vec<String> {
        let s = self.0.lock();
        s.entries.iter().filter(|e| !e.data.is_empty()).map(|e| String::from_utf8_lossy(&e.data).into()).collect()
    }
    fn changes(&self) -> Vec<SeenChange> {
        self.0.lock().changes.clone()
    }
    fn snapshots(&self) -> Vec<u64> {
        self.0.lock().snapshots.clone()
    }
    fn installed(&self) -> Vec<u64> {
        self.0.lock().installed.clone()
    }
    fn errors(&self) -> Vec<String> {
        self.0.lock().errors.clone()
    }
}

/// A state pinned by a `SnapshotSource`, found again by its token.
#[derive(Clone)]
struct Pinned {
    applied: u64,
    entries: Vec<CommittedEntry>,
}

/// Routes messages between drivers; nodes in `cut` neither send nor receive.
#[derive(Default)]
struct Net {
    handles: Mutex<HashMap<u64, DriverHandle>>,
    sms: Mutex<HashMap<u64, Sm>>,
    cut: Mutex<HashSet<u64>>,
    /// A node on a lossy link: everything it sends is lost, and of what is sent to it only
    /// appends that carry entries arrive (so it gets entries but not their commit).
    lossy: Mutex<Option<u64>>,
    pins: Mutex<HashMap<Vec<u8>, Pinned>>,
    /// `(from, to, metadata index)` of every snapshot message delivered.
    snapshots_sent: Mutex<Vec<(u64, u64, u64)>>,
}

impl Net {
    fn handle(&self, id: u64) -> Option<DriverHandle> {
        self.handles.lock().get(&id).cloned()
    }

    /// What the real transport does with a snapshot: fetch the pinned state named by the
    /// token, install it into the receiver's state machine, step the Raft message into the
    /// receiver, then tell the sender how it went.
    fn deliver_snapshot(&self, group: GroupId, from: u64, m: Message) {
        let to = m.to;
        let meta = m.get_snapshot().get_metadata().clone();
        let pinned = self.pins.lock().get(m.get_snapshot().get_data()).cloned();
        let (Some(pinned), Some(sm), Some(target)) = (pinned, self.sms.lock().get(&to).cloned(), self.handle(to))
        else {
            if let Some(h) = self.handle(from) {
                let _ = h.report_snapshot(group, NodeId(to), false);
            }
            return;
        };
        {
            let mut s = sm.0.lock();
            if pinned.applied != meta.index {
                let msg =
                    format!("snapshot metadata index {} but the pinned state is at {}", meta.index, pinned.applied);
                s.errors.push(msg);
            }
            // A snapshot older than what the receiver applied would rewind it: skip the install
            // (Raft rejects such a snapshot too).
            if meta.index > s.applied {
                s.entries = pinned.entries;
                s.applied = pinned.applied;
                s.installed.push(meta.index);
            }
        }
        self.snapshots_sent.lock().push((from, to, meta.index));
        let deadline = Instant::now() + WAIT;
        let ok = loop {
            match target.step(group, m.clone()) {
                Ok(()) => break true,
                Err(Error::Busy) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Err(_) => break false,
            }
        };
        if let Some(h) = self.handle(from) {
            let _ = h.report_snapshot(group, NodeId(to), ok);
        }
    }
}

struct Link {
    from: u64,
    net: Arc<Net>,
}

impl Transport for Link {
    fn send(&self, group: GroupId, msgs: Vec<Message>) {
        let cut = self.net.cut.lock().clone();
        let lossy = *self.net.lossy.lock();
        for m in msgs {
            assert_eq!(m.from, self.from, "a node sends only its own messages");
            if cut.contains(&m.from) || cut.contains(&m.to) {
                continue;
            }
            let carries_entries = m.get_msg_type() == MessageType::MsgAppend && !m.entries.is_empty();
            if lossy.is_some_and(|n| n == m.from || (n == m.to && !carries_entries)) {
                continue;
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                // `send` runs on the sender's driver thread and must not block on the receiver.
                let net = Arc::clone(&self.net);
                let from = self.from;
                std::thread::spawn(move || net.deliver_snapshot(group, from, m));
                continue;
            }
            if let Some(h) = self.net.handle(m.to) {
                // A full inbox drops the message, as a real transport may; Raft retries.
                let _ = h.step(group, m);
            }
        }
    }
}

/// Pins the test state machine's state (its applied entries) under a fresh token.
struct Source {
    node: u64,
    sm: Sm,
    net: Arc<Net>,
    next: AtomicU64,
    /// `(group, to, applied)` of every pin.
    pinned: Mutex<Vec<(u64, u64, u64)>>,
}

impl SnapshotSource for Source {
    fn pin(&self, group: GroupId, to: NodeId) -> raft_log::Result<(LogIndex, Vec<u8>)> {
        let s = self.sm.0.lock();
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let token = format!("pin:{}:{}:{}:{n}", self.node, group.0, to.0).into_bytes();
        self.net.pins.lock().insert(token.clone(), Pinned { applied: s.applied, entries: s.entries.clone() });
        self.pinned.lock().push((group.0, to.0, s.applied));
        Ok((LogIndex(s.applied), token))
    }
}

struct Node {
    driver: Option<Driver>,
    sm: Sm,
    source: Option<Arc<Source>>,
    dir: tempfile::TempDir,
}

struct Cluster {
    net: Arc<Net>,
    nodes: HashMap<u64, Node>,
    snapshots: bool,
}

fn members(ids: &[u64]) -> Bootstrap {
    Bootstrap::Members(ids.iter().map(|id| (NodeId(*id), Bytes::from(format!("n{id}")))).collect())
}

impl Cluster {
    fn new(snapshots: bool) -> Cluster {
        Cluster { net: Arc::new(Net::default()), nodes: HashMap::new(), snapshots }
    }

    /// Starts a driver for `id` (with a snapshot source if the cluster has them) and creates the
    /// group on it as `bootstrap` says.
    fn start(&mut self, id: u64, bootstrap: Bootstrap) {
        let dir = tempfile::tempdir().unwrap();
        let sm = Sm::default();
        let source = self.snapshots.then(|| {
            Arc::new(Source {
                node: id,
                sm: sm.clone(),
                net: Arc::clone(&self.net),
                next: AtomicU64::new(1),
                pinned: Mutex::new(Vec::new()),
            })
        });
        self.net.sms.lock().insert(id, sm.clone());
        let driver = self.start_driver(id, dir.path(), &sm, source.clone());
        self.nodes.insert(id, Node { driver: Some(driver), sm, source, dir });
        self.handle(id).create_group_with(GROUP, bootstrap).unwrap();
    }

    fn start_driver(&self, id: u64, dir: &Path, sm: &Sm, source: Option<Arc<Source>>) -> Driver {
        let link = Arc::new(Link { from: id, net: Arc::clone(&self.net) });
        let source = source.map(|s| s as Arc<dyn SnapshotSource>);
        let (d, h) = common::start_driver(
            id,
            dir,
            DriverConfig::default().read_index_timeout,
            Box::new(sm.clone()),
            link,
            source,
        );
        self.net.handles.lock().insert(id, h);
        d
    }

    /// Stops `id`'s driver and starts it again over the same WAL and state machine (emptied
    /// first if `wipe`: a state machine that lost everything it applied).
    fn restart(&mut self, id: u64, wipe: bool) {
        let node = self.nodes.get_mut(&id).unwrap();
        node.driver.take().unwrap().stop();
        if wipe {
            *node.sm.0.lock() = State::default();
        }
        let (path, sm, source) = (node.dir.path().to_path_buf(), node.sm.clone(), node.source.clone());
        let driver = self.start_driver(id, &path, &sm, source);
        self.nodes.get_mut(&id).unwrap().driver = Some(driver);
    }

    fn handle(&self, id: u64) -> DriverHandle {
        self.net.handle(id).unwrap()
    }

    fn sm(&self, id: u64) -> &Sm {
        &self.nodes[&id].sm
    }

    fn status(&self, id: u64) -> GroupStatus {
        self.handle(id).status(GROUP).unwrap()
    }

    /// The leader every node of `among` agrees on.
    fn wait_leader(&self, among: &[u64]) -> u64 {
        let mut leader = 0;
        wait_until(&format!("one leader agreed on by {among:?}"), || {
            let leaders: HashSet<u64> = among.iter().map(|n| self.status(*n).leader.0).collect();
            leader = leaders.iter().copied().next().unwrap_or(0);
            leaders.len() == 1 && among.contains(&leader)
        });
        leader
    }

    /// Waits until every node of `ids` has applied as far as node `of`.
    fn wait_same_applied(&self, what: &str, of: u64, ids: &[u64]) {
        wait_until(what, || {
            let a = self.sm(of).applied();
            ids.iter().all(|id| self.sm(*id).applied() == a)
        });
    }

    /// Asserts every node of `ids` applied the same sequence as node `of`.
    fn assert_same_log(&self, of: u64, ids: &[u64]) {
        let reference = log(self.sm(of));
        for id in ids {
            assert_eq!(log(self.sm(*id)), reference, "node {id} differs from the leader");
        }
    }

    fn propose(&self, on: u64, data: String) {
        common::propose_retrying(&self.handle(on), GROUP, &data, Instant::now() + WAIT);
    }

    /// Proposes `data` round robin on `on`, then waits until every node of `on` applied them
    /// (each proposal is checked to apply once; a lost one is proposed again).
    fn propose_all(&self, on: &[u64], prefix: &str, n: usize) {
        let before: Vec<usize> = on.iter().map(|id| self.sm(*id).data().len()).collect();
        for i in 0..n {
            self.propose(on[i % on.len()], format!("{prefix}{i}"));
        }
        wait_until(&format!("{n} `{prefix}` entries applied on {on:?}"), || {
            on.iter().zip(&before).all(|(id, b)| self.sm(*id).data().len() >= b + n)
        });
    }

    /// Proposes a conf change on the leader `voters` agree on until the leader reports it
    /// applied, then waits until every node of `members` applied it; returns its index.
    fn change(&self, voters: &[u64], members: &[u64], kind: ConfChangeType, node: u64, context: &str) -> u64 {
        let deadline = Instant::now() + WAIT;
        let index = loop {
            assert!(Instant::now() < deadline, "conf change {kind:?} {node} never applied");
            let leader = self.wait_leader(voters);
            let since = self.sm(leader).applied();
            let cc = ConfChange {
                change_type: kind,
                node_id: node,
                context: Bytes::from(context.to_string()),
                ..Default::default()
            };
            match self.handle(leader).propose_conf_change(GROUP, cc) {
                Ok(()) | Err(Error::Busy) | Err(Error::NoLeader) => {}
                Err(e) => panic!("propose_conf_change on {leader}: {e}"),
            }
            let retry = Instant::now() + Duration::from_secs(2);
            let found = loop {
                let seen =
                    self.sm(leader).changes().into_iter().find(|c| c.index > since && c.kind == kind && c.node == node);
                if seen.is_some() || Instant::now() > retry {
                    break seen;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            if let Some(c) = found {
                break c.index;
            }
        };
        wait_until(&format!("conf change at {index} applied on {members:?}"), || {
            members.iter().all(|id| self.sm(*id).applied() >= index)
        });
        index
    }

    fn assert_no_errors(&self) {
        for (id, n) in &self.nodes {
            assert_eq!(n.sm.errors(), Vec::<String>::new(), "state machine of node {id} saw contract violations");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop every driver before the directories go.
        for n in self.nodes.values_mut() {
            if let Some(d) = n.driver.take() {
                d.stop();
            }
        }
        self.net.handles.lock().clear();
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `(index, term, data)` of every applied entry, for comparing replicas.
fn log(sm: &Sm) -> Vec<(u64, u64, Bytes)> {
    sm.entries().into_iter().map(|e| (e.index.0, e.term.0, e.data)).collect()
}

fn ids(v: &[NodeId]) -> Vec<u64> {
    v.iter().map(|n| n.0).collect()
}

fn others(all: &[u64], not: &[u64]) -> Vec<u64> {
    all.iter().copied().filter(|n| !not.contains(n)).collect()
}

#[test]
fn members_bootstrap_then_add_learner_promote_remove() {
    let mut c = Cluster::new(false);
    for id in [1, 2, 3] {
        c.start(id, members(&[1, 2, 3]));
    }
    // The bootstrap changes are committed entries 1..=3: every member reports them in order,
    // with their contexts, before any leader exists.
    wait_until("bootstrap changes applied", || [1, 2, 3].iter().all(|id| c.sm(*id).applied() >= 3));
    let initial: Vec<(u64, ConfChangeType, u64, Bytes)> =
        (1..=3).map(|i| (i, ConfChangeType::AddNode, i, Bytes::from(format!("n{i}")))).collect();
    for id in [1, 2, 3] {
        let seen: Vec<_> =
            c.sm(id).changes().into_iter().take(3).map(|ch| (ch.index, ch.kind, ch.node, ch.context)).collect();
        assert_eq!(seen, initial, "bootstrap changes on node {id}");
        let last = &c.sm(id).changes()[2];
        assert_eq!((last.voters.clone(), last.learners.clone()), (vec![1, 2, 3], vec![]));
        assert_eq!(ids(&c.status(id).voters), vec![1, 2, 3]);
    }

    c.wait_leader(&[1, 2, 3]);
    c.propose_all(&[1, 2, 3], "a", 20);
    c.wait_same_applied("same applied index on 1..=3", 1, &[2, 3]);
    for id in [2, 3] {
        assert_eq!(log(c.sm(id)), log(c.sm(1)), "node {id} applied another sequence than node 1");
    }

    // A fourth node joins empty, is added as a learner and replays the log from index 1.
    c.start(4, Bootstrap::Join);
    let s4 = c.status(4);
    assert_eq!((s4.voters.clone(), s4.learners.clone(), s4.leader), (vec![], vec![], NodeId(0)));
    let learner_at = c.change(&[1, 2, 3], &[1, 2, 3, 4], ConfChangeType::AddLearnerNode, 4, "n4");
    wait_until("learner 4 in every status", || {
        [1, 2, 3, 4].iter().all(|id| {
            let s = c.status(*id);
            ids(&s.voters) == [1, 2, 3] && ids(&s.learners) == [4]
        })
    });
    let seen4: Vec<_> = c.sm(4).changes().into_iter().map(|ch| (ch.index, ch.kind, ch.node, ch.context)).collect();
    let mut expected = initial.clone();
    expected.push((learner_at, ConfChangeType::AddLearnerNode, 4, Bytes::from_static(b"n4")));
    assert_eq!(seen4, expected, "the learner learns the initial members by replaying the bootstrap changes");
    assert_eq!(c.sm(4).snapshots(), Vec::<u64>::new(), "no snapshot needed: the log starts at 1");
    let leader = c.wait_leader(&[1, 2, 3, 4]);
    let progress = c.status(leader).progress;
    assert!(progress.iter().any(|(n, _)| *n == NodeId(4)), "leader tracks the learner: {progress:?}");

    // The learner forwards proposals too, and applies what the voters commit.
    c.propose_all(&[1, 2, 3, 4], "b", 12);
    wait_until("learner matched on the leader", || {
        let s = c.status(leader);
        s.progress.iter().any(|(n, m)| *n == NodeId(4) && *m >= s.commit)
    });

    // Promotion.
    c.change(&[1, 2, 3, 4], &[1, 2, 3, 4], ConfChangeType::AddNode, 4, "n4");
    wait_until("4 voters everywhere", || {
        [1, 2, 3, 4].iter().all(|id| {
            let s = c.status(*id);
            ids(&s.voters) == [1, 2, 3, 4] && s.learners.is_empty()
        })
    });
    c.propose_all(&[1, 2, 3, 4], "c", 8);

    // Removal of a voter that is not the leader; the other three go on.
    let leader = c.wait_leader(&[1, 2, 3, 4]);
    let victim = *[1, 2, 3].iter().find(|n| **n != leader).unwrap();
    let rest = others(&[1, 2, 3, 4], &[victim]);
    let removed_at = c.change(&rest, &rest, ConfChangeType::RemoveNode, victim, "");
    wait_until("3 voters on the remaining members", || rest.iter().all(|id| ids(&c.status(*id).voters) == rest));
    c.propose_all(&rest, "d", 10);
    c.wait_same_applied("same applied index on the remaining members", rest[0], &rest);

    // Identical sequences: every remaining member applied the same entries and saw the same
    // conf changes (the joiner included); the removed one holds a prefix of them. The
    // ConfState reported with the bootstrap changes differs, as in etcd: the original members
    // start with all of them in force (re-applying an `AddNode` changes nothing), while the
    // joiner builds it up one change at a time. From the last bootstrap change on they agree.
    let reference = log(c.sm(rest[0]));
    let changes = c.sm(4).changes();
    let bootstrap_states: Vec<Vec<u64>> = changes.iter().take(3).map(|ch| ch.voters.clone()).collect();
    assert_eq!(bootstrap_states, [vec![1], vec![1, 2], vec![1, 2, 3]], "joiner's ConfStates during its replay");
    let without_bootstrap_states = |v: Vec<SeenChange>| -> Vec<SeenChange> {
        v.into_iter()
            .map(|ch| if ch.index < 3 { SeenChange { voters: vec![], learners: vec![], ..ch } } else { ch })
            .collect()
    };
    for id in &rest {
        assert_eq!(log(c.sm(*id)), reference, "node {id} applied another sequence");
        assert_eq!(
            without_bootstrap_states(c.sm(*id).changes()),
            without_bootstrap_states(changes.clone()),
            "node {id} saw other conf changes"
        );
    }
    let kinds: Vec<_> = changes.iter().map(|ch| (ch.kind, ch.node)).collect();
    assert_eq!(
        kinds,
        [
            (ConfChangeType::AddNode, 1),
            (ConfChangeType::AddNode, 2),
            (ConfChangeType::AddNode, 3),
            (ConfChangeType::AddLearnerNode, 4),
            (ConfChangeType::AddNode, 4),
            (ConfChangeType::RemoveNode, victim),
        ]
    );
    assert_eq!(changes.last().unwrap().index, removed_at);
    assert_eq!(changes.last().unwrap().voters, rest);
    let gone = log(c.sm(victim));
    assert!(gone.len() <= reference.len() && reference[..gone.len()] == gone[..], "removed node diverged");
    let data = c.sm(rest[0]).data();
    let unique: HashSet<&String> = data.iter().collect();
    assert_eq!((data.len(), unique.len()), (50, 50), "each proposal applied exactly once");
    c.assert_no_errors();

    // A member whose state machine lost everything replays the whole log over the latest
    // ConfState in its WAL, conf changes included, and ends with the same state and members.
    let wiped = rest[0];
    c.restart(wiped, true);
    wait_until("the wiped member replayed the log", || c.sm(wiped).applied() >= reference.last().unwrap().0);
    c.propose_all(&rest, "e", 5);
    c.wait_same_applied("same applied index on the remaining members", rest[1], &rest);
    assert_eq!(log(c.sm(wiped)), log(c.sm(rest[1])), "the wiped member applied another sequence");
    let replayed: Vec<_> =
        c.sm(wiped).changes().iter().map(|ch| (ch.index, ch.kind, ch.node, ch.context.clone())).collect();
    let original: Vec<_> = changes.iter().map(|ch| (ch.index, ch.kind, ch.node, ch.context.clone())).collect();
    assert_eq!(replayed, original, "the wiped member saw the same conf changes again");
    let last = c.sm(wiped).changes().last().cloned().unwrap();
    assert_eq!((last.voters, last.learners), (rest.clone(), vec![]), "membership after the replay");
    for id in &rest {
        assert_eq!(ids(&c.status(*id).voters), rest, "voters on {id} after the replay");
    }
    c.assert_no_errors();
}

/// Three members with snapshot sources and a leader; returns the leader.
fn snapshot_cluster() -> (Cluster, u64) {
    let mut c = Cluster::new(true);
    for id in [1, 2, 3] {
        c.start(id, members(&[1, 2, 3]));
    }
    let leader = c.wait_leader(&[1, 2, 3]);
    c.propose_all(&[1, 2, 3], "a", 10);
    (c, leader)
}

/// Compacts the log of `nodes` to their applied index and waits until `leader`'s log starts
/// after `after`.
fn compact(c: &Cluster, nodes: &[u64], leader: u64, after: u64) {
    for id in nodes {
        let applied = c.status(*id).applied;
        c.handle(*id).compact_log(GROUP, applied).unwrap();
    }
    wait_until(&format!("leader {leader} log compacted past {after}"), || c.status(leader).first_index.0 > after + 1);
}

#[test]
fn lagging_follower_receives_snapshot() {
    let (c, leader) = snapshot_cluster();
    let lagging = *[1, 2, 3].iter().find(|n| **n != leader).unwrap();
    let other = others(&[1, 2, 3], &[leader, lagging])[0];

    c.net.cut.lock().insert(lagging);
    c.propose_all(&[leader, other], "b", 100);
    let lagging_last = c.status(lagging).last_index.0;
    compact(&c, &[leader, other], leader, lagging_last);
    assert!(c.status(leader).first_index.0 > lagging_last + 1, "the leader no longer has what the follower needs");
    assert!(c.sm(lagging).snapshots().is_empty());

    // Healed, the follower can only come back by snapshot.
    c.net.cut.lock().clear();
    wait_until("lagging follower installed a snapshot", || !c.sm(lagging).snapshots().is_empty());
    let snaps = c.sm(lagging).snapshots();
    let sent: Vec<u64> = c.net.snapshots_sent.lock().iter().filter(|(_, to, _)| *to == lagging).map(|s| s.2).collect();
    assert_eq!(snaps.len(), 1, "one snapshot installed: {snaps:?} (sent {sent:?})");
    assert!(sent.contains(&snaps[0]), "on_snapshot({}) is not the index of a snapshot sent: {sent:?}", snaps[0]);
    assert_eq!(c.sm(lagging).installed(), snaps, "installed by the transport at the index Raft reports");
    assert!(snaps[0] > lagging_last + 1, "snapshot at {} covers the compacted gap", snaps[0]);
    let pinned = c.nodes[&leader].source.as_ref().unwrap().pinned.lock().clone();
    assert!(pinned.iter().any(|(_, to, at)| *to == lagging && *at == snaps[0]), "pinned: {pinned:?}");

    // It then applies later entries, and ends with the leader's state.
    c.propose_all(&[1, 2, 3], "c", 20);
    c.wait_same_applied("same applied index everywhere", leader, &[1, 2, 3]);
    c.assert_same_log(leader, &[1, 2, 3]);
    let s = c.status(lagging);
    assert_eq!((ids(&s.voters), s.learners.clone()), (vec![1, 2, 3], vec![]));
    assert!(s.first_index.0 > snaps[0], "the follower's log starts after its snapshot: {s:?}");
    assert_eq!(c.sm(leader).data().len(), 130);
    c.assert_no_errors();
}

#[test]
fn member_added_after_compaction_joins_by_snapshot() {
    let (mut c, leader) = snapshot_cluster();
    c.propose_all(&[1, 2, 3], "b", 30);
    compact(&c, &[1, 2, 3], leader, 1);

    c.start(4, Bootstrap::Join);
    let added_at = c.change(&[1, 2, 3], &[1, 2, 3], ConfChangeType::AddLearnerNode, 4, "n4");
    wait_until("node 4 installed a snapshot", || !c.sm(4).snapshots().is_empty());
    let snap = c.sm(4).snapshots()[0];
    assert!(snap >= added_at, "the snapshot at {snap} carries the change that added 4 (at {added_at})");
    assert_eq!(c.sm(4).installed(), vec![snap]);
    wait_until("node 4 knows its membership", || {
        let s = c.status(4);
        ids(&s.voters) == [1, 2, 3] && ids(&s.learners) == [4]
    });
    // Nothing at or below the snapshot is replayed to it: it never sees the bootstrap changes.
    assert!(c.sm(4).changes().iter().all(|ch| ch.index > snap), "{:?}", c.sm(4).changes());

    c.propose_all(&[1, 2, 3, 4], "c", 20);
    c.wait_same_applied("same applied index on all four", leader, &[1, 2, 3, 4]);
    c.assert_same_log(leader, &[1, 2, 3, 4]);

    // Restarted, the joiner recovers its membership from the snapshot metadata in its WAL and
    // keeps applying; then it is promoted like any learner.
    c.restart(4, false);
    let s = c.status(4);
    assert_eq!((ids(&s.voters), ids(&s.learners)), (vec![1, 2, 3], vec![4]), "after restart: {s:?}");
    c.propose_all(&[1, 2, 3, 4], "d", 10);
    c.change(&[1, 2, 3, 4], &[1, 2, 3, 4], ConfChangeType::AddNode, 4, "n4");
    wait_until("4 voters everywhere", || [1, 2, 3, 4].iter().all(|id| ids(&c.status(*id).voters) == [1, 2, 3, 4]));
    c.propose_all(&[1, 2, 3, 4], "e", 10);
    c.wait_same_applied("same applied index on all four", leader, &[1, 2, 3, 4]);
    c.assert_same_log(leader, &[1, 2, 3, 4]);
    assert_eq!(c.sm(4).snapshots(), vec![snap], "no further snapshot after the restart");
    c.assert_no_errors();
}

/// A follower that already holds the snapshot's entry in its log (received, not yet known
/// committed) gets a snapshot anyway: the leader compacted its log and probes the follower
/// from its last acknowledged index. The transport installs the pinned state first, as the
/// contract asks; Raft then fast-forwards its commit index instead of restoring the snapshot,
/// and the entries up to the snapshot must not be handed to the state machine again.
#[test]
fn snapshot_for_entries_the_follower_holds_is_not_applied_twice() {
    let (c, leader) = snapshot_cluster();
    let follower = *[1, 2, 3].iter().find(|n| **n != leader).unwrap();
    let other = others(&[1, 2, 3], &[leader, follower])[0];

    *c.net.lossy.lock() = Some(follower);
    c.propose_all(&[leader, other], "b", 50);
    let last = c.status(leader).last_index.0;
    wait_until("the follower holds every entry", || c.status(follower).last_index.0 == last);
    let s = c.status(follower);
    assert!(s.commit.0 < last && c.sm(follower).applied() < last, "precondition: not known committed: {s:?}");
    let matched = c.status(leader).progress.iter().find(|(n, _)| n.0 == follower).unwrap().1 .0;
    compact(&c, &[leader, other], leader, matched);

    // The link drops: the leader probes the follower from what it acknowledged, which is
    // compacted, so it sends a snapshot at its applied index, an entry the follower holds.
    c.handle(leader).report_unreachable(NodeId(follower)).unwrap();
    *c.net.lossy.lock() = None;
    wait_until("a snapshot reached the follower", || !c.sm(follower).installed().is_empty());
    c.propose_all(&[1, 2, 3], "c", 10);
    c.wait_same_applied("same applied index everywhere", leader, &[1, 2, 3]);
    let reference = log(c.sm(leader));
    let f = c.sm(follower);
    let what = format!("installed {:?}, on_snapshot {:?}", f.installed(), f.snapshots());
    for id in [1, 2, 3] {
        assert_eq!(c.sm(id).errors(), Vec::<String>::new(), "state machine of node {id} ({what})");
        assert_eq!(log(c.sm(id)), reference, "node {id} differs from the leader");
    }
}

/// A linearizable read skips the driver's ReadIndex round only where this node is a quorum by
/// itself: the sole voter, leading, with an entry of its term committed. A learner does not
/// change that; a second voter, or being a follower, does.
#[test]
fn only_a_sole_voter_leader_reads_without_a_read_index_round() {
    let mut c = Cluster::new(false);
    c.start(1, members(&[1]));
    c.wait_leader(&[1]);
    c.propose_all(&[1], "a", 10);
    wait_until("a read point", || c.handle(1).sole_voter_read_index(GROUP).is_some());
    // The read point is the leader's first entry of its term: after the bootstrap entry, at
    // or below everything applied since, and unmoved by later writes.
    let point = c.handle(1).sole_voter_read_index(GROUP).unwrap();
    let s = c.status(1);
    assert!(s.is_leader && s.committed_in_term && s.term_start == point, "{s:?}");
    assert!(point.0 > 1 && point.0 <= c.sm(1).applied(), "read point {point:?}, {s:?}");
    c.propose_all(&[1], "a2", 10);
    assert_eq!(c.handle(1).sole_voter_read_index(GROUP), Some(point), "the read point moved with writes");

    c.start(2, Bootstrap::Join);
    c.change(&[1], &[1, 2], ConfChangeType::AddLearnerNode, 2, "n2");
    c.propose_all(&[1], "b", 5);
    assert_eq!(
        c.handle(1).sole_voter_read_index(GROUP),
        Some(point),
        "a learner takes no part in quorums: {:?}",
        c.status(1)
    );
    assert_eq!(c.handle(2).sole_voter_read_index(GROUP), None, "the learner is no leader");

    c.change(&[1], &[1, 2], ConfChangeType::AddNode, 2, "n2");
    wait_until("two voters on both members", || [1, 2].iter().all(|id| ids(&c.status(*id).voters) == [1, 2]));
    for id in [1, 2] {
        assert_eq!(c.handle(id).sole_voter_read_index(GROUP), None, "node {id} with two voters: {:?}", c.status(id));
    }
    c.propose_all(&[1, 2], "c", 5);
    for id in [1, 2] {
        assert_eq!(c.handle(id).sole_voter_read_index(GROUP), None, "node {id} with two voters: {:?}", c.status(id));
    }
    c.assert_no_errors();
}
