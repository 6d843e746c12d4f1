//! Key-value records and events, and how they are stored.
//!
//! [`KeyValue`] is etcd's `mvccpb.KeyValue` with the same field numbers, so its prost
//! encoding is also the stored value encoding (with `key` left empty: the key is already in
//! the RocksDB key). A `history` value that is empty is a tombstone.

use bytes::Bytes;
use prost::Message;

use crate::error::{Error, Result};
use crate::revision::Revision;

/// Appends field 1 of a `mvccpb.KeyValue` holding `key`, as prost encodes it (an empty key,
/// a default, is omitted).
pub(crate) fn append_wire_key(out: &mut Vec<u8>, key: &[u8]) {
    if !key.is_empty() {
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, out);
        prost::encoding::encode_varint(key.len() as u64, out);
        out.extend_from_slice(key);
    }
}

/// etcd's `mvccpb.KeyValue` (key=1, create_revision=2, mod_revision=3, version=4, value=5,
/// lease=6).
///
/// Invariants of a live key: `create_revision <= mod_revision`, `version >= 1`. A DELETE
/// event's `kv` is the exception: only `key` and `mod_revision` are set.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(int64, tag = "4")]
    pub version: i64,
    #[prost(bytes = "bytes", tag = "5")]
    pub value: Bytes,
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

impl KeyValue {
    /// Bytes this version counts for in the quota estimate.
    pub fn quota_bytes(&self) -> u64 {
        (self.key.len() + self.value.len()) as u64
    }

    /// Encodes without the key (the key is in the RocksDB key).
    pub(crate) fn encode_stored(&self) -> Vec<u8> {
        assert!(
            self.version >= 1 && self.create_revision >= 1 && self.create_revision <= self.mod_revision,
            "stored KeyValue must be live: {self:?}"
        );
        let stripped = KeyValue { key: Bytes::new(), ..self.clone() };
        stripped.encode_to_vec()
    }

    /// Decodes a stored value and puts `key` back.
    pub(crate) fn decode_stored(key: &[u8], bytes: &[u8]) -> Result<KeyValue> {
        #[cfg(test)]
        decodes::value();
        let mut kv = KeyValue::decode(bytes)
            .map_err(|e| Error::Corruption(format!("stored KeyValue for {:?}: {e}", Bytes::copy_from_slice(key))))?;
        if kv.version < 1 || kv.create_revision < 1 || kv.create_revision > kv.mod_revision {
            return Err(Error::Corruption(format!("stored KeyValue violates invariants: {kv:?}")));
        }
        kv.key = Bytes::copy_from_slice(key);
        Ok(kv)
    }

    /// Appends etcd's `mvccpb.KeyValue` encoding of the version stored as `stored` under the
    /// user key `key`, without decoding it: the stored value is the encoding of fields 2 to
    /// 6, so the key's field 1 in front of it makes exactly the bytes prost writes for the
    /// decoded record (fields in tag order, defaults omitted). Returns where in `out` the
    /// key's bytes are.
    pub(crate) fn append_wire(out: &mut Vec<u8>, key: &[u8], stored: &[u8]) -> std::ops::Range<usize> {
        let start = out.len();
        let key_at = Self::append_wire_unchecked(out, key, stored);
        debug_assert!(
            Self::decode_stored(key, stored).is_ok_and(|kv| kv.encode_to_vec()[..] == out[start..]),
            "stored KeyValue does not re-encode to its wire form"
        );
        key_at
    }

    /// The length of what [`KeyValue::append_wire`] appends for `key` and `stored`.
    pub(crate) fn wire_len(key: &[u8], stored: &[u8]) -> usize {
        let key_field = if key.is_empty() { 0 } else { 1 + prost::length_delimiter_len(key.len()) + key.len() };
        key_field + stored.len()
    }

    fn append_wire_unchecked(out: &mut Vec<u8>, key: &[u8], stored: &[u8]) -> std::ops::Range<usize> {
        append_wire_key(out, key);
        let key_at = out.len() - key.len()..out.len();
        out.extend_from_slice(stored);
        key_at
    }

    /// Decodes a stored value without its value field (left empty): what `keys_only` and
    /// the revision filters need.
    pub(crate) fn decode_stored_without_value(key: &[u8], bytes: &[u8]) -> Result<KeyValue> {
        #[cfg(test)]
        decodes::header();
        let h = StoredHeader::decode(bytes)
            .map_err(|e| Error::Corruption(format!("stored KeyValue for {:?}: {e}", Bytes::copy_from_slice(key))))?;
        let kv = KeyValue {
            key: Bytes::copy_from_slice(key),
            create_revision: h.create_revision,
            mod_revision: h.mod_revision,
            version: h.version,
            value: Bytes::new(),
            lease: h.lease,
        };
        if kv.version < 1 || kv.create_revision < 1 || kv.create_revision > kv.mod_revision {
            return Err(Error::Corruption(format!("stored KeyValue violates invariants: {kv:?}")));
        }
        Ok(kv)
    }
}

/// Test-only counts of the stored values decoded on this thread, with their value and
/// without, so tests can check which reads copy values.
#[cfg(test)]
pub(crate) mod decodes {
    use std::cell::Cell;

    thread_local! {
        static VALUES: Cell<u64> = const { Cell::new(0) };
        static HEADERS: Cell<u64> = const { Cell::new(0) };
    }

    pub(crate) fn value() {
        VALUES.with(|c| c.set(c.get() + 1));
    }

    pub(crate) fn header() {
        HEADERS.with(|c| c.set(c.get() + 1));
    }

    /// `(with value, without value)` decodes on this thread since the last call, and
    /// resets them.
    pub(crate) fn take() -> (u64, u64) {
        (VALUES.with(|c| c.replace(0)), HEADERS.with(|c| c.replace(0)))
    }
}

/// A stored [`KeyValue`] without its value: prost skips the unknown value field (5) while
/// decoding, so decoding this never copies the value.
#[derive(Clone, PartialEq, Eq, prost::Message)]
struct StoredHeader {
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "3")]
    mod_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(int64, tag = "6")]
    lease: i64,
}

/// Kind of a watch event (etcd's `mvccpb.Event.EventType`: PUT=0, DELETE=1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// PUT: the new version. DELETE: `{key, mod_revision: delete revision}`, rest zero.
    pub kv: KeyValue,
    /// The version at `mod_revision - 1`, when the watcher asked for it and the key existed.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// The `events` CF value: kind, the group's cumulative history bytes written *before* this
/// change (the quota reads it when compaction is scheduled), and the key.
pub(crate) struct StoredEvent {
    pub kind: EventKind,
    pub history_bytes_before: u64,
    pub key: Bytes,
}

impl StoredEvent {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.key.len());
        out.push(match self.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        out.extend_from_slice(&self.history_bytes_before.to_be_bytes());
        out.extend_from_slice(&self.key);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<StoredEvent> {
        if bytes.len() < 9 {
            return Err(Error::Corruption(format!("event record of {} bytes", bytes.len())));
        }
        let kind = match bytes[0] {
            0 => EventKind::Put,
            1 => EventKind::Delete,
            k => return Err(Error::Corruption(format!("event kind {k}"))),
        };
        let history_bytes_before = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes checked above"));
        Ok(StoredEvent { kind, history_bytes_before, key: Bytes::copy_from_slice(&bytes[9..]) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_kv_round_trips_without_key_bytes() {
        let kv = KeyValue {
            key: Bytes::from_static(b"k"),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            value: Bytes::from_static(b"v"),
            lease: 9,
        };
        let enc = kv.encode_stored();
        assert!(!enc.windows(1).any(|w| w == b"k"), "key must not be stored in the value");
        assert_eq!(KeyValue::decode_stored(b"k", &enc).unwrap(), kv);
        let without_value = KeyValue { value: Bytes::new(), ..kv.clone() };
        assert_eq!(KeyValue::decode_stored_without_value(b"k", &enc).unwrap(), without_value);
        assert!(KeyValue::decode_stored_without_value(b"k", &[0xff, 0xff]).is_err());
        assert!(KeyValue::decode_stored(b"k", &[0xff, 0xff]).is_err());
    }

    #[test]
    fn stored_event_round_trips() {
        let e = StoredEvent { kind: EventKind::Delete, history_bytes_before: 77, key: Bytes::from_static(b"abc") };
        let d = StoredEvent::decode(&e.encode()).unwrap();
        assert_eq!((d.kind, d.history_bytes_before, &d.key[..]), (EventKind::Delete, 77, &b"abc"[..]));
        assert!(StoredEvent::decode(&[3; 9]).is_err());
    }
}
