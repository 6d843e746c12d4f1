//! Simple tokens (`--auth-token simple`, etcd's default): a token lives `--auth-token-ttl`
//! seconds without use, and a password change or a deleted user ends the user's tokens, each
//! refused afterwards with `etcdserver: invalid auth token`.

mod common;

use std::time::Duration;

use common::{get_with_token, options, token, Server};
use etcd_client::{Client, Permission};

#[tokio::test]
async fn simple_tokens_expire_and_end_with_a_password_change_or_the_user() {
    let server = Server::start(&["--auth-token", "simple", "--auth-token-ttl", "3", "--bcrypt-cost", "4"]);
    let mut admin = server.client().await;
    admin.put("app/x", "1", None).await.unwrap();
    let mut auth = admin.auth_client();
    auth.user_add("root", "rootpw", None).await.unwrap();
    auth.user_grant_role("root", "root").await.unwrap();
    auth.role_add("app").await.unwrap();
    auth.role_grant_permission("app", Permission::read("app/").with_prefix()).await.unwrap();
    for user in ["alice", "bob"] {
        auth.user_add(user, "pw", None).await.unwrap();
        auth.user_grant_role(user, "app").await.unwrap();
    }
    auth.auth_enable().await.unwrap();
    let ep = server.endpoint();
    let invalid = "etcdserver: invalid auth token";

    // Each use renews the TTL; unused for longer than it, the token is gone.
    let alice = token(&ep, "alice", "pw").await;
    for _ in 0..3 {
        get_with_token(&ep, &alice, "app/x").await.expect("a live token");
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert_eq!(get_with_token(&ep, &alice, "app/x").await.unwrap_err().message(), invalid, "expired");

    // A password change ends the user's tokens; other users' stay.
    let alice = token(&ep, "alice", "pw").await;
    let bob = token(&ep, "bob", "pw").await;
    let root = Client::connect([ep.as_str()], Some(options().with_user("root", "rootpw"))).await.unwrap();
    root.auth_client().user_change_password("alice", "new").await.unwrap();
    assert_eq!(get_with_token(&ep, &alice, "app/x").await.unwrap_err().message(), invalid, "after passwd");
    // Bob's token stands for the current revision (a simple token does), so it still works.
    get_with_token(&ep, &bob, "app/x").await.expect("bob's token survives alice's password change");
    let alice = token(&ep, "alice", "new").await;
    get_with_token(&ep, &alice, "app/x").await.expect("the new password's token");
    // A deleted user's tokens end too.
    root.auth_client().user_delete("alice").await.unwrap();
    assert_eq!(get_with_token(&ep, &alice, "app/x").await.unwrap_err().message(), invalid, "deleted user");
}

/// Authenticate checks the password at one auth revision and issues the token through the
/// log; an auth change committed in between makes it check again (etcd's loop), so a
/// client never sees `revision of auth store is old` from Authenticate itself.
#[tokio::test]
async fn authenticate_is_retried_when_the_auth_store_changes_meanwhile() {
    let server = Server::start(&["--bcrypt-cost", "4"]);
    let admin = server.client().await;
    let auth = admin.auth_client();
    let mut setup = auth.clone();
    setup.user_add("root", "rootpw", None).await.unwrap();
    setup.user_grant_role("root", "root").await.unwrap();
    setup.user_add("alice", "pw", None).await.unwrap();
    setup.auth_enable().await.unwrap();
    let ep = server.endpoint();
    let root = Client::connect([ep.as_str()], Some(options().with_user("root", "rootpw"))).await.unwrap();
    // Auth changes as fast as they commit, while alice logs in again and again.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        let mut auth = root.auth_client();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                auth.role_add(format!("churn{n}")).await.expect("role add");
                n += 1;
            }
            n
        })
    };
    let login = Client::connect([ep.as_str()], Some(options())).await.unwrap();
    let mut failures = Vec::new();
    for _ in 0..100 {
        if let Err(e) = login.auth_client().authenticate("alice".to_owned(), "pw".to_owned()).await {
            failures.push(e.to_string());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let changes = tokio::time::timeout(Duration::from_secs(10), churn).await.expect("churn stops").unwrap();
    assert!(changes > 10, "the auth store barely changed ({changes} changes)");
    assert!(failures.is_empty(), "{} of 100 logins failed, e.g. {}", failures.len(), failures[0]);
}
