//! Simple tokens against etcd 3.5.1: the same script on etcd and on Plinth, both started with
//! `--auth-token simple --auth-token-ttl 3`, must give the same outcome at every step (gRPC
//! code and message): a token renewed by each use stays valid past its TTL, an idle one
//! expires, a password change ends the user's tokens and the old password is refused, and a
//! deleted user's token is refused.
//!
//! The requests carry the token in the `token` metadata by hand (etcd-client would
//! authenticate again by itself). Bounded: about 15 s per server, both run side by side.

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
