//! Group snapshots for Raft: a consistent point of one group, streamed as checksummed
//! chunks, and their atomic installation.
//!
//! ```text
//! chunk = "PLSN" | version(1) | seq u32 | last u8 | entries_total u64 | payload_len u32
//!         | payload | crc32 (of everything before it)
//! payload = { cf u8 | key_len u32 | key (without group prefix) | value_len u32 | value }*
//! ```
//!
//! Chunks are at most [`SNAPSHOT_CHUNK_BYTES_MAX`] unless one entry alone is larger.
//! `entries_total` counts the entries of this chunk and all before it, so a receiver detects
//! a missing, repeated or reordered chunk (seq), a truncated stream (no `last`) and a
//! miscount. The snapshot covers every column family of the group, `meta` included, so it
//! carries the applied index, revisions, compact revisions, leases, `gone` and events.

use std::sync::Arc;

use rocksdb::{SnapshotWithThreadMode, DB};

use crate::engine::Reader;
use crate::error::{Error, Result};
use crate::key_codec::{self as kc, Cf};
use crate::meta::ApplyMeta;
use crate::revision::{GroupId, Revision};
use crate::store::Inner;

/// Target size of one chunk.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1 << 20;
const MAGIC: &[u8; 4] = b"PLSN";
/// Raised with every change of the store layout a chunk's entries are in
/// (`engine::LAYOUT_VERSION`): a member never installs entries of a layout it does not read.
/// Version 1 carried layout 1's `history` family.
pub(crate) const VERSION: u8 = 2;
const HEADER_LEN: usize = 4 + 1 + 4 + 1 + 8 + 4;

/// A consistent point of one group. Iterate it for chunks.
pub struct SnapshotReader {
    // Field order matters: the RocksDB snapshot must be released before `inner` (which
    // owns the DB) can be dropped.
    snapshot: SnapshotWithThreadMode<'static, DB>,
    inner: Arc<Inner>,
    group: GroupId,
    meta: ApplyMeta,
    /// Next column family to read (index into `Cf::ALL`) and the key to resume after.
    cf_index: usize,
    resume_after: Option<Vec<u8>>,
    seq: u32,
    entries_total: u64,
    done: bool,
}

impl SnapshotReader {
    pub(crate) fn new(inner: Arc<Inner>, group: GroupId) -> Result<SnapshotReader> {
        let gs = inner.group(group);
        let (snapshot, meta) = {
            let m = gs.committed.read();
            let snap = inner.db.snapshot();
            // SAFETY: the snapshot borrows `inner.db`. `inner` is an `Arc` kept in this same
            // struct, declared after `snapshot`, so the DB outlives the snapshot, and the
            // `'static` lifetime never escapes this struct.
            let snap: SnapshotWithThreadMode<'static, DB> = unsafe { std::mem::transmute(snap) };
            (snap, m.clone())
        };
        Ok(SnapshotReader {
            snapshot,
            inner,
            group,
            meta,
            cf_index: 0,
            resume_after: None,
            seq: 0,
            entries_total: 0,
            done: false,
        })
    }

    /// The applied index the snapshot reflects.
    pub fn applied_index(&self) -> u64 {
        self.meta.applied_index
    }

    /// The revision the snapshot reflects.
    pub fn revision(&self) -> Revision {
        self.meta.current_revision
    }

    fn next_chunk(&mut self) -> Result<Vec<u8>> {
        let g = self.group;
        let reader = Reader::at_snapshot(&self.inner.db, &self.snapshot);
        let mut payload = Vec::new();
        let mut entries = 0u64;
        while self.cf_index < Cf::ALL.len() {
            let cf = Cf::ALL[self.cf_index];
            let mut c = reader.cursor(cf, &kc::group_end(g));
            c.seek(self.resume_after.as_deref().unwrap_or(&kc::group_prefix(g)));
            let mut full = false;
            while let Some((k, v)) = c.next_entry()? {
                if self.resume_after.as_deref() == Some(&k[..]) {
                    continue;
                }
                let key = &k[kc::GROUP_PREFIX_LEN..];
                let len = 1 + 4 + key.len() + 4 + v.len();
                if entries > 0 && HEADER_LEN + payload.len() + len + 4 > SNAPSHOT_CHUNK_BYTES_MAX {
                    full = true;
                    break;
                }
                payload.push(cf as u8);
                payload.extend_from_slice(&(key.len() as u32).to_be_bytes());
                payload.extend_from_slice(key);
                payload.extend_from_slice(&(v.len() as u32).to_be_bytes());
                payload.extend_from_slice(&v);
                entries += 1;
                self.resume_after = Some(k);
            }
            if full {
                break;
            }
            self.cf_index += 1;
            self.resume_after = None;
        }
        let last = self.cf_index >= Cf::ALL.len();
        self.entries_total += entries;
        let mut chunk = Vec::with_capacity(HEADER_LEN + payload.len() + 4);
        chunk.extend_from_slice(MAGIC);
        chunk.push(VERSION);
        chunk.extend_from_slice(&self.seq.to_be_bytes());
        chunk.push(u8::from(last));
        chunk.extend_from_slice(&self.entries_total.to_be_bytes());
        chunk.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        chunk.extend_from_slice(&payload);
        let crc = crc32fast::hash(&chunk);
        chunk.extend_from_slice(&crc.to_be_bytes());
        self.seq += 1;
        self.done = last;
        Ok(chunk)
    }
}

impl Iterator for SnapshotReader {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.next_chunk();
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

/// Bytes of a chunk's header: read them to learn the chunk's length
/// ([`snapshot_chunk_len`]).
pub const SNAPSHOT_CHUNK_HEADER_BYTES: usize = HEADER_LEN;

/// What one verified chunk says of itself (see [`inspect_snapshot_chunk`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunkSummary {
    /// Position of the chunk in its snapshot, from 0.
    pub seq: u32,
    /// The snapshot's last chunk.
    pub last: bool,
    /// Entries of this chunk and every chunk before it.
    pub entries_total: u64,
    /// The group's revision, if this chunk holds the group's meta record.
    pub revision: Option<Revision>,
}

/// The whole length of the chunk that starts with `header` (at least
/// [`SNAPSHOT_CHUNK_HEADER_BYTES`] bytes), for a reader that splits a snapshot file into
/// chunks. `Err(Corruption)` if it is no chunk header.
pub fn snapshot_chunk_len(header: &[u8]) -> Result<usize> {
    if header.len() < HEADER_LEN || &header[..4] != MAGIC || header[4] != VERSION {
        return Err(corrupt("bad magic or version"));
    }
    let payload_len = u32::from_be_bytes(header[18..22].try_into().expect("4 bytes")) as usize;
    Ok(HEADER_LEN + payload_len + 4)
}

/// Verifies one chunk (checksum, framing, entries) and summarizes it, without installing
/// it: `plinth snapshot status` and offline tools read snapshot files with it.
pub fn inspect_snapshot_chunk(chunk: &[u8]) -> Result<SnapshotChunkSummary> {
    let mut revision = None;
    let meta_key = kc::meta_apply_key(GroupId(0));
    let (seq, last, entries_total) = for_each_entry(chunk, None, |cf, key, value| {
        if cf == Cf::Meta && key == &meta_key[kc::GROUP_PREFIX_LEN..] {
            revision = Some(ApplyMeta::decode(value)?.current_revision);
        }
        Ok(())
    })?;
    Ok(SnapshotChunkSummary { seq, last, entries_total, revision })
}

/// Checks one chunk's framing and checksum (and its sequence number, if one is expected) and
/// calls `f` with every entry: column family, key without its group prefix, value. Returns
/// the chunk's sequence number, `last` flag and running entry total.
pub(crate) fn for_each_entry(
    chunk: &[u8],
    expected_seq: Option<u32>,
    mut f: impl FnMut(Cf, &[u8], &[u8]) -> Result<()>,
) -> Result<(u32, bool, u64)> {
    if chunk.len() < HEADER_LEN + 4 || snapshot_chunk_len(chunk)? != chunk.len() {
        return Err(corrupt(format!("{} bytes is not one chunk", chunk.len())));
    }
    let (body, crc) = chunk.split_at(chunk.len() - 4);
    let seq = u32::from_be_bytes(body[5..9].try_into().expect("4 bytes"));
    if crc32fast::hash(body) != u32::from_be_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupt(format!("crc mismatch in chunk {seq}")));
    }
    if let Some(expected) = expected_seq {
        if seq != expected {
            return Err(corrupt(format!("chunk {seq} where {expected} was expected")));
        }
    }
    let last = body[9] == 1;
    let entries_total = u64::from_be_bytes(body[10..18].try_into().expect("8 bytes"));
    let mut p = &body[HEADER_LEN..];
    while !p.is_empty() {
        let cf = Cf::from_index(take(1, &mut p)?[0]).ok_or_else(|| corrupt("unknown column family"))?;
        let klen = u32::from_be_bytes(take(4, &mut p)?.try_into().expect("4 bytes")) as usize;
        let key = take(klen, &mut p)?;
        let vlen = u32::from_be_bytes(take(4, &mut p)?.try_into().expect("4 bytes")) as usize;
        let value = take(vlen, &mut p)?;
        f(cf, key, value)?;
    }
    Ok((seq, last, entries_total))
}

/// Splits `n` bytes off the front of `p`.
fn take<'a>(n: usize, p: &mut &'a [u8]) -> Result<&'a [u8]> {
    if p.len() < n {
        return Err(corrupt("truncated entry"));
    }
    let (a, b) = p.split_at(n);
    *p = b;
    Ok(a)
}

pub(crate) fn corrupt(what: impl Into<String>) -> Error {
    Error::Corruption(format!("snapshot chunk: {}", what.into()))
}
