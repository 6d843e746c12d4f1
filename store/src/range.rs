//! Range reads with etcd's exact semantics (`etcdserver/txn/range.go` + `mvcc rangeKeys`):
//!
//! - `revision > current` → `FutureRevision`; `revision <= 0` → current;
//!   `revision < compact` → `Compacted` (`== compact` is readable).
//! - `count` is every key in the range at that revision, regardless of `limit` and of the
//!   min/max filters; `count_only` returns no kvs.
//! - Without sorting or filters, etcd fetches `limit + 1` keys to set `more`, which makes
//!   `more` equal to `count > limit`: here the first `limit` keys are fetched and `more` comes
//!   from the count. With them, all keys are fetched, filtered, sorted, then cut to `limit`.
//! - Sort: `NONE` with target `KEY` and `ASCEND` with `KEY` both mean key order; `NONE` with
//!   another target means ascending on it. Ties come out in etcd's order (Go's unstable
//!   `sort.Sort`, see `go_sort`).
//! - `keys_only` clears values, keeps revisions.
//!
//! Cost: values are decoded for at most `limit` keys, the ones returned (all keys when
//! sorting or filtering, as etcd); `more` is `count > limit`, and `count` takes the rest
//! from the RocksDB keys alone; `count_only` and `keys_only` decode no value (unless sorting
//! by value).
//!
//! Paging: a limited page that has `more` records in [`PageCounts`] how many keys of the
//! range follow its last key at its revision. The next page (`key = last key + "\0"`, same
//! `range_end` and revision) takes its `count` from there and stops its scan after the keys
//! it returns, so it costs the seek and its own keys, not a walk to the end of the range:
//! paging through N keys walks each key about once, as its own page's key or while the
//! first page counts them.

use std::cmp::Ordering;
use std::collections::VecDeque;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::command::{RangeRequest, SortOrder, SortTarget};
use crate::engine::Reader;
use crate::error::{Error, Result};
use crate::go_sort::go_sort;
use crate::key_counts::CountPlan;
use crate::kv::KeyValue;
use crate::mvcc::{self, KeyRange};
use crate::response::{RangeResponse, WireKvs, WireRangeResponse, KVS_FIELD_KEY};
use crate::revision::{GroupId, Revision};

/// Most response entries reserved up front (a limited page reserves `limit`).
const KVS_PREALLOCATED_MAX: usize = 1024;

/// Page continuations a group remembers ([`PageCounts`]), the least recently recorded
/// dropped first: enough for this many clients paging through ranges at once.
const PAGE_COUNTS_MAX: usize = 64;

/// The counts of the ranges that continue recent pages: "at revision `revision`, the range
/// `[key, range_end)` holds `count` keys", recorded by a page whose last key is just below
/// `key`, so the next page need not walk the rest of the range to count it.
///
/// Invariant, what makes a recorded count stay true: the keys live at a revision never
/// change while that revision is readable (a write makes a new revision; a compaction keeps
/// every key live at the revisions it leaves readable, and reads below it fail first), unless
/// the group's data is replaced (an import's begin, a snapshot install). Those bump the
/// group's data epoch under its committed-metadata write lock; a reader takes the epoch with
/// its RocksDB snapshot under the read lock, and a count is used only under the epoch it was
/// recorded in. Only reads of committed state (not a txn's, which may see its own writes)
/// record or use counts.
#[derive(Default)]
pub(crate) struct PageCounts {
    entries: Mutex<VecDeque<PageCount>>,
}

struct PageCount {
    epoch: u64,
    revision: Revision,
    key: Bytes,
    range_end: Bytes,
    count: u64,
}

impl PageCounts {
    fn get(&self, epoch: u64, revision: Revision, key: &[u8], range_end: &[u8]) -> Option<u64> {
        let entries = self.entries.lock();
        entries
            .iter()
            .find(|e| e.epoch == epoch && e.revision == revision && e.key == key && e.range_end == range_end)
            .map(|e| e.count)
    }

    fn record(&self, entry: PageCount) {
        let mut entries = self.entries.lock();
        entries.retain(|e| {
            !(e.epoch == entry.epoch
                && e.revision == entry.revision
                && e.key == entry.key
                && e.range_end == entry.range_end)
        });
        if entries.len() >= PAGE_COUNTS_MAX {
            entries.pop_front();
        }
        entries.push_back(entry);
    }
}

/// The committed state a read sees: for [`PageCounts`], the group's counts and the data
/// epoch taken with the read's RocksDB snapshot; and the count of the range planned from
/// the group's key counts with that snapshot ([`count_range`]), if it wants one.
pub(crate) struct Committed<'a> {
    pub pages: &'a PageCounts,
    pub epoch: u64,
    pub count: Option<CountPlan>,
}

/// The range whose count a read of committed state at revision `current` may take from
/// the group's key counts (`key_counts.rs`): a range at the current revision that needs a
/// count beyond the keys it returns (`count_only`, or a `limit`). Whether the count is then
/// used depends on the scan ([`scan_counted`]).
pub(crate) fn count_range(req: &RangeRequest, current: Revision) -> Option<KeyRange> {
    let wanted = !req.range_end.is_empty()
        && (req.count_only || req.limit > 0)
        && (req.revision <= 0 || req.revision == current);
    wanted.then(|| KeyRange::new(&req.key, &req.range_end))
}

/// What a range request reads, worked out from the request before any key is read.
struct Plan {
    /// The revision read.
    rev: Revision,
    /// `Some(rev)` below the current revision: the read follows links back from each head.
    at: Option<Revision>,
    order: SortOrder,
    target: SortTarget,
    /// Whether min/max revision filters apply.
    filtered: bool,
    /// No sort and no filter: the first `limit` keys of the range are the answer.
    unordered: bool,
    /// Keys the scan visits (decodes), in key order; the rest are only counted.
    fetch_limit: usize,
    /// Whether visited keys need their values.
    with_value: bool,
    range: KeyRange,
}

/// Checks `req` against the view's `current` and `compact` revisions and plans its scan.
fn plan(req: &RangeRequest, current: Revision, compact: Revision) -> Result<Plan> {
    if req.revision > current {
        return Err(Error::FutureRevision { requested: req.revision, current });
    }
    let rev = if req.revision <= 0 { current } else { req.revision };
    if rev < compact {
        return Err(Error::Compacted { requested: rev, compacted: compact });
    }
    let requested = SortOrder::try_from(req.sort_order).map_err(|_| Error::InvalidSortOption)?;
    let target = SortTarget::try_from(req.sort_target).map_err(|_| Error::InvalidSortOption)?;
    // etcd sorts ascending by default when the target is not the key; keys come out of the
    // scan in ascending key order already.
    let order = match (requested, target) {
        (SortOrder::None, SortTarget::Key) | (SortOrder::Ascend, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // Without a sort or a filter, the keys returned are the first `limit` of the range and
    // `more` is `count > limit` (etcd fetches `limit + 1` for it: the same answer), so the
    // scan visits `limit` keys. etcd fetches every key first only when the request names a
    // sort order or a filter: a request that names a target other than the key but no order
    // gets the first `limit + 1` keys of the range sorted by that target, cut to `limit`.
    let unordered = order == SortOrder::None && !filtered;
    let fetch_limit = if req.count_only {
        0
    } else if requested != SortOrder::None || filtered || req.limit <= 0 {
        usize::MAX
    } else {
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        if unordered {
            limit
        } else {
            limit.saturating_add(1)
        }
    };

    // Values are decoded only when the response carries them or the sort compares them;
    // keys past `fetch_limit` are only counted.
    let with_value = !req.keys_only || (order != SortOrder::None && target == SortTarget::Value);
    let range = KeyRange::new(&req.key, &req.range_end);
    let at = (rev != current).then_some(rev);
    Ok(Plan { rev, at, order, target, filtered, unordered, fetch_limit, with_value, range })
}

/// The signature of [`range`] and [`range_wire`].
pub(crate) type RangeFn<T> =
    fn(&Reader<'_>, GroupId, &RangeRequest, Revision, Revision, Revision, Option<Committed<'_>>) -> Result<T>;

/// Runs `req` on view `r` whose latest revision is `current`; `compact` is the scheduled
/// compact revision (-1 if never). `header_revision` goes into the response. `committed`:
/// `r` reads committed state only, and page counts may be used and recorded.
pub(crate) fn range(
    r: &Reader<'_>,
    g: GroupId,
    req: &RangeRequest,
    current: Revision,
    compact: Revision,
    header_revision: Revision,
    committed: Option<Committed<'_>>,
) -> Result<RangeResponse> {
    range_planned(r, g, req, plan(req, current, compact)?, header_revision, committed)
}

/// [`range`] of `req` once planned.
fn range_planned(
    r: &Reader<'_>,
    g: GroupId,
    req: &RangeRequest,
    p: Plan,
    header_revision: Revision,
    committed: Option<Committed<'_>>,
) -> Result<RangeResponse> {
    let mut kvs: Vec<KeyValue> = Vec::with_capacity(p.fetch_limit.min(KVS_PREALLOCATED_MAX));
    let with_value = p.with_value;
    let count = scan_counted(r, g, req, &p, &committed, &mut |k, v| {
        kvs.push(if with_value {
            KeyValue::decode_stored(k, v)?
        } else {
            KeyValue::decode_stored_without_value(k, v)?
        });
        Ok(())
    })?;
    let Plan { rev, order, target, filtered, unordered, .. } = p;

    if filtered {
        kvs.retain(|kv| {
            !(req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision
                || req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision
                || req.max_create_revision != 0 && kv.create_revision > req.max_create_revision
                || req.min_create_revision != 0 && kv.create_revision < req.min_create_revision)
        });
    }
    if order != SortOrder::None {
        let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
            match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        // Go's unstable sort, as etcd uses it (its `sort.Reverse` for DESCEND), so ties come
        // out in etcd's order.
        if order == SortOrder::Descend {
            go_sort(&mut kvs, &|a: &KeyValue, b: &KeyValue| by(b, a) == Ordering::Less);
        } else {
            go_sort(&mut kvs, &|a: &KeyValue, b: &KeyValue| by(a, b) == Ordering::Less);
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() as i64 > req.limit {
        kvs.truncate(req.limit as usize);
        more = true;
    } else if unordered && !req.count_only && req.limit > 0 && count > req.limit {
        // The scan stopped at `limit` keys; the count says more follow.
        more = true;
    }
    if let (true, Some(c), Some(last)) = (unordered && more, &committed, kvs.last()) {
        record_next_page(c, rev, &last.key, req, count - kvs.len() as i64);
    }
    if req.keys_only && with_value {
        for kv in &mut kvs {
            kv.value = bytes::Bytes::new();
        }
    }
    Ok(RangeResponse { revision: header_revision, kvs, more, count })
}

/// Scans the planned range, handing its first `fetch_limit` keys to `visit`, and returns the
/// range's count. The scan stops after the visited keys when the count can be had otherwise:
/// a page that continues a recorded one knows it already; a committed read at the current
/// revision that the limit cut short takes it from the group's key counts
/// ([`counted_by_segments`]), and one the limit did not cut visited every key. Anything else
/// (a read without a limit, a page at an older revision not recorded) walks the rest of the
/// range to count it.
fn scan_counted(
    r: &Reader<'_>,
    g: GroupId,
    req: &RangeRequest,
    p: &Plan,
    committed: &Option<Committed<'_>>,
    visit: &mut mvcc::ScanVisitor<'_>,
) -> Result<i64> {
    let limited = committed.as_ref().filter(|_| p.fetch_limit != usize::MAX);
    let recorded = limited.and_then(|c| c.pages.get(c.epoch, p.rev, &req.key, &req.range_end));
    let segments = limited.and_then(|c| c.count.as_ref()).filter(|_| p.at.is_none());
    // With a count to be had otherwise, the scan stops after the keys it visits.
    let counting = if recorded.is_some() || segments.is_some() { mvcc::Count::Visited } else { mvcc::Count::All };
    let scanned = mvcc::scan(r, g, &p.range, p.at, p.fetch_limit, counting, visit)?;
    let count = match (recorded, segments) {
        (Some(n), _) => {
            debug_assert!(scanned <= n, "a page count recorded below the keys its range holds");
            n
        }
        (None, Some(plan)) if scanned as usize >= p.fetch_limit => counted_by_segments(r, g, p, plan)?,
        // The scan counted every key (`Count::All`), or the range ended before the limit and
        // the scan visited every key in it. Counting by segments would walk the range's part
        // of the segments it cuts through, all of it for a range inside one segment (a list
        // of one namespace): a second walk of the keys just visited.
        _ => scanned,
    };
    Ok(i64::try_from(count).expect("a key count fits in i64"))
}

/// The count of a range at the current revision from the group's key counts, planned in the
/// read's snapshot: the sums of the segments inside the range plus walks of the (at most
/// two) it cuts through.
fn counted_by_segments(r: &Reader<'_>, g: GroupId, p: &Plan, plan: &CountPlan) -> Result<u64> {
    let n = plan.count(r, g)?;
    // An O(range) check, so tests only: every count planned is what a walk finds.
    #[cfg(debug_assertions)]
    {
        let range = &p.range;
        let walk = || mvcc::scan(r, g, range, None, 0, mvcc::Count::All, &mut |_, _| Ok(()));
        #[cfg(test)]
        let walked = crate::engine::cursor_moves::uncounted(walk)?;
        #[cfg(not(test))]
        let walked = walk()?;
        assert_eq!(n, walked, "key counts of group {} disagree with a walk of {range:?}", g.0);
    }
    #[cfg(not(debug_assertions))]
    let _ = p;
    Ok(n)
}

/// Records that the range of `req` after `last_key` holds `remaining` keys at `rev`, for the
/// page that continues this one.
fn record_next_page(c: &Committed<'_>, rev: Revision, last_key: &[u8], req: &RangeRequest, remaining: i64) {
    let mut next = Vec::with_capacity(last_key.len() + 1);
    next.extend_from_slice(last_key);
    next.push(0);
    c.pages.record(PageCount {
        epoch: c.epoch,
        revision: rev,
        key: Bytes::from(next),
        range_end: req.range_end.clone(),
        count: u64::try_from(remaining).expect("a page holds at most the keys counted"),
    });
}

/// [`range`] with every key-value already encoded as a `RangeResponse.kvs` field
/// ([`WireKvs`]), for a server that sends them as they are.
///
/// A request without a sort, a filter or `keys_only` (what lists and gets send) encodes each
/// visited key from its stored value without decoding it ([`KeyValue::append_wire`]): no
/// record, no value copy besides the one into the response buffer. Any other request is
/// answered by [`range`] and its records encoded. Both give the same bytes.
pub(crate) fn range_wire(
    r: &Reader<'_>,
    g: GroupId,
    req: &RangeRequest,
    current: Revision,
    compact: Revision,
    header_revision: Revision,
    committed: Option<Committed<'_>>,
) -> Result<WireRangeResponse> {
    let p = plan(req, current, compact)?;
    if !p.unordered || req.keys_only {
        return Ok(WireRangeResponse::encode(range_planned(r, g, req, p, header_revision, committed)?));
    }
    let mut out = WireBuffers::new();
    let mut last_key_at = 0..0;
    let count = scan_counted(r, g, req, &p, &committed, &mut |k, v| {
        last_key_at = out.push(k, v);
        Ok(())
    })?;
    // Unordered: the scan stopped at `limit` keys, and the count says whether more follow.
    let more = !req.count_only && req.limit > 0 && count > req.limit;
    if let (true, Some(c)) = (more && out.entries > 0, &committed) {
        record_next_page(c, p.rev, &out.current[last_key_at], req, count - out.entries as i64);
    }
    Ok(WireRangeResponse { revision: header_revision, kvs: out.finish(), more, count })
}

/// First buffer of a [`WireBuffers`]; each next one doubles, up to [`WIRE_BUFFER_MAX`].
const WIRE_BUFFER_FIRST: usize = 8 << 10;
const WIRE_BUFFER_MAX: usize = 1 << 20;

/// The encoded key-values of a range answer, each framed as a `RangeResponse.kvs` field
/// ([`WireKvs`]), appended into buffers that are never reallocated: when the current one
/// cannot take the next entry it is closed and a larger one begun, so nothing is copied again
/// as the answer grows (one growing buffer copied a list of 100 MB about twice more on its
/// way, doubling). An entry never spans two buffers; each closed buffer wastes less than one
/// entry. The framing is written here, with the entry, so the answer's writer copies whole
/// buffers: a `Bytes` per entry cost two atomic reference counts each time the entry was
/// sliced, cloned into the encoder and dropped (~2.5 % of a server's CPU under the
/// Kubernetes profile).
struct WireBuffers {
    closed: Vec<Bytes>,
    current: Vec<u8>,
    entries: usize,
}

impl WireBuffers {
    fn new() -> WireBuffers {
        WireBuffers { closed: Vec::new(), current: Vec::new(), entries: 0 }
    }

    /// Appends the `kvs` field of the stored version `stored` of `key`; returns where the
    /// key's bytes are in `current`.
    fn push(&mut self, key: &[u8], stored: &[u8]) -> std::ops::Range<usize> {
        let len = KeyValue::wire_len(key, stored);
        let need = 1 + prost::length_delimiter_len(len) + len;
        if self.current.capacity() - self.current.len() < need {
            let size = (self.current.capacity() * 2).clamp(WIRE_BUFFER_FIRST, WIRE_BUFFER_MAX).max(need);
            let full = std::mem::replace(&mut self.current, Vec::with_capacity(size));
            if !full.is_empty() {
                self.closed.push(Bytes::from(full));
            }
        }
        let capacity = self.current.capacity();
        self.current.push(KVS_FIELD_KEY);
        prost::encoding::encode_varint(len as u64, &mut self.current);
        let start = self.current.len();
        let key_at = KeyValue::append_wire(&mut self.current, key, stored);
        debug_assert_eq!(self.current.len() - start, len, "KeyValue::wire_len disagrees with append_wire");
        debug_assert_eq!(self.current.capacity(), capacity, "an entry outgrew the room made for it");
        self.entries += 1;
        key_at
    }

    fn finish(mut self) -> WireKvs {
        if !self.current.is_empty() {
            self.closed.push(Bytes::from(self.current));
        }
        WireKvs::from_chunks(self.closed, self.entries)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message;

    use crate::command::DeleteRangeRequest;
    use crate::command::{Command, CommandBody, PutRequest, RangeRequest, SortOrder, SortTarget};
    use crate::config::StoreConfig;
    use crate::engine::cursor_moves;
    use crate::kv::decodes;
    use crate::revision::GroupId;
    use crate::store::Store;

    const G: GroupId = GroupId(1);

    fn key(i: usize) -> Bytes {
        Bytes::from(format!("k{i:05}"))
    }

    /// Puts `(key, value)` pairs, several commands per apply batch.
    fn put_all(store: &Store, index: &mut u64, kvs: impl Iterator<Item = (Bytes, Bytes)>) {
        let kvs: Vec<_> = kvs.collect();
        for chunk in kvs.chunks(256) {
            let cmds: Vec<(u64, Vec<u8>)> = chunk
                .iter()
                .map(|(key, value)| {
                    *index += 1;
                    let put = PutRequest { key: key.clone(), value: value.clone(), ..Default::default() };
                    (*index, Command::new(*index, CommandBody::Put(put)).encode_to_vec())
                })
                .collect();
            let entries: Vec<(u64, &[u8])> = cmds.iter().map(|(i, c)| (*i, &c[..])).collect();
            for r in store.apply(G, &entries).unwrap() {
                r.unwrap();
            }
        }
    }

    /// A store in a temporary directory holding keys `0..n`, key `i` with `value(i)`: the
    /// directory (removed when dropped), the store and the last log index used.
    fn store_with(n: usize, value: impl Fn(usize) -> Bytes) -> (tempfile::TempDir, Store, u64) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let mut index = 0;
        put_all(&store, &mut index, (0..n).map(|i| (key(i), value(i))));
        (dir, store, index)
    }

    fn all_keys() -> RangeRequest {
        RangeRequest { key: Bytes::from_static(b"k"), range_end: Bytes::from_static(b"l"), ..Default::default() }
    }

    /// `(value decodes, header-only decodes, cursor steps)` of one range.
    fn cost_of(store: &Store, req: &RangeRequest) -> (crate::response::RangeResponse, (u64, u64, u64)) {
        decodes::take();
        cursor_moves::take();
        let resp = store.range(G, req).unwrap();
        let (values, headers) = decodes::take();
        let (_, steps) = cursor_moves::take();
        (resp, (values, headers, steps))
    }

    #[test]
    fn counts_read_no_value_and_a_limited_page_decodes_only_its_keys() {
        const N: usize = 300;
        let (_dir, store, mut index) = store_with(N, |_| Bytes::from(vec![b'v'; 100]));
        let first = store.current_revision(G);
        // A later write, so reads at `first` follow a link back from the key's head.
        put_all(&store, &mut index, std::iter::once((key(0), Bytes::from_static(b"new"))));
        for revision in [0, first] {
            let (r, (values, headers, _)) = cost_of(&store, &RangeRequest { count_only: true, revision, ..all_keys() });
            assert_eq!((r.count, r.kvs.len(), r.more), (N as i64, 0, false));
            assert_eq!((values, headers), (0, 0), "count_only decodes nothing (revision {revision})");

            let (r, (values, headers, _)) = cost_of(&store, &RangeRequest { keys_only: true, revision, ..all_keys() });
            assert_eq!((r.count, r.kvs.len()), (N as i64, N));
            assert!(r.kvs.iter().all(|kv| kv.value.is_empty() && kv.mod_revision > 0));
            assert_eq!((values, headers), (0, N as u64), "keys_only decodes no value (revision {revision})");

            let (r, (values, headers, _)) = cost_of(&store, &RangeRequest { limit: 10, revision, ..all_keys() });
            assert_eq!((r.count, r.kvs.len(), r.more), (N as i64, 10, true));
            assert_eq!((values, headers), (10, 0), "a page decodes the values it returns only (revision {revision})");

            // Exactly `limit` keys in the range: no `more`, and still only those decoded.
            let ten = RangeRequest { key: key(0), range_end: key(10), limit: 10, revision, ..Default::default() };
            let (r, (values, _, _)) = cost_of(&store, &ten);
            assert_eq!((r.count, r.kvs.len(), r.more), (10, 10, false));
            assert_eq!(values, 10);

            // Sorting by value must read every value, keys_only or not (etcd's semantics).
            let by_value = RangeRequest {
                keys_only: true,
                limit: 10,
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Value as i32,
                revision,
                ..all_keys()
            };
            let (r, (values, _, _)) = cost_of(&store, &by_value);
            assert_eq!((r.count, r.kvs.len(), r.more), (N as i64, 10, true));
            assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
            assert_eq!(values, N as u64);
        }
    }

    #[test]
    fn a_limited_range_that_ends_before_its_limit_walks_only_its_keys() {
        const N: usize = 1_000;
        let (_dir, store, _) = store_with(N, |_| Bytes::from(vec![b'v'; 10]));
        // 50 keys in the middle of the group's key segments, read with a limit of 500 (a
        // list of one namespace): the scan finds the range's end before the limit, so the
        // count is the keys it visited and no segment is walked for it.
        let req = RangeRequest { key: key(430), range_end: key(480), limit: 500, ..Default::default() };
        let (r, (_, _, steps)) = cost_of(&store, &req);
        assert_eq!((r.count, r.kvs.len(), r.more), (50, 50, false));
        assert!(steps <= 50, "{steps} cursor steps for a range of 50 keys");
        // Cut by its limit, the same range takes its count from the segments.
        let (r, _) = cost_of(&store, &RangeRequest { limit: 20, ..req });
        assert_eq!((r.count, r.kvs.len(), r.more), (50, 20, true));
    }

    /// Pages through the `total` keys at `revision` in pages of `limit`, as etcd clients do;
    /// returns the keys and the cursor moves `(seeks, steps)` of all pages together.
    fn page_through(store: &Store, revision: i64, limit: i64, total: usize) -> (Vec<Bytes>, (u64, u64)) {
        let mut from = Bytes::from_static(b"k");
        let mut keys = Vec::new();
        let mut revision = revision;
        let (mut seeks, mut steps) = (0, 0);
        cursor_moves::take();
        loop {
            let req =
                RangeRequest { key: from, range_end: Bytes::from_static(b"l"), limit, revision, ..Default::default() };
            let page = store.range(G, &req).unwrap();
            let (s, t) = cursor_moves::take();
            (seeks, steps) = (seeks + s, steps + t);
            // `count` is the keys from this page's start on.
            assert_eq!(page.count as usize, total - keys.len(), "count after {} keys", keys.len());
            if revision == 0 {
                revision = page.revision;
            }
            let total_before = keys.len();
            keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
            assert_eq!(page.more, page.count > limit, "more after {total_before} keys");
            let Some(last) = page.kvs.last() else { break };
            let mut next = last.key.to_vec();
            next.push(0);
            from = Bytes::from(next);
            if !page.more {
                break;
            }
        }
        (keys, (seeks, steps))
    }

    #[test]
    fn paging_at_a_pinned_revision_walks_each_key_about_once() {
        const N: usize = 2000;
        const LIMIT: i64 = 50;
        let (_dir, store, mut index) = store_with(N, |_| Bytes::from_static(b"v1"));
        // Every tenth key gets many versions.
        for round in 0..12 {
            put_all(&store, &mut index, (0..N).step_by(10).map(|i| (key(i), Bytes::from(format!("v{round}")))));
        }
        let pinned = store.current_revision(G);
        let want: Vec<Bytes> = (0..N).map(key).collect();
        let pages = N as u64 / LIMIT as u64;

        // At the current revision (the kv column family): the first page counts the N keys,
        // every later page steps over its own keys only.
        let (keys, (seeks, steps)) = page_through(&store, 0, LIMIT, N);
        assert_eq!(keys, want);
        assert!(steps <= 2 * N as u64 + pages, "paging {N} keys by {LIMIT} stepped {steps} times");
        // One seek a page, and the first page's count walks the two ends of its range.
        assert!(seeks <= pages + 3, "{seeks} seeks for {pages} pages");

        // At an old revision, with a newer version of every key: each key's head is read
        // once for the count and once in its page, and its older versions are reached by
        // links (reads by key), never stepped over, however many a key has.
        put_all(&store, &mut index, (0..N).map(|i| (key(i), Bytes::from_static(b"v2"))));
        let (keys, (seeks, steps)) = page_through(&store, pinned, LIMIT, N);
        assert_eq!(keys, want);
        assert!(
            steps <= 2 * N as u64 + 2 * pages,
            "paging {N} keys by {LIMIT} at revision {pinned} stepped {steps} times"
        );
        // A seek in `kv` and one in `gone` per page, and the first page's count.
        assert!(seeks <= 2 * (pages + 1), "{seeks} seeks for {pages} pages");

        // Without the recorded count (another client's page, or one forgotten), a page still
        // answers exactly, counting the rest of the range.
        let mid = RangeRequest { key: key(N / 2), limit: LIMIT, revision: pinned, ..all_keys() };
        let (r, (_, _, steps)) = cost_of(&store, &mid);
        assert_eq!((r.count, r.kvs.len(), r.more), ((N / 2) as i64, LIMIT as usize, true));
        assert!(steps >= (N / 2) as u64, "an unrecorded page counts the rest of its range");
    }

    /// A count at the current revision takes the segments wholly inside its range from the
    /// group's key counts and walks only the partial ones at its ends (also after a reopen,
    /// which builds the counts from RocksDB); with the counts off it walks every key.
    #[test]
    fn a_count_at_the_current_revision_walks_only_the_ends_of_its_range() {
        const N: usize = 6_000;
        let edges = 4 * crate::key_counts::MIN_SEGMENT_KEYS;
        for key_counts in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = StoreConfig { key_counts, ..StoreConfig::default() };
            let mut store = Store::open(dir.path(), cfg.clone()).unwrap();
            let mut index = 0;
            put_all(&store, &mut index, (0..N).map(|i| (key(i), Bytes::from_static(b"v"))));
            for reopened in [false, true] {
                if reopened {
                    drop(store);
                    store = Store::open(dir.path(), cfg.clone()).unwrap();
                }
                let cases = [
                    (RangeRequest { count_only: true, ..all_keys() }, N, 0),
                    (
                        RangeRequest { key: key(1234), range_end: key(5678), count_only: true, ..Default::default() },
                        4444,
                        0,
                    ),
                    (RangeRequest { key: key(100), range_end: key(5900), limit: 10, ..Default::default() }, 5800, 10),
                ];
                for (req, count, returned) in cases {
                    let (r, (_, _, steps)) = cost_of(&store, &req);
                    assert_eq!((r.count as usize, r.kvs.len()), (count, returned), "{req:?}");
                    if key_counts {
                        assert!(steps <= edges + returned as u64, "{steps} steps to count {count} keys ({reopened})");
                    } else {
                        assert!(steps >= count as u64 - 1, "{steps} steps to count {count} keys without counts");
                    }
                }
            }
        }
    }

    /// Counts stay exact through creates, puts over live keys, deletes of single keys and of
    /// ranges (which merge segments) and batches mixing them, and after a reopen.
    #[test]
    fn counts_follow_creates_and_deletes() {
        use std::collections::BTreeSet;
        const KEYS: usize = 4_000;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let mut live = BTreeSet::new();
        let (mut index, mut seed) = (0u64, 0x2545_f491_4f6c_dd1du64);
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..40 {
            let mut cmds = Vec::new();
            for _ in 0..200 {
                let i = next(KEYS);
                index += 1;
                let body = if round % 3 == 2 && next(4) == 0 {
                    let end = (i + next(300)).min(KEYS);
                    let keys: Vec<usize> = live.range(i..end).copied().collect();
                    for k in keys {
                        live.remove(&k);
                    }
                    CommandBody::DeleteRange(DeleteRangeRequest { key: key(i), range_end: key(end), prev_kv: false })
                } else {
                    live.insert(i);
                    CommandBody::Put(PutRequest { key: key(i), value: Bytes::from_static(b"v"), ..Default::default() })
                };
                cmds.push((index, Command::new(index, body).encode_to_vec()));
            }
            let entries: Vec<(u64, &[u8])> = cmds.iter().map(|(i, c)| (*i, &c[..])).collect();
            for r in store.apply(G, &entries).unwrap() {
                r.unwrap();
            }
            if round == 30 {
                drop(store);
                store = Store::open(dir.path(), StoreConfig::default()).unwrap();
            }
            for _ in 0..5 {
                let (a, b) = (next(KEYS + 1), next(KEYS + 1));
                let (a, b) = (a.min(b), a.max(b));
                let want = live.range(a..b).count() as i64;
                let req = RangeRequest { key: key(a), range_end: key(b), count_only: true, ..Default::default() };
                assert_eq!(store.range(G, &req).unwrap().count, want, "[{a}, {b}) in round {round}");
                let req =
                    RangeRequest { key: key(a), range_end: Bytes::from_static(b"\0"), limit: 3, ..Default::default() };
                assert_eq!(store.range(G, &req).unwrap().count, live.range(a..).count() as i64, "[{a}, ..)");
            }
        }
    }

    /// The wire answer is the decoded answer encoded, byte for byte, over every request shape:
    /// the fast path's (no sort, filter or `keys_only`; at the current revision and an old
    /// one; pages whose counts were recorded by either path) and the fallback's.
    #[test]
    fn wire_answers_are_the_decoded_answers_encoded() {
        let (_dir, store, mut index) = store_with(300, |i| Bytes::from(format!("value {i}")));
        let old = store.current_revision(G);
        put_all(&store, &mut index, (0..300).step_by(3).map(|i| (key(i), Bytes::from(vec![b'x'; i]))));
        // Values larger than the answer's largest buffer, and one that fills a buffer's rest.
        put_all(
            &store,
            &mut index,
            [(key(100), vec![b'L'; 1 << 20]), (key(101), vec![b'M'; 5000])]
                .into_iter()
                .map(|(k, v)| (k, Bytes::from(v))),
        );
        let mut requests = vec![
            all_keys(),
            RangeRequest { key: key(7), ..Default::default() },
            RangeRequest { key: key(1000), ..Default::default() },
            RangeRequest { limit: 50, ..all_keys() },
            RangeRequest { key: key(250), limit: 500, ..all_keys() },
            // A limit equal to the count: no `more`.
            RangeRequest { key: key(250), limit: 50, ..all_keys() },
            RangeRequest { count_only: true, ..all_keys() },
            RangeRequest { keys_only: true, limit: 10, ..all_keys() },
            RangeRequest { min_mod_revision: old + 1, ..all_keys() },
            RangeRequest {
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Value as i32,
                limit: 20,
                ..all_keys()
            },
            RangeRequest { key: Bytes::from_static(b"\0"), range_end: Bytes::from_static(b"\0"), ..Default::default() },
        ];
        for revision in [0, old] {
            // A walk by pages: each page after the first uses the count the previous recorded.
            let mut next = key(0);
            for _ in 0..4 {
                let page = RangeRequest { key: next.clone(), limit: 90, revision, ..all_keys() };
                let decoded = store.range(G, &page).unwrap();
                next = Bytes::from([&decoded.kvs.last().unwrap().key[..], b"\0"].concat());
                requests.push(page);
            }
            requests.push(RangeRequest { revision, limit: 7, ..all_keys() });
        }
        for req in requests {
            let want = crate::response::WireRangeResponse::encode(store.range(G, &req).unwrap());
            assert_eq!(store.range_wire(G, &req).unwrap(), want, "{req:?}");
            // And in the other order, so each path also meets page counts the other recorded.
            let wire = store.range_wire(G, &req).unwrap();
            assert_eq!(wire, crate::response::WireRangeResponse::encode(store.range(G, &req).unwrap()), "{req:?}");
        }
        assert!(matches!(
            store.range_wire(G, &RangeRequest { revision: store.current_revision(G) + 1, ..all_keys() }),
            Err(crate::error::Error::FutureRevision { .. })
        ));
    }
}
