//! `GroupStorage`: the `raft::Storage` of one group, reading the shared WAL's index.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use raft::eraftpb::{Entry, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::driver::SnapshotSource;
use crate::error::{Error, Result};
use crate::index::Slot;
use crate::record::decode_entry;
use crate::types::{GroupId, NodeId};
use crate::writer::Shared;

/// Reads entries `[low, high)` of `group`: cached ones from memory, the rest with `pread`,
/// each checked against its crc and against the index and term the index expects.
pub(crate) fn read_entries(
    shared: &Shared,
    group: GroupId,
    low: u64,
    high: u64,
    max_size: Option<u64>,
) -> Result<Vec<Entry>> {
    // The slots hold their own file handles, so a concurrent purge cannot pull a file
    // out from under the reads below once the lock is released.
    let slots = shared.index.read().slots(group, low, high, max_size)?;
    let mut out = Vec::with_capacity(slots.len());
    for slot in slots {
        match slot {
            Slot::Cached(e) => out.push(e),
            Slot::OnDisk { file, path, index, meta } => {
                let bad = |reason: String| Error::Corruption { file: path.clone(), offset: meta.offset, reason };
                let mut buf = vec![0u8; meta.len as usize];
                file.read_exact_at(&mut buf, meta.offset)
                    .map_err(|e| bad(format!("cannot read entry {index}: {e}")))?;
                let e = decode_entry(&buf).map_err(|e| bad(e.to_string()))?;
                if e.index != index || e.term != meta.term {
                    return Err(bad(format!(
                        "expected entry {index} term {}, found {} term {}",
                        meta.term, e.index, e.term
                    )));
                }
                out.push(e);
            }
        }
    }
    Ok(out)
}

/// The `raft::Storage` of one group. Cheap to clone; every clone shares the WAL's index.
#[derive(Clone)]
pub struct GroupStorage {
    group: GroupId,
    shared: Arc<Shared>,
    snapshots: Option<Arc<dyn SnapshotSource>>,
}

impl std::fmt::Debug for GroupStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupStorage").field("group", &self.group).finish_non_exhaustive()
    }
}

impl GroupStorage {
    pub(crate) fn new(group: GroupId, shared: Arc<Shared>) -> Self {
        GroupStorage { group, shared, snapshots: None }
    }

    /// This storage, answering Raft's snapshot requests from `source`.
    pub fn with_snapshot_source(mut self, source: Arc<dyn SnapshotSource>) -> Self {
        self.snapshots = Some(source);
        self
    }

    /// The group this storage serves.
    pub fn group(&self) -> GroupId {
        self.group
    }

    fn bounds(&self) -> (u64, u64) {
        self.shared.index.read().bounds(self.group)
    }
}

impl raft::Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let idx = self.shared.index.read();
        let Some(g) = idx.groups.get(&self.group) else {
            return Ok(RaftState::default());
        };
        let mut hs = g.hard_state.clone();
        // The commit index is persisted lazily, so it may trail the compact point (which
        // only covers applied, hence committed, entries); and it may exceed the last index
        // only if a corrupt tail was cut off. Raft rejects both, so clamp.
        hs.commit = hs.commit.max(g.truncated_index).min(g.last_index());
        Ok(RaftState::new(hs, g.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into().filter(|m| *m != raft::NO_LIMIT);
        read_entries(&self.shared, self.group, low, high, max_size).map_err(raft::Error::from)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let index = self.shared.index.read();
        match index.groups.get(&self.group) {
            Some(g) => g.term(idx).map_err(raft::Error::from),
            None if idx == 0 => Ok(0),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.bounds().0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.bounds().1)
    }

    /// A snapshot of the state machine for follower `to`: the source pins the state at its
    /// applied index, and the metadata pairs that index with its term and the ConfState in
    /// force (the driver asks between applies, so the two agree). The data is the source's
    /// token; the transport streams the pinned state beside the Raft message.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let Some(source) = &self.snapshots else {
            // Without a source only a snapshot received earlier can be handed back.
            let index = self.shared.index.read();
            let meta = index.groups.get(&self.group).and_then(|g| g.snapshot.clone());
            return match meta {
                Some(meta) if request_index <= meta.index => {
                    let mut snap = Snapshot::default();
                    snap.set_metadata(meta);
                    Ok(snap)
                }
                _ => Err(unavailable()),
            };
        };
        let (applied, token) = source.pin(self.group, NodeId(to)).map_err(|e| {
            tracing::warn!(group = %self.group, error = %e, "cannot pin a snapshot");
            unavailable()
        })?;
        if applied.0 == 0 || applied.0 < request_index {
            return Err(unavailable());
        }
        let index = self.shared.index.read();
        let g = index.groups.get(&self.group).ok_or_else(unavailable)?;
        let term = g.term(applied.0).map_err(|_| unavailable())?;
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = applied.0;
        meta.term = term;
        meta.set_conf_state(g.conf_state.clone());
        snap.data = token.into();
        Ok(snap)
    }
}
