//! etcd's `v3lockpb.Lock` service: a distributed lock served by the member, for clients that
//! lock with one call instead of the client-side recipe (the Rust `etcd-client` crate's
//! `lock()` and `unlock()`, grpcurl).
//!
//! The lock is etcd's recipe run on the client's behalf, with the client's identity, so
//! every step passes the same permission checks as the client's own calls would:
//!
//! 1. One txn puts the waiter's key `<name>/<lease in hex>` with the lease, if it does not
//!    exist yet (a lease that holds or waits for the lock already keeps its key and place),
//!    and reads the oldest key under `<name>/`.
//! 2. If that key is the waiter's own, the lock is held. Otherwise, until no key under the
//!    prefix was created before the waiter's, it watches the newest such key from the
//!    revision it was read at and waits for its deletion (its holder unlocked, or its lease
//!    expired).
//! 3. It reads its own key again: gone means the lease expired meanwhile (etcd's
//!    `mutex: session is expired`).
//!
//! The answer names the waiter's key; `Unlock` deletes it. A lease of 0 gets a new one of
//! [`SESSION_TTL_SECONDS`], as etcd's session does, which nobody keeps alive: the lock then
//! ends with that lease unless its holder unlocks first. A waiter whose call ends before it
//! holds the lock (the client's deadline, a cancel, a closed connection) deletes its key, so
//! an abandoned waiter never holds the lock later.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::kv::{prefix_end, txn_as};
use crate::lease::LeaseService;
use crate::node::Node;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::lease_server::Lease as _;
use crate::pb::v3lockpb;
use crate::pb::v3lockpb::lock_server::Lock;

/// TTL of the lease granted for a lock asked with lease 0 (etcd's default session TTL).
pub const SESSION_TTL_SECONDS: i64 = 60;

/// etcd's error when the waiter's key was gone once its turn came.
const SESSION_EXPIRED: &str = "mutex: session is expired";

/// The Lock service of one group (the connection's tenant).
pub struct LockService {
    pub node: Arc<Node>,
    /// The member's lease service, for the lease of a lock asked with none (its ids must
    /// come from the one generator the member's other grants use).
    pub leases: Arc<LeaseService>,
}

/// `message` sent with the metadata and connection of `caller`'s request: a call of the
/// recipe made on the caller's behalf. With `()`, the caller's identity, kept for those calls.
fn on_behalf_of<T, M>(caller: &Request<T>, message: M) -> Request<M> {
    Request::from_parts(caller.metadata().clone(), caller.extensions().clone(), message)
}

fn range_op(req: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp { request: Some(pb::request_op::Request::RequestRange(req)) }
}

/// The first key under `prefix` by create revision, or the last one created at or before
/// `max_create` (`WithFirstCreate`, `WithLastCreate` plus `WithMaxCreateRev` in etcd).
fn one_by_create(prefix: &[u8], descending: bool, max_create: i64) -> pb::RangeRequest {
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

fn get(key: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest { key: Bytes::copy_from_slice(key), ..Default::default() }
}

/// The key-values of response `i` of a txn, which the recipe built as a range.
fn range_kvs(resp: &pb::TxnResponse, i: usize) -> Result<&[crate::pb::mvccpb::KeyValue], Status> {
    match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(pb::response_op::Response::ResponseRange(r)) => Ok(&r.kvs),
        _ => Err(Status::internal("lock: a range of the recipe answered as another operation")),
    }
}

/// Deletes a waiter's key on the caller's behalf; the revision header of the delete.
async fn delete_key(node: &Node, identity: &Request<()>, key: &[u8]) -> Result<pb::ResponseHeader, Status> {
    let delete = pb::DeleteRangeRequest { key: Bytes::copy_from_slice(key), ..Default::default() };
    let txn = pb::TxnRequest {
        success: vec![pb::RequestOp { request: Some(pb::request_op::Request::RequestDeleteRange(delete)) }],
        ..Default::default()
    };
    let resp = txn_as(node, identity, txn).await?;
    Ok(resp.header.unwrap_or_default())
}

/// Deletes the waiter's key if the call ends before it holds the lock (the future dropped
/// at a cancel or a closed connection, or an error while waiting). The delete runs on its
/// own task, as the call's future is gone.
struct Abandon {
    node: Arc<Node>,
    identity: Option<Request<()>>,
    key: Vec<u8>,
}

impl Abandon {
    /// The lock is held: the key stays.
    fn disarm(mut self) {
        self.identity = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let Some(identity) = self.identity.take() else { return };
        // Outside a runtime (the member shutting down) there is nobody left to delete it; the
        // key then ends with its lease.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (node, key) = (self.node.clone(), std::mem::take(&mut self.key));
        runtime.spawn(async move {
            if let Err(e) = delete_key(&node, &identity, &key).await {
                tracing::warn!(key = %String::from_utf8_lossy(&key), error = %e.message(), "could not delete an abandoned lock waiter's key");
            }
        });
    }
}

impl LockService {
    /// Waits until no key under `prefix` was created at or before `max_create`: each time
    /// for the deletion of the newest such key, watched from the revision it was read at.
    async fn wait_deletes(&self, identity: &Request<()>, prefix: &[u8], max_create: i64) -> Result<(), Status> {
        let node = &self.node;
        loop {
            let read = pb::TxnRequest {
                success: vec![range_op(one_by_create(prefix, true, max_create))],
                ..Default::default()
            };
            let resp = txn_as(node, identity, read).await?;
            let Some(last) = range_kvs(&resp, 0)?.first() else { return Ok(()) };
            let revision = resp.header.as_ref().map_or(0, |h| h.revision);
            // A waiter holds a watcher: it counts against the tenant's watcher limit.
            if !node.admit_watcher() {
                return Err(crate::error::EtcdError::TooManyRequests.status());
            }
            // The watch starts at the revision the key was read at, so a deletion after the
            // read is never missed; the read permission on it is the range's, checked above.
            let stream = node.store.watch_stream(node.group());
            stream.watch(store::WatchSpec {
                key: last.key.clone(),
                range_end: Bytes::new(),
                start_revision: revision,
                prev_kv: false,
                no_put: true,
                no_delete: false,
            });
            loop {
                let Some(event) = stream.recv().await else {
                    return Err(crate::error::EtcdError::Stopped.status());
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
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<v3lockpb::LockRequest>) -> Result<Response<v3lockpb::LockResponse>, Status> {
        let node = &self.node;
        let identity = on_behalf_of(&request, ());
        let req = request.into_inner();
        let lease = if req.lease == 0 {
            let grant = pb::LeaseGrantRequest { ttl: SESSION_TTL_SECONDS, id: 0 };
            let granted = self.leases.lease_grant(on_behalf_of(&identity, grant)).await?;
            granted.into_inner().id
        } else {
            req.lease
        };
        let mut prefix = req.name.to_vec();
        prefix.push(b'/');
        let mut my_key = prefix.clone();
        my_key.extend_from_slice(format!("{lease:x}").as_bytes());

        // Step 1: take a place (or find the one this lease has), and read the oldest.
        let put = pb::PutRequest { key: Bytes::from(my_key.clone()), lease, ..Default::default() };
        let absent = pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Create as i32,
            key: Bytes::from(my_key.clone()),
            target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
            ..Default::default()
        };
        let oldest = one_by_create(&prefix, false, 0);
        let txn = pb::TxnRequest {
            compare: vec![absent],
            success: vec![
                pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(put)) },
                range_op(oldest.clone()),
            ],
            failure: vec![range_op(get(&my_key)), range_op(oldest)],
        };
        let resp = txn_as(node, &identity, txn).await?;
        let header = resp.header.unwrap_or_default();
        let my_revision = if resp.succeeded {
            header.revision
        } else {
            range_kvs(&resp, 0)?.first().map_or(0, |kv| kv.create_revision)
        };
        let owner = range_kvs(&resp, 1)?.first().map(|kv| kv.create_revision);
        if owner.is_none() || owner == Some(my_revision) {
            return Ok(Response::new(v3lockpb::LockResponse { header: Some(header), key: Bytes::from(my_key) }));
        }

        // Step 2: wait for every earlier waiter. From here until the lock is held, an end of
        // the call deletes the key.
        let abandon = Abandon { node: node.clone(), identity: Some(on_behalf_of(&identity, ())), key: my_key.clone() };
        self.wait_deletes(&identity, &prefix, my_revision - 1).await?;

        // Step 3: the key is still there (its lease did not expire while it waited).
        let check = pb::TxnRequest { success: vec![range_op(get(&my_key))], ..Default::default() };
        let resp = txn_as(node, &identity, check).await?;
        let kept = !range_kvs(&resp, 0)?.is_empty();
        abandon.disarm();
        if !kept {
            return Err(Status::unknown(SESSION_EXPIRED));
        }
        Ok(Response::new(v3lockpb::LockResponse { header: resp.header, key: Bytes::from(my_key) }))
    }

    async fn unlock(
        &self,
        request: Request<v3lockpb::UnlockRequest>,
    ) -> Result<Response<v3lockpb::UnlockResponse>, Status> {
        let identity = on_behalf_of(&request, ());
        let key = request.into_inner().key;
        let header = delete_key(&self.node, &identity, &key).await?;
        Ok(Response::new(v3lockpb::UnlockResponse { header: Some(header) }))
    }
}
