//! A linearizability checker for histories of etcd v3 clients, and the recorder that makes
//! those histories.
//!
//! ```text
//!  client tasks ──invoke/complete──▶ Recorder ──History──▶ check()
//!  watch tasks  ──WatchRecord──────▶            │
//!                                               ├─ prepare: writers of values, revisions of
//!                                               │  unknown writes that were seen, drops
//!                                               ├─ revisions: unique, per-client monotonic,
//!                                               │  real time ⇔ revision order, leases,
//!                                               │  serializable reads at a revision
//!                                               ├─ search: Wing–Gong per key (register with
//!                                               │  revisions and leases), memoised
//!                                               └─ watch: order, duplicates, gaps, matches,
//!                                                  prev_kv, progress notifications
//! ```
//!
//! The model is one register per key: put, linearizable get, delete, compare-and-swap on
//! `mod_revision` or value, and lease revoke (which deletes the keys attached to the lease
//! when it runs). The history is partitioned by key; a revoke joins the partition of every key
//! a put attached to its lease, so it is checked once per such key, against that key's state.
//! Serializable gets are left out of the search and checked for sequential consistency per
//! client (see [`revisions`]).
//!
//! On a violation, [`check`] shrinks the history to a minimal failing sub-history (ops are
//! removed while the same check still fails) and [`Violation`] prints it.
//!
//! CAVEATS: keys are assumed to start absent, and leases never to expire during a run (the
//! workload grants TTLs longer than the run); each key's search has a step budget and a key
//! that exhausts it is reported inconclusive in the [`Report`], not accepted silently. A
//! revoke's response does not say which keys it deleted, so the watch gap check covers puts
//! and deletes only, and serializable reads and list pages are checked against the writes of
//! known revision (an unknown delete or revoke excuses a missing key). Values must be unique
//! per run: the recorder's users guarantee it, and [`check`] panics otherwise.

pub mod history;
mod prepare;
mod revisions;
mod search;
mod watch;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

pub use history::{
    Compare, History, Input, Kv, LeaseId, Op, OpId, Output, Recorder, WatchEvent, WatchItem, WatchRecord,
};
use prepare::Status;
use search::Verdict;

/// Longest time spent shrinking a failing history.
const SHRINK_TIME_MAX: Duration = Duration::from_secs(30);
/// Most ops a violation prints (a shrink cut short by its time limit may leave more).
const PRINT_OPS_MAX: usize = 300;

/// What a successful check covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub ops: usize,
    /// Operations with unknown outcome that may or may not have taken effect.
    pub unknown_may: usize,
    /// Operations with unknown outcome shown to have taken effect by a read or a watch.
    pub unknown_seen: usize,
    pub keys: usize,
    pub search_steps: u64,
    pub watch_records: usize,
    pub watch_events: usize,
    /// Keys whose search ran out of steps (neither accepted nor refuted).
    pub inconclusive_keys: Vec<String>,
}

/// Which check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Two observations of one value disagree.
    Observation,
    /// A check of [`revisions`], by name.
    Revisions(&'static str),
    /// No linearization of the key's operations exists.
    Key(String),
    /// A watch record breaks a watch guarantee, by name.
    Watch(&'static str),
}

/// A failed check with the minimal sub-history that still fails it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub kind: Kind,
    pub message: String,
    /// The minimal failing sub-history.
    pub history: History,
    /// Operations of the whole history before shrinking.
    pub ops_before_shrink: usize,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:?}: {}", self.kind, self.message)?;
        writeln!(
            f,
            "minimal failing sub-history ({} of {} ops, times in ms since the history began):",
            self.history.ops.len(),
            self.ops_before_shrink
        )?;
        for op in self.history.ops.iter().take(PRINT_OPS_MAX) {
            writeln!(f, "  {op}")?;
        }
        if self.history.ops.len() > PRINT_OPS_MAX {
            writeln!(f, "  ... {} more", self.history.ops.len() - PRINT_OPS_MAX)?;
        }
        for w in &self.history.watches {
            writeln!(
                f,
                "  watch {} on {:?} from revision {} (prev_kv {}):",
                w.watcher, w.prefix, w.start_revision, w.prev_kv
            )?;
            for item in &w.items {
                match item {
                    WatchItem::Progress { revision } => writeln!(f, "    progress {revision}")?,
                    WatchItem::Event(e) => writeln!(
                        f,
                        "    {} {:?}={:?} mod {} prev {:?} (header {})",
                        if e.delete { "DELETE" } else { "PUT" },
                        e.key,
                        e.value,
                        e.mod_revision,
                        e.prev,
                        e.header_revision
                    )?,
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |t: u64| t as f64 / 1e6;
        let complete = self.complete.map_or("unknown".to_owned(), |c| format!("{:.3}", ms(c)));
        write!(f, "client {} [{:.3}, {complete}] ", self.client, ms(self.invoke))?;
        match &self.input {
            Input::Put { key, value, lease } => write!(f, "put({key:?}, {value:?}, lease {lease})")?,
            Input::Get { key, serializable } => {
                write!(f, "get({key:?}{})", if *serializable { ", serializable" } else { "" })?
            }
            Input::Delete { key } => write!(f, "delete({key:?})")?,
            Input::List { prefix, start, revision, limit } => {
                write!(f, "list({prefix:?} from {start:?}, revision {revision}, limit {limit})")?
            }
            Input::Cas { key, compare, value } => write!(f, "txn(if {compare:?} then put({key:?}, {value:?}))")?,
            Input::LeaseGrant { id } => write!(f, "lease_grant({id})")?,
            Input::LeaseRevoke { id } => write!(f, "lease_revoke({id})")?,
        }
        match &self.output {
            None => write!(f, " -> ?"),
            Some(o) => write!(f, " -> {o:?}"),
        }
    }
}

/// An unshrunk failure: which check and which ops (indices into `History::ops`).
struct Failed {
    kind: Kind,
    message: String,
}

/// Checks `h`; on a violation returns it with a minimal failing sub-history.
pub fn check(h: &History) -> Result<Report, Box<Violation>> {
    match check_once(h) {
        Ok(report) => Ok(report),
        Err(failed) => Err(Box::new(shrink(h, failed))),
    }
}

fn check_once(h: &History) -> Result<Report, Failed> {
    let p = prepare::prepare(h)
        .map_err(|c| Failed { kind: Kind::Observation, message: format!("{} (ops {:?})", c.message, c.ops) })?;
    revisions::check(&h.ops, &p)
        .map_err(|f| Failed { kind: Kind::Revisions(f.check), message: format!("{} (ops {:?})", f.message, f.ops) })?;

    // Partitions: each key's ops (serializable reads aside), plus the revokes of every lease
    // a put attached to the key.
    let mut parts: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut leases_of: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        let Some(key) = op.input.key() else { continue };
        if !matches!(op.input, Input::Get { serializable: true, .. }) {
            parts.entry(key).or_default().push(i);
        }
        if let Input::Put { lease, .. } = op.input {
            if lease != 0 {
                leases_of.entry(key).or_default().insert(lease);
            }
        }
    }
    for (i, op) in h.ops.iter().enumerate() {
        if let Input::LeaseRevoke { id } = op.input {
            for (key, leases) in &leases_of {
                if leases.contains(&id) {
                    parts.entry(key).or_default().push(i);
                }
            }
        }
    }
    let mut report = Report {
        ops: h.ops.len(),
        unknown_may: p.status.iter().filter(|s| **s == Status::May).count(),
        unknown_seen: (0..h.ops.len()).filter(|&i| h.ops[i].output.is_none() && p.status[i] == Status::Must).count(),
        keys: parts.len(),
        watch_records: h.watches.len(),
        ..Report::default()
    };
    for (key, part) in &parts {
        let (verdict, steps) = search::check_key(&h.ops, &p, part);
        report.search_steps += steps;
        match verdict {
            Verdict::Linearizable => {}
            Verdict::Inconclusive => report.inconclusive_keys.push((*key).to_owned()),
            Verdict::Violation => {
                return Err(Failed {
                    kind: Kind::Key((*key).to_owned()),
                    message: format!("no linearization of the {} operations on {key:?}", part.len()),
                })
            }
        }
    }
    for w in &h.watches {
        report.watch_events += w.items.iter().filter(|i| matches!(i, WatchItem::Event(_))).count();
        watch::check(&h.ops, &p, w)
            .map_err(|f| Failed { kind: Kind::Watch(f.check), message: format!("{} (ops {:?})", f.message, f.ops) })?;
    }
    Ok(report)
}

/// Whether `op` only read: removing it from a history can never create a violation.
fn only_reads(op: &Op) -> bool {
    matches!(
        op.output,
        Some(
            Output::Get { .. }
                | Output::List { .. }
                | Output::Cas { succeeded: false, .. }
                | Output::Delete { deleted: 0, .. }
        )
    ) || matches!(op.input, Input::Get { .. } | Input::List { .. })
}

/// Removes ops, watch records and watch items while the same check still fails, within
/// [`SHRINK_TIME_MAX`].
///
/// Reads go first: without a write, the remaining reads could fail for a new reason (a read
/// of a value nobody wrote, a compare that no longer holds), so a write is only removed when
/// the writes left over still pass on their own, and the failure stays one of the reads.
fn shrink(h: &History, failed: Failed) -> Violation {
    let deadline = Instant::now() + SHRINK_TIME_MAX;
    let still_fails = |c: &History| match check_once(c) {
        Err(f) => f.kind == failed.kind,
        Ok(_) => false,
    };
    let mut best = h.clone();
    // First the big cuts: every watch, or every op on other keys.
    let without_watches = History { ops: best.ops.clone(), watches: Vec::new() };
    if still_fails(&without_watches) {
        best = without_watches;
    }
    if let Kind::Key(key) = &failed.kind {
        let only_key = History {
            ops: best.ops.iter().filter(|o| o.input.key().is_none_or(|k| k == key)).cloned().collect(),
            watches: best.watches.clone(),
        };
        if still_fails(&only_key) {
            best = only_key;
        }
    }
    for w in (0..best.watches.len()).rev() {
        let mut c = best.clone();
        c.watches.remove(w);
        if still_fails(&c) {
            best = c;
        }
    }
    best = remove_ops(best, deadline, only_reads, &still_fails);
    let writes_pass = |c: &History| {
        let writes = History { ops: c.ops.iter().filter(|o| !only_reads(o)).cloned().collect(), watches: Vec::new() };
        check_once(&writes).is_ok()
    };
    best = remove_ops(best, deadline, |o| !only_reads(o), &|c| still_fails(c) && writes_pass(c));
    // And single watch items, from the end.
    for w in 0..best.watches.len() {
        let mut i = best.watches[w].items.len();
        while i > 0 && Instant::now() < deadline {
            i -= 1;
            let mut c = best.clone();
            c.watches[w].items.remove(i);
            if still_fails(&c) {
                best = c;
            }
        }
    }
    let message = match check_once(&best) {
        Err(f) => f.message,
        Ok(_) => failed.message,
    };
    Violation { kind: failed.kind, message, history: best, ops_before_shrink: h.ops.len() }
}

/// Removes chunks of the ops `removable` selects, halving the chunk each round down to
/// single ops, keeping each removal after which `keep` holds.
fn remove_ops(
    mut best: History,
    deadline: Instant,
    removable: impl Fn(&Op) -> bool,
    keep: &dyn Fn(&History) -> bool,
) -> History {
    let count = best.ops.iter().filter(|o| removable(o)).count();
    let mut chunk = count.div_ceil(2).max(1);
    loop {
        // `skip` removable ops are kept before the chunk being tried.
        let mut skip = 0;
        while Instant::now() < deadline {
            let positions: Vec<usize> = (0..best.ops.len()).filter(|&i| removable(&best.ops[i])).collect();
            if skip >= positions.len() {
                break;
            }
            let chosen: Vec<usize> = positions[skip..(skip + chunk).min(positions.len())].to_vec();
            let mut c = best.clone();
            for &i in chosen.iter().rev() {
                c.ops.remove(i);
            }
            if keep(&c) {
                best = c;
            } else {
                skip += chunk;
            }
        }
        if chunk == 1 || Instant::now() >= deadline {
            return best;
        }
        chunk = chunk.div_ceil(2);
    }
}
