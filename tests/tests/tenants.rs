//! Tenants: each its own Raft group, reached on its own port (`--tenant-client-port-base`),
//! administered with `plinth tenant ...`.
//!
//! - isolation by attack, between two tenants and the default tenant of one member: ranges
//!   over everything (keys-only and count-only too), a watch on everything from revision 1,
//!   txn compares on the other tenant's keys, the other tenant's lease ids (revoke, keep-alive,
//!   time-to-live), compaction, HashKV, alarms and auth users: nothing of the other tenant is
//!   visible or affected, and revisions advance independently;
//! - a tenant over its quota gets NOSPACE while its neighbours keep writing;
//! - a deleted tenant's port closes and its name is free again; tenants survive a restart;
//! - metrics per tenant (requests by method and code, keys, watchers, size, apply latency),
//!   gone with the tenant;
//! - a tenant that writes rarely keeps no old WAL segments (its catch-up entries are bounded
//!   to the newest segments), and nothing dropped was needed after a SIGKILL;
//! - three members with 50 tenants: concurrent writes in every tenant through every
//!   member, one member killed with SIGKILL and restarted, then every tenant's keys,
//!   revision and HashKV identical on every member.
//!
//! Each test is bounded (well under 90 s).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, WatchOptions};
use plinth_tests::cli::connect_eventually;
use plinth_tests::cluster::plinth_bin;
use plinth_tests::members::{add_member_when_healthy, remove_member_when_healthy, Members};
use plinth_tests::ports;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

async fn connect(endpoint: &str) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(8));
    Client::connect([endpoint], Some(opts)).await
}

/// Whether a server answers `Status` at `endpoint` (etcd-client connects lazily).
async fn answers(endpoint: &str) -> bool {
    match connect(endpoint).await {
        Ok(mut c) => c.status().await.is_ok(),
        Err(_) => false,
    }
}

fn run_tenant_cli(endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::new(plinth_bin())
        .arg("tenant")
        .args(args)
        .args(["--endpoints", endpoint])
        .output()
        .expect("run plinth tenant")
}

/// `plinth tenant <args> --endpoints <endpoint>`: stdout, or the panic with stderr.
fn tenant_cli(endpoint: &str, args: &[&str]) -> String {
    let out = run_tenant_cli(endpoint, args);
    assert!(
        out.status.success(),
        "plinth tenant {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn tenant_cli_fails(endpoint: &str, args: &[&str]) -> String {
    let out = run_tenant_cli(endpoint, args);
    assert!(!out.status.success(), "plinth tenant {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Every key and value of a client's keyspace, with each key's create and mod revision.
async fn everything(c: &mut Client) -> BTreeMap<Vec<u8>, (Vec<u8>, i64, i64)> {
    let resp = c.get(vec![0], Some(GetOptions::new().with_from_key())).await.expect("range everything");
    resp.kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), (kv.value().to_vec(), kv.create_revision(), kv.mod_revision())))
        .collect()
}

async fn revision(c: &mut Client) -> i64 {
    c.status().await.expect("status").header().expect("header").revision()
}

/// One member that serves tenant k's plaintext clients on `base + k`, with `count` ports
/// from `base` on reserved for as long as the returned block lives.
fn member_with_tenant_ports(count: u16) -> (Vec<ports::Port>, u16, Members) {
    let block = ports::reserve_block(count);
    let base = block[0].get();
    let cluster = Members::start(1, &["--tenant-client-port-base", &base.to_string()]);
    (block, base, cluster)
}

#[test]
fn tenants_are_isolated_from_each_other_and_from_the_default_tenant() {
    let (_block, base, mut cluster) = member_with_tenant_ports(4);
    let rt = runtime();
    rt.block_on(async {
        cluster.wait_leader(LEADER_TIMEOUT).await;
        let admin = cluster.members[0].endpoint();
        let created = tenant_cli(&admin, &["create", "alpha"]);
        assert_eq!(created.trim(), format!("tenant alpha created: number 1, group {}", 1 << 16));
        let beta = json(&tenant_cli(&admin, &["create", "beta", "--quota-bytes", "65536", "-w", "json"]));
        assert_eq!(beta["number"], 2);
        assert_eq!(beta["quota_bytes"], 65536);
        let err = tenant_cli_fails(&admin, &["create", "alpha"]);
        assert!(err.contains("already exists"), "{err}");
        let list = json(&tenant_cli(&admin, &["list", "-w", "json"]));
        let names: Vec<&str> =
            list["tenants"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["alpha", "beta"]);

        let mut a = connect_eventually(&format!("http://127.0.0.1:{}", base + 1)).await;
        let mut b = connect_eventually(&format!("http://127.0.0.1:{}", base + 2)).await;
        let mut d = connect_eventually(&admin).await;
        // The tenant admin API is not served on a tenant's port.
        let err = tenant_cli_fails(&format!("127.0.0.1:{}", base + 1), &["list"]);
        assert!(err.contains("etcdserver: permission denied"), "{err}");

        // Own revisions from 1.
        assert_eq!(revision(&mut a).await, 1);
        a.put("a/1", "alpha-1", None).await.unwrap();
        a.put("shared", "alpha", None).await.unwrap();
        for i in 0..5 {
            b.put(format!("b/{i}"), "beta", None).await.unwrap();
        }
        d.put("d/1", "default", None).await.unwrap();
        assert_eq!(revision(&mut a).await, 3);
        assert_eq!(revision(&mut b).await, 6);

        // Ranges over everything, keys-only and count-only.
        let all_a = everything(&mut a).await;
        assert_eq!(
            all_a.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>(),
            ["a/1", "shared"]
        );
        let keys_only = a.get(vec![0], Some(GetOptions::new().with_from_key().with_keys_only())).await.unwrap();
        assert_eq!(keys_only.kvs().len(), 2);
        let count = b.get(vec![0], Some(GetOptions::new().with_from_key().with_count_only())).await.unwrap();
        assert_eq!(count.count(), 5);
        let all_d = everything(&mut d).await;
        assert!(all_d.keys().all(|k| k.starts_with(b"d/")), "default tenant sees {:?}", all_d.keys());

        // A watch on everything from revision 1 sees its own tenant's events only.
        let mut stream =
            a.watch(vec![0], Some(WatchOptions::new().with_from_key().with_start_revision(1))).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let resp = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
            seen.extend(resp.events().iter().map(|e| e.kv().unwrap().key().to_vec()));
        }
        b.put("b/late", "x", None).await.unwrap();
        a.put("a/2", "alpha-2", None).await.unwrap();
        while seen.len() < 3 {
            let resp = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
            seen.extend(resp.events().iter().map(|e| e.kv().unwrap().key().to_vec()));
        }
        assert_eq!(seen, [b"a/1".to_vec(), b"shared".to_vec(), b"a/2".to_vec()]);

        // A txn comparing the other tenant's key sees it absent.
        let txn = Txn::new()
            .when([Compare::version("b/0", CompareOp::Greater, 0)])
            .and_then([TxnOp::put("took", "then", None)])
            .or_else([TxnOp::put("took", "else", None)]);
        assert!(!a.txn(txn).await.unwrap().succeeded());

        // Another tenant's lease ids: not found.
        let lease = b.lease_grant(60, None).await.unwrap().id();
        b.put("b/leased", "x", Some(etcd_client::PutOptions::new().with_lease(lease))).await.unwrap();
        let err = a.lease_revoke(lease).await.unwrap_err().to_string();
        assert!(err.contains("requested lease not found"), "{err}");
        assert_eq!(a.lease_time_to_live(lease, None).await.unwrap().ttl(), -1);
        assert!(b.lease_time_to_live(lease, None).await.unwrap().ttl() > 0, "the lease lives on in its tenant");
        assert_eq!(b.get("b/leased", None).await.unwrap().count(), 1);

        // Compaction, HashKV.
        let before_b = revision(&mut b).await;
        let rev_a = revision(&mut a).await;
        a.compact(rev_a, None).await.unwrap();
        assert_eq!(b.get("b/0", Some(GetOptions::new().with_revision(2))).await.unwrap().count(), 1);
        let hash_a = a.hash_kv(0).await.unwrap();
        let hash_b = b.hash_kv(0).await.unwrap();
        assert_eq!(hash_b.header().unwrap().revision(), before_b);
        assert_ne!(hash_a.hash(), hash_b.hash());

        // Quota: beta fills its 64 KiB, alpha and the default tenant keep writing.
        let value = vec![b'v'; 4096];
        let mut refused = false;
        for i in 0..64 {
            match b.put(format!("b/big/{i}"), value.clone(), None).await {
                Ok(_) => {}
                Err(e) => {
                    assert!(e.to_string().contains(NO_SPACE), "{e}");
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused, "beta's quota never refused a write; log: {}", cluster.members[0].log_tail(60));
        let alarms = b.alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None).await.unwrap();
        assert_eq!(alarms.alarms().len(), 1, "beta has its NOSPACE alarm");
        let alarms = a.alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None).await.unwrap();
        assert!(alarms.alarms().is_empty(), "alpha sees beta's alarm");
        a.put("a/after-quota", value.clone(), None).await.expect("alpha writes while beta is full");
        d.put("d/after-quota", value.clone(), None).await.expect("the default tenant writes while beta is full");

        // Auth: alpha's users are alpha's.
        a.user_add("root", "pw", None).await.unwrap();
        a.user_grant_role("root", "root").await.unwrap();
        a.auth_enable().await.unwrap();
        let err = a.get("a/1", None).await.unwrap_err().to_string();
        assert!(err.contains("user name is empty"), "{err}");
        assert!(b.user_list().await.unwrap().users().is_empty(), "beta sees alpha's users");
        d.get("d/1", None).await.expect("the default tenant is not under alpha's auth");

        // `show` reports the tenant's own figures.
        let show = json(&tenant_cli(&admin, &["show", "beta", "-w", "json"]));
        assert_eq!(show["number"], 2);
        assert_eq!(show["revision"], revision(&mut b).await);
        assert_eq!(show["alarms"], serde_json::json!(["NOSPACE"]));
        assert!(show["keys"].as_i64().unwrap() >= 7, "{show}");

        // Delete: the port closes, the name is free.
        tenant_cli(&admin, &["delete", "beta"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while answers(&format!("http://127.0.0.1:{}", base + 2)).await {
            assert!(Instant::now() < deadline, "beta's port is still open");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let list = json(&tenant_cli(&admin, &["list", "-w", "json"]));
        assert_eq!(list["tenants"].as_array().unwrap().len(), 1);
        let again = json(&tenant_cli(&admin, &["create", "beta", "-w", "json"]));
        assert_eq!(again["number"], 2, "the number is free again");
        assert_ne!(again["group"], beta["group"], "group ids are never reused");
        let mut b2 = connect_eventually(&format!("http://127.0.0.1:{}", base + 2)).await;
        assert_eq!(revision(&mut b2).await, 1, "a new tenant starts empty");
        assert!(everything(&mut b2).await.is_empty());
    });
    // Restart: tenants, their data and revisions come back.
    let alpha_revision = rt.block_on(async {
        let mut a = connect_eventually(&format!("http://127.0.0.1:{}", base + 1)).await;
        a.status().await.unwrap().header().unwrap().revision()
    });
    cluster.members[0].kill9();
    cluster.spawn(0);
    rt.block_on(async {
        cluster.wait_leader(LEADER_TIMEOUT).await;
        let mut a = connect_eventually(&format!("http://127.0.0.1:{}", base + 1)).await;
        assert_eq!(revision(&mut a).await, alpha_revision);
        let mut b = connect_eventually(&format!("http://127.0.0.1:{}", base + 2)).await;
        assert_eq!(revision(&mut b).await, 1);
    });
}

/// Tenants of a three-member cluster (each member with its own port base, all on
/// 127.0.0.1).
const TENANTS: u16 = 50;
const PUTS_PER_TENANT: usize = 30;

#[test]
fn many_tenants_on_three_members_survive_a_kill_and_agree() {
    let blocks: Vec<Vec<ports::Port>> = (0..3).map(|_| ports::reserve_block(TENANTS + 1)).collect();
    let bases: Vec<u16> = blocks.iter().map(|b| b[0].get()).collect();
    let mut cluster = Members::create(3, &[]);
    for (i, base) in bases.iter().enumerate() {
        cluster.members[i].flags = vec!["--tenant-client-port-base".into(), base.to_string()];
        cluster.spawn(i);
    }
    let rt = runtime();
    let endpoint = |member: usize, tenant: u16| format!("http://127.0.0.1:{}", bases[member] + tenant);
    rt.block_on(async {
        cluster.wait_leader(LEADER_TIMEOUT).await;
        let admin = cluster.members[0].endpoint();
        for t in 1..=TENANTS {
            tenant_cli(&admin, &["create", &format!("t{t}")]);
        }
        // Writes in every tenant, through every member in turn.
        let mut tasks = Vec::new();
        for t in 1..=TENANTS {
            let endpoints: Vec<String> = (0..3).map(|m| endpoint(m, t)).collect();
            tasks.push(tokio::spawn(async move {
                let mut clients = Vec::new();
                for e in &endpoints {
                    clients.push(connect_eventually(e).await);
                }
                for i in 0..PUTS_PER_TENANT {
                    let c = &mut clients[i % 3];
                    c.put(format!("k/{i}"), format!("t{t}-{i}"), None).await.expect("put");
                }
            }));
        }
        for task in tasks {
            task.await.expect("writer");
        }
    });
    // Kill a member, write more, restart it.
    let victim = 2;
    cluster.members[victim].kill9();
    rt.block_on(async {
        for t in 1..=TENANTS {
            let mut c = connect_eventually(&endpoint(0, t)).await;
            // A group whose leader was the killed member elects another; a request proposed
            // to the dead leader meanwhile times out, as in etcd, and the client retries.
            // A put waits for the election, but one that reached the dead leader times out,
            // and two survivors that campaign together split the vote and wait out another
            // election timeout: the retries are bounded by time, not by a count.
            let deadline = Instant::now() + LEADER_TIMEOUT;
            while let Err(e) = c.put("after-kill", format!("t{t}"), None).await {
                assert!(Instant::now() < deadline, "tenant t{t}: put with a member down: {e}\n{}", cluster.logs());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    cluster.spawn(victim);
    rt.block_on(async {
        cluster.wait_leader(LEADER_TIMEOUT).await;
        for t in 1..=TENANTS {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let mut views = Vec::new();
                for m in 0..3 {
                    let mut c = connect_eventually(&endpoint(m, t)).await;
                    let rev = revision(&mut c).await;
                    let hash = c.hash_kv(rev).await.expect("hash_kv").hash();
                    views.push((rev, hash, everything(&mut c).await));
                }
                let agree = views.iter().all(|v| *v == views[0]);
                if agree {
                    // Every put and the one after the kill (a retried put may have applied twice).
                    assert!(views[0].0 >= PUTS_PER_TENANT as i64 + 2, "tenant t{t}'s revision {}", views[0].0);
                    assert_eq!(views[0].2.len(), PUTS_PER_TENANT + 1);
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "tenant t{t} differs between members: {:?}\n{}",
                    views.iter().map(|v| (v.0, v.1, v.2.len())).collect::<Vec<_>>(),
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
}

#[test]
fn a_member_added_and_removed_reaches_every_tenant_group() {
    let blocks: Vec<Vec<ports::Port>> = (0..4).map(|_| ports::reserve_block(3)).collect();
    let bases: Vec<u16> = blocks.iter().map(|b| b[0].get()).collect();
    let mut cluster = Members::create(3, &[]);
    for (i, base) in bases.iter().take(3).enumerate() {
        cluster.members[i].flags = vec!["--tenant-client-port-base".into(), base.to_string()];
        cluster.spawn(i);
    }
    let rt = runtime();
    let admin = cluster.members[0].endpoint();
    rt.block_on(async {
        cluster.wait_leader(LEADER_TIMEOUT).await;
        for t in ["t1", "t2"] {
            tenant_cli(&admin, &["create", t]);
        }
        for t in 1..=2u16 {
            let mut c = connect_eventually(&format!("http://127.0.0.1:{}", bases[0] + t)).await;
            c.put("before-join", format!("t{t}"), None).await.expect("put");
        }
    });
    // A fourth member: learner, then voter.
    let n4 = cluster.add_member();
    cluster.members[n4].flags = vec!["--tenant-client-port-base".into(), bases[3].to_string()];
    let n4_id = rt.block_on(async {
        let mut client = connect(&admin).await.expect("connect");
        let added = add_member_when_healthy(&mut client, vec![cluster.members[n4].peer_url()], true).await;
        added.member().expect("member").id()
    });
    cluster.spawn(n4);
    let in_step = |tenant: &str, want_voters: usize, want_learners: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let show = json(&tenant_cli(&admin, &["show", tenant, "-w", "json"]));
            let voters = show["voters"].as_array().map_or(0, Vec::len);
            let learners = show["learners"].as_array().map_or(0, Vec::len);
            if show["membership_in_sync"] == true && voters == want_voters && learners == want_learners {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tenant {tenant} never followed the cluster: {show}\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    for t in ["t1", "t2"] {
        in_step(t, 3, 1);
    }
    rt.block_on(async {
        // The learner serves each tenant's data on its own tenant ports (serializable).
        for t in 1..=2u16 {
            let endpoint = format!("http://127.0.0.1:{}", bases[3] + t);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(mut c) = connect(&endpoint).await {
                    let got = c.get("before-join", Some(GetOptions::new().with_serializable())).await;
                    if got.is_ok_and(|r| r.count() == 1) {
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "the new member never served tenant t{t}\n{}", cluster.logs());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let mut client = connect(&admin).await.expect("connect");
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = client.member_promote(n4_id).await {
            assert!(Instant::now() < deadline, "promote: {e}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    for t in ["t1", "t2"] {
        in_step(t, 4, 0);
    }
    // Removing a member removes it from every group.
    rt.block_on(async {
        let mut client = connect(&admin).await.expect("connect");
        remove_member_when_healthy(&mut client, n4_id).await;
    });
    for t in ["t1", "t2"] {
        in_step(t, 3, 0);
    }
    rt.block_on(async {
        for t in 1..=2u16 {
            let mut c = connect_eventually(&format!("http://127.0.0.1:{}", bases[1] + t)).await;
            c.put("after-remove", "x", None).await.expect("the group keeps its quorum");
        }
    });
}

/// The `/metrics` text of the member at `endpoint`.
fn metrics(endpoint: &str) -> String {
    plinth_tests::cli::http_get(endpoint, "/metrics").1
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

#[test]
fn metrics_are_labelled_by_tenant_and_leave_with_it() {
    let (_block, base, cluster) = member_with_tenant_ports(3);
    let rt = runtime();
    rt.block_on(async {
        cluster.wait_leader(LEADER_TIMEOUT).await;
        let admin = cluster.members[0].endpoint();
        tenant_cli(&admin, &["create", "m1"]);
        tenant_cli(&admin, &["create", "m2"]);
        let mut m1 = connect_eventually(&format!("http://127.0.0.1:{}", base + 1)).await;
        let mut m2 = connect_eventually(&format!("http://127.0.0.1:{}", base + 2)).await;
        for i in 0..3 {
            m1.put(format!("k{i}"), "v", None).await.unwrap();
        }
        m2.put("only", "v", None).await.unwrap();
        let mut watch = m1.watch("k", Some(WatchOptions::new().with_prefix())).await.unwrap();
        // The watcher counts once its `created` response arrives.
        plinth_tests::cli::watch_created(&mut watch).await;
        let text = metrics(&admin);
        let m1_puts = sample(&text, r#"plinth_tenant_requests_total{grpc_code="OK",grpc_method="Put",tenant="m1"}"#);
        assert_eq!(m1_puts, Some(3.0), "{text}");
        assert_eq!(sample(&text, r#"plinth_tenant_keys{tenant="m1"}"#), Some(3.0), "{text}");
        assert_eq!(sample(&text, r#"plinth_tenant_keys{tenant="m2"}"#), Some(1.0), "{text}");
        assert_eq!(sample(&text, r#"plinth_tenant_watchers{tenant="m1"}"#), Some(1.0), "{text}");
        assert_eq!(sample(&text, r#"plinth_tenant_watchers{tenant="m2"}"#), Some(0.0), "{text}");
        assert!(sample(&text, r#"plinth_tenant_db_size_bytes{tenant="m2"}"#).unwrap_or(0.0) > 0.0, "{text}");
        let applies = sample(&text, r#"plinth_tenant_apply_duration_seconds_count{tenant="m1"}"#);
        assert!(applies.unwrap_or(0.0) >= 3.0, "{text}");
        // The writes were synced, and the member's fsync histogram (etcd's) counted them.
        let fsyncs = sample(&text, "etcd_disk_wal_fsync_duration_seconds_count");
        assert!(fsyncs.unwrap_or(0.0) >= 4.0, "{text}");

        tenant_cli(&admin, &["delete", "m2"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = metrics(&admin);
            if sample(&text, r#"plinth_tenant_keys{tenant="m2"}"#).is_none() {
                assert_eq!(sample(&text, r#"plinth_tenant_keys{tenant="m1"}"#), Some(3.0), "{text}");
                break;
            }
            assert!(Instant::now() < deadline, "a deleted tenant's gauges stayed: {text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

const TOO_MANY: &str = "etcdserver: too many requests";

/// `n` requests made by `request` (given a clone of `c` and the request's number), sent
/// all at once: how many were answered and how many refused with etcd's "too many requests"
/// (anything else fails the test).
///
/// Sent one after the other, the burst would last as long as the answered requests take (a
/// write waits for its fsync), and the buckets refill meanwhile: on a loaded machine more
/// would pass than a burst of the limit allows. Sent together they reach the limiter within
/// a few milliseconds, whatever each then takes to be answered.
async fn burst<F, Fut>(c: &Client, n: usize, request: F) -> (usize, usize)
where
    F: Fn(Client, usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), etcd_client::Error>> + Send + 'static,
{
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..n {
        requests.spawn(request(c.clone(), i));
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(done) = requests.join_next().await {
        match done.expect("request task") {
            Ok(()) => ok += 1,
            Err(e) if e.to_string().contains(TOO_MANY) => refused += 1,
            Err(e) => panic!("a request failed otherwise: {e}"),
        }
    }
    (ok, refused)
}

/// A burst of `n` gets through `c` (see [`burst`]).
async fn burst_of_gets(c: &Client, n: usize) -> (usize, usize) {
    burst(c, n, |mut c, _| async move { c.get("k", None).await.map(drop) }).await
}

/// How long a watch create may take to be answered on a loaded machine.
const WATCH_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a watch on `key` through `c` is created, or refused with "too many requests".
async fn watch_created(c: &mut Client, key: &str) -> (bool, Option<etcd_client::WatchStream>) {
    match c.watch(key, None).await {
        Err(e) if e.to_string().contains(TOO_MANY) => (false, None),
        Err(e) => panic!("watch {key}: {e}"),
        Ok(mut stream) => {
            // etcd-client hands over the stream before the server has answered the create.
            // The answer is one `created` response, also `canceled` with the reason when the
            // watcher is refused; it is waited for, since a refusal that comes late must not
            // pass for a created watcher, nor a watcher the server has not yet counted let a
            // later create through.
            let answer = tokio::time::timeout(WATCH_ANSWER_TIMEOUT, stream.message())
                .await
                .unwrap_or_else(|_| panic!("watch {key}: the create was not answered within {WATCH_ANSWER_TIMEOUT:?}"));
            match answer {
                Err(e) if e.to_string().contains(TOO_MANY) => (false, None),
                Err(e) => panic!("watch {key}: {e}"),
                Ok(None) => panic!("watch {key}: the stream ended before the create was answered"),
                Ok(Some(r)) => {
                    assert!(r.created(), "watch {key}: the first response does not answer the create: {r:?}");
                    if r.canceled() {
                        assert_eq!(r.cancel_reason(), TOO_MANY, "watch {key} canceled for another reason");
                        (false, None)
                    } else {
                        (true, Some(stream))
                    }
                }
            }
        }
    }
}

/// A tenant's limits answer etcd's "too many requests" once exceeded, on its own port only:
/// requests per second (a burst of a second's worth passes), watchers, and bytes written
/// per second; a tenant without limits beside it is never refused; an update lifts a limit
/// on every member within a reconcile pass.
#[test]
fn tenant_limits_answer_too_many_requests() {
    let (_block, base, cluster) = member_with_tenant_ports(3);
    let rt = runtime();
    rt.block_on(async {
        cluster.wait_leader(LEADER_TIMEOUT).await;
        let admin = cluster.members[0].endpoint();
        let limits =
            ["--max-requests-per-second", "20", "--max-watchers", "2", "--max-request-bytes-per-second", "4096"];
        let mut args = vec!["create", "limited"];
        args.extend(limits);
        tenant_cli(&admin, &args);
        tenant_cli(&admin, &["create", "free"]);
        let shown = tenant_cli(&admin, &["show", "limited"]);
        assert!(shown.contains("limits: requests/s 20, watchers 2, request bytes/s 4096"), "{shown}");
        let mut limited = connect_eventually(&format!("http://127.0.0.1:{}", base + 1)).await;
        let free = connect_eventually(&format!("http://127.0.0.1:{}", base + 2)).await;
        // The limits reach the member's limiter on its next reconcile pass (every second).
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let (ok, refused) = burst_of_gets(&limited, 100).await;
        assert!(refused >= 50 && ok >= 15, "100 gets at 20/s: {ok} answered, {refused} refused");
        let (ok, refused) = burst_of_gets(&free, 100).await;
        assert_eq!((ok, refused), (100, 0), "the tenant without limits was refused");

        // Two watchers at most (each watch opens a stream: a request of its own).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut kept = Vec::new();
        for key in ["w1", "w2"] {
            let (created, w) = watch_created(&mut limited, key).await;
            assert!(created, "watch {key} within the limit was refused");
            kept.push(w);
        }
        let (created, _) = watch_created(&mut limited, "w3").await;
        assert!(!created, "a third watcher over a limit of 2 was created");
        drop(kept);

        // 4 KiB written per second: a burst of 1 KiB values is cut after about four.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let value = "v".repeat(1024);
        let puts = burst(&limited, 12, |mut c, i| {
            let value = value.clone();
            async move { c.put(format!("big/{i}"), value, None).await.map(drop) }
        })
        .await;
        assert!((3..=6).contains(&puts.0) && puts.1 >= 6, "12 puts of 1 KiB at 4 KiB/s: {puts:?}");

        // Lifted: every request passes again.
        tenant_cli(&admin, &["update", "limited", "--max-requests-per-second", "0"]);
        let shown = json(&tenant_cli(&admin, &["show", "limited", "-w", "json"]));
        assert_eq!(shown["limits"]["requests_per_second"], 0, "{shown}");
        assert_eq!(shown["limits"]["watchers"], 2, "an update keeps the limits it does not name: {shown}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (ok, refused) = burst_of_gets(&limited, 100).await;
        assert_eq!((ok, refused), (100, 0), "gets after the rate limit was lifted");
    });
}

/// The WAL segment files of member `m`.
fn wal_segments(m: &plinth_tests::members::Member) -> usize {
    std::fs::read_dir(m.dir().join("data").join("wal"))
        .expect("wal dir")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "wal")))
        .count()
}

/// A tenant that writes too often to hibernate but far too little to pass its catch-up
/// entries must not keep every WAL segment written since its first entry: its old entries
/// are purged once they are only in old segments. Small segments roll every few writes of
/// the busy default tenant; without the bound, the quiet tenant's entries (and the busy
/// tenant's own 5,000 catch-up entries) would keep all of them.
#[test]
fn a_tenant_that_writes_rarely_does_not_keep_old_wal_segments() {
    let block = ports::reserve_block(2);
    let base = block[0].get();
    let mut cluster = Members::start(
        1,
        &[
            "--tenant-client-port-base",
            &base.to_string(),
            "--experimental-wal-segment-bytes",
            "65536",
            "--experimental-log-purge-interval-ms",
            "200",
        ],
    );
    let rt = runtime();
    rt.block_on(async {
        cluster.wait_leader(LEADER_TIMEOUT).await;
        let admin = cluster.members[0].endpoint();
        tenant_cli(&admin, &["create", "quiet"]);
        let mut quiet = connect_eventually(&format!("http://127.0.0.1:{}", base + 1)).await;
        let mut busy = connect_eventually(&admin).await;
        let value = vec![b'v'; 4096];
        // 16 busy writes fill a segment; the quiet tenant writes once every 20, about every
        // 100 ms here, well inside the 2 election timeouts after which its group would sleep.
        let mut quiet_writes = 0;
        for i in 0..1200 {
            busy.put(format!("busy/{}", i % 50), value.clone(), None).await.unwrap();
            if i % 20 == 0 {
                quiet.put(format!("quiet/{quiet_writes}"), "q", None).await.unwrap();
                quiet_writes += 1;
            }
        }
        // About 75 segments were written. Purge runs every 200 ms and deletes segments at
        // rotations, so keep rolling until the count settles.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut i = 0;
        let segments = loop {
            let n = wal_segments(&cluster.members[0]);
            if n <= 8 || Instant::now() > deadline {
                break n;
            }
            busy.put(format!("busy/{}", i % 50), value.clone(), None).await.unwrap();
            quiet.put("quiet/last", "q", None).await.unwrap();
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(segments <= 8, "{segments} WAL segments are kept\n{}", cluster.logs());

        // Nothing the purge dropped was needed: after a SIGKILL the member recovers both
        // tenants from the store and what is left of the log.
        let quiet_before = everything(&mut quiet).await;
        let busy_before = everything(&mut busy).await;
        for i in 0..quiet_writes {
            assert!(quiet_before.contains_key(format!("quiet/{i}").as_bytes()), "quiet/{i} is missing");
        }
        cluster.members[0].kill9();
        cluster.spawn(0);
        cluster.wait_leader(LEADER_TIMEOUT).await;
        let mut quiet = connect_eventually(&format!("http://127.0.0.1:{}", base + 1)).await;
        let mut busy = connect_eventually(&admin).await;
        assert_eq!(everything(&mut quiet).await, quiet_before);
        assert_eq!(everything(&mut busy).await, busy_before);
    });
}
