//! `WriteBatch`: records of any groups, encoded by the caller's thread, written by the
//! writer thread as part of one frame.

use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};

use crate::record::{encode_record, EntrySpan, Record};
use crate::types::{GroupId, LogIndex};

/// Records to append atomically (all or none survive a crash) and durably.
#[derive(Default, Debug)]
pub struct WriteBatch {
    pub(crate) buf: Vec<u8>,
    /// Each record with the spans of its entries, relative to `buf`.
    pub(crate) records: Vec<(Record, Vec<EntrySpan>)>,
    pub(crate) entry_count: u64,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, record: Record) {
        let spans = encode_record(&mut self.buf, &record);
        self.records.push((record, spans));
    }

    /// Appends `entries` (consecutive indexes) to `group`, replacing the group's entries at
    /// and after the first one. An empty slice is ignored.
    ///
    /// Panics if the indexes are not consecutive.
    pub fn add_entries(&mut self, group: GroupId, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        self.entry_count += entries.len() as u64;
        self.push(Record::Entries { group, entries: entries.to_vec() });
    }

    /// Records `group`'s new HardState.
    pub fn set_hard_state(&mut self, group: GroupId, state: &HardState) {
        self.push(Record::HardState { group, state: state.clone() });
    }

    /// Records `group`'s new ConfState.
    pub fn set_conf_state(&mut self, group: GroupId, state: &ConfState) {
        self.push(Record::ConfState { group, state: state.clone() });
    }

    /// Records that a snapshot was applied to `group`: its log now starts after
    /// `meta.index`, and its ConfState is `meta.conf_state`.
    pub fn set_snapshot_meta(&mut self, group: GroupId, meta: &SnapshotMetadata) {
        self.push(Record::SnapshotMeta { group, meta: meta.clone() });
    }

    /// Records that `group`'s entries at or below `index` are no longer needed (clamped
    /// to the group's last index when applied).
    pub fn compact(&mut self, group: GroupId, index: LogIndex) {
        self.push(Record::Compact { group, index });
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Number of entries added.
    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }
}

#[cfg(test)]
// Protobuf messages read best built field by field.
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;
    use crate::record::decode_batch;

    #[test]
    fn batch_encodes_what_it_records() {
        let mut b = WriteBatch::new();
        assert!(b.is_empty());
        let mut e = Entry::default();
        e.index = 1;
        e.term = 1;
        b.add_entries(GroupId(1), &[e]);
        b.add_entries(GroupId(1), &[]);
        b.set_hard_state(GroupId(2), &HardState::default());
        b.compact(GroupId(1), LogIndex(1));
        assert_eq!(b.entry_count(), 1);
        let decoded = decode_batch(&b.buf).unwrap();
        let recorded: Vec<Record> = b.records.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(decoded, recorded);
    }
}
