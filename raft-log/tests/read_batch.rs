//! Batched ReadIndex: concurrent linearizable reads of one group that wait to be issued share
//! ONE read-index request (one context), and all complete with its answer; a read arriving
//! after a batch was issued never joins it, it opens the next one.
//!
//! Three drivers over an in-memory transport that records every read-index context on the
//! wire: a follower's `MsgReadIndex` (forwarded to the leader) and the leader's heartbeats,
//! which carry the context being confirmed. To make reads concurrent deterministically, the
//! node under test is parked inside its transport's `send` (on the driver thread; `apply`
//! runs on the apply worker) while the reads are queued in its inbox.

mod common;

use common::{propose_retrying, start_driver};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use raft::eraftpb::{Message, MessageType};
use raft_log::{CommittedEntry, Driver, DriverHandle, GroupId, LogIndex, NodeId, StateMachine, Transport};

const GROUP: GroupId = GroupId(1);
const NODES: [u64; 3] = [1, 2, 3];
/// Reads queued while the node is parked.
const READS: usize = 200;
const PARK: &str = "park";

/// Parks the driver thread in `Transport::send` while `closed`.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
    parked: AtomicBool,
}

impl Gate {
    fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }
    fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }
    fn wait_open(&self) {
        let mut closed = self.closed.lock().unwrap();
        if *closed {
            self.parked.store(true, Ordering::SeqCst);
        }
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
        self.parked.store(false, Ordering::SeqCst);
    }
}

#[derive(Clone, Default)]
struct Sm {
    applied: Arc<Mutex<u64>>,
}

impl StateMachine for Sm {
    fn applied_index(&self, _group: GroupId) -> LogIndex {
        LogIndex(0)
    }
    fn apply(&mut self, _group: GroupId, entries: Vec<CommittedEntry>) {
        *self.applied.lock().unwrap() = entries.last().map_or(0, |e| e.index.0);
    }
}

/// Routes messages between the drivers and records read-index contexts per sender.
#[derive(Default)]
struct Net {
    handles: OnceLock<HashMap<u64, DriverHandle>>,
    /// Contexts of `MsgReadIndex` sent by each node (followers forwarding reads).
    read_index_ctxs: Mutex<HashMap<u64, Vec<Vec<u8>>>>,
    /// Non-empty contexts of heartbeats sent by each node (a leader confirming reads).
    heartbeat_ctxs: Mutex<HashMap<u64, Vec<Vec<u8>>>>,
    /// While set, `MsgReadIndex` messages are recorded and then dropped (lost on the wire).
    drop_read_index: AtomicBool,
}

impl Net {
    fn distinct(map: &Mutex<HashMap<u64, Vec<Vec<u8>>>>, node: u64) -> HashSet<Vec<u8>> {
        map.lock().unwrap().get(&node).into_iter().flatten().cloned().collect()
    }
    fn clear(&self) {
        self.read_index_ctxs.lock().unwrap().clear();
        self.heartbeat_ctxs.lock().unwrap().clear();
    }
}

struct Link {
    from: u64,
    net: Arc<Net>,
    gate: Arc<Gate>,
}

impl Transport for Link {
    fn send(&self, group: GroupId, msgs: Vec<Message>) {
        let Some(handles) = self.net.handles.get() else { return };
        self.gate.wait_open();
        for m in msgs {
            match m.get_msg_type() {
                MessageType::MsgReadIndex => {
                    let ctx = m.entries.first().map(|e| e.data.to_vec()).unwrap_or_default();
                    self.net.read_index_ctxs.lock().unwrap().entry(self.from).or_default().push(ctx);
                    if self.net.drop_read_index.load(Ordering::SeqCst) {
                        continue;
                    }
                }
                MessageType::MsgHeartbeat if !m.context.is_empty() => {
                    let ctx = m.context.to_vec();
                    self.net.heartbeat_ctxs.lock().unwrap().entry(self.from).or_default().push(ctx);
                }
                _ => {}
            }
            if let Some(h) = handles.get(&m.to) {
                let _ = h.step(group, m);
            }
        }
    }
}

struct Cluster {
    net: Arc<Net>,
    sms: HashMap<u64, Sm>,
    gates: HashMap<u64, Arc<Gate>>,
    _drivers: Vec<Driver>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    fn start() -> Cluster {
        let net = Arc::new(Net::default());
        let (mut handles, mut sms, mut drivers, mut dirs) = (HashMap::new(), HashMap::new(), Vec::new(), Vec::new());
        let mut gates = HashMap::new();
        for id in NODES {
            let dir = tempfile::tempdir().unwrap();
            let sm = Sm::default();
            let gate = Arc::new(Gate::default());
            gates.insert(id, Arc::clone(&gate));
            let link = Arc::new(Link { from: id, net: Arc::clone(&net), gate });
            let (d, h) = start_driver(id, dir.path(), Duration::from_secs(10), Box::new(sm.clone()), link, None);
            h.create_group(GROUP, NODES.iter().map(|n| NodeId(*n)).collect()).unwrap();
            handles.insert(id, h);
            sms.insert(id, sm);
            drivers.push(d);
            dirs.push(dir);
        }
        net.handles.set(handles).unwrap_or_else(|_| panic!("handles set once"));
        Cluster { net, sms, gates, _drivers: drivers, _dirs: dirs }
    }

    fn handle(&self, id: u64) -> &DriverHandle {
        &self.net.handles.get().unwrap()[&id]
    }

    fn wait_leader(&self) -> u64 {
        wait_until("one agreed leader", || {
            let leaders: HashSet<u64> = NODES.iter().map(|n| self.handle(*n).status(GROUP).unwrap().leader.0).collect();
            leaders.len() == 1 && !leaders.contains(&0)
        });
        self.handle(NODES[0]).status(GROUP).unwrap().leader.0
    }

    fn propose(&self, on: u64, data: &'static str) {
        propose_retrying(self.handle(on), GROUP, data, Instant::now() + Duration::from_secs(10));
    }

    /// Waits until the leader has committed in its term: an entry of it applies everywhere.
    fn warm_up(&self, leader: u64) {
        self.propose(leader, "warm-up");
        wait_until("warm-up applied everywhere", || self.sms.values().all(|sm| *sm.applied.lock().unwrap() >= 2));
    }

    /// Queues READS parked reads on `node` and checks they went out as ONE context of
    /// `sent` (on `role`), all answered with one read index at or past what was applied.
    fn assert_one_batch(&self, node: u64, sent: &Mutex<HashMap<u64, Vec<Vec<u8>>>>, role: &str) {
        let (answers, applied_before) = self.parked_reads(node);
        let ctxs = Net::distinct(sent, node);
        assert_eq!(ctxs.len(), 1, "{READS} reads on {role} used {} read-index contexts", ctxs.len());
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "one batch, one read index: {answers:?}");
        assert!(answers[0].0 >= applied_before, "read index {:?} below the applied {applied_before}", answers[0]);
    }

    /// Parks `node`'s driver thread, queues `READS` reads on it, lets it go, and returns
    /// their answers together with the index applied on `node` just before the reads began.
    fn parked_reads(&self, node: u64) -> (Vec<LogIndex>, u64) {
        let gate = &self.gates[&node];
        gate.close();
        // Its next send (of this proposal, or a heartbeat) parks the driver thread.
        self.propose(node, PARK);
        wait_until("driver parked in send", || gate.parked.load(Ordering::SeqCst));
        let applied_before = *self.sms[&node].applied.lock().unwrap();
        let (tx, rx) = mpsc::channel();
        for _ in 0..READS {
            let tx = tx.clone();
            self.handle(node).read_index(GROUP, Box::new(move |r| tx.send(r).unwrap()));
        }
        gate.open();
        let answers = (0..READS)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("answered").expect("a read index"))
            .collect();
        (answers, applied_before)
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn concurrent_reads_share_one_read_index_request() {
    let c = Cluster::start();
    let leader = c.wait_leader();
    let follower = NODES.into_iter().find(|n| *n != leader).unwrap();
    c.warm_up(leader);

    // On a follower: READS queued reads go to the leader as ONE MsgReadIndex context.
    c.net.clear();
    c.assert_one_batch(follower, &c.net.read_index_ctxs, "a follower");

    // On the leader: READS queued reads are confirmed by heartbeats carrying ONE context.
    c.net.clear();
    c.assert_one_batch(leader, &c.net.heartbeat_ctxs, "the leader");
}

#[test]
fn a_read_after_its_batch_was_issued_opens_the_next_batch() {
    let c = Cluster::start();
    let leader = c.wait_leader();
    let follower = NODES.into_iter().find(|n| *n != leader).unwrap();
    c.warm_up(leader);

    // The first read's request is issued but lost, so its batch stays pending and re-issued.
    c.net.clear();
    c.net.drop_read_index.store(true, Ordering::SeqCst);
    let (tx, rx) = mpsc::channel();
    let first = tx.clone();
    c.handle(follower).read_index(GROUP, Box::new(move |r| first.send((1, r)).unwrap()));
    wait_until("first batch issued", || !Net::distinct(&c.net.read_index_ctxs, follower).is_empty());
    // Begun after that issue, the second read must not share the first one's read point.
    c.handle(follower).read_index(GROUP, Box::new(move |r| tx.send((2, r)).unwrap()));
    wait_until("second batch issued", || Net::distinct(&c.net.read_index_ctxs, follower).len() == 2);
    c.net.drop_read_index.store(false, Ordering::SeqCst);
    let mut answers: Vec<(u32, LogIndex)> =
        (0..2).map(|_| rx.recv_timeout(Duration::from_secs(10)).map(|(n, r)| (n, r.unwrap())).unwrap()).collect();
    answers.sort();
    assert!(answers[1].1 >= answers[0].1, "the later read's index is not older: {answers:?}");
    assert_eq!(Net::distinct(&c.net.read_index_ctxs, follower).len(), 2, "each batch keeps its own context");
}
