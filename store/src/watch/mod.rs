//! Watch: per-group hubs that feed per-client streams, modeled on etcd's watchable store.
//!
//! ```text
//!  apply batch ──write──▶ RocksDB ──then──▶ Hub::publish ──▶ synced watchers ──▶ StreamQueue
//!                                                  │ queue full                     ▲
//!                                                  ▼                                │
//!                        sync thread (every ~100 ms, or woken) ── events CF ──▶ unsynced watchers
//! ```
//!
//! - A watcher is **synced** when every event before `current + 1` that it matches is
//!   queued; apply then feeds it directly: per publication, one response of whole revisions
//!   per watcher (bounded as merged responses are), queued stream by stream under one lock.
//! - A watcher is **unsynced** when it starts in the past or its stream's queue was full.
//!   The sync thread reads the `events` CF (at a RocksDB snapshot, outside the hub lock),
//!   queues responses holding whole revisions, and, under the hub lock, reads the last few
//!   revisions itself and moves the watcher to the synced set: publication also runs under
//!   that lock, so nothing is missed or sent twice.
//! - Catch-up skips watchers whose queue is full, so a client that stops reading never holds
//!   back the other watchers of its group; each pass is bounded in events and bytes. A
//!   watcher whose queue stays full for `watch_stuck_cancel_after` is canceled (`slow`).
//! - Progress (`request_progress`, `progress_for`) is queued under the hub lock, after every
//!   event of the revisions it reports: a progress revision never runs ahead of events. It
//!   is reported only for a synced watcher whose start revision the store has reached, so a
//!   watcher starting in the future stays quiet until then.
//! - A watcher whose next revision falls below the compact revision is canceled with
//!   `compact_revision` set (etcd's ErrCompacted for watches).

mod hub;
mod queue;

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

pub(crate) use hub::Hub;
use queue::StreamQueue;

use crate::kv::Event;
use crate::revision::Revision;

/// A watch id, unique per stream: chosen by the client, or assigned from 0.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchId(pub i64);

/// etcd `WatchCreateRequest` fields that the store implements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchSpec {
    pub key: Bytes,
    /// etcd forms: empty = `key` only, `"\0"` = every key `>= key`, else `[key, range_end)`.
    pub range_end: Bytes,
    /// 0 = `current + 1`. Below the compact revision the watch is canceled at once. A
    /// negative value must be rejected by the caller (etcd answers `watch_id = -1`); the
    /// store treats it as compacted.
    pub start_revision: Revision,
    pub prev_kv: bool,
    /// etcd's `NOPUT` filter.
    pub no_put: bool,
    /// etcd's `NODELETE` filter.
    pub no_delete: bool,
}

/// An event as queued for watchers: one allocation shared by every watcher that receives it
/// in the same form (with or without `prev_kv`), so fan-out to N watchers costs N reference
/// counts, not N copies. It carries a slot for its wire encoding, filled by the first stream
/// that sends it and reused by every other: the server encodes an event once per form,
/// whatever the number of watchers.
#[derive(Clone)]
pub struct SharedEvent(Arc<SharedInner>);

struct SharedInner {
    event: Event,
    wire: OnceLock<Bytes>,
}

impl SharedEvent {
    pub fn new(event: Event) -> SharedEvent {
        SharedEvent(Arc::new(SharedInner { event, wire: OnceLock::new() }))
    }

    /// The event's encoding: made by `encode` on the first call, shared afterwards. Every
    /// caller must pass the same encoding function (a server has one wire format).
    pub fn wire(&self, encode: impl FnOnce(&Event) -> Bytes) -> &Bytes {
        self.0.wire.get_or_init(|| encode(&self.0.event))
    }
}

impl Deref for SharedEvent {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.0.event
    }
}

impl From<Event> for SharedEvent {
    fn from(event: Event) -> SharedEvent {
        SharedEvent::new(event)
    }
}

impl fmt::Debug for SharedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.event.fmt(f)
    }
}

impl PartialEq for SharedEvent {
    fn eq(&self, other: &SharedEvent) -> bool {
        self.0.event == other.0.event
    }
}

impl Eq for SharedEvent {}

impl PartialEq<Event> for SharedEvent {
    fn eq(&self, other: &Event) -> bool {
        self.0.event == *other
    }
}

/// One response on a stream (etcd `WatchResponse` without the header's non-revision
/// fields).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchEvent {
    /// The watch, or -1 for a stream-wide progress response.
    pub watch_id: i64,
    /// Header revision: every event of this watch up to it has been queued.
    pub revision: Revision,
    pub events: Vec<SharedEvent>,
    /// The first response of every watch.
    pub created: bool,
    pub canceled: bool,
    /// Non-zero: canceled because the start revision is below this compact revision.
    pub compact_revision: Revision,
    /// With `canceled`: the watcher's stream buffer stayed full for
    /// [`crate::StoreConfig::watch_stuck_cancel_after`] (its client stopped reading).
    pub slow: bool,
}

impl WatchEvent {
    /// etcd's `IsProgressNotify`.
    pub fn is_progress(&self) -> bool {
        self.events.is_empty() && !self.created && !self.canceled && self.compact_revision == 0
    }
}

/// The id a create request carries to let the stream pick one (etcd's `AutoWatchID`).
pub const AUTO_WATCH_ID: i64 = 0;

/// etcd's reason for a create request whose id a watcher of the stream already has.
pub const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// One client watch stream: a set of watchers sharing one bounded response queue. Dropping
/// it removes its watchers.
pub struct WatchStream {
    hub: Arc<Hub>,
    queue: Arc<StreamQueue>,
    next_id: AtomicI64,
}

impl WatchStream {
    pub(crate) fn new(hub: Arc<Hub>) -> WatchStream {
        let queue = hub.register_stream();
        WatchStream { hub, queue, next_id: AtomicI64::new(0) }
    }

    /// Creates a watcher under the stream's next free id; its `created` response is queued
    /// first.
    pub fn watch(&self, spec: WatchSpec) -> WatchId {
        self.watch_as(AUTO_WATCH_ID, spec).expect("an id the stream picks is free")
    }

    /// Creates a watcher under `id`, chosen by the client, or under the stream's next free
    /// id when `id` is [`AUTO_WATCH_ID`] (etcd's `watchStream.Watch`: the counter skips ids
    /// a client chose). `None` when a watcher of this stream already has `id`: nothing is
    /// queued then, and the caller answers with [`DUPLICATE_WATCH_ID`].
    pub fn watch_as(&self, id: i64, spec: WatchSpec) -> Option<WatchId> {
        self.hub.add_watcher(&self.queue, id, &self.next_id, spec).map(WatchId)
    }

    /// Removes a watcher and queues its `canceled` response; false if unknown.
    pub fn cancel(&self, id: WatchId) -> bool {
        self.hub.cancel(&self.queue, id.0)
    }

    /// Queues `{watch_id: -1, revision: current}` if every watcher of the stream is synced
    /// and has reached its start revision (etcd `RequestProgress`); otherwise nothing (the
    /// client asks again). Returns whether it was queued.
    pub fn request_progress(&self) -> bool {
        self.hub.progress_all(&self.queue)
    }

    /// Queues `{watch_id: id, revision: current}` if that watcher is synced and the store
    /// has reached its start revision (periodic progress notification). Returns whether it
    /// was queued.
    pub fn progress_for(&self, id: WatchId) -> bool {
        self.hub.progress_one(&self.queue, id.0)
    }

    /// Next response, waiting as long as needed; `None` once the store is closed.
    pub fn recv_blocking(&self) -> Option<WatchEvent> {
        self.queue.pop_blocking(None)
    }

    /// Next response, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<WatchEvent> {
        self.queue.pop_blocking(Some(timeout))
    }

    pub fn try_recv(&self) -> Option<WatchEvent> {
        self.queue.try_pop()
    }

    /// Async receive for a single consumer task.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        self.queue.poll_pop(cx)
    }

    pub async fn recv(&self) -> Option<WatchEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Responses queued and not yet received.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.hub.remove_stream(self.queue.id);
    }
}
