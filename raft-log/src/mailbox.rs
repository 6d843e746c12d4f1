//! A bounded multi-producer, single-consumer queue whose producers wake the consumer only
//! after they have let go of the queue's lock.
//!
//! `std::sync::mpsc::sync_channel` wakes a parked receiver from inside its waker's mutex.
//! On a member whose threads share one CPU, the kernel then runs the woken thread at once
//! (wake-up preemption); it blocks on that same mutex, still held by the sender it just
//! preempted, and the CPU goes back to the sender to release it. Every hand-off on a write's
//! path (gRPC worker → driver, driver → apply worker) cost two context switches more than it
//! needed, which `perf record -e sched:sched_switch` showed as `SyncWaker::notify` →
//! `SyncWaker::register` pairs.
//!
//! Here the consumer parks with `std::thread::park` after recording, under the lock, that it
//! is parked. A producer pushes under the lock, takes that record and, with the lock
//! released, unparks the consumer: the woken thread finds the lock free. Only the first push
//! into an idle queue pays the wake-up; later ones see the consumer already marked awake. A
//! wake-up cannot be lost: `unpark` before `park` makes the `park` return at once, and the
//! consumer looks at the queue again after every return.
//!
//! Producers that must wait for room (`Sender::send`) wait on a condvar the consumer signals
//! after a pop, also outside the lock, and only when someone waits.

use std::collections::VecDeque;
use std::sync::mpsc::{RecvError, RecvTimeoutError, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

struct State<T> {
    queue: VecDeque<T>,
    /// Live `Sender`s; at zero the consumer sees the queue disconnected once it is empty.
    senders: usize,
    /// False once the `Receiver` is gone: sends fail.
    receiver: bool,
    /// The consumer, while it is parked or about to park. Taken by the producer that wakes it.
    parked: Option<Thread>,
    /// Producers waiting in `send` for room.
    waiting_for_room: usize,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    room: Condvar,
    capacity: usize,
}

/// The sending half; cheap to clone.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half; one consumer thread at a time.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A queue holding at most `capacity` messages (at least 1).
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            senders: 1,
            receiver: true,
            parked: None,
            waiting_for_room: 0,
        }),
        room: Condvar::new(),
        capacity: capacity.max(1),
    });
    (Sender { shared: Arc::clone(&shared) }, Receiver { shared })
}

impl<T> Sender<T> {
    /// Queues `msg`, waiting while the queue is full; gives it back if the receiver is gone.
    pub(crate) fn send(&self, msg: T) -> Result<(), T> {
        let mut st = self.shared.state.lock();
        while st.receiver && st.queue.len() >= self.shared.capacity {
            st.waiting_for_room += 1;
            self.shared.room.wait(&mut st);
            st.waiting_for_room -= 1;
        }
        self.push(st, msg).map_err(|e| match e {
            TrySendError::Full(m) | TrySendError::Disconnected(m) => m,
        })
    }

    /// Queues `msg` if there is room and the receiver lives.
    pub(crate) fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        let st = self.shared.state.lock();
        self.push(st, msg)
    }

    fn push(&self, mut st: parking_lot::MutexGuard<'_, State<T>>, msg: T) -> Result<(), TrySendError<T>> {
        if !st.receiver {
            return Err(TrySendError::Disconnected(msg));
        }
        if st.queue.len() >= self.shared.capacity {
            return Err(TrySendError::Full(msg));
        }
        st.queue.push_back(msg);
        let wake = st.parked.take();
        drop(st);
        // Ordering: the lock is released before the wake-up, so the consumer never blocks on
        // it straight after waking (the reason for this module).
        if let Some(t) = wake {
            t.unpark();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.state.lock().senders += 1;
        Sender { shared: Arc::clone(&self.shared) }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        st.senders -= 1;
        let wake = if st.senders == 0 { st.parked.take() } else { None };
        drop(st);
        if let Some(t) = wake {
            t.unpark();
        }
    }
}

impl<T> Receiver<T> {
    /// Whether nothing is queued right now.
    pub(crate) fn is_empty(&self) -> bool {
        self.shared.state.lock().queue.is_empty()
    }

    /// Takes the oldest message, or says why there is none now.
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut st = self.shared.state.lock();
        match st.queue.pop_front() {
            Some(m) => {
                self.made_room(st);
                Ok(m)
            }
            None if st.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Waits for a message; `Err` once every sender is gone and the queue is empty.
    pub(crate) fn recv(&self) -> Result<T, RecvError> {
        self.recv_until(None).map_err(|_| RecvError)
    }

    /// Waits at most `timeout` for a message.
    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_until(Instant::now().checked_add(timeout))
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        loop {
            let mut st = self.shared.state.lock();
            // Awake now, whether a producer woke this thread or not.
            st.parked = None;
            if let Some(m) = st.queue.pop_front() {
                self.made_room(st);
                return Ok(m);
            }
            if st.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            let wait = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(RecvTimeoutError::Timeout),
                },
            };
            // Recorded under the lock: a producer that pushes after this point wakes us.
            st.parked = Some(std::thread::current());
            drop(st);
            match wait {
                None => std::thread::park(),
                Some(left) => std::thread::park_timeout(left),
            }
        }
    }

    /// A message was popped: wakes one producer waiting for room, outside the lock.
    fn made_room(&self, st: parking_lot::MutexGuard<'_, State<T>>) {
        let waiting = st.waiting_for_room > 0;
        drop(st);
        if waiting {
            self.shared.room.notify_one();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        st.receiver = false;
        // Messages still queued are dropped with the receiver, as std's channel does.
        let left = std::mem::take(&mut st.queue);
        drop(st);
        self.shared.room.notify_all();
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_in_order_and_a_full_queue_refuses_or_waits() {
        let (tx, rx) = channel(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        let t = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send(3).unwrap())
        };
        // The blocked sender finishes only once a message is taken.
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished());
        assert_eq!(rx.recv().unwrap(), 1);
        t.join().unwrap();
        assert_eq!(rx.try_recv().unwrap(), 2);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 3);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn a_parked_receiver_is_woken_by_a_send_and_times_out_without_one() {
        let (tx, rx) = channel::<u32>(4);
        let started = Instant::now();
        assert_eq!(rx.recv_timeout(Duration::from_millis(30)), Err(RecvTimeoutError::Timeout));
        assert!(started.elapsed() >= Duration::from_millis(30));
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(7).unwrap();
            tx
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 7);
        drop(t.join().unwrap());
        // Every sender gone and nothing queued: disconnected, without waiting out the timeout.
        let started = Instant::now();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Err(RecvTimeoutError::Disconnected));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_last_sender_leaving_wakes_a_waiting_receiver_and_a_gone_receiver_fails_sends() {
        let (tx, rx) = channel::<u32>(1);
        let t = std::thread::spawn(move || rx.recv());
        std::thread::sleep(Duration::from_millis(20));
        drop(tx);
        assert_eq!(t.join().unwrap(), Err(RecvError));

        let (tx, rx) = channel::<u32>(1);
        tx.try_send(1).unwrap();
        let blocked = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send(2))
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(rx);
        assert_eq!(blocked.join().unwrap(), Err(2), "a sender waiting for room gets its message back");
        assert!(matches!(tx.try_send(3), Err(TrySendError::Disconnected(3))));
    }

    #[test]
    fn many_producers_lose_nothing() {
        let (tx, rx) = channel::<(u32, u32)>(8);
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        tx.send((p, i)).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let mut next = [0u32; 4];
        while let Ok((p, i)) = rx.recv() {
            assert_eq!(i, next[p as usize], "each producer's messages arrive in its order");
            next[p as usize] += 1;
        }
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(next, [5_000; 4]);
    }
}
