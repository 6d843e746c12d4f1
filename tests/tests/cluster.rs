//! Process tests of replication: three real `plinth serve` members on loopback, bootstrapped
//! with etcd's `--initial-cluster` flags.
//!
//! - every member serves writes (followers forward them) and linearizable reads (ReadIndex
//!   on followers), and `MemberList` reports all three with their client URLs;
//! - SIGKILL of the leader during a write load: writes continue on the survivors within a
//!   few election timeouts; the killed member restarts and catches up;
//! - at the end every acknowledged write is present on every member, and all members have
//!   the same `HashKV` at the same revision and the same full range.
//!
//! Each test is bounded (well under 60 s).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use plinth_tests::cluster::plinth_bin;
use plinth_tests::ports::{self, Port};
use plinth_tests::process::scrub_env;

/// Raft timing of the members under test: elections after 0.5–1 s of silence.
const HEARTBEAT_MS: u64 = 50;
const ELECTION_MS: u64 = 500;
/// How long a cluster gets to elect its first leader.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest acceptable write outage after the leader is killed (several election timeouts).
const FAILOVER_MAX: Duration = Duration::from_secs(8);
/// How long a restarted member gets to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(15);

struct Member {
    name: String,
    dir: PathBuf,
    client: Port,
    peer: Port,
    child: Option<Child>,
}

impl Member {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client.get())
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer.get())
    }

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Three members; every process is killed with SIGKILL on drop.
struct Cluster {
    _tmp: tempfile::TempDir,
    members: Vec<Member>,
}

impl Cluster {
    fn start() -> Cluster {
        let tmp = tempfile::Builder::new().prefix("plinth-cluster-").tempdir().expect("temp dir");
        let members: Vec<Member> = (1..=3)
            .map(|i| {
                let dir = tmp.path().join(format!("n{i}"));
                std::fs::create_dir_all(&dir).expect("member dir");
                Member { name: format!("n{i}"), dir, client: ports::reserve(), peer: ports::reserve(), child: None }
            })
            .collect();
        let mut c = Cluster { _tmp: tmp, members };
        for i in 0..3 {
            c.spawn(i);
        }
        c
    }

    fn initial_cluster(&self) -> String {
        self.members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",")
    }

    fn spawn(&mut self, i: usize) {
        let initial_cluster = self.initial_cluster();
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "{} already running", m.name);
        let log = OpenOptions::new().create(true).append(true).open(m.dir.join("server.log")).expect("log");
        let mut cmd = Command::new(plinth_bin());
        cmd.arg("serve");
        for (flag, value) in [
            ("--name", m.name.clone()),
            ("--data-dir", m.dir.join("data").display().to_string()),
            ("--listen-client-urls", m.endpoint()),
            ("--advertise-client-urls", m.endpoint()),
            ("--listen-peer-urls", m.peer_url()),
            ("--initial-advertise-peer-urls", m.peer_url()),
            ("--initial-cluster", initial_cluster),
            ("--initial-cluster-state", "new".to_owned()),
            ("--initial-cluster-token", "cluster-test".to_owned()),
            ("--heartbeat-interval", HEARTBEAT_MS.to_string()),
            ("--election-timeout", ELECTION_MS.to_string()),
        ] {
            cmd.arg(flag).arg(value);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("dup log")).stderr(log);
        scrub_env(&mut cmd);
        m.child = Some(cmd.spawn().expect("spawn plinth"));
    }

    fn logs(&self) -> String {
        self.members.iter().map(|m| format!("--- {} ---\n{}", m.name, m.log_tail(30))).collect::<Vec<_>>().join("\n")
    }

    /// Index of the member every running member names as leader, once they agree.
    async fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ids = BTreeMap::new();
            let mut leaders = Vec::new();
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                if let Ok(mut c) = connect(&m.endpoint()).await {
                    if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), c.status()).await {
                        ids.insert(s.header().map_or(0, |h| h.member_id()), i);
                        leaders.push(s.leader());
                    }
                }
            }
            let running = self.members.iter().filter(|m| m.child.is_some()).count();
            if leaders.len() == running && leaders.iter().all(|l| *l != 0 && *l == leaders[0]) {
                if let Some(i) = ids.get(&leaders[0]) {
                    return *i;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader within {timeout:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill9();
        }
    }
}

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
    let c = Cluster::start();
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

#[test]
fn leader_sigkill_under_load_loses_no_acknowledged_write() {
    let rt = runtime();
    let mut c = Cluster::start();
    let leader = rt.block_on(c.wait_leader(START_TIMEOUT));

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(Ack, Instant)>>> = Arc::default();
    let writers: Vec<_> = c
        .members
        .iter()
        .map(|m| rt.spawn(writer(m.endpoint(), format!("w-{}", m.name), stop.clone(), acked.clone())))
        .collect();
    let wait_acks = |n: usize, since: Option<Instant>, limit: Duration| {
        let start = Instant::now();
        loop {
            let count = acked.lock().unwrap().iter().filter(|(_, at)| since.is_none_or(|s| *at > s)).count();
            if count >= n {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                return limit;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    assert!(wait_acks(60, None, Duration::from_secs(15)) < Duration::from_secs(15), "writes before the kill");

    // SIGKILL the leader mid-load; the survivors elect a new one and writes go on.
    let killed_at = Instant::now();
    c.members[leader].kill9();
    let outage = wait_acks(10, Some(killed_at), FAILOVER_MAX);
    assert!(outage < FAILOVER_MAX, "no write acknowledged within {FAILOVER_MAX:?} of killing the leader\n{}", c.logs());
    let new_leader = rt.block_on(c.wait_leader(FAILOVER_MAX));
    assert_ne!(new_leader, leader);
    eprintln!("writes resumed {outage:?} after the leader was killed");

    // The killed member restarts on its data dir and catches up while writes go on.
    c.spawn(leader);
    let restarted_at = Instant::now();
    wait_acks(20, Some(restarted_at), Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        rt.block_on(w).expect("writer task");
    }
    let acked: Vec<Ack> = acked.lock().unwrap().iter().map(|(a, _)| a.clone()).collect();

    rt.block_on(async {
        let mut leader_client = must_connect(&c.members[new_leader].endpoint()).await;
        let (revision, reference) = full_range(&mut leader_client).await;
        for (k, v, rev) in &acked {
            assert_eq!(
                reference.get(k),
                Some(&(v.clone(), *rev)),
                "acknowledged put of {k} at {rev} missing or changed"
            );
        }
        let hash = leader_client.hash_kv(revision).await.expect("hash kv on the leader").hash();
        for m in &c.members {
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
                    Ok(Ok(r)) if r.header().map_or(0, |h| h.revision()) >= revision => {
                        break full_range(&mut client).await
                    }
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
    });
}
