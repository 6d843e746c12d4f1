//! How many live keys a group holds between bounds, so that a range's `count` does not walk
//! every key of the range.
//!
//! etcd answers `count` from its in-memory index of every key. Plinth keeps no per-key
//! memory (memory must not grow with the keys), so `count` used to be one RocksDB step per
//! key: a `count_only` over a million keys, or the first page of a list (which reports the
//! count of the whole range), walked them all. Here each group cuts its live keys (the `kv`
//! column family) into consecutive *segments* of about `K` keys and keeps, per segment, only
//! its first bound and how many live keys it holds. A count over a range is the sum of the
//! segments wholly inside it plus a scan of what lies in the range of the (at most two)
//! segments it cuts through: at most about `4K` RocksDB steps, however large the range.
//!
//! ## Bounded memory
//!
//! `K` is [`MIN_SEGMENT_KEYS`] or more, and grows with the group (`total / MAX_SEGMENTS`),
//! and segments with `K` keys or fewer between two neighbours merge, so a group holds at
//! most about `2 * MAX_SEGMENTS` bounds (one key and one count each), whatever its size:
//! about 1/128 of a key per key for groups up to ~500,000 keys, and no more beyond.
//!
//! ## Kept exact
//!
//! - **Apply** (`Store::commit`) adds each created key (+1) and each deleted key (-1) to its
//!   segment, from the batch's events (a put over a live key changes no count), under the
//!   group's committed-metadata write lock, with the batch's RocksDB write. A reader plans
//!   its count ([`KeyCounts::plan`]) under that lock's read side, where it takes its RocksDB
//!   snapshot, and scans the partial segments in that snapshot: the sums and the scans
//!   describe the same state.
//! - A segment grown past `2K` keys is cut again after the batch, from a scan of its keys,
//!   under the apply lock (so no batch changes them meanwhile); cutting moves bounds, never
//!   the total.
//! - **Imports** write keys without events: during one the counts are unknown (`count`
//!   walks the range, as before), and at its end they are built again from RocksDB, as after
//!   a snapshot install and at open.
//!
//! Debug builds (every `cargo test` of the store and of the node) check every count
//! planned here against a walk of the whole range.

use bytes::Bytes;

use crate::engine::Reader;
use crate::error::Result;
use crate::key_codec::{self as kc, Cf};
use crate::mvcc::{self, KeyRange};
use crate::revision::GroupId;

/// Fewest keys a segment is cut to (`K` for groups below `MIN_SEGMENT_KEYS * MAX_SEGMENTS`).
pub(crate) const MIN_SEGMENT_KEYS: u64 = 128;

/// Segments a group aims at: `K` grows past [`MIN_SEGMENT_KEYS`] to stay near it.
pub(crate) const MAX_SEGMENTS: u64 = 4096;

/// The live-key counts of one group, or `Unknown` while they cannot be kept (an import in
/// progress, or turned off by configuration): then every count walks its range.
pub(crate) enum KeyCounts {
    Unknown,
    Known(Segments),
}

/// Consecutive segments covering every key: segment `i` holds the live keys in
/// `[bounds[i], bounds[i + 1])`, the last one everything from its bound on.
/// `bounds[0]` is the empty key, so every key has a segment.
pub(crate) struct Segments {
    bounds: Vec<Box<[u8]>>,
    counts: Vec<u64>,
    total: u64,
    /// A segment may have grown past twice the aim since the last look for oversized ones
    /// (set by `add` and `coarsen`), so apply need not scan every segment after each batch.
    unchecked: bool,
    /// The aim at the last look: a smaller aim (the group shrank) makes segments oversized
    /// without any of them growing.
    checked_target: u64,
}

/// A segment to cut again: its index and bounds (`upper = None`: the last segment).
pub(crate) struct Oversized {
    pub index: usize,
    pub lower: Box<[u8]>,
    pub upper: Option<Box<[u8]>>,
}

/// A count planned under the committed-metadata lock: `known` keys lie in segments wholly
/// inside the range, and the rest are found by walking `scans` (at most two ranges, each
/// within one or two segments) in the same snapshot.
#[derive(Debug)]
pub(crate) struct CountPlan {
    known: u64,
    scans: Vec<KeyRange>,
}

impl CountPlan {
    /// The number of live keys in the planned range, in the view of `r`: the snapshot the
    /// plan was made with.
    pub fn count(&self, r: &Reader<'_>, g: GroupId) -> Result<u64> {
        let mut count = self.known;
        for range in &self.scans {
            count += mvcc::scan(r, g, range, None, 0, mvcc::Count::All, &mut |_, _| Ok(()))?;
        }
        Ok(count)
    }
}

/// One empty segment: a group without keys.
impl Default for Segments {
    fn default() -> Segments {
        Segments { bounds: vec![Box::default()], counts: vec![0], total: 0, unchecked: false, checked_target: 0 }
    }
}

impl Segments {
    /// The segment size aimed at.
    fn target(&self) -> u64 {
        MIN_SEGMENT_KEYS.max(self.total / MAX_SEGMENTS)
    }

    /// The segment holding `key`.
    fn segment_of(&self, key: &[u8]) -> usize {
        // bounds[0] is empty, so at least one bound is <= key.
        self.bounds.partition_point(|b| &b[..] <= key) - 1
    }

    /// The upper bound of segment `i` (`None` for the last).
    fn upper(&self, i: usize) -> Option<&[u8]> {
        self.bounds.get(i + 1).map(|b| &b[..])
    }

    fn add(&mut self, key: &[u8]) {
        let i = self.segment_of(key);
        self.counts[i] += 1;
        self.total += 1;
        if self.counts[i] > 2 * self.target() {
            self.unchecked = true;
        }
    }

    /// Whether a segment may be over twice the aim (see [`Segments::oversized`]).
    fn needs_check(&self) -> bool {
        self.unchecked || self.target() < self.checked_target
    }

    /// Notes that the segments were looked at (and the oversized ones cut) at this aim.
    fn checked(&mut self) {
        self.unchecked = false;
        self.checked_target = self.target();
    }

    /// Takes a deleted key off its segment; false if the segment counted no key (the counts
    /// are wrong).
    fn remove(&mut self, key: &[u8]) -> bool {
        let i = self.segment_of(key);
        if self.counts[i] == 0 {
            return false;
        }
        self.counts[i] -= 1;
        self.total -= 1;
        // Merge with the smaller neighbour while the pair is no bigger than one segment.
        let k = self.target();
        let neighbour = match (i.checked_sub(1), (i + 1 < self.counts.len()).then_some(i + 1)) {
            (Some(l), Some(r)) => Some(if self.counts[l] <= self.counts[r] { l } else { r }),
            (l, r) => l.or(r),
        };
        if let Some(n) = neighbour {
            if self.counts[i] + self.counts[n] <= k {
                self.merge(i.min(n));
            }
        }
        true
    }

    /// Merges segment `i + 1` into segment `i`.
    fn merge(&mut self, i: usize) {
        let right = self.counts.remove(i + 1);
        self.bounds.remove(i + 1);
        self.counts[i] += right;
    }

    /// Halves the number of segments while there are more than twice the aim (the aim
    /// grows with the group, and segments cut when it was smaller stay small until touched).
    fn coarsen(&mut self) {
        while self.bounds.len() as u64 > 2 * MAX_SEGMENTS {
            let mut bounds = Vec::with_capacity(self.bounds.len() / 2 + 1);
            let mut counts = Vec::with_capacity(self.bounds.len() / 2 + 1);
            for (pair_b, pair_c) in self.bounds.chunks(2).zip(self.counts.chunks(2)) {
                bounds.push(pair_b[0].clone());
                counts.push(pair_c.iter().sum());
            }
            self.bounds = bounds;
            self.counts = counts;
            // A pair may sum to more than twice the aim.
            self.unchecked = true;
        }
    }

    /// The segments over twice the aim, as `(index, lower bound)`, highest index first (so
    /// cutting one leaves the indexes of the others as they are). Walks every segment: the
    /// caller asks only when [`Segments::needs_check`].
    fn oversized(&self) -> Vec<(usize, Box<[u8]>)> {
        let limit = 2 * self.target();
        let mut out: Vec<(usize, Box<[u8]>)> =
            (0..self.counts.len()).filter(|&i| self.counts[i] > limit).map(|i| (i, self.bounds[i].clone())).collect();
        out.reverse();
        out
    }

    /// Replaces segment `i` by the segments `cut` (its own lower bound first, each with its
    /// count); false, changing nothing, if they do not hold the keys it counted (the counts
    /// are wrong).
    fn recut(&mut self, i: usize, cut: Vec<(Box<[u8]>, u64)>) -> bool {
        if cut.first().map(|(b, _)| b) != Some(&self.bounds[i])
            || cut.iter().map(|(_, c)| c).sum::<u64>() != self.counts[i]
        {
            return false;
        }
        let (bounds, counts): (Vec<_>, Vec<_>) = cut.into_iter().unzip();
        self.bounds.splice(i..=i, bounds);
        self.counts.splice(i..=i, counts);
        true
    }

    /// Plans the count of `[start, end)` (`end = None`: to the last key).
    fn plan(&self, start: &[u8], end: Option<&[u8]>) -> CountPlan {
        let range = |from: &[u8], to: Option<&[u8]>| match to {
            Some(to) => KeyRange::Between(Bytes::copy_from_slice(from), Bytes::copy_from_slice(to)),
            None => KeyRange::From(Bytes::copy_from_slice(from)),
        };
        if end.is_some_and(|e| e <= start) {
            return CountPlan { known: 0, scans: Vec::new() };
        }
        // Segments wholly inside: those from the first whose bound is >= start, up to the
        // last whose upper bound is <= end.
        let first = self.bounds.partition_point(|b| &b[..] < start);
        let after_last = match end {
            None => self.bounds.len(),
            Some(e) => self.bounds.partition_point(|b| &b[..] <= e).saturating_sub(1),
        };
        if first >= after_last {
            // Within one or two segments: walk it all.
            return CountPlan { known: 0, scans: vec![range(start, end)] };
        }
        let known = self.counts[first..after_last].iter().sum();
        let mut scans = Vec::with_capacity(2);
        if start < &self.bounds[first][..] {
            scans.push(range(start, Some(&self.bounds[first])));
        }
        if let (Some(e), Some(upper)) = (end, self.upper(after_last - 1)) {
            if upper < e {
                scans.push(range(upper, Some(e)));
            }
        }
        CountPlan { known, scans }
    }
}

/// Walks group `g`'s live keys in `[lower, upper)` (`upper = None`: to the group's last key)
/// in the view of `r` and cuts them into segments of `k` keys, the first bounded by `lower`
/// (and empty if the range holds no key): `(bound, count)` each.
fn walk_cut(r: &Reader<'_>, g: GroupId, lower: &[u8], upper: Option<&[u8]>, k: u64) -> Result<Vec<(Box<[u8]>, u64)>> {
    let db_upper = match upper {
        Some(u) => kc::kv_key(g, u),
        None => kc::group_end(g),
    };
    let mut c = r.cursor(Cf::Kv, &db_upper);
    c.seek(&kc::kv_key(g, lower));
    let mut cut: Vec<(Box<[u8]>, u64)> = vec![(lower.into(), 0)];
    while let Some((key, _)) = c.current()? {
        let last = cut.last_mut().expect("the cut starts with the segment's bound");
        if last.1 == k {
            cut.push((kc::kv_user_key(key).into(), 1));
        } else {
            last.1 += 1;
        }
        c.advance()?;
    }
    Ok(cut)
}

impl KeyCounts {
    /// Counts of group `g`'s live keys in the view of `r`: one walk over them.
    pub fn build(r: &Reader<'_>, g: GroupId) -> Result<KeyCounts> {
        let (bounds, counts): (Vec<_>, Vec<_>) = walk_cut(r, g, &[], None, MIN_SEGMENT_KEYS)?.into_iter().unzip();
        let total = counts.iter().sum();
        let mut s = Segments { bounds, counts, total, unchecked: true, checked_target: 0 };
        s.coarsen();
        Ok(KeyCounts::Known(s))
    }

    /// The count of `range` (not a single key), to be walked in the snapshot taken with it;
    /// `None` when the counts are unknown.
    pub fn plan(&self, range: &KeyRange) -> Option<CountPlan> {
        let KeyCounts::Known(s) = self else { return None };
        Some(match range {
            KeyRange::Single(_) => CountPlan { known: 0, scans: vec![range.clone()] },
            KeyRange::From(start) => s.plan(start, None),
            KeyRange::Between(start, end) => s.plan(start, Some(end)),
        })
    }

    /// Takes a batch's created (`true`) and deleted (`false`) keys, in the batch's order.
    pub fn apply<'k>(&mut self, changes: impl Iterator<Item = (&'k [u8], bool)>) {
        let KeyCounts::Known(s) = self else { return };
        for (key, created) in changes {
            if created {
                s.add(key);
            } else if !s.remove(key) {
                return self.lost("a deleted key's segment counted no key");
            }
        }
        s.coarsen();
    }

    /// Gives up counts found wrong: every count walks its range from here on. A bug, so
    /// tests stop at it; a server keeps answering exactly.
    fn lost(&mut self, why: &str) {
        debug_assert!(false, "key counts lost: {why}");
        tracing::error!("key counts lost ({why}); counts walk their ranges");
        *self = KeyCounts::Unknown;
    }

    /// The live keys of the group, when known.
    pub fn total(&self) -> Option<u64> {
        match self {
            KeyCounts::Known(s) => Some(s.total),
            KeyCounts::Unknown => None,
        }
    }

    /// Whether a segment may have grown past twice the aim since [`KeyCounts::take_oversized`]
    /// last looked: O(1), so apply asks after every batch and looks only when told to.
    pub fn needs_check(&self) -> bool {
        matches!(self, KeyCounts::Known(s) if s.needs_check())
    }

    /// The segments to cut again (highest first), for [`KeyCounts::cut`] and
    /// [`KeyCounts::recut`]; the caller cuts every one before the next batch is applied.
    pub fn take_oversized(&mut self) -> Vec<Oversized> {
        let KeyCounts::Known(s) = self else { return Vec::new() };
        let out = s
            .oversized()
            .into_iter()
            .map(|(index, lower)| Oversized { index, lower, upper: s.upper(index).map(Into::into) })
            .collect();
        s.checked();
        out
    }

    /// The cut of the segment `[lower, upper)` into segments of the aimed size, walking its
    /// keys in the view of `r` (which must be the state the counts describe).
    pub fn cut(&self, r: &Reader<'_>, g: GroupId, lower: &[u8], upper: Option<&[u8]>) -> Result<Vec<(Box<[u8]>, u64)>> {
        let KeyCounts::Known(s) = self else { return Ok(Vec::new()) };
        walk_cut(r, g, lower, upper, s.target())
    }

    /// Replaces segment `i` by `cut` (from [`KeyCounts::cut`] in the same state).
    pub fn recut(&mut self, i: usize, cut: Vec<(Box<[u8]>, u64)>) {
        if let KeyCounts::Known(s) = self {
            if !s.recut(i, cut) {
                self.lost("a segment cut again holds other keys than it counted");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// Counts kept in memory only, checked against a set of the same keys.
    struct Model {
        s: Segments,
        keys: BTreeSet<Vec<u8>>,
    }

    impl Model {
        fn new() -> Model {
            Model { s: Segments::default(), keys: BTreeSet::new() }
        }

        fn put(&mut self, key: &[u8]) {
            if self.keys.insert(key.to_vec()) {
                self.s.add(key);
            }
        }

        fn delete(&mut self, key: &[u8]) {
            if self.keys.remove(key) {
                assert!(self.s.remove(key));
            }
        }

        /// Cuts oversized segments the way apply does, from the set.
        fn settle(&mut self) {
            self.s.coarsen();
            if !self.s.needs_check() {
                let limit = 2 * self.s.target();
                assert!(self.s.counts.iter().all(|&c| c <= limit), "an oversized segment went unnoticed");
                return;
            }
            let oversized = self.s.oversized();
            self.s.checked();
            for (i, lower) in oversized {
                let upper = self.s.upper(i).map(|u| u.to_vec());
                let k = self.s.target();
                let mut cut: Vec<(Box<[u8]>, u64)> = vec![(lower.clone(), 0)];
                for key in self.keys.range(lower.to_vec()..).take_while(|key| upper.as_ref().is_none_or(|u| *key < u)) {
                    let last = cut.last_mut().unwrap();
                    if last.1 == k {
                        cut.push((key.clone().into_boxed_slice(), 1));
                    } else {
                        last.1 += 1;
                    }
                }
                assert!(self.s.recut(i, cut));
            }
        }

        fn count(&self, start: &[u8], end: Option<&[u8]>) -> u64 {
            let plan = self.s.plan(start, end);
            let in_scans: u64 =
                plan.scans.iter().map(|r| self.keys.iter().filter(|k| r.contains(k)).count() as u64).sum();
            plan.known + in_scans
        }

        fn truth(&self, start: &[u8], end: Option<&[u8]>) -> u64 {
            self.keys.iter().filter(|k| &k[..] >= start && end.is_none_or(|e| &k[..] < e)).count() as u64
        }

        fn check_invariants(&self) {
            assert_eq!(self.s.bounds.len(), self.s.counts.len());
            assert!(self.s.bounds[0].is_empty());
            assert!(self.s.bounds.windows(2).all(|w| w[0] < w[1]), "bounds in order");
            assert_eq!(self.s.total, self.keys.len() as u64);
            for i in 0..self.s.bounds.len() {
                let (lo, hi) = (&self.s.bounds[i][..], self.s.upper(i));
                assert_eq!(self.s.counts[i], self.truth(lo, hi), "segment {i}");
            }
        }
    }

    fn key(n: u32) -> Vec<u8> {
        format!("/registry/pods/ns-{:03}/p-{n:06}", n % 7).into_bytes()
    }

    #[test]
    fn a_count_walks_at_most_the_two_segments_at_its_ends() {
        let mut m = Model::new();
        for n in 0..20_000 {
            m.put(&key(n));
            if n % 500 == 0 {
                m.settle();
            }
        }
        m.settle();
        m.check_invariants();
        let k = m.s.target();
        let (lo, hi) = (b"/registry/pods/ns-002/".to_vec(), b"/registry/pods/ns-002~".to_vec());
        let plan = m.s.plan(&lo, Some(&hi));
        assert!(plan.scans.len() <= 2);
        let walked: u64 = plan.scans.iter().map(|r| m.keys.iter().filter(|x| r.contains(x)).count() as u64).sum();
        assert!(walked <= 4 * k, "walked {walked} keys with segments of {k}");
        assert_eq!(m.count(&lo, Some(&hi)), m.truth(&lo, Some(&hi)));
        assert_eq!(m.count(b"", None), 20_000);
        // Bounded: about one bound per `MIN_SEGMENT_KEYS` keys at most, here.
        assert!(m.s.bounds.len() as u64 <= 2 * 20_000 / MIN_SEGMENT_KEYS + 1, "{} bounds", m.s.bounds.len());
    }

    #[test]
    fn deletes_merge_segments_and_an_emptied_group_keeps_one() {
        let mut m = Model::new();
        for n in 0..5_000 {
            m.put(&key(n));
        }
        m.settle();
        assert!(m.s.bounds.len() > 10);
        for n in 0..5_000 {
            m.delete(&key(n));
        }
        m.check_invariants();
        assert_eq!(m.s.bounds.len(), 1, "every segment merged into the first");
        assert_eq!(m.count(b"", None), 0);
    }

    #[test]
    fn segments_stay_bounded_as_the_group_grows() {
        let mut s = Segments::default();
        // Segments of MIN_SEGMENT_KEYS: more than twice MAX_SEGMENTS of them coarsen.
        let n = 3 * MAX_SEGMENTS;
        s.bounds =
            (0..n).map(|i| if i == 0 { Box::default() } else { format!("k{i:08}").into_bytes().into() }).collect();
        s.counts = vec![MIN_SEGMENT_KEYS; n as usize];
        s.total = n * MIN_SEGMENT_KEYS;
        s.coarsen();
        assert!(s.bounds.len() as u64 <= 2 * MAX_SEGMENTS);
        assert_eq!(s.counts.iter().sum::<u64>(), n * MIN_SEGMENT_KEYS);
        assert!(s.bounds.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_shrinking_group_looks_for_oversized_segments_again() {
        // A group of 3 * MIN_SEGMENT_KEYS * MAX_SEGMENTS keys in segments of the aim.
        let mut s = Segments::default();
        let n = MAX_SEGMENTS;
        s.bounds =
            (0..n).map(|i| if i == 0 { Box::default() } else { format!("k{i:08}").into_bytes().into() }).collect();
        s.counts = vec![3 * MIN_SEGMENT_KEYS; n as usize];
        s.total = n * 3 * MIN_SEGMENT_KEYS;
        s.checked();
        assert!(!s.needs_check());
        assert!(s.oversized().is_empty());
        // The total falls to a third (only the total: the aim follows it), and with it the
        // aim to MIN_SEGMENT_KEYS: every segment is now over twice the aim, though none grew.
        s.total = n * MIN_SEGMENT_KEYS;
        assert!(s.needs_check(), "the aim fell below the one last checked at");
        assert_eq!(s.oversized().len() as u64, n);
        s.checked();
        assert!(!s.needs_check());
    }

    proptest! {
        #[test]
        fn counts_match_the_keys(
            ops in proptest::collection::vec((any::<bool>(), 0u32..3000), 1..3000),
            ranges in proptest::collection::vec((0u32..3000, 0u32..3000, any::<bool>()), 1..20),
            settle_every in 1usize..400,
        ) {
            let mut m = Model::new();
            for (i, (put, n)) in ops.into_iter().enumerate() {
                let k = format!("{n:05}").into_bytes();
                if put { m.put(&k) } else { m.delete(&k) }
                if i % settle_every == 0 {
                    m.settle();
                }
            }
            m.check_invariants();
            for (a, b, open) in ranges {
                let (start, end) = (format!("{a:05}").into_bytes(), format!("{b:05}").into_bytes());
                let end = (!open).then_some(&end[..]);
                prop_assert_eq!(m.count(&start, end), m.truth(&start, end));
                prop_assert_eq!(m.count(b"", end), m.truth(b"", end));
            }
        }
    }
}
