//! Deterministic simulation of whole Plinth members in one process, driven by one `u64` seed.
//!
//! `raft-log/tests/sim.rs` checks the replication core under faults with a stand-in state
//! machine. This simulation runs what a member runs between the network and the disk: each
//! node is a real [`ManualDriver`] over a real [`Wal`], with the real
//! [`grpc_api::node::Applier`] (store, group runtimes with their waiters and lessors,
//! membership) as its state machine, built as `serve` builds it but without a tokio
//! runtime or sockets. Only the clock, the network, the clients and crashes are simulated:
//!
//! - **groups**: the default group (which carries the membership) and [`TENANT_GROUPS`]
//!   tenant groups share each node's one WAL and one store; the workload is spread over
//!   them, and every check below is made per group;
//! - **clock**: a step is one unit of time; each live node ticks with a fixed chance per
//!   step, which also moves its driver's clock (read-index deadlines and retries);
//! - **network**: one queue ordered by delivery step; messages are dropped, delayed,
//!   reordered and duplicated (client proposals are not duplicated), partitions come and
//!   heal; a snapshot travels as the store's chunks and its outcome is reported back to the
//!   leader, as the peer transport does;
//! - **crashes**: a node is dropped without shutting down; its WAL may lose the frames the
//!   driver wrote without an fsync and get a torn tail; it restarts later from its
//!   directories (store, WAL, `member.json`);
//! - **log compaction**: a node now and then flushes its store and lets the WAL drop what
//!   the flush made durable, keeping [`CATCH_UP_ENTRIES`], as `serve`'s purge does, so a
//!   member that was cut off or down long enough catches up by snapshot (pinned, exported
//!   and installed with the same store functions as the peer transport);
//! - **membership**: the cluster adds a spare node as a learner, promotes it and removes an
//!   original voter, with conf changes of the default group carrying the member as `serve`
//!   proposes them; tenant groups follow with `tenants::membership_step` on their leaders;
//! - **clients**: puts of unique values, puts attached to leases, lease grants and revokes,
//!   each through a random node with a waiter registered in that node's group runtime; the
//!   request ids of different members deliberately collide (every member counts from 1);
//!   and ReadIndex reads through random nodes.
//!
//! Checked after every step: at most one leader per term in each group; a node's durable
//! term never decreases and its vote never changes within a term; commit never goes back;
//! entries reach the store exactly once and in order, every replica applies the same entry
//! at each index and reaches the same revision; after a restart the store is at the
//! revision of its applied index; an installed snapshot leaves the store at the revision
//! and `hash_kv` the leader had at the snapshot's index; each waiter is answered exactly
//! when its own entry applies on its own node, with that entry's result (never by another
//! member's entry with the same request id); every live node's lessor times exactly the
//! leases its store holds; every ReadIndex read returns a value at least as new as every
//! write acknowledged before the read began (per key: values are unique, so a register
//! check suffices). At the end the network heals and every member restarts; all must
//! converge on one leader per group, the same applied index and `hash_kv`, and the same
//! membership (the member list of every node, and every group's Raft configuration).
//!
//! Seeds: `PLINTH_SIM_SEEDS=<count>` (default [`DEFAULT_SEEDS`] per test; even seeds run 3
//! nodes, odd seeds 5, plus the spare). A failure names its seed; replay it alone with
//! `PLINTH_SIM_SEED=<n> scripts/cargo test -p grpc-api --test node_sim`.
//! `same_seed_same_trace` checks that a run is a function of its seed. With
//! `PLINTH_SIM_EVENTS=1` (and `--nocapture`) a replay prints its faults, starts, snapshots
//! and membership steps as they happen.
//!
//! Hibernation: a third of the seeds run without it, a third with groups sleeping after twice
//! the election timeout, a third after 3 idle ticks; with it on, clients pause for half of
//! every `QUIET_CYCLE_STEPS`, so groups sleep and are woken by requests and peers.
//!
//! CAVEATS:
//! - Lease expiry is not simulated (TTLs outlast a run): the lessor's deadlines use the
//!   wall clock. What is checked is that every member's timers follow the store.
//! - The tenant registry (system group) is not simulated: tenant groups exist from the start.
//! - A removed member runs on for 20 to 80 steps once the leader has applied its removal,
//!   then the simulation stops it for good (a real one stops when it learns of its removal,
//!   from its own apply or its peers' refusals). Half the runs remove the leader itself;
//!   `removing_the_leader` replays seeds that do.
//! - Relayed proposals and read-index requests are dropped, as `PeerTransport::send` does.
//! - Membership waiters (`Membership::waiters`) are not checked; data waiters are.
//! - The WAL checks of `sim.rs` that read the durable log (durable quorum, recovery keeps
//!   every durable entry) are not repeated here.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use grpc_api::node::membership::{ConfContext, Identity, Member};
use grpc_api::node::metrics::Metrics;
use grpc_api::node::peer::PeerTransport;
use grpc_api::node::tenants::{membership_step, TENANT_GROUP_FIRST};
use grpc_api::node::{decode_entry, encode_proposal, Applier, ApplyResult, Groups, Membership, DEFAULT_GROUP};
use parking_lot::Mutex;
use prost::Message as _;
use raft_log::raft::eraftpb::{ConfChange, ConfChangeType, Message, MessageType};
use raft_log::{
    scan_frames, Bootstrap, CommittedEntry, DriverConfig, GroupId, LogIndex, ManualDriver, NodeId, Record,
    ScannedFrame, SnapshotSource, StateMachine, Term, Transport, Wal, WalConfig,
};
use store::{Command, CommandBody, CommandResponse, Store, StoreConfig};
use tokio::sync::oneshot;

/// Seeds run per test by default (each of the 3-node and 5-node tests).
const DEFAULT_SEEDS: u64 = 16;
/// Steps of faults and workload per seed.
const STEPS: u64 = 1500;
/// Most steps the healed cluster may take to converge before the run fails.
const CONVERGE_STEPS_MAX: u64 = 4000;
/// Average steps per Raft tick of a node.
const STEPS_PER_TICK: u64 = 4;
/// With hibernation on, the workload runs for the first half of each cycle of this many
/// steps and pauses for the second (longer than an idle leader takes to sleep).
const QUIET_CYCLE_STEPS: u64 = 400;
const ELECTION_TICKS: usize = 10;
/// Most messages in flight; more are dropped (as a full transport queue would).
const NET_MESSAGES_MAX: usize = 100_000;
/// Keys the plain puts write (values are unique per proposal).
const KEYS: u64 = 6;
/// Tenant groups beside the default group.
const TENANT_GROUPS: u64 = 2;
/// Entries a compaction keeps below the flushed applied index (serve's catch-up entries),
/// small so that lagging members need snapshots.
const CATCH_UP_ENTRIES: u64 = 5;
/// Steps a client waits for its proposal's answer before giving up (the outcome is then
/// unknown, as for a client whose request timed out).
const WAITER_STEPS_MAX: u64 = 400;
/// TTL of every lease: longer than any run, so no lease expires.
const LEASE_TTL_SECONDS: i64 = 3600;
/// Steps between two attempts of the membership plan's next change.
const CONF_RETRY_STEPS: u64 = 40;

thread_local! {
    /// The step being run, for the failure message.
    static STEP: Cell<u64> = const { Cell::new(0) };
}

/// splitmix64: every random choice of a run comes from one of these, seeded once.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn per_mille(&mut self, p: u64) -> bool {
        self.below(1000) < p
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.below(from.len() as u64) as usize])
    }
}

/// FNV-1a, for payload hashes and the trace digest (stable across runs and platforms).
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn group_ids() -> Vec<u64> {
    std::iter::once(DEFAULT_GROUP).chain((0..TENANT_GROUPS).map(|k| TENANT_GROUP_FIRST + k)).collect()
}

/// One entry as a node's store applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    index: u64,
    term: u64,
    data_hash: u64,
    /// The store's revision after the entry.
    revision: i64,
    /// The proposer and request id of a client proposal (none for empty entries).
    proposal: Option<(u64, u64)>,
}

/// What a node's state machine reported, in order.
enum Event {
    Applied(u64, Applied),
    Snapshot(u64, u64),
}

/// The real applier, reporting each entry it applied with the revision it reached. Entries
/// are handed to the applier one at a time so that each one's revision is known.
struct SimSm {
    applier: Applier,
    store: Store,
    events: Arc<Mutex<Vec<Event>>>,
}

impl StateMachine for SimSm {
    fn applied_index(&self, group: GroupId) -> LogIndex {
        self.applier.applied_index(group)
    }

    fn apply(&mut self, group: GroupId, entries: Vec<CommittedEntry>) {
        for e in entries {
            let data_hash = fnv(FNV_START, &e.data);
            let proposal = decode_entry(&e.data).map(|(p, id, _)| (p, id));
            let (index, term) = (e.index.0, e.term.0);
            self.applier.apply(group, vec![e]);
            let revision = self.store.current_revision(store::GroupId(group.0));
            let a = Applied { index, term, data_hash, revision, proposal };
            self.events.lock().push(Event::Applied(group.0, a));
        }
    }

    fn on_leader_change(&mut self, group: GroupId, leader: NodeId, term: Term) {
        self.applier.on_leader_change(group, leader, term);
    }

    fn on_conf_change(
        &mut self,
        group: GroupId,
        index: LogIndex,
        change: &ConfChange,
        state: &raft_log::raft::eraftpb::ConfState,
    ) {
        self.applier.on_conf_change(group, index, change, state);
    }

    fn on_snapshot(&mut self, group: GroupId, index: LogIndex) {
        self.applier.on_snapshot(group, index);
        self.events.lock().push(Event::Snapshot(group.0, index.0));
    }
}

/// A node's transport: messages wait in its outbox until the simulation routes them.
struct Outbox(Arc<Mutex<Vec<(GroupId, Message)>>>);

impl Transport for Outbox {
    fn send(&self, group: GroupId, msgs: Vec<Message>) {
        self.0.lock().extend(msgs.into_iter().map(|m| (group, m)));
    }
}

/// The `hash_kv` of a group's store: (hash, compact revision, revision).
type HashKv = (u32, i64, i64);

/// Pins store snapshots as `PeerTransport` does (`Store::snapshot` at the applied index,
/// one per group and follower, a token in the Raft snapshot's data), and records the
/// leader's `hash_kv` at the pinned index for the install check.
struct SimSnapshots {
    store: Store,
    pinned: Mutex<BTreeMap<(u64, u64), (u64, store::SnapshotReader)>>,
    next_token: AtomicU64,
    /// Shared by every node of the run: `hash_kv` by (group, index).
    hashes: Arc<Mutex<BTreeMap<(u64, u64), HashKv>>>,
}

impl SnapshotSource for SimSnapshots {
    fn pin(&self, group: GroupId, to: NodeId) -> raft_log::Result<(LogIndex, Vec<u8>)> {
        let g = store::GroupId(group.0);
        let reader = self.store.snapshot(g).map_err(|e| raft_log::Error::Raft(format!("pinning: {e}")))?;
        let index = reader.applied_index();
        // Called between applies on the driver's thread: the store is at `index` now.
        assert_eq!(self.store.applied_index(g), index, "a pinned snapshot is at the store's applied index");
        let hash = self.store.hash_kv(g, 0).expect("hash_kv");
        let known = *self.hashes.lock().entry((group.0, index)).or_insert(hash);
        assert_eq!(known, hash, "group {}: two stores at index {index} hash differently", group.0);
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.pinned.lock().insert((group.0, to.0), (token, reader));
        Ok((LogIndex(index), token.to_le_bytes().to_vec()))
    }
}

/// A client proposal waiting for its answer on the node that made it.
struct Waiting {
    rx: oneshot::Receiver<ApplyResult>,
    invoked: u64,
    /// The lease a grant asked for (its answer must name it).
    lease: Option<i64>,
    /// The key and value of a plain put (for the linearizability check).
    put: Option<(String, String)>,
}

/// A read id and the read index the driver answered it with.
type ReadAnswer = (u64, raft_log::Result<LogIndex>);

/// A ReadIndex read in flight on a node.
struct Reading {
    group: u64,
    key: String,
    invoked: u64,
    /// The read index, once the driver answered.
    index: Option<u64>,
}

/// A running node. Fields drop in order: the driver (with its state machine) first.
struct Live {
    driver: ManualDriver,
    wal: Arc<Wal>,
    store: Store,
    groups: Arc<Groups>,
    membership: Arc<Membership>,
    snapshots: Arc<SimSnapshots>,
    events: Arc<Mutex<Vec<Event>>>,
    outbox: Arc<Mutex<Vec<(GroupId, Message)>>>,
    /// Client proposals of this life by (group, request id).
    waiting: BTreeMap<(u64, u64), Waiting>,
    /// ReadIndex reads by read id; answers land in `read_answers`.
    reading: BTreeMap<u64, Reading>,
    read_answers: Arc<Mutex<Vec<ReadAnswer>>>,
    last_commit: BTreeMap<u64, u64>,
}

/// What the simulation knows of one group on one node, over all its lives.
#[derive(Default, Clone)]
struct NodeGroup {
    /// Index the store has applied (entry by entry, or by a snapshot).
    applied: u64,
    /// Durable term and vote, as last seen.
    term: u64,
    vote: u64,
}

struct Node {
    id: u64,
    dir: PathBuf,
    live: Option<Live>,
    restart_at: u64,
    /// Started at least once (the spare node only once it was added as a learner).
    started: bool,
    /// Removed from the cluster: never started again.
    retired: bool,
    groups: BTreeMap<u64, NodeGroup>,
    /// The member's request counter. It survives crashes (a real member starts past its
    /// earlier ids from the wall clock) and starts at 1 on every member, so request ids
    /// of different members collide on purpose.
    next_request_id: u64,
}

#[derive(Debug)]
struct Faults {
    drop_per_mille: u64,
    dup_per_mille: u64,
    delay_steps_max: u64,
    long_delay_per_mille: u64,
    partition_per_mille: u64,
    heal_per_mille: u64,
    crash_per_mille: u64,
    torn_per_mille: u64,
    lose_unsynced_per_mille: u64,
    propose_per_mille: u64,
    read_per_mille: u64,
    compact_per_mille: u64,
    campaign_per_mille: u64,
}

impl Faults {
    fn draw(rng: &mut Rng) -> Faults {
        let calm = rng.per_mille(100);
        let f = |rng: &mut Rng, max: u64| if calm { 0 } else { rng.below(max + 1) };
        Faults {
            drop_per_mille: f(rng, 150),
            dup_per_mille: f(rng, 100),
            delay_steps_max: 1 + rng.below(8),
            long_delay_per_mille: f(rng, 50),
            partition_per_mille: f(rng, 15),
            heal_per_mille: 5 + rng.below(30),
            crash_per_mille: f(rng, 10),
            torn_per_mille: 700,
            lose_unsynced_per_mille: 500,
            propose_per_mille: 200 + rng.below(500),
            read_per_mille: 50 + rng.below(200),
            compact_per_mille: 10 + rng.below(40),
            campaign_per_mille: f(rng, 3),
        }
    }

    fn healed() -> Faults {
        Faults {
            drop_per_mille: 0,
            dup_per_mille: 0,
            delay_steps_max: 2,
            long_delay_per_mille: 0,
            partition_per_mille: 0,
            heal_per_mille: 1000,
            crash_per_mille: 0,
            torn_per_mille: 0,
            lose_unsynced_per_mille: 0,
            propose_per_mille: 0,
            read_per_mille: 0,
            compact_per_mille: 0,
            campaign_per_mille: 0,
        }
    }
}

enum Payload {
    Raft(Message),
    /// A snapshot message with the store chunks pinned for it and the sender's member list.
    Snapshot(Message, Vec<Vec<u8>>, Vec<Member>),
    /// The outcome of a snapshot transfer, for the leader that sent it.
    SnapshotReport {
        follower: u64,
        ok: bool,
    },
}

struct Envelope {
    from: u64,
    to: u64,
    group: u64,
    payload: Payload,
}

/// Where the membership plan is: add the spare as a learner, promote it, remove a voter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    AddLearner,
    Promote,
    Remove,
    Done,
}

/// A plain put as the linearizability check sees it.
#[derive(Default)]
struct WriteOp {
    /// Log index of the put in its group, once applied anywhere.
    index: Option<u64>,
    /// Step at which its proposer's waiter was answered.
    acked: Option<u64>,
}

struct Sim {
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    /// The members of the initial cluster.
    initial: Vec<u64>,
    faults: Faults,
    net: BTreeMap<(u64, u64), Envelope>,
    net_seq: u64,
    /// Partition side of each node (index = id - 1); all equal = healed.
    side: Vec<u8>,
    /// Every leader ever seen, by (group, term).
    leaders: BTreeMap<(u64, u64), u64>,
    /// The committed log of each group as applied anywhere, by index.
    committed: BTreeMap<u64, BTreeMap<u64, Applied>>,
    /// Proposals applied, by (group, proposer, request id), with their index.
    applied_requests: BTreeMap<(u64, u64, u64), u64>,
    /// `hash_kv` of a group at an index, recorded when a leader pinned a snapshot there.
    hashes: Arc<Mutex<BTreeMap<(u64, u64), HashKv>>>,
    /// Plain puts by (group, value) and each key's acknowledged puts.
    writes: BTreeMap<(u64, String), WriteOp>,
    key_of: BTreeMap<(u64, String), String>,
    /// Leases granted by a proposal, by group (some may never apply).
    leases: BTreeMap<u64, Vec<i64>>,
    next_lease: i64,
    next_read: u64,
    plan: Plan,
    plan_at: u64,
    victim: u64,
    /// When the removed member stops for good.
    retire_at: Option<u64>,
    trace: u64,
    counts: BTreeMap<&'static str, u64>,
    /// The drivers' `hibernate_after_ticks` in this run (see `hibernate_after_ticks`).
    hibernate_after_ticks: usize,
    /// Checks in which some group slept on some node (off the trace).
    hibernating: u64,
    _dir: tempfile::TempDir,
}

/// Hibernation by seed, so that every node count runs without it, with the default-like
/// setting (twice the election timeout) and with an eager one (groups sleep after 3 idle
/// ticks, so sleeps and wakes interleave with every fault and membership step).
fn hibernate_after_ticks(seed: u64) -> usize {
    [0, 2 * ELECTION_TICKS, 3][(seed / 2 % 3) as usize]
}

fn sim_dir() -> tempfile::TempDir {
    // tmpfs when there is one: the run is fsync-bound otherwise.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("temporary directory")
}

fn store_config() -> StoreConfig {
    StoreConfig { block_cache_bytes: 1 << 20, memtable_bytes: 1 << 20, ..StoreConfig::default() }
}

fn wal_config(dir: &Path) -> WalConfig {
    // Small segments, so rotation, purge and multi-segment recovery happen in every run.
    WalConfig { segment_bytes_max: 16 << 10, ..WalConfig::new(dir) }
}

fn member(id: u64, is_learner: bool) -> Member {
    Member {
        id,
        name: format!("n{id}"),
        peer_urls: vec![format!("http://n{id}:2380")],
        client_urls: Vec::new(),
        is_learner,
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("WAL directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

/// The offset from which every frame of a segment only moves commit indexes (HardStates
/// with the term and vote of the one before), which the driver writes without an fsync.
fn commit_only_suffix(frames: &[ScannedFrame]) -> Option<u64> {
    let mut term_vote: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut start = None;
    for f in frames {
        let mut commit_only = true;
        for (record, _) in &f.records {
            match record {
                Record::HardState { group, state } => {
                    let prev = term_vote.insert(group.0, (state.term, state.vote));
                    commit_only &= prev == Some((state.term, state.vote));
                }
                Record::Checkpoint { group, checkpoint } => {
                    let hs = &checkpoint.hard_state;
                    term_vote.insert(group.0, (hs.term, hs.vote));
                    commit_only = false;
                }
                _ => commit_only = false,
            }
        }
        if !commit_only {
            start = None;
        } else if start.is_none() {
            start = Some(f.offset);
        }
    }
    start
}

impl Sim {
    fn new(seed: u64, node_count: u64) -> Sim {
        let mut rng = Rng(seed);
        let faults = Faults::draw(&mut rng);
        let dir = sim_dir();
        let total = node_count + 1;
        let nodes = (1..=total)
            .map(|id| Node {
                id,
                dir: dir.path().join(format!("n{id}")),
                live: None,
                restart_at: 0,
                started: false,
                retired: false,
                groups: group_ids().into_iter().map(|g| (g, NodeGroup::default())).collect(),
                next_request_id: 1,
            })
            .collect();
        let victim = 1 + rng.below(node_count);
        let mut sim = Sim {
            rng,
            now: 0,
            nodes,
            initial: (1..=node_count).collect(),
            faults,
            net: BTreeMap::new(),
            net_seq: 0,
            side: vec![0; total as usize],
            leaders: BTreeMap::new(),
            committed: group_ids().into_iter().map(|g| (g, BTreeMap::new())).collect(),
            applied_requests: BTreeMap::new(),
            hashes: Arc::default(),
            writes: BTreeMap::new(),
            key_of: BTreeMap::new(),
            leases: BTreeMap::new(),
            next_lease: 1,
            next_read: 1,
            plan: Plan::AddLearner,
            plan_at: 200,
            victim,
            retire_at: None,
            trace: FNV_START,
            counts: BTreeMap::new(),
            hibernate_after_ticks: hibernate_after_ticks(seed),
            hibernating: 0,
            _dir: dir,
        };
        for i in 0..node_count as usize {
            sim.start_node(i, None);
        }
        sim
    }

    fn record(&mut self, what: &'static str, values: &[u64]) {
        if std::env::var_os("PLINTH_SIM_EVENTS").is_some()
            && !matches!(what, "apply" | "propose" | "read" | "read-done")
        {
            eprintln!("step {}: {what} {values:?}", self.now);
        }
        *self.counts.entry(what).or_default() += 1;
        self.trace = fnv(self.trace, what.as_bytes());
        for v in values {
            self.trace = fnv(self.trace, &v.to_le_bytes());
        }
    }

    /// The revision of `group` after index `index` of its committed log (1 before any).
    fn revision_at(&self, group: u64, index: u64) -> i64 {
        if index == 0 {
            return 1;
        }
        match self.committed[&group].get(&index) {
            Some(a) => a.revision,
            None => panic!("group {group}: no committed entry {index} is known"),
        }
    }

    /// Opens (or reopens) node `i` from its directories. `identity` is the member list a
    /// joining node starts with (its first start only).
    fn start_node(&mut self, i: usize, identity: Option<Identity>) {
        let initial = self.initial.clone();
        let hashes = self.hashes.clone();
        let node = &mut self.nodes[i];
        let id = node.id;
        std::fs::create_dir_all(&node.dir).expect("node directory");
        let wal = Arc::new(Wal::open(wal_config(&node.dir.join("wal"))).expect("WAL recovers"));
        let store = Store::open(&node.dir.join("store"), store_config()).expect("store opens");

        // The identity as `serve` finds it: `member.json` once one was saved.
        let saved = std::fs::read(node.dir.join("member.json")).ok();
        let identity = match (saved, identity) {
            (Some(bytes), _) => serde_json::from_slice(&bytes).expect("member.json parses"),
            (None, Some(joining)) => joining,
            (None, None) => Identity {
                cluster_id: 1,
                member_id: id,
                members: initial.iter().map(|m| member(*m, false)).collect(),
                joined: false,
                removed: Vec::new(),
            },
        };
        // A member's identity is on disk from its first start on, as `serve` saves it: a
        // joining member restarts as one.
        identity.save(&node.dir).expect("member.json saved");
        let joined = identity.joined;

        // Each group's store is at an applied index at most what it applied before, at the
        // revision the committed log had there.
        let mut expected = Vec::new();
        for (g, ng) in &mut node.groups {
            let store_applied = store.applied_index(store::GroupId(*g));
            assert!(
                store_applied <= ng.applied,
                "node {id} group {g}: store applied index {store_applied} is past what was applied ({})",
                ng.applied
            );
            ng.applied = store_applied;
            expected.push((*g, store_applied, store.current_revision(store::GroupId(*g))));
        }
        for (g, index, revision) in expected {
            let want = self.revision_at(g, index);
            assert_eq!(revision, want, "node {id} group {g}: store revision after restart at index {index}");
        }
        let node = &mut self.nodes[i];

        let groups = Groups::new(store.clone(), 1);
        let metrics = Arc::new(Metrics::new("3.5.1", id));
        let transport = PeerTransport::new(id, store.clone(), &identity.peer_ids(), metrics.clone());
        let (membership, _removed) = Membership::new(identity, transport, node.dir.clone());
        let applier = Applier {
            store: store.clone(),
            groups: groups.clone(),
            metrics,
            membership: membership.clone(),
            registry_changed: Arc::default(),
            // No lease expires in a run (`LEASE_TTL`): the extension changes nothing here.
            lease_promote_extend: std::time::Duration::from_secs(1),
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let outbox = Arc::new(Mutex::new(Vec::new()));
        let snapshots = Arc::new(SimSnapshots {
            store: store.clone(),
            pinned: Mutex::default(),
            next_token: AtomicU64::new(1),
            hashes,
        });
        let sm = SimSm { applier, store: store.clone(), events: events.clone() };
        let cfg = DriverConfig {
            node_id: NodeId(id),
            election_ticks: ELECTION_TICKS,
            election_ticks_max: ELECTION_TICKS + 1,
            hibernate_after_ticks: self.hibernate_after_ticks,
            ..DriverConfig::default()
        };
        let source: Arc<dyn SnapshotSource> = snapshots.clone();
        let mut driver = ManualDriver::with_snapshots(
            cfg,
            wal.clone(),
            Box::new(sm),
            Arc::new(Outbox(outbox.clone())),
            Some(source),
        )
        .expect("driver starts");
        // As `serve` (the default group) and the tenant reconciler (tenant groups) create
        // them: the initial members bootstrap, a joining member starts empty.
        for g in group_ids() {
            let bootstrap = if joined {
                Bootstrap::Join
            } else if g == DEFAULT_GROUP {
                let contexts = initial
                    .iter()
                    .map(|m| {
                        let ctx = ConfContext { proposer: 0, request_id: 0, member: member(*m, false) };
                        (NodeId(*m), ctx.encode())
                    })
                    .collect();
                Bootstrap::Members(contexts)
            } else {
                Bootstrap::Members(initial.iter().map(|m| (NodeId(*m), Bytes::new())).collect())
            };
            driver.create_group_with(GroupId(g), &bootstrap).expect("group created (or recovered)");
        }
        node.started = true;
        node.live = Some(Live {
            driver,
            wal,
            store,
            groups,
            membership,
            snapshots,
            events,
            outbox,
            waiting: BTreeMap::new(),
            reading: BTreeMap::new(),
            read_answers: Arc::default(),
            last_commit: BTreeMap::new(),
        });
        self.record("start", &[id]);
    }

    /// Drops node `i` without shutting anything down, maybe tearing its WAL's tail.
    fn crash(&mut self, i: usize) {
        let live = self.nodes[i].live.take().expect("crash a live node");
        // Dropping waits for the WAL writer to finish what was submitted: as in a process
        // crash, written bytes stay in the page cache and reach the file.
        drop(live);
        let id = self.nodes[i].id;
        let wal_dir = self.nodes[i].dir.join("wal");
        let restart_in = 20 + self.rng.below(300);
        self.nodes[i].restart_at = self.now + restart_in;
        let lose_unsynced = self.rng.per_mille(self.faults.lose_unsynced_per_mille);
        let torn = self.rng.per_mille(self.faults.torn_per_mille);
        let damage = self.damage_tail(&wal_dir, lose_unsynced, torn);
        self.record("crash", &[id, restart_in, damage]);
    }

    /// What a machine crash can do to the end of the last segment: drop the frames written
    /// without an fsync, and leave part of a write in flight behind. Fsynced frames are
    /// never touched. Returns a code of the damage done, for the trace.
    fn damage_tail(&mut self, wal_dir: &Path, lose_unsynced: bool, torn: bool) -> u64 {
        let segs = segments(wal_dir);
        let last = segs.last().expect("an opened WAL has a segment");
        let bytes = std::fs::read(last).expect("read segment");
        let seq: u64 = last.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).expect("segment name");
        let scan = scan_frames(seq, &bytes);
        assert!(scan.bad.is_none(), "a WAL closed in order has no torn frame: {:?}", scan.bad);
        let mut end = bytes.len();
        let mut code = 0;
        if lose_unsynced {
            if let Some(at) = commit_only_suffix(&scan.frames) {
                end = at as usize;
                code = 10;
            }
        }
        let f = std::fs::OpenOptions::new().write(true).open(last).expect("open segment");
        f.set_len(end as u64).expect("cut unsynced frames");
        if !torn {
            return code;
        }
        let tail: Vec<u8> = if self.rng.per_mille(500) {
            vec![0; 1 + self.rng.below(4096) as usize]
        } else {
            (0..1 + self.rng.below(256)).map(|_| self.rng.next_u64() as u8).collect()
        };
        f.write_all_at(&tail, end as u64).expect("append torn tail");
        code + 1
    }

    fn live_ids(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].live.is_some()).collect()
    }

    fn status(&self, i: usize, group: u64) -> Option<raft_log::GroupStatus> {
        self.nodes[i].live.as_ref()?.driver.status(GroupId(group))
    }

    /// The live node that leads `group` in the highest term, if any.
    fn leader(&self, group: u64) -> Option<usize> {
        self.live_ids()
            .into_iter()
            .filter_map(|i| self.status(i, group).filter(|s| s.is_leader).map(|s| (s.term, i)))
            .max()
            .map(|(_, i)| i)
    }

    fn partition(&mut self) {
        let n = self.nodes.len();
        let kind = self.rng.below(3);
        let mut order: Vec<usize> = (0..n).collect();
        for k in (1..n).rev() {
            let j = self.rng.below(k as u64 + 1) as usize;
            order.swap(k, j);
        }
        if let (1, Some(l)) = (kind, self.leader(DEFAULT_GROUP)) {
            let at = order.iter().position(|x| *x == l).expect("leader is a node");
            order.swap(0, at);
        }
        self.side = vec![0; n];
        match kind {
            // A random minority, cut off.
            0 => {
                for &x in &order[..1 + self.rng.below(((n - 1) / 2) as u64) as usize] {
                    self.side[x] = 1;
                }
            }
            // The default group's leader alone.
            1 => self.side[order[0]] = 1,
            // Three sides.
            _ => {
                for (k, &x) in order.iter().enumerate() {
                    self.side[x] = (k % 3) as u8;
                }
            }
        }
        let sides: Vec<u64> = self.side.iter().map(|s| u64::from(*s)).collect();
        self.record("partition", &sides);
    }

    fn faults(&mut self) {
        let partitioned = self.side.iter().any(|s| *s != self.side[0]);
        if partitioned && self.rng.per_mille(self.faults.heal_per_mille) {
            self.side = vec![0; self.nodes.len()];
            self.record("heal", &[]);
        } else if !partitioned && self.rng.per_mille(self.faults.partition_per_mille) {
            self.partition();
        }
        if self.rng.per_mille(self.faults.crash_per_mille) {
            let live = self.live_ids();
            let leader = self.leader(DEFAULT_GROUP);
            let pick = match leader {
                Some(l) if self.rng.per_mille(400) => Some(l),
                _ => self.rng.pick(&live),
            };
            if let Some(i) = pick {
                self.crash(i);
            }
        }
        if self.rng.per_mille(self.faults.campaign_per_mille) {
            let live = self.live_ids();
            if let Some(i) = self.rng.pick(&live) {
                let g = self.rng.pick(&group_ids()).expect("groups");
                self.nodes[i].live.as_mut().expect("live").driver.campaign(GroupId(g));
                self.record("campaign", &[i as u64, g]);
            }
        }
        if self.rng.per_mille(self.faults.compact_per_mille) {
            let live = self.live_ids();
            if let Some(i) = self.rng.pick(&live) {
                self.compact(i);
            }
        }
    }

    /// Flushes node `i`'s store and lets its WAL drop what the flush made durable, keeping
    /// `CATCH_UP_ENTRIES` (serve's `purge_log`).
    fn compact(&mut self, i: usize) {
        let live = self.nodes[i].live.as_mut().expect("live");
        let flushed = live.store.flush().expect("store flush");
        let mut done = Vec::new();
        for (g, applied) in flushed {
            if applied <= CATCH_UP_ENTRIES || live.driver.status(GroupId(g.0)).is_none() {
                continue;
            }
            // Flush before purge: only entries the store has made durable leave the log.
            live.driver.compact_log(GroupId(g.0), LogIndex(applied - CATCH_UP_ENTRIES));
            done.push(applied);
        }
        let id = self.nodes[i].id;
        self.record("compact", &[id, done.iter().sum()]);
    }

    fn restart_due(&mut self) {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if n.live.is_none() && n.started && !n.retired && n.restart_at <= self.now {
                self.start_node(i, None);
            }
        }
    }

    /// One client request through a random live member: a put, a put with a lease, a
    /// lease grant or revoke, or a ReadIndex read.
    fn workload(&mut self) {
        let members: Vec<usize> = self
            .live_ids()
            .into_iter()
            .filter(|i| !self.nodes[*i].live.as_ref().expect("live").membership.identity.read().is_learner())
            .collect();
        if self.rng.per_mille(self.faults.read_per_mille) {
            if let Some(i) = self.rng.pick(&members) {
                let g = self.rng.pick(&group_ids()).expect("groups");
                self.read(i, g);
            }
        }
        if !self.rng.per_mille(self.faults.propose_per_mille) {
            return;
        }
        let Some(i) = self.rng.pick(&members) else { return };
        let g = self.rng.pick(&group_ids()).expect("groups");
        let me = self.nodes[i].id;
        let id = self.nodes[i].next_request_id;
        let granted = self.leases.get(&g).cloned().unwrap_or_default();
        let kind = self.rng.below(100);
        let (body, lease, put) = if kind < 60 {
            let key = format!("k{}", self.rng.below(KEYS));
            let value = format!("v{me}.{id}");
            let body = CommandBody::Put(store::PutRequest {
                key: key.clone().into(),
                value: value.clone().into(),
                ..Default::default()
            });
            (body, None, Some((key, value)))
        } else if kind < 75 {
            let lease = self.next_lease;
            let body = CommandBody::LeaseGrant(store::LeaseGrantRequest { id: lease, ttl: LEASE_TTL_SECONDS });
            (body, Some(lease), None)
        } else if kind < 88 && !granted.is_empty() {
            let lease = self.rng.pick(&granted).expect("a lease");
            let body = CommandBody::Put(store::PutRequest {
                key: format!("l{lease}.{}", self.rng.below(3)).into(),
                value: format!("v{me}.{id}").into(),
                lease,
                ..Default::default()
            });
            (body, None, None)
        } else {
            let lease = self.rng.pick(&granted).unwrap_or(self.next_lease);
            (CommandBody::LeaseRevoke(store::LeaseRevokeRequest { id: lease }), None, None)
        };
        let command = Command { request_id: 0, body: Some(body) };
        let data = encode_proposal(me, id, &command, command.encoded_len());
        let live = self.nodes[i].live.as_mut().expect("live");
        let (tx, rx) = oneshot::channel();
        let rt = live.groups.get(g);
        rt.waiters.insert(id, tx).expect("a waiter is kept");
        if live.driver.propose(GroupId(g), data).is_err() {
            rt.waiters.remove(id);
            return;
        }
        self.nodes[i].next_request_id += 1;
        let live = self.nodes[i].live.as_mut().expect("live");
        live.waiting.insert((g, id), Waiting { rx, invoked: self.now, lease, put: put.clone() });
        if let Some(l) = lease {
            self.next_lease += 1;
            self.leases.entry(g).or_default().push(l);
        }
        if let Some((key, value)) = put {
            self.writes.insert((g, value.clone()), WriteOp::default());
            self.key_of.insert((g, value), key);
        }
        self.record("propose", &[me, g, id, kind]);
    }

    /// Starts a ReadIndex read of a random key of `group` on node `i`.
    fn read(&mut self, i: usize, group: u64) {
        let read_id = self.next_read;
        self.next_read += 1;
        let key = format!("k{}", self.rng.below(KEYS));
        let live = self.nodes[i].live.as_mut().expect("live");
        let answers = live.read_answers.clone();
        live.reading.insert(read_id, Reading { group, key, invoked: self.now, index: None });
        live.driver.read_index(GroupId(group), Box::new(move |r| answers.lock().push((read_id, r))));
        let id = self.nodes[i].id;
        self.record("read", &[id, group, read_id]);
    }

    fn deliver(&mut self) {
        while let Some(entry) = self.net.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let env = entry.remove();
            let (from, to) = (env.from as usize - 1, env.to as usize - 1);
            let reachable = self.side[from] == self.side[to] && self.nodes[to].live.is_some();
            match env.payload {
                Payload::Raft(msg) => {
                    if !reachable {
                        continue;
                    }
                    self.trace = fnv(self.trace, &[msg.get_msg_type() as u8, env.from as u8, env.to as u8]);
                    let live = self.nodes[to].live.as_mut().expect("live");
                    live.driver.step(GroupId(env.group), msg);
                }
                Payload::SnapshotReport { follower, ok } => {
                    if let Some(live) = self.nodes[to].live.as_mut() {
                        live.driver.report_snapshot(GroupId(env.group), NodeId(follower), ok);
                        self.record("snapshot-report", &[env.to, follower, u64::from(ok)]);
                    }
                }
                Payload::Snapshot(msg, chunks, members) => {
                    let ok = reachable && self.install(to, env.group, msg, chunks, members);
                    self.send_report(env.group, env.to, env.from, ok);
                }
            }
        }
    }

    /// The outcome of a snapshot transfer from `leader` to `follower`, back to the leader.
    fn send_report(&mut self, group: u64, follower: u64, leader: u64, ok: bool) {
        self.net_seq += 1;
        let delay = 1 + self.rng.below(self.faults.delay_steps_max);
        let env = Envelope { from: follower, to: leader, group, payload: Payload::SnapshotReport { follower, ok } };
        self.net.insert((self.now + delay, self.net_seq), env);
    }

    /// Installs a snapshot on node `to` as the peer service does: the store first (durably),
    /// then the message to Raft. Returns whether the transfer succeeded.
    fn install(&mut self, to: usize, group: u64, msg: Message, chunks: Vec<Vec<u8>>, members: Vec<Member>) -> bool {
        let id = self.nodes[to].id;
        let index = msg.get_snapshot().get_metadata().index;
        let live = self.nodes[to].live.as_mut().expect("live");
        if live.driver.status(GroupId(group)).is_none() {
            return false;
        }
        let g = store::GroupId(group);
        match live.store.install_snapshot(g, chunks.into_iter()) {
            Ok(installed) => {
                assert_eq!(installed, index, "node {id} group {group}: installed a snapshot at another index");
                let hash = live.store.hash_kv(g, 0).expect("hash_kv");
                let revision = live.store.current_revision(g);
                if group == DEFAULT_GROUP {
                    // The member list travels with every snapshot; only the default group's
                    // defines it (`Node::adopt_members`).
                    adopt_members(&live.membership, members);
                }
                let want_hash = self.hashes.lock().get(&(group, index)).copied();
                assert_eq!(
                    Some(hash),
                    want_hash,
                    "node {id} group {group}: hash_kv after installing the snapshot at {index} differs from the leader's"
                );
                let want_revision = self.revision_at(group, index);
                assert_eq!(revision, want_revision, "node {id} group {group}: revision after installing at {index}");
                self.nodes[to].groups.get_mut(&group).expect("group").applied = index;
                self.record("install", &[id, group, index]);
            }
            Err(store::Error::SnapshotNotAhead { .. }) => self.record("install-not-ahead", &[id, group, index]),
            Err(e) => panic!("node {id} group {group}: installing the snapshot at {index} failed: {e}"),
        }
        let live = self.nodes[to].live.as_mut().expect("live");
        live.driver.step(GroupId(group), msg);
        true
    }

    fn tick(&mut self) {
        for i in self.live_ids() {
            if self.rng.below(STEPS_PER_TICK) == 0 {
                self.nodes[i].live.as_mut().expect("live").driver.tick();
            }
        }
    }

    fn process(&mut self) {
        for i in self.live_ids() {
            let id = self.nodes[i].id;
            let live = self.nodes[i].live.as_mut().expect("live");
            live.driver.process();
            let sent = std::mem::take(&mut *live.outbox.lock());
            for (group, msg) in sent {
                if msg.from != id {
                    // raft-rs relays a proposal or a read-index request with its original
                    // sender; the peer transport drops those (`PeerTransport::send`).
                    let relay = matches!(msg.get_msg_type(), MessageType::MsgPropose | MessageType::MsgReadIndex);
                    assert!(relay, "node {id} sends a message of another node: {msg:?}");
                    continue;
                }
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    self.send_snapshot(i, group.0, msg);
                    continue;
                }
                if self.rng.per_mille(self.faults.drop_per_mille) || self.net.len() >= NET_MESSAGES_MAX {
                    continue;
                }
                let copies =
                    if msg.get_msg_type() != MessageType::MsgPropose && self.rng.per_mille(self.faults.dup_per_mille) {
                        2
                    } else {
                        1
                    };
                for _ in 0..copies {
                    let mut delay = 1 + self.rng.below(self.faults.delay_steps_max);
                    if self.rng.per_mille(self.faults.long_delay_per_mille) {
                        delay += 10 + self.rng.below(50);
                    }
                    self.net_seq += 1;
                    let env = Envelope { from: id, to: msg.to, group: group.0, payload: Payload::Raft(msg.clone()) };
                    self.net.insert((self.now + delay, self.net_seq), env);
                }
            }
        }
    }

    /// Sends the snapshot pinned for `msg` with its store chunks (the peer transport's
    /// snapshot stream); a missing pin fails the transfer.
    fn send_snapshot(&mut self, i: usize, group: u64, msg: Message) {
        let id = self.nodes[i].id;
        let to = msg.to;
        let token = <[u8; 8]>::try_from(&msg.get_snapshot().data[..]).map(u64::from_le_bytes).unwrap_or(0);
        let live = self.nodes[i].live.as_ref().expect("live");
        let pinned = {
            let mut pinned = live.snapshots.pinned.lock();
            match pinned.get(&(group, to)) {
                Some((t, _)) if *t == token => pinned.remove(&(group, to)).map(|(_, r)| r),
                _ => None,
            }
        };
        let Some(reader) = pinned else {
            self.send_report(group, to, id, false);
            return;
        };
        let chunks: Vec<Vec<u8>> = reader.collect::<Result<_, _>>().expect("snapshot chunks read");
        let members = live.membership.identity.read().members.clone();
        self.record("snapshot", &[id, to, group, msg.get_snapshot().get_metadata().index]);
        let delay = 1 + self.rng.below(self.faults.delay_steps_max);
        self.net_seq += 1;
        let env = Envelope { from: id, to, group, payload: Payload::Snapshot(msg, chunks, members) };
        self.net.insert((self.now + delay, self.net_seq), env);
    }

    /// Adds one entry node `i` applied to the committed log of its group, or checks it
    /// against it.
    fn check_applied(&mut self, i: usize, group: u64, a: Applied) {
        let id = self.nodes[i].id;
        let ng = self.nodes[i].groups.get_mut(&group).expect("group");
        assert_eq!(
            a.index,
            ng.applied + 1,
            "node {id} group {group}: entry {} applied after {} (must be exactly once, in order)",
            a.index,
            ng.applied
        );
        ng.applied = a.index;
        let committed = self.committed.get_mut(&group).expect("group");
        match committed.get(&a.index) {
            Some(c) => {
                assert_eq!(&a, c, "node {id} group {group}: applied another entry at {} than a replica", a.index)
            }
            None => {
                if let Some((p, rid)) = a.proposal {
                    if let Some(first) = self.applied_requests.insert((group, p, rid), a.index) {
                        panic!("group {group}: request {rid} of member {p} applied twice: at {first} and {}", a.index);
                    }
                    let value = format!("v{p}.{rid}");
                    if let Some(w) = self.writes.get_mut(&(group, value)) {
                        w.index = Some(a.index);
                    }
                }
                committed.insert(a.index, a.clone());
            }
        }
        self.record("apply", &[id, group, a.index, a.term, a.data_hash]);
    }

    /// Checks the answers of node `i`'s waiters against the entries it applied: a waiter is
    /// answered exactly when its own entry applies, with that entry's result.
    fn check_waiters(&mut self, i: usize, applied_now: &[(u64, Applied)]) {
        let id = self.nodes[i].id;
        let now = self.now;
        let mut acked = Vec::new();
        let live = self.nodes[i].live.as_mut().expect("live");
        for (group, a) in applied_now {
            let Some((p, rid)) = a.proposal else { continue };
            if p != id {
                continue;
            }
            let Some(mut w) = live.waiting.remove(&(*group, rid)) else { continue };
            let answer = w.rx.try_recv().unwrap_or_else(|e| {
                panic!("node {id} group {group}: its request {rid} applied at {} but its waiter got {e:?}", a.index)
            });
            match &answer {
                Ok(CommandResponse::Put(r)) => {
                    assert_eq!(
                        r.revision, a.revision,
                        "node {id} group {group}: request {rid} answered another revision"
                    )
                }
                Ok(CommandResponse::LeaseGrant(r)) => {
                    assert_eq!(Some(r.id), w.lease, "node {id} group {group}: request {rid} answered another lease")
                }
                Ok(CommandResponse::LeaseRevoke(r)) => {
                    assert_eq!(
                        r.revision, a.revision,
                        "node {id} group {group}: request {rid} answered another revision"
                    )
                }
                Ok(other) => panic!("node {id} group {group}: request {rid} answered {other:?}"),
                Err(_) => {}
            }
            if let (Ok(_), Some((_, value))) = (&answer, &w.put) {
                acked.push((*group, value.clone()));
            }
        }
        for (group, value) in acked {
            if let Some(op) = self.writes.get_mut(&(group, value)) {
                op.acked = Some(now);
            }
        }
        let live = self.nodes[i].live.as_mut().expect("live");
        let mut expired = Vec::new();
        for ((group, rid), w) in live.waiting.iter_mut() {
            match w.rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {}
                other => panic!(
                    "node {id} group {group}: waiter of request {rid} answered ({other:?}) though its own entry did not apply"
                ),
            }
            if w.invoked + WAITER_STEPS_MAX < now {
                expired.push((*group, *rid));
            }
        }
        for (group, rid) in expired {
            // The client gives up (as `Node::propose` on its timeout): the outcome is unknown.
            live.waiting.remove(&(group, rid));
            live.groups.get(group).waiters.remove(rid);
        }
    }

    /// Completes the reads of node `i` whose read index it has applied, and checks each
    /// against the writes acknowledged before it began.
    fn check_reads(&mut self, i: usize) {
        let id = self.nodes[i].id;
        let live = self.nodes[i].live.as_mut().expect("live");
        let mut answers = std::mem::take(&mut *live.read_answers.lock());
        answers.sort_by_key(|(rid, _)| *rid);
        for (rid, r) in answers {
            match r {
                Ok(index) => {
                    if let Some(read) = live.reading.get_mut(&rid) {
                        read.index = Some(index.0);
                    }
                }
                Err(_) => {
                    live.reading.remove(&rid);
                }
            }
        }
        let mut done = Vec::new();
        for (rid, read) in &live.reading {
            let Some(index) = read.index else { continue };
            if live.store.applied_index(store::GroupId(read.group)) < index {
                continue;
            }
            let request = store::RangeRequest { key: read.key.clone().into(), ..Default::default() };
            let resp = live.store.range(store::GroupId(read.group), &request).expect("range");
            let value = resp.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            done.push((*rid, read.group, read.key.clone(), read.invoked, index, value));
        }
        for (rid, ..) in &done {
            live.reading.remove(rid);
        }
        for (_, group, key, invoked, index, value) in done {
            self.check_read(id, group, &key, invoked, index, value.as_deref());
        }
    }

    /// A read of `key` that began at step `invoked` returned `value`: no write of the key
    /// acknowledged before `invoked` may be newer than the write of `value`.
    fn check_read(&mut self, id: u64, group: u64, key: &str, invoked: u64, index: u64, value: Option<&str>) {
        let read_at = match value {
            Some(v) => {
                let w = self.writes.get(&(group, v.to_string()));
                let w = w.unwrap_or_else(|| panic!("node {id} group {group}: read {key} = {v}, which nobody wrote"));
                w.index.unwrap_or_else(|| panic!("node {id} group {group}: read {v}, which never applied"))
            }
            None => 0,
        };
        for ((g, v), w) in &self.writes {
            if *g != group || self.key_of.get(&(*g, v.clone())).map(String::as_str) != Some(key) {
                continue;
            }
            if let (Some(acked), Some(wi)) = (w.acked, w.index) {
                assert!(
                    acked >= invoked || wi <= read_at,
                    "node {id} group {group}: a read of {key} begun at step {invoked} (read index {index}) returned \
                     {value:?} (index {read_at}), older than {v} (index {wi}) acknowledged at step {acked}"
                );
            }
        }
        self.record("read-done", &[id, group, index, read_at]);
    }

    /// Every invariant, after every step.
    fn check(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(live) = self.nodes[i].live.as_ref() else { continue };
            let id = self.nodes[i].id;
            if group_ids().into_iter().any(|g| live.driver.status(GroupId(g)).is_some_and(|s| s.hibernating)) {
                self.hibernating += 1;
            }
            let events: Vec<Event> = std::mem::take(&mut *live.events.lock());
            let mut applied_now = Vec::new();
            for ev in events {
                match ev {
                    Event::Applied(g, a) => {
                        self.check_applied(i, g, a.clone());
                        applied_now.push((g, a));
                    }
                    Event::Snapshot(g, index) => {
                        let ng = &self.nodes[i].groups[&g];
                        assert!(ng.applied >= index, "node {id} group {g}: Raft restored a snapshot the store lacks");
                    }
                }
            }
            self.check_waiters(i, &applied_now);
            self.check_reads(i);
            let node = &mut self.nodes[i];
            let live = node.live.as_mut().expect("live");
            live.wal.check_invariants();
            for g in group_ids() {
                let Some(st) = live.driver.status(GroupId(g)) else { continue };
                let ng = node.groups.get_mut(&g).expect("group");
                assert!(st.applied <= st.commit, "node {id} group {g}: applied past commit");
                let last_commit = live.last_commit.entry(g).or_default();
                assert!(st.commit.0 >= *last_commit, "node {id} group {g}: commit went back");
                *last_commit = st.commit.0;
                if let Some(gs) = live.wal.group_state(GroupId(g)) {
                    let hs = gs.hard_state.clone();
                    assert!(
                        hs.term >= ng.term,
                        "node {id} group {g}: durable term went back from {} to {} ({gs:?})",
                        ng.term,
                        hs.term
                    );
                    if hs.term == ng.term && ng.vote != 0 {
                        assert_eq!(hs.vote, ng.vote, "node {id} group {g}: voted twice in term {}", hs.term);
                    }
                    ng.term = hs.term;
                    ng.vote = hs.vote;
                }
                let sg = store::GroupId(g);
                assert_eq!(live.store.applied_index(sg), ng.applied, "node {id} group {g}: store applied index");
                // The lessor times exactly the leases the store holds.
                let mut stored: Vec<i64> = live.store.leases(sg).expect("leases").iter().map(|l| l.id).collect();
                stored.sort_unstable();
                let timed = live.groups.get(g).lessor.lease_ids();
                assert_eq!(timed, stored, "node {id} group {g}: lessor timers differ from the store's leases");
                if st.is_leader {
                    let first = *self.leaders.entry((g, st.term.0)).or_insert(id);
                    assert_eq!(first, id, "group {g}: two leaders in term {}: {first} and {id}", st.term);
                }
            }
            let revisions: Vec<(u64, u64, i64)> = group_ids()
                .into_iter()
                .map(|g| (g, node.groups[&g].applied, live.store.current_revision(store::GroupId(g))))
                .collect();
            for (g, index, revision) in revisions {
                assert_eq!(revision, self.revision_at(g, index), "node {id} group {g}: store revision at {index}");
            }
        }
        self.membership();
    }

    /// The membership plan, one step at a time on the default group's leader, and tenant
    /// groups following the cluster's membership on their leaders.
    fn membership(&mut self) {
        let Some(l) = self.leader(DEFAULT_GROUP) else { return };
        let identity = self.nodes[l].live.as_ref().expect("live").membership.identity.read().clone();
        let spare = self.nodes.len() as u64;
        let has = |id: u64| identity.members.iter().find(|m| m.id == id).cloned();
        // The leader's list tells which change applied last; the plan moves on from it.
        let plan = match (has(spare), has(self.victim)) {
            (None, Some(_)) => Plan::AddLearner,
            (Some(m), Some(_)) if m.is_learner => Plan::Promote,
            (Some(_), Some(_)) => Plan::Remove,
            _ => Plan::Done,
        };
        let leader_id = self.nodes[l].id;
        if plan == Plan::Remove && self.plan != Plan::Remove && leader_id != spare && self.rng.per_mille(500) {
            // Often the leader itself: a leader that removes itself must step down (raft-rs
            // leaves that to the driver).
            self.victim = leader_id;
            self.record("victim-leader", &[leader_id]);
        }
        if plan != self.plan {
            self.record("plan", &[plan as u64]);
            self.plan = plan;
        }
        let spare_i = spare as usize - 1;
        if plan != Plan::AddLearner && !self.nodes[spare_i].started {
            // The spare joins with the member list it was added to.
            let joining = Identity { member_id: spare, joined: true, ..identity.clone() };
            self.start_node(spare_i, Some(joining));
        }
        let victim_i = self.victim as usize - 1;
        if plan == Plan::Done && self.retire_at.is_none() {
            // The removed member runs on a while (a real one stops once it learns of its
            // removal), a leader among them: it must step down, not go on leading.
            self.retire_at = Some(self.now + 20 + self.rng.below(60));
        }
        if self.retire_at.is_some_and(|at| at <= self.now) && !self.nodes[victim_i].retired {
            self.nodes[victim_i].retired = true;
            if self.nodes[victim_i].live.is_some() {
                self.crash(victim_i);
            }
            self.record("retired", &[self.victim]);
        }
        if self.now >= self.plan_at && plan != Plan::Done {
            self.plan_at = self.now + CONF_RETRY_STEPS;
            let (change_type, m) = match plan {
                Plan::AddLearner => (ConfChangeType::AddLearnerNode, member(spare, true)),
                Plan::Promote => (ConfChangeType::AddNode, member(spare, false)),
                _ => (ConfChangeType::RemoveNode, member(self.victim, false)),
            };
            let node = &mut self.nodes[l];
            let request_id = node.next_request_id;
            node.next_request_id += 1;
            let me = node.id;
            let change = ConfChange {
                change_type,
                node_id: m.id,
                context: ConfContext { proposer: me, request_id, member: m }.encode(),
                ..Default::default()
            };
            let live = node.live.as_mut().expect("live");
            if live.driver.propose_conf_change(GroupId(DEFAULT_GROUP), change).is_ok() {
                self.record("conf-change", &[me, plan as u64]);
            }
        }
        // Tenant groups follow the cluster's membership (`Tenants::reconcile`).
        for g in group_ids().into_iter().filter(|g| *g != DEFAULT_GROUP) {
            let Some(l) = self.leader(g) else { continue };
            let live = self.nodes[l].live.as_mut().expect("live");
            let identity = live.membership.identity.read().clone();
            let voters = identity.voter_ids();
            let learners: Vec<u64> = identity.members.iter().filter(|m| m.is_learner).map(|m| m.id).collect();
            let st = live.driver.status(GroupId(g)).expect("leader has the group");
            if let Some(change) = membership_step(&st, &voters, &learners) {
                if self.now.is_multiple_of(10) {
                    let _ = live.driver.propose_conf_change(GroupId(g), change);
                }
            }
        }
    }

    fn step(&mut self, workload: bool) {
        self.now += 1;
        STEP.with(|s| s.set(self.now));
        self.faults();
        self.restart_due();
        // With hibernation on, clients pause for the second half of every
        // `QUIET_CYCLE_STEPS`, so groups go idle, sleep, and are woken by the next request.
        let quiet = self.hibernate_after_ticks != 0 && self.now % QUIET_CYCLE_STEPS >= QUIET_CYCLE_STEPS / 2;
        if workload && !quiet {
            self.workload();
        }
        self.deliver();
        self.tick();
        self.process();
        self.check();
    }

    /// The nodes that should hold `group` now: the members of the leader's configuration.
    fn converged(&self) -> bool {
        let Some(l) = self.leader(DEFAULT_GROUP) else { return false };
        let identity = self.nodes[l].live.as_ref().expect("live").membership.identity.read().clone();
        let ids: Vec<u64> = identity.members.iter().map(|m| m.id).collect();
        for g in group_ids() {
            let Some(gl) = self.leader(g) else { return false };
            let ls = self.status(gl, g).expect("leader status");
            let mut members: Vec<u64> = ls.voters.iter().chain(ls.learners.iter()).map(|n| n.0).collect();
            members.sort_unstable();
            let mut want = ids.clone();
            want.sort_unstable();
            if members != want || ls.commit != ls.last_index {
                return false;
            }
            for &m in &members {
                let Some(s) = self.status(m as usize - 1, g) else { return false };
                if s.leader != ls.leader || s.applied != ls.last_index || s.last_index != ls.last_index {
                    return false;
                }
            }
        }
        ids.iter().all(|m| {
            self.nodes[*m as usize - 1]
                .live
                .as_ref()
                .is_some_and(|x| x.membership.identity.read().members == identity.members)
        })
    }

    /// Heals everything, restarts every member, waits for convergence, then compares the
    /// replicas.
    fn converge(&mut self) {
        self.faults = Faults::healed();
        self.side = vec![0; self.nodes.len()];
        for n in &mut self.nodes {
            n.restart_at = n.restart_at.min(self.now);
        }
        let deadline = self.now + CONVERGE_STEPS_MAX;
        while !self.converged() {
            assert!(self.now < deadline, "no convergence within {CONVERGE_STEPS_MAX} steps after healing");
            self.step(false);
        }
        for g in group_ids() {
            let l = self.leader(g).expect("converged");
            let ls = self.status(l, g).expect("leader status");
            let hash0 = self.nodes[l].live.as_ref().expect("live").store.hash_kv(store::GroupId(g), 0).expect("hash");
            for m in ls.voters.iter().chain(ls.learners.iter()) {
                let n = &self.nodes[m.0 as usize - 1];
                let hash = n.live.as_ref().expect("live").store.hash_kv(store::GroupId(g), 0).expect("hash_kv");
                assert_eq!(hash, hash0, "group {g}: node {} hash_kv differs from the leader's", n.id);
            }
            self.record("end", &[g, ls.last_index.0, u64::from(hash0.0)]);
        }
    }
}

/// Takes the member list that came with a snapshot, keeping this member's own name and
/// client URLs where the list lacks them (what `Node::adopt_members` does).
fn adopt_members(membership: &Membership, mut members: Vec<Member>) {
    membership.update(|identity| {
        if let Some(own) = identity.me().cloned() {
            for m in members.iter_mut().filter(|m| m.id == own.id) {
                if m.name.is_empty() {
                    m.name = own.name.clone();
                }
            }
        }
        identity.members = members;
    });
}

/// Runs one seed for `steps` steps plus convergence; returns the trace digest and the
/// number of entries committed in all groups.
fn run_seed(seed: u64, steps: u64) -> (u64, usize) {
    let (trace, entries, _) = run_seed_counting(seed, steps);
    (trace, entries)
}

/// `run_seed`, with how often each traced event happened.
fn run_seed_counting(seed: u64, steps: u64) -> (u64, usize, BTreeMap<&'static str, u64>) {
    let node_count = if seed.is_multiple_of(2) { 3 } else { 5 };
    let mut sim = Sim::new(seed, node_count);
    for _ in 0..steps {
        sim.step(true);
    }
    sim.converge();
    let entries: usize = sim.committed.values().map(BTreeMap::len).sum();
    if std::env::var_os("PLINTH_SIM_VERBOSE").is_some() {
        eprintln!(
            "seed {seed}: {node_count} nodes, {} steps, {entries} entries, plan {:?}, events {:?}, \
             hibernate_after_ticks {}, checks with a group asleep {}",
            sim.now, sim.plan, sim.counts, sim.hibernate_after_ticks, sim.hibernating,
        );
    }
    (sim.trace, entries, sim.counts)
}

/// Runs `seed`, turning a failure into a message naming the seed and the replay command.
fn run_reporting(seed: u64, steps: u64) -> (u64, usize) {
    match catch_unwind(AssertUnwindSafe(|| run_seed(seed, steps))) {
        Ok(r) => r,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic)");
            let step = STEP.with(Cell::get);
            panic!(
                "node simulation seed {seed} failed at step {step}: {msg}\n\
                 replay: PLINTH_SIM_SEED={seed} scripts/cargo test -p grpc-api --test node_sim"
            );
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number")))
}

/// Runs the seeds of one parity (even: 3 nodes, odd: 5 nodes).
fn run_seeds(parity: u64) {
    let seeds: Vec<u64> = match env_u64("PLINTH_SIM_SEED") {
        Some(s) => vec![s].into_iter().filter(|s| s % 2 == parity).collect(),
        None => (0..env_u64("PLINTH_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).map(|k| 2 * k + parity).collect(),
    };
    let mut entries = 0;
    for &seed in &seeds {
        entries += run_reporting(seed, STEPS).1;
    }
    assert!(seeds.is_empty() || entries > seeds.len(), "the workload committed almost nothing");
}

#[test]
fn three_members() {
    run_seeds(0);
}

#[test]
fn five_members() {
    run_seeds(1);
}

/// Seeds that remove the leader of the default group while it leads (a run is a function of
/// its seed, so these replay exactly): before the driver stepped such a leader down, raft-rs
/// panicked on its next persisted entries.
const LEADER_REMOVAL_SEEDS: [u64; 4] = [1, 3, 4, 6];

#[test]
fn removing_the_leader() {
    for seed in LEADER_REMOVAL_SEEDS {
        let counts = match catch_unwind(AssertUnwindSafe(|| run_seed_counting(seed, STEPS))) {
            Ok((_, _, counts)) => counts,
            Err(_) => {
                run_reporting(seed, STEPS);
                unreachable!("run_reporting fails as run_seed_counting did");
            }
        };
        assert!(counts.contains_key("victim-leader"), "seed {seed} no longer removes the leader; pick another");
    }
}

/// A seed whose campaign fault hits a member that had been removed from a group: raft-rs's
/// `campaign` does not check that the node is a voter, and the node won, became leader and
/// panicked (no progress of its own) until the driver refused such campaigns.
const NON_VOTER_CAMPAIGN_SEED: u64 = 47;

#[test]
fn campaign_of_a_non_voter() {
    run_reporting(NON_VOTER_CAMPAIGN_SEED, STEPS);
}

#[test]
fn same_seed_same_trace() {
    for seed in [2, 3] {
        let a = run_reporting(seed, 300);
        let b = run_reporting(seed, 300);
        assert_eq!(a, b, "seed {seed}: two runs differ");
        assert!(a.1 > 0, "seed {seed}: nothing committed");
    }
}
