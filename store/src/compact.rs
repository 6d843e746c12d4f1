//! Compaction in two phases, like etcd's scheduled/finished compact revisions.
//!
//! 1. **Schedule** (in `apply`, deterministic): `Compact{R}` checks `compact < R <= current`,
//!    records `compact_revision = R` and the quota's `history_bytes_compacted` in the group
//!    meta of the apply batch. From then on reads below R fail with `Compacted`, on every
//!    replica at the same log index.
//! 2. **Purge** (a background thread, resumable): walks the group's `history` CF in batches
//!    of `compaction_batch_keys` entries, deletes versions that no read at `>= R` and no
//!    watch from `>= R` can need, drops `events` below R with one range delete, then
//!    records the finished revision (`meta g|'c'`). Applies and reads never wait for it.
//!    After a restart the thread resumes any group whose finished revision is behind.
//!
//! What a purge at R keeps, per key, with `n` = its newest version `<= R`:
//! - every version newer than R;
//! - `n` if it is a put, or if `n` is at exactly R (a put or a tombstone).
//!
//! Everything else at or below R goes. So reads at R see the same data as before, and a
//! watch starting at R can fill `prev_kv` for every event after R. An update at exactly R
//! has its previous version below R: a watcher that would need it is canceled as compacted
//! (see the watch hub), as etcd's read of it at R - 1 fails.

use rocksdb::WriteBatch;

use crate::engine::{self, Reader};
use crate::error::{Error, Result};
use crate::key_codec::{self as kc, Cf};
use crate::kv::StoredEvent;
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
    match r.get(Cf::Meta, &kc::meta_compact_key(g))? {
        Some(v) => Ok(engine::be_u64(&v, "finished compact revision")? as i64),
        None => Ok(-1),
    }
}

/// Per-key progress of the purge walk.
enum KeyPhase {
    /// Only versions newer than R seen so far.
    Newer,
    /// Everything further down this key goes.
    Drop,
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
    let upper = kc::group_end(g);
    let mut resume: Option<Vec<u8>> = None;
    let mut cur_key: Option<Vec<u8>> = None;
    let mut phase = KeyPhase::Newer;
    loop {
        if should_stop() {
            return Ok(false);
        }
        let reader = Reader::latest(db);
        let mut c = reader.cursor(Cf::History, &upper);
        c.seek(resume.as_deref().unwrap_or(&kc::group_prefix(g)));
        let mut batch = WriteBatch::default();
        let history = engine::cf(db, Cf::History);
        let mut examined = 0;
        let mut last = None;
        while examined < batch_keys {
            let Some((k, v)) = c.next_entry()? else { break };
            if resume.as_deref() == Some(&k[..]) {
                continue;
            }
            examined += 1;
            let (user_key, rev) =
                kc::decode_history_key(&k).ok_or_else(|| Error::Corruption("history key in purge".into()))?;
            if cur_key.as_deref() != Some(&user_key[..]) {
                cur_key = Some(user_key);
                phase = KeyPhase::Newer;
            }
            let is_put = !v.is_empty();
            let keep = match phase {
                _ if rev.main > target => true,
                KeyPhase::Newer => {
                    phase = KeyPhase::Drop;
                    // A tombstone at exactly R stays: a read at R must not see the put below.
                    is_put || rev.main == target
                }
                KeyPhase::Drop => false,
            };
            if !keep {
                batch.delete_cf(history, &k);
            }
            last = Some(k);
        }
        let done = last.is_none() || examined < batch_keys;
        if done {
            // Events below R are never read again (watchers below R are canceled).
            let events = engine::cf(db, Cf::Events);
            batch.delete_range_cf(
                events,
                kc::event_key(g, RevisionPair::new(0, 0)),
                kc::event_key(g, RevisionPair::new(target, 0)),
            );
            batch.put_cf(engine::cf(db, Cf::Meta), kc::meta_compact_key(g), (target as u64).to_be_bytes());
        }
        db.write_opt(batch, &wo)?;
        if done {
            return Ok(true);
        }
        resume = last;
    }
}
