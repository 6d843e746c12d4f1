//! `/readyz` on a learner: etcd's `non_learner` check fails there, so a load balancer or a
//! readiness probe does not send clients to a member that refuses most requests.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{add_learner_n2, Server};

/// Longest wait for the learner to start and for its check to answer.
const WAIT: Duration = Duration::from_secs(60);

/// A bare HTTP/1.1 GET: (status code, body), `None` while nothing listens.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(conn, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    conn.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

#[tokio::test]
async fn readyz_fails_non_learner_on_a_learner_only() {
    let n1 = Server::start(&[]);
    let mut c = n1.client().await;
    let tmp = tempfile::tempdir().unwrap();
    let (added, client_port, _n2) = add_learner_n2(&n1, &mut c, tmp.path()).await;
    assert!(added.member().unwrap().is_learner());
    // The learner answers the other checks once it has caught up; `non_learner` must fail
    // there whatever the others say, and pass on the voter.
    let deadline = Instant::now() + WAIT;
    let (status, body) = loop {
        let got = tokio::task::spawn_blocking(move || http_get(client_port, "/readyz?verbose")).await.unwrap();
        if let Some((status, body)) = got {
            if body.contains("[+]serializable_read ok") {
                break (status, body);
            }
        }
        assert!(Instant::now() < deadline, "the learner did not serve /readyz within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("[-]non_learner failed: "), "{body}");
    let one = tokio::task::spawn_blocking(move || http_get(client_port, "/readyz/non_learner")).await.unwrap();
    assert_eq!(one.map(|(s, _)| s), Some(503));
    let excluded =
        tokio::task::spawn_blocking(move || http_get(client_port, "/readyz/non_learner?exclude=non_learner"))
            .await
            .unwrap();
    assert_eq!(excluded.map(|(s, _)| s), Some(503), "a subpath runs its check whatever `exclude` says");
    let voter = n1.client_port;
    let (status, body) = tokio::task::spawn_blocking(move || http_get(voter, "/readyz/non_learner?verbose"))
        .await
        .unwrap()
        .expect("the voter serves /readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("[+]non_learner ok"), "{body}");
}
