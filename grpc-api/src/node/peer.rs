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
//! Snapshots travel on their own stream (`Peer.Snapshot`): when the leader's Raft asks for a
//! snapshot, raft-log calls [`SnapshotSource::pin`] on the driver thread, which pins a RocksDB
//! snapshot of the group at its applied index. The `MsgSnapshot` message then goes to
//! `Transport::send`, which hands it to a snapshot task instead of the message queue: the task
//! streams the message, the member list and the pinned store chunks to the follower, and
//! reports the outcome to Raft (`report_snapshot`). The follower installs the store data
//! first, then steps the message into its driver, so Raft only learns of the snapshot once
//! the state machine holds it durably; a snapshot the store has already applied past is
//! refused by the store and only stepped.
//!
//! The peer set follows membership: the applier adds and removes peers as conf changes apply.
//!
//! Metrics (etcd's rafthttp series, one set per peer, `metrics::PeerMetrics`): bytes of Raft
//! messages and snapshot chunks sent to and received from each peer; each message dropped
//! on its way out (queue full, stream broken or down) and each failed snapshot transfer as a
//! send failure; whether the stream to the peer is up; and the round trip of a probe (an
//! empty `Peer.Probe` call) sent over the peer's connection every [`PROBE_INTERVAL`], from
//! the call to its answer. The probe is what etcd's prober does (it times an HTTP request
//! to each peer every few seconds); Raft's heartbeats would time only the leader's links,
//! and their answers wait for the follower's Raft pass and WAL write. It shares the
//! connection with the Raft stream, so a round trip includes the wait behind large appends
//! in flight, as the replication traffic itself sees it.
//!
//! Binding: every Raft and snapshot stream carries the sender's cluster id and member id
//! (the id its `Hello` named) in its metadata, and the receiver binds the stream to that
//! member: it must be another current member (checked when the stream opens and again at
//! every batch, so a member removed meanwhile is cut off), and every Raft message on the
//! stream, the snapshot message included, must have that member as its `from`. A stream
//! that breaks either rule is closed with `PermissionDenied` before anything it carries is
//! stepped or installed: no member can speak for another.
//!
//! With `https://` peer URLs every connection is TLS (`peer_tls.rs`), and with
//! `--peer-client-cert-auth` the member a request is bound to must also match the verified
//! client certificate of its connection (`PeerService::check_certificate`).
//!
//! CAVEATS:
//! - Without peer client certificates (plain HTTP/2, or `--peer-auto-tls`) the member id a
//!   stream carries is only asserted by its sender, so the binding catches confused peers,
//!   not an attacker who can reach the port and knows the cluster id (the member warns at
//!   start).
//! - The follower spools a snapshot to disk as it arrives and installs it as SST files
//!   (`store`'s snapshot_install.rs), so a snapshot needs up to the group's size in free disk
//!   twice over (the spool and the files) while it installs.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use protobuf::Message as _;
use raft_log::raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::node::membership::{Member, REMOVED_MESSAGE};
use crate::node::metrics::{Metrics, PeerMetrics};
use crate::node::peer_tls::PeerTls;
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
/// Metadata key carrying the sender's cluster id on the Raft and snapshot streams.
pub const CLUSTER_ID_METADATA: &str = "plinth-cluster-id";
/// Metadata key carrying the sender's member id on the Raft and snapshot streams: the
/// stream is bound to that member (the one its `Hello` named), and every message on it must
/// come from that member.
pub const MEMBER_ID_METADATA: &str = "plinth-member-id";
/// Store chunks buffered between the reader and the snapshot stream.
const SNAPSHOT_CHUNKS_BUFFERED: usize = 2;
/// Longest a snapshot transfer may take before the leader gives up and retries.
const SNAPSHOT_SEND_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest snapshot a follower accepts, in bytes of chunks. It is spooled to disk and
/// installed in bounded batches, so this bounds disk, not memory.
pub const SNAPSHOT_BYTES_MAX: usize = 256 << 30;
/// Chunks of an incoming snapshot queued for the task that spools them.
const SNAPSHOT_CHUNKS_QUEUED: usize = 4;
/// How often a member probes each peer it is connected to, timing the round trip (etcd's
/// prober asks every 4 s or so).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// A probe unanswered this long is given up, unobserved: only answers are timed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

type Queued = (raft_log::GroupId, Message);

/// A pinned store snapshot waiting for its transfer.
struct Pinned {
    token: u64,
    reader: store::SnapshotReader,
}

/// One peer's queue and its metrics.
struct PeerQueue {
    tx: mpsc::Sender<Queued>,
    metrics: Arc<PeerMetrics>,
}

/// A peer added before `start`: what its task will take.
struct PendingPeer {
    id: u64,
    queue: mpsc::Receiver<Queued>,
    metrics: Arc<PeerMetrics>,
}

/// The `raft_log::Transport` of a member: one bounded queue and one task per peer, snapshot
/// transfers beside them, and the member's side of `SnapshotSource`.
pub struct PeerTransport {
    me: u64,
    store: store::Store,
    metrics: Arc<Metrics>,
    queues: RwLock<HashMap<u64, PeerQueue>>,
    /// Receivers of peers added before `start`, which hands each to its peer task.
    pending: Mutex<Vec<PendingPeer>>,
    /// Set by `start`: the member and the runtime its tasks run on.
    node: OnceLock<Weak<Node>>,
    runtime: OnceLock<tokio::runtime::Handle>,
    /// When each peer's stream was last seen connected (absent: not connected).
    connected: Mutex<HashMap<u64, Instant>>,
    /// One pinned snapshot per (group, follower) at most; a newer pin replaces it.
    pinned: Mutex<HashMap<(u64, u64), Pinned>>,
    next_token: std::sync::atomic::AtomicU64,
    /// Lazily connected clients, for requests forwarded to the leader.
    clients: tokio::sync::Mutex<HashMap<u64, Client>>,
    /// Peer TLS (`https://` peer URLs), set once before `start`; unset means plain HTTP/2.
    tls: OnceLock<Arc<PeerTls>>,
}

impl PeerTransport {
    /// A transport to every member in `peers` (this member, `me`, excluded by the caller),
    /// counting its traffic in `metrics`. Messages sent before `start` wait in the queues.
    pub fn new(me: u64, store: store::Store, peers: &[u64], metrics: Arc<Metrics>) -> Arc<PeerTransport> {
        let t = Arc::new(PeerTransport {
            me,
            store,
            metrics,
            queues: RwLock::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            node: OnceLock::new(),
            runtime: OnceLock::new(),
            connected: Mutex::new(HashMap::new()),
            pinned: Mutex::new(HashMap::new()),
            next_token: std::sync::atomic::AtomicU64::new(1),
            clients: tokio::sync::Mutex::new(HashMap::new()),
            tls: OnceLock::new(),
        });
        t.set_peers(peers);
        t
    }

    /// Uses peer TLS for every connection from now on; called before `start` (a second
    /// call changes nothing).
    pub fn set_tls(&self, tls: Arc<PeerTls>) {
        let _ = self.tls.set(tls);
    }

    /// This member's peer TLS, if its peer URLs are `https://`.
    pub fn tls(&self) -> Option<&Arc<PeerTls>> {
        self.tls.get()
    }

    /// Spawns the peer tasks on the current tokio runtime.
    pub fn start(&self, node: &Arc<Node>) {
        let _ = self.node.set(Arc::downgrade(node));
        let _ = self.runtime.set(tokio::runtime::Handle::current());
        for PendingPeer { id, queue, metrics } in self.pending.lock().drain(..) {
            tokio::spawn(run_peer(node.clone(), id, queue, metrics));
        }
    }

    /// Keeps one peer task for each member in `peers` (this member aside): starts the
    /// missing ones and stops those no longer listed.
    pub fn set_peers(&self, peers: &[u64]) {
        let gone: Vec<u64> = self.queues.read().keys().filter(|id| !peers.contains(id)).copied().collect();
        for id in gone {
            self.remove_peer(id);
        }
        for &id in peers {
            self.add_peer(id);
        }
    }

    /// Starts talking to a new member (idempotent).
    fn add_peer(&self, id: u64) {
        if id == self.me || self.queues.read().contains_key(&id) {
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE_MSGS_MAX);
        let metrics = Arc::new(self.metrics.peer(id));
        self.queues.write().insert(id, PeerQueue { tx, metrics: metrics.clone() });
        match (self.node.get().and_then(Weak::upgrade), self.runtime.get()) {
            (Some(node), Some(rt)) => {
                rt.spawn(run_peer(node, id, rx, metrics));
            }
            _ => self.pending.lock().push(PendingPeer { id, queue: rx, metrics }),
        }
    }

    /// Stops talking to a removed member: its task ends when its queue closes, and its
    /// series leave the metrics.
    fn remove_peer(&self, id: u64) {
        self.queues.write().remove(&id);
        self.connected.lock().remove(&id);
        self.pinned.lock().retain(|(_, to), _| *to != id);
        self.metrics.forget_peer(id);
    }

    /// The metrics of peer `id`, while it is one.
    fn peer_metrics(&self, id: u64) -> Option<Arc<PeerMetrics>> {
        self.queues.read().get(&id).map(|q| q.metrics.clone())
    }

    /// Members whose stream is connected now, this member included (etcd's "started").
    pub fn connected_members(&self) -> Vec<u64> {
        self.connected_members_since(Some(Instant::now()))
    }

    /// Members whose stream has been up since `before` or earlier, this member included
    /// (etcd's `numConnectedSince`, which its strict reconfiguration checks ask with
    /// `now - HealthInterval`).
    pub fn connected_members_since(&self, before: Option<Instant>) -> Vec<u64> {
        let mut v: Vec<u64> = match before {
            Some(before) => {
                self.connected.lock().iter().filter(|(_, since)| **since <= before).map(|(id, _)| *id).collect()
            }
            None => Vec::new(),
        };
        v.push(self.me);
        v
    }

    /// Since when each connected peer's stream has been up.
    pub fn connected_since(&self) -> HashMap<u64, Instant> {
        self.connected.lock().clone()
    }

    fn set_connected(&self, peer: u64, up: bool) {
        let mut c = self.connected.lock();
        if up {
            c.entry(peer).or_insert_with(Instant::now);
        } else {
            c.remove(&peer);
        }
    }

    fn take_pinned(&self, group: u64, to: u64, token: u64) -> Option<store::SnapshotReader> {
        let mut pinned = self.pinned.lock();
        match pinned.get(&(group, to)) {
            Some(p) if p.token == token => pinned.remove(&(group, to)).map(|p| p.reader),
            _ => None,
        }
    }

    /// A client for `peer`, connected once and reused (requests forwarded to the leader).
    pub async fn client(&self, node: &Node, peer: u64) -> Result<Client, Status> {
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&peer) {
            return Ok(c.clone());
        }
        let c = connect(node, peer).await.map_err(|e| {
            debug!(peer = format_args!("{peer:x}"), error = %e, "cannot reach the leader");
            crate::error::EtcdError::Timeout.status()
        })?;
        clients.insert(peer, c.clone());
        Ok(c)
    }

    /// Forgets a forwarding client after a failed request, so the next one reconnects.
    pub async fn drop_client(&self, peer: u64) {
        self.clients.lock().await.remove(&peer);
    }

    fn send_snapshot(&self, group: raft_log::GroupId, msg: Message) {
        let (Some(node), Some(rt)) = (self.node.get().and_then(Weak::upgrade), self.runtime.get()) else {
            return;
        };
        let to = msg.to;
        let metrics = self.peer_metrics(to);
        rt.spawn(async move {
            let outcome =
                tokio::time::timeout(SNAPSHOT_SEND_TIMEOUT, stream_snapshot(&node, group, msg, metrics.clone())).await;
            let ok = match outcome {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    warn!(peer = format_args!("{to:x}"), error = %e, "snapshot transfer failed");
                    false
                }
                Err(_) => {
                    warn!(peer = format_args!("{to:x}"), "snapshot transfer timed out");
                    false
                }
            };
            if !ok {
                if let Some(metrics) = &metrics {
                    metrics.sent_failures.inc();
                }
            }
            if let Err(e) = node.raft.report_snapshot(group, raft_log::NodeId(to), ok) {
                debug!(error = %e, "snapshot outcome not reported; raft retries");
            }
        });
    }
}

impl raft_log::SnapshotSource for PeerTransport {
    fn pin(&self, group: raft_log::GroupId, to: raft_log::NodeId) -> raft_log::Result<(raft_log::LogIndex, Vec<u8>)> {
        let reader = self
            .store
            .snapshot(store::GroupId(group.0))
            .map_err(|e| raft_log::Error::Raft(format!("pinning a store snapshot: {e}")))?;
        let applied = reader.applied_index();
        let token = self.next_token.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pinned.lock().insert((group.0, to.0), Pinned { token, reader });
        Ok((raft_log::LogIndex(applied), token.to_le_bytes().to_vec()))
    }
}

impl raft_log::Transport for PeerTransport {
    fn send(&self, group: raft_log::GroupId, msgs: Vec<Message>) {
        let queues = self.queues.read();
        for m in msgs {
            if m.from != self.me {
                // raft-rs relays a proposal or a read-index request it was handed with the
                // original sender's `from` (a follower forwarding to the leader it knows now).
                // The receiver binds each stream to its member and closes a stream carrying
                // another member's message, so a relay would cost every message queued behind
                // it and a reconnect: it is dropped here instead, as a lost message (the client
                // or the driver's read retry asks again).
                debug!(from = format_args!("{:x}", m.from), "relayed raft message dropped");
                continue;
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(group, m);
                continue;
            }
            match queues.get(&m.to) {
                Some(q) => {
                    if let Err(e) = q.tx.try_send((group, m)) {
                        // Dropping is safe: Raft resends what was not acknowledged.
                        q.metrics.sent_failures.inc();
                        debug!(to = format_args!("{:x}", e.into_inner().1.to), "peer queue full; message dropped");
                    }
                }
                None => debug!(to = format_args!("{:x}", m.to), "message to an unknown member dropped"),
            }
        }
    }
}

/// The bytes a snapshot chunk carries (its message, member list and data), as the peer byte
/// counters count them on both ends.
fn chunk_bytes(chunk: &pb::SnapshotChunk) -> u64 {
    (chunk.message.len() + chunk.members.len() + chunk.data.len()) as u64
}

/// Streams the snapshot pinned for `msg` to its follower, counting the chunks' bytes in the
/// follower's `metrics`.
async fn stream_snapshot(
    node: &Arc<Node>,
    group: raft_log::GroupId,
    msg: Message,
    metrics: Option<Arc<PeerMetrics>>,
) -> anyhow::Result<()> {
    let to = msg.to;
    let token = <[u8; 8]>::try_from(&msg.get_snapshot().data[..]).map(u64::from_le_bytes).unwrap_or(0);
    let reader = node
        .membership
        .transport
        .take_pinned(group.0, to, token)
        .ok_or_else(|| anyhow::anyhow!("no pinned snapshot for member {to:x}"))?;
    info!(peer = format_args!("{to:x}"), index = msg.get_snapshot().get_metadata().index, "sending a snapshot");
    let mut client = connect(node, to).await?;
    let members = serde_json::to_vec(&node.membership.identity.read().members)?;
    let message = Bytes::from(msg.write_to_bytes()?);
    let (tx, rx) = mpsc::channel::<pb::SnapshotChunk>(SNAPSHOT_CHUNKS_BUFFERED);
    // RocksDB reads block: the chunks are produced on a blocking thread.
    let producer = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut first = Some((message, Bytes::from(members)));
        for chunk in reader {
            let data = Bytes::from(chunk?);
            let (message, members) = first.take().unwrap_or_default();
            let chunk = pb::SnapshotChunk { group: group.0, message, members, data };
            let bytes = chunk_bytes(&chunk);
            if tx.blocking_send(chunk).is_err() {
                anyhow::bail!("the snapshot stream closed");
            }
            if let Some(metrics) = &metrics {
                metrics.sent_bytes.inc_by(bytes);
            }
        }
        Ok(())
    });
    let sent = client.snapshot(bound_request(node, ReceiverStream::new(rx))).await;
    let produced = producer.await?;
    sent.map_err(|s| anyhow::anyhow!("follower refused the snapshot: {}", s.message()))?;
    produced
}

/// Why a connection ended.
enum Ended {
    /// The stream broke; reconnect.
    Broken,
    /// The transport is gone (the member is stopping).
    Closed,
}

/// Keeps one stream to `peer` open for as long as the member runs, and probes the peer
/// while it is connected; counts in `metrics`.
async fn run_peer(node: Arc<Node>, peer: u64, mut queue: mpsc::Receiver<Queued>, metrics: Arc<PeerMetrics>) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut was_connected = true;
    loop {
        match connect(&node, peer).await {
            Ok(mut client) => {
                info!(peer = format_args!("{peer:x}"), "connected to peer");
                backoff = RECONNECT_BACKOFF_MIN;
                was_connected = true;
                node.membership.transport.set_connected(peer, true);
                metrics.active.set(1);
                let prober = tokio::spawn(probe(client.clone(), metrics.clone()));
                let ended = stream(&node, &mut client, &mut queue, &metrics).await;
                prober.abort();
                metrics.active.set(0);
                node.membership.transport.set_connected(peer, false);
                if let Ended::Closed = ended {
                    return;
                }
                warn!(peer = format_args!("{peer:x}"), "lost the stream to peer; reconnecting");
            }
            Err(e) if e.to_string().contains(REMOVED_MESSAGE) => {
                // The others no longer know this member: it stops, as etcd's does.
                warn!(peer = format_args!("{peer:x}"), "{REMOVED_MESSAGE}");
                node.membership.mark_removed();
                return;
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
                Ok(_) => metrics.sent_failures.inc(),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
    }
}

/// A client of one peer's `Peer` service.
pub type Client = pb::peer_client::PeerClient<tonic::transport::Channel>;

/// Connects to one of `peer`'s URLs and says hello.
async fn connect(node: &Node, peer: u64) -> anyhow::Result<Client> {
    let urls = node.membership.identity.read().members.iter().find(|m| m.id == peer).map(|m| m.peer_urls.clone());
    let urls = urls.ok_or_else(|| anyhow::anyhow!("member {peer:x} is not in the member list"))?;
    let mut last = anyhow::anyhow!("member {peer:x} has no peer URLs");
    for url in urls {
        match open_channel(&url, node.membership.transport.tls()).await {
            Ok(channel) => {
                let mut client = pb::peer_client::PeerClient::new(channel)
                    .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
                hello(node, peer, &mut client).await?;
                return Ok(client);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Opens a channel to one peer URL: plain HTTP/2 for `http://`, TLS with this member's
/// peer certificate for `https://` (see `peer_tls.rs`). A member with peer TLS never talks
/// to a plain URL, and one without it cannot talk to an https one.
async fn open_channel(url: &str, tls: Option<&Arc<PeerTls>>) -> anyhow::Result<tonic::transport::Channel> {
    let https = url.starts_with("https://");
    let endpoint = match (https, tls) {
        (false, None) => tonic::transport::Endpoint::from_shared(url.to_string()),
        // TLS is the connector's: tonic is given the plain scheme so it does not look for
        // TLS of its own.
        (true, Some(_)) => tonic::transport::Endpoint::from_shared(format!("http://{}", &url["https://".len()..])),
        (true, None) => anyhow::bail!("peer URL {url} is https but this member has no peer TLS (--peer-cert-file)"),
        (false, Some(_)) => anyhow::bail!("peer URL {url} is plain http but this member uses peer TLS"),
    }
    .map_err(|e| anyhow::anyhow!("peer URL {url}: {e}"))?
    .connect_timeout(CONNECT_TIMEOUT)
    .tcp_nodelay(true)
    .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
    .keep_alive_timeout(KEEPALIVE_TIMEOUT)
    .keep_alive_while_idle(true);
    let connected = match tls {
        Some(tls) if https => endpoint.connect_with_connector(tls.connector(url)?).await,
        _ => endpoint.connect().await,
    };
    connected.map_err(|e| anyhow::anyhow!("connect to {url}: {e}"))
}

/// Exchanges identities with `peer`: same cluster, the expected member, its client URLs.
async fn hello(node: &Node, peer: u64, client: &mut Client) -> anyhow::Result<()> {
    let request = {
        let identity = node.membership.identity.read();
        let me = identity.members.iter().find(|m| m.id == identity.member_id);
        pb::HelloRequest {
            cluster_id: identity.cluster_id,
            member_id: identity.member_id,
            client_urls: me.map(|m| m.client_urls.clone()).unwrap_or_default(),
            name: me.map(|m| m.name.clone()).unwrap_or_default(),
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
    record_client_urls(node, peer, &response.name, response.client_urls).await;
    Ok(())
}

/// Remembers a member's name and client URLs, as it announced them in its hello. Nothing is
/// written when nothing changed (a reconnect); a change is saved on a blocking thread, since
/// the save fsyncs twice.
async fn record_client_urls(node: &Node, member: u64, name: &str, client_urls: Vec<String>) {
    if !node.membership.hello_changes(member, name, &client_urls) {
        return;
    }
    let membership = node.membership.clone();
    let name = name.to_string();
    if let Err(e) = tokio::task::spawn_blocking(move || membership.record_hello(member, &name, client_urls)).await {
        warn!(error = %e, "saving a member's hello failed");
    }
}

/// A stream request carrying this member's cluster id and member id, which the receiver
/// binds the stream to (see [`PeerService::bind`]).
fn bound_request<T>(node: &Node, inner: T) -> Request<T> {
    let mut request = Request::new(inner);
    let metadata = request.metadata_mut();
    let cluster_id = node.membership.cluster_id;
    metadata.insert(CLUSTER_ID_METADATA, cluster_id.to_string().parse().expect("digits are valid metadata"));
    metadata.insert(MEMBER_ID_METADATA, node.member_id().to_string().parse().expect("digits are valid metadata"));
    request
}

/// Times a probe of the peer every [`PROBE_INTERVAL`], the first at once, until aborted
/// (when the peer's stream ends).
async fn probe(mut client: Client, metrics: Arc<PeerMetrics>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = Instant::now();
        match tokio::time::timeout(PROBE_TIMEOUT, client.probe(pb::Empty {})).await {
            Ok(Ok(_)) => metrics.round_trip.observe(started.elapsed().as_secs_f64()),
            // A member of a build without probes, or a connection going down (the stream
            // finds out by itself): nothing to time.
            Ok(Err(status)) => debug!(error = %status.message(), "peer probe refused"),
            Err(_) => debug!("peer probe unanswered"),
        }
    }
}

/// Streams queued messages to the peer in batches until the stream breaks.
async fn stream(node: &Node, client: &mut Client, queue: &mut mpsc::Receiver<Queued>, metrics: &PeerMetrics) -> Ended {
    let (tx, rx) = mpsc::channel::<pb::RaftBatch>(STREAM_BATCHES_MAX);
    let mut call = Box::pin(client.raft(bound_request(node, ReceiverStream::new(rx))));
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
                        Err(e) => {
                            metrics.sent_failures.inc();
                            warn!(error = %e, "cannot encode a raft message; dropped");
                        }
                    }
                    if msgs.len() < PEER_BATCH_MSGS_MAX && bytes < PEER_BATCH_BYTES_MAX {
                        next = queue.try_recv().ok();
                    }
                }
                let count = msgs.len() as u64;
                if tx.send(pb::RaftBatch { msgs }).await.is_err() {
                    metrics.sent_failures.inc_by(count);
                    return Ended::Broken;
                }
                metrics.sent_bytes.inc_by(bytes as u64);
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
        let ours = self.node.membership.cluster_id;
        let theirs = request.metadata().get(CLUSTER_ID_METADATA).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if theirs != Some(ours) {
            return Err(Status::failed_precondition(format!(
                "cluster id mismatch: this member belongs to cluster {ours:x}"
            )));
        }
        Ok(())
    }

    /// Binds a Raft or snapshot stream to the member it comes from: same cluster, and the
    /// member id it carries (`MEMBER_ID_METADATA`, the id its `Hello` named) is another
    /// current member of the cluster. Returns that member's id; every message on the
    /// stream must then be from it.
    fn bind<T>(&self, request: &Request<T>) -> Result<u64, Status> {
        self.check_cluster(request)?;
        let member = request
            .metadata()
            .get(MEMBER_ID_METADATA)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .ok_or_else(|| Status::permission_denied("peer stream names no member (plinth-member-id)"))?;
        self.check_member(member)?;
        self.check_certificate(request, Some(member))?;
        Ok(member)
    }

    /// With peer TLS and `--peer-client-cert-auth`, checks that the certificate of the
    /// connection `request` came on may speak for `member` (or, for `None`, for some
    /// member): see `peer_tls.rs` for the rule. Without peer TLS there is nothing to check.
    fn check_certificate<T>(&self, request: &Request<T>, member: Option<u64>) -> Result<(), Status> {
        let Some(tls) = self.node.membership.transport.tls() else { return Ok(()) };
        let (all, urls) = {
            let identity = self.node.membership.identity.read();
            let all: Vec<Vec<String>> = identity.members.iter().map(|m| m.peer_urls.clone()).collect();
            let urls = member.map(|id| {
                identity.members.iter().find(|m| m.id == id).map(|m| m.peer_urls.clone()).unwrap_or_default()
            });
            (all, urls)
        };
        tls.check_identity(request, urls.as_deref(), &all).inspect_err(|status| {
            warn!(
                member = format_args!("{:x}", member.unwrap_or(0)),
                error = %status.message(),
                "peer request refused: its certificate does not match"
            );
        })
    }

    /// A keep-alive (`renew`) or TTL request a follower forwarded: this member must lead the
    /// group, and answers as `Node::lease_on_leader` does on a leader.
    async fn lease_on_this_leader(&self, request: Request<pb::LeaseRequest>, renew: bool) -> Result<i64, Status> {
        self.check_certificate(&request, None)?;
        let request = request.into_inner();
        let node = self.node.tenants.lease_node(&self.node, request.group)?;
        if !node.is_leader() {
            return Err(crate::error::EtcdError::NotLeader.status());
        }
        node.lease_here(request.id, renew).await
    }

    /// Refuses a stream bound to `member` unless it is another current member.
    fn check_member(&self, member: u64) -> Result<(), Status> {
        let identity = self.node.membership.identity.read();
        if member == identity.member_id || !identity.members.iter().any(|m| m.id == member) {
            return Err(Status::permission_denied(format!("peer stream of member {member:x}, not a member")));
        }
        Ok(())
    }
}

/// Refuses a Raft message whose sender is not the member its stream is bound to: no member
/// may speak for another, so a peer cannot forge votes or appends of a member it is not.
fn check_from(msg: &Message, bound: u64) -> Result<(), Status> {
    if msg.from != bound {
        warn!(
            from = format_args!("{:x}", msg.from),
            stream = format_args!("{bound:x}"),
            "raft message from another member than its stream's; stream closed"
        );
        return Err(Status::permission_denied(format!(
            "raft message from member {:x} on the stream of member {bound:x}",
            msg.from
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn raft(&self, request: Request<Streaming<pb::RaftBatch>>) -> Result<Response<pb::Empty>, Status> {
        let bound = self.bind(&request)?;
        let me = self.node.member_id();
        let transport = &self.node.membership.transport;
        let mut metrics = transport.peer_metrics(bound);
        let mut batches = request.into_inner();
        while let Some(batch) = batches.message().await? {
            // A member removed while its stream is open is cut off at its next batch.
            self.check_member(bound)?;
            // A member whose stream came before this member added it (a conf change it has
            // not applied yet) is counted from its first batch after.
            if metrics.is_none() {
                metrics = transport.peer_metrics(bound);
            }
            if let Some(metrics) = &metrics {
                metrics.received_bytes.inc_by(batch.msgs.iter().map(|m| m.message.len() as u64).sum());
            }
            for raw in batch.msgs {
                let msg = match Message::parse_from_bytes(&raw.message) {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(error = %e, "undecodable raft message from a peer; dropped");
                        continue;
                    }
                };
                check_from(&msg, bound)?;
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
        let req = request.get_ref();
        let (cluster_id, member_id, known, client_urls, name) = {
            let identity = self.node.membership.identity.read();
            let me = identity.members.iter().find(|m| m.id == identity.member_id);
            (
                identity.cluster_id,
                identity.member_id,
                identity.members.iter().any(|m| m.id == req.member_id),
                me.map(|m| m.client_urls.clone()).unwrap_or_default(),
                me.map(|m| m.name.clone()).unwrap_or_default(),
            )
        };
        if req.cluster_id != cluster_id {
            return Err(Status::failed_precondition(format!(
                "cluster id mismatch: this member belongs to cluster {cluster_id:x}, not {:x}",
                req.cluster_id
            )));
        }
        if !known {
            if self.node.membership.identity.read().removed.contains(&req.member_id) {
                return Err(Status::failed_precondition(REMOVED_MESSAGE));
            }
            return Err(Status::failed_precondition(format!("member {:x} is not in the member list", req.member_id)));
        }
        // A hello names the member the connection speaks for: its certificate must match
        // it. (A removed member is told so above, whatever its certificate, so it stops.)
        self.check_certificate(&request, Some(req.member_id))?;
        let req = request.into_inner();
        record_client_urls(&self.node, req.member_id, &req.name, req.client_urls).await;
        Ok(Response::new(pb::HelloResponse { cluster_id, member_id, client_urls, name }))
    }

    async fn snapshot(&self, request: Request<Streaming<pb::SnapshotChunk>>) -> Result<Response<pb::Empty>, Status> {
        // A snapshot replaces the store's data: only a current member may send one, and
        // only its own (checked on the first chunk, before any data is kept).
        let bound = self.bind(&request)?;
        let node = &self.node;
        let mut chunks = request.into_inner();
        let mut first: Option<(u64, Message, Vec<Member>)> = None;
        // Chunks are verified and spooled to disk by a blocking task as they arrive (memory:
        // the few chunks queued here), then installed in bounded batches (`store`'s
        // snapshot_install.rs): a large tenant's snapshot cannot exhaust this member's memory.
        let mut spooler = None;
        let mut bytes = 0usize;
        let metrics = node.membership.transport.peer_metrics(bound);
        while let Some(chunk) = chunks.message().await? {
            if let Some(metrics) = &metrics {
                metrics.received_bytes.inc_by(chunk_bytes(&chunk));
            }
            if first.is_none() {
                let msg = Message::parse_from_bytes(&chunk.message)
                    .map_err(|e| Status::invalid_argument(format!("snapshot message: {e}")))?;
                check_from(&msg, bound)?;
                if msg.get_msg_type() != MessageType::MsgSnapshot || msg.to != node.member_id() {
                    return Err(Status::invalid_argument("not a snapshot for this member"));
                }
                let members: Vec<Member> = serde_json::from_slice(&chunk.members)
                    .map_err(|e| Status::invalid_argument(format!("snapshot member list: {e}")))?;
                if node.raft.status(raft_log::GroupId(chunk.group)).is_none() {
                    // A tenant this member has not created yet (its registry is behind): the
                    // leader retries once the group exists here.
                    return Err(Status::unavailable(format!(
                        "group {} does not exist on this member yet",
                        chunk.group
                    )));
                }
                let mut spool = node
                    .store
                    .snapshot_spool(store::GroupId(chunk.group))
                    .map_err(|e| Status::internal(format!("spooling the snapshot: {e}")))?;
                let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(SNAPSHOT_CHUNKS_QUEUED);
                let task = tokio::task::spawn_blocking(move || {
                    while let Some(data) = rx.blocking_recv() {
                        spool.push(&data)?;
                    }
                    Ok::<_, store::Error>(spool)
                });
                spooler = Some((tx, task));
                first = Some((chunk.group, msg, members));
            }
            bytes += chunk.data.len();
            if bytes > SNAPSHOT_BYTES_MAX {
                return Err(Status::resource_exhausted("snapshot larger than this member accepts"));
            }
            let (tx, _) = spooler.as_ref().expect("set with the first chunk");
            if tx.send(chunk.data).await.is_err() {
                // The spool refused a chunk: its error is the task's result, below.
                break;
            }
        }
        let (Some((group, msg, members)), Some((tx, task))) = (first, spooler) else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        drop(tx);
        let spool = task
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::data_loss(format!("receiving the snapshot: {e}")))?;
        let index = msg.get_snapshot().get_metadata().index;
        // Ordering: the store holds the snapshot, durably (install_snapshot flushes before
        // it returns), before Raft hears of it: Raft then truncates its log below the
        // snapshot, and entries it applies after it land on top of the store's state. An
        // entry the store already holds is skipped by its applied index if Raft delivers it
        // again.
        let store = node.store.clone();
        let installed = tokio::task::spawn_blocking(move || store.install_spooled(spool))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        match installed {
            Ok(installed) => {
                info!(group, index, installed, "installed a snapshot from the leader");
                // The member list travels with every group's snapshot; only the default
                // group's conf changes define it.
                if group == crate::node::DEFAULT_GROUP {
                    node.adopt_members(members);
                }
            }
            Err(store::Error::SnapshotNotAhead { index, applied_index }) => {
                // The store checked this under its apply lock (apply may have moved past the
                // snapshot while it streamed) and is unchanged. The message is stepped all
                // the same: Raft, whose commit index is at least the store's applied index,
                // does not restore a snapshot at or below it and answers the leader with its
                // own progress, and the driver sees a snapshot it did not restore.
                info!(index, applied_index, "not installing a snapshot the store has already applied past");
            }
            Err(e) => return Err(Status::data_loss(format!("installing the snapshot: {e}"))),
        }
        node.raft.step(raft_log::GroupId(group), msg).map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn members(&self, request: Request<pb::MembersRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        self.check_certificate(&request, None)?;
        let identity = self.node.membership.identity.read();
        let members = serde_json::to_vec(&identity.members).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::MembersResponse { cluster_id: identity.cluster_id, members: members.into() }))
    }

    async fn lease_renew(&self, request: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        let ttl = self.lease_on_this_leader(request, true).await?;
        Ok(Response::new(pb::LeaseResponse { ttl }))
    }

    async fn lease_remaining(&self, request: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        let ttl = self.lease_on_this_leader(request, false).await?;
        Ok(Response::new(pb::LeaseResponse { ttl }))
    }

    async fn probe(&self, request: Request<pb::Empty>) -> Result<Response<pb::Empty>, Status> {
        self.check_certificate(&request, None)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn hash_kv(&self, request: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        self.check_certificate(&request, None)?;
        let revision = request.into_inner().revision;
        let (hash, compact_revision, _) = self.node.etcd_hash_kv(revision).await?;
        Ok(Response::new(pb::HashKvResponse { hash, compact_revision, member_id: self.node.member_id() }))
    }

    async fn promote(&self, request: Request<pb::PromoteRequest>) -> Result<Response<pb::PromoteResponse>, Status> {
        self.check_certificate(&request, None)?;
        let id = request.into_inner().member_id;
        let members = self.node.promote_on_leader(id).await?;
        let members = serde_json::to_vec(&members).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::PromoteResponse { members: members.into() }))
    }
}

/// Asks the members at `peer_urls` for the cluster id and member list (joining a cluster).
/// `tls`: this member's peer TLS, for `https://` URLs.
pub async fn fetch_members(peer_urls: &[String], tls: Option<&Arc<PeerTls>>) -> anyhow::Result<(u64, Vec<Member>)> {
    let mut last = anyhow::anyhow!("no peer URLs to ask for the member list");
    for url in peer_urls {
        let channel = match open_channel(url, tls).await {
            Ok(c) => c,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let mut client = pb::peer_client::PeerClient::new(channel);
        match tokio::time::timeout(HELLO_TIMEOUT, client.members(pb::MembersRequest {})).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                let members: Vec<Member> = serde_json::from_slice(&r.members)?;
                return Ok((r.cluster_id, members));
            }
            Ok(Err(s)) => last = anyhow::anyhow!("{url}: {}", s.message()),
            Err(_) => last = anyhow::anyhow!("{url}: timed out"),
        }
    }
    Err(last)
}

/// The default keyspace's hash at `revision` on the member at `peer_url` (etcd's `HashKV`
/// over the peer port, as etcd's initial corruption check asks it): `Err` for a member
/// that could not be asked, `Ok(Err(status))` for one that refused (a revision it has
/// compacted or not reached yet).
pub async fn fetch_hash_kv(
    peer_url: &str,
    tls: Option<&Arc<PeerTls>>,
    revision: i64,
    timeout: Duration,
) -> anyhow::Result<Result<pb::HashKvResponse, Status>> {
    let asked = async {
        let channel = open_channel(peer_url, tls).await?;
        let mut client = pb::peer_client::PeerClient::new(channel);
        anyhow::Ok(client.hash_kv(pb::HashKvRequest { revision }).await.map(Response::into_inner))
    };
    tokio::time::timeout(timeout, asked).await.map_err(|_| anyhow::anyhow!("{peer_url}: timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_log::Transport;

    /// A follower that relays another member's proposal or read-index request (raft-rs keeps
    /// the original `from`) must not put it on its stream: the receiver would close the
    /// stream for carrying another member's message. Found by `tests/node_sim.rs`, whose
    /// network sees every relay raft-rs makes.
    #[test]
    fn relayed_messages_are_not_sent_on_this_members_stream() {
        let dir = tempfile::tempdir().unwrap();
        let store = store::Store::open(dir.path(), store::StoreConfig::default()).unwrap();
        let metrics = Arc::new(Metrics::new("3.5.16", 1));
        let transport = PeerTransport::new(1, store, &[2, 3], metrics);
        let msg = |t: MessageType, from: u64| {
            let mut m = Message::default();
            m.set_msg_type(t);
            m.from = from;
            m.to = 2;
            m
        };
        let relayed = vec![msg(MessageType::MsgPropose, 3), msg(MessageType::MsgReadIndex, 3)];
        transport.send(raft_log::GroupId(1), relayed);
        transport.send(raft_log::GroupId(1), vec![msg(MessageType::MsgHeartbeat, 1)]);
        let mut pending = transport.pending.lock();
        let rx = &mut pending.iter_mut().find(|p| p.id == 2).expect("member 2 has a queue").queue;
        let (_, first) = rx.try_recv().expect("this member's own message is queued");
        assert_eq!((first.get_msg_type(), first.from), (MessageType::MsgHeartbeat, 1));
        assert!(rx.try_recv().is_err(), "a relayed message was queued for member 2");
    }

    /// A message dropped because its peer's queue is full is a send failure of that peer,
    /// and a removed member's series leave the metrics with it.
    #[test]
    fn dropped_messages_are_send_failures_of_their_peer() {
        let dir = tempfile::tempdir().unwrap();
        let store = store::Store::open(dir.path(), store::StoreConfig::default()).unwrap();
        let metrics = Arc::new(Metrics::new("3.5.16", 1));
        let transport = PeerTransport::new(1, store, &[2, 3], metrics.clone());
        let heartbeat = |to: u64| {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgHeartbeat);
            m.from = 1;
            m.to = to;
            m
        };
        // Nothing drains the queues before `start`: the ones past the bound are dropped.
        let extra = 3;
        transport.send(raft_log::GroupId(1), (0..PEER_QUEUE_MSGS_MAX + extra).map(|_| heartbeat(2)).collect());
        transport.send(raft_log::GroupId(1), vec![heartbeat(3)]);
        let text = metrics.render();
        assert!(text.contains(&format!("etcd_network_peer_sent_failures_total{{To=\"2\"}} {extra}\n")), "{text}");
        assert!(text.contains("etcd_network_peer_sent_failures_total{To=\"3\"} 0\n"), "{text}");
        assert!(text.contains("etcd_network_active_peers{Local=\"1\",Remote=\"2\"} 0\n"), "{text}");
        transport.set_peers(&[3]);
        let text = metrics.render();
        assert!(!text.contains("\"2\""), "member 2's series outlived it:\n{text}");
        assert!(text.contains("etcd_network_peer_sent_failures_total{To=\"3\"} 0\n"), "{text}");
    }
}
