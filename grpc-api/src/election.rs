//! etcd's `v3electionpb.Election` service: leader election served by the member, for clients
//! that campaign with one call instead of the client-side recipe (the Rust `etcd-client`
//! crate's `campaign`, `proclaim`, `leader`, `observe` and `resign`; `etcdctl elect` uses the
//! recipe itself, over the same keys).
//!
//! It is etcd's election recipe (`concurrency.Election`) run on the caller's behalf, each
//! step a call with the caller's identity (`recipe`):
//!
//! - **Campaign** puts the contender's key `<name>/<lease in hex>` with its value and lease if
//!   the key is absent; a lease already campaigning keeps its key and place and, if its value
//!   differs, proclaims the new one. It then waits until every key under `<name>/` created
//!   before its own is deleted, and answers the leader key: name, key, create revision and
//!   lease. The header is that of the first txn, as etcd's. A campaign whose call ends before
//!   it leads deletes its key (guarded by its create revision), as etcd's does when its
//!   context ends, and here also when the wait fails otherwise, so that no contender leads
//!   without a caller that knows it.
//! - **Proclaim** puts a new value on the leader key if the key still has the create revision
//!   it was elected with; otherwise `election: not leader`.
//! - **Resign** deletes the leader key under the same condition; not leading is no error.
//! - **Leader** reads the oldest key under the prefix; none is `election: no leader`.
//! - **Observe** streams the leader's key-value: the current one (or, with none, the first put
//!   under the prefix), then every put on it until it is deleted, then the next leader. The
//!   stream ends, as etcd's does, if a read fails or compaction cancels its watch.
//!
//! As in etcd, a leader key of lease 0 in Proclaim or Resign, like a campaign with lease 0,
//! gets a new [`recipe::SESSION_TTL_SECONDS`] lease that nobody keeps alive (etcd's server
//! opens a session for every such call). Errors of the service itself are etcd's plain Go
//! errors, which gRPC sends as `Unknown`.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::kv::kv_to_pb;
use crate::lease::LeaseService;
use crate::node::Node;
use crate::pb::etcdserverpb as pb;
use crate::pb::v3electionpb as epb;
use crate::pb::v3electionpb::election_server::Election;
use crate::recipe::{self, on_behalf_of, range_kvs, range_op};

/// etcd's errors (`concurrency.ErrElectionNotLeader`, `ErrElectionNoLeader`, and the server's
/// `ErrMissingLeaderKey`).
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

/// Observe responses produced ahead of the client's reading.
const OBSERVE_AHEAD: usize = 4;

type ObserveStream = Pin<Box<dyn Stream<Item = Result<epb::LeaderResponse, Status>> + Send>>;

/// The Election service of one group (the connection's tenant).
pub struct ElectionService {
    pub node: Arc<Node>,
    /// The member's lease service, for the lease of a campaign asked with none.
    pub leases: Arc<LeaseService>,
}

/// Puts `value` on `key` with `lease` if `key` was created at `created`; the txn's answer.
async fn proclaim(
    node: &Node,
    identity: &Request<()>,
    key: &[u8],
    created: i64,
    value: Bytes,
    lease: i64,
) -> Result<pb::TxnResponse, Status> {
    let txn = pb::TxnRequest {
        compare: vec![recipe::created_at(key, created)],
        success: vec![recipe::put_op(key, value, lease)],
        failure: Vec::new(),
    };
    crate::kv::txn_as(node, identity, txn).await
}

/// The oldest key under `prefix`, and the read's header.
async fn first_created(
    node: &Node,
    identity: &Request<()>,
    prefix: &[u8],
) -> Result<(pb::ResponseHeader, Option<crate::pb::mvccpb::KeyValue>), Status> {
    let resp = recipe::run(node, identity, vec![range_op(recipe::one_by_create(prefix, false, 0))]).await?;
    let kv = range_kvs(&resp, 0)?.first().cloned();
    Ok((resp.header.unwrap_or_default(), kv))
}

fn leader_key(leader: Option<epb::LeaderKey>) -> Result<epb::LeaderKey, Status> {
    leader.ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))
}

impl ElectionService {
    async fn run_campaign(
        &self,
        request: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let node = &self.node;
        let identity = on_behalf_of(&request, ());
        let req = request.into_inner();
        let lease = recipe::session_lease(&self.leases, &identity, req.lease).await?;
        let prefix = recipe::key_prefix(&req.name);
        let key = recipe::contender_key(&prefix, lease);

        let txn = pb::TxnRequest {
            compare: vec![recipe::created_at(&key, 0)],
            success: vec![recipe::put_op(&key, req.value.clone(), lease)],
            failure: vec![range_op(recipe::get(&key))],
        };
        let resp = crate::kv::txn_as(node, &identity, txn).await?;
        let header = resp.header.unwrap_or_default();
        let created = if resp.succeeded {
            header.revision
        } else {
            let kv =
                range_kvs(&resp, 0)?.first().ok_or_else(|| Status::internal("a failed create compare read no key"))?;
            if kv.value != req.value {
                let proclaimed = proclaim(node, &identity, &key, kv.create_revision, req.value.clone(), lease).await;
                match proclaimed {
                    Ok(r) if r.succeeded => {}
                    // The key changed hands between the two txns: give up the place, as etcd does.
                    other => {
                        // etcd ignores the resign's own error and answers the proclaim's.
                        let _ = recipe::delete_key(node, &identity, &key, Some(kv.create_revision)).await;
                        other?;
                        return Err(Status::unknown(NOT_LEADER));
                    }
                }
            }
            kv.create_revision
        };

        // From here until it leads, an end of the call deletes the key.
        let abandon = recipe::Abandon::arm(node, &identity, &key, Some(created));
        recipe::wait_deletes(node, &identity, &prefix, created - 1).await?;
        abandon.disarm();
        Ok(Response::new(epb::CampaignResponse {
            header: Some(header),
            leader: Some(epb::LeaderKey { name: req.name, key: Bytes::from(key), rev: created, lease }),
        }))
    }

    async fn run_proclaim(
        &self,
        request: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let identity = on_behalf_of(&request, ());
        let req = request.into_inner();
        let leader = leader_key(req.leader)?;
        let lease = recipe::session_lease(&self.leases, &identity, leader.lease).await?;
        let resp = proclaim(&self.node, &identity, &leader.key, leader.rev, req.value, lease).await?;
        if !resp.succeeded {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(Response::new(epb::ProclaimResponse { header: resp.header }))
    }

    async fn run_leader(&self, request: Request<epb::LeaderRequest>) -> Result<Response<epb::LeaderResponse>, Status> {
        let identity = on_behalf_of(&request, ());
        let prefix = recipe::key_prefix(&request.get_ref().name);
        match first_created(&self.node, &identity, &prefix).await? {
            (header, Some(kv)) => Ok(Response::new(epb::LeaderResponse { header: Some(header), kv: Some(kv) })),
            (_, None) => Err(Status::unknown(NO_LEADER)),
        }
    }

    async fn run_resign(&self, request: Request<epb::ResignRequest>) -> Result<Response<epb::ResignResponse>, Status> {
        let identity = on_behalf_of(&request, ());
        let req = request.into_inner();
        let leader = leader_key(req.leader)?;
        // etcd opens a session with the leader key's lease first, granting one for lease 0.
        recipe::session_lease(&self.leases, &identity, leader.lease).await?;
        let header = recipe::delete_key(&self.node, &identity, &leader.key, Some(leader.rev)).await?;
        Ok(Response::new(epb::ResignResponse { header: Some(header) }))
    }
}

/// Errors of the recipe's steps reach the client as etcd's do (`recipe::as_answered`).
#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        self.run_campaign(request).await.map_err(recipe::as_answered)
    }

    async fn proclaim(
        &self,
        request: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        self.run_proclaim(request).await.map_err(recipe::as_answered)
    }

    async fn leader(&self, request: Request<epb::LeaderRequest>) -> Result<Response<epb::LeaderResponse>, Status> {
        self.run_leader(request).await.map_err(recipe::as_answered)
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, request: Request<epb::LeaderRequest>) -> Result<Response<ObserveStream>, Status> {
        let identity = on_behalf_of(&request, ());
        let prefix = recipe::key_prefix(&request.get_ref().name);
        let (tx, rx) = mpsc::channel(OBSERVE_AHEAD);
        let node = self.node.clone();
        tokio::spawn(async move {
            let ended = tx.clone();
            // The task ends with the stream: when the client goes, so does its watch.
            tokio::select! {
                () = ended.closed() => {}
                outcome = observe(&node, &identity, &prefix, &tx) => {
                    if let Err(status) = outcome {
                        // etcd ends the stream without an error when its observer stops; a
                        // refusal of the service itself (the watcher limit) is sent.
                        if status.code() == tonic::Code::ResourceExhausted {
                            let _ = tx.send(Err(recipe::as_answered(status))).await;
                        } else {
                            tracing::debug!(error = %status.message(), "election observer stopped");
                        }
                    }
                }
            }
        });
        // As etcd (gRPC-Go sends the headers with the first message), the call is answered
        // only once there is a leader to report: an error before it is the call's status, an
        // observer that stopped first ends the call with nothing. A client that goes away
        // meanwhile drops this future and with it `rx`, which ends the task.
        let mut rx = rx;
        let first = match rx.recv().await {
            Some(Ok(first)) => first,
            Some(Err(status)) => return Err(status),
            None => return Ok(Response::new(Box::pin(tokio_stream::empty()))),
        };
        let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::chain(tokio_stream::once(Ok(first)), rest))))
    }

    async fn resign(&self, request: Request<epb::ResignRequest>) -> Result<Response<epb::ResignResponse>, Status> {
        self.run_resign(request).await.map_err(recipe::as_answered)
    }
}

/// etcd's `Election.observe`: sends each leader's key-value to `tx` until a read or a watch
/// ends it, or the stream closes (`Ok`).
async fn observe(
    node: &Node,
    identity: &Request<()>,
    prefix: &[u8],
    tx: &mpsc::Sender<Result<epb::LeaderResponse, Status>>,
) -> Result<(), Status> {
    let send = |header: pb::ResponseHeader, kv: crate::pb::mvccpb::KeyValue| {
        tx.send(Ok(epb::LeaderResponse { header: Some(header), kv: Some(kv) }))
    };
    loop {
        let (header, leader) = first_created(node, identity, prefix).await?;
        let (header, kv) = match leader {
            Some(kv) => (header, kv),
            None => {
                // No leader: the first put under the prefix, from the read's revision.
                let end = crate::kv::prefix_end(prefix);
                let stream = recipe::watch_from(node, prefix, &end, header.revision, false)?;
                loop {
                    let Some(event) = stream.recv().await else { return Ok(()) };
                    if event.canceled {
                        return Ok(());
                    }
                    let put = event.events.iter().find(|e| e.kind == store::EventKind::Put);
                    if let Some(e) = put {
                        // The put's own revision, as etcd sets it when a response holds several.
                        let kv = kv_to_pb(e.kv.clone());
                        break (node.header(kv.mod_revision), kv);
                    }
                }
            }
        };
        let from = header.revision + 1;
        if send(header, kv.clone()).await.is_err() {
            return Ok(());
        }
        // Every new value of this leader, until its key is deleted.
        let stream = recipe::watch_from(node, &kv.key, &[], from, false)?;
        'leader: loop {
            let Some(event) = stream.recv().await else { return Ok(()) };
            if event.canceled {
                return Ok(());
            }
            for e in &event.events {
                if e.kind == store::EventKind::Delete {
                    break 'leader;
                }
                if send(node.header(event.revision), kv_to_pb(e.kv.clone())).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
