//! Watch hardening (issue 10), at the store level:
//!
//! - a stream that never reads must not hold back catch-up of the other watchers of its
//!   group, and is canceled once it has been stuck past `watch_stuck_cancel_after`;
//! - `prev_kv` of an update whose previous version sits exactly at the compact revision, and
//!   a `prev_kv` watch that would need the version before an update at the compact revision;
//! - a put and a delete of one key both at the compact revision, which a watch from it
//!   replays neither of, as etcd;
//! - a watcher whose start revision is in the future gets no progress notification before
//!   the store reaches that revision.
//!
//! Every wait is bounded.

mod common;

use std::time::{Duration, Instant};

use common::{b, drain_until_synced, recv_until, Node, G};
use store::{CommandBody, CompactRequest, PutRequest, StoreConfig, WatchSpec};

fn compact(n: &mut Node, rev: i64) {
    n.exec(CommandBody::Compact(CompactRequest { revision: rev, physical: false })).unwrap();
}

/// A never-reading stream and a reading one watch the same keys from the past of a long
/// history. The reading one must catch up and get its RequestProgress answered within a
/// bound, while the stuck one still has nothing read.
#[test]
fn stuck_stream_does_not_hold_back_catch_up_of_others() {
    let cfg = StoreConfig {
        watch_stream_buffer: 4,
        watch_sync_batch_events: 16,
        watch_sync_interval: Duration::from_millis(20),
        // Far longer than the test: this test is about not holding others back.
        watch_stuck_cancel_after: Duration::from_secs(600),
        ..StoreConfig::default()
    };
    let mut n = Node::with_config(cfg);
    // Revisions 2..=1001: far more than one pass's budget (16 events) times the stuck
    // stream's buffer (4 responses).
    for i in 0..1000 {
        n.put(&format!("k{}", i % 10), &format!("{i}"));
    }
    let stuck = n.store.watch_stream(G);
    stuck.watch(WatchSpec { key: b("k"), range_end: b("l"), start_revision: 2, prev_kv: true, ..Default::default() });
    // Let the stuck stream's buffer fill up and its watcher pin its position.
    std::thread::sleep(Duration::from_millis(300));
    assert!(stuck.queued() >= 4, "the stuck stream's buffer should be full: {}", stuck.queued());

    let healthy = n.store.watch_stream(G);
    healthy.watch(WatchSpec {
        key: b("k"),
        range_end: b("l"),
        start_revision: 500,
        prev_kv: true,
        ..Default::default()
    });
    let started = Instant::now();
    let got = drain_until_synced(&healthy, Duration::from_secs(10));
    let revs: Vec<i64> = got.iter().flat_map(|r| r.events.iter().map(|e| e.kv.mod_revision)).collect();
    assert_eq!(revs, (500..=1001).collect::<Vec<_>>(), "healthy watcher: every event once, in order");
    assert!(started.elapsed() < Duration::from_secs(5), "healthy catch-up took {:?}", started.elapsed());

    // Live events keep flowing to the healthy stream, and RequestProgress is answered.
    n.put("k0", "live");
    let got = recv_until(&healthy, Duration::from_secs(5), |r| !r.events.is_empty());
    assert_eq!(got.last().unwrap().events[0].kv.mod_revision, 1002);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !healthy.request_progress() {
        assert!(Instant::now() < deadline, "RequestProgress on the healthy stream never answered");
        std::thread::sleep(Duration::from_millis(5));
    }
    let p = recv_until(&healthy, Duration::from_secs(2), |r| r.watch_id == -1);
    assert_eq!(p.last().unwrap().revision, 1002);

    // The stuck stream still works once it reads: no gap, no duplicate.
    let got = drain_until_synced(&stuck, Duration::from_secs(20));
    let revs: Vec<i64> = got.iter().flat_map(|r| r.events.iter().map(|e| e.kv.mod_revision)).collect();
    assert_eq!(revs, (2..=1002).collect::<Vec<_>>(), "stuck watcher after it reads again");
}

/// A watcher whose stream stays full past `watch_stuck_cancel_after` is canceled (a
/// `canceled` response marked slow, queued behind what it already has), and removed from the
/// hub: the stream's other responses stop growing.
#[test]
fn stuck_watcher_is_canceled_after_the_limit() {
    let cfg = StoreConfig {
        watch_stream_buffer: 2,
        watch_sync_batch_events: 16,
        watch_sync_interval: Duration::from_millis(20),
        watch_stuck_cancel_after: Duration::from_millis(500),
        ..StoreConfig::default()
    };
    let mut n = Node::with_config(cfg);
    let stuck = n.store.watch_stream(G);
    let id = stuck.watch(WatchSpec { key: b("a"), ..Default::default() });
    // Synced watcher; its unread responses merge, up to 16 events per slot of the buffer
    // (2 slots: 32 events), so 100 puts overflow it.
    for i in 0..100 {
        n.put("a", &format!("{i}"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    // Read nothing until the watcher is canceled: the cancel is queued behind the buffered
    // responses, so poll the queue length (created + 2 events + canceled = 4).
    while stuck.queued() < 4 {
        assert!(Instant::now() < deadline, "stuck watcher never canceled; queued {}", stuck.queued());
        std::thread::sleep(Duration::from_millis(20));
    }
    while let Some(r) = stuck.try_recv() {
        got.push(r);
    }
    let last = got.last().unwrap();
    assert!(last.canceled && last.slow && last.watch_id == id.0, "last response: {last:?}");
    assert_eq!(last.compact_revision, 0);
    // Removed: no more responses. Its id stays taken until the client cancels it (as for a
    // watcher canceled as compacted), and that cancel is answered once.
    n.put("a", "after");
    assert!(stuck.recv_timeout(Duration::from_millis(300)).is_none());
    assert!(stuck.cancel(id));
    assert!(!stuck.cancel(id));
}

/// A key last modified at the compact revision C and updated at C+k: the live event, the
/// Put's prev_kv, and a catch-up watch from a revision > C all carry the version at C,
/// before and after the background purge.
#[test]
fn prev_kv_of_an_update_after_compaction_at_the_previous_version() {
    let mut n = Node::new();
    n.put("other", "1"); // 2
    n.put("k", "at-c"); // 3 = C
    let live = n.store.watch_stream(G);
    live.watch(WatchSpec { key: b("k"), prev_kv: true, ..Default::default() });
    compact(&mut n, 3);
    assert!(n.store.wait_compaction_finished(G, 3, Duration::from_secs(10)), "purge at 3 never finished");
    n.put("other", "2"); // 4
    let put = match n
        .exec(CommandBody::Put(PutRequest { key: b("k"), value: b("after"), prev_kv: true, ..Default::default() }))
        .unwrap()
    {
        store::CommandResponse::Put(p) => p,
        other => panic!("unexpected {other:?}"),
    }; // 5
    let prev = put.prev_kv.expect("Put prev_kv of a key last written at the compact revision");
    assert_eq!((prev.mod_revision, &prev.value[..]), (3, &b"at-c"[..]));

    let got = recv_until(&live, Duration::from_secs(5), |r| !r.events.is_empty());
    let ev = &got.last().unwrap().events[0];
    assert_eq!(ev.kv.mod_revision, 5);
    assert_eq!(ev.prev_kv.as_ref().map(|p| p.mod_revision), Some(3), "live event prev_kv: {ev:?}");

    for start in [4, 5] {
        let w = n.store.watch_stream(G);
        w.watch(WatchSpec { key: b("k"), start_revision: start, prev_kv: true, ..Default::default() });
        let got = drain_until_synced(&w, Duration::from_secs(10));
        let evs: Vec<_> = got.iter().flat_map(|r| r.events.clone()).collect();
        assert_eq!(evs.len(), 1, "catch-up from {start}: {evs:?}");
        assert_eq!(
            evs[0].prev_kv.as_ref().map(|p| (p.mod_revision, p.value.clone())),
            Some((3, b("at-c"))),
            "catch-up from {start}: prev_kv"
        );
    }
    // A second compaction past the update keeps the version at 5 readable for the next
    // update's prev_kv (an event at exactly C is covered by the test below).
    compact(&mut n, 5);
    assert!(n.store.wait_compaction_finished(G, 5, Duration::from_secs(10)));
    n.put("k", "later"); // 6
    let w = n.store.watch_stream(G);
    w.watch(WatchSpec { key: b("k"), start_revision: 6, prev_kv: true, ..Default::default() });
    let got = drain_until_synced(&w, Duration::from_secs(10));
    let evs: Vec<_> = got.iter().flat_map(|r| r.events.clone()).collect();
    assert_eq!(evs[0].prev_kv.as_ref().map(|p| p.mod_revision), Some(5));
}

/// An update *at* the compact revision C: its previous version lies below C, in compacted
/// history. A watch from C that asked for `prev_kv` is canceled as compacted at C (etcd's
/// read at C - 1 fails there and it sends the event without one, which kube-apiserver
/// rejects: both mean "too old"), before and after the purge ran; the same watch without
/// `prev_kv`, and one with it from C + 1, replay as usual. A key created at C needs no
/// `prev_kv` and replays too.
#[test]
fn an_update_at_exactly_the_compact_revision_cancels_a_prev_kv_watch_as_compacted() {
    for wait_for_purge in [false, true] {
        let mut n = Node::new();
        n.put("k", "before"); // 2
        n.put("other", "1"); // 3
        n.put("k", "at-c"); // 4 = C
        n.put("k", "after"); // 5
        compact(&mut n, 4);
        if wait_for_purge {
            assert!(n.store.wait_compaction_finished(G, 4, Duration::from_secs(10)), "purge at 4 never finished");
        }
        let events_of = |n: &Node, spec: WatchSpec| {
            let w = n.store.watch_stream(G);
            w.watch(spec);
            drain_until_synced(&w, Duration::from_secs(10))
        };
        let got = events_of(&n, WatchSpec { key: b("k"), start_revision: 4, prev_kv: true, ..Default::default() });
        let shape: Vec<_> = got.iter().map(|r| (r.created, r.canceled, r.compact_revision, r.events.len())).collect();
        assert_eq!(shape, vec![(true, false, 0, 0), (false, true, 4, 0)], "purge finished: {wait_for_purge}");

        let got = events_of(&n, WatchSpec { key: b("k"), start_revision: 4, ..Default::default() });
        let revs: Vec<_> = got.iter().flat_map(|r| r.events.iter().map(|e| e.kv.mod_revision)).collect();
        assert_eq!(revs, vec![4, 5], "without prev_kv (purge finished: {wait_for_purge})");
        assert!(got.iter().all(|r| !r.canceled));

        let got = events_of(&n, WatchSpec { key: b("k"), start_revision: 5, prev_kv: true, ..Default::default() });
        let prevs: Vec<_> = got
            .iter()
            .flat_map(|r| r.events.iter())
            .map(|e| (e.kv.mod_revision, e.prev_kv.as_ref().map(|p| (p.mod_revision, p.value.clone()))))
            .collect();
        assert_eq!(prevs, vec![(5, Some((4, b("at-c"))))], "from C + 1 (purge finished: {wait_for_purge})");

        // Other keys' events at C do not matter to a watcher of `other`; a create at C needs
        // no prev_kv.
        let got = events_of(&n, WatchSpec { key: b("other"), start_revision: 4, prev_kv: true, ..Default::default() });
        assert!(got.iter().all(|r| !r.canceled && r.events.is_empty()), "watch of other: {got:?}");
        n.put("new", "1"); // 6
        compact(&mut n, 6);
        let got = events_of(&n, WatchSpec { key: b("new"), start_revision: 6, prev_kv: true, ..Default::default() });
        let evs: Vec<_> =
            got.iter().flat_map(|r| r.events.iter()).map(|e| (e.kv.mod_revision, e.prev_kv.is_some())).collect();
        assert_eq!(evs, vec![(6, false)], "a create at C replays (purge finished: {wait_for_purge})");
    }
}

/// A key put and then deleted within one revision C (two nested txns of one txn, which etcd
/// accepts), then compacted at C: etcd's compaction keeps nothing of the key at C, so a
/// watch from C replays neither its put nor its delete (seen with etcd 3.5.1), before and
/// after the purge ran; the other events at C still replay, and the dropped put (an update)
/// does not cancel a `prev_kv` watcher as compacted. With the compaction one lower, both
/// events replay.
#[test]
fn a_put_and_a_delete_of_one_key_at_the_compact_revision_replay_nothing() {
    use store::{DeleteRangeRequest, RequestOp, TxnRequest};
    let nested = |op: RequestOp| RequestOp::txn(TxnRequest { compare: vec![], success: vec![op], failure: vec![] });
    for (compact_at, wait_for_purge) in [(4, false), (4, true), (3, true)] {
        let mut n = Node::new();
        n.put("k", "a"); // 2
        n.put("y", "1"); // 3
        let put_k = RequestOp::put(PutRequest { key: b("k"), value: b("b"), ..Default::default() });
        let del_k = RequestOp::delete_range(DeleteRangeRequest { key: b("k"), ..Default::default() });
        let put_z = RequestOp::put(PutRequest { key: b("z"), value: b("2"), ..Default::default() });
        let body = CommandBody::Txn(TxnRequest {
            compare: vec![],
            success: vec![nested(put_k), nested(del_k), nested(put_z)],
            failure: vec![],
        });
        n.exec(body).unwrap(); // 4
        n.put("z", "3"); // 5
        compact(&mut n, compact_at);
        if wait_for_purge {
            let done = n.store.wait_compaction_finished(G, compact_at, Duration::from_secs(10));
            assert!(done, "purge at {compact_at} never finished");
        }
        for prev_kv in [false, true] {
            let w = n.store.watch_stream(G);
            w.watch(WatchSpec {
                key: b("k"),
                range_end: b("\u{7f}"),
                start_revision: 4,
                prev_kv,
                ..Default::default()
            });
            let got = drain_until_synced(&w, Duration::from_secs(10));
            let events: Vec<String> = got
                .iter()
                .flat_map(|r| r.events.iter())
                .map(|e| format!("{:?} {} {}", e.kind, String::from_utf8_lossy(&e.kv.key), e.kv.mod_revision))
                .collect();
            let want: &[&str] =
                if compact_at < 4 { &["Put k 4", "Delete k 4", "Put z 4", "Put z 5"] } else { &["Put z 4", "Put z 5"] };
            assert!(got.iter().all(|r| !r.canceled), "compacted at {compact_at}, prev_kv: {prev_kv}: {got:?}");
            assert_eq!(events, want, "compacted at {compact_at}, purge finished: {wait_for_purge}, prev_kv: {prev_kv}");
        }
    }
}

/// A future start revision: `progress_for` (periodic progress) must not answer before the
/// store reaches the start revision, and must once it has.
#[test]
fn no_periodic_progress_before_a_future_start_revision() {
    let mut n = Node::new();
    n.put("a", "1"); // 2
    let w = n.store.watch_stream(G);
    let id = w.watch(WatchSpec { key: b("a"), start_revision: 5, ..Default::default() });
    assert!(w.recv_timeout(Duration::from_secs(1)).unwrap().created);
    assert!(!w.progress_for(id), "progress at revision 2 for a watcher starting at 5");
    n.put("b", "1"); // 3
    n.put("b", "2"); // 4
    assert!(!w.progress_for(id), "progress at revision 4 for a watcher starting at 5");
    assert!(w.try_recv().is_none(), "nothing may be queued before revision 5");
    n.put("b", "3"); // 5
    assert!(w.progress_for(id), "revision 5 reached: progress is due");
    let p = w.recv_timeout(Duration::from_secs(1)).unwrap();
    assert!(p.is_progress() && p.revision == 5, "{p:?}");
}

/// Client-chosen watch ids (etcd's `watchStream.Watch`): a chosen id is taken as given, an
/// id a watcher of the stream has is refused with nothing queued, the stream's own ids skip
/// the chosen ones, and a canceled watcher's id may be chosen again. Another stream's ids
/// are its own.
#[test]
fn chosen_watch_ids_are_kept_refused_when_taken_and_skipped_by_the_stream() {
    let mut n = Node::new();
    let s = n.store.watch_stream(G);
    let spec = |k: &str| WatchSpec { key: b(k), ..Default::default() };
    assert_eq!(s.watch_as(1, spec("a")), Some(store::WatchId(1)));
    assert_eq!(s.watch(spec("b")), store::WatchId(0));
    assert_eq!(s.watch(spec("c")), store::WatchId(2), "the stream's ids skip the chosen 1");
    assert_eq!(s.watch_as(2, spec("d")), None, "2 is taken");
    assert_eq!(s.watch_as(-7, spec("e")), Some(store::WatchId(-7)));
    let created: Vec<i64> =
        drain_until_synced(&s, Duration::from_secs(5)).iter().filter(|e| e.created).map(|e| e.watch_id).collect();
    assert_eq!(created, vec![1, 0, 2, -7], "a refused id queues nothing");
    n.put("a", "1");
    n.put("e", "1");
    let events = recv_until(&s, Duration::from_secs(5), |e| e.watch_id == -7 && !e.events.is_empty());
    let ids: Vec<i64> = events.iter().filter(|e| !e.events.is_empty()).map(|e| e.watch_id).collect();
    assert_eq!(ids, vec![1, -7]);
    assert!(s.cancel(store::WatchId(1)));
    assert_eq!(s.watch_as(1, spec("f")), Some(store::WatchId(1)), "a canceled watcher's id is free again");
    let other = n.store.watch_stream(G);
    assert_eq!(other.watch_as(2, spec("a")), Some(store::WatchId(2)), "ids are per stream");

    // A watcher the store cancels as compacted keeps its id until the client cancels it.
    let rev = n.put("g", "1").revision;
    compact(&mut n, rev);
    let from_one = WatchSpec { key: b("g"), start_revision: 1, ..Default::default() };
    assert_eq!(s.watch_as(9, from_one.clone()), Some(store::WatchId(9)));
    assert_eq!(s.watch(from_one), store::WatchId(3));
    let canceled = recv_until(&s, Duration::from_secs(5), |e| e.watch_id == 3 && e.canceled);
    assert!(canceled.iter().any(|e| e.watch_id == 9 && e.canceled && e.compact_revision == rev));
    assert_eq!(s.watch_as(9, spec("h")), None, "9 is still taken");
    assert_eq!(s.watch(spec("h")), store::WatchId(4), "and skipped, like 3");
    assert!(s.cancel(store::WatchId(9)), "the client's cancel of it is answered");
    assert!(!s.cancel(store::WatchId(9)), "once");
    assert_eq!(s.watch_as(9, spec("h")), Some(store::WatchId(9)), "then 9 is free");
}
