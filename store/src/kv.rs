//! Key-value records and events, and how they are stored.
//!
//! [`KeyValue`] is etcd's `mvccpb.KeyValue` with the same field numbers, so its prost
//! encoding is also the stored version's encoding (with `key` left empty: the key is stored
//! beside it). A `kv` CF value is a version behind its [`LiveLinks`]; an `events` CF value
//! is a [`StoredEvent`], which holds a put's version whole; a `gone` CF value is a deleted
//! key's link back ([`encode_gone`]).

use bytes::Bytes;
use prost::Message;

use crate::error::{Error, Result};
use crate::revision::{Revision, RevisionPair};

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

    /// The `mod_revision` of a stored version, decoding nothing else (the value is skipped
    /// in place): what a read at an older revision checks first.
    pub(crate) fn stored_mod_revision(bytes: &[u8]) -> Result<Revision> {
        let h = StoredHeader::decode(bytes).map_err(|e| Error::Corruption(format!("stored KeyValue: {e}")))?;
        if h.mod_revision < 1 {
            return Err(Error::Corruption(format!("stored KeyValue at revision {}", h.mod_revision)));
        }
        Ok(h.mod_revision)
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

/// Appends `v` as a protobuf varint.
fn put_varint(out: &mut Vec<u8>, v: u64) {
    prost::encoding::encode_varint(v, out);
}

/// Reads a varint from the front of `bytes`, advancing it.
fn take_varint(bytes: &mut &[u8], what: &str) -> Result<u64> {
    prost::encoding::decode_varint(bytes).map_err(|e| Error::Corruption(format!("{what}: {e}")))
}

/// Appends a link to a version (`None`: the key had no version before): its main and sub
/// revisions as varints, main 0 meaning none (no version is at revision 0).
fn put_link(out: &mut Vec<u8>, link: Option<RevisionPair>) {
    let RevisionPair { main, sub } = link.unwrap_or(RevisionPair { main: 0, sub: 0 });
    put_varint(out, main as u64);
    put_varint(out, sub as u64);
}

fn take_link(bytes: &mut &[u8], what: &str) -> Result<Option<RevisionPair>> {
    let main = take_varint(bytes, what)?;
    let sub = take_varint(bytes, what)?;
    if main > i64::MAX as u64 || sub > i64::MAX as u64 {
        return Err(Error::Corruption(format!("{what}: revision ({main}, {sub}) out of range")));
    }
    Ok((main != 0).then(|| RevisionPair::new(main as i64, sub as i64)))
}

/// What a `kv` CF value carries besides the live version: the version's own sub revision
/// (its main revision is the version's `mod_revision`) and the revision of the key's
/// version before it. Together they are the head of the key's chain of versions, which
/// reads at older revisions follow back through the `events` CF (`mvcc.rs`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct LiveLinks {
    pub sub: i64,
    pub prev: Option<RevisionPair>,
}

impl LiveLinks {
    /// The `kv` CF value of a live version: `sub | prev` (varints) then the stored version
    /// (see [`KeyValue::encode_stored`]), which stays the wire encoding of fields 2 to 6.
    pub fn encode_with(self, stored: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(stored.len() + 8);
        put_varint(&mut out, self.sub as u64);
        put_link(&mut out, self.prev);
        out.extend_from_slice(stored);
        out
    }

    /// Splits a `kv` CF value into its links and the stored version.
    pub fn split(value: &[u8]) -> Result<(LiveLinks, &[u8])> {
        let mut rest = value;
        let sub = take_varint(&mut rest, "live version's sub revision")?;
        if sub > i64::MAX as u64 {
            return Err(Error::Corruption(format!("live version's sub revision {sub}")));
        }
        let prev = take_link(&mut rest, "live version's previous version")?;
        Ok((LiveLinks { sub: sub as i64, prev }, rest))
    }

    /// The stored version of a `kv` CF value, without its links.
    pub fn stored(value: &[u8]) -> Result<&[u8]> {
        Ok(Self::split(value)?.1)
    }
}

/// The `gone` CF value of a key deleted after the compact revision: the revision of the
/// version the delete ended (the delete's link back; `None` when a purge had removed that
/// version before a layout 1 data dir was converted). The delete's own revision is in the
/// CF key.
pub(crate) fn encode_gone(prev: Option<RevisionPair>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    put_link(&mut out, prev);
    out
}

pub(crate) fn decode_gone(value: &[u8]) -> Result<Option<RevisionPair>> {
    let mut rest = value;
    let prev = take_link(&mut rest, "deleted key's last version")?;
    if !rest.is_empty() {
        return Err(Error::Corruption(format!("deleted key's record of {} bytes", value.len())));
    }
    Ok(prev)
}

/// Kind bytes of an `events` CF value. Layout 1 used 0 and 1 for records without the version;
/// they are refused as what they are (a data dir to convert), never read as these.
const EVENT_PUT: u8 = 2;
const EVENT_DELETE: u8 = 3;

/// The `events` CF value: one change whole. The kind; the group's cumulative history bytes
/// written *before* this change (the quota reads it when compaction is scheduled); the
/// revision of the key's version before it (the chain reads at older revisions follow); the
/// key; and, for a put, the stored version (see [`KeyValue::encode_stored`]).
///
/// ```text
/// kind(1) | history_bytes_before(8, BE) | prev main, prev sub (varints, 0 = none)
///         | key length (varint) | key | stored version (puts only)
/// ```
pub(crate) struct StoredEvent<'a> {
    pub kind: EventKind,
    pub history_bytes_before: u64,
    pub prev: Option<RevisionPair>,
    pub key: &'a [u8],
    /// The stored version of a put; empty for a delete.
    pub stored: &'a [u8],
}

impl<'a> StoredEvent<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.key.len() + self.stored.len());
        out.push(match self.kind {
            EventKind::Put => EVENT_PUT,
            EventKind::Delete => EVENT_DELETE,
        });
        out.extend_from_slice(&self.history_bytes_before.to_be_bytes());
        put_link(&mut out, self.prev);
        put_varint(&mut out, self.key.len() as u64);
        out.extend_from_slice(self.key);
        out.extend_from_slice(self.stored);
        out
    }

    /// Decodes an event record, borrowing its key and version from `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<StoredEvent<'a>> {
        if bytes.len() < 9 {
            return Err(Error::Corruption(format!("event record of {} bytes", bytes.len())));
        }
        let kind = match bytes[0] {
            EVENT_PUT => EventKind::Put,
            EVENT_DELETE => EventKind::Delete,
            k => return Err(Error::Corruption(format!("event kind {k}"))),
        };
        let history_bytes_before = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes checked above"));
        let mut rest = &bytes[9..];
        let prev = take_link(&mut rest, "event's previous version")?;
        let key_len = take_varint(&mut rest, "event's key length")? as usize;
        if key_len == 0 || key_len > rest.len() {
            return Err(Error::Corruption(format!("event key of {key_len} bytes in a record of {}", bytes.len())));
        }
        let (key, stored) = rest.split_at(key_len);
        if (kind == EventKind::Delete) != stored.is_empty() {
            return Err(Error::Corruption(format!("{kind:?} event with {} version bytes", stored.len())));
        }
        Ok(StoredEvent { kind, history_bytes_before, prev, key, stored })
    }

    /// The `kv` of the change as a watcher sees it, the change being at main revision `main`:
    /// the version a put wrote, or a delete's key and revision alone.
    pub fn event_kv(&self, main: Revision) -> Result<KeyValue> {
        match self.kind {
            EventKind::Put => KeyValue::decode_stored(self.key, self.stored),
            EventKind::Delete => {
                Ok(KeyValue { key: Bytes::copy_from_slice(self.key), mod_revision: main, ..Default::default() })
            }
        }
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
        let prev = Some(RevisionPair::new(300, 2));
        let e = StoredEvent { kind: EventKind::Delete, history_bytes_before: 77, prev, key: b"abc", stored: b"" };
        let enc = e.encode();
        let d = StoredEvent::decode(&enc).unwrap();
        assert_eq!(
            (d.kind, d.history_bytes_before, d.prev, d.key, d.stored),
            (EventKind::Delete, 77, prev, &b"abc"[..], &b""[..])
        );
        let kv = KeyValue {
            key: Bytes::from_static(b"k"),
            create_revision: 1,
            mod_revision: 4,
            version: 2,
            value: Bytes::from_static(b"v"),
            lease: 0,
        };
        let stored = kv.encode_stored();
        let e = StoredEvent { kind: EventKind::Put, history_bytes_before: 0, prev: None, key: b"k", stored: &stored };
        let enc = e.encode();
        let d = StoredEvent::decode(&enc).unwrap();
        assert_eq!((d.prev, d.event_kv(4).unwrap()), (None, kv));
        // A layout 1 record (kind 0 or 1, no version), a delete with a version and a key
        // longer than the record are damage.
        assert!(StoredEvent::decode(&[1; 12]).is_err());
        let mut bad = enc.clone();
        bad[0] = EVENT_DELETE;
        assert!(StoredEvent::decode(&bad).is_err());
        assert!(StoredEvent::decode(&enc[..12]).is_err());
    }

    #[test]
    fn live_links_and_gone_records_round_trip() {
        let links = LiveLinks { sub: 3, prev: Some(RevisionPair::new(1 << 40, 7)) };
        let value = links.encode_with(b"stored");
        assert_eq!(LiveLinks::split(&value).unwrap(), (links, &b"stored"[..]));
        let first = LiveLinks { sub: 0, prev: None };
        assert_eq!(LiveLinks::split(&first.encode_with(b"")).unwrap(), (first, &b""[..]));
        assert!(LiveLinks::split(&[0xff]).is_err());
        let prev = Some(RevisionPair::new(9, 0));
        assert_eq!(decode_gone(&encode_gone(prev)).unwrap(), prev);
        assert_eq!(decode_gone(&encode_gone(None)).unwrap(), None);
        assert!(decode_gone(&[0, 0, 0]).is_err());
    }
}
