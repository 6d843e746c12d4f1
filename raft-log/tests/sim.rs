//! Deterministic simulation of a Plinth cluster in one process, driven by one `u64` seed.
//!
//! Each node is a real [`ManualDriver`] over a real [`Wal`] and a real `store::Store`
//! (RocksDB) in its own directory. Everything else is simulated and seeded:
//!
//! - **clock**: a step is one unit of simulated time; each live node ticks with a fixed
//!   chance per step, so clocks drift apart (election timeouts are fixed in ticks:
//!   `election_ticks_max = election_ticks + 1`, the randomness comes from the skew);
//! - **network**: every message sent goes through one queue ordered by delivery step;
//!   messages are dropped, delayed, delayed a lot (which reorders them) and duplicated
//!   (all but client proposals, which a real transport does not duplicate either);
//!   partitions cut off a random minority, the leader alone, the leader with a minority,
//!   or split the cluster so that no side has a quorum; they heal later;
//! - **crashes**: a node is dropped without a clean shutdown; its last WAL segment may
//!   lose the trailing frames the driver wrote without an fsync (commit-index updates, as
//!   a machine crash would), and often gets a torn tail (random bytes, zeros, a prefix of the last frame, or a copy of
//!   the last frame with a flipped byte: what a write in flight at the crash leaves behind;
//!   fsynced bytes are never cut), and it is restarted later from its directories. Its store
//!   closes as in a machine crash (`StoreConfig::flush_at_close` off): RocksDB's WAL is off, so
//!   whatever it applied after its last flush is lost and Raft replays it; stores flush at
//!   random steps;
//! - **disk faults**: a node's WAL hits a short write (a prefix of a frame reaches the file,
//!   then the write fails) or a failed fdatasync, injected through [`WalFaults`]. The WAL
//!   fails and panics; the node is down from there (the panic is caught) and crashes, and
//!   any suffix of what no fdatasync covered may be lost, the torn frame included (or the
//!   failed frame may survive whole: only the committed part of the log must come back
//!   unchanged, since an unacknowledged frame may replace an uncommitted suffix);
//! - **clients**: puts of unique values to random nodes at random steps; on each node two
//!   watchers, one reading after every step and one that stalls for a while and reads a
//!   few responses per step. Half the nodes have a watch stream buffer of a few responses,
//!   so their watchers fall behind, are caught up by the store's background thread, and,
//!   when stalled long enough, are canceled as stuck and re-watch from their next revision
//!   as an etcd client does.
//!
//! After every step the simulation checks: at most one leader per term; a node's durable
//! term never decreases and its vote never changes within a term (across crashes too);
//! commit, applied index and store revision never decrease (between crashes), and after a
//! restart the store's applied index is at or after its last flush (it may go back that
//! far, and the re-applied entries must give the same revisions as before) and the store
//! is exactly at the revision it had reached at that index; a WAL that failed never lets
//! the driver go on;
//! entries reach the state machine exactly once and in order; every replica applies the
//! same entry (index, term, payload) and reaches the same revision at each index, and no
//! proposal is applied twice; every applied entry is in the durable log of a quorum (so a
//! committed entry is never lost, torn tails and failed writes included; so nothing that was
//! not durably synced was acknowledged or applied); each watcher delivers every revision
//! in order, without gaps or repeats, with the applied value (a watcher with a large buffer
//! is at the store's revision after every step). At the end the network heals and every
//! node restarts; all must converge on the same log, the same applied sequence and the same
//! `hash_kv`, and every watcher must deliver up to the store's revision (within
//! [`WATCH_DRAIN_TIMEOUT`]: the catch-up runs on the wall clock, and stays out of the trace).
//!
//! The log is never compacted here (so never past a store's flushed index).
//!
//! Hibernation: a third of the seeds run without it, a third with groups sleeping after twice
//! the election timeout, a third after 3 idle ticks (`hibernate_after_ticks`), so sleeping,
//! waking, lost and reordered notices meet every fault above under the same checks.
//!
//! Seeds: `PLINTH_SIM_SEEDS=<count>` (default [`DEFAULT_SEEDS`] per test; even seeds run
//! 3 nodes, odd seeds 5). A failure names its seed; replay it alone with
//! `PLINTH_SIM_SEED=<n> scripts/cargo test -p raft-log --test sim`. A run is a function
//! of the seed only: `same_seed_same_trace` checks that two runs give one trace digest.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use raft::eraftpb::{Message, MessageType};
use raft_log::{
    scan_frames, CommittedEntry, DriverConfig, GroupId, LogIndex, ManualDriver, NodeId, Record, ScannedFrame,
    StateMachine, Transport, Wal, WalConfig, WalFaults,
};
use store::{
    Command, CommandBody, CommandResponse, Message as _, PutRequest, Store, StoreConfig, WatchSpec, WatchStream,
};

/// Seeds run per test by default (each of the 3-node and 5-node tests).
const DEFAULT_SEEDS: u64 = 100;
/// Steps of faults and workload per seed.
const STEPS: u64 = 2000;
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
/// Keys the workload writes (values are unique per proposal).
const KEYS: u64 = 8;
/// Largest watch stream buffer of a node drawn to have a tiny one (see `watch_buffer`).
const TINY_WATCH_BUFFER_MAX: u64 = 4;
/// Longest a slow watcher stops reading, in steps.
const WATCH_STALL_STEPS_MAX: u64 = 100;
/// Wall-clock bound on the background watch catch-up once the cluster has converged.
const WATCH_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

const GROUP: GroupId = GroupId(1);
const STORE_GROUP: store::GroupId = store::GroupId(1);

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

/// One entry as a state machine applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    index: u64,
    term: u64,
    data_hash: u64,
    /// The store's revision after applying the entry.
    revision: i64,
    /// The proposal's request id and value, for puts (none for a leader's no-op).
    put: Option<(u64, Bytes)>,
}

/// Applies committed entries to the node's store and reports what it applied.
struct SimSm {
    node: u64,
    store: Store,
    last_index: u64,
    revision: i64,
    out: Arc<Mutex<Vec<Applied>>>,
}

impl StateMachine for SimSm {
    fn applied_index(&self, _group: GroupId) -> LogIndex {
        LogIndex(self.store.applied_index(STORE_GROUP))
    }

    fn apply(&mut self, _group: GroupId, entries: Vec<CommittedEntry>) {
        let batch: Vec<(u64, &[u8])> = entries.iter().map(|e| (e.index.0, e.data.as_ref())).collect();
        let results = self.store.apply(STORE_GROUP, &batch).expect("store apply failed (I/O)");
        let mut out = self.out.lock();
        for (e, r) in entries.iter().zip(results) {
            assert_eq!(
                e.index.0,
                self.last_index + 1,
                "node {}: entry {} handed to the state machine after {} (must be exactly once, in order)",
                self.node,
                e.index,
                self.last_index
            );
            self.last_index = e.index.0;
            let put = (!e.data.is_empty()).then(|| {
                let cmd = Command::decode_entry(&e.data).expect("sim entries decode");
                match cmd.body {
                    Some(CommandBody::Put(p)) => (cmd.request_id, p.value),
                    _ => panic!("node {}: entry {} is not a put", self.node, e.index),
                }
            });
            match r {
                Ok(CommandResponse::Put(p)) => {
                    assert_eq!(p.revision, self.revision + 1, "node {}: a put is one revision", self.node);
                    self.revision = p.revision;
                }
                Ok(CommandResponse::Noop) => assert!(put.is_none()),
                other => panic!("node {}: entry {} gave {other:?}", self.node, e.index),
            }
            out.push(Applied {
                index: e.index.0,
                term: e.term.0,
                data_hash: fnv(FNV_START, &e.data),
                revision: self.revision,
                put,
            });
        }
    }
}

/// A node's transport: messages wait in its outbox until the simulation routes them.
struct Outbox(Arc<Mutex<Vec<(GroupId, Message)>>>);

impl Transport for Outbox {
    fn send(&self, group: GroupId, msgs: Vec<Message>) {
        self.0.lock().extend(msgs.into_iter().map(|m| (group, m)));
    }
}

/// A disk fault the simulation arms for one `process` call of a node.
#[derive(Clone, Copy, Debug)]
enum DiskFault {
    /// The next frame write reaches the file only up to a prefix (`cut % len` bytes).
    ShortWrite { cut: u64 },
    /// The next fdatasync fails.
    SyncError,
}

#[derive(Debug, Default)]
struct DiskState {
    armed: Option<DiskFault>,
    /// Whether an armed fault fired: the WAL has failed.
    fired: bool,
    /// Per segment, the length its last successful fdatasync made durable.
    synced_bytes: BTreeMap<u64, u64>,
}

/// A node's WAL fault hook: fires the armed fault, and tracks what is durable so that the
/// crash after a failure can drop exactly the bytes no fdatasync covered.
#[derive(Debug, Default)]
struct Disk(Mutex<DiskState>);

impl WalFaults for Disk {
    fn short_write(&self, seq: u64, offset: u64, len: usize) -> Option<usize> {
        let mut st = self.0.lock();
        // The first frame written to a segment follows its checkpoint, which was synced
        // when the segment was created.
        st.synced_bytes.entry(seq).or_insert(offset);
        match st.armed {
            Some(DiskFault::ShortWrite { cut }) => {
                st.armed = None;
                st.fired = true;
                Some((cut % len as u64) as usize)
            }
            _ => None,
        }
    }

    fn sync_fails(&self, seq: u64, len: u64) -> bool {
        let mut st = self.0.lock();
        if let Some(DiskFault::SyncError) = st.armed {
            st.armed = None;
            st.fired = true;
            return true;
        }
        st.synced_bytes.insert(seq, len);
        false
    }
}

/// A watch stream and the next revision it must deliver. Responses may hold several
/// revisions (catch-up from the `events` column family), each revision once, in order.
struct Watcher {
    stream: WatchStream,
    next: i64,
    /// A re-watch was sent; its `created` response is due.
    rewatched: bool,
    /// Reads nothing before this step (a slow client).
    stalled_until: u64,
    /// Re-watches after a cancel as stuck, and responses holding several revisions (caught
    /// up from the `events` column family): wall-clock dependent, so counted off the trace.
    rewatches: u64,
    catch_ups: u64,
}

impl Watcher {
    fn new(store: &Store, node: u64, revision: i64) -> Watcher {
        let stream = store.watch_stream(STORE_GROUP);
        stream.watch(watch_spec(0));
        let created = stream.try_recv().expect("a watch is created at once");
        assert!(created.created && created.revision == revision, "node {node}: watch created at {created:?}");
        Watcher { stream, next: revision + 1, rewatched: false, stalled_until: 0, rewatches: 0, catch_ups: 0 }
    }

    /// Checks one response against what `node` applied: every event is the put applied at
    /// the next revision. A watcher canceled for being slow is re-created from its next
    /// revision, as an etcd client does; nothing else may cancel it (the store is never
    /// compacted here).
    fn check(&mut self, node: &Node, ev: store::WatchEvent) {
        let id = node.id;
        if ev.created {
            assert!(self.rewatched && !ev.canceled, "node {id}: unexpected watch response {ev:?}");
            self.rewatched = false;
            return;
        }
        if ev.canceled {
            assert!(ev.slow && ev.compact_revision == 0, "node {id}: watch canceled: {ev:?}");
            self.stream.watch(watch_spec(self.next));
            self.rewatched = true;
            self.rewatches += 1;
            return;
        }
        assert!(!self.rewatched, "node {id}: an event before the re-watch was created: {ev:?}");
        assert!(!ev.events.is_empty(), "node {id}: unexpected progress response {ev:?}");
        if ev.events.len() > 1 {
            self.catch_ups += 1;
        }
        for e in &ev.events {
            let kv = &e.kv;
            assert_eq!(kv.mod_revision, self.next, "node {id}: watch skipped or repeated a revision");
            let at = node.applied.iter().rev().find(|a| a.revision == kv.mod_revision && a.put.is_some());
            let value = at.and_then(|a| a.put.as_ref()).map(|p| &p.1);
            assert_eq!(value, Some(&kv.value), "node {id}: watch value at revision {}", kv.mod_revision);
            self.next += 1;
        }
        assert!(ev.revision >= self.next - 1, "node {id}: response revision {} behind its events", ev.revision);
    }
}

fn watch_spec(start_revision: i64) -> WatchSpec {
    WatchSpec { key: "k".into(), range_end: "l".into(), start_revision, ..WatchSpec::default() }
}

/// A running node. Fields drop in order: the driver (with its state machine) first.
struct Live {
    driver: ManualDriver,
    /// Reads everything after every step.
    watch: Watcher,
    /// Stops reading for a while, then reads a few responses at a time.
    slow_watch: Watcher,
    wal: Arc<Wal>,
    disk: Arc<Disk>,
    store: Store,
    applied_rx: Arc<Mutex<Vec<Applied>>>,
    outbox: Arc<Mutex<Vec<(GroupId, Message)>>>,
    last_commit: u64,
    last_revision: i64,
    /// The store's applied index when this life started.
    skip_through: u64,
}

struct Node {
    id: u64,
    dir: PathBuf,
    live: Option<Live>,
    restart_at: u64,
    /// Everything this node applied, over all its lives (cut back to the store's applied
    /// index at a restart).
    applied: Vec<Applied>,
    /// Durable term and vote, as last seen.
    term: u64,
    vote: u64,
    /// The node's durable log holds the entries `1..=matched_to` of the committed log.
    matched_to: u64,
    /// Terms of the durable log (`1..`) when the node crashed; checked against it at restart.
    frozen_log: Vec<u64>,
    /// How much of `frozen_log` must come back unchanged (all of it, unless the WAL failed).
    frozen_kept: usize,
    /// The applied index the store's last flush covers: a crash never takes the store
    /// back below it.
    flushed_to: u64,
    /// The store's watch stream buffer: large (watchers stay synced, checked exactly
    /// after every step) or tiny (watchers fall behind and catch up in the background).
    watch_buffer: usize,
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
    campaign_per_mille: u64,
    /// A live node's store flushes (making its applies survive a crash).
    flush_per_mille: u64,
    /// A node's next `process` hits a short write or a failed fdatasync in its WAL.
    disk_fault_per_mille: u64,
    /// A slow watcher stops reading for a while.
    watch_stall_per_mille: u64,
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
            propose_per_mille: 100 + rng.below(400),
            campaign_per_mille: f(rng, 3),
            flush_per_mille: rng.below(50),
            disk_fault_per_mille: f(rng, 3),
            watch_stall_per_mille: rng.below(30),
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
            campaign_per_mille: 0,
            flush_per_mille: 0,
            disk_fault_per_mille: 0,
            watch_stall_per_mille: 0,
        }
    }
}

struct Envelope {
    /// The node that sent it (a relayed proposal keeps its proposer in `msg.from`).
    from: u64,
    to: u64,
    group: GroupId,
    msg: Message,
}

struct Sim {
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    voters: Vec<NodeId>,
    faults: Faults,
    /// Messages by (delivery step, sequence number).
    net: BTreeMap<(u64, u64), Envelope>,
    net_seq: u64,
    /// Partition side of each node (index = id - 1); all equal = healed.
    side: Vec<u8>,
    /// Every leader ever seen, by term.
    leaders: BTreeMap<u64, u64>,
    /// The committed log as applied anywhere (position i = index i + 1).
    committed: Vec<Applied>,
    /// Request ids applied, with their index.
    applied_requests: BTreeMap<u64, u64>,
    next_request_id: u64,
    trace: u64,
    /// How often each traced event happened (for `PLINTH_SIM_VERBOSE`).
    counts: BTreeMap<&'static str, u64>,
    /// Counts of wall-clock dependent events, kept off the trace.
    untraced: BTreeMap<&'static str, u64>,
    /// The drivers' `hibernate_after_ticks` in this run (see `hibernate_after_ticks`).
    hibernate_after_ticks: usize,
    _dir: tempfile::TempDir,
}

/// Hibernation by seed, so that every node count runs without it, with the default-like
/// setting (twice the election timeout) and with an eager one (groups sleep after 3 idle
/// ticks, so sleeps and wakes interleave with every fault).
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

fn store_config(watch_buffer: usize) -> StoreConfig {
    StoreConfig {
        block_cache_bytes: 1 << 20,
        memtable_bytes: 1 << 20,
        // Large: larger than anything a step applies, so watchers stay synced and the
        // store's background catch-up thread (whose timing is not simulated) never runs.
        // Tiny: watchers fall behind and that thread catches them up; what they receive
        // is checked, never its timing, which stays out of the trace.
        watch_stream_buffer: watch_buffer,
        watch_sync_interval: Duration::from_millis(5),
        // Short, so that stalled watchers are also canceled as stuck (and re-watch).
        watch_stuck_cancel_after: Duration::from_millis(5),
        // A store is only ever closed by a crash here.
        flush_at_close: false,
        ..StoreConfig::default()
    }
}

/// Whether watchers of a node with this buffer must be exactly at the store's revision
/// after every step.
fn watch_stays_synced(watch_buffer: usize) -> bool {
    watch_buffer > TINY_WATCH_BUFFER_MAX as usize
}

fn wal_config(dir: &Path) -> WalConfig {
    // Small segments, so rotation and multi-segment recovery happen in every run.
    WalConfig { segment_bytes_max: 16 << 10, ..WalConfig::new(dir) }
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
/// with the term and vote of the one before): the driver writes these without waiting
/// for an fsync, so a machine crash may lose them. `None` if the last frame is not one.
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

/// Terms of the durable log `1..=last_index` of `wal`.
fn log_terms(wal: &Wal) -> Vec<u64> {
    let Some(st) = wal.group_state(GROUP) else { return Vec::new() };
    assert_eq!(st.first_index.0, 1, "the simulation never compacts the log");
    (1..=st.last_index.0).map(|i| wal.term(GROUP, LogIndex(i)).expect("term of a live entry").0).collect()
}

impl Sim {
    fn new(seed: u64, node_count: u64) -> Sim {
        let mut rng = Rng(seed);
        let faults = Faults::draw(&mut rng);
        let dir = sim_dir();
        let nodes = (1..=node_count)
            .map(|id| Node {
                id,
                dir: dir.path().join(format!("n{id}")),
                live: None,
                restart_at: 0,
                applied: Vec::new(),
                term: 0,
                vote: 0,
                matched_to: 0,
                frozen_log: Vec::new(),
                frozen_kept: 0,
                flushed_to: 0,
                watch_buffer: if rng.per_mille(500) { 1 + rng.below(TINY_WATCH_BUFFER_MAX) as usize } else { 1 << 16 },
            })
            .collect();
        let mut sim = Sim {
            rng,
            now: 0,
            nodes,
            voters: (1..=node_count).map(NodeId).collect(),
            faults,
            net: BTreeMap::new(),
            net_seq: 0,
            side: vec![0; node_count as usize],
            leaders: BTreeMap::new(),
            committed: Vec::new(),
            applied_requests: BTreeMap::new(),
            next_request_id: 1,
            trace: FNV_START,
            counts: BTreeMap::new(),
            untraced: BTreeMap::new(),
            hibernate_after_ticks: hibernate_after_ticks(seed),
            _dir: dir,
        };
        for i in 0..sim.nodes.len() {
            sim.start_node(i);
        }
        sim
    }

    fn record(&mut self, what: &'static str, values: &[u64]) {
        *self.counts.entry(what).or_default() += 1;
        self.trace = fnv(self.trace, what.as_bytes());
        for v in values {
            self.trace = fnv(self.trace, &v.to_le_bytes());
        }
    }

    fn quorum(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    /// Opens (or reopens after a crash) node `i` from its directories.
    fn start_node(&mut self, i: usize) {
        let voters = self.voters.clone();
        let node = &mut self.nodes[i];
        let id = node.id;
        let disk = Arc::new(Disk::default());
        let faults: Arc<dyn WalFaults> = disk.clone();
        let wal_cfg = WalConfig { faults: Some(faults), ..wal_config(&node.dir.join("wal")) };
        let wal = Arc::new(Wal::open(wal_cfg).expect("WAL recovers"));
        let store = Store::open(&node.dir.join("store"), store_config(node.watch_buffer)).expect("store opens");

        // The store is at the applied index of its last flush or later (a crash loses what
        // was applied after it; Raft replays that from the log); what it applied up to
        // there must be exactly what this node applied then, at the same revision.
        let store_applied = store.applied_index(STORE_GROUP);
        assert!(
            store_applied <= node.applied.len() as u64,
            "node {id}: store applied index {store_applied} is past what was applied ({})",
            node.applied.len()
        );
        assert!(
            store_applied >= node.flushed_to,
            "node {id}: store applied index {store_applied} is behind its last flush ({})",
            node.flushed_to
        );
        node.flushed_to = store_applied;
        if store_applied < node.applied.len() as u64 {
            // Lost with the memtables; Raft replays them.
            let lost = node.applied.len() as u64 - store_applied;
            self.record("store-went-back", &[id, lost]);
        }
        let node = &mut self.nodes[i];
        node.applied.truncate(store_applied as usize);
        let revision = store.current_revision(STORE_GROUP);
        let expected_revision = node.applied.last().map_or(1, |a| a.revision);
        assert_eq!(revision, expected_revision, "node {id}: store revision after restart at index {store_applied}");

        // Durable Raft state survives the crash: term, vote, and every entry that was durable.
        let hs = wal.group_state(GROUP).map(|s| s.hard_state).unwrap_or_default();
        assert!(hs.term >= node.term, "node {id}: durable term went back from {} to {}", node.term, hs.term);
        if hs.term == node.term && node.vote != 0 {
            assert_eq!(hs.vote, node.vote, "node {id}: vote of term {} changed across a crash", hs.term);
        }
        let recovered = log_terms(&wal);
        let frozen = std::mem::take(&mut node.frozen_log);
        let kept = node.frozen_kept;
        assert!(
            recovered.len() >= kept && recovered[..kept] == frozen[..kept],
            "node {id}: recovery lost or changed durable entries (had {} entries, {kept} to keep, recovered {})",
            frozen.len(),
            recovered.len()
        );

        let watch = Watcher::new(&store, id, revision);
        let slow_watch = Watcher::new(&store, id, revision);

        let applied_rx = Arc::new(Mutex::new(Vec::new()));
        let outbox = Arc::new(Mutex::new(Vec::new()));
        let sm = SimSm { node: id, store: store.clone(), last_index: store_applied, revision, out: applied_rx.clone() };
        let cfg = DriverConfig {
            node_id: NodeId(id),
            election_ticks: ELECTION_TICKS,
            election_ticks_max: ELECTION_TICKS + 1,
            hibernate_after_ticks: self.hibernate_after_ticks,
            ..DriverConfig::default()
        };
        let mut driver =
            ManualDriver::new(cfg, wal.clone(), Box::new(sm), Arc::new(Outbox(outbox.clone()))).expect("driver starts");
        driver.create_group(GROUP, &voters).expect("group created (or recovered)");
        node.live = Some(Live {
            driver,
            watch,
            slow_watch,
            wal,
            disk,
            store,
            applied_rx,
            outbox,
            last_commit: 0,
            last_revision: revision,
            skip_through: store_applied,
        });
        self.record("start", &[id, store_applied]);
    }

    /// Drops node `i` without shutting anything down, as a machine crash would: its store
    /// loses what it applied after its last flush, its WAL maybe loses its unsynced tail
    /// or gets a torn one.
    fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let live = node.live.take().expect("crash a live node");
        node.frozen_log = log_terms(&live.wal);
        if live.disk.0.lock().fired {
            // The frame whose write or fdatasync failed may be on disk in full: it was never
            // acknowledged, but it may legitimately have replaced an uncommitted suffix of
            // the log (entries of an older term). Only the committed prefix (as of the last
            // completed Ready) must come back unchanged.
            let commit = live.driver.status(GROUP).map_or(0, |s| s.commit.0);
            node.frozen_kept = node.frozen_log.len().min(commit as usize);
        } else {
            node.frozen_kept = node.frozen_log.len();
        }
        for w in [&live.watch, &live.slow_watch] {
            *self.untraced.entry("rewatch").or_default() += w.rewatches;
            *self.untraced.entry("watch-catch-up").or_default() += w.catch_ups;
        }
        let disk = live.disk.clone();
        // Dropping waits for the WAL writer to finish what was submitted: as in a process
        // crash, written bytes stay in the page cache and reach the file. (A failed WAL
        // writes nothing more.)
        drop(live);
        let id = node.id;
        let wal_dir = node.dir.join("wal");
        let restart_in = 20 + self.rng.below(200);
        self.nodes[i].restart_at = self.now + restart_in;
        let lose_unsynced = self.rng.per_mille(self.faults.lose_unsynced_per_mille);
        let torn = self.rng.per_mille(self.faults.torn_per_mille);
        let damage = self.damage_tail(&wal_dir, &disk, lose_unsynced, torn);
        self.record("crash", &[id, restart_in, damage]);
        if damage >= 10 {
            self.record("unsynced-lost", &[id]);
        }
    }

    /// What a machine crash can do to the end of the last segment: drop the frames written
    /// without an fsync (`lose_unsynced`), and leave behind part of a write in flight
    /// (`torn`). Acknowledged (fsynced) frames are never touched. After a WAL failure (a
    /// short write or a failed fdatasync), any suffix of what no fdatasync covered may be
    /// lost, a torn frame included. Returns a code of the damage done, for the trace.
    fn damage_tail(&mut self, wal_dir: &Path, disk: &Disk, lose_unsynced: bool, torn: bool) -> u64 {
        let segs = segments(wal_dir);
        let last = segs.last().expect("an opened WAL has a segment");
        let bytes = std::fs::read(last).expect("read segment");
        let seq: u64 = last.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).expect("segment name");
        let scan = scan_frames(seq, &bytes);
        let disk = disk.0.lock();
        let mut end = bytes.len();
        let mut code = 0;
        if disk.fired {
            // Whatever follows the last fdatasync: kept, cut anywhere, or lost entirely.
            let synced = disk.synced_bytes.get(&seq).copied().map_or(bytes.len(), |b| b as usize);
            assert!(synced <= bytes.len(), "segment {seq} is shorter than its synced length");
            if lose_unsynced {
                end = synced + self.rng.below((bytes.len() - synced) as u64 + 1) as usize;
                code = 20;
            }
        } else {
            assert!(scan.bad.is_none(), "a WAL closed in order has no torn frame: {:?}", scan.bad);
            if lose_unsynced {
                if let Some(at) = commit_only_suffix(&scan.frames) {
                    end = at as usize;
                    code = 10;
                }
            }
        }
        let f = std::fs::OpenOptions::new().write(true).open(last).expect("open segment");
        f.set_len(end as u64).expect("cut unsynced frames");
        if !torn {
            return code;
        }
        // The last whole frame before `end` (after a short write, `end` may lie past a
        // torn frame, which is no frame to copy).
        let scanned_end = scan.bad.as_ref().map_or(bytes.len(), |(at, _)| *at as usize);
        let frame_ends: Vec<usize> =
            scan.frames.iter().skip(1).map(|f| f.offset as usize).chain([scanned_end]).collect();
        let last_frame = scan
            .frames
            .iter()
            .zip(frame_ends)
            .rev()
            .find(|(_, frame_end)| *frame_end <= end)
            .map(|(f, frame_end)| &bytes[f.offset as usize..frame_end]);
        let kind = 1 + self.rng.below(4);
        let tail: Vec<u8> = match (kind, last_frame) {
            (2, _) => vec![0; 1 + self.rng.below(4096) as usize],
            (3, Some(f)) if f.len() > 1 => f[..1 + self.rng.below(f.len() as u64 - 1) as usize].to_vec(),
            (4, Some(f)) => {
                let mut copy = f.to_vec();
                let at = self.rng.below(copy.len() as u64) as usize;
                copy[at] ^= 1 << self.rng.below(8);
                copy
            }
            _ => (0..1 + self.rng.below(256)).map(|_| self.rng.next_u64() as u8).collect(),
        };
        f.write_all_at(&tail, end as u64).expect("append torn tail");
        code + kind
    }

    fn live_ids(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].live.is_some()).collect()
    }

    /// The live node that is leader in the highest term, if any.
    fn leader(&self) -> Option<usize> {
        self.live_ids()
            .into_iter()
            .filter_map(|i| {
                let s = self.nodes[i].live.as_ref()?.driver.status(GROUP)?;
                s.is_leader.then_some((s.term, i))
            })
            .max()
            .map(|(_, i)| i)
    }

    fn partition(&mut self) {
        let n = self.nodes.len();
        let minority_max = (n - 1) / 2;
        let kind = self.rng.below(4);
        let mut order: Vec<usize> = (0..n).collect();
        for k in (1..n).rev() {
            let j = self.rng.below(k as u64 + 1) as usize;
            order.swap(k, j);
        }
        if let (1 | 2, Some(l)) = (kind, self.leader()) {
            let at = order.iter().position(|x| *x == l).expect("leader is a node");
            order.swap(0, at);
        }
        self.side = vec![0; n];
        match kind {
            // A random minority, cut off.
            0 => {
                for &x in &order[..1 + self.rng.below(minority_max as u64) as usize] {
                    self.side[x] = 1;
                }
            }
            // The leader alone.
            1 => self.side[order[0]] = 1,
            // The leader with a minority: the majority must elect a new leader.
            2 => {
                for &x in &order[..minority_max] {
                    self.side[x] = 1;
                }
            }
            // No side with a quorum: nothing may commit (3 nodes: 1|1|1, 5 nodes: 2|2|1).
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
            if !live.is_empty() {
                let leader = self.leader();
                let i = match leader {
                    Some(l) if self.rng.per_mille(500) => l,
                    _ => live[self.rng.below(live.len() as u64) as usize],
                };
                self.crash(i);
            }
        }
        if self.rng.per_mille(self.faults.campaign_per_mille) {
            let live = self.live_ids();
            if !live.is_empty() {
                let i = live[self.rng.below(live.len() as u64) as usize];
                self.nodes[i].live.as_mut().expect("live").driver.campaign(GROUP);
                self.record("campaign", &[i as u64]);
            }
        }
        if self.rng.per_mille(self.faults.flush_per_mille) {
            let live = self.live_ids();
            if !live.is_empty() {
                let i = live[self.rng.below(live.len() as u64) as usize];
                self.flush(i);
            }
        }
        if self.rng.per_mille(self.faults.watch_stall_per_mille) {
            let live = self.live_ids();
            if !live.is_empty() {
                let i = live[self.rng.below(live.len() as u64) as usize];
                let steps = 1 + self.rng.below(WATCH_STALL_STEPS_MAX);
                self.nodes[i].live.as_mut().expect("live").slow_watch.stalled_until = self.now + steps;
                self.record("watch-stall", &[i as u64, steps]);
            }
        }
    }

    /// Flushes node `i`'s store: everything it applied survives a crash from now on.
    fn flush(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let live = node.live.as_ref().expect("live");
        let flushed = live.store.flush().expect("store flush");
        let covered = flushed.iter().find(|(g, _)| *g == STORE_GROUP).map_or(0, |(_, index)| *index);
        // Applies run on this thread, so the flush covers every one of them.
        assert_eq!(covered, node.applied.len() as u64, "node {}: the flush covers what was applied", node.id);
        node.flushed_to = covered;
        let id = node.id;
        self.record("flush", &[id, covered]);
    }

    fn restart_due(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].live.is_none() && self.nodes[i].restart_at <= self.now {
                self.start_node(i);
            }
        }
    }

    fn workload(&mut self) {
        if !self.rng.per_mille(self.faults.propose_per_mille) {
            return;
        }
        let live = self.live_ids();
        if live.is_empty() {
            return;
        }
        let i = live[self.rng.below(live.len() as u64) as usize];
        let request_id = self.next_request_id;
        let key = format!("k{}", self.rng.below(KEYS));
        let put = PutRequest { key: key.into(), value: format!("v{request_id}").into(), ..PutRequest::default() };
        let data = Command::new(request_id, CommandBody::Put(put)).encode_to_vec();
        let live = self.nodes[i].live.as_mut().expect("live");
        if live.driver.propose(GROUP, Bytes::from(data)).is_ok() {
            self.next_request_id += 1;
            self.record("propose", &[i as u64, request_id]);
        }
    }

    fn deliver(&mut self) {
        while let Some(entry) = self.net.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let env = entry.remove();
            let (from, to) = (env.from as usize - 1, env.to as usize - 1);
            if self.side[from] != self.side[to] {
                continue;
            }
            let Some(live) = self.nodes[to].live.as_mut() else { continue };
            self.trace = fnv(self.trace, &[env.msg.get_msg_type() as u8, env.from as u8, env.to as u8]);
            live.driver.step(env.group, env.msg);
        }
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
            let fault = self.rng.per_mille(self.faults.disk_fault_per_mille).then(|| {
                if self.rng.per_mille(500) {
                    DiskFault::ShortWrite { cut: self.rng.next_u64() }
                } else {
                    DiskFault::SyncError
                }
            });
            let live = self.nodes[i].live.as_mut().expect("live");
            live.disk.0.lock().armed = fault;
            // A WAL failure panics (on this thread: the sim's writes are inline); the node
            // stops there, and is restarted from its disk later.
            let processed = catch_unwind(AssertUnwindSafe(|| live.driver.process()));
            let fired = {
                let mut disk = live.disk.0.lock();
                disk.armed = None;
                disk.fired
            };
            match processed {
                Ok(()) => assert!(!fired, "node {}: the WAL failed and the driver went on", self.nodes[i].id),
                Err(panic) if !fired => std::panic::resume_unwind(panic),
                Err(_) => {}
            }
            // Messages handed to the transport before the failure may still go out.
            let sent = std::mem::take(&mut *live.outbox.lock());
            if fault.is_some() {
                self.record("disk-fault", &[i as u64, u64::from(fired)]);
            }
            if fired {
                self.record("wal-failed", &[i as u64]);
            }
            self.route(i, sent);
            if fired {
                // What it applied before the failure counts (and is checked); then the node
                // is down, as its process would be.
                let live = self.nodes[i].live.as_ref().expect("live");
                let applied: Vec<Applied> = std::mem::take(&mut *live.applied_rx.lock());
                for a in applied {
                    self.check_applied(i, a);
                }
                self.crash(i);
            }
        }
    }

    /// Puts the messages node `i` sent on the network, with drops, duplicates and delays.
    fn route(&mut self, i: usize, sent: Vec<(GroupId, Message)>) {
        for (group, msg) in sent {
            // A follower relays a proposal or a read-index request (a leader probe, see
            // `hibernate.rs`) it was handed with its `from` unchanged.
            assert!(
                msg.from == self.nodes[i].id
                    || matches!(msg.get_msg_type(), MessageType::MsgPropose | MessageType::MsgReadIndex),
                "node {} sends a message of another node: {msg:?}",
                self.nodes[i].id
            );
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
                let env = Envelope { from: self.nodes[i].id, to: msg.to, group, msg: msg.clone() };
                self.net.insert((self.now + delay, self.net_seq), env);
            }
        }
    }

    /// Adds one applied entry of node `i` to the committed log, or checks it against it.
    fn check_applied(&mut self, i: usize, a: Applied) {
        let node = &self.nodes[i];
        let id = node.id;
        assert_eq!(a.index, node.applied.len() as u64 + 1, "node {id}: applied entries out of order");
        match self.committed.get(a.index as usize - 1) {
            Some(c) => assert_eq!(&a, c, "node {id}: applied a different entry at index {} than another node", a.index),
            None => {
                assert_eq!(a.index as usize, self.committed.len() + 1, "committed log has no gap");
                if let Some((request_id, _)) = &a.put {
                    if let Some(first) = self.applied_requests.insert(*request_id, a.index) {
                        panic!("request {request_id} applied twice: at index {first} and {}", a.index);
                    }
                }
                self.committed.push(a.clone());
            }
        }
        self.record("apply", &[id, a.index, a.term, a.data_hash]);
        self.nodes[i].applied.push(a);
    }

    /// Every invariant, after every step.
    fn check(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(live) = self.nodes[i].live.as_ref() else { continue };
            let id = self.nodes[i].id;
            let applied: Vec<Applied> = std::mem::take(&mut *live.applied_rx.lock());
            for a in applied {
                self.check_applied(i, a);
            }
            let node = &mut self.nodes[i];
            let live = node.live.as_mut().expect("live");
            live.wal.check_invariants();
            let st = live.driver.status(GROUP).expect("group exists");
            if st.hibernating {
                // Off the trace: how much of the run the group spent asleep on some node.
                *self.untraced.entry("hibernating").or_default() += 1;
            }
            let applied_index = node.applied.len() as u64;
            // After a restart whose commit index was lost, Raft re-commits the entries the
            // store already has and the driver skips them: its applied index trails the
            // store's until it passes the store's index at the restart.
            if st.applied.0 < live.skip_through {
                assert!(st.applied.0 <= applied_index, "node {id}: driver applied past the state machine");
            } else {
                assert_eq!(st.applied.0, applied_index, "node {id}: driver and state machine disagree on applied");
            }
            assert!(st.applied <= st.commit, "node {id}: applied past commit");
            assert!(st.commit.0 >= live.last_commit, "node {id}: commit went back");
            live.last_commit = st.commit.0;

            // Term and vote: durable before anything depends on them, never going back.
            let hs = live.wal.group_state(GROUP).expect("group state").hard_state;
            assert_eq!(st.term.0, hs.term, "node {id}: Raft term is not the durable one after process");
            assert!(hs.term >= node.term, "node {id}: durable term went back");
            if hs.term == node.term && node.vote != 0 {
                assert_eq!(hs.vote, node.vote, "node {id}: voted twice in term {}", hs.term);
            }
            node.term = hs.term;
            node.vote = hs.vote;

            // Store revision: monotonic, and exactly the revision of the last applied entry.
            let revision = live.store.current_revision(STORE_GROUP);
            assert!(revision >= live.last_revision, "node {id}: revision went back");
            assert_eq!(revision, node.applied.last().map_or(1, |a| a.revision), "node {id}: store revision");
            live.last_revision = revision;

            // Watch: every revision once, in order, with the value applied at it. With a
            // large buffer the watcher is synced, so it has everything after every step; a
            // watcher of a tiny buffer is caught up in the background (drained at the end).
            let mut live = node.live.take().expect("live");
            while let Some(ev) = live.watch.stream.try_recv() {
                live.watch.check(node, ev);
            }
            assert!(live.watch.next <= revision + 1, "node {id}: watch is ahead of the store");
            if watch_stays_synced(node.watch_buffer) {
                assert_eq!(live.watch.next, revision + 1, "node {id}: watch is behind the store");
            }
            // The slow watcher, unless stalled, reads a few responses per step.
            if live.slow_watch.stalled_until <= self.now {
                for _ in 0..2 {
                    let Some(ev) = live.slow_watch.stream.try_recv() else { break };
                    live.slow_watch.check(node, ev);
                }
            }
            assert!(live.slow_watch.next <= revision + 1, "node {id}: slow watch is ahead of the store");
            node.live = Some(live);

            // One leader per term.
            if st.is_leader {
                let first = *self.leaders.entry(st.term.0).or_insert(id);
                assert_eq!(first, id, "two leaders in term {}: {first} and {id}", st.term);
            }
        }
        let leaders: Vec<u64> = self.leaders.iter().flat_map(|(t, l)| [*t, *l]).collect();
        if let Some(last) = leaders.chunks(2).last() {
            let last = last.to_vec();
            self.record("leader", &last);
        }
        self.check_durable_quorum();
    }

    /// Every applied entry is in the durable log of a quorum: a committed entry is never
    /// lost or replaced, whatever crashes and torn tails do.
    fn check_durable_quorum(&mut self) {
        let committed: Vec<u64> = self.committed.iter().map(|a| a.term).collect();
        for node in &mut self.nodes {
            let id = node.id;
            let term_at = |index: u64| -> Option<u64> {
                match &node.live {
                    Some(l) => l.wal.term(GROUP, LogIndex(index)).ok().map(|t| t.0),
                    None => node.frozen_log.get(index as usize - 1).copied(),
                }
            };
            if node.matched_to > 0 {
                let t = term_at(node.matched_to);
                assert_eq!(
                    t,
                    Some(committed[node.matched_to as usize - 1]),
                    "node {id}: committed entry {} lost or replaced in its log",
                    node.matched_to
                );
            }
            let mut m = node.matched_to;
            while (m as usize) < committed.len() && term_at(m + 1) == Some(committed[m as usize]) {
                m += 1;
            }
            node.matched_to = m;
        }
        let mut matched: Vec<u64> = self.nodes.iter().map(|n| n.matched_to).collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_holds = matched[self.quorum() - 1];
        assert!(
            quorum_holds >= committed.len() as u64,
            "entries {}..={} were applied but are durable on fewer than a quorum (matched: {matched:?})",
            quorum_holds + 1,
            committed.len()
        );
    }

    fn step(&mut self, workload: bool) {
        self.now += 1;
        STEP.with(|s| s.set(self.now));
        self.faults();
        self.restart_due();
        // With hibernation on, clients pause for the second half of every
        // `QUIET_CYCLE_STEPS`, so the group goes idle, sleeps, and is woken by the next put.
        let quiet = self.hibernate_after_ticks != 0 && self.now % QUIET_CYCLE_STEPS >= QUIET_CYCLE_STEPS / 2;
        if workload && !quiet {
            self.workload();
        }
        self.deliver();
        self.tick();
        self.process();
        self.check();
    }

    /// True when every node is up, agrees on one leader, and has applied its whole log.
    fn converged(&self) -> bool {
        let Some(l) = self.leader() else { return false };
        let ls = self.nodes[l].live.as_ref().expect("live").driver.status(GROUP).expect("group");
        ls.commit == ls.last_index
            && self.nodes.iter().all(|n| {
                n.live.as_ref().and_then(|x| x.driver.status(GROUP)).is_some_and(|s| {
                    s.leader.0 == self.nodes[l].id && s.applied == ls.last_index && s.last_index == ls.last_index
                })
            })
    }

    /// Reads every node's watchers until they have delivered every revision of the store
    /// (the slow ones and those of tiny buffers wait for the background catch-up).
    fn drain_watches(&mut self) {
        let deadline = Instant::now() + WATCH_DRAIN_TIMEOUT;
        for node in &mut self.nodes {
            let mut live = node.live.take().expect("every node is up after convergence");
            let revision = live.store.current_revision(STORE_GROUP);
            for w in [&mut live.watch, &mut live.slow_watch] {
                while w.next <= revision {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let Some(ev) = w.stream.recv_timeout(left) else {
                        panic!("node {}: watch stuck at revision {} of {revision}", node.id, w.next);
                    };
                    w.check(node, ev);
                }
                *self.untraced.entry("rewatch").or_default() += w.rewatches;
                *self.untraced.entry("watch-catch-up").or_default() += w.catch_ups;
            }
            node.live = Some(live);
        }
    }

    /// Heals everything, restarts every node, and waits for convergence; then compares
    /// the replicas.
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
        self.drain_watches();
        let first = &self.nodes[0];
        let hash0 = first.live.as_ref().expect("live").store.hash_kv(STORE_GROUP, 0).expect("hash_kv");
        for n in &self.nodes {
            assert_eq!(n.applied, self.committed, "node {} applied a different sequence", n.id);
            let hash = n.live.as_ref().expect("live").store.hash_kv(STORE_GROUP, 0).expect("hash_kv");
            assert_eq!(hash, hash0, "node {} hash_kv (hash, compact, revision) differs from node 1", n.id);
        }
        self.record("end", &[self.committed.len() as u64, u64::from(hash0.0)]);
    }
}

/// Keeps the panics of injected disk faults (caught, and expected) out of the test output;
/// every other panic is reported as usual.
fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !msg.contains("injected") {
                report(info);
            }
        }));
    });
}

/// Runs one seed for `steps` steps plus convergence; returns the trace digest and the
/// number of committed entries.
fn run_seed(seed: u64, steps: u64) -> (u64, usize) {
    quiet_injected_panics();
    let node_count = if seed.is_multiple_of(2) { 3 } else { 5 };
    let mut sim = Sim::new(seed, node_count);
    for _ in 0..steps {
        sim.step(true);
    }
    sim.converge();
    if std::env::var_os("PLINTH_SIM_VERBOSE").is_some() {
        eprintln!(
            "seed {seed}: {node_count} nodes, {} steps, {} entries, {} leaders, events {:?}, untraced {:?}",
            sim.now,
            sim.committed.len(),
            sim.leaders.len(),
            sim.counts,
            sim.untraced,
        );
    }
    (sim.trace, sim.committed.len())
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
                "simulation seed {seed} failed at step {step}: {msg}\n\
                 replay: PLINTH_SIM_SEED={seed} scripts/cargo test -p raft-log --test sim"
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
fn three_nodes() {
    run_seeds(0);
}

#[test]
fn five_nodes() {
    run_seeds(1);
}

/// Seeds outside the default range that once failed, run in every default run.
/// 1009 (5 nodes): a follower's WAL write that replaced an uncommitted suffix of its log
/// (entries of an older term) failed its fdatasync yet reached the disk; the sim wrongly
/// required that suffix back after the restart.
const REGRESSION_SEEDS: [u64; 1] = [1009];

#[test]
fn regression_seeds() {
    if env_u64("PLINTH_SIM_SEED").is_none() {
        for seed in REGRESSION_SEEDS {
            run_reporting(seed, STEPS);
        }
    }
}

#[test]
fn same_seed_same_trace() {
    for seed in [2, 3] {
        let a = run_reporting(seed, 400);
        let b = run_reporting(seed, 400);
        assert_eq!(a, b, "seed {seed}: two runs differ");
        assert!(a.1 > 0, "seed {seed}: nothing committed");
    }
}
