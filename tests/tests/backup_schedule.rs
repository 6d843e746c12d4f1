//! Automated backups taken by the server (`--backup-dir` and the schedule flags), with the
//! real binary:
//! - one member under a write load that compacts every few hundred revisions: the chain of
//!   fulls and deltas stays continuous (no delta ever falls back to a full backup because
//!   compaction removed its history), retention keeps exactly the newest two full backups
//!   with their deltas, and restores to the newest and to 20 random revisions in between
//!   each equal the writes made up to that revision, key by key with their revisions;
//! - a target that cannot be written: the tenant's status says so, failures are counted,
//!   clients and `/readyz` are unaffected;
//! - one member, and three members, whose leader is killed with SIGKILL again and again
//!   while backups run: the chain stays valid and continuous, `plinth backup now` sent to a
//!   follower is taken by the leader, and restores (20 random revisions, and the newest one
//!   into a new cluster of as many members) equal the source at that revision, in full
//!   range and HashKV;
//! - a tenant restored in place from the chain the server took (`plinth tenant restore`):
//!   its keys are those of the past revision, its revision moved forward, and the next
//!   backup starts a new chain with a full backup that restores the tenant as it is now.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{Client, CompactionOptions, ConnectOptions, GetOptions};
use plinth_tests::cli::{http_get, plinth, plinth_ok};
use plinth_tests::cluster::Options;
use plinth_tests::members::Members;
use plinth_tests::{Kind, Server};
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// Random revisions restored per test.
const RESTORES: usize = 20;

fn seed() -> u64 {
    std::env::var("PLINTH_BACKUP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    })
}

/// The default tenant's manifest entries, checked for continuity here as well as by
/// `verify`: every delta starts where the entry before it ended.
fn manifest(backup_dir: &str) -> Vec<Value> {
    let list = plinth_ok(&["backup", "list", "--backup-dir", backup_dir, "-w", "json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    let entries = list["backups"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.first().map(|e| e["kind"].clone()), Some("full".into()), "{list}");
    for pair in entries.windows(2) {
        if pair[1]["kind"] == "delta" {
            assert_eq!(pair[1]["from_revision"], pair[0]["to_revision"], "a gap or an overlap in {list}");
        }
    }
    let verified = plinth_ok(&["backup", "verify", "--backup-dir", backup_dir]);
    assert!(verified.contains("OK"), "{verified}");
    entries
}

/// One key as a restore or the source holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kv {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
}

/// Restores the default tenant at `revision` into a new data dir under `work` and reads
/// every key of it directly from its store, with its HashKV at `revision` and its compact
/// revision (the full backup the restore started from).
fn restore_and_read(work: &Path, backup_dir: &str, revision: i64) -> (BTreeMap<Vec<u8>, Kv>, u32, i64) {
    let dir = work.join(format!("restore-{revision}"));
    let dir_s = dir.display().to_string();
    let out = plinth_ok(&[
        "restore",
        "--backup-dir",
        backup_dir,
        "--to-revision",
        &revision.to_string(),
        "--data-dir",
        &dir_s,
        "-w",
        "json",
    ]);
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["revision"].as_i64(), Some(revision), "{out}");
    let store = grpc_api::backup::restore::open_stopped_store(&dir).unwrap();
    let all = store::RangeRequest { key: vec![0u8].into(), range_end: vec![0u8].into(), ..Default::default() };
    let g = store::GroupId(1);
    assert_eq!(store.current_revision(g), revision);
    let kvs = store.range(g, &all).unwrap().kvs;
    // The hash the `HashKV` RPC answers (etcd's), which the source's is compared with.
    let (hash, compact, _) = grpc_api::backup::etcd_export::etcd_hash_kv(&store, g, 0, work).unwrap();
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
    let kvs = kvs
        .into_iter()
        .map(|kv| {
            let v = Kv {
                value: kv.value.to_vec(),
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
            };
            (kv.key.to_vec(), v)
        })
        .collect();
    (kvs, hash, compact)
}

/// The writes of a single client, in revision order: `(revision, key, value or delete)`.
#[derive(Default)]
struct Model {
    ops: Vec<(i64, Vec<u8>, Option<Vec<u8>>)>,
}

impl Model {
    fn at(&self, revision: i64) -> BTreeMap<Vec<u8>, Kv> {
        let mut state: BTreeMap<Vec<u8>, Kv> = BTreeMap::new();
        for (rev, key, value) in self.ops.iter().take_while(|(rev, _, _)| *rev <= revision) {
            match value {
                Some(v) => {
                    let e = state.entry(key.clone()).or_insert(Kv {
                        value: Vec::new(),
                        create_revision: *rev,
                        mod_revision: 0,
                        version: 0,
                    });
                    e.value = v.clone();
                    e.mod_revision = *rev;
                    e.version += 1;
                }
                None => {
                    state.remove(key);
                }
            }
        }
        state
    }
}

async fn connect(endpoints: &[String]) -> Client {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(5));
    Client::connect(endpoints, Some(opts)).await.expect("connect")
}

/// Every key of the source at `revision`.
async fn source_at(client: &mut Client, revision: i64) -> BTreeMap<Vec<u8>, Kv> {
    let opts = GetOptions::new().with_all_keys().with_revision(revision);
    let resp = client.get(vec![0u8], Some(opts)).await.expect("range at revision");
    resp.kvs()
        .iter()
        .map(|kv| {
            let v = Kv {
                value: kv.value().to_vec(),
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
                version: kv.version(),
            };
            (kv.key().to_vec(), v)
        })
        .collect()
}

/// The source's HashKV at `revision` from a member that has applied the compaction at
/// `compacted` (HashKV is not linearizable: a follower may answer before it applied it).
async fn source_hash(client: &mut Client, revision: i64, compacted: i64) -> u32 {
    let want = if compacted > 0 { compacted } else { -1 };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = client.hash_kv(revision).await.unwrap();
        if resp.compact_version() == want {
            return resp.hash();
        }
        assert!(Instant::now() < deadline, "no member applied the compaction at {compacted}: {resp:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_outrun_compaction_and_restore_any_revision() {
    let seed = seed();
    println!("seed {seed} (PLINTH_BACKUP_SEED replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let work = tempfile::tempdir().unwrap();
    let backups = work.path().join("backups");
    let backup_dir = backups.display().to_string();
    let flags = [
        "--backup-dir",
        &backup_dir,
        "--backup-full-interval",
        "2s",
        "--backup-delta-interval",
        "200ms",
        "--backup-retention",
        "2",
    ];
    let mut server = Server::start_with(
        Kind::Plinth,
        Options { flags: flags.iter().map(|s| s.to_string()).collect(), ..Options::default() },
    );
    let mut client = connect(&[server.endpoint()]).await;

    // One writer, so every response's revision is its write's; a compaction every 50
    // writes, to 3 revisions behind, far ahead of what the backups have taken.
    let mut model = Model::default();
    let deadline = Instant::now() + Duration::from_secs(7);
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let key = format!("k{:02}", rng.random_range(0..40)).into_bytes();
        if i.is_multiple_of(9) {
            let resp = client.delete(key.clone(), None).await.expect("delete");
            if resp.deleted() > 0 {
                model.ops.push((resp.header().unwrap().revision(), key, None));
            }
        } else {
            let value = format!("v{i}-{}", "x".repeat(rng.random_range(0..200))).into_bytes();
            let resp = client.put(key.clone(), value.clone(), None).await.expect("put");
            let rev = resp.header().unwrap().revision();
            model.ops.push((rev, key, Some(value)));
            if i.is_multiple_of(50) {
                client.compact(rev - 3, Some(CompactionOptions::new().with_physical())).await.expect("compact");
            }
        }
    }
    let latest = model.ops.last().expect("writes").0;
    // The tail, on demand.
    let now = plinth_ok(&["backup", "now", "--endpoints", &server.endpoint(), "-w", "json"]);
    let now: Value = serde_json::from_str(&now).unwrap();
    assert_eq!(
        now["backups"].as_array().and_then(|b| b.last()).map(|b| b["to_revision"].as_i64()),
        Some(Some(latest)),
        "{now}"
    );
    let metrics = http_get(&server.endpoint(), "/metrics").1;
    assert!(metrics.contains("plinth_backup_last_success_timestamp_seconds{tenant=\"default\"}"), "{metrics}");
    // Stopped, so that no further backup or pruning changes the target under the checks.
    server.kill9();

    let entries = manifest(&backup_dir);
    let fulls = entries.iter().filter(|e| e["kind"] == "full").count();
    assert_eq!(fulls, 2, "retention keeps the newest two full backups: {entries:?}");
    assert!(entries.len() > 4, "deltas between the full backups: {entries:?}");
    // Exactly the objects the manifest names are left in the target.
    let mut objects: Vec<String> = std::fs::read_dir(backups.join("default/objects"))
        .unwrap()
        .map(|e| format!("default/objects/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    objects.sort();
    let mut named: Vec<String> = entries.iter().map(|e| e["object"].as_str().unwrap().to_string()).collect();
    named.sort();
    assert_eq!(objects, named, "retention deletes what the manifest no longer names");
    // Compaction never forced a full backup: the history each delta needed was held.
    let log = server.log();
    assert!(!log.contains("a delta cannot continue the chain"), "{}", server.log_tail(40));
    let taken = log.matches("backup taken").count();
    assert!(taken >= entries.len(), "{taken} backups taken, {} listed", entries.len());

    let first = entries[0]["to_revision"].as_i64().unwrap();
    let mut revisions: Vec<i64> = (0..RESTORES).map(|_| rng.random_range(first..=latest)).collect();
    revisions.push(latest);
    revisions.push(first);
    for rev in revisions {
        let (restored, _, _) = restore_and_read(work.path(), &backup_dir, rev);
        assert_eq!(restored, model.at(rev), "restore at revision {rev} (seed {seed})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_shows_in_status_and_metrics_only() {
    let work = tempfile::tempdir().unwrap();
    let backups = work.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    // A file where tenant t1's directory would go: every backup of t1 fails.
    std::fs::write(backups.join("t1"), b"not a directory").unwrap();
    let backup_dir = backups.display().to_string();
    let flags = ["--backup-dir", &backup_dir, "--backup-full-interval", "1h", "--backup-delta-interval", "200ms"];
    let server = Server::start_with(
        Kind::Plinth,
        Options { flags: flags.iter().map(|s| s.to_string()).collect(), ..Options::default() },
    );
    let endpoint = server.endpoint();
    plinth_ok(&["tenant", "create", "t1", "--endpoints", &endpoint]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let show = plinth_ok(&["tenant", "show", "t1", "--endpoints", &endpoint, "-w", "json"]);
        let show: Value = serde_json::from_str(&show).unwrap();
        if show["backup"]["consecutive_failures"].as_u64() >= Some(2) {
            break show;
        }
        assert!(Instant::now() < deadline, "no failures reported: {show}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["backup"]["state"], "failing", "{status}");
    assert!(!status["backup"]["last_error"].as_str().unwrap().is_empty(), "{status}");
    let simple = plinth_ok(&["tenant", "show", "t1", "--endpoints", &endpoint]);
    assert!(simple.contains("backup: failing"), "{simple}");
    let metrics = http_get(&endpoint, "/metrics").1;
    assert!(metrics.contains("plinth_backup_failures_total{tenant=\"t1\"}"), "{metrics}");
    // The default tenant's backups go on, and neither clients nor readiness notice.
    assert!(metrics.contains("plinth_backup_last_success_timestamp_seconds{tenant=\"default\"}"), "{metrics}");
    assert_eq!(http_get(&endpoint, "/readyz").0, 200);
    let mut client = connect(std::slice::from_ref(&endpoint)).await;
    client.put("k", "v", None).await.expect("writes go on");
    let out = plinth(&["backup", "now", "--endpoints", &endpoint, "--tenant", "t1"]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("t1"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_during_backups_leaves_a_continuous_chain() {
    backups_under_kills(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_member_killed_during_backups_leaves_a_continuous_chain() {
    backups_under_kills(1).await;
}

/// `n` members with backups every 100 ms (a full one every 1.5 s) under two writers; the
/// leader killed with SIGKILL three times and restarted; then the chain checked, restored at
/// 20 random revisions (range and HashKV against the source) and, at the newest, into a new
/// cluster of `n` members.
async fn backups_under_kills(n: usize) {
    let seed = seed();
    println!("seed {seed} (PLINTH_BACKUP_SEED replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let work = tempfile::tempdir().unwrap();
    // One target for the whole cluster, as a shared bucket would be.
    let backup_dir = work.path().join("backups").display().to_string();
    let flags = ["--backup-dir", &backup_dir, "--backup-full-interval", "1500ms", "--backup-delta-interval", "100ms"];
    let mut members = Members::start(n, &flags);
    members.wait_leader(Duration::from_secs(20)).await;
    let endpoints: Vec<String> = members.members.iter().map(|m| m.endpoint()).collect();

    // Writers on every member; a write that fails while the leader is down is retried.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (stop, endpoints) = (stop.clone(), endpoints.clone());
        writers.push(tokio::spawn(async move {
            let mut client = connect(&endpoints).await;
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let key = format!("w{w}-{:02}", i % 30);
                if client.put(key, format!("{i}-{}", "y".repeat(100)), None).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    client = connect(&endpoints).await;
                }
            }
        }));
    }
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..1500))).await;
        let leader = members.wait_leader(Duration::from_secs(20)).await;
        members.members[leader].kill9();
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        members.spawn(leader);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let leader = members.wait_leader(Duration::from_secs(20)).await;
    let follower = (leader + 1) % n;
    let mut client = connect(&endpoints).await;
    let latest = client.get("any", None).await.unwrap().header().unwrap().revision();
    // Asked of a follower (with three members), the backup is taken by the leader.
    let now = plinth_ok(&["backup", "now", "--endpoints", &endpoints[follower], "-w", "json"]);
    let now: Value = serde_json::from_str(&now).unwrap();
    assert_eq!(
        now["backups"].as_array().and_then(|b| b.last()).map(|b| b["to_revision"].as_i64()),
        Some(Some(latest)),
        "{now}"
    );
    let status = client.status().await.unwrap();
    assert_eq!(now["member_id"].as_str(), Some(format!("{:x}", status.leader()).as_str()), "{now}");

    // The chain must span at least two full backups. On a loaded machine the kills can come
    // faster than a restarted member reaches its next full one (every 1.5 s of uptime), so
    // the member gets the time to take it now.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let entries = loop {
        let entries = manifest(&backup_dir);
        if entries.iter().filter(|e| e["kind"] == "full").count() >= 2 || std::time::Instant::now() > deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(entries.iter().filter(|e| e["kind"] == "full").count() >= 2, "{entries:?}");
    let fulls: Vec<i64> =
        entries.iter().filter(|e| e["kind"] == "full").map(|e| e["to_revision"].as_i64().unwrap()).collect();
    let mut revisions: Vec<i64> = (0..RESTORES).map(|_| rng.random_range(fulls[0]..=latest)).collect();
    revisions.push(latest);
    revisions.sort_unstable();
    // A restore starts at the newest full backup at or before its revision and is compacted
    // there; compacted at the same revision, the source hashes alike. Revisions ascend, so
    // the source is only ever compacted forward (reads at them stay possible). The members
    // go on taking backups meanwhile, so the full a restore starts from is the one it says.
    let mut compacted = 0;
    for rev in revisions {
        let (restored, hash, compact) = restore_and_read(work.path(), &backup_dir, rev);
        assert_eq!(restored, source_at(&mut client, rev).await, "restore at revision {rev} (seed {seed})");
        if compact > compacted {
            client.compact(compact, None).await.unwrap();
            compacted = compact;
        }
        // etcd refuses HashKV at the compact revision itself (`HashByRev`: rev <= compactRev),
        // so a restore at the revision of the full it starts from is compared by its keys.
        if rev > compacted {
            assert_eq!(hash, source_hash(&mut client, rev, compacted).await, "HashKV at {rev} (seed {seed})");
        }
    }

    // The newest revision into a new cluster of `n` members; the source is compacted at the
    // newest full backup (which the restore starts from) by now.
    let mut restored = Members::create(n, &[]);
    let cluster = restored.members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",");
    for m in &restored.members {
        let data = m.dir().join("data").display().to_string();
        plinth_ok(&[
            "restore",
            "--backup-dir",
            &backup_dir,
            "--data-dir",
            &data,
            "--name",
            &m.name,
            "--initial-cluster",
            &cluster,
            "--initial-advertise-peer-urls",
            &m.peer_url(),
            "--advertise-client-urls",
            &m.endpoint(),
            "--initial-cluster-token",
            "members-test",
        ]);
    }
    for i in 0..n {
        restored.spawn(i);
    }
    restored.wait_leader(Duration::from_secs(20)).await;
    let restored_endpoints: Vec<String> = restored.members.iter().map(|m| m.endpoint()).collect();
    let mut restored_client = connect(&restored_endpoints).await;
    assert_eq!(source_at(&mut restored_client, latest).await, source_at(&mut client, latest).await);
    // At the compact revision itself HashKV is refused, as etcd refuses it; both sides are
    // then at `latest` and hashed at their current revision (0).
    let at = if latest > compacted { latest } else { 0 };
    let source = source_hash(&mut client, at, compacted).await;
    for m in &restored.members {
        let mut one = connect(std::slice::from_ref(&m.endpoint())).await;
        let restored_hash = one.hash_kv(at).await.unwrap();
        assert_eq!(restored_hash.hash(), source, "HashKV at {latest} on {}", m.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_restored_from_scheduled_backups_starts_a_new_chain() {
    let work = tempfile::tempdir().unwrap();
    let backup_dir = work.path().join("backups").display().to_string();
    let block = plinth_tests::ports::reserve_block(2);
    let base = block[0].get().to_string();
    let flags = [
        "--backup-dir",
        &backup_dir,
        "--backup-full-interval",
        "1h",
        "--backup-delta-interval",
        "200ms",
        "--tenant-client-port-base",
        &base,
    ];
    let server = Server::start_with(
        Kind::Plinth,
        Options { flags: flags.iter().map(|s| s.to_string()).collect(), ..Options::default() },
    );
    let endpoint = server.endpoint();
    plinth_ok(&["tenant", "create", "t1", "--endpoints", &endpoint]);
    let tenant_endpoint = format!("http://127.0.0.1:{}", block[0].get() + 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut t1 = loop {
        let mut c = connect(std::slice::from_ref(&tenant_endpoint)).await;
        if c.status().await.is_ok() {
            break c;
        }
        assert!(Instant::now() < deadline, "tenant port never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let list_t1 = || {
        let list = plinth_ok(&["backup", "list", "--backup-dir", &backup_dir, "--tenant", "t1", "-w", "json"]);
        serde_json::from_str::<Value>(&list).unwrap()["backups"].as_array().cloned().unwrap_or_default()
    };
    let wait_backed_up = |revision: i64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let backups = list_t1();
            if backups.last().and_then(|b| b["to_revision"].as_i64()) >= Some(revision) {
                return backups;
            }
            assert!(Instant::now() < deadline, "t1's backups never reached {revision}: {backups:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The tenant's first (full) backup, before anything is written.
    wait_backed_up(1);
    for i in 0..10 {
        t1.put(format!("k{i}"), format!("first-{i}"), None).await.unwrap();
    }
    let past = t1.get("k0", None).await.unwrap().header().unwrap().revision();
    let at_past = source_at(&mut t1, past).await;
    for i in 0..10 {
        t1.put(format!("k{i}"), format!("second-{i}"), None).await.unwrap();
    }
    t1.delete("k9", None).await.unwrap();
    let before = t1.get("k0", None).await.unwrap().header().unwrap().revision();
    wait_backed_up(before);

    // Back to a past revision, in place, from the chain the server took.
    plinth_ok(&[
        "tenant",
        "restore",
        "t1",
        "--backup-dir",
        &backup_dir,
        "--to-revision",
        &past.to_string(),
        "--endpoints",
        &endpoint,
    ]);
    let mut t1 = connect(std::slice::from_ref(&tenant_endpoint)).await;
    let now = t1.get("k0", None).await.unwrap().header().unwrap().revision();
    assert!(now > before, "the revision went back: {now} after {before}");
    let restored = source_at(&mut t1, now).await;
    let values = |m: &BTreeMap<Vec<u8>, Kv>| m.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect::<Vec<_>>();
    assert_eq!(values(&restored), values(&at_past), "t1 at {now} holds its keys of revision {past}");

    // The import ended the chain: the next backup is a full one at or after the restore,
    // and the target restores the tenant as it is now.
    t1.put("after", "restore", None).await.unwrap();
    let latest = t1.get("after", None).await.unwrap().header().unwrap().revision();
    let backups = wait_backed_up(latest);
    let first_after = backups.iter().find(|b| b["to_revision"].as_i64() >= Some(now)).unwrap();
    assert_eq!(first_after["kind"], "full", "{backups:?}");
    assert!(plinth_ok(&["backup", "verify", "--backup-dir", &backup_dir]).contains("OK"));
    let dir = work.path().join("offline").display().to_string();
    plinth_ok(&["restore", "--backup-dir", &backup_dir, "--tenant", "t1", "--data-dir", &dir]);
    let store = grpc_api::backup::restore::open_stopped_store(Path::new(&dir)).unwrap();
    let all = store::RangeRequest { key: vec![0u8].into(), range_end: vec![0u8].into(), ..Default::default() };
    let offline: Vec<(Vec<u8>, Vec<u8>)> = store
        .range(store::GroupId(1), &all)
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| (kv.key.to_vec(), kv.value.to_vec()))
        .collect();
    assert_eq!(offline, values(&source_at(&mut t1, latest).await));
}
