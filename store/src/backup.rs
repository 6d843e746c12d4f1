//! Backups of one group: full and delta exports as record streams, and the import that
//! rebuilds a group from a full export and a chain of deltas, up to any revision they cover.
//!
//! A *full* export is the group at one revision F: every live key with its revisions,
//! version, lease and the sub revision of its last change; every lease; the auth store;
//! and the revisions needed to restore (F and the compact revision). A *delta* export is
//! every change in `(from, to]` read from the `events` column family, with
//! its value and its previous version, then the lease table and auth store as of `to`. Both
//! are streams of [`BackupRecord`]s, emitted one at a time to a sink, so an export holds at
//! most one record in memory beside RocksDB's own buffers.
//!
//! ```text
//!  full  := Header{kind: Full, to_revision: F} Auth Lease* Key* End
//!  delta := Header{kind: Delta, from_revision, to_revision} Event* Auth Lease* End
//! ```
//!
//! [`GroupImport`] takes a full export and deltas whose ranges chain (`delta.from` = the
//! previous export's `to`) and a target revision R inside the chain, and rebuilds an empty
//! group offline through the planner and the apply code that online imports use too
//! (`import_plan`, `import`). It writes the group as of R: the keys live at R with their revisions kept, the history and events of `(F, R]`
//! (so reads at any revision in `(F, R]`, watches from after F and `HashKV` at those
//! revisions work), current revision R, and compact revision F: nothing older than the full
//! export exists in the backup, so the restored group answers reads below F with
//! `Compacted`. HashKV at R of the restored group therefore equals the source's HashKV at R
//! once the source is compacted at F.
//!
//! ## CAVEATS
//!
//! - Lease grants and revokes make no event, so a delta knows the lease table only at its
//!   end. Restoring to an R inside a delta keeps the leases of the delta's end, plus those
//!   of the previous export that a key live at R is attached to; a lease that a key live at
//!   R names and neither table knows (granted and revoked inside the delta) is recreated
//!   with [`IMPORT_UNKNOWN_LEASE_TTL_SECS`]. Auth changes make no revision either: the auth
//!   store restored is that of the newest export ending at or before R.
//! - An offline import writes the group one operation (at most about
//!   [`crate::IMPORT_STEP_BYTES_MAX`]) at a time, each with the group's meta record: one
//!   that fails leaves a group in the importing state behind, and the group must not be
//!   used (the offline restore removes its new data dir).

use bytes::Bytes;
use prost::Message;

use crate::auth::AuthState;
use crate::command::RangeRequest;
use crate::compact;
use crate::engine::{self, Reader};
use crate::error::{Error, Result};
use crate::import::{ImportOp, ImportStep};
use crate::import_plan::ImportPlanner;
use crate::key_codec::{self as kc, Cf};
use crate::kv::{EventKind, KeyValue, LiveLinks, StoredEvent};
use crate::lease::Lease;
use crate::meta::ApplyMeta;
use crate::mvcc::{self, Head, KeyRange};
use crate::revision::{GroupId, Revision, RevisionPair};
use crate::store::Store;

/// Version of the record encoding, carried in every [`BackupHeader`].
pub const BACKUP_FORMAT_VERSION: u32 = 1;
/// TTL given to a lease that a restored key is attached to but that no export's lease table
/// holds (see CAVEATS).
pub const IMPORT_UNKNOWN_LEASE_TTL_SECS: i64 = 60;

/// What an export holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum BackupKind {
    /// Unset; never written.
    Unknown = 0,
    /// The whole group at one revision.
    Full = 1,
    /// The changes of a revision range.
    Delta = 2,
}

/// First record of every export.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BackupHeader {
    /// [`BACKUP_FORMAT_VERSION`] of the writer.
    #[prost(uint32, tag = "1")]
    pub format_version: u32,
    #[prost(enumeration = "BackupKind", tag = "2")]
    pub kind: i32,
    /// The group exported (the tenant's group on the source).
    #[prost(uint64, tag = "3")]
    pub group: u64,
    /// Delta: the exclusive lower bound of its range. Full: 0.
    #[prost(int64, tag = "4")]
    pub from_revision: i64,
    /// The revision the export ends at (the group's revision when it was taken).
    #[prost(int64, tag = "5")]
    pub to_revision: i64,
    /// The source's compact revision when the export was taken (0 = never compacted).
    #[prost(int64, tag = "6")]
    pub compact_revision: i64,
}

impl BackupHeader {
    /// The kind, `Unknown` for a value this version does not know.
    pub fn backup_kind(&self) -> BackupKind {
        BackupKind::try_from(self.kind).unwrap_or(BackupKind::Unknown)
    }
}

/// A live key of a full export.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KeyRecord {
    #[prost(message, optional, tag = "1")]
    pub kv: Option<KeyValue>,
    /// Sub revision of the key's last change (its `events` record is at `(mod_revision, sub)`).
    #[prost(int64, tag = "2")]
    pub sub: i64,
}

/// One change of a delta export.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EventRecord {
    /// A DELETE (the key's tombstone); otherwise a PUT.
    #[prost(bool, tag = "1")]
    pub delete: bool,
    /// PUT: the new version. DELETE: `{key, mod_revision}` only.
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
    /// Sub revision of the change inside its main revision.
    #[prost(int64, tag = "3")]
    pub sub: i64,
    /// The key's version before the change (at `mod_revision - 1`), when it was live.
    #[prost(message, optional, tag = "4")]
    pub prev_kv: Option<KeyValue>,
}

/// Last record of every export: how many came before it, header included.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BackupEnd {
    #[prost(uint64, tag = "1")]
    pub records_before: u64,
}

/// One record of an export stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BackupRecord {
    #[prost(oneof = "BackupBody", tags = "1, 2, 3, 4, 5, 6")]
    pub body: Option<BackupBody>,
}

/// The record kinds.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum BackupBody {
    #[prost(message, tag = "1")]
    Header(BackupHeader),
    #[prost(message, tag = "2")]
    Key(KeyRecord),
    #[prost(message, tag = "3")]
    Event(EventRecord),
    #[prost(message, tag = "4")]
    Lease(Lease),
    #[prost(message, tag = "5")]
    Auth(AuthState),
    #[prost(message, tag = "6")]
    End(BackupEnd),
}

impl BackupRecord {
    fn of(body: BackupBody) -> BackupRecord {
        BackupRecord { body: Some(body) }
    }

    /// Decodes one record, or reports corruption.
    pub fn decode_record(bytes: &[u8]) -> Result<BackupRecord> {
        let r = BackupRecord::decode(bytes).map_err(|e| Error::Corruption(format!("backup record: {e}")))?;
        if r.body.is_none() {
            return Err(Error::Corruption("backup record without a body".into()));
        }
        Ok(r)
    }
}

/// Counts records as they go to the sink, for the `End` record.
struct Emitter<'a> {
    sink: &'a mut dyn FnMut(BackupRecord) -> Result<()>,
    records: u64,
}

impl Emitter<'_> {
    fn emit(&mut self, body: BackupBody) -> Result<()> {
        self.records += 1;
        (self.sink)(BackupRecord::of(body))
    }

    fn end(mut self) -> Result<u64> {
        let before = self.records;
        self.emit(BackupBody::End(BackupEnd { records_before: before }))?;
        Ok(self.records)
    }
}

fn leases_and_auth(r: &Reader<'_>, g: GroupId, auth: &AuthState, out: &mut Emitter<'_>) -> Result<()> {
    out.emit(BackupBody::Auth(auth.clone()))?;
    let (start, end) = kc::lease_record_range(g);
    let mut c = r.cursor(Cf::Lease, &end);
    c.seek(&start);
    while let Some((_, v)) = c.next_entry()? {
        let lease = Lease::decode(&v[..]).map_err(|e| Error::Corruption(format!("lease record: {e}")))?;
        out.emit(BackupBody::Lease(lease))?;
    }
    Ok(())
}

/// Receives `(user key, revision, tombstone, etcd's KeyValue encoding)` from
/// [`PinnedExport::versions`].
pub type VersionSink<'a, E> = dyn FnMut(&[u8], RevisionPair, bool, &[u8]) -> std::result::Result<(), E> + 'a;

/// A group pinned at one point for exports: a full export and a delta export taken from
/// the same pin end at the same revision, so a delta that closes a chain and the full
/// backup that starts the next one leave no revision between them uncovered.
pub struct PinnedExport<'a> {
    store: &'a Store,
    g: GroupId,
    snapshot: engine::Snapshot<'a>,
    meta: ApplyMeta,
    /// The group's finished purge revision at the pin (-1: none). A purge that stopped or
    /// failed part way may have gone further: its target is in the pinned state
    /// ([`compact::started_revision`]).
    purged: Revision,
}

impl Store {
    /// Pins group `g` for exports (see [`PinnedExport`]).
    pub fn pin_export(&self, g: GroupId) -> PinnedExport<'_> {
        let inner = &*self.inner;
        // Pinned while no purge runs, so the snapshot sees no purge in progress. It may still
        // see one that stopped (a shutdown, an error) or that a snapshot install brought in
        // part way: `delta` reads that one's target from the pinned state.
        let gs = inner.group(g);
        let _purging = gs.purge_lock.lock();
        let (snapshot, meta) = inner.pinned(g);
        let purged = *gs.compact_finished.lock();
        PinnedExport { store: self, g, snapshot, meta, purged }
    }

    /// Exports group `g` at its current revision as a full backup (see
    /// [`PinnedExport::full`]).
    pub fn export_full(
        &self,
        g: GroupId,
        sink: &mut dyn FnMut(BackupRecord) -> Result<()>,
    ) -> Result<(BackupHeader, u64)> {
        self.pin_export(g).full(sink)
    }

    /// Exports every change of group `g` after `from_revision` as a delta (see
    /// [`PinnedExport::delta`]).
    pub fn export_delta(
        &self,
        g: GroupId,
        from_revision: Revision,
        sink: &mut dyn FnMut(BackupRecord) -> Result<()>,
    ) -> Result<(BackupHeader, u64)> {
        self.pin_export(g).delta(from_revision, sink)
    }
}

impl PinnedExport<'_> {
    /// The revision exports from this pin end at.
    pub fn revision(&self) -> Revision {
        self.meta.current_revision
    }

    /// Exports the group as a full backup, record by record into `sink`. Returns the
    /// header (its `to_revision` is the revision exported) and the number of records.
    pub fn full(&self, sink: &mut dyn FnMut(BackupRecord) -> Result<()>) -> Result<(BackupHeader, u64)> {
        let (g, meta) = (self.g, &self.meta);
        if meta.import.is_some() {
            return Err(Error::Importing);
        }
        let r = Reader::bulk_at_snapshot(&self.store.inner.db, &self.snapshot);
        let header = BackupHeader {
            format_version: BACKUP_FORMAT_VERSION,
            kind: BackupKind::Full as i32,
            group: g.0,
            from_revision: 0,
            to_revision: meta.current_revision,
            compact_revision: meta.visible_compact_revision(),
        };
        let mut out = Emitter { sink, records: 0 };
        out.emit(BackupBody::Header(header.clone()))?;
        leases_and_auth(&r, g, &meta.auth, &mut out)?;
        // Each live key with the sub revision its `kv` entry's links carry.
        let mut c = r.cursor(Cf::Kv, &kc::group_end(g));
        c.seek(&kc::group_prefix(g));
        while let Some((k, v)) = c.current()? {
            let (links, stored) = LiveLinks::split(v)?;
            let kv = KeyValue::decode_stored(kc::kv_user_key(k), stored)?;
            out.emit(BackupBody::Key(KeyRecord { kv: Some(kv), sub: links.sub }))?;
            c.advance()?;
        }
        let records = out.end()?;
        Ok((header, records))
    }

    /// Whether the group was being imported at the pin (its data is no history to export).
    pub fn importing(&self) -> bool {
        self.meta.import.is_some()
    }

    /// The compact revision the group answers reads with (0: never compacted).
    pub fn compact_revision(&self) -> Revision {
        self.meta.visible_compact_revision()
    }

    /// The last log index applied at the pin.
    pub fn applied_index(&self) -> u64 {
        self.meta.applied_index
    }

    /// The auth store at the pin.
    pub fn auth(&self) -> &AuthState {
        &self.meta.auth
    }

    /// Every lease at the pin, in id order.
    pub fn leases(&self, sink: &mut dyn FnMut(Lease) -> Result<()>) -> Result<()> {
        let r = Reader::bulk_at_snapshot(&self.store.inner.db, &self.snapshot);
        let (start, end) = kc::lease_record_range(self.g);
        let mut c = r.cursor(Cf::Lease, &end);
        c.seek(&start);
        while let Some((_, v)) = c.next_entry()? {
            sink(Lease::decode(&v[..]).map_err(|e| Error::Corruption(format!("lease record: {e}")))?)?;
        }
        Ok(())
    }

    /// Every version an etcd compacted at the group's compact revision C keeps, in key
    /// order and newest first within a key: each change after C, and each key's newest
    /// version at or before C if it is live. This is what etcd's `key` bucket holds, keyed
    /// there by revision instead. Each is handed over as `(user key, revision, tombstone,
    /// etcd's mvccpb.KeyValue encoding)`, a tombstone's being the key alone; the encoding is
    /// made from the stored bytes without decoding them (see `KeyValue::append_wire`), in
    /// buffers reused from one version to the next.
    pub fn versions<E: From<Error>>(&self, sink: &mut VersionSink<'_, E>) -> std::result::Result<(), E> {
        let (g, meta) = (self.g, &self.meta);
        if meta.import.is_some() {
            return Err(Error::Importing.into());
        }
        let compact = meta.visible_compact_revision();
        let r = Reader::bulk_at_snapshot(&self.store.inner.db, &self.snapshot);
        let mut wire = Vec::new();
        let mut failed: Option<E> = None;
        // Each key's chain from its head, newest first: every change after C, then, at or
        // before C, only the newest, and only if live; the older ones are what the
        // compaction removes (or, on a store holding history for backups, keeps).
        let mut visit = |key: &[u8], head: Head<'_>| -> Result<bool> {
            let mut emit = |rev: RevisionPair, stored: Option<&[u8]>| -> bool {
                wire.clear();
                match stored {
                    Some(stored) => {
                        KeyValue::append_wire(&mut wire, key, stored);
                    }
                    None => crate::kv::append_wire_key(&mut wire, key),
                }
                match sink(key, rev, stored.is_none(), &wire) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            };
            let mut link = match head {
                Head::Live(links, stored) => {
                    let main = KeyValue::stored_mod_revision(stored)?;
                    if !emit(RevisionPair::new(main, links.sub), Some(stored)) {
                        return Ok(false);
                    }
                    if main <= compact {
                        return Ok(true);
                    }
                    links.prev
                }
                Head::Deleted(deleted, _) if deleted.main <= compact => return Ok(true),
                Head::Deleted(deleted, prev) => {
                    if !emit(deleted, None) {
                        return Ok(false);
                    }
                    prev
                }
            };
            while let Some(rev) = link {
                // A link to a record the purge removed was a delete at or before C.
                let Some(record) = r.get(Cf::Events, &kc::event_key(g, rev))? else { break };
                let ev = StoredEvent::decode(&record)?;
                let stored = (ev.kind == EventKind::Put).then_some(ev.stored);
                if rev.main <= compact {
                    if stored.is_some() && !emit(rev, stored) {
                        return Ok(false);
                    }
                    break;
                }
                if !emit(rev, stored) {
                    return Ok(false);
                }
                link = ev.prev;
            }
            Ok(true)
        };
        mvcc::for_each_head(&r, g, &KeyRange::From(Bytes::new()), &mut visit)?;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Exports every change in `(from_revision, pinned revision]` as a delta, then the
    /// lease table and auth store at the pin. `Err(Compacted)` if the group's history no
    /// longer reaches back to `from_revision`; `Err(FutureRevision)` if `from_revision` is
    /// ahead of the group.
    pub fn delta(
        &self,
        from_revision: Revision,
        sink: &mut dyn FnMut(BackupRecord) -> Result<()>,
    ) -> Result<(BackupHeader, u64)> {
        let r = Reader::bulk_at_snapshot(&self.store.inner.db, &self.snapshot);
        let (g, meta) = (self.g, &self.meta);
        let purged = self.purged.max(compact::started_revision(&r, g)?);
        if meta.import.is_some() {
            return Err(Error::Importing);
        }
        if from_revision > meta.current_revision {
            return Err(Error::FutureRevision { requested: from_revision, current: meta.current_revision });
        }
        // A purge at P keeps the events after P and, for each key, its newest version at or
        // below P (the prev of the first change after it): a delta from P on is complete. A
        // purge toward P that did not finish has removed some of the changes below P, so a
        // delta from below it would miss them: refused too.
        // What counts is the purge, not the scheduled compact revision: a store that holds
        // history for backups (`hold_history_for_backups`) keeps it past the compaction.
        if from_revision < purged {
            return Err(Error::Compacted { requested: from_revision, compacted: purged });
        }
        // An import replaced the group's data after `from_revision`: no delta describes that.
        if from_revision < meta.backup_chain_break {
            return Err(Error::Compacted { requested: from_revision, compacted: meta.backup_chain_break });
        }
        let header = BackupHeader {
            format_version: BACKUP_FORMAT_VERSION,
            kind: BackupKind::Delta as i32,
            group: g.0,
            from_revision,
            to_revision: meta.current_revision,
            compact_revision: meta.visible_compact_revision(),
        };
        let mut out = Emitter { sink, records: 0 };
        out.emit(BackupBody::Header(header.clone()))?;
        let upper = kc::event_key(g, RevisionPair::new(meta.current_revision + 1, 0));
        let mut c = r.cursor(Cf::Events, &upper);
        c.seek(&kc::event_key(g, RevisionPair::new(from_revision + 1, 0)));
        while let Some((k, v)) = c.next_entry()? {
            let rev = kc::decode_event_key(&k).ok_or_else(|| Error::Corruption("event key in delta".into()))?;
            let ev = StoredEvent::decode(&v)?;
            let (delete, kv) = (ev.kind == EventKind::Delete, ev.event_kv(rev.main)?);
            let prev_kv = mvcc::version_at(&r, g, ev.key, ev.prev, rev.main - 1)?;
            out.emit(BackupBody::Event(EventRecord { delete, kv: Some(kv), sub: rev.sub, prev_kv }))?;
        }
        leases_and_auth(&r, g, &meta.auth, &mut out)?;
        let records = out.end()?;
        Ok((header, records))
    }
}

impl Store {
    /// Starts rebuilding group `g` from backups, to `target_revision`, offline: the group
    /// must be empty (never applied anything) and nothing else may use it until
    /// [`GroupImport::finish`] returns. The records become import operations through the
    /// same planner and the same apply code as an import through the log (see
    /// `import_plan` and `import`), applied here without a log index.
    pub fn import_group(&self, g: GroupId, target_revision: Revision) -> Result<GroupImport<'_>> {
        let gs = self.inner.group(g);
        let meta = gs.committed.read().clone();
        if meta.applied_index != 0 || meta.current_revision != 1 {
            return Err(Error::InvalidCommand(format!(
                "import into {g}: the group is not empty (applied index {}, revision {})",
                meta.applied_index, meta.current_revision
            )));
        }
        let planner = ImportPlanner::new(target_revision)?;
        apply_offline(self, g, ImportOp::Begin(crate::import::ImportBegin { require_empty: true }))?;
        Ok(GroupImport { store: self, g, planner })
    }
}

/// The import id of offline imports (nothing else applies to their group meanwhile).
const OFFLINE_IMPORT_ID: u64 = 1;

/// An offline import in progress (see [`Store::import_group`]): feed it the records of a
/// full export, then of each delta in order, then call [`GroupImport::finish`].
pub struct GroupImport<'a> {
    store: &'a Store,
    g: GroupId,
    planner: ImportPlanner,
}

/// Applies one operation of an offline import to group `g` of `store`.
fn apply_offline(store: &Store, g: GroupId, op: ImportOp) -> Result<()> {
    let step = ImportStep { import_id: OFFLINE_IMPORT_ID, op: Some(op) };
    match store.apply_import_offline(g, step) {
        // The chain passed its checksums but holds what no source could have written.
        Err(Error::InvalidCommand(e)) => Err(Error::Corruption(format!("backup chain: {e}"))),
        other => other.map(|_| ()),
    }
}

impl GroupImport<'_> {
    /// Feeds the next record. Records must come export by export, each complete from its
    /// header to its end, the full export first.
    pub fn push(&mut self, record: BackupRecord) -> Result<()> {
        let (store, g) = (self.store, self.g);
        self.planner.push(record, &mut |op| apply_offline(store, g, op))
    }

    /// Writes the leases, the auth store and the revisions, flushes, and returns the number
    /// of keys live at the target.
    pub fn finish(self) -> Result<u64> {
        let GroupImport { store, g, planner } = self;
        planner.finish(&mut |op| apply_offline(store, g, op))?;
        // Durability: the import wrote without RocksDB's WAL and no log will replay it.
        store.flush()?;
        let count = RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            count_only: true,
            ..Default::default()
        };
        Ok(store.range(g, &count)?.count as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{
        Command, CommandBody, CompactRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
        RangeRequest, RequestOp, TxnRequest,
    };
    use crate::config::StoreConfig;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const SOURCE: GroupId = GroupId(1);
    /// Seeds run by the random test; `PLINTH_BACKUP_SEED=<n>` replays one.
    const SEEDS: u64 = 20;

    struct Source {
        store: Store,
        index: u64,
        leases: Vec<i64>,
        next_lease: i64,
    }

    impl Source {
        fn open(dir: &std::path::Path, cfg: StoreConfig) -> Source {
            Source { store: Store::open(dir, cfg).unwrap(), index: 0, leases: Vec::new(), next_lease: 0 }
        }

        fn apply(&mut self, body: CommandBody) {
            self.index += 1;
            let cmd = Command::new(self.index, body).encode_to_vec();
            // Per-entry errors (an unknown lease, a compacted revision) are part of the
            // workload; only a top-level error is a failure.
            let _ = self.store.apply(SOURCE, &[(self.index, &cmd)]).expect("apply");
        }

        fn random_op(&mut self, rng: &mut StdRng, compact_at_most: Revision) {
            let key = |rng: &mut StdRng| Bytes::from(format!("k{:02}", rng.random_range(0..24)));
            let lease = |rng: &mut StdRng, leases: &[i64]| {
                if !leases.is_empty() && rng.random_bool(0.3) {
                    leases[rng.random_range(0..leases.len())]
                } else {
                    0
                }
            };
            match rng.random_range(0..100) {
                0..=49 => {
                    let put = PutRequest {
                        key: key(rng),
                        value: Bytes::from(format!("v{}", rng.random::<u32>())),
                        lease: lease(rng, &self.leases),
                        ..Default::default()
                    };
                    self.apply(CommandBody::Put(put));
                }
                50..=61 => {
                    let (a, b) = (key(rng), key(rng));
                    let range_end = if rng.random_bool(0.5) { Bytes::new() } else { a.max(b.clone()) };
                    self.apply(CommandBody::DeleteRange(DeleteRangeRequest { key: b, range_end, prev_kv: false }));
                }
                62..=75 => {
                    // Several changes in one revision: put, delete a range, put again.
                    let (a, b, c) = (key(rng), key(rng), key(rng));
                    let (lo, hi) = if b <= c { (b, c) } else { (c, b) };
                    let t = TxnRequest {
                        compare: vec![],
                        success: vec![
                            RequestOp::put(PutRequest { key: a, value: Bytes::from("t1"), ..Default::default() }),
                            RequestOp::delete_range(DeleteRangeRequest { key: lo, range_end: hi, prev_kv: false }),
                            RequestOp::put(PutRequest {
                                key: key(rng),
                                value: Bytes::from("t2"),
                                lease: lease(rng, &self.leases),
                                ..Default::default()
                            }),
                        ],
                        failure: vec![],
                    };
                    self.apply(CommandBody::Txn(t));
                }
                76..=85 => {
                    self.next_lease += 1;
                    let id = self.next_lease;
                    self.apply(CommandBody::LeaseGrant(LeaseGrantRequest { ttl: 10 + id, id }));
                    self.leases.push(id);
                }
                86..=93 if !self.leases.is_empty() => {
                    let id = self.leases.remove(rng.random_range(0..self.leases.len()));
                    self.apply(CommandBody::LeaseRevoke(LeaseRevokeRequest { id }));
                }
                _ => {
                    let compacted = self.store.compact_revision(SOURCE);
                    if compact_at_most > compacted + 1 {
                        let revision = rng.random_range(compacted + 1..=compact_at_most);
                        self.apply(CommandBody::Compact(CompactRequest { revision, physical: false }));
                    }
                }
            }
        }
    }

    /// One export, kept in memory, and the source's lease table when it was taken.
    struct Export {
        header: BackupHeader,
        records: Vec<BackupRecord>,
        leases: Vec<Lease>,
    }

    fn take_export(source: &Source, from: Option<Revision>) -> Export {
        let mut records = Vec::new();
        let mut sink = |r: BackupRecord| {
            // Every record survives its own encoding, as it will in a backup object.
            records.push(BackupRecord::decode_record(&r.encode_to_vec())?);
            Ok(())
        };
        let (header, count) = match from {
            None => source.store.export_full(SOURCE, &mut sink).unwrap(),
            Some(from) => source.store.export_delta(SOURCE, from, &mut sink).unwrap(),
        };
        assert_eq!(count as usize, records.len());
        Export { header, records, leases: source.store.leases(SOURCE).unwrap() }
    }

    fn import(target: &Store, g: GroupId, chain: &[Export], revision: Revision) -> Result<u64> {
        let mut import = target.import_group(g, revision)?;
        for export in chain {
            for r in &export.records {
                import.push(r.clone())?;
            }
            if export.header.to_revision >= revision {
                break;
            }
        }
        import.finish()
    }

    fn all_keys(revision: Revision) -> RangeRequest {
        RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            revision,
            ..Default::default()
        }
    }

    /// Restores the chain to revisions across it and compares with the source: every key
    /// at the target and at an earlier revision after the full export, the leases at export
    /// ends, and (the source compacted at the full export) HashKV at the target.
    fn check_chain(rng: &mut StdRng, source: &mut Source, target: &Store, next_group: &mut u64, chain: &[Export]) {
        let full = chain[0].header.to_revision;
        let end = chain.last().unwrap().header.to_revision;
        let mut revisions: Vec<Revision> = chain.iter().map(|e| e.header.to_revision).collect();
        for _ in 0..6 {
            revisions.push(rng.random_range(full..=end));
        }
        let mut restored = Vec::new();
        for &r in &revisions {
            let g = GroupId(*next_group);
            *next_group += 1;
            let keys = import(target, g, chain, r).unwrap();
            let want = source.store.range(SOURCE, &all_keys(r)).unwrap();
            let got = target.range(g, &all_keys(0)).unwrap();
            assert_eq!(got.kvs, want.kvs, "keys at {r} (full at {full})");
            assert_eq!(keys as usize, want.kvs.len());
            assert_eq!(target.current_revision(g), r);
            assert_eq!(target.compact_revision(g), if full > 1 { full } else { 0 });
            let earlier = rng.random_range(full..=r);
            let got_earlier = target.range(g, &all_keys(earlier)).unwrap();
            assert_eq!(
                got_earlier.kvs,
                source.store.range(SOURCE, &all_keys(earlier)).unwrap().kvs,
                "keys at {earlier}"
            );
            if full > 1 {
                assert!(matches!(target.range(g, &all_keys(full - 1)), Err(Error::Compacted { .. })));
            }
            if let Some(e) = chain.iter().find(|e| e.header.to_revision == r) {
                assert_eq!(target.leases(g).unwrap(), e.leases, "leases at export end {r}");
            }
            for kv in &got.kvs {
                if kv.lease != 0 {
                    assert!(target.lease(g, kv.lease).unwrap().is_some(), "key {:?} names a missing lease", kv.key);
                }
            }
            restored.push((g, r));
        }
        // HashKV covers (compact, R]: compare with the source compacted at the full export.
        if full > 1 && source.store.compact_revision(SOURCE) < full {
            source.apply(CommandBody::Compact(CompactRequest { revision: full, physical: false }));
        }
        for (g, r) in restored {
            assert_eq!(target.hash_kv(g, r).unwrap(), source.store.hash_kv(SOURCE, r).unwrap(), "HashKV at {r}");
            target.check_invariants(g);
        }
    }

    fn run_seed(seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut source = Source::open(dirs.0.path(), StoreConfig::default());
        let target = Store::open(dirs.1.path(), StoreConfig::default()).unwrap();
        let mut next_group = 100;
        for _round in 0..3 {
            let mut chain = vec![take_export(&source, None)];
            let full = chain[0].header.to_revision;
            for _ in 0..rng.random_range(1..4) {
                for _ in 0..rng.random_range(0..40) {
                    source.random_op(&mut rng, full);
                }
                let from = chain.last().unwrap().header.to_revision;
                chain.push(take_export(&source, Some(from)));
            }
            check_chain(&mut rng, &mut source, &target, &mut next_group, &chain);
            for _ in 0..rng.random_range(0..30) {
                source.random_op(&mut rng, source.store.current_revision(SOURCE));
            }
        }
    }

    #[test]
    fn restore_equals_the_source_at_every_revision_of_the_chain() {
        let seeds: Vec<u64> = match std::env::var("PLINTH_BACKUP_SEED") {
            Ok(s) => vec![s.parse().expect("PLINTH_BACKUP_SEED is a number")],
            Err(_) => (0..SEEDS).collect(),
        };
        for seed in seeds {
            eprintln!("backup seed {seed} (replay with PLINTH_BACKUP_SEED={seed})");
            run_seed(seed);
        }
    }

    /// A purge that stopped part way (a shutdown stops one between batches) has removed
    /// changes below its target: here the delete of `a` at 3 and the put it ended. A delta
    /// from below that target would leave them out, and a restore would bring `a` back, so
    /// it is refused as compacted, though the finished purge is still at 2.
    #[test]
    fn a_delta_from_below_a_purge_cut_short_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Held for backups, the compactor purges no further than the backup mark (2).
        let cfg = StoreConfig { hold_history_for_backups: true, ..Default::default() };
        let put = |k: &str, v: &str| {
            CommandBody::Put(PutRequest { key: k.to_owned().into(), value: v.to_owned().into(), ..Default::default() })
        };
        let target = {
            let mut source = Source::open(dir.path(), cfg.clone());
            source.apply(put("a", "1"));
            assert_eq!(source.store.current_revision(SOURCE), 2);
            source.apply(CommandBody::BackupMark(crate::command::BackupMark { revision: 2, time_unix_ms: 1 }));
            source.apply(CommandBody::DeleteRange(DeleteRangeRequest { key: "a".into(), ..Default::default() }));
            for i in 0..5 {
                source.apply(put("b", &i.to_string()));
            }
            let target = source.store.current_revision(SOURCE);
            source.apply(CommandBody::Compact(CompactRequest { revision: target, physical: false }));
            assert!(source.store.wait_compaction_finished(SOURCE, 2, std::time::Duration::from_secs(30)));
            let (header, _) = source.store.export_delta(SOURCE, 2, &mut |_| Ok(())).unwrap();
            assert_eq!(header.to_revision, target, "whole before the purge toward the target");
            target
        };
        {
            // The purge toward the target, stopped after its second batch of one record.
            let db = engine::open_db(dir.path(), &cfg).unwrap();
            let polls = std::cell::Cell::new(0);
            let stop = || {
                polls.set(polls.get() + 1);
                polls.get() > 2
            };
            assert!(!compact::purge(&db, SOURCE, target, 1, &stop).unwrap(), "stopped part way");
            let r = Reader::latest(&db);
            assert!(r.get(Cf::Events, &kc::event_key(SOURCE, RevisionPair::new(3, 0))).unwrap().is_none());
            assert_eq!(compact::finished_revision(&r, SOURCE).unwrap(), 2);
        }
        let store = Store::open(dir.path(), cfg).unwrap();
        let refused = store.export_delta(SOURCE, 2, &mut |_| Ok(())).expect_err("refused");
        assert!(matches!(refused, Error::Compacted { requested: 2, compacted } if compacted == target), "{refused}");
        assert!(store.export_delta(SOURCE, target, &mut |_| Ok(())).is_ok(), "a delta from the target is whole");
    }

    #[test]
    fn broken_chains_are_refused() {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut source = Source::open(dirs.0.path(), StoreConfig::default());
        let target = Store::open(dirs.1.path(), StoreConfig::default()).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..10 {
            source.random_op(&mut rng, 1);
        }
        let full = take_export(&source, None);
        for _ in 0..10 {
            source.random_op(&mut rng, 1);
        }
        let d1 = take_export(&source, Some(full.header.to_revision));
        for _ in 0..10 {
            source.random_op(&mut rng, 1);
        }
        let d2 = take_export(&source, Some(d1.header.to_revision));
        let end = d2.header.to_revision;
        let expect_corrupt = |r: Result<u64>, what: &str| {
            assert!(matches!(r, Err(Error::Corruption(_))), "{what}: {r:?}");
        };
        // A missing delta.
        let chain = [full, d2];
        expect_corrupt(import(&target, GroupId(10), &chain, end), "gap");
        let [full, d2] = chain;
        // The target past the end of the chain.
        let chain = [full, d1, d2];
        expect_corrupt(import(&target, GroupId(11), &chain, end + 5), "target past the end");
        // A truncated export (its end record missing).
        let mut cut = chain[2].records.clone();
        cut.pop();
        let mut import = target.import_group(GroupId(12), end).unwrap();
        for r in chain[0].records.iter().chain(&chain[1].records).chain(&cut) {
            import.push(r.clone()).unwrap();
        }
        expect_corrupt(import.finish(), "truncated");
        // A record dropped from the middle of an export.
        let mut holed = chain[0].records.clone();
        holed.remove(1);
        let mut import = target.import_group(GroupId(13), chain[0].header.to_revision).unwrap();
        let r = holed.into_iter().try_for_each(|r| import.push(r)).and_then(|_| import.finish());
        expect_corrupt(r, "record missing");
        // A group that is not empty.
        assert!(target.import_group(SOURCE, 5).is_ok());
        assert!(matches!(source.store.import_group(SOURCE, 5), Err(Error::InvalidCommand(_))));
    }
}
