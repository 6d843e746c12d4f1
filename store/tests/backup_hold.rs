//! The backup mark and the history it holds: a compaction past the mark is scheduled (reads
//! below it fail) but its purge stops at the mark on a store that holds history for
//! backups, so a delta from the mark stays complete; a store that does not hold refuses the
//! same delta rather than export a gap.

mod common;

use std::time::Duration;

use common::{Node, G};
use store::{BackupBody, BackupMark, CommandBody, CompactRequest, Error, Store, StoreConfig};

fn mark(n: &mut Node, revision: i64, time_unix_ms: u64) {
    n.exec(CommandBody::BackupMark(BackupMark { revision, time_unix_ms })).unwrap();
}

fn compact(n: &mut Node, revision: i64) {
    n.exec(CommandBody::Compact(CompactRequest { revision, physical: false })).unwrap();
}

/// Puts to keys k0..k4, `rounds` times each: 5 * rounds revisions.
fn write(n: &mut Node, rounds: usize) {
    for r in 0..rounds {
        for k in 0..5 {
            n.put(&format!("k{k}"), &format!("v{r}"));
        }
    }
}

/// Events of a delta export from `from`, as (revision, key).
fn delta_events(s: &Store, from: i64) -> store::Result<Vec<(i64, String)>> {
    let mut events = Vec::new();
    s.export_delta(G, from, &mut |r| {
        if let Some(BackupBody::Event(e)) = r.body {
            let kv = e.kv.expect("event with a key");
            events.push((kv.mod_revision, String::from_utf8_lossy(&kv.key).into_owned()));
        }
        Ok(())
    })?;
    Ok(events)
}

#[test]
fn the_mark_is_monotonic_and_survives_reopen() {
    let mut n = Node::with_config(StoreConfig { hold_history_for_backups: true, ..StoreConfig::default() });
    write(&mut n, 2);
    assert_eq!(n.store.backup_mark(G), (0, 0));
    mark(&mut n, 5, 1000);
    assert_eq!(n.store.backup_mark(G), (5, 1000));
    // Older marks (a deposed leader's) and marks past the group's revision change nothing.
    mark(&mut n, 4, 2000);
    mark(&mut n, 1000, 3000);
    assert_eq!(n.store.backup_mark(G), (5, 1000));
    assert!(n.exec(CommandBody::BackupMark(BackupMark { revision: 0, time_unix_ms: 1 })).is_err());
    let Node { store, dir, .. } = n;
    drop(store);
    let reopened = Store::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(reopened.backup_mark(G), (5, 1000));
}

#[test]
fn a_held_store_keeps_history_after_the_mark_through_compaction() {
    let mut n = Node::with_config(StoreConfig { hold_history_for_backups: true, ..StoreConfig::default() });
    write(&mut n, 4); // revisions 2..=21
    mark(&mut n, 11, 1);
    compact(&mut n, 19);
    // Reads below the compaction fail at once, on every replica alike.
    assert!(matches!(n.range("k0", "", 15), Err(Error::Compacted { .. })));
    // The purge stops at the mark.
    assert!(n.store.wait_compaction_finished(G, 11, Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(n.store.compaction_finished_revision(G), 11);
    let events = delta_events(&n.store, 11).unwrap();
    assert_eq!(events.iter().map(|e| e.0).collect::<Vec<_>>(), (12..=21).collect::<Vec<_>>());
    // Moving the mark releases the rest.
    mark(&mut n, 21, 2);
    assert!(n.store.wait_compaction_finished(G, 19, Duration::from_secs(10)));
    assert!(matches!(delta_events(&n.store, 11), Err(Error::Compacted { .. })));
    assert_eq!(delta_events(&n.store, 21).unwrap(), Vec::new());
}

#[test]
fn a_store_that_does_not_hold_refuses_a_delta_across_a_purge() {
    let mut n = Node::new();
    write(&mut n, 4);
    mark(&mut n, 11, 1);
    compact(&mut n, 19);
    assert!(n.store.wait_compaction_finished(G, 19, Duration::from_secs(10)));
    match delta_events(&n.store, 11) {
        Err(Error::Compacted { requested: 11, compacted: 19 }) => {}
        other => panic!("a delta across a purge must be refused, got {other:?}"),
    }
    // From the purge on, the delta is complete again.
    assert_eq!(delta_events(&n.store, 19).unwrap().len(), 2);
}
