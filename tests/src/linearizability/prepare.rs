//! Facts derived from a history before any check runs: who wrote each value, the revision
//! of every write that is known to have happened, and which unknown operations must, may or
//! cannot have taken effect.
//!
//! Every value a run writes is unique, so a value seen by a read or a watch names the one
//! request that wrote it. A write whose response was lost but whose value was seen did take
//! effect, at the `mod_revision` it was seen with: it becomes a write of known revision that
//! still has no complete time. An unknown write never seen while a watch covered its key for
//! every revision of the run did not take effect (a watch that missed it fails its own
//! checks), so it is dropped; any other unknown write may or may not have happened.

use std::collections::{HashMap, HashSet};

use super::history::{History, Input, Op, Output, WatchItem};

/// Whether an operation is part of every linearization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It took effect: its response (or an observation of it) is known.
    Must,
    /// Outcome unknown: it may have taken effect at any time after its invoke.
    May,
    /// It did not take effect (an unknown read, or an unknown write nobody saw).
    Dropped,
}

/// The derived facts, indexed like `History::ops`.
pub struct Prepared {
    /// The operation's response, or the one implied by an observation of its value.
    pub outputs: Vec<Option<Output>>,
    pub status: Vec<Status>,
    /// value → index of the op that wrote it.
    pub writers: HashMap<String, usize>,
    /// lease → the header revisions of its completed revokes.
    pub revoke_revisions: HashMap<i64, Vec<i64>>,
    /// Keys an unknown delete may have deleted.
    pub may_delete_keys: HashSet<String>,
    /// Whether an unknown revoke may have deleted any key.
    pub may_revoke: bool,
}

/// A contradiction found while preparing (it is a violation of the history, not a bug of
/// the recorder).
pub struct Contradiction {
    pub message: String,
    pub ops: Vec<usize>,
}

/// Derives [`Prepared`] from `h`. Panics when two requests wrote the same value (the
/// workload guarantees unique values; the checker relies on it).
pub fn prepare<'h>(h: &'h History) -> Result<Prepared, Contradiction> {
    let mut writers = HashMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        if let Some(v) = op.input.written_value() {
            let previous = writers.insert(v.to_owned(), i);
            assert!(previous.is_none(), "value {v:?} written twice: values must be unique");
        }
    }
    let mut revision_max = h.ops.iter().filter_map(|o| o.output.as_ref()).map(Output::revision).max().unwrap_or(0);

    // value → (mod_revision, the op that saw it) from reads, watch events and prev_kv.
    let mut seen: HashMap<&'h str, (i64, Option<usize>)> = HashMap::new();
    let mut observe = |value: &'h str, rev: i64, by: Option<usize>| -> Result<(), Contradiction> {
        match seen.get(value) {
            Some(&(r, other)) if r != rev => Err(Contradiction {
                message: format!("value {value:?} was seen at mod_revision {r} and at {rev}"),
                ops: other.into_iter().chain(by).collect(),
            }),
            Some(_) => Ok(()),
            None => {
                seen.insert(value, (rev, by));
                Ok(())
            }
        }
    };
    for (i, op) in h.ops.iter().enumerate() {
        match &op.output {
            Some(Output::Get { kv: Some(kv), .. }) => observe(&kv.value, kv.mod_revision, Some(i))?,
            Some(Output::List { kvs, .. }) => {
                for (_, kv) in kvs {
                    observe(&kv.value, kv.mod_revision, Some(i))?;
                }
            }
            _ => {}
        }
    }
    for w in &h.watches {
        for item in &w.items {
            if let WatchItem::Event(e) = item {
                revision_max = revision_max.max(e.header_revision);
                if !e.delete {
                    observe(&e.value, e.mod_revision, None)?;
                }
                if let Some(p) = &e.prev {
                    observe(&p.value, p.mod_revision, None)?;
                }
            } else if let WatchItem::Progress { revision } = item {
                revision_max = revision_max.max(*revision);
            }
        }
    }

    let mut outputs = Vec::with_capacity(h.ops.len());
    let mut status = Vec::with_capacity(h.ops.len());
    for op in &h.ops {
        let (out, st) = match (&op.output, &op.input) {
            (Some(o), _) => (Some(o.clone()), Status::Must),
            (None, Input::Get { .. } | Input::List { .. } | Input::LeaseGrant { .. }) => (None, Status::Dropped),
            (None, Input::Put { value, key, .. } | Input::Cas { value, key, .. }) => match seen.get(value.as_str()) {
                Some(&(rev, _)) => {
                    let out = if matches!(op.input, Input::Put { .. }) {
                        Output::Put { revision: rev }
                    } else {
                        Output::Cas { revision: rev, succeeded: true }
                    };
                    (Some(out), Status::Must)
                }
                None if watched_throughout(h, key, revision_max) => (None, Status::Dropped),
                None => (None, Status::May),
            },
            (None, Input::Delete { .. } | Input::LeaseRevoke { .. }) => (None, Status::May),
        };
        outputs.push(out);
        status.push(st);
    }
    let mut revoke_revisions: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut may_delete_keys = HashSet::new();
    let mut may_revoke = false;
    for (i, op) in h.ops.iter().enumerate() {
        match (&op.input, status[i], &outputs[i]) {
            (Input::LeaseRevoke { id }, Status::Must, Some(o)) => {
                revoke_revisions.entry(*id).or_default().push(o.revision())
            }
            (Input::LeaseRevoke { .. }, Status::May, _) => may_revoke = true,
            (Input::Delete { key }, Status::May, _) => {
                may_delete_keys.insert(key.clone());
            }
            _ => {}
        }
    }
    Ok(Prepared { outputs, status, writers, revoke_revisions, may_delete_keys, may_revoke })
}

/// Whether the watch records together delivered every revision `1..=revision_max` for `key`.
fn watched_throughout(h: &History, key: &str, revision_max: i64) -> bool {
    let mut spans: Vec<(i64, i64)> = h
        .watches
        .iter()
        .filter(|w| key.starts_with(&w.prefix))
        .map(|w| (w.start_revision, w.covered_revision()))
        .collect();
    spans.sort_unstable();
    // Revision 1 is the empty store: nothing to deliver.
    let mut next = 2;
    for (start, covered) in spans {
        if start > next {
            break;
        }
        next = next.max(covered + 1);
    }
    next > revision_max
}

impl Prepared {
    /// The op that wrote `value` to `key`, if any did.
    pub fn writer_of(&self, ops: &[Op], key: &str, value: &str) -> Option<usize> {
        self.writers.get(value).copied().filter(|&w| ops[w].input.key() == Some(key))
    }

    /// The revision op `i` made, when it is known to have made one.
    pub fn made_revision(&self, i: usize) -> Option<i64> {
        self.outputs[i].as_ref().filter(|o| o.made_revision()).map(Output::revision)
    }
}
