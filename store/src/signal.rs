//! A wake-up flag for the background threads: set by producers, consumed by one waiter.

use std::time::Duration;

use parking_lot::{Condvar, Mutex};

#[derive(Default)]
pub(crate) struct Signal {
    pending: Mutex<bool>,
    cond: Condvar,
}

impl Signal {
    pub fn notify(&self) {
        *self.pending.lock() = true;
        self.cond.notify_all();
    }

    /// Waits until notified or `timeout` passes; clears the flag.
    pub fn wait(&self, timeout: Duration) {
        let mut p = self.pending.lock();
        if !*p {
            self.cond.wait_for(&mut p, timeout);
        }
        *p = false;
    }
}
