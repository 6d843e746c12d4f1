//! Range reads with etcd's exact semantics (`etcdserver/txn/range.go` + `mvcc rangeKeys`):
//!
//! - `revision > current` → `FutureRevision`; `revision <= 0` → current;
//!   `revision < compact` → `Compacted` (`== compact` is readable).
//! - `count` is every key in the range at that revision, regardless of `limit` and of the
//!   min/max filters; `count_only` returns no kvs.
//! - Without sorting or filters, `limit + 1` keys are fetched to set `more`; with them, all
//!   keys are fetched, filtered, sorted, then cut to `limit`.
//! - Sort: `NONE` with target `KEY` and `ASCEND` with `KEY` both mean key order; `NONE` with
//!   another target means ascending on it. Ties come out in etcd's order (Go's unstable
//!   `sort.Sort`, see `go_sort`).
//! - `keys_only` clears values, keeps revisions.
//!
//! Cost: values are decoded for at most `limit + 1` keys (all keys when sorting or
//! filtering, as etcd); `count` takes the rest from the RocksDB keys alone; `count_only`
//! and `keys_only` decode no value (unless sorting by value).

use std::cmp::Ordering;

use crate::command::{RangeRequest, SortOrder, SortTarget};
use crate::engine::Reader;
use crate::error::{Error, Result};
use crate::go_sort::go_sort;
use crate::kv::KeyValue;
use crate::mvcc::{self, KeyRange};
use crate::response::RangeResponse;
use crate::revision::{GroupId, Revision};

/// Most response entries reserved up front (a limited page reserves `limit + 1`).
const KVS_PREALLOCATED_MAX: usize = 1024;

/// Runs `req` on view `r` whose latest revision is `current`; `compact` is the scheduled
/// compact revision (-1 if never). `header_revision` goes into the response.
pub(crate) fn range(
    r: &Reader<'_>,
    g: GroupId,
    req: &RangeRequest,
    current: Revision,
    compact: Revision,
    header_revision: Revision,
) -> Result<RangeResponse> {
    if req.revision > current {
        return Err(Error::FutureRevision { requested: req.revision, current });
    }
    let rev = if req.revision <= 0 { current } else { req.revision };
    if rev < compact {
        return Err(Error::Compacted { requested: rev, compacted: compact });
    }
    let order = SortOrder::try_from(req.sort_order).map_err(|_| Error::InvalidSortOption)?;
    let target = SortTarget::try_from(req.sort_target).map_err(|_| Error::InvalidSortOption)?;
    // etcd sorts ascending by default when the target is not the key; keys come out of the
    // scan in ascending key order already. The effective order decides whether the scan may
    // stop at the limit: a sort must see every key first.
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) | (SortOrder::Ascend, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let fetch_limit = if req.count_only {
        0
    } else if order != SortOrder::None || filtered || req.limit <= 0 {
        usize::MAX
    } else {
        usize::try_from(req.limit).unwrap_or(usize::MAX).saturating_add(1)
    };

    // Values are decoded only when the response carries them or the sort compares them;
    // keys past `fetch_limit` are only counted.
    let with_value = !req.keys_only || (order != SortOrder::None && target == SortTarget::Value);
    let range = KeyRange::new(&req.key, &req.range_end);
    let at = (rev != current).then_some(rev);
    let mut kvs: Vec<KeyValue> = Vec::with_capacity(fetch_limit.min(KVS_PREALLOCATED_MAX));
    let count = mvcc::scan(r, g, &range, at, fetch_limit, &mut |k, v| {
        kvs.push(if with_value {
            KeyValue::decode_stored(k, v)?
        } else {
            KeyValue::decode_stored_without_value(k, v)?
        });
        Ok(())
    })?;
    let count = i64::try_from(count).expect("a key count fits in i64");

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
    }
    if req.keys_only && with_value {
        for kv in &mut kvs {
            kv.value = bytes::Bytes::new();
        }
    }
    Ok(RangeResponse { revision: header_revision, kvs, more, count })
}
