//! The per-group watcher registry and its two feeds (apply and catch-up).
//!
//! Lock order: hub state, then a stream queue. Publication, catch-up hand-over and progress
//! all hold the hub lock while queueing, which is what orders them on a stream.
//!
//! Invariants (checked by `check_invariants` in tests): `unsynced` counts the unsynced
//! watchers; a synced watcher has `next_revision > current`; an unsynced one has
//! `next_revision <= current`, or is waiting for a full queue.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rocksdb::DB;

use super::queue::StreamQueue;
use super::{WatchEvent, WatchSpec};
use crate::engine::Reader;
use crate::error::{Error, Result};
use crate::key_codec::{self as kc, Cf};
use crate::kv::{Event, EventKind, KeyValue, StoredEvent};
use crate::mvcc::{self, KeyRange};
use crate::revision::{GroupId, Revision, RevisionPair};
use crate::signal::Signal;

/// Catch-up responses hold whole revisions and at most this many events (one revision
/// larger than this is sent alone).
const CATCH_UP_EVENTS_PER_RESPONSE_MAX: usize = 1000;
/// The sync thread reads at most this many revisions while holding the hub lock, to move
/// a caught-up watcher to the synced set.
const SYNC_TAIL_REVISIONS_MAX: i64 = 64;

struct Watcher {
    range: KeyRange,
    spec: WatchSpec,
    /// Every matching event below this revision has been queued.
    next_revision: Revision,
    synced: bool,
    queue: Arc<StreamQueue>,
}

impl Watcher {
    fn wants(&self, ev: &Event) -> bool {
        self.range.contains(&ev.kv.key)
            && !(self.spec.no_put && ev.kind == EventKind::Put)
            && !(self.spec.no_delete && ev.kind == EventKind::Delete)
    }

    fn view(&self, ev: &Event) -> Event {
        Event { kind: ev.kind, kv: ev.kv.clone(), prev_kv: if self.spec.prev_kv { ev.prev_kv.clone() } else { None } }
    }
}

struct HubState {
    /// The last revision whose events have been published.
    current: Revision,
    /// Scheduled compact revision (-1 = never).
    compact: Revision,
    watchers: BTreeMap<(u64, i64), Watcher>,
    unsynced: usize,
    next_stream_id: u64,
    streams: BTreeMap<u64, Arc<StreamQueue>>,
}

pub(crate) struct Hub {
    group: GroupId,
    buffer: usize,
    state: Mutex<HubState>,
    sync_signal: Arc<Signal>,
}

impl Hub {
    pub fn new(group: GroupId, current: Revision, compact: Revision, buffer: usize, sync_signal: Arc<Signal>) -> Hub {
        Hub {
            group,
            buffer,
            state: Mutex::new(HubState {
                current,
                compact,
                watchers: BTreeMap::new(),
                unsynced: 0,
                next_stream_id: 0,
                streams: BTreeMap::new(),
            }),
            sync_signal,
        }
    }

    pub fn register_stream(&self) -> Arc<StreamQueue> {
        let mut st = self.state.lock();
        let id = st.next_stream_id;
        st.next_stream_id += 1;
        let q = Arc::new(StreamQueue::new(id, self.buffer));
        st.streams.insert(id, q.clone());
        q
    }

    pub fn remove_stream(&self, stream: u64) {
        let mut st = self.state.lock();
        let ids: Vec<_> = st.watchers.range((stream, i64::MIN)..=(stream, i64::MAX)).map(|(k, _)| *k).collect();
        for k in ids {
            let w = st.watchers.remove(&k).expect("listed above");
            if !w.synced {
                st.unsynced -= 1;
            }
        }
        if let Some(q) = st.streams.remove(&stream) {
            q.close();
        }
    }

    /// Closes every stream (the store is shutting down).
    pub fn close_all(&self) {
        let st = self.state.lock();
        for q in st.streams.values() {
            q.close();
        }
    }

    pub fn compact_revision(&self) -> Revision {
        self.state.lock().compact
    }

    pub fn has_unsynced(&self) -> bool {
        self.state.lock().unsynced > 0
    }

    pub fn add_watcher(&self, queue: &Arc<StreamQueue>, id: i64, spec: WatchSpec) {
        let mut st = self.state.lock();
        let created = WatchEvent { watch_id: id, revision: st.current, created: true, ..Default::default() };
        queue.push_control(created);
        let start = spec.start_revision;
        if start < 0 || (start != 0 && start < st.compact) {
            queue.push_control(WatchEvent {
                watch_id: id,
                revision: st.current,
                canceled: true,
                compact_revision: st.compact.max(1),
                ..Default::default()
            });
            return;
        }
        let next_revision = if start == 0 { st.current + 1 } else { start };
        let synced = next_revision > st.current;
        let range = KeyRange::new(&spec.key, &spec.range_end);
        st.watchers.insert((queue.id, id), Watcher { range, spec, next_revision, synced, queue: queue.clone() });
        if !synced {
            st.unsynced += 1;
            drop(st);
            self.sync_signal.notify();
        }
    }

    pub fn cancel(&self, queue: &Arc<StreamQueue>, id: i64) -> bool {
        let mut st = self.state.lock();
        let Some(w) = st.watchers.remove(&(queue.id, id)) else { return false };
        if !w.synced {
            st.unsynced -= 1;
        }
        queue.push_control(WatchEvent { watch_id: id, revision: st.current, canceled: true, ..Default::default() });
        true
    }

    pub fn progress_all(&self, queue: &Arc<StreamQueue>) -> bool {
        let st = self.state.lock();
        let all_synced = st
            .watchers
            .range((queue.id, i64::MIN)..=(queue.id, i64::MAX))
            .all(|(_, w)| w.synced && st.current >= w.spec.start_revision);
        all_synced && queue.push_bounded(WatchEvent { watch_id: -1, revision: st.current, ..Default::default() })
    }

    pub fn progress_one(&self, queue: &Arc<StreamQueue>, id: i64) -> bool {
        let st = self.state.lock();
        match st.watchers.get(&(queue.id, id)) {
            Some(w) if w.synced => {
                queue.push_bounded(WatchEvent { watch_id: id, revision: st.current, ..Default::default() })
            }
            _ => false,
        }
    }

    /// Feeds synced watchers with a committed batch's events, then advances `current`.
    /// Called after the batch is written to RocksDB.
    pub fn publish(&self, events: &[Event], current: Revision, compact: Revision) {
        let mut st = self.state.lock();
        assert!(current >= st.current, "published revision went backwards: {current} < {}", st.current);
        assert!(
            events.windows(2).all(|w| w[0].revision() <= w[1].revision()),
            "events must be published in revision order"
        );
        let mut fell_behind = 0;
        if !events.is_empty() {
            let by_revision: Vec<&[Event]> = events.chunk_by(|a, b| a.revision() == b.revision()).collect();
            for (key, w) in st.watchers.iter_mut().filter(|(_, w)| w.synced) {
                for evs in &by_revision {
                    let rev = evs[0].revision();
                    if rev < w.next_revision {
                        continue;
                    }
                    let mine: Vec<Event> = evs.iter().filter(|e| w.wants(e)).map(|e| w.view(e)).collect();
                    if mine.is_empty() {
                        continue;
                    }
                    let resp = WatchEvent { watch_id: key.1, revision: rev, events: mine, ..Default::default() };
                    if !w.queue.push_bounded(resp) {
                        // The stream is full: catch up from the events CF later.
                        w.synced = false;
                        w.next_revision = rev;
                        fell_behind += 1;
                        break;
                    }
                }
            }
        }
        for w in st.watchers.values_mut().filter(|w| w.synced) {
            w.next_revision = w.next_revision.max(current + 1);
        }
        st.unsynced += fell_behind;
        st.current = current;
        st.compact = compact;
        drop(st);
        if fell_behind > 0 {
            self.sync_signal.notify();
        }
    }

    /// After a snapshot install: everything is re-read from the installed data.
    pub fn reset(&self, current: Revision, compact: Revision) {
        let mut st = self.state.lock();
        st.current = current;
        st.compact = compact;
        let mut n = 0;
        for w in st.watchers.values_mut() {
            if w.synced && w.next_revision <= current {
                w.synced = false;
            }
            if !w.synced {
                n += 1;
            }
        }
        st.unsynced = n;
        drop(st);
        self.sync_signal.notify();
    }

    /// One catch-up pass (the sync thread). Returns true if watchers remain unsynced.
    pub fn sync_pass(&self, db: &DB, max_events: usize) -> Result<bool> {
        let snapshot;
        let (current, compact, work) = {
            let st = self.state.lock();
            if st.unsynced == 0 {
                return Ok(false);
            }
            // Taken under the lock: the compactor purges only below a compact revision that
            // was published before it started, so events >= `compact` are in this snapshot.
            snapshot = db.snapshot();
            let work: Vec<((u64, i64), Revision, bool)> = st
                .watchers
                .iter()
                .filter(|(_, w)| !w.synced)
                .map(|(k, w)| (*k, w.next_revision, w.spec.prev_kv))
                .collect();
            (st.current, st.compact, work)
        };
        let reader = Reader::at_snapshot(db, &snapshot);
        let readable: Vec<_> = work.iter().filter(|(_, next, _)| *next >= compact && *next <= current).collect();
        let want_prev = readable.iter().any(|(_, _, p)| *p);
        let (events, upto) = match readable.iter().map(|(_, next, _)| *next).min() {
            Some(from) => read_events(&reader, self.group, from, current, compact, max_events, want_prev)?,
            None => (Vec::new(), current),
        };

        let mut st = self.state.lock();
        let st = &mut *st;
        let tail_from = upto + 1;
        let tail = if st.current >= tail_from && st.current - upto <= SYNC_TAIL_REVISIONS_MAX && tail_from >= st.compact
        {
            // Under the hub lock no batch can be published meanwhile; events up to
            // `st.current` are already in RocksDB and above the compact revision.
            Some(read_events(&Reader::latest(db), self.group, tail_from, st.current, st.compact, usize::MAX, true)?.0)
        } else if st.current < tail_from {
            Some(Vec::new())
        } else {
            None
        };
        let mut caught_up = 0;
        for (key, next, _) in &work {
            let Some(w) = st.watchers.get_mut(key) else { continue };
            if w.synced || w.next_revision != *next {
                continue;
            }
            if w.next_revision < st.compact {
                let q = w.queue.clone();
                q.push_control(WatchEvent {
                    watch_id: key.1,
                    revision: st.current,
                    canceled: true,
                    compact_revision: st.compact,
                    ..Default::default()
                });
                st.watchers.remove(key);
                st.unsynced -= 1;
                continue;
            }
            if w.next_revision <= upto && !deliver(w, key.1, &events, upto) {
                continue;
            }
            if let Some(tail) = &tail {
                if w.next_revision >= tail_from && deliver(w, key.1, tail, st.current) {
                    w.next_revision = w.next_revision.max(st.current + 1);
                    w.synced = true;
                    caught_up += 1;
                }
            }
        }
        st.unsynced -= caught_up;
        Ok(st.unsynced > 0)
    }

    #[cfg(test)]
    pub fn check_invariants(&self) {
        let st = self.state.lock();
        let unsynced = st.watchers.values().filter(|w| !w.synced).count();
        assert_eq!(unsynced, st.unsynced, "unsynced count drifted");
        for w in st.watchers.values().filter(|w| w.synced) {
            assert!(w.next_revision > st.current, "synced watcher behind current");
        }
    }
}

/// Queues the events of `events` from `w.next_revision` on, in responses of whole
/// revisions, the last one carrying header `through`. On a full queue, stops at the first
/// unqueued revision and returns false.
fn deliver(w: &mut Watcher, watch_id: i64, events: &[Event], through: Revision) -> bool {
    let mine: Vec<Event> =
        events.iter().filter(|e| e.revision() >= w.next_revision && w.wants(e)).map(|e| w.view(e)).collect();
    let mut start = 0;
    while start < mine.len() {
        let mut end = start;
        while end < mine.len() {
            let rev = mine[end].revision();
            let mut rev_end = end;
            while rev_end < mine.len() && mine[rev_end].revision() == rev {
                rev_end += 1;
            }
            if end > start && rev_end - start > CATCH_UP_EVENTS_PER_RESPONSE_MAX {
                break;
            }
            end = rev_end;
        }
        let header = if end == mine.len() { through } else { mine[end - 1].revision() };
        let resp = WatchEvent { watch_id, revision: header, events: mine[start..end].to_vec(), ..Default::default() };
        if !w.queue.push_bounded(resp) {
            w.next_revision = mine[start].revision();
            return false;
        }
        w.next_revision = header + 1;
        start = end;
    }
    w.next_revision = w.next_revision.max(through + 1);
    true
}

/// Reads the stored events of revisions `[from, to]`, at most about `max_events` (whole
/// revisions). Returns them and the last revision fully read.
///
/// History at or below `compact` is what etcd's compaction leaves: the newest version ≤ R of
/// each key but no tombstone and nothing older. So, as etcd after a compaction, a DELETE at
/// the compact revision is not replayed, and an event whose previous version is below the
/// compact revision carries no `prev_kv` — whether or not the background purge has run yet.
fn read_events(
    r: &Reader<'_>,
    g: GroupId,
    from: Revision,
    to: Revision,
    compact: Revision,
    max_events: usize,
    want_prev: bool,
) -> Result<(Vec<Event>, Revision)> {
    let mut out: Vec<Event> = Vec::new();
    if from > to {
        return Ok((out, to));
    }
    let mut c = r.cursor(Cf::Events, &kc::event_key(g, RevisionPair::new(to + 1, 0)));
    c.seek(&kc::event_key(g, RevisionPair::new(from, 0)));
    let mut upto = to;
    while let Some((k, v)) = c.next_entry()? {
        let rev = kc::decode_event_key(&k).ok_or_else(|| Error::Corruption("event key".into()))?;
        if out.len() >= max_events && out.last().map(Event::revision) != Some(rev.main) {
            upto = out.last().expect("non-empty").revision();
            break;
        }
        let stored = StoredEvent::decode(&v)?;
        if stored.kind == EventKind::Delete && rev.main <= compact {
            continue;
        }
        let kv = match stored.kind {
            EventKind::Put => mvcc::get_version(r, g, &stored.key, rev)?.ok_or_else(|| {
                Error::Corruption(format!("event at {rev:?} has no history entry for {:?}", stored.key))
            })?,
            EventKind::Delete => KeyValue { key: stored.key.clone(), mod_revision: rev.main, ..Default::default() },
        };
        // etcd gives no prev_kv to create events (`create_revision == mod_revision`).
        let is_create = stored.kind == EventKind::Put && kv.create_revision == kv.mod_revision;
        let prev_kv = if want_prev && !is_create && rev.main > compact {
            mvcc::get_at(r, g, &stored.key, rev.main - 1)?
        } else {
            None
        };
        out.push(Event { kind: stored.kind, kv, prev_kv });
    }
    Ok((out, upto))
}
