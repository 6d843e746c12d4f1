//! The in-memory index: per group, where each entry lives on disk (not the entry itself),
//! the group's HardState / ConfState / snapshot metadata / compact point, and a small
//! cache of the most recent entries; per segment, what purge needs to know.
//!
//! Invariants (checked by `check_invariants`):
//! - a group's log is `(truncated_index, last_index]`, with `metas[i]` describing index
//!   `truncated_index + 1 + i`; `truncated_index <= last_index`;
//! - the cache, when not empty, holds consecutive entries ending at `last_index`, within
//!   its count and byte limits;
//! - every entry position names a segment that is still in `segments`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};

use crate::error::{Error, Result};
use crate::record::{Checkpoint, EntrySpan, Record};
use crate::types::{GroupId, LogIndex, Term};

/// Where one entry's `len | crc | pb` bytes are.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct EntryMeta {
    pub term: u64,
    pub seq: u64,
    pub offset: u64,
    pub len: u32,
}

/// Bounds on the per-group entry cache.
#[derive(Copy, Clone, Debug)]
pub(crate) struct CacheLimits {
    pub entries_max: usize,
    pub bytes_max: usize,
}

/// One group's slice of the index.
#[derive(Debug, Default)]
pub(crate) struct GroupIndex {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    pub snapshot: Option<SnapshotMetadata>,
    pub truncated_index: u64,
    pub truncated_term: u64,
    metas: VecDeque<EntryMeta>,
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    /// Recovery only: highest index of a gap replay skipped over (entries in purged
    /// segments), and whether the truncated term is still a placeholder.
    hole_end: u64,
    truncated_term_unknown: bool,
}

/// Read-only view of one group's durable state.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupState {
    /// Latest HardState.
    pub hard_state: HardState,
    /// Latest ConfState.
    pub conf_state: ConfState,
    /// Latest snapshot metadata, if a snapshot was ever applied.
    pub snapshot: Option<SnapshotMetadata>,
    /// First index still in the log (compact point + 1).
    pub first_index: LogIndex,
    /// Last index in the log (`first_index - 1` when empty).
    pub last_index: LogIndex,
    /// Term of the entry at `first_index - 1`.
    pub truncated_term: Term,
}

/// Where to find the bytes of one requested entry.
pub(crate) enum Slot {
    Cached(Entry),
    OnDisk { file: Arc<File>, path: PathBuf, index: u64, meta: EntryMeta },
}

/// The effect of a record on a group's `(truncated_index, last_index)`, or why the record
/// cannot follow the current state. Shared by live validation and recovery so both agree.
pub(crate) fn project(truncated: u64, last: u64, record: &Record) -> Result<(u64, u64), String> {
    match record {
        Record::Entries { entries, .. } => {
            let (Some(first), Some(end)) = (entries.first(), entries.last()) else {
                return Ok((truncated, last));
            };
            if first.index > last + 1 {
                return Err(format!("entries start at {} but the log ends at {last}", first.index));
            }
            Ok((truncated, end.index.max(truncated)))
        }
        Record::SnapshotMeta { meta, .. } => {
            if meta.index < truncated {
                return Err(format!("snapshot at {} is older than the compacted log at {truncated}", meta.index));
            }
            Ok((meta.index, meta.index))
        }
        Record::Compact { index, .. } => Ok((truncated.max(index.0.min(last)), last)),
        Record::Checkpoint { checkpoint, .. } => {
            let t = checkpoint.truncated_index.0;
            if t > truncated {
                Ok((t, last.max(t)))
            } else {
                Ok((truncated, last))
            }
        }
        Record::HardState { .. } | Record::ConfState { .. } | Record::CheckpointBegin { .. } => Ok((truncated, last)),
    }
}

impl GroupIndex {
    pub fn first_index(&self) -> u64 {
        self.truncated_index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.truncated_index + self.metas.len() as u64
    }

    pub fn entry_count(&self) -> usize {
        self.metas.len()
    }

    pub fn term(&self, index: u64) -> Result<u64> {
        if index == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if index < self.truncated_index {
            return Err(Error::Compacted);
        }
        if index > self.last_index() {
            return Err(Error::Unavailable);
        }
        Ok(self.metas[(index - self.first_index()) as usize].term)
    }

    pub fn state(&self) -> GroupState {
        GroupState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
            snapshot: self.snapshot.clone(),
            first_index: LogIndex(self.first_index()),
            last_index: LogIndex(self.last_index()),
            truncated_term: Term(self.truncated_term),
        }
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            truncated_index: LogIndex(self.truncated_index),
            truncated_term: Term(self.truncated_term),
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
            snapshot: self.snapshot.clone(),
        }
    }

    fn cached(&self, index: u64) -> Option<&Entry> {
        let first = self.cache.front()?.index;
        if index < first {
            return None;
        }
        self.cache.get((index - first) as usize)
    }

    /// Empties the entry cache and gives its memory back.
    pub fn drop_cache(&mut self) {
        self.cache = VecDeque::new();
        self.cache_bytes = 0;
    }

    /// Entries in the cache.
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Drops metas and cached entries at or above `index`.
    fn truncate_from(&mut self, index: u64) {
        let keep = index.saturating_sub(self.first_index()) as usize;
        self.metas.truncate(keep);
        while self.cache.back().is_some_and(|e| e.index >= index) {
            let e = self.cache.pop_back().expect("invariant: back exists");
            self.cache_bytes -= e.data.len();
        }
    }

    /// Drops metas and cached entries at or below `index`, which becomes the truncation
    /// point with term `term`.
    fn truncate_to(&mut self, index: u64, term: u64) {
        while self.truncated_index < index && !self.metas.is_empty() {
            self.metas.pop_front();
            self.truncated_index += 1;
        }
        self.truncated_index = index;
        self.truncated_term = term;
        while self.cache.front().is_some_and(|e| e.index <= index) {
            let e = self.cache.pop_front().expect("invariant: front exists");
            self.cache_bytes -= e.data.len();
        }
    }

    fn append(&mut self, seq: u64, base: u64, entries: &[Entry], spans: &[EntrySpan], lim: CacheLimits) {
        let Some(first) = entries.first() else {
            return;
        };
        assert!(
            first.index <= self.last_index() + 1,
            "append at {} leaves a gap after {}",
            first.index,
            self.last_index()
        );
        self.truncate_from(first.index.max(self.first_index()));
        if entries.last().expect("invariant: not empty").index <= self.truncated_index {
            // Raft's append truncates everything from the first index on; below the
            // compact point there is nothing left to truncate or keep.
            return;
        }
        for (e, span) in entries.iter().zip(spans) {
            if e.index <= self.truncated_index {
                continue;
            }
            self.metas.push_back(EntryMeta {
                term: e.term,
                seq,
                offset: base + span.offset as u64,
                len: u32::try_from(span.len).expect("invariant: entry span fits in u32"),
            });
            self.cache.push_back(e.clone());
            self.cache_bytes += e.data.len();
        }
        while self.cache.len() > lim.entries_max || (self.cache_bytes > lim.bytes_max && !self.cache.is_empty()) {
            let e = self.cache.pop_front().expect("invariant: cache not empty");
            self.cache_bytes -= e.data.len();
        }
    }

    /// O(n) consistency check, for tests.
    pub fn check_invariants(&self, group: GroupId, segments: &BTreeMap<u64, SegmentInfo>) {
        assert!(self.truncated_index <= self.last_index(), "group {group}: truncated > last");
        if let Some(back) = self.cache.back() {
            assert_eq!(back.index, self.last_index(), "group {group}: cache does not end at last");
            for pair in self.cache.iter().collect::<Vec<_>>().windows(2) {
                assert_eq!(pair[0].index + 1, pair[1].index, "group {group}: cache has a hole");
            }
            assert!(self.cache.front().expect("not empty").index > self.truncated_index);
        }
        let bytes: usize = self.cache.iter().map(|e| e.data.len()).sum();
        assert_eq!(bytes, self.cache_bytes, "group {group}: cache byte count drifted");
        for (i, m) in self.metas.iter().enumerate() {
            assert!(
                segments.contains_key(&m.seq),
                "group {group}: entry {} points at purged segment {}",
                self.first_index() + i as u64,
                m.seq
            );
            if let Some(c) = self.cached(self.first_index() + i as u64) {
                assert_eq!(c.term, m.term, "group {group}: cached term differs from index");
            }
        }
    }
}

/// What the index knows about one segment file.
#[derive(Debug)]
pub(crate) struct SegmentInfo {
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Highest entry index written to this segment, per group.
    pub max_index: HashMap<GroupId, u64>,
    /// Truncated index per group recorded in the checkpoint at this segment's head, or
    /// `None` when the segment does not start with a complete checkpoint.
    pub checkpoint: Option<HashMap<GroupId, u64>>,
}

/// The whole index, guarded by one `RwLock` in the WAL; only the writer thread (and
/// recovery, before it starts) mutates it.
#[derive(Debug)]
pub(crate) struct Index {
    pub groups: BTreeMap<GroupId, GroupIndex>,
    pub segments: BTreeMap<u64, SegmentInfo>,
    pub cache_limits: CacheLimits,
}

impl Index {
    pub fn new(cache_limits: CacheLimits) -> Self {
        Index { groups: BTreeMap::new(), segments: BTreeMap::new(), cache_limits }
    }

    /// `(truncated_index, last_index)` of a group; `(0, 0)` for an unknown one.
    pub fn bounds(&self, group: GroupId) -> (u64, u64) {
        self.groups.get(&group).map_or((0, 0), |g| (g.truncated_index, g.last_index()))
    }

    /// Applies one durable record. `base` is the file offset that the record's entry
    /// spans are relative to. Errors mean the record cannot follow the current state (the
    /// caller validated live records, so during recovery this is corruption).
    ///
    /// With `recovering`, an append that starts after a gap is accepted provisionally:
    /// the entries before it lived in purged segments. The group's log restarts at the
    /// append, and `finish_recovery` later checks that a durable compact point covers the
    /// gap (otherwise entries are really missing).
    pub fn apply(
        &mut self,
        seq: u64,
        base: u64,
        record: &Record,
        spans: &[EntrySpan],
        recovering: bool,
    ) -> Result<(), String> {
        if let Record::CheckpointBegin { .. } = record {
            return Ok(());
        }
        let group = record.group();
        let (t, l) = self.bounds(group);
        let lim = self.cache_limits;
        if let Err(reason) = project(t, l, record) {
            let Record::Entries { entries, .. } = record else {
                return Err(reason);
            };
            if !recovering {
                return Err(reason);
            }
            let g = self.groups.entry(group).or_default();
            let hole_end = entries.first().expect("invariant: a gap needs entries").index - 1;
            g.truncate_from(g.first_index());
            g.truncate_to(hole_end, 0);
            g.hole_end = g.hole_end.max(hole_end);
            g.truncated_term_unknown = true;
        }
        let g = self.groups.entry(group).or_default();
        match record {
            Record::Entries { entries, .. } => {
                if spans.len() != entries.len() {
                    return Err("entry spans do not match entries".into());
                }
                g.append(seq, base, entries, spans, lim);
                if let Some(last) = entries.last() {
                    if let Some(info) = self.segments.get_mut(&seq) {
                        let m = info.max_index.entry(group).or_insert(0);
                        *m = (*m).max(last.index);
                    }
                }
            }
            Record::HardState { state, .. } => g.hard_state = state.clone(),
            Record::ConfState { state, .. } => g.conf_state = state.clone(),
            Record::SnapshotMeta { meta, .. } => {
                g.truncate_from(g.first_index());
                g.truncate_to(meta.index, meta.term);
                g.truncated_term_unknown = false;
                g.conf_state = meta.get_conf_state().clone();
                g.snapshot = Some(meta.clone());
            }
            Record::Compact { index, .. } => {
                let to = index.0.min(g.last_index());
                if to > g.truncated_index {
                    let term = g.term(to).map_err(|e| e.to_string())?;
                    g.truncate_to(to, term);
                    g.truncated_term_unknown = false;
                }
            }
            Record::Checkpoint { checkpoint, .. } => {
                g.hard_state = checkpoint.hard_state.clone();
                g.conf_state = checkpoint.conf_state.clone();
                g.snapshot = checkpoint.snapshot.clone();
                let t = checkpoint.truncated_index.0;
                if t >= g.truncated_index {
                    if t > g.last_index() {
                        g.truncate_from(g.first_index());
                    }
                    g.truncate_to(t, checkpoint.truncated_term.0);
                    g.truncated_term_unknown = false;
                }
            }
            Record::CheckpointBegin { .. } => unreachable!("handled above"),
        }
        Ok(())
    }

    /// The records of a checkpoint of every group, as written at a segment's head.
    pub fn checkpoint_records(&self) -> Vec<Record> {
        let mut records = Vec::with_capacity(self.groups.len() + 1);
        records.push(Record::CheckpointBegin {
            group_count: u32::try_from(self.groups.len()).expect("invariant: group count fits u32"),
        });
        for (group, g) in &self.groups {
            records.push(Record::Checkpoint { group: *group, checkpoint: g.checkpoint() });
        }
        records
    }

    /// The sequence numbers of the oldest segments that can be deleted: the longest
    /// prefix whose entries are all, for their group, at or below the truncated index in
    /// the checkpoint heading the newest segment. That checkpoint is durable and is never
    /// purged itself, so recovery from the remaining segments rebuilds every group's
    /// state (HardState and the rest were re-recorded in it) and every live entry; the
    /// gaps left in the log are covered by its compact points (see `finish_recovery`).
    /// The newest segment is never included.
    pub fn purgeable_prefix(&self) -> Vec<u64> {
        let Some((newest, info)) = self.segments.last_key_value() else {
            return Vec::new();
        };
        let Some(cp) = &info.checkpoint else {
            return Vec::new();
        };
        self.segments
            .iter()
            .take_while(|(seq, seg)| {
                *seq != newest && seg.max_index.iter().all(|(g, m)| cp.get(g).is_some_and(|t| m <= t))
            })
            .map(|(seq, _)| *seq)
            .collect()
    }

    /// Per group, the highest index of its entries held by the segments older than the
    /// newest `keep_newest` ones; groups with no entry there are absent.
    pub fn held_by_old_segments(&self, keep_newest: usize) -> HashMap<GroupId, u64> {
        let old = self.segments.len().saturating_sub(keep_newest);
        let mut held: HashMap<GroupId, u64> = HashMap::new();
        for seg in self.segments.values().take(old) {
            for (group, max) in &seg.max_index {
                let h = held.entry(*group).or_insert(0);
                *h = (*h).max(*max);
            }
        }
        // Entries already compacted hold nothing (purge deletes their segment at a rotation).
        held.retain(|group, max| self.groups.get(group).is_some_and(|g| *max > g.truncated_index));
        held
    }

    /// Checks, after replaying every segment, that each gap accepted during recovery is
    /// covered by a durable compact point.
    pub fn finish_recovery(&self) -> Result<(), String> {
        for (group, g) in &self.groups {
            if g.truncated_index < g.hole_end || g.truncated_term_unknown {
                return Err(format!(
                    "group {group}: entries up to {} are missing and were never compacted",
                    g.hole_end
                ));
            }
        }
        Ok(())
    }

    /// Where to find entries `[low, high)` of `group`, honouring `max_size` the way raft's
    /// `MemStorage` does (always at least one entry).
    pub fn slots(&self, group: GroupId, low: u64, high: u64, max_size: Option<u64>) -> Result<Vec<Slot>> {
        let empty = GroupIndex::default();
        let g = self.groups.get(&group).unwrap_or(&empty);
        if low < g.first_index() {
            return Err(Error::Compacted);
        }
        if high > g.last_index() + 1 || low > high {
            return Err(Error::Unavailable);
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for index in low..high {
            let meta = g.metas[(index - g.first_index()) as usize];
            // The protobuf size is what raft's limit_size counts.
            size += u64::from(meta.len) - crate::record::ENTRY_HEADER_BYTES as u64;
            if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                break;
            }
            if let Some(e) = g.cached(index) {
                out.push(Slot::Cached(e.clone()));
            } else {
                let info = self
                    .segments
                    .get(&meta.seq)
                    .unwrap_or_else(|| panic!("invariant: entry {index} of group {group} points at a live segment"));
                out.push(Slot::OnDisk { file: Arc::clone(&info.file), path: info.path.clone(), index, meta });
            }
        }
        Ok(out)
    }

    pub fn check_invariants(&self) {
        for (group, g) in &self.groups {
            g.check_invariants(*group, &self.segments);
        }
    }
}

#[cfg(test)]
// Protobuf messages read best built field by field.
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = bytes::Bytes::from(vec![index as u8; 10]);
        e
    }

    fn entries_record(first: u64, n: u64, term: u64) -> (Record, Vec<EntrySpan>) {
        let entries: Vec<Entry> = (first..first + n).map(|i| entry(i, term)).collect();
        let spans = (0..n as usize).map(|i| EntrySpan { offset: i * 100, len: 30 }).collect();
        (Record::Entries { group: GroupId(1), entries }, spans)
    }

    fn index() -> Index {
        let mut idx = Index::new(CacheLimits { entries_max: 4, bytes_max: 1 << 20 });
        let f = tempfile::tempfile().unwrap();
        for seq in 1..=3 {
            idx.segments.insert(
                seq,
                SegmentInfo {
                    path: PathBuf::from(format!("{seq}")),
                    file: Arc::new(f.try_clone().unwrap()),
                    max_index: HashMap::new(),
                    checkpoint: None,
                },
            );
        }
        idx
    }

    #[test]
    fn append_truncates_conflicting_suffix_and_bounds_the_cache() {
        let mut idx = index();
        let (r, s) = entries_record(1, 10, 1);
        idx.apply(1, 0, &r, &s, false).unwrap();
        let (r, s) = entries_record(6, 2, 2);
        idx.apply(1, 1000, &r, &s, false).unwrap();
        let g = &idx.groups[&GroupId(1)];
        assert_eq!(g.last_index(), 7);
        assert_eq!(g.term(5).unwrap(), 1);
        assert_eq!(g.term(6).unwrap(), 2);
        assert!(matches!(g.term(8), Err(Error::Unavailable)));
        assert!(g.cache.len() <= 4);
        idx.check_invariants();
        let (r, s) = entries_record(9, 1, 2);
        let err = idx.apply(1, 0, &r, &s, false).unwrap_err();
        assert!(err.contains("the log ends at 7"), "{err}");
        assert_eq!(idx.groups[&GroupId(1)].last_index(), 7, "a gap must not apply");
    }

    #[test]
    fn compact_and_snapshot_move_the_truncation_point() {
        let mut idx = index();
        let (r, s) = entries_record(1, 10, 3);
        idx.apply(1, 0, &r, &s, false).unwrap();
        idx.apply(1, 0, &Record::Compact { group: GroupId(1), index: LogIndex(4) }, &[], false).unwrap();
        let g = &idx.groups[&GroupId(1)];
        assert_eq!((g.first_index(), g.last_index(), g.entry_count()), (5, 10, 6));
        assert_eq!(g.term(4).unwrap(), 3);
        assert!(matches!(g.term(3), Err(Error::Compacted)));
        // Compacting beyond the last index stops at the last index.
        idx.apply(1, 0, &Record::Compact { group: GroupId(1), index: LogIndex(99) }, &[], false).unwrap();
        assert_eq!(idx.groups[&GroupId(1)].first_index(), 11);
        let mut meta = SnapshotMetadata::default();
        meta.index = 20;
        meta.term = 5;
        idx.apply(1, 0, &Record::SnapshotMeta { group: GroupId(1), meta }, &[], false).unwrap();
        let g = &idx.groups[&GroupId(1)];
        assert_eq!((g.first_index(), g.last_index()), (21, 20));
        assert_eq!(g.term(20).unwrap(), 5);
        idx.check_invariants();
    }

    #[test]
    fn purge_needs_a_covering_checkpoint_in_the_newest_segment() {
        let mut idx = index();
        let (r, s) = entries_record(1, 10, 1);
        idx.apply(1, 0, &r, &s, false).unwrap();
        let (r, s) = entries_record(11, 5, 1);
        idx.apply(2, 0, &r, &s, false).unwrap();
        assert!(idx.purgeable_prefix().is_empty(), "no checkpoint yet");
        idx.segments.get_mut(&3).unwrap().checkpoint = Some(HashMap::from([(GroupId(1), 9)]));
        assert!(idx.purgeable_prefix().is_empty(), "entry 10 is above the checkpoint");
        idx.segments.get_mut(&3).unwrap().checkpoint = Some(HashMap::from([(GroupId(1), 12)]));
        assert_eq!(idx.purgeable_prefix(), vec![1]);
        idx.segments.get_mut(&3).unwrap().checkpoint = Some(HashMap::from([(GroupId(1), 15)]));
        assert_eq!(idx.purgeable_prefix(), vec![1, 2]);
    }

    #[test]
    fn recovery_accepts_a_gap_only_if_it_is_compacted_later() {
        let mut idx = index();
        let (r, s) = entries_record(20, 3, 4);
        assert!(idx.apply(2, 0, &r, &s, false).is_err(), "live appends may not leave gaps");
        idx.apply(2, 0, &r, &s, true).unwrap();
        assert!(idx.finish_recovery().is_err(), "entries 1..=19 are missing");
        let cp = Checkpoint { truncated_index: LogIndex(19), truncated_term: Term(3), ..Checkpoint::default() };
        idx.apply(3, 0, &Record::Checkpoint { group: GroupId(1), checkpoint: cp }, &[], true).unwrap();
        idx.finish_recovery().unwrap();
        let g = &idx.groups[&GroupId(1)];
        assert_eq!((g.first_index(), g.last_index(), g.term(19).unwrap()), (20, 22, 3));
    }
}
