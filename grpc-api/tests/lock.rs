//! etcd's `v3lockpb.Lock` service through the Rust `etcd-client` crate, which calls it for
//! `lock()` and `unlock()`.

mod common;

use std::time::Duration;

use common::Server;
use etcd_client::{Client, LockOptions};

/// Locks `name` with `lease` on a connection of its own, so a waiting call holds no other.
async fn lock_on(endpoint: String, name: &'static str, lease: i64) -> Result<Vec<u8>, etcd_client::Error> {
    let mut client = Client::connect([endpoint], None).await.expect("connect");
    let resp = client.lock(name, Some(LockOptions::new().with_lease(lease))).await?;
    Ok(resp.key().to_vec())
}

#[tokio::test]
async fn a_lock_is_held_by_one_lease_at_a_time_in_arrival_order() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let a = c.lease_grant(60, None).await.unwrap().id();
    let b = c.lease_grant(60, None).await.unwrap().id();
    let e = c.lease_grant(60, None).await.unwrap().id();

    // Uncontended: held at once, under `<name>/<lease in hex>`.
    let held = c.lock("job", Some(LockOptions::new().with_lease(a))).await.unwrap();
    assert_eq!(held.key(), format!("job/{a:x}").as_bytes());
    // The same lease asks again: it keeps its key and its place.
    let again = c.lock("job", Some(LockOptions::new().with_lease(a))).await.unwrap();
    assert_eq!(again.key(), held.key());

    // A second lease waits until the first unlocks.
    let mut second = tokio::spawn(lock_on(server.endpoint(), "job", b));
    assert!(tokio::time::timeout(Duration::from_millis(500), &mut second).await.is_err(), "b locked while a held");
    let unlocked = c.unlock(held.key()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), second).await.expect("b never locked").unwrap().unwrap();
    assert_eq!(got, format!("job/{b:x}").into_bytes());
    assert!(unlocked.header().unwrap().revision() > 0);

    // The holder's lease ends (revoked here, expired alike): its key goes with it, and the
    // next waiter holds the lock.
    let mut third = tokio::spawn(lock_on(server.endpoint(), "job", e));
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut third).await.is_err(), "e locked while b held");
    c.lease_revoke(b).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), third).await.expect("e never locked").unwrap().unwrap();
    assert_eq!(got, format!("job/{e:x}").into_bytes());
}

#[tokio::test]
async fn an_abandoned_waiter_leaves_no_key_and_a_lease_of_zero_gets_one() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let holder = c.lease_grant(60, None).await.unwrap().id();
    let quitter = c.lease_grant(60, None).await.unwrap().id();
    let held = c.lock("res", Some(LockOptions::new().with_lease(holder))).await.unwrap();

    // A waiter that gives up (its call dropped at the client's timeout) deletes its key, so
    // it never holds the lock later.
    let waited = tokio::time::timeout(Duration::from_millis(400), lock_on(server.endpoint(), "res", quitter)).await;
    assert!(waited.is_err(), "the waiter locked while the lock was held");
    let left: Vec<Vec<u8>> = common::settled_queue(&mut c, "res/", 1).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, vec![held.key().to_vec()], "the abandoned waiter's key stayed");

    // Lease 0: the server grants one (etcd's session TTL, 60 s) and names the key after it.
    let mine = c.lock("other", None).await.unwrap();
    let key = String::from_utf8(mine.key().to_vec()).unwrap();
    let lease = i64::from_str_radix(key.strip_prefix("other/").expect("key under the name"), 16).unwrap();
    let ttl = c.lease_time_to_live(lease, None).await.unwrap();
    assert!(ttl.ttl() > 50 && ttl.ttl() <= 60, "granted ttl {}", ttl.ttl());
    let kv = c.get(key.as_str(), None).await.unwrap();
    assert_eq!(kv.kvs()[0].lease(), lease);

    // A lease that does not exist: etcd's error for a put with it, sent as `Unknown` as etcd's
    // service (through its embedded client) sends it.
    match c.lock("res", Some(LockOptions::new().with_lease(0x1234))).await.unwrap_err() {
        etcd_client::Error::GRpcStatus(s) => {
            assert_eq!((s.code(), s.message()), (tonic::Code::Unknown, "etcdserver: requested lease not found"));
        }
        other => panic!("not a gRPC status: {other}"),
    }
}
