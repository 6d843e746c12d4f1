//! Simple tokens against etcd 3.5.1: the same script on etcd and on Plinth, both started with
//! `--auth-token simple --auth-token-ttl 3`, must give the same outcome at every step (gRPC
//! code and message): a token renewed by each use stays valid past its TTL, an idle one
//! expires, a password change ends the user's tokens and the old password is refused, and a
//! deleted user's token is refused.
//!
//! The requests carry the token in the `token` metadata by hand (etcd-client would
//! authenticate again by itself). Bounded: about 15 s per server, both run side by side.
//!
//! After `auth disable`, etcd still resolves a token a request carries and refuses one it does
//! not know (simple tokens all end with the disable); the second script pins that, call by call.

use std::fmt::Write as _;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, Permission};
use grpc_api::pb::etcdserverpb as pb;
use plinth_tests::cluster::Options;
use plinth_tests::session::{assert_same_transcripts, async_transcripts};

/// `--auth-token-ttl` of both servers, in seconds.
const TOKEN_TTL_SECONDS: u64 = 3;
/// A pause between two uses of a token, well inside its TTL.
const BETWEEN_USES: Duration = Duration::from_secs(2);
/// An idle time past the TTL, with etcd's one-second expiry sweep on top.
const IDLE_PAST_TTL: Duration = Duration::from_secs(TOKEN_TTL_SECONDS + 2);
/// Limit of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);

async fn channel(endpoint: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect")
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("token", token.parse().expect("token metadata"));
    request
}

/// An outcome as the transcript shows it: `ok` or the gRPC code and message.
fn outcome<T>(r: Result<T, tonic::Status>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

struct Script {
    auth: pb::auth_client::AuthClient<tonic::transport::Channel>,
    kv: pb::kv_client::KvClient<tonic::transport::Channel>,
    log: String,
}

impl Script {
    /// Authenticates `user`: the token, and the outcome logged.
    async fn login(&mut self, step: &str, user: &str, password: &str) -> String {
        let r = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.auth.authenticate(pb::AuthenticateRequest { name: user.into(), password: password.into() }),
        )
        .await
        .expect("authenticate answered in time");
        let token = r.as_ref().map(|r| r.get_ref().token.clone()).unwrap_or_default();
        let _ = writeln!(self.log, "{step}: authenticate {user}: {}", outcome(r));
        token
    }

    async fn get(&mut self, step: &str, token: &str) {
        let request = with_token(pb::RangeRequest { key: "app/x".into(), ..Default::default() }, token);
        let r = tokio::time::timeout(REQUEST_TIMEOUT, self.kv.range(request)).await.expect("range answered in time");
        let _ = writeln!(self.log, "{step}: get app/x: {}", outcome(r));
    }
}

/// The script on the server at `endpoint`: its transcript.
async fn script(endpoint: String) -> String {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(REQUEST_TIMEOUT);
    let mut admin = Client::connect([endpoint.as_str()], Some(opts)).await.expect("connect");
    admin.put("app/x", "1", None).await.expect("put");
    let mut a = admin.auth_client();
    a.user_add("root", "rootpw", None).await.expect("user add root");
    a.user_grant_role("root", "root").await.expect("grant root");
    a.role_add("app").await.expect("role add");
    a.role_grant_permission("app", Permission::read_write("app/").with_prefix()).await.expect("grant");
    a.user_add("alice", "alicepw", None).await.expect("user add alice");
    a.user_grant_role("alice", "app").await.expect("grant app");
    a.auth_enable().await.expect("auth enable");

    let ch = channel(&endpoint).await;
    let mut s = Script {
        auth: pb::auth_client::AuthClient::new(ch.clone()),
        kv: pb::kv_client::KvClient::new(ch),
        log: String::new(),
    };
    let root = s.login("0", "root", "rootpw").await;

    // Each use renews the token: three uses two seconds apart outlive a three-second TTL.
    let t1 = s.login("1", "alice", "alicepw").await;
    for step in ["1a", "1b", "1c"] {
        s.get(step, &t1).await;
        tokio::time::sleep(BETWEEN_USES).await;
    }
    // Idle past the TTL: gone.
    tokio::time::sleep(IDLE_PAST_TTL).await;
    s.get("1d idle past the TTL", &t1).await;
    // Root used its token at the start only: it expired too.
    let root = {
        let request = with_token(pb::AuthUserGetRequest { name: "alice".into() }, &root);
        let r = tokio::time::timeout(REQUEST_TIMEOUT, s.auth.user_get(request)).await.expect("user get answered");
        let _ = writeln!(s.log, "1e: root's idle token: user get alice: {}", outcome(r));
        s.login("1f", "root", "rootpw").await
    };

    // A password change ends the user's tokens; the old password no longer authenticates.
    let t2 = s.login("2", "alice", "alicepw").await;
    s.get("2a", &t2).await;
    let change = with_token(
        pb::AuthUserChangePasswordRequest { name: "alice".into(), password: "newpw".into(), ..Default::default() },
        &root,
    );
    let r = tokio::time::timeout(REQUEST_TIMEOUT, s.auth.user_change_password(change)).await.expect("answered");
    let _ = writeln!(s.log, "2b: change alice's password: {}", outcome(r));
    s.get("2c token from before the change", &t2).await;
    s.login("2d", "alice", "alicepw").await;

    // A deleted user's token is refused.
    let t3 = s.login("3", "alice", "newpw").await;
    s.get("3a", &t3).await;
    let delete = with_token(pb::AuthUserDeleteRequest { name: "alice".into() }, &root);
    let r = tokio::time::timeout(REQUEST_TIMEOUT, s.auth.user_delete(delete)).await.expect("answered");
    let _ = writeln!(s.log, "3b: delete alice: {}", outcome(r));
    s.get("3c token of the deleted user", &t3).await;
    s.log
}

#[test]
fn simple_tokens_expire_and_end_as_etcds_do() {
    let options = || Options {
        flags: vec![
            "--auth-token=simple".into(),
            format!("--auth-token-ttl={TOKEN_TTL_SECONDS}"),
            "--bcrypt-cost=4".into(),
        ],
        ..Options::default()
    };
    let (la, lb, right) = async_transcripts("auth_tokens", options, script);
    // etcd itself must expire the idle token and refuse the old password, or the script
    // proves nothing.
    assert!(la.contains("1d idle past the TTL: get app/x: Unauthenticated: etcdserver: invalid auth token"), "{la}");
    assert!(la.contains("2d: authenticate alice: InvalidArgument: etcdserver: authentication failed"), "{la}");
    assert_same_transcripts("auth_tokens", &la, &lb, &right);
}

/// The first answer of a watch created on `key` with `token` (none if empty): created,
/// canceled and the reason.
async fn watch_create(ch: &tonic::transport::Channel, key: &str, token: &str) -> String {
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    };
    // The request stream stays open after the create, as a client's does.
    let requests = tokio_stream::StreamExt::chain(tokio_stream::iter(vec![create]), tokio_stream::pending());
    let mut request = tonic::Request::new(requests);
    if !token.is_empty() {
        request.metadata_mut().insert("token", token.parse().expect("token metadata"));
    }
    let mut watch = pb::watch_client::WatchClient::new(ch.clone());
    let first = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut answers = watch.watch(request).await?.into_inner();
        answers.message().await
    })
    .await
    .expect("the watch answered in time");
    match first {
        Ok(Some(r)) => format!("created {} canceled {} reason {:?}", r.created, r.canceled, r.cancel_reason),
        Ok(None) => "the stream ended".to_owned(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

/// Every call that resolves its caller, with `token` (none if empty): one line each.
async fn calls_with_token(ch: &tonic::transport::Channel, token: &str, log: &mut String) {
    fn req<T>(message: T, token: &str) -> tonic::Request<T> {
        if token.is_empty() {
            tonic::Request::new(message)
        } else {
            with_token(message, token)
        }
    }
    let mut kv = pb::kv_client::KvClient::new(ch.clone());
    let mut lease = pb::lease_client::LeaseClient::new(ch.clone());
    let mut maintenance = pb::maintenance_client::MaintenanceClient::new(ch.clone());
    let mut cluster = pb::cluster_client::ClusterClient::new(ch.clone());
    let mut auth = pb::auth_client::AuthClient::new(ch.clone());
    let t = REQUEST_TIMEOUT;
    let mut line = |call: &str, outcome: String| {
        let _ = writeln!(log, "  {call}: {outcome}");
    };
    let get = pb::RangeRequest { key: "app/x".into(), ..Default::default() };
    line("range", outcome(tokio::time::timeout(t, kv.range(req(get, token))).await.expect("answered")));
    let put = pb::PutRequest { key: "app/y".into(), value: "1".into(), ..Default::default() };
    line("put", outcome(tokio::time::timeout(t, kv.put(req(put, token))).await.expect("answered")));
    let txn = pb::TxnRequest::default();
    line("txn", outcome(tokio::time::timeout(t, kv.txn(req(txn, token))).await.expect("answered")));
    let grant = pb::LeaseGrantRequest { ttl: 60, id: 0 };
    line(
        "lease grant",
        outcome(tokio::time::timeout(t, lease.lease_grant(req(grant, token))).await.expect("answered")),
    );
    let ttl = pb::LeaseTimeToLiveRequest { id: 1, keys: false };
    line(
        "lease time-to-live",
        outcome(tokio::time::timeout(t, lease.lease_time_to_live(req(ttl, token))).await.expect("answered")),
    );
    let compact = pb::CompactionRequest { revision: 1, physical: false };
    line("compact", outcome(tokio::time::timeout(t, kv.compact(req(compact, token))).await.expect("answered")));
    let alarms = pb::AlarmRequest { action: pb::alarm_request::AlarmAction::Get as i32, ..Default::default() };
    line(
        "alarm list",
        outcome(tokio::time::timeout(t, maintenance.alarm(req(alarms, token))).await.expect("answered")),
    );
    let status = pb::StatusRequest {};
    line("status", outcome(tokio::time::timeout(t, maintenance.status(req(status, token))).await.expect("answered")));
    let hash = pb::HashRequest {};
    line("hash", outcome(tokio::time::timeout(t, maintenance.hash(req(hash, token))).await.expect("answered")));
    let members = pb::MemberListRequest { linearizable: false };
    line(
        "member list",
        outcome(tokio::time::timeout(t, cluster.member_list(req(members, token))).await.expect("answered")),
    );
    let auth_status = pb::AuthStatusRequest {};
    line(
        "auth status",
        outcome(tokio::time::timeout(t, auth.auth_status(req(auth_status, token))).await.expect("answered")),
    );
    line("watch", watch_create(ch, "app/x", token).await);
}

/// A script of tokens around `auth disable`: its transcript.
async fn disable_script(endpoint: String) -> String {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(REQUEST_TIMEOUT);
    let admin = Client::connect([endpoint.as_str()], Some(opts)).await.expect("connect");
    let mut a = admin.auth_client();
    a.user_add("root", "rootpw", None).await.expect("user add root");
    a.user_grant_role("root", "root").await.expect("grant root");
    a.user_add("alice", "alicepw", None).await.expect("user add alice");
    a.auth_enable().await.expect("auth enable");

    let ch = channel(&endpoint).await;
    let mut s = Script {
        auth: pb::auth_client::AuthClient::new(ch.clone()),
        kv: pb::kv_client::KvClient::new(ch.clone()),
        log: String::new(),
    };
    let root = s.login("0", "root", "rootpw").await;
    let alice = s.login("0", "alice", "alicepw").await;
    // With auth enabled, a watch is refused alike for want of a user, of a known token or
    // of a permission.
    for (who, token) in [("no token", ""), ("an unknown token", "garbage.7"), ("alice", alice.as_str())] {
        let _ = writeln!(s.log, "1: watch with {who}: {}", watch_create(&ch, "app/x", token).await);
    }
    // And every call that resolves its caller refuses an unknown token (a lease grant too,
    // which needs no permission).
    let _ = writeln!(s.log, "1: with an unknown token:");
    calls_with_token(&ch, "garbage.7", &mut s.log).await;
    let r = tokio::time::timeout(REQUEST_TIMEOUT, s.auth.auth_disable(with_token(pb::AuthDisableRequest {}, &root)))
        .await
        .expect("auth disable answered");
    let _ = writeln!(s.log, "2: auth disable: {}", outcome(r));
    // Disabled: a token from before the disable and garbage are refused by every call
    // that resolves its caller; no token at all is fine.
    for (who, token) in [("root's token from before", root.as_str()), ("garbage", "garbage"), ("no token", "")] {
        let _ = writeln!(s.log, "3: with {who}:");
        calls_with_token(&ch, token, &mut s.log).await;
    }
    s.log
}

#[test]
fn tokens_are_checked_while_auth_is_disabled() {
    let options =
        || Options { flags: vec!["--auth-token=simple".into(), "--bcrypt-cost=4".into()], ..Options::default() };
    let (la, lb, right) = async_transcripts("auth_tokens_disabled", options, disable_script);
    // etcd must refuse the stale token once disabled, or the script proves nothing.
    assert!(la.contains("  range: Unauthenticated: etcdserver: invalid auth token"), "{la}");
    assert!(la.contains("  hash: Unknown: auth: invalid auth token"), "{la}");
    assert_same_transcripts("auth_tokens_disabled", &la, &lb, &right);
}
