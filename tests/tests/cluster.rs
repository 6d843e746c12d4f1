//! Process tests of replication: three real `plinth serve` members on loopback, bootstrapped
//! with etcd's `--initial-cluster` flags.
//!
//! - every member serves writes (followers forward them) and linearizable reads (ReadIndex
//!   on followers), and `MemberList` reports all three with their client URLs;
//! - SIGKILL of the leader during a write load: writes continue on the survivors within a
//!   few election timeouts; the killed member restarts and catches up;
//! - at the end every acknowledged write is present on every member, and all members have
//!   the same `HashKV` at the same revision and the same full range;
//! - the shared harness ([`plinth_tests::members`]) gives a member's own flags to it alone.
//!
//! Each test is bounded (well under 60 s).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use plinth_tests::members::{add_member_when_healthy, remove_member_when_healthy, Members};

/// The members under test: three, with the harness's Raft timing (elections after
/// 0.5–1 s of silence).
const MEMBERS: usize = 3;
/// How long a cluster gets to elect its first leader.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest acceptable write outage after the leader is killed (several election timeouts).
const FAILOVER_MAX: Duration = Duration::from_secs(8);
/// How long a restarted member gets to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(15);

async fn connect(endpoint: &str) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(8));
    Client::connect([endpoint], Some(opts)).await
}

async fn must_connect(endpoint: &str) -> Client {
    connect(endpoint).await.unwrap_or_else(|e| panic!("connect {endpoint}: {e}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// key → (value, mod_revision) of a full range.
async fn full_range(c: &mut Client) -> (i64, BTreeMap<String, (String, i64)>) {
    let r = c.get("", Some(GetOptions::new().with_all_keys())).await.expect("full range");
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                (String::from_utf8_lossy(kv.value()).into_owned(), kv.mod_revision()),
            )
        })
        .collect();
    (r.header().map_or(0, |h| h.revision()), kvs)
}

#[test]
fn every_member_serves_writes_and_linearizable_reads() {
    let rt = runtime();
    let c = Members::start(MEMBERS, &[]);
    rt.block_on(async {
        c.wait_leader(START_TIMEOUT).await;
        let mut clients = Vec::new();
        for m in &c.members {
            clients.push(must_connect(&m.endpoint()).await);
        }
        // A write through each member is visible at once to a linearizable read on every
        // other member (ReadIndex on followers).
        for i in 0..9 {
            let key = format!("k{i}");
            let put = clients[i % 3].put(key.as_str(), format!("v{i}"), None).await.expect("put");
            let rev = put.header().unwrap().revision();
            for (j, reader) in clients.iter_mut().enumerate() {
                let got = reader.get(key.as_str(), None).await.unwrap_or_else(|e| panic!("get on member {j}: {e}"));
                let kv = got.kvs().first().unwrap_or_else(|| panic!("member {j} misses {key} written at {rev}"));
                assert_eq!(kv.value(), format!("v{i}").as_bytes());
                assert_eq!(kv.mod_revision(), rev);
            }
        }
        // MemberList on every member: all three, with the client URLs each announced.
        let want: BTreeMap<String, String> = c.members.iter().map(|m| (m.name.clone(), m.endpoint())).collect();
        for client in &mut clients {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let list = client.member_list().await.expect("member list");
                let got: BTreeMap<String, String> = list
                    .members()
                    .iter()
                    .map(|m| (m.name().to_owned(), m.client_urls().first().cloned().unwrap_or_default()))
                    .collect();
                if got == want {
                    break;
                }
                assert!(Instant::now() < deadline, "member list {got:?}, want {want:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
}

/// Checks that every acknowledged write is in the leader's full range, and that every
/// running member catches up to the leader's revision with the same range and HashKV.
async fn verify_members(c: &Members, leader: usize, acked: &[Ack]) {
    let mut leader_client = must_connect(&c.members[leader].endpoint()).await;
    let (revision, reference) = full_range(&mut leader_client).await;
    for (k, v, rev) in acked {
        assert_eq!(reference.get(k), Some(&(v.clone(), *rev)), "acknowledged put of {k} at {rev} missing or changed");
    }
    let hash = leader_client.hash_kv(revision).await.expect("hash kv on the leader").hash();
    for m in c.members.iter().filter(|m| m.is_running()) {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        let mut client = loop {
            match connect(&m.endpoint()).await {
                Ok(client) => break client,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{} unreachable: {e}\n{}", m.name, m.log_tail(30));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        // A linearizable range on the member waits until it has applied everything
        // committed so far; retried while a restarted member is still joining.
        let (rev, kvs) = loop {
            match tokio::time::timeout(
                Duration::from_secs(5),
                client.get("", Some(GetOptions::new().with_all_keys().with_count_only())),
            )
            .await
            {
                Ok(Ok(r)) if r.header().map_or(0, |h| h.revision()) >= revision => break full_range(&mut client).await,
                _ => {
                    assert!(Instant::now() < deadline, "{} did not catch up\n{}", m.name, m.log_tail(30));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(rev, revision, "{}: revision after the load", m.name);
        assert_eq!(kvs, reference, "{}: full range differs from the leader's", m.name);
        let h = client.hash_kv(revision).await.unwrap_or_else(|e| panic!("hash kv on {}: {e}", m.name));
        assert_eq!(h.hash(), hash, "{}: HashKV at revision {revision}", m.name);
    }
    eprintln!("{} acknowledged writes, final revision {revision}, identical on all members", acked.len());
}

/// One acknowledged put: key, value, revision.
type Ack = (String, String, i64);

/// Puts unique keys through `endpoint` until `stop`; records every acknowledged put with the
/// time it was acknowledged. Errors (the member is dead, no leader, timeouts) are retried
/// with a new key: an unacknowledged put may or may not be applied.
async fn writer(endpoint: String, prefix: String, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<(Ack, Instant)>>>) {
    let mut client = None;
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            client = connect(&endpoint).await.ok();
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        let c = client.as_mut().expect("connected above");
        let key = format!("{prefix}/{i:05}");
        let value = format!("v{i}");
        i += 1;
        match tokio::time::timeout(Duration::from_secs(3), c.put(key.as_str(), value.as_str(), None)).await {
            Ok(Ok(r)) => acked.lock().unwrap().push(((key, value, r.header().unwrap().revision()), Instant::now())),
            Ok(Err(_)) | Err(_) => {
                client = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// One writer per member, each recording its acknowledged puts with their time.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(Ack, Instant)>>>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(rt: &tokio::runtime::Runtime, c: &Members) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<(Ack, Instant)>>> = Arc::default();
        let writers = c
            .members
            .iter()
            .map(|m| rt.spawn(writer(m.endpoint(), format!("w-{}", m.name), stop.clone(), acked.clone())))
            .collect();
        Load { stop, acked, writers }
    }

    /// Waits until `n` puts were acknowledged after `since`; returns how long that took, or
    /// `limit` if it did not happen by then.
    fn wait(&self, n: usize, since: Instant, limit: Duration) -> Duration {
        let start = Instant::now();
        while self.acked.lock().unwrap().iter().filter(|(_, at)| *at > since).count() < n {
            if start.elapsed() > limit {
                return limit;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        start.elapsed()
    }

    /// Stops the writers and returns every acknowledged put.
    fn finish(self, rt: &tokio::runtime::Runtime) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.writers {
            rt.block_on(w).expect("writer task");
        }
        let acked = self.acked.lock().unwrap();
        acked.iter().map(|(a, _)| a.clone()).collect()
    }
}

#[test]
fn leader_sigkill_under_load_loses_no_acknowledged_write() {
    let rt = runtime();
    let mut c = Members::start(MEMBERS, &[]);
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));

    let load = Load::start(&rt, &c);
    let t0 = Instant::now();
    assert!(load.wait(60, t0, Duration::from_secs(15)) < Duration::from_secs(15), "writes before the kill");

    // SIGKILL the leader mid-load; the survivors elect a new one and writes go on.
    let killed_at = Instant::now();
    c.members[leader].kill9();
    let outage = load.wait(10, killed_at, FAILOVER_MAX);
    assert!(outage < FAILOVER_MAX, "no write acknowledged within {FAILOVER_MAX:?} of killing the leader\n{}", c.logs());
    let new_leader = rt.block_on(c.wait_leader(FAILOVER_MAX));
    assert_ne!(new_leader, leader);
    eprintln!("writes resumed {outage:?} after the leader was killed");

    // The killed member restarts on its data dir and catches up while writes go on.
    c.spawn(leader);
    let restarted_at = Instant::now();
    load.wait(20, restarted_at, Duration::from_secs(10));
    let acked = load.finish(&rt);

    rt.block_on(verify_members(&c, new_leader, &acked));
}

/// Flags that make the log short: a member more than a few entries behind needs a snapshot.
/// How long the log line of an installed snapshot may trail the data it installed.
const SNAPSHOT_LOG_TIMEOUT: Duration = Duration::from_secs(10);

const SHORT_LOG: [&str; 4] =
    ["--experimental-snapshot-catchup-entries", "10", "--experimental-log-purge-interval-ms", "200"];

/// Waits until `f` returns `Some`, retrying every 100 ms until `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, c: &Members, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Status code and message of a failed request.
fn error_text(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

/// etcd's strict reconfiguration checks on a cluster whose second voter never started: its
/// promotion (not in sync), a third voter, and the removal of an id that is no member, answer etcd 3.5.1's `Unknown`
/// "not enough started members" (checked with etcdctl against etcd 3.5.1), before anything
/// waits for the leader the cluster no longer has, and a learner "unhealthy cluster"; a bad
/// URL is refused first, and the members come back in id order.
#[test]
fn reconfiguration_without_enough_started_members_answers_as_etcd() {
    const NOT_ENOUGH: &str = "Unknown: etcdserver: re-configuration failed due to not enough started members";
    let rt = runtime();
    let c = Members::start(1, &[]);
    rt.block_on(c.wait_leader(START_TIMEOUT));
    rt.block_on(async {
        let mut client = must_connect(&c.members[0].endpoint()).await;
        // An update of no member is "member not found" whatever its URLs (etcd 3.5.1 parses
        // them at no point; Plinth checks them once it has found the member).
        let unknown = client.member_update(0x1234, ["not a url".to_owned()]).await.expect_err("update no member");
        assert_eq!(error_text(unknown), "NotFound: etcdserver: member not found");
        let own = client.member_list().await.expect("member list").members()[0].id();
        let bad = client.member_update(own, ["not a url".to_owned()]).await.expect_err("update to a bad URL");
        assert_eq!(error_text(bad), "InvalidArgument: etcdserver: given member URLs are invalid");
        // One member may take a second voter (etcd's exception for a restore); it never starts.
        let added = client.member_add(["http://127.0.0.1:1".to_owned()], None).await.expect("a second voter");
        let ids: Vec<u64> = added.member_list().iter().map(|m| m.id()).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids[0] < ids[1], "members not in id order: {ids:x?}");
        // etcd's leader checks first whether Raft's progress of the member has caught up, a
        // voter's as a learner's, and only then whether it is a learner (etcd-client's
        // `cluster` example against etcd 3.5.1). Asked at once, while the leader still leads.
        let new_voter = added.member().expect("added member").id();
        let promote = client.member_promote(new_voter).await.expect_err("promote a voter that never started");
        assert_eq!(
            error_text(promote),
            "FailedPrecondition: etcdserver: can only promote a learner member which is in sync with leader"
        );
        let third = client.member_add(["http://127.0.0.1:2".to_owned()], None).await.expect_err("a third voter");
        assert_eq!(error_text(third), NOT_ENOUGH);
        // A learner skips the started-members check but not the connectivity one: the voter
        // that never started is not connected (etcd's `mayAddMember`).
        let learner = Some(etcd_client::MemberAddOptions::new().with_is_learner());
        let unreachable =
            client.member_add(["http://127.0.0.1:3".to_owned()], learner).await.expect_err("a learner, a voter down");
        assert_eq!(error_text(unreachable), "Unavailable: etcdserver: unhealthy cluster");
        // The URL in use is checked only after the strict check, as etcd checks it when it applies.
        let taken = client.member_add([c.members[0].peer_url()], None).await.expect_err("a voter on a used URL");
        assert_eq!(error_text(taken), NOT_ENOUGH);
        let bad = client.member_add(["not a url".to_owned()], None).await.expect_err("a bad URL");
        assert_eq!(error_text(bad), "InvalidArgument: etcdserver: given member URLs are invalid");
        let unknown = client.member_remove(0x1234).await.expect_err("the removal of no member");
        assert_eq!(error_text(unknown), NOT_ENOUGH);
    });
}

/// etcd counts a peer as connected for its strict reconfiguration checks only once the peer's
/// stream has been up for 5 s (`HealthInterval`): on etcd 3.5.1, a learner's `member add` and a
/// follower's `member remove` asked just after three members started both answer `Unavailable`
/// "etcdserver: unhealthy cluster", and the add goes through 5 s later (checked with etcdctl).
/// No stream can be up before its members started, so the first add accepted here comes at
/// least 5 s after the start.
#[test]
fn reconfiguration_waits_until_peers_have_been_connected_for_etcds_health_interval() {
    const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
    const UNHEALTHY: &str = "Unavailable: etcdserver: unhealthy cluster";
    let rt = runtime();
    let started = Instant::now();
    let c = Members::start(MEMBERS, &[]);
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));
    rt.block_on(async {
        let mut client = must_connect(&c.members[leader].endpoint()).await;
        let follower = (0..MEMBERS).find(|i| *i != leader).expect("a follower");
        let follower_id = {
            let mut f = must_connect(&c.members[follower].endpoint()).await;
            f.status().await.expect("status").header().expect("header").member_id()
        };
        let asked = Instant::now();
        let removal = client.member_remove(follower_id).await.map(|_| ()).map_err(error_text);
        if asked.duration_since(started) < HEALTH_INTERVAL - Duration::from_secs(1) {
            assert_eq!(removal, Err(UNHEALTHY.to_owned()), "a removal asked {:?} after the start", asked - started);
        } else {
            eprintln!(
                "the cluster took {:?} to elect a leader: the removal's refusal was not checked",
                asked - started
            );
            return;
        }
        let learner = || Some(etcd_client::MemberAddOptions::new().with_is_learner());
        let deadline = started + HEALTH_INTERVAL + START_TIMEOUT;
        loop {
            match client.member_add(["http://127.0.0.1:1".to_owned()], learner()).await.map_err(error_text) {
                Ok(_) => break,
                Err(e) => {
                    assert_eq!(e, UNHEALTHY, "a learner's add while the streams are young");
                    assert!(Instant::now() < deadline, "no add accepted within {:?} of the start", deadline - started);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let accepted = started.elapsed();
        assert!(accepted >= HEALTH_INTERVAL, "a learner's add accepted {accepted:?} after the members started");
    });
}

/// A member added at run time gets etcd's id: the SHA-1 of its peer URLs and the Unix second
/// of the request. So, as on etcd 3.5.1 (checked with etcdctl), the same URLs added again in
/// the same second answer "member ID already exist" (sic), and once that member is removed,
/// "member not found" (its id is a removed one); a second later, "Peer URLs already exists".
/// Each round starts just after a second begins and is retried with new URLs if it did not
/// end within that second.
#[test]
fn a_member_added_twice_within_a_second_has_etcds_id_answers() {
    let rt = runtime();
    let c = Members::start(1, &[]);
    rt.block_on(c.wait_leader(START_TIMEOUT));
    rt.block_on(async {
        let mut client = must_connect(&c.members[0].endpoint()).await;
        let learner = || Some(etcd_client::MemberAddOptions::new().with_is_learner());
        let unix = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
        for round in 0..5u16 {
            let url = format!("http://127.0.0.1:{}", 7 + round);
            tokio::time::sleep(Duration::from_secs_f64(1.0 - unix().fract() + 0.005)).await;
            let second = unix().floor();
            let added = client.member_add([url.clone()], learner()).await.expect("member add");
            let id = added.member().expect("added member").id();
            let again = client.member_add([url.clone()], learner()).await.map(|_| ()).map_err(error_text);
            client.member_remove(id).await.expect("member remove");
            let removed = client.member_add([url.clone()], learner()).await.map(|r| r.member().map(|m| m.id()));
            if unix().floor() != second {
                // The round crossed a second: its ids are not the same; try again.
                if let Ok(Some(other)) = removed {
                    client.member_remove(other).await.expect("member remove");
                }
                continue;
            }
            assert_eq!(again, Err("FailedPrecondition: etcdserver: member ID already exist".to_owned()));
            assert_eq!(removed.map_err(error_text), Err("NotFound: etcdserver: member not found".to_owned()));
            // In the next second the id is new: the URL is free again, and then it is what
            // is refused.
            tokio::time::sleep(Duration::from_secs_f64(1.0 - unix().fract() + 0.005)).await;
            client.member_add([url.clone()], learner()).await.expect("the URL is free again");
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let later = client.member_add([url], learner()).await.expect_err("the URL in use");
            assert_eq!(error_text(later), "FailedPrecondition: etcdserver: Peer URLs already exists");
            return;
        }
        panic!("no round of three membership calls ended within one second");
    });
}

#[test]
fn learner_joins_by_snapshot_is_promoted_and_a_member_is_removed() {
    let rt = runtime();
    let mut c = Members::start(MEMBERS, &SHORT_LOG);
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));
    let mut acked: Vec<Ack> = Vec::new();
    rt.block_on(async {
        let mut client = must_connect(&c.members[leader].endpoint()).await;
        for i in 0..200 {
            let (k, v) = (format!("before/{i:03}"), format!("v{i}"));
            let r = client.put(k.as_str(), v.as_str(), None).await.expect("put");
            acked.push((k, v, r.header().unwrap().revision()));
        }
        // Let the purge task drop the log below the last few entries.
        tokio::time::sleep(Duration::from_millis(800)).await;
    });

    // etcdctl's order: add the member as a learner, then start it with `existing`.
    let n4 = c.add_member();
    let n4_id = rt.block_on(async {
        let mut client = must_connect(&c.members[0].endpoint()).await;
        // Asked again while the members' streams are younger than etcd's health interval.
        let added = add_member_when_healthy(&mut client, vec![c.members[n4].peer_url()], true).await;
        let id = added.member().expect("added member").id();
        assert!(added.member_list().iter().any(|m| m.id() == id && m.is_learner()));
        // etcd lists members by id, whatever order they joined in.
        let ids: Vec<u64> = added.member_list().iter().map(|m| m.id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "members not in id order: {ids:x?}");
        // etcd's checks, with etcd's errors.
        let dup = client.member_add([c.members[0].peer_url()], None).await.expect_err("duplicate peer URL");
        assert_eq!(error_text(dup), "FailedPrecondition: etcdserver: Peer URLs already exists");
        let second = client
            .member_add(["http://127.0.0.1:1".to_owned()], Some(etcd_client::MemberAddOptions::new().with_is_learner()))
            .await
            .expect_err("a second learner");
        assert_eq!(error_text(second), "FailedPrecondition: etcdserver: too many learner members in cluster");
        let voter = client.member_promote(added.header().unwrap().member_id()).await.expect_err("promote a voter");
        assert_eq!(error_text(voter), "FailedPrecondition: etcdserver: can only promote a learner member");
        id
    });
    c.spawn(n4);
    rt.block_on(async {
        // The learner came in by snapshot (the log it needed is gone) and serves serializable
        // reads of everything written before it joined.
        let endpoint = c.members[n4].endpoint();
        eventually("the learner catches up", CATCH_UP_TIMEOUT, &c, || {
            let endpoint = endpoint.clone();
            async move {
                let mut l = connect(&endpoint).await.ok()?;
                let r = l.get("before/", Some(GetOptions::new().with_prefix().with_serializable())).await.ok()?;
                (r.kvs().len() == 200).then_some(())
            }
        })
        .await;
        // The snapshot's data is readable as soon as it is written; its log line follows the
        // flush that makes it durable.
        assert!(
            c.members[n4].log_shows("installed a snapshot", SNAPSHOT_LOG_TIMEOUT),
            "the learner should have needed a snapshot:\n{}",
            c.members[n4].log()
        );
        let mut learner = must_connect(&endpoint).await;
        let refused = learner.put("x", "y", None).await.expect_err("a write on a learner");
        let not_for_learner = "Unavailable: etcdserver: rpc not supported for learner";
        assert_eq!(error_text(refused), not_for_learner);
        let status = learner.status().await.expect("status on the learner");
        assert!(status.is_learner());
        // A learner serves Status, serializable ranges and Snapshot only (etcd's rule): not
        // the member list, leases, watches, nor its own promotion.
        let list = learner.member_list().await.expect_err("member list on a learner");
        assert_eq!(error_text(list), not_for_learner);
        let leases = learner.leases().await.expect_err("lease list on a learner");
        assert_eq!(error_text(leases), not_for_learner);
        let watch = learner.watch("before/", None).await.expect_err("a watch on a learner");
        assert_eq!(error_text(watch), not_for_learner);
        let itself = learner.member_promote(n4_id).await.expect_err("a learner promoting itself");
        assert_eq!(error_text(itself), not_for_learner);

        // Promote it (through a member that may not be the leader: it forwards).
        let promoted = eventually("the learner is promoted", CATCH_UP_TIMEOUT, &c, || {
            let endpoint = c.members[0].endpoint();
            async move {
                let mut client = connect(&endpoint).await.ok()?;
                client.member_promote(n4_id).await.ok()
            }
        })
        .await;
        assert!(promoted.members().iter().all(|m| !m.is_learner()));
        assert_eq!(promoted.members().len(), 4);
        // The promotion is committed when member 0 answers; the new voter learns it when it
        // applies the entry, and until then it still refuses what a learner may not do.
        eventually("the promoted member applies its promotion", CATCH_UP_TIMEOUT, &c, || {
            let endpoint = endpoint.clone();
            async move {
                let mut l = connect(&endpoint).await.ok()?;
                (!l.status().await.ok()?.is_learner()).then_some(())
            }
        })
        .await;
    });

    // Remove a voter that is not the leader: it stops serving; the other three go on.
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));
    let victim = (0..3).find(|i| *i != leader).expect("a follower");
    rt.block_on(async {
        let victim_id = {
            let mut v = must_connect(&c.members[victim].endpoint()).await;
            v.status().await.expect("status").header().unwrap().member_id()
        };
        let mut client = must_connect(&c.members[n4].endpoint()).await;
        let removed = remove_member_when_healthy(&mut client, victim_id).await;
        assert_eq!(removed.members().len(), 3);
        assert!(removed.members().iter().all(|m| m.id() != victim_id));
        for i in 0..50 {
            let (k, v) = (format!("after/{i:03}"), format!("v{i}"));
            let r = client.put(k.as_str(), v.as_str(), None).await.expect("put after the removal");
            acked.push((k, v, r.header().unwrap().revision()));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.members[victim].exited() {
        assert!(Instant::now() < deadline, "the removed member still runs\n{}", c.members[victim].log_tail(20));
        std::thread::sleep(Duration::from_millis(100));
    }
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));
    rt.block_on(verify_members(&c, leader, &acked));
}

/// A cluster of [`MEMBERS`] whose members but one (a follower) are paused, once that one
/// knows no leader: the cluster, the paused members and the lone member's endpoint.
fn leaderless_member(rt: &tokio::runtime::Runtime) -> (Members, Vec<usize>, String) {
    let (c, others, endpoint, ()) = leaderless_member_after(rt, |_| async {});
    (c, others, endpoint)
}

/// [`leaderless_member`], running `prepare` on the lone member's endpoint while the cluster
/// still has its leader.
/// `etcd_server_leader_changes_seen_total` of the member at `endpoint`.
fn leader_changes_seen(endpoint: &str) -> u64 {
    let (_, metrics) = plinth_tests::cli::http_get(endpoint, "/metrics");
    let line = metrics.lines().find_map(|l| l.strip_prefix("etcd_server_leader_changes_seen_total "));
    line.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no leader changes metric in:\n{metrics}"))
}

fn leaderless_member_after<T, F, Fut>(rt: &tokio::runtime::Runtime, prepare: F) -> (Members, Vec<usize>, String, T)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut c = Members::start(MEMBERS, &[]);
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));
    let alone = (0..MEMBERS).find(|i| *i != leader).expect("a follower");
    let prepared = rt.block_on(prepare(c.members[alone].endpoint()));
    let others: Vec<usize> = (0..MEMBERS).filter(|i| *i != alone).collect();
    for i in &others {
        c.members[*i].pause();
    }
    let endpoint = c.members[alone].endpoint();
    rt.block_on(async {
        // The lone member's election timer fires and, without a quorum, it stays leaderless.
        eventually("the lone member knows no leader", CATCH_UP_TIMEOUT, &c, || {
            let endpoint = endpoint.clone();
            async move {
                let mut client = connect(&endpoint).await.ok()?;
                (client.status().await.ok()?.leader() == 0).then_some(())
            }
        })
        .await;
    });
    (c, others, endpoint, prepared)
}

/// A write to a member that knows no leader waits for one, as etcd's does (raft takes no
/// proposals then, and etcd answers only at its request timeout), instead of failing at once:
/// it is served once an election ends. Only `hasleader` requests are refused early.
#[test]
fn a_write_while_no_leader_is_known_waits_for_the_election() {
    let rt = runtime();
    let (mut c, others, endpoint) = leaderless_member(&rt);
    let mut client = rt.block_on(must_connect(&endpoint));
    let put = rt.spawn(async move { client.put("waited", "for a leader", None).await });
    std::thread::sleep(Duration::from_millis(700));
    assert!(!put.is_finished(), "a write with no leader known was answered at once: {:?}", rt.block_on(put));
    for i in &others {
        c.members[*i].resume();
    }
    let answer = rt.block_on(put).expect("the put task");
    let revision = answer.expect("the write is served once a leader is elected").header().unwrap().revision();
    rt.block_on(leader_has(&c, "waited", b"for a leader", revision));
}

/// The leader the running members agree on serves `key` with `value`, written at `revision`.
async fn leader_has(c: &Members, key: &str, value: &[u8], revision: i64) {
    let leader = c.wait_leader(START_TIMEOUT).await;
    let mut client = must_connect(&c.members[leader].endpoint()).await;
    let got = client.get(key, None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), value);
    assert_eq!(got.kvs()[0].mod_revision(), revision);
}

/// A cluster of [`MEMBERS`] that took a write through a follower and then slept on every
/// member: the cluster, its leader, that follower and the follower's endpoint.
fn asleep_cluster(rt: &tokio::runtime::Runtime) -> (Members, usize, usize, String) {
    let c = Members::start(MEMBERS, &[]);
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));
    let follower = (0..MEMBERS).find(|i| *i != leader).expect("a follower");
    let endpoint = c.members[follower].endpoint();
    rt.block_on(async { must_connect(&endpoint).await.put("before", "the sleep", None).await.expect("put") });
    wait_asleep(&c);
    (c, leader, follower, endpoint)
}

/// Waits until the group sleeps on every member (idle for two election timeouts).
fn wait_asleep(c: &Members) {
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    while !c.members.iter().all(|m| {
        let (_, metrics) = plinth_tests::cli::http_get(&m.endpoint(), "/metrics");
        metrics.lines().any(|l| l == "plinth_raft_groups_awake 0")
    }) {
        assert!(Instant::now() < deadline, "the group did not sleep on every member");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An idle group sleeps on every member, then its leader is killed. A write through a
/// follower, which still names the dead leader, is held until the follower hears a leader, and
/// the one the survivors elect serves it (forwarded at once, it would be lost with the dead
/// leader and fail at the request timeout).
#[test]
fn a_write_through_a_sleeping_follower_after_its_leader_died_is_served() {
    let rt = runtime();
    let (mut c, leader, _, endpoint) = asleep_cluster(&rt);
    c.members[leader].kill9();
    let started = Instant::now();
    let put = rt.block_on(async { must_connect(&endpoint).await.put("after", "the leader died", None).await });
    let took = started.elapsed();
    let revision = put.expect("the write is served by the new leader").header().unwrap().revision();
    assert!(took < FAILOVER_MAX, "served after {took:?}");
    rt.block_on(leader_has(&c, "after", b"the leader died", revision));
}

/// The path of KV Put, for [`raw_unary`].
const PUT: &str = "/etcdserverpb.KV/Put";

/// etcd's answer when a call's context ends first (`Unknown`, Go's context error text).
const CONTEXT_DEADLINE: (i32, &str) = (2, "context deadline exceeded");

/// gRPC's code `Unavailable`, as a raw status number.
const UNAVAILABLE: i32 = 14;

/// One unary gRPC call over a bare HTTP/2 connection, with `grpc-timeout` if given: the
/// status and message the server answered, and when. (tonic's client would end the call at
/// the deadline on its own side.)
async fn raw_unary(
    endpoint: &str,
    path: &str,
    message: &impl prost::Message,
    timeout: Option<&str>,
) -> (i32, String, Duration) {
    let addr = endpoint.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut h2, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = timeout {
        request = request.header("grpc-timeout", t);
    }
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
    message.encode(&mut body).expect("encode");
    let started = Instant::now();
    let (response, mut send) = h2.send_request(request.body(()).expect("request"), false).expect("send");
    send.send_data(bytes::Bytes::from(body), true).expect("send body");
    let response = tokio::time::timeout(Duration::from_secs(20), response).await.expect("answered").expect("response");
    let (head, mut body) = response.into_parts();
    // A gRPC error comes as headers only ("trailers-only"), or as trailers after the data.
    let mut fields = head.headers.clone();
    if !body.is_end_stream() {
        while let Some(data) = body.data().await {
            data.expect("data");
        }
        if let Some(trailers) = body.trailers().await.expect("trailers") {
            fields.extend(trailers);
        }
    }
    let elapsed = started.elapsed();
    // tonic's reading of the status headers (it decodes `grpc-message`'s percent-encoding).
    match tonic::Status::from_header_map(&fields) {
        Some(status) => (status.code() as i32, status.message().to_owned(), elapsed),
        None => (-1, String::new(), elapsed),
    }
}

/// A learner's addition on a member whose peers are paused: etcd 3.5.1's answer, the context's
/// error once `at_least` has passed, or, once this member has noticed that its peers stopped
/// answering HTTP/2 keepalives (3–4 s after the pause), etcd's strict check at once:
/// `Unavailable` "etcdserver: unhealthy cluster". etcd 3.5.1 answers that too when a voter is
/// unreachable, but it keeps counting a paused peer's open connection as active: etcdctl's
/// `member add --learner` 0.5, 3.5 and 12 s after two of three members got SIGSTOP all ended at
/// its 3 s command timeout.
fn learner_add_answered(answer: &(i32, String, Duration), at_least: Duration, what: &str) {
    let (status, text, elapsed) = answer;
    if (*status, text.as_str()) == (UNAVAILABLE, "etcdserver: unhealthy cluster") {
        assert!(*elapsed < Duration::from_secs(1), "the learner's addition refused after {elapsed:?}, {what}");
    } else {
        assert_eq!((*status, text.as_str()), CONTEXT_DEADLINE, "the learner's addition {what}");
        assert!(*elapsed >= at_least, "the learner's addition answered after {elapsed:?}, {what}");
    }
}

/// A member that knows no leader answers as etcd 3.5.1 does (the same calls, sent to a
/// 3-member etcd 3.5.1 with two members stopped, got these answers). At the client's deadline
/// (`grpc-timeout`), a linearizable read and a write end with the context's error, `Unknown`
/// "context deadline exceeded", and a lease's time to live, which waits for a leader to
/// forward it to, with `no leader`. Without a deadline the same waits end at the request
/// timeout: the read with `Unavailable` "request timed out", the write with the context's
/// error again (etcd's raft held the proposal while it knew no leader), the lease call with
/// `no leader`. Listing alarms or users goes through Raft in etcd and answers as the write
/// does, and so does adding a learner (etcd's `configure` waits on the context; etcdctl's
/// `member add --learner` against such an etcd ended at its command timeout; Plinth refuses it
/// at once after it notices its paused peers, see [`learner_add_answered`]); listing leases
/// needs no leader. A promotion, which etcd checks on its leader only, waits for one and then
/// answers `no leader`, as the lease call does (etcdctl's `member promote` of a learner against
/// such an etcd: `etcdserver: no leader` after 7 s, etcd's request timeout). An update of an id
/// that is no member waits as the write does: etcd finds the id unknown only when the change
/// applies (etcdctl's `member update 1234` against such an etcd ended at its command timeout,
/// and with a leader it answers "member not found").
#[test]
fn a_leaderless_member_answers_at_the_clients_deadline_and_at_its_own() {
    use grpc_api::pb::etcdserverpb::{
        AlarmRequest, AuthUserListRequest, AuthenticateRequest, LeaseLeasesRequest, LeaseTimeToLiveRequest,
        MemberAddRequest, MemberPromoteRequest, MemberUpdateRequest, PutRequest, RangeRequest,
    };
    const RANGE: &str = "/etcdserverpb.KV/Range";
    const TTL: &str = "/etcdserverpb.Lease/LeaseTimeToLive";
    const LEASES: &str = "/etcdserverpb.Lease/LeaseLeases";
    const ALARMS: &str = "/etcdserverpb.Maintenance/Alarm";
    const USERS: &str = "/etcdserverpb.Auth/UserList";
    const MEMBER_ADD: &str = "/etcdserverpb.Cluster/MemberAdd";
    const PROMOTE: &str = "/etcdserverpb.Cluster/MemberPromote";
    const UPDATE: &str = "/etcdserverpb.Cluster/MemberUpdate";
    const AUTHENTICATE: &str = "/etcdserverpb.Auth/Authenticate";
    let rt = runtime();
    let (mut c, others, endpoint, (lease, changes_before)) = leaderless_member_after(&rt, |endpoint| async move {
        let lease = must_connect(&endpoint).await.lease_grant(600, None).await.expect("grant").id();
        (lease, leader_changes_seen(&endpoint))
    });
    // Losing the leader is no leader change: etcd counts changes to a known leader only.
    assert_eq!(leader_changes_seen(&endpoint), changes_before, "leader changes after the leader was lost");
    rt.block_on(async {
        let range = RangeRequest { key: b"k".to_vec().into(), ..Default::default() };
        let put = PutRequest { key: b"k".to_vec().into(), value: b"v".to_vec().into(), ..Default::default() };
        let ttl = LeaseTimeToLiveRequest { id: lease, keys: false };
        // Listing alarms (action GET): etcd sends it through Raft.
        let alarms = AlarmRequest::default();
        let users = AuthUserListRequest::default();
        let learner = MemberAddRequest { peer_ur_ls: vec!["http://127.0.0.1:1".into()], is_learner: true };
        // No such member: etcd looks the member up on its leader only.
        let promote = MemberPromoteRequest { id: 0x1234 };
        // No such member either: etcd finds that when it applies the update, so it waits for
        // a leader first.
        let update = MemberUpdateRequest { id: 0x1234, peer_ur_ls: vec!["http://127.0.0.1:5555".into()] };
        // etcd's Authenticate takes a linearizable read point before it looks at the auth
        // store (which here has auth disabled), so it waits as a read does.
        let login = AuthenticateRequest { name: "root".into(), password: "pw".into() };
        let no_leader = (UNAVAILABLE, "etcdserver: no leader");
        // Status answers at once and names the missing leader among its errors, as etcd's.
        let status = must_connect(&endpoint).await.status().await.expect("status");
        assert_eq!((status.leader(), status.errors()), (0, &["etcdserver: no leader".to_string()][..]));
        // Listing leases reads this member's own, as etcd's lessor does: no leader needed.
        let (status, text, elapsed) = raw_unary(&endpoint, LEASES, &LeaseLeasesRequest {}, None).await;
        assert_eq!(status, 0, "lease list on a leaderless member: {text}");
        assert!(elapsed < Duration::from_secs(2), "lease list answered after {elapsed:?}");
        // The client's deadline.
        for (path, answer, want) in [
            (RANGE, raw_unary(&endpoint, RANGE, &range, Some("400m")).await, CONTEXT_DEADLINE),
            (PUT, raw_unary(&endpoint, PUT, &put, Some("400m")).await, CONTEXT_DEADLINE),
            (TTL, raw_unary(&endpoint, TTL, &ttl, Some("400m")).await, no_leader),
            (ALARMS, raw_unary(&endpoint, ALARMS, &alarms, Some("400m")).await, CONTEXT_DEADLINE),
            (PROMOTE, raw_unary(&endpoint, PROMOTE, &promote, Some("400m")).await, no_leader),
            (UPDATE, raw_unary(&endpoint, UPDATE, &update, Some("400m")).await, CONTEXT_DEADLINE),
            (AUTHENTICATE, raw_unary(&endpoint, AUTHENTICATE, &login, Some("400m")).await, CONTEXT_DEADLINE),
        ] {
            let (status, text, elapsed) = answer;
            assert_eq!((status, text.as_str()), want, "{path} at the client's deadline");
            assert!(
                elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(3),
                "{path} answered after {elapsed:?}"
            );
        }
        let add = raw_unary(&endpoint, MEMBER_ADD, &learner, Some("400m")).await;
        learner_add_answered(&add, Duration::from_millis(350), "at the client's deadline");
        // The member's own request timeout (5 s and two election timeouts), all at once.
        let (read, write, lease, alarm, users, add, promoted, logged_in, updated) = tokio::join!(
            raw_unary(&endpoint, RANGE, &range, None),
            raw_unary(&endpoint, PUT, &put, None),
            raw_unary(&endpoint, TTL, &ttl, None),
            raw_unary(&endpoint, ALARMS, &alarms, None),
            raw_unary(&endpoint, USERS, &users, None),
            raw_unary(&endpoint, MEMBER_ADD, &learner, None),
            raw_unary(&endpoint, PROMOTE, &promote, None),
            raw_unary(&endpoint, AUTHENTICATE, &login, None),
            raw_unary(&endpoint, UPDATE, &update, None)
        );
        assert_eq!((read.0, read.1.as_str()), (UNAVAILABLE, "etcdserver: request timed out"), "the read");
        assert_eq!((write.0, write.1.as_str()), CONTEXT_DEADLINE, "the write");
        assert_eq!((lease.0, lease.1.as_str()), no_leader, "the lease's time to live");
        assert_eq!((alarm.0, alarm.1.as_str()), CONTEXT_DEADLINE, "the alarm list");
        assert_eq!((users.0, users.1.as_str()), CONTEXT_DEADLINE, "the user list");
        learner_add_answered(&add, Duration::from_secs(5), "at the request timeout");
        assert_eq!((promoted.0, promoted.1.as_str()), no_leader, "the learner's promotion");
        assert_eq!((logged_in.0, logged_in.1.as_str()), (UNAVAILABLE, "etcdserver: request timed out"), "the login");
        assert_eq!((updated.0, updated.1.as_str()), CONTEXT_DEADLINE, "the update of no member");
        for elapsed in [read.2, write.2, lease.2, alarm.2, users.2, promoted.2, logged_in.2, updated.2] {
            assert!(elapsed >= Duration::from_secs(5), "answered after {elapsed:?}, before the request timeout");
        }
    });
    for i in &others {
        c.members[*i].resume();
    }
}

/// A follower whose group slept, and whose peers are then stopped, still names its old leader.
/// It holds a write until it hears a leader, which never comes, and answers as a leaderless
/// etcd 3.5.1 member does: `Unknown` "context deadline exceeded", at the client's deadline
/// and at its own request timeout. (Forwarded at once to the stopped leader, the write was
/// lost and answered "request timed out".)
#[test]
fn a_sleeping_follower_cut_off_from_its_peers_answers_a_write_as_a_leaderless_etcd() {
    use grpc_api::pb::etcdserverpb::PutRequest;
    let rt = runtime();
    let (mut c, _, alone, endpoint) = asleep_cluster(&rt);
    let others: Vec<usize> = (0..MEMBERS).filter(|i| *i != alone).collect();
    for i in &others {
        c.members[*i].pause();
    }
    rt.block_on(async {
        let put = PutRequest { key: b"k".to_vec().into(), value: b"v".to_vec().into(), ..Default::default() };
        let (at_deadline, at_timeout) =
            tokio::join!(raw_unary(&endpoint, PUT, &put, Some("400m")), raw_unary(&endpoint, PUT, &put, None));
        let (status, text, elapsed) = at_deadline;
        assert_eq!((status, text.as_str()), CONTEXT_DEADLINE, "at the client's deadline");
        assert!(elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(3), "after {elapsed:?}");
        let (status, text, elapsed) = at_timeout;
        assert_eq!((status, text.as_str()), CONTEXT_DEADLINE, "at the request timeout");
        assert!(elapsed >= Duration::from_secs(5), "answered after {elapsed:?}, before the request timeout");
    });
    for i in &others {
        c.members[*i].resume();
    }
}

#[test]
fn isolated_leader_steps_down_and_a_lagging_member_gets_a_snapshot() {
    let rt = runtime();
    let mut c = Members::start(MEMBERS, &SHORT_LOG);
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));

    let load = Load::start(&rt, &c);
    let t0 = Instant::now();
    assert!(load.wait(30, t0, Duration::from_secs(15)) < Duration::from_secs(15), "writes before the partition");

    // The leader is cut off from everyone (its process is stopped): the others elect a new
    // leader and writes go on; when it comes back it steps down and catches up.
    c.members[leader].pause();
    let cut_at = Instant::now();
    let outage = load.wait(10, cut_at, FAILOVER_MAX);
    assert!(outage < FAILOVER_MAX, "no write within {FAILOVER_MAX:?} of isolating the leader\n{}", c.logs());
    eprintln!("writes resumed {outage:?} after the leader was isolated");
    let new_leader = rt.block_on(c.wait_leader(FAILOVER_MAX));
    assert_ne!(new_leader, leader);
    c.members[leader].resume();
    rt.block_on(c.wait_leader(FAILOVER_MAX));

    // A follower down while the log moves far past the entries it has comes back through a
    // snapshot. (It is killed rather than stopped: a stopped process would find the appends
    // sent meanwhile still waiting in its socket buffers.)
    let follower = (0..3).find(|i| *i != new_leader && *i != leader).expect("a third member");
    c.members[follower].kill9();
    let down_at = Instant::now();
    load.wait(150, down_at, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(600));
    c.spawn(follower);
    let resumed_at = Instant::now();
    load.wait(30, resumed_at, Duration::from_secs(15));
    let acked = load.finish(&rt);
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));
    rt.block_on(verify_members(&c, leader, &acked));
    assert!(
        c.members[follower].log_shows("installed a snapshot", SNAPSHOT_LOG_TIMEOUT),
        "the lagging follower should have needed a snapshot:\n{}",
        c.members[follower].log()
    );
}

/// A member killed right after it installed a snapshot from the leader (the store holds the
/// snapshot and Raft has truncated its log below it) starts again and catches up: the
/// installed state was durable before the log was cut, so the store's applied index is not
/// left below the log's first entry.
#[test]
fn a_member_killed_right_after_installing_a_snapshot_restarts() {
    let rt = runtime();
    let mut c = Members::start(MEMBERS, &SHORT_LOG);
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));
    let load = Load::start(&rt, &c);
    let follower = (leader + 1) % MEMBERS;
    c.members[follower].kill9();
    let down_at = Instant::now();
    load.wait(150, down_at, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(600));
    let log_before = c.members[follower].log().len();
    c.spawn(follower);
    // Killed within a few milliseconds of the install's log line, which follows the store's
    // install and precedes Raft's truncation by about as much.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.members[follower].log()[log_before..].contains("installed a snapshot") {
        assert!(Instant::now() < deadline, "no snapshot installed:\n{}", c.members[follower].log_tail(30));
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(5));
    c.members[follower].kill9();
    let log_before = c.members[follower].log().len();
    c.spawn(follower);
    let resumed_at = Instant::now();
    load.wait(30, resumed_at, Duration::from_secs(15));
    let acked = load.finish(&rt);
    assert!(
        c.members[follower].is_running(),
        "the member did not start again after being killed right after a snapshot install:\n{}",
        &c.members[follower].log()[log_before..]
    );
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));
    rt.block_on(verify_members(&c, leader, &acked));
}

/// The member id each member reports for itself, by member index.
async fn member_ids(c: &Members) -> Vec<u64> {
    let mut ids = Vec::new();
    for m in &c.members {
        let mut client = must_connect(&m.endpoint()).await;
        let s = client.status().await.unwrap_or_else(|e| panic!("status of {}: {e}", m.name));
        ids.push(s.header().expect("status has a header").member_id());
    }
    ids
}

#[test]
fn move_leader_makes_the_target_the_leader_on_every_member() {
    let rt = runtime();
    let c = Members::start(MEMBERS, &[]);
    rt.block_on(async {
        let leader = c.wait_leader(START_TIMEOUT).await;
        let ids = member_ids(&c).await;
        let target = (leader + 1) % 3;
        let mut on_leader = must_connect(&c.members[leader].endpoint()).await;
        let mut on_follower = must_connect(&c.members[target].endpoint()).await;
        on_leader.put("before", "1", None).await.expect("put before the move");

        // etcd's refusals: asked of a follower, and a target that is no member.
        let e = on_follower.move_leader(ids[leader]).await.expect_err("a follower cannot move the leader");
        assert_eq!(error_text(e), "FailedPrecondition: etcdserver: not leader");
        let e = on_leader.move_leader(0x0bad).await.expect_err("no such member");
        assert_eq!(error_text(e), "FailedPrecondition: etcdserver: bad leader transferee");
        // Moving the leader to itself is done at once.
        on_leader.move_leader(ids[leader]).await.expect("move to the leader itself");
        assert_eq!(on_leader.status().await.expect("status").leader(), ids[leader]);

        // The answer comes once the target leads, as the old leader itself sees it.
        on_leader.move_leader(ids[target]).await.expect("move leader");
        let seen = on_leader.status().await.expect("status of the old leader").leader();
        assert_eq!(seen, ids[target], "MoveLeader answered while the old leader names {seen:x}\n{}", c.logs());
        // Every member's `endpoint status` names the target.
        let agreed = tokio::time::timeout(Duration::from_secs(10), c.wait_leader(Duration::from_secs(10)))
            .await
            .expect("members agree on a leader");
        assert_eq!(agreed, target, "members agree on {} instead of the target\n{}", c.members[agreed].name, c.logs());
        // The cluster goes on: a write through the old leader is forwarded to the new one.
        let put = on_leader.put("after", "2", None).await.expect("put after the move");
        let mut new_leader = must_connect(&c.members[target].endpoint()).await;
        let got = new_leader.get("after", None).await.expect("get on the new leader");
        assert_eq!(got.kvs().first().map(|kv| kv.mod_revision()), Some(put.header().unwrap().revision()));
    });
}

/// The harness gives a member's own flags to that member only, from its next start on: a
/// member restarted with a flag `plinth serve` refuses exits naming it, the others go on.
#[test]
fn per_member_flags_reach_only_that_member() {
    let rt = runtime();
    let mut c = Members::start(MEMBERS, &[]);
    rt.block_on(c.wait_leader(START_TIMEOUT));
    let odd = MEMBERS - 1;
    c.members[odd].kill9();
    c.members[odd].flags = vec!["--no-such-flag".to_owned()];
    c.spawn(odd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.members[odd].exited() {
        assert!(Instant::now() < deadline, "a member with an unknown flag still runs\n{}", c.members[odd].log_tail(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.members[odd].log().contains("--no-such-flag"), "{}", c.members[odd].log_tail(20));
    for m in &mut c.members[..odd] {
        assert!(!m.exited(), "{} stopped though the flag was not its own\n{}", m.name, m.log_tail(20));
    }
    rt.block_on(c.wait_leader(START_TIMEOUT));
}

/// `--experimental-initial-corrupt-check`: a member whose keyspace differs from its peers'
/// at the same revision refuses to start, as etcd's does ("found data inconsistency with
/// peers"); with data that agrees, the same flag lets it start and serve.
#[test]
fn the_initial_corruption_check_stops_a_member_whose_data_differs() {
    let rt = runtime();
    let mut c = Members::start(MEMBERS, &[]);
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));
    let odd = (leader + 1) % MEMBERS;
    rt.block_on(async {
        let mut client = must_connect(&c.members[leader].endpoint()).await;
        client.put("a", "1", None).await.expect("put");
    });
    // Agreeing data: the check passes and the member serves.
    c.members[odd].kill9();
    c.members[odd].flags = vec!["--experimental-initial-corrupt-check=true".to_owned()];
    c.spawn(odd);
    rt.block_on(async {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            if let Ok(mut client) = connect(&c.members[odd].endpoint()).await {
                if let Ok(r) = client.get("a", Some(GetOptions::new().with_serializable())).await {
                    if r.kvs().first().map(|kv| kv.value()) == Some(&b"1"[..]) {
                        break;
                    }
                }
            }
            assert!(Instant::now() < deadline, "the checked member never served\n{}", c.members[odd].log_tail(30));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    assert!(c.members[odd].log().contains("initial corruption checking passed"), "{}", c.members[odd].log_tail(30));

    // Differing data at the same revision: the member's data dir is replaced by a restore of
    // another server's history (`a` = 2 at revision 2) under the member's own identity.
    let other = plinth_tests::cluster::Server::plinth();
    assert_eq!(other.ctl(&["put", "a", "2"]).code, Some(0));
    let work = tempfile::tempdir().unwrap();
    let snap = work.path().join("other.db");
    let saved = other.ctl(&["snapshot", "save", snap.to_str().unwrap()]);
    assert_eq!(saved.code, Some(0), "{}", saved.stderr);
    c.members[odd].kill9();
    let data = c.members[odd].dir().join("data");
    std::fs::remove_dir_all(&data).expect("remove the member's data");
    let initial: Vec<String> = c.members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect();
    let m = &c.members[odd];
    let restored = std::process::Command::new(plinth_tests::cluster::plinth_bin())
        .arg("restore")
        .arg("--from-etcd-snapshot")
        .arg(&snap)
        .arg("--data-dir")
        .arg(&data)
        .args(["--name", &m.name, "--initial-cluster", &initial.join(",")])
        .args(["--initial-advertise-peer-urls", &m.peer_url(), "--advertise-client-urls", &m.endpoint()])
        .args(["--initial-cluster-token", "members-test"])
        .output()
        .expect("plinth restore");
    assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
    c.spawn(odd);
    let status = c.members[odd].wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a member with differing data started\n{}",
        c.members[odd].log_tail(30)
    );
    assert!(c.members[odd].log().contains("found data inconsistency with peers"), "{}", c.members[odd].log_tail(30));
    rt.block_on(c.wait_leader(START_TIMEOUT));
}
