//! A log-linear latency histogram (HDR-like): exact below 256 ns, then 128 sub-buckets per
//! power of two, so every recorded value is within 0.8 % of its bucket. Fixed memory
//! (7,424 counters), lock-free recording from any number of tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
const LINEAR: u64 = 2 * SUB as u64;
/// Number of buckets covering the whole `u64` range.
pub const BUCKETS: usize = 2 * SUB + (64 - (SUB_BITS as usize + 1)) * SUB;

/// Bucket index of a value.
pub fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let shift = e - SUB_BITS;
    let m = (v >> shift) as usize;
    2 * SUB + (e as usize - (SUB_BITS as usize + 1)) * SUB + (m - SUB)
}

/// Smallest value that falls in bucket `i`.
pub fn lower(i: usize) -> u64 {
    if i < 2 * SUB {
        return i as u64;
    }
    let j = i - 2 * SUB;
    let e = j / SUB + SUB_BITS as usize + 1;
    let m = (j % SUB + SUB) as u64;
    m << (e - SUB_BITS as usize)
}

fn upper(i: usize) -> u64 {
    if i + 1 >= BUCKETS {
        u64::MAX
    } else {
        lower(i + 1)
    }
}

/// A histogram of nanosecond values that many tasks record into concurrently.
pub struct AtomicHist {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
    min: AtomicU64,
}

impl Default for AtomicHist {
    fn default() -> Self {
        Self::new()
    }
}

impl AtomicHist {
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
            min: AtomicU64::new(u64::MAX),
        }
    }

    pub fn record(&self, d: Duration) {
        self.record_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn record_nanos(&self, v: u64) {
        self.buckets[index(v)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
        self.min.fetch_min(v, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Adds a task-local histogram's counts: a task recording at a high rate keeps a [`Hist`]
    /// and adds it now and then, rather than touching these shared counters per value.
    pub fn add(&self, h: &Hist) {
        if h.count == 0 {
            return;
        }
        for (b, n) in self.buckets.iter().zip(&h.buckets) {
            if *n > 0 {
                b.fetch_add(*n, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(h.count, Ordering::Relaxed);
        self.sum.fetch_add(h.sum, Ordering::Relaxed);
        self.max.fetch_max(h.max, Ordering::Relaxed);
        self.min.fetch_min(h.min, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Hist {
        Hist {
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum.load(Ordering::Relaxed),
            max: self.max.load(Ordering::Relaxed),
            min: self.min.load(Ordering::Relaxed),
        }
    }
}

/// A frozen copy of an [`AtomicHist`].
#[derive(Clone, Debug)]
pub struct Hist {
    buckets: Vec<u64>,
    pub count: u64,
    pub sum: u64,
    pub max: u64,
    pub min: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist { buckets: vec![0; BUCKETS], count: 0, sum: 0, max: 0, min: u64::MAX }
    }
}

impl Hist {
    pub fn record_nanos(&mut self, v: u64) {
        self.buckets[index(v)] += 1;
        self.count += 1;
        self.sum += v;
        self.max = self.max.max(v);
        self.min = self.min.min(v);
    }

    /// The value at quantile `q` (0..=1): the midpoint of the bucket holding that rank,
    /// clamped to the observed min and max. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == self.count {
            return self.max;
        }
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let lo = lower(i);
                let mid = lo + (upper(i) - lo) / 2;
                return mid.clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// Adds `other`'s counts into this histogram.
    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
        self.min = self.min.min(other.min);
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        assert_eq!(index(0), 0);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        for i in 1..BUCKETS {
            assert!(lower(i) > lower(i - 1));
            assert_eq!(index(lower(i)), i);
            assert_eq!(index(lower(i) - 1), i - 1);
        }
        for v in [300u64, 1_000, 123_456, 9_999_999_999] {
            let i = index(v);
            assert!(lower(i) <= v && v < upper(i));
            assert!((upper(i) - lower(i)) as f64 / v as f64 <= 0.008);
        }
    }

    #[test]
    fn quantiles() {
        let h = AtomicHist::new();
        for v in 1..=10_000u64 {
            h.record_nanos(v * 1000);
        }
        let s = h.snapshot();
        let p50 = s.quantile(0.5) as f64;
        let p99 = s.quantile(0.99) as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.01, "{p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.01, "{p99}");
        assert_eq!(s.quantile(1.0), 10_000_000);
        assert_eq!(AtomicHist::new().snapshot().quantile(0.5), 0);
    }
}
