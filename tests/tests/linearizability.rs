//! Linearizability of a real cluster under faults.
//!
//! Eight concurrent clients (etcd-client) send requests, each through one member, moving to
//! the next member when a request fails; two workloads:
//! - mixed: puts, linearizable and serializable gets, deletes, compare-and-swap txns on
//!   `mod_revision` or value, and lease grant / put with lease / revoke, on a small key set;
//! - Kubernetes-shaped: read-modify-write through txns on `mod_revision`, creates and
//!   deletes, paginated lists of the prefix at one revision, event keys attached to leases
//!   that are revoked, serializable gets, and a compaction every few hundred milliseconds.
//!
//! Two watchers follow the prefix with `prev_kv` and ask for progress notifications: one
//! from revision 1, one from a past revision picked mid-run; a watcher that loses its stream
//! resumes on another member after the last revision it saw (after a compaction, from the
//! oldest revision kept). Meanwhile a seeded schedule injects one kind of fault (see
//! `linearizability/faults.rs` for the matrix): SIGKILL or SIGSTOP of the leader or a
//! follower (3 and 5 members), network partitions between members in their own network
//! namespaces (a minority, a split, the leader alone, one direction only), learners added
//! and promoted and a follower and the leader removed, a member's disk filling up, a
//! member's fsyncs failing with EIO, a stopped member's WAL segment or SST file corrupted,
//! peer links delayed, stalled (lost packets) and cut by a proxy in front of every member.
//! Afterwards every fault is undone and every member runs, a linearizable read of every key
//! is recorded, the watchers catch up to the final revision, the recorded history goes
//! through [`plinth_tests::linearizability::check`], and every member must have the same
//! HashKV at the final revision.
//!
//! `PLINTH_LIN_SEED=<u64>` replays a seed (the schedule of faults and each client's choice
//! of operations; the timing of real processes still varies). The seed is printed first and
//! with every failure. Each scenario ends with one line for `make soak`:
//! `lin-run: NAME, seed S, 1 history, V violations, F faults: KIND N, KIND N`.
//!
//! Bounded: start ≤ 20 s (typically 2 s), load 20–30 s, catch-up ≤ 10 s, convergence
//! ≤ 30 s, check a few seconds; scenarios run one after the other. `make test` runs the
//! process, partition, fsync, corruption and slow-link scenarios of 3 (partitions: 5)
//! members and the process scenario of a lone member; the rest are `#[ignore]`d and run by `make soak`.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, LeaseGrantOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use plinth_tests::linearizability::{self, Compare, Input, Kv, Output, Recorder, WatchEvent, WatchItem, WatchRecord};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "linearizability/faults.rs"]
mod faults;

use faults::{Fault, Rig};

/// Concurrent clients.
const CLIENTS: usize = 8;
/// Pause of a client of a one-member cluster after an operation with an unknown outcome.
const LONE_MEMBER_RETRY: Duration = Duration::from_millis(100);
/// Keys the clients share (few, so that they contend).
const KEYS: usize = 8;
/// Prefix of every key of the run.
const PREFIX: &str = "lin/";
/// How long the clients run while faults are injected.
const LOAD: Duration = Duration::from_secs(20);
/// How long a cluster gets to elect its first leader, and to agree again after a fault.
const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// Per-request time limit: a request to a paused member fails (outcome unknown) after it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the watchers get to catch up to the final revision.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lease TTL: far longer than the run, so no lease expires on its own.
const LEASE_TTL_SECONDS: i64 = 600;
/// Sessions per client in the history's client numbers (`client * SESSIONS_MAX + session`).
const SESSIONS_MAX: usize = 1000;
/// How often the Kubernetes workload compacts.
const COMPACT_EVERY: Duration = Duration::from_millis(300);
/// How often a watcher asks for a progress notification.
const PROGRESS_EVERY: Duration = Duration::from_millis(400);

/// `PLINTH_LIN_SEED`, else `regression` (the seed that once found a bug in the scenario),
/// else a fresh seed.
fn seed(regression: Option<u64>) -> u64 {
    match std::env::var("PLINTH_LIN_SEED") {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("PLINTH_LIN_SEED={s:?} is not a u64")),
        Err(_) if regression.is_some() => regression.expect("checked"),
        Err(_) => {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
            (t.as_nanos() as u64) ^ u64::from(std::process::id())
        }
    }
}

async fn connect(endpoint: &str) -> Option<Client> {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(1)).with_timeout(REQUEST_TIMEOUT);
    tokio::time::timeout(REQUEST_TIMEOUT, Client::connect([endpoint], Some(opts))).await.ok()?.ok()
}

/// Connects to the first member that answers, starting at `*next` (advanced past it).
async fn connect_any(endpoints: &[String], next: &mut usize, stop: &AtomicBool) -> Option<Client> {
    while !stop.load(Ordering::Relaxed) {
        let e = &endpoints[*next % endpoints.len()];
        *next += 1;
        if let Some(c) = connect(e).await {
            return Some(c);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The end of the range of keys that start with `prefix` (ASCII, not ending in 0xff).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    let last = end.last_mut().expect("a non-empty prefix");
    assert!(*last < 0xff, "prefix {prefix:?} ends in 0xff");
    *last += 1;
    end
}

fn kv_of(kv: Option<&etcd_client::KeyValue>) -> Option<Kv> {
    kv.map(|kv| Kv { value: String::from_utf8_lossy(kv.value()).into_owned(), mod_revision: kv.mod_revision() })
}

/// Sends `input`; `Err(true)` when the request was refused before it could take effect,
/// `Err(false)` when its outcome is unknown.
async fn send(client: &mut Client, input: &Input) -> Result<Output, bool> {
    let revision = |h: Option<&etcd_client::ResponseHeader>| h.map_or(0, |h| h.revision());
    let request = async {
        Ok::<_, etcd_client::Error>(match input {
            Input::Put { key, value, lease } => {
                let opts = (*lease != 0).then(|| PutOptions::new().with_lease(*lease));
                let r = client.put(key.as_str(), value.as_str(), opts).await?;
                Output::Put { revision: revision(r.header()) }
            }
            Input::Get { key, serializable } => {
                let opts = serializable.then(|| GetOptions::new().with_serializable());
                let r = client.get(key.as_str(), opts).await?;
                Output::Get { revision: revision(r.header()), kv: kv_of(r.kvs().first()) }
            }
            Input::List { prefix, start, revision: at, limit } => {
                let end = prefix_end(prefix);
                let opts = GetOptions::new().with_range(end).with_revision(*at).with_limit(*limit);
                let r = client.get(start.as_str(), Some(opts)).await?;
                let kvs = r
                    .kvs()
                    .iter()
                    .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv_of(Some(kv)).expect("a kv")))
                    .collect();
                Output::List { revision: revision(r.header()), kvs, more: r.more() }
            }
            Input::Delete { key } => {
                let r = client.delete(key.as_str(), None).await?;
                Output::Delete { revision: revision(r.header()), deleted: r.deleted() }
            }
            Input::Cas { key, compare, value } => {
                let cmp = match compare {
                    Compare::ModRevision(r) => EtcdCompare::mod_revision(key.as_str(), CompareOp::Equal, *r),
                    Compare::Value(v) => EtcdCompare::value(key.as_str(), CompareOp::Equal, v.as_str()),
                };
                let txn = Txn::new().when([cmp]).and_then([TxnOp::put(key.as_str(), value.as_str(), None)]);
                let r = client.txn(txn).await?;
                Output::Cas { revision: revision(r.header()), succeeded: r.succeeded() }
            }
            Input::LeaseGrant { id } => {
                let r = client.lease_grant(LEASE_TTL_SECONDS, Some(LeaseGrantOptions::new().with_id(*id))).await?;
                Output::LeaseGrant { revision: revision(r.header()) }
            }
            Input::LeaseRevoke { id } => {
                let r = client.lease_revoke(*id).await?;
                Output::LeaseRevoke { revision: revision(r.header()) }
            }
        })
    };
    match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_millis(500), request).await {
        Ok(Ok(out)) => Ok(out),
        // "requested lease not found" and "required revision has been compacted" are decided
        // before anything is proposed.
        Ok(Err(etcd_client::Error::GRpcStatus(s)))
            if matches!(s.code(), tonic::Code::NotFound | tonic::Code::OutOfRange) =>
        {
            Err(true)
        }
        _ => Err(false),
    }
}

/// What the clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// Puts, gets (both kinds), deletes, compare-and-swaps on value or `mod_revision`, lease
    /// grant, put with lease and revoke, on [`KEYS`] shared keys.
    Mixed,
    /// What kube-apiserver sends: read-modify-write through a txn on `mod_revision`, creates
    /// and deletes, paginated lists of the prefix at one revision, events attached to leases,
    /// a compaction every few hundred milliseconds, and watches from a revision.
    Kubernetes,
}

/// One client's connection and its place in the history.
struct Session {
    c: usize,
    endpoints: Vec<String>,
    /// Index of the member to try next.
    next: usize,
    conn: Client,
    /// A new connection (to another member, or to a restarted one) starts a new session: a
    /// serializable read may legitimately see an older revision than the previous member
    /// served, so the checker's per-client rules apply per session.
    session: usize,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
}

impl Session {
    async fn open(c: usize, endpoints: Vec<String>, rec: Arc<Recorder>, stop: Arc<AtomicBool>) -> Option<Session> {
        let mut next = c;
        let conn = connect_any(&endpoints, &mut next, &stop).await?;
        Some(Session { c, endpoints, next, conn, session: 0, rec, stop })
    }

    /// Sends and records `input`: `Ok(Some(output))` when it completed, `Ok(None)` when it
    /// was refused or its outcome is unknown (then on a new connection), `Err(())` once the
    /// run stops while reconnecting.
    async fn exec(&mut self, input: Input) -> Result<Option<Output>, ()> {
        let id = self.rec.invoke(self.c * SESSIONS_MAX + self.session, input.clone());
        match send(&mut self.conn, &input).await {
            Ok(out) => {
                self.rec.complete(id, out.clone());
                Ok(Some(out))
            }
            Err(true) => {
                self.rec.refused(id);
                Ok(None)
            }
            Err(false) => {
                // Unknown outcome: left without a response; go to the next member. With one
                // member there is no other: back off, or a member that is down or restarting
                // turns every client into a loop of failed sends, each an unknown write the
                // checker must place somewhere.
                if self.endpoints.len() == 1 {
                    tokio::time::sleep(LONE_MEMBER_RETRY).await;
                }
                self.conn = connect_any(&self.endpoints, &mut self.next, &self.stop).await.ok_or(())?;
                self.session = (self.session + 1) % SESSIONS_MAX;
                Ok(None)
            }
        }
    }
}

/// One client: a seeded mix of operations until `stop`.
async fn client(c: usize, seed: u64, workload: Workload, prefix: &'static str, s: Session) {
    let mut rng = StdRng::seed_from_u64(seed ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut s = s;
    // What this client last read of each key, for its compare-and-swaps.
    let mut seen: Vec<Option<Kv>> = vec![None; KEYS];
    let mut lease: Option<i64> = None;
    let mut n = 0u64;
    while !s.stop.load(Ordering::Relaxed) {
        n += 1;
        let k = rng.random_range(0..KEYS);
        let key = format!("{prefix}{k}");
        let value = format!("c{c}-{n}");
        let new_lease = |lease: &mut Option<i64>| {
            let id = ((c as i64 + 1) << 32) | n as i64;
            *lease = Some(id);
            Input::LeaseGrant { id }
        };
        let outcome = match (workload, rng.random_range(0..100)) {
            (Workload::Mixed, 0..30) => {
                let lease = if rng.random_bool(0.3) { lease.unwrap_or(0) } else { 0 };
                s.exec(Input::Put { key, value, lease }).await
            }
            (Workload::Mixed, 30..55) | (Workload::Kubernetes, 0..15) => {
                let out = s.exec(Input::Get { key, serializable: false }).await;
                if let Ok(Some(Output::Get { kv, .. })) = &out {
                    seen[k] = kv.clone();
                }
                out
            }
            (Workload::Mixed, 55..65) | (Workload::Kubernetes, 15..25) => {
                s.exec(Input::Get { key, serializable: true }).await
            }
            (Workload::Mixed, 65..72) | (Workload::Kubernetes, 25..32) => s.exec(Input::Delete { key }).await,
            (Workload::Mixed, 72..90) => {
                let compare = match &seen[k] {
                    Some(kv) if rng.random_bool(0.5) => Compare::Value(kv.value.clone()),
                    Some(kv) => Compare::ModRevision(kv.mod_revision),
                    None => Compare::ModRevision(0),
                };
                s.exec(Input::Cas { key, compare, value }).await
            }
            (Workload::Kubernetes, 32..70) => {
                // Read, then write only if nobody wrote in between (or create if absent).
                match s.exec(Input::Get { key: key.clone(), serializable: false }).await {
                    Ok(Some(Output::Get { kv, .. })) => {
                        let compare = Compare::ModRevision(kv.map_or(0, |kv| kv.mod_revision));
                        s.exec(Input::Cas { key, compare, value }).await
                    }
                    other => other,
                }
            }
            (Workload::Kubernetes, 70..85) => list(&mut s, prefix).await,
            (Workload::Kubernetes, 85..95) => match lease {
                // An event: a key of its own, attached to the client's lease.
                Some(id) => s.exec(Input::Put { key: format!("{prefix}events/{value}"), value, lease: id }).await,
                None => s.exec(new_lease(&mut lease)).await,
            },
            (Workload::Mixed, _) | (Workload::Kubernetes, _) => match lease.take() {
                Some(id) => s.exec(Input::LeaseRevoke { id }).await,
                None => s.exec(new_lease(&mut lease)).await,
            },
        };
        if outcome.is_err() {
            return;
        }
    }
}

/// Pages through the prefix three keys at a time, the first page at the current revision and
/// the rest at that revision, as a paginated list does.
async fn list(s: &mut Session, prefix: &str) -> Result<Option<Output>, ()> {
    /// Most pages one list reads.
    const PAGES_MAX: usize = 10;
    let mut start = prefix.to_owned();
    let mut revision = 0;
    let mut out = None;
    for _ in 0..PAGES_MAX {
        let input = Input::List { prefix: prefix.to_owned(), start: start.clone(), revision, limit: 3 };
        out = s.exec(input).await?;
        let Some(Output::List { revision: header, kvs, more }) = &out else { break };
        if revision == 0 {
            revision = *header;
        }
        match kvs.last() {
            Some((last, _)) if *more => start = format!("{last}\0"),
            _ => break,
        }
    }
    Ok(out)
}

/// Compacts to 50 revisions behind the current one every [`COMPACT_EVERY`], until `stop`.
async fn compactor(endpoints: Vec<String>, stop: Arc<AtomicBool>) -> usize {
    let mut next = 0;
    let mut compactions = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(COMPACT_EVERY).await;
        let Some(mut c) = connect_any(&endpoints, &mut next, &stop).await else { break };
        let Ok(Ok(r)) = tokio::time::timeout(REQUEST_TIMEOUT, c.get("compactor", None)).await else { continue };
        let revision = r.header().map_or(0, |h| h.revision()) - 50;
        if revision > 1 {
            if let Ok(Ok(_)) = tokio::time::timeout(REQUEST_TIMEOUT, c.compact(revision, None)).await {
                compactions += 1;
            }
        }
    }
    compactions
}

/// One watcher of the prefix from `start`, resuming on the next member after a broken
/// stream, until `stop_at` holds a revision it has covered. Each stream is one record.
#[allow(clippy::too_many_arguments)]
async fn watcher(
    w: usize,
    prefix: &'static str,
    start: i64,
    endpoints: Vec<String>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    stop_at: Arc<AtomicI64>,
    deadline_after_stop: Duration,
) {
    let mut next = w + 1;
    let mut from = start;
    let mut from_compacted = false;
    let give_up = Arc::new(AtomicBool::new(false));
    loop {
        let target = stop_at.load(Ordering::Relaxed);
        if target > 0 && from > target {
            return;
        }
        let Some(mut conn) = connect_any(&endpoints, &mut next, &give_up).await else { return };
        let opts = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(from);
        let Ok(Ok(stream)) = tokio::time::timeout(REQUEST_TIMEOUT, conn.watch(prefix, Some(opts))).await else {
            continue;
        };
        let (mut sender, mut responses) = stream.split();
        let mut record = WatchRecord {
            watcher: w,
            prefix: prefix.to_owned(),
            start_revision: from,
            start_compacted: from_compacted,
            prev_kv: true,
            items: Vec::new(),
        };
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        let mut stopped_at: Option<Instant> = None;
        // Set when the stream was cancelled because its next revision was compacted away.
        let mut compacted = 0;
        loop {
            if stop.load(Ordering::Relaxed) && stopped_at.is_none() {
                stopped_at = Some(Instant::now());
            }
            let target = stop_at.load(Ordering::Relaxed);
            if target > 0 && record.covered_revision() >= target {
                rec.watch(record);
                return;
            }
            if stopped_at.is_some_and(|t| t.elapsed() > deadline_after_stop) {
                give_up.store(true, Ordering::Relaxed);
                rec.watch(record);
                return;
            }
            tokio::select! {
                _ = progress.tick() => {
                    if sender.request_progress().await.is_err() {
                        break;
                    }
                }
                m = tokio::time::timeout(REQUEST_TIMEOUT * 2, responses.message()) => {
                    let Ok(Ok(Some(resp))) = m else { break };
                    if resp.canceled() {
                        compacted = resp.compact_revision();
                        break;
                    }
                    if resp.created() {
                        continue;
                    }
                    let header = resp.header().map_or(0, |h| h.revision());
                    if resp.events().is_empty() {
                        record.items.push(WatchItem::Progress { revision: header });
                    }
                    for e in resp.events() {
                        let Some(kv) = e.kv() else { continue };
                        record.items.push(WatchItem::Event(WatchEvent {
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            delete: e.event_type() == etcd_client::EventType::Delete,
                            value: String::from_utf8_lossy(kv.value()).into_owned(),
                            mod_revision: kv.mod_revision(),
                            prev: kv_of(e.prev_kv()),
                            header_revision: header,
                        }));
                    }
                }
            }
        }
        // After a compaction the watcher starts again from the oldest revision kept, as a
        // Kubernetes reflector relists; the revisions in between are not watched by it.
        from = (record.covered_revision() + 1).max(compacted);
        from_compacted = compacted > 0 && from == compacted;
        rec.watch(record);
    }
}

/// The scenarios share the machine's cores badly: they run one at a time.
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One scenario: a cluster, a workload, the faults injected during it.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    /// Test name, first on every line of its output.
    name: &'static str,
    members: usize,
    workload: Workload,
    fault: Fault,
    /// Prefix of every key of the scenario.
    prefix: &'static str,
    /// How long the clients run while faults are injected.
    load: Duration,
    /// The seed `make test` replays (no `PLINTH_LIN_SEED`): one that found a bug.
    regression_seed: Option<u64>,
}

impl Scenario {
    const fn new(name: &'static str, members: usize, workload: Workload, fault: Fault) -> Scenario {
        let prefix = match workload {
            Workload::Mixed => PREFIX,
            Workload::Kubernetes => "k8s/",
        };
        Scenario { name, members, workload, fault, prefix, load: LOAD, regression_seed: None }
    }

    const fn load(self, load: Duration) -> Scenario {
        Scenario { load, ..self }
    }

    const fn regression_seed(self, seed: u64) -> Scenario {
        Scenario { regression_seed: Some(seed), ..self }
    }
}

// The CI slice (`make test`): the first three scenarios, partitions, fsync errors, corrupted
// files and slow links (each well under a minute). The rest are `#[ignore]`d and run by `make soak`
// (scripts/soak.sh lists every scenario), or with `-- --ignored`.

#[test]
fn linearizable_under_leader_kills_and_pauses() {
    run(Scenario::new("linearizable_under_leader_kills_and_pauses", 3, Workload::Mixed, Fault::Process));
}

/// One member, killed and paused: its linearizable reads take the sole-voter read point
/// (the first entry of its term) with no ReadIndex round, across restarts that re-apply
/// committed entries before the first entry of the new term commits.
#[test]
fn a_lone_member_linearizable_under_kills_and_pauses() {
    run(Scenario::new("a_lone_member_linearizable_under_kills_and_pauses", 1, Workload::Mixed, Fault::Process));
}

#[test]
fn kubernetes_shaped_traffic_under_leader_kills_and_pauses() {
    let s = Scenario::new(
        "kubernetes_shaped_traffic_under_leader_kills_and_pauses",
        3,
        Workload::Kubernetes,
        Fault::Process,
    );
    run(s);
}

#[test]
#[ignore = "soak scenario (scripts/soak.sh)"]
fn five_members_under_leader_kills_and_pauses() {
    run(Scenario::new("five_members_under_leader_kills_and_pauses", 5, Workload::Mixed, Fault::Process));
}

#[test]
#[ignore = "soak scenario (scripts/soak.sh)"]
fn five_members_kubernetes_shaped_under_leader_kills_and_pauses() {
    let name = "five_members_kubernetes_shaped_under_leader_kills_and_pauses";
    run(Scenario::new(name, 5, Workload::Kubernetes, Fault::Process));
}

#[test]
fn linearizable_under_partitions() {
    run(Scenario::new("linearizable_under_partitions", 5, Workload::Mixed, Fault::Partition));
}

#[test]
#[ignore = "soak scenario (scripts/soak.sh)"]
fn kubernetes_shaped_under_partitions() {
    run(Scenario::new("kubernetes_shaped_under_partitions", 5, Workload::Kubernetes, Fault::Partition));
}

#[test]
#[ignore = "soak scenario (scripts/soak.sh)"]
fn linearizable_under_membership_changes() {
    let s = Scenario::new("linearizable_under_membership_changes", 3, Workload::Mixed, Fault::Membership);
    run(s.load(Duration::from_secs(30)));
}

#[test]
#[ignore = "soak scenario (scripts/soak.sh)"]
fn linearizable_with_a_full_disk() {
    run(Scenario::new("linearizable_with_a_full_disk", 3, Workload::Mixed, Fault::FullDisk));
}

#[test]
fn linearizable_under_fsync_errors() {
    // Seed 1001 found that a failed fdatasync was followed by a second attempt at the disk
    // (the WAL's close trimming and syncing the segment while the panic unwound) and, in
    // debug builds, by a panic in a destructor instead of a clean stop.
    let s = Scenario::new("linearizable_under_fsync_errors", 3, Workload::Mixed, Fault::FsyncError);
    run(s.regression_seed(1001));
}

#[test]
fn linearizable_across_corrupted_files_at_restart() {
    let s = Scenario::new("linearizable_across_corrupted_files_at_restart", 3, Workload::Mixed, Fault::Corruption);
    run(s.load(Duration::from_secs(25)));
}

/// Whether this process may make namespaces and mounts (the partition, full disk, fsync
/// shim and corruption rigs need root for the first two; all need a Linux host).
#[test]
fn linearizable_over_slow_and_lossy_links() {
    run(Scenario::new("linearizable_over_slow_and_lossy_links", 3, Workload::Mixed, Fault::SlowLinks));
}

#[test]
#[ignore = "soak scenario (scripts/soak.sh)"]
fn kubernetes_shaped_over_slow_and_lossy_links() {
    run(Scenario::new("kubernetes_shaped_over_slow_and_lossy_links", 3, Workload::Kubernetes, Fault::SlowLinks));
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs one scenario: a fresh cluster, the clients of its workload on keys under its prefix,
/// the watchers, the faults, the heal, then the checks: the history is linearizable (with a
/// final linearizable read of every key, so an acknowledged write that was lost shows), the
/// watches kept etcd's guarantees, and every member holds the same data (HashKV) at the
/// final revision.
fn run(s: Scenario) {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if matches!(s.fault, Fault::Partition | Fault::FullDisk) && !is_root() {
        eprintln!("{}: SKIPPED: network namespaces and tmpfs mounts need root", s.name);
        return;
    }
    let seed = seed(s.regression_seed);
    let name = s.name;
    eprintln!("{name}: PLINTH_LIN_SEED={seed}");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut rig = Rig::start(s.members, s.fault);
    let (injected, compactions, history) = rt.block_on(async {
        rig.cluster.wait_leader(LEADER_TIMEOUT).await;
        let endpoints = rig.endpoints();
        let rec = Arc::new(Recorder::new());
        let stop = Arc::new(AtomicBool::new(false));
        let stop_at = Arc::new(AtomicI64::new(0));
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let Some(session) = Session::open(c, endpoints.clone(), rec.clone(), stop.clone()).await else {
                panic!("seed {seed}: client {c} cannot connect\n{}", rig.cluster.logs());
            };
            tasks.push(tokio::spawn(client(c, seed, s.workload, s.prefix, session)));
        }
        let compactor =
            (s.workload == Workload::Kubernetes).then(|| tokio::spawn(compactor(endpoints.clone(), stop.clone())));
        let mut watchers = vec![tokio::spawn(watcher(
            0,
            s.prefix,
            1,
            endpoints.clone(),
            rec.clone(),
            stop.clone(),
            stop_at.clone(),
            CATCH_UP_TIMEOUT,
        ))];
        let load_end = Instant::now() + s.load;

        // The second watcher starts mid-run from a past revision (catch-up from history).
        let late = {
            let (endpoints, rec, stop, stop_at) = (endpoints.clone(), rec.clone(), stop.clone(), stop_at.clone());
            let (prefix, load) = (s.prefix, s.load);
            async move {
                tokio::time::sleep(load / 3).await;
                let revision = rec.history().ops.iter().filter_map(|o| o.output.as_ref()).map(Output::revision).max();
                let from = (revision.unwrap_or(1) / 2).max(1);
                watcher(1, prefix, from, endpoints, rec, stop, stop_at, CATCH_UP_TIMEOUT).await;
            }
        };
        watchers.push(tokio::spawn(late));

        let injected = faults::inject(&mut rig, seed, load_end).await;
        tokio::time::sleep(load_end.saturating_duration_since(Instant::now())).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("client task");
        }
        let compactions = match compactor {
            Some(t) => t.await.expect("compactor task"),
            None => 0,
        };
        // Every fault undone and every member running again; a final linearizable read of
        // every key gives the last revision, which the watchers and every member must reach.
        rig.heal();
        let leader = rig.cluster.wait_leader(LEADER_TIMEOUT).await;
        let mut last = None;
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        while last.is_none() && Instant::now() < deadline {
            if let Some(mut c) = connect(&rig.cluster.members[leader].endpoint()).await {
                let input = Input::Get { key: format!("{}0", s.prefix), serializable: false };
                let id = rec.invoke(CLIENTS * SESSIONS_MAX, input.clone());
                if let Ok(out) = send(&mut c, &input).await {
                    last = Some(out.revision());
                    rec.complete(id, out);
                }
            }
        }
        let last = last.unwrap_or_else(|| {
            panic!("seed {seed}: no final read within {CATCH_UP_TIMEOUT:?}\n{}", rig.cluster.logs())
        });
        final_reads(&rig, leader, s.prefix, &rec).await;
        stop_at.store(last, Ordering::Relaxed);
        for w in watchers {
            w.await.expect("watcher task");
        }
        converged(&rig, last, seed).await;
        (injected, compactions, rec.history())
    });
    let unknown = history.ops.iter().filter(|o| o.complete.is_none()).count();
    eprintln!(
        "{name}: {} ops ({unknown} unknown), {} watch records, {} faults ({}), {compactions} compactions",
        history.ops.len(),
        history.watches.len(),
        injected.total(),
        injected.by_kind()
    );
    let checking = Instant::now();
    let verdict = linearizability::check(&history);
    eprintln!("{name}: checked in {:?}", checking.elapsed());
    let violations = usize::from(verdict.is_err());
    println!(
        "lin-run: {name}, seed {seed}, 1 history, {violations} violations, {} faults: {}",
        injected.total(),
        injected.by_kind()
    );
    match verdict {
        Ok(report) => {
            eprintln!("{name}: {report:?}");
            assert!(
                report.inconclusive_keys.is_empty(),
                "seed {seed}: inconclusive keys {:?}",
                report.inconclusive_keys
            );
            assert!(history.ops.len() > 100, "seed {seed}: only {} ops: the cluster barely served", history.ops.len());
            if s.workload == Workload::Kubernetes {
                assert!(compactions > 0, "seed {seed}: no compaction ran");
            }
            assert!(injected.total() > 0, "seed {seed}: no fault was injected");
        }
        Err(v) => panic!("{name} PLINTH_LIN_SEED={seed}: violation\n{v}\n{}", rig.cluster.logs()),
    }
}

/// A linearizable read of every shared key through the leader, recorded: an acknowledged
/// write that a member lost (and that nobody overwrote) makes the history fail the check.
async fn final_reads(rig: &Rig, leader: usize, prefix: &str, rec: &Recorder) {
    let Some(mut c) = connect(&rig.cluster.members[leader].endpoint()).await else { return };
    for k in 0..KEYS {
        let input = Input::Get { key: format!("{prefix}{k}"), serializable: false };
        let id = rec.invoke(CLIENTS * SESSIONS_MAX + 1, input.clone());
        if let Ok(out) = send(&mut c, &input).await {
            rec.complete(id, out);
        }
    }
}

/// How long the members get to reach the final revision once healed.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Every active member reaches revision `last` and has the same HashKV at it.
async fn converged(rig: &Rig, last: i64, seed: u64) {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let mut hashes = Vec::new();
    for &i in &rig.active {
        let m = &rig.cluster.members[i];
        let hash = loop {
            let answer = async {
                let mut c = connect(&m.endpoint()).await?;
                let r = c.get("converged", Some(GetOptions::new().with_serializable())).await.ok()?;
                if r.header().map_or(0, |h| h.revision()) < last {
                    return None;
                }
                Some(c.hash_kv(last).await.ok()?.hash())
            };
            if let Ok(Some(h)) = tokio::time::timeout(REQUEST_TIMEOUT * 2, answer).await {
                break h;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed}: {} did not reach revision {last} within {CONVERGE_TIMEOUT:?}\n{}",
                m.name,
                m.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        hashes.push((m.name.clone(), hash));
    }
    assert!(hashes.windows(2).all(|w| w[0].1 == w[1].1), "seed {seed}: members differ at revision {last}: {hashes:?}");
    eprintln!("converged at revision {last}: {} members, hash {:08x}", hashes.len(), hashes[0].1);
}
