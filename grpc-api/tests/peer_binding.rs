//! A peer stream is bound to the member it says it is: a raw client of the peer protocol
//! (the test plays member n2 of a two-member cluster whose n1 is a real `plinth serve`) that
//! says hello as n2 and then streams a Raft message from someone else, or a snapshot from a
//! non-member, is refused.
//!
//! Without peer TLS the member id a stream carries is only asserted by the sender (the
//! cluster id is the only shared secret), so these checks catch confused or misconfigured
//! peers rather than attackers; with peer TLS the id is also checked against the
//! certificate (see `node/peer_tls.rs`).

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::{free_port, kill, serve_command, wait_listening};

use grpc_api::node::membership::Member;
use grpc_api::node::peer::pb;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

/// Longest wait for the server to listen on its peer port.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for any one peer call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Metadata keys of the peer protocol.
const CLUSTER_ID_METADATA: &str = "plinth-cluster-id";
const MEMBER_ID_METADATA: &str = "plinth-member-id";

/// n1 of a cluster {n1, n2}; n2's peer port is left to the test (nothing listens there).
struct One {
    child: Child,
    peer_url: String,
    _tmp: tempfile::TempDir,
}

impl Drop for One {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn start_n1() -> One {
    let tmp = tempfile::tempdir().unwrap();
    let client_url = format!("http://127.0.0.1:{}", free_port());
    let peer_port = free_port();
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let n2_peer_url = format!("http://127.0.0.1:{}", free_port());
    let mut one = One {
        child: serve_command(&tmp.path().join("data"), &client_url, &peer_url)
            .args(["--initial-cluster", &format!("n1={peer_url},n2={n2_peer_url}")])
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning plinth"),
        peer_url,
        _tmp: tmp,
    };
    // Waited for inside `One`, so a failed start is still killed on drop.
    wait_listening(&mut one.child, peer_port, START_TIMEOUT);
    one
}

type Client = pb::peer_client::PeerClient<tonic::transport::Channel>;

/// Connects to n1 and learns the cluster id and the ids of n1 and n2.
async fn connect(n1: &One) -> (Client, u64, u64, u64) {
    let channel = tokio::time::timeout(
        CALL_TIMEOUT,
        tonic::transport::Endpoint::from_shared(n1.peer_url.clone()).unwrap().connect(),
    )
    .await
    .expect("connect timed out")
    .expect("connect to n1's peer port");
    let mut client = pb::peer_client::PeerClient::new(channel);
    let members = tokio::time::timeout(CALL_TIMEOUT, client.members(pb::MembersRequest {}))
        .await
        .expect("Members timed out")
        .expect("Members")
        .into_inner();
    let list: Vec<Member> = serde_json::from_slice(&members.members).unwrap();
    let id = |name: &str| list.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name} in {list:?}")).id;
    (client, members.cluster_id, id("n1"), id("n2"))
}

/// Says hello to n1 as `member`.
async fn hello(client: &mut Client, cluster_id: u64, member: u64) {
    let request = pb::HelloRequest { cluster_id, member_id: member, client_urls: Vec::new(), name: String::new() };
    tokio::time::timeout(CALL_TIMEOUT, client.hello(request))
        .await
        .expect("hello timed out")
        .expect("n1 accepts a hello from n2");
}

/// A request carrying the cluster id and the sender's member id, as members send them.
fn bound<T>(inner: T, cluster_id: u64, member: u64) -> tonic::Request<T> {
    let mut request = tonic::Request::new(inner);
    request.metadata_mut().insert(CLUSTER_ID_METADATA, cluster_id.to_string().parse().unwrap());
    request.metadata_mut().insert(MEMBER_ID_METADATA, member.to_string().parse().unwrap());
    request
}

/// A Raft message `from` → `to` that Raft ignores if it gets stepped (a heartbeat answer
/// of term 0 to a member that is not leader).
fn raft_message(from: u64, to: u64) -> pb::RaftMessage {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeatResponse);
    m.from = from;
    m.to = to;
    pb::RaftMessage { group: 1, message: m.write_to_bytes().unwrap().into() }
}

/// Streams `msgs` in one batch, closes the stream and returns how n1 answered.
async fn stream_raft(
    client: &mut Client,
    cluster_id: u64,
    member: u64,
    msgs: Vec<pb::RaftMessage>,
) -> Result<(), tonic::Status> {
    let batches = tokio_stream::iter(vec![pb::RaftBatch { msgs }]);
    tokio::time::timeout(CALL_TIMEOUT, client.raft(bound(batches, cluster_id, member)))
        .await
        .expect("the Raft stream was not answered in time")
        .map(|_| ())
}

#[tokio::test]
async fn a_raft_message_from_another_member_than_the_streams_is_refused() {
    let n1 = start_n1();
    let (mut client, cluster_id, n1_id, n2_id) = connect(&n1).await;
    hello(&mut client, cluster_id, n2_id).await;

    // Control: n2's own message on n2's stream is taken.
    stream_raft(&mut client, cluster_id, n2_id, vec![raft_message(n2_id, n1_id)])
        .await
        .expect("a message from the stream's own member is taken");

    // A message claiming to come from n1 itself, and one from a member that does not exist.
    for from in [n1_id, 0xdead_beef] {
        let refused = stream_raft(&mut client, cluster_id, n2_id, vec![raft_message(from, n1_id)]).await;
        let status = refused.expect_err("a message whose from is not the stream's member must be refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains(&format!("{from:x}")), "{status:?}");
    }
}

#[tokio::test]
async fn a_raft_stream_of_a_non_member_or_without_a_member_id_is_refused() {
    let n1 = start_n1();
    let (mut client, cluster_id, n1_id, _) = connect(&n1).await;
    let stranger = 0xdead_beef;
    let refused = stream_raft(&mut client, cluster_id, stranger, vec![raft_message(stranger, n1_id)]).await;
    let status = refused.expect_err("a stream bound to a non-member must be refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // The cluster id alone does not bind a stream to anyone.
    let mut request = tonic::Request::new(tokio_stream::iter(vec![pb::RaftBatch { msgs: vec![] }]));
    request.metadata_mut().insert(CLUSTER_ID_METADATA, cluster_id.to_string().parse().unwrap());
    let refused = tokio::time::timeout(CALL_TIMEOUT, client.raft(request)).await.expect("answered in time");
    let status = refused.expect_err("a stream naming no member must be refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

#[tokio::test]
async fn a_snapshot_from_a_non_member_is_refused() {
    let n1 = start_n1();
    let (mut client, cluster_id, n1_id, n2_id) = connect(&n1).await;
    let snapshot_chunk = |from: u64| {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.from = from;
        m.to = n1_id;
        m.term = 1;
        pb::SnapshotChunk {
            group: 1,
            message: m.write_to_bytes().unwrap().into(),
            members: b"[]".to_vec().into(),
            data: b"not a store snapshot".to_vec().into(),
        }
    };
    let stranger = 0xdead_beef;
    // A stream bound to a non-member, and a member's stream carrying a non-member's snapshot.
    for (member, from) in [(stranger, stranger), (n2_id, stranger)] {
        let chunks = tokio_stream::iter(vec![snapshot_chunk(from)]);
        let refused = tokio::time::timeout(CALL_TIMEOUT, client.snapshot(bound(chunks, cluster_id, member)))
            .await
            .expect("the snapshot stream was not answered in time");
        let status = refused.expect_err("a snapshot from a non-member must be refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "stream of {member:x}, from {from:x}: {status:?}");
    }
}
