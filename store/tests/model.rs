//! Model test: random sequences of put / delete-range / txn / compact / range / watch are run
//! against the store and against a plain in-memory model of etcd's MVCC semantics; every
//! response, every error and every watch stream must match.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use store::{
    Command, CommandBody, CommandResponse, CompactRequest, CompactResponse, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, DeleteRangeResponse, Error, Event, EventKind, KeyRange, KeyValue, Message, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, Store, StoreConfig, TargetUnion, TxnRequest,
    TxnResponse, WatchSpec, WatchStream,
};

use common::G;

const KEYS: [&[u8]; 6] = [b"a", b"b", b"b\0", b"c", b"d", b"e"];

fn key(i: u8) -> Bytes {
    Bytes::from_static(KEYS[i as usize % KEYS.len()])
}

#[derive(Clone, Debug)]
enum End {
    Single,
    To(u8),
    All,
}

fn range_end(e: &End) -> Bytes {
    match e {
        End::Single => Bytes::new(),
        End::To(i) => key(*i),
        End::All => Bytes::from_static(b"\0"),
    }
}

#[derive(Clone, Debug)]
enum TxOp {
    Put(u8, u8),
    /// A put that keeps the live version's value and/or lease: `ignore_value` (mode 0),
    /// `ignore_lease` with value `v` (mode 1), or both (mode 2). It fails the txn with
    /// `KeyNotFound` when the key is missing before the txn.
    PutKeep(u8, u8, u8),
    Del(u8, End),
    Range(u8, End),
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        k: u8,
        v: u8,
        prev_kv: bool,
    },
    Del {
        k: u8,
        end: End,
        prev_kv: bool,
    },
    Txn {
        cmp_key: u8,
        target: i32,
        result: i32,
        value: i64,
        success: Vec<TxOp>,
        failure: Vec<TxOp>,
        /// Keep puts that repeat a key or fall inside a delete of their branch (the txn must
        /// then fail with `DuplicateKey`) instead of dropping them.
        overlapping: bool,
    },
    Compact {
        back: i64,
    },
    Range {
        k: u8,
        end: End,
        back: i64,
        limit: i64,
        sort_order: i32,
        sort_target: i32,
        keys_only: bool,
        count_only: bool,
        min_mod: i64,
    },
    Watch {
        k: u8,
        end: End,
        back: i64,
        prev_kv: bool,
        no_put: bool,
    },
    Commit,
}

fn end_strategy() -> impl Strategy<Value = End> {
    prop_oneof![3 => Just(End::Single), 2 => (0u8..6).prop_map(End::To), 1 => Just(End::All)]
}

fn txop_strategy() -> impl Strategy<Value = TxOp> {
    prop_oneof![
        (0u8..6, 0u8..4).prop_map(|(k, v)| TxOp::Put(k, v)),
        (0u8..6, 0u8..4, 0u8..3).prop_map(|(k, v, mode)| TxOp::PutKeep(k, v, mode)),
        (0u8..6, end_strategy()).prop_map(|(k, e)| TxOp::Del(k, e)),
        (0u8..6, end_strategy()).prop_map(|(k, e)| TxOp::Range(k, e)),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..6, 0u8..4, any::<bool>()).prop_map(|(k, v, prev_kv)| Op::Put { k, v, prev_kv }),
        3 => (0u8..6, end_strategy(), any::<bool>()).prop_map(|(k, end, prev_kv)| Op::Del { k, end, prev_kv }),
        4 => (0u8..6, 0i32..5, 0i32..4, 0i64..6, proptest::collection::vec(txop_strategy(), 0..4),
              proptest::collection::vec(txop_strategy(), 0..3), proptest::bool::weighted(0.3))
            .prop_map(|(cmp_key, target, result, value, success, failure, overlapping)|
                Op::Txn { cmp_key, target, result, value, success, failure, overlapping }),
        1 => (-1i64..6).prop_map(|back| Op::Compact { back }),
        5 => (0u8..6, end_strategy(), -1i64..8, 0i64..4, 0i32..3, 0i32..5, any::<bool>(), proptest::bool::weighted(0.15), 0i64..6)
            .prop_map(|(k, end, back, limit, sort_order, sort_target, keys_only, count_only, min_mod)|
                Op::Range { k, end, back, limit, sort_order, sort_target, keys_only, count_only, min_mod }),
        2 => (0u8..6, end_strategy(), -1i64..8, any::<bool>(), proptest::bool::weighted(0.2))
            .prop_map(|(k, end, back, prev_kv, no_put)| Op::Watch { k, end, back, prev_kv, no_put }),
        2 => Just(Op::Commit),
    ]
}

/// etcd's MVCC semantics, written plainly.
#[derive(Default)]
struct Model {
    rev: i64,
    compact: i64,
    compactions: Vec<i64>,
    /// key -> versions (main revision, value or tombstone), oldest first.
    versions: BTreeMap<Bytes, Vec<(i64, Option<KeyValue>)>>,
    events: Vec<Event>,
    /// Changes of the running command.
    changes: i64,
}

impl Model {
    fn new() -> Model {
        Model { rev: 1, compact: -1, ..Default::default() }
    }

    fn at(&self, k: &[u8], rev: i64) -> Option<KeyValue> {
        self.versions.get(k)?.iter().rev().find(|(r, _)| *r <= rev).and_then(|(_, kv)| kv.clone())
    }

    fn live_at(&self, range: &KeyRange, rev: i64) -> Vec<KeyValue> {
        self.versions.keys().filter(|k| range.contains(k)).filter_map(|k| self.at(k, rev)).collect()
    }

    fn read_rev(&self) -> i64 {
        self.rev + i64::from(self.changes > 0)
    }

    fn put(&mut self, k: Bytes, v: Bytes) -> Option<KeyValue> {
        let rev = self.rev + 1;
        self.changes += 1;
        let prev = self.at(&k, rev);
        let kv = KeyValue {
            key: k.clone(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: v,
            lease: 0,
        };
        self.versions.entry(k).or_default().push((rev, Some(kv.clone())));
        self.events.push(Event { kind: EventKind::Put, kv, prev_kv: prev.clone() });
        prev
    }

    fn delete(&mut self, range: &KeyRange) -> Vec<KeyValue> {
        let rev = self.rev + 1;
        let live = self.live_at(range, rev);
        for prev in &live {
            self.changes += 1;
            self.versions.get_mut(&prev.key).unwrap().push((rev, None));
            let kv = KeyValue { key: prev.key.clone(), mod_revision: rev, ..Default::default() };
            self.events.push(Event { kind: EventKind::Delete, kv, prev_kv: Some(prev.clone()) });
        }
        live
    }

    fn end(&mut self) -> i64 {
        if self.changes > 0 {
            self.rev += 1;
        }
        self.changes = 0;
        self.rev
    }

    fn range(&self, req: &RangeRequest, current: i64) -> Result<RangeResponse, String> {
        if req.revision > current {
            return Err(format!("{:?}", Error::FutureRevision { requested: req.revision, current }));
        }
        let rev = if req.revision <= 0 { current } else { req.revision };
        if rev < self.compact {
            return Err(format!("{:?}", Error::Compacted { requested: rev, compacted: self.compact }));
        }
        let all = self.live_at(&KeyRange::new(&req.key, &req.range_end), rev);
        let count = all.len() as i64;
        let mut kvs: Vec<KeyValue> = if req.count_only { vec![] } else { all };
        kvs.retain(|kv| req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision);
        // etcd reads only the first `limit + 1` keys (in key order) unless the request names a
        // sort order or a filter; a sort by another target then sorts just those.
        if req.sort_order == 0 && req.min_mod_revision == 0 && req.limit > 0 {
            kvs.truncate(req.limit as usize + 1);
        }
        let (order, target) = (req.sort_order, req.sort_target);
        let order = if target != 0 && order == 0 {
            1
        } else if target == 0 && order == 1 {
            0
        } else {
            order
        };
        if order != 0 {
            let f = |kv: &KeyValue| -> (i64, Bytes) {
                match target {
                    0 => (0, kv.key.clone()),
                    1 => (kv.version, Bytes::new()),
                    2 => (kv.create_revision, Bytes::new()),
                    3 => (kv.mod_revision, Bytes::new()),
                    _ => (0, kv.value.clone()),
                }
            };
            kvs.sort_by(|a, b| if order == 2 { f(b).cmp(&f(a)) } else { f(a).cmp(&f(b)) });
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() as i64 > req.limit {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value = Bytes::new());
        }
        Ok(RangeResponse { revision: current, kvs, more, count })
    }

    fn compare(&self, c: &Compare) -> bool {
        let kvs = self.live_at(&KeyRange::new(&c.key, &c.range_end), self.rev);
        let check = |kv: &KeyValue| {
            let ord = match c.target {
                0 => kv.version.cmp(&matches_int(&c.target_union)),
                1 => kv.create_revision.cmp(&matches_int(&c.target_union)),
                2 => kv.mod_revision.cmp(&matches_int(&c.target_union)),
                3 => kv.value.cmp(&match &c.target_union {
                    Some(TargetUnion::Value(v)) => v.clone(),
                    _ => Bytes::new(),
                }),
                _ => kv.lease.cmp(&matches_int(&c.target_union)),
            };
            match c.result {
                0 => ord.is_eq(),
                1 => ord.is_gt(),
                2 => ord.is_lt(),
                _ => ord.is_ne(),
            }
        };
        if kvs.is_empty() {
            return c.target != 3 && check(&KeyValue::default());
        }
        kvs.iter().all(check)
    }
}

fn matches_int(u: &Option<TargetUnion>) -> i64 {
    match u {
        Some(
            TargetUnion::Version(v)
            | TargetUnion::CreateRevision(v)
            | TargetUnion::ModRevision(v)
            | TargetUnion::Lease(v),
        ) => *v,
        _ => 0,
    }
}

fn to_request_op(op: &TxOp) -> RequestOp {
    match op {
        TxOp::Put(k, v) => RequestOp::put(PutRequest {
            key: key(*k),
            value: Bytes::from(vec![b'0' + v]),
            prev_kv: true,
            ..Default::default()
        }),
        TxOp::PutKeep(k, v, mode) => RequestOp::put(PutRequest {
            key: key(*k),
            value: if *mode == 1 { Bytes::from(vec![b'0' + v]) } else { Bytes::new() },
            prev_kv: true,
            ignore_value: *mode != 1,
            ignore_lease: *mode != 0,
            ..Default::default()
        }),
        TxOp::Del(k, e) => {
            RequestOp::delete_range(DeleteRangeRequest { key: key(*k), range_end: range_end(e), prev_kv: true })
        }
        TxOp::Range(k, e) => {
            RequestOp::range(RangeRequest { key: key(*k), range_end: range_end(e), ..Default::default() })
        }
    }
}

/// Keeps txn branches free of overlapping puts/deletes, which `overlaps` detects.
fn dedup(ops: &[TxOp]) -> Vec<RequestOp> {
    let mut out: Vec<RequestOp> = Vec::new();
    let mut puts: Vec<Bytes> = Vec::new();
    let mut dels: Vec<KeyRange> = Vec::new();
    for op in ops {
        match op {
            TxOp::Put(k, _) | TxOp::PutKeep(k, ..) => {
                let k = key(*k);
                // A "\0" range_end reaches every key >= its start, as in the apply.
                if puts.contains(&k) || dels.iter().any(|r| r.contains(&k)) {
                    continue;
                }
                puts.push(k);
            }
            TxOp::Del(k, e) => {
                let r = KeyRange::new(&key(*k), &range_end(e));
                if puts.iter().any(|p| r.contains(p)) {
                    continue;
                }
                dels.push(r);
            }
            TxOp::Range(..) => {}
        }
        out.push(to_request_op(op));
    }
    out
}

/// etcd's duplicate-key rule for one flat branch: a key put twice, or put inside any delete
/// of the branch (a `"\0"` range_end covering every key from its start on).
fn overlaps(ops: &[RequestOp]) -> bool {
    let mut puts: Vec<&Bytes> = Vec::new();
    let mut dels: Vec<KeyRange> = Vec::new();
    for op in ops {
        match op.request.as_ref().unwrap() {
            store::Request::Put(p) => puts.push(&p.key),
            store::Request::DeleteRange(d) => dels.push(KeyRange::new(&d.key, &d.range_end)),
            _ => {}
        }
    }
    puts.iter().enumerate().any(|(i, k)| puts[..i].contains(k) || dels.iter().any(|r| r.contains(k)))
}

/// The txn's result: validation (duplicate keys, both branches), compare, the check of the
/// chosen puts against the state before the txn, then the ops in order.
fn model_txn(m: &mut Model, t: &TxnRequest) -> Result<TxnResponse, String> {
    if overlaps(&t.success) || overlaps(&t.failure) {
        return Err(format!("{:?}", Error::DuplicateKey));
    }
    let ok = t.compare.iter().all(|c| m.compare(c));
    let chosen = if ok { &t.success } else { &t.failure };
    for op in chosen {
        if let Some(store::Request::Put(p)) = &op.request {
            if (p.ignore_value || p.ignore_lease) && m.at(&p.key, m.rev).is_none() {
                return Err(format!("{:?}", Error::KeyNotFound));
            }
        }
    }
    let mut responses = Vec::new();
    for op in chosen {
        responses.push(match op.request.as_ref().unwrap() {
            store::Request::Put(p) => {
                // No op of this txn deleted the key (that would overlap), so its live value
                // is the one before the txn.
                let value = if p.ignore_value { m.at(&p.key, m.rev).unwrap().value } else { p.value.clone() };
                let prev = m.put(p.key.clone(), value);
                ResponseOp::Put(PutResponse { revision: m.rev + 1, prev_kv: prev })
            }
            store::Request::DeleteRange(d) => {
                let prevs = m.delete(&KeyRange::new(&d.key, &d.range_end));
                ResponseOp::DeleteRange(DeleteRangeResponse {
                    revision: m.read_rev(),
                    deleted: prevs.len() as i64,
                    prev_kvs: prevs,
                })
            }
            store::Request::Range(r) => ResponseOp::Range(m.range(r, m.read_rev()).unwrap()),
            store::Request::Txn(_) => unreachable!("the model generates no nested txns"),
        });
    }
    Ok(TxnResponse { revision: m.end(), succeeded: ok, responses })
}

struct Watch {
    stream: WatchStream,
    spec: WatchSpec,
    /// Effective start revision, or the compact revision it must be canceled with at once.
    expect: Result<i64, i64>,
}

fn run(ops: Vec<Op>, seed_batch_limit: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig { watch_sync_interval: Duration::from_millis(5), ..StoreConfig::default() };
    let store = Store::open(dir.path(), cfg).unwrap();
    let mut m = Model::new();
    let mut index = 0u64;
    let mut pending: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut expected: Vec<Result<CommandResponse, String>> = Vec::new();
    let mut watches: Vec<Watch> = Vec::new();

    let commit = |pending: &mut Vec<(u64, Vec<u8>)>,
                  expected: &mut Vec<Result<CommandResponse, String>>|
     -> Result<(), TestCaseError> {
        if pending.is_empty() {
            return Ok(());
        }
        let entries: Vec<(u64, &[u8])> = pending.iter().map(|(i, b)| (*i, &b[..])).collect();
        let got = store.apply(G, &entries).unwrap();
        for (g, e) in got.into_iter().zip(expected.drain(..)) {
            prop_assert_eq!(g.map_err(|e| format!("{e:?}")), e);
        }
        pending.clear();
        Ok(())
    };

    for op in ops {
        let body = match &op {
            Op::Put { k, v, prev_kv } => {
                let req = PutRequest {
                    key: key(*k),
                    value: Bytes::from(vec![b'0' + v]),
                    prev_kv: *prev_kv,
                    ..Default::default()
                };
                let prev = m.put(req.key.clone(), req.value.clone());
                let revision = m.end();
                expected.push(Ok(CommandResponse::Put(PutResponse {
                    revision,
                    prev_kv: if *prev_kv { prev } else { None },
                })));
                Some(CommandBody::Put(req))
            }
            Op::Del { k, end, prev_kv } => {
                let req = DeleteRangeRequest { key: key(*k), range_end: range_end(end), prev_kv: *prev_kv };
                let prevs = m.delete(&KeyRange::new(&req.key, &req.range_end));
                let revision = m.end();
                expected.push(Ok(CommandResponse::DeleteRange(DeleteRangeResponse {
                    revision,
                    deleted: prevs.len() as i64,
                    prev_kvs: if *prev_kv { prevs } else { vec![] },
                })));
                Some(CommandBody::DeleteRange(req))
            }
            Op::Txn { cmp_key, target, result, value, success, failure, overlapping } => {
                let target_union = match target {
                    0 => TargetUnion::Version(*value),
                    1 => TargetUnion::CreateRevision(*value),
                    2 => TargetUnion::ModRevision(*value),
                    3 => TargetUnion::Value(Bytes::from(vec![b'0' + *value as u8])),
                    _ => TargetUnion::Lease(*value),
                };
                let cmp = Compare {
                    result: CompareResult::try_from(*result).unwrap() as i32,
                    target: CompareTarget::try_from(*target).unwrap() as i32,
                    key: key(*cmp_key),
                    target_union: Some(target_union),
                    range_end: Bytes::new(),
                };
                let branch =
                    |ops: &[TxOp]| if *overlapping { ops.iter().map(to_request_op).collect() } else { dedup(ops) };
                let req = TxnRequest { compare: vec![cmp], success: branch(success), failure: branch(failure) };
                expected.push(model_txn(&mut m, &req).map(CommandResponse::Txn));
                Some(CommandBody::Txn(req))
            }
            Op::Compact { back } => {
                let rev = m.rev - back;
                let resp = if rev <= m.compact {
                    Err(format!("{:?}", Error::Compacted { requested: rev, compacted: m.compact }))
                } else if rev > m.rev {
                    Err(format!("{:?}", Error::FutureRevision { requested: rev, current: m.rev }))
                } else {
                    m.compact = rev;
                    m.compactions.push(rev);
                    Ok(CommandResponse::Compact(CompactResponse { revision: m.rev }))
                };
                expected.push(resp);
                Some(CommandBody::Compact(CompactRequest { revision: rev, physical: false }))
            }
            Op::Range { .. } | Op::Watch { .. } | Op::Commit => None,
        };
        if let Some(body) = body {
            index += 1;
            pending.push((index, Command::new(index, body).encode_to_vec()));
            if pending.len() < seed_batch_limit {
                continue;
            }
        }
        commit(&mut pending, &mut expected)?;
        // At a commit the purge of the last compaction is waited for, so reads and watches
        // after it meet a finished purge; elsewhere they race it.
        if matches!(op, Op::Commit) && m.compact > 0 {
            prop_assert!(store.wait_compaction_finished(G, m.compact, std::time::Duration::from_secs(30)));
        }
        match op {
            Op::Range { k, end, back, limit, sort_order, sort_target, keys_only, count_only, min_mod } => {
                let req = RangeRequest {
                    key: key(k),
                    range_end: range_end(&end),
                    limit,
                    revision: if back == -1 {
                        m.rev + 1
                    } else if back == 7 {
                        0
                    } else {
                        m.rev - back
                    },
                    sort_order,
                    sort_target,
                    keys_only,
                    count_only,
                    min_mod_revision: min_mod,
                    ..Default::default()
                };
                let got = store.range(G, &req).map_err(|e| format!("{e:?}"));
                prop_assert_eq!(got, m.range(&req, m.rev), "range {:?}", req);
            }
            Op::Watch { k, end, back, prev_kv, no_put } => {
                let start_revision = if back == 7 { 0 } else { (m.rev + 1 - back).max(1) };
                let spec = WatchSpec {
                    key: key(k),
                    range_end: range_end(&end),
                    start_revision,
                    prev_kv,
                    no_put,
                    no_delete: false,
                };
                let stream = store.watch_stream(G);
                stream.watch(spec.clone());
                let expect = if start_revision == 0 {
                    Ok(m.rev + 1)
                } else if start_revision < m.compact {
                    Err(m.compact)
                } else {
                    Ok(start_revision)
                };
                watches.push(Watch { stream, spec, expect });
            }
            _ => {}
        }
    }
    commit(&mut pending, &mut expected)?;
    // Future watchers report progress only once the store reaches their start revision.
    let max_start = watches.iter().filter_map(|w| w.expect.ok()).max().unwrap_or(0);
    while m.rev < max_start {
        m.put(Bytes::from_static(b"zz"), Bytes::from_static(b"filler"));
        m.end();
        index += 1;
        let req =
            PutRequest { key: Bytes::from_static(b"zz"), value: Bytes::from_static(b"filler"), ..Default::default() };
        let bytes = Command::new(index, CommandBody::Put(req)).encode_to_vec();
        store.apply(G, &[(index, &bytes)]).unwrap().pop().unwrap().unwrap();
    }

    // Every stream: created first, then exactly the model's events (or a prefix of them and
    // a compaction cancel, if a compaction overtook a watcher that was catching up).
    for w in &watches {
        let got = common::drain_until_synced(&w.stream, Duration::from_secs(20));
        prop_assert!(got.first().is_some_and(|e| e.created), "first response must be created: {:?}", got);
        let range = KeyRange::new(&w.spec.key, &w.spec.range_end);
        let mut events = Vec::new();
        let mut canceled = None;
        for resp in &got[1..] {
            prop_assert!(canceled.is_none(), "response after cancel");
            if resp.canceled {
                canceled = Some(resp.compact_revision);
                continue;
            }
            prop_assert!(resp.events.iter().all(|e| e.revision() <= resp.revision), "header behind events");
            events.extend(resp.events.iter().cloned());
        }
        let start = match w.expect {
            Ok(start) => start,
            Err(compact) => {
                prop_assert_eq!(canceled, Some(compact));
                prop_assert!(events.is_empty());
                continue;
            }
        };
        let want: Vec<Event> = m
            .events
            .iter()
            .filter(|e| {
                e.revision() >= start && range.contains(&e.kv.key) && !(w.spec.no_put && e.kind == EventKind::Put)
            })
            .map(|e| Event { prev_kv: if w.spec.prev_kv { e.prev_kv.clone() } else { None }, ..e.clone() })
            .collect();
        // As in etcd, history read after a compaction lacks what the compaction removed: a
        // prev_kv older than the compact revision (the event then carries none), and a
        // tombstone at exactly a compaction's revision (the event is then missing; a watcher
        // still catching up when the compaction ran does not see it).
        let same = |got: &Event, want: &Event| {
            got.kind == want.kind
                && got.kv == want.kv
                && (got.prev_kv == want.prev_kv
                    || (got.prev_kv.is_none() && want.prev_kv.as_ref().is_some_and(|p| p.mod_revision < m.compact)))
        };
        let optional = |want: &Event| want.kind == EventKind::Delete && m.compactions.contains(&want.revision());
        let mut j = 0;
        let mut unmatched = None;
        for want_event in &want {
            if j < events.len() && same(&events[j], want_event) {
                j += 1;
            } else if !optional(want_event) && (canceled.is_none() || j < events.len()) {
                unmatched = Some(want_event.clone());
                break;
            }
        }
        prop_assert!(
            unmatched.is_none() && j == events.len(),
            "watch {:?}: got {:?}, want {:?} (first missing {:?})",
            w.spec,
            events,
            want,
            unmatched
        );
        if let Some(c) = canceled {
            prop_assert!(m.compactions.contains(&c), "cancel names compaction {} not in {:?}", c, m.compactions);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 2000, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op_strategy(), 1..80), batch in 1usize..5) {
        run(ops, batch)?;
    }
}
