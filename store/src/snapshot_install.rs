//! Installing a group snapshot in bounded memory: chunks are verified and spooled to a file
//! as they arrive, then written as SST files of at most [`INSTALL_SST_BYTES`] that RocksDB
//! ingests.
//!
//! One `WriteBatch` for the whole group would make the install atomic for free, but holds the
//! group in memory, twice with the received chunks, which a large tenant turns into an
//! out-of-memory kill. Several batches are not atomic on their own: RocksDB may flush a
//! memtable between two of them, and a crash then leaves the group half old, half new.
//! Atomicity comes from a durable decision instead:
//!
//! 1. Receive: every chunk is checked (framing, checksum, sequence, entry count, meta records,
//!    column families and keys in ascending order) and appended to `<spool>/group-<g>.spool`.
//!    Memory: one chunk.
//! 2. Decide, under the group's apply lock: the snapshot must be ahead of the applied index.
//!    The spool is fsynced and renamed to `group-<g>.install`, and the directory fsynced. From
//!    here on the install happens, now or at the next open.
//! 3. Write: delete the group in every column family, turn the entries into SST files (one
//!    column family after the other, each file at most [`INSTALL_SST_BYTES`]), have RocksDB
//!    ingest each column family's files, flush, and delete the `.install` file.
//! 4. At [`crate::Store::open`], before any group is loaded, every `.install` file left by a
//!    crash is written again from step 3 (deleting the group first makes the redo idempotent);
//!    `.spool` files of receives that never reached a decision, and SST files of an install
//!    that did not finish, are deleted.
//!
//! Why SST files and not write batches: the entries of a group snapshot are already sorted
//! (the sender reads each column family in key order, and step 1 refuses anything else), so
//! they can be written as RocksDB's own table files and linked into the tree. That skips the
//! memtables, whose flush would write every byte a second time, and keeps the install from
//! filling the memtables that every other group's applies are writing into. An ingested file
//! takes a sequence number above the range deletion of step 3 (RocksDB flushes an overlapping
//! memtable first), so the new group hides the old one exactly as a later write would.
//!
//! Readers never see a half-written group: the install holds the group's `committed` write
//! lock from the delete to the last batch, and readers take their RocksDB snapshot under its
//! read lock.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rocksdb::{FlushOptions, IngestExternalFileOptions, SstFileWriter, WriteBatch, DB};

use crate::engine;
use crate::error::{Error, Result};
use crate::key_codec::{self as kc, Cf};
use crate::meta::ApplyMeta;
use crate::revision::{GroupId, Revision};
use crate::snapshot::{corrupt, for_each_entry, snapshot_chunk_len, SNAPSHOT_CHUNK_HEADER_BYTES};

/// Most bytes of entries in one SST file of an install (the writer's index and filter grow
/// with its file, so this also bounds the install's memory).
pub const INSTALL_SST_BYTES: u64 = 64 << 20;
/// The spool directory's name inside the store's directory.
const SPOOL_DIR: &str = "snapshot-spool";

/// What a verified snapshot says of its group.
#[derive(Clone)]
pub(crate) struct SnapshotMeta {
    pub meta: ApplyMeta,
    pub compact_finished: Revision,
}

/// Checks chunks in order and collects the group's meta records.
struct ChunkVerifier {
    group: GroupId,
    next_seq: u32,
    entries_total: u64,
    saw_last: bool,
    meta: Option<ApplyMeta>,
    compact_finished: Revision,
    auth: Option<crate::auth::AuthState>,
    quota_bytes: u64,
    backup_mark: Option<Vec<u8>>,
    import: Option<std::sync::Arc<crate::import::ImportState>>,
    /// Column family and key of the previous entry: entries must ascend (step 3 writes them
    /// into sorted table files as they come).
    previous: Option<(Cf, Vec<u8>)>,
}

impl ChunkVerifier {
    fn new(group: GroupId) -> ChunkVerifier {
        ChunkVerifier {
            group,
            next_seq: 0,
            entries_total: 0,
            saw_last: false,
            meta: None,
            compact_finished: -1,
            auth: None,
            quota_bytes: 0,
            backup_mark: None,
            import: None,
            previous: None,
        }
    }

    /// Verifies the next chunk of the stream.
    fn check(&mut self, chunk: &[u8]) -> Result<()> {
        if self.saw_last {
            return Err(corrupt("data after the last chunk"));
        }
        let seq = self.next_seq;
        let (_, last, total) = for_each_entry(chunk, Some(seq), |cf, key, value| {
            self.entries_total += 1;
            match &mut self.previous {
                Some((pcf, pkey)) if (pcf.index(), pkey.as_slice()) >= (cf.index(), key) => {
                    return Err(corrupt(format!("entry out of order in column family {}", cf.name())));
                }
                Some((pcf, pkey)) => {
                    *pcf = cf;
                    pkey.clear();
                    pkey.extend_from_slice(key);
                }
                None => self.previous = Some((cf, key.to_vec())),
            }
            if cf != Cf::Meta {
                return Ok(());
            }
            let full_key = kc::kv_key(self.group, key);
            if full_key == kc::meta_apply_key(self.group) {
                self.meta = Some(ApplyMeta::decode(value)?);
            } else if full_key == kc::meta_compact_key(self.group) {
                self.compact_finished = engine::be_u64(value, "finished compact revision")? as i64;
            } else if full_key == kc::meta_auth_key(self.group) {
                self.auth = Some(crate::auth::AuthState::decode_stored(value)?);
            } else if full_key == kc::meta_settings_key(self.group) {
                self.quota_bytes = engine::be_u64(value, "group quota")?;
            } else if full_key == kc::meta_backup_key(self.group) {
                self.backup_mark = Some(value.to_vec());
            } else if full_key == kc::meta_import_key(self.group) {
                self.import = Some(std::sync::Arc::new(crate::import::ImportState::decode_stored(value)?));
            }
            Ok(())
        })?;
        if total != self.entries_total {
            return Err(corrupt(format!("entry count {}, header says {total}", self.entries_total)));
        }
        self.saw_last = last;
        self.next_seq = seq.checked_add(1).ok_or_else(|| corrupt("too many chunks"))?;
        Ok(())
    }

    /// The snapshot's meta, once its last chunk was seen.
    fn finish(self) -> Result<SnapshotMeta> {
        if !self.saw_last {
            return Err(corrupt("stream ended before the last chunk"));
        }
        let mut meta = self.meta.ok_or_else(|| corrupt("no group meta in snapshot"))?;
        // The auth store travels as its own meta key; a snapshot without one has none.
        meta.auth = std::sync::Arc::new(self.auth.unwrap_or_else(crate::auth::initial));
        meta.quota_bytes = self.quota_bytes;
        if let Some(mark) = self.backup_mark {
            crate::meta::load_backup_mark(&mut meta, &mark)?;
        }
        meta.import = self.import;
        Ok(SnapshotMeta { meta, compact_finished: self.compact_finished })
    }
}

/// A snapshot of one group being received: verified chunks appended to a spool file.
pub struct SnapshotSpool {
    group: GroupId,
    path: RemoveOnDrop,
    file: BufWriter<File>,
    verifier: ChunkVerifier,
    bytes: u64,
}

impl SnapshotSpool {
    /// Starts a spool for `group` in `dir` (created if missing), replacing an earlier one.
    pub(crate) fn create(dir: &Path, group: GroupId) -> Result<SnapshotSpool> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("group-{}.spool", group.0));
        let file = BufWriter::with_capacity(1 << 20, File::create(&path)?);
        Ok(SnapshotSpool { group, path: RemoveOnDrop(Some(path)), file, verifier: ChunkVerifier::new(group), bytes: 0 })
    }

    /// The group the snapshot is of.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// Bytes spooled so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Verifies the next chunk and appends it.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        self.verifier.check(chunk)?;
        self.file.write_all(chunk)?;
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// Checks the stream is complete and makes the spool durable; returns the snapshot's
    /// meta and the spool's path.
    pub(crate) fn finish(mut self) -> Result<(SnapshotMeta, PathBuf)> {
        let meta = self.verifier.finish()?;
        let file = self.file.into_inner().map_err(|e| Error::Io(e.into_error()))?;
        // Durability: the spool is the only copy of the snapshot once the install is decided
        // (the rename to `.install`); its bytes must be on disk before that name is.
        file.sync_data()?;
        Ok((meta, self.path.0.take().expect("a spool's path is taken once")))
    }
}

/// A spool's file, removed when the spool is dropped before it is finished (a broken or
/// refused stream leaves nothing behind).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// The spool directory of the store at `store_path`.
pub(crate) fn spool_dir(store_path: &Path) -> PathBuf {
    store_path.join(SPOOL_DIR)
}

/// Step 2: the install of `spool` is decided; returns the `.install` file.
pub(crate) fn decide(spool: &Path, group: GroupId) -> Result<PathBuf> {
    let install = spool.with_file_name(format!("group-{}.install", group.0));
    fs::rename(spool, &install)?;
    sync_dir(spool.parent().expect("a spool is inside the spool directory"))?;
    Ok(install)
}

/// Step 3: replaces group `g` with the snapshot in `install`, durably, and removes the file.
/// The caller holds what keeps readers and applies away from the group.
pub(crate) fn write_group(db: &DB, g: GroupId, install: &Path) -> Result<()> {
    write_group_in_files_of(db, g, install, INSTALL_SST_BYTES).map(|_| ())
}

/// [`write_group`] with SST files of at most `sst_bytes`; returns how many it wrote.
fn write_group_in_files_of(db: &DB, g: GroupId, install: &Path, sst_bytes: u64) -> Result<u32> {
    let dir = install.parent().expect("an install file is inside the spool directory");
    let mut deletes = WriteBatch::default();
    for cf in Cf::ALL {
        deletes.delete_range_cf(engine::cf(db, cf), kc::group_prefix(g).to_vec(), kc::group_end(g));
    }
    db.write_opt(deletes, &engine::write_options())?;
    let opts = Cf::ALL.map(engine::table_file_options);
    let mut tables = TableFiles::new(db, &opts, dir, g, sst_bytes);
    for_each_chunk(install, |chunk| {
        // Checked again: the file was verified as it was written, but it is read back from
        // disk, possibly after a crash. The writer refuses keys out of order as well.
        for_each_entry(chunk, None, |cf, key, value| tables.put(cf, &kc::kv_key(g, key), value))?;
        Ok(())
    })?;
    let written = tables.finish()?;
    // Durability: ingested files are in RocksDB's manifest, synced; the range deletions of a
    // column family that got no file (and of one whose memtable did not overlap) are still
    // only in a memtable (RocksDB's WAL is off). The flush, atomic over every column family,
    // makes them durable before the `.install` file, the only other copy, goes.
    let cfs: Vec<&rocksdb::ColumnFamily> = Cf::ALL.iter().map(|c| engine::cf(db, *c)).collect();
    let mut fo = FlushOptions::default();
    fo.set_wait(true);
    db.flush_cfs_opt(&cfs, &fo)?;
    fs::remove_file(install)?;
    sync_dir(dir)?;
    Ok(written)
}

/// The SST files of one install: entries arrive one column family after the other, each in
/// key order; a column family's files are ingested when its last entry has been written.
struct TableFiles<'a> {
    db: &'a DB,
    /// Table options per column family, by [`Cf::index`].
    opts: &'a [rocksdb::Options; Cf::ALL.len()],
    dir: &'a Path,
    group: GroupId,
    file_bytes_max: u64,
    /// The column family being written, its finished files, and the open file's writer.
    cf: Option<Cf>,
    files: Vec<PathBuf>,
    writer: Option<SstFileWriter<'a>>,
    next_file: u32,
}

impl<'a> TableFiles<'a> {
    fn new(
        db: &'a DB,
        opts: &'a [rocksdb::Options; Cf::ALL.len()],
        dir: &'a Path,
        group: GroupId,
        file_bytes_max: u64,
    ) -> Self {
        TableFiles { db, opts, dir, group, file_bytes_max, cf: None, files: Vec::new(), writer: None, next_file: 0 }
    }

    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) -> Result<()> {
        if self.cf != Some(cf) {
            self.ingest()?;
            self.cf = Some(cf);
        }
        if self.writer.as_ref().is_some_and(|w| w.file_size() >= self.file_bytes_max) {
            self.close_file()?;
        }
        if self.writer.is_none() {
            let path = self.dir.join(format!("group-{}-{}.sst", self.group.0, self.next_file));
            self.next_file += 1;
            let w = SstFileWriter::create(&self.opts[cf.index()]);
            w.open(&path)?;
            self.files.push(path);
            self.writer = Some(w);
        }
        self.writer.as_mut().expect("opened above").put(key, value)?;
        Ok(())
    }

    fn close_file(&mut self) -> Result<()> {
        if let Some(mut w) = self.writer.take() {
            w.finish()?;
        }
        Ok(())
    }

    /// Ingests the finished column family's files.
    fn ingest(&mut self) -> Result<()> {
        self.close_file()?;
        let Some(cf) = self.cf else { return Ok(()) };
        if self.files.is_empty() {
            return Ok(());
        }
        let mut io = IngestExternalFileOptions::default();
        // The files are ours and about to be deleted: RocksDB links them instead of copying.
        io.set_move_files(true);
        let files = std::mem::take(&mut self.files);
        self.db.ingest_external_file_cf_opts(engine::cf(self.db, cf), &io, files.iter().collect())?;
        for f in files {
            // A moved file is linked into the store; this removes only the spool's name.
            let _ = fs::remove_file(f);
        }
        Ok(())
    }

    /// Ingests the last column family's files; returns how many files were written.
    fn finish(mut self) -> Result<u32> {
        self.ingest()?;
        Ok(self.next_file)
    }
}

impl Drop for TableFiles<'_> {
    /// Files of an install that failed midway; a restart redoes the install from the start.
    fn drop(&mut self) {
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
    }
}

/// Step 4, at open: finishes every decided install and drops undecided spools. Returns the
/// groups written.
pub(crate) fn recover(db: &DB, store_path: &Path) -> Result<Vec<GroupId>> {
    let dir = spool_dir(store_path);
    let Ok(entries) = fs::read_dir(&dir) else { return Ok(Vec::new()) };
    let mut installed = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if let Some(g) = decided_group(&path)? {
            // Verified whole before anything is deleted: a damaged file must stop the start
            // rather than leave the group deleted.
            verify_file(&path, g)?;
            write_group(db, g, &path)?;
            installed.push(g);
        } else if name.ends_with(".spool") || name.ends_with(".sst") {
            fs::remove_file(&path)?;
        }
    }
    Ok(installed)
}

/// The groups whose install is decided but not written (their `.install` files), in the
/// spool directory of the store at `store_path`.
pub(crate) fn decided(store_path: &Path) -> Result<Vec<GroupId>> {
    let Ok(entries) = fs::read_dir(spool_dir(store_path)) else { return Ok(Vec::new()) };
    let mut groups = Vec::new();
    for entry in entries {
        groups.extend(decided_group(&entry?.path())?);
    }
    groups.sort();
    Ok(groups)
}

/// The group of `path` if it is an `.install` file (`group-<g>.install`).
fn decided_group(path: &Path) -> Result<Option<GroupId>> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return Ok(None) };
    let Some(g) = name.strip_prefix("group-").and_then(|n| n.strip_suffix(".install")) else { return Ok(None) };
    let g = g.parse().map_err(|_| corrupt(format!("install file {}", path.display())))?;
    Ok(Some(GroupId(g)))
}

/// Verifies a spool or install file as one complete snapshot of `g`.
fn verify_file(path: &Path, g: GroupId) -> Result<()> {
    let mut verifier = ChunkVerifier::new(g);
    for_each_chunk(path, |chunk| verifier.check(chunk))?;
    verifier.finish().map(|_| ()).map_err(|e| Error::Corruption(format!("{}: {e}", path.display())))
}

/// Calls `f` with every chunk of a spool or install file, in order (one chunk in memory).
fn for_each_chunk(path: &Path, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut header = [0u8; SNAPSHOT_CHUNK_HEADER_BYTES];
    let mut chunk = Vec::new();
    loop {
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        chunk.clear();
        chunk.extend_from_slice(&header);
        chunk.resize(snapshot_chunk_len(&header)?, 0);
        reader.read_exact(&mut chunk[SNAPSHOT_CHUNK_HEADER_BYTES..])?;
        f(&chunk)?;
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, CommandBody, PutRequest, RangeRequest};
    use crate::{Store, StoreConfig};
    use prost::Message;

    const G: GroupId = GroupId(7);

    /// A store that loses its memtables when closed, as a crash does.
    fn crashy(dir: &Path) -> Store {
        Store::open(dir, StoreConfig { flush_at_close: false, ..StoreConfig::default() }).unwrap()
    }

    fn put(s: &Store, index: u64, key: String, value_bytes: usize) {
        let value = vec![b'v'; value_bytes];
        let e = Command::new(
            index,
            CommandBody::Put(PutRequest { key: key.into(), value: value.into(), ..Default::default() }),
        )
        .encode_to_vec();
        s.apply(G, &[(index, &e)]).unwrap().pop().unwrap().unwrap();
    }

    /// Every key, the KV hash, applied index and revision of G.
    fn fingerprint(s: &Store) -> (Vec<bytes::Bytes>, (u32, i64, i64), u64, i64) {
        let all = s
            .range(G, &RangeRequest { key: "\0".into(), range_end: "\0".into(), keys_only: true, ..Default::default() })
            .unwrap();
        let keys = all.kvs.into_iter().map(|kv| kv.key).collect();
        (keys, s.hash_kv(G, 0).unwrap(), s.applied_index(G), s.current_revision(G))
    }

    /// A source group bigger than several install batches, and its snapshot.
    fn source(dir: &Path) -> (Store, Vec<Vec<u8>>) {
        let s = Store::open(dir, StoreConfig::default()).unwrap();
        // 3,000 puts of 4 KiB: ~12 MiB of values in kv and events, three install batches
        // at least.
        for i in 1..=3000 {
            put(&s, i, format!("key-{:05}", i % 1500), 4096);
        }
        let chunks = s.snapshot(G).unwrap().map(|c| c.unwrap()).collect();
        (s, chunks)
    }

    /// A store at `dir` (losing its memtables at close when `crash_like`) holding ten small keys of its own in G,
    /// flushed: what a snapshot must replace.
    fn target(dir: &Path, crash_like: bool) -> Store {
        let s = if crash_like { crashy(dir) } else { Store::open(dir, StoreConfig::default()).unwrap() };
        for i in 1..=10 {
            put(&s, i, format!("old-{i}"), 10);
        }
        s.flush().unwrap();
        s
    }

    /// Spools `chunks` into `s` and finishes the spool: the path of the complete spool.
    fn spooled(s: &Store, chunks: &[Vec<u8>]) -> PathBuf {
        let mut spool = s.snapshot_spool(G).unwrap();
        for c in chunks {
            spool.push(c).unwrap();
        }
        spool.finish().unwrap().1
    }

    fn spool_files(store_dir: &Path) -> Vec<String> {
        let Ok(entries) = fs::read_dir(spool_dir(store_dir)) else { return Vec::new() };
        entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn a_large_snapshot_installs_and_leaves_no_file() {
        let (src_dir, dst_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (src, chunks) = source(src_dir.path());
        let dst = target(dst_dir.path(), false);
        assert_eq!(dst.install_snapshot(G, chunks.into_iter()).unwrap(), 3000);
        assert_eq!(fingerprint(&dst), fingerprint(&src));
        assert!(spool_files(dst_dir.path()).is_empty(), "{:?}", spool_files(dst_dir.path()));
    }

    /// A group bigger than one SST file is ingested as several per column family, over a
    /// group that had other keys, flushed and not (the range deletion hides them), and survives a crash that
    /// loses the memtables.
    #[test]
    fn a_snapshot_is_ingested_as_several_table_files_over_the_old_group() {
        let (src_dir, dst_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (src, chunks) = source(src_dir.path());
        {
            let dst = target(dst_dir.path(), true);
            // Keys in the memtable too, not only flushed ones (`target`'s).
            for i in 11..=20 {
                put(&dst, i, format!("unflushed-{i}"), 10);
            }
            let install = decide(&spooled(&dst, &chunks), G).unwrap();
            // The values compress to almost nothing: small files make several per family.
            let files = write_group_in_files_of(&dst.inner.db, G, &install, 16 << 10).unwrap();
            assert!(files > 8, "{files} table files");
            assert!(!install.exists());
            assert!(spool_files(dst_dir.path()).is_empty(), "{:?}", spool_files(dst_dir.path()));
        }
        let reopened = crashy(dst_dir.path());
        assert_eq!(fingerprint(&reopened), fingerprint(&src));
    }

    /// A chunk of the snapshot format holding `entries` (column family, key, value).
    fn chunk_of(entries: &[(Cf, &[u8], &[u8])]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (cf, k, v) in entries {
            payload.push(*cf as u8);
            payload.extend_from_slice(&(k.len() as u32).to_be_bytes());
            payload.extend_from_slice(k);
            payload.extend_from_slice(&(v.len() as u32).to_be_bytes());
            payload.extend_from_slice(v);
        }
        let mut c = b"PLSN".to_vec();
        c.push(crate::snapshot::VERSION);
        c.extend_from_slice(&0u32.to_be_bytes());
        c.push(1);
        c.extend_from_slice(&(entries.len() as u64).to_be_bytes());
        c.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        c.extend_from_slice(&payload);
        let crc = crc32fast::hash(&c);
        c.extend_from_slice(&crc.to_be_bytes());
        c
    }

    /// Entries must ascend, column family by column family: anything else could not be
    /// written as sorted table files, and is refused as it arrives.
    #[test]
    fn a_spool_refuses_entries_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let dst = Store::open(dir.path(), StoreConfig::default()).unwrap();
        for (entries, ok) in [
            (vec![(Cf::Kv, &b"a"[..], &b"1"[..]), (Cf::Kv, b"b", b"2"), (Cf::Gone, b"a", b"3")], true),
            (vec![(Cf::Kv, &b"b"[..], &b"1"[..]), (Cf::Kv, b"a", b"2")], false),
            (vec![(Cf::Kv, &b"a"[..], &b"1"[..]), (Cf::Kv, b"a", b"2")], false),
            (vec![(Cf::Gone, &b"a"[..], &b"1"[..]), (Cf::Kv, b"b", b"2")], false),
        ] {
            let mut spool = dst.snapshot_spool(G).unwrap();
            let r = spool.push(&chunk_of(&entries));
            assert_eq!(r.is_ok(), ok, "{entries:?}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("out of order"), "{e}");
            }
        }
    }

    /// A crash after the install was decided, with the group half written on disk: the
    /// next open finishes the install from the `.install` file.
    #[test]
    fn an_install_interrupted_by_a_crash_is_finished_at_open() {
        let (src_dir, dst_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (src, chunks) = source(src_dir.path());
        {
            let dst = target(dst_dir.path(), true);
            let install = decide(&spooled(&dst, &chunks), G).unwrap();
            assert!(install.exists());
            // Half of `write_group`, made durable: the group's keys are deleted, its other
            // column families (meta: the old applied index) are not.
            let db = &dst.inner.db;
            db.delete_range_cf(engine::cf(db, Cf::Kv), kc::group_prefix(G).to_vec(), kc::group_end(G)).unwrap();
            db.flush_cf(engine::cf(db, Cf::Kv)).unwrap();
        }
        let reopened = crashy(dst_dir.path());
        assert_eq!(fingerprint(&reopened), fingerprint(&src));
        assert!(spool_files(dst_dir.path()).is_empty(), "{:?}", spool_files(dst_dir.path()));
    }

    /// A crash while a snapshot was still arriving: its spool is dropped at open and the
    /// group is what it was.
    #[test]
    fn an_undecided_spool_is_dropped_at_open() {
        let (src_dir, dst_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (_src, chunks) = source(src_dir.path());
        let before = {
            let dst = target(dst_dir.path(), true);
            let mut spool = dst.snapshot_spool(G).unwrap();
            for c in &chunks[..chunks.len() / 2] {
                spool.push(c).unwrap();
            }
            spool.file.flush().unwrap();
            // The process dies here: nothing removes the spool.
            std::mem::forget(spool);
            assert_eq!(spool_files(dst_dir.path()), vec![format!("group-{}.spool", G.0)]);
            fingerprint(&dst)
        };
        let reopened = crashy(dst_dir.path());
        assert_eq!(fingerprint(&reopened), before);
        assert!(spool_files(dst_dir.path()).is_empty());
    }

    /// A damaged `.install` file stops the open (naming the file) rather than leave the group
    /// deleted or half written.
    #[test]
    fn a_damaged_install_file_stops_the_open() {
        let (src_dir, dst_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (_src, chunks) = source(src_dir.path());
        let install = {
            let dst = crashy(dst_dir.path());
            decide(&spooled(&dst, &chunks), G).unwrap()
        };
        let mut bytes = fs::read(&install).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        fs::write(&install, bytes).unwrap();
        let err =
            Store::open(dst_dir.path(), StoreConfig::default()).err().expect("a damaged install must stop the open");
        assert!(err.to_string().contains("crc mismatch"), "{err}");
    }

    /// Chunks out of order, repeated or missing are refused as they arrive.
    #[test]
    fn a_spool_refuses_a_broken_stream() {
        let (src_dir, dst_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (_src, chunks) = source(src_dir.path());
        let dst = Store::open(dst_dir.path(), StoreConfig::default()).unwrap();
        let mut spool = dst.snapshot_spool(G).unwrap();
        spool.push(&chunks[0]).unwrap();
        let err = spool.push(&chunks[2]).unwrap_err();
        assert!(err.to_string().contains("chunk 2 where 1 was expected"), "{err}");
        let mut spool = dst.snapshot_spool(G).unwrap();
        spool.push(&chunks[0]).unwrap();
        let err = dst.install_spooled(spool).unwrap_err();
        assert!(err.to_string().contains("before the last chunk"), "{err}");
        assert!(spool_files(dst_dir.path()).is_empty(), "{:?}", spool_files(dst_dir.path()));
    }
}
