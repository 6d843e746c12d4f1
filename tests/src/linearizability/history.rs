//! What the clients did, as the checker sees it: one [`Op`] per request with its invoke and
//! complete times, and one [`WatchRecord`] per watch stream with everything it delivered.
//!
//! A [`Recorder`] is shared by the client tasks of a run. Times are nanoseconds since the
//! recorder was made, read from one monotonic clock, so "A completed before B was invoked"
//! is `a.complete < b.invoke` across clients. An operation whose outcome the client never
//! learned (a timeout, a lost connection, a member killed under it) is recorded with
//! `complete: None`: it may or may not have taken effect, at any time after its invoke.

use std::sync::Mutex;
use std::time::Instant;

/// Most operations one history may hold; a recorder refuses more (every run is bounded).
pub const OPS_MAX: usize = 200_000;
/// Most watch records one history may hold.
pub const WATCHES_MAX: usize = 1_000;

/// A lease id as the clients chose it (they grant with explicit ids).
pub type LeaseId = i64;

/// What a transaction compares before its put.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Compare {
    /// `mod_revision(key) == rev` (0 for a key that does not exist).
    ModRevision(i64),
    /// `value(key) == value` (false for a key that does not exist).
    Value(String),
}

/// A request as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `Put(key, value)`, attached to `lease` when it is not 0.
    Put { key: String, value: String, lease: LeaseId },
    /// `Range(key)`; `serializable` reads skip the ReadIndex and are only sequentially
    /// consistent.
    Get { key: String, serializable: bool },
    /// `DeleteRange(key)`.
    Delete { key: String },
    /// `Txn { compare } then { Put(key, value) } else { }`.
    Cas { key: String, compare: Compare, value: String },
    /// One page of `Range([start, prefix end))` with `limit`, at `revision` (0: the current
    /// one, linearizable), as a paginated list reads a prefix.
    List { prefix: String, start: String, revision: i64, limit: i64 },
    /// `LeaseGrant(id)` with a TTL far longer than the run, so it never expires by itself.
    LeaseGrant { id: LeaseId },
    /// `LeaseRevoke(id)`: deletes every key attached to the lease, in one revision.
    LeaseRevoke { id: LeaseId },
}

impl Input {
    /// The key the request touches (none for lease requests).
    pub fn key(&self) -> Option<&str> {
        match self {
            Input::Put { key, .. } | Input::Get { key, .. } | Input::Delete { key } | Input::Cas { key, .. } => {
                Some(key)
            }
            Input::List { .. } | Input::LeaseGrant { .. } | Input::LeaseRevoke { .. } => None,
        }
    }

    /// The value the request writes, if it writes one.
    pub fn written_value(&self) -> Option<&str> {
        match self {
            Input::Put { value, .. } | Input::Cas { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// A key's value as a response showed it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Kv {
    pub value: String,
    pub mod_revision: i64,
}

/// A response; `revision` is always the response header's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Put {
        revision: i64,
    },
    Get {
        revision: i64,
        kv: Option<Kv>,
    },
    /// A page of a list: the keys in order with their versions, and whether more follow.
    List {
        revision: i64,
        kvs: Vec<(String, Kv)>,
        more: bool,
    },
    Delete {
        revision: i64,
        deleted: i64,
    },
    Cas {
        revision: i64,
        succeeded: bool,
    },
    LeaseGrant {
        revision: i64,
    },
    LeaseRevoke {
        revision: i64,
    },
}

impl Output {
    /// The response header's revision.
    pub fn revision(&self) -> i64 {
        match self {
            Output::Put { revision }
            | Output::Get { revision, .. }
            | Output::List { revision, .. }
            | Output::Delete { revision, .. }
            | Output::Cas { revision, .. }
            | Output::LeaseGrant { revision }
            | Output::LeaseRevoke { revision } => *revision,
        }
    }

    /// Whether the response says the request made a new revision (a write that changed a key).
    pub fn made_revision(&self) -> bool {
        match self {
            Output::Put { .. } => true,
            Output::Delete { deleted, .. } => *deleted > 0,
            Output::Cas { succeeded, .. } => *succeeded,
            // A revoke makes a revision only when it deleted a key, which its response
            // does not say.
            Output::Get { .. } | Output::List { .. } | Output::LeaseGrant { .. } | Output::LeaseRevoke { .. } => false,
        }
    }
}

/// One request of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub client: usize,
    /// Nanoseconds since the history began, taken just before the request was sent.
    pub invoke: u64,
    /// Nanoseconds since the history began, taken just after the response arrived; `None`
    /// when the outcome is unknown (the request may take effect at any time after invoke).
    pub complete: Option<u64>,
    pub input: Input,
    /// The response; `None` exactly when `complete` is `None`.
    pub output: Option<Output>,
}

/// What a watch response carried: events, or a progress notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    Event(WatchEvent),
    /// A response with no events for a created watch: "everything up to `revision` that
    /// matches was delivered".
    Progress {
        revision: i64,
    },
}

/// One watch event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub key: String,
    /// `true` for DELETE.
    pub delete: bool,
    /// The written value (empty for a delete).
    pub value: String,
    pub mod_revision: i64,
    /// `prev_kv` when the watch asked for it.
    pub prev: Option<Kv>,
    /// Header revision of the response that carried the event.
    pub header_revision: i64,
}

/// Everything one watch stream delivered, in order, on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRecord {
    /// Which logical watcher this stream belongs to (a watcher that lost its connection
    /// resumes on a new stream from the revision after the last it saw: a new record).
    pub watcher: usize,
    /// The range `[prefix, prefix + 0xff...)`.
    pub prefix: String,
    /// The revision the stream was created from (inclusive).
    pub start_revision: i64,
    /// Whether the stream asked for `prev_kv`.
    pub prev_kv: bool,
    /// Whether `start_revision` is a compact revision (the stream resumed from the
    /// `compact_revision` a cancel named): as etcd after a compaction, a DELETE at exactly
    /// that revision is gone and not replayed.
    pub start_compacted: bool,
    pub items: Vec<WatchItem>,
}

impl WatchRecord {
    /// The highest revision the stream is known to have delivered everything up to: its last
    /// event's revision or its last progress notification, whichever is higher; `start - 1`
    /// when it delivered nothing.
    pub fn covered_revision(&self) -> i64 {
        self.items
            .iter()
            .map(|i| match i {
                WatchItem::Event(e) => e.mod_revision,
                WatchItem::Progress { revision } => *revision,
            })
            .max()
            .unwrap_or(self.start_revision - 1)
            .max(self.start_revision - 1)
    }
}

/// A recorded run: the operations and the watch streams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<Op>,
    pub watches: Vec<WatchRecord>,
}

/// Records operations of concurrent clients against one monotonic clock.
pub struct Recorder {
    start: Instant,
    inner: Mutex<Slots>,
}

/// The recorder's state: one slot per invoked operation (emptied when it was refused).
#[derive(Default)]
struct Slots {
    ops: Vec<Option<Op>>,
    watches: Vec<WatchRecord>,
}

/// Handle of an invoked operation, to complete it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpId(usize);

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Recorder {
        Recorder { start: Instant::now(), inner: Mutex::new(Slots::default()) }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).expect("a run lasts less than 584 years")
    }

    /// Records that `client` is about to send `input`. Panics past [`OPS_MAX`].
    pub fn invoke(&self, client: usize, input: Input) -> OpId {
        let invoke = self.now();
        let mut s = self.inner.lock().expect("recorder lock");
        assert!(s.ops.len() < OPS_MAX, "a history holds at most {OPS_MAX} operations");
        s.ops.push(Some(Op { client, invoke, complete: None, input, output: None }));
        OpId(s.ops.len() - 1)
    }

    /// Records the response of `id`. An operation left without one is unknown.
    pub fn complete(&self, id: OpId, output: Output) {
        let complete = self.now();
        let mut s = self.inner.lock().expect("recorder lock");
        let op = s.ops[id.0].as_mut().expect("a refused operation does not complete");
        assert!(op.complete.is_none(), "operation {} completed twice", id.0);
        op.complete = Some(complete);
        op.output = Some(output);
    }

    /// Drops `id` from the history: the request was refused before it could take effect (a
    /// definite error such as "requested lease not found").
    pub fn refused(&self, id: OpId) {
        let mut s = self.inner.lock().expect("recorder lock");
        let op = s.ops[id.0].take().expect("refused once");
        assert!(op.complete.is_none(), "operation {} refused after completing", id.0);
    }

    /// Adds a finished watch record. Panics past [`WATCHES_MAX`].
    pub fn watch(&self, record: WatchRecord) {
        let mut s = self.inner.lock().expect("recorder lock");
        assert!(s.watches.len() < WATCHES_MAX, "a history holds at most {WATCHES_MAX} watch records");
        s.watches.push(record);
    }

    /// A copy of the history so far.
    pub fn history(&self) -> History {
        let s = self.inner.lock().expect("recorder lock");
        History { ops: s.ops.iter().flatten().cloned().collect(), watches: s.watches.clone() }
    }
}
