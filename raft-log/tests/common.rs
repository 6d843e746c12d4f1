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
