//! Online restore of one tenant (`plinth tenant restore`) with the real binary: backups of
//! tenant `a` taken from `etcdctl snapshot save` on its tenant port (a full and a delta),
//! more writes, then
//!
//! - a corrupted object: the restore fails naming it, and `a` is untouched;
//! - a restore in place to a revision R inside the chain: `a`'s keys equal the source's at R
//!   (values, create and mod revisions, versions, leases), its revision moved above every
//!   revision it had, a watcher opened before got a compacted cancel and never saw a revision
//!   go backwards, `a` takes writes again, and tenant `b` (HashKV and keys) is unchanged;
//! - `--as a2`: a new tenant equal to the source at R with every revision kept;
//! - on three members, every member's copy of the restored tenant agrees.
//!
//! Each test is bounded (well under 120 s).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, WatchOptions};
use plinth_tests::cli::{connect_eventually, plinth, plinth_ok};
use plinth_tests::members::Members;
use plinth_tests::ports;
use serde_json::Value;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// A key as a restore must keep it: value, create and mod revision, version, lease.
type Kept = (Vec<u8>, i64, i64, i64, i64);
/// A key with its lease id reduced to whether it has one (ids are the source's or new).
type KeptLeased = (Vec<u8>, Vec<u8>, i64, i64, i64, bool);

async fn keys_at(c: &mut Client, revision: i64) -> BTreeMap<Vec<u8>, Kept> {
    let opts = GetOptions::new().with_from_key().with_revision(revision);
    let resp = c.get(vec![0], Some(opts)).await.expect("range everything");
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                (kv.value().to_vec(), kv.create_revision(), kv.mod_revision(), kv.version(), kv.lease()),
            )
        })
        .collect()
}

async fn revision(c: &mut Client) -> i64 {
    c.status().await.expect("status").header().expect("header").revision()
}

/// `etcdctl snapshot save` of a tenant port, taken into `tenant`'s backups (a delta when
/// `delta`).
fn backup(endpoint: &str, dir: &Path, backups: &str, tenant: &str, name: &str, delta: bool) {
    let file = dir.join(name).display().to_string();
    let out =
        plinth_tests::ctl::run(endpoint, &["snapshot", "save", &file], None, plinth_tests::cli::PLINTH_CLI_TIMEOUT);
    assert_eq!(out.code, Some(0), "snapshot save: {}", out.stderr);
    let mut args = vec!["backup", "from-snapshot", &file, "--backup-dir", backups, "--tenant", tenant];
    if delta {
        args.push("--delta");
    }
    plinth_ok(&args);
}

/// Writes a history into `c`: puts, overwrites, deletes, a txn, a lease with two keys.
async fn write_history(c: &mut Client, round: usize) {
    for i in 0..15 {
        c.put(format!("k{:02}", (i * 7 + round) % 20), format!("r{round}-{i}"), None).await.unwrap();
    }
    c.delete(format!("k{:02}", round % 20), None).await.unwrap();
    let lease = c.lease_grant(600, None).await.unwrap().id();
    let opts = etcd_client::PutOptions::new().with_lease(lease);
    c.put(format!("leased/{round}/1"), "x", Some(opts.clone())).await.unwrap();
    c.put(format!("leased/{round}/2"), "y", Some(opts)).await.unwrap();
    let txn = etcd_client::Txn::new().and_then([
        etcd_client::TxnOp::put(format!("txn/{round}/a"), "1", None),
        etcd_client::TxnOp::put(format!("txn/{round}/b"), "2", None),
        etcd_client::TxnOp::delete(format!("k{:02}", (round + 3) % 20), None),
    ]);
    c.txn(txn).await.unwrap();
}

fn flip_a_byte_of_the_newest_object(dir: &Path, tenant: &str) -> String {
    let objects = dir.join(tenant).join("objects");
    let mut names: Vec<_> = std::fs::read_dir(&objects).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    let victim = names.iter().find(|p| p.file_name().unwrap().to_string_lossy().starts_with("delta")).unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(victim, bytes).unwrap();
    victim.file_name().unwrap().to_string_lossy().into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn a_tenant_is_restored_in_place_and_as_a_new_tenant() {
    let block = ports::reserve_block(4);
    let base = block[0].get();
    let cluster = Members::start(1, &["--tenant-client-port-base", &base.to_string()]);
    let work = tempfile::tempdir().unwrap();
    let backups = work.path().join("backups");
    let backup_dir = backups.display().to_string();
    let rt = runtime();
    rt.block_on(async {
        cluster.wait_leader(LEADER_TIMEOUT).await;
        let admin = cluster.members[0].endpoint();
        let port = |n: u16| format!("http://127.0.0.1:{}", base + n);
        plinth_ok(&["tenant", "create", "a", "--endpoints", &admin]);
        plinth_ok(&["tenant", "create", "b", "--endpoints", &admin]);
        let mut a = connect_eventually(&port(1)).await;
        let mut b = connect_eventually(&port(2)).await;
        write_history(&mut a, 0).await;
        for i in 0..10 {
            b.put(format!("b/{i}"), "beta", None).await.unwrap();
        }
        backup(&port(1), work.path(), &backup_dir, "a", "full.db", false);
        let full = revision(&mut a).await;
        write_history(&mut a, 1).await;
        let r = revision(&mut a).await;
        write_history(&mut a, 2).await;
        backup(&port(1), work.path(), &backup_dir, "a", "delta.db", true);
        write_history(&mut a, 3).await;
        assert!(full < r && r < revision(&mut a).await);
        let source_at_r = keys_at(&mut a, r).await;
        let a_before = keys_at(&mut a, 0).await;
        let b_before = (keys_at(&mut b, 0).await, b.hash_kv(0).await.unwrap().hash());
        let old = revision(&mut a).await;

        // A corrupted object: refused before the tenant is touched.
        let bad = work.path().join("bad");
        copy_dir(&backups, &bad);
        let victim = flip_a_byte_of_the_newest_object(&bad, "a");
        let bad_dir = bad.display().to_string();
        let r_flag = r.to_string();
        let out = plinth(&[
            "tenant",
            "restore",
            "a",
            "--backup-dir",
            &bad_dir,
            "--to-revision",
            &r_flag,
            "--endpoints",
            &admin,
        ]);
        assert_ne!(out.code, Some(0), "a corrupted backup was restored: {}", out.stdout);
        assert!(out.stderr.contains(&victim) && out.stderr.contains("corrupted"), "{}", out.stderr);
        assert!(out.stderr.contains("tenant a untouched"), "{}", out.stderr);
        assert_eq!(keys_at(&mut a, 0).await, a_before, "a failed restore changed the tenant");
        assert_eq!(revision(&mut a).await, old);

        // A watcher of `a` from before the restore.
        let mut stream = a.watch(vec![0], Some(WatchOptions::new().with_from_key())).await.unwrap();
        // A put before the `created` response could land below the watcher's start revision.
        plinth_tests::cli::watch_created(&mut stream).await;
        a.put("seen-before", "1", None).await.unwrap();
        let mut seen = Vec::new();
        let watching = tokio::spawn(async move {
            let mut compacted = None;
            while let Ok(Ok(Some(resp))) = tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
                for ev in resp.events() {
                    seen.push(ev.kv().map_or(0, |kv| kv.mod_revision()));
                }
                if resp.canceled() {
                    compacted = Some(resp.compact_revision());
                    break;
                }
            }
            (seen, compacted)
        });
        let old = old + 1;

        let out = plinth_ok(&[
            "tenant",
            "restore",
            "a",
            "--backup-dir",
            &backup_dir,
            "--to-revision",
            &r_flag,
            "--endpoints",
            &admin,
            "-w",
            "json",
        ]);
        let summary: Value = serde_json::from_str(out.trim()).unwrap();
        let new = summary["revision"].as_i64().unwrap();
        assert_eq!(summary["restored_revision"].as_i64(), Some(r), "{summary}");
        assert_eq!(summary["floor"].as_i64(), Some(old), "{summary}");
        assert_eq!(new, old.max(r) + 1, "{summary}");
        assert_eq!(summary["compact_revision"].as_i64(), Some(new), "{summary}");
        assert_eq!(summary["keys"].as_i64(), Some(source_at_r.len() as i64), "{summary}");

        let (seen, compacted) = watching.await.unwrap();
        assert!(compacted.is_some_and(|c| c >= old), "the watcher was not canceled as compacted: {compacted:?}");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]) && seen.last() == Some(&old), "{seen:?}");

        let mut a = connect_eventually(&port(1)).await;
        assert_eq!(revision(&mut a).await, new);
        let restored = keys_at(&mut a, 0).await;
        assert_eq!(restored.len(), source_at_r.len());
        for (k, (value, create, modr, version, lease)) in &source_at_r {
            let got = restored.get(k).unwrap_or_else(|| panic!("{k:?} missing"));
            assert_eq!((&got.0, got.1, got.2, got.3), (value, *create, *modr, *version), "{k:?}");
            assert_eq!(got.4 != 0, *lease != 0, "{k:?} lease");
            if *lease != 0 {
                assert!(a.lease_time_to_live(got.4, None).await.unwrap().ttl() > 0, "{k:?}'s lease");
            }
        }
        let put = a.put("after", "1", None).await.unwrap();
        assert_eq!(put.header().unwrap().revision(), new + 1);
        let compacted = a.get("k01", Some(GetOptions::new().with_revision(new - 1))).await;
        assert!(compacted.is_err_and(|e| e.to_string().contains("compacted")));
        assert_eq!((keys_at(&mut b, 0).await, b.hash_kv(0).await.unwrap().hash()), b_before, "tenant b changed");

        // Into a new tenant: revisions kept.
        let out = plinth_ok(&[
            "tenant",
            "restore",
            "a",
            "--backup-dir",
            &backup_dir,
            "--to-revision",
            &r_flag,
            "--as",
            "a2",
            "--endpoints",
            &admin,
        ]);
        assert!(out.contains("tenant a2 restored"), "{out}");
        let err = plinth(&["tenant", "restore", "a", "--backup-dir", &backup_dir, "--as", "a2", "--endpoints", &admin]);
        assert!(err.code != Some(0) && err.stderr.contains("already exists"), "{}", err.stderr);
        let mut a2 = connect_eventually(&port(3)).await;
        assert_eq!(revision(&mut a2).await, r);
        let got = keys_at(&mut a2, 0).await;
        let strip = |m: &BTreeMap<Vec<u8>, Kept>| -> Vec<KeptLeased> {
            m.iter().map(|(k, v)| (k.clone(), v.0.clone(), v.1, v.2, v.3, v.4 != 0)).collect()
        };
        assert_eq!(strip(&got), strip(&source_at_r));
        let full_keys = keys_at(&mut a2, full).await;
        assert!(!full_keys.is_empty(), "reads at the full backup's revision work");
        a2.put("after", "1", None).await.unwrap();
    });
}

#[test]
fn a_restore_on_three_members_agrees_everywhere() {
    let blocks: Vec<Vec<ports::Port>> = (0..3).map(|_| ports::reserve_block(2)).collect();
    let bases: Vec<u16> = blocks.iter().map(|b| b[0].get()).collect();
    let mut cluster = Members::create(3, &[]);
    for (i, base) in bases.iter().enumerate() {
        cluster.members[i].flags = vec!["--tenant-client-port-base".into(), base.to_string()];
        cluster.spawn(i);
    }
    let work = tempfile::tempdir().unwrap();
    let backup_dir = work.path().join("backups").display().to_string();
    let rt = runtime();
    rt.block_on(async {
        cluster.wait_leader(LEADER_TIMEOUT).await;
        let admin = cluster.members[1].endpoint();
        plinth_ok(&["tenant", "create", "a", "--endpoints", &admin]);
        let endpoint = |m: usize| format!("http://127.0.0.1:{}", bases[m] + 1);
        let mut a = connect_eventually(&endpoint(0)).await;
        write_history(&mut a, 0).await;
        backup(&endpoint(0), work.path(), &backup_dir, "a", "full.db", false);
        let r = revision(&mut a).await;
        let source = keys_at(&mut a, r).await;
        write_history(&mut a, 1).await;
        let out =
            plinth_ok(&["tenant", "restore", "a", "--backup-dir", &backup_dir, "--endpoints", &admin, "-w", "json"]);
        let summary: Value = serde_json::from_str(out.trim()).unwrap();
        let new = summary["revision"].as_i64().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        for m in 0..3 {
            let mut c = connect_eventually(&endpoint(m)).await;
            loop {
                let rev = c.status().await.map(|s| s.header().map_or(0, |h| h.revision())).unwrap_or(0);
                if rev == new {
                    break;
                }
                assert!(Instant::now() < deadline, "member {m} stays at revision {rev}, not {new}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let opts = GetOptions::new().with_from_key().with_serializable();
            let got: BTreeMap<Vec<u8>, Kept> = c
                .get(vec![0], Some(opts))
                .await
                .unwrap()
                .kvs()
                .iter()
                .map(|kv| {
                    let v = (kv.value().to_vec(), kv.create_revision(), kv.mod_revision(), kv.version(), kv.lease());
                    (kv.key().to_vec(), v)
                })
                .collect();
            assert_eq!(got, source, "member {m}");
        }
        let hashes: Vec<u32> = {
            let mut out = Vec::new();
            for m in 0..3 {
                let mut c = connect_eventually(&endpoint(m)).await;
                // At the current revision (`new`, waited for above), which the restore may
                // have compacted at: HashKV at the compact revision itself is refused, as
                // in etcd, and 0 names the current one.
                out.push(c.hash_kv(0).await.unwrap().hash());
            }
            out
        };
        assert!(hashes.windows(2).all(|w| w[0] == w[1]), "HashKV differs between members: {hashes:?}");
    });
}

/// The default tenant ("default") is restored in place like any tenant, through the same
/// client port that serves the admin API (which keeps answering while it is restored).
#[test]
fn the_default_tenant_is_restored_in_place() {
    let cluster = Members::start(1, &[]);
    let work = tempfile::tempdir().unwrap();
    let backup_dir = work.path().join("backups").display().to_string();
    let rt = runtime();
    rt.block_on(async {
        cluster.wait_leader(LEADER_TIMEOUT).await;
        let admin = cluster.members[0].endpoint();
        let mut d = connect_eventually(&admin).await;
        write_history(&mut d, 0).await;
        backup(&admin, work.path(), &backup_dir, "default", "full.db", false);
        let r = revision(&mut d).await;
        let source = keys_at(&mut d, r).await;
        write_history(&mut d, 1).await;
        let old = revision(&mut d).await;
        let out = plinth_ok(&["tenant", "restore", "default", "--backup-dir", &backup_dir, "--endpoints", &admin]);
        assert!(out.contains("tenant default restored"), "{out}");
        let mut d = connect_eventually(&admin).await;
        assert_eq!(revision(&mut d).await, old + 1);
        assert_eq!(keys_at(&mut d, 0).await, source);
        let shown = plinth_ok(&["tenant", "list", "--endpoints", &admin]);
        assert!(!shown.contains("restoring"), "{shown}");
    });
}
