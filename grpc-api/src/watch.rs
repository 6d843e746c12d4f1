//! `Watch`: the bidirectional watch stream.
//!
//! Each gRPC stream owns one store `WatchStream` (a single bounded channel carrying the
//! responses of all its watchers) and one task that is the stream's only writer. That task
//! handles create, cancel and progress requests itself and forwards what the store queues, so:
//! - a watcher's `Created` response precedes its events (the store queues it first);
//! - progress notifications are queued by the store behind the events they cover and travel
//!   the same channel, so a progress revision never runs ahead of delivered events.
//!
//! Fan-out cost: the store hands every watcher of an event the same shared event, and each
//! event is encoded once, on first send, as an element of `WatchResponse.events` (field key,
//! length and `mvccpb.Event`), then reused by every other stream. The service is served with
//! its own response type, [`WireResponse`]: the response's other fields, encoded by prost,
//! followed by those bytes, which is etcd's `WatchResponse` exactly. Sending an event to a
//! watcher is then one copy into the HTTP/2 buffer: no reference count, no encoding.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::error::EtcdError;
use crate::node::Node;
use crate::pb::etcdserverpb as pb;

/// The server side of etcd's `Watch` service, generated over [`WireResponse`].
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.Watch.rs"));
}
use server::watch_server::Watch;

/// etcd's `WatchResponse` as this server writes it: the same fields and tags, with every
/// event already encoded, field tag and length included, as the `events` field (11) of a
/// `WatchResponse` (see [`encode_event`]). Written by the server's codec
/// ([`crate::codec::WireMessage`]): the fields before the events, then each event's bytes.
#[derive(Clone, Default)]
pub struct WireResponse {
    pub head: WireHead,
    /// Events, each encoded on its first use ([`encode_event`]).
    pub events: Vec<store::SharedEvent>,
}

/// Fields 1 to 7 of etcd's `WatchResponse`: everything but the events.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireHead {
    #[prost(message, optional, tag = "1")]
    pub header: Option<pb::ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub watch_id: i64,
    #[prost(bool, tag = "3")]
    pub created: bool,
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    #[prost(int64, tag = "5")]
    pub compact_revision: i64,
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    #[prost(bool, tag = "7")]
    pub fragment: bool,
}

/// The key of `WatchResponse.events`: field 11, length-delimited.
const EVENTS_KEY: u8 = (11 << 3) | 2;

/// An event as one element of `WatchResponse.events`, key and length included: made once
/// per shared event, then written as it is for every watcher that receives the event.
fn encode_event(event: &store::SharedEvent) -> &Bytes {
    event.wire(|e| {
        let pb = crate::kv::event_to_pb(e.clone());
        let len = pb.encoded_len();
        let mut buf = Vec::with_capacity(1 + prost::length_delimiter_len(len) + len);
        buf.push(EVENTS_KEY);
        pb.encode_length_delimited(&mut buf).expect("a vector grows to any message");
        Bytes::from(buf)
    })
}

impl crate::codec::WireMessage for WireResponse {
    /// A stream's responses gather up to 32 KiB in the buffer before HTTP/2 takes them
    /// (see `codec.rs`): room for that and a response more, without growing.
    const BUFFER_BYTES: usize = 64 << 10;

    fn encoded_len(&self) -> usize {
        Message::encoded_len(&self.head) + self.events.iter().map(|e| encode_event(e).len()).sum::<usize>()
    }

    fn encode(&self, buf: &mut impl bytes::BufMut) {
        // Fields in tag order, as etcd writes them: 1 to 7, then 11.
        Message::encode(&self.head, buf).expect("the codec reserved the message's length");
        self.put_events(buf);
    }

    fn write(&self, _len: usize, buf: &mut tonic::codec::EncodeBuf<'_>) {
        // The head's varints through the scratch vector, the events' bytes (encoded once per
        // event, shared by its watchers) straight into the buffer: copied once.
        crate::codec::write_small(&self.head, buf);
        self.put_events(buf);
    }
}

impl WireResponse {
    /// Field 11 of the response, every event's bytes in order: what follows the head in
    /// both ways of writing it.
    fn put_events(&self, buf: &mut impl bytes::BufMut) {
        for event in &self.events {
            buf.put_slice(encode_event(event));
        }
    }
}

/// Responses buffered towards one gRPC client before the stream's writer waits for it.
const SEND_BUFFER: usize = 128;

/// etcd's reason for a watch created below the compact revision or with a negative start.
const CANCEL_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
/// etcd's reason for a watch whose range is empty (`key >= range_end`).
const CANCEL_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// Election timeouts without a leader after which a `hasleader` stream is cancelled.
const LEADERLESS_ELECTIONS: u32 = 3;

/// The Watch service.
pub struct WatchService {
    pub node: Arc<Node>,
}

type WatchResponseStream = Pin<Box<dyn Stream<Item = Result<WireResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchResponseStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let requires_leader = self.node.check_leader(&request)?;
        self.node.check_not_learner()?;
        // Kept for the permission check of every create (the token is the stream's).
        let metadata = request.metadata().clone();
        let certificate_user = crate::auth::certificate_user(&self.node, &request);
        let lane = crate::node::lanes::lane_of(request.extensions());
        let requests = request.into_inner();
        let (tx, rx) = mpsc::channel(SEND_BUFFER);
        let stream = self.node.store.watch_stream(self.node.group());
        let identity = (metadata, certificate_user);
        // The connection writes at once while the stream is open (`conn.rs`).
        let open = lane.as_ref().map(|l| l.watch_opened());
        let writer = run_stream(self.node.clone(), requests, stream, tx, requires_leader, identity);
        // On the connection's CPU lane, moving with it (`node/lanes.rs`).
        crate::node::lanes::spawn(lane, async move {
            writer.await;
            drop(open);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// Per-stream state of the writer task.
struct StreamState {
    node: Arc<Node>,
    stream: store::WatchStream,
    tx: mpsc::Sender<Result<WireResponse, Status>>,
    /// Watchers that asked for periodic progress notifications.
    progress_notify: HashSet<i64>,
    /// Watchers that asked for large responses to be split.
    fragment: HashSet<i64>,
    /// Watchers that received events since the last progress tick.
    recently_active: HashSet<i64>,
    /// The stream's request metadata (its auth token) and its client certificate's user.
    identity: (tonic::metadata::MetadataMap, Option<String>),
}

async fn run_stream(
    node: Arc<Node>,
    mut requests: Streaming<pb::WatchRequest>,
    stream: store::WatchStream,
    tx: mpsc::Sender<Result<WireResponse, Status>>,
    requires_leader: bool,
    identity: (tonic::metadata::MetadataMap, Option<String>),
) {
    // A stream opened with `hasleader` ends with etcd's "no leader" once the member has been
    // without a leader for 3 election timeouts (etcd's monitorLeader).
    let leaderless_max = node.cfg.election_timeout * LEADERLESS_ELECTIONS;
    let mut leader_check = tokio::time::interval(node.cfg.election_timeout);
    leader_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leaderless_since: Option<tokio::time::Instant> = None;
    let mut progress = tokio::time::interval_at(
        tokio::time::Instant::now() + node.cfg.progress_notify_interval,
        node.cfg.progress_notify_interval,
    );
    node.metrics.watchers.inc();
    node.runtime.watchers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut state = StreamState {
        node: node.clone(),
        stream,
        tx,
        progress_notify: HashSet::new(),
        fragment: HashSet::new(),
        recently_active: HashSet::new(),
        identity,
    };
    // A client that closes its side (grpcurl, etcd's JSON gateway) still gets its watchers'
    // events, as from etcd, whose stream ends only with the call; a broken request stream
    // ends it.
    let mut requests_open = true;
    loop {
        let keep_going = tokio::select! {
            request = requests.next(), if requests_open => match request {
                Some(Ok(request)) => state.handle_request(request).await,
                Some(Err(_)) => false,
                None => {
                    requests_open = false;
                    true
                }
            },
            // After a half-close only (until then the request stream's end tells it, and the
            // hot path registers no waker here): the client is gone, nobody reads the responses.
            () = state.tx.closed(), if !requests_open => false,
            response = state.stream.recv() => match response {
                Some(response) => state.forward(response).await,
                None => false,
            },
            _ = progress.tick() => {
                state.periodic_progress();
                true
            }
            now = leader_check.tick(), if requires_leader => {
                if node.leader() != 0 {
                    leaderless_since = None;
                    true
                } else {
                    let since = *leaderless_since.get_or_insert(now);
                    if now.duration_since(since) >= leaderless_max {
                        let _ = state.tx.send(Err(EtcdError::NoLeader.status())).await;
                        false
                    } else {
                        true
                    }
                }
            }
        };
        if !keep_going {
            break;
        }
    }
    node.metrics.watchers.dec();
    node.runtime.watchers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

impl StreamState {
    async fn send(&self, response: WireResponse) -> bool {
        self.tx.send(Ok(response)).await.is_ok()
    }

    /// Sends an answer this task makes itself (a refused create) behind every response the
    /// store has already queued for the stream (a `created` among them), so the client gets
    /// the answers to its requests in the order it sent them, as from etcd.
    async fn send_in_order(&mut self, response: WireResponse) -> bool {
        while let Some(queued) = self.stream.try_recv() {
            if !self.forward(queued).await {
                return false;
            }
        }
        self.send(response).await
    }

    async fn handle_request(&mut self, request: pb::WatchRequest) -> bool {
        use pb::watch_request::RequestUnion;
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                // The store queues the `canceled` response behind the watcher's events.
                if self.stream.cancel(store::WatchId(cancel.watch_id)) {
                    self.progress_notify.remove(&cancel.watch_id);
                    self.fragment.remove(&cancel.watch_id);
                }
                true
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Queued by the store behind every event already queued for this stream, and
                // only when every watcher of the stream is synced; otherwise nothing is sent
                // and the client asks again.
                self.stream.request_progress();
                true
            }
            None => true,
        }
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) -> bool {
        let header = self.node.current_header();
        let refuse_as = |watch_id: i64, reason: &str| WireResponse {
            head: WireHead {
                header: Some(header),
                watch_id,
                created: true,
                canceled: true,
                cancel_reason: reason.to_string(),
                ..Default::default()
            },
            events: Vec::new(),
        };
        let refuse = |reason: &str| refuse_as(-1, reason);
        // An empty key means the smallest key, "\0"; a range end of "\0" means every key from
        // `key` on — etcd's conventions.
        let key = if create.key.is_empty() { bytes::Bytes::from_static(b"\0") } else { create.key };
        let range_end = create.range_end;
        // Read permission on the whole watched range, checked once at create and first, as
        // etcd's isWatchPermitted is; a refusal cancels this watch only, under the id the
        // request carried. Whatever the cause (no user, an unknown token, even while auth is
        // disabled, or a missing permission), etcd's reason is the status text of "permission
        // denied". Unlike etcd 3.5, a from-key range ("\0") is checked as the whole range
        // rather than as its first key.
        let permitted = crate::auth::caller_of(&self.node, &self.identity.0, self.identity.1.clone())
            .and_then(|caller| caller.check_read(&key, &range_end));
        if permitted.is_err() {
            let denied = EtcdError::PermissionDenied.status();
            let reason = format!("rpc error: code = {:?} desc = {}", denied.code(), denied.message());
            return self.send_in_order(refuse_as(create.watch_id, &reason)).await;
        }
        if create.start_revision < 0 {
            return self.send_in_order(refuse(CANCEL_COMPACTED)).await;
        }
        if !range_end.is_empty() && range_end.as_ref() != b"\0" && key >= range_end {
            return self.send_in_order(refuse(CANCEL_EMPTY_RANGE)).await;
        }
        if !self.node.admit_watcher() {
            return self.send_in_order(refuse(EtcdError::TooManyRequests.message())).await;
        }
        let filters = &create.filters;
        let spec = store::WatchSpec {
            key,
            range_end,
            start_revision: create.start_revision,
            prev_kv: create.prev_kv,
            no_put: filters.contains(&(pb::watch_create_request::FilterType::Noput as i32)),
            no_delete: filters.contains(&(pb::watch_create_request::FilterType::Nodelete as i32)),
        };
        // The store queues the watcher's `Created` response (at the current revision) ahead
        // of any of its events, on the same queue this task forwards from. A client may
        // choose the id (`watch_id`, etcd 3.4+); one a watcher of this stream has is refused
        // as etcd refuses it.
        let Some(store::WatchId(id)) = self.stream.watch_as(create.watch_id, spec) else {
            return self.send_in_order(refuse(store::DUPLICATE_WATCH_ID)).await;
        };
        if create.progress_notify {
            self.progress_notify.insert(id);
        }
        if create.fragment {
            self.fragment.insert(id);
        }
        true
    }

    async fn forward(&mut self, response: store::WatchEvent) -> bool {
        let watch_id = response.watch_id;
        if !response.events.is_empty() {
            self.recently_active.insert(watch_id);
        }
        // etcd's cancel for a compacted start revision carries header revision 0.
        let header = self.node.header(if response.compact_revision != 0 { 0 } else { response.revision });
        if response.canceled || response.compact_revision != 0 {
            self.progress_notify.remove(&watch_id);
            self.fragment.remove(&watch_id);
        }
        // A watcher the store canceled because its client stopped reading gets a reason, so
        // the client surfaces an error and re-watches rather than taking it for a clean end.
        let cancel_reason = if response.slow { EtcdError::WatchCanceled.message().to_string() } else { String::new() };
        let head = WireHead {
            header: Some(header),
            watch_id,
            created: response.created,
            canceled: response.canceled,
            compact_revision: response.compact_revision,
            cancel_reason,
            fragment: false,
        };
        if self.fragment.contains(&watch_id) {
            let limit = crate::config::grpc_message_bytes_max(self.node.cfg.max_request_bytes);
            for piece in fragment(head, response.events, limit) {
                if !self.send(piece).await {
                    return false;
                }
            }
            true
        } else {
            self.send(WireResponse { head, events: response.events }).await
        }
    }

    fn periodic_progress(&mut self) {
        for id in &self.progress_notify {
            if !self.recently_active.contains(id) {
                // Queued only if the watcher is synced, behind its queued events.
                self.stream.progress_for(store::WatchId(*id));
            }
        }
        self.recently_active.clear();
    }
}

/// Splits encoded events over responses as etcd's `sendFragments` does: a response takes
/// events in order until the next one would make the whole response `limit_bytes` or more
/// (at least one event per response); every response but the last is marked `fragment`.
fn fragment(head: WireHead, events: Vec<store::SharedEvent>, limit_bytes: usize) -> Vec<WireResponse> {
    let head_bytes = Message::encoded_len(&WireHead { fragment: true, ..head.clone() });
    let mut out = Vec::new();
    let mut current: Vec<store::SharedEvent> = Vec::new();
    let mut current_bytes = head_bytes;
    for event in events {
        let size = encode_event(&event).len();
        if !current.is_empty() && current_bytes + size >= limit_bytes {
            let head = WireHead { fragment: true, ..head.clone() };
            out.push(WireResponse { head, events: std::mem::take(&mut current) });
            current_bytes = head_bytes;
        }
        current_bytes += size;
        current.push(event);
    }
    out.push(WireResponse { head: WireHead { fragment: false, ..head }, events: current });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::WireMessage;

    fn event(n: usize) -> store::SharedEvent {
        let kv = store::KeyValue { key: vec![b'k'; 10].into(), value: vec![0; n].into(), ..Default::default() };
        store::SharedEvent::new(store::Event { kind: store::EventKind::Put, kv, prev_kv: None })
    }

    /// The response as a client decodes it.
    fn decoded(wire: &WireResponse) -> pb::WatchResponse {
        let bytes = encoded(wire);
        assert_eq!(bytes.len(), wire.encoded_len());
        pb::WatchResponse::decode(bytes.as_slice()).expect("decodes")
    }

    fn encoded(wire: &WireResponse) -> Vec<u8> {
        let mut buf = Vec::new();
        wire.encode(&mut buf);
        buf
    }

    /// etcd's rule, seen with etcd 3.5.1 (default limits): three events of 900 KB go out as
    /// two responses, the first two events together, as they stay under 1.5 MiB + 512 KiB.
    #[test]
    fn fragments_are_cut_where_etcds_are() {
        let limit = crate::config::grpc_message_bytes_max(crate::config::MAX_REQUEST_BYTES_DEFAULT);
        let pieces = fragment(WireHead::default(), vec![event(900_000), event(900_000), event(900_000)], limit);
        let shape: Vec<(usize, bool)> = pieces.iter().map(|p| (p.events.len(), p.head.fragment)).collect();
        assert_eq!(shape, vec![(2, true), (1, false)]);
        // A response is cut before the event that makes it reach the limit, head included.
        let two = WireResponse {
            head: WireHead { fragment: true, ..Default::default() },
            events: vec![event(100), event(100)],
        };
        let reach = WireMessage::encoded_len(&two);
        let at = fragment(WireHead::default(), vec![event(100), event(100)], reach);
        assert_eq!(at.len(), 2, "a response of exactly the limit is cut");
        let above = fragment(WireHead::default(), vec![event(100), event(100)], reach + 1);
        assert_eq!(above.len(), 1);
    }

    #[test]
    fn fragments_split_and_mark_all_but_last() {
        let pieces = fragment(WireHead::default(), vec![event(100), event(100), event(100)], 150);
        assert_eq!(pieces.len(), 3);
        assert!(pieces[0].head.fragment && pieces[1].head.fragment && !pieces[2].head.fragment);
        assert!(pieces.iter().all(|p| decoded(p).events.len() == 1));
        let one = fragment(WireHead::default(), vec![event(10), event(10)], 1 << 20);
        assert_eq!(one.len(), 1);
        assert_eq!(decoded(&one[0]).events.len(), 2);
        assert!(!one[0].head.fragment);
    }

    fn kv(key: &str, value: &str, rev: i64) -> store::KeyValue {
        store::KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision: 2,
            mod_revision: rev,
            version: rev - 1,
            lease: 7,
        }
    }

    /// What a client decodes from the server's response is etcd's `WatchResponse`, byte for
    /// byte the encoding of the same response built from `mvccpb.Event`s.
    #[test]
    fn wire_response_is_etcds_watch_response_on_the_wire() {
        let events = [
            store::SharedEvent::new(store::Event {
                kind: store::EventKind::Put,
                kv: kv("a", "new", 5),
                prev_kv: Some(kv("a", "old", 4)),
            }),
            store::SharedEvent::new(store::Event {
                kind: store::EventKind::Delete,
                kv: store::KeyValue { key: Bytes::from_static(b"b"), mod_revision: 5, ..Default::default() },
                prev_kv: None,
            }),
        ];
        let header = pb::ResponseHeader { cluster_id: 1, member_id: 2, revision: 5, raft_term: 3 };
        let head = WireHead {
            header: Some(header),
            watch_id: 9,
            compact_revision: 0,
            cancel_reason: "why".into(),
            fragment: true,
            ..Default::default()
        };
        let wire = WireResponse { head, events: events.to_vec() };
        let etcd = pb::WatchResponse {
            header: Some(header),
            watch_id: 9,
            cancel_reason: "why".into(),
            fragment: true,
            events: events.iter().map(|e| crate::kv::event_to_pb((**e).clone())).collect(),
            ..Default::default()
        };
        assert_eq!(encoded(&wire), etcd.encode_to_vec());
        assert_eq!(decoded(&wire), etcd);
        // And a response without events: a created or canceled one.
        let head = WireHead { header: Some(header), watch_id: 3, created: true, ..Default::default() };
        let etcd = pb::WatchResponse { header: Some(header), watch_id: 3, created: true, ..Default::default() };
        let wire = WireResponse { head, events: Vec::new() };
        assert_eq!(encoded(&wire), etcd.encode_to_vec());
    }

    #[test]
    fn an_event_is_encoded_once_for_every_stream() {
        let e =
            store::SharedEvent::new(store::Event { kind: store::EventKind::Put, kv: kv("k", "v", 3), prev_kv: None });
        let shared = e.clone();
        let first = encode_event(&e);
        let mut calls = 0;
        let again = shared.wire(|_| {
            calls += 1;
            Bytes::new()
        });
        assert_eq!(calls, 0, "the second stream reuses the first encoding");
        assert_eq!(first, again);
    }
}
