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
//! [`recipe::SESSION_TTL_SECONDS`], as etcd's session does, which nobody keeps alive: the lock then
//! ends with that lease unless its holder unlocks first. A waiter whose call ends before it
//! holds the lock (the client's deadline, a cancel, a closed connection) deletes its key, so
//! an abandoned waiter never holds the lock later.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::lease::LeaseService;
use crate::node::Node;
use crate::pb::etcdserverpb as pb;
use crate::pb::v3lockpb;
use crate::pb::v3lockpb::lock_server::Lock;
use crate::recipe::{self, on_behalf_of, range_kvs, range_op};

/// etcd's error when the waiter's key was gone once its turn came.
const SESSION_EXPIRED: &str = "mutex: session is expired";

/// The Lock service of one group (the connection's tenant).
pub struct LockService {
    pub node: Arc<Node>,
    /// The member's lease service, for the lease of a lock asked with none (its ids must
    /// come from the one generator the member's other grants use).
    pub leases: Arc<LeaseService>,
}

impl LockService {
    async fn run_lock(
        &self,
        request: Request<v3lockpb::LockRequest>,
    ) -> Result<Response<v3lockpb::LockResponse>, Status> {
        let node = &self.node;
        let identity = on_behalf_of(&request, ());
        let req = request.into_inner();
        let lease = recipe::session_lease(&self.leases, &identity, req.lease).await?;
        let prefix = recipe::key_prefix(&req.name);
        let my_key = recipe::contender_key(&prefix, lease);

        // Step 1: take a place (or find the one this lease has), and read the oldest.
        let oldest = recipe::one_by_create(&prefix, false, 0);
        let txn = pb::TxnRequest {
            compare: vec![recipe::created_at(&my_key, 0)],
            success: vec![recipe::put_op(&my_key, Bytes::new(), lease), range_op(oldest.clone())],
            failure: vec![range_op(recipe::get(&my_key)), range_op(oldest)],
        };
        let resp = crate::kv::txn_as(node, &identity, txn).await?;
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
        let abandon = recipe::Abandon::arm(node, &identity, &my_key, None);
        recipe::wait_deletes(node, &identity, &prefix, my_revision - 1).await?;

        // Step 3: the key is still there (its lease did not expire while it waited).
        let resp = recipe::run(node, &identity, vec![range_op(recipe::get(&my_key))]).await?;
        let kept = !range_kvs(&resp, 0)?.is_empty();
        abandon.disarm();
        if !kept {
            return Err(Status::unknown(SESSION_EXPIRED));
        }
        Ok(Response::new(v3lockpb::LockResponse { header: resp.header, key: Bytes::from(my_key) }))
    }

    async fn run_unlock(
        &self,
        request: Request<v3lockpb::UnlockRequest>,
    ) -> Result<Response<v3lockpb::UnlockResponse>, Status> {
        let identity = on_behalf_of(&request, ());
        let key = request.into_inner().key;
        let header = recipe::delete_key(&self.node, &identity, &key, None).await?;
        Ok(Response::new(v3lockpb::UnlockResponse { header: Some(header) }))
    }
}

/// Errors of the recipe's steps reach the client as etcd's do (`recipe::as_answered`).
#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<v3lockpb::LockRequest>) -> Result<Response<v3lockpb::LockResponse>, Status> {
        self.run_lock(request).await.map_err(recipe::as_answered)
    }

    async fn unlock(
        &self,
        request: Request<v3lockpb::UnlockRequest>,
    ) -> Result<Response<v3lockpb::UnlockResponse>, Status> {
        self.run_unlock(request).await.map_err(recipe::as_answered)
    }
}
