//! Compaction in two phases, like etcd's scheduled/finished compact revisions.
//!
//! 1. **Schedule** (in `apply`, deterministic): `Compact{R}` checks `compact < R <= current`,
//!    records `compact_revision = R` and the quota's `history_bytes_compacted` in the group
//!    meta of the apply batch. From then on reads below R fail with `Compacted`, on every
//!    replica at the same log index.
//! 2. **Purge** (a background thread, resumable): walks the group's `events` from the last
//!    finished purge's revision to R in batches of `compaction_batch_keys` records, deletes
//!    the versions and deletes that no read at `>= R` and no watch from `>= R` can need,
//!    then records the finished revision (`meta g|'c'`). Applies and reads never wait for it.
//!    After a restart the thread resumes any group whose finished revision is behind.
//!
//! Each change names the key's version before it (`mvcc.rs`), so the walk finds every
//! version it may remove from the change that replaced it. What a purge at R keeps, per key,
//! with `n` = its newest change `<= R`:
//! - every change newer than R;
//! - `n` if it is a put, or if `n` is at exactly R (a put or a delete): a watch from R reads
//!   every event at R (and, as etcd, replays neither half of a put and a delete of one key
//!   both at R, see the watch hub's `read_events`).
//!
//! Everything else at or below R goes: a version replaced by a change at or below R (unless
//! it is at exactly R), and a delete below R with its `gone` entry. So reads at R see the
//! same data as before, and a watch starting at R can fill `prev_kv` for every event after
//! R. An update at exactly R has its previous version below R: a watcher that would need it
//! is canceled as compacted (see the watch hub), as etcd's read of it at R - 1 fails. A
//! delete kept at exactly R goes with the next purge, which starts at R.
//!
//! No read or write of the apply path races the purge's deletes: it deletes only records
//! at or below R, which the apply path never writes, and `gone` entries by their exact key,
//! whose revision is at or below R; a key deleted again later has a `gone` entry of its own.
//! An import is the exception: after its begin wipes the group, it writes the backup's own
//! revisions, below R. So the begin's commit waits for the running purge, which stops at
//! its next batch, and resets the finished purge revision: the next purge walks the
//! imported history from its start. Between import steps a purge only removes versions a
//! later change replaced and deletes below R, none of which a later step reads (steps read
//! each key's head).

use rocksdb::WriteBatch;

use crate::engine::{self, Reader};
use crate::error::{Error, Result};
use crate::key_codec::{self as kc, Cf};
use crate::kv::{EventKind, StoredEvent};
use crate::mvcc::BatchWriter;
use crate::response::CompactResponse;
use crate::revision::{GroupId, Revision, RevisionPair};

impl BatchWriter<'_> {
    /// Schedules compaction at `revision` (phase 1).
    pub fn compact(&mut self, revision: Revision) -> Result<CompactResponse> {
        if revision <= self.meta.compact_revision {
            return Err(Error::Compacted { requested: revision, compacted: self.meta.compact_revision });
        }
        if revision > self.meta.current_revision {
            return Err(Error::FutureRevision { requested: revision, current: self.meta.current_revision });
        }
        // History bytes written up to `revision` = the "before" count of the first event
        // after it, or everything written so far if there is none.
        let next_event = {
            let mut c = self.reader().cursor(Cf::Events, &kc::group_end(self.g));
            c.seek(&kc::event_key(self.g, RevisionPair::new(revision + 1, 0)));
            c.next_entry()?
        };
        let compacted_bytes = match next_event {
            Some((_, v)) => StoredEvent::decode(&v)?.history_bytes_before,
            None => self.meta.history_bytes_written,
        };
        assert!(
            compacted_bytes >= self.meta.history_bytes_compacted,
            "history bytes at compact revision went backwards: {compacted_bytes} < {}",
            self.meta.history_bytes_compacted
        );
        self.meta.compact_revision = revision;
        self.meta.history_bytes_compacted = compacted_bytes;
        Ok(CompactResponse { revision: self.meta.current_revision })
    }
}

/// Reads the finished compact revision of `g` (-1 if none).
pub(crate) fn finished_revision(r: &Reader<'_>, g: GroupId) -> Result<Revision> {
    meta_revision(r, &kc::meta_compact_key(g), "finished compact revision")
}

/// Reads the target of the newest purge of `g` that wrote anything, finished or not (-1 if
/// none): below it, history may be partly purged.
pub(crate) fn started_revision(r: &Reader<'_>, g: GroupId) -> Result<Revision> {
    meta_revision(r, &kc::meta_purge_key(g), "started purge revision")
}

/// A revision the purge records under meta `key` (-1 if none).
fn meta_revision(r: &Reader<'_>, key: &[u8], what: &str) -> Result<Revision> {
    match r.get(Cf::Meta, key)? {
        Some(v) => Ok(engine::be_u64(&v, what)? as i64),
        None => Ok(-1),
    }
}

/// Phase 2 for group `g` at revision `target`. `should_stop` is polled between batches.
pub(crate) fn purge(
    db: &rocksdb::DB,
    g: GroupId,
    target: Revision,
    batch_keys: usize,
    should_stop: &dyn Fn() -> bool,
) -> Result<bool> {
    assert!(target >= 1, "purge target must be a real revision: {target}");
    assert!(batch_keys > 0, "compaction batch must be non-empty");
    let wo = engine::write_options();
    let (events, gone) = (engine::cf(db, Cf::Events), engine::cf(db, Cf::Gone));
    let upper = kc::event_key(g, RevisionPair::new(target + 1, 0));
    // From the last finished purge's revision, not past it: a delete kept there (it was at
    // exactly that purge's R) goes now.
    let from = finished_revision(&Reader::latest(db), g)?.max(0);
    let mut resume = kc::event_key(g, RevisionPair::new(from, 0));
    let mut resumed = false;
    loop {
        if should_stop() {
            return Ok(false);
        }
        let reader = Reader::latest(db);
        let mut c = reader.cursor(Cf::Events, &upper);
        c.seek(&resume);
        let mut batch = WriteBatch::default();
        let mut examined = 0;
        let mut last = None;
        while examined < batch_keys {
            let Some((k, v)) = c.next_entry()? else { break };
            if resumed && k == resume {
                continue;
            }
            examined += 1;
            let rev = kc::decode_event_key(&k).ok_or_else(|| Error::Corruption("event key in purge".into()))?;
            let ev = StoredEvent::decode(&v)?;
            // The version this change replaced is no longer its key's newest at or below
            // the target, unless it is at exactly the target.
            if let Some(prev) = ev.prev.filter(|p| p.main < target) {
                batch.delete_cf(events, kc::event_key(g, prev));
            }
            if ev.kind == EventKind::Delete && rev.main < target {
                batch.delete_cf(events, &k);
                batch.delete_cf(gone, kc::gone_key(g, ev.key, rev));
            }
            last = Some(k);
        }
        let done = last.is_none() || examined < batch_keys;
        // Ordering: the target is in the same atomic batch as the deletes, so whoever reads
        // the group's state (an export, a snapshot and its receiver) and finds a delete done
        // finds the target too, even when the purge stops or fails before it finishes.
        batch.put_cf(engine::cf(db, Cf::Meta), kc::meta_purge_key(g), (target as u64).to_be_bytes());
        if done {
            batch.put_cf(engine::cf(db, Cf::Meta), kc::meta_compact_key(g), (target as u64).to_be_bytes());
        }
        // Ordering: each batch is atomic (atomic flush, `engine.rs`), and a crash before the
        // finished revision is written redoes the walk from the last one; every delete here
        // is of a record no reader at or above the target needs, so doing it twice is safe.
        db.write_opt(batch, &wo)?;
        if done {
            return Ok(true);
        }
        resume = last.expect("not done: a record was examined");
        resumed = true;
    }
}
