//! `plinth serve` read as etcd reads its command line: Go's single-dash flags and `ETCD_*`
//! variables, through the real binary (the rewrite itself is unit-tested in `etcd_flags.rs`).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, kill, read_stderr, wait_listen_or_exit, wait_listening, Started};
use etcd_client::{Client, Txn, TxnOp};

/// The Kubernetes integration framework's etcd command line (single dashes, a peer port of
/// 0), with the member name and a txn limit from `ETCD_*` variables.
#[test]
fn single_dash_flags_and_etcd_variables_configure_a_member() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_plinth"))
        .arg("serve")
        .arg("-data-dir")
        .arg(tmp.path().join("data"))
        .args(["-listen-client-urls", &url, &format!("-advertise-client-urls={url}")])
        .args(["--listen-peer-urls", "http://127.0.0.1:0", "-log-level", "warn"])
        .args(["--quota-backend-bytes", "8589934592"])
        .env("ETCD_NAME", "from-env")
        .env("ETCD_MAX_TXN_OPS", "2")
        .env("ETCD_SNAPSHOT_COUNT", "")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(&mut child, port, Duration::from_secs(20));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let result = rt.block_on(async {
        let mut c = Client::connect([format!("127.0.0.1:{port}")], None).await.unwrap();
        let members = c.member_list().await.unwrap();
        let names: Vec<String> = members.members().iter().map(|m| m.name().to_string()).collect();
        let ops = (0..3).map(|i| TxnOp::put(format!("k{i}"), "v", None)).collect::<Vec<_>>();
        let err = c.txn(Txn::new().and_then(ops)).await.unwrap_err();
        (names, err.to_string())
    });
    kill(&mut child);
    assert_eq!(result.0, vec!["from-env"]);
    assert!(result.1.contains("etcdserver: too many operations in txn request"), "{}", result.1);
}

/// As in etcd: a variable for a flag that is also on the command line stops the start.
#[test]
fn a_variable_shadowed_by_a_flag_stops_the_start() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plinth"))
        .args(["serve", "-name", "n1"])
        .env("ETCD_NAME", "other")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = wait_listen_or_exit(&mut child, None, Duration::from_secs(20));
    let Some(Started::Exited(status)) = started else {
        kill(&mut child);
        panic!("plinth kept running with a shadowed ETCD_NAME");
    };
    assert_eq!(status.code(), Some(1));
    let stderr = read_stderr(&mut child);
    assert!(
        stderr.contains(
            "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag \
             (either unset environment variable or disable flag)"
        ),
        "{stderr}"
    );
}

/// `--pre-vote`, which etcd 3.5 turns on by default, names what every Plinth member does: it
/// is accepted on, from the command line or `ETCD_PRE_VOTE`, and refused off.
#[test]
fn pre_vote_is_accepted_on_and_refused_off() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut on = member(&tmp.path().join("on"), port).arg("--pre-vote").spawn().unwrap();
    wait_listening(&mut on, port, Duration::from_secs(20));
    kill(&mut on);

    for (flag, var) in [(Some("--pre-vote=false"), None), (None, Some("false"))] {
        let mut cmd = member(&tmp.path().join("off"), free_port());
        cmd.args(flag);
        if let Some(v) = var {
            cmd.env("ETCD_PRE_VOTE", v);
        }
        let mut off = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let Some(Started::Exited(status)) = wait_listen_or_exit(&mut off, None, Duration::from_secs(20)) else {
            kill(&mut off);
            panic!("plinth kept running with pre-vote off ({flag:?}, {var:?})");
        };
        assert_eq!(status.code(), Some(1));
        let stderr = read_stderr(&mut off);
        assert!(stderr.contains("--pre-vote=false: not supported"), "{stderr}");
    }
}

/// `--grpc-keepalive-interval` and `--grpc-keepalive-timeout` set the client port's pings as
/// in etcd: a connection that leaves the server's ping unanswered is closed once the two have
/// passed; with etcd's defaults (2 h, 20 s) the same connection stays open.
#[test]
fn grpc_keepalive_flags_close_a_connection_that_leaves_pings_unanswered() {
    let short: &[&str] = &["--grpc-keepalive-interval=1s", "--grpc-keepalive-timeout", "1s"];
    for (flags, closes) in [(short, true), (&[][..], false)] {
        let tmp = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = member(&tmp.path().join("data"), port).args(flags).spawn().unwrap();
        wait_listening(&mut child, port, Duration::from_secs(20));
        let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // The HTTP/2 client preface and an empty SETTINGS frame; nothing more is ever sent.
        socket.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let start = Instant::now();
        let mut closed = None;
        let mut buf = [0u8; 4096];
        while closed.is_none() && start.elapsed() < Duration::from_secs(6) {
            match socket.read(&mut buf) {
                Ok(0) => closed = Some(start.elapsed()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => closed = Some(start.elapsed()),
            }
        }
        kill(&mut child);
        assert_eq!(closed.is_some(), closes, "{flags:?}: closed after {closed:?}");
    }
}

/// `plinth serve` of a lone member with its data in `data_dir`, serving clients on `port`.
fn member(data_dir: &std::path::Path, port: u16) -> Command {
    let url = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plinth"));
    cmd.args(["serve", "--data-dir"])
        .arg(data_dir)
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", "http://127.0.0.1:0", "--log-level", "warn"])
        .stdout(Stdio::null());
    cmd
}
