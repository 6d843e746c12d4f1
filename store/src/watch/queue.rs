//! The per-stream response queue: one producer side (the hub, under its lock) and one
//! consumer (the gRPC stream's single writer), blocking or async.
//!
//! Event and progress responses are **bounded** (`watch_stream_buffer`): when the queue is
//! full, the hub does not wait; the watcher falls back to catch-up from the `events` CF.
//! Control responses (created, canceled) are always queued: there are at most two per
//! watch request, so the client's own requests bound them.
//!
//! **Merging.** A live event response for a watcher whose previous response is still queued
//! and unread joins that response (its header revision moves to the newer one) instead of
//! taking a new slot, up to [`MERGE_EVENTS_MAX`] events and [`MERGE_BYTES_MAX`] bytes per
//! response, and [`QUEUED_EVENTS_PER_SLOT`] events per slot of the stream. A stream whose
//! client reads slower than events arrive then receives fewer, larger responses (as etcd's
//! catch-up sends) rather than falling back to catch-up from RocksDB; a stream that keeps up
//! never has anything to merge. Order is kept: a response joins only the *last* queued
//! response of its watcher (any other response of that watcher, a stream-wide progress
//! response, or the pop of that response ends the merging).

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rustc_hash::FxHashMap;

use super::WatchEvent;
use crate::kv::Event;
use crate::revision::Revision;

/// Events one merged response holds at most (as a catch-up response).
pub(crate) const MERGE_EVENTS_MAX: usize = 1000;
/// Bytes of keys and values one merged response holds at most (a single larger revision is
/// still queued whole, in its own response).
pub(crate) const MERGE_BYTES_MAX: usize = 1 << 20;
/// Events queued on a stream at most through merging, per slot of its buffer.
const QUEUED_EVENTS_PER_SLOT: usize = 16;

pub(crate) struct StreamQueue {
    pub id: u64,
    limit: usize,
    state: Mutex<QueueState>,
    cond: Condvar,
}

struct Item {
    ev: WatchEvent,
    /// Counts against the limit.
    bounded: bool,
    /// Position in the stream: `head_seq` is the first item's.
    seq: u64,
    /// Keys and values of its events (for `MERGE_BYTES_MAX`).
    bytes: usize,
}

/// What became of a pushed response.
enum Pushed {
    /// It took a new slot: the consumer must be woken.
    Queued,
    /// It joined its watcher's unread response.
    Merged,
    /// Full or closed: given back.
    Refused(WatchEvent),
}

struct QueueState {
    items: VecDeque<Item>,
    head_seq: u64,
    bounded: usize,
    /// Events in queued items.
    events: usize,
    /// Watch id → seq of its last queued item, while that item is a live event response
    /// that may take more events. (Fx hashing: watch ids are small integers this server
    /// assigns, never chosen by clients.)
    open: FxHashMap<i64, u64>,
    waker: Option<Waker>,
    closed: bool,
}

/// Keys and values of one event and its previous version: what [`MERGE_BYTES_MAX`] and a
/// catch-up pass's byte budget count.
pub(crate) fn event_size(e: &Event) -> usize {
    e.kv.key.len() + e.kv.value.len() + e.prev_kv.as_ref().map_or(0, |p| p.key.len() + p.value.len())
}

fn events_bytes(events: &[super::SharedEvent]) -> usize {
    events.iter().map(|e| event_size(e)).sum()
}

impl StreamQueue {
    pub fn new(id: u64, limit: usize) -> StreamQueue {
        assert!(limit > 0, "watch stream buffer must be > 0");
        StreamQueue {
            id,
            limit,
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                head_seq: 0,
                bounded: 0,
                events: 0,
                open: FxHashMap::default(),
                waker: None,
                closed: false,
            }),
            cond: Condvar::new(),
        }
    }

    fn push(&self, ev: WatchEvent, bounded: bool, mergeable: bool) -> bool {
        let mut st = self.state.lock();
        match self.push_locked(&mut st, ev, bounded, mergeable) {
            Pushed::Queued => {
                self.wake(st);
                true
            }
            Pushed::Merged => true,
            Pushed::Refused(_) => false,
        }
    }

    fn push_locked(&self, st: &mut QueueState, ev: WatchEvent, bounded: bool, mergeable: bool) -> Pushed {
        if st.closed {
            return Pushed::Refused(ev);
        }
        let bytes = events_bytes(&ev.events);
        if mergeable {
            if let Some(&seq) = st.open.get(&ev.watch_id) {
                let room = st.events + ev.events.len() <= self.limit * QUEUED_EVENTS_PER_SLOT;
                let at = (seq - st.head_seq) as usize;
                let item = &mut st.items[at];
                if room
                    && item.ev.events.len() + ev.events.len() <= MERGE_EVENTS_MAX
                    && item.bytes + bytes <= MERGE_BYTES_MAX
                {
                    // Still unread: the consumer was woken when it was queued.
                    debug_assert!(ev.revision >= item.ev.revision, "merged events go backwards");
                    let n = ev.events.len();
                    item.ev.revision = ev.revision;
                    item.ev.events.extend(ev.events);
                    item.bytes += bytes;
                    st.events += n;
                    return Pushed::Merged;
                }
            }
        }
        if bounded {
            if st.bounded >= self.limit {
                return Pushed::Refused(ev);
            }
            st.bounded += 1;
        }
        let seq = st.head_seq + st.items.len() as u64;
        // Whatever else is queued for a watcher ends its merging: it stays behind this item.
        if ev.watch_id == -1 {
            st.open.clear();
        } else if mergeable {
            st.open.insert(ev.watch_id, seq);
        } else {
            st.open.remove(&ev.watch_id);
        }
        st.events += ev.events.len();
        st.items.push_back(Item { ev, bounded, seq, bytes });
        Pushed::Queued
    }

    /// Wakes the consumer after something was queued (a merge needs no wake: the item it
    /// joined woke the consumer and is still unread).
    fn wake(&self, mut st: parking_lot::MutexGuard<'_, QueueState>) {
        let waker = st.waker.take();
        drop(st);
        self.cond.notify_one();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Queues an event or progress response; false if the buffer is full (or closed).
    pub fn push_bounded(&self, ev: WatchEvent) -> bool {
        self.push(ev, true, false)
    }

    /// Queues the live event responses of one publication for watchers of this stream, under
    /// one lock and with at most one wake-up: each joins its watcher's last queued response
    /// when that one is unread (see the module docs), or takes a slot of its own. Once a
    /// watcher's response is refused (the buffer is full, or closed), none of its later
    /// responses in `batch` is queued: returns each refused watcher with the revision of the
    /// first event it was not given, in `batch` order.
    pub fn push_live_batch(&self, batch: Vec<WatchEvent>) -> Vec<(i64, Revision)> {
        let mut refused: Vec<(i64, Revision)> = Vec::new();
        let mut st = self.state.lock();
        let mut queued = false;
        for ev in batch {
            if refused.iter().any(|(id, _)| *id == ev.watch_id) {
                continue;
            }
            match self.push_locked(&mut st, ev, true, true) {
                Pushed::Queued => queued = true,
                Pushed::Merged => {}
                Pushed::Refused(ev) => {
                    let first = ev.events.first().map_or(ev.revision, |e| e.revision());
                    refused.push((ev.watch_id, first));
                }
            }
        }
        if queued {
            self.wake(st);
        }
        refused
    }

    /// Queues a created/canceled response regardless of the buffer.
    pub fn push_control(&self, ev: WatchEvent) {
        self.push(ev, false, false);
    }

    pub fn close(&self) {
        self.state.lock().closed = true;
        self.cond.notify_all();
        if let Some(w) = self.state.lock().waker.take() {
            w.wake();
        }
    }

    fn pop_locked(st: &mut QueueState) -> Option<WatchEvent> {
        let item = st.items.pop_front()?;
        st.head_seq += 1;
        if item.bounded {
            st.bounded -= 1;
        }
        st.events -= item.ev.events.len();
        if st.open.get(&item.ev.watch_id) == Some(&item.seq) {
            st.open.remove(&item.ev.watch_id);
        }
        Some(item.ev)
    }

    pub fn try_pop(&self) -> Option<WatchEvent> {
        Self::pop_locked(&mut self.state.lock())
    }

    /// Waits for a response; `None` once closed and drained, or when `timeout` passes.
    pub fn pop_blocking(&self, timeout: Option<Duration>) -> Option<WatchEvent> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.state.lock();
        loop {
            if let Some(ev) = Self::pop_locked(&mut st) {
                return Some(ev);
            }
            if st.closed {
                return None;
            }
            match deadline {
                Some(d) => {
                    if self.cond.wait_until(&mut st, d).timed_out() {
                        return Self::pop_locked(&mut st);
                    }
                }
                None => self.cond.wait(&mut st),
            }
        }
    }

    pub fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        let mut st = self.state.lock();
        if let Some(ev) = Self::pop_locked(&mut st) {
            return Poll::Ready(Some(ev));
        }
        if st.closed {
            return Poll::Ready(None);
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether an event or progress response would be refused now.
    pub fn is_full(&self) -> bool {
        let st = self.state.lock();
        st.closed || st.bounded >= self.limit
    }

    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::kv::{EventKind, KeyValue};
    use crate::watch::SharedEvent;

    fn live(watch_id: i64, revision: i64) -> WatchEvent {
        let kv = KeyValue {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            mod_revision: revision,
            ..Default::default()
        };
        let events = vec![SharedEvent::new(Event { kind: EventKind::Put, kv, prev_kv: None })];
        WatchEvent { watch_id, revision, events, ..Default::default() }
    }

    fn push_live(q: &StreamQueue, ev: WatchEvent) -> bool {
        q.push_live_batch(vec![ev]).is_empty()
    }

    fn revisions(ev: &WatchEvent) -> Vec<i64> {
        ev.events.iter().map(|e| e.kv.mod_revision).collect()
    }

    #[test]
    fn unread_live_responses_of_a_watcher_merge() {
        let q = StreamQueue::new(0, 4);
        assert!(push_live(&q, live(1, 5)));
        assert!(push_live(&q, live(2, 5)));
        assert!(push_live(&q, live(1, 6)));
        assert!(push_live(&q, live(1, 7)));
        assert_eq!(q.len(), 2);
        let first = q.try_pop().unwrap();
        assert_eq!((first.watch_id, first.revision, revisions(&first)), (1, 7, vec![5, 6, 7]));
        // Once read, the next live response is a new one.
        assert!(push_live(&q, live(1, 8)));
        let second = q.try_pop().unwrap();
        assert_eq!((second.watch_id, revisions(&second)), (2, vec![5]));
        let third = q.try_pop().unwrap();
        assert_eq!((third.watch_id, third.revision, revisions(&third)), (1, 8, vec![8]));
        assert!(q.try_pop().is_none());
    }

    #[test]
    fn nothing_merges_past_another_response_of_the_watcher_or_a_stream_progress() {
        let q = StreamQueue::new(0, 16);
        assert!(push_live(&q, live(1, 5)));
        q.push_control(WatchEvent { watch_id: 1, revision: 5, canceled: true, ..Default::default() });
        assert!(push_live(&q, live(1, 6)));
        assert!(q.push_bounded(WatchEvent { watch_id: -1, revision: 6, ..Default::default() }));
        assert!(push_live(&q, live(1, 7)));
        assert!(q.push_bounded(live(1, 8)));
        assert!(push_live(&q, live(1, 9)));
        let order: Vec<(i64, i64, bool, Vec<i64>)> =
            std::iter::from_fn(|| q.try_pop()).map(|e| (e.watch_id, e.revision, e.canceled, revisions(&e))).collect();
        assert_eq!(
            order,
            vec![
                (1, 5, false, vec![5]),
                (1, 5, true, vec![]),
                (1, 6, false, vec![6]),
                (-1, 6, false, vec![]),
                (1, 7, false, vec![7]),
                (1, 8, false, vec![8]),
                (1, 9, false, vec![9]),
            ]
        );
    }

    #[test]
    fn a_refused_watcher_gets_none_of_its_later_responses_of_the_batch() {
        let q = StreamQueue::new(0, 2);
        assert!(push_live(&q, live(9, 4)));
        q.try_pop().unwrap();
        assert!(push_live(&q, live(9, 4)));
        // One slot left: watcher 1 takes it, watcher 2 is refused at revision 5, and its
        // response of revision 6 is not queued behind that gap; watcher 1 still merges.
        let refused = q.push_live_batch(vec![live(1, 5), live(2, 5), live(2, 6), live(1, 6)]);
        assert_eq!(refused, vec![(2, 5)]);
        let order: Vec<(i64, Vec<i64>)> =
            std::iter::from_fn(|| q.try_pop()).map(|e| (e.watch_id, revisions(&e))).collect();
        assert_eq!(order, vec![(9, vec![4]), (1, vec![5, 6])]);
    }

    #[test]
    fn merging_is_bounded_per_response_and_per_stream() {
        // Per response: MERGE_EVENTS_MAX events, then a new response.
        let q = StreamQueue::new(0, 1024);
        for rev in 1..=MERGE_EVENTS_MAX as i64 + 1 {
            assert!(push_live(&q, live(1, rev)));
        }
        assert_eq!(q.len(), 2);
        assert_eq!(q.try_pop().unwrap().events.len(), MERGE_EVENTS_MAX);
        // Per stream: 4 slots hold 4 * QUEUED_EVENTS_PER_SLOT events through merging; past
        // that every push needs a slot of its own, and once the slots are gone the watcher
        // is refused (it falls back to catch-up).
        let q = StreamQueue::new(0, 4);
        let mut accepted = 0;
        while push_live(&q, live(1, accepted as i64 + 1)) {
            accepted += 1;
            assert!(accepted <= 10 * QUEUED_EVENTS_PER_SLOT, "merging never stopped");
        }
        assert_eq!(accepted, 4 * QUEUED_EVENTS_PER_SLOT + 3);
        assert_eq!(q.len(), 4);
    }
}
