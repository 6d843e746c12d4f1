//! Checks that need no search, because etcd numbers its writes: a write's revision is its
//! position in the one order of all writes.
//!
//! - every value a response shows was written to that key, at the revision its write was
//!   answered with;
//! - no two writes made the same revision;
//! - each client's header revisions never go down (its requests run one at a time);
//! - real time agrees with revisions: an operation invoked after another completed shows a
//!   revision at least as high, and a strictly higher one when it made a revision
//!   (serializable reads are exempt: they may be stale);
//! - a put attached to a lease was not answered after the lease's revoke had completed, nor
//!   before its grant was invoked;
//! - a page of a list at revision `R` shows every key of its range as `R` had it (by the
//!   known writes), in key order, within its limit;
//! - a serializable read shows the key as some revision `h` had it: its value's write is the
//!   last known write at or below `h` (sequential consistency, with the per-client rule).

use std::collections::{BTreeMap, HashMap};

use super::history::{Input, Kv, Op, Output};
use super::prepare::{Prepared, Status};

/// A failed check: what and which ops (indices into `History::ops`).
pub struct Failure {
    /// Which rule: a short stable name (`"real time"`, `"gap"`, ...).
    pub check: &'static str,
    pub message: String,
    pub ops: Vec<usize>,
}

fn fail(check: &'static str, message: String, ops: Vec<usize>) -> Result<(), Failure> {
    Err(Failure { check, message, ops })
}

/// Runs every check of this module.
pub fn check(ops: &[Op], p: &Prepared) -> Result<(), Failure> {
    values_were_written(ops, p)?;
    revisions_unique(ops, p)?;
    clients_monotonic(ops, p)?;
    real_time(ops, p)?;
    leases(ops, p)?;
    serializable_reads(ops, p)?;
    lists(ops, p)
}

fn values_were_written(ops: &[Op], p: &Prepared) -> Result<(), Failure> {
    for (i, op) in ops.iter().enumerate() {
        let (Input::Get { key, .. }, Some(Output::Get { revision, kv: Some(kv) })) = (&op.input, &op.output) else {
            continue;
        };
        let Some(w) = p.writer_of(ops, key, &kv.value) else {
            return fail(
                "value",
                format!("read of {key:?} shows {:?}, which no request wrote to it", kv.value),
                vec![i],
            );
        };
        if kv.mod_revision > *revision {
            return fail(
                "value",
                format!("read at revision {revision} shows a value of revision {}", kv.mod_revision),
                vec![i],
            );
        }
        if let Some(r) = p.made_revision(w) {
            if r != kv.mod_revision {
                return fail(
                    "value",
                    format!(
                        "read shows {:?} at mod_revision {} but its write made revision {r}",
                        kv.value, kv.mod_revision
                    ),
                    vec![w, i],
                );
            }
        }
    }
    Ok(())
}

fn revisions_unique(ops: &[Op], p: &Prepared) -> Result<(), Failure> {
    let mut by_revision: HashMap<i64, usize> = HashMap::new();
    for i in 0..ops.len() {
        if let Some(r) = p.made_revision(i) {
            if let Some(other) = by_revision.insert(r, i) {
                return fail("unique revision", format!("two writes made revision {r}"), vec![other, i]);
            }
        }
    }
    Ok(())
}

fn clients_monotonic(ops: &[Op], _p: &Prepared) -> Result<(), Failure> {
    let mut last: HashMap<usize, (i64, usize)> = HashMap::new();
    let mut order: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].output.is_some()).collect();
    order.sort_by_key(|&i| ops[i].invoke);
    for i in order {
        let rev = ops[i].output.as_ref().expect("filtered").revision();
        if let Some(&(prev, j)) = last.get(&ops[i].client) {
            if rev < prev {
                return fail(
                    "client order",
                    format!("client {} saw revision {prev} and then {rev}", ops[i].client),
                    vec![j, i],
                );
            }
        }
        last.insert(ops[i].client, (rev, i));
    }
    Ok(())
}

fn is_serializable(op: &Op) -> bool {
    matches!(op.input, Input::Get { serializable: true, .. })
}

fn real_time(ops: &[Op], p: &Prepared) -> Result<(), Failure> {
    // Completed operations by complete time, each with the revision it showed.
    let mut completed: Vec<(u64, i64, usize)> = (0..ops.len())
        .filter(|&i| !is_serializable(&ops[i]))
        .filter_map(|i| Some((ops[i].complete?, ops[i].output.as_ref()?.revision(), i)))
        .collect();
    completed.sort_unstable();
    // Every operation with a known outcome, by invoke time.
    let mut checked: Vec<usize> = (0..ops.len())
        .filter(|&i| p.status[i] == Status::Must && !is_serializable(&ops[i]) && p.outputs[i].is_some())
        .collect();
    checked.sort_by_key(|&i| ops[i].invoke);
    let mut next = 0;
    let mut max: Option<(i64, usize)> = None;
    for i in checked {
        while next < completed.len() && completed[next].0 < ops[i].invoke {
            let (_, rev, j) = completed[next];
            if max.is_none_or(|(m, _)| rev > m) {
                max = Some((rev, j));
            }
            next += 1;
        }
        let Some((m, j)) = max else { continue };
        let out = p.outputs[i].as_ref().expect("filtered");
        let rev = out.revision();
        if out.made_revision() && rev <= m {
            return fail(
                "real time",
                format!("a write made revision {rev} after an operation that had completed showed revision {m}"),
                vec![j, i],
            );
        }
        if rev < m {
            return fail(
                "real time",
                format!("an operation showed revision {rev} after one that had completed showed revision {m}"),
                vec![j, i],
            );
        }
    }
    Ok(())
}

fn leases(ops: &[Op], p: &Prepared) -> Result<(), Failure> {
    let mut grants: HashMap<i64, usize> = HashMap::new();
    let mut revokes: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        match op.input {
            Input::LeaseGrant { id } if p.status[i] != Status::Dropped => {
                grants.insert(id, i);
            }
            Input::LeaseRevoke { id } if p.status[i] == Status::Must => revokes.entry(id).or_default().push(i),
            _ => {}
        }
    }
    for (i, op) in ops.iter().enumerate() {
        let Input::Put { lease, .. } = op.input else { continue };
        if lease == 0 || p.status[i] != Status::Must {
            continue;
        }
        if let (Some(&g), Some(c)) = (grants.get(&lease), op.complete) {
            if c < ops[g].invoke {
                return fail(
                    "lease",
                    format!("a put to lease {lease} succeeded before the lease was granted"),
                    vec![i, g],
                );
            }
        }
        for &r in revokes.get(&lease).map(Vec::as_slice).unwrap_or_default() {
            if ops[r].complete.is_some_and(|c| c < op.invoke) {
                return fail(
                    "lease",
                    format!("a put to lease {lease} succeeded after the lease was revoked"),
                    vec![r, i],
                );
            }
        }
    }
    Ok(())
}

/// The known writes of one key by revision: `Some(op)` for a put, `None` for a delete.
pub fn timelines(ops: &[Op], p: &Prepared) -> HashMap<String, BTreeMap<i64, Option<usize>>> {
    let mut t: HashMap<String, BTreeMap<i64, Option<usize>>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        let (Some(key), Some(rev)) = (op.input.key(), p.made_revision(i)) else { continue };
        let entry = if op.input.written_value().is_some() { Some(i) } else { None };
        t.entry(key.to_owned()).or_default().insert(rev, entry);
    }
    t
}

/// Whether `key` may have been as `kv` says at revision `at`, given the known writes: the
/// value's write is the last known write at or below `at`, no revoke of its lease completed
/// in between, and an absent key's last known put may have been deleted by then.
pub fn state_at(
    ops: &[Op],
    p: &Prepared,
    timeline: Option<&BTreeMap<i64, Option<usize>>>,
    key: &str,
    at: i64,
    kv: Option<&Kv>,
) -> Result<(), String> {
    let empty = BTreeMap::new();
    let timeline = timeline.unwrap_or(&empty);
    let last_known = timeline.range(..=at).next_back();
    // The revision of a completed revoke of `w`'s lease in `(from, at]`.
    let revoked_between = |w: usize, from: i64| -> Option<i64> {
        let Input::Put { lease, .. } = ops[w].input else { return None };
        let revisions = p.revoke_revisions.get(&lease)?;
        revisions.iter().copied().find(|r| lease != 0 && *r > from && *r <= at)
    };
    match kv {
        Some(kv) => {
            if kv.mod_revision > at {
                return Err(format!("{key:?} at revision {at} shows a value of revision {}", kv.mod_revision));
            }
            let w = p
                .writer_of(ops, key, &kv.value)
                .ok_or_else(|| format!("{:?} was never written to {key:?}", kv.value))?;
            if let Some(r) = p.made_revision(w).filter(|r| *r != kv.mod_revision) {
                return Err(format!(
                    "{key:?} shows {:?} at mod_revision {} but its write made revision {r}",
                    kv.value, kv.mod_revision
                ));
            }
            if let Some((&r, _)) = last_known.filter(|(&r, _)| r > kv.mod_revision) {
                return Err(format!(
                    "{key:?} at revision {at} shows the value of revision {} but revision {r} overwrote it",
                    kv.mod_revision
                ));
            }
            if let Some(r) = revoked_between(w, kv.mod_revision) {
                return Err(format!("{key:?} at revision {at} shows a value whose lease was revoked at revision {r}"));
            }
            Ok(())
        }
        None => {
            let Some((&r, &Some(w))) = last_known else { return Ok(()) };
            let may_delete = p.may_revoke || p.may_delete_keys.contains(key);
            if may_delete || revoked_between(w, r).is_some() {
                return Ok(());
            }
            Err(format!("{key:?} at revision {at} shows no value, but revision {r} put one and nothing deleted it"))
        }
    }
}

fn serializable_reads(ops: &[Op], p: &Prepared) -> Result<(), Failure> {
    let t = timelines(ops, p);
    for (i, op) in ops.iter().enumerate() {
        let (Input::Get { key, serializable: true }, Some(Output::Get { revision, kv })) = (&op.input, &op.output)
        else {
            continue;
        };
        if let Err(message) = state_at(ops, p, t.get(key.as_str()), key, *revision, kv.as_ref()) {
            let mut involved = vec![i];
            if let Some(tl) = t.get(key.as_str()) {
                involved.extend(tl.range(..=*revision).next_back().and_then(|(_, w)| *w));
            }
            return fail("serializable read", format!("serializable read: {message}"), involved);
        }
    }
    Ok(())
}

/// The end of the range of keys starting with `prefix` (etcd's `WithPrefix`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn lists(ops: &[Op], p: &Prepared) -> Result<(), Failure> {
    let t = timelines(ops, p);
    for (i, op) in ops.iter().enumerate() {
        let (Input::List { prefix, start, revision: at, limit }, Some(Output::List { revision, kvs, more })) =
            (&op.input, &op.output)
        else {
            continue;
        };
        let at = if *at > 0 { *at } else { *revision };
        if i64::try_from(kvs.len()).expect("a page fits i64") > *limit {
            return fail("list", format!("a page of limit {limit} holds {} keys", kvs.len()), vec![i]);
        }
        let end = prefix_end(prefix);
        let mut last: Option<&str> = None;
        for (key, kv) in kvs {
            if key.as_str() < start.as_str() || key.as_bytes() >= end.as_slice() || !key.starts_with(prefix.as_str()) {
                return fail("list", format!("{key:?} is outside the listed range"), vec![i]);
            }
            if last.is_some_and(|l| l >= key.as_str()) {
                return fail("list", format!("{key:?} after {last:?}: not in key order"), vec![i]);
            }
            last = Some(key);
            if let Err(m) = state_at(ops, p, t.get(key.as_str()), key, at, Some(kv)) {
                return fail("list", format!("list at revision {at}: {m}"), vec![i]);
            }
        }
        // Every key of the range the page covers that it does not show was absent at `at`.
        let covered_to = if *more { last } else { None };
        for (key, timeline) in &t {
            let inside = key.as_str() >= start.as_str()
                && key.starts_with(prefix.as_str())
                && covered_to.is_none_or(|l| key.as_str() <= l);
            if inside && !kvs.iter().any(|(k, _)| k == key) {
                if let Err(m) = state_at(ops, p, Some(timeline), key, at, None) {
                    return fail("list", format!("list at revision {at} misses {key:?}: {m}"), vec![i]);
                }
            }
        }
    }
    Ok(())
}
