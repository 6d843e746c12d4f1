//! The HTTP endpoints on the client port, and periodic watch progress notifications.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::Server;
use etcd_client::WatchOptions;

/// A bare HTTP/1.1 GET: (status code, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path)
}

/// A bare HTTP/1.1 request without a body: (status code, body).
fn http_request(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(conn, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn health_version_readyz_and_metrics() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    c.put("k", "v", None).await.unwrap();
    let port = server.client_port;
    let (status, body) = tokio::task::spawn_blocking(move || http_get(port, "/health")).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(r#""health":"true""#), "{body}");
    let (status, body) = tokio::task::spawn_blocking(move || http_get(port, "/version")).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(r#""etcdserver":"3.5."#), "{body}");
    let (status, body) = tokio::task::spawn_blocking(move || http_get(port, "/readyz?verbose")).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("[+]linearizable_read ok"), "{body}");
    let (status, _) = tokio::task::spawn_blocking(move || http_get(port, "/livez")).await.unwrap();
    assert_eq!(status, 200);
    let (status, _) = tokio::task::spawn_blocking(move || http_get(port, "/readyz/no_such_check")).await.unwrap();
    assert_eq!(status, 404);
    // A path nothing serves: Go's not-found answer, as etcd's HTTP mux gives (gRPC calls to
    // unknown methods still answer "unimplemented": `metrics_labels.rs`).
    for path in ["/no/such/path", "/v2/keys", "/metrics/extra"] {
        let (status, body) = tokio::task::spawn_blocking(move || http_get(port, path)).await.unwrap();
        assert_eq!((status, body.as_str()), (404, "404 page not found\n"), "{path}");
    }
    // Another method than GET: etcd's 405, except on `/metrics`, which answers any method.
    let (status, body) = tokio::task::spawn_blocking(move || http_request(port, "POST", "/health")).await.unwrap();
    assert_eq!((status, body.as_str()), (405, "Method Not Allowed\n"));
    let (status, _) = tokio::task::spawn_blocking(move || http_request(port, "POST", "/metrics")).await.unwrap();
    assert_eq!(status, 200);
    let (status, body) = tokio::task::spawn_blocking(move || http_get(port, "/metrics")).await.unwrap();
    assert_eq!(status, 200);
    for name in [
        "etcd_server_has_leader 1",
        "etcd_server_is_leader 1",
        "etcd_debugging_mvcc_current_revision 2",
        "etcd_mvcc_db_total_size_in_bytes",
        "grpc_server_started_total{grpc_method=\"Put\"",
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\"",
    ] {
        assert!(body.contains(name), "metrics lack {name}:\n{body}");
    }
}

#[tokio::test]
async fn periodic_progress_notifications() {
    let server = Server::start(&["--experimental-watch-progress-notify-interval", "300ms"]);
    let mut c = server.client().await;
    c.put("k", "v", None).await.unwrap();
    let mut watch = c.watch("k", Some(WatchOptions::new().with_progress_notify())).await.unwrap();
    assert!(watch.message().await.unwrap().unwrap().created());
    let progress = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert!(progress.events().is_empty());
    assert!(!progress.created() && !progress.canceled());
    assert_eq!(progress.watch_id(), 0);
    assert_eq!(progress.header().unwrap().revision(), 2, "progress carries the current revision");
    // A watcher that did not ask for progress gets none.
    let mut quiet = c.watch("other", None).await.unwrap();
    assert!(quiet.message().await.unwrap().unwrap().created());
    let nothing = tokio::time::timeout(Duration::from_millis(1200), quiet.message()).await;
    assert!(nothing.is_err(), "no progress without progress_notify: {nothing:?}");
}
