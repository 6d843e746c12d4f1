//! Helpers shared by the integration tests.
// Protobuf messages read best built field by field.
#![allow(clippy::field_reassign_with_default)]
#![allow(dead_code)]

use std::path::Path;

use raft::eraftpb::Entry;
use raft_log::{Wal, WalConfig};

pub fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = bytes::Bytes::copy_from_slice(data);
    e
}

/// A configuration with tiny segments and cache, so rotation, purge and pread all happen.
pub fn small_config(dir: &Path) -> WalConfig {
    WalConfig {
        segment_bytes_max: 1024,
        cache_entries_per_group_max: 2,
        cache_bytes_per_group_max: 64,
        ..WalConfig::new(dir)
    }
}

pub fn open_small(dir: &Path) -> Wal {
    Wal::open(small_config(dir)).expect("open")
}

/// Copies every file of `from` into a new temporary directory.
pub fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.path().join(e.file_name())).unwrap();
    }
    to
}

pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

/// Starts a driver for node `id` on a fresh WAL in `dir`, ticking every 10 ms, as the
/// in-memory cluster tests use it.
pub fn start_driver(
    id: u64,
    dir: &Path,
    read_index_timeout: std::time::Duration,
    sm: Box<dyn raft_log::StateMachine>,
    transport: std::sync::Arc<dyn raft_log::Transport>,
    snapshots: Option<std::sync::Arc<dyn raft_log::SnapshotSource>>,
) -> (raft_log::Driver, raft_log::DriverHandle) {
    let wal = std::sync::Arc::new(Wal::open(WalConfig::new(dir)).expect("open"));
    let cfg = raft_log::DriverConfig {
        node_id: raft_log::NodeId(id),
        tick_interval: std::time::Duration::from_millis(10),
        read_index_timeout,
        ..raft_log::DriverConfig::default()
    };
    raft_log::Driver::start_with_snapshots(cfg, wal, sm, transport, snapshots).expect("start driver")
}

/// Proposes `data` on `h`, retrying while the driver is busy or knows no leader, until
/// `deadline`.
pub fn propose_retrying(
    h: &raft_log::DriverHandle,
    group: raft_log::GroupId,
    data: &str,
    deadline: std::time::Instant,
) {
    loop {
        match h.propose(group, bytes::Bytes::from(data.to_owned())) {
            Ok(()) => return,
            Err(raft_log::Error::Busy) | Err(raft_log::Error::NoLeader) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(e) => panic!("propose {data:?}: {e}"),
        }
    }
}
