//! `plinth migrate` from a real etcd 3.5.1: keys with several revisions of history,
//! overwrites, deletes, txns (several events in one revision) and leases with attached keys;
//! the migration runs while a writer keeps writing to etcd, the tenant refuses writes while
//! it runs, and once the writer stops `--until-caught-up` finishes: every key's value,
//! create and mod revision, version and lease presence, and the tenant's revision, equal
//! etcd's, and the tenant takes writes again from the next revision.
//!
//! Bounded in time (well under 120 s).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp};
use plinth_tests::cli::connect_eventually;
use plinth_tests::cluster::plinth_bin;
use plinth_tests::members::Members;
use plinth_tests::process::Background;
use plinth_tests::{ports, Server};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const MIGRATE_LIMIT: Duration = Duration::from_secs(90);

/// Every key: value, create and mod revision, version, whether it has a lease; and the
/// header revision.
async fn everything(c: &mut Client) -> (BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64, bool)>, i64) {
    let resp = c.get(vec![0], Some(GetOptions::new().with_from_key())).await.expect("range everything");
    let keys = resp
        .kvs()
        .iter()
        .map(|kv| {
            let v = (kv.value().to_vec(), kv.create_revision(), kv.mod_revision(), kv.version(), kv.lease() != 0);
            (kv.key().to_vec(), v)
        })
        .collect();
    (keys, resp.header().expect("header").revision())
}

async fn history(c: &mut Client, round: usize) {
    for i in 0..20 {
        c.put(format!("k{:02}", (i * 7 + round) % 25), format!("r{round}-{i}"), None).await.unwrap();
    }
    c.delete(format!("k{:02}", round % 25), None).await.unwrap();
    let lease = c.lease_grant(600, None).await.unwrap().id();
    let opts = PutOptions::new().with_lease(lease);
    c.put(format!("leased/{round}/1"), "x", Some(opts.clone())).await.unwrap();
    c.put(format!("leased/{round}/2"), "y", Some(opts)).await.unwrap();
    let txn = Txn::new().and_then([
        TxnOp::put(format!("txn/{round}/a"), "1", None),
        TxnOp::put(format!("txn/{round}/b"), "2", None),
        TxnOp::delete(format!("k{:02}", (round + 3) % 25), None),
    ]);
    c.txn(txn).await.unwrap();
}

#[test]
fn a_live_etcd_is_migrated_keeping_every_revision() {
    let etcd = Server::etcd();
    let block = ports::reserve_block(2);
    let base = block[0].get();
    let cluster = Members::start(1, &["--tenant-client-port-base", &base.to_string()]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        cluster.wait_leader(LEADER_TIMEOUT).await;
        let admin = cluster.members[0].endpoint();
        let mut e = connect_eventually(&etcd.endpoint()).await;
        for round in 0..3 {
            history(&mut e, round).await;
        }
        // A revoked lease deletes its keys (several deletes in one revision).
        let doomed = e.lease_grant(600, None).await.unwrap().id();
        for i in 0..3 {
            e.put(format!("doomed/{i}"), "z", Some(PutOptions::new().with_lease(doomed))).await.unwrap();
        }
        e.lease_revoke(doomed).await.unwrap();
        // Old history compacted away: the migration needs only the present and what follows.
        let now = everything(&mut e).await.1;
        e.compact(now - 5, None).await.unwrap();

        // A writer that keeps going until told to stop.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            let endpoint = etcd.endpoint();
            tokio::spawn(async move {
                let mut w = connect_eventually(&endpoint).await;
                let lease = w.lease_grant(600, None).await.unwrap().id();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    match i % 5 {
                        0 => drop(w.delete(format!("k{:02}", i % 25), None).await.unwrap()),
                        1 => drop(
                            w.put(format!("live/{}", i % 40), "l", Some(PutOptions::new().with_lease(lease)))
                                .await
                                .unwrap(),
                        ),
                        2 => drop(
                            w.txn(Txn::new().and_then([
                                TxnOp::put(format!("live/t{}", i % 7), format!("{i}"), None),
                                TxnOp::put(format!("k{:02}", (i + 1) % 25), format!("{i}"), None),
                            ]))
                            .await
                            .unwrap(),
                        ),
                        _ => drop(w.put(format!("k{:02}", (i * 3) % 25), format!("w{i}"), None).await.unwrap()),
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                i
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;

        let mut cmd = Command::new(plinth_bin());
        cmd.args(["migrate", "--from", &etcd.endpoint(), "--tenant", "m", "--endpoints", &admin, "--until-caught-up"]);
        cmd.args(["-w", "json"]);
        let migrate = Background::spawn(cmd, None, MIGRATE_LIMIT);

        // While it runs, the tenant refuses its clients (reads tell when it began: a write
        // before the begin would be refused as data in the tenant).
        let mut m = connect_eventually(&format!("http://127.0.0.1:{}", base + 1)).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match m.get("during", None).await {
                Err(e) if e.to_string().contains("etcdserver: tenant is being restored") => break,
                other => assert!(Instant::now() < deadline, "the tenant never refused a read: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let refused = m.put("during", "x", None).await;
        let err = refused.expect_err("a write during the migration succeeded").to_string();
        assert!(err.contains("etcdserver: tenant is being restored"), "{err}");
        // It follows etcd (and says how far behind it is) while the writer writes.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !migrate.stderr_so_far().contains("migrate: etcd at revision") {
            assert!(Instant::now() < deadline, "no lag printed: {}", migrate.stderr_so_far());
            assert!(migrate.stdout_so_far().is_empty(), "finished while etcd was written: {}", migrate.stdout_so_far());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::SeqCst);
        let writes = writer.await.unwrap();
        assert!(writes > 20, "the writer wrote {writes} times");

        let out = tokio::task::spawn_blocking(move || migrate.finish()).await.unwrap();
        assert_eq!(out.code, Some(0), "plinth migrate failed:\n{}\n{}", out.stdout, out.stderr);
        let summary: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();

        let (want, etcd_revision) = everything(&mut e).await;
        let mut m = connect_eventually(&format!("http://127.0.0.1:{}", base + 1)).await;
        let (got, tenant_revision) = everything(&mut m).await;
        assert_eq!(tenant_revision, etcd_revision, "revisions");
        assert_eq!(summary["revision"].as_i64(), Some(etcd_revision), "{summary}");
        assert!(summary["events"].as_u64().unwrap() > 0, "nothing was followed live: {summary}");
        assert!(summary["leases"].as_u64().unwrap() >= 4, "{summary}");
        assert_eq!(got.len(), want.len());
        for (k, v) in &want {
            assert_eq!(got.get(k), Some(v), "key {:?}", String::from_utf8_lossy(k));
        }
        // Every lease a key names exists in the tenant.
        for kv in m.get(vec![0], Some(GetOptions::new().with_from_key())).await.unwrap().kvs() {
            if kv.lease() != 0 {
                assert!(m.lease_time_to_live(kv.lease(), None).await.unwrap().ttl() > 0, "{:?}", kv.key_str());
            }
        }
        let put = m.put("after", "1", None).await.unwrap();
        assert_eq!(put.header().unwrap().revision(), etcd_revision + 1);

        // A tenant that holds data is refused.
        let again = Command::new(plinth_bin())
            .args(["migrate", "--from", &etcd.endpoint(), "--tenant", "m", "--endpoints", &admin, "--until-caught-up"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&again.stderr);
        assert!(!again.status.success() && stderr.contains("is not empty"), "{stderr}");
    });
}

/// etcd compacts past what a migration has read (Plinth paused, so the migration stops
/// reading its watch and etcd's watcher falls behind): the migration fails saying so, the
/// tenant stays unavailable, and a second migration into the same tenant (empty before the
/// first) starts over and finishes with etcd's revisions.
#[test]
fn a_migration_that_etcd_compacts_past_fails_and_can_start_over() {
    let etcd = Server::etcd();
    let block = ports::reserve_block(2);
    let base = block[0].get();
    let mut cluster = Members::start(1, &["--tenant-client-port-base", &base.to_string()]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        cluster.wait_leader(LEADER_TIMEOUT).await;
        let admin = cluster.members[0].endpoint();
        let mut e = connect_eventually(&etcd.endpoint()).await;
        history(&mut e, 0).await;
        let etcd_endpoint = etcd.endpoint();
        let migrate_cmd = move |until_caught_up: bool| {
            let mut cmd = Command::new(plinth_bin());
            cmd.args(["migrate", "--from", &etcd_endpoint, "--tenant", "m", "--endpoints", &admin]);
            if until_caught_up {
                cmd.arg("--until-caught-up");
            }
            cmd
        };
        let migrate = Background::spawn(migrate_cmd(false), None, MIGRATE_LIMIT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !migrate.stderr_so_far().contains("migrate: etcd at revision") {
            assert!(Instant::now() < deadline, "the migration never followed etcd: {}", migrate.stderr_so_far());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Plinth stops taking steps; the migration's queue fills and it stops reading etcd,
        // whose watcher falls behind and is then compacted past.
        cluster.members[0].pause();
        let value = "v".repeat(10_000);
        let mut writers = Vec::new();
        for t in 0..4 {
            let endpoint = etcd.endpoint();
            let value = value.clone();
            writers.push(tokio::spawn(async move {
                let mut w = connect_eventually(&endpoint).await;
                for i in 0..500 {
                    w.put(format!("big/{t}/{}", i % 50), value.clone(), None).await.unwrap();
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let now = everything(&mut e).await.1;
        e.compact(now, None).await.unwrap();
        cluster.members[0].resume();
        let out = tokio::task::spawn_blocking(move || migrate.finish()).await.unwrap();
        assert_eq!(out.code, Some(1), "the migration did not fail:\n{}\n{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("etcd compacted its history"), "{}", out.stderr);
        let mut m = connect_eventually(&format!("http://127.0.0.1:{}", base + 1)).await;
        let err = m.get("k01", None).await.expect_err("the tenant served a half-migrated keyspace").to_string();
        assert!(err.contains("etcdserver: tenant is being restored"), "{err}");

        // Again, into the same tenant: it starts over and finishes.
        let out = tokio::task::spawn_blocking(move || {
            plinth_tests::process::run_with_timeout(migrate_cmd(true), None, MIGRATE_LIMIT)
        })
        .await
        .unwrap();
        assert_eq!(out.code, Some(0), "the second migration failed:\n{}\n{}", out.stdout, out.stderr);
        let (want, etcd_revision) = everything(&mut e).await;
        let (got, tenant_revision) = everything(&mut m).await;
        assert_eq!((got.len(), tenant_revision), (want.len(), etcd_revision));
        assert_eq!(got, want);
    });
}
