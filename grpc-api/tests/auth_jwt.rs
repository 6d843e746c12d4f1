//! `--auth-token jwt,...` end to end: a member signs JWT tokens with its private key and
//! honours them (user and permissions), a token signed by another key is refused with
//! `etcdserver: invalid auth token`, and a token issued before an auth change is refused
//! with `etcdserver: revision of auth store is old`.

mod common;

use common::{get_with_token, options, token, Server};
use etcd_client::{Client, Permission};

/// An ES256 key pair made with rcgen under `dir`: (private PEM path, public PEM path).
fn es256_keys(dir: &std::path::Path, name: &str) -> (String, String) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&private, pair.serialize_pem()).unwrap();
    std::fs::write(&public, pair.public_key_pem()).unwrap();
    (private.display().to_string(), public.display().to_string())
}

#[tokio::test]
async fn jwt_tokens_are_signed_checked_and_tied_to_the_auth_revision() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = es256_keys(keys.path(), "member");
    let flag = format!("jwt,pub-key={public},priv-key={private},sign-method=ES256,ttl=5m");
    let server = Server::start(&["--auth-token", &flag, "--bcrypt-cost", "4"]);
    let mut admin = server.client().await;
    admin.put("app/x", "1", None).await.unwrap();
    admin.put("secret", "s", None).await.unwrap();
    let mut auth = admin.auth_client();
    auth.user_add("root", "rootpw", None).await.unwrap();
    auth.user_grant_role("root", "root").await.unwrap();
    auth.role_add("app").await.unwrap();
    auth.role_grant_permission("app", Permission::read_write("app/").with_prefix()).await.unwrap();
    auth.user_add("alice", "alicepw", None).await.unwrap();
    auth.user_grant_role("alice", "app").await.unwrap();
    auth.auth_enable().await.unwrap();

    let ep = server.endpoint();
    let alice = token(&ep, "alice", "alicepw").await;
    assert_eq!(alice.split('.').count(), 3, "a JWT (header.claims.signature): {alice}");
    get_with_token(&ep, &alice, "app/x").await.expect("alice reads her prefix");
    let denied = get_with_token(&ep, &alice, "secret").await.unwrap_err();
    assert_eq!(denied.message(), "etcdserver: permission denied");

    // A token signed with another key is not this cluster's.
    let other = tempfile::tempdir().unwrap();
    let (other_private, _) = es256_keys(other.path(), "other");
    let forged = {
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(other_private).unwrap()).unwrap();
        let claims = serde_json::json!({"username": "root", "revision": 100, "exp": 4_000_000_000u64});
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), &claims, &key).unwrap()
    };
    let refused = get_with_token(&ep, &forged, "secret").await.unwrap_err();
    assert_eq!(refused.message(), "etcdserver: invalid auth token");

    // An auth change makes the tokens issued before it old; a new token works.
    let root = Client::connect([ep.as_str()], Some(options().with_user("root", "rootpw"))).await.unwrap();
    root.auth_client().role_add("other").await.unwrap();
    let old = get_with_token(&ep, &alice, "app/x").await.unwrap_err();
    assert_eq!(old.message(), "etcdserver: revision of auth store is old");
    let fresh = token(&ep, "alice", "alicepw").await;
    get_with_token(&ep, &fresh, "app/x").await.expect("a token of the current revision");
}
