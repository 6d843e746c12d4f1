//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use store::{
    Command, CommandBody, CommandResponse, DeleteRangeRequest, GroupId, KeyValue, Message, PutRequest, RangeRequest,
    RangeResponse, Result, Store, StoreConfig, WatchEvent, WatchStream,
};

pub const G: GroupId = GroupId(1);

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A store plus the next log index to use.
pub struct Node {
    pub store: Store,
    pub g: GroupId,
    pub next_index: u64,
    pub dir: tempfile::TempDir,
}

impl Default for Node {
    fn default() -> Self {
        Node::new()
    }
}

impl Node {
    pub fn new() -> Node {
        Node::with_config(StoreConfig::default())
    }

    pub fn with_config(cfg: StoreConfig) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), cfg).unwrap();
        Node { store, g: G, next_index: 1, dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Applies one command as one entry.
    pub fn exec(&mut self, body: CommandBody) -> Result<CommandResponse> {
        let idx = self.next_index;
        self.next_index += 1;
        let bytes = Command::new(idx, body).encode_to_vec();
        self.store.apply(self.g, &[(idx, &bytes)]).unwrap().pop().unwrap()
    }

    pub fn put(&mut self, k: &str, v: &str) -> store::PutResponse {
        match self.exec(CommandBody::Put(PutRequest { key: b(k), value: b(v), ..Default::default() })).unwrap() {
            CommandResponse::Put(p) => p,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn put_lease(&mut self, k: &str, v: &str, lease: i64) -> Result<CommandResponse> {
        self.exec(CommandBody::Put(PutRequest { key: b(k), value: b(v), lease, ..Default::default() }))
    }

    pub fn del(&mut self, k: &str, end: &str) -> store::DeleteRangeResponse {
        let req = DeleteRangeRequest { key: b(k), range_end: b(end), prev_kv: true };
        match self.exec(CommandBody::DeleteRange(req)).unwrap() {
            CommandResponse::DeleteRange(d) => d,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn range(&self, k: &str, end: &str, rev: i64) -> Result<RangeResponse> {
        self.store.range(self.g, &RangeRequest { key: b(k), range_end: b(end), revision: rev, ..Default::default() })
    }

    pub fn get(&self, k: &str) -> Option<KeyValue> {
        self.range(k, "", 0).unwrap().kvs.pop()
    }

    pub fn all(&self) -> RangeResponse {
        self.range("\0", "\0", 0).unwrap()
    }
}

/// Receives responses until `pred` holds for one (returned) or `timeout` passes (panics).
pub fn recv_until(s: &WatchStream, timeout: Duration, mut pred: impl FnMut(&WatchEvent) -> bool) -> Vec<WatchEvent> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for a watch response; got {out:?}");
        if let Some(ev) = s.recv_timeout(left) {
            let done = pred(&ev);
            out.push(ev);
            if done {
                return out;
            }
        }
    }
}

/// Waits until every watcher of `s` is synced (a progress response is queued), reading
/// meanwhile so that a full stream can drain, and returns everything received before that
/// progress response.
pub fn drain_until_synced(s: &WatchStream, timeout: Duration) -> Vec<WatchEvent> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        while let Some(ev) = s.try_recv() {
            out.push(ev);
        }
        if s.request_progress() {
            break;
        }
        assert!(Instant::now() < deadline, "watchers never synced; got {out:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    out.extend(recv_until(s, timeout, |e| e.watch_id == -1 && e.is_progress()));
    out.pop();
    out
}
