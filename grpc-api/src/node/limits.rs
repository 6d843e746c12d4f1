//! Per-tenant limits: requests per second, proposals in flight, watchers and written bytes
//! per second, each 0 for none. Exceeding one answers etcd's `etcdserver: too many requests`
//! (`ResourceExhausted`), the error etcd gives when its apply falls behind, so every etcd
//! client already treats it as "back off and retry".
//!
//! The limits are a tenant's, set in its registry record (`plinth tenant create|update
//! --max-...`), and enforced by each member on the requests it serves: a tenant reaching
//! three members may be served up to three times its rate in all. Each member's
//! [`Limiter`] follows the record on every reconcile pass.
//!
//! - Requests per second and bytes per second are token buckets holding at most one
//!   second's worth: a burst up to the rate passes at once, then requests pass at the rate.
//!   A write larger than a whole second's bytes passes when the bucket is full and leaves it
//!   in debt, so a large value is slowed, never refused forever.
//! - Proposals in flight count this member's proposals of the tenant from submission to
//!   answer ([`InFlight`] gives the slot back when dropped).
//! - Watchers count the group's watchers on this member at creation (a create racing
//!   another may pass one over the limit).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// A tenant's limits; 0 means none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantLimits {
    #[serde(default)]
    pub requests_per_second: u32,
    #[serde(default)]
    pub inflight_proposals: u32,
    #[serde(default)]
    pub watchers: u32,
    #[serde(default)]
    pub request_bytes_per_second: u64,
}

impl TenantLimits {
    pub fn is_unlimited(&self) -> bool {
        *self == TenantLimits::default()
    }
}

/// A token bucket holding at most one second of its rate.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u64) -> Bucket {
        Bucket { tokens: rate as f64, at: Instant::now() }
    }

    /// Takes `n` tokens at `rate` per second if they are there, or if the bucket is full
    /// (then it goes into debt).
    fn take(&mut self, rate: u64, n: u64) -> bool {
        let now = Instant::now();
        let capacity = rate as f64;
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * capacity).min(capacity);
        self.at = now;
        if self.tokens >= n as f64 || self.tokens >= capacity {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct State {
    limits: TenantLimits,
    requests: Bucket,
    bytes: Bucket,
}

/// One member's enforcement of one tenant's limits.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<State>,
    /// This member's proposals of the group waiting for their answer.
    inflight: Arc<AtomicU32>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            state: Mutex::new(State {
                limits: TenantLimits::default(),
                requests: Bucket::full(0),
                bytes: Bucket::full(0),
            }),
            inflight: Arc::default(),
        }
    }
}

/// A proposal's slot among the tenant's proposals in flight; given back on drop.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limiter {
    /// Follows the tenant's record; a changed rate starts with a full bucket.
    pub fn set(&self, limits: TenantLimits) {
        let mut st = self.state.lock();
        if st.limits.requests_per_second != limits.requests_per_second {
            st.requests = Bucket::full(u64::from(limits.requests_per_second));
        }
        if st.limits.request_bytes_per_second != limits.request_bytes_per_second {
            st.bytes = Bucket::full(limits.request_bytes_per_second);
        }
        st.limits = limits;
    }

    pub fn limits(&self) -> TenantLimits {
        self.state.lock().limits
    }

    /// Whether one more request may be served now (taking its token).
    pub fn admit_request(&self) -> bool {
        let mut st = self.state.lock();
        let rate = u64::from(st.limits.requests_per_second);
        rate == 0 || st.requests.take(rate, 1)
    }

    /// A slot for a proposal of `bytes` encoded bytes, or `None` when the proposals in
    /// flight or the written bytes per second are at their limit.
    pub fn begin_proposal(&self, bytes: u64) -> Option<InFlight> {
        let mut st = self.state.lock();
        let max = st.limits.inflight_proposals;
        if max != 0 && self.inflight.load(Ordering::Acquire) >= max {
            return None;
        }
        let rate = st.limits.request_bytes_per_second;
        if rate != 0 && !st.bytes.take(rate, bytes) {
            return None;
        }
        // Under the state lock: two proposals cannot both take the last slot.
        self.inflight.fetch_add(1, Ordering::AcqRel);
        Some(InFlight(self.inflight.clone()))
    }

    /// Whether a watcher may be added to a group that has `open` watchers on this member.
    pub fn admit_watcher(&self, open: usize) -> bool {
        let max = self.state.lock().limits.watchers;
        max == 0 || open < max as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limits_admit_everything() {
        let l = Limiter::default();
        assert!((0..10_000).all(|_| l.admit_request()));
        let slots: Vec<_> = (0..1000).map(|_| l.begin_proposal(1 << 20).expect("no limit")).collect();
        assert_eq!(slots.len(), 1000);
        assert!(l.admit_watcher(1_000_000));
    }

    #[test]
    fn requests_pass_a_burst_of_one_second_then_the_rate() {
        let l = Limiter::default();
        l.set(TenantLimits { requests_per_second: 50, ..Default::default() });
        let passed = (0..200).filter(|_| l.admit_request()).count();
        // The burst (50), plus what refilled while the loop ran.
        assert!((50..=55).contains(&passed), "{passed} of 200 passed at 50/s");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let later = (0..200).filter(|_| l.admit_request()).count();
        assert!((9..=15).contains(&later), "{later} passed after 200 ms at 50/s");
        l.set(TenantLimits::default());
        assert!((0..1000).all(|_| l.admit_request()), "a lifted limit admits everything");
    }

    #[test]
    fn proposals_in_flight_are_counted_until_their_slot_drops() {
        let l = Limiter::default();
        l.set(TenantLimits { inflight_proposals: 2, ..Default::default() });
        let a = l.begin_proposal(10).expect("first");
        let b = l.begin_proposal(10).expect("second");
        assert!(l.begin_proposal(10).is_none(), "a third proposal in flight");
        drop(a);
        let c = l.begin_proposal(10).expect("a slot was given back");
        drop((b, c));
        assert_eq!(l.inflight.load(Ordering::Acquire), 0);
    }

    #[test]
    fn written_bytes_are_limited_per_second_and_a_large_write_goes_into_debt() {
        let l = Limiter::default();
        l.set(TenantLimits { request_bytes_per_second: 1000, ..Default::default() });
        assert!(l.begin_proposal(600).is_some());
        assert!(l.begin_proposal(600).is_none(), "1200 bytes within a second of a 1000/s budget");
        let l = Limiter::default();
        l.set(TenantLimits { request_bytes_per_second: 1000, ..Default::default() });
        assert!(l.begin_proposal(5000).is_some(), "a write larger than a second's budget passes on a full bucket");
        assert!(l.begin_proposal(1).is_none(), "and leaves the bucket in debt");
    }

    #[test]
    fn watchers_stop_at_the_limit() {
        let l = Limiter::default();
        l.set(TenantLimits { watchers: 3, ..Default::default() });
        assert!(l.admit_watcher(2));
        assert!(!l.admit_watcher(3));
    }

    #[test]
    fn records_without_limits_read_as_unlimited() {
        let l: TenantLimits = serde_json::from_str("{}").unwrap();
        assert!(l.is_unlimited());
        let l: TenantLimits = serde_json::from_str(r#"{"watchers": 4}"#).unwrap();
        assert_eq!(l, TenantLimits { watchers: 4, ..Default::default() });
    }
}
