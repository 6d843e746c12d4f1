//! Installing a Raft snapshot: it must be durable when `install_snapshot` returns (the
//! caller then truncates the Raft log below it), and a snapshot that is not ahead of what the
//! store already applied must be refused without touching the store.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{b, Node, G};
use store::{Command, CommandBody, Error, Message, PutRequest, RangeRequest, Store, StoreConfig};

/// Set in the child process of the crash test: the store directory to install into.
const CRASH_CHILD_DIR: &str = "PLINTH_SNAPSHOT_CRASH_CHILD_DIR";
/// Longest the crash child may run before the parent gives up on it.
const CRASH_CHILD_TIMEOUT: Duration = Duration::from_secs(120);

fn put_entry(index: u64, k: &str, v: &str) -> Vec<u8> {
    Command::new(index, CommandBody::Put(PutRequest { key: b(k), value: b(v), ..Default::default() })).encode_to_vec()
}

/// Applies puts `from..=to` of one shared log (entry `i` puts `k{i % 13}`).
fn apply_log(s: &Store, from: u64, to: u64) {
    for i in from..=to {
        let e = put_entry(i, &format!("k{}", i % 13), &format!("v{i}"));
        s.apply(G, &[(i, &e)]).unwrap().pop().unwrap().unwrap();
    }
}

fn snapshot_chunks(s: &Store) -> Vec<Vec<u8>> {
    s.snapshot(G).unwrap().map(|c| c.unwrap()).collect()
}

/// Every key at the current revision, the KV hash and the applied index.
fn fingerprint(s: &Store) -> (store::RangeResponse, (u32, i64, i64), u64, i64) {
    let all = s.range(G, &RangeRequest { key: b("\0"), range_end: b("\0"), ..Default::default() }).unwrap();
    (all, s.hash_kv(G, 0).unwrap(), s.applied_index(G), s.current_revision(G))
}

/// A snapshot replaces keys the target had just written (and the apply path had cached for
/// the next writes of them): the writes after the install build on the snapshot's versions,
/// exactly as on the member the snapshot came from.
#[test]
fn writes_after_an_install_build_on_the_snapshots_versions() {
    let source = Node::new();
    apply_log(&source.store, 1, 60);
    let target = Node::new();
    apply_log(&target.store, 1, 20);
    assert_eq!(target.store.install_snapshot(G, snapshot_chunks(&source.store).into_iter()).unwrap(), 60);
    apply_log(&source.store, 61, 80);
    apply_log(&target.store, 61, 80);
    assert_eq!(fingerprint(&target.store), fingerprint(&source.store));
}

/// The crash: a child process opens a store that applied entries 1..=5 and flushed them,
/// installs a snapshot at index 40 of the same log and exits at once with `_exit` (no
/// destructor closes RocksDB, whose clean close would flush the memtables; like SIGKILL).
/// The Raft log of a real member is truncated below 40 right after the install, so the
/// reopened store must be at index 40 with the snapshot's data.
#[test]
fn installed_snapshot_survives_a_crash_right_after_install() {
    if let Ok(dir) = std::env::var(CRASH_CHILD_DIR) {
        let source = Node::new();
        apply_log(&source.store, 1, 40);
        let chunks = snapshot_chunks(&source.store);
        let target = Store::open(Path::new(&dir), StoreConfig::default()).unwrap();
        apply_log(&target, 1, 5);
        target.flush().unwrap();
        assert_eq!(target.install_snapshot(G, chunks.into_iter()).unwrap(), 40);
        // SAFETY: `_exit` ends the process without running destructors or atexit
        // handlers, which is the point: RocksDB is not closed.
        unsafe { libc::_exit(0) };
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "installed_snapshot_survives_a_crash_right_after_install", "--nocapture"])
        .env(CRASH_CHILD_DIR, dir.path())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + CRASH_CHILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("crash child did not finish within {CRASH_CHILD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "crash child failed: {status}");

    let reference = Node::new();
    apply_log(&reference.store, 1, 40);
    let reopened = Store::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(
        reopened.applied_index(G),
        40,
        "the installed snapshot was lost in the crash: the store is back at its old applied index"
    );
    assert_eq!(fingerprint(&reopened), fingerprint(&reference.store));
}

/// A snapshot at or below the applied index is refused with a typed error (a concurrent
/// apply moved past it before the install took the apply lock), and the store is unchanged.
#[test]
fn snapshot_not_ahead_of_applied_is_refused_and_changes_nothing() {
    let source = Node::new();
    apply_log(&source.store, 1, 10);
    let at_10 = snapshot_chunks(&source.store);

    let target = Node::new();
    apply_log(&target.store, 1, 15);
    let before = fingerprint(&target.store);
    let r = target.store.install_snapshot(G, at_10.clone().into_iter());
    assert!(
        matches!(r, Err(Error::SnapshotNotAhead { index: 10, applied_index: 15 })),
        "a snapshot behind the applied index must be refused: {r:?}"
    );
    assert_eq!(fingerprint(&target.store), before, "a refused snapshot leaves the store unchanged");

    // Exactly at the applied index: nothing to install either.
    let equal = Node::new();
    apply_log(&equal.store, 1, 10);
    let before = fingerprint(&equal.store);
    let r = equal.store.install_snapshot(G, at_10.clone().into_iter());
    assert!(matches!(r, Err(Error::SnapshotNotAhead { index: 10, applied_index: 10 })), "{r:?}");
    assert_eq!(fingerprint(&equal.store), before);

    // Ahead of it: installed, and the store then applies the log after it.
    let behind = Node::new();
    apply_log(&behind.store, 1, 4);
    assert_eq!(behind.store.install_snapshot(G, at_10.into_iter()).unwrap(), 10);
    apply_log(&behind.store, 11, 15);
    assert_eq!(fingerprint(&behind.store), fingerprint(&target.store));
}

/// A snapshot ahead in log index but behind in revision cannot come from the same log:
/// installing it would move the revision backwards under watchers, so it is refused.
#[test]
fn snapshot_with_an_older_revision_is_refused() {
    let source = Node::new();
    apply_log(&source.store, 1, 5);
    // Entries 6..=20 are Raft no-ops: the index moves, the revision does not.
    let noops: Vec<(u64, &[u8])> = (6..=20).map(|i| (i, &[][..])).collect();
    source.store.apply(G, &noops).unwrap();
    assert_eq!((source.store.applied_index(G), source.store.current_revision(G)), (20, 6));
    let chunks = snapshot_chunks(&source.store);

    let target = Node::new();
    apply_log(&target.store, 1, 12);
    let before = fingerprint(&target.store);
    let r = target.store.install_snapshot(G, chunks.into_iter());
    assert!(matches!(r, Err(Error::Corruption(_))), "{r:?}");
    assert_eq!(fingerprint(&target.store), before);
}
