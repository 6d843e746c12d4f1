//! Conversion of a data dir from layout 1 to layout 2, at open, before anything reads it.
//!
//! Layout 1 kept every version of a key in a `history` family (`g | esc(key) 00 01 | !rev` →
//! the version, empty for a delete), `kv` held the bare live versions and `events` held
//! `kind(0|1) | history_bytes_before | key`. Layout 2 (`key_codec.rs`) keeps each version in
//! its `events` record, linked to the one before it, and each key's head in `kv` or `gone`.
//!
//! The conversion walks `history` once, key by key, newest first, so each version meets the
//! one before it next. For each it writes the layout 2 `events` record (the quota's byte
//! count taken from the layout 1 record, when a purge has not removed it), and for each
//! key's newest change its `kv` entry or its `gone` entry. Nothing it writes depends on
//! what it wrote before, only on `history` and the layout 1 `events` bytes it replaces with
//! the same counts: an interrupted conversion is run again from the start at the next open.
//! Only when everything is flushed does it record layout 2, flush that, and drop `history`.
//!
//! Determinism: replicas of a group may have purged `history` to different points below the
//! group's compact revision. So a version links to a delete at or below the compact
//! revision as a write of layout 2 would: not at all (see `BatchWriter::take_gone`). Every
//! `events` record above the compact revision, which is what `HashKV` covers, then comes out
//! the same on every replica.

use std::collections::HashMap;

use rocksdb::{FlushOptions, ReadOptions, WriteBatch, DB};

use crate::engine::{self, LEGACY_HISTORY_CF};
use crate::error::{Error, Result};
use crate::key_codec::{self as kc, Cf};
use crate::kv::{self, EventKind, LiveLinks, StoredEvent};
use crate::meta::ApplyMeta;
use crate::revision::{GroupId, Revision, RevisionPair};

/// Versions converted per write batch.
const BATCH_VERSIONS: usize = 4096;
/// Readahead of the walk over `history`.
const READAHEAD_BYTES: usize = 2 << 20;

/// What a conversion did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Converted {
    pub versions: u64,
    pub live_keys: u64,
    pub deleted_keys: u64,
    /// `events` records whose versions a layout 1 purge had removed, deleted.
    pub orphan_events: u64,
}

/// Brings a data dir whose layout is `found` to [`engine::LAYOUT_VERSION`], and drops the
/// layout 1 `history` family if a conversion stopped after recording layout 2 but before it.
pub(crate) fn upgrade(db: &mut DB, found: u32) -> Result<Option<Converted>> {
    let converted = match found {
        1 => Some(from_layout_1(db)?),
        engine::LAYOUT_VERSION => None,
        other => return Err(Error::Corruption(format!("no conversion from store layout {other}"))),
    };
    if db.cf_handle(LEGACY_HISTORY_CF).is_some() {
        db.drop_cf(LEGACY_HISTORY_CF)?;
    }
    Ok(converted)
}

/// One `history` entry waiting for the entry after it, which tells whether it was its key's
/// newest change and which version came before it.
struct Pending {
    g: GroupId,
    /// `g | esc(key) 00 01`, shared by the key's entries.
    prefix: Vec<u8>,
    key: Vec<u8>,
    rev: RevisionPair,
    /// The version; empty for a delete.
    value: Vec<u8>,
    newest: bool,
}

struct Converter<'a> {
    db: &'a DB,
    batch: WriteBatch,
    in_batch: usize,
    /// Each group's scheduled compact revision, read once.
    compact: HashMap<GroupId, Revision>,
    done: Converted,
}

impl Converter<'_> {
    fn compact_revision(&mut self, g: GroupId) -> Result<Revision> {
        if let Some(&c) = self.compact.get(&g) {
            return Ok(c);
        }
        let c = match self.db.get_cf(engine::cf(self.db, Cf::Meta), kc::meta_apply_key(g))? {
            Some(v) => ApplyMeta::decode(&v)?.compact_revision,
            None => 0,
        };
        self.compact.insert(g, c);
        Ok(c)
    }

    /// The quota's byte count before the change at `rev`, from the `events` record there in
    /// either layout (a conversion run before may have replaced it); 0 where a purge removed
    /// it, which only happens at or below the compact revision, where nothing reads it.
    fn history_bytes_before(&self, g: GroupId, rev: RevisionPair) -> Result<u64> {
        let Some(record) = self.db.get_cf(engine::cf(self.db, Cf::Events), kc::event_key(g, rev))? else {
            return Ok(0);
        };
        match record.first() {
            Some(0 | 1) if record.len() >= 9 => Ok(u64::from_be_bytes(record[1..9].try_into().expect("8 bytes"))),
            _ => Ok(StoredEvent::decode(&record)?.history_bytes_before),
        }
    }

    /// Deletes the `events` records still in layout 1 once every `history` entry is written
    /// in layout 2: their versions were purged. A layout 1 purge deleted `history` entries
    /// batch by batch and the group's `events` below its target in its last batch, so a
    /// purge cut short leaves records below the compact revision without their versions;
    /// and a key put and deleted in one revision at the target keeps its delete alone. No
    /// read at or above the compact revision needs them, and the layout 2 purge could not
    /// decode them. One above the compact revision had a version no purge removes: corrupt.
    fn drop_orphan_events(&mut self) -> Result<()> {
        let events = engine::cf(self.db, Cf::Events);
        let mut it = self.db.raw_iterator_cf_opt(events, walk_options());
        it.seek_to_first();
        while it.valid() {
            let (k, v) = (it.key().expect("valid"), it.value().expect("valid"));
            if matches!(v.first(), Some(0 | 1)) {
                let corrupt = || Error::Corruption(format!("events key {:?}", bytes::Bytes::copy_from_slice(k)));
                let g = kc::group_of(k).ok_or_else(corrupt)?;
                let rev = kc::decode_event_key(k).ok_or_else(corrupt)?;
                if rev.main > self.compact_revision(g)? {
                    return Err(Error::Corruption(format!(
                        "group {g}: the layout 1 events record at {rev:?} has no history entry above the compact revision"
                    )));
                }
                self.batch.delete_cf(events, k);
                self.done.orphan_events += 1;
                self.counted()?;
            }
            it.next();
        }
        Ok(it.status()?)
    }

    /// Writes `p` in layout 2; `before` is the key's entry after it in `history` (the version
    /// before it), if any: its revision and whether it is a delete.
    fn write(&mut self, p: Pending, before: Option<(RevisionPair, bool)>) -> Result<()> {
        let compact = self.compact_revision(p.g)?;
        let link = match before {
            Some((rev, true)) if rev.main <= compact => None,
            Some((rev, _)) => Some(rev),
            None => None,
        };
        let kind = if p.value.is_empty() { EventKind::Delete } else { EventKind::Put };
        let ev = StoredEvent {
            kind,
            history_bytes_before: self.history_bytes_before(p.g, p.rev)?,
            prev: link,
            key: &p.key,
            stored: &p.value,
        };
        self.batch.put_cf(engine::cf(self.db, Cf::Events), kc::event_key(p.g, p.rev), ev.encode());
        if p.newest {
            match kind {
                EventKind::Put => {
                    let value = LiveLinks { sub: p.rev.sub, prev: link }.encode_with(&p.value);
                    self.batch.put_cf(engine::cf(self.db, Cf::Kv), kc::kv_key(p.g, &p.key), value);
                    self.done.live_keys += 1;
                }
                EventKind::Delete => {
                    let gone = kc::gone_key(p.g, &p.key, p.rev);
                    self.batch.put_cf(engine::cf(self.db, Cf::Gone), gone, kv::encode_gone(link));
                    self.done.deleted_keys += 1;
                }
            }
        }
        self.done.versions += 1;
        self.counted()
    }

    /// Counts one more change in the batch, and writes the batch once it is full.
    fn counted(&mut self) -> Result<()> {
        self.in_batch += 1;
        if self.in_batch >= BATCH_VERSIONS {
            self.write_batch()?;
        }
        Ok(())
    }

    /// Writes the batch so far.
    fn write_batch(&mut self) -> Result<()> {
        self.db.write_opt(std::mem::take(&mut self.batch), &engine::write_options())?;
        self.in_batch = 0;
        Ok(())
    }
}

fn from_layout_1(db: &DB) -> Result<Converted> {
    let history = db
        .cf_handle(LEGACY_HISTORY_CF)
        .ok_or_else(|| Error::Corruption("a layout 1 data dir without its history family".into()))?;
    let mut conv = Converter {
        db,
        batch: WriteBatch::default(),
        in_batch: 0,
        compact: HashMap::new(),
        done: Converted::default(),
    };
    let mut it = db.raw_iterator_cf_opt(&history, walk_options());
    it.seek_to_first();
    let mut pending: Option<Pending> = None;
    while it.valid() {
        let (k, v) = (it.key().expect("valid"), it.value().expect("valid"));
        let corrupt =
            || Error::Corruption(format!("history key {:?} in a layout 1 data dir", bytes::Bytes::copy_from_slice(k)));
        let g = kc::group_of(k).ok_or_else(corrupt)?;
        let (prefix, rev) = kc::split_gone_key(k).ok_or_else(corrupt)?;
        let newest = match &pending {
            Some(p) => p.prefix != prefix,
            None => true,
        };
        let mut key = Vec::new();
        if newest {
            kc::gone_prefix_user_key(prefix, &mut key).ok_or_else(corrupt)?;
        } else {
            key = pending.as_ref().expect("same key as the pending entry").key.clone();
        }
        let next = Pending { g, prefix: prefix.to_vec(), key, rev, value: v.to_vec(), newest };
        if let Some(p) = pending.take() {
            let before = (!newest).then_some((rev, v.is_empty()));
            conv.write(p, before)?;
        }
        pending = Some(next);
        it.next();
    }
    it.status()?;
    if let Some(p) = pending.take() {
        conv.write(p, None)?;
    }
    // Ordering: every converted record is written before the walk over `events`, which
    // takes any record still in layout 1 for one without a version.
    conv.write_batch()?;
    conv.drop_orphan_events()?;
    conv.write_batch()?;
    let done = conv.done;
    // Ordering: everything converted is durable before layout 2 is recorded, and that
    // record is durable before `history` is dropped (`upgrade`); a crash anywhere before
    // leaves layout 1 recorded with `history` whole, and the conversion runs again.
    flush_all(db)?;
    engine::record_layout(db, engine::LAYOUT_VERSION)?;
    flush_all(db)?;
    Ok(done)
}

/// Options of the conversion's walks over a whole family: read ahead, and keep the block
/// cache for what the member serves next.
fn walk_options() -> ReadOptions {
    let mut ro = ReadOptions::default();
    ro.fill_cache(false);
    ro.set_readahead_size(READAHEAD_BYTES);
    ro
}

fn flush_all(db: &DB) -> Result<()> {
    let mut fo = FlushOptions::default();
    fo.set_wait(true);
    let mut cfs: Vec<_> = Cf::ALL.iter().map(|&c| engine::cf(db, c)).collect();
    let default = db.cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME).expect("the default family always exists");
    cfs.push(default);
    Ok(db.flush_cfs_opt(&cfs, &fo)?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost::Message;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::command::{
        Command, CommandBody, CompactRequest, DeleteRangeRequest, PutRequest, RangeRequest, Request, RequestOp,
        TxnRequest,
    };
    use crate::config::StoreConfig;
    use crate::kv::KeyValue;
    use crate::store::Store;

    const GROUPS: [GroupId; 2] = [GroupId(1), GroupId(7)];

    fn key(i: u32) -> bytes::Bytes {
        // Keys with a zero byte check the escaping of `history` and `gone` keys.
        if i.is_multiple_of(4) {
            format!("k\0{i}").into()
        } else {
            format!("k{i}").into()
        }
    }

    fn put(k: u32, v: u64) -> RequestOp {
        RequestOp {
            request: Some(Request::Put(PutRequest {
                key: key(k),
                value: format!("v{v}").into(),
                ..Default::default()
            })),
        }
    }

    /// Applies random puts, deletes, txns that put and delete one key, and compactions whose
    /// purge it waits for or not.
    fn fill(store: &Store, rng: &mut StdRng) {
        let mut index = [0u64; 2];
        for step in 0..400u64 {
            let gi = rng.random_range(0..2);
            let g = GROUPS[gi];
            let k = rng.random_range(0..12);
            let body = match rng.random_range(0..10) {
                0..=4 => {
                    CommandBody::Put(PutRequest { key: key(k), value: format!("v{step}").into(), ..Default::default() })
                }
                5 | 6 => CommandBody::DeleteRange(DeleteRangeRequest { key: key(k), ..Default::default() }),
                7 => CommandBody::Txn(TxnRequest {
                    compare: vec![],
                    success: vec![
                        put(k, step),
                        put(k + 1, step),
                        RequestOp {
                            request: Some(Request::DeleteRange(DeleteRangeRequest {
                                key: key(k + 2),
                                ..Default::default()
                            })),
                        },
                    ],
                    failure: vec![],
                }),
                _ => {
                    let (current, compact) = (store.current_revision(g), store.compact_revision(g));
                    if current <= compact + 1 {
                        continue;
                    }
                    let revision = rng.random_range(compact + 1..=current);
                    let cmd = CommandBody::Compact(CompactRequest { revision, physical: false });
                    index[gi] += 1;
                    let entry = Command::new(index[gi], cmd).encode_to_vec();
                    store.apply(g, &[(index[gi], &entry)]).unwrap().pop().unwrap().unwrap();
                    if rng.random_bool(0.5) {
                        assert!(store.wait_compaction_finished(g, revision, Duration::from_secs(30)));
                    }
                    continue;
                }
            };
            index[gi] += 1;
            let entry = Command::new(index[gi], body).encode_to_vec();
            store.apply(g, &[(index[gi], &entry)]).unwrap().pop().unwrap().unwrap();
        }
    }

    /// A revision, every key live at it, and HashKV at it.
    type Answer = (Revision, Vec<KeyValue>, (u32, Revision, Revision));

    /// What the conversion must keep: every key at every readable revision, and HashKV.
    fn answers(store: &Store, g: GroupId) -> Vec<Answer> {
        let (compact, current) = (store.compact_revision(g), store.current_revision(g));
        (compact.max(1)..=current)
            .map(|r| {
                let req = RangeRequest { key: "\0".into(), range_end: "\0".into(), revision: r, ..Default::default() };
                (r, store.range(g, &req).unwrap().kvs, store.hash_kv(g, r).unwrap())
            })
            .collect()
    }

    /// Rewrites a layout 2 data dir as layout 1 would have held the same state: every
    /// version and delete in `history`, `events` records without versions from each group's
    /// compact revision on (a layout 1 purge dropped the ones below it), bare versions in
    /// `kv`, no `gone`, no recorded version.
    fn downgrade(path: &std::path::Path) {
        let cfg = StoreConfig::default();
        let mut db = engine::open_db(path, &cfg).unwrap();
        db.create_cf(LEGACY_HISTORY_CF, &rocksdb::Options::default()).unwrap();
        let mut batch = WriteBatch::default();
        let history = db.cf_handle(LEGACY_HISTORY_CF).unwrap();
        for g in GROUPS {
            let meta =
                ApplyMeta::decode(&db.get_cf(engine::cf(&db, Cf::Meta), kc::meta_apply_key(g)).unwrap().unwrap())
                    .unwrap();
            let events = db.iterator_cf(engine::cf(&db, Cf::Events), rocksdb::IteratorMode::Start);
            for item in events {
                let (k, v) = item.unwrap();
                if kc::group_of(&k) != Some(g) {
                    continue;
                }
                let rev = kc::decode_event_key(&k).unwrap();
                let ev = StoredEvent::decode(&v).unwrap();
                batch.put_cf(&history, kc::gone_key(g, ev.key, rev), ev.stored);
                if rev.main < meta.compact_revision {
                    batch.delete_cf(engine::cf(&db, Cf::Events), &k);
                } else {
                    let mut legacy = vec![u8::from(ev.kind == EventKind::Delete)];
                    legacy.extend_from_slice(&ev.history_bytes_before.to_be_bytes());
                    legacy.extend_from_slice(ev.key);
                    batch.put_cf(engine::cf(&db, Cf::Events), &k, legacy);
                }
            }
        }
        for item in db.iterator_cf(engine::cf(&db, Cf::Kv), rocksdb::IteratorMode::Start) {
            let (k, v) = item.unwrap();
            batch.put_cf(engine::cf(&db, Cf::Kv), &k, LiveLinks::stored(&v).unwrap());
        }
        for item in db.iterator_cf(engine::cf(&db, Cf::Gone), rocksdb::IteratorMode::Start) {
            batch.delete_cf(engine::cf(&db, Cf::Gone), item.unwrap().0);
        }
        batch.delete(b"plinth-store-layout-version");
        db.write(batch).unwrap();
        flush_all(&db).unwrap();
        db.drop_cf(Cf::Gone.name()).unwrap();
    }

    /// Applies `body` to group `g` at its next log index; returns the response.
    fn apply_next(store: &Store, g: GroupId, body: CommandBody) -> crate::CommandResponse {
        let index = store.applied_index(g) + 1;
        let entry = Command::new(index, body).encode_to_vec();
        store.apply(g, &[(index, &entry)]).unwrap().pop().unwrap().unwrap()
    }

    /// A layout 1 event record (kind, history bytes before, key), which held no version.
    fn legacy_event(delete: bool, key: &[u8]) -> Vec<u8> {
        let mut v = vec![u8::from(delete)];
        v.extend_from_slice(&0u64.to_be_bytes());
        v.extend_from_slice(key);
        v
    }

    /// The two states a layout 1 purge left `events` records in without their versions: a
    /// purge cut short (its `history` deletes written, not yet its range delete of `events`
    /// below the target), and a key put and deleted in one revision at the target (the
    /// delete kept, the put's version purged, its record above the range delete). The
    /// conversion drops those records: the data dir answers as before, its chains check out,
    /// and a compaction after the conversion finishes.
    #[test]
    fn records_a_layout_1_purge_left_without_versions_are_dropped() {
        let mut rng = StdRng::seed_from_u64(5);
        let dir = tempfile::tempdir().unwrap();
        let g = GROUPS[0];
        let k = bytes::Bytes::from_static(b"put-and-deleted");
        let (before, c) = {
            let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
            fill(&store, &mut rng);
            let nested = |request| RequestOp {
                request: Some(Request::Txn(TxnRequest {
                    success: vec![RequestOp { request: Some(request) }],
                    ..Default::default()
                })),
            };
            let txn = TxnRequest {
                success: vec![
                    nested(Request::Put(PutRequest { key: k.clone(), value: "v".into(), ..Default::default() })),
                    nested(Request::DeleteRange(DeleteRangeRequest { key: k.clone(), ..Default::default() })),
                ],
                ..Default::default()
            };
            apply_next(&store, g, CommandBody::Txn(txn));
            let c = store.current_revision(g);
            apply_next(&store, g, CommandBody::Compact(CompactRequest { revision: c, physical: false }));
            assert!(store.wait_compaction_finished(g, c, Duration::from_secs(30)));
            apply_next(
                &store,
                g,
                CommandBody::Put(PutRequest { key: key(1), value: "after".into(), ..Default::default() }),
            );
            (GROUPS.iter().map(|&g| answers(&store, g)).collect::<Vec<_>>(), c)
        };
        downgrade(dir.path());
        {
            let db = engine::open_db(dir.path(), &StoreConfig::default()).unwrap();
            let history = db.cf_handle(LEGACY_HISTORY_CF).unwrap();
            let events = engine::cf(&db, Cf::Events);
            let mut batch = WriteBatch::default();
            // The put at (c, 0): its record stays, its version is purged.
            let put = RevisionPair::new(c, 0);
            assert!(db.get_cf(events, kc::event_key(g, put)).unwrap().is_some());
            batch.delete_cf(&history, kc::gone_key(g, &k, put));
            // A purge cut short: records below c whose versions are gone.
            for main in 1..c.min(40) {
                let at = kc::event_key(g, RevisionPair::new(main, 0));
                if db.get_cf(events, &at).unwrap().is_none() {
                    batch.put_cf(events, at, legacy_event(main % 2 == 0, b"k7"));
                }
            }
            db.write(batch).unwrap();
            flush_all(&db).unwrap();
        }
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        for (i, &g) in GROUPS.iter().enumerate() {
            assert_eq!(answers(&store, g), before[i], "group {g}");
            store.check_invariants(g);
        }
        let to = store.current_revision(g);
        apply_next(&store, g, CommandBody::Compact(CompactRequest { revision: to, physical: false }));
        assert!(
            store.wait_compaction_finished(g, to, Duration::from_secs(30)),
            "a compaction after the conversion finishes"
        );
        store.check_invariants(g);
    }

    /// A layout 1 data dir with a snapshot install that a crash left decided but unwritten
    /// is refused before anything is converted: the install's entries are in layout 1, and
    /// only a layout 1 build can finish it. Once it is finished (here: its file gone), the
    /// data dir converts; an undecided spool does not stop the open and is dropped.
    #[test]
    fn an_unfinished_install_in_layout_1_stops_the_open_before_the_conversion() {
        let (dir, before) = filled_then_downgraded(11);
        let spool = crate::snapshot_install::spool_dir(dir.path());
        std::fs::create_dir_all(&spool).unwrap();
        let install = spool.join("group-7.install");
        std::fs::write(&install, b"chunks of layout 1").unwrap();
        std::fs::write(spool.join("group-1.spool"), b"an undecided receive").unwrap();

        let err = Store::open(dir.path(), StoreConfig::default()).err().expect("refused");
        assert!(matches!(err, Error::UnfinishedInstall { group: 7, layout: 1 }), "{err}");
        assert!(err.to_string().contains("start the Plinth build that wrote this data dir once"), "{err}");
        assert!(history_family_exists(dir.path()), "nothing converted");
        {
            let db = engine::open_db(dir.path(), &StoreConfig::default()).unwrap();
            assert_eq!(engine::check_layout(&db).unwrap(), 1);
        }
        assert!(install.exists(), "the install is left for the layout 1 build");

        std::fs::remove_file(&install).unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        for (i, &g) in GROUPS.iter().enumerate() {
            assert_eq!(answers(&store, g), before[i], "group {g}");
        }
        assert!(!spool.join("group-1.spool").exists(), "an undecided spool is dropped at open");
    }

    /// A data dir filled by [`fill`] from `seed`, then downgraded to layout 1, and every
    /// group's answers before the downgrade.
    fn filled_then_downgraded(seed: u64) -> (tempfile::TempDir, Vec<Vec<Answer>>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
            fill(&store, &mut rng);
            GROUPS.iter().map(|&g| answers(&store, g)).collect()
        };
        downgrade(dir.path());
        (dir, before)
    }

    fn history_family_exists(path: &std::path::Path) -> bool {
        DB::list_cf(&rocksdb::Options::default(), path).unwrap().iter().any(|n| n == LEGACY_HISTORY_CF)
    }

    /// A layout 1 data dir opens as layout 2 with the same answers at every revision, the
    /// same HashKV, chains that check out, and `history` gone; a conversion run again over
    /// its own partial output (a crash before layout 2 was recorded) gives the same.
    #[test]
    fn a_layout_1_data_dir_is_converted_at_open_and_answers_as_before() {
        for seed in 0..3u64 {
            let (dir, before) = filled_then_downgraded(seed);
            assert!(history_family_exists(dir.path()));
            {
                let db = engine::open_db(dir.path(), &StoreConfig::default()).unwrap();
                assert_eq!(engine::check_layout(&db).unwrap(), 1, "no version recorded and a history family");
            }
            if seed == 1 {
                // Converted once, then the recorded version lost, as if the crash came first.
                let db = engine::open_db(dir.path(), &StoreConfig::default()).unwrap();
                from_layout_1(&db).unwrap();
                db.delete(b"plinth-store-layout-version").unwrap();
                flush_all(&db).unwrap();
                assert_eq!(engine::check_layout(&db).unwrap(), 1);
            }
            let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
            for (i, &g) in GROUPS.iter().enumerate() {
                assert_eq!(answers(&store, g), before[i], "seed {seed}, group {g}");
                store.check_invariants(g);
            }
            drop(store);
            assert!(!history_family_exists(dir.path()), "history is dropped once converted");
            let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
            for (i, &g) in GROUPS.iter().enumerate() {
                assert_eq!(answers(&store, g), before[i], "seed {seed}, group {g}, reopened");
            }
        }
    }
}
