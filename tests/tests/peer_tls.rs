//! Peer TLS with real processes: three `plinth serve` members whose peer URLs are `https://`
//! with `--peer-client-cert-auth`, certificates made by `scripts/gen-certs.sh` (the openssl
//! sequence the README documents; nothing is committed).
//!
//! - writes replicate over peer mTLS, and a member killed with SIGKILL restarts and catches up;
//! - a member added with `member add` joins (`--initial-cluster-state existing`) over TLS;
//! - a member whose certificate comes from another CA cannot join: the others refuse its
//!   connection at the handshake, it never learns what the cluster wrote, and the two others
//!   keep serving writes without it;
//! - a member with a certificate from the right CA but issued for another host cannot speak
//!   for a member: its requests are refused after the handshake (peer identity binding);
//! - with `--peer-cert-allowed-cn` or `--peer-cert-allowed-hostname`, only certificates with
//!   that CN, or valid for that host, are taken;
//! - `--peer-auto-tls` clusters replicate (encrypted, unauthenticated, and they say so).
//!
//! Each test is bounded (well under 60 s).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use plinth_tests::members::{add_member_when_healthy, Members};
use plinth_tests::process::run_with_timeout;

/// How long a cluster gets to elect its first leader.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a restarted member gets to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a refused member is watched for data it must never get.
const REFUSED_WATCH: Duration = Duration::from_secs(3);
/// How long a member gets to log that it refused n3: n3 starts last and may reach a member
/// only after the other two have elected a leader and served writes.
const REFUSAL_LOG_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest one openssl step may take.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);
/// Subject alternative names of every member's certificate: they all run on loopback.
const LOOPBACK_SANS: &str = "IP:127.0.0.1,DNS:localhost";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

async fn connect(endpoint: &str) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(8));
    Client::connect([endpoint], Some(opts)).await
}

/// Runs `scripts/gen-certs.sh <args>` and fails the test if it does not succeed.
fn gen_certs(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gen-certs.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script).args(args);
    let out = run_with_timeout(cmd, None, OPENSSL_TIMEOUT);
    assert_eq!(out.code, Some(0), "gen-certs.sh {args:?}: {}\n{}", out.stdout, out.stderr);
}

/// The peer TLS flags of a member whose certificate is `<dir>/<name>.crt` and which trusts
/// `<ca_dir>/ca.crt`.
fn peer_flags(dir: &Path, name: &str, ca_dir: &Path) -> Vec<String> {
    vec![
        "--peer-client-cert-auth".to_owned(),
        format!("--peer-trusted-ca-file={}", ca_dir.join("ca.crt").display()),
        format!("--peer-cert-file={}", dir.join(format!("{name}.crt")).display()),
        format!("--peer-key-file={}", dir.join(format!("{name}.key")).display()),
    ]
}

/// Three members with https peer URLs, each with its certificate from `certs` (one CA),
/// not yet started.
fn mtls_cluster(certs: &Path) -> Members {
    gen_certs(&[certs.to_str().unwrap(), "ca"]);
    let mut c = Members::create(3, &[]);
    for m in &mut c.members {
        gen_certs(&[certs.to_str().unwrap(), "cert", &m.name, LOOPBACK_SANS]);
        m.peer_https = true;
        m.flags = peer_flags(certs, &m.name, certs);
    }
    c
}

/// Starts every member of `c`.
fn spawn_all(c: &mut Members) {
    for i in 0..c.members.len() {
        c.spawn(i);
    }
}

/// Polls a serializable read of `key` on `endpoint` until it returns `value` or `limit` passes.
async fn sees(endpoint: &str, key: &str, value: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(mut c) = connect(endpoint).await {
            if let Ok(r) = c.get(key, Some(GetOptions::new().with_serializable())).await {
                if r.kvs().first().is_some_and(|kv| kv.value() == value.as_bytes()) {
                    return true;
                }
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Puts `k` = `v` through n1 until it is accepted: n1 and n2 are a quorum of three without
/// n3. Fails with `no_write` and the logs after `START_TIMEOUT`.
async fn write_through_n1(c: &Members, no_write: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(mut client) = connect(&c.members[0].endpoint()).await {
            if client.put("k", "v", None).await.is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{no_write}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that n3 does not see `k` = `v` within `REFUSED_WATCH`; `got_data` is the failure.
async fn assert_n3_kept_out(c: &Members, got_data: &str) {
    assert!(!sees(&c.members[2].endpoint(), "k", "v", REFUSED_WATCH).await, "{got_data}\n{}", c.logs());
}

/// Asserts that n1 or n2 logs refusing n3's certificate as not speaking for n3 (identity
/// binding after a good handshake) within `REFUSAL_LOG_TIMEOUT`; `not_refused` is the
/// failure. The refusal is logged when n3's first request arrives, which nothing the test
/// waits for before orders.
fn assert_n3_certificate_refused(c: &Members, not_refused: &str) {
    let deadline = Instant::now() + REFUSAL_LOG_TIMEOUT;
    while !c.members[..2].iter().any(|m| m.log().contains("its certificate does not match")) {
        assert!(Instant::now() < deadline, "{not_refused}\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_members_with_peer_mtls_replicate_and_a_restarted_member_catches_up() {
    let rt = runtime();
    let certs = tempfile::tempdir().unwrap();
    let mut c = mtls_cluster(certs.path());
    spawn_all(&mut c);
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));
    for m in &c.members {
        assert!(m.log().contains("serving peer traffic over TLS"), "{}", m.log_tail(20));
    }
    let follower = (leader + 1) % 3;
    rt.block_on(async {
        let mut client = connect(&c.members[leader].endpoint()).await.expect("connect to the leader");
        client.put("before", "1", None).await.expect("put on the leader");
        for m in &c.members {
            assert!(
                sees(&m.endpoint(), "before", "1", CATCH_UP_TIMEOUT).await,
                "{} did not get the write\n{}",
                m.name,
                c.logs()
            );
        }
    });
    c.members[follower].kill9();
    rt.block_on(async {
        let mut client = connect(&c.members[leader].endpoint()).await.expect("connect to the leader");
        client.put("while-down", "2", None).await.expect("put with one member down");
    });
    c.spawn(follower);
    rt.block_on(async {
        let endpoint = c.members[follower].endpoint();
        assert!(
            sees(&endpoint, "while-down", "2", CATCH_UP_TIMEOUT).await,
            "the restarted member did not catch up over peer TLS\n{}",
            c.logs()
        );
        // And it takes part in new writes, proposed on it.
        let mut client = connect(&endpoint).await.expect("connect to the restarted member");
        client.put("after", "3", None).await.expect("put on the restarted member");
        for m in &c.members {
            assert!(sees(&m.endpoint(), "after", "3", CATCH_UP_TIMEOUT).await, "{}\n{}", m.name, c.logs());
        }
    });
}

#[test]
fn a_member_with_a_certificate_from_another_ca_cannot_join() {
    let rt = runtime();
    let certs = tempfile::tempdir().unwrap();
    let rogue_certs = tempfile::tempdir().unwrap();
    let mut c = mtls_cluster(certs.path());
    // n3 has a certificate of its own CA, but trusts the cluster's CA (so only its own
    // certificate is wrong).
    gen_certs(&[rogue_certs.path().to_str().unwrap(), "ca"]);
    gen_certs(&[rogue_certs.path().to_str().unwrap(), "cert", "n3", LOOPBACK_SANS]);
    c.members[2].flags = peer_flags(rogue_certs.path(), "n3", certs.path());
    spawn_all(&mut c);
    // n1 and n2 are a quorum of three: they elect a leader and serve writes without n3.
    rt.block_on(async {
        write_through_n1(&c, "n1 and n2 serve no write without n3").await;
        assert!(sees(&c.members[1].endpoint(), "k", "v", CATCH_UP_TIMEOUT).await, "{}", c.logs());
        assert_n3_kept_out(&c, "n3, with a certificate from another CA, got the cluster's data").await;
    });
    // Refused at the handshake both ways: n1 and n2 reject n3's client certificate, and
    // their own connections to n3 fail to verify its server certificate. (n3 may reach one of
    // them only after the writes above: the log is waited for.)
    for m in &c.members[..2] {
        assert!(
            m.log_shows("rejected TLS connection", REFUSAL_LOG_TIMEOUT),
            "{} did not reject n3's handshake\n{}",
            m.name,
            m.log_tail(30)
        );
    }
    assert!(!c.members[2].log().contains("connected to peer"), "n3 connected to a peer\n{}", c.members[2].log_tail(30));
    // The cluster keeps working without n3.
    rt.block_on(async {
        let mut client = connect(&c.members[1].endpoint()).await.expect("connect to n2");
        client.put("k2", "v2", None).await.expect("a write without n3");
    });
}

#[test]
fn a_certificate_from_the_cluster_ca_for_another_host_cannot_speak_for_a_member() {
    let rt = runtime();
    let certs = tempfile::tempdir().unwrap();
    let mut c = mtls_cluster(certs.path());
    // n3's certificate is signed by the cluster's CA, so its handshakes succeed, but it is
    // issued for another host than n3's peer URL (127.0.0.1).
    gen_certs(&[certs.path().to_str().unwrap(), "cert", "elsewhere", "DNS:elsewhere.example"]);
    c.members[2].flags = peer_flags(certs.path(), "elsewhere", certs.path());
    spawn_all(&mut c);
    rt.block_on(async {
        write_through_n1(&c, "n1 and n2 serve no write without n3").await;
        assert_n3_kept_out(&c, "n3, with a certificate for another host, got the cluster's data").await;
    });
    assert_n3_certificate_refused(&c, "no member refused n3's certificate as not n3's");
}

#[test]
fn three_members_with_peer_auto_tls_replicate() {
    let rt = runtime();
    let mut c = Members::create(3, &["--peer-auto-tls"]);
    for m in &mut c.members {
        m.peer_https = true;
    }
    spawn_all(&mut c);
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));
    for m in &c.members {
        // Encrypted but not authenticated: the member says so.
        assert!(m.log().contains("the peer port is unauthenticated (TLS without"), "{}", m.log_tail(20));
    }
    rt.block_on(async {
        let mut client = connect(&c.members[leader].endpoint()).await.expect("connect to the leader");
        client.put("k", "v", None).await.expect("put on the leader");
        for m in &c.members {
            assert!(sees(&m.endpoint(), "k", "v", CATCH_UP_TIMEOUT).await, "{}\n{}", m.name, c.logs());
        }
    });
}

/// n1 and n2 share the certificate `peer` (`peer_sans`), n3 has `intruder` (`intruder_sans`),
/// all signed by the cluster's CA, and every member runs with `allow` (an allowed CN or
/// hostname): n1 and n2 form the cluster, n3 is refused after its handshake.
fn only_the_allowed_identity_joins(peer_sans: &str, intruder_sans: &str, allow: &str) {
    let rt = runtime();
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().to_str().unwrap();
    gen_certs(&[dir, "ca"]);
    gen_certs(&[dir, "cert", "peer", peer_sans]);
    gen_certs(&[dir, "cert", "intruder", intruder_sans]);
    let mut c = Members::create(3, &[allow]);
    for (i, m) in c.members.iter_mut().enumerate() {
        m.peer_https = true;
        m.flags = peer_flags(certs.path(), if i < 2 { "peer" } else { "intruder" }, certs.path());
    }
    spawn_all(&mut c);
    rt.block_on(async {
        write_through_n1(&c, "n1 and n2 serve no write").await;
        assert!(sees(&c.members[1].endpoint(), "k", "v", CATCH_UP_TIMEOUT).await, "{}", c.logs());
        assert_n3_kept_out(&c, &format!("n3 ({allow} not met) got the cluster's data")).await;
    });
    assert_n3_certificate_refused(&c, &format!("no member refused n3's certificate under {allow}"));
}

#[test]
fn peer_cert_allowed_cn_admits_only_that_common_name() {
    only_the_allowed_identity_joins(LOOPBACK_SANS, LOOPBACK_SANS, "--peer-cert-allowed-cn=peer");
}

#[test]
fn peer_cert_allowed_hostname_admits_only_certificates_for_that_host() {
    only_the_allowed_identity_joins(
        "IP:127.0.0.1,DNS:peer.example",
        LOOPBACK_SANS,
        "--peer-cert-allowed-hostname=peer.example",
    );
}

#[test]
fn a_member_added_to_a_peer_mtls_cluster_joins_over_tls() {
    let rt = runtime();
    let certs = tempfile::tempdir().unwrap();
    let mut c = mtls_cluster(certs.path());
    spawn_all(&mut c);
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));
    let n4 = c.add_member();
    let name = c.members[n4].name.clone();
    gen_certs(&[certs.path().to_str().unwrap(), "cert", &name, LOOPBACK_SANS]);
    c.members[n4].peer_https = true;
    c.members[n4].flags = peer_flags(certs.path(), &name, certs.path());
    rt.block_on(async {
        let mut client = connect(&c.members[leader].endpoint()).await.expect("connect to the leader");
        client.put("before-join", "1", None).await.expect("put");
        // etcdctl's order: add the member (its https peer URL), then start it with `existing`.
        add_member_when_healthy(&mut client, vec![c.members[n4].peer_url()], false).await;
    });
    c.spawn(n4);
    rt.block_on(async {
        let endpoint = c.members[n4].endpoint();
        assert!(
            sees(&endpoint, "before-join", "1", CATCH_UP_TIMEOUT).await,
            "the new member did not join over peer TLS\n{}",
            c.logs()
        );
    });
}
