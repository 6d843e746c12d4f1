//! The auth store applied from the log: every auth command through `apply`, its errors, the
//! auth revision, checked writes refused after a permission change, simple tokens on every
//! replica, and the whole state surviving a reopen and travelling in a group snapshot.

mod common;

use std::time::Duration;

use common::{Node, G};
use store::auth::{
    AuthCommand, AuthEnableRequest, AuthRequest, AuthResponse, AuthenticateRequest, Permission, PermissionType,
    RoleAddRequest, RoleGrantPermissionRequest, RoleRevokePermissionRequest, UserAddRequest, UserChangePasswordRequest,
    UserDeleteRequest, UserGrantRoleRequest,
};
use store::{CheckedCommand, Command, CommandBody, CommandResponse, Error, PutRequest, Store, StoreConfig};

fn auth(n: &mut Node, c: AuthCommand) -> store::Result<AuthResponse> {
    match n.exec(CommandBody::Auth(AuthRequest { command: Some(c) }))? {
        CommandResponse::Auth(r) => Ok(r),
        other => panic!("auth command answered {other:?}"),
    }
}

fn user_add(n: &str) -> AuthCommand {
    AuthCommand::UserAdd(UserAddRequest {
        name: n.into(),
        password_hash: format!("hash-{n}").into(),
        no_password: false,
    })
}

fn checked_put(auth_revision: u64, k: &str) -> CommandBody {
    let put = PutRequest { key: k.to_string().into(), value: "v".into(), ..Default::default() };
    CommandBody::Checked(Box::new(CheckedCommand {
        auth_revision,
        command: Some(Box::new(Command::new(0, CommandBody::Put(put)))),
    }))
}

fn setup(n: &mut Node) {
    for c in [
        user_add("root"),
        AuthCommand::UserGrantRole(UserGrantRoleRequest { user: "root".into(), role: "root".into() }),
        user_add("alice"),
        AuthCommand::RoleAdd(RoleAddRequest { name: "writer".into() }),
        AuthCommand::RoleGrantPermission(RoleGrantPermissionRequest {
            name: "writer".into(),
            perm: Some(Permission {
                perm_type: PermissionType::Readwrite as i32,
                key: "a/".into(),
                range_end: "a0".into(),
            }),
        }),
        AuthCommand::UserGrantRole(UserGrantRoleRequest { user: "alice".into(), role: "writer".into() }),
        AuthCommand::Enable(AuthEnableRequest {}),
    ] {
        auth(n, c.clone()).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
}

#[test]
fn auth_commands_apply_with_etcd_errors_and_survive_reopen_and_snapshot() {
    let mut n = Node::new();
    let rev0 = n.store.current_revision(G);
    assert!(matches!(auth(&mut n, AuthCommand::Enable(AuthEnableRequest {})), Err(Error::AuthRootUserNotExist)));
    setup(&mut n);
    let a = n.store.auth(G);
    assert!(a.enabled);
    assert_eq!(a.revision, 7, "one auth revision per change, from 1 (enabling takes none)");
    assert_eq!(a.user("alice").unwrap().roles, vec!["writer".to_string()]);
    assert_eq!(&a.user("alice").unwrap().password_hash[..], b"hash-alice");
    assert_eq!(n.store.current_revision(G), rev0, "auth commands take no key revision");
    assert!(matches!(auth(&mut n, user_add("alice")), Err(Error::AuthUserAlreadyExists)));
    assert!(matches!(
        auth(&mut n, AuthCommand::UserDelete(UserDeleteRequest { name: "root".into() })),
        Err(Error::AuthInvalidMgmt)
    ));
    assert_eq!(n.store.auth(G).revision, 7, "failed commands change nothing");

    // A write checked at the current revision applies; one checked before a later auth
    // change is refused on apply.
    let r = n.exec(checked_put(7, "a/1"));
    assert!(r.is_ok(), "{r:?}");
    auth(
        &mut n,
        AuthCommand::RoleRevokePermission(RoleRevokePermissionRequest {
            role: "writer".into(),
            key: "a/".into(),
            range_end: "a0".into(),
        }),
    )
    .unwrap();
    assert!(matches!(n.exec(checked_put(7, "a/2")), Err(Error::AuthOldRevision)));
    assert!(n.get("a/2").is_none(), "the refused write left no trace");

    // A simple token applied is known to this replica until its user's password changes.
    let token = |name: &str, rev| {
        AuthCommand::Authenticate(AuthenticateRequest {
            name: name.into(),
            simple_token: format!("tok-{name}.{rev}"),
            password_hash: format!("hash-{name}").into(),
        })
    };
    let ttl = Duration::from_secs(300);
    let rev = n.store.auth(G).revision;
    assert!(matches!(auth(&mut n, token("alice", rev)), Ok(AuthResponse::Authenticated { .. })));
    assert_eq!(n.store.simple_token_user(G, &format!("tok-alice.{rev}"), ttl).as_deref(), Some("alice"));
    assert!(matches!(auth(&mut n, token("bob", rev)), Err(Error::AuthFailed)));
    auth(
        &mut n,
        AuthCommand::UserChangePassword(UserChangePasswordRequest {
            name: "alice".into(),
            password_hash: "new".into(),
        }),
    )
    .unwrap();
    assert_eq!(n.store.simple_token_user(G, &format!("tok-alice.{rev}"), ttl), None, "a password change drops tokens");

    // Reopen and snapshot keep the whole auth store.
    let want = n.store.auth(G);
    let chunks: Vec<Vec<u8>> = n.store.snapshot(G).unwrap().map(|c| c.unwrap()).collect();
    let other = Node::new();
    other.store.install_snapshot(G, chunks.into_iter()).unwrap();
    assert_eq!(other.store.auth(G), want, "the snapshot carries the auth store");
    assert_eq!(other.store.auth(G).hash(), want.hash());
    drop(other);
    let path = n.path().to_path_buf();
    let Node { store, dir, next_index, .. } = n;
    drop(store);
    let mut n = Node { store: Store::open(&path, StoreConfig::default()).unwrap(), g: G, next_index, dir };
    assert_eq!(n.store.auth(G), want, "the auth store survives a reopen");
    assert!(matches!(n.exec(checked_put(7, "a/3")), Err(Error::AuthOldRevision)));
    assert!(n.exec(checked_put(want.revision, "a/3")).is_ok());
}

#[test]
fn replicas_applying_the_same_entries_hold_the_same_auth_store() {
    let mut a = Node::new();
    let mut b = Node::new();
    setup(&mut a);
    setup(&mut b);
    assert_eq!(a.store.auth(G).hash(), b.store.auth(G).hash());
    assert_eq!(a.store.auth(G), b.store.auth(G));
}

/// A member that installs a snapshot has skipped the entries it covers, a password change
/// or a user's deletion among them: the simple tokens it knew are dropped, not kept valid.
#[test]
fn a_snapshot_install_drops_the_members_simple_tokens() {
    let mut a = Node::new();
    setup(&mut a);
    let login = AuthCommand::Authenticate(AuthenticateRequest {
        name: "alice".into(),
        simple_token: "tok".into(),
        password_hash: "hash-alice".into(),
    });
    auth(&mut a, login).unwrap();
    let ttl = Duration::from_secs(300);
    assert_eq!(a.store.simple_token_user(G, "tok", ttl).as_deref(), Some("alice"));
    // Another replica went on: alice was deleted there.
    let mut b = Node::new();
    setup(&mut b);
    auth(&mut b, AuthCommand::UserDelete(UserDeleteRequest { name: "alice".into() })).unwrap();
    for _ in 0..3 {
        b.put("x", "y");
    }
    let chunks: Vec<Vec<u8>> = b.store.snapshot(G).unwrap().map(|c| c.unwrap()).collect();
    a.store.install_snapshot(G, chunks.into_iter()).unwrap();
    assert!(a.store.auth(G).user("alice").is_none());
    assert_eq!(a.store.simple_token_user(G, "tok", ttl), None, "a deleted user's token outlived the snapshot");
}
