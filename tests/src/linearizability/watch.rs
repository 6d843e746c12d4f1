//! Watch guarantees, checked per watch stream against the same history (as etcd's
//! robustness tests do):
//!
//! - events come in revision order, inside the watched range, at or after the start
//!   revision, with no event twice, and a header revision no lower than their own;
//! - a progress notification at revision `p` is never followed by an event at or below `p`
//!   (it must not claim a revision before events it has not delivered);
//! - every event matches a write of the history: a PUT's value was written to that key and
//!   at that revision; a DELETE has a delete or a lease revoke that can explain it;
//! - no gaps: every known write to the range with a revision from the start revision up to
//!   what the stream covered (its last event or progress notification) is delivered, except
//!   a DELETE at the start revision of a stream that started at a compact revision (etcd's
//!   compaction removes a tombstone at exactly the compact revision);
//! - `prev_kv` is the key's previous version: the previous event on that key in the stream,
//!   or, for the first one, a version consistent with the known writes (a DELETE always has
//!   one).

use std::collections::{HashMap, HashSet};

use super::history::{Input, Kv, Op, WatchItem, WatchRecord};
use super::prepare::{Prepared, Status};
use super::revisions::{state_at, timelines, Failure};

/// Checks one watch record; a failure names the offending item's position in `ops` empty
/// and its message carries the item.
pub fn check(ops: &[Op], p: &Prepared, w: &WatchRecord) -> Result<(), Failure> {
    let t = timelines(ops, p);
    // (key, revision) of every delete known to have deleted, and whether any revoke may
    // have deleted keys (which keys a revoke deleted is not in its response).
    let known_deletes: HashSet<(&str, i64)> = (0..ops.len())
        .filter_map(|d| match &ops[d].input {
            Input::Delete { key } => Some((key.as_str(), p.made_revision(d)?)),
            _ => None,
        })
        .collect();
    let any_revoke =
        (0..ops.len()).any(|d| matches!(ops[d].input, Input::LeaseRevoke { .. }) && p.status[d] != Status::Dropped);
    let fail = |check: &'static str, message: String, ops: Vec<usize>| Err(Failure { check, message, ops });
    let mut last_revision = 0i64;
    let mut progress = 0i64;
    let mut delivered: HashSet<(i64, &str)> = HashSet::new();
    // key → the key's previous version as this stream showed it (None: deleted).
    let mut previous: HashMap<&str, Option<Kv>> = HashMap::new();
    for (pos, item) in w.items.iter().enumerate() {
        let e = match item {
            WatchItem::Progress { revision } => {
                progress = progress.max(*revision);
                continue;
            }
            WatchItem::Event(e) => e,
        };
        let at = format!(
            "watch {} item {pos} ({} {:?} at {})",
            w.watcher,
            if e.delete { "DELETE" } else { "PUT" },
            e.key,
            e.mod_revision
        );
        if !e.key.starts_with(&w.prefix) {
            return fail("range", format!("{at}: outside the watched prefix {:?}", w.prefix), vec![]);
        }
        if e.mod_revision < w.start_revision {
            return fail("range", format!("{at}: before the start revision {}", w.start_revision), vec![]);
        }
        if e.mod_revision < last_revision {
            return fail("order", format!("{at}: after an event at revision {last_revision}"), vec![]);
        }
        if e.mod_revision <= progress {
            return fail("progress", format!("{at}: after a progress notification at revision {progress}"), vec![]);
        }
        if e.header_revision < e.mod_revision {
            return fail("header", format!("{at}: in a response with header revision {}", e.header_revision), vec![]);
        }
        if !delivered.insert((e.mod_revision, e.key.as_str())) {
            return fail("duplicate", format!("{at}: delivered twice"), vec![]);
        }
        last_revision = e.mod_revision;

        // The event matches a write of the history.
        let mut involved = Vec::new();
        if e.delete {
            let explained = known_deletes.contains(&(e.key.as_str(), e.mod_revision))
                || any_revoke
                || p.may_delete_keys.contains(&e.key);
            if !explained {
                return fail("match", format!("{at}: no delete or revoke of the history explains it"), vec![]);
            }
        } else {
            let Some(wr) = p.writer_of(ops, &e.key, &e.value) else {
                return fail("match", format!("{at}: value {:?} was never written to the key", e.value), vec![]);
            };
            involved.push(wr);
            if let Some(r) = p.made_revision(wr).filter(|r| *r != e.mod_revision) {
                return fail("match", format!("{at}: its write made revision {r}"), involved);
            }
        }

        // prev_kv is the previous version of the key.
        if w.prev_kv {
            match previous.get(e.key.as_str()) {
                Some(expected) if *expected != e.prev => {
                    return fail(
                        "prev_kv",
                        format!("{at}: prev_kv {:?}, but the stream's previous version is {expected:?}", e.prev),
                        involved,
                    )
                }
                Some(_) => {}
                None => {
                    if e.delete && e.prev.is_none() {
                        return fail("prev_kv", format!("{at}: a DELETE without prev_kv"), involved);
                    }
                    if let Some(prev) = &e.prev {
                        if prev.mod_revision >= e.mod_revision {
                            return fail(
                                "prev_kv",
                                format!("{at}: prev_kv of revision {}", prev.mod_revision),
                                involved,
                            );
                        }
                    }
                    if let Err(m) = state_at(ops, p, t.get(&e.key), &e.key, e.mod_revision - 1, e.prev.as_ref()) {
                        return fail("prev_kv", format!("{at}: prev_kv: {m}"), involved);
                    }
                }
            }
        }
        let version = (!e.delete).then(|| Kv { value: e.value.clone(), mod_revision: e.mod_revision });
        previous.insert(e.key.as_str(), version);
    }

    // No gaps: every known write in range from the start revision to what the stream covered.
    let covered = w.covered_revision();
    for (key, timeline) in &t {
        if !key.starts_with(&w.prefix) || covered < w.start_revision {
            continue;
        }
        for (&rev, &writer) in timeline.range(w.start_revision..=covered) {
            // A delete at the compact revision the stream started from is compacted away.
            let compacted_delete = w.start_compacted && rev == w.start_revision && writer.is_none();
            if !delivered.contains(&(rev, key.as_str())) && !compacted_delete {
                let op = writer.or_else(|| (0..ops.len()).find(|&i| p.made_revision(i) == Some(rev)));
                return fail("gap", 
                    format!(
                        "watch {}: the write of {key:?} at revision {rev} is missing (stream from {} covered up to {covered})",
                        w.watcher, w.start_revision
                    ),
                    op.into_iter().collect(),
                );
            }
        }
    }
    Ok(())
}
