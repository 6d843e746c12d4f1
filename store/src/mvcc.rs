//! Multi-version reads and writes of one group's keyspace.
//!
//! Each key's versions form a chain, newest first. Its head is the key's newest change: the
//! live version in the `kv` CF, or, for a key deleted after the compact revision, its delete
//! in the `gone` CF. Every version and every delete is also an `events` record, keyed by
//! revision, that names the key's version before it. So a put writes one entry at a random
//! position (`kv`) and one at the end (`events`), and nothing else.
//!
//! Reads at the current revision scan `kv`. A read of a key at an older revision `R` starts
//! at its head: if the head is at or below `R` it is the answer (a delete: absent);
//! otherwise the read follows the links back through `events` until a version at or below
//! `R`. A key unchanged since `R`, the usual case for a page read a few seconds after its
//! list began, costs what a current read costs. Ranges at `R` merge `kv` and `gone` in key
//! order.
//!
//! Writes go through [`BatchWriter`], which accumulates one apply batch. Every change of a
//! command gets the command's main revision (`current + 1`) and the next sub revision.
//!
//! Invariants: a key's chain has strictly decreasing revisions; a key is in at most one of
//! `kv` and `gone`, with at most one `gone` entry; a link is followed only by reads at or
//! above the compact revision, which never need a version the purge removed, except a
//! delete's: a link to an event the purge removed was a delete, so the key was absent
//! (`compact.rs`).

use bytes::Bytes;
use rocksdb::DB;

use crate::config::StoreConfig;
use crate::engine::{is_incomplete, Cursor, Probe, Reader, Snapshot, WriteSet};
use crate::error::{Error, Result};
use crate::key_codec::{self as kc, Cf};
use crate::kv::{self, Event, EventKind, KeyValue, LiveLinks, StoredEvent};
use crate::live_cache::LiveCache;
use crate::meta::ApplyMeta;
use crate::revision::{GroupId, Revision, RevisionPair};

/// Test-only count of the `gone` lookups on this thread that a batch's probe gave up on
/// ([`BatchWriter::take_gone`]).
#[cfg(test)]
pub(crate) mod probe_fallbacks {
    use std::cell::Cell;

    thread_local! {
        static FALLBACKS: Cell<u64> = const { Cell::new(0) };
    }

    pub(crate) fn count() {
        FALLBACKS.with(|c| c.set(c.get() + 1));
    }

    /// Fallbacks on this thread since the last call, and resets the count.
    pub(crate) fn take() -> u64 {
        FALLBACKS.with(|c| c.replace(0))
    }
}

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

/// A live version with the links its `kv` entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Live {
    pub kv: KeyValue,
    pub links: LiveLinks,
}

impl Live {
    /// The version's full revision: where the next change of the key links to.
    pub fn revision(&self) -> RevisionPair {
        RevisionPair::new(self.kv.mod_revision, self.links.sub)
    }
}

/// The live version of `key` in the view of `r`.
pub(crate) fn get_current(r: &Reader<'_>, g: GroupId, key: &[u8]) -> Result<Option<KeyValue>> {
    match r.get(Cf::Kv, &kc::kv_key(g, key))? {
        Some(v) => Ok(Some(KeyValue::decode_stored(key, LiveLinks::stored(&v)?)?)),
        None => Ok(None),
    }
}

/// The live version of `key` in the view of `r`, with its links: what a write over it needs.
pub(crate) fn get_live(r: &Reader<'_>, g: GroupId, key: &[u8]) -> Result<Option<Live>> {
    match r.get(Cf::Kv, &kc::kv_key(g, key))? {
        Some(v) => {
            let (links, stored) = LiveLinks::split(&v)?;
            Ok(Some(Live { kv: KeyValue::decode_stored(key, stored)?, links }))
        }
        None => Ok(None),
    }
}

/// The `gone` entry of `key`, a key not live: its delete's revision and the version the
/// delete ended. `None` if the key was never deleted, or not since the purge.
pub(crate) fn get_gone(r: &Reader<'_>, g: GroupId, key: &[u8]) -> Result<Option<(RevisionPair, Option<RevisionPair>)>> {
    first_gone(r.cursor(Cf::Gone, &kc::gone_key_after(g, key)), g, key)
}

/// [`get_gone`] through `c`, a cursor bounded by `key`'s entries.
fn first_gone(mut c: Cursor<'_, '_>, g: GroupId, key: &[u8]) -> Result<Option<(RevisionPair, Option<RevisionPair>)>> {
    c.seek(&kc::gone_key_prefix(g, key));
    match c.current()? {
        Some((k, v)) => {
            let (_, at) = kc::split_gone_key(k).ok_or_else(|| corrupt_gone_key(k))?;
            Ok(Some((at, kv::decode_gone(v)?)))
        }
        None => Ok(None),
    }
}

fn corrupt_gone_key(k: &[u8]) -> Error {
    Error::Corruption(format!("gone key {:?}", Bytes::copy_from_slice(k)))
}

/// A put's `events` record, read by a link: its bytes and where its stored version starts
/// (the record's tail), so the version is lent without decoding the record again.
struct PutRecord {
    bytes: Vec<u8>,
    stored_at: usize,
}

impl PutRecord {
    fn stored(&self) -> &[u8] {
        &self.bytes[self.stored_at..]
    }
}

/// Follows a key's chain from `link` back to the change visible at main revision `at`, and
/// returns its `events` record if it is a put (`None`: the key was absent at `at`).
fn follow(r: &Reader<'_>, g: GroupId, mut link: Option<RevisionPair>, at: Revision) -> Result<Option<PutRecord>> {
    while let Some(rev) = link {
        let Some(bytes) = r.get(Cf::Events, &kc::event_key(g, rev))? else {
            // The purge removes a delete at or below the compact revision, with every
            // version before it; the versions it keeps are never passed on the way here
            // (module docs). So the key was absent.
            return Ok(None);
        };
        let ev = StoredEvent::decode(&bytes)?;
        if rev.main <= at {
            return Ok(match ev.kind {
                EventKind::Put => {
                    let stored_at = bytes.len() - ev.stored.len();
                    Some(PutRecord { bytes, stored_at })
                }
                EventKind::Delete => None,
            });
        }
        link = ev.prev;
    }
    Ok(None)
}

/// The version a chain followed from `link` shows at `at`, decoded with `key`.
pub(crate) fn version_at(
    r: &Reader<'_>,
    g: GroupId,
    key: &[u8],
    link: Option<RevisionPair>,
    at: Revision,
) -> Result<Option<KeyValue>> {
    match follow(r, g, link, at)? {
        Some(record) => Ok(Some(KeyValue::decode_stored(key, record.stored())?)),
        None => Ok(None),
    }
}

/// What [`scan`] hands each visited key to: the user key and its stored version, undecoded.
pub(crate) type ScanVisitor<'v> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'v;

/// Whether [`scan`] counts the keys past the ones it visits.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Count {
    /// Walk the whole range and count every key in it.
    All,
    /// Stop after the last visited key: the caller knows the count already.
    Visited,
}

/// `[lower, upper)` of `range`'s keys in the `kv` CF.
fn kv_bounds(g: GroupId, range: &KeyRange) -> (Vec<u8>, Vec<u8>) {
    let upper = match range {
        KeyRange::Single(k) => {
            let mut after = kc::kv_key(g, k);
            after.push(0);
            after
        }
        KeyRange::From(_) => kc::group_end(g),
        KeyRange::Between(_, end) => kc::kv_key(g, end),
    };
    (kc::kv_key(g, range.start()), upper)
}

/// `[lower, upper)` of `range`'s keys in the `gone` CF.
fn gone_bounds(g: GroupId, range: &KeyRange) -> (Vec<u8>, Vec<u8>) {
    let upper = match range {
        KeyRange::Single(k) => kc::gone_key_after(g, k),
        KeyRange::From(_) => kc::group_end(g),
        KeyRange::Between(_, end) => kc::gone_key_bound(g, end),
    };
    (kc::gone_key_bound(g, range.start()), upper)
}

/// A key's newest change, as [`for_each_head`] finds it.
pub(crate) enum Head<'v> {
    /// The live version (its `kv` entry's links and stored version).
    Live(LiveLinks, &'v [u8]),
    /// A delete after the compact revision: its revision and the version it ended.
    Deleted(RevisionPair, Option<RevisionPair>),
}

/// Calls `f` with the head of every key in `range` that has one (live, or deleted after the
/// compact revision), in key order, until `f` returns `false`: `kv` and `gone` merged.
pub(crate) fn for_each_head(
    r: &Reader<'_>,
    g: GroupId,
    range: &KeyRange,
    f: &mut dyn FnMut(&[u8], Head<'_>) -> Result<bool>,
) -> Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    let (kv_lower, kv_upper) = kv_bounds(g, range);
    let (gone_lower, gone_upper) = gone_bounds(g, range);
    let mut live = r.cursor(Cf::Kv, &kv_upper);
    live.seek(&kv_lower);
    let mut gone = r.cursor(Cf::Gone, &gone_upper);
    gone.seek(&gone_lower);
    // The user key of `gone`'s current entry, unescaped once per entry.
    let mut gone_key: Vec<u8> = Vec::new();
    let mut gone_head: Option<(RevisionPair, Option<RevisionPair>)> = None;
    let mut gone_fresh = false;
    loop {
        if !gone_fresh {
            gone_head = match gone.current()? {
                Some((k, v)) => {
                    let (prefix, at) = kc::split_gone_key(k).ok_or_else(|| corrupt_gone_key(k))?;
                    kc::gone_prefix_user_key(prefix, &mut gone_key).ok_or_else(|| corrupt_gone_key(k))?;
                    Some((at, kv::decode_gone(v)?))
                }
                None => None,
            };
            gone_fresh = true;
        }
        let go_on = match (live.current()?, gone_head) {
            (None, None) => return Ok(()),
            (Some((k, v)), gone_head) => {
                let key = kc::kv_user_key(k);
                match gone_head {
                    Some(_) if gone_key.as_slice() < key => None,
                    Some(_) if gone_key.as_slice() == key => {
                        return Err(Error::Corruption(format!(
                            "key {:?} is both live and deleted",
                            Bytes::copy_from_slice(key)
                        )))
                    }
                    _ => {
                        let (links, stored) = LiveLinks::split(v)?;
                        Some(f(key, Head::Live(links, stored))?)
                    }
                }
            }
            (None, Some(_)) => None,
        };
        match go_on {
            Some(true) => live.advance()?,
            Some(false) => return Ok(()),
            None => {
                let (at, prev) = gone_head.expect("a gone entry is next");
                if !f(&gone_key, Head::Deleted(at, prev))? {
                    return Ok(());
                }
                gone.advance()?;
                gone_fresh = false;
            }
        }
    }
}

/// Visits the first `visit_max` keys live in `range` at revision `at` (`None` = current),
/// in key order, with the user key and the stored version lent undecoded. With
/// [`Count::All`] it then counts every other key of the range and returns the count of all;
/// with [`Count::Visited`] it stops after the last visit and returns the number visited.
///
/// At the current revision, keys past the first `visit_max` are counted from their RocksDB
/// keys alone (RocksDB still reads the blocks that hold them, since values are stored
/// inline). At an older revision each key's head is read, and a key changed since `at`
/// costs one `events` read per change since.
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
                        visit(k, LiveLinks::stored(&v)?)?;
                    }
                    count = 1;
                }
                return Ok(count);
            }
            let (lower, upper) = kv_bounds(g, range);
            let mut c = r.cursor(Cf::Kv, &upper);
            c.seek(&lower);
            while let Some((k, v)) = c.current()? {
                if (count as usize) < visit_max {
                    visit(kc::kv_user_key(k), LiveLinks::stored(v)?)?;
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
            for_each_head(r, g, range, &mut |key, head| {
                let record = match head {
                    Head::Live(_, stored) if KeyValue::stored_mod_revision(stored)? <= at => {
                        if (count as usize) < visit_max {
                            visit(key, stored)?;
                        }
                        count += 1;
                        return Ok(!done(count));
                    }
                    Head::Live(links, _) => follow(r, g, links.prev, at)?,
                    Head::Deleted(deleted, _) if deleted.main <= at => None,
                    Head::Deleted(_, prev) => follow(r, g, prev, at)?,
                };
                if let Some(record) = record {
                    if (count as usize) < visit_max {
                        visit(key, record.stored())?;
                    }
                    count += 1;
                }
                Ok(!done(count))
            })?;
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
    /// The group's `gone` entries, for every create of the batch ([`BatchWriter::take_gone`]);
    /// made by the first. Latest-state writers only.
    gone_probe: Option<Probe<'a>>,
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
            gone_probe: None,
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

    /// Appends the `events` record of a change at `rev`.
    fn record(
        &mut self,
        rev: RevisionPair,
        kind: EventKind,
        key: &[u8],
        prev: Option<RevisionPair>,
        stored: &[u8],
        history_bytes: u64,
    ) {
        let ev = StoredEvent { kind, history_bytes_before: self.meta.history_bytes_written, prev, key, stored };
        self.meta.history_bytes_written += history_bytes;
        self.ws.put(Cf::Events, kc::event_key(self.g, rev), ev.encode());
    }

    /// For a key about to be created: removes its `gone` entry, if it has one, and returns
    /// the link its new version takes, the delete, unless that delete is at or below the
    /// compact revision.
    pub fn take_gone(&mut self, key: &[u8]) -> Result<Option<RevisionPair>> {
        let Some((deleted, _)) = self.get_gone(key)? else { return Ok(None) };
        self.ws.delete(Cf::Gone, kc::gone_key(self.g, key, deleted));
        // Determinism: whether the purge has removed that delete yet is each replica's own
        // timing, but the scheduled compact revision is the same on every replica. No read
        // at or above it goes past a delete at or below it, so the link is not needed.
        Ok((deleted.main > self.meta.compact_revision).then_some(deleted))
    }

    /// [`get_gone`] in this writer's view. On the apply path it seeks the batch's one
    /// `gone` iterator (see [`Probe`]) and reads with a cursor of its own only when that
    /// iterator's seek gives up.
    fn get_gone(&mut self, key: &[u8]) -> Result<Option<(RevisionPair, Option<RevisionPair>)>> {
        if self.snapshot.is_none() {
            // Consistency: the probe reads the DB as it was when this batch's first create
            // made it, and the batch's own writes come from the overlay; nothing else
            // writes this group's `gone` entries in between but the purge, whose timing
            // `take_gone` does not depend on.
            let (db, g) = (self.db, self.g);
            let probe = self.gone_probe.get_or_insert_with(|| Probe::new(db, Cf::Gone, g));
            let cursor = Reader::with_overlay(db, &self.ws).probe_cursor(probe, &kc::gone_key_after(g, key));
            match first_gone(cursor, g, key) {
                Err(e) if is_incomplete(&e) => {
                    #[cfg(test)]
                    probe_fallbacks::count();
                }
                found => return found,
            }
        }
        get_gone(&self.reader(), self.g, key)
    }

    /// Writes a new version of `key` over `prev`, its live version in this writer's view,
    /// which the caller has just read (every put needs it for its checks first, so it is
    /// not read twice); returns `prev`'s version.
    pub fn put(&mut self, key: &Bytes, value: Bytes, lease: i64, prev: Option<Live>) -> Result<Option<KeyValue>> {
        assert!(!key.is_empty(), "put of an empty key must be rejected by validation");
        // An O(read) check, so tests only: a stale `prev` would corrupt versions and quotas.
        debug_assert_eq!(prev, get_live(&self.reader(), self.g, key)?, "put: prev is not the live version");
        let rev = self.next_rev();
        let link = match &prev {
            Some(p) => Some(p.revision()),
            None => self.take_gone(key)?,
        };
        let prev = prev.map(|p| p.kv);
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev.main, 1),
        };
        let kv = KeyValue { key: key.clone(), create_revision, mod_revision: rev.main, version, value, lease };
        let stored = kv.encode_stored();
        self.ws.put(Cf::Kv, kc::kv_key(self.g, key), LiveLinks { sub: rev.sub, prev: link }.encode_with(&stored));
        self.record(rev, EventKind::Put, key, link, &stored, kv.quota_bytes());
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
    fn delete_live(&mut self, prev: Live) -> Result<()> {
        let rev = self.next_rev();
        let ended = prev.revision();
        let Live { kv: prev, links } = prev;
        let key = prev.key.clone();
        self.ws.delete(Cf::Kv, kc::kv_key(self.g, &key));
        self.ws.put(Cf::Gone, kc::gone_key(self.g, &key, rev), kv::encode_gone(Some(ended)));
        self.record(rev, EventKind::Delete, &key, Some(ended), &[], key.len() as u64);
        self.meta.kv_bytes -= prev.quota_bytes();
        if prev.lease != 0 {
            self.ws.delete(Cf::Lease, kc::lease_key_entry(self.g, prev.lease, &key));
        }
        // A watch event's prev_kv is the key before the command (etcd reads it at
        // `mod_revision - 1`), not a write earlier in the same command: a txn may put a key
        // and then delete it through a range.
        let event_prev = if prev.mod_revision == rev.main {
            version_at(&self.reader(), self.g, &key, links.prev, rev.main - 1)?
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
        if !range.is_empty() {
            let (lower, upper) = kv_bounds(self.g, range);
            let r = self.reader();
            let mut c = r.cursor(Cf::Kv, &upper);
            c.seek(&lower);
            while let Some((k, v)) = c.current()? {
                let (links, stored) = LiveLinks::split(v)?;
                live.push(Live { kv: KeyValue::decode_stored(kc::kv_user_key(k), stored)?, links });
                c.advance()?;
            }
        }
        let versions = live.iter().map(|l| l.kv.clone()).collect();
        for prev in live {
            self.delete_live(prev)?;
        }
        Ok(versions)
    }
}

/// Checks every chain of group `g` (tests only): each head matches the `events` record it
/// names, links go strictly back in time and stay with their key, and a link finds no record
/// only at or below the purge's reach, `purged`.
#[cfg(test)]
pub(crate) fn check_chains(r: &Reader<'_>, g: GroupId, purged: Revision) {
    let all = KeyRange::From(Bytes::new());
    for_each_head(r, g, &all, &mut |key, head| {
        let (at, mut link) = match head {
            Head::Live(links, stored) => {
                let at = RevisionPair::new(KeyValue::stored_mod_revision(stored)?, links.sub);
                let record = r.get(Cf::Events, &kc::event_key(g, at))?.expect("a live version has its record");
                let ev = StoredEvent::decode(&record)?;
                assert_eq!(
                    (ev.kind, ev.key, ev.stored, ev.prev),
                    (EventKind::Put, key, stored, links.prev),
                    "head of {key:?}"
                );
                (at, links.prev)
            }
            Head::Deleted(at, prev) => {
                let record = r.get(Cf::Events, &kc::event_key(g, at))?.expect("a delete in gone has its record");
                let ev = StoredEvent::decode(&record)?;
                assert_eq!((ev.kind, ev.key, ev.prev), (EventKind::Delete, key, prev), "gone head of {key:?}");
                (at, prev)
            }
        };
        let mut after = at;
        while let Some(rev) = link {
            assert!(rev < after, "link of {key:?} from {after:?} to {rev:?} does not go back");
            let Some(record) = r.get(Cf::Events, &kc::event_key(g, rev))? else {
                assert!(rev.main <= purged, "link of {key:?} to {rev:?} finds nothing above the purge at {purged}");
                break;
            };
            let ev = StoredEvent::decode(&record)?;
            assert_eq!(ev.key, key, "link of {key:?} to {rev:?} names another key");
            after = rev;
            link = ev.prev;
        }
        Ok(true)
    })
    .expect("chains are readable");
}
