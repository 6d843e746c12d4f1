//! Process tests of state every member must agree on besides the keyspace: lease timers and
//! alarms, across members, leader failover and restarts.
//!
//! - a lease granted through one member and revoked through another, or expired, is gone on
//!   the leader elected after the old one is killed: keep-alive answers TTL 0 (etcdctl:
//!   "requested lease not found"), time-to-live answers -1;
//! - a keep-alive of a revoked lease answers as etcd 3.5.1 does (TTL 0 on the stream);
//! - a NOSPACE alarm raised by the quota is on every member, survives a restart of all of
//!   them, refuses writes on every member, and a disarm through one member clears it on all.
//!
//! Each test is bounded (well under 90 s).

use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use plinth_tests::members::Members;
use plinth_tests::Server;

/// How long a cluster gets to elect a leader (at start, after a restart or a kill).
const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a member gets to apply what another member's request committed.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-member quota of the alarm test: a few dozen of its values fill it.
const SMALL_QUOTA_BYTES: u64 = 64 * 1024;
/// Value size of the alarm test's puts.
const VALUE_BYTES: usize = 4 * 1024;
/// Puts the alarm test makes at most before the quota must have refused one.
const PUTS_MAX: usize = 64;
/// etcd's text for a write refused by the quota or a raised NOSPACE alarm.
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

async fn connect(endpoint: &str) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(8));
    Client::connect([endpoint], Some(opts)).await
}

async fn must_connect(endpoint: &str) -> Client {
    connect(endpoint).await.unwrap_or_else(|e| panic!("connect {endpoint}: {e}"))
}

/// One keep-alive of lease `id` through `client`: the TTL the server answers. etcd-client
/// reads the stream's first answer itself and turns a TTL <= 0 into "lease not found"; that
/// is reported as 0 here, and a live lease's TTL is read from a second keep-alive.
async fn keep_alive_once(client: &mut Client, id: i64) -> i64 {
    let (mut keeper, mut stream) = match client.lease_keep_alive(id).await {
        Ok(opened) => opened,
        Err(etcd_client::Error::LeaseKeepAliveError(e)) if e == "lease not found" => return 0,
        Err(e) => panic!("keep-alive of {id:x}: {e}"),
    };
    keeper.keep_alive().await.expect("send keep-alive");
    let resp = tokio::time::timeout(Duration::from_secs(8), stream.message())
        .await
        .expect("keep-alive answered in time")
        .expect("keep-alive stream error")
        .expect("keep-alive stream ended without an answer");
    assert_eq!(resp.id(), id);
    resp.ttl()
}

#[test]
fn a_lease_revoked_through_another_member_is_gone_on_the_next_leader() {
    lease_ended_through_the_log_is_gone_on_the_next_leader(LeaseEnd::Revoked);
}

#[test]
fn a_lease_that_expired_is_gone_on_the_next_leader() {
    lease_ended_through_the_log_is_gone_on_the_next_leader(LeaseEnd::Expired);
}

/// How the lease of [`lease_ended_through_the_log_is_gone_on_the_next_leader`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseEnd {
    /// Revoked by a client through the leader.
    Revoked,
    /// Expired: the leader's lessor revokes it through the log once its TTL passes.
    Expired,
}

/// A lease granted through a follower ends (`end`); every member drops its timer as the
/// revoke applies, so after the leader is killed, neither the new leader nor the other
/// member renews it: keep-alive answers TTL 0 and time-to-live -1.
fn lease_ended_through_the_log_is_gone_on_the_next_leader(end: LeaseEnd) {
    let rt = runtime();
    let mut c = Members::start(3, &[]);
    rt.block_on(async {
        let leader = c.wait_leader(LEADER_TIMEOUT).await;
        let follower = (leader + 1) % 3;
        // Granted through a follower, ended by the leader: neither follower is the member
        // that revoked it, so only the log tells them about it.
        let mut via_follower = must_connect(&c.members[follower].endpoint()).await;
        let ttl = if end == LeaseEnd::Expired { 2 } else { 60 };
        let id = via_follower.lease_grant(ttl, None).await.expect("grant").id();
        via_follower.put("held", "v", Some(etcd_client::PutOptions::new().with_lease(id))).await.expect("put");
        if end == LeaseEnd::Revoked {
            let mut via_leader = must_connect(&c.members[leader].endpoint()).await;
            via_leader.lease_revoke(id).await.expect("revoke");
        }
        // Both followers have applied the revoke once the key is gone from their view (an
        // expiry takes the TTL first).
        for i in (0..3).filter(|i| *i != leader) {
            let mut client = must_connect(&c.members[i].endpoint()).await;
            let r = client.get("held", Some(GetOptions::new().with_serializable())).await;
            let deadline = Instant::now() + APPLY_TIMEOUT + Duration::from_secs(ttl as u64);
            let mut r = r.expect("serializable get");
            while r.count() != 0 {
                assert!(Instant::now() < deadline, "{} never applied the revoke", c.members[i].name);
                tokio::time::sleep(Duration::from_millis(50)).await;
                r = client.get("held", Some(GetOptions::new().with_serializable())).await.expect("get");
            }
        }
        c.members[leader].kill9();
        let new_leader = c.wait_leader(LEADER_TIMEOUT).await;
        assert_ne!(new_leader, leader);
        let other = (0..3).find(|i| *i != leader && *i != new_leader).expect("a third member");
        for i in [new_leader, other] {
            let name = &c.members[i].name;
            let mut client = must_connect(&c.members[i].endpoint()).await;
            let ttl = keep_alive_once(&mut client, id).await;
            assert_eq!(ttl, 0, "keep-alive of the revoked lease {id:x} through {name} renewed it for {ttl} s");
            let left = client.lease_time_to_live(id, None).await.expect("time to live").ttl();
            assert_eq!(left, -1, "time-to-live of the revoked lease through {name}");
            // etcdctl reports a zero TTL as etcd's "lease not found".
            let out = c.members[i].ctl(&["lease", "keep-alive", "--once", &format!("{id:x}")]);
            assert!(
                out.stderr.contains("etcdserver: requested lease not found"),
                "etcdctl lease keep-alive --once through {name}: exit {:?}, stdout {:?}, stderr {:?}",
                out.code,
                out.stdout,
                out.stderr
            );
        }
        // A lease granted after the failover is still renewed by the new leader.
        let mut client = must_connect(&c.members[other].endpoint()).await;
        let fresh = client.lease_grant(60, None).await.expect("grant after failover").id();
        assert!(keep_alive_once(&mut client, fresh).await > 0);
    });
}

/// The same script on etcd 3.5.1 and on plinth: a keep-alive of a revoked lease answers
/// TTL 0 on the stream (etcd's `leaseKeepAlive` turns `ErrLeaseNotFound` into TTL 0; the
/// client library then reports "requested lease not found").
#[test]
fn keep_alive_of_a_revoked_lease_answers_like_etcd() {
    let rt = runtime();
    let mut seen = Vec::new();
    for server in [Server::etcd(), Server::plinth()] {
        let outcome = rt.block_on(async {
            let mut client = must_connect(&server.endpoint()).await;
            let id = client.lease_grant(60, None).await.expect("grant").id();
            client.lease_revoke(id).await.expect("revoke");
            let ttl = keep_alive_once(&mut client, id).await;
            let left = client.lease_time_to_live(id, None).await.expect("time to live").ttl();
            let out = server.ctl(&["lease", "keep-alive", "--once", &format!("{id:x}")]);
            (ttl, left, out.code, out.stdout, out.stderr)
        });
        seen.push((server.kind(), outcome));
    }
    let (etcd, plinth) = (&seen[0].1, &seen[1].1);
    assert_eq!(etcd.0, 0, "etcd's keep-alive TTL of a revoked lease");
    assert!(etcd.4.contains("etcdserver: requested lease not found"), "etcd: {etcd:?}");
    assert_eq!(plinth, etcd, "(keep-alive TTL, time-to-live TTL, etcdctl keep-alive --once exit/stdout/stderr)");
}

/// `etcdctl alarm list` on member `i`, once it shows `want` (bounded wait).
fn wait_alarm_list(c: &Members, i: usize, want: &str) {
    let deadline = Instant::now() + APPLY_TIMEOUT;
    loop {
        let out = c.members[i].ctl(&["alarm", "list"]);
        if out.code == Some(0) && out.stdout.trim() == want.trim() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: alarm list {:?} (stderr {:?}), want {want:?}\n{}",
            c.members[i].name,
            out.stdout,
            out.stderr,
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_nospace_alarm_is_replicated_survives_restarts_and_disarms_everywhere() {
    let rt = runtime();
    let quota = SMALL_QUOTA_BYTES.to_string();
    let mut c = Members::start(3, &["--quota-backend-bytes", &quota]);
    rt.block_on(async { c.wait_leader(LEADER_TIMEOUT).await });
    // Fill the quota through member 0 until a put is refused.
    let value = "x".repeat(VALUE_BYTES);
    let raised_by = rt.block_on(async {
        let mut client = must_connect(&c.members[0].endpoint()).await;
        let me = client.status().await.expect("status").header().expect("header").member_id();
        for n in 0..PUTS_MAX {
            match client.put(format!("fill{n}"), value.as_str(), None).await {
                Ok(_) => continue,
                Err(e) => {
                    assert!(e.to_string().contains(NO_SPACE), "put {n} failed otherwise: {e}");
                    return me;
                }
            }
        }
        panic!("{PUTS_MAX} puts of {VALUE_BYTES} bytes fit in a quota of {SMALL_QUOTA_BYTES} bytes");
    });
    let raised = format!("memberID:{raised_by} alarm:NOSPACE");
    for i in 0..3 {
        wait_alarm_list(&c, i, &raised);
    }
    // Every member restarts: the alarm is in their stores, not in their memory.
    for i in 0..3 {
        c.members[i].kill9();
    }
    for i in 0..3 {
        c.spawn(i);
    }
    rt.block_on(async { c.wait_leader(LEADER_TIMEOUT).await });
    for i in 0..3 {
        wait_alarm_list(&c, i, &raised);
        let out = c.members[i].ctl(&["put", "small", "v"]);
        assert!(out.stderr.contains(NO_SPACE), "{}: put under NOSPACE: {out:?}", c.members[i].name);
        let out = c.members[i].ctl(&["lease", "grant", "60"]);
        assert!(out.stderr.contains(NO_SPACE), "{}: lease grant under NOSPACE: {out:?}", c.members[i].name);
    }
    // Free the space (deletes and compaction run under NOSPACE), then disarm through one member.
    let out = c.members[1].ctl(&["del", "fill", "--prefix"]);
    assert_eq!(out.code, Some(0), "delete under NOSPACE: {out:?}");
    let rev = rt.block_on(async {
        let mut client = must_connect(&c.members[1].endpoint()).await;
        let rev = client.get("fill", None).await.expect("get").header().expect("header").revision();
        client.compact(rev, None).await.expect("compact");
        rev
    });
    assert!(rev > 1);
    // The quota has room again, but the raised alarm still refuses writes everywhere
    // until it is disarmed (etcd's capped applier).
    for i in 0..3 {
        let out = c.members[i].ctl(&["put", "small", "v"]);
        assert!(out.stderr.contains(NO_SPACE), "{}: put with NOSPACE raised: {out:?}", c.members[i].name);
    }
    let out = c.members[2].ctl(&["alarm", "disarm"]);
    assert_eq!((out.code, out.stdout.trim()), (Some(0), raised.as_str()), "alarm disarm: {out:?}");
    // A second disarm finds nothing raised.
    let out = c.members[2].ctl(&["alarm", "disarm"]);
    assert_eq!((out.code, out.stdout.trim()), (Some(0), ""), "second alarm disarm: {out:?}");
    for i in 0..3 {
        wait_alarm_list(&c, i, "");
        let out = c.members[i].ctl(&["put", &format!("after{i}"), "v"]);
        assert_eq!(out.code, Some(0), "{}: put after disarm: {out:?}", c.members[i].name);
    }
}
