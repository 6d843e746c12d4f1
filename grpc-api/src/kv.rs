//! `KV`: Range, Put, DeleteRange, Txn and Compact, and the conversions between etcd's wire
//! types and the store's commands and responses.
//!
//! The store's command types carry etcd's field numbers, so conversion is a field-by-field
//! move of `Bytes` handles — no key or value is copied.
//!
//! Range answers go out as [`WireRangeResponse`]: the store writes each key-value's
//! `RangeResponse.kvs` field (key, length and `mvccpb.KeyValue` encoding) from the stored
//! value without decoding it (`store::Store::range_wire`), into buffers this module copies
//! into the answer whole, so clients see etcd's `RangeResponse` exactly. The service is
//! generated over that type (`build.rs`), like `Watch`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::error::{store_status, EtcdError};
use crate::node::shares::Cost;
use crate::node::Node;
use crate::pb::etcdserverpb as pb;
use crate::pb::mvccpb;

/// The server side of etcd's `KV` service, generated over [`WireRangeResponse`].
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.KV.rs"));
}
use server::k_v_server::KV as Kv;

/// etcd's `RangeResponse` as this server writes it: the same fields and tags, with the
/// key-values already encoded as `RangeResponse.kvs` fields (`store::WireKvs`).
#[derive(Clone, Debug, PartialEq)]
pub struct WireRangeResponse {
    pub header: Option<pb::ResponseHeader>,
    pub kvs: store::WireKvs,
    pub more: bool,
    pub count: i64,
}

impl crate::codec::WireMessage for WireRangeResponse {
    fn encoded_len(&self) -> usize {
        use prost::encoding::{bool, int64, message};
        self.header.as_ref().map_or(0, |h| message::encoded_len(1, h))
            + self.kvs.encoded_len()
            + if self.more { bool::encoded_len(3, &self.more) } else { 0 }
            + if self.count != 0 { int64::encoded_len(4, &self.count) } else { 0 }
    }

    fn encode(&self, buf: &mut impl bytes::BufMut) {
        use prost::encoding::{bool, int64, message};
        // Fields in tag order with defaults left out, as prost (and etcd) write them.
        if let Some(h) = &self.header {
            message::encode(1, h, buf);
        }
        for chunk in self.kvs.chunks() {
            buf.put_slice(chunk);
        }
        if self.more {
            bool::encode(3, &self.more, buf);
        }
        if self.count != 0 {
            int64::encode(4, &self.count, buf);
        }
    }
}

/// The KV service.
pub struct KvService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<WireRangeResponse>, Status> {
        let node = &self.node;
        let (metadata, extensions, message) = request.into_parts();
        let req = range_from_pb(message);
        store::check_range(&req).map_err(|e| store_status(&e))?;
        if !req.serializable {
            // A learner serves serializable ranges only, as etcd's.
            node.check_not_learner()?;
            node.read_barrier().await?;
        }
        // Permissions are checked after the read barrier, as etcd checks them after its read
        // index: a linearizable read sees every auth change committed before it began.
        let identity = Request::from_parts(metadata, extensions, ());
        crate::auth::caller(node, &identity)?.check_read(&req.key, &req.range_end)?;
        let resp = node.read(Cost::of_range(&req.range_end), move |store, group| store.range_wire(group, &req)).await?;
        Ok(Response::new(WireRangeResponse {
            header: Some(node.header(resp.revision)),
            kvs: resp.kvs,
            more: resp.more,
            count: resp.count,
        }))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let node = &self.node;
        if node.alarms.nospace() {
            return Err(EtcdError::NoSpace.status());
        }
        let caller = crate::auth::caller(node, &request)?;
        let put = put_from_pb(request.into_inner());
        caller.check_put(&put)?;
        caller.check_lease_keys(node, put.lease)?;
        let body = caller.checked(store::CommandBody::Put(put));
        match self.node.propose(body).await? {
            store::CommandResponse::Put(resp) => Ok(Response::new(put_to_pb(node, resp))),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let node = &self.node;
        let caller = crate::auth::caller(node, &request)?;
        let delete = delete_from_pb(request.into_inner());
        caller.check_delete(&delete)?;
        let body = caller.checked(store::CommandBody::DeleteRange(delete));
        match self.node.propose(body).await? {
            store::CommandResponse::DeleteRange(resp) => Ok(Response::new(delete_to_pb(node, resp))),
            other => Err(unexpected(&other)),
        }
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let identity = Request::from_parts(metadata, extensions, ());
        txn_as(&self.node, &identity, message).await.map(Response::new)
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let node = &self.node;
        // No permission is needed (as in etcd 3.5), but an unknown token is refused as the
        // compaction is proposed.
        crate::auth::caller(node, &request)?;
        let req = request.into_inner();
        let body =
            store::CommandBody::Compact(store::CompactRequest { revision: req.revision, physical: req.physical });
        match self.node.propose(body).await? {
            store::CommandResponse::Compact(resp) => {
                if req.physical {
                    // etcd answers a physical compaction only once history is removed.
                    let store = node.store.clone();
                    let group = node.group();
                    let timeout = node.cfg.request_timeout;
                    let finished = tokio::task::spawn_blocking(move || {
                        store.wait_compaction_finished(group, req.revision, timeout)
                    })
                    .await
                    .map_err(|e| Status::unknown(e.to_string()))?;
                    if !finished {
                        return Err(EtcdError::Timeout.status());
                    }
                }
                Ok(Response::new(pb::CompactionResponse { header: Some(node.header(resp.revision)) }))
            }
            other => Err(unexpected(&other)),
        }
    }
}

/// A txn that only reads is served like etcd's (`isTxnReadonly`): the same request checks
/// as a proposal but for the size (etcd bounds only what enters its log by
/// `--max-request-bytes`; gRPC's message limit bounds the rest), a linearizable read
/// barrier unless every range in it is serializable, the
/// caller's permissions, then evaluation against the local store. Its answer is what applying
/// it right after the barrier would give (same semantics, same header revision), without a log
/// entry.
async fn read_only_txn(node: &Node, txn: store::TxnRequest, identity: &Request<()>) -> Result<pb::TxnResponse, Status> {
    let command = store::Command { request_id: 0, body: Some(store::CommandBody::Txn(txn)) };
    node.store.check_request(&command).map_err(|e| store_status(&e))?;
    let Some(store::CommandBody::Txn(txn)) = command.body else { unreachable!("built as a txn above") };
    if !txn.is_serializable() {
        node.read_barrier().await?;
    }
    // Every compare and range, nested txns included, after the barrier (as for a range).
    crate::auth::caller(node, identity)?.check_txn(&txn)?;
    let resp = node.read(txn_cost(&txn), move |store, group| store.read_only_txn(group, &txn)).await?;
    Ok(txn_to_pb(node, resp))
}

/// A read-only txn is a point read when every compare and every range in it (nested txns
/// included) names one key.
fn txn_cost(txn: &store::TxnRequest) -> Cost {
    let point = txn.compare.iter().all(|c| c.range_end.is_empty())
        && txn.success.iter().chain(&txn.failure).all(|op| match &op.request {
            Some(store::Request::Range(r)) => r.range_end.is_empty(),
            Some(store::Request::Txn(t)) => txn_cost(t) == Cost::Point,
            _ => true,
        });
    if point {
        Cost::Point
    } else {
        Cost::Scan
    }
}

fn unexpected(resp: &store::CommandResponse) -> Status {
    Status::internal(format!("command applied with an unexpected response: {resp:?}"))
}

/// A txn on behalf of the caller whose metadata and connection `identity` carries: `KV.Txn`,
/// and the calls the server makes for a client (`lock.rs`), with the same checks.
pub(crate) async fn txn_as(
    node: &Node,
    identity: &Request<()>,
    message: pb::TxnRequest,
) -> Result<pb::TxnResponse, Status> {
    // A learner serves no txn, read-only ones included (etcd serves it Range and Status).
    node.check_not_learner()?;
    let mut txn = txn_from_pb(message);
    if txn.is_read_only() {
        return read_only_txn(node, txn, identity).await;
    }
    let caller = crate::auth::caller(node, identity)?;
    if caller.enabled() {
        // etcd validates a txn before its permissions: its request errors win.
        let command = store::Command::new(0, store::CommandBody::Txn(txn));
        node.store.validate(&command).map_err(|e| store_status(&e))?;
        let Some(store::CommandBody::Txn(t)) = command.body else { unreachable!("built as a txn above") };
        txn = t;
        // Every compare and every op of both branches, nested txns included (etcd's
        // checkTxnAuth), before anything is read or proposed.
        caller.check_txn(&txn)?;
    }
    if node.alarms.nospace() && txn_has_put(&txn) {
        return Err(EtcdError::NoSpace.status());
    }
    match node.propose(caller.checked(store::CommandBody::Txn(txn))).await? {
        store::CommandResponse::Txn(resp) => Ok(txn_to_pb(node, resp)),
        other => Err(unexpected(&other)),
    }
}

/// The range end of every key that starts with `prefix` (etcd's `GetPrefixRangeEnd`): the
/// prefix with its last byte below 0xff raised by one, or `"\0"` (to the end of the keyspace)
/// when every byte is 0xff.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    store::prefix_successor(prefix).unwrap_or_else(|| vec![0])
}

fn txn_has_put(txn: &store::TxnRequest) -> bool {
    fn ops_have_put(ops: &[store::RequestOp]) -> bool {
        ops.iter().any(|op| match &op.request {
            Some(store::Request::Put(_)) => true,
            Some(store::Request::Txn(t)) => txn_has_put(t),
            _ => false,
        })
    }
    ops_have_put(&txn.success) || ops_have_put(&txn.failure)
}

// ---- etcd → store ----

/// etcd `RangeRequest` → store.
pub fn range_from_pb(r: pb::RangeRequest) -> store::RangeRequest {
    store::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order: r.sort_order,
        sort_target: r.sort_target,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

/// etcd `PutRequest` → store.
pub fn put_from_pb(p: pb::PutRequest) -> store::PutRequest {
    store::PutRequest {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

/// etcd `DeleteRangeRequest` → store.
pub fn delete_from_pb(d: pb::DeleteRangeRequest) -> store::DeleteRangeRequest {
    store::DeleteRangeRequest { key: d.key, range_end: d.range_end, prev_kv: d.prev_kv }
}

/// etcd `TxnRequest` → store.
pub fn txn_from_pb(t: pb::TxnRequest) -> store::TxnRequest {
    store::TxnRequest {
        compare: t.compare.into_iter().map(compare_from_pb).collect(),
        success: t.success.into_iter().map(op_from_pb).collect(),
        failure: t.failure.into_iter().map(op_from_pb).collect(),
    }
}

fn compare_from_pb(c: pb::Compare) -> store::Compare {
    use pb::compare::TargetUnion as P;
    use store::TargetUnion as S;
    store::Compare {
        result: c.result,
        target: c.target,
        key: c.key,
        target_union: c.target_union.map(|t| match t {
            P::Version(v) => S::Version(v),
            P::CreateRevision(v) => S::CreateRevision(v),
            P::ModRevision(v) => S::ModRevision(v),
            P::Value(v) => S::Value(v),
            P::Lease(v) => S::Lease(v),
        }),
        range_end: c.range_end,
    }
}

fn op_from_pb(op: pb::RequestOp) -> store::RequestOp {
    use pb::request_op::Request as P;
    store::RequestOp {
        request: op.request.map(|r| match r {
            P::RequestRange(r) => store::Request::Range(range_from_pb(r)),
            P::RequestPut(p) => store::Request::Put(put_from_pb(p)),
            P::RequestDeleteRange(d) => store::Request::DeleteRange(delete_from_pb(d)),
            P::RequestTxn(t) => store::Request::Txn(txn_from_pb(t)),
        }),
    }
}

// ---- store → etcd ----

/// A store key-value as etcd's `mvccpb.KeyValue`.
pub fn kv_to_pb(kv: store::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// etcd's `mvccpb.KeyValue` as a store key-value (the inverse of [`kv_to_pb`]).
pub fn kv_from_pb(kv: mvccpb::KeyValue) -> store::KeyValue {
    store::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// A store event as etcd's `mvccpb.Event`.
pub fn event_to_pb(e: store::Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            store::EventKind::Put => mvccpb::event::EventType::Put as i32,
            store::EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(kv_to_pb(e.kv)),
        prev_kv: e.prev_kv.map(kv_to_pb),
    }
}

fn put_to_pb(node: &Node, r: store::PutResponse) -> pb::PutResponse {
    pb::PutResponse { header: Some(node.header(r.revision)), prev_kv: r.prev_kv.map(kv_to_pb) }
}

fn delete_to_pb(node: &Node, r: store::DeleteRangeResponse) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(node.header(r.revision)),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv_to_pb).collect(),
    }
}

fn txn_to_pb(node: &Node, r: store::TxnResponse) -> pb::TxnResponse {
    let mut resp = nested_txn_to_pb(r);
    resp.header = Some(node.header(resp.header.as_ref().map_or(0, |h| h.revision)));
    resp
}

/// Responses inside a txn carry a header with only the revision set, as etcd's do: the full
/// header is filled for the outermost response only.
fn nested_header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader { revision, ..Default::default() })
}

fn nested_txn_to_pb(r: store::TxnResponse) -> pb::TxnResponse {
    use pb::response_op::Response as P;
    pb::TxnResponse {
        header: nested_header(r.revision),
        succeeded: r.succeeded,
        responses: r
            .responses
            .into_iter()
            .map(|op| pb::ResponseOp {
                response: Some(match op {
                    store::ResponseOp::Range(r) => P::ResponseRange(pb::RangeResponse {
                        header: nested_header(r.revision),
                        kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
                        more: r.more,
                        count: r.count,
                    }),
                    store::ResponseOp::Put(p) => P::ResponsePut(pb::PutResponse {
                        header: nested_header(p.revision),
                        prev_kv: p.prev_kv.map(kv_to_pb),
                    }),
                    store::ResponseOp::DeleteRange(d) => P::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header: nested_header(d.revision),
                        deleted: d.deleted,
                        prev_kvs: d.prev_kvs.into_iter().map(kv_to_pb).collect(),
                    }),
                    store::ResponseOp::Txn(t) => P::ResponseTxn(nested_txn_to_pb(t)),
                }),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message;

    use super::{kv_to_pb, pb, prefix_end, WireRangeResponse};
    use crate::codec::WireMessage;

    /// The hand-written encoding is prost's of etcd's `RangeResponse`, byte for byte, with
    /// and without each default-valued field.
    #[test]
    fn a_wire_range_response_is_etcds_range_response() {
        let kv = |key: &str, value: &str, rev: i64| store::KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            value: Bytes::copy_from_slice(value.as_bytes()),
            lease: 0,
        };
        let header = pb::ResponseHeader { cluster_id: u64::MAX, member_id: 7, revision: 12, raft_term: 3 };
        for (kvs, more, count, header) in [
            (vec![kv("a", "1", 2), kv("b", &"x".repeat(300), 5)], true, 9, Some(header)),
            (vec![kv("only", "", 4)], false, 1, Some(header)),
            (Vec::new(), false, 0, None),
        ] {
            let r = store::RangeResponse { revision: 12, kvs: kvs.clone(), more, count };
            let wire = WireRangeResponse { header, kvs: store::WireRangeResponse::encode(r).kvs, more, count };
            let mut out = Vec::new();
            wire.encode(&mut out);
            assert_eq!(out.len(), WireMessage::encoded_len(&wire));
            let want = pb::RangeResponse { header, kvs: kvs.into_iter().map(kv_to_pb).collect(), more, count };
            assert_eq!(out, want.encode_to_vec());
        }
    }

    #[test]
    fn a_prefix_ends_after_its_last_byte_that_can_grow() {
        assert_eq!(prefix_end(b"lock/"), b"lock0".to_vec());
        assert_eq!(prefix_end(b"a\xff/"), b"a\xff0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
