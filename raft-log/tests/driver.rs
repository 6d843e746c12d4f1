//! Driver tests: single-voter groups elect themselves, proposals are applied in order
//! exactly once, a restart replays only the unapplied tail, many groups at once.
// Protobuf messages read best built field by field.
#![allow(clippy::field_reassign_with_default)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use raft::eraftpb::Message;
use raft_log::{
    CommittedEntry, Driver, DriverConfig, DriverHandle, Error, GroupId, LogIndex, NodeId, StateMachine, Term,
    Transport, Wal, WalConfig,
};

#[derive(Default)]
struct Applied {
    entries: HashMap<GroupId, Vec<CommittedEntry>>,
    /// What the state machine reports as durably applied on start.
    durable: HashMap<GroupId, LogIndex>,
    leaders: Vec<(GroupId, NodeId, Term)>,
}

#[derive(Clone, Default)]
struct Sm(Arc<Mutex<Applied>>);

impl StateMachine for Sm {
    fn applied_index(&self, group: GroupId) -> LogIndex {
        self.0.lock().durable.get(&group).copied().unwrap_or_default()
    }
    fn apply(&mut self, group: GroupId, entries: Vec<CommittedEntry>) {
        self.0.lock().entries.entry(group).or_default().extend(entries);
    }
    fn on_leader_change(&mut self, group: GroupId, leader: NodeId, term: Term) {
        self.0.lock().leaders.push((group, leader, term));
    }
}

struct NoPeers;
impl Transport for NoPeers {
    fn send(&self, group: GroupId, msgs: Vec<Message>) {
        panic!("a single-voter group {group} sent {} messages", msgs.len());
    }
}

fn config() -> DriverConfig {
    DriverConfig { tick_interval: Duration::from_millis(10), ..DriverConfig::default() }
}

fn start(dir: &Path, sm: Sm) -> (Driver, DriverHandle, Arc<Wal>) {
    let wal = Arc::new(Wal::open(WalConfig::new(dir)).unwrap());
    let (d, h) = Driver::start(config(), Arc::clone(&wal), Box::new(sm), Arc::new(NoPeers)).unwrap();
    (d, h, wal)
}

fn wait_until(what: &str, f: impl FnMut() -> bool) {
    wait_until_explained(what, f, String::new);
}

/// [`wait_until`], whose timeout message adds what `explain` says of the state then.
fn wait_until_explained(what: &str, mut f: impl FnMut() -> bool, explain: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}{}", explain());
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn propose_all(h: &DriverHandle, group: GroupId, items: impl IntoIterator<Item = String>) {
    for item in items {
        loop {
            match h.propose(group, Bytes::from(item.clone())) {
                Ok(()) => break,
                Err(Error::Busy) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("propose failed: {e}"),
            }
        }
    }
}

fn data_of(sm: &Sm, group: GroupId) -> Vec<String> {
    sm.0.lock()
        .entries
        .get(&group)
        .map(|v| v.iter().filter(|e| !e.data.is_empty()).map(|e| String::from_utf8(e.data.to_vec()).unwrap()).collect())
        .unwrap_or_default()
}

fn assert_in_order_once(sm: &Sm, group: GroupId) {
    let guard = sm.0.lock();
    let v = &guard.entries[&group];
    for pair in v.windows(2) {
        assert_eq!(pair[0].index.0 + 1, pair[1].index.0, "group {group}: not consecutive");
    }
}

#[test]
fn single_voter_applies_proposals_in_order_exactly_once_and_replays_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let g = GroupId(1);
    let sm = Sm::default();
    let (driver, h, wal) = start(dir.path(), sm.clone());
    h.create_group(g, vec![NodeId(1)]).unwrap();
    h.create_group(g, vec![NodeId(1)]).unwrap(); // idempotent
    wait_until("leadership", || h.status(g).is_some_and(|s| s.is_leader));
    assert!(matches!(h.propose(GroupId(99), Bytes::new()), Err(Error::GroupNotFound(_))));
    let n = 200;
    propose_all(&h, g, (0..n).map(|i| format!("e{i}")));
    wait_until("all applied", || data_of(&sm, g).len() == n);
    let want: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
    assert_eq!(data_of(&sm, g), want);
    assert_in_order_once(&sm, g);
    // Every applied entry, including the leader's no-op, starting at index 1.
    let all = sm.0.lock().entries[&g].clone();
    assert_eq!(all[0].index, LogIndex(1));
    assert!(all[0].data.is_empty(), "the leader's no-op entry is delivered");
    assert_eq!(sm.0.lock().leaders.last().unwrap().1, NodeId(1));

    let (tx, rx) = mpsc::channel();
    h.read_index(g, Box::new(move |r| tx.send(r).unwrap()));
    let read = rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert!(read.0 >= all.last().unwrap().index.0, "read index covers applied entries");

    let status = h.status(g).unwrap();
    assert_eq!(status.applied, all.last().unwrap().index);
    assert!(wal.stats().fsyncs < wal.stats().entries_appended, "proposals were batched");
    driver.stop();
    assert!(matches!(h.propose(g, Bytes::new()), Err(Error::Stopped) | Err(Error::NoLeader)));
    drop(wal);

    // Restart: the state machine durably applied up to entry 120; only the rest come back.
    let durable = all[120].index;
    let sm2 = Sm::default();
    sm2.0.lock().durable.insert(g, durable);
    let (driver, h, _wal) = start(dir.path(), sm2.clone());
    wait_until("leadership after restart", || h.status(g).is_some_and(|s| s.is_leader));
    let expected_tail: Vec<String> = all
        .iter()
        .filter(|e| e.index > durable && !e.data.is_empty())
        .map(|e| String::from_utf8(e.data.to_vec()).unwrap())
        .collect();
    wait_until("replay", || data_of(&sm2, g).len() >= expected_tail.len());
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(data_of(&sm2, g), expected_tail);
    let replayed = sm2.0.lock().entries[&g].clone();
    assert_eq!(replayed[0].index.0, durable.0 + 1, "replay starts right after applied");
    assert_in_order_once(&sm2, g);
    driver.stop();
}

#[test]
fn many_groups_commit_together() {
    let dir = tempfile::tempdir().unwrap();
    let sm = Sm::default();
    let (driver, h, wal) = start(dir.path(), sm.clone());
    let groups: Vec<GroupId> = (10..26).map(GroupId).collect();
    for g in &groups {
        h.create_group(*g, vec![NodeId(1)]).unwrap();
    }
    for g in &groups {
        wait_until("leadership", || h.status(*g).is_some_and(|s| s.is_leader));
    }
    let before = wal.stats();
    let per_group = 30;
    for i in 0..per_group {
        for g in &groups {
            propose_all(&h, *g, [format!("{g}-{i}")]);
        }
    }
    for g in &groups {
        wait_until("apply", || data_of(&sm, *g).len() == per_group);
        let want: Vec<String> = (0..per_group).map(|i| format!("{g}-{i}")).collect();
        assert_eq!(data_of(&sm, *g), want);
        assert_in_order_once(&sm, *g);
    }
    let after = wal.stats();
    let entries = after.entries_appended - before.entries_appended;
    let fsyncs = after.fsyncs - before.fsyncs;
    assert!(entries >= (groups.len() * per_group) as u64);
    assert!(fsyncs < entries, "one fsync carried several groups' entries ({fsyncs} >= {entries})");

    // The state machine reports durability: the WAL may drop the applied prefix.
    let g = groups[0];
    let applied = h.status(g).unwrap().applied;
    h.compact_log(g, applied).unwrap();
    wait_until("compaction", || wal.group_state(g).is_some_and(|s| s.first_index.0 == applied.0 + 1));
    driver.stop();

    // Groups found in the WAL come back on start without create_group.
    drop(wal);
    let sm2 = Sm::default();
    for g in &groups {
        sm2.0.lock().durable.insert(*g, LogIndex(applied.0));
    }
    let (driver, h, _wal) = start(dir.path(), sm2);
    for g in &groups {
        wait_until("re-created group leads", || h.status(*g).is_some_and(|s| s.is_leader));
    }
    driver.stop();
}

#[test]
fn config_validation_and_not_leader_reads() {
    assert!(DriverConfig { node_id: NodeId(0), ..DriverConfig::default() }.validate().is_err());
    let dir = tempfile::tempdir().unwrap();
    let (driver, h, _wal) = start(dir.path(), Sm::default());
    let (tx, rx) = mpsc::channel();
    h.read_index(GroupId(5), Box::new(move |r| tx.send(r).unwrap()));
    assert!(matches!(rx.recv().unwrap(), Err(Error::GroupNotFound(_))));
    // A three-voter group whose peers never answer has no leader.
    struct Drop_;
    impl Transport for Drop_ {
        fn send(&self, _: GroupId, _: Vec<Message>) {}
    }
    drop(driver);
    drop(h);
    let dir2 = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(WalConfig::new(dir2.path())).unwrap());
    let (driver, h) = Driver::start(config(), wal, Box::new(Sm::default()), Arc::new(Drop_)).unwrap();
    h.create_group(GroupId(1), vec![NodeId(1), NodeId(2), NodeId(3)]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(matches!(h.propose(GroupId(1), Bytes::new()), Err(Error::NoLeader)));
    driver.stop();
}

#[test]
fn a_removed_group_stays_removed_across_restarts_and_frees_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let sm = Sm::default();
    let (driver, h, wal) = start(dir.path(), sm.clone());
    let (kept, removed) = (GroupId(5), GroupId(6));
    for g in [kept, removed] {
        h.create_group(g, vec![NodeId(1)]).unwrap();
        wait_until("leadership", || h.status(g).is_some_and(|s| s.is_leader));
        propose_all(&h, g, (0..20).map(|i| format!("{g}-{i}")));
        wait_until("apply", || data_of(&sm, g).len() == 20);
    }
    h.remove_group(removed).unwrap();
    assert!(h.status(removed).is_none(), "a removed group still has a status");
    let state = wal.group_state(removed).expect("the WAL remembers the removal");
    assert!(state.conf_state.voters.is_empty() && state.conf_state.learners.is_empty());
    assert_eq!(state.first_index.0, state.last_index.0 + 1, "the removed group's entries are compacted");
    h.remove_group(removed).unwrap(); // idempotent
    let kept_applied = h.status(kept).unwrap().applied;
    driver.stop();
    drop(wal);

    let sm2 = Sm::default();
    sm2.0.lock().durable.insert(kept, kept_applied);
    let (driver, h, _wal) = start(dir.path(), sm2);
    wait_until("the kept group leads again", || h.status(kept).is_some_and(|s| s.is_leader));
    std::thread::sleep(Duration::from_millis(100));
    assert!(h.status(removed).is_none(), "a removed group came back after a restart");
    driver.stop();
}

/// Records what the driver sends; while `closed`, `send` waits, holding the driver thread
/// (`apply` runs on the apply worker, so only the transport can hold the driver).
#[derive(Default)]
struct Recorded {
    msgs: Mutex<Vec<Message>>,
    closed: (std::sync::Mutex<bool>, std::sync::Condvar),
    parked: std::sync::atomic::AtomicBool,
}

impl Recorded {
    fn set_closed(&self, closed: bool) {
        *self.closed.0.lock().unwrap() = closed;
        self.closed.1.notify_all();
    }
}

impl Transport for Recorded {
    fn send(&self, _group: GroupId, msgs: Vec<Message>) {
        let (lock, cv) = &self.closed;
        let mut closed = lock.lock().unwrap();
        while *closed {
            self.parked.store(true, std::sync::atomic::Ordering::SeqCst);
            closed = cv.wait(closed).unwrap();
        }
        drop(closed);
        self.msgs.lock().extend(msgs);
    }
}

/// A client flood that fills the driver's inbox does not shut peers out: a peer's message is
/// still accepted, and it is stepped before the proposals queued ahead of it. Here the
/// message is a heartbeat of a leader of a later term, so every proposal handled after it is
/// forwarded to that leader instead of being appended here.
#[test]
fn peer_messages_pass_a_full_inbox_of_proposals() {
    use raft::eraftpb::MessageType;
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(WalConfig::new(dir.path())).unwrap());
    let sm = Sm::default();
    let transport = Arc::new(Recorded::default());
    let cfg = DriverConfig { proposal_queue_max: 64, ..config() };
    let (_d, h) = Driver::start(cfg, Arc::clone(&wal), Box::new(sm.clone()), transport.clone()).unwrap();
    let g = GroupId(1);
    h.create_group(g, vec![NodeId(1)]).unwrap();
    wait_until("leadership", || h.status(g).is_some_and(|s| s.is_leader));
    let term = h.status(g).unwrap().term;

    // Hold the driver in a send of another group's vote requests (that group has a second
    // voter, who never answers), then fill its inbox. The gate opens again when the test ends,
    // also by a failed assertion (the driver must finish the send to stop).
    struct OpenOnDrop(Arc<Recorded>);
    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.set_closed(false);
        }
    }
    let _gate = OpenOnDrop(Arc::clone(&transport));
    let other = GroupId(2);
    h.create_group(other, vec![NodeId(1), NodeId(2)]).unwrap();
    transport.set_closed(true);
    h.campaign(other).unwrap();
    wait_until("the driver held in a send", || transport.parked.load(std::sync::atomic::Ordering::SeqCst));
    let mut queued = 0;
    while h.propose(g, Bytes::from(format!("flood-{queued}"))).is_ok() {
        queued += 1;
    }
    assert!(queued >= 60, "the inbox took only {queued} proposals");
    assert!(matches!(h.propose(g, Bytes::from_static(b"one more")), Err(Error::Busy)), "the inbox is full");

    let mut heartbeat = Message::default();
    heartbeat.set_msg_type(MessageType::MsgHeartbeat);
    heartbeat.from = 2;
    heartbeat.to = 1;
    heartbeat.term = term.0 + 5;
    h.step(g, heartbeat).expect("a peer's message is accepted while the inbox is full of proposals");

    transport.set_closed(false);
    wait_until("the heartbeat's term", || h.status(g).is_some_and(|s| s.term.0 == term.0 + 5 && s.leader.0 == 2));
    // Every flooded proposal came after the heartbeat: forwarded to node 2, none applied.
    let forwarded = || -> Vec<String> {
        transport
            .msgs
            .lock()
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgPropose && m.to == 2)
            .flat_map(|m| m.entries.iter().map(|e| String::from_utf8_lossy(&e.data).into_owned()))
            .filter(|d| d.starts_with("flood-"))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while forwarded().len() < queued && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let expected: Vec<String> = (0..queued).map(|i| format!("flood-{i}")).collect();
    assert_eq!(forwarded(), expected, "the flood's proposals, forwarded in order to the new leader");
    assert!(
        data_of(&sm, g).iter().all(|d| !d.starts_with("flood-")),
        "a proposal queued before the heartbeat was appended by the deposed leader: {:?}",
        data_of(&sm, g)
    );
}

/// Holds every fdatasync of the WAL until the test lets it through, and counts the syncs
/// that began.
#[derive(Debug, Default)]
struct SyncGate {
    /// Syncs allowed through (`u64::MAX`: all).
    permits: std::sync::Mutex<u64>,
    changed: std::sync::Condvar,
    began: std::sync::atomic::AtomicU64,
}

impl SyncGate {
    fn set(&self, permits: u64) {
        *self.permits.lock().unwrap() = permits;
        self.changed.notify_all();
    }

    /// Closes the gate and returns the syncs that began before it closed: every later one is
    /// held (both sides take the lock, so no sync falls between the two).
    fn close(&self) -> u64 {
        let mut permits = self.permits.lock().unwrap();
        *permits = 0;
        self.began()
    }

    fn began(&self) -> u64 {
        self.began.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Opens the gate for good when dropped. Declared after the driver, it drops first, also when
/// an assertion unwinds: the driver's shutdown then finds no sync held at the gate, and the
/// test fails with its message instead of hanging in the join.
struct OpenOnDrop(Arc<SyncGate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.set(u64::MAX);
    }
}

impl raft_log::WalFaults for SyncGate {
    fn short_write(&self, _seq: u64, _offset: u64, _len: usize) -> Option<usize> {
        None
    }

    fn sync_fails(&self, _seq: u64, _len: u64) -> bool {
        let mut permits = self.permits.lock().unwrap();
        self.began.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        while *permits == 0 {
            permits = self.changed.wait(permits).unwrap();
        }
        if *permits != u64::MAX {
            *permits -= 1;
        }
        false
    }
}

/// One group's slow fdatasync does not hold up another group's linearizable read: with
/// pipelined persistence the driver goes on while the WAL writer syncs. Without it (the
/// same scenario with `pipeline_persistence: false`) the read waits for the sync.
#[test]
fn a_read_is_answered_while_another_groups_write_waits_for_its_sync() {
    let answered_while_syncing = |pipeline: bool| -> bool {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(SyncGate::default());
        gate.set(u64::MAX);
        let faults: Arc<dyn raft_log::WalFaults> = gate.clone();
        let wal = Arc::new(Wal::open(WalConfig { faults: Some(faults), ..WalConfig::new(dir.path()) }).unwrap());
        let sm = Sm::default();
        let cfg = DriverConfig { pipeline_persistence: pipeline, ..config() };
        let (d, h) = Driver::start(cfg, Arc::clone(&wal), Box::new(sm.clone()), Arc::new(NoPeers)).unwrap();
        let _open_at_exit = OpenOnDrop(Arc::clone(&gate));
        let (writes, reads) = (GroupId(1), GroupId(2));
        for g in [writes, reads] {
            h.create_group(g, vec![NodeId(1)]).unwrap();
            // Leadership alone is published before the Ready that made it (term, vote and the
            // term's first entry) is synced: wait for that entry to be committed, which needs
            // the sync, and applied. A sync still running when the gate closes below would be
            // held there and the first write's sync could never begin.
            wait_until("leadership, its first entry synced and applied", || {
                h.status(g).is_some_and(|s| {
                    s.is_leader && s.committed_in_term && s.commit == s.last_index && s.commit == s.applied
                })
            });
        }
        let read = |h: &DriverHandle| {
            let (tx, rx) = mpsc::channel();
            h.read_index(reads, Box::new(move |r| drop(tx.send(r))));
            rx
        };

        // A lone write holds the driver (or the writer) in its sync; behind it, a burst of
        // writes and a read queue up.
        let before = gate.close();
        propose_all(&h, writes, ["first".to_string()]);
        // On a timeout, say where the first write was: a failure here once in CI (not
        // reproduced) gave no more than the wait's name.
        wait_until_explained(
            "the first sync",
            || gate.began() > before,
            || {
                format!(
                    ": {} syncs began, {before} before it; writes {:?}; reads {:?}",
                    gate.began(),
                    h.status(writes),
                    h.status(reads)
                )
            },
        );
        propose_all(&h, writes, (0..200).map(|i| format!("burst-{i}")));
        let first = read(&h);
        // Let the first sync through: the next pass takes the burst and the read, and its
        // sync is held at the gate.
        gate.set(1);
        first.recv_timeout(Duration::from_secs(10)).expect("the first read is answered").unwrap();
        wait_until("the burst's sync", || gate.began() > before + 1);

        // A read now arrives while the burst is being synced.
        let second = read(&h);
        let answered = second.recv_timeout(Duration::from_millis(500)).is_ok();
        gate.set(u64::MAX);
        wait_until("every write applied", || data_of(&sm, writes).len() == 201);
        assert_in_order_once(&sm, writes);
        d.stop();
        answered
    };
    assert!(answered_while_syncing(true), "with pipelined persistence the read is answered during the sync");
    assert!(!answered_while_syncing(false), "without it the read waits for the sync");
}
