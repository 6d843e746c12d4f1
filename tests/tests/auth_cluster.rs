//! Auth state on a 3-member cluster: users, roles and permissions set through one member
//! hold on every member (each authenticates the user and applies the same permissions, and
//! reports the same auth revision), and all of it survives a restart of every member.
//!
//! Bounded: every wait has a timeout (well under 90 s in all).

use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, Permission};
use plinth_tests::members::Members;

/// How long a cluster gets to elect a leader (at start and after the restart).
const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a member gets to apply what another member's request committed.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn options() -> ConnectOptions {
    ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(8))
}

/// A client of member `endpoint` logged in as `user` (it authenticates on that member),
/// retried until the member has applied the user (bounded).
async fn login(endpoint: &str, user: &str, password: &str) -> Client {
    let deadline = Instant::now() + APPLY_TIMEOUT;
    loop {
        match Client::connect([endpoint], Some(options().with_user(user, password))).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "login as {user} on {endpoint}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// What member `endpoint` lets alice do.
async fn member_view(endpoint: &str) -> (String, String, String) {
    let mut alice = login(endpoint, "alice", "alicepw").await;
    let read = match alice.get("app/x", None).await {
        Ok(r) => {
            format!("read ok: {:?}", r.kvs().iter().map(|kv| kv.value_str().unwrap().to_owned()).collect::<Vec<_>>())
        }
        Err(e) => format!("read failed: {e}"),
    };
    let denied = match alice.get("secret", None).await {
        Ok(_) => "secret readable".to_owned(),
        Err(e) => format!("{e}"),
    };
    let write = match alice.put("app/x", "v2", None).await {
        Ok(_) => "write ok".to_owned(),
        Err(e) => format!("{e}"),
    };
    (read, denied, write)
}

/// Every member's whole auth state as root sees it through etcdctl: the enabled flag and
/// auth revision, users, roles, alice's roles and the app role's permissions (a dump to
/// compare between members, like HashKV for the keyspace).
fn statuses(c: &Members) -> Vec<String> {
    let dumps = [
        &["auth", "status"][..],
        &["user", "list"],
        &["role", "list"],
        &["user", "get", "alice", "--detail"],
        &["role", "get", "app"],
    ];
    c.members
        .iter()
        .map(|m| {
            let mut dump = String::new();
            for args in dumps {
                let mut all = vec!["--user=root:rootpw"];
                all.extend_from_slice(args);
                let out = m.ctl(&all);
                assert_eq!(out.code, Some(0), "{}: {args:?}: {out:?}", m.name);
                dump.push_str(&out.stdout);
            }
            dump
        })
        .collect()
}

#[test]
fn auth_state_is_the_same_on_every_member_and_survives_restart() {
    let rt = runtime();
    let mut c = Members::start(3, &["--bcrypt-cost", "4"]);
    rt.block_on(async { c.wait_leader(LEADER_TIMEOUT).await });
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    rt.block_on(async {
        let mut admin = Client::connect([endpoints[0].as_str()], Some(options())).await.expect("connect");
        admin.put("app/x", "v1", None).await.expect("put");
        admin.put("secret", "s", None).await.expect("put");
        let mut auth = admin.auth_client();
        auth.user_add("root", "rootpw", None).await.expect("user add root");
        auth.user_grant_role("root", "root").await.expect("grant root");
        auth.role_add("app").await.expect("role add");
        auth.role_grant_permission("app", Permission::read_write("app/").with_prefix()).await.expect("grant perm");
        auth.user_add("alice", "alicepw", None).await.expect("user add alice");
        auth.user_grant_role("alice", "app").await.expect("grant app");
        auth.auth_enable().await.expect("auth enable");
    });
    let denied = "message: \"etcdserver: permission denied\"";
    let views: Vec<_> = rt.block_on(async {
        let mut views = Vec::new();
        for ep in &endpoints {
            views.push(member_view(ep).await);
        }
        views
    });
    for (i, (read, secret, write)) in views.iter().enumerate() {
        assert!(read.starts_with("read ok"), "member {i}: {read}");
        assert!(secret.contains(denied), "member {i}: secret read: {secret}");
        assert_eq!(write, "write ok", "member {i}");
    }
    let before = statuses(&c);
    assert!(before[0].starts_with("Authentication Status: true\nAuthRevision: "), "{before:?}");
    assert!(before.iter().all(|s| *s == before[0]), "members report different auth states: {before:?}");

    // Every member restarts: the auth store is in their stores, not in their memory.
    for i in 0..3 {
        c.members[i].kill9();
    }
    for i in 0..3 {
        c.spawn(i);
    }
    rt.block_on(async { c.wait_leader(LEADER_TIMEOUT).await });
    let after: Vec<_> = rt.block_on(async {
        let mut views = Vec::new();
        for ep in &endpoints {
            views.push(member_view(ep).await);
        }
        views
    });
    for (i, (read, secret, write)) in after.iter().enumerate() {
        assert_eq!(read, "read ok: [\"v2\"]", "member {i} after restart\n{}", c.logs());
        assert!(secret.contains(denied), "member {i} after restart: {secret}");
        assert_eq!(write, "write ok", "member {i} after restart");
    }
    assert_eq!(statuses(&c), before, "the auth state changed across the restart");
    // Without a user, nothing is readable on any member.
    rt.block_on(async {
        for ep in &endpoints {
            let mut anonymous = Client::connect([ep.as_str()], Some(options())).await.expect("connect");
            let err = anonymous.get("app/x", None).await.expect_err("anonymous read with auth enabled");
            assert!(err.to_string().contains("etcdserver: user name is empty"), "{ep}: {err}");
        }
    });
}

/// A Range of `key` on `endpoint` (host:port) with `token` in the `token` metadata.
async fn get_with_token(endpoint: &str, token: &str, key: &str) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect");
    let mut kv = grpc_api::pb::etcdserverpb::kv_client::KvClient::new(channel);
    let mut request = tonic::Request::new(grpc_api::pb::etcdserverpb::RangeRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    });
    request.metadata_mut().insert("token", token.parse().expect("token metadata"));
    tokio::time::timeout(Duration::from_secs(8), kv.range(request)).await.expect("range answered in time").map(|_| ())
}

#[test]
fn a_simple_token_issued_by_one_member_is_valid_on_every_member() {
    let rt = runtime();
    let c = Members::start(3, &["--bcrypt-cost", "4"]);
    rt.block_on(async { c.wait_leader(LEADER_TIMEOUT).await });
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    rt.block_on(async {
        let admin = Client::connect([endpoints[0].as_str()], Some(options())).await.expect("connect");
        let mut auth = admin.auth_client();
        auth.user_add("root", "rootpw", None).await.expect("user add root");
        auth.user_grant_role("root", "root").await.expect("grant root");
        auth.auth_enable().await.expect("auth enable");
        // The token comes from member 0 alone.
        let token = admin
            .auth_client()
            .authenticate("root".to_owned(), "rootpw".to_owned())
            .await
            .expect("authenticate")
            .token()
            .to_owned();
        for ep in &endpoints {
            // Every member learns the token by applying the entry that issued it.
            let deadline = Instant::now() + APPLY_TIMEOUT;
            loop {
                match get_with_token(ep, &token, "k").await {
                    Ok(()) => break,
                    Err(e) => assert!(Instant::now() < deadline, "{ep}: the token is not honoured: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // A token nobody issued is refused everywhere.
        for ep in &endpoints {
            let err = get_with_token(ep, "NotAToken.1", "k").await.expect_err("a made-up token");
            assert_eq!(err.message(), "etcdserver: invalid auth token", "{ep}");
        }
    });
}
