//! Backups and offline restore with the real binary: backups taken from `etcdctl snapshot
//! save` files of a running plinth (a full, then deltas), listed and verified, restored at
//! the newest and at an earlier revision into new data dirs that `plinth serve` starts
//! from, with every key's revisions, version, value and lease equal to the source's at that
//! revision; a damaged object is reported by `verify` and refused by `restore`. And an etcd
//! 3.5.1 snapshot restored into plinth with etcd's revisions.

use std::path::Path;
use std::time::Duration;

use plinth_tests::cli::{plinth, plinth_ok};
use plinth_tests::Server;
use serde_json::Value;

fn ctl_ok(s: &Server, args: &[&str]) -> String {
    let out = s.ctl(args);
    assert_eq!(out.code, Some(0), "etcdctl {args:?} on {}: {}", s.kind(), out.stderr);
    out.stdout
}

/// Every key at `rev` (0: current) as etcdctl's JSON, and the header revision.
fn keys_at(s: &Server, rev: i64) -> (Vec<Value>, i64) {
    let rev_flag = format!("--rev={rev}");
    let out = ctl_ok(s, &["get", "", "--prefix", &rev_flag, "-w", "json"]);
    let v: Value = serde_json::from_str(&out).expect("etcdctl json");
    let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
    (kvs, v["header"]["revision"].as_i64().expect("header revision"))
}

fn revision(s: &Server) -> i64 {
    keys_at(s, 0).1
}

/// `endpoint hashkv` at the current revision: (hash, compact revision), etcd's hash of the
/// keys and their history.
fn hashkv(s: &Server, flags: &[&str]) -> (u64, i64) {
    let mut args = flags.to_vec();
    args.extend_from_slice(&["endpoint", "hashkv", "-w", "json"]);
    let v: Value = serde_json::from_str(&ctl_ok(s, &args)).unwrap();
    let h = &v[0]["HashKV"];
    (h["hash"].as_u64().expect("hash"), h["compact_revision"].as_i64().expect("compact revision"))
}

/// Stops `s`, replaces its data dir by a restore with `restore_args`, and starts it again.
fn restore_into(s: &mut Server, restore_args: &[&str]) -> String {
    s.kill9();
    std::fs::remove_dir_all(s.data_dir()).expect("remove data dir");
    let data_dir = s.data_dir().display().to_string();
    let peer = s.peer_url();
    let cluster = format!("n1={peer}");
    let endpoint = s.endpoint();
    let mut args: Vec<&str> = vec!["restore"];
    args.extend_from_slice(restore_args);
    args.extend_from_slice(&[
        "--data-dir",
        &data_dir,
        "--name",
        "n1",
        "--initial-cluster",
        &cluster,
        "--initial-advertise-peer-urls",
        &peer,
        "--advertise-client-urls",
        &endpoint,
    ]);
    let out = plinth_ok(&args);
    s.restart();
    out
}

fn snapshot(s: &Server, dir: &Path, name: &str) -> String {
    let path = dir.join(name).display().to_string();
    ctl_ok(s, &["snapshot", "save", &path]);
    path
}

#[test]
fn backups_restore_every_key_with_its_revisions() {
    let source = Server::plinth();
    let work = tempfile::tempdir().unwrap();
    let backups = work.path().join("backups");
    let backup_dir = backups.display().to_string();

    for i in 0..20 {
        ctl_ok(&source, &["put", &format!("k{i:02}"), &format!("v{i}")]);
    }
    ctl_ok(&source, &["del", "k05"]);
    let lease = ctl_ok(&source, &["lease", "grant", "600"]);
    let lease_id = lease.split_whitespace().nth(1).expect("lease id").to_string();
    ctl_ok(&source, &["put", "leased", "x", &format!("--lease={lease_id}")]);
    let snap1 = snapshot(&source, work.path(), "s1.db");
    let full_revision = revision(&source);

    // `snapshot status` reads the file etcdctl wrote: its revision is the server's.
    let status = plinth_ok(&["snapshot", "status", &snap1, "-w", "json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["revision"].as_i64(), Some(full_revision), "{status}");
    assert!(status["totalKey"].as_u64().unwrap() > 20, "{status}");
    // etcdutl's total size: the bbolt pages, without the SHA-256 that follows them.
    assert_eq!(status["totalSize"].as_u64(), Some(std::fs::metadata(&snap1).unwrap().len() - 32));
    let simple = plinth_ok(&["snapshot", "status", &snap1]);
    assert_eq!(simple.trim().split(", ").nth(1), Some(full_revision.to_string().as_str()), "{simple}");

    plinth_ok(&["backup", "from-snapshot", &snap1, "--backup-dir", &backup_dir]);
    let mut expected = Vec::new();
    for round in 0..2 {
        for i in 0..10 {
            ctl_ok(&source, &["put", &format!("k{:02}", (i * 7 + round) % 25), &format!("r{round}-{i}")]);
        }
        ctl_ok(&source, &["del", "k1", "--prefix"]);
        expected.push(revision(&source));
        ctl_ok(&source, &["put", "leased", &format!("again-{round}"), &format!("--lease={lease_id}")]);
        let snap = snapshot(&source, work.path(), &format!("d{round}.db"));
        plinth_ok(&["backup", "from-snapshot", &snap, "--backup-dir", &backup_dir, "--delta"]);
    }
    // Compaction at the full backup leaves every delta's history in place.
    ctl_ok(&source, &["compact", &full_revision.to_string()]);
    let latest = revision(&source);

    let list = plinth_ok(&["backup", "list", "--backup-dir", &backup_dir, "-w", "json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    let entries = list["backups"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{list}");
    assert_eq!(entries[0]["kind"], "full");
    assert_eq!(entries[2]["to_revision"].as_i64(), Some(latest));
    let verified = plinth_ok(&["backup", "verify", "--backup-dir", &backup_dir]);
    assert!(verified.contains("OK"), "{verified}");

    // Restore the newest revision: every key as the source has it now.
    let mut restored = Server::plinth();
    let out = restore_into(&mut restored, &["--backup-dir", &backup_dir]);
    assert!(out.contains(&format!("restored revision {latest}")), "{out}");
    let (source_keys, _) = keys_at(&source, 0);
    assert!(source_keys.len() > 10, "{source_keys:?}");
    assert_eq!(keys_at(&restored, 0), (source_keys, latest));
    let leases = ctl_ok(&restored, &["lease", "list"]);
    assert!(leases.contains(&lease_id.to_lowercase()) || leases.contains(&lease_id), "{leases}");
    // Reads at revisions the deltas cover give the source's answers; older ones are compacted.
    let mid = expected[0];
    assert_eq!(keys_at(&restored, mid).0, keys_at(&source, mid).0);
    let old = restored.ctl(&["get", "k00", &format!("--rev={}", full_revision - 1)]);
    assert!(old.stderr.contains("compacted"), "{}", old.stderr);
    // The restored cluster goes on from the restored revision.
    ctl_ok(&restored, &["put", "after", "restore"]);
    assert_eq!(revision(&restored), latest + 1);

    // Restore an earlier revision inside the first delta.
    let mut earlier = Server::plinth();
    let out =
        restore_into(&mut earlier, &["--backup-dir", &backup_dir, "--to-revision", &mid.to_string(), "-w", "json"]);
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["revision"].as_i64(), Some(mid), "{out}");
    assert_eq!(keys_at(&earlier, 0).0, keys_at(&source, mid).0);
    assert_eq!(revision(&earlier), mid);

    // A damaged object: verify names it, restore refuses it and leaves no data dir.
    let object = entries[1]["object"].as_str().unwrap().to_string();
    let path = backups.join(&object);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    let out = plinth(&["backup", "verify", "--backup-dir", &backup_dir]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains(&object) && out.stderr.contains("corrupted"), "{}", out.stderr);
    let target = work.path().join("refused");
    let target_s = target.display().to_string();
    let out = plinth(&["restore", "--backup-dir", &backup_dir, "--data-dir", &target_s]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains(&object), "{}", out.stderr);
    assert!(!target.exists(), "a failed restore leaves no data dir");
}

/// `puts` puts over `keys` keys `{prefix}NN`, `{prefix}03` deleted, then every key under
/// `{prefix}1`, and `with-lease` put with a new 900 s lease, whose id is returned.
fn write_history(s: &Server, prefix: &str, puts: usize, keys: usize) -> String {
    for i in 0..puts {
        ctl_ok(s, &["put", &format!("{prefix}{:02}", i % keys), &format!("value-{i}")]);
    }
    ctl_ok(s, &["del", &format!("{prefix}03")]);
    ctl_ok(s, &["del", &format!("{prefix}1"), "--prefix"]);
    let lease = ctl_ok(s, &["lease", "grant", "900"]);
    let lease_id = lease.split_whitespace().nth(1).expect("lease id").to_string();
    ctl_ok(s, &["put", "with-lease", "l", &format!("--lease={lease_id}")]);
    lease_id
}

#[test]
fn an_etcd_snapshot_restores_with_etcds_revisions() {
    let etcd = Server::etcd();
    let work = tempfile::tempdir().unwrap();
    let lease_id = write_history(&etcd, "e", 30, 12);
    let short = ctl_ok(&etcd, &["lease", "grant", "600"]);
    let short_id = short.split_whitespace().nth(1).expect("lease id").to_string();
    ctl_ok(&etcd, &["put", "revoked", "r", &format!("--lease={short_id}")]);
    ctl_ok(&etcd, &["lease", "revoke", &short_id]);
    let compact_at = revision(&etcd) - 5;
    ctl_ok(&etcd, &["compact", &compact_at.to_string(), "--physical"]);
    for i in 0..5 {
        ctl_ok(&etcd, &["put", &format!("late{i}"), "v"]);
    }
    ctl_ok(&etcd, &["put", "\u{e9}t\u{e9}", "utf-8 key"]);
    let snap = snapshot(&etcd, work.path(), "etcd.db");
    let (etcd_keys, etcd_revision) = keys_at(&etcd, 0);
    assert!(etcd_keys.len() >= 10 && etcd_keys.iter().any(|kv| kv["lease"].as_i64().unwrap_or(0) != 0));
    let etcd_mid = keys_at(&etcd, compact_at + 2).0;

    let mut plinth = Server::plinth();
    let out = restore_into(&mut plinth, &["--from-etcd-snapshot", &snap]);
    assert!(out.contains(&format!("restored revision {etcd_revision}")), "{out}");
    let (keys, rev) = keys_at(&plinth, 0);
    assert_eq!(rev, etcd_revision);
    assert_eq!(keys, etcd_keys, "every key with etcd's create/mod revision, version, value and lease");
    assert_eq!(keys_at(&plinth, compact_at + 2).0, etcd_mid, "history after etcd's compaction is kept");
    let old = plinth.ctl(&["get", "e00", &format!("--rev={}", compact_at - 1)]);
    assert!(old.stderr.contains("compacted"), "{}", old.stderr);
    let leases = ctl_ok(&plinth, &["lease", "list"]);
    assert!(leases.contains(&lease_id) && !leases.contains(&short_id), "{leases}");
    assert_eq!(hashkv(&plinth, &[]), hashkv(&etcd, &[]), "the same history gives etcd's HashKV");
    ctl_ok(&plinth, &["put", "after", "import"]);
    assert_eq!(revision(&plinth), etcd_revision + 1);
}

#[test]
fn three_members_restored_from_one_backup_form_a_cluster_with_its_revisions() {
    let source = Server::plinth();
    let work = tempfile::tempdir().unwrap();
    let backup_dir = work.path().join("backups").display().to_string();
    for i in 0..15 {
        ctl_ok(&source, &["put", &format!("m{:02}", i % 6), &format!("v{i}")]);
    }
    ctl_ok(&source, &["del", "m03"]);
    let snap = snapshot(&source, work.path(), "s.db");
    plinth_ok(&["backup", "from-snapshot", &snap, "--backup-dir", &backup_dir]);
    let (want, revision) = keys_at(&source, 0);

    let mut cluster = plinth_tests::members::Members::create(3, &[]);
    let initial_cluster =
        cluster.members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",");
    for m in &cluster.members {
        let data_dir = m.dir().join("data").display().to_string();
        let (peer, endpoint) = (m.peer_url(), m.endpoint());
        plinth_ok(&[
            "restore",
            "--backup-dir",
            &backup_dir,
            "--data-dir",
            &data_dir,
            "--name",
            &m.name,
            "--initial-cluster",
            &initial_cluster,
            "--initial-advertise-peer-urls",
            &peer,
            "--advertise-client-urls",
            &endpoint,
            "--initial-cluster-token",
            "members-test",
        ]);
    }
    for i in 0..3 {
        cluster.spawn(i);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let leader = runtime.block_on(cluster.wait_leader(Duration::from_secs(30)));
    let write = cluster.members[leader].ctl(&["put", "after", "restore"]);
    assert_eq!(write.code, Some(0), "{}\n{}", write.stderr, cluster.logs());
    for m in &cluster.members {
        let out = m.ctl(&["get", "", "--prefix", "-w", "json", "--consistency=l"]);
        assert_eq!(out.code, Some(0), "{}: {}", m.name, out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["header"]["revision"].as_i64(), Some(revision + 1), "{}", m.name);
        let kvs = v["kvs"].as_array().unwrap();
        let before: Vec<&Value> = kvs.iter().filter(|kv| kv["key"] != "YWZ0ZXI=").collect();
        assert_eq!(before, want.iter().collect::<Vec<_>>(), "{}: keys as restored", m.name);
    }
}

/// `etcdctl <args>` as `root` (the source has auth enabled by then).
fn root_ok(s: &Server, args: &[&str]) -> String {
    let mut with_user = vec!["--user=root:root-pw"];
    with_user.extend_from_slice(args);
    ctl_ok(s, &with_user)
}

/// The same history on etcd 3.5.1 and on Plinth: `etcdutl snapshot status` counts as many
/// keys in both files (the `meta` bucket's `term` and `confState` included, no `authEnabled`
/// before auth was ever enabled) and sees the same revision.
#[test]
fn a_snapshot_counts_the_keys_etcds_does() {
    let work = tempfile::tempdir().unwrap();
    let mut statuses = Vec::new();
    for s in [Server::etcd(), Server::plinth()] {
        ctl_ok(&s, &["put", "a", "1"]);
        ctl_ok(&s, &["put", "a", "2"]);
        ctl_ok(&s, &["del", "a"]);
        ctl_ok(&s, &["put", "b", "1"]);
        ctl_ok(&s, &["user", "add", "alice:pw"]);
        ctl_ok(&s, &["role", "add", "reader"]);
        let snap = work.path().join(format!("{}.db", s.kind())).display().to_string();
        ctl_ok(&s, &["snapshot", "save", &snap]);
        let out = plinth_tests::ctl::etcdutl(&["snapshot", "status", &snap, "-w", "json"], work.path());
        assert_eq!(out.code, Some(0), "etcdutl snapshot status: {}", out.stderr);
        let status: Value = serde_json::from_str(&out.stdout).unwrap();
        statuses.push((status["totalKey"].clone(), status["revision"].clone()));
    }
    assert_eq!(statuses[0], statuses[1], "etcd's (totalKey, revision), then Plinth's");
}

#[test]
fn a_plinth_snapshot_is_an_etcd_data_file_that_etcd_restores() {
    let source = Server::plinth();
    let work = tempfile::tempdir().unwrap();
    let lease_id = write_history(&source, "p", 40, 15);
    let compact_at = revision(&source) - 6;
    ctl_ok(&source, &["compact", &compact_at.to_string()]);
    ctl_ok(&source, &["put", "p00", "after compaction"]);
    ctl_ok(&source, &["del", "p02"]);
    ctl_ok(&source, &["put", "\u{e9}t\u{e9}", "utf-8 key"]);
    let (want, rev) = keys_at(&source, 0);
    let want_mid = keys_at(&source, compact_at + 2).0;
    ctl_ok(&source, &["user", "add", "root:root-pw"]);
    ctl_ok(&source, &["user", "grant-role", "root", "root"]);
    ctl_ok(&source, &["user", "add", "alice:alice-pw"]);
    ctl_ok(&source, &["role", "add", "reader"]);
    ctl_ok(&source, &["role", "grant-permission", "reader", "read", "p0", "p9"]);
    ctl_ok(&source, &["user", "grant-role", "alice", "reader"]);
    ctl_ok(&source, &["auth", "enable"]);
    let auth_view = |s: &Server| {
        ["user get alice", "user get root", "role get reader", "role list", "user list", "auth status"]
            .map(|cmd| root_ok(s, &cmd.split(' ').collect::<Vec<_>>()))
    };
    let source_auth = auth_view(&source);
    let snap = work.path().join("plinth.db").display().to_string();
    root_ok(&source, &["snapshot", "save", &snap]);

    // etcd's offline tool reads the file, and Plinth's own status agrees with it.
    let out = plinth_tests::ctl::etcdutl(&["snapshot", "status", &snap, "-w", "json"], work.path());
    assert_eq!(out.code, Some(0), "etcdutl snapshot status: {}", out.stderr);
    let etcdutl_status: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(etcdutl_status["revision"].as_i64(), Some(rev), "{etcdutl_status}");
    let own: Value = serde_json::from_str(&plinth_ok(&["snapshot", "status", &snap, "-w", "json"])).unwrap();
    assert_eq!(own, etcdutl_status);

    // etcdutl restores it into a data dir that etcd 3.5.1 serves: every key with its
    // revisions, the history after the compaction, the lease, users, roles and auth flag.
    // Both servers below are probed (and asked) as root once auth is on.
    let as_root = || plinth_tests::cluster::Options {
        ctl_flags: vec!["--user=root:root-pw".to_string()],
        ..plinth_tests::cluster::Options::default()
    };
    let mut etcd = Server::start_with(plinth_tests::cluster::Kind::Etcd, as_root());
    etcd.kill9();
    std::fs::remove_dir_all(etcd.data_dir()).expect("remove etcd's data dir");
    let (data_dir, peer) = (etcd.data_dir().display().to_string(), etcd.peer_url());
    let cluster = format!("n1={peer}");
    let out = plinth_tests::ctl::etcdutl(
        &[
            "snapshot",
            "restore",
            &snap,
            "--data-dir",
            &data_dir,
            "--name",
            "n1",
            "--initial-cluster",
            &cluster,
            "--initial-advertise-peer-urls",
            &peer,
        ],
        work.path(),
    );
    assert_eq!(out.code, Some(0), "etcdutl snapshot restore: {}", out.stderr);
    etcd.restart();
    let get = |s: &Server, rev: i64| -> (Vec<Value>, i64) {
        let out = root_ok(s, &["get", "", "--prefix", &format!("--rev={rev}"), "-w", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        (v["kvs"].as_array().cloned().unwrap_or_default(), v["header"]["revision"].as_i64().unwrap())
    };
    assert_eq!(get(&etcd, 0), (want.clone(), rev), "etcd serves the snapshot's keys at its revision");
    let root = ["--user=root:root-pw"];
    assert_eq!(hashkv(&etcd, &root), hashkv(&source, &root), "and answers the source's HashKV");
    assert_eq!(get(&etcd, compact_at + 2).0, want_mid, "and the history after the compaction");
    let old = etcd.ctl(&["--user=root:root-pw", "get", "p00", &format!("--rev={}", compact_at - 1)]);
    assert!(old.stderr.contains("compacted"), "{}", old.stderr);
    assert!(ctl_ok(&etcd, &["lease", "list"]).contains(&lease_id));
    assert_eq!(auth_view(&etcd), source_auth);
    let alice = etcd.ctl(&["--user=alice:alice-pw", "get", "p05"]);
    assert_eq!(alice.code, Some(0), "alice's password and role came along: {}", alice.stderr);
    root_ok(&etcd, &["put", "after", "restore"]);
    assert_eq!(get(&etcd, 0).1, rev + 1);

    // The same file restores into Plinth, auth included.
    let mut restored = Server::start_with(plinth_tests::cluster::Kind::Plinth, as_root());
    let out = restore_into(&mut restored, &["--from-etcd-snapshot", &snap]);
    assert!(out.contains(&format!("restored revision {rev}")), "{out}");
    assert_eq!(get(&restored, 0), (want, rev));
    assert_eq!(get(&restored, compact_at + 2).0, want_mid);
    assert_eq!(auth_view(&restored), source_auth);
}
