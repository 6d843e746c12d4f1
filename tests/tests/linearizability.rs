//! Linearizability of a real 3-member cluster under process faults.
//!
//! Eight concurrent clients (etcd-client) send puts, linearizable and serializable gets,
//! deletes, compare-and-swap txns on `mod_revision` or value, and lease grant / put with
//! lease / revoke to a small key set, each through one member and moving to the next one
//! when a request fails. Two watchers follow the key prefix with `prev_kv` and ask for
//! progress notifications; one from revision 1, one from a past revision picked mid-run; a
//! watcher that loses its stream resumes on another member after the last revision it saw.
//! Meanwhile a seeded schedule injects faults: SIGKILL of the leader and restart, SIGKILL of
//! a follower and restart, SIGSTOP/SIGCONT of the leader or a follower. Afterwards every
//! member runs again, the watchers catch up to the final revision, and the recorded history
//! goes through [`plinth_tests::linearizability::check`].
//!
//! `PLINTH_LIN_SEED=<u64>` replays a seed (the schedule of faults and each client's choice
//! of operations; the timing of real processes still varies). The seed is printed first and
//! with every failure. The run ends with one line for `make soak`:
//! `lin-run: seed S, 1 history, V violations, F faults`.
//!
//! Bounded: start ≤ 20 s (typically 2 s), load 20 s, catch-up ≤ 10 s.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, LeaseGrantOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use plinth_tests::linearizability::{self, Compare, Input, Kv, Output, Recorder, WatchEvent, WatchItem, WatchRecord};
use plinth_tests::members::Members;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Members of the cluster under test.
const MEMBERS: usize = 3;
/// Concurrent clients.
const CLIENTS: usize = 8;
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
/// How often a watcher asks for a progress notification.
const PROGRESS_EVERY: Duration = Duration::from_millis(400);

fn seed() -> u64 {
    match std::env::var("PLINTH_LIN_SEED") {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("PLINTH_LIN_SEED={s:?} is not a u64")),
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

fn key_of(i: usize) -> String {
    format!("{PREFIX}{i}")
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
        // "requested lease not found" is decided before anything is proposed.
        Ok(Err(etcd_client::Error::GRpcStatus(s))) if s.code() == tonic::Code::NotFound => Err(true),
        _ => Err(false),
    }
}

/// One client: a seeded mix of operations until `stop`.
async fn client(c: usize, seed: u64, endpoints: Vec<String>, rec: Arc<Recorder>, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut next = c;
    let Some(mut conn) = connect_any(&endpoints, &mut next, &stop).await else { return };
    // What this client last read of each key, for its compare-and-swaps.
    let mut seen: Vec<Option<Kv>> = vec![None; KEYS];
    let mut lease: Option<i64> = None;
    let mut n = 0u64;
    // A new connection (to another member, or to a restarted one) starts a new session: a
    // serializable read may legitimately see an older revision than the previous member
    // served, so the checker's per-client rules apply per session.
    let mut session = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let k = rng.random_range(0..KEYS);
        let key = key_of(k);
        let value = format!("c{c}-{n}");
        let input = match rng.random_range(0..100) {
            0..30 => Input::Put { key, value, lease: if rng.random_bool(0.3) { lease.unwrap_or(0) } else { 0 } },
            30..55 => Input::Get { key, serializable: false },
            55..65 => Input::Get { key, serializable: true },
            65..72 => Input::Delete { key },
            72..90 => {
                let compare = match &seen[k] {
                    Some(kv) if rng.random_bool(0.5) => Compare::Value(kv.value.clone()),
                    Some(kv) => Compare::ModRevision(kv.mod_revision),
                    None => Compare::ModRevision(0),
                };
                Input::Cas { key, compare, value }
            }
            _ => match lease.take() {
                Some(id) => Input::LeaseRevoke { id },
                None => {
                    let id = ((c as i64 + 1) << 32) | n as i64;
                    lease = Some(id);
                    Input::LeaseGrant { id }
                }
            },
        };
        let id = rec.invoke(c * SESSIONS_MAX + session, input.clone());
        match send(&mut conn, &input).await {
            Ok(out) => {
                if let Output::Get { kv, .. } = &out {
                    seen[k] = kv.clone();
                }
                rec.complete(id, out);
            }
            Err(true) => {
                rec.refused(id);
                if matches!(input, Input::Put { lease: l, .. } if l != 0) {
                    lease = None;
                }
            }
            Err(false) => {
                // Unknown outcome: left without a response; go to the next member.
                let Some(c) = connect_any(&endpoints, &mut next, &stop).await else { return };
                conn = c;
                session = (session + 1) % SESSIONS_MAX;
            }
        }
    }
}

/// One watcher of the prefix from `start`, resuming on the next member after a broken
/// stream, until `stop_at` holds a revision it has covered. Each stream is one record.
async fn watcher(
    w: usize,
    start: i64,
    endpoints: Vec<String>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    stop_at: Arc<AtomicI64>,
    deadline_after_stop: Duration,
) {
    let mut next = w + 1;
    let mut from = start;
    let give_up = Arc::new(AtomicBool::new(false));
    loop {
        let target = stop_at.load(Ordering::Relaxed);
        if target > 0 && from > target {
            return;
        }
        let Some(mut conn) = connect_any(&endpoints, &mut next, &give_up).await else { return };
        let opts = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(from);
        let Ok(Ok(stream)) = tokio::time::timeout(REQUEST_TIMEOUT, conn.watch(PREFIX, Some(opts))).await else {
            continue;
        };
        let (mut sender, mut responses) = stream.split();
        let mut record = WatchRecord {
            watcher: w,
            prefix: PREFIX.to_owned(),
            start_revision: from,
            prev_kv: true,
            items: Vec::new(),
        };
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        let mut stopped_at: Option<Instant> = None;
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
        from = record.covered_revision() + 1;
        rec.watch(record);
    }
}

/// The faults, on a seeded schedule, until `load_end`; returns how many were injected.
async fn faults(c: &mut Members, seed: u64, load_end: Instant) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut injected = 0;
    loop {
        let pause = Duration::from_millis(rng.random_range(1000..2500));
        if Instant::now() + pause + Duration::from_secs(2) >= load_end {
            return injected;
        }
        tokio::time::sleep(pause).await;
        let leader = c.wait_leader(LEADER_TIMEOUT).await;
        let victim = if rng.random_bool(0.6) { leader } else { (leader + rng.random_range(1..MEMBERS)) % MEMBERS };
        let down = Duration::from_millis(rng.random_range(300..1800));
        let kind = if rng.random_bool(0.5) { "SIGKILL" } else { "SIGSTOP" };
        eprintln!(
            "fault {injected}: {kind} {} ({}) for {down:?}",
            c.members[victim].name,
            if victim == leader { "leader" } else { "follower" }
        );
        if kind == "SIGKILL" {
            c.members[victim].kill9();
            tokio::time::sleep(down).await;
            c.spawn(victim);
        } else {
            c.members[victim].pause();
            tokio::time::sleep(down).await;
            c.members[victim].resume();
        }
        injected += 1;
    }
}

#[test]
fn linearizable_under_leader_kills_and_pauses() {
    let seed = seed();
    eprintln!("PLINTH_LIN_SEED={seed}");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut cluster = Members::start(MEMBERS, &[]);
    let (injected, history) = rt.block_on(async {
        cluster.wait_leader(LEADER_TIMEOUT).await;
        let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
        let rec = Arc::new(Recorder::new());
        let stop = Arc::new(AtomicBool::new(false));
        let stop_at = Arc::new(AtomicI64::new(0));
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            tasks.push(tokio::spawn(client(c, seed, endpoints.clone(), rec.clone(), stop.clone())));
        }
        let mut watchers = vec![tokio::spawn(watcher(
            0,
            1,
            endpoints.clone(),
            rec.clone(),
            stop.clone(),
            stop_at.clone(),
            CATCH_UP_TIMEOUT,
        ))];
        let load_end = Instant::now() + LOAD;

        // The second watcher starts mid-run from a past revision (catch-up from history).
        let late = {
            let (endpoints, rec, stop, stop_at) = (endpoints.clone(), rec.clone(), stop.clone(), stop_at.clone());
            async move {
                tokio::time::sleep(LOAD / 3).await;
                let revision = rec.history().ops.iter().filter_map(|o| o.output.as_ref()).map(Output::revision).max();
                let from = (revision.unwrap_or(1) / 2).max(1);
                watcher(1, from, endpoints, rec, stop, stop_at, CATCH_UP_TIMEOUT).await;
            }
        };
        watchers.push(tokio::spawn(late));

        let injected = faults(&mut cluster, seed, load_end).await;
        tokio::time::sleep(load_end.saturating_duration_since(Instant::now())).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("client task");
        }
        // Every member runs again; a final linearizable read gives the last revision, which
        // the watchers must reach.
        for i in 0..MEMBERS {
            if cluster.members[i].is_paused() {
                cluster.members[i].resume();
            }
            if !cluster.members[i].is_running() {
                cluster.spawn(i);
            }
        }
        let leader = cluster.wait_leader(LEADER_TIMEOUT).await;
        let mut last = None;
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        while last.is_none() && Instant::now() < deadline {
            if let Some(mut c) = connect(&cluster.members[leader].endpoint()).await {
                let input = Input::Get { key: key_of(0), serializable: false };
                let id = rec.invoke(CLIENTS * SESSIONS_MAX, input.clone());
                if let Ok(out) = send(&mut c, &input).await {
                    last = Some(out.revision());
                    rec.complete(id, out);
                }
            }
        }
        let last = last
            .unwrap_or_else(|| panic!("seed {seed}: no final read within {CATCH_UP_TIMEOUT:?}\n{}", cluster.logs()));
        stop_at.store(last, Ordering::Relaxed);
        for w in watchers {
            w.await.expect("watcher task");
        }
        (injected, rec.history())
    });
    let unknown = history.ops.iter().filter(|o| o.complete.is_none()).count();
    eprintln!(
        "{} ops ({unknown} unknown), {} watch records, {injected} faults",
        history.ops.len(),
        history.watches.len()
    );
    let verdict = linearizability::check(&history);
    let violations = usize::from(verdict.is_err());
    println!("lin-run: seed {seed}, 1 history, {violations} violations, {injected} faults");
    match verdict {
        Ok(report) => {
            eprintln!("{report:?}");
            assert!(
                report.inconclusive_keys.is_empty(),
                "seed {seed}: inconclusive keys {:?}",
                report.inconclusive_keys
            );
            assert!(history.ops.len() > 100, "seed {seed}: only {} ops: the cluster barely served", history.ops.len());
        }
        Err(v) => panic!("PLINTH_LIN_SEED={seed}: violation\n{v}\n{}", cluster.logs()),
    }
}
