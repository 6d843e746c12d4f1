//! Per-group metadata written by `apply` in the same WriteBatch as the data it describes.
//!
//! ```text
//! meta CF  g | 'a'  ->  version(1) | applied_index | current_revision | compact_revision
//!                       | kv_bytes | history_bytes_written | history_bytes_compacted | crc32
//!          g | 'c'  ->  finished compact revision (written only by the compactor)
//! ```
//!
//! Invariants (asserted on encode and decode): `current_revision >= 1`,
//! `compact_revision <= current_revision`, `history_bytes_compacted <= history_bytes_written`.
//! Monotonic across batches: applied_index, current_revision, compact_revision.

use crate::error::{Error, Result};
use crate::revision::Revision;

const META_VERSION: u8 = 1;
const META_LEN: usize = 1 + 6 * 8 + 4;

/// What `apply` knows about a group, persisted with every batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApplyMeta {
    /// Last log index whose effects are in this record's batch.
    pub applied_index: u64,
    /// etcd's `currentRev`: 1 for an empty group.
    pub current_revision: Revision,
    /// Scheduled compact revision: reads below it fail. -1 = never compacted.
    pub compact_revision: Revision,
    /// Sum of key+value bytes of live keys.
    pub kv_bytes: u64,
    /// Sum of key+value bytes of every history entry ever written.
    pub history_bytes_written: u64,
    /// `history_bytes_written` as of the compact revision: the share compaction frees.
    pub history_bytes_compacted: u64,
}

impl Default for ApplyMeta {
    fn default() -> Self {
        ApplyMeta {
            applied_index: 0,
            current_revision: 1,
            compact_revision: -1,
            kv_bytes: 0,
            history_bytes_written: 0,
            history_bytes_compacted: 0,
        }
    }
}

impl ApplyMeta {
    pub fn check(&self) {
        assert!(self.current_revision >= 1, "current revision must be >= 1: {self:?}");
        assert!(self.compact_revision <= self.current_revision, "compact revision ahead of current: {self:?}");
        assert!(
            self.history_bytes_compacted <= self.history_bytes_written,
            "compacted history bytes exceed written: {self:?}"
        );
    }

    pub fn encode(&self) -> Vec<u8> {
        self.check();
        let mut out = Vec::with_capacity(META_LEN);
        out.push(META_VERSION);
        for v in [
            self.applied_index,
            self.current_revision as u64,
            self.compact_revision as u64,
            self.kv_bytes,
            self.history_bytes_written,
            self.history_bytes_compacted,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<ApplyMeta> {
        if bytes.len() != META_LEN || bytes[0] != META_VERSION {
            return Err(Error::Corruption(format!("group meta: {} bytes, version {:?}", bytes.len(), bytes.first())));
        }
        let crc = u32::from_be_bytes(bytes[META_LEN - 4..].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[..META_LEN - 4]) != crc {
            return Err(Error::Corruption("group meta: crc mismatch".into()));
        }
        let f = |i: usize| u64::from_be_bytes(bytes[1 + 8 * i..9 + 8 * i].try_into().expect("8 bytes"));
        let meta = ApplyMeta {
            applied_index: f(0),
            current_revision: f(1) as i64,
            compact_revision: f(2) as i64,
            kv_bytes: f(3),
            history_bytes_written: f(4),
            history_bytes_compacted: f(5),
        };
        if meta.current_revision < 1
            || meta.compact_revision > meta.current_revision
            || meta.history_bytes_compacted > meta.history_bytes_written
        {
            return Err(Error::Corruption(format!("group meta violates invariants: {meta:?}")));
        }
        Ok(meta)
    }

    /// The compact revision as clients see it: 0 when never compacted.
    pub fn visible_compact_revision(&self) -> Revision {
        self.compact_revision.max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_detects_bit_flips() {
        let m = ApplyMeta {
            applied_index: 9,
            current_revision: 7,
            compact_revision: 3,
            kv_bytes: 100,
            history_bytes_written: 300,
            history_bytes_compacted: 50,
        };
        let enc = m.encode();
        assert_eq!(ApplyMeta::decode(&enc).unwrap(), m);
        for i in 0..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= 0x10;
            assert!(ApplyMeta::decode(&bad).is_err(), "flip at byte {i} must be detected");
        }
    }
}
