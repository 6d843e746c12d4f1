//! The RocksDB layer: opening the DB with its column families, consistent readers, and the
//! write set that one `apply` batch accumulates.
//!
//! Reads during `apply` must see the writes of earlier commands of the same batch (and of
//! earlier ops of the same txn), which are not in RocksDB yet: a [`WriteSet`] holds them per
//! column family, and a [`Reader`] with that overlay merges it over RocksDB. The write set
//! becomes one `WriteBatch` at the end of the batch. External reads use a RocksDB snapshot
//! and no overlay. The write set keeps one save point, set before each command, so a
//! command that fails after it wrote can be undone alone.
//!
//! RocksDB's own WAL is disabled: the Raft log is the durability point. `atomic_flush`
//! keeps the column families consistent with each other on disk, so what survives a crash
//! is always a prefix of the apply batches, with the matching applied index.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, DBRawIteratorWithThreadMode, Options,
    ReadOptions, SnapshotWithThreadMode, WriteBatch, WriteOptions, DB,
};

use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::key_codec::{self as kc, Cf};
use crate::live_cache::LiveCache;
use crate::revision::GroupId;

/// A RocksDB snapshot of the node's DB.
pub(crate) type Snapshot<'a> = SnapshotWithThreadMode<'a, DB>;

/// Test-only counts of the cursor moves made on this thread (seeks, and steps to the next
/// entry), so tests can bound what a read costs.
#[cfg(test)]
pub(crate) mod cursor_moves {
    use std::cell::Cell;

    thread_local! {
        static SEEKS: Cell<u64> = const { Cell::new(0) };
        static STEPS: Cell<u64> = const { Cell::new(0) };
    }

    pub(crate) fn seek() {
        SEEKS.with(|c| c.set(c.get() + 1));
    }

    pub(crate) fn step() {
        STEPS.with(|c| c.set(c.get() + 1));
    }

    /// `(seeks, steps)` on this thread since the last call, and resets them.
    pub(crate) fn take() -> (u64, u64) {
        (SEEKS.with(|c| c.replace(0)), STEPS.with(|c| c.replace(0)))
    }

    /// Runs `f` without counting its moves (for debug cross-checks inside a measured read).
    pub(crate) fn uncounted<T>(f: impl FnOnce() -> T) -> T {
        let (seeks, steps) = take();
        let out = f();
        SEEKS.with(|c| c.set(seeks));
        STEPS.with(|c| c.set(steps));
        out
    }
}

/// Compression of every table file but the bottommost level's (`open_db`).
const COMPRESSION: DBCompressionType = DBCompressionType::Lz4;

/// Share of a `kv` memtable's budget given to its whole-key bloom filter (`open_db`).
const MEMTABLE_BLOOM_RATIO: f64 = 0.02;

/// Size of an SST file's data blocks.
const DATA_BLOCK_BYTES: usize = 16 << 10;

/// The table format of every SST file, written by RocksDB or by an install, with a bloom
/// filter or without one ([`bloom_filtered`]).
fn table_format_with(bloom: bool) -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    if bloom {
        table.set_bloom_filter(10.0, false);
    }
    table.set_format_version(5);
    // 16 KiB data blocks rather than RocksDB's 4 KiB: a list or a page walks a quarter of
    // the block-cache lookups and block switches per byte (BENCHMARKS.md, "Live-entry cache,
    // 16 KiB blocks, and Range answers from stored bytes"). Each file records its own block size, so files written before
    // stay readable.
    table.set_block_size(DATA_BLOCK_BYTES);
    table
}

/// Whether a column family's files carry a whole-key bloom filter. Only `kv` (a key's live
/// version, read by key on every get and every write that misses the live cache) and `meta`
/// (small records read by key, often absent) are read by key with a chance of "not here".
/// `gone` and `lease` are read by seeks (a deleted key's entry, a lease's keys), which a
/// whole-key filter cannot answer, and `events` by revision ranges or by the exact revision a
/// link names, which finds its record unless the purge removed a delete. Building a
/// filter for them cost every flush and compaction a hash per key, and the cache ten bits
/// per key (BENCHMARKS.md, "Bloom filters only where a key is looked up").
fn bloom_filtered(cf: Cf) -> bool {
    matches!(cf, Cf::Kv | Cf::Meta)
}

/// Options of the table files a snapshot install writes into column family `cf` for
/// ingestion: the same format, filter and compression as the files RocksDB writes itself
/// below level 0 (`open_db`), without a cache (the writer reads nothing back).
pub(crate) fn table_file_options(cf: Cf) -> Options {
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table_format_with(bloom_filtered(cf)));
    opts.set_compression_type(COMPRESSION);
    opts
}

/// Opens (or creates) the node's DB with every column family.
pub(crate) fn open_db(path: &Path, cfg: &StoreConfig) -> Result<DB> {
    let cache = Cache::new_lru_cache(cfg.block_cache_bytes);
    let table = |bloom: bool| {
        let mut table = table_format_with(bloom);
        table.set_block_cache(&cache);
        // Index and filter blocks live in the bounded cache too, so memory does not grow with
        // the number of SST files (and so with the number of keys).
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        table
    };

    let mut cf_opts = Options::default();
    // Level-0 files are compressed too: written uncompressed they saved 2-3 % of a write's
    // instructions but, until compacted, held the data dir at twice its size (BENCHMARKS.md,
    // "Bloom filters only where a key is looked up").
    cf_opts.set_compression_type(COMPRESSION);
    cf_opts.set_bottommost_compression_type(DBCompressionType::Zstd);
    cf_opts.set_level_compaction_dynamic_level_bytes(true);
    cf_opts.set_write_buffer_size((cfg.memtable_bytes / 4).max(1 << 20));
    cf_opts.set_max_write_buffer_number(3);

    let mut db_opts = cf_opts.clone();
    // RocksDB's `default` family holds nothing, but its table options still name the cache.
    db_opts.set_block_based_table_factory(&table(false));
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    // Without RocksDB's WAL, only atomic flushes keep the CFs consistent after a crash.
    db_opts.set_atomic_flush(true);
    db_opts.set_db_write_buffer_size(cfg.memtable_bytes);
    db_opts.set_max_background_jobs(2);
    if !cfg.flush_at_close {
        // rust-rocksdb has no setter for this DB option: RocksDB's option string sets it.
        db_opts = db_opts.get_options_from_string("avoid_flush_during_shutdown=true")?;
    }

    // The `kv` family is read by key on every write (a key's live version, when the apply
    // path's cache misses it) and by every get. A whole-key bloom filter over each memtable
    // answers "not here" for a key without the skiplist search: a key being created is in no
    // memtable, and one flushed earlier is in none of the newer ones. 2 % of the memtable's
    // budget.
    let cfs = Cf::ALL.iter().map(|&cf| {
        let mut opts = cf_opts.clone();
        opts.set_block_based_table_factory(&table(bloom_filtered(cf)));
        if cf == Cf::Kv {
            opts.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
            opts.set_memtable_whole_key_filtering(true);
        }
        ColumnFamilyDescriptor::new(cf.name(), opts)
    });
    // A data dir of layout 1 has its `history` family, which RocksDB opens only if named:
    // `migrate.rs` converts it and drops it. A new data dir has no families to list yet.
    let existing = DB::list_cf(&db_opts, path).unwrap_or_default();
    let legacy = existing
        .iter()
        .filter(|name| name.as_str() == LEGACY_HISTORY_CF)
        .map(|name| ColumnFamilyDescriptor::new(name, cf_opts.clone()));
    Ok(DB::open_cf_descriptors(&db_opts, path, cfs.chain(legacy).collect::<Vec<_>>())?)
}

/// The family layout 1 kept every version in (see `key_codec.rs`).
pub(crate) const LEGACY_HISTORY_CF: &str = "history";

/// The version of the column families' layout (`key_codec.rs`) this build reads and writes.
/// Every data dir records the version that wrote it ([`check_layout`]), so a build never reads
/// a layout it does not know as if it were its own: a data dir written by a later build, whose
/// layout is newer, is refused at open; an older one is converted (`migrate.rs`). Version 1
/// kept every version of a key in a `history` family; version 2 keeps them in `events`,
/// linked from each key's head in `kv` or `gone`.
pub(crate) const LAYOUT_VERSION: u32 = 2;

/// Key of the layout version in RocksDB's `default` family, which holds nothing else.
const LAYOUT_VERSION_KEY: &[u8] = b"plinth-store-layout-version";

/// The layout version `db` records, checked against [`LAYOUT_VERSION`]. A data dir that
/// records none is either new, and gets this build's version, or was written before versions
/// were recorded: layout 1, known by its `history` family. Written without RocksDB's WAL, as
/// every write: if a crash loses it before a flush, the next open finds the same answer.
pub(crate) fn check_layout(db: &DB) -> Result<u32> {
    match db.get(LAYOUT_VERSION_KEY)? {
        Some(v) => {
            let found = <[u8; 4]>::try_from(&v[..])
                .map(u32::from_be_bytes)
                .map_err(|_| Error::Corruption(format!("store layout version of {} bytes", v.len())))?;
            if found > LAYOUT_VERSION {
                return Err(Error::UnsupportedLayout { found, supported: LAYOUT_VERSION });
            }
            if found == 0 {
                return Err(Error::Corruption("store layout version 0".into()));
            }
            Ok(found)
        }
        None if db.cf_handle(LEGACY_HISTORY_CF).is_some() => Ok(1),
        None => {
            record_layout(db, LAYOUT_VERSION)?;
            Ok(LAYOUT_VERSION)
        }
    }
}

/// Records `version` as the data dir's layout version.
pub(crate) fn record_layout(db: &DB, version: u32) -> Result<()> {
    Ok(db.put_opt(LAYOUT_VERSION_KEY, version.to_be_bytes(), &write_options())?)
}

/// Readahead of the scan of [`verify_checksums`].
const VERIFY_READAHEAD_BYTES: usize = 2 << 20;

/// Reads every key of every column family with block checksums verified (data blocks;
/// index, filter and footer blocks are checked when RocksDB opens a file), bypassing the
/// block cache. Without RocksDB's WAL the memtables are empty at open, so this reads
/// exactly the SST files. Damage is `Corruption` with RocksDB's message, which names the
/// file, the offset and the block.
pub(crate) fn verify_checksums(db: &DB) -> Result<()> {
    for kind in Cf::ALL {
        let mut ro = ReadOptions::default();
        ro.set_verify_checksums(true);
        ro.fill_cache(false);
        ro.set_readahead_size(VERIFY_READAHEAD_BYTES);
        let mut it = db.raw_iterator_cf_opt(cf(db, kind), ro);
        it.seek_to_first();
        while it.valid() {
            it.next();
        }
        it.status().map_err(|e| Error::Corruption(format!("column family {}: {e}", kind.name())))?;
    }
    Ok(())
}

pub(crate) fn cf(db: &DB, cf: Cf) -> &rocksdb::ColumnFamily {
    db.cf_handle(cf.name()).expect("every column family is created at open")
}

/// Write options of every write: no RocksDB WAL (the Raft log is the WAL).
pub(crate) fn write_options() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.disable_wal(true);
    wo
}

/// Writes accumulated by one apply batch, per column family: `Some(value)` = put,
/// `None` = delete. Later writes to a key replace earlier ones.
///
/// One save point at a time (RocksDB `WriteBatch` save points, for the overlay): apply sets
/// one before each command and rolls back to it when the command fails after it wrote.
/// After [`WriteSet::set_save_point`], every write records the entry it replaced in an undo
/// log; that log holds at most one record per write of the current command, is emptied at
/// the next save point, and so is bounded by what one command writes (which the batch holds
/// anyway).
#[derive(Default)]
pub(crate) struct WriteSet {
    maps: [BTreeMap<Vec<u8>, Option<Vec<u8>>>; 5],
    /// Writes since the save point, oldest first. `None` before any save point (read-only
    /// evaluation never sets one).
    undo: Option<Vec<Undo>>,
    /// A group whose data column families (kv, gone, events, lease) this batch wipes
    /// before its other writes (an import's begin), and the value it had at the save point.
    wipe: Option<GroupId>,
    wipe_at_save_point: Option<GroupId>,
}

/// One write since the save point: column family index, key, and the entry the write
/// replaced (`None`: the key had none in this set).
type Undo = (usize, Vec<u8>, Option<Option<Vec<u8>>>);

impl WriteSet {
    pub fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.write(cf.index(), key, Some(value));
    }

    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.write(cf.index(), key, None);
    }

    fn write(&mut self, cf: usize, key: Vec<u8>, entry: Option<Vec<u8>>) {
        match &mut self.undo {
            Some(undo) => {
                let replaced = self.maps[cf].insert(key.clone(), entry);
                undo.push((cf, key, replaced));
            }
            None => {
                self.maps[cf].insert(key, entry);
            }
        }
    }

    /// Marks the current state as the one [`WriteSet::rollback_to_save_point`] returns to,
    /// replacing the previous save point.
    pub fn set_save_point(&mut self) {
        self.wipe_at_save_point = self.wipe;
        match &mut self.undo {
            Some(undo) => undo.clear(),
            None => self.undo = Some(Vec::new()),
        }
    }

    /// Undoes every write since the save point, newest first, so each key gets back the
    /// entry it had then. The save point stays set (at the same state).
    pub fn rollback_to_save_point(&mut self) {
        let undo = self.undo.as_mut().expect("rollback_to_save_point called without a save point");
        self.wipe = self.wipe_at_save_point;
        while let Some((cf, key, replaced)) = undo.pop() {
            match replaced {
                Some(entry) => self.maps[cf].insert(key, entry),
                None => self.maps[cf].remove(&key),
            };
        }
    }

    /// Wipes group `g`'s data column families (kv, gone, events, lease): the writes of
    /// this set to them so far are dropped, and the batch deletes the group's ranges before
    /// any other write. Nothing may read through this set afterwards (an overlay cannot
    /// hide the wiped RocksDB entries): the apply loop writes the batch right after the
    /// command that wiped.
    pub fn wipe_group(&mut self, g: GroupId) {
        let (from, to) = (kc::group_prefix(g).to_vec(), kc::group_end(g));
        for c in Cf::DATA {
            let map = &mut self.maps[c.index()];
            let doomed: Vec<Vec<u8>> = map.range(from.clone()..to.clone()).map(|(k, _)| k.clone()).collect();
            for key in doomed {
                let entry = map.remove(&key);
                if let Some(undo) = &mut self.undo {
                    undo.push((c.index(), key, entry));
                }
            }
        }
        self.wipe = Some(g);
    }

    /// Whether this set wipes a group (see [`WriteSet::wipe_group`]).
    pub fn wipes(&self) -> bool {
        self.wipe.is_some()
    }

    /// An upper estimate of the size of this set's `WriteBatch`: RocksDB's 12-byte header,
    /// and per entry its key and value with their tag, family id and two lengths.
    fn batch_bytes(&self) -> usize {
        const ENTRY_OVERHEAD: usize = 1 + 5 + 5 + 5;
        let entries: usize =
            self.maps.iter().flatten().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD).sum();
        12 + entries + if self.wipe.is_some() { 256 } else { 0 }
    }

    /// Brings `live` up to date with this set's `kv` writes, as if it were written: the
    /// wiped group's entries are forgotten first, then each written key takes its new value
    /// or is forgotten.
    pub fn write_through(&self, live: &LiveCache) {
        if let Some(g) = self.wipe {
            live.remove_prefix(&kc::group_prefix(g));
        }
        for (k, v) in &self.maps[Cf::Kv.index()] {
            match v {
                Some(v) => live.insert(k, v),
                None => live.remove(k),
            }
        }
    }

    pub fn into_batch(self, db: &DB) -> WriteBatch {
        // Sized once: grown by doubling, RocksDB's buffer copied itself about once per
        // byte written (a batch's puts hold their values).
        let mut batch = WriteBatch::with_capacity_bytes(self.batch_bytes());
        // Ordering: the wipe first, so the writes after it in this batch survive it.
        if let Some(g) = self.wipe {
            for c in Cf::DATA {
                batch.delete_range_cf(cf(db, c), kc::group_prefix(g).to_vec(), kc::group_end(g));
            }
            // The purge's finished revision and target go with the data they described: the
            // next purge walks the new data from its start (`Store::commit`).
            batch.delete_cf(cf(db, Cf::Meta), kc::meta_compact_key(g));
            batch.delete_cf(cf(db, Cf::Meta), kc::meta_purge_key(g));
        }
        // The undo log is dropped: what is in the maps is what the batch commits.
        for (i, map) in self.maps.into_iter().enumerate() {
            let handle = cf(db, Cf::ALL[i]);
            for (k, v) in map {
                match v {
                    Some(v) => batch.put_cf(handle, k, v),
                    None => batch.delete_cf(handle, k),
                }
            }
        }
        batch
    }
}

/// Read-ahead of a bulk scan's iterators.
const BULK_READAHEAD_BYTES: usize = 2 << 20;

/// Reads one consistent view: RocksDB (at a snapshot, or latest), optionally overlaid with
/// the pending writes of the current apply batch.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    db: &'a DB,
    snapshot: Option<&'a Snapshot<'a>>,
    overlay: Option<&'a WriteSet>,
    /// The apply path's cache of live `kv` entries (`live_cache.rs`): consulted after the
    /// overlay. Only with the latest DB state and an overlay.
    live: Option<&'a LiveCache>,
    /// A bulk scan (a backup export): its blocks bypass the block cache, so it does not
    /// evict what the request path reads, and it reads ahead.
    bulk: bool,
}

impl<'a> Reader<'a> {
    /// Reads at a RocksDB snapshot (external reads).
    pub fn at_snapshot(db: &'a DB, snapshot: &'a Snapshot<'a>) -> Reader<'a> {
        Reader { db, snapshot: Some(snapshot), overlay: None, live: None, bulk: false }
    }

    /// Reads at a RocksDB snapshot for a bulk scan (see `bulk`).
    pub fn bulk_at_snapshot(db: &'a DB, snapshot: &'a Snapshot<'a>) -> Reader<'a> {
        Reader { db, snapshot: Some(snapshot), overlay: None, live: None, bulk: true }
    }

    /// Reads the latest DB state plus pending writes (the apply path, which is the only
    /// writer of kv/lease/meta for its group).
    pub fn with_overlay(db: &'a DB, overlay: &'a WriteSet) -> Reader<'a> {
        assert!(overlay.wipe.is_none(), "a read through a batch that wipes a group (it must be written first)");
        Reader { db, snapshot: None, overlay: Some(overlay), live: None, bulk: false }
    }

    /// This apply-path reader ([`Reader::with_overlay`]) with the group's live-entry cache.
    pub fn with_live_cache(self, live: &'a LiveCache) -> Reader<'a> {
        assert!(self.snapshot.is_none() && self.overlay.is_some(), "the live cache serves only the apply path");
        Reader { live: Some(live), ..self }
    }

    /// Reads at a RocksDB snapshot plus pending writes (a read-only txn evaluated outside
    /// the apply path, whose overlay stays empty).
    pub fn at_snapshot_with_overlay(db: &'a DB, snapshot: &'a Snapshot<'a>, overlay: &'a WriteSet) -> Reader<'a> {
        Reader { db, snapshot: Some(snapshot), overlay: Some(overlay), live: None, bulk: false }
    }

    /// Reads the latest DB state (background jobs whose data nobody else writes).
    pub fn latest(db: &'a DB) -> Reader<'a> {
        Reader { db, snapshot: None, overlay: None, live: None, bulk: false }
    }

    fn read_options(&self) -> ReadOptions {
        let mut ro = ReadOptions::default();
        if let Some(s) = self.snapshot {
            ro.set_snapshot(s);
        }
        if self.bulk {
            ro.fill_cache(false);
            ro.set_readahead_size(BULK_READAHEAD_BYTES);
        }
        ro
    }

    pub fn get(&self, cf_id: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(ov) = self.overlay {
            if let Some(v) = ov.maps[cf_id.index()].get(key) {
                return Ok(v.clone());
            }
        }
        if let (Some(live), Cf::Kv) = (self.live, cf_id) {
            // Consistency: the cache holds the committed latest state of the apply path's
            // group (`live_cache.rs`), which is what the DB read below would return.
            if let Some(v) = live.get(key) {
                debug_assert_eq!(
                    Some(&v),
                    self.db.get_cf_opt(cf(self.db, cf_id), key, &self.read_options())?.as_ref(),
                    "live cache disagrees with RocksDB"
                );
                return Ok(Some(v));
            }
            // A miss is not filled: the key is read because the batch is about to write it
            // (a put), and the commit writes the new version through.
        }
        Ok(self.db.get_cf_opt(cf(self.db, cf_id), key, &self.read_options())?)
    }

    /// A cursor over `[lower, upper)` of one column family. Call `seek` before `next`.
    pub fn cursor(&self, cf_id: Cf, upper: &[u8]) -> Cursor<'a, 'a> {
        let mut ro = self.read_options();
        ro.set_iterate_upper_bound(upper.to_vec());
        let it = self.db.raw_iterator_cf_opt(cf(self.db, cf_id), ro);
        self.cursor_on(Under::Own(it), cf_id, upper)
    }

    /// A cursor like [`Reader::cursor`] that seeks `probe`'s iterator instead of creating
    /// one. Only for a reader of the latest DB state, which the probe reads too (it was
    /// created after the last write of its batch's group: the apply path is that group's
    /// only writer). Its RocksDB side may end in an incomplete status ([`is_incomplete`]):
    /// the caller then reads through [`Reader::cursor`].
    pub fn probe_cursor<'o, 'db>(&self, probe: &'o mut Probe<'db>, upper: &[u8]) -> Cursor<'o, 'db>
    where
        'a: 'o,
    {
        assert!(self.snapshot.is_none(), "a probe reads the latest DB state");
        self.cursor_on(Under::Lent(&mut probe.it), probe.cf, upper)
    }

    fn cursor_on<'o, 'db>(&self, it: Under<'o, 'db>, cf_id: Cf, upper: &[u8]) -> Cursor<'o, 'db>
    where
        'a: 'o,
    {
        let overlay = self.overlay.map(|o| &o.maps[cf_id.index()]).filter(|m| !m.is_empty());
        Cursor { it, overlay, upper: upper.to_vec(), pending: None, head: Head::Unsettled }
    }
}

/// Internal entries (deletions, mostly) a [`Probe`]'s seek may pass before RocksDB gives up
/// with an incomplete status. A probe is bounded by its group, not by the key it looks
/// for, so a seek for a key with no entry walks on to the next live entry: past every
/// deletion in between. Past this many, the caller reads with a cursor bounded by its key.
const PROBE_MAX_SKIPPED: u64 = 64;

/// One RocksDB iterator over a group's part of a column family, kept by an apply batch for
/// many short lookups ([`Reader::probe_cursor`]). Creating an iterator (a reference to the
/// DB's current memtables and files, and an iterator over each) cost about as many
/// instructions as the rest of a create's lookup of its `gone` entry; a batch of
/// creates now pays it once (BENCHMARKS.md, "One `gone` iterator per apply batch").
pub(crate) struct Probe<'db> {
    it: DBRawIteratorWithThreadMode<'db, DB>,
    cf: Cf,
}

impl<'db> Probe<'db> {
    /// An iterator over group `g`'s entries of `cf_id`, at the latest DB state.
    pub fn new(db: &'db DB, cf_id: Cf, g: GroupId) -> Probe<'db> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(kc::group_end(g));
        ro.set_max_skippable_internal_keys(PROBE_MAX_SKIPPED);
        Probe { it: db.raw_iterator_cf_opt(cf(db, cf_id), ro), cf: cf_id }
    }
}

/// Whether `err` is a [`Probe`]'s seek giving up (see [`PROBE_MAX_SKIPPED`]).
pub(crate) fn is_incomplete(err: &Error) -> bool {
    matches!(err, Error::RocksDb(e) if e.kind() == rocksdb::ErrorKind::Incomplete)
}

/// The RocksDB iterator under a [`Cursor`]: its own, bounded by the cursor's `upper`, or a
/// [`Probe`]'s, bounded by its group only, whose keys the cursor compares with `upper` itself.
enum Under<'o, 'db> {
    Own(DBRawIteratorWithThreadMode<'db, DB>),
    Lent(&'o mut DBRawIteratorWithThreadMode<'db, DB>),
}

impl<'db> Under<'_, 'db> {
    /// Whether RocksDB may return keys at or past the cursor's `upper`.
    fn past_upper(&self) -> bool {
        matches!(self, Under::Lent(_))
    }

    fn it(&self) -> &DBRawIteratorWithThreadMode<'db, DB> {
        match self {
            Under::Own(it) => it,
            Under::Lent(it) => it,
        }
    }

    fn it_mut(&mut self) -> &mut DBRawIteratorWithThreadMode<'db, DB> {
        match self {
            Under::Own(it) => it,
            Under::Lent(it) => it,
        }
    }
}

/// A forward cursor merging RocksDB with an overlay (overlay wins on equal keys; overlay
/// deletions hide RocksDB entries).
///
/// [`Cursor::current`] lends the entry at the position without copying it (a scan that
/// only counts keys, or only needs a value's header, never copies a value);
/// [`Cursor::advance`] moves past it. [`Cursor::next_entry`] does both and copies.
///
/// `'o` is the lifetime of the overlay (and of a lent iterator), `'db` the DB's.
pub(crate) struct Cursor<'o, 'db> {
    it: Under<'o, 'db>,
    overlay: Option<&'o BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    upper: Vec<u8>,
    /// The next overlay entry at or after the cursor position.
    pending: Option<(&'o Vec<u8>, &'o Option<Vec<u8>>)>,
    /// Which side holds the entry at the position, once [`Cursor::settle`] found it.
    head: Head,
}

/// Where the cursor's current entry is.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Head {
    /// Not looked for since the last move.
    Unsettled,
    /// The RocksDB iterator's entry (no overlay entry shadows it).
    Db,
    /// `pending`, a put in the overlay.
    Overlay,
    /// Past the last entry.
    End,
}

impl<'o> Cursor<'o, '_> {
    pub fn seek(&mut self, target: &[u8]) {
        #[cfg(test)]
        cursor_moves::seek();
        self.it.it_mut().seek(target);
        self.pending = self.overlay_from(Bound::Included(target));
        self.head = Head::Unsettled;
    }

    fn overlay_from(&self, from: Bound<&[u8]>) -> Option<(&'o Vec<u8>, &'o Option<Vec<u8>>)> {
        let map = self.overlay?;
        let start = match from {
            Bound::Included(k) | Bound::Excluded(k) => k,
            Bound::Unbounded => unreachable!("overlay_from is always bounded"),
        };
        if start >= &self.upper[..] {
            return None;
        }
        map.range::<[u8], _>((from, Bound::Excluded(&self.upper[..]))).next()
    }

    /// Finds the side holding the entry at the position, skipping RocksDB entries that an
    /// overlay entry shadows and overlay deletions.
    fn settle(&mut self) -> Result<Head> {
        while self.head == Head::Unsettled {
            // Which side comes first: Less = RocksDB, Greater = overlay, Equal = overlay
            // shadowing RocksDB.
            let it = self.it.it();
            let order = {
                let db_key = if it.valid() { it.key() } else { None };
                let db_key = db_key.filter(|k| !self.it.past_upper() || *k < &self.upper[..]);
                match (db_key, self.pending) {
                    (None, None) => None,
                    (Some(_), None) => Some(std::cmp::Ordering::Less),
                    (None, Some(_)) => Some(std::cmp::Ordering::Greater),
                    (Some(dk), Some((ok, _))) => Some(dk.cmp(&ok[..])),
                }
            };
            if !it.valid() {
                it.status()?;
            }
            match order {
                None => self.head = Head::End,
                Some(std::cmp::Ordering::Less) => self.head = Head::Db,
                Some(order) => {
                    if order == std::cmp::Ordering::Equal {
                        self.it.it_mut().next();
                    }
                    let (k, v) = self.pending.expect("overlay side chosen");
                    if v.is_some() {
                        self.head = Head::Overlay;
                    } else {
                        self.pending = self.overlay_from(Bound::Excluded(&k[..]));
                    }
                }
            }
        }
        Ok(self.head)
    }

    /// The entry at the position (key, value), or `None` at the end. Does not move.
    pub fn current(&mut self) -> Result<Option<(&[u8], &[u8])>> {
        Ok(match self.settle()? {
            Head::Db => Some(self.it.it().item().expect("iterator is valid")),
            Head::Overlay => {
                let (k, v) = self.pending.expect("overlay head is pending");
                Some((&k[..], v.as_deref().expect("overlay head is a put")))
            }
            Head::End => None,
            Head::Unsettled => unreachable!("settle leaves the head settled"),
        })
    }

    /// Moves past the entry at the position (no-op at the end).
    pub fn advance(&mut self) -> Result<()> {
        #[cfg(test)]
        cursor_moves::step();
        match self.settle()? {
            Head::Db => self.it.it_mut().next(),
            Head::Overlay => {
                let (k, _) = self.pending.expect("overlay head is pending");
                self.pending = self.overlay_from(Bound::Excluded(&k[..]));
            }
            Head::End => return Ok(()),
            Head::Unsettled => unreachable!("settle leaves the head settled"),
        }
        self.head = Head::Unsettled;
        Ok(())
    }

    /// The next entry at or after the position, copied, or `None` at the end.
    pub fn next_entry(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let out = self.current()?.map(|(k, v)| (k.to_vec(), v.to_vec()));
        self.advance()?;
        Ok(out)
    }
}

/// Decodes an 8-byte big-endian value, or reports corruption naming `what`.
pub(crate) fn be_u64(bytes: &[u8], what: &str) -> Result<u64> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| Error::Corruption(format!("{what}: expected 8 bytes, found {}", bytes.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_merges_overlay_over_db() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path(), &StoreConfig::default()).unwrap();
        let h = cf(&db, Cf::Kv);
        for k in [b"a", b"c", b"e"] {
            db.put_cf(h, k, b"db").unwrap();
        }
        let mut ws = WriteSet::default();
        ws.put(Cf::Kv, b"b".to_vec(), b"ov".to_vec());
        ws.delete(Cf::Kv, b"c".to_vec());
        ws.put(Cf::Kv, b"e".to_vec(), b"ov".to_vec());
        ws.put(Cf::Kv, b"z".to_vec(), b"out of range".to_vec());
        let r = Reader::with_overlay(&db, &ws);
        let mut c = r.cursor(Cf::Kv, b"f");
        c.seek(b"a");
        let mut seen = vec![];
        while let Some((k, v)) = c.next_entry().unwrap() {
            seen.push((String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()));
        }
        let want: Vec<(String, String)> =
            [("a", "db"), ("b", "ov"), ("e", "ov")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(seen, want);
        assert_eq!(r.get(Cf::Kv, b"c").unwrap(), None);
        assert_eq!(r.get(Cf::Kv, b"a").unwrap(), Some(b"db".to_vec()));
    }

    #[test]
    fn verify_checksums_names_a_damaged_sst_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_db(dir.path(), &StoreConfig::default()).unwrap();
            let h = cf(&db, Cf::Gone);
            // Values that do not compress away, so the file has many data blocks.
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for i in 0..2000u32 {
                let value: Vec<u8> = (0..100)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                db.put_cf_opt(h, i.to_be_bytes(), value, &write_options()).unwrap();
            }
            db.flush_cf(h).unwrap();
            verify_checksums(&db).unwrap();
        }
        let sst = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "sst"))
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .expect("an SST file");
        let mut bytes = std::fs::read(&sst).unwrap();
        let middle = bytes.len() / 2;
        for b in &mut bytes[middle..middle + 16] {
            *b = !*b;
        }
        std::fs::write(&sst, bytes).unwrap();
        // Opening checks only the file's index and footer; the scan finds the damaged block.
        let db = open_db(dir.path(), &StoreConfig::default()).unwrap();
        let e = verify_checksums(&db).unwrap_err().to_string();
        let name = sst.file_name().unwrap().to_string_lossy().into_owned();
        assert!(e.contains("Corruption") && e.contains(&name), "{e}");
    }

    #[test]
    fn rollback_to_save_point_restores_every_entry() {
        let mut ws = WriteSet::default();
        ws.put(Cf::Kv, b"kept".to_vec(), b"1".to_vec());
        ws.delete(Cf::Kv, b"gone".to_vec());
        ws.set_save_point();
        ws.put(Cf::Kv, b"kept".to_vec(), b"2".to_vec());
        ws.put(Cf::Kv, b"kept".to_vec(), b"3".to_vec());
        ws.put(Cf::Kv, b"gone".to_vec(), b"back".to_vec());
        ws.put(Cf::Gone, b"new".to_vec(), b"x".to_vec());
        ws.delete(Cf::Events, b"new-del".to_vec());
        ws.rollback_to_save_point();
        let entries =
            |ws: &WriteSet| ws.maps.iter().map(|m| m.clone().into_iter().collect::<Vec<_>>()).collect::<Vec<_>>();
        let mut want = WriteSet::default();
        want.put(Cf::Kv, b"kept".to_vec(), b"1".to_vec());
        want.delete(Cf::Kv, b"gone".to_vec());
        assert_eq!(entries(&ws), entries(&want));
        // A new save point starts from the current state; rolling back again undoes only
        // what came after it.
        ws.set_save_point();
        ws.put(Cf::Kv, b"later".to_vec(), b"y".to_vec());
        ws.rollback_to_save_point();
        assert_eq!(entries(&ws), entries(&want));
    }
}
