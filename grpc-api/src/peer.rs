//! Peer transport: Raft messages between members over gRPC (`proto/peer.proto`).
//!
//! ```text
//!  driver thread ── Transport::send ──► per-peer bounded queue ──► peer task ──► Peer.Raft
//!                   (try_send; full = drop,     (PEER_QUEUE_MSGS_MAX)   │ batches      stream
//!                    Raft retries)                                     │ ≤ PEER_BATCH_*
//!                                                                      └─ reconnect with backoff,
//!                                                                         Hello first, then stream
//!  Peer.Raft server ── parse eraftpb::Message ──► DriverHandle::step(group, msg)
//! ```
//!
//! Each peer has one task that keeps one client stream open. A new connection starts with a
//! `Hello`: both sides check they belong to the same cluster and learn each other's client
//! URLs, which `MemberList` reports (peer URLs come from the initial cluster, client URLs are
//! only known by their owner until it says hello). A broken stream is reported to the driver
//! (`report_unreachable`), queued messages are dropped while the peer is unreachable, and
//! the task reconnects with exponential backoff.
//!
//! Raft messages travel as opaque bytes encoded by rust-protobuf (raft-rs 0.7's own codec);
//! only peer input is ever decoded with it.
//!
//! CAVEATS:
//! - Plain HTTP/2 only (no peer TLS), and no authentication beyond the cluster id check.
//! - Snapshots are not transferred (raft-log has no state-machine snapshots yet): a member
//!   that falls behind the purged log cannot catch up.
//! - The peer set is fixed at start-up (membership changes are not served yet).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use protobuf::Message as _;
use raft_log::raft::eraftpb::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::node::Node;

/// Generated types and stubs of `proto/peer.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic, rust_2018_idioms)]
pub mod pb {
    tonic::include_proto!("plinthpeer");
}

/// Raft messages queued for one peer; past it messages are dropped (Raft retries). With
/// raft-log's 1 MiB append limit this bounds a peer's queue to about 1 GiB in the worst
/// case, and to a few MiB in practice (most messages are heartbeats and small appends).
pub const PEER_QUEUE_MSGS_MAX: usize = 1024;
/// Most messages in one `RaftBatch`.
pub const PEER_BATCH_MSGS_MAX: usize = 256;
/// A batch stops growing once its messages reach this many bytes (one larger message still
/// travels alone).
pub const PEER_BATCH_BYTES_MAX: usize = 4 << 20;
/// Largest `RaftBatch` the server decodes: a full batch plus one maximal message (an entry
/// may be as large as `--max-request-bytes` plus gRPC overhead).
pub const PEER_MESSAGE_BYTES_MAX: usize = 32 << 20;
/// Batches buffered between a peer task and its gRPC stream.
const STREAM_BATCHES_MAX: usize = 16;
/// First and longest wait between reconnect attempts.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Connect and `Hello` time limits.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings detect a peer that vanished without closing its connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Metadata key carrying the sender's cluster id on the Raft stream.
pub const CLUSTER_ID_METADATA: &str = "plinth-cluster-id";

type Queued = (raft_log::GroupId, Message);

/// The `raft_log::Transport` of a replicated member: one bounded queue and one task per peer.
pub struct PeerTransport {
    queues: HashMap<u64, mpsc::Sender<Queued>>,
    /// Receivers waiting for `start`, which hands each to its peer task.
    pending: Mutex<Vec<(u64, mpsc::Receiver<Queued>)>>,
}

impl PeerTransport {
    /// A transport to every member in `peers` (this member excluded by the caller). Messages
    /// sent before `start` wait in the queues.
    pub fn new(peers: &[u64]) -> Arc<PeerTransport> {
        let mut queues = HashMap::new();
        let mut pending = Vec::new();
        for &id in peers {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MSGS_MAX);
            queues.insert(id, tx);
            pending.push((id, rx));
        }
        Arc::new(PeerTransport { queues, pending: Mutex::new(pending) })
    }

    /// Spawns the peer tasks on the current tokio runtime.
    pub fn start(&self, node: Arc<Node>) {
        for (id, rx) in self.pending.lock().drain(..) {
            tokio::spawn(run_peer(node.clone(), id, rx));
        }
    }
}

impl raft_log::Transport for PeerTransport {
    fn send(&self, group: raft_log::GroupId, msgs: Vec<Message>) {
        for m in msgs {
            match self.queues.get(&m.to) {
                Some(q) => {
                    if let Err(e) = q.try_send((group, m)) {
                        // Dropping is safe: Raft resends what was not acknowledged.
                        debug!(to = format_args!("{:x}", e.into_inner().1.to), "peer queue full; message dropped");
                    }
                }
                None => debug!(to = format_args!("{:x}", m.to), "message to an unknown member dropped"),
            }
        }
    }
}

/// Why a connection ended.
enum Ended {
    /// The stream broke; reconnect.
    Broken,
    /// The transport is gone (the member is stopping).
    Closed,
}

/// Keeps one stream to `peer` open for as long as the member runs.
async fn run_peer(node: Arc<Node>, peer: u64, mut queue: mpsc::Receiver<Queued>) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut was_connected = true;
    loop {
        match connect(&node, peer).await {
            Ok(mut client) => {
                info!(peer = format_args!("{peer:x}"), "connected to peer");
                backoff = RECONNECT_BACKOFF_MIN;
                was_connected = true;
                if let Ended::Closed = stream(&node, &mut client, &mut queue).await {
                    return;
                }
                warn!(peer = format_args!("{peer:x}"), "lost the stream to peer; reconnecting");
            }
            Err(e) => {
                if was_connected {
                    warn!(peer = format_args!("{peer:x}"), error = %e, "cannot reach peer; retrying with backoff");
                }
                was_connected = false;
            }
        }
        // The leader stops streaming appends to an unreachable follower and probes instead.
        let _ = node.raft.report_unreachable(raft_log::NodeId(peer));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
        // Messages queued while the peer was unreachable are stale; Raft sends fresh ones.
        loop {
            match queue.try_recv() {
                Ok(_) => {}
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
    }
}

type Client = pb::peer_client::PeerClient<tonic::transport::Channel>;

/// Connects to one of `peer`'s URLs and says hello.
async fn connect(node: &Node, peer: u64) -> anyhow::Result<Client> {
    let urls = node.identity.read().members.iter().find(|m| m.id == peer).map(|m| m.peer_urls.clone());
    let urls = urls.ok_or_else(|| anyhow::anyhow!("member {peer:x} is not in the member list"))?;
    let mut last = anyhow::anyhow!("member {peer:x} has no peer URLs");
    for url in urls {
        let endpoint = match tonic::transport::Endpoint::from_shared(url.clone()) {
            Ok(e) => e,
            Err(e) => {
                last = anyhow::anyhow!("peer URL {url}: {e}");
                continue;
            }
        };
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        match endpoint.connect().await {
            Ok(channel) => {
                let mut client = pb::peer_client::PeerClient::new(channel)
                    .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
                hello(node, peer, &mut client).await?;
                return Ok(client);
            }
            Err(e) => last = anyhow::anyhow!("connect to {url}: {e}"),
        }
    }
    Err(last)
}

/// Exchanges identities with `peer`: same cluster, the expected member, its client URLs.
async fn hello(node: &Node, peer: u64, client: &mut Client) -> anyhow::Result<()> {
    let request = {
        let identity = node.identity.read();
        let me = identity.members.iter().find(|m| m.id == identity.member_id);
        pb::HelloRequest {
            cluster_id: identity.cluster_id,
            member_id: identity.member_id,
            client_urls: me.map(|m| m.client_urls.clone()).unwrap_or_default(),
        }
    };
    let cluster_id = request.cluster_id;
    let response = tokio::time::timeout(HELLO_TIMEOUT, client.hello(request))
        .await
        .map_err(|_| anyhow::anyhow!("hello timed out"))?
        .map_err(|s| anyhow::anyhow!("hello refused: {}", s.message()))?
        .into_inner();
    anyhow::ensure!(
        response.cluster_id == cluster_id && response.member_id == peer,
        "peer is member {:x} of cluster {:x}, expected member {peer:x} of cluster {cluster_id:x}",
        response.member_id,
        response.cluster_id
    );
    record_client_urls(node, peer, response.client_urls);
    Ok(())
}

/// Remembers a member's client URLs (persisted in member.json when they change).
fn record_client_urls(node: &Node, member: u64, client_urls: Vec<String>) {
    let mut identity = node.identity.write();
    let Some(m) = identity.members.iter_mut().find(|m| m.id == member) else { return };
    if m.client_urls == client_urls {
        return;
    }
    m.client_urls = client_urls;
    if let Err(e) = identity.save(&node.data_dir) {
        warn!(error = %e, "could not save the member list");
    }
}

/// Streams queued messages to the peer in batches until the stream breaks.
async fn stream(node: &Node, client: &mut Client, queue: &mut mpsc::Receiver<Queued>) -> Ended {
    let (tx, rx) = mpsc::channel::<pb::RaftBatch>(STREAM_BATCHES_MAX);
    let mut request = Request::new(ReceiverStream::new(rx));
    let cluster_id = node.identity.read().cluster_id;
    request
        .metadata_mut()
        .insert(CLUSTER_ID_METADATA, cluster_id.to_string().parse().expect("digits are valid metadata"));
    let mut call = Box::pin(client.raft(request));
    loop {
        tokio::select! {
            outcome = &mut call => {
                if let Err(status) = outcome {
                    debug!(error = %status.message(), "peer stream ended");
                }
                return Ended::Broken;
            }
            first = queue.recv() => {
                let Some(first) = first else { return Ended::Closed };
                let mut msgs = Vec::with_capacity(PEER_BATCH_MSGS_MAX.min(queue.len() + 1));
                let mut bytes = 0;
                let mut next = Some(first);
                while let Some((group, m)) = next.take() {
                    match m.write_to_bytes() {
                        Ok(encoded) => {
                            bytes += encoded.len();
                            msgs.push(pb::RaftMessage { group: group.0, message: Bytes::from(encoded) });
                        }
                        Err(e) => warn!(error = %e, "cannot encode a raft message; dropped"),
                    }
                    if msgs.len() < PEER_BATCH_MSGS_MAX && bytes < PEER_BATCH_BYTES_MAX {
                        next = queue.try_recv().ok();
                    }
                }
                if tx.send(pb::RaftBatch { msgs }).await.is_err() {
                    return Ended::Broken;
                }
            }
        }
    }
}

/// The server side of the peer protocol.
pub struct PeerService {
    pub node: Arc<Node>,
}

impl PeerService {
    fn check_cluster<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let ours = self.node.identity.read().cluster_id;
        let theirs = request.metadata().get(CLUSTER_ID_METADATA).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if theirs != Some(ours) {
            return Err(Status::failed_precondition(format!(
                "cluster id mismatch: this member belongs to cluster {ours:x}"
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn raft(&self, request: Request<Streaming<pb::RaftBatch>>) -> Result<Response<pb::Empty>, Status> {
        self.check_cluster(&request)?;
        let me = self.node.member_id();
        let mut batches = request.into_inner();
        while let Some(batch) = batches.message().await? {
            for raw in batch.msgs {
                let msg = match Message::parse_from_bytes(&raw.message) {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(error = %e, "undecodable raft message from a peer; dropped");
                        continue;
                    }
                };
                if msg.to != me {
                    warn!(to = format_args!("{:x}", msg.to), "raft message for another member; dropped");
                    continue;
                }
                // A full driver inbox drops the message; Raft retries.
                if let Err(e) = self.node.raft.step(raft_log::GroupId(raw.group), msg) {
                    debug!(error = %e, "raft message not stepped");
                }
            }
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn hello(&self, request: Request<pb::HelloRequest>) -> Result<Response<pb::HelloResponse>, Status> {
        let req = request.into_inner();
        let (cluster_id, member_id, known, client_urls) = {
            let identity = self.node.identity.read();
            let me = identity.members.iter().find(|m| m.id == identity.member_id);
            (
                identity.cluster_id,
                identity.member_id,
                identity.members.iter().any(|m| m.id == req.member_id),
                me.map(|m| m.client_urls.clone()).unwrap_or_default(),
            )
        };
        if req.cluster_id != cluster_id {
            return Err(Status::failed_precondition(format!(
                "cluster id mismatch: this member belongs to cluster {cluster_id:x}, not {:x}",
                req.cluster_id
            )));
        }
        if !known {
            return Err(Status::failed_precondition(format!("member {:x} is not in the member list", req.member_id)));
        }
        record_client_urls(&self.node, req.member_id, req.client_urls);
        Ok(Response::new(pb::HelloResponse { cluster_id, member_id, client_urls }))
    }
}
