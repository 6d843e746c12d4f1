//! Reopen/replay, snapshots, background compaction and watch behaviour over time.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{b, drain_until_synced, recv_until, Node, G};
use store::{Command, CommandBody, CompactRequest, Error, Message, PutRequest, Store, StoreConfig, WatchSpec};

fn put_entry(index: u64, k: &str, v: &str) -> Vec<u8> {
    Command::new(index, CommandBody::Put(PutRequest { key: b(k), value: b(v), ..Default::default() })).encode_to_vec()
}

fn compact(n: &mut Node, rev: i64) {
    n.exec(CommandBody::Compact(CompactRequest { revision: rev, physical: false })).unwrap();
}

/// Full state fingerprint: every key at the current revision and the KV hash.
fn fingerprint(s: &Store) -> (store::RangeResponse, (u32, i64, i64), u64) {
    let all = s.range(G, &store::RangeRequest { key: b("\0"), range_end: b("\0"), ..Default::default() }).unwrap();
    (all, s.hash_kv(G, 0).unwrap(), s.applied_index(G))
}

const CRASH_CHILD_DIR: &str = "PLINTH_STORE_CRASH_CHILD_DIR";

fn log_entries() -> Vec<Vec<u8>> {
    (1..=300u64).map(|i| put_entry(i, &format!("k{}", i % 37), &format!("v{i}"))).collect()
}

fn apply_range(s: &Store, entries: &[Vec<u8>], from: u64, to: u64) {
    for chunk in (from..=to).collect::<Vec<_>>().chunks(7) {
        let batch: Vec<(u64, &[u8])> = chunk.iter().map(|i| (*i, &entries[*i as usize - 1][..])).collect();
        for r in s.apply(G, &batch).unwrap() {
            r.unwrap();
        }
    }
}

/// The crash: a child process applies 1..=150, flushes, applies 151..=280 and exits without
/// closing RocksDB (no destructors run), so everything after the flush may be lost. The
/// parent reopens, finds a batch-boundary applied index, replays the log from there and
/// must reach exactly the state of a store that never crashed.
#[test]
fn crash_without_flush_replays_to_identical_state() {
    let entries = log_entries();
    if let Ok(dir) = std::env::var(CRASH_CHILD_DIR) {
        let s = Store::open(std::path::Path::new(&dir), StoreConfig::default()).unwrap();
        apply_range(&s, &entries, 1, 150);
        assert_eq!(s.flush().unwrap(), vec![(G, 150)]);
        apply_range(&s, &entries, 151, 280);
        std::process::exit(0);
    }
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_without_flush_replays_to_identical_state", "--nocapture"])
        .env(CRASH_CHILD_DIR, dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "crash child failed: {status}");

    let ref_dir = tempfile::tempdir().unwrap();
    let reference = Store::open(ref_dir.path(), StoreConfig::default()).unwrap();
    apply_range(&reference, &entries, 1, 300);

    let s = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let applied = s.applied_index(G);
    assert!((150..=280).contains(&applied), "applied index {applied} must be one the child reached after its flush");
    assert!(applied == 280 || (applied - 150).is_multiple_of(7), "applied index {applied} is not a batch boundary");
    eprintln!("crash test: reopened at applied index {applied} of 280");
    // Replay from the log: already-applied entries are skipped, the rest applied.
    let replay: Vec<(u64, &[u8])> = (applied - 3..=300).map(|i| (i, &entries[i as usize - 1][..])).collect();
    let results = s.apply(G, &replay).unwrap();
    assert_eq!(results.iter().take_while(|r| matches!(r, Err(Error::AlreadyApplied { .. }))).count(), 4);
    assert_eq!(fingerprint(&s), fingerprint(&reference));
}

#[test]
fn snapshot_round_trip_and_corrupt_chunks_rejected() {
    let mut n = Node::new();
    for i in 0..3000 {
        n.put(&format!("key-{:05}", i % 1500), &"v".repeat(700));
    }
    n.exec(CommandBody::LeaseGrant(store::LeaseGrantRequest { id: 5, ttl: 30 })).unwrap();
    n.put_lease("leased", "x", 5).unwrap();
    compact(&mut n, 1000);
    let snap = n.store.snapshot(G).unwrap();
    assert_eq!(snap.applied_index(), n.store.applied_index(G));
    let chunks: Vec<Vec<u8>> = snap.map(|c| c.unwrap()).collect();
    assert!(chunks.len() > 2, "a multi-chunk snapshot");
    assert!(chunks.iter().all(|c| c.len() <= store::SNAPSHOT_CHUNK_BYTES_MAX));

    let other = Node::new();
    // Pre-existing data in the target group must be replaced.
    let mut other = other;
    other.put("stale", "x");
    // A flipped bit, a missing chunk and a truncated stream are all rejected untouched.
    let mut bad = chunks.clone();
    bad[1][100] ^= 1;
    assert!(matches!(other.store.install_snapshot(G, bad.into_iter()), Err(Error::Corruption(_))));
    let mut missing = chunks.clone();
    missing.remove(1);
    assert!(matches!(other.store.install_snapshot(G, missing.into_iter()), Err(Error::Corruption(_))));
    let truncated = chunks[..chunks.len() - 1].to_vec();
    assert!(matches!(other.store.install_snapshot(G, truncated.into_iter()), Err(Error::Corruption(_))));
    assert!(other.get("stale").is_some(), "failed installs leave data untouched");

    let applied = other.store.install_snapshot(G, chunks.into_iter()).unwrap();
    assert_eq!(applied, n.store.applied_index(G));
    assert!(other.get("stale").is_none());
    assert_eq!(fingerprint(&other.store), fingerprint(&n.store));
    assert_eq!(other.store.compact_revision(G), 1000);
    assert_eq!(other.store.lease_keys(G, 5).unwrap(), vec![b("leased")]);
    assert!(matches!(other.range("key-00001", "", 999), Err(Error::Compacted { .. })));
    assert_eq!(other.range("key-00001", "", 1000).unwrap(), n.range("key-00001", "", 1000).unwrap());
}

#[test]
fn background_compaction_keeps_r_readable_and_resumes_after_restart() {
    let cfg = StoreConfig { compaction_batch_keys: 50, ..StoreConfig::default() };
    let mut n = Node::with_config(cfg.clone());
    for round in 0..20 {
        for k in 0..100 {
            n.put(&format!("k{k:03}"), &format!("r{round}"));
        }
    }
    n.del("k050", "k060");
    let r = n.store.current_revision(G) - 150;
    let before_at_r = n.range("\0", "\0", r).unwrap();
    compact(&mut n, r);
    let hash_scheduled = n.store.hash_kv(G, 0).unwrap();
    assert_eq!(hash_scheduled.1, r);
    // Scheduled: below R fails at once, R is readable, hash is unaffected by purging.
    assert!(matches!(n.range("k001", "", r - 1), Err(Error::Compacted { .. })));
    assert!(matches!(
        n.exec(CommandBody::Compact(CompactRequest { revision: r, physical: false })),
        Err(Error::Compacted { .. })
    ));
    assert!(n.store.wait_compaction_finished(G, r, Duration::from_secs(20)));
    let mut at_r = n.range("\0", "\0", r).unwrap();
    at_r.revision = before_at_r.revision;
    assert_eq!(at_r, before_at_r);
    assert_eq!(n.store.hash_kv(G, 0).unwrap(), hash_scheduled, "purging does not change the hash");

    // Schedule another compaction, and restart before it can finish: it resumes.
    let r2 = n.store.current_revision(G) - 10;
    let at_r2 = n.range("\0", "\0", r2).unwrap();
    let idx = n.next_index;
    let bytes =
        Command::new(idx, CommandBody::Compact(CompactRequest { revision: r2, physical: false })).encode_to_vec();
    n.store.apply(G, &[(idx, &bytes)]).unwrap();
    n.store.flush().unwrap();
    let path = n.path().to_path_buf();
    drop(n.store);
    let s = Store::open(&path, cfg).unwrap();
    assert_eq!(s.compact_revision(G), r2);
    assert!(s.wait_compaction_finished(G, r2, Duration::from_secs(20)));
    assert_eq!(s.compaction_finished_revision(G), r2);
    assert_eq!(
        s.range(G, &store::RangeRequest { key: b("\0"), range_end: b("\0"), revision: r2, ..Default::default() })
            .unwrap()
            .kvs,
        at_r2.kvs
    );
}

#[test]
fn watch_catch_up_compaction_cancel_and_progress() {
    let mut n = Node::with_config(StoreConfig { watch_stream_buffer: 4, ..StoreConfig::default() });
    for i in 0..10 {
        n.put("a", &format!("{i}"));
    }
    // From the past: catch-up delivers revisions 2..=11 with prev_kv.
    let w = n.store.watch_stream(G);
    let id = w.watch(WatchSpec { key: b("a"), start_revision: 2, prev_kv: true, ..Default::default() });
    assert_eq!(id.0, 0);
    let got = drain_until_synced(&w, Duration::from_secs(10));
    assert!(got[0].created);
    let events: Vec<_> = got.iter().flat_map(|r| r.events.clone()).collect();
    assert_eq!(events.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(), (2..=11).collect::<Vec<_>>());
    assert!(events[0].prev_kv.is_none() && events[1].prev_kv.as_ref().unwrap().mod_revision == 2);

    // A slow consumer: the stream buffer (4 slots; unread responses merge up to 16 events a
    // slot) overflows; nothing is lost or duplicated.
    for i in 0..100 {
        n.put("a", &format!("slow{i}"));
    }
    let got = drain_until_synced(&w, Duration::from_secs(10));
    let revs: Vec<i64> = got.iter().flat_map(|r| r.events.iter().map(|e| e.kv.mod_revision)).collect();
    assert_eq!(revs, (12..=111).collect::<Vec<_>>());
    // Progress only after the events: the progress revision is the last one.
    assert!(w.request_progress());
    let p = recv_until(&w, Duration::from_secs(5), |e| e.watch_id == -1);
    assert_eq!(p.last().unwrap().revision, 111);

    // Compaction: watching at the compact revision works, below is canceled.
    compact(&mut n, 30);
    let w2 = n.store.watch_stream(G);
    w2.watch(WatchSpec { key: b("a"), start_revision: 29, ..Default::default() });
    w2.watch(WatchSpec { key: b("a"), start_revision: 30, ..Default::default() });
    let got = recv_until(&w2, Duration::from_secs(5), |e| e.canceled);
    assert_eq!((got[1].watch_id, got[1].compact_revision), (0, 30));
    let got = drain_until_synced(&w2, Duration::from_secs(10));
    let first = got.iter().find(|r| !r.events.is_empty()).unwrap();
    assert_eq!((first.watch_id, first.events[0].kv.mod_revision), (1, 30));

    // Future start stays quiet until reached; cancel answers once.
    let w3 = n.store.watch_stream(G);
    let f = w3.watch(WatchSpec { key: b("a"), start_revision: 113, ..Default::default() });
    n.put("a", "112");
    assert!(!w3.request_progress(), "not synced until the start revision is reached");
    n.put("a", "113");
    let got = recv_until(&w3, Duration::from_secs(5), |e| !e.events.is_empty());
    assert_eq!(got.last().unwrap().events[0].kv.mod_revision, 113);
    assert!(w3.progress_for(f));
    assert!(w3.cancel(f) && !w3.cancel(f));
    drop(w3);
    let _ = Bytes::new();
}
