//! The steps of etcd's client-side concurrency recipes (`clientv3/concurrency`: the mutex and
//! the election), which the member runs for its `Lock` and `Election` services.
//!
//! etcd serves those services with an embedded client that makes ordinary KV, Lease and
//! Watch calls carrying the caller's context. Here each step is a call made on the caller's
//! behalf ([`on_behalf_of`]): a txn through `kv::txn_as` with the caller's identity, so
//! permissions, tenant limits and deadlines apply as they would to the caller's own calls,
//! or a watch on the caller's group, admitted against the group's watcher limit.
//!
//! Both recipes queue contenders as keys `<name>/<lease in hex>` under one prefix, ordered by
//! create revision: the oldest key holds the lock or leads. A contender waits
//! ([`wait_deletes`]) until every key created before its own is deleted.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Status};

use crate::error::EtcdError;
use crate::kv::{prefix_end, txn_as};
use crate::lease::LeaseService;
use crate::node::Node;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::lease_server::Lease as _;
use crate::pb::mvccpb;

/// An error of a recipe's step as etcd's service answers it. etcd's embedded client turns
/// each etcd error of the server (every `etcdserver: ...` message) into a client-side error
/// value (`rpctypes.EtcdError`), which the service returns and gRPC then sends as `Unknown`
/// with the same message; other errors keep their code.
pub(crate) fn as_answered(status: Status) -> Status {
    if status.code() != tonic::Code::Unknown && status.message().starts_with("etcdserver: ") {
        return Status::unknown(status.message());
    }
    status
}

/// TTL of the lease granted for a contender that names none (lease 0): etcd's default
/// session TTL. Nobody keeps it alive, as etcd's server-side session is orphaned.
pub const SESSION_TTL_SECONDS: i64 = 60;

/// `message` sent with the metadata and connection of `caller`'s request: a call of the
/// recipe made on the caller's behalf. With `()`, the caller's identity, kept for those calls.
pub(crate) fn on_behalf_of<T, M>(caller: &Request<T>, message: M) -> Request<M> {
    Request::from_parts(caller.metadata().clone(), caller.extensions().clone(), message)
}

/// The lease a contender's key is put with: `lease`, or for 0 a new one of
/// [`SESSION_TTL_SECONDS`] granted on the caller's behalf (etcd's `NewSession`), from the
/// member's one lease id generator.
pub(crate) async fn session_lease(leases: &LeaseService, identity: &Request<()>, lease: i64) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    let grant = pb::LeaseGrantRequest { ttl: SESSION_TTL_SECONDS, id: 0 };
    Ok(leases.lease_grant(on_behalf_of(identity, grant)).await?.into_inner().id)
}

/// The key of the contender with `lease` under `prefix` (`<name>/`): the lease id in hex as
/// Go's `%x` prints an `int64`, with a minus sign for a negative id (`x/-5`), so a client's
/// recipe and this one queue under the same key.
pub(crate) fn contender_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    let sign = if lease < 0 { "-" } else { "" };
    key.extend_from_slice(format!("{sign}{:x}", lease.unsigned_abs()).as_bytes());
    key
}

/// `name` followed by `/`: the prefix of a lock's or an election's keys.
pub(crate) fn key_prefix(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

pub(crate) fn range_op(req: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp { request: Some(pb::request_op::Request::RequestRange(req)) }
}

pub(crate) fn put_op(key: &[u8], value: Bytes, lease: i64) -> pb::RequestOp {
    let put = pb::PutRequest { key: Bytes::copy_from_slice(key), value, lease, ..Default::default() };
    pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(put)) }
}

/// The compare "`key` was created at `revision`" (0: `key` does not exist).
pub(crate) fn created_at(key: &[u8], revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: Bytes::copy_from_slice(key),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

/// The first key under `prefix` by create revision, or the last one created at or before
/// `max_create` (`WithFirstCreate`, `WithLastCreate` plus `WithMaxCreateRev` in etcd).
pub(crate) fn one_by_create(prefix: &[u8], descending: bool, max_create: i64) -> pb::RangeRequest {
    pb::RangeRequest {
        key: Bytes::copy_from_slice(prefix),
        range_end: Bytes::from(prefix_end(prefix)),
        limit: 1,
        sort_order: if descending {
            pb::range_request::SortOrder::Descend
        } else {
            pb::range_request::SortOrder::Ascend
        } as i32,
        sort_target: pb::range_request::SortTarget::Create as i32,
        max_create_revision: max_create,
        ..Default::default()
    }
}

pub(crate) fn get(key: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest { key: Bytes::copy_from_slice(key), ..Default::default() }
}

/// Runs `ops` as one txn on the caller's behalf (a linearizable read when all are ranges).
pub(crate) async fn run(
    node: &Node,
    identity: &Request<()>,
    ops: Vec<pb::RequestOp>,
) -> Result<pb::TxnResponse, Status> {
    txn_as(node, identity, pb::TxnRequest { success: ops, ..Default::default() }).await
}

/// The key-values of response `i` of a txn, which the recipe built as a range.
pub(crate) fn range_kvs(resp: &pb::TxnResponse, i: usize) -> Result<&[mvccpb::KeyValue], Status> {
    match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(pb::response_op::Response::ResponseRange(r)) => Ok(&r.kvs),
        _ => Err(Status::internal("a range of a recipe answered as another operation")),
    }
}

/// Deletes `key` on the caller's behalf, if it was created at `created` when that is given
/// (an election's resign: a contender deletes only its own key, not a later one of the same
/// lease). Answers the txn's header.
pub(crate) async fn delete_key(
    node: &Node,
    identity: &Request<()>,
    key: &[u8],
    created: Option<i64>,
) -> Result<pb::ResponseHeader, Status> {
    let delete = pb::DeleteRangeRequest { key: Bytes::copy_from_slice(key), ..Default::default() };
    let txn = pb::TxnRequest {
        compare: created.map(|revision| created_at(key, revision)).into_iter().collect(),
        success: vec![pb::RequestOp { request: Some(pb::request_op::Request::RequestDeleteRange(delete)) }],
        failure: Vec::new(),
    };
    Ok(txn_as(node, identity, txn).await?.header.unwrap_or_default())
}

/// Deletes a contender's key if its call ends before it holds the lock or leads (the future
/// dropped at a cancel, a deadline or a closed connection, or an error while waiting), so an
/// abandoned contender never holds or leads later. The delete runs on its own task, as the
/// call's future is gone.
pub(crate) struct Abandon {
    node: Arc<Node>,
    identity: Option<Request<()>>,
    key: Vec<u8>,
    created: Option<i64>,
}

impl Abandon {
    /// Armed for `key` (created at `created`, if that guards the delete).
    pub(crate) fn arm(node: &Arc<Node>, identity: &Request<()>, key: &[u8], created: Option<i64>) -> Abandon {
        Abandon { node: node.clone(), identity: Some(on_behalf_of(identity, ())), key: key.to_vec(), created }
    }

    /// The contender holds or leads: the key stays.
    pub(crate) fn disarm(mut self) {
        self.identity = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let Some(identity) = self.identity.take() else { return };
        // Outside a runtime (the member shutting down) there is nobody left to delete it; the
        // key then ends with its lease.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (node, key, created) = (self.node.clone(), std::mem::take(&mut self.key), self.created);
        runtime.spawn(async move {
            if let Err(e) = delete_key(&node, &identity, &key, created).await {
                tracing::warn!(key = %String::from_utf8_lossy(&key), error = %e.message(), "could not delete an abandoned contender's key");
            }
        });
    }
}

/// A watch of `key` (to `range_end`, if not empty) on the caller's group from `revision`, of
/// deletions only if `deletes_only`, admitted against the group's watcher limit. Its read
/// permission is that of the range the recipe read first, which covers it.
pub(crate) fn watch_from(
    node: &Node,
    key: &[u8],
    range_end: &[u8],
    revision: i64,
    deletes_only: bool,
) -> Result<store::WatchStream, Status> {
    if !node.admit_watcher() {
        return Err(EtcdError::TooManyRequests.status());
    }
    let stream = node.store.watch_stream(node.group());
    stream.watch(store::WatchSpec {
        key: Bytes::copy_from_slice(key),
        range_end: Bytes::copy_from_slice(range_end),
        start_revision: revision,
        prev_kv: false,
        no_put: deletes_only,
        no_delete: false,
    });
    Ok(stream)
}

/// Waits until no key under `prefix` was created at or before `max_create`: each time for
/// the deletion of the newest such key, watched from the revision it was read at (so a
/// deletion after the read is never missed). Where etcd's client gives up with "compacted"
/// when compaction passes that revision first, this reads again.
pub(crate) async fn wait_deletes(
    node: &Node,
    identity: &Request<()>,
    prefix: &[u8],
    max_create: i64,
) -> Result<(), Status> {
    loop {
        let resp = run(node, identity, vec![range_op(one_by_create(prefix, true, max_create))]).await?;
        let Some(last) = range_kvs(&resp, 0)?.first() else { return Ok(()) };
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        let stream = watch_from(node, &last.key, &[], revision, true)?;
        loop {
            let Some(event) = stream.recv().await else {
                return Err(EtcdError::Stopped.status());
            };
            if event.canceled {
                // Compacted past the read revision: read again (the key is then gone or
                // still there at a newer revision).
                break;
            }
            if event.events.iter().any(|e| e.kind == store::EventKind::Delete) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::contender_key;

    #[test]
    fn contender_keys_print_the_lease_as_gos_hex() {
        assert_eq!(contender_key(b"x/", 0x694d), b"x/694d");
        assert_eq!(contender_key(b"x/", -5), b"x/-5");
        assert_eq!(contender_key(b"x/", i64::MIN), b"x/-8000000000000000");
        assert_eq!(contender_key(b"x/", i64::MAX), b"x/7fffffffffffffff");
    }
}
