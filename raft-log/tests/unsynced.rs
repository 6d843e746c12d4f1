//! Unsynced submissions: written in order, no fdatasync of their own, durable with the next
//! synced batch, and never leaving an older segment with an unsynced tail.

// Protobuf messages read best built field by field.
#![allow(clippy::field_reassign_with_default)]

mod common;

use common::{entry, open_small};
use raft::eraftpb::HardState;
use raft_log::{GroupId, LogIndex, WriteBatch};

fn hard_state(term: u64, commit: u64) -> HardState {
    let mut hs = HardState::default();
    hs.term = term;
    hs.commit = commit;
    hs
}

#[test]
fn unsynced_batches_skip_fdatasync_and_ride_with_the_next_sync() {
    let dir = tempfile::tempdir().unwrap();
    let g = GroupId(1);
    {
        let wal = open_small(dir.path());
        let mut b = WriteBatch::new();
        b.add_entries(g, &[entry(1, 1, b"a")]);
        b.set_hard_state(g, &hard_state(1, 0));
        wal.write(b).unwrap();
        let synced = wal.stats().fsyncs;
        let mut b = WriteBatch::new();
        b.set_hard_state(g, &hard_state(1, 1));
        wal.submit_unsynced(b).unwrap().wait().unwrap();
        assert_eq!(wal.stats().fsyncs, synced, "an unsynced batch costs no fdatasync");
        assert_eq!(wal.group_state(g).unwrap().hard_state.commit, 1, "and is readable at once");
        let mut b = WriteBatch::new();
        b.add_entries(g, &[entry(2, 1, b"b")]);
        wal.write(b).unwrap();
        assert!(wal.stats().fsyncs > synced, "a synced batch still syncs");
        // Many unsynced batches across rotations (1 KiB segments): every older segment is
        // synced before the next one starts, so reopening finds no damage anywhere.
        let mut last = None;
        for commit in 2..200u64 {
            let mut b = WriteBatch::new();
            b.set_hard_state(g, &hard_state(1, commit.min(2)));
            last = Some(wal.submit_unsynced(b).unwrap());
        }
        last.unwrap().wait().unwrap();
        let mut b = WriteBatch::new();
        b.add_entries(g, &[entry(3, 1, b"c")]);
        wal.write(b).unwrap();
        // The writer rotates after completing a frame's tickets, before it takes the next
        // frame: once this later write is done, any rotation the unsynced frames caused is too.
        assert!(wal.segment_seqs().len() > 1 || wal.stats().segments_purged > 0, "the batches rotated segments");
    }
    let wal = open_small(dir.path());
    let state = wal.group_state(g).unwrap();
    assert_eq!(state.hard_state.commit, 2);
    let entries = wal.entries(g, LogIndex(1), LogIndex(4), None).unwrap();
    assert_eq!(
        entries.iter().map(|e| e.data.to_vec()).collect::<Vec<_>>(),
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    wal.check_invariants();
}

/// `Wal::write` runs inline on the caller's thread when the writer is idle; it must never
/// overtake a batch queued before it. A queued commit-index update followed by a newer one
/// written inline must leave the newer one in force.
#[test]
fn an_inline_write_never_overtakes_a_queued_batch() {
    let dir = tempfile::tempdir().unwrap();
    let g = GroupId(1);
    let wal = open_small(dir.path());
    let mut b = WriteBatch::new();
    b.add_entries(g, &[entry(1, 1, b"a")]);
    wal.write(b).unwrap();
    let frames_before = wal.stats().frames_written;
    for i in 1..=500u64 {
        let mut older = WriteBatch::new();
        older.set_hard_state(g, &hard_state(1, 2 * i));
        let queued = wal.submit_unsynced(older).unwrap();
        let mut newer = WriteBatch::new();
        newer.set_hard_state(g, &hard_state(1, 2 * i + 1));
        wal.write(newer).unwrap();
        queued.wait().unwrap();
        assert_eq!(wal.group_state(g).unwrap().hard_state.commit, 2 * i + 1, "round {i}: order broken");
    }
    assert!(wal.stats().frames_written > frames_before);
    drop(wal);
    let wal = open_small(dir.path());
    assert_eq!(wal.group_state(g).unwrap().hard_state.commit, 1001);
}
