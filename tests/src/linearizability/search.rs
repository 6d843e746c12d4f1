//! The Wing–Gong search for one key: is there an order of the key's operations, consistent
//! with real time, in which each one's response is what a single register would answer?
//!
//! The register's state is the key's value (named by the op that wrote it), its
//! `mod_revision`, its lease and a revision floor: the highest revision any operation
//! linearized so far has shown. Revisions make the model stronger than a plain register:
//! a write that made revision `r` can only come after operations that showed revisions
//! below `r`, and a read that showed revision `h` only after writes at or below `h`, because
//! the store's revision grows along the linearization.
//!
//! The search is depth first, as in Wing & Gong and porcupine: at each step any operation
//! invoked before the earliest pending response may be linearized next; a (set of linearized
//! operations, state) pair that failed once is never explored again. An unknown operation
//! never has to be linearized (it may not have happened) and can be linearized at any time
//! after its invoke (its window extends to the end of the history).
//!
//! CAVEATS: the search is bounded by [`STEPS_MAX`]; a key that exhausts it is reported
//! inconclusive, not accepted.

use std::collections::HashSet;

use super::history::{Compare, Input, Op, Output};
use super::prepare::{Prepared, Status};

/// Most search steps for one key before it is reported inconclusive.
pub const STEPS_MAX: u64 = 2_000_000;

/// The register model's state for one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct KeyState {
    /// The op whose value the key holds; `None` when the key does not exist.
    value: Option<usize>,
    /// The key's `mod_revision`; `None` when it is not known (the value came from an unknown
    /// write nobody saw) or the key does not exist.
    mod_revision: Option<i64>,
    /// The lease the value is attached to (0: none).
    lease: i64,
    /// The highest revision shown by an operation linearized so far.
    floor: i64,
}

/// One operation of the key's partition.
struct PartOp {
    /// Index into `History::ops`.
    op: usize,
    invoke: u64,
    /// `u64::MAX` for an operation whose response is unknown.
    complete: u64,
    /// Whether every linearization must include it.
    must: bool,
}

/// What the search concluded for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order fits; the history ops of the partition.
    Violation,
    /// The step budget ran out.
    Inconclusive,
}

/// Checks the linearizable operations on `key` (and the revokes of its leases), given as
/// indices into `ops`. Returns the verdict and the number of steps taken.
pub fn check_key(ops: &[Op], prepared: &Prepared, part: &[usize]) -> (Verdict, u64) {
    let mut pops: Vec<PartOp> = part
        .iter()
        .filter(|&&i| prepared.status[i] != Status::Dropped)
        .map(|&i| {
            let must = prepared.status[i] == Status::Must;
            PartOp {
                op: i,
                invoke: ops[i].invoke,
                complete: if must { ops[i].complete.unwrap_or(u64::MAX) } else { u64::MAX },
                must,
            }
        })
        .collect();
    pops.sort_by_key(|p| (p.invoke, p.op));
    let n = pops.len();
    let must_total = pops.iter().filter(|p| p.must).count();
    let model = Model { ops, prepared };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut must_done = 0usize;
    let mut seen: HashSet<(Vec<u64>, KeyState)> = HashSet::new();
    // Each frame: the state reached, the candidates (position, next state) still to try.
    struct Frame {
        state: KeyState,
        candidates: Vec<(usize, KeyState)>,
        /// The position linearized to reach this frame (`usize::MAX` for the root).
        via: usize,
    }
    let initial = KeyState { value: None, mod_revision: None, lease: 0, floor: 0 };
    let mut stack = vec![Frame { state: initial, candidates: Vec::new(), via: usize::MAX }];
    let mut fresh = true;
    let mut steps = 0u64;
    loop {
        if must_done == must_total {
            return (Verdict::Linearizable, steps);
        }
        steps += 1;
        if steps > STEPS_MAX {
            return (Verdict::Inconclusive, steps);
        }
        let top = stack.last_mut().expect("the root frame stays");
        if fresh {
            // Any pending operation invoked before the earliest pending response may go next.
            let horizon = (0..n).filter(|&p| linearized[p / 64] & (1 << (p % 64)) == 0).map(|p| pops[p].complete).min();
            let horizon = horizon.unwrap_or(u64::MAX);
            let mut candidates = Vec::new();
            for (p, pop) in pops.iter().enumerate() {
                if pop.invoke > horizon {
                    break;
                }
                if linearized[p / 64] & (1 << (p % 64)) != 0 {
                    continue;
                }
                for next in model.step(&top.state, pop.op) {
                    let mut bits = linearized.clone();
                    bits[p / 64] |= 1 << (p % 64);
                    if !seen.contains(&(bits, next.clone())) {
                        candidates.push((p, next));
                    }
                }
            }
            // Try the earliest invoked first: a correct history is then found greedily.
            candidates.reverse();
            top.candidates = candidates;
            fresh = false;
        }
        match top.candidates.pop() {
            Some((p, next)) => {
                linearized[p / 64] |= 1 << (p % 64);
                if !seen.insert((linearized.clone(), next.clone())) {
                    linearized[p / 64] &= !(1 << (p % 64));
                    continue;
                }
                if pops[p].must {
                    must_done += 1;
                }
                stack.push(Frame { state: next, candidates: Vec::new(), via: p });
                fresh = true;
            }
            None => {
                let done = stack.pop().expect("a frame to pop");
                if done.via == usize::MAX {
                    return (Verdict::Violation, steps);
                }
                linearized[done.via / 64] &= !(1 << (done.via % 64));
                if pops[done.via].must {
                    must_done -= 1;
                }
            }
        }
    }
}

/// The register model with revisions.
struct Model<'a> {
    ops: &'a [Op],
    prepared: &'a Prepared,
}

impl Model<'_> {
    /// The states op `i` may lead to from `s`: none when its response contradicts `s`; for
    /// an unknown op, the state after it took effect (not taking effect is not linearizing it).
    fn step(&self, s: &KeyState, i: usize) -> Vec<KeyState> {
        let out = self.prepared.outputs[i].as_ref();
        let write = |rev: Option<i64>, lease: i64| -> Option<KeyState> {
            match rev {
                Some(r) if r <= s.floor => None,
                Some(r) => Some(KeyState { value: Some(i), mod_revision: Some(r), lease, floor: r }),
                None => Some(KeyState { value: Some(i), mod_revision: None, lease, floor: s.floor }),
            }
        };
        let gone = |rev: Option<i64>| -> Option<KeyState> {
            match rev {
                Some(r) if r <= s.floor => None,
                Some(r) => Some(KeyState { value: None, mod_revision: None, lease: 0, floor: r }),
                None => Some(KeyState { value: None, mod_revision: None, lease: 0, floor: s.floor }),
            }
        };
        let unchanged = |h: i64| -> Option<KeyState> { (h >= s.floor).then(|| KeyState { floor: h, ..s.clone() }) };
        let next = match (&self.ops[i].input, out) {
            (Input::Put { lease, .. }, Some(Output::Put { revision })) => write(Some(*revision), *lease),
            (Input::Put { lease, .. }, None) => write(None, *lease),
            (Input::Get { key, .. }, Some(Output::Get { revision, kv })) => {
                let matches = match (kv, s.value) {
                    (None, None) => true,
                    (Some(kv), Some(w)) => {
                        self.prepared.writer_of(self.ops, key, &kv.value) == Some(w)
                            && s.mod_revision.is_none_or(|m| m == kv.mod_revision)
                            && kv.mod_revision <= *revision
                    }
                    _ => false,
                };
                if matches {
                    unchanged(*revision)
                } else {
                    None
                }
            }
            (Input::Delete { .. }, Some(Output::Delete { revision, deleted })) => {
                if *deleted > 0 && s.value.is_some() {
                    gone(Some(*revision))
                } else if *deleted == 0 && s.value.is_none() {
                    unchanged(*revision)
                } else {
                    None
                }
            }
            (Input::Delete { .. }, None) => s.value.and_then(|_| gone(None)),
            (Input::Cas { compare, .. }, out) => {
                let holds = self.compare(s, compare);
                match out {
                    Some(Output::Cas { revision, succeeded: true }) if holds != Some(false) => {
                        write(Some(*revision), 0)
                    }
                    Some(Output::Cas { revision, succeeded: false }) if holds != Some(true) => unchanged(*revision),
                    None if holds != Some(false) => write(None, 0),
                    _ => None,
                }
            }
            (Input::LeaseRevoke { id }, out) => {
                let attached = s.value.is_some() && s.lease == *id;
                match (out, attached) {
                    (Some(o), true) => gone(Some(o.revision())),
                    (Some(o), false) => unchanged(o.revision()),
                    (None, true) => gone(None),
                    (None, false) => None,
                }
            }
            (input, out) => panic!("op {i}: {input:?} has no place in a key's partition (response {out:?})"),
        };
        next.into_iter().collect()
    }

    /// Whether `compare` holds in `s`; `None` when the state cannot tell.
    fn compare(&self, s: &KeyState, compare: &Compare) -> Option<bool> {
        match (compare, s.value) {
            (Compare::ModRevision(r), None) => Some(*r == 0),
            (Compare::ModRevision(r), Some(_)) => s.mod_revision.map(|m| m == *r),
            (Compare::Value(_), None) => Some(false),
            (Compare::Value(v), Some(w)) => Some(self.ops[w].input.written_value() == Some(v.as_str())),
        }
    }
}
