//! `GroupStorage`: the `raft::Storage` of one group, reading the shared WAL's index.

use std::collections::VecDeque;
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
///
/// **Entries not yet durable.** The driver may hand a Ready's entries to the WAL writer and
/// go on before they are written (`ready.rs`, pipelined persistence). raft-rs then treats
/// them as stable at once (`advance_append_async` moves them out of its unstable log) and
/// reads them back through this trait, for instance to send them to followers. They are
/// therefore staged here, in the storage the group's RawNode owns, from the moment they are
/// submitted until their write has completed and the index holds them: every read prefers
/// the staged entries over the index at and above the first staged index, and the log ends
/// at the last staged entry. A later submission that overwrites a suffix (a follower taking
/// a new leader's entries) replaces the staged suffix, so the newest submission always wins,
/// as it will in the index once written. Clones (other readers of the WAL) see only what is
/// durable.
#[derive(Clone)]
pub struct GroupStorage {
    group: GroupId,
    shared: Arc<Shared>,
    snapshots: Option<Arc<dyn SnapshotSource>>,
    /// Submitted, not yet written entries, consecutive by index, each with the number of
    /// the submission that carries it (non-decreasing along the queue).
    staged: VecDeque<(u64, Entry)>,
}

impl std::fmt::Debug for GroupStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupStorage").field("group", &self.group).finish_non_exhaustive()
    }
}

impl GroupStorage {
    pub(crate) fn new(group: GroupId, shared: Arc<Shared>) -> Self {
        GroupStorage { group, shared, snapshots: None, staged: VecDeque::new() }
    }

    /// Stages `entries` (consecutive, as one Ready holds them) carried by submission
    /// `submission`: they replace any staged entries from their first index on.
    pub(crate) fn stage(&mut self, submission: u64, entries: Vec<Entry>) {
        let Some(first) = entries.first().map(|e| e.index) else {
            return;
        };
        while self.staged.back().is_some_and(|(_, e)| e.index >= first) {
            self.staged.pop_back();
        }
        debug_assert!(self.staged.back().is_none_or(|(_, e)| e.index + 1 == first), "staged entries have a gap");
        self.staged.extend(entries.into_iter().map(|e| (submission, e)));
    }

    /// Drops the staged entries carried by submissions up to `submission`, which the
    /// index now holds (the writer indexes a frame before it completes it).
    pub(crate) fn release(&mut self, submission: u64) {
        while self.staged.front().is_some_and(|(s, _)| *s <= submission) {
            self.staged.pop_front();
        }
    }

    /// How many entries are staged (for tests and invariants).
    pub(crate) fn staged_len(&self) -> usize {
        self.staged.len()
    }

    fn first_staged(&self) -> Option<u64> {
        self.staged.front().map(|(_, e)| e.index)
    }

    fn staged_entry(&self, index: u64) -> Option<&Entry> {
        let first = self.first_staged()?;
        self.staged.get(index.checked_sub(first)? as usize).map(|(_, e)| e)
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
        let Some(first_staged) = self.first_staged().filter(|f| *f < high) else {
            return read_entries(&self.shared, self.group, low, high, max_size).map_err(raft::Error::from);
        };
        if high > first_staged + self.staged.len() as u64 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = if low < first_staged {
            let durable = read_entries(&self.shared, self.group, low, first_staged, max_size)?;
            if durable.len() < (first_staged - low) as usize {
                // Cut short by `max_size`: nothing staged may follow.
                return Ok(durable);
            }
            durable
        } else {
            Vec::with_capacity((high - low) as usize)
        };
        for i in low.max(first_staged)..high {
            out.push(self.staged_entry(i).expect("checked: staged through high - 1").clone());
        }
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if let Some(e) = self.staged_entry(idx) {
            return Ok(e.term);
        }
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
        // The newest submission's last entry is the log's last (see the type's doc).
        match self.staged.back() {
            Some((_, e)) => Ok(e.index),
            None => Ok(self.bounds().1),
        }
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

#[cfg(test)]
mod tests {
    use protobuf::Message as _;
    use raft::Storage as _;

    use super::*;
    use crate::batch::WriteBatch;
    use crate::config::WalConfig;
    use crate::wal::Wal;

    const G: GroupId = GroupId(7);

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: vec![index as u8; 100].into(), ..Entry::default() }
    }

    fn entries(low: u64, high: u64, term: u64) -> Vec<Entry> {
        (low..high).map(|i| entry(i, term)).collect()
    }

    fn read(s: &GroupStorage, low: u64, high: u64, max: Option<u64>) -> Vec<(u64, u64)> {
        let got = s.entries(low, high, max, GetEntriesContext::empty(false)).unwrap();
        got.iter().map(|e| (e.index, e.term)).collect()
    }

    /// Staged entries are read in place of the index's from their first index on, end the
    /// log, replace a staged suffix they overwrite, and leave once their submission is
    /// released; other clones of the storage see only what is written.
    #[test]
    fn staged_entries_shadow_the_index_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
        let mut b = WriteBatch::new();
        b.add_entries(G, &entries(1, 6, 1));
        wal.write(b).unwrap();
        let mut s = wal.storage(G);

        // Submission 1 overwrites 4.. with term 2 and goes on to 8; submission 2 appends 9..10.
        s.stage(1, entries(4, 9, 2));
        s.stage(2, entries(9, 11, 2));
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(s.term(3).unwrap(), 1);
        assert_eq!(s.term(5).unwrap(), 2);
        assert_eq!(s.term(10).unwrap(), 2);
        let want: Vec<(u64, u64)> = (1..11).map(|i| (i, if i < 4 { 1 } else { 2 })).collect();
        assert_eq!(read(&s, 1, 11, None), want);
        assert_eq!(read(&s, 6, 9, None), vec![(6, 2), (7, 2), (8, 2)]);
        // A size limit cuts across the two sources and always returns one entry.
        assert_eq!(read(&s, 2, 11, Some(1)).len(), 1);
        assert_eq!(read(&s, 5, 11, Some(1)), vec![(5, 2)]);
        let three = read(&s, 2, 11, Some(3 * entry(1, 1).compute_size() as u64));
        assert_eq!(three, vec![(2, 1), (3, 1), (4, 2)]);
        // Beyond the staged end is not part of the log.
        assert!(s.entries(1, 12, None, GetEntriesContext::empty(false)).is_err());
        // Durable readers do not see staged entries.
        assert_eq!(wal.storage(G).last_index().unwrap(), 5);
        assert_eq!(wal.storage(G).term(5).unwrap(), 1);

        // A new leader's entries from 7 on (term 3) replace the staged suffix.
        s.stage(3, entries(7, 8, 3));
        assert_eq!(s.last_index().unwrap(), 7);
        assert_eq!(s.term(7).unwrap(), 3);
        assert_eq!(s.staged_len(), 4);

        // Submission 1 is written (4..8 term 2): entries 4..6 leave the stage; 7 stays staged
        // with term 3 although the index now holds 7 with term 2.
        let mut b = WriteBatch::new();
        b.add_entries(G, &entries(4, 9, 2));
        wal.write(b).unwrap();
        s.release(1);
        assert_eq!(s.staged_len(), 1);
        assert_eq!(s.last_index().unwrap(), 7);
        assert_eq!(s.term(7).unwrap(), 3);
        assert_eq!(read(&s, 5, 8, None), vec![(5, 2), (6, 2), (7, 3)]);
        // Submission 2 (overwritten) and 3 are written; after the release the index answers.
        let mut b = WriteBatch::new();
        b.add_entries(G, &entries(9, 11, 2));
        wal.write(b).unwrap();
        let mut b = WriteBatch::new();
        b.add_entries(G, &entries(7, 8, 3));
        wal.write(b).unwrap();
        s.release(3);
        assert_eq!(s.staged_len(), 0);
        assert_eq!(s.last_index().unwrap(), 7);
        assert_eq!(read(&s, 6, 8, None), vec![(6, 2), (7, 3)]);
    }
}
