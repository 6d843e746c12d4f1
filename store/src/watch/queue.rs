//! The per-stream response queue: one producer side (the hub, under its lock) and one
//! consumer (the gRPC stream's single writer), blocking or async.
//!
//! Event and progress responses are **bounded** (`watch_stream_buffer`): when the queue is
//! full, the hub does not wait; the watcher falls back to catch-up from the `events` CF.
//! Control responses (created, canceled) are always queued: there are at most two per
//! watch request, so the client's own requests bound them.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::WatchEvent;

pub(crate) struct StreamQueue {
    pub id: u64,
    limit: usize,
    state: Mutex<QueueState>,
    cond: Condvar,
}

struct QueueState {
    /// (response, counts against the limit)
    items: VecDeque<(WatchEvent, bool)>,
    bounded: usize,
    waker: Option<Waker>,
    closed: bool,
}

impl StreamQueue {
    pub fn new(id: u64, limit: usize) -> StreamQueue {
        assert!(limit > 0, "watch stream buffer must be > 0");
        StreamQueue {
            id,
            limit,
            state: Mutex::new(QueueState { items: VecDeque::new(), bounded: 0, waker: None, closed: false }),
            cond: Condvar::new(),
        }
    }

    fn push(&self, ev: WatchEvent, bounded: bool) -> bool {
        let mut st = self.state.lock();
        if st.closed {
            return false;
        }
        if bounded {
            if st.bounded >= self.limit {
                return false;
            }
            st.bounded += 1;
        }
        st.items.push_back((ev, bounded));
        let waker = st.waker.take();
        drop(st);
        self.cond.notify_one();
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Queues an event or progress response; false if the buffer is full (or closed).
    pub fn push_bounded(&self, ev: WatchEvent) -> bool {
        self.push(ev, true)
    }

    /// Queues a created/canceled response regardless of the buffer.
    pub fn push_control(&self, ev: WatchEvent) {
        self.push(ev, false);
    }

    pub fn close(&self) {
        self.state.lock().closed = true;
        self.cond.notify_all();
        if let Some(w) = self.state.lock().waker.take() {
            w.wake();
        }
    }

    fn pop_locked(st: &mut QueueState) -> Option<WatchEvent> {
        let (ev, bounded) = st.items.pop_front()?;
        if bounded {
            st.bounded -= 1;
        }
        Some(ev)
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
