//! Model test: random appends (with overlapping-index truncation), HardState updates and
//! compactions across several groups, reopening the WAL after every step, checked
//! against a plain in-memory model.
// Protobuf messages read best built field by field.
#![allow(clippy::field_reassign_with_default)]

mod common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use raft::eraftpb::HardState;
use raft_log::{GroupId, LogIndex, Term, Wal, WriteBatch};

use common::{entry, open_small};

#[derive(Clone, Debug)]
enum Op {
    /// Append `n` entries starting `back` positions before last+1.
    Append {
        group: u64,
        back: u64,
        n: u64,
        term: u64,
        fill: u8,
    },
    HardState {
        group: u64,
        term: u64,
        vote: u64,
        commit: u64,
    },
    /// Compact `ahead` entries past the current compact point.
    Compact {
        group: u64,
        ahead: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u64, 0..4u64, 1..6u64, 1..5u64, any::<u8>())
            .prop_map(|(group, back, n, term, fill)| Op::Append { group, back, n, term, fill }),
        1 => (0..3u64, 0..9u64, 0..3u64, 0..50u64)
            .prop_map(|(group, term, vote, commit)| Op::HardState { group, term, vote, commit }),
        1 => (0..3u64, 0..6u64).prop_map(|(group, ahead)| Op::Compact { group, ahead }),
    ]
}

#[derive(Default, Debug)]
struct ModelGroup {
    truncated: u64,
    truncated_term: u64,
    entries: BTreeMap<u64, (u64, Vec<u8>)>,
    hs: HardState,
}

impl ModelGroup {
    fn last(&self) -> u64 {
        self.entries.keys().next_back().copied().unwrap_or(self.truncated)
    }
}

fn apply(model: &mut BTreeMap<u64, ModelGroup>, wal: &Wal, op: &Op) {
    let mut b = WriteBatch::new();
    match *op {
        Op::Append { group, back, n, term, fill } => {
            let g = model.entry(group).or_default();
            let start = (g.last() + 1).saturating_sub(back).max(1);
            let ents: Vec<_> = (start..start + n)
                .map(|i| entry(i, term, &vec![fill.wrapping_add(i as u8); (i % 7) as usize * 9]))
                .collect();
            b.add_entries(GroupId(group), &ents);
            g.entries.split_off(&start);
            for e in &ents {
                if e.index > g.truncated {
                    g.entries.insert(e.index, (e.term, e.data.to_vec()));
                }
            }
        }
        Op::HardState { group, term, vote, commit } => {
            let mut hs = HardState::default();
            hs.term = term;
            hs.vote = vote;
            hs.commit = commit;
            b.set_hard_state(GroupId(group), &hs);
            model.entry(group).or_default().hs = hs;
        }
        Op::Compact { group, ahead } => {
            let g = model.entry(group).or_default();
            let idx = g.truncated + ahead;
            b.compact(GroupId(group), LogIndex(idx));
            let to = idx.min(g.last());
            if to > g.truncated {
                g.truncated_term = g.entries[&to].0;
                g.entries = g.entries.split_off(&(to + 1));
                g.truncated = to;
            }
        }
    }
    wal.write(b).expect("valid batch is written");
}

fn check(model: &BTreeMap<u64, ModelGroup>, wal: &Wal) {
    wal.check_invariants();
    let mut total = 0;
    for (&group, g) in model {
        let gid = GroupId(group);
        let st = wal.group_state(gid).expect("group exists");
        assert_eq!(st.first_index.0, g.truncated + 1, "group {group} first index");
        assert_eq!(st.last_index.0, g.last(), "group {group} last index");
        assert_eq!(st.hard_state, g.hs, "group {group} hard state");
        assert_eq!(wal.term(gid, LogIndex(g.truncated)).unwrap(), Term(g.truncated_term));
        let got = wal.entries(gid, LogIndex(g.truncated + 1), LogIndex(g.last() + 1), None).unwrap();
        let want: Vec<(u64, u64, Vec<u8>)> = g.entries.iter().map(|(i, (t, d))| (*i, *t, d.clone())).collect();
        let got: Vec<(u64, u64, Vec<u8>)> = got.iter().map(|e| (e.index, e.term, e.data.to_vec())).collect();
        assert_eq!(got, want, "group {group} entries");
        for (i, (t, _)) in &g.entries {
            assert_eq!(wal.term(gid, LogIndex(*i)).unwrap(), Term(*t));
        }
        if g.truncated > 0 {
            assert!(matches!(
                wal.entries(gid, LogIndex(g.truncated), LogIndex(g.last() + 1), None),
                Err(raft_log::Error::Compacted)
            ));
        }
        total += g.entries.len();
    }
    assert_eq!(wal.indexed_entry_count(), total, "index holds exactly the live entries");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_model_across_reopens(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = BTreeMap::new();
        let mut wal = open_small(dir.path());
        for op in &ops {
            apply(&mut model, &wal, op);
            check(&model, &wal);
            drop(wal);
            wal = open_small(dir.path());
            check(&model, &wal);
        }
    }
}
