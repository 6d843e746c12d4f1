//! Targeted etcd-semantics tests (contract §3), leases and quota.

mod common;

use bytes::Bytes;
use common::{b, Node};
use store::{
    CommandBody, CommandResponse, Compare, CompareResult, CompareTarget, DeleteRangeRequest, Error,
    LeaseCheckpointRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, ResponseOp,
    StoreConfig, TargetUnion, TxnRequest,
};

fn txn(
    n: &mut Node,
    compare: Vec<Compare>,
    success: Vec<RequestOp>,
    failure: Vec<RequestOp>,
) -> store::Result<store::TxnResponse> {
    match n.exec(CommandBody::Txn(TxnRequest { compare, success, failure }))? {
        CommandResponse::Txn(t) => Ok(t),
        other => panic!("unexpected {other:?}"),
    }
}

fn mod_eq(k: &str, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: b(k),
        target_union: Some(TargetUnion::ModRevision(rev)),
        range_end: Bytes::new(),
    }
}

#[test]
fn revisions_versions_and_delete_recreate() {
    let mut n = Node::new();
    assert_eq!(n.store.current_revision(n.g), 1, "empty group is at revision 1");
    assert_eq!(n.all().revision, 1);
    assert_eq!(n.put("k", "v1").revision, 2, "first write is revision 2");
    let r = n.put("k", "v2");
    assert_eq!(r.revision, 3);
    let kv = n.get("k").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    // A delete that matches nothing does not bump; a put of the same value does.
    assert_eq!(n.del("nothing", "").revision, 3);
    assert_eq!(n.put("k", "v2").revision, 4);
    let d = n.del("k", "");
    assert_eq!((d.revision, d.deleted, d.prev_kvs[0].version), (5, 1, 3));
    n.put("k", "again");
    let kv = n.get("k").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (6, 6, 1), "re-create resets version");
    // Reads at older revisions, and the header is always the current revision.
    let old = n.range("k", "", 3).unwrap();
    assert_eq!((old.revision, old.kvs[0].value.clone()), (6, b("v2")));
    assert!(n.range("k", "", 5).unwrap().kvs.is_empty(), "deleted at 5");
    assert!(matches!(n.range("k", "", 7), Err(Error::FutureRevision { requested: 7, current: 6 })));
}

#[test]
fn range_forms_limit_count_sort() {
    let mut n = Node::new();
    for k in ["a", "b", "c", "d"] {
        n.put(k, k);
    }
    assert_eq!(n.range("b", "d", 0).unwrap().kvs.len(), 2);
    assert_eq!(n.range("b", "\0", 0).unwrap().kvs.len(), 3, "\\0 = every key >= key");
    assert_eq!(n.range("\0", "\0", 0).unwrap().kvs.len(), 4, "\\0..\\0 = everything");
    let req = |limit, sort_order, sort_target| RangeRequest {
        key: b("a"),
        range_end: b("\0"),
        limit,
        sort_order,
        sort_target,
        ..Default::default()
    };
    let r = n.store.range(n.g, &req(2, 0, 0)).unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 4), "count ignores limit");
    let r = n.store.range(n.g, &req(4, 0, 0)).unwrap();
    assert!(!r.more);
    let r = n.store.range(n.g, &req(1, 2, 0)).unwrap();
    assert_eq!((r.kvs[0].key.clone(), r.more), (b("d"), true), "descending by key");
    let r = n.store.range(n.g, &req(0, 0, 3)).unwrap();
    assert_eq!(r.kvs.iter().map(|kv| kv.mod_revision).collect::<Vec<_>>(), vec![2, 3, 4, 5]);
    let r = n.store.range(n.g, &RangeRequest { count_only: true, ..req(0, 0, 0) }).unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 4));
    let r = n.store.range(n.g, &RangeRequest { keys_only: true, ..req(0, 0, 0) }).unwrap();
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty() && kv.mod_revision > 0));
    let r = n.store.range(n.g, &RangeRequest { min_mod_revision: 4, ..req(1, 0, 0) }).unwrap();
    assert_eq!((r.kvs[0].key.clone(), r.count), (b("c"), 4), "filters do not change count");
    assert!(matches!(n.store.range(n.g, &req(0, 5, 0)), Err(Error::InvalidSortOption)));
    assert!(matches!(n.store.range(n.g, &RangeRequest::default()), Err(Error::EmptyKey)));
}

/// A request that names a sort target other than the key but no sort order: etcd fetches
/// the first `limit + 1` keys in key order, sorts those ascending by the target and cuts
/// them to `limit` (seen with etcd 3.5.1); with a sort order or a filter named it sorts
/// every key of the range first.
#[test]
fn a_sort_target_without_an_order_sorts_the_first_limit_plus_one_keys() {
    use store::{SortOrder, SortTarget};
    let mut n = Node::new();
    for (k, v) in [("a", "z"), ("b", "y"), ("c", "x"), ("d", "w"), ("e", "v")] {
        n.put(k, v);
    }
    let read = |n: &Node, sort_order: SortOrder, min_mod_revision: i64| {
        let req = RangeRequest {
            key: b("a"),
            range_end: b("z"),
            limit: 2,
            sort_order: sort_order as i32,
            sort_target: SortTarget::Value as i32,
            min_mod_revision,
            ..Default::default()
        };
        let r = n.store.range(n.g, &req).unwrap();
        let keys: Vec<String> = r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect();
        (keys, r.more, r.count)
    };
    assert_eq!(read(&n, SortOrder::None, 0), (vec!["c".into(), "b".into()], true, 5), "a, b, c sorted by value");
    assert_eq!(read(&n, SortOrder::Ascend, 0), (vec!["e".into(), "d".into()], true, 5), "every key sorted");
    assert_eq!(read(&n, SortOrder::None, 1), (vec!["e".into(), "d".into()], true, 5), "a filter reads every key");
    // A limit the range does not reach: every key, sorted.
    let all = RangeRequest {
        key: b("a"),
        range_end: b("z"),
        limit: 9,
        sort_target: SortTarget::Value as i32,
        ..Default::default()
    };
    let r = n.store.range(n.g, &all).unwrap();
    let values: Vec<_> = r.kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!((values, r.more), (vec![b("v"), b("w"), b("x"), b("y"), b("z")], false));
}

#[test]
fn txn_compare_rules_and_kube_shapes() {
    let mut n = Node::new();
    // Create: MOD(key) == 0 on a missing key holds.
    let put = |k: &str, v: &str| RequestOp::put(PutRequest { key: b(k), value: b(v), ..Default::default() });
    let get = |k: &str| RequestOp::range(RangeRequest { key: b(k), ..Default::default() });
    let t = txn(&mut n, vec![mod_eq("/registry/x", 0)], vec![put("/registry/x", "1")], vec![]).unwrap();
    assert!(t.succeeded);
    assert_eq!(t.revision, 2);
    // Update with a stale revision fails and returns the current object.
    let t =
        txn(&mut n, vec![mod_eq("/registry/x", 1)], vec![put("/registry/x", "2")], vec![get("/registry/x")]).unwrap();
    assert!(!t.succeeded);
    assert_eq!(t.revision, 2, "no change, no bump");
    let ResponseOp::Range(r) = &t.responses[0] else { panic!() };
    assert_eq!(r.kvs[0].mod_revision, 2);
    // VALUE compare on a missing key is false, even against "".
    let cmp = Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Value as i32,
        key: b("missing"),
        target_union: Some(TargetUnion::Value(Bytes::new())),
        range_end: Bytes::new(),
    };
    assert!(!txn(&mut n, vec![cmp], vec![], vec![]).unwrap().succeeded);
    // Later ops see earlier writes; all share one revision with sub revisions.
    let t = txn(&mut n, vec![], vec![put("a", "1"), put("b", "2"), get("a")], vec![]).unwrap();
    assert_eq!(t.revision, 3);
    let ResponseOp::Range(r) = &t.responses[2] else { panic!() };
    assert_eq!((r.kvs[0].value.clone(), r.revision), (b("1"), 3));
    // A compare with range_end must hold for every key.
    let ver = |end: &str, v| Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Version as i32,
        key: b("a"),
        target_union: Some(TargetUnion::Version(v)),
        range_end: b(end),
    };
    assert!(txn(&mut n, vec![ver("c", 1)], vec![], vec![]).unwrap().succeeded);
    n.put("b", "again");
    assert!(!txn(&mut n, vec![ver("c", 1)], vec![], vec![]).unwrap().succeeded);
    // Errors reject the whole txn: nothing from the first put stays.
    let before = n.store.current_revision(n.g);
    let bad_lease = RequestOp::put(PutRequest { key: b("z"), lease: 77, ..Default::default() });
    assert!(matches!(txn(&mut n, vec![], vec![put("y", "1"), bad_lease], vec![]), Err(Error::LeaseNotFound(77))));
    assert_eq!(n.store.current_revision(n.g), before);
    assert!(n.get("y").is_none());
    let dup = txn(&mut n, vec![], vec![put("q", "1"), put("q", "2")], vec![]);
    assert!(matches!(dup, Err(Error::DuplicateKey)));
    let future = RequestOp::range(RangeRequest { key: b("a"), revision: 100, ..Default::default() });
    assert!(matches!(txn(&mut n, vec![], vec![future], vec![]), Err(Error::FutureRevision { .. })));
}

#[test]
fn put_flags() {
    let mut n = Node::new();
    let put = |n: &mut Node, p: PutRequest| n.exec(CommandBody::Put(p));
    assert!(matches!(
        put(&mut n, PutRequest { key: b("k"), ignore_value: true, ..Default::default() }),
        Err(Error::KeyNotFound)
    ));
    n.put("k", "v");
    let r = put(&mut n, PutRequest { key: b("k"), ignore_value: true, prev_kv: true, ..Default::default() }).unwrap();
    let CommandResponse::Put(r) = r else { panic!() };
    assert_eq!(r.prev_kv.unwrap().value, b("v"));
    assert_eq!(n.get("k").unwrap().value, b("v"), "ignore_value keeps the value");
    assert!(matches!(
        put(&mut n, PutRequest { key: b("k"), value: b("x"), ignore_value: true, ..Default::default() }),
        Err(Error::ValueProvided)
    ));
    assert!(matches!(put(&mut n, PutRequest { key: Bytes::new(), ..Default::default() }), Err(Error::EmptyKey)));
}

#[test]
fn leases_attach_detach_revoke() {
    let mut n = Node::new();
    let grant = |n: &mut Node, id, ttl| n.exec(CommandBody::LeaseGrant(LeaseGrantRequest { id, ttl }));
    assert!(matches!(grant(&mut n, 7, 60).unwrap(), CommandResponse::LeaseGrant(g) if g.id == 7 && g.ttl == 60));
    assert!(matches!(grant(&mut n, 7, 60), Err(Error::LeaseExists(7))));
    assert!(matches!(grant(&mut n, 8, 9_000_000_001), Err(Error::LeaseTtlTooLarge)));
    grant(&mut n, 8, 10).unwrap();
    assert!(matches!(n.put_lease("x", "1", 99), Err(Error::LeaseNotFound(99))));
    n.put_lease("a", "1", 7).unwrap();
    n.put_lease("b", "1", 7).unwrap();
    n.put_lease("c", "1", 7).unwrap();
    n.put_lease("c", "2", 8).unwrap(); // moves c to lease 8
    n.put("b", "no lease"); // detaches b
    assert_eq!(n.store.lease_keys(n.g, 7).unwrap(), vec![b("a")]);
    assert_eq!(n.store.lease_keys(n.g, 8).unwrap(), vec![b("c")]);
    n.exec(CommandBody::LeaseCheckpoint(LeaseCheckpointRequest { id: 8, remaining_ttl: 4 })).unwrap();
    assert_eq!(n.store.lease(n.g, 8).unwrap().unwrap().remaining_ttl, 4);
    let w = n.store.watch_stream(n.g);
    w.watch(store::WatchSpec { key: b("a"), range_end: b("\0"), prev_kv: true, ..Default::default() });
    n.put_lease("d", "1", 8).unwrap();
    let rev_before = n.store.current_revision(n.g);
    let r = n.exec(CommandBody::LeaseRevoke(LeaseRevokeRequest { id: 8 })).unwrap();
    assert!(matches!(r, CommandResponse::LeaseRevoke(r) if r.revision == rev_before + 1), "one revision for all keys");
    assert!(n.get("c").is_none() && n.get("d").is_none());
    assert!(n.store.lease(n.g, 8).unwrap().is_none());
    assert_eq!(n.store.leases(n.g).unwrap().iter().map(|l| l.id).collect::<Vec<_>>(), vec![7]);
    assert!(matches!(n.exec(CommandBody::LeaseRevoke(LeaseRevokeRequest { id: 8 })), Err(Error::LeaseNotFound(8))));
    let got = common::recv_until(&w, std::time::Duration::from_secs(5), |e| e.revision == rev_before + 1);
    // Unread responses of a watcher merge, so the revoke's events are picked out by revision.
    let revoked: Vec<_> = got.iter().flat_map(|r| &r.events).filter(|e| e.revision() == rev_before + 1).collect();
    assert_eq!(revoked.len(), 2);
    assert!(revoked.iter().all(|e| e.kind == store::EventKind::Delete && e.prev_kv.is_some()));
}

#[test]
fn quota_refuses_puts_and_allows_deletes() {
    let mut n = Node::with_config(StoreConfig { quota_bytes_per_group: 100, ..StoreConfig::default() });
    n.put("a", &"x".repeat(40));
    assert!(n.store.size_bytes(n.g) >= 82, "kv + history both count");
    let r = n.exec(CommandBody::Put(PutRequest { key: b("b"), value: vec![0; 40].into(), ..Default::default() }));
    assert!(matches!(r, Err(Error::NoSpace)));
    assert!(n.exec(CommandBody::LeaseGrant(LeaseGrantRequest { id: 1, ttl: 5 })).is_ok(), "still under quota");
    let txn_put = TxnRequest {
        compare: vec![],
        success: vec![RequestOp::put(PutRequest { key: b("c"), value: vec![0; 40].into(), ..Default::default() })],
        failure: vec![],
    };
    assert!(matches!(n.exec(CommandBody::Txn(txn_put)), Err(Error::NoSpace)));
    n.del("a", "");
    let rev = n.store.current_revision(n.g);
    n.exec(CommandBody::Compact(store::CompactRequest { revision: rev, physical: false })).unwrap();
    assert!(n.store.size_bytes(n.g) < 10, "compaction frees the history share: {}", n.store.size_bytes(n.g));
    n.put("b", &"y".repeat(40));
    let del = DeleteRangeRequest { key: b("b"), ..Default::default() };
    n.exec(CommandBody::DeleteRange(del)).unwrap();
}

/// A watch event's prev_kv is the key before the whole command (etcd reads it at
/// `mod_revision - 1`), also when the command wrote the key twice: a txn whose first nested
/// txn puts `z` and whose second deletes it through a `"\0"`-ended range (the duplicate-key
/// rule lets a later sibling delete what an earlier one put). A create has no prev_kv, as in
/// etcd. Deleting and then re-putting a key in one txn is refused as a duplicate key.
#[test]
fn event_prev_kv_is_the_state_before_the_command() {
    let mut n = Node::new();
    n.put("z", "before");
    let w = n.store.watch_stream(n.g);
    w.watch(store::WatchSpec { key: b("z"), prev_kv: true, ..Default::default() });
    let put = |k: &str, v: &str| RequestOp::put(PutRequest { key: b(k), value: b(v), ..Default::default() });
    let del_from =
        |k: &str| RequestOp::delete_range(DeleteRangeRequest { key: b(k), range_end: b("\0"), prev_kv: true });
    let nested = |op: RequestOp| RequestOp::txn(TxnRequest { compare: vec![], success: vec![op], failure: vec![] });
    let first = txn(&mut n, vec![], vec![nested(put("z", "inside")), nested(del_from("y"))], vec![]).unwrap();
    match &first.responses[1] {
        ResponseOp::Txn(t) => match &t.responses[0] {
            ResponseOp::DeleteRange(d) => assert_eq!(d.prev_kvs[0].value, b("inside"), "responses see earlier ops"),
            other => panic!("unexpected {other:?}"),
        },
        other => panic!("unexpected {other:?}"),
    }
    let again = n.put("z", "again");
    let refused = txn(&mut n, vec![], vec![nested(del_from("y")), nested(put("z", "reborn"))], vec![]);
    assert!(matches!(refused, Err(Error::DuplicateKey)), "{refused:?}");
    let got = common::recv_until(&w, std::time::Duration::from_secs(5), |e| e.revision == again.revision);
    let events: Vec<(store::EventKind, Option<Bytes>)> = got
        .iter()
        .flat_map(|r| r.events.iter())
        .map(|e| (e.kind, e.prev_kv.as_ref().map(|p| p.value.clone())))
        .collect();
    use store::EventKind::{Delete, Put};
    assert_eq!(events, vec![(Put, Some(b("before"))), (Delete, Some(b("before"))), (Put, None),]);
}
