//! etcd's `v3electionpb.Election` service through the Rust `etcd-client` crate, which calls it
//! for `campaign`, `proclaim`, `leader`, `observe` and `resign`.

mod common;

use std::time::Duration;

use common::Server;
use etcd_client::{Client, LeaderKey, ProclaimOptions, ResignOptions};

/// Campaigns on a connection of its own, so a waiting call holds no other.
async fn campaign_on(endpoint: String, name: &'static str, value: &'static str, lease: i64) -> LeaderKey {
    let mut client = Client::connect([endpoint], None).await.expect("connect");
    let resp = client.campaign(name, value, lease).await.expect("campaign");
    resp.leader().expect("a leader key").clone()
}

/// The status code and message of a failed call.
fn status(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a gRPC status: {other}"),
    }
}

#[tokio::test]
async fn leadership_passes_in_campaign_order_and_observers_see_every_value() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let a = c.lease_grant(60, None).await.unwrap().id();
    let b = c.lease_grant(60, None).await.unwrap().id();

    // No campaign yet: etcd's error for the leader, as gRPC sends a plain Go error.
    let none = status(c.leader("svc").await.unwrap_err());
    assert_eq!(none, (tonic::Code::Unknown, "election: no leader".to_string()));

    // An observer started before any leader sees the first one. As with etcd, the call is
    // answered only then (gRPC-Go sends the headers with the first message).
    let mut observing = c.clone();
    let observer = tokio::spawn(async move { observing.observe("svc").await.unwrap() });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!observer.is_finished(), "observe answered before there was a leader");

    // Uncontended: `a` leads at once, under `<name>/<lease in hex>`, with its value.
    let won = c.campaign("svc", "a-1", a).await.unwrap();
    let leader = won.leader().unwrap().clone();
    assert_eq!((leader.name(), leader.key(), leader.lease()), (&b"svc"[..], format!("svc/{a:x}").as_bytes(), a));
    assert_eq!(leader.rev(), won.header().unwrap().revision(), "created by the campaign's own txn");
    let mut observer = observer.await.unwrap();
    let seen = observer.message().await.unwrap().unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"a-1");
    assert_eq!(seen.header().unwrap().revision(), leader.rev());
    let current = c.leader("svc").await.unwrap();
    assert_eq!((current.kv().unwrap().key(), current.kv().unwrap().value()), (leader.key(), &b"a-1"[..]));

    // `b` waits behind `a`.
    let mut second = tokio::spawn(campaign_on(server.endpoint(), "svc", "b-1", b));
    assert!(tokio::time::timeout(Duration::from_millis(500), &mut second).await.is_err(), "b led while a led");

    // The leader proclaims: the leader's value changes, and observers see it.
    let proclaimed = c.proclaim("a-2", Some(ProclaimOptions::new().with_leader(leader.clone()))).await.unwrap();
    assert_eq!(c.leader("svc").await.unwrap().kv().unwrap().value(), b"a-2");
    let seen = observer.message().await.unwrap().unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"a-2");
    assert_eq!(seen.header().unwrap().revision(), proclaimed.header().unwrap().revision());

    // `a` resigns: `b` leads, and the observer moves to it.
    c.resign(Some(ResignOptions::new().with_leader(leader.clone()))).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), second).await.expect("b never led").unwrap();
    assert_eq!(next.key(), format!("svc/{b:x}").as_bytes());
    let seen = observer.message().await.unwrap().unwrap();
    assert_eq!((seen.kv().unwrap().key(), seen.kv().unwrap().value()), (next.key(), &b"b-1"[..]));

    // The old leader key no longer leads: proclaiming with it is refused, resigning is no error
    // and deletes nothing.
    let refused = status(c.proclaim("late", Some(ProclaimOptions::new().with_leader(leader))).await.unwrap_err());
    assert_eq!(refused, (tonic::Code::Unknown, "election: not leader".to_string()));
    let stale = LeaderKey::new().with_name("svc").with_key(next.key()).with_rev(next.rev() - 1).with_lease(b);
    c.resign(Some(ResignOptions::new().with_leader(stale))).await.unwrap();
    assert_eq!(common::settled_queue(&mut c, "svc/", 1).await, vec![(next.key().to_vec(), b"b-1".to_vec())]);

    // The leader's lease ends: no leader.
    c.lease_revoke(b).await.unwrap();
    let none = status(c.leader("svc").await.unwrap_err());
    assert_eq!(none.1, "election: no leader");
}

#[tokio::test]
async fn a_campaign_keeps_its_place_and_an_abandoned_one_leaves_no_key() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let a = c.lease_grant(60, None).await.unwrap().id();
    let quitter = c.lease_grant(60, None).await.unwrap().id();
    let first = c.campaign("job", "one", a).await.unwrap().leader().unwrap().clone();

    // The same lease campaigns again with a new value: same key and revision, value proclaimed.
    let again = c.campaign("job", "two", a).await.unwrap().leader().unwrap().clone();
    assert_eq!((again.key(), again.rev()), (first.key(), first.rev()));
    assert_eq!(c.leader("job").await.unwrap().kv().unwrap().value(), b"two");

    // A contender that gives up (its call dropped at the client's timeout) deletes its key, so
    // it never leads later.
    let waited = tokio::time::timeout(Duration::from_millis(400), campaign_on(server.endpoint(), "job", "q", quitter));
    assert!(waited.await.is_err(), "the contender led while another led");
    let left = common::settled_queue(&mut c, "job/", 1).await;
    assert_eq!(left, vec![(first.key().to_vec(), b"two".to_vec())], "the abandoned contender's key stayed");

    // Lease 0: the server grants one (etcd's session TTL, 60 s) and names the key after it.
    let own = c.campaign("solo", "v", 0).await.unwrap().leader().unwrap().clone();
    let ttl = c.lease_time_to_live(own.lease(), None).await.unwrap();
    assert!(ttl.ttl() > 50 && ttl.ttl() <= 60, "granted ttl {}", ttl.ttl());
    assert_eq!(own.key(), format!("solo/{:x}", own.lease()).as_bytes());

    // A request without its leader key: etcd's server error.
    let missing = status(c.proclaim("x", None).await.unwrap_err());
    assert_eq!(missing, (tonic::Code::Unknown, "\"leader\" field must be provided".to_string()));
    let missing = status(c.resign(None).await.unwrap_err());
    assert_eq!(missing.1, "\"leader\" field must be provided");

    // A lease that does not exist: etcd's error for a put with it, sent as `Unknown` as etcd's
    // service (through its embedded client) sends it.
    let refused = status(c.campaign("job", "v", 0x1234).await.unwrap_err());
    assert_eq!(refused, (tonic::Code::Unknown, "etcdserver: requested lease not found".to_string()));
}
