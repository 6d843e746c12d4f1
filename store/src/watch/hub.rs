//! The per-group watcher registry and its two feeds (apply and catch-up).
//!
//! Lock order: hub state, then a stream queue. Publication, catch-up hand-over and progress
//! all hold the hub lock while queueing, which is what orders them on a stream.
//!
//! Invariants (checked by `check_invariants` in tests): `unsynced` counts the unsynced
//! watchers; a synced watcher has `next_revision > current`; an unsynced one has
//! `next_revision <= current`, or is waiting for a full queue.
//!
//! Catch-up fairness: a watcher whose queue is full is skipped by catch-up (as etcd's
//! "victims"), so a client that stops reading never pins the window that the others are
//! read from. Each pass reads one window of at most `watch_sync_batch_events` events and
//! [`SYNC_PASS_BYTES_MAX`] bytes, starting at the first ready watcher at or after where the
//! previous window ended (wrapping to the lowest): the windows sweep from the oldest
//! position to the newest, so every ready watcher is reached. Watchers within
//! [`SYNC_TAIL_REVISIONS_MAX`] of the current revision are caught up in every pass,
//! whatever the window. A watcher whose queue stays full for `watch_stuck_cancel_after`
//! is canceled (`slow`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use rocksdb::DB;

use super::queue::{self, StreamQueue, MERGE_BYTES_MAX, MERGE_EVENTS_MAX};
use super::{SharedEvent, WatchEvent, WatchSpec, AUTO_WATCH_ID};
use crate::config::StoreConfig;
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
/// Bytes (keys, values and previous values) one catch-up pass reads for a group at most,
/// besides the event budget: the window ends at the first revision boundary past either.
const SYNC_PASS_BYTES_MAX: usize = 16 << 20;

struct Watcher {
    range: KeyRange,
    spec: WatchSpec,
    /// Every matching event below this revision has been queued.
    next_revision: Revision,
    synced: bool,
    queue: Arc<StreamQueue>,
    /// Since when catch-up has found this unsynced watcher's queue full (its client is not
    /// reading); `None` while it has room.
    stuck_since: Option<Instant>,
}

impl Watcher {
    fn wants(&self, ev: &Event) -> bool {
        self.range.contains(&ev.kv.key)
            && !(self.spec.no_put && ev.kind == EventKind::Put)
            && !(self.spec.no_delete && ev.kind == EventKind::Delete)
    }

    /// The form of `ev` this watcher receives (a reference count, not a copy).
    fn view(&self, ev: &Forms) -> SharedEvent {
        if self.spec.prev_kv {
            ev.full.clone()
        } else {
            ev.bare.clone()
        }
    }

    /// Whether progress at `current` may be reported for this watcher: it is synced and the
    /// store has reached its start revision (a future start stays quiet until then, as
    /// etcd's `isWatcherSynced` / contract §3.13).
    fn progress_due(&self, current: Revision) -> bool {
        self.synced && current >= self.spec.start_revision
    }

    /// Whether catching up through `events` would give this watcher an event whose `prev_kv`
    /// it asked for but compaction at `compact` removed: an update at exactly the compact
    /// revision (its previous version lies below it). Such a watcher is canceled as
    /// compacted instead (contract §3.12): etcd sends the event with no `prev_kv`, which
    /// kube-apiserver turns into an error anyway, and which a client that relies on
    /// `prev_kv` cannot tell from a key that did not exist. Events are in revision order and
    /// none is below `compact` (older watchers were canceled first).
    fn needs_compacted_prev(&self, events: &[Forms], compact: Revision) -> bool {
        self.spec.prev_kv
            && self.next_revision <= compact
            && events.iter().take_while(|e| e.revision() <= compact).any(|e| {
                e.revision() >= self.next_revision && !is_create(e.full.kind, &e.full.kv) && self.wants(&e.full)
            })
    }
}

/// A put that created its key: etcd gives such an event no `prev_kv`; every other event (an
/// update, any delete) has a previous version.
fn is_create(kind: EventKind, kv: &KeyValue) -> bool {
    kind == EventKind::Put && kv.create_revision == kv.mod_revision
}

/// One event in the two forms watchers receive, each built once and shared by every watcher
/// that receives it: with its `prev_kv`, and without (for watchers that did not ask for it).
struct Forms {
    full: SharedEvent,
    bare: SharedEvent,
}

impl Forms {
    fn of(event: Event) -> Forms {
        let full = SharedEvent::new(event);
        let bare = if full.prev_kv.is_some() {
            SharedEvent::new(Event { kind: full.kind, kv: full.kv.clone(), prev_kv: None })
        } else {
            full.clone()
        };
        Forms { full, bare }
    }

    fn revision(&self) -> Revision {
        self.full.revision()
    }
}

struct HubState {
    /// The last revision whose events have been published.
    current: Revision,
    /// Scheduled compact revision (-1 = never).
    compact: Revision,
    watchers: BTreeMap<(u64, i64), Watcher>,
    /// Ids of watchers the hub canceled (compacted history, an import, a stuck stream): as in
    /// etcd, each stays taken until the client cancels it or its stream closes, and that
    /// cancel is answered. At most one per watcher a stream created.
    retired: BTreeSet<(u64, i64)>,
    unsynced: usize,
    /// Where the next catch-up window starts looking for a ready watcher (the revision after
    /// the previous window).
    sync_cursor: Revision,
    next_stream_id: u64,
    streams: BTreeMap<u64, Arc<StreamQueue>>,
    /// The group is being imported: its events are not a history anyone may follow, so a
    /// new watcher is canceled at once as compacted (see `import`).
    importing: bool,
}

impl HubState {
    /// Whether a watcher of the stream has the id, or had it until the hub canceled it and
    /// the client has not canceled it since.
    fn taken(&self, key: (u64, i64)) -> bool {
        self.watchers.contains_key(&key) || self.retired.contains(&key)
    }

    /// Removes an unsynced watcher and queues its cancel as compacted at `compact`, behind
    /// whatever it already has queued (etcd's `{compact_revision, canceled}`).
    fn cancel_compacted(&mut self, key: (u64, i64)) {
        let w = self.watchers.remove(&key).expect("a listed watcher");
        self.retired.insert(key);
        debug_assert!(!w.synced, "only a catching-up watcher can meet compacted history");
        w.queue.push_control(WatchEvent {
            watch_id: key.1,
            revision: self.current,
            canceled: true,
            compact_revision: self.compact,
            ..Default::default()
        });
        self.unsynced -= 1;
    }
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
                retired: BTreeSet::new(),
                unsynced: 0,
                sync_cursor: 0,
                next_stream_id: 0,
                streams: BTreeMap::new(),
                importing: false,
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
        let retired: Vec<_> = st.retired.range((stream, i64::MIN)..=(stream, i64::MAX)).copied().collect();
        for k in retired {
            st.retired.remove(&k);
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

    /// Watchers open on the group, synced or not.
    pub fn watcher_count(&self) -> usize {
        self.state.lock().watchers.len()
    }

    pub fn has_unsynced(&self) -> bool {
        self.state.lock().unsynced > 0
    }

    /// Adds a watcher of `queue`'s stream under `requested`, or, when that is
    /// [`AUTO_WATCH_ID`], under the first id from `next_auto` on that no watcher of the
    /// stream has (`next_auto` then moves past it). `None`, with nothing queued, when
    /// `requested` is taken. The id is picked and the watcher added under one lock.
    pub fn add_watcher(
        &self,
        queue: &Arc<StreamQueue>,
        requested: i64,
        next_auto: &AtomicI64,
        spec: WatchSpec,
    ) -> Option<i64> {
        let mut st = self.state.lock();
        let id = if requested == AUTO_WATCH_ID {
            let mut id = next_auto.load(Ordering::Relaxed);
            while st.taken((queue.id, id)) {
                id += 1;
            }
            next_auto.store(id + 1, Ordering::Relaxed);
            id
        } else if st.taken((queue.id, requested)) {
            return None;
        } else {
            requested
        };
        let created = WatchEvent { watch_id: id, revision: st.current, created: true, ..Default::default() };
        queue.push_control(created);
        let start = spec.start_revision;
        if st.importing {
            st.retired.insert((queue.id, id));
            queue.push_control(WatchEvent {
                watch_id: id,
                revision: st.current,
                canceled: true,
                compact_revision: st.current.max(1),
                ..Default::default()
            });
            return Some(id);
        }
        if start < 0 || (start != 0 && start < st.compact) {
            st.retired.insert((queue.id, id));
            queue.push_control(WatchEvent {
                watch_id: id,
                revision: st.current,
                canceled: true,
                compact_revision: st.compact.max(1),
                ..Default::default()
            });
            return Some(id);
        }
        let next_revision = if start == 0 { st.current + 1 } else { start };
        let synced = next_revision > st.current;
        let range = KeyRange::new(&spec.key, &spec.range_end);
        let w = Watcher { range, spec, next_revision, synced, queue: queue.clone(), stuck_since: None };
        st.watchers.insert((queue.id, id), w);
        if !synced {
            st.unsynced += 1;
            drop(st);
            self.sync_signal.notify();
        }
        Some(id)
    }

    pub fn cancel(&self, queue: &Arc<StreamQueue>, id: i64) -> bool {
        let mut st = self.state.lock();
        match st.watchers.remove(&(queue.id, id)) {
            Some(w) if !w.synced => st.unsynced -= 1,
            Some(_) => {}
            // A watcher the hub canceled: its id is free again, and the cancel is answered.
            None if st.retired.remove(&(queue.id, id)) => {}
            None => return false,
        }
        queue.push_control(WatchEvent { watch_id: id, revision: st.current, canceled: true, ..Default::default() });
        true
    }

    pub fn progress_all(&self, queue: &Arc<StreamQueue>) -> bool {
        let st = self.state.lock();
        let all_synced =
            st.watchers.range((queue.id, i64::MIN)..=(queue.id, i64::MAX)).all(|(_, w)| w.progress_due(st.current));
        all_synced && queue.push_bounded(WatchEvent { watch_id: -1, revision: st.current, ..Default::default() })
    }

    pub fn progress_one(&self, queue: &Arc<StreamQueue>, id: i64) -> bool {
        let st = self.state.lock();
        match st.watchers.get(&(queue.id, id)) {
            Some(w) if w.progress_due(st.current) => {
                queue.push_bounded(WatchEvent { watch_id: id, revision: st.current, ..Default::default() })
            }
            _ => false,
        }
    }

    /// Feeds synced watchers with a committed batch's events, then advances `current`.
    /// Called after the batch is written to RocksDB.
    pub fn publish(&self, events: Vec<Event>, current: Revision, compact: Revision) {
        let mut st = self.state.lock();
        assert!(current >= st.current, "published revision went backwards: {current} < {}", st.current);
        assert!(
            events.windows(2).all(|w| w[0].revision() <= w[1].revision()),
            "events must be published in revision order"
        );
        let mut fell_behind = 0;
        // Built only when a synced watcher may want them: a group nobody watches pays nothing.
        if !events.is_empty() && st.watchers.len() > st.unsynced {
            let forms: Vec<Forms> = events.into_iter().map(Forms::of).collect();
            // Watchers are ordered by stream: each stream's responses are queued together,
            // under one lock of its queue and with one wake-up of its writer.
            let mut refused: Vec<((u64, i64), Revision)> = Vec::new();
            let mut push = |q: &StreamQueue, batch: Vec<WatchEvent>| {
                refused.extend(q.push_live_batch(batch).into_iter().map(|(id, rev)| ((q.id, id), rev)));
            };
            let mut batch: Vec<WatchEvent> = Vec::new();
            let mut batch_queue: Option<&Arc<StreamQueue>> = None;
            for (key, w) in st.watchers.iter().filter(|(_, w)| w.synced) {
                if let Some(q) = batch_queue.filter(|q| q.id != key.0) {
                    push(q, std::mem::take(&mut batch));
                }
                batch_queue = Some(&w.queue);
                live_responses(w, key.1, &forms, &mut batch);
            }
            if let Some(q) = batch_queue {
                push(q, batch);
            }
            for (key, rev) in refused {
                // The stream is full: catch up from the events CF later.
                let w = st.watchers.get_mut(&key).expect("a watcher queued to above");
                w.synced = false;
                w.next_revision = rev;
                fell_behind += 1;
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

    /// An import began (`importing`) or finished: every watcher of the group is canceled as
    /// compacted at `compact_revision` (its data was wiped or replaced), so each client
    /// relists, and until the import finishes new watchers are canceled the same way.
    pub fn import_edge(&self, importing: bool, compact_revision: Revision) {
        let mut st = self.state.lock();
        st.importing = importing;
        let current = st.current;
        for (key, w) in std::mem::take(&mut st.watchers) {
            st.retired.insert(key);
            w.queue.push_control(WatchEvent {
                watch_id: key.1,
                revision: current,
                canceled: true,
                compact_revision,
                ..Default::default()
            });
        }
        st.unsynced = 0;
    }

    /// A snapshot installed a group that is not being imported.
    pub fn set_not_importing(&self) {
        self.state.lock().importing = false;
    }

    /// One catch-up pass (the sync thread). Returns true if a watcher that can take
    /// responses is still behind (run again soon); false when the remaining unsynced
    /// watchers, if any, all have full queues (back off to the sync interval).
    pub fn sync_pass(&self, db: &DB, cfg: &StoreConfig) -> Result<bool> {
        let snapshot;
        let (current, compact, window) = {
            let st = self.state.lock();
            if st.unsynced == 0 {
                return Ok(false);
            }
            // Taken under the lock: the compactor purges only below a compact revision that
            // was published before it started, so events >= `compact` are in this snapshot.
            snapshot = db.snapshot();
            // Watchers with a full queue cannot take anything: leaving them out is what keeps
            // a client that stopped reading from holding the window back for the others.
            let ready: Vec<((u64, i64), Revision, bool)> = st
                .watchers
                .iter()
                .filter(|(_, w)| {
                    !w.synced && !w.queue.is_full() && w.next_revision >= st.compact && w.next_revision <= st.current
                })
                .map(|(k, w)| (*k, w.next_revision, w.spec.prev_kv))
                .collect();
            let start = ready
                .iter()
                .map(|(_, next, _)| *next)
                .filter(|next| *next >= st.sync_cursor)
                .min()
                .or_else(|| ready.iter().map(|(_, next, _)| *next).min());
            (st.current, st.compact, start.map(|from| (from, ready)))
        };
        let (events, from, upto, ready) = match window {
            Some((from, ready)) => {
                let want_prev = ready.iter().any(|(_, next, prev)| *next >= from && *prev);
                let reader = Reader::at_snapshot(db, &snapshot);
                let (events, upto) = read_events(
                    &reader,
                    self.group,
                    from,
                    current,
                    compact,
                    ReadBudget { events: cfg.watch_sync_batch_events, bytes: SYNC_PASS_BYTES_MAX },
                    want_prev,
                )?;
                (events.into_iter().map(Forms::of).collect(), from, upto, ready)
            }
            None => (Vec::new(), current + 1, current, Vec::new()),
        };
        drop(snapshot);

        let mut st = self.state.lock();
        let st = &mut *st;
        // Compacted: a watcher whose next revision fell below the compact revision.
        let below: Vec<(u64, i64)> =
            st.watchers.iter().filter(|(_, w)| !w.synced && w.next_revision < st.compact).map(|(k, _)| *k).collect();
        for key in below {
            st.cancel_compacted(key);
        }
        // The window: only watchers whose next revision lies inside it, so none skips the
        // events between its next revision and the window's start.
        for (key, next, _) in &ready {
            let Some(w) = st.watchers.get_mut(key) else { continue };
            if w.synced || w.next_revision != *next || *next < from || *next > upto {
                continue;
            }
            if w.needs_compacted_prev(&events, st.compact) {
                st.cancel_compacted(*key);
                continue;
            }
            deliver(w, key.1, &events, upto);
        }
        if upto >= from {
            st.sync_cursor = upto + 1;
        }
        // The tail: every unsynced watcher within SYNC_TAIL_REVISIONS_MAX of the current
        // revision is caught up and moved to the synced set. Read under the hub lock, so no
        // batch is published meanwhile; events up to `st.current` are in RocksDB and, from
        // `st.compact` on, not purged.
        let near: Vec<(u64, i64)> = st
            .watchers
            .iter()
            .filter(|(_, w)| !w.synced && st.current - w.next_revision < SYNC_TAIL_REVISIONS_MAX)
            .map(|(k, _)| *k)
            .collect();
        let mut caught_up = 0;
        if let Some(tail_from) = near.iter().filter_map(|k| st.watchers.get(k)).map(|w| w.next_revision).min() {
            let tail = if tail_from <= st.current {
                let latest = Reader::latest(db);
                // Bounded by SYNC_TAIL_REVISIONS_MAX revisions rather than by a budget.
                let all = ReadBudget { events: usize::MAX, bytes: usize::MAX };
                let events = read_events(&latest, self.group, tail_from, st.current, st.compact, all, true)?.0;
                events.into_iter().map(Forms::of).collect()
            } else {
                Vec::new()
            };
            for key in &near {
                let w = st.watchers.get_mut(key).expect("listed above");
                if w.needs_compacted_prev(&tail, st.compact) {
                    st.cancel_compacted(*key);
                    continue;
                }
                if deliver(w, key.1, &tail, st.current) {
                    w.next_revision = w.next_revision.max(st.current + 1);
                    w.synced = true;
                    w.stuck_since = None;
                    caught_up += 1;
                }
            }
        }
        st.unsynced -= caught_up;
        // Stuck: still unsynced with a full queue. Canceled past the limit, so that a client
        // that stopped reading stops costing catch-up work and holding its buffer; the
        // client sees `canceled` (behind what it already has) and re-watches.
        let now = Instant::now();
        let mut stuck = Vec::new();
        let mut more = false;
        for (key, w) in st.watchers.iter_mut().filter(|(_, w)| !w.synced) {
            if w.queue.is_full() {
                let since = *w.stuck_since.get_or_insert(now);
                if now.duration_since(since) >= cfg.watch_stuck_cancel_after {
                    stuck.push(*key);
                }
            } else {
                w.stuck_since = None;
                more |= w.next_revision <= st.current;
            }
        }
        for key in stuck {
            let w = st.watchers.remove(&key).expect("listed above");
            st.retired.insert(key);
            tracing::warn!(
                group = self.group.0,
                watch_id = key.1,
                next_revision = w.next_revision,
                "watcher canceled: its stream stayed full for {:?}",
                cfg.watch_stuck_cancel_after
            );
            w.queue.push_control(WatchEvent {
                watch_id: key.1,
                revision: st.current,
                canceled: true,
                slow: true,
                ..Default::default()
            });
            st.unsynced -= 1;
        }
        Ok(more)
    }

    #[cfg(test)]
    pub fn check_invariants(&self) {
        let st = self.state.lock();
        let unsynced = st.watchers.values().filter(|w| !w.synced).count();
        assert_eq!(unsynced, st.unsynced, "unsynced count drifted");
        for w in st.watchers.values().filter(|w| w.synced) {
            assert!(w.next_revision > st.current, "synced watcher behind current");
        }
        assert!(st.retired.iter().all(|k| !st.watchers.contains_key(k)), "a retired id has a watcher");
        assert!(st.retired.iter().all(|(stream, _)| st.streams.contains_key(stream)), "a closed stream's id retired");
    }
}

/// Appends to `out` the live responses of a synced watcher for a publication's events: its
/// events from `w.next_revision` on, in responses of whole revisions, each holding at most
/// [`MERGE_EVENTS_MAX`] events and [`MERGE_BYTES_MAX`] bytes (a larger revision alone), with
/// the header revision of its last event, as the queue would merge them one revision at a
/// time.
fn live_responses(w: &Watcher, watch_id: i64, events: &[Forms], out: &mut Vec<WatchEvent>) {
    let mut mine: Vec<SharedEvent> = Vec::new();
    let mut bytes = 0;
    // Events and bytes of `mine` up to the end of its last whole revision.
    let mut whole = (0, 0);
    for e in events.iter().filter(|e| e.revision() >= w.next_revision && w.wants(&e.full)) {
        let rev = e.revision();
        if mine.last().is_some_and(|last| last.revision() != rev) {
            whole = (mine.len(), bytes);
        }
        let event = w.view(e);
        let size = queue::event_size(&event);
        if whole.0 > 0 && (mine.len() + 1 > MERGE_EVENTS_MAX || bytes + size > MERGE_BYTES_MAX) {
            // This revision no longer fits: the whole revisions before it are a response.
            let rest = mine.split_off(whole.0);
            let revision = mine.last().expect("non-empty").revision();
            out.push(WatchEvent { watch_id, revision, events: mine, ..Default::default() });
            mine = rest;
            bytes -= whole.1;
            whole = (0, 0);
        }
        bytes += size;
        mine.push(event);
    }
    if let Some(last) = mine.last() {
        let revision = last.revision();
        out.push(WatchEvent { watch_id, revision, events: mine, ..Default::default() });
    }
}

/// Queues the events of `events` from `w.next_revision` on, in responses of whole
/// revisions, the last one carrying header `through`. On a full queue, stops at the first
/// unqueued revision and returns false.
fn deliver(w: &mut Watcher, watch_id: i64, events: &[Forms], through: Revision) -> bool {
    let mine: Vec<SharedEvent> =
        events.iter().filter(|e| e.revision() >= w.next_revision && w.wants(&e.full)).map(|e| w.view(e)).collect();
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

/// How much one `read_events` call may read: it stops at the first revision boundary past
/// either limit.
#[derive(Clone, Copy)]
struct ReadBudget {
    events: usize,
    bytes: usize,
}

/// Reads the stored events of revisions `[from, to]`, within `budget` (whole revisions: the
/// first revision is always read whole). Returns them and the last revision fully read.
///
/// History at or below `compact` is what the purge leaves (see `compact.rs`): the newest
/// version ≤ R of each key and no tombstone below R. So, as etcd after a compaction, a
/// DELETE at the compact revision is not replayed, nor a PUT at it that a DELETE at it
/// superseded (etcd keeps nothing of a key whose newest change ≤ R is a delete), and an
/// update at exactly the compact
/// revision gets no `prev_kv` (a watcher that asked for it is canceled as compacted, see
/// [`Watcher::needs_compacted_prev`]). Either way the answer is the same whether or not the
/// purge has run yet.
fn read_events(
    r: &Reader<'_>,
    g: GroupId,
    from: Revision,
    to: Revision,
    compact: Revision,
    budget: ReadBudget,
    want_prev: bool,
) -> Result<(Vec<Event>, Revision)> {
    let mut out: Vec<Event> = Vec::new();
    if from > to {
        return Ok((out, to));
    }
    let mut c = r.cursor(Cf::Events, &kc::event_key(g, RevisionPair::new(to + 1, 0)));
    c.seek(&kc::event_key(g, RevisionPair::new(from, 0)));
    let mut upto = to;
    let mut bytes = 0usize;
    while let Some((k, v)) = c.next_entry()? {
        let rev = kc::decode_event_key(&k).ok_or_else(|| Error::Corruption("event key".into()))?;
        if (out.len() >= budget.events || bytes >= budget.bytes) && out.last().map(Event::revision) != Some(rev.main) {
            upto = out.last().expect("non-empty").revision();
            break;
        }
        let stored = StoredEvent::decode(&v)?;
        if stored.kind == EventKind::Delete && rev.main <= compact {
            // A key put and then deleted within the compact revision itself (two nested
            // txns of one txn) has a delete as its newest change at or below it, so etcd's
            // compaction keeps nothing of the key at that revision: its put is not replayed
            // either. The put was read just before, in this pass: the compact revision is
            // the first one a catch-up reads, and the first revision is read whole.
            if rev.main == compact && stored.prev.is_some_and(|p| p.main == compact) {
                out.retain(|e| {
                    let superseded = e.revision() == compact && e.kv.key[..] == *stored.key;
                    if superseded {
                        bytes -= queue::event_size(e);
                    }
                    !superseded
                });
            }
            continue;
        }
        let kv = stored.event_kv(rev.main)?;
        // Only events at or above `compact` are ever read (a watch below it is refused as
        // compacted); the version before an event at exactly `compact` is compacted history.
        let prev_kv = if want_prev && !is_create(stored.kind, &kv) && rev.main > compact {
            mvcc::version_at(r, g, stored.key, stored.prev, rev.main - 1)?
        } else {
            None
        };
        let event = Event { kind: stored.kind, kv, prev_kv };
        bytes += queue::event_size(&event);
        out.push(event);
    }
    Ok((out, upto))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn put(key: &'static str, revision: Revision, value_len: usize) -> Event {
        let kv = KeyValue {
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::from(vec![b'v'; value_len]),
            create_revision: 1,
            mod_revision: revision,
            version: 1,
            lease: 0,
        };
        Event { kind: EventKind::Put, kv, prev_kv: None }
    }

    fn spec(key: &'static str, range_end: &'static str) -> WatchSpec {
        WatchSpec {
            key: Bytes::from_static(key.as_bytes()),
            range_end: Bytes::from_static(range_end.as_bytes()),
            ..Default::default()
        }
    }

    fn drain(q: &StreamQueue) -> Vec<(i64, Revision, Vec<Revision>)> {
        std::iter::from_fn(|| q.try_pop())
            .filter(|r| !r.created)
            .map(|r| (r.watch_id, r.revision, r.events.iter().map(|e| e.revision()).collect()))
            .collect()
    }

    #[test]
    fn a_publication_gives_each_watcher_one_response_of_whole_revisions() {
        let hub = Hub::new(GroupId(1), 4, 0, 16, Arc::default());
        let q = hub.register_stream();
        hub.add_watcher(&q, 0, &AtomicI64::default(), spec("a", ""));
        hub.add_watcher(&q, 1, &AtomicI64::default(), spec("a", "c"));
        hub.add_watcher(&q, 2, &AtomicI64::default(), spec("z", ""));
        hub.publish(vec![put("a", 5, 1), put("b", 5, 1), put("b", 6, 1), put("a", 7, 1)], 8, 0);
        assert_eq!(drain(&q), vec![(0, 7, vec![5, 7]), (1, 7, vec![5, 5, 6, 7])]);
        hub.check_invariants();
    }

    #[test]
    fn live_responses_end_at_a_revision_boundary_within_the_merge_limits() {
        let hub = Hub::new(GroupId(1), 0, 0, 16, Arc::default());
        let q = hub.register_stream();
        hub.add_watcher(&q, 0, &AtomicI64::default(), spec("a", "\0"));
        // Three events a revision: the first response holds the whole revisions that fit in
        // MERGE_EVENTS_MAX events.
        let revisions = MERGE_EVENTS_MAX as i64 / 3 + 2;
        let events: Vec<Event> =
            (1..=revisions).flat_map(|r| [put("a", r, 1), put("b", r, 1), put("c", r, 1)]).collect();
        hub.publish(events, revisions, 0);
        let got = drain(&q);
        let full = MERGE_EVENTS_MAX as i64 / 3;
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].1, got[0].2.len()), (full, 3 * full as usize));
        assert_eq!((got[1].1, got[1].2.len()), (revisions, 3 * (revisions - full) as usize));
        // By bytes: a revision larger than MERGE_BYTES_MAX goes alone, whole.
        let big = MERGE_BYTES_MAX / 2 + 1;
        let from = revisions + 1;
        hub.publish(
            vec![put("a", from, 10), put("a", from + 1, big), put("b", from + 1, big), put("a", from + 2, 10)],
            from + 2,
            0,
        );
        let got = drain(&q);
        let shape: Vec<(Revision, Vec<Revision>)> = got.into_iter().map(|(_, r, e)| (r, e)).collect();
        assert_eq!(shape, vec![(from, vec![from]), (from + 1, vec![from + 1, from + 1]), (from + 2, vec![from + 2])]);
        hub.check_invariants();
    }

    #[test]
    fn a_watcher_refused_by_its_full_stream_falls_behind_from_its_first_unqueued_revision() {
        let hub = Hub::new(GroupId(1), 4, 0, 1, Arc::default());
        let q = hub.register_stream();
        let other = hub.register_stream();
        hub.add_watcher(&q, 0, &AtomicI64::default(), spec("a", ""));
        hub.add_watcher(&q, 1, &AtomicI64::default(), spec("b", ""));
        hub.add_watcher(&other, 0, &AtomicI64::default(), spec("b", ""));
        hub.publish(vec![put("a", 5, 1), put("b", 6, 1), put("b", 7, 1)], 7, 0);
        // Watcher 0 took the stream's only slot; watcher 1 is refused and will catch up from
        // revision 6; the other stream is not affected.
        assert_eq!(drain(&other), vec![(0, 7, vec![6, 7])]);
        assert_eq!(drain(&q), vec![(0, 5, vec![5])]);
        let st = hub.state.lock();
        let behind = &st.watchers[&(q.id, 1)];
        assert!(!behind.synced);
        assert_eq!(behind.next_revision, 6);
        assert_eq!(st.unsynced, 1);
        drop(st);
        hub.check_invariants();
    }
}
