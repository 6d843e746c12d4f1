//! [`Store`]: the node's state machine handle (one RocksDB, many groups).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use prost::Message;
use rocksdb::{FlushOptions, DB};

use crate::auth::{AuthResponse, AuthState, TokenTable};
use crate::command::{self, Command, CommandBody, RangeRequest, TxnRequest};
use crate::compact;
use crate::config::StoreConfig;
use crate::engine::{self, Reader};
use crate::error::{Error, Result};
use crate::key_codec::{self as kc, Cf};
use crate::key_counts::KeyCounts;
use crate::kv::{EventKind, StoredEvent};
use crate::lease::{self, Lease};
use crate::live_cache::LiveCache;
use crate::meta::{Alarm, ApplyMeta};
use crate::mvcc::BatchWriter;
use crate::quota;
use crate::range;
use crate::response::{CommandResponse, RangeResponse, TxnResponse, WireRangeResponse};
use crate::revision::{GroupId, Revision, RevisionPair};
use crate::signal::Signal;
use crate::snapshot::SnapshotReader;
use crate::snapshot_install::{self, SnapshotSpool};
use crate::txn;
use crate::watch::{Hub, WatchStream};

/// How long the compactor sleeps when nobody wakes it (it re-checks every group).
const COMPACTOR_IDLE_WAIT: Duration = Duration::from_secs(1);
/// How soon the watch sync thread retries while some watcher is still behind.
const WATCH_SYNC_RETRY: Duration = Duration::from_millis(10);

/// The state machine of every group on this node. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
    _lifetime: Arc<Lifetime>,
}

pub(crate) struct Inner {
    pub db: DB,
    pub cfg: StoreConfig,
    groups: RwLock<BTreeMap<GroupId, Arc<GroupState>>>,
    compactor_signal: Arc<Signal>,
    sync_signal: Arc<Signal>,
    shutdown: AtomicBool,
    /// Where snapshots being received are spooled (`snapshot_install.rs`).
    spool_dir: std::path::PathBuf,
    /// Live `kv` entries for the apply path (`live_cache.rs`).
    live: LiveCache,
}

pub(crate) struct GroupState {
    id: GroupId,
    /// Serializes `apply` and `install_snapshot` of the group.
    apply_lock: Mutex<()>,
    /// The metadata of the last batch written to RocksDB. Writers hold the write lock
    /// across the RocksDB write, readers hold the read lock while taking their snapshot, so
    /// a reader's revision always matches its snapshot.
    pub committed: RwLock<ApplyMeta>,
    /// Finished compact revision (-1 = none); waiters use `compact_cond`.
    pub(crate) compact_finished: Mutex<Revision>,
    compact_cond: Condvar,
    /// Held by a running purge, by `install_snapshot`, and by the commit of a batch that
    /// wipes the group (an import's begin).
    pub(crate) purge_lock: Mutex<()>,
    /// Set while a wipe waits for `purge_lock`: the running purge stops at its next batch.
    wipe_pending: AtomicBool,
    pub hub: Arc<Hub>,
    /// The simple tokens this member applied (not replicated state; see `auth`).
    tokens: Mutex<TokenTable>,
    /// Bumped, under `committed`'s write lock, whenever the group's data is replaced rather
    /// than written at new revisions (an import's begin, a snapshot install): the keys live
    /// at a revision are only known to stay the same within one epoch (see `PageCounts`).
    data_epoch: AtomicU64,
    /// Counts of the ranges that continue recent pages, for the next page's `count`.
    pages: range::PageCounts,
    /// The group's live keys counted by segments (`key_counts.rs`). Lock order: inside
    /// `committed` when both are held; apply changes it with the batch under `committed`'s
    /// write lock, readers plan a count under its read lock with their snapshot.
    counts: RwLock<KeyCounts>,
}

/// Stops and joins the background threads when the last `Store` handle goes.
struct Lifetime {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Lifetime {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.inner.compactor_signal.notify();
        self.inner.sync_signal.notify();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        for gs in self.inner.groups.read().values() {
            gs.hub.close_all();
        }
    }
}

impl Inner {
    fn new_group_state(&self, g: GroupId, meta: ApplyMeta, finished: Revision, counts: KeyCounts) -> GroupState {
        let hub = Hub::new(
            g,
            meta.current_revision,
            meta.compact_revision,
            self.cfg.watch_stream_buffer,
            self.sync_signal.clone(),
        );
        GroupState {
            id: g,
            apply_lock: Mutex::new(()),
            committed: RwLock::new(meta),
            compact_finished: Mutex::new(finished),
            compact_cond: Condvar::new(),
            purge_lock: Mutex::new(()),
            wipe_pending: AtomicBool::new(false),
            hub: Arc::new(hub),
            tokens: Mutex::new(TokenTable::default()),
            data_epoch: AtomicU64::new(0),
            pages: range::PageCounts::default(),
            counts: RwLock::new(counts),
        }
    }

    /// Counts of group `g`'s live keys as RocksDB holds them now, or `Unknown` when they
    /// are off or an import is in progress (it writes keys without events).
    fn build_counts(&self, g: GroupId, meta: &ApplyMeta) -> Result<KeyCounts> {
        if !self.cfg.key_counts || meta.import.is_some() {
            return Ok(KeyCounts::Unknown);
        }
        KeyCounts::build(&Reader::latest(&self.db), g)
    }

    /// [`Inner::build_counts`] for a state already committed: a failed walk leaves the
    /// counts unknown (every count then walks its range) rather than failing what was
    /// written.
    fn rebuild_counts(&self, g: GroupId, meta: &ApplyMeta) -> KeyCounts {
        self.build_counts(g, meta).unwrap_or_else(|e| {
            tracing::warn!(group = g.0, error = %e, "key counts not rebuilt; counts walk their ranges");
            KeyCounts::Unknown
        })
    }

    pub fn group(&self, g: GroupId) -> Arc<GroupState> {
        if let Some(gs) = self.groups.read().get(&g) {
            return gs.clone();
        }
        let mut groups = self.groups.write();
        // A group not loaded at open holds no keys yet.
        let counts = if self.cfg.key_counts { KeyCounts::Known(Default::default()) } else { KeyCounts::Unknown };
        groups.entry(g).or_insert_with(|| Arc::new(self.new_group_state(g, ApplyMeta::default(), -1, counts))).clone()
    }

    /// A RocksDB snapshot of the store and group `g`'s metadata at the same point: the
    /// snapshot is taken under the read lock of the committed metadata, which apply holds
    /// for writing while it writes a batch, so the snapshot holds exactly `meta`'s revision.
    pub(crate) fn pinned(&self, g: GroupId) -> (engine::Snapshot<'_>, ApplyMeta) {
        let gs = self.group(g);
        let m = gs.committed.read();
        (self.db.snapshot(), m.clone())
    }

    fn all_groups(&self) -> Vec<Arc<GroupState>> {
        self.groups.read().values().cloned().collect()
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// The compactor thread: purges every group whose scheduled compact revision is ahead
    /// of its finished one (also right after start: resumes interrupted purges).
    fn run_compactor(&self) {
        while !self.stopping() {
            for gs in self.all_groups() {
                // The hub's compact revision is published after the batch that scheduled it
                // was written; the watch sync thread relies on purges lagging it.
                let mut target = gs.hub.compact_revision();
                // Ordering: with backups on, history after the group's backup mark stays until
                // a backup has taken it (the next delta starts at the mark). Reads below the
                // scheduled compact revision already fail; only the purge waits.
                if self.cfg.hold_history_for_backups {
                    let mark = gs.committed.read().backup_revision;
                    if mark > 0 {
                        target = target.min(mark);
                    }
                }
                if target < 1 || target <= *gs.compact_finished.lock() {
                    continue;
                }
                let _purging = gs.purge_lock.lock();
                let started = Instant::now();
                let stop = || self.stopping() || gs.wipe_pending.load(Ordering::SeqCst);
                match compact::purge(&self.db, gs.id, target, self.cfg.compaction_batch_keys, &stop) {
                    Ok(true) => {
                        *gs.compact_finished.lock() = target;
                        gs.compact_cond.notify_all();
                        tracing::debug!(
                            group = gs.id.0,
                            target,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "compaction finished"
                        );
                    }
                    // Stopped for a wipe: the group's data is replaced, and its next
                    // compaction purges it from the start.
                    Ok(false) if !self.stopping() => {}
                    Ok(false) => return,
                    Err(e) => tracing::error!(group = gs.id.0, target, error = %e, "compaction failed; will retry"),
                }
            }
            self.compactor_signal.wait(COMPACTOR_IDLE_WAIT);
        }
    }

    /// The watch sync thread: catches unsynced watchers up from the events CF.
    fn run_watch_sync(&self) {
        while !self.stopping() {
            let mut behind = false;
            for gs in self.all_groups() {
                if !gs.hub.has_unsynced() {
                    continue;
                }
                match gs.hub.sync_pass(&self.db, &self.cfg) {
                    Ok(more) => behind |= more,
                    Err(e) => {
                        behind = true;
                        tracing::error!(group = gs.id.0, error = %e, "watch catch-up failed; will retry");
                    }
                }
            }
            self.sync_signal.wait(if behind { WATCH_SYNC_RETRY } else { self.cfg.watch_sync_interval });
        }
    }
}

impl Store {
    /// Opens the node's store at `path` (created if missing) and resumes any unfinished
    /// compaction.
    pub fn open(path: &Path, cfg: StoreConfig) -> Result<Store> {
        cfg.validate()?;
        let mut db = engine::open_db(path, &cfg)?;
        let layout = engine::check_layout(&db)?;
        if layout != engine::LAYOUT_VERSION {
            // A decided install (`snapshot_install.rs`) holds entries in the layout of the
            // build that received it, and its group may be half written: it must be finished
            // before the conversion, in that layout, which only that build reads. Refused
            // before anything is converted, so that build can still open the data dir.
            if let Some(&g) = snapshot_install::decided(path)?.first() {
                return Err(Error::UnfinishedInstall { group: g.0, layout });
            }
        }
        if let Some(done) = crate::migrate::upgrade(&mut db, layout)? {
            tracing::info!(
                from = layout,
                to = engine::LAYOUT_VERSION,
                versions = done.versions,
                live_keys = done.live_keys,
                deleted_keys = done.deleted_keys,
                orphan_events = done.orphan_events,
                "converted the data dir's store layout"
            );
        }
        if cfg.verify_checksums_at_open {
            engine::verify_checksums(&db)?;
        }
        // Before any group is loaded: a snapshot install a crash interrupted is finished
        // (its group is half written), and spools of undecided receives are dropped.
        for g in snapshot_install::recover(&db, path)? {
            tracing::info!(group = g.0, "finished a snapshot install interrupted by a crash");
        }
        let mut loaded = Vec::new();
        {
            let r = Reader::latest(&db);
            let mut c = r.cursor(Cf::Meta, &[0xff; 9]);
            c.seek(&[]);
            while let Some((k, v)) = c.next_entry()? {
                if kc::is_meta_apply_key(&k) {
                    let g = kc::group_of(&k).expect("meta key has a group prefix");
                    let mut meta = ApplyMeta::decode(&v)?;
                    if let Some(auth) = r.get(Cf::Meta, &kc::meta_auth_key(g))? {
                        meta.auth = Arc::new(AuthState::decode_stored(&auth)?);
                    }
                    if let Some(settings) = r.get(Cf::Meta, &kc::meta_settings_key(g))? {
                        meta.quota_bytes = engine::be_u64(&settings, "group quota")?;
                    }
                    if let Some(mark) = r.get(Cf::Meta, &kc::meta_backup_key(g))? {
                        crate::meta::load_backup_mark(&mut meta, &mark)?;
                    }
                    if let Some(state) = r.get(Cf::Meta, &kc::meta_import_key(g))? {
                        meta.import = Some(Arc::new(crate::import::ImportState::decode_stored(&state)?));
                    }
                    loaded.push((g, meta));
                }
            }
        }
        let live = LiveCache::new(cfg.live_cache_bytes);
        let inner = Arc::new(Inner {
            db,
            cfg,
            groups: RwLock::new(BTreeMap::new()),
            compactor_signal: Arc::new(Signal::default()),
            sync_signal: Arc::new(Signal::default()),
            shutdown: AtomicBool::new(false),
            spool_dir: snapshot_install::spool_dir(path),
            live,
        });
        for (g, meta) in loaded {
            let finished = compact::finished_revision(&Reader::latest(&inner.db), g)?;
            let importing = meta.import.is_some();
            let counts = inner.build_counts(g, &meta)?;
            let gs = inner.new_group_state(g, meta, finished, counts);
            if importing {
                gs.hub.import_edge(true, 1);
            }
            inner.groups.write().insert(g, Arc::new(gs));
        }
        let spawn = |name: &str, f: fn(&Inner)| {
            let inner = inner.clone();
            std::thread::Builder::new().name(name.to_string()).spawn(move || f(&inner))
        };
        let threads =
            vec![spawn("store-compactor", Inner::run_compactor)?, spawn("store-watch-sync", Inner::run_watch_sync)?];
        let lifetime = Arc::new(Lifetime { inner: inner.clone(), threads: Mutex::new(threads) });
        Ok(Store { inner, _lifetime: lifetime })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    /// Every group this node has state for.
    pub fn groups(&self) -> Vec<GroupId> {
        self.inner.groups.read().keys().copied().collect()
    }

    /// The last log index applied to `g` (0 for a new group).
    pub fn applied_index(&self, g: GroupId) -> u64 {
        self.inner.group(g).committed.read().applied_index
    }

    /// etcd's current revision (1 for an empty group).
    pub fn current_revision(&self, g: GroupId) -> Revision {
        self.inner.group(g).committed.read().current_revision
    }

    /// The import in progress in group `g`, if any (see `import`): while there is one, the
    /// group refuses every command but import steps, and its data is incomplete.
    pub fn import_state(&self, g: GroupId) -> Option<crate::import::ImportState> {
        self.inner.group(g).committed.read().import.as_deref().cloned()
    }

    /// Whether group `g` may take an import that keeps its source's revisions: it never held
    /// data, or it is being imported into from that state (see `import`).
    pub fn is_empty_for_import(&self, g: GroupId) -> bool {
        crate::import::is_empty_for_import(&self.inner.group(g).committed.read())
    }

    /// The scheduled compact revision (0 if never compacted).
    pub fn compact_revision(&self, g: GroupId) -> Revision {
        self.inner.group(g).committed.read().visible_compact_revision()
    }

    /// etcd's `compactMainRev`: the revision of the group's last compaction, -1 if it was
    /// never compacted (a compaction at revision 0 is possible, and is not "never").
    pub fn compact_main_revision(&self, g: GroupId) -> Revision {
        self.inner.group(g).committed.read().compact_revision
    }

    /// The live keys of group `g` as its key counts hold them (`key_counts.rs`), without a
    /// walk; `None` while they are not kept (turned off by [`StoreConfig::key_counts`], or
    /// an import in progress).
    pub fn live_key_count(&self, g: GroupId) -> Option<u64> {
        self.inner.group(g).counts.read().total()
    }

    /// The compact revision whose purge has finished (0 if none).
    pub fn compaction_finished_revision(&self, g: GroupId) -> Revision {
        (*self.inner.group(g).compact_finished.lock()).max(0)
    }

    /// Waits until the purge of `revision` (or a later one) finished; false on timeout.
    /// grpc-api uses it to answer `Compact{physical: true}`.
    pub fn wait_compaction_finished(&self, g: GroupId, revision: Revision, timeout: Duration) -> bool {
        let gs = self.inner.group(g);
        let deadline = Instant::now() + timeout;
        let mut finished = gs.compact_finished.lock();
        while *finished < revision {
            if gs.compact_cond.wait_until(&mut finished, deadline).timed_out() {
                return *finished >= revision;
            }
        }
        true
    }

    /// Stateless checks of a command (see [`command::validate`]).
    pub fn validate(&self, cmd: &Command) -> Result<()> {
        command::validate(cmd, &self.inner.cfg)
    }

    /// Stateless checks of a command served without a log entry, which are those of
    /// [`Store::validate`] but for the size (see [`command::check_request`]).
    pub fn check_request(&self, cmd: &Command) -> Result<()> {
        command::check_request(cmd, &self.inner.cfg)
    }

    /// Applies committed entries of group `g` in ONE RocksDB WriteBatch that also records
    /// the applied index, then publishes their watch events.
    ///
    /// Each entry is `(log index, encoded Command)`, or empty bytes for a Raft no-op.
    /// Indexes must increase; an index at or below the applied index is skipped with
    /// `Error::AlreadyApplied` (idempotent replay). Returns one result per entry;
    /// deterministic errors are per-entry results. A top-level `Err` (I/O, corruption)
    /// means the node must stop: nothing of the batch was applied, or (when an import's
    /// begin ended an earlier part of it, see `apply_with`) only whole parts up to one, each
    /// written with its applied index, so a restart replays exactly the rest.
    pub fn apply(&self, g: GroupId, entries: &[(u64, &[u8])]) -> Result<Vec<Result<CommandResponse>>> {
        self.apply_with(g, entries, apply_command)
    }

    /// [`Store::apply`] with the function that applies one command as a parameter, so unit
    /// tests can drive the batch loop with a command that fails after writing.
    fn apply_with(
        &self,
        g: GroupId,
        entries: &[(u64, &[u8])],
        apply_one: fn(&mut BatchWriter<'_>, &[u8]) -> Result<CommandResponse>,
    ) -> Result<Vec<Result<CommandResponse>>> {
        let inner = &*self.inner;
        let gs = inner.group(g);
        let _applying = gs.apply_lock.lock();
        let mut before = gs.committed.read().clone();
        let mut w = BatchWriter::new(&inner.db, g, &inner.cfg, before.clone()).with_live_cache(&inner.live);
        let mut results = Vec::with_capacity(entries.len());
        // The results of the entries in `w` start here, and whether one of them applied.
        let mut segment_start = 0;
        let mut applied_any = false;
        for &(index, data) in entries {
            if index <= w.meta.applied_index {
                results.push(Err(Error::AlreadyApplied { index, applied_index: w.meta.applied_index }));
                continue;
            }
            applied_any = true;
            // A save point per command. A deterministic error after the command wrote (a
            // check that missed a case) is rolled back to it: the command's writes, revision
            // and events are undone, its result is the error, the same on every replica, and
            // the batch goes on. Only a non-deterministic error (I/O, corruption) fails the
            // whole batch, and the node must stop.
            let save_point = CommandSavePoint::set(&mut w);
            let result = if data.is_empty() { Ok(CommandResponse::Noop) } else { apply_one(&mut w, data) };
            match result {
                Err(e) if !e.is_deterministic() => return Err(e),
                Err(e) => {
                    save_point.rollback(&mut w);
                    results.push(Err(e));
                }
                Ok(r) => {
                    assert!(
                        w.meta.current_revision >= save_point.meta.current_revision,
                        "group {}: entry {index}: current revision went backwards",
                        g.0
                    );
                    results.push(Ok(r));
                }
            }
            w.meta.applied_index = index;
            if w.ws.wipes() {
                // Ordering: a command that wiped the group (an import's begin) ends the
                // batch. Later commands read RocksDB through the overlay, which cannot hide
                // the wiped entries, so the wipe must be written before they run.
                let meta = self.commit(&gs, w, &before, &results[segment_start..], false)?;
                before = meta.clone();
                w = BatchWriter::new(&inner.db, g, &inner.cfg, meta).with_live_cache(&inner.live);
                segment_start = results.len();
                applied_any = false;
            }
        }
        if applied_any {
            self.commit(&gs, w, &before, &results[segment_start..], false)?;
        }
        Ok(results)
    }

    /// Writes the batch of `w` (whose commands answered `results`) over the committed state
    /// `before`, then publishes its effects: tokens, watch events, import cancels. `offline`:
    /// an import applied without a log index (the applied index stays). Returns the new
    /// committed metadata.
    fn commit(
        &self,
        gs: &GroupState,
        mut w: BatchWriter<'_>,
        before: &ApplyMeta,
        results: &[Result<CommandResponse>],
        offline: bool,
    ) -> Result<ApplyMeta> {
        let inner = &*self.inner;
        let g = gs.id;
        w.ws.put(Cf::Meta, kc::meta_apply_key(g), w.meta.encode());
        let BatchWriter { ws, meta, events, .. } = w;
        if offline {
            assert_eq!(
                meta.applied_index, before.applied_index,
                "group {}: an offline import moved the applied index",
                g.0
            );
        } else {
            assert!(
                meta.applied_index > before.applied_index,
                "group {}: applied index went from {} to {}",
                g.0,
                before.applied_index,
                meta.applied_index
            );
        }
        assert!(meta.current_revision >= before.current_revision, "current revision went backwards");
        assert!(meta.compact_revision >= before.compact_revision, "compact revision went backwards");
        let wipes = ws.wipes();
        // Consistency: the live cache takes the batch before RocksDB does, under the apply
        // lock that every reader of the group's entries in it holds; a failed write forgets
        // the group's entries, so no reader ever sees a value RocksDB does not hold.
        ws.write_through(&inner.live);
        let batch = ws.into_batch(&inner.db);
        // Ordering: a wipe is written while no purge runs. A purge deletes what it read, by
        // key and revision, at revisions an apply never writes, but an import writes the
        // backup's own revisions after its wipe: a purge batch read before the wipe and
        // written after it would delete imported records. The running purge stops at its
        // next batch (`wipe_pending`); the wipe then resets the finished purge revision, so
        // the next purge walks the imported history from its start.
        let _purging = wipes.then(|| {
            gs.wipe_pending.store(true, Ordering::SeqCst);
            let held = gs.purge_lock.lock();
            gs.wipe_pending.store(false, Ordering::SeqCst);
            held
        });
        {
            let mut committed = gs.committed.write();
            let started = Instant::now();
            if let Err(e) = inner.db.write_opt(batch, &engine::write_options()) {
                inner.live.remove_prefix(&kc::group_prefix(g));
                return Err(e.into());
            }
            if let Some(observer) = &inner.cfg.commit_observer {
                observer.observe(started.elapsed());
            }
            if wipes {
                // The revisions below the wipe may be written again with other keys.
                gs.data_epoch.fetch_add(1, Ordering::SeqCst);
                *gs.compact_finished.lock() = -1;
            }
            // Consistency: the counts move with the batch, under the lock readers take their
            // snapshot under. An import writes keys without events: unknown while it runs,
            // built again from RocksDB when it ends.
            let mut counts = gs.counts.write();
            if wipes || before.import.is_some() || meta.import.is_some() {
                *counts = inner.rebuild_counts(g, &meta);
            } else {
                counts.apply(events.iter().filter_map(|e| match e.kind {
                    EventKind::Put if e.prev_kv.is_none() => Some((&e.kv.key[..], true)),
                    EventKind::Put => None,
                    EventKind::Delete => Some((&e.kv.key[..], false)),
                }));
            }
            *committed = meta.clone();
        }
        // Segments grown past their size are cut again from their keys, which no batch
        // changes meanwhile (the caller holds the apply lock).
        if let Err(e) = self.recut_counts(gs) {
            tracing::warn!(group = g.0, error = %e, "key count segments not cut; counts walk their ranges");
            *gs.counts.write() = KeyCounts::Unknown;
        }
        // Tokens follow the auth commands only once they are in RocksDB, like the events.
        let token_effects: Vec<&AuthResponse> = results
            .iter()
            .filter_map(|r| match r {
                Ok(CommandResponse::Auth(a)) if !matches!(a, AuthResponse::Done) => Some(a),
                _ => None,
            })
            .collect();
        let import_edges = results.iter().any(|r| matches!(r, Ok(CommandResponse::Import(i)) if i.began || i.finished));
        if !token_effects.is_empty() || import_edges {
            let mut tokens = gs.tokens.lock();
            for effect in token_effects {
                match effect {
                    AuthResponse::Authenticated { name, simple_token, .. } if !simple_token.is_empty() => {
                        tokens.insert(simple_token.clone(), name)
                    }
                    AuthResponse::UserInvalidated(name) => tokens.invalidate_user(name),
                    AuthResponse::Disabled => tokens.clear(),
                    _ => {}
                }
            }
            if import_edges {
                // An import replaces the auth store at its finish: no token of before lives on.
                tokens.clear();
            }
        }
        // Events are published only once the batch is in RocksDB, so catch-up reads and
        // live feeds agree.
        gs.hub.publish(events, meta.current_revision, meta.compact_revision);
        if import_edges {
            // The group's data was wiped or replaced: every watcher relists, told so as a
            // compaction (a watcher resumed from any revision it saw is refused).
            gs.hub.import_edge(meta.import.is_some(), meta.current_revision.max(1));
        }
        // A moved backup mark may release history that the compactor held back.
        if meta.compact_revision > before.compact_revision || meta.backup_revision > before.backup_revision {
            inner.compactor_signal.notify();
        }
        Ok(meta)
    }

    /// Cuts group `gs`'s oversized count segments again (see `key_counts.rs`). The caller
    /// holds the group's apply lock, so RocksDB holds the state the counts describe.
    fn recut_counts(&self, gs: &GroupState) -> Result<()> {
        if !gs.counts.read().needs_check() {
            return Ok(());
        }
        let oversized = gs.counts.write().take_oversized();
        if oversized.is_empty() {
            return Ok(());
        }
        let r = Reader::latest(&self.inner.db);
        for o in oversized {
            let cut = gs.counts.read().cut(&r, gs.id, &o.lower, o.upper.as_deref())?;
            gs.counts.write().recut(o.index, cut);
        }
        Ok(())
    }

    /// Applies one import step to group `g` outside any log (an offline restore into an
    /// empty group; see `backup`): the same apply as through the log, without an index.
    pub(crate) fn apply_import_offline(&self, g: GroupId, step: crate::import::ImportStep) -> Result<CommandResponse> {
        let inner = &*self.inner;
        let gs = inner.group(g);
        let _applying = gs.apply_lock.lock();
        let before = gs.committed.read().clone();
        crate::import::validate(&step)?;
        let mut w = BatchWriter::new(&inner.db, g, &inner.cfg, before.clone()).with_live_cache(&inner.live);
        w.begin();
        let response = crate::import::apply(&mut w, step)?;
        let r = [Ok(response.clone())];
        self.commit(&gs, w, &before, &r, true)?;
        Ok(response)
    }

    /// Reads at a consistent point (a RocksDB snapshot matching the group's revision).
    pub fn range(&self, g: GroupId, req: &RangeRequest) -> Result<RangeResponse> {
        self.read_committed(g, req, range::range)
    }

    /// [`Store::range`] with the key-values encoded as etcd's `mvccpb.KeyValue`s: the same
    /// answer, for a server that sends it without decoding the stored values.
    pub fn range_wire(&self, g: GroupId, req: &RangeRequest) -> Result<WireRangeResponse> {
        self.read_committed(g, req, range::range_wire)
    }

    /// Runs a range function over group `g`'s committed state at one consistent point.
    fn read_committed<T>(&self, g: GroupId, req: &RangeRequest, read: range::RangeFn<T>) -> Result<T> {
        command::check_range(req)?;
        let inner = &*self.inner;
        let gs = inner.group(g);
        // The epoch is read under the same lock as the snapshot is taken: it names the data
        // the snapshot holds (`data_epoch`).
        // So are the key counts a count is planned from (`key_counts.rs`).
        let (snapshot, meta, epoch, count) = {
            let m = gs.committed.read();
            let count = range::count_range(req, m.current_revision).and_then(|kr| gs.counts.read().plan(&kr));
            (inner.db.snapshot(), m.clone(), gs.data_epoch.load(Ordering::SeqCst), count)
        };
        // Checked on the state read, not before: a read that waited for a read barrier may
        // find an import begun meanwhile.
        if meta.import.is_some() {
            return Err(Error::Importing);
        }
        let r = Reader::at_snapshot(&inner.db, &snapshot);
        let committed = range::Committed { pages: &gs.pages, epoch, count };
        read(&r, g, req, meta.current_revision, meta.compact_revision, meta.current_revision, Some(committed))
    }

    /// Evaluates a read-only txn ([`TxnRequest::is_read_only`]) at a consistent point, with
    /// the semantics and header revision its apply would have at that point, without a log
    /// entry. The caller validates it first (as [`Store::validate`] of the command) and,
    /// for a linearizable answer, waits for a read barrier; the result is then what applying
    /// it right after the barrier would have produced. `Err(InvalidCommand)` if it writes.
    pub fn read_only_txn(&self, g: GroupId, t: &TxnRequest) -> Result<TxnResponse> {
        if !t.is_read_only() {
            return Err(Error::InvalidCommand("txn writes: it must go through the log".into()));
        }
        let inner = &*self.inner;
        let (snapshot, meta) = inner.pinned(g);
        if meta.import.is_some() {
            return Err(Error::Importing);
        }
        let mut w = BatchWriter::at_snapshot(&inner.db, &snapshot, g, &inner.cfg, meta);
        txn::read_only_txn(&mut w, t)
    }

    /// Every lease of `g`, by id.
    pub fn leases(&self, g: GroupId) -> Result<Vec<Lease>> {
        let _ = self.inner.group(g);
        lease::list(&Reader::latest(&self.inner.db), g)
    }

    pub fn lease(&self, g: GroupId, id: i64) -> Result<Option<Lease>> {
        lease::get(&Reader::latest(&self.inner.db), g, id)
    }

    /// Keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, g: GroupId, id: i64) -> Result<Vec<Bytes>> {
        lease::keys(&Reader::latest(&self.inner.db), g, id)
    }

    /// etcd-style HashKV: crc32 over every change (revision, key, version) with
    /// `compact revision < revision <= rev` (`rev <= 0` = current). Equal on replicas with
    /// equal applied state, whatever their compaction progress. Returns
    /// `(hash, compact revision, hash revision)`.
    pub fn hash_kv(&self, g: GroupId, rev: Revision) -> Result<(u32, Revision, Revision)> {
        let inner = &*self.inner;
        let (snapshot, meta) = inner.pinned(g);
        if meta.import.is_some() {
            return Err(Error::Importing);
        }
        let current = meta.current_revision;
        if rev > current {
            return Err(Error::FutureRevision { requested: rev, current });
        }
        let rev = if rev <= 0 { current } else { rev };
        if rev < meta.compact_revision {
            return Err(Error::Compacted { requested: rev, compacted: meta.compact_revision });
        }
        let compact = meta.visible_compact_revision();
        let r = Reader::at_snapshot(&inner.db, &snapshot);
        // Every change after the compact revision is one `events` record, which no purge
        // touches. What is hashed is the change itself (revision, key, version), not the
        // record's bookkeeping (quota counts, links), so a group restored from a backup
        // hashes as its source does.
        let mut c = r.cursor(Cf::Events, &kc::event_key(g, RevisionPair::new(rev + 1, 0)));
        c.seek(&kc::event_key(g, RevisionPair::new(compact + 1, 0)));
        let mut hasher = crc32fast::Hasher::new();
        while let Some((k, v)) = c.current()? {
            let ev = StoredEvent::decode(v)?;
            hasher.update(&k[kc::GROUP_PREFIX_LEN..]);
            hasher.update(&(ev.key.len() as u32).to_be_bytes());
            hasher.update(ev.key);
            hasher.update(ev.stored);
            c.advance()?;
        }
        Ok((hasher.finalize(), compact, rev))
    }

    /// The alarms raised in group `g`, in the order they were raised, as of the last
    /// applied batch (see `meta`).
    pub fn alarms(&self, g: GroupId) -> Vec<Alarm> {
        self.inner.group(g).committed.read().alarms.clone()
    }

    /// The auth store of group `g` as of the last applied batch (see `auth`).
    pub fn auth(&self, g: GroupId) -> Arc<AuthState> {
        self.inner.group(g).committed.read().auth.clone()
    }

    /// The user of the live simple token `token` of group `g`, renewing it; `None` for an
    /// unknown or expired token. `ttl` is the member's `--auth-token-ttl`.
    pub fn simple_token_user(&self, g: GroupId, token: &str, ttl: Duration) -> Option<Arc<str>> {
        let gs = self.inner.group(g);
        let mut tokens = gs.tokens.lock();
        tokens.set_ttl(ttl);
        tokens.user(token)
    }

    /// The group's quota estimate (see `quota`).
    pub fn size_bytes(&self, g: GroupId) -> u64 {
        quota::usage_bytes(&self.inner.group(g).committed.read())
    }

    /// Bytes RocksDB holds on disk and in memtables, for the whole node.
    pub fn db_size_bytes(&self) -> u64 {
        let db = &self.inner.db;
        Cf::ALL
            .iter()
            .map(|c| {
                let h = engine::cf(db, *c);
                let sst = db.property_int_value_cf(h, "rocksdb.total-sst-files-size").ok().flatten().unwrap_or(0);
                let mem = db.property_int_value_cf(h, "rocksdb.cur-size-all-mem-tables").ok().flatten().unwrap_or(0);
                sst + mem
            })
            .sum()
    }

    /// Watchers open on group `g`, on every stream.
    pub fn watcher_count(&self, g: GroupId) -> usize {
        self.inner.group(g).hub.watcher_count()
    }

    /// A new watch stream on group `g`.
    pub fn watch_stream(&self, g: GroupId) -> WatchStream {
        WatchStream::new(self.inner.group(g).hub.clone())
    }

    /// A consistent snapshot of group `g`, read as checksummed chunks.
    pub fn snapshot(&self, g: GroupId) -> Result<SnapshotReader> {
        SnapshotReader::new(self.inner.clone(), g)
    }

    /// Starts receiving a snapshot of group `g`: push its chunks, then
    /// [`Store::install_spooled`]. Memory stays at one chunk whatever the group's size.
    pub fn snapshot_spool(&self, g: GroupId) -> Result<SnapshotSpool> {
        SnapshotSpool::create(&self.inner.spool_dir, g)
    }

    /// Replaces group `g` with the snapshot in `chunks` (see [`Store::install_spooled`]).
    pub fn install_snapshot(&self, g: GroupId, chunks: impl Iterator<Item = Vec<u8>>) -> Result<u64> {
        let mut spool = self.snapshot_spool(g)?;
        for chunk in chunks {
            spool.push(&chunk)?;
        }
        self.install_spooled(spool)
    }

    /// Replaces the spool's group with its snapshot, atomically as readers and a crash see it
    /// (`snapshot_install.rs`): every chunk was verified as it was spooled, the group's old
    /// data is deleted and the new written in bounded batches. Returns the snapshot's applied
    /// index once the installed state is durable (flushed), so the caller may then let Raft
    /// truncate its log below it.
    ///
    /// `Err(SnapshotNotAhead)` if the snapshot's index is not above the group's applied
    /// index, checked under the group's apply lock (an apply may have moved past the
    /// snapshot while it was streamed): the store is unchanged and the caller must treat the
    /// snapshot as not installed. A snapshot ahead in index but behind in revision cannot
    /// come from this group's log and is refused as `Corruption`.
    pub fn install_spooled(&self, spool: SnapshotSpool) -> Result<u64> {
        let inner = &*self.inner;
        let g = spool.group();
        let (snapshot, spooled) = spool.finish()?;
        let refuse = |e: Error| {
            let _ = std::fs::remove_file(&spooled);
            Err(e)
        };
        let gs = inner.group(g);
        let _applying = gs.apply_lock.lock();
        let _purging = gs.purge_lock.lock();
        // Under the apply lock: no apply can move the group between this check and the
        // write, so the store is never rolled back below an index the driver has applied
        // (whose entries would then never be applied again).
        let before = gs.committed.read().clone();
        let (index, revision) = (snapshot.meta.applied_index, snapshot.meta.current_revision);
        if index <= before.applied_index {
            return refuse(Error::SnapshotNotAhead { index, applied_index: before.applied_index });
        }
        if revision < before.current_revision {
            return refuse(Error::Corruption(format!(
                "snapshot at index {index} has revision {revision}, behind the current revision {} at index {}",
                before.current_revision, before.applied_index
            )));
        }
        assert!(
            index > before.applied_index && revision >= before.current_revision,
            "group {}: install would move applied index {} -> {index} or revision {} -> {revision} backwards",
            g.0,
            before.applied_index,
            before.current_revision
        );
        let install = snapshot_install::decide(&spooled, g)?;
        {
            // Readers wait for the whole group: they take their RocksDB snapshot under this
            // lock's read side, so none sees the group between the delete and the last batch.
            let mut committed = gs.committed.write();
            // Durability: `write_group` flushes before it returns. The batches went to the
            // memtables without RocksDB's WAL, and the caller then hands the snapshot to
            // Raft, which truncates the log below it; a crash before a later flush would
            // otherwise reopen the store at its old applied index with the entries after it
            // gone from the log, and the member could never start again. (A crash inside
            // `write_group` is finished by the next open from the `.install` file.)
            // The group's live entries are replaced (`live_cache.rs`); forgotten first, so a
            // failed install leaves none of the old ones behind either.
            inner.live.remove_prefix(&kc::group_prefix(g));
            // Unknown until rebuilt: a failed install leaves no counts of the old data.
            *gs.counts.write() = KeyCounts::Unknown;
            snapshot_install::write_group(&inner.db, g, &install)?;
            *gs.counts.write() = inner.rebuild_counts(g, &snapshot.meta);
            // Whatever the group held at a revision is replaced by the snapshot's.
            gs.data_epoch.fetch_add(1, Ordering::SeqCst);
            *committed = snapshot.meta.clone();
        }
        *gs.compact_finished.lock() = snapshot.compact_finished;
        // The snapshot skips the entries it covers, password changes and user deletions
        // among them, which would have ended tokens: every simple token of this member is
        // dropped (their clients authenticate again), none outlives what it stood for.
        gs.tokens.lock().clear();
        gs.hub.reset(snapshot.meta.current_revision, snapshot.meta.compact_revision);
        if snapshot.meta.import.is_some() {
            // The snapshot holds an import in progress: nothing of it may be watched.
            gs.hub.import_edge(true, snapshot.meta.current_revision.max(1));
        } else {
            gs.hub.set_not_importing();
        }
        inner.compactor_signal.notify();
        Ok(index)
    }

    /// The quota of group `g` in bytes: its own (set by a `GroupSettings` command) or the
    /// store's default.
    pub fn quota_bytes(&self, g: GroupId) -> u64 {
        let own = self.inner.group(g).committed.read().quota_bytes;
        if own > 0 {
            own
        } else {
            self.inner.cfg.quota_bytes_per_group
        }
    }

    /// The quota group `g` set for itself (0: none, the store's default applies).
    pub fn quota_setting(&self, g: GroupId) -> u64 {
        self.inner.group(g).committed.read().quota_bytes
    }

    /// The group's backup mark: the revision its newest backup ends at (0 = none) and when
    /// that backup was taken (ms since the Unix epoch).
    pub fn backup_mark(&self, g: GroupId) -> (Revision, u64) {
        let gs = self.inner.group(g);
        let m = gs.committed.read();
        (m.backup_revision, m.backup_time_unix_ms)
    }

    /// Removes group `g` from this store: every key of it in every column family, durably,
    /// and its in-memory state. For a deleted tenant; the caller makes sure nothing applies
    /// to the group any more (its Raft group is gone first).
    pub fn drop_group(&self, g: GroupId) -> Result<()> {
        let inner = &*self.inner;
        let gs = inner.group(g);
        let _applying = gs.apply_lock.lock();
        let _purging = gs.purge_lock.lock();
        let (from, to) = (kc::group_prefix(g).to_vec(), kc::group_end(g));
        let mut batch = rocksdb::WriteBatch::default();
        for cf in Cf::ALL {
            batch.delete_range_cf(engine::cf(&inner.db, cf), &from, &to);
        }
        inner.db.write_opt(batch, &engine::write_options())?;
        inner.live.remove_prefix(&from);
        inner.groups.write().remove(&g);
        // Durability: flushed now, so the deleted group does not come back at a restart
        // (RocksDB's own WAL is off).
        self.flush()?;
        Ok(())
    }

    /// Makes everything applied so far durable (atomic flush of every column family).
    /// Returns, per group, an applied index the flush covers: the Raft log may be purged up
    /// to it.
    pub fn flush(&self) -> Result<Vec<(GroupId, u64)>> {
        let inner = &*self.inner;
        // Read before flushing: everything written before the flush starts is covered.
        let applied: Vec<(GroupId, u64)> =
            inner.all_groups().iter().map(|gs| (gs.id, gs.committed.read().applied_index)).collect();
        let cfs: Vec<&rocksdb::ColumnFamily> = Cf::ALL.iter().map(|c| engine::cf(&inner.db, *c)).collect();
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        inner.db.flush_cfs_opt(&cfs, &fo)?;
        Ok(applied)
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self, g: GroupId) {
        let gs = self.inner.group(g);
        gs.hub.check_invariants();
        gs.committed.read().check();
        // The purge may be running: its reach is the scheduled compact revision at most.
        let (snapshot, meta) = self.inner.pinned(g);
        crate::mvcc::check_chains(&Reader::at_snapshot(&self.inner.db, &snapshot), g, meta.compact_revision);
    }
}

/// The batch state before one command: [`Store::apply`] rolls a command that failed back to
/// it.
struct CommandSavePoint {
    meta: ApplyMeta,
    events_len: usize,
}

impl CommandSavePoint {
    fn set(w: &mut BatchWriter<'_>) -> CommandSavePoint {
        w.ws.set_save_point();
        CommandSavePoint { meta: w.meta.clone(), events_len: w.events.len() }
    }

    /// Undoes everything the command did to `w`: its writes, its changes to the group's
    /// metadata (revision, quota counters, everything in `ApplyMeta`) and its events.
    fn rollback(self, w: &mut BatchWriter<'_>) {
        w.ws.rollback_to_save_point();
        w.meta = self.meta;
        w.events.truncate(self.events_len);
        // Resets the count of the failed command's changes.
        w.begin();
    }
}

/// Applies one decoded command to the batch. Checks come before writes, so a
/// deterministic error usually has nothing to undo; one raised after writes is undone by
/// the caller's save point.
fn apply_command(w: &mut BatchWriter<'_>, data: &[u8]) -> Result<CommandResponse> {
    let cmd = Command::decode_entry(data)?;
    command::validate(&cmd, w.cfg)?;
    apply_body(w, cmd.body.expect("validate rejects commands without body"))
}

/// Applies one validated command body.
fn apply_body(w: &mut BatchWriter<'_>, body: CommandBody) -> Result<CommandResponse> {
    let quota_bytes = if w.meta.quota_bytes > 0 { w.meta.quota_bytes } else { w.cfg.quota_bytes_per_group };
    if w.meta.import.is_some()
        && !matches!(body, CommandBody::Import(_) | CommandBody::Alarm(_) | CommandBody::GroupSettings(_))
    {
        // While the group is being imported its data is incomplete: nothing else changes it,
        // and every replica refuses the same commands.
        return Err(Error::Importing);
    }
    if !matches!(
        body,
        CommandBody::Alarm(_)
            | CommandBody::LeaseCheckpoint(_)
            | CommandBody::GroupSettings(_)
            | CommandBody::BackupMark(_)
    ) {
        quota::check_not_corrupt(&w.meta)?;
    }
    match body {
        CommandBody::Checked(c) => {
            // Ordering: the proposer's permission check holds only for the auth revision it
            // saw; any auth change applied since then (a revoked permission) refuses the
            // write here, on every member alike, rather than letting it through.
            if w.meta.auth.enabled && c.auth_revision < w.meta.auth.revision {
                return Err(Error::AuthOldRevision);
            }
            let inner = c.command.expect("validate rejects a checked command without one");
            apply_body(w, inner.body.expect("validate rejects commands without body"))
        }
        CommandBody::Auth(a) => {
            let cmd = a.command.expect("validate rejects auth commands without body");
            let (next, response) = w.meta.auth.apply(&cmd)?;
            if next != *w.meta.auth {
                // Durability: the whole record is rewritten in this command's batch, under
                // the same applied index; the save point rolls both back together.
                w.ws.put(Cf::Meta, kc::meta_auth_key(w.g), next.encode_to_vec());
                w.meta.auth = Arc::new(next);
            }
            Ok(CommandResponse::Auth(response))
        }
        CommandBody::Put(p) => {
            quota::check_alarm(&w.meta)?;
            quota::check(&w.meta, (p.key.len() + p.value.len()).max(1) as u64, quota_bytes)?;
            Ok(CommandResponse::Put(txn::apply_put(w, &p)?))
        }
        CommandBody::DeleteRange(d) => Ok(CommandResponse::DeleteRange(txn::apply_delete_range(w, &d)?)),
        CommandBody::Txn(t) => {
            let cost = quota::txn_put_cost(&t);
            if cost > 0 {
                quota::check_alarm(&w.meta)?;
                quota::check(&w.meta, cost, quota_bytes)?;
            }
            Ok(CommandResponse::Txn(txn::apply_txn(w, &t)?))
        }
        CommandBody::Compact(c) => Ok(CommandResponse::Compact(w.compact(c.revision)?)),
        CommandBody::LeaseGrant(l) => {
            quota::check_alarm(&w.meta)?;
            quota::check(&w.meta, 0, quota_bytes)?;
            Ok(CommandResponse::LeaseGrant(w.lease_grant(l.id, l.ttl)?))
        }
        CommandBody::LeaseRevoke(l) => Ok(CommandResponse::LeaseRevoke(w.lease_revoke(l.id)?)),
        CommandBody::LeaseCheckpoint(l) => {
            w.lease_checkpoint(l.id, l.remaining_ttl)?;
            Ok(CommandResponse::LeaseCheckpoint)
        }
        CommandBody::GroupSettings(s) => {
            // Durability: written in this command's batch under the same applied index, so
            // every replica enforces the new quota from the same entry on.
            w.ws.put(Cf::Meta, kc::meta_settings_key(w.g), s.quota_bytes.to_be_bytes().to_vec());
            w.meta.quota_bytes = s.quota_bytes;
            Ok(CommandResponse::Noop)
        }
        CommandBody::BackupMark(m) => {
            // Monotonic: a mark proposed by a deposed leader, or one for a revision this
            // group has not reached, changes nothing. Durability: written in this command's
            // batch, under its applied index, like the group settings.
            if m.revision > w.meta.backup_revision && m.revision <= w.meta.current_revision {
                w.meta.backup_revision = m.revision;
                w.meta.backup_time_unix_ms = m.time_unix_ms;
                w.ws.put(Cf::Meta, kc::meta_backup_key(w.g), crate::meta::encode_backup_mark(&w.meta));
            }
            Ok(CommandResponse::Noop)
        }
        CommandBody::Import(step) => crate::import::apply(w, step),
        CommandBody::Alarm(a) => {
            // Only the meta record changes: no revision, no event. It is written with the
            // batch and its applied index, so a restart finds exactly the alarms of the
            // entries it will not replay.
            let alarm = command::AlarmType::try_from(a.alarm).expect("validate rejects unknown alarm types");
            let alarm = Alarm { member_id: a.member_id, alarm };
            let changed = if a.action == command::AlarmAction::Activate as i32 {
                w.meta.activate_alarm(alarm)?
            } else {
                w.meta.deactivate_alarm(alarm)
            };
            Ok(CommandResponse::Alarm(changed.into_iter().collect()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::PutRequest;
    use crate::watch::WatchSpec;

    /// A data dir records the layout version that wrote it; one recorded by a newer build is
    /// refused at open with both versions named, before anything is read as this build's
    /// layout.
    #[test]
    fn a_data_dir_of_a_newer_layout_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::default();
        {
            let db = engine::open_db(dir.path(), &cfg).unwrap();
            engine::check_layout(&db).unwrap();
            let recorded = db.get(b"plinth-store-layout-version").unwrap().expect("a new data dir records its layout");
            assert_eq!(recorded, engine::LAYOUT_VERSION.to_be_bytes());
            db.put(b"plinth-store-layout-version", (engine::LAYOUT_VERSION + 1).to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let err = Store::open(dir.path(), cfg).err().expect("a newer layout must not open");
        assert!(
            matches!(err, Error::UnsupportedLayout { found, supported } if found == engine::LAYOUT_VERSION + 1 && supported == engine::LAYOUT_VERSION),
            "{err}"
        );
        assert!(!err.is_deterministic(), "an open error stops the member");
        assert_eq!(
            err.to_string(),
            "the data dir's store layout is version 3, written by a newer Plinth; this build reads version 2"
        );
    }

    #[test]
    fn invariants_hold_through_applies_and_watch_churn() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig { watch_stream_buffer: 2, ..StoreConfig::default() };
        let store = Store::open(dir.path(), cfg).unwrap();
        let g = GroupId(3);
        let streams: Vec<_> = (0..4).map(|_| store.watch_stream(g)).collect();
        for i in 1..=200u64 {
            let put = PutRequest { key: format!("k{}", i % 7).into(), value: "v".into(), ..Default::default() };
            let cmd = Command::new(i, CommandBody::Put(put)).encode_to_vec();
            store.apply(g, &[(i, &cmd)]).unwrap().pop().unwrap().unwrap();
            let s = &streams[(i % 4) as usize];
            if i % 5 == 0 {
                let start_revision = (i as i64 / 2).max(1);
                s.watch(WatchSpec { key: "k".into(), range_end: "l".into(), start_revision, ..WatchSpec::default() });
            }
            if i % 3 == 0 {
                while s.try_recv().is_some() {}
            }
            store.check_invariants(g);
        }
        assert_eq!(store.current_revision(g), 201);
        assert_eq!(store.applied_index(g), 200);
        // Replaying an applied entry is reported, not re-applied.
        let cmd =
            Command::new(1, CommandBody::Put(PutRequest { key: "x".into(), ..Default::default() })).encode_to_vec();
        let r = store.apply(g, &[(200, &cmd)]).unwrap();
        assert!(matches!(r[0], Err(Error::AlreadyApplied { index: 200, applied_index: 200 })));
        assert_eq!(store.current_revision(g), 201);
    }

    /// Times told to a [`CommitObserver`].
    #[derive(Debug, Default)]
    struct CountCommits(AtomicU64);

    impl crate::config::CommitObserver for CountCommits {
        fn observe(&self, _took: Duration) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What the member's metrics read without a walk: one observed RocksDB write per apply
    /// batch (none for a batch of replayed entries, which writes nothing), the live keys as
    /// the counts hold them, and the compact revision with "never compacted" told apart
    /// from a compaction at revision 0.
    #[test]
    fn commits_are_observed_and_counts_and_compactions_read_without_a_walk() {
        use crate::command::{CompactRequest, DeleteRangeRequest};
        let dir = tempfile::tempdir().unwrap();
        let commits = Arc::new(CountCommits::default());
        let cfg = StoreConfig { commit_observer: Some(commits.clone()), ..StoreConfig::default() };
        let store = Store::open(dir.path(), cfg).unwrap();
        let g = GroupId(1);
        assert_eq!(store.compact_main_revision(g), -1, "a new group was never compacted");
        assert_eq!(store.compact_revision(g), 0);
        assert_eq!(store.live_key_count(g), Some(0));
        let put = |i: u64, k: &str| {
            let p = PutRequest { key: k.to_string().into(), value: "v".into(), ..Default::default() };
            Command::new(i, CommandBody::Put(p)).encode_to_vec()
        };
        let (a, b, a_again) = (put(1, "a"), put(2, "b"), put(3, "a"));
        store.apply(g, &[(1, &a), (2, &b), (3, &a_again)]).unwrap();
        assert_eq!(commits.0.load(Ordering::Relaxed), 1, "one batch, one write");
        assert_eq!(store.live_key_count(g), Some(2), "a put over a live key adds none");
        let delete = DeleteRangeRequest { key: "b".into(), range_end: Bytes::new(), prev_kv: false };
        let delete = Command::new(4, CommandBody::DeleteRange(delete)).encode_to_vec();
        let compact = |i: u64, revision| {
            Command::new(i, CommandBody::Compact(CompactRequest { revision, physical: false })).encode_to_vec()
        };
        let at_zero = compact(5, 0);
        store.apply(g, &[(4, &delete), (5, &at_zero)]).unwrap().into_iter().for_each(|r| drop(r.unwrap()));
        assert_eq!(store.live_key_count(g), Some(1));
        assert_eq!(store.compact_main_revision(g), 0, "compacted at 0, as etcd allows");
        let at_three = compact(6, 3);
        store.apply(g, &[(6, &at_three)]).unwrap().pop().unwrap().unwrap();
        assert_eq!(store.compact_main_revision(g), 3);
        assert_eq!(commits.0.load(Ordering::Relaxed), 3);
        // A replayed entry writes nothing, so nothing is observed.
        assert!(store.apply(g, &[(6, &at_three)]).unwrap()[0].is_err());
        assert_eq!(commits.0.load(Ordering::Relaxed), 3);
        let off = tempfile::tempdir().unwrap();
        let uncounted = Store::open(off.path(), StoreConfig { key_counts: false, ..StoreConfig::default() }).unwrap();
        assert_eq!(uncounted.live_key_count(g), None, "no counts kept, none made up");
    }

    /// The creates of one batch find their keys' `gone` entries through the batch's one
    /// iterator: entries in RocksDB and entries the batch itself wrote, each linked so that a
    /// read before the delete sees the old version. A seek that would pass more deletions
    /// than the iterator may skip reads with a cursor of its own, with the same answer.
    #[test]
    fn creates_find_gone_entries_through_the_batch_probe() {
        use crate::command::{DeleteRangeRequest, RangeRequest};
        use crate::mvcc::probe_fallbacks;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let g = GroupId(1);
        let mut index = 0;
        let mut cmd = |body: CommandBody| {
            index += 1;
            (index, Command::new(index, body).encode_to_vec())
        };
        let put = |k: &str, v: &str| {
            CommandBody::Put(PutRequest {
                key: k.to_string().into(),
                value: v.to_string().into(),
                ..Default::default()
            })
        };
        let delete = |k: &str, end: &str| {
            CommandBody::DeleteRange(DeleteRangeRequest {
                key: k.to_string().into(),
                range_end: end.to_string().into(),
                prev_kv: false,
            })
        };
        let apply = |cmds: Vec<(u64, Vec<u8>)>| {
            let entries: Vec<(u64, &[u8])> = cmds.iter().map(|(i, d)| (*i, &d[..])).collect();
            store.apply(g, &entries).unwrap().into_iter().for_each(|r| drop(r.unwrap()));
        };
        let keys: Vec<String> = (0..100).map(|i| format!("k{i:03}")).collect();
        // Revisions 2-4: b, x, y; 5-104: k000..k099.
        let mut first = vec![cmd(put("b", "b1")), cmd(put("x", "x1")), cmd(put("y", "y1"))];
        first.extend(keys.iter().map(|k| cmd(put(k, "k1"))));
        apply(first);
        // 105: the k keys deleted; 106: x deleted. Their `gone` entries are in RocksDB.
        apply(vec![cmd(delete("k", "l")), cmd(delete("x", ""))]);
        // 107-206: the k keys created again, which deletes their `gone` entries: 200
        // internal entries (each entry and its deletion) between "b" and "x".
        apply(keys.iter().map(|k| cmd(put(k, "k2"))).collect());
        probe_fallbacks::take();
        // 207: "w", never deleted, whose seek ends on x's entry, not its own; 208: "a",
        // never deleted; 209: "x" over its delete in RocksDB; 210-211: "y" deleted and
        // created again in this batch; 212-213: the same for "b".
        apply(vec![
            cmd(put("w", "w1")),
            cmd(put("a", "a1")),
            cmd(put("x", "x2")),
            cmd(delete("y", "")),
            cmd(put("y", "y2")),
            cmd(delete("b", "")),
            cmd(put("b", "b2")),
        ]);
        // "a" and "b" sought past the 200 entries (`b`'s own entry is in the batch); "x"
        // and "y" were found by the probe.
        assert_eq!(probe_fallbacks::take(), 2);
        let get = |k: &str, revision: i64| {
            let req = RangeRequest { key: k.to_string().into(), revision, ..Default::default() };
            store.range(g, &req).unwrap().kvs.into_iter().next().map(|kv| (kv.value, kv.create_revision, kv.version))
        };
        assert_eq!(get("w", 0), Some(("w1".into(), 207, 1)));
        assert_eq!(get("w", 105), None, "w links to no delete (x's, at 106, would lead to x1)");
        assert_eq!(get("a", 0), Some(("a1".into(), 208, 1)));
        let cases =
            [("x", 105, 106, 209, "x1", "x2"), ("y", 209, 210, 211, "y1", "y2"), ("b", 211, 212, 213, "b1", "b2")];
        for (k, before, deleted, created, old, new) in cases {
            assert_eq!(get(k, before).map(|(v, _, _)| v), Some(old.into()), "{k} before its delete");
            assert_eq!(get(k, deleted), None, "{k} deleted");
            assert_eq!(get(k, created), Some((new.into(), created, 1)), "{k} created again");
        }
        assert_eq!(get("k050", 104).map(|(v, _, _)| v), Some("k1".into()));
        assert_eq!(get("k050", 105), None);
        assert_eq!(get("k050", 0), Some(("k2".into(), 157, 1)));
    }

    /// A store closed as a crash (`flush_at_close: false`) keeps exactly what was flushed: applies after the flush
    /// are gone and the applied index is the flushed one, so the Raft log replays them,
    /// and replaying them gives the same revisions.
    #[test]
    fn a_crash_loses_what_was_applied_after_the_last_flush() {
        let dir = tempfile::tempdir().unwrap();
        let g = GroupId(1);
        let put = |i: u64| {
            let p = PutRequest { key: format!("k{i}").into(), value: format!("v{i}").into(), ..Default::default() };
            Command::new(i, CommandBody::Put(p)).encode_to_vec()
        };
        let apply = |store: &Store, i: u64| match store.apply(g, &[(i, &put(i))]).unwrap().pop().unwrap() {
            Ok(CommandResponse::Put(p)) => p.revision,
            other => panic!("put {i}: {other:?}"),
        };
        let crashing = StoreConfig { flush_at_close: false, ..StoreConfig::default() };
        let store = Store::open(dir.path(), crashing).unwrap();
        for i in 1..=3 {
            apply(&store, i);
        }
        assert_eq!(store.flush().unwrap(), vec![(g, 3)], "the flush covers index 3");
        let lost: Vec<i64> = (4..=6).map(|i| apply(&store, i)).collect();
        assert_eq!(store.applied_index(g), 6);
        drop(store);

        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(store.applied_index(g), 3, "the applied index is the flushed one");
        assert_eq!(store.current_revision(g), 4);
        let get = |store: &Store, k: &str| {
            let r = store.range(g, &RangeRequest { key: k.to_string().into(), ..Default::default() }).unwrap();
            r.kvs.into_iter().map(|kv| kv.value).next()
        };
        assert_eq!(get(&store, "k3"), Some(Bytes::from("v3")), "flushed data survives");
        assert_eq!(get(&store, "k4"), None, "unflushed data is lost");
        let replayed: Vec<i64> = (4..=6).map(|i| apply(&store, i)).collect();
        assert_eq!(replayed, lost, "the replay gives the same revisions");
        drop(store);

        // A normal close flushes: nothing is lost.
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(store.applied_index(g), 6);
        assert_eq!(get(&store, "k6"), Some(Bytes::from("v6")));
    }

    /// Applies like `apply_command`, except that txns skip their check phase, so a txn whose
    /// put fails after its delete wrote reaches the batch loop.
    fn apply_command_skipping_txn_checks(w: &mut BatchWriter<'_>, data: &[u8]) -> Result<CommandResponse> {
        let cmd = Command::decode_entry(data)?;
        match cmd.body {
            Some(CommandBody::Txn(t)) => Ok(CommandResponse::Txn(txn::apply_txn_skipping_checks(w, &t)?)),
            _ => apply_command(w, data),
        }
    }

    /// A command that fails after it wrote (its delete ran, then its put failed) is rolled
    /// back alone: an error result for it, no revision, no key change, no event, and the
    /// next command of the same batch applies as if it had never been there.
    #[test]
    fn command_failing_after_its_writes_is_rolled_back_alone() {
        use crate::command::{DeleteRangeRequest, RequestOp};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let g = GroupId(1);
        let put = |i: u64, k: &str, v: &str| {
            let p = PutRequest { key: k.to_string().into(), value: v.to_string().into(), ..Default::default() };
            Command::new(i, CommandBody::Put(p)).encode_to_vec()
        };
        let first = [put(1, "a", "1"), put(2, "b", "2")];
        for r in store.apply(g, &[(1, &first[0]), (2, &first[1])]).unwrap() {
            r.unwrap();
        }
        let live = store.watch_stream(g);
        live.watch(WatchSpec { key: "\0".into(), range_end: "\0".into(), ..WatchSpec::default() });
        assert!(live.recv_timeout(Duration::from_secs(5)).is_some_and(|e| e.created));

        let bad = TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp::delete_range(DeleteRangeRequest { key: "a".into(), range_end: "\0".into(), prev_kv: false }),
                RequestOp::put(PutRequest { key: "b".into(), ignore_value: true, ..Default::default() }),
            ],
            failure: vec![],
        };
        let bad = Command::new(3, CommandBody::Txn(bad)).encode_to_vec();
        let next = put(4, "c", "3");
        let results = store
            .apply_with(g, &[(3, &bad), (4, &next)], apply_command_skipping_txn_checks)
            .expect("a deterministic failure of one command must not fail the batch");
        assert!(matches!(results[0], Err(Error::KeyNotFound)), "{:?}", results[0]);
        assert!(matches!(&results[1], Ok(CommandResponse::Put(p)) if p.revision == 4), "{:?}", results[1]);
        assert_eq!(store.applied_index(g), 4);
        assert_eq!(store.current_revision(g), 4, "the failed command took no revision");
        store.check_invariants(g);

        let all = store.range(g, &RangeRequest { key: "\0".into(), range_end: "\0".into(), ..Default::default() });
        let kvs: Vec<(Bytes, Bytes, i64)> =
            all.unwrap().kvs.into_iter().map(|kv| (kv.key, kv.value, kv.mod_revision)).collect();
        let want: Vec<(Bytes, Bytes, i64)> =
            vec![("a".into(), "1".into(), 2), ("b".into(), "2".into(), 3), ("c".into(), "3".into(), 4)];
        assert_eq!(kvs, want, "the failed delete left no trace in the keyspace");

        // The live watcher saw only the next command's put; a watcher catching up from the
        // events column family sees the same history.
        let ev = live.recv_timeout(Duration::from_secs(5)).expect("the put of c is published");
        assert_eq!(
            ev.events.iter().map(|e| (e.kv.key.clone(), e.kind)).collect::<Vec<_>>(),
            vec![(Bytes::from("c"), crate::kv::EventKind::Put)]
        );
        assert!(live.recv_timeout(Duration::from_millis(200)).is_none(), "nothing else was published");
        let history = store.watch_stream(g);
        history.watch(WatchSpec {
            key: "\0".into(),
            range_end: "\0".into(),
            start_revision: 1,
            ..WatchSpec::default()
        });
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.len() < 3 {
            assert!(Instant::now() < deadline, "catch-up did not deliver 3 events; got {seen:?}");
            if let Some(ev) = history.recv_timeout(Duration::from_millis(100)) {
                seen.extend(ev.events.iter().map(|e| (e.kv.key.clone(), e.kind, e.kv.mod_revision)));
            }
        }
        use crate::kv::EventKind::Put as P;
        assert_eq!(seen, vec![(Bytes::from("a"), P, 2), (Bytes::from("b"), P, 3), (Bytes::from("c"), P, 4)]);
        assert!(history.recv_timeout(Duration::from_millis(200)).is_none_or(|e| e.events.is_empty()));
    }

    #[test]
    fn read_only_txn_answers_as_its_apply_would() {
        use crate::command::{Compare, CompareResult, CompareTarget, RequestOp, TargetUnion};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let g = GroupId(1);
        let mut index = 0;
        let mut apply = |body: CommandBody| {
            index += 1;
            let cmd = Command::new(index, body).encode_to_vec();
            store.apply(g, &[(index, &cmd)]).unwrap().pop().unwrap()
        };
        for i in 0..5 {
            let put = PutRequest { key: format!("k{i}").into(), value: format!("v{i}").into(), ..Default::default() };
            apply(CommandBody::Put(put)).unwrap();
        }
        let range = |key: &str, end: &str, revision: i64| {
            RequestOp::range(RangeRequest {
                key: key.to_string().into(),
                range_end: end.to_string().into(),
                revision,
                ..Default::default()
            })
        };
        let version_is = |key: &str, v: i64| Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: key.to_string().into(),
            target_union: Some(TargetUnion::Version(v)),
            ..Default::default()
        };
        let nested = TxnRequest {
            compare: vec![version_is("k1", 2)],
            success: vec![range("k1", "", 0)],
            failure: vec![range("k", "l", 3)],
        };
        let txns = [
            TxnRequest {
                compare: vec![version_is("k0", 1)],
                success: vec![range("k0", "", 0), range("k", "l", 2)],
                failure: vec![],
            },
            TxnRequest {
                compare: vec![version_is("k0", 7)],
                success: vec![],
                failure: vec![RequestOp::txn(nested.clone()), range("k4", "", 0)],
            },
            // A future revision fails the same way on both paths.
            TxnRequest { compare: vec![], success: vec![range("k", "l", 100)], failure: vec![] },
        ];
        for t in txns {
            assert!(t.is_read_only());
            let read = store.read_only_txn(g, &t);
            let applied = apply(CommandBody::Txn(t.clone()));
            assert_eq!(
                format!("{read:?}"),
                format!(
                    "{:?}",
                    applied.map(|r| match r {
                        CommandResponse::Txn(t) => t,
                        other => panic!("txn answered {other:?}"),
                    })
                )
            );
            assert_eq!(store.current_revision(g), 6, "a read-only txn takes no revision");
        }
        // After a compaction, a compacted range revision fails the same way too.
        apply(CommandBody::Compact(crate::command::CompactRequest { revision: 4, physical: false })).unwrap();
        let t = TxnRequest { success: vec![range("k", "l", 2)], ..Default::default() };
        let read = store.read_only_txn(g, &t);
        assert!(matches!(read, Err(Error::Compacted { requested: 2, compacted: 4 })), "{read:?}");
        let writes = TxnRequest {
            success: vec![RequestOp::txn(TxnRequest {
                success: vec![RequestOp::put(PutRequest::default())],
                ..Default::default()
            })],
            ..Default::default()
        };
        assert!(!writes.is_read_only());
        assert!(matches!(store.read_only_txn(g, &writes), Err(Error::InvalidCommand(_))));
    }
}
