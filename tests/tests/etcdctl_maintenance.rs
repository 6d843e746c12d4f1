//! etcdctl maintenance/cluster commands against etcd 3.5.1 and the target server.
//!
//! Values that legitimately differ (ids, raft term/index, db size, version string) are
//! normalized; relations are kept (`leader` and `header.member_id` map to the same
//! placeholder only when they are equal; a member's ID equals the answering member's id).

use plinth_tests::differential;

#[test]
fn status_health_members_alarms_defrag_snapshot() {
    differential("etcdctl_maintenance", |s| {
        s.ctl(&["put", "a", "1"]);
        s.ctl(&["put", "b", "2"]);
        s.ctl(&["del", "a"]);
        let st = s.ctl(&["endpoint", "status", "-w", "json"]);
        // Extra facts the normalized JSON cannot show.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&st.stdout) {
            let status = &v[0]["Status"];
            let version = status["version"].as_str().unwrap_or("");
            let semver = version.split('.').count() == 3
                && version.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            s.note(&format!("status.version is semver X.Y.Z: {semver}"));
            s.note(&format!(
                "leader == header.member_id: {}",
                status["leader"] == status["header"]["member_id"] && !status["leader"].is_null()
            ));
            s.note(&format!(
                "raftAppliedIndex <= raftIndex: {}",
                status["raftAppliedIndex"].as_u64() <= status["raftIndex"].as_u64()
            ));
            s.note(&format!("dbSizeInUse <= dbSize: {}", status["dbSizeInUse"].as_u64() <= status["dbSize"].as_u64()));
        }
        s.ctl(&["endpoint", "health"]);
        s.ctl(&["endpoint", "health", "-w", "json"]);
        s.ctl(&["endpoint", "hashkv", "-w", "json"]);
        s.ctl(&["endpoint", "hashkv", "--rev", "2", "-w", "json"]);
        s.ctl(&["member", "list"]);
        s.ctl(&["member", "list", "-w", "json"]);
        s.ctl(&["alarm", "list"]);
        s.ctl(&["alarm", "disarm"]);
        s.ctl(&["defrag"]);
        s.ctl(&["get", "b", "-w", "json"]);
        let snap = s.server().scratch_dir().join("snap.db");
        let snap = snap.display().to_string();
        s.ctl(&["snapshot", "save", &snap]);
        let len = std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
        s.note(&format!("snapshot file exists and is non-empty: {}", len > 0));
        // The files are not compared: both are etcd data files, but etcd's also holds its raft
        // state and free pages. `backup_restore.rs` reads a Plinth snapshot with etcdutl and
        // restores it into etcd.
        s.ctl(&["endpoint", "status", "-w", "json"]);
    });
}

/// `HashKV` is etcd's hash of its `key` bucket, and Plinth computes the same value from the
/// same history: at the current revision and at older ones, before and after a compaction,
/// with deletes, a key re-created, a multi-put txn, and once every key is deleted (etcd's
/// keep set empty); and the refusals at and below the compact revision. The values are noted
/// as numbers, so the transcripts compare them.
#[test]
fn hashkv_is_etcds_hash_of_the_same_history() {
    differential("etcdctl_hashkv", |s| {
        let hashkv = |s: &mut plinth_tests::Session<'_>, rev: i64| {
            let out = s.server().ctl(&["endpoint", "hashkv", "--rev", &rev.to_string(), "-w", "json"]);
            let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
            let h = &v[0]["HashKV"];
            s.note(&format!(
                "hashkv at {rev}: hash {} compact_revision {} ({})",
                h["hash"].as_u64().map_or("none".into(), |h| format!("d{h}")),
                h["compact_revision"],
                out.stderr.lines().last().unwrap_or("").trim()
            ));
        };
        for i in 0..12 {
            s.ctl(&["put", &format!("k{}", i % 5), &format!("v{i}")]); // 2..=13
        }
        s.ctl(&["del", "k1"]); // 14
        s.ctl(&["put", "k1", "again"]); // 15
        s.ctl_stdin(&["txn"], "\nput k2 t1\nput k5 t2\n\n\n"); // 16
        s.ctl(&["del", "k3"]); // 17
                               // A negative revision hashes nothing: an empty store's hash.
        for rev in [0, 5, 13, 16, -1] {
            hashkv(s, rev);
        }
        s.ctl(&["compact", "10", "--physical"]);
        // 9 is below the compact revision and 10 is it: etcd refuses both.
        for rev in [0, 9, 10, 11, 14, 17] {
            hashkv(s, rev);
        }
        s.ctl(&["del", "k", "--prefix"]); // 18
        hashkv(s, 0);
        s.ctl(&["compact", "18", "--physical"]);
        s.ctl(&["put", "k9", "last"]); // 19
        hashkv(s, 0);
    });
}
