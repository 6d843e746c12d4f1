//! Hibernation of idle groups, on a cluster of [`ManualDriver`]s whose ticks and message
//! deliveries the test owns: an idle group stops ticking and sending; a proposal, a read or a
//! peer message wakes it; a woken group serves linearizable reads (also when its leader was
//! deposed while asleep); a dead leader is replaced after a request wakes a follower, and the
//! proposal that woke it reaches the new leader once; a held proposal that finds no leader
//! is dropped unproposed; a lost notice heals itself; a sleeping follower does not help a
//! pre-candidate disrupt its leader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use raft::eraftpb::{Message, MessageType};
use raft_log::{
    CommittedEntry, DriverConfig, GroupId, LogIndex, ManualDriver, NodeId, StateMachine, Transport, Wal, WalConfig,
};

const GROUP: GroupId = GroupId(7);
const ELECTION_TICKS: usize = 10;
const HIBERNATE_AFTER_TICKS: usize = 20;
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(5000 + 2 * 100 * ELECTION_TICKS as u64);
const READ_TIMEOUT_TICKS: usize = 5000 / 100 + 2 * ELECTION_TICKS;
/// The context of a hibernation notice (the driver's private marker, spelled out here so the
/// test can drop notices on the wire).
const NOTICE_CTX: &[u8] = b"plinth/hibernate/v1";

type Wire = Arc<Mutex<Vec<(GroupId, Message)>>>;

struct Outbox(Wire);

impl Transport for Outbox {
    fn send(&self, group: GroupId, msgs: Vec<Message>) {
        self.0.lock().unwrap().extend(msgs.into_iter().map(|m| (group, m)));
    }
}

/// Records the last applied index per group, and every applied proposal's bytes.
#[derive(Default)]
struct Applied {
    last: BTreeMap<GroupId, u64>,
    data: Vec<Bytes>,
}

struct Sm(Arc<Mutex<Applied>>);

impl StateMachine for Sm {
    fn applied_index(&self, group: GroupId) -> LogIndex {
        LogIndex(self.0.lock().unwrap().last.get(&group).copied().unwrap_or(0))
    }
    fn apply(&mut self, group: GroupId, entries: Vec<CommittedEntry>) {
        let mut a = self.0.lock().unwrap();
        let last = entries.last().expect("apply gets entries").index.0;
        a.last.insert(group, last);
        a.data.extend(entries.into_iter().map(|e| e.data).filter(|d| !d.is_empty()));
    }
}

struct Node {
    driver: ManualDriver,
    wal: Arc<Wal>,
    wire: Wire,
    applied: Arc<Mutex<Applied>>,
    _dir: tempfile::TempDir,
}

type ReadResult = Arc<Mutex<Option<raft_log::Result<LogIndex>>>>;

struct Cluster {
    /// By node id - 1; `None` while crashed.
    nodes: Vec<Option<Node>>,
    /// Links (from, to) that drop every message.
    cut: BTreeSet<(u64, u64)>,
    /// Drops a message when it returns true (besides `cut`).
    drop: Box<dyn FnMut(&Message) -> bool>,
    /// Messages delivered since the cluster started.
    delivered: usize,
}

fn config(id: u64, hibernate_after_ticks: usize) -> DriverConfig {
    DriverConfig {
        node_id: NodeId(id),
        election_ticks: ELECTION_TICKS,
        // Randomized timeouts (raft-rs's own generator): with fixed ones and lockstep ticks,
        // two followers woken one timeout apart campaign in lockstep and split every vote.
        // The assertions below are bounds that hold for any draw.
        election_ticks_max: 2 * ELECTION_TICKS,
        hibernate_after_ticks,
        // As `plinth serve` sets it: 5 s plus two election timeouts (ticks of 100 ms).
        read_index_timeout: READ_TIMEOUT,
        ..DriverConfig::default()
    }
}

impl Cluster {
    /// `n` nodes with group `GROUP`, node 1 elected, one entry committed everywhere.
    fn new(n: u64, hibernate_after_ticks: usize) -> Cluster {
        let voters: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let nodes = (1..=n)
            .map(|id| {
                let dir = tempfile::tempdir().unwrap();
                let wal = Arc::new(Wal::open(WalConfig::new(dir.path())).unwrap());
                let wire: Wire = Arc::default();
                let applied: Arc<Mutex<Applied>> = Arc::default();
                let sm = Sm(applied.clone());
                let mut driver = ManualDriver::new(
                    config(id, hibernate_after_ticks),
                    wal.clone(),
                    Box::new(sm),
                    Arc::new(Outbox(wire.clone())),
                )
                .unwrap();
                driver.create_group(GROUP, &voters).unwrap();
                Some(Node { driver, wal, wire, applied, _dir: dir })
            })
            .collect();
        let mut c = Cluster { nodes, cut: BTreeSet::new(), drop: Box::new(|_| false), delivered: 0 };
        c.node(1).campaign(GROUP);
        c.deliver();
        assert_eq!(c.leader(), Some(1), "node 1 leads after its campaign");
        c.node(1).propose(GROUP, Bytes::from_static(b"first")).unwrap();
        c.deliver();
        c
    }

    fn node(&mut self, id: u64) -> &mut ManualDriver {
        &mut self.nodes[id as usize - 1].as_mut().expect("node is up").driver
    }

    fn live(&self) -> impl Iterator<Item = (u64, &Node)> {
        self.nodes.iter().enumerate().filter_map(|(i, n)| n.as_ref().map(|n| (i as u64 + 1, n)))
    }

    /// Processes every node and delivers every message until the wire is quiet; returns how
    /// many messages were sent (delivered or dropped).
    fn deliver(&mut self) -> usize {
        let mut sent = 0;
        for _round in 0..1000 {
            let mut msgs = Vec::new();
            for n in self.nodes.iter_mut().flatten() {
                n.driver.process();
                msgs.append(&mut n.wire.lock().unwrap());
            }
            if msgs.is_empty() {
                return sent;
            }
            sent += msgs.len();
            for (group, m) in msgs {
                if self.cut.contains(&(m.from, m.to)) || (self.drop)(&m) {
                    continue;
                }
                if let Some(n) = self.nodes.get_mut(m.to as usize - 1).and_then(|n| n.as_mut()) {
                    self.delivered += 1;
                    n.driver.step(group, m);
                }
            }
        }
        panic!("the wire never went quiet");
    }

    /// `ticks` rounds of one tick on every live node followed by delivery; returns the
    /// messages sent.
    fn run(&mut self, ticks: usize) -> usize {
        let mut sent = 0;
        for _ in 0..ticks {
            for n in self.nodes.iter_mut().flatten() {
                n.driver.tick();
            }
            sent += self.deliver();
        }
        sent
    }

    /// Runs ticks until `done` holds, at most `max` ticks; returns the ticks it took.
    fn run_until(&mut self, max: usize, mut done: impl FnMut(&mut Cluster) -> bool) -> usize {
        for t in 0..=max {
            if done(self) {
                return t;
            }
            self.run(1);
        }
        panic!("condition not reached within {max} ticks");
    }

    /// The leader of the highest term among live nodes that think they lead.
    fn leader(&self) -> Option<u64> {
        self.live()
            .filter_map(|(id, n)| n.driver.status(GROUP).filter(|s| s.is_leader).map(|s| (s.term, id)))
            .max()
            .map(|(_, id)| id)
    }

    fn status(&self, id: u64) -> raft_log::GroupStatus {
        self.nodes[id as usize - 1].as_ref().unwrap().driver.status(GROUP).unwrap()
    }

    /// How many times node `id` applied a proposal of exactly `data`.
    fn applied_count(&self, id: u64, data: &[u8]) -> usize {
        let n = self.nodes[id as usize - 1].as_ref().unwrap();
        n.applied.lock().unwrap().data.iter().filter(|d| d.as_ref() == data).count()
    }

    fn all_asleep(&self) -> bool {
        self.live().all(|(_, n)| n.driver.status(GROUP).unwrap().hibernating && n.driver.awake_groups() == 0)
    }

    fn partition(&mut self, side: &[u64]) {
        let ids: Vec<u64> = (1..=self.nodes.len() as u64).collect();
        for &a in side {
            for &b in ids.iter().filter(|b| !side.contains(b)) {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
    }

    fn read(&mut self, id: u64) -> ReadResult {
        let out: ReadResult = Arc::default();
        let o = out.clone();
        self.node(id).read_index(GROUP, Box::new(move |r| *o.lock().unwrap() = Some(r)));
        out
    }

    /// Lets an idle cluster fall asleep and checks it did.
    fn settle(&mut self) {
        let ticks = self.run_until(HIBERNATE_AFTER_TICKS + 5, |c| c.all_asleep());
        assert!(ticks >= HIBERNATE_AFTER_TICKS, "asleep after {ticks} ticks, before hibernate_after_ticks");
    }
}

#[test]
fn an_idle_group_stops_ticking_and_sending() {
    let mut c = Cluster::new(3, HIBERNATE_AFTER_TICKS);
    let term = c.status(1).term;
    c.settle();
    assert_eq!(c.run(200), 0, "a sleeping group sends nothing");
    assert!(c.all_asleep());
    assert_eq!(c.status(1).term, term);
    assert_eq!(c.leader(), Some(1));
    for (id, n) in c.live() {
        assert_eq!(n.wal.entry_cache_len(GROUP), 0, "node {id}: a sleeping group's entry cache is dropped");
        let s = n.driver.status(GROUP).unwrap();
        assert_eq!(s.commit, s.last_index, "node {id}: knows the commit index before sleeping");
        assert_eq!(s.applied, s.commit, "node {id}: applied everything");
    }
}

#[test]
fn without_hibernation_every_group_keeps_heartbeating() {
    let mut c = Cluster::new(3, 0);
    assert!(c.run(200) >= 200 * 4, "a leader heartbeats its two followers every tick");
    assert!(!c.status(1).hibernating);
}

#[test]
fn a_proposal_wakes_the_leader_and_commits() {
    let mut c = Cluster::new(3, HIBERNATE_AFTER_TICKS);
    c.settle();
    let before = c.status(1).last_index;
    c.node(1).propose(GROUP, Bytes::from_static(b"wake")).unwrap();
    c.deliver();
    assert!(!c.status(1).hibernating, "the proposal woke the leader");
    for id in 1..=3 {
        let s = c.status(id);
        assert_eq!(s.applied.0, before.0 + 1, "node {id}: the proposal is applied");
        assert!(!s.hibernating, "node {id}: the append woke it");
    }
    // Idle again: back to sleep, then silent.
    c.settle();
    assert_eq!(c.run(50), 0);
}

#[test]
fn a_read_on_a_follower_wakes_the_group_and_gets_the_commit_index() {
    let mut c = Cluster::new(3, HIBERNATE_AFTER_TICKS);
    c.settle();
    let commit = c.status(1).commit;
    let read = c.read(2);
    c.deliver();
    c.run_until(3 * ELECTION_TICKS, |_| read.lock().unwrap().is_some());
    let r = read.lock().unwrap().take().unwrap();
    assert_eq!(r.unwrap(), commit, "the read point is the leader's commit index");
    c.settle();
}

#[test]
fn a_long_sleep_does_not_make_the_woken_leader_step_down() {
    let mut c = Cluster::new(3, HIBERNATE_AFTER_TICKS);
    let term = c.status(1).term;
    c.settle();
    c.run(1000);
    c.node(1).propose(GROUP, Bytes::from_static(b"after a long sleep")).unwrap();
    // Several election timeouts awake, so check_quorum runs on the woken leader.
    c.run(3 * ELECTION_TICKS);
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.status(1).term, term, "no election after the wake");
}

#[test]
fn a_dead_leader_is_replaced_once_a_request_wakes_a_follower() {
    let mut c = Cluster::new(3, HIBERNATE_AFTER_TICKS);
    let term = c.status(1).term;
    c.settle();
    c.nodes[0] = None;
    // Node 2 has not heard its leader since it slept: it holds the proposal and asks the
    // dead leader to show itself. The request wakes it, and its election timer runs.
    c.node(2).propose(GROUP, Bytes::from_static(b"held")).unwrap();
    assert!(c.status(2).holding, "node 2 holds the proposal");
    // Node 2 campaigns after its election timeout; node 3, woken by the pre-vote, refuses
    // while in lease (one election timeout) and then campaigns or grants: about two
    // election timeouts (of up to 2 * ELECTION_TICKS each), plus a margin for a split vote.
    let ticks = c.run_until(10 * ELECTION_TICKS, |c| c.leader().is_some_and(|l| l != 1));
    assert!(ticks >= ELECTION_TICKS, "elected after {ticks} ticks, before an election timeout");
    let leader = c.leader().unwrap();
    assert!(c.status(leader).term > term);
    c.node(leader).propose(GROUP, Bytes::from_static(b"new leader")).unwrap();
    c.deliver();
    assert_eq!(c.status(2).applied, c.status(3).applied);
    assert_eq!(c.status(2).applied, c.status(leader).last_index);
    // The held proposal went to the new leader (not to the dead one) and applied once.
    assert!(!c.status(2).holding);
    for id in [2, 3] {
        assert_eq!(c.applied_count(id, b"held"), 1, "node {id}");
        assert_eq!(c.applied_count(id, b"new leader"), 1, "node {id}");
    }
}

/// With the leader alive and asleep, a proposal on a sleeping follower commits without a
/// tick: the follower's probe wakes the leader, whose heartbeats release the proposal.
#[test]
fn a_proposal_on_a_sleeping_follower_commits_without_a_tick() {
    let mut c = Cluster::new(3, HIBERNATE_AFTER_TICKS);
    let term = c.status(1).term;
    c.settle();
    c.node(3).propose(GROUP, Bytes::from_static(b"via follower")).unwrap();
    c.deliver();
    for id in 1..=3 {
        assert_eq!(c.applied_count(id, b"via follower"), 1, "node {id}");
        assert_eq!(c.status(id).term, term, "node {id}: no election");
    }
    // Awake now, node 3 forwards at once: one more proposal, no probe in between.
    let probes = Arc::new(Mutex::new(0));
    let p = probes.clone();
    c.drop = Box::new(move |m| {
        if m.get_msg_type() == MessageType::MsgReadIndex {
            *p.lock().unwrap() += 1;
        }
        false
    });
    c.node(3).propose(GROUP, Bytes::from_static(b"awake")).unwrap();
    c.deliver();
    assert_eq!(*probes.lock().unwrap(), 0);
    assert_eq!(c.applied_count(1, b"awake"), 1);
    c.run_until(3 * HIBERNATE_AFTER_TICKS, |c| c.all_asleep());
}

/// A follower cut off from every other member holds its proposals, hears no leader, and
/// drops each unproposed a second after its own `read_index_timeout` (its caller has given up
/// by then, and saw it still held): once the network heals, neither is ever applied, and
/// later proposals commit.
#[test]
fn a_held_proposal_is_dropped_unproposed_after_its_read_timeout() {
    const GRACE_TICKS: usize = 10;
    // Before the follower's election timer fires (it then knows no leader, and a proposal
    // is refused at once).
    const LATER: usize = 5;
    let mut c = Cluster::new(3, HIBERNATE_AFTER_TICKS);
    c.settle();
    c.partition(&[2]);
    c.node(2).propose(GROUP, Bytes::from_static(b"expired")).unwrap();
    assert!(c.status(2).holding);
    c.run(LATER);
    c.node(2).propose(GROUP, Bytes::from_static(b"expired later")).unwrap();
    // Past the first's timeout and grace and the second's timeout, within the second's grace:
    // still held (all were dropped with the first once).
    c.run(READ_TIMEOUT_TICKS + GRACE_TICKS - LATER + 2);
    assert!(c.status(2).holding, "the later proposal is held through its own timeout and grace");
    c.run(LATER + 3);
    assert!(!c.status(2).holding, "dropped after the read timeout and its grace");
    c.cut.clear();
    c.run_until(10 * ELECTION_TICKS, |c| c.leader().is_some() && (1..=3).all(|id| c.status(id).leader.0 != 0));
    c.run(2 * ELECTION_TICKS);
    let leader = c.leader().unwrap();
    c.node(2).propose(GROUP, Bytes::from_static(b"after")).unwrap();
    c.deliver();
    c.run(ELECTION_TICKS);
    for id in 1..=3 {
        assert_eq!(c.applied_count(id, b"expired"), 0, "node {id} applied a dropped proposal");
        assert_eq!(c.applied_count(id, b"expired later"), 0, "node {id} applied a dropped proposal");
        assert_eq!(c.applied_count(id, b"after"), 1, "node {id} (leader {leader})");
    }
}

/// The sleeping leader is cut off; the others elect a new leader and commit past it. A read
/// on the old leader wakes it and must never be answered with its stale commit index.
#[test]
fn a_leader_deposed_while_asleep_never_answers_a_stale_read() {
    let mut c = Cluster::new(3, HIBERNATE_AFTER_TICKS);
    c.settle();
    let stale = c.status(1).commit;
    c.partition(&[1]);
    c.node(2).campaign(GROUP);
    c.run_until(10 * ELECTION_TICKS, |c| c.live().any(|(id, n)| id != 1 && n.driver.status(GROUP).unwrap().is_leader));
    let new_leader = if c.status(2).is_leader { 2 } else { 3 };
    for i in 0..3 {
        c.node(new_leader).propose(GROUP, Bytes::from(format!("moved on {i}"))).unwrap();
    }
    c.deliver();
    let fresh = c.status(new_leader).commit;
    assert!(fresh > stale);
    assert!(c.status(1).hibernating && c.status(1).is_leader, "the old leader slept through it");

    // Still cut off: the woken old leader gets no quorum for its read point.
    let read = c.read(1);
    c.run(5 * ELECTION_TICKS);
    match read.lock().unwrap().take() {
        None | Some(Err(_)) => {}
        Some(Ok(i)) => panic!("a partitioned, deposed leader answered a read with {i} (commit elsewhere {fresh})"),
    }
    assert!(!c.status(1).is_leader, "check_quorum deposed the woken leader");

    // Healed: once node 1 follows the new leader, its read gets a fresh read point.
    c.cut.clear();
    c.run_until(3 * ELECTION_TICKS, |c| c.status(1).leader.0 != 0);
    let read = c.read(1);
    c.deliver();
    c.run_until(3 * ELECTION_TICKS, |_| read.lock().unwrap().is_some());
    let got = read.lock().unwrap().take().unwrap().unwrap();
    assert!(got >= fresh, "read point {got} is older than the commit index {fresh} of the new leader");
}

/// Same as above, but the read arrives while the old leader still believes it leads and is
/// asleep, and the network is whole again: its heartbeat round meets the new term.
#[test]
fn a_sleeping_deposed_leader_woken_by_a_read_asks_the_new_leader() {
    let mut c = Cluster::new(3, HIBERNATE_AFTER_TICKS);
    c.settle();
    c.partition(&[1]);
    c.node(2).campaign(GROUP);
    c.run_until(10 * ELECTION_TICKS, |c| c.status(2).is_leader || c.status(3).is_leader);
    let new_leader = if c.status(2).is_leader { 2 } else { 3 };
    c.node(new_leader).propose(GROUP, Bytes::from_static(b"moved on")).unwrap();
    c.deliver();
    let fresh = c.status(new_leader).commit;
    assert!(c.status(1).hibernating && c.status(1).is_leader);
    c.cut.clear();
    // No tick yet: only the old leader's read round is on the wire.
    let read = c.read(1);
    c.deliver();
    if let Some(r) = read.lock().unwrap().as_ref() {
        let got = r.as_ref().expect("no error");
        assert!(*got >= fresh, "stale read point {got} < {fresh}");
    }
    c.run_until(3 * ELECTION_TICKS, |_| read.lock().unwrap().is_some());
    let got = read.lock().unwrap().take().unwrap().unwrap();
    assert!(got >= fresh, "stale read point {got} < {fresh}");
    assert!(!c.status(1).is_leader);
}

#[test]
fn a_lost_notice_heals_without_an_election() {
    let mut c = Cluster::new(3, HIBERNATE_AFTER_TICKS);
    let term = c.status(1).term;
    let dropped = Arc::new(Mutex::new(0));
    let d = dropped.clone();
    // The first notice to node 3 is lost.
    c.drop = Box::new(move |m| {
        let notice = m.get_msg_type() == MessageType::MsgHeartbeat && m.context.as_ref() == NOTICE_CTX;
        let mut d = d.lock().unwrap();
        if notice && m.to == 3 && *d == 0 {
            *d += 1;
            return true;
        }
        false
    });
    c.run_until(HIBERNATE_AFTER_TICKS + 5, |c| c.status(1).hibernating);
    assert_eq!(*dropped.lock().unwrap(), 1);
    assert!(!c.status(3).hibernating, "node 3 missed its notice and keeps ticking");
    // Node 3 pre-campaigns after its election timeout, which wakes the others; they refuse
    // (in lease), the leader heartbeats again, and the group goes back to sleep.
    c.run_until(2 * ELECTION_TICKS + 2 * HIBERNATE_AFTER_TICKS + 10, |c| c.all_asleep());
    assert_eq!(c.leader(), Some(1));
    for id in 1..=3 {
        assert_eq!(c.status(id).term, term, "node {id}: no election");
    }
}

#[test]
fn a_sleeping_follower_does_not_help_a_pre_candidate_depose_the_leader() {
    let mut c = Cluster::new(3, HIBERNATE_AFTER_TICKS);
    let term = c.status(1).term;
    c.settle();
    // Node 3 starts an election on its own (as one that lost its leader would).
    c.node(3).campaign(GROUP);
    c.deliver();
    assert_eq!(c.leader(), Some(1), "the sleeping members refused the pre-vote");
    c.run(ELECTION_TICKS);
    assert_eq!(c.leader(), Some(1));
    for id in 1..=3 {
        assert_eq!(c.status(id).term, term, "node {id}: no new term");
    }
    c.run_until(3 * HIBERNATE_AFTER_TICKS, |c| c.all_asleep());
}

#[test]
fn a_conf_change_wakes_the_group() {
    let mut c = Cluster::new(3, HIBERNATE_AFTER_TICKS);
    c.settle();
    let mut cc = raft::eraftpb::ConfChange::default();
    cc.set_change_type(raft::eraftpb::ConfChangeType::AddLearnerNode);
    cc.node_id = 4;
    c.node(1).propose_conf_change(GROUP, cc).unwrap();
    c.deliver();
    assert!(!c.status(1).hibernating);
    // A learner that never answers keeps the leader awake (its progress never matches).
    c.run(3 * HIBERNATE_AFTER_TICKS);
    assert!(!c.status(1).hibernating, "a lagging member keeps the leader awake");
    assert_eq!(c.status(1).learners, vec![NodeId(4)]);
}

/// With many groups, a request wakes only its own group: the others neither tick nor send.
#[test]
fn a_request_wakes_only_its_group() {
    const GROUPS: u64 = 50;
    let mut c = Cluster::new(3, HIBERNATE_AFTER_TICKS);
    let voters: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let others: Vec<GroupId> = (100..100 + GROUPS).map(GroupId).collect();
    for &g in &others {
        for id in 1..=3 {
            c.node(id).create_group(g, &voters).unwrap();
        }
        c.node(1).campaign(g);
    }
    c.deliver();
    c.run_until(HIBERNATE_AFTER_TICKS + 5, |c| c.live().all(|(_, n)| n.driver.awake_groups() == 0));
    c.node(1).propose(GROUP, Bytes::from_static(b"one tenant")).unwrap();
    c.deliver();
    for id in 1..=3 {
        assert_eq!(c.node(id).awake_groups(), 1, "node {id}: only the proposal's group woke");
    }
    // Some ticks of the one awake group: its heartbeats only.
    let sent = c.run(5);
    assert!(sent > 0 && sent <= 5 * 4, "{sent} messages in 5 ticks: more than one group's heartbeats");
    for &g in &others {
        assert!(c.node(1).status(g).unwrap().hibernating, "group {g} stayed asleep");
    }
}
