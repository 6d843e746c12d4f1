//! Multi-version reads and writes of one group's keyspace.
//!
//! Reads at the current revision scan the `kv` CF (one entry per live key). Reads at an
//! older revision `R` scan the `history` CF: for each key, seek to its newest version `<= R`
//! (versions are stored newest first); a tombstone there means "absent at R".
//!
//! Writes go through [`BatchWriter`], which accumulates one apply batch. Every change of a
//! command gets the command's main revision (`current + 1`) and the next sub revision, and
//! writes: the new `kv` state, a `history` entry, and an `events` record.
//!
//! Invariants: a key's `history` versions have strictly increasing revisions; the newest is
//! a tombstone iff the key is absent from `kv`; `kv` holds exactly the newest version.

use bytes::Bytes;
use rocksdb::DB;

use crate::config::StoreConfig;
use crate::engine::{Reader, Snapshot, WriteSet};
use crate::error::{Error, Result};
use crate::key_codec::{self as kc, Cf};
use crate::kv::{Event, EventKind, KeyValue, StoredEvent};
use crate::live_cache::LiveCache;
use crate::meta::ApplyMeta;
use crate::revision::{GroupId, Revision, RevisionPair};

/// etcd's three `range_end` forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// Empty `range_end`: exactly `key`.
    Single(Bytes),
    /// `range_end == "\0"`: every key `>= key`.
    From(Bytes),
    /// `[key, range_end)` (empty when `range_end <= key`).
    Between(Bytes, Bytes),
}

impl KeyRange {
    pub fn new(key: &Bytes, range_end: &Bytes) -> KeyRange {
        if range_end.is_empty() {
            KeyRange::Single(key.clone())
        } else if &range_end[..] == b"\0" {
            KeyRange::From(key.clone())
        } else {
            KeyRange::Between(key.clone(), range_end.clone())
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(key) => k == &key[..],
            KeyRange::From(key) => k >= &key[..],
            KeyRange::Between(key, end) => k >= &key[..] && k < &end[..],
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, KeyRange::Between(key, end) if end <= key)
    }

    fn start(&self) -> &[u8] {
        match self {
            KeyRange::Single(k) | KeyRange::From(k) | KeyRange::Between(k, _) => k,
        }
    }
}

/// The live version of `key` in the view of `r`.
pub(crate) fn get_current(r: &Reader<'_>, g: GroupId, key: &[u8]) -> Result<Option<KeyValue>> {
    match r.get(Cf::Kv, &kc::kv_key(g, key))? {
        Some(v) => Ok(Some(KeyValue::decode_stored(key, &v)?)),
        None => Ok(None),
    }
}

/// The version written exactly at `rev` (`None` if absent or a tombstone).
pub(crate) fn get_version(r: &Reader<'_>, g: GroupId, key: &[u8], rev: RevisionPair) -> Result<Option<KeyValue>> {
    match r.get(Cf::History, &kc::history_key(g, key, rev))? {
        Some(v) if !v.is_empty() => Ok(Some(KeyValue::decode_stored(key, &v)?)),
        _ => Ok(None),
    }
}

/// The version of `key` visible at `main` revision `at` (`None` if absent then).
pub(crate) fn get_at(r: &Reader<'_>, g: GroupId, key: &[u8], at: Revision) -> Result<Option<KeyValue>> {
    if at < 1 {
        return Ok(None);
    }
    let mut c = r.cursor(Cf::History, &kc::history_key_after(g, key));
    c.seek(&kc::history_key(g, key, RevisionPair::new(at, i64::MAX)));
    match c.next_entry()? {
        Some((_, v)) if !v.is_empty() => Ok(Some(KeyValue::decode_stored(key, &v)?)),
        _ => Ok(None),
    }
}

/// Consecutive entries a `history` scan steps over with `next` before it seeks instead.
/// Stepping is much cheaper than a seek while a key has few versions (the usual case after
/// compaction); seeking bounds the cost of a key with many versions to one seek.
const HISTORY_STEPS_BEFORE_SEEK: usize = 8;

/// What [`scan`] hands each visited key to: the user key and its stored value, undecoded.
pub(crate) type ScanVisitor<'v> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'v;

/// Whether [`scan`] counts the keys past the ones it visits.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Count {
    /// Walk the whole range and count every key in it.
    All,
    /// Stop after the last visited key: the caller knows the count already.
    Visited,
}

/// Visits the first `visit_max` keys live in `range` at revision `at` (`None` = current),
/// in key order, with the user key and the stored value lent undecoded. With
/// [`Count::All`] it then counts every other key of the range and returns the count of all;
/// with [`Count::Visited`] it stops after the last visit and returns the number visited.
///
/// Keys past the first `visit_max` are counted from their RocksDB keys alone: no value is
/// copied or decoded and no user key is unescaped (RocksDB still reads the blocks that hold
/// them, since values are stored inline). The scan seeks to the range's first key and, at
/// an old revision, costs one pass over the versions it walks, seeking past a key only
/// after [`HISTORY_STEPS_BEFORE_SEEK`] of its versions.
pub(crate) fn scan(
    r: &Reader<'_>,
    g: GroupId,
    range: &KeyRange,
    at: Option<Revision>,
    visit_max: usize,
    counting: Count,
    visit: &mut ScanVisitor<'_>,
) -> Result<u64> {
    if range.is_empty() || (visit_max == 0 && counting == Count::Visited) {
        return Ok(0);
    }
    // Past the visits, only counting remains: `Count::Visited` stops there.
    let done = |count: u64| counting == Count::Visited && count as usize >= visit_max;
    let mut count: u64 = 0;
    match at {
        None => {
            if let KeyRange::Single(k) = range {
                if let Some(v) = r.get(Cf::Kv, &kc::kv_key(g, k))? {
                    if visit_max > 0 {
                        visit(k, &v)?;
                    }
                    count = 1;
                }
                return Ok(count);
            }
            let upper = match range {
                KeyRange::Between(_, end) => kc::kv_key(g, end),
                _ => kc::group_end(g),
            };
            let mut c = r.cursor(Cf::Kv, &upper);
            c.seek(&kc::kv_key(g, range.start()));
            while let Some((k, v)) = c.current()? {
                if (count as usize) < visit_max {
                    visit(kc::kv_user_key(k), v)?;
                }
                count += 1;
                if done(count) {
                    break;
                }
                c.advance()?;
            }
            Ok(count)
        }
        Some(at) => {
            let upper = match range {
                KeyRange::Single(k) => kc::history_key_after(g, k),
                KeyRange::From(_) => kc::group_end(g),
                KeyRange::Between(_, end) => kc::history_key_bound(g, end),
            };
            let mut c = r.cursor(Cf::History, &upper);
            c.seek(&kc::history_key_bound(g, range.start()));
            // The version prefix of the key whose versions the cursor is in, whether its
            // version at `at` was found (the rest of its versions are older: skip them),
            // and how many entries were stepped over since the last seek.
            let mut key_prefix: Vec<u8> = Vec::new();
            let mut resolved = false;
            let mut steps = 0usize;
            let mut user_key: Vec<u8> = Vec::new();
            loop {
                // `Some(target)`: seek there; `None`: step to the next entry.
                let seek_to = {
                    let Some((k, v)) = c.current()? else { break };
                    let (prefix, rev) = kc::split_history_key(k)
                        .ok_or_else(|| Error::Corruption(format!("history key {:?}", Bytes::copy_from_slice(k))))?;
                    if prefix != &key_prefix[..] {
                        key_prefix.clear();
                        key_prefix.extend_from_slice(prefix);
                        resolved = false;
                        steps = 0;
                    }
                    if resolved {
                        // An older version of a key already resolved.
                        (steps >= HISTORY_STEPS_BEFORE_SEEK).then(|| kc::history_prefix_after(&key_prefix))
                    } else if rev.main > at {
                        // Newer than `at`: the key's version at `at` is further on.
                        (steps >= HISTORY_STEPS_BEFORE_SEEK).then(|| kc::history_prefix_at(&key_prefix, at))
                    } else {
                        // The newest version at or below `at`: this decides the key.
                        resolved = true;
                        if !v.is_empty() {
                            if (count as usize) < visit_max {
                                kc::history_prefix_user_key(&key_prefix, &mut user_key).ok_or_else(|| {
                                    Error::Corruption(format!("history key {:?}", Bytes::copy_from_slice(k)))
                                })?;
                                visit(&user_key, v)?;
                            }
                            count += 1;
                            if done(count) {
                                break;
                            }
                        }
                        None
                    }
                };
                match seek_to {
                    Some(target) => {
                        c.seek(&target);
                        steps = 0;
                    }
                    None => {
                        c.advance()?;
                        steps += 1;
                    }
                }
            }
            Ok(count)
        }
    }
}

/// The state of one apply batch: pending writes, the group's metadata as of the last
/// applied command, and the events to publish once the batch is durable in RocksDB.
pub(crate) struct BatchWriter<'a> {
    pub db: &'a DB,
    pub g: GroupId,
    pub cfg: &'a StoreConfig,
    pub ws: WriteSet,
    pub meta: ApplyMeta,
    /// Events of the batch, in revision order.
    pub events: Vec<Event>,
    /// Changes made by the command being applied (its next sub revision).
    changes: i64,
    /// `None` on the apply path (the latest DB state: apply is the group's only writer);
    /// a snapshot matching `meta` for a read-only txn evaluated beside the applies.
    snapshot: Option<&'a Snapshot<'a>>,
    /// The store's live-entry cache, on the apply path (see [`BatchWriter::with_live_cache`]).
    live: Option<&'a LiveCache>,
}

impl<'a> BatchWriter<'a> {
    pub fn new(db: &'a DB, g: GroupId, cfg: &'a StoreConfig, meta: ApplyMeta) -> BatchWriter<'a> {
        BatchWriter {
            db,
            g,
            cfg,
            ws: WriteSet::default(),
            meta,
            events: Vec::new(),
            changes: 0,
            snapshot: None,
            live: None,
        }
    }

    /// A writer that reads at `snapshot`, whose state `meta` must describe. Only for
    /// evaluating commands that write nothing: its write set is never written to RocksDB.
    pub fn at_snapshot(
        db: &'a DB,
        snapshot: &'a Snapshot<'a>,
        g: GroupId,
        cfg: &'a StoreConfig,
        meta: ApplyMeta,
    ) -> BatchWriter<'a> {
        BatchWriter { snapshot: Some(snapshot), ..BatchWriter::new(db, g, cfg, meta) }
    }

    /// Reads the key's live versions through `live` (`live_cache.rs`). Only for the apply
    /// path, under the group's apply lock, whose commit writes the batch through to it.
    pub fn with_live_cache(self, live: &'a LiveCache) -> BatchWriter<'a> {
        assert!(self.snapshot.is_none(), "a writer at a snapshot cannot use the live cache");
        BatchWriter { live: Some(live), ..self }
    }

    pub fn reader(&self) -> Reader<'_> {
        match (self.snapshot, self.live) {
            (Some(s), _) => Reader::at_snapshot_with_overlay(self.db, s, &self.ws),
            (None, Some(live)) => Reader::with_overlay(self.db, &self.ws).with_live_cache(live),
            (None, None) => Reader::with_overlay(self.db, &self.ws),
        }
    }

    /// Starts a command: its writes will share revision `current + 1`.
    pub fn begin(&mut self) {
        self.changes = 0;
    }

    /// Ends a command; bumps the current revision iff it changed something.
    pub fn end(&mut self) -> Revision {
        if self.changes > 0 {
            self.meta.current_revision += 1;
            self.changes = 0;
        }
        self.meta.current_revision
    }

    /// Revision the running command reads at: `current`, or `current + 1` once it wrote.
    pub fn read_revision(&self) -> Revision {
        self.meta.current_revision + i64::from(self.changes > 0)
    }

    fn next_rev(&mut self) -> RevisionPair {
        let rev = RevisionPair::new(self.meta.current_revision + 1, self.changes);
        self.changes += 1;
        rev
    }

    fn record(&mut self, rev: RevisionPair, key: &Bytes, stored: Vec<u8>, kind: EventKind, history_bytes: u64) {
        self.ws.put(Cf::History, kc::history_key(self.g, key, rev), stored);
        let ev = StoredEvent { kind, history_bytes_before: self.meta.history_bytes_written, key: key.clone() };
        self.meta.history_bytes_written += history_bytes;
        self.ws.put(Cf::Events, kc::event_key(self.g, rev), ev.encode());
    }

    /// Writes a new version of `key` over `prev`, its live version in this writer's view,
    /// which the caller has just read (every put needs it for its checks first, so it is
    /// not read twice); returns `prev`.
    pub fn put(&mut self, key: &Bytes, value: Bytes, lease: i64, prev: Option<KeyValue>) -> Result<Option<KeyValue>> {
        assert!(!key.is_empty(), "put of an empty key must be rejected by validation");
        // An O(read) check, so tests only: a stale `prev` would corrupt versions and quotas.
        debug_assert_eq!(prev, get_current(&self.reader(), self.g, key)?, "put: prev is not the live version");
        let rev = self.next_rev();
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev.main, 1),
        };
        let kv = KeyValue { key: key.clone(), create_revision, mod_revision: rev.main, version, value, lease };
        let stored = kv.encode_stored();
        self.ws.put(Cf::Kv, kc::kv_key(self.g, key), stored.clone());
        self.record(rev, key, stored, EventKind::Put, kv.quota_bytes());
        self.meta.kv_bytes = self.meta.kv_bytes + kv.quota_bytes() - prev.as_ref().map_or(0, KeyValue::quota_bytes);
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != lease {
            if old_lease != 0 {
                self.ws.delete(Cf::Lease, kc::lease_key_entry(self.g, old_lease, key));
            }
            if lease != 0 {
                self.ws.put(Cf::Lease, kc::lease_key_entry(self.g, lease, key), Vec::new());
            }
        }
        // A create (no live previous version, even if this command deleted one) carries no
        // prev_kv, as etcd's watch gives none to create events; otherwise the previous version
        // predates this command, since a command puts a key at most once.
        self.events.push(Event { kind: EventKind::Put, kv, prev_kv: prev.clone() });
        Ok(prev)
    }

    /// Deletes the live `key`. The caller checked it is live.
    fn delete_live(&mut self, prev: KeyValue) -> Result<()> {
        let rev = self.next_rev();
        let key = prev.key.clone();
        self.ws.delete(Cf::Kv, kc::kv_key(self.g, &key));
        self.record(rev, &key, Vec::new(), EventKind::Delete, key.len() as u64);
        self.meta.kv_bytes -= prev.quota_bytes();
        if prev.lease != 0 {
            self.ws.delete(Cf::Lease, kc::lease_key_entry(self.g, prev.lease, &key));
        }
        // A watch event's prev_kv is the key before the command (etcd reads it at
        // `mod_revision - 1`), not a write earlier in the same command: a txn may put a key
        // and then delete it through a range.
        let event_prev = if prev.mod_revision == rev.main {
            get_at(&self.reader(), self.g, &key, rev.main - 1)?
        } else {
            Some(prev)
        };
        let tombstone = KeyValue { key, mod_revision: rev.main, ..Default::default() };
        self.events.push(Event { kind: EventKind::Delete, kv: tombstone, prev_kv: event_prev });
        Ok(())
    }

    /// Deletes every live key in `range`; returns their last versions in key order.
    pub fn delete_range(&mut self, range: &KeyRange) -> Result<Vec<KeyValue>> {
        let mut live = Vec::new();
        scan(&self.reader(), self.g, range, None, usize::MAX, Count::All, &mut |k, v| {
            live.push(KeyValue::decode_stored(k, v)?);
            Ok(())
        })?;
        for prev in &live {
            self.delete_live(prev.clone())?;
        }
        Ok(live)
    }
}
