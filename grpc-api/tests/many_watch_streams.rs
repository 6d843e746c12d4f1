//! kube-apiserver multiplexes every watch of a resource type on one HTTP/2 connection: one
//! client channel must carry far more than hyper's default 200 concurrent streams.

mod common;

use std::time::Duration;

use common::Server;
use etcd_client::WatchOptions;

/// Watch streams opened at once on one connection (5x hyper's default limit).
const STREAMS: usize = 1000;
/// Longest wait for every stream to be created, and for every event.
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_a_thousand_watch_streams() {
    let server = Server::start(&[]);
    // One client, one channel: every watch below shares its connection.
    let client = server.client().await;
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        let mut watch_client = client.watch_client();
        opening.spawn(async move {
            let mut stream = watch_client.watch("shared", Some(WatchOptions::new())).await.expect("watch");
            let first = stream.message().await.expect("first message").expect("stream open");
            assert!(first.created(), "the first response is Created");
            stream
        });
    }
    let mut streams = Vec::with_capacity(STREAMS);
    let opened = tokio::time::timeout(WAIT, async {
        while let Some(stream) = opening.join_next().await {
            streams.push(stream.expect("opening a watch"));
        }
    })
    .await;
    assert!(opened.is_ok(), "only {} of {STREAMS} watch streams were created within {WAIT:?}", streams.len());
    client.kv_client().put("shared", "v", None).await.expect("put");
    let mut receiving = tokio::task::JoinSet::new();
    for mut stream in streams {
        receiving.spawn(async move {
            let response = stream.message().await.expect("event").expect("stream open");
            assert_eq!(response.events().len(), 1);
            assert_eq!(response.events()[0].kv().unwrap().value(), b"v");
            stream
        });
    }
    let mut received = 0;
    let all = tokio::time::timeout(WAIT, async {
        while let Some(done) = receiving.join_next().await {
            done.expect("receiving an event");
            received += 1;
        }
    })
    .await;
    assert!(all.is_ok(), "only {received} of {STREAMS} streams received the put within {WAIT:?}");
}
