//! Three drivers in one process over an in-memory transport: a leader is elected, a
//! follower's proposals are forwarded to it and applied everywhere in the same order, a
//! follower gets a read index from the leader, and after the leader is cut off the other
//! two elect a new one and go on; healed, all three apply the same sequence.

mod common;

use common::{propose_retrying, start_driver};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use raft::eraftpb::Message;
use raft_log::{CommittedEntry, Driver, DriverHandle, Error, GroupId, LogIndex, NodeId, StateMachine, Transport};

const GROUP: GroupId = GroupId(1);
const NODES: [u64; 3] = [1, 2, 3];

/// The entries applied, and how long each `apply` call sleeps first (in ms), to stand for a
/// slow disk.
#[derive(Clone, Default)]
struct Sm(Arc<Mutex<Vec<CommittedEntry>>>, Arc<AtomicU64>);

impl StateMachine for Sm {
    fn applied_index(&self, _group: GroupId) -> LogIndex {
        LogIndex(0)
    }
    fn apply(&mut self, _group: GroupId, entries: Vec<CommittedEntry>) {
        std::thread::sleep(Duration::from_millis(self.1.load(Ordering::Relaxed)));
        self.0.lock().extend(entries);
    }
}

impl Sm {
    fn data(&self) -> Vec<String> {
        self.0.lock().iter().filter(|e| !e.data.is_empty()).map(|e| String::from_utf8_lossy(&e.data).into()).collect()
    }
}

/// Routes messages to the other drivers' handles; nodes in `cut` neither send nor receive.
#[derive(Default)]
struct Net {
    handles: OnceLock<HashMap<u64, DriverHandle>>,
    cut: Mutex<HashSet<u64>>,
}

struct Link {
    from: u64,
    net: Arc<Net>,
}

impl Transport for Link {
    fn send(&self, group: GroupId, msgs: Vec<Message>) {
        let Some(handles) = self.net.handles.get() else { return };
        let cut = self.net.cut.lock().clone();
        for m in msgs {
            assert_eq!(m.from, self.from, "a node sends only its own messages");
            if cut.contains(&m.from) || cut.contains(&m.to) {
                continue;
            }
            if let Some(h) = handles.get(&m.to) {
                // A full inbox drops the message, as a real transport may; Raft retries.
                let _ = h.step(group, m);
            }
        }
    }
}

struct Cluster {
    net: Arc<Net>,
    sms: HashMap<u64, Sm>,
    drivers: Vec<Driver>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    fn start() -> Cluster {
        let net = Arc::new(Net::default());
        let mut handles = HashMap::new();
        let mut sms = HashMap::new();
        let mut drivers = Vec::new();
        let mut dirs = Vec::new();
        for id in NODES {
            let dir = tempfile::tempdir().unwrap();
            let sm = Sm::default();
            let link = Arc::new(Link { from: id, net: Arc::clone(&net) });
            let (d, h) = start_driver(id, dir.path(), Duration::from_secs(5), Box::new(sm.clone()), link, None);
            h.create_group(GROUP, NODES.iter().map(|n| NodeId(*n)).collect()).unwrap();
            handles.insert(id, h);
            sms.insert(id, sm);
            drivers.push(d);
            dirs.push(dir);
        }
        net.handles.set(handles).unwrap_or_else(|_| panic!("handles set once"));
        Cluster { net, sms, drivers, _dirs: dirs }
    }

    fn handle(&self, id: u64) -> &DriverHandle {
        &self.net.handles.get().unwrap()[&id]
    }

    /// The leader all connected nodes agree on.
    fn wait_leader(&self, excluding: Option<u64>) -> u64 {
        wait_until("one agreed leader", || {
            let live: Vec<u64> = NODES.iter().copied().filter(|n| Some(*n) != excluding).collect();
            let leaders: HashSet<u64> = live.iter().map(|n| self.handle(*n).status(GROUP).unwrap().leader.0).collect();
            leaders.len() == 1 && leaders.iter().all(|l| *l != 0 && Some(*l) != excluding)
        });
        let any = NODES.iter().copied().find(|n| Some(*n) != excluding).unwrap();
        self.handle(any).status(GROUP).unwrap().leader.0
    }

    fn propose(&self, on: u64, data: String) {
        propose_retrying(self.handle(on), GROUP, &data, Instant::now() + Duration::from_secs(10));
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_index(h: &DriverHandle) -> Result<LogIndex, Error> {
    let (tx, rx) = mpsc::channel();
    h.read_index(GROUP, Box::new(move |r| tx.send(r).unwrap()));
    rx.recv_timeout(Duration::from_secs(10)).expect("read index answered before its deadline")
}

#[test]
fn followers_forward_proposals_and_reads_and_survive_a_cut_off_leader() {
    let c = Cluster::start();
    let leader = c.wait_leader(None);
    let followers: Vec<u64> = NODES.iter().copied().filter(|n| *n != leader).collect();

    // Proposals on every member, followers included, are applied on every member.
    for (i, on) in NODES.iter().cycle().take(30).enumerate() {
        c.propose(*on, format!("a{i}"));
    }
    wait_until("30 entries everywhere", || c.sms.values().all(|sm| sm.data().len() == 30));
    let first = c.sms[&leader].data();
    for sm in c.sms.values() {
        assert_eq!(sm.data(), first, "every replica applies the same sequence");
    }
    let mut sorted = first.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 30, "each proposal applied exactly once");

    // A follower's read index covers everything applied before the read began.
    let applied = c.handle(leader).status(GROUP).unwrap().applied;
    let read = read_index(c.handle(followers[0])).unwrap();
    assert!(read >= applied, "follower read index {read:?} below the applied {applied:?}");

    // Cut the leader off: the two others elect a new leader and keep committing.
    c.net.cut.lock().insert(leader);
    let new_leader = c.wait_leader(Some(leader));
    assert_ne!(new_leader, leader);
    for i in 0..20 {
        c.propose(followers[i % 2], format!("b{i}"));
    }
    wait_until("50 entries on the majority", || followers.iter().all(|f| c.sms[f].data().len() == 50));
    let commit_before = c.handle(new_leader).status(GROUP).unwrap().commit;
    let read = read_index(c.handle(followers[0])).unwrap();
    assert!(read >= commit_before, "read index {read:?} below the commit {commit_before:?} seen before the read");

    // Healed, the old leader catches up and holds exactly the same sequence.
    c.net.cut.lock().clear();
    wait_until("old leader catches up", || c.sms[&leader].data().len() == 50);
    let all = c.sms[&new_leader].data();
    for sm in c.sms.values() {
        assert_eq!(sm.data(), all);
    }
    for id in NODES {
        let log = c.sms[&id].0.lock().clone();
        for pair in log.windows(2) {
            assert_eq!(pair[0].index.0 + 1, pair[1].index.0, "node {id} applied a gap");
        }
    }
    drop(c.drivers);
}

/// Apply runs off the driver thread: a leader whose state machine takes several election
/// timeouts per apply keeps sending heartbeats meanwhile, so its followers never campaign.
/// (With apply on the driver thread the leader fell silent for the whole apply and lost its
/// term.)
#[test]
fn a_slow_apply_does_not_cost_the_leader_its_term() {
    let c = Cluster::start();
    let leader = c.wait_leader(None);
    c.propose(leader, "warm".into());
    wait_until("the first entry everywhere", || c.sms.values().all(|sm| sm.data().len() == 1));
    let term = c.handle(leader).status(GROUP).unwrap().term;
    // An election timeout is 10 ticks of 10 ms: each apply now lasts four of them.
    c.sms[&leader].1.store(400, Ordering::Relaxed);
    for i in 0..3 {
        c.propose(leader, format!("slow{i}"));
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_until("the slow entries applied on the leader", || c.sms[&leader].data().len() == 4);
    for id in NODES {
        let s = c.handle(id).status(GROUP).unwrap();
        assert_eq!(
            (s.leader.0, s.term),
            (leader, term),
            "node {id}: the leader or the term changed during slow applies"
        );
    }
    wait_until("the slow entries everywhere", || c.sms.values().all(|sm| sm.data().len() == 4));
    c.sms[&leader].1.store(0, Ordering::Relaxed);
    drop(c.drivers);
}

fn transfer(h: &DriverHandle, to: u64, timeout: Duration) -> Result<(), Error> {
    let (tx, rx) = mpsc::channel();
    h.transfer_leader(GROUP, NodeId(to), timeout, Box::new(move |r| tx.send(r).unwrap()));
    rx.recv_timeout(timeout + Duration::from_secs(5)).expect("transfer answered by its deadline")
}

#[test]
fn transfer_leader_answers_once_the_target_leads() {
    let c = Cluster::start();
    let leader = c.wait_leader(None);
    let others: Vec<u64> = NODES.iter().copied().filter(|n| *n != leader).collect();
    c.propose(leader, "before".into());
    wait_until("the entry everywhere", || c.sms.values().all(|sm| sm.data().len() == 1));

    // Refusals: not the leader, a node that is no voter; to itself it is done at once.
    assert!(matches!(transfer(c.handle(others[0]), others[1], Duration::from_secs(2)), Err(Error::NotLeader)));
    assert!(matches!(
        transfer(c.handle(leader), 99, Duration::from_secs(2)),
        Err(Error::BadLeaderTransferee(NodeId(99)))
    ));
    transfer(c.handle(leader), leader, Duration::from_secs(2)).expect("transfer to itself");
    assert_eq!(c.handle(leader).status(GROUP).unwrap().leader.0, leader);

    // The answer comes once the old leader itself sees the target lead.
    let target = others[0];
    transfer(c.handle(leader), target, Duration::from_secs(10)).expect("transfer");
    let seen = c.handle(leader).status(GROUP).unwrap();
    assert_eq!(seen.leader.0, target, "answered while the old leader names {}", seen.leader);
    assert!(!seen.is_leader);
    assert_eq!(c.wait_leader(None), target, "every node follows the target");

    // A target that cannot answer: the transfer times out, and the leader stays.
    let leader = target;
    let cut_off = NODES.iter().copied().find(|n| *n != leader).unwrap();
    c.net.cut.lock().insert(cut_off);
    assert!(matches!(transfer(c.handle(leader), cut_off, Duration::from_millis(300)), Err(Error::Timeout)));
    c.net.cut.lock().clear();
    assert_eq!(c.handle(leader).status(GROUP).unwrap().leader.0, leader, "a failed transfer leaves the leader");

    // The log goes on (under whichever leader the healed cluster agrees on).
    let leader = c.wait_leader(None);
    c.propose(leader, "after".into());
    wait_until("both entries everywhere", || c.sms.values().all(|sm| sm.data() == ["before", "after"]));
    drop(c.drivers);
}
