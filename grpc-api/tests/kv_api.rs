//! The KV, Lease, Watch, Maintenance and Cluster RPCs through a real etcd v3 client against a
//! `plinth serve` process, including every error path with etcd's code and message.

mod common;

use std::time::Duration;

use common::{status, Server};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    WatchOptions,
};
use tonic::Code;

#[tokio::test]
async fn revisions_start_at_one_and_puts_bump_them() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let resp = c.get("missing", None).await.unwrap();
    assert_eq!(resp.header().unwrap().revision(), 1, "an empty store is at revision 1");
    assert!(resp.kvs().is_empty());
    let put = c.put("a", "1", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 2);
    let put = c.put("a", "2", Some(PutOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 3);
    let prev = put.prev_key().expect("prev_kv");
    assert_eq!(prev.value(), b"1");
    let got = c.get("a", None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version()), (2, 3, 2));
    // Delete then re-create resets create_revision and version.
    let del = c.delete("a", Some(DeleteOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(del.deleted(), 1);
    assert_eq!(del.prev_kvs()[0].value(), b"2");
    c.put("a", "3", None).await.unwrap();
    let kv = c.get("a", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version()), (5, 5, 1));
    // A delete that matches nothing does not bump the revision.
    let del = c.delete("nothing", None).await.unwrap();
    assert_eq!(del.deleted(), 0);
    assert_eq!(del.header().unwrap().revision(), 5);
    let header = del.header().unwrap();
    assert_ne!(header.cluster_id(), 0);
    assert_ne!(header.member_id(), 0);
    assert_ne!(header.raft_term(), 0);
}

#[tokio::test]
async fn range_forms_limit_count_sort_and_history() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    for (k, v) in [("k1", "c"), ("k2", "b"), ("k3", "a"), ("z", "z")] {
        c.put(k, v, None).await.unwrap();
    }
    let prefix = c.get("k", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(prefix.count(), 3);
    let limited = c.get("k", Some(GetOptions::new().with_prefix().with_limit(2))).await.unwrap();
    assert_eq!(limited.kvs().len(), 2);
    assert!(limited.more());
    assert_eq!(limited.count(), 3, "count is not bounded by limit");
    let all = c.get("\0", Some(GetOptions::new().with_from_key())).await.unwrap();
    assert_eq!(all.count(), 4);
    let count_only = c.get("k", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap();
    assert!(count_only.kvs().is_empty());
    assert_eq!(count_only.count(), 3);
    let keys_only = c.get("k", Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
    assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()));
    assert_eq!(keys_only.kvs()[0].mod_revision(), 2);
    let by_value = c
        .get("k", Some(GetOptions::new().with_prefix().with_sort(SortTarget::Value, SortOrder::Ascend)))
        .await
        .unwrap();
    let keys: Vec<&[u8]> = by_value.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, vec![&b"k3"[..], b"k2", b"k1"]);
    // A read at an older revision sees the old value; the header still carries the current
    // revision.
    c.put("k1", "new", None).await.unwrap();
    let old = c.get("k1", Some(GetOptions::new().with_revision(2))).await.unwrap();
    assert_eq!(old.kvs()[0].value(), b"c");
    assert_eq!(old.header().unwrap().revision(), 6);
    // A future revision is an error.
    let err = status(c.get("k1", Some(GetOptions::new().with_revision(100))).await.unwrap_err());
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(err.message(), "etcdserver: mvcc: required revision is a future revision");
    // An empty key is an error.
    let err = status(c.get("", None).await.unwrap_err());
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: key is not provided");
    // Serializable reads work.
    let ser = c.get("k1", Some(GetOptions::new().with_serializable())).await.unwrap();
    assert_eq!(ser.kvs()[0].value(), b"new");
}

#[tokio::test]
async fn compaction_and_its_errors() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    for i in 0..5 {
        c.put("key", format!("v{i}"), None).await.unwrap();
    }
    // Revisions 2..=6 hold v0..v4.
    c.compact(4, None).await.unwrap();
    let at_compact = c.get("key", Some(GetOptions::new().with_revision(4))).await.unwrap();
    assert_eq!(at_compact.kvs()[0].value(), b"v2", "the compact revision stays readable");
    let err = status(c.get("key", Some(GetOptions::new().with_revision(3))).await.unwrap_err());
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(err.message(), "etcdserver: mvcc: required revision has been compacted");
    let err = status(c.compact(4, None).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: mvcc: required revision has been compacted");
    let err = status(c.compact(100, None).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: mvcc: required revision is a future revision");
    c.compact(5, Some(etcd_client::CompactionOptions::new().with_physical())).await.unwrap();
}

#[tokio::test]
async fn txn_branches_and_limits() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    // The apiserver's create: MOD == 0 → put.
    let create =
        Txn::new().when([Compare::mod_revision("obj", CompareOp::Equal, 0)]).and_then([TxnOp::put("obj", "v1", None)]);
    let resp = c.txn(create.clone()).await.unwrap();
    assert!(resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), 2);
    // The same create again fails, and the failure branch reads the key.
    let update = Txn::new()
        .when([Compare::mod_revision("obj", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("obj", "v2", None)])
        .or_else([TxnOp::get("obj", None)]);
    let resp = c.txn(update).await.unwrap();
    assert!(!resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), 2, "a txn that writes nothing keeps the revision");
    match &resp.op_responses()[0] {
        etcd_client::TxnOpResponse::Get(get) => assert_eq!(get.kvs()[0].value(), b"v1"),
        other => panic!("expected a range response, got {other:?}"),
    }
    // VALUE compare on a missing key is false.
    let resp = c
        .txn(Txn::new().when([Compare::value("nope", CompareOp::Equal, "")]).and_then([TxnOp::put("x", "1", None)]))
        .await
        .unwrap();
    assert!(!resp.succeeded());
    // Duplicate keys among writes.
    let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    let err = status(c.txn(dup).await.unwrap_err());
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: duplicate key given in txn request");
    // Too many operations.
    let ops: Vec<TxnOp> = (0..129).map(|i| TxnOp::put(format!("k{i}"), "v", None)).collect();
    let err = status(c.txn(Txn::new().and_then(ops)).await.unwrap_err());
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: too many operations in txn request");
    // Later ops see earlier ops' writes.
    let resp = c.txn(Txn::new().and_then([TxnOp::put("seq", "1", None), TxnOp::get("seq", None)])).await.unwrap();
    match &resp.op_responses()[1] {
        etcd_client::TxnOpResponse::Get(get) => assert_eq!(get.kvs()[0].value(), b"1"),
        other => panic!("expected a range response, got {other:?}"),
    }
}

#[tokio::test]
async fn request_size_and_put_flag_errors() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let big = vec![b'x'; 1536 * 1024 + 1];
    let err = status(c.put("big", big, None).await.unwrap_err());
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: request is too large");
    // A value that fits the limit by itself but not with etcd's entry header (at least 12
    // bytes: a request id of any member has 49 bits or more).
    let err = status(c.put("big", vec![b'x'; 1536 * 1024 - 20], None).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: request is too large");
    c.put("big", vec![b'x'; 1536 * 1024 - 40], None).await.unwrap();
    // A txn that only reads enters no log, so the limit does not bound it (etcd serves one
    // up to gRPC's message limit, 2 MiB). This one names its key twice: 1.6 MiB.
    let key = vec![b'k'; 800 * 1024];
    let only_reads =
        Txn::new().when([Compare::version(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::get(key.clone(), None)]);
    let resp = c.txn(only_reads).await.unwrap();
    assert!(resp.succeeded());
    // Above gRPC's message limit (the request limit and 512 KiB), as etcd's gRPC server.
    let err = status(c.put("huge", vec![b'x'; 2 * 1024 * 1024], None).await.unwrap_err());
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "grpc: received message larger than max (2097163 vs. 2097152)");
    // The same limit for every service (tonic's own default is 4 MiB).
    let name = vec![b'n'; 2 * 1024 * 1024];
    let too_large = "grpc: received message larger than max (2097157 vs. 2097152)";
    let err = status(c.leader(name.clone()).await.unwrap_err());
    assert_eq!((err.code(), err.message()), (Code::ResourceExhausted, too_large));
    let err = status(c.lock(name, None).await.unwrap_err());
    assert_eq!((err.code(), err.message()), (Code::ResourceExhausted, too_large));
    let err = status(c.put("nokey", "", Some(PutOptions::new().with_ignore_value())).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: key not found");
    c.put("k", "v", None).await.unwrap();
    let err = status(c.put("k", "v2", Some(PutOptions::new().with_ignore_value())).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: value is provided");
    let err = status(c.put("k", "v", Some(PutOptions::new().with_lease(12345))).await.unwrap_err());
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "etcdserver: requested lease not found");
}

#[tokio::test]
async fn leases_grant_attach_keepalive_revoke_and_expire() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let lease = c.lease_grant(60, None).await.unwrap();
    assert_eq!(lease.ttl(), 60);
    c.put("leased", "v", Some(PutOptions::new().with_lease(lease.id()))).await.unwrap();
    let ttl =
        c.lease_time_to_live(lease.id(), Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 60);
    assert!(ttl.ttl() > 55 && ttl.ttl() <= 60, "{}", ttl.ttl());
    assert_eq!(ttl.keys(), &[b"leased".to_vec()]);
    let leases = c.leases().await.unwrap();
    assert_eq!(leases.leases().len(), 1);
    let (mut keeper, mut responses) = c.lease_keep_alive(lease.id()).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let renewed = responses.message().await.unwrap().unwrap();
    assert_eq!(renewed.ttl(), 60);
    c.lease_revoke(lease.id()).await.unwrap();
    assert!(c.get("leased", None).await.unwrap().kvs().is_empty(), "revoke deletes attached keys");
    let gone = c.lease_time_to_live(lease.id(), None).await.unwrap();
    assert_eq!(gone.ttl(), -1);
    let err = status(c.lease_revoke(lease.id()).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: requested lease not found");
    let err = status(c.lease_grant(9_000_000_001, None).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: too large lease TTL");
    let err = status(
        c.lease_grant(60, Some(etcd_client::LeaseGrantOptions::new().with_id(77)))
            .await
            .and(c.lease_grant(60, Some(etcd_client::LeaseGrantOptions::new().with_id(77))).await)
            .unwrap_err(),
    );
    assert_eq!(err.message(), "etcdserver: lease already exists");

    // Expiry: the leader revokes the lease and the key goes with a DELETE event.
    let short = c.lease_grant(1, None).await.unwrap();
    assert_eq!(short.ttl(), 2, "TTLs below the minimum are raised to it");
    let put = c.put("ephemeral", "v", Some(PutOptions::new().with_lease(short.id()))).await.unwrap();
    let mut watch = c
        .watch(
            "ephemeral",
            Some(WatchOptions::new().with_prev_key().with_start_revision(put.header().unwrap().revision() + 1)),
        )
        .await
        .unwrap();
    let created = watch.message().await.unwrap().unwrap();
    assert!(created.created());
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let resp = watch.message().await.unwrap().unwrap();
            if let Some(e) = resp.events().first() {
                return e.clone();
            }
        }
    })
    .await
    .expect("the lease expires within 10 s");
    assert_eq!(event.event_type(), EventType::Delete);
    assert_eq!(event.prev_kv().unwrap().value(), b"v");
}

#[tokio::test]
async fn watch_history_prev_kv_filters_cancel_and_compaction() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    c.put("w/a", "1", None).await.unwrap(); // 2
    c.put("w/a", "2", None).await.unwrap(); // 3
    c.delete("w/a", None).await.unwrap(); // 4
    let mut watch =
        c.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(2).with_prev_key())).await.unwrap();
    let created = watch.message().await.unwrap().unwrap();
    assert!(created.created());
    assert_eq!(created.watch_id(), 0, "watch ids start at 0 per stream");
    let mut events = Vec::new();
    while events.len() < 3 {
        let resp = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
        events.extend(resp.events().iter().cloned());
    }
    let kinds: Vec<(EventType, i64)> =
        events.iter().map(|e| (e.event_type(), e.kv().unwrap().mod_revision())).collect();
    assert_eq!(kinds, vec![(EventType::Put, 2), (EventType::Put, 3), (EventType::Delete, 4)]);
    assert!(events[0].prev_kv().is_none(), "a create has no prev_kv");
    assert_eq!(events[1].prev_kv().unwrap().value(), b"1");
    assert_eq!(events[2].prev_kv().unwrap().value(), b"2");
    assert_eq!(events[2].kv().unwrap().version(), 0, "a DELETE kv holds only key and revision");
    // Live events after history.
    c.put("w/b", "x", None).await.unwrap(); // 5
    let resp = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(resp.events()[0].kv().unwrap().mod_revision(), 5);
    // Progress request: every watcher synced → one response with watch_id -1.
    watch.request_progress().await.unwrap();
    let progress = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert!(progress.events().is_empty());
    assert_eq!(progress.watch_id(), -1);
    assert_eq!(progress.header().unwrap().revision(), 5);
    // Filters: NOPUT on a second watcher of the same stream.
    watch
        .watch("w/", Some(WatchOptions::new().with_prefix().with_filters([etcd_client::WatchFilterType::NoPut])))
        .await
        .unwrap();
    let created = watch.message().await.unwrap().unwrap();
    assert!(created.created());
    assert_eq!(created.watch_id(), 1);
    c.put("w/c", "y", None).await.unwrap(); // 6
    c.delete("w/c", None).await.unwrap(); // 7
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let resp = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
        for e in resp.events() {
            seen.push((resp.watch_id(), e.event_type(), e.kv().unwrap().mod_revision()));
        }
    }
    seen.sort_by_key(|s| (s.0, s.2));
    assert_eq!(seen, vec![(0, EventType::Put, 6), (0, EventType::Delete, 7), (1, EventType::Delete, 7)]);
    // Cancel.
    watch.cancel(1).await.unwrap();
    let canceled = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert!(canceled.canceled());
    assert_eq!(canceled.watch_id(), 1);
    // A watch below the compact revision: Created, then canceled with compact_revision.
    c.compact(6, None).await.unwrap();
    let mut old = c.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(3))).await.unwrap();
    let created = old.message().await.unwrap().unwrap();
    assert!(created.created());
    let compacted = tokio::time::timeout(Duration::from_secs(5), old.message()).await.unwrap().unwrap().unwrap();
    assert!(compacted.canceled());
    assert_eq!(compacted.compact_revision(), 6);
    // Watching at the compact revision itself works.
    let mut at = c.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(6))).await.unwrap();
    assert!(at.message().await.unwrap().unwrap().created());
    let resp = tokio::time::timeout(Duration::from_secs(5), at.message()).await.unwrap().unwrap().unwrap();
    assert!(!resp.canceled());
    assert_eq!(resp.events()[0].kv().unwrap().mod_revision(), 6);
}

#[tokio::test]
async fn maintenance_and_cluster() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    c.put("a", "1", None).await.unwrap();
    let status = c.status().await.unwrap();
    let version = status.version();
    let parts: Vec<u64> = version.split('.').map(|p| p.parse().unwrap()).collect();
    assert!(parts >= vec![3, 5, 13], "Status.version {version} must be ≥ 3.5.13");
    assert_eq!(status.leader(), status.header().unwrap().member_id());
    assert!(status.raft_index() >= 2);
    assert!(status.db_size() > 0);
    let members = c.member_list().await.unwrap();
    assert_eq!(members.members().len(), 1);
    assert_eq!(members.members()[0].name(), "n1");
    assert_eq!(members.members()[0].id(), status.leader());
    let h1 = c.hash_kv(0).await.unwrap();
    let h2 = c.hash_kv(0).await.unwrap();
    assert_eq!(h1.hash(), h2.hash());
    c.put("b", "2", None).await.unwrap();
    assert_ne!(c.hash_kv(0).await.unwrap().hash(), h1.hash());
    // etcd answers Defragment, MoveLeader and Snapshot without a header (and 3.5 sends no
    // snapshot version); clients such as etcd-client's own tests check that.
    assert!(c.defragment().await.unwrap().header().is_none());
    let alarms = c.alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None).await.unwrap();
    assert!(alarms.alarms().is_empty());
    assert!(c.move_leader(status.leader()).await.unwrap().header().is_none());
    // etcd's stream: data messages, the last with remaining_bytes 0, then the SHA-256 of
    // the data (padded to 512 bytes) alone, also 0. etcd-client's `maintenance` example
    // stops reading data at the first 0 and then reads the checksum.
    let mut snapshot = c.snapshot().await.unwrap();
    let mut messages = Vec::new();
    while let Some(chunk) = snapshot.message().await.unwrap() {
        assert!(chunk.header().is_none());
        messages.push((chunk.remaining_bytes(), chunk.blob().to_vec()));
    }
    let (sum, data) = messages.split_last().expect("a checksum message");
    assert_eq!(sum.0, 0);
    let ends: Vec<usize> = data.iter().enumerate().filter(|(_, m)| m.0 == 0).map(|(i, _)| i).collect();
    assert_eq!(ends, vec![data.len() - 1], "only the last data message has remaining_bytes 0");
    let data: Vec<u8> = data.iter().flat_map(|m| m.1.iter().copied()).collect();
    assert!(!data.is_empty() && data.len().is_multiple_of(512), "{} bytes of data", data.len());
    use sha2::Digest;
    assert_eq!(sum.1, sha2::Sha256::digest(&data).to_vec());
    let err = status_of(c.member_promote(status.leader()).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: can only promote a learner member");
    let err = status_of(c.member_remove(12345).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: member not found");
}

fn status_of(e: etcd_client::Error) -> tonic::Status {
    status(e)
}

/// Auth is served: enabling it on a fresh member fails as etcd's does, without a root user.
#[tokio::test]
async fn auth_enable_without_root_is_refused_like_etcd() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let err = status(c.auth_enable().await.unwrap_err());
    assert_eq!((err.code(), err.message()), (Code::FailedPrecondition, "etcdserver: root user does not exist"));
}

#[tokio::test]
async fn nospace_quota_raises_the_alarm() {
    let server = Server::start(&["--quota-backend-bytes", "4096"]);
    let mut c = server.client().await;
    let mut failed = None;
    for i in 0..64 {
        if let Err(e) = c.put(format!("k{i}"), vec![b'v'; 256], None).await {
            failed = Some(status(e));
            break;
        }
    }
    let err = failed.expect("writes fail once the quota is exceeded");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "etcdserver: mvcc: database space exceeded");
    let alarms = c.alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None).await.unwrap();
    assert_eq!(alarms.alarms().len(), 1);
    // Deletes are still accepted.
    c.delete("k", Some(DeleteOptions::new().with_prefix())).await.unwrap();
}

#[tokio::test]
async fn max_request_bytes_flag_sets_the_limit() {
    let server = Server::start(&["--max-request-bytes", "2097152"]);
    let mut c = server.client().await;
    // Above etcd's default of 1.5 MiB, below the configured 2 MiB.
    c.put("big", vec![b'x'; 1800 * 1024], None).await.unwrap();
    let err = status(c.put("bigger", vec![b'x'; 2 * 1024 * 1024 + 1], None).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: request is too large");
}

/// A fragmenting watch cuts its responses where etcd's does: at the request limit plus gRPC's
/// 512 KiB (etcd 3.5.1 sent three events of 900 KB as two responses, the first two events
/// together).
#[tokio::test]
async fn fragmented_watch_responses_are_cut_at_etcds_limit() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let first = c.put("f/0", vec![b'x'; 900_000], None).await.unwrap().header().unwrap().revision();
    for key in ["f/1", "f/2"] {
        c.put(key, vec![b'x'; 900_000], None).await.unwrap();
    }
    let options = WatchOptions::new().with_prefix().with_start_revision(first).with_fragment();
    let mut watch = c.watch("f/", Some(options)).await.unwrap();
    assert!(watch.message().await.unwrap().unwrap().created());
    let mut shape = Vec::new();
    while shape.iter().sum::<usize>() < 3 {
        let resp = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap().unwrap();
        shape.push(resp.events().len());
    }
    assert_eq!(shape, vec![2, 1], "events per response");
}
