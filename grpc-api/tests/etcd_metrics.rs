//! `/metrics` of a running member against what etcd 3.5.1 shows for the same history: the
//! Raft indexes behind the proposal counts, the compact revision of a store never compacted,
//! the keys, the backend's commit latency, the client message bytes, the gRPC message
//! counts, and the peer series of a two-member cluster.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{add_learner_n2, Server};
use grpc_api::pb::etcdserverpb as pb;
use prost::Message;

/// Longest wait for a value to show in `/metrics`.
const METRIC_TIMEOUT: Duration = Duration::from_secs(30);

/// A bare HTTP/1.1 GET of `/metrics` (empty while nothing answers).
fn scrape(port: u16) -> String {
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    let _ = conn.read_to_string(&mut raw);
    raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

async fn metrics(port: u16) -> String {
    tokio::task::spawn_blocking(move || scrape(port)).await.unwrap()
}

/// The value of the series written exactly `series` (name and labels as rendered).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes `port` until `ready` holds of the text, which it answers; fails after
/// [`METRIC_TIMEOUT`] naming `what`.
async fn wait_for(port: u16, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + METRIC_TIMEOUT;
    loop {
        let text = metrics(port).await;
        if ready(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}: not within {METRIC_TIMEOUT:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// etcd 3.5.1, fresh, then one put: `proposals_committed_total` and `proposals_applied_total`
/// are both the Raft log's last index (5 there), gauges; its compact revision is -1 until a
/// compaction; its keys count the put; its backend timed its commits.
#[tokio::test]
async fn raft_indexes_revisions_and_keys_as_etcd() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let port = server.client_port;
    let fresh = metrics(port).await;
    assert_eq!(value(&fresh, "etcd_debugging_mvcc_compact_revision"), Some(-1.0), "{fresh}");
    assert!(!fresh.contains("grpc_server_handling_seconds"), "a histogram of --metrics extensive only:\n{fresh}");
    for kind in ["committed_total", "applied_total", "pending"] {
        let line = format!("# TYPE etcd_server_proposals_{kind} gauge");
        assert!(fresh.contains(&line), "no {line:?}:\n{fresh}");
    }
    let put = client.put("a", "1", None).await.unwrap();
    let member = put.header().unwrap().member_id();
    client.put("b", "1", None).await.unwrap();
    // Every entry counts, conf changes and the leader's empty entry too: with the apply
    // caught up, committed and applied are the same index, past the two puts.
    let text = wait_for(port, "applied meets committed", |text| {
        let committed = value(text, "etcd_server_proposals_committed_total");
        committed.is_some_and(|c| c >= 3.0) && committed == value(text, "etcd_server_proposals_applied_total")
    })
    .await;
    assert_eq!(value(&text, "etcd_server_proposals_pending"), Some(0.0));
    assert_eq!(value(&text, "etcd_debugging_mvcc_keys_total"), Some(2.0), "{text}");
    assert_eq!(value(&text, "etcd_debugging_mvcc_current_revision"), Some(3.0));
    assert_eq!(value(&text, &format!("etcd_server_id{{server_id=\"{member:x}\"}}")), Some(1.0), "{text}");
    assert_eq!(value(&text, "etcd_cluster_version{cluster_version=\"3.5\"}"), Some(1.0), "{text}");
    assert_eq!(value(&text, "etcd_server_is_learner"), Some(0.0));
    let commits = value(&text, "etcd_disk_backend_commit_duration_seconds_count").unwrap_or(0.0);
    assert!(commits >= 2.0, "each applied batch is a timed commit: {commits}\n{text}");
    assert!(value(&text, "os_fd_used").is_some_and(|n| n >= 3.0), "{text}");
    assert!(value(&text, "os_fd_limit") >= value(&text, "os_fd_used"), "{text}");

    client.delete("b", None).await.unwrap();
    client.compact(2, None).await.unwrap();
    let text =
        wait_for(port, "compacted at 2", |t| value(t, "etcd_debugging_mvcc_compact_revision") == Some(2.0)).await;
    assert_eq!(value(&text, "etcd_debugging_mvcc_keys_total"), Some(1.0), "a delete takes a key away: {text}");
}

/// `--metrics extensive`: go-grpc-prometheus's handling-time histogram, as etcd 3.5.1 shows it
/// (`etcd --metrics extensive`, then one put): its help, one series per method of the
/// pre-created services from the start (43), and each call timed under its method.
#[tokio::test]
async fn extensive_metrics_time_each_call() {
    let server = Server::start(&["--metrics", "extensive"]);
    let mut client = server.client().await;
    let port = server.client_port;
    client.put("a", "1", None).await.unwrap();
    let put =
        r#"grpc_server_handling_seconds_count{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
    let text = wait_for(port, "the put timed", |t| value(t, put).is_some_and(|n| n >= 1.0)).await;
    assert!(
        text.contains("# HELP grpc_server_handling_seconds Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.\n# TYPE grpc_server_handling_seconds histogram"),
        "{text}"
    );
    let series = text.lines().filter(|l| l.starts_with("grpc_server_handling_seconds_count{")).count();
    assert_eq!(series, 43, "{text}");
    let slowest = r#"grpc_server_handling_seconds_bucket{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary",le="10"}"#;
    assert!(value(&text, slowest).is_some_and(|n| n >= 1.0), "{text}");
    let never = r#"grpc_server_handling_seconds_count{grpc_method="MemberPromote",grpc_service="etcdserverpb.Cluster",grpc_type="unary"}"#;
    assert_eq!(value(&text, never), Some(0.0), "a method never called is there at 0: {text}");
}

/// A client's message bytes are counted as etcd's codec counts them (each message's
/// protobuf, without gRPC's prefix), and its messages per method as go-grpc-prometheus
/// counts them: a unary call one each way, a stream each message.
#[tokio::test]
async fn client_bytes_and_messages_as_etcd() {
    let server = Server::start(&[]);
    let _ready = server.client().await;
    let port = server.client_port;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.endpoint()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut kv = pb::kv_client::KvClient::new(channel.clone());
    let bytes = |text: &str| {
        let sent = value(text, "etcd_network_client_grpc_sent_bytes_total").expect("sent bytes");
        let received = value(text, "etcd_network_client_grpc_received_bytes_total").expect("received bytes");
        (sent, received)
    };
    let put_labels = r#"{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
    let before = metrics(port).await;
    let request = pb::PutRequest { key: b"key".to_vec().into(), value: b"value".to_vec().into(), ..Default::default() };
    let response = tokio::time::timeout(Duration::from_secs(10), kv.put(request.clone())).await.unwrap().unwrap();
    let after = metrics(port).await;
    let (sent, received) = (bytes(&after).0 - bytes(&before).0, bytes(&after).1 - bytes(&before).1);
    assert_eq!(received, request.encoded_len() as f64, "bytes received for the put");
    assert_eq!(sent, response.into_inner().encoded_len() as f64, "bytes sent for the put");
    let count = |text: &str, name: &str| value(text, &format!("{name}{put_labels}")).unwrap_or(0.0);
    for name in ["grpc_server_msg_received_total", "grpc_server_msg_sent_total", "grpc_server_started_total"] {
        assert_eq!(count(&after, name) - count(&before, name), 1.0, "{name}:\n{after}");
    }

    // A watch stream: one create request, then a put's event; the created response and the
    // event are two messages sent.
    let mut watch = pb::watch_client::WatchClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: b"w".to_vec().into(),
            ..Default::default()
        })),
    };
    tx.send(create).await.unwrap();
    let mut responses = watch.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    assert!(next(&mut responses).await.created);
    kv.put(pb::PutRequest { key: b"w".to_vec().into(), ..Default::default() }).await.unwrap();
    assert_eq!(next(&mut responses).await.events.len(), 1);
    let watch_labels = r#"{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"}"#;
    let text = wait_for(port, "the watch's messages", |t| {
        value(t, &format!("grpc_server_msg_sent_total{watch_labels}")) == Some(2.0)
            && value(t, &format!("grpc_server_msg_received_total{watch_labels}")) == Some(1.0)
    })
    .await;
    assert_eq!(value(&text, &format!("grpc_server_started_total{watch_labels}")), Some(1.0));
    drop(tx);
}

/// The next response of a watch stream, within 10 s.
async fn next(responses: &mut tonic::Streaming<pb::WatchResponse>) -> pb::WatchResponse {
    let response = tokio::time::timeout(Duration::from_secs(10), responses.message()).await;
    response.expect("a watch response in time").unwrap().expect("the stream is open")
}

/// Two members (a voter and a learner): each shows the other as an active peer, with bytes
/// both ways and timed round trips, labelled by member ids as etcd prints them; once the
/// learner is gone, the voter's messages to it are send failures and the peer is inactive.
#[tokio::test]
async fn peer_series_of_a_two_member_cluster() {
    let n1 = Server::start(&[]);
    let mut c = n1.client().await;
    let tmp = tempfile::tempdir().unwrap();
    let (added, client_port, mut n2) = add_learner_n2(&n1, &mut c, tmp.path()).await;
    let id2 = format!("{:x}", added.member().unwrap().id());
    let id1 = format!("{:x}", added.header().unwrap().member_id());
    c.put("k", "v", None).await.unwrap();
    let up = |local: &str, remote: &str| {
        let active = format!("etcd_network_active_peers{{Local=\"{local}\",Remote=\"{remote}\"}}");
        let sent = format!("etcd_network_peer_sent_bytes_total{{To=\"{remote}\"}}");
        let received = format!("etcd_network_peer_received_bytes_total{{From=\"{remote}\"}}");
        let probed = format!("etcd_network_peer_round_trip_time_seconds_count{{To=\"{remote}\"}}");
        move |text: &str| {
            value(text, &active) == Some(1.0)
                && value(text, &sent).is_some_and(|b| b > 0.0)
                && value(text, &received).is_some_and(|b| b > 0.0)
                && value(text, &probed).is_some_and(|n| n >= 1.0)
        }
    };
    let text = wait_for(n1.client_port, "n1 sees n2", up(&id1, &id2)).await;
    // Messages sent before the learner listened were dropped, and counted: only that they
    // are counted at all is certain here.
    assert!(value(&text, &format!("etcd_network_peer_sent_failures_total{{To=\"{id2}\"}}")).is_some(), "{text}");
    let sum = value(&text, &format!("etcd_network_peer_round_trip_time_seconds_sum{{To=\"{id2}\"}}")).unwrap();
    assert!(sum > 0.0 && sum < 5.0, "round trips over loopback: {sum} s");
    let text = wait_for(client_port, "n2 sees n1", up(&id2, &id1)).await;
    assert_eq!(value(&text, "etcd_server_is_learner"), Some(1.0), "{text}");
    assert_eq!(value(&text, &format!("etcd_server_id{{server_id=\"{id2}\"}}")), Some(1.0), "{text}");

    // The learner goes away: what the voter sends it from now on is lost.
    let _ = n2.0.kill();
    let _ = n2.0.wait();
    let failures = format!("etcd_network_peer_sent_failures_total{{To=\"{id2}\"}}");
    let active = format!("etcd_network_active_peers{{Local=\"{id1}\",Remote=\"{id2}\"}}");
    let deadline = Instant::now() + METRIC_TIMEOUT;
    loop {
        c.put("k", "v", None).await.unwrap();
        let text = metrics(n1.client_port).await;
        if value(&text, &failures).is_some_and(|n| n > 0.0) && value(&text, &active) == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no send failures to the stopped learner:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
