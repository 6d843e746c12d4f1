//! Txns whose puts fall inside a delete of the same branch, where the delete's `range_end`
//! is `"\0"` (every key `>= key`, etcd's `WithFromKey`, and `WithPrefix` on an empty key).
//! etcd's `checkIntervals` must treat such a delete as `[key, +inf)`; otherwise the txn
//! passes validation, its delete removes the put's key, and an `ignore_value` put then
//! fails half-way through the txn on every replica.

mod common;

use bytes::Bytes;
use common::{b, Node, G};
use store::{
    Command, CommandBody, CommandResponse, DeleteRangeRequest, Error, PutRequest, RequestOp, StoreConfig, TxnRequest,
};

fn from_key_delete(key: &str) -> RequestOp {
    RequestOp::delete_range(DeleteRangeRequest { key: b(key), range_end: Bytes::from_static(b"\0"), prev_kv: false })
}

fn put_keeping(key: &str, ignore_value: bool, ignore_lease: bool) -> RequestOp {
    let value = if ignore_value { Bytes::new() } else { b("new") };
    RequestOp::put(PutRequest { key: b(key), value, ignore_value, ignore_lease, ..Default::default() })
}

fn txn(success: Vec<RequestOp>) -> CommandBody {
    CommandBody::Txn(TxnRequest { compare: vec![], success, failure: vec![] })
}

/// The exact txn of the report: `[DeleteRange{a, "\0"}, Put{b, ignore_value}]` with `b`
/// live. It must be refused by validation with etcd's duplicate-key error, as a per-entry
/// result, and leave the store as it was.
#[test]
fn from_key_delete_then_ignore_value_put_is_a_duplicate_key() {
    let mut n = Node::new();
    n.put("a", "1");
    n.put("b", "2");
    let before = n.all();
    let applied_before = n.store.applied_index(G);

    let body = txn(vec![from_key_delete("a"), put_keeping("b", true, false)]);
    let cmd = Command::new(99, body.clone());
    assert!(
        matches!(store::validate(&cmd, &StoreConfig::default()), Err(Error::DuplicateKey)),
        "validation (what grpc-api runs before proposing) must refuse the txn"
    );
    let result = n.exec(body);
    assert!(matches!(result, Err(Error::DuplicateKey)), "apply must refuse it the same way: {result:?}");
    assert_eq!(n.all(), before, "a refused txn changes nothing");
    assert_eq!(n.store.current_revision(G), 3);
    assert_eq!(n.store.applied_index(G), applied_before + 1, "the refused entry still counts as applied");
}

/// The other spellings of an open-ended delete overlap too; a put below the delete's start
/// key does not.
#[test]
fn open_ended_deletes_overlap_puts_in_every_form() {
    let mut n = Node::new();
    n.put("0", "z");
    n.put("b", "2");
    let cfg = StoreConfig::default();
    let nested = |success: Vec<RequestOp>| RequestOp::txn(TxnRequest { compare: vec![], success, failure: vec![] });
    let refused = [
        // ignore_lease instead of ignore_value.
        vec![from_key_delete("a"), put_keeping("b", false, true)],
        // A plain put inside the open range, before or after the delete.
        vec![put_keeping("b", false, false), from_key_delete("a")],
        // WithPrefix on an empty key: key and range_end both "\0", i.e. every key.
        vec![from_key_delete("\0"), put_keeping("0", true, false)],
        // The delete inside a nested txn, the put after it in the parent.
        vec![nested(vec![from_key_delete("a")]), put_keeping("b", true, false)],
        // The put inside a nested txn that follows the delete.
        vec![from_key_delete("a"), nested(vec![put_keeping("b", true, false)])],
        // The delete in one nested txn, the put in a later one.
        vec![nested(vec![from_key_delete("a")]), nested(vec![put_keeping("b", true, false)])],
    ];
    for ops in refused {
        let body = txn(ops.clone());
        assert!(
            matches!(store::validate(&Command::new(1, body.clone()), &cfg), Err(Error::DuplicateKey)),
            "must be refused: {ops:?}"
        );
        assert!(matches!(n.exec(body), Err(Error::DuplicateKey)), "apply must refuse: {ops:?}");
    }
    assert_eq!(n.store.current_revision(G), 3, "no refused txn took a revision");
    assert_eq!(n.get("b").unwrap().value, b("2"));

    // A put below the start of the open range is outside it, as in etcd.
    let ok = txn(vec![from_key_delete("a"), put_keeping("0", true, false)]);
    match n.exec(ok).unwrap() {
        CommandResponse::Txn(t) => assert_eq!(t.revision, 4),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(n.get("0").unwrap().value, b("z"), "ignore_value kept the value");
    assert_eq!(n.get("0").unwrap().version, 2);
    assert!(n.get("b").is_none(), "the open-ended delete removed b");
}
