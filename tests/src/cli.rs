//! The `plinth` binary's operator commands and client connections, as the process tests use
//! them.

use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

use crate::cluster::plinth_bin;
use crate::process::{run_with_timeout, Output};

/// Longest a `plinth` command (backup, restore, tenant, migrate) may run in a test.
pub const PLINTH_CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `plinth ARGS` under [`PLINTH_CLI_TIMEOUT`].
pub fn plinth(args: &[&str]) -> Output {
    let mut cmd = Command::new(plinth_bin());
    cmd.args(args);
    run_with_timeout(cmd, None, PLINTH_CLI_TIMEOUT)
}

/// Runs `plinth ARGS`, which must succeed; its stdout.
pub fn plinth_ok(args: &[&str]) -> String {
    let out = plinth(args);
    assert_eq!(out.code, Some(0), "plinth {args:?} failed:\n{}\n{}", out.stdout, out.stderr);
    out.stdout
}

/// A client of `endpoint` once it answers `Status` and knows a leader (a listener that opens
/// when a member applies something, such as a tenant port, may open before that member has
/// heard from the new group's leader, and a write there would fail with "no leader"),
/// retrying for up to 20 s.
pub async fn connect_eventually(endpoint: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let opts =
            ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(8));
        if let Ok(mut c) = Client::connect([endpoint], Some(opts)).await {
            if c.status().await.is_ok_and(|s| s.leader() != 0) {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "{endpoint} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most 10 s) for the answer to a watch create that must succeed. etcd-client hands
/// over a watch stream before the server has taken the create: a put sent before the
/// `created` response may land below the watcher's start revision, and the server may not
/// count the watcher yet.
pub async fn watch_created(stream: &mut etcd_client::WatchStream) {
    let created = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the watch create answered within 10 s")
        .expect("watch stream")
        .expect("the watch stream ended before the create was answered");
    assert!(created.created() && !created.canceled(), "{created:?}");
}

/// `GET path` over plain HTTP/1.1 on `endpoint` (`http://host:port`): the status code and the
/// whole response.
pub fn http_get(endpoint: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let hostport = endpoint.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(hostport).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n").expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}
