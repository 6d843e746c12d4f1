//! `Lease`: grant, revoke, keep-alive, time-to-live and listing. Grants and revokes go
//! through the log; keep-alives only move the leader's in-memory deadline (see `lessor`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::error::{store_status, EtcdError};
use crate::node::lessor::TTL_MAX_SECONDS;
use crate::node::shares::Cost;
use crate::node::Node;
use crate::pb::etcdserverpb::{self as pb, lease_server::Lease};

/// The Lease service.
pub struct LeaseService {
    pub node: Arc<Node>,
    /// Source of lease ids chosen by this member; ids are picked before proposing so that
    /// every replica applies the same id.
    pub next_id: AtomicU64,
}

impl LeaseService {
    /// A service whose generated ids start from this member's id and the clock, like etcd's.
    pub fn new(node: Arc<Node>) -> LeaseService {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let seed = ((node.member_id() & 0xffff) << 48) | ((now & 0xff_ffff_ffff) << 8);
        LeaseService { node, next_id: AtomicU64::new(seed) }
    }

    fn generate_id(&self) -> i64 {
        loop {
            let id = (self.next_id.fetch_add(1, Ordering::Relaxed) & (i64::MAX as u64)) as i64;
            if id != 0 {
                return id;
            }
        }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let node = &self.node;
        // etcd's order: the quota first, then the token (as the grant is proposed; a grant
        // needs no permission, but an unknown token is refused, with auth on or off), then
        // the TTL (at apply).
        if node.alarms.nospace() {
            return Err(EtcdError::NoSpace.status());
        }
        crate::auth::caller(node, &request)?;
        let req = request.into_inner();
        if req.ttl > TTL_MAX_SECONDS {
            return Err(EtcdError::LeaseTtlTooLarge.status());
        }
        let id = if req.id == 0 { self.generate_id() } else { req.id };
        let ttl = node.lessor.granted_ttl(req.ttl);
        let resp = node.propose(store::CommandBody::LeaseGrant(store::LeaseGrantRequest { id, ttl })).await?;
        let store::CommandResponse::LeaseGrant(granted) = resp else {
            return Err(Status::internal("lease grant applied as another command"));
        };
        Ok(Response::new(pb::LeaseGrantResponse {
            header: Some(node.header(granted.revision)),
            id: granted.id,
            ttl: granted.ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let node = &self.node;
        let caller = crate::auth::caller(node, &request)?;
        let id = request.into_inner().id;
        // Every key attached to the lease must be writable (etcd's checkLeasePuts), checked
        // at an auth revision the apply confirms.
        caller.check_lease_keys(node, id)?;
        let revoke = caller.checked(store::CommandBody::LeaseRevoke(store::LeaseRevokeRequest { id }));
        let resp = node.propose(revoke).await?;
        let store::CommandResponse::LeaseRevoke(revoked) = resp else {
            return Err(Status::internal("lease revoke applied as another command"));
        };
        // The applier dropped the lease's timer on every member as the revoke applied.
        Ok(Response::new(pb::LeaseRevokeResponse { header: Some(node.header(revoked.revision)) }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.node.check_leader(&request)?;
        let node = self.node.clone();
        // The replies are computed as the connection asks for them, on the stream's own task
        // (which is on the connection's CPU lane, `node/lanes.rs`): one keep-alive at a time,
        // in order, and the next request is read only once its predecessor's reply has been
        // taken, so a client that stops reading holds at most one reply here and its unread
        // requests stay in HTTP/2's flow-control window. No task or channel per stream: a
        // client that opens a stream per keep-alive (clientv3's `KeepAliveOnce`, etcd's
        // `benchmark lease-keepalive`) pays for the stream alone. A broken request stream ends
        // the replies, as a client's cancel does.
        let replies = request.into_inner().map_while(Result::ok).then(move |req| {
            let node = node.clone();
            async move { keep_alive_once(&node, req.id).await }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let node = &self.node;
        let req = request.into_inner();
        // The leader's lessor first, as etcd asks it (forwarded from a follower): a member
        // that knows no leader waits for one and answers etcd's `no leader` at the deadline.
        let left = node.lease_on_leader(req.id, false).await?;
        node.read_barrier().await?;
        let group = node.group();
        let Some(lease) = node.store.lease(group, req.id).map_err(|e| store_status(&e))? else {
            // etcd answers an unknown lease with TTL -1 rather than an error.
            return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: Some(node.current_header()),
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            }));
        };
        let keys = if req.keys {
            node.read(Cost::Scan, move |store, group| store.lease_keys(group, req.id)).await?
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: Some(node.current_header()),
            id: req.id,
            ttl: match left {
                -1 => lease.ttl,
                left => left,
            },
            granted_ttl: lease.ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let node = &self.node;
        // This member's applied leases, without a read barrier: etcd lists its own lessor's
        // (so a member that knows no leader still answers), soonest expiry first.
        let mut ids: Vec<i64> =
            node.read(Cost::Scan, |store, group| store.leases(group)).await?.into_iter().map(|l| l.id).collect();
        node.lessor.sort_by_expiry(&mut ids);
        let leases = ids.into_iter().map(|id| pb::LeaseStatus { id }).collect();
        Ok(Response::new(pb::LeaseLeasesResponse { header: Some(node.current_header()), leases }))
    }
}

/// One keep-alive: renews the lease on the leader (forwarded there from a follower); an
/// unknown lease answers TTL 0, as etcd.
async fn keep_alive_once(node: &Node, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
    let ttl = node.lease_on_leader(id, true).await?;
    Ok(pb::LeaseKeepAliveResponse { header: Some(node.current_header()), id, ttl })
}
