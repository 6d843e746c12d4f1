//! Write requests: Put, DeleteRange and Txn, with etcd's apply-time semantics.
//!
//! A Txn runs in three phases, like etcd's `txn.Txn`:
//! 1. **compare**: every compare of the txn and of the nested txns on the chosen path is
//!    evaluated against the state *before* the txn (`compareToPath`);
//! 2. **check**: the chosen ops are checked against that same state (range revisions,
//!    `ignore_*` on missing keys, unknown leases); any failure rejects the whole txn before
//!    anything is written;
//! 3. **execute**: ops run in order, each seeing the writes of the earlier ones; all writes
//!    share one main revision (`current + 1`) with increasing sub revisions. The checks and
//!    the duplicate-key rule of `command::validate` leave nothing to fail here; if an op
//!    still does (a check that missed a case), its error is deterministic and `Store::apply`
//!    rolls the whole txn back to its save point (etcd panics there instead).
//!
//! A missing key compares as an all-zero `KeyValue`, except that a VALUE compare on a
//! missing key is false; a compare with `range_end` must hold for every key in the range.

use std::cmp::Ordering;

use bytes::Bytes;

use crate::command::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, Request, RequestOp, TargetUnion, TxnRequest,
};
use crate::error::{Error, Result};
use crate::kv::KeyValue;
use crate::mvcc::{self, BatchWriter, KeyRange, Live};
use crate::range;
use crate::response::{DeleteRangeResponse, PutResponse, ResponseOp, TxnResponse};

/// A standalone Put (etcd `apply.Put`: the lease check comes first).
pub(crate) fn apply_put(w: &mut BatchWriter<'_>, p: &PutRequest) -> Result<PutResponse> {
    if p.lease != 0 && !w.lease_exists(p.lease)? {
        return Err(Error::LeaseNotFound(p.lease));
    }
    let prev = mvcc::get_live(&w.reader(), w.g, &p.key)?;
    if (p.ignore_value || p.ignore_lease) && prev.is_none() {
        return Err(Error::KeyNotFound);
    }
    w.begin();
    let resp = put(w, p, prev)?;
    w.end();
    Ok(resp)
}

/// A standalone DeleteRange; no revision bump if nothing matched.
pub(crate) fn apply_delete_range(w: &mut BatchWriter<'_>, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
    w.begin();
    let resp = delete_range(w, d)?;
    w.end();
    Ok(resp)
}

/// A Txn (validated by `command::validate`).
pub(crate) fn apply_txn(w: &mut BatchWriter<'_>, t: &TxnRequest) -> Result<TxnResponse> {
    let mut path = Vec::new();
    compare_to_path(w, t, &mut path)?;
    // etcd checks every put of the chosen path before any range, so when both would fail,
    // the put's error (an unknown lease, say) is the one reported.
    check_txn(w, t, &path, &mut 0, CheckPhase::Puts)?;
    check_txn(w, t, &path, &mut 0, CheckPhase::Ranges)?;
    w.begin();
    let mut resp = execute_txn(w, t, &path, &mut 0)?;
    resp.revision = w.end();
    Ok(resp)
}

/// A Txn executed without its check phase, as if a check had missed something: tests use it
/// to make an op fail after earlier ops of the same txn wrote.
#[cfg(test)]
pub(crate) fn apply_txn_skipping_checks(w: &mut BatchWriter<'_>, t: &TxnRequest) -> Result<TxnResponse> {
    let mut path = Vec::new();
    compare_to_path(w, t, &mut path)?;
    w.begin();
    let mut resp = execute_txn(w, t, &path, &mut 0)?;
    resp.revision = w.end();
    Ok(resp)
}

/// A read-only Txn ([`TxnRequest::is_read_only`]) evaluated exactly as [`apply_txn`] would
/// at the state `w` reads, without going through the log (etcd serves these after a read
/// barrier too). Writes nothing; the header revision is the current one, as applied.
pub(crate) fn read_only_txn(w: &mut BatchWriter<'_>, t: &TxnRequest) -> Result<TxnResponse> {
    assert!(t.is_read_only(), "read_only_txn called with a txn that writes");
    let before = w.meta.current_revision;
    let resp = apply_txn(w, t)?;
    assert!(
        w.events.is_empty() && w.meta.current_revision == before && resp.revision == before,
        "a read-only txn changed the store"
    );
    Ok(resp)
}

fn put(w: &mut BatchWriter<'_>, p: &PutRequest, prev: Option<Live>) -> Result<PutResponse> {
    let (value, lease) = match (prev.as_ref().map(|l| &l.kv), p.ignore_value, p.ignore_lease) {
        // The check phase refuses this before anything is written; reaching it means a
        // check missed a case. The error is etcd's for the request and deterministic; the
        // caller's save point undoes what the txn wrote before it.
        (None, true, _) | (None, _, true) => return Err(Error::KeyNotFound),
        (prev, iv, il) => (
            if iv { prev.expect("checked above").value.clone() } else { p.value.clone() },
            if il { prev.expect("checked above").lease } else { p.lease },
        ),
    };
    let prev = w.put(&p.key, value, lease, prev)?;
    Ok(PutResponse { revision: w.meta.current_revision + 1, prev_kv: if p.prev_kv { prev } else { None } })
}

fn delete_range(w: &mut BatchWriter<'_>, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
    let prevs = w.delete_range(&KeyRange::new(&d.key, &d.range_end))?;
    let revision = w.read_revision();
    Ok(DeleteRangeResponse {
        revision,
        deleted: prevs.len() as i64,
        prev_kvs: if d.prev_kv { prevs } else { Vec::new() },
    })
}

/// Appends the compare outcome of `t` and of every nested txn on the chosen path (DFS).
fn compare_to_path(w: &BatchWriter<'_>, t: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
    let mut ok = true;
    for c in &t.compare {
        if !apply_compare(w, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    for op in if ok { &t.success } else { &t.failure } {
        if let Some(Request::Txn(nested)) = &op.request {
            compare_to_path(w, nested, path)?;
        }
    }
    Ok(())
}

fn apply_compare(w: &BatchWriter<'_>, c: &Compare) -> Result<bool> {
    let range = KeyRange::new(&c.key, &c.range_end);
    let mut kvs = Vec::new();
    mvcc::scan(&w.reader(), w.g, &range, None, usize::MAX, mvcc::Count::All, &mut |k, v| {
        kvs.push(KeyValue::decode_stored(k, v)?);
        Ok(())
    })?;
    let target = CompareTarget::try_from(c.target).ok();
    if kvs.is_empty() {
        if target == Some(CompareTarget::Value) {
            // A missing value cannot be told from an empty one on the wire: always false.
            return Ok(false);
        }
        return Ok(compare_kv(c, target, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(c, target, kv)))
}

fn compare_kv(c: &Compare, target: Option<CompareTarget>, kv: &KeyValue) -> bool {
    let int = |v: Option<i64>| v.unwrap_or(0);
    let ord = match target {
        Some(CompareTarget::Value) => {
            let want = match &c.target_union {
                Some(TargetUnion::Value(v)) => v.clone(),
                _ => Bytes::new(),
            };
            kv.value.cmp(&want)
        }
        Some(CompareTarget::Create) => kv.create_revision.cmp(&int(match c.target_union {
            Some(TargetUnion::CreateRevision(v)) => Some(v),
            _ => None,
        })),
        Some(CompareTarget::Mod) => kv.mod_revision.cmp(&int(match c.target_union {
            Some(TargetUnion::ModRevision(v)) => Some(v),
            _ => None,
        })),
        Some(CompareTarget::Version) => kv.version.cmp(&int(match c.target_union {
            Some(TargetUnion::Version(v)) => Some(v),
            _ => None,
        })),
        Some(CompareTarget::Lease) => kv.lease.cmp(&int(match c.target_union {
            Some(TargetUnion::Lease(v)) => Some(v),
            _ => None,
        })),
        None => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        // etcd treats an unknown result as true.
        Err(_) => true,
    }
}

fn branch<'t>(t: &'t TxnRequest, path: &[bool], pos: &mut usize) -> &'t [RequestOp] {
    let ok = *path.get(*pos).expect("compare path covers every nested txn on the chosen path");
    *pos += 1;
    if ok {
        &t.success
    } else {
        &t.failure
    }
}

/// Which ops one pass of [`check_txn`] checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CheckPhase {
    Puts,
    Ranges,
}

/// etcd `checkRequests`: checks the chosen ops against the pre-txn state, one kind per pass.
fn check_txn(w: &BatchWriter<'_>, t: &TxnRequest, path: &[bool], pos: &mut usize, phase: CheckPhase) -> Result<()> {
    for op in branch(t, path, pos) {
        match &op.request {
            Some(Request::Range(r)) if phase == CheckPhase::Ranges => {
                let current = w.meta.current_revision;
                if r.revision == 0 {
                    continue;
                }
                if r.revision > current {
                    return Err(Error::FutureRevision { requested: r.revision, current });
                }
                if r.revision < w.meta.compact_revision {
                    return Err(Error::Compacted { requested: r.revision, compacted: w.meta.compact_revision });
                }
            }
            Some(Request::Put(p)) if phase == CheckPhase::Puts => {
                if (p.ignore_value || p.ignore_lease) && mvcc::get_current(&w.reader(), w.g, &p.key)?.is_none() {
                    return Err(Error::KeyNotFound);
                }
                if p.lease != 0 && !w.lease_exists(p.lease)? {
                    return Err(Error::LeaseNotFound(p.lease));
                }
            }
            Some(Request::Range(_) | Request::Put(_) | Request::DeleteRange(_)) => {}
            Some(Request::Txn(nested)) => check_txn(w, nested, path, pos, phase)?,
            None => return Err(Error::KeyNotFound),
        }
    }
    Ok(())
}

fn execute_txn(w: &mut BatchWriter<'_>, t: &TxnRequest, path: &[bool], pos: &mut usize) -> Result<TxnResponse> {
    let succeeded = path[*pos];
    let ops = branch(t, path, pos);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let resp = match &op.request {
            Some(Request::Range(r)) => {
                let rev = w.read_revision();
                ResponseOp::Range(range::range(&w.reader(), w.g, r, rev, w.meta.compact_revision, rev, None)?)
            }
            Some(Request::Put(p)) => {
                let prev = mvcc::get_live(&w.reader(), w.g, &p.key)?;
                ResponseOp::Put(put(w, p, prev)?)
            }
            Some(Request::DeleteRange(d)) => ResponseOp::DeleteRange(delete_range(w, d)?),
            Some(Request::Txn(nested)) => {
                // etcd leaves a nested txn's header revision at 0.
                ResponseOp::Txn(execute_txn(w, nested, path, pos)?)
            }
            None => return Err(Error::KeyNotFound),
        };
        responses.push(resp);
    }
    Ok(TxnResponse { revision: 0, succeeded, responses })
}
