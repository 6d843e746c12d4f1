//! The fault schedules of the linearizability scenarios, each seeded and bounded by the end
//! of the load, and [`Rig`]: a cluster with what its faults need (network namespaces, a
//! tmpfs, the fsync shim) and the heal that undoes every fault before the final checks.
//!
//! | kind | what happens | expected of the members |
//! |---|---|---|
//! | `Process` | SIGKILL or SIGSTOP of the leader or a follower, then restart or SIGCONT | failover; nothing acknowledged is lost |
//! | `Partition` | a minority isolated, a majority/minority split, the leader isolated, one direction cut | only a side with a quorum serves writes and linearizable reads |
//! | `Membership` | learner added and promoted, a follower removed, another learner, the leader removed | the history stays linearizable across every change |
//! | `FullDisk` | one member's data dir (a tmpfs) filled by a ballast file; the member restarted while full; space back by deleting the ballast or growing the tmpfs | the member stops or refuses; it restarts clean and catches up |
//! | `FsyncError` | one member's fsyncs fail with `EIO` | the member stops; restarted without the fault it lost nothing acknowledged |
//! | `Corruption` | bytes flipped in a stopped member's WAL segment, then in one of its SST files | it refuses to start with an error naming the file; the others keep serving |
//! | `SlowLinks` | every peer connection through a proxy ([`plinth_tests::netproxy`]): delay and jitter, stalls as after lost packets, cut connections, one member's links far slower than the heartbeat | elections when a leader seems gone; nothing acknowledged is lost, no stale read |

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use plinth_tests::faults::{self, FsyncShim, Tmpfs};
use plinth_tests::members::{add_member_when_healthy, remove_member_when_healthy, Members};
use plinth_tests::netns::Net;
use plinth_tests::netproxy::{Conditions, Proxy};
use plinth_tests::ports::{self, Port};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{connect, LEADER_TIMEOUT};

/// What goes wrong during a scenario's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL or SIGSTOP of the leader or a follower.
    Process,
    /// Network partitions between members, each in its own namespace.
    Partition,
    /// Learners added and promoted, a follower and the leader removed.
    Membership,
    /// One member's data dir on a tmpfs that fills up.
    FullDisk,
    /// fsync/fdatasync failing with EIO in one member.
    FsyncError,
    /// A stopped member's WAL segment, then one of its SST files, corrupted.
    Corruption,
    /// Peer links delayed, stalled (lost packets) and cut by a proxy in front of each member.
    SlowLinks,
}

/// Size of the tmpfs of the `FullDisk` member's data dir.
const TMPFS_BYTES: u64 = 128 << 20;
/// Its size once grown by `mount -o remount,size=`.
const TMPFS_GROWN_BYTES: u64 = 256 << 20;
/// How long a member gets to stop once its disk is full or its fsyncs fail.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes flipped in a corrupted file.
const FLIP_BYTES: usize = 64;
/// The member whose data dir is on the tmpfs.
const FULL_DISK_MEMBER: usize = 0;
/// Members added by the `Membership` schedule (slots made before the load starts).
const MEMBERS_ADDED_MAX: usize = 2;

/// Faults injected so far, by kind (`sigkill`, `partition-minority`, ...).
#[derive(Debug, Default, Clone)]
pub struct Injected(pub BTreeMap<&'static str, usize>);

impl Injected {
    fn add(&mut self, kind: &'static str) {
        *self.0.entry(kind).or_default() += 1;
    }

    pub fn total(&self) -> usize {
        self.0.values().sum()
    }

    /// `kind n, kind n` (empty when none).
    pub fn by_kind(&self) -> String {
        self.0.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
    }
}

/// A cluster under test and what its faults need; drop kills the members first, then
/// unmounts and deletes what the faults made.
pub struct Rig {
    pub cluster: Members,
    pub fault: Fault,
    /// Members that belong to the cluster now (bootstrapped or added, and not removed).
    pub active: BTreeSet<usize>,
    net: Option<Net>,
    tmpfs: Option<Tmpfs>,
    shim: Option<FsyncShim>,
    /// Members whose fsyncs were made to fail (restarted without the shim at the latest on heal).
    fsync_failed: BTreeSet<usize>,
    /// The proxy in front of each member's peer port (`SlowLinks`), with the port it holds.
    proxies: Vec<(Proxy, Port)>,
}

impl Rig {
    /// Starts `n` members set up for `fault`; the cluster has no known leader yet.
    pub fn start(n: usize, fault: Fault) -> Rig {
        let extra: &[&str] = match fault {
            // Frequent store flushes, so the members have SST files to corrupt.
            Fault::Corruption => &["--experimental-log-purge-interval-ms", "1000"],
            _ => &[],
        };
        let mut rig = Rig {
            cluster: Members::create(n, extra),
            fault,
            active: (0..n).collect(),
            net: None,
            tmpfs: None,
            shim: None,
            fsync_failed: BTreeSet::new(),
            proxies: Vec::new(),
        };
        match fault {
            Fault::Partition => {
                let mut net = Net::new(n);
                for (i, m) in rig.cluster.members.iter_mut().enumerate() {
                    m.host = net.host(i);
                    m.netns = Some(net.namespace(i).to_owned());
                }
                net.set_peer_ports(rig.cluster.members.iter().map(|m| m.peer_port()).collect());
                rig.net = Some(net);
            }
            Fault::FullDisk => {
                let data = rig.cluster.members[FULL_DISK_MEMBER].dir().join("data");
                rig.tmpfs = Some(Tmpfs::mount(&data, TMPFS_BYTES));
            }
            Fault::FsyncError => {
                let shim = FsyncShim::build();
                for (i, m) in rig.cluster.members.iter_mut().enumerate() {
                    m.env = shim.env(i);
                }
                rig.shim = Some(shim);
            }
            Fault::SlowLinks => {
                for (i, m) in rig.cluster.members.iter_mut().enumerate() {
                    let port = ports::reserve();
                    let listener = std::net::TcpListener::bind(("127.0.0.1", port.get())).expect("bind a proxy port");
                    let target = std::net::SocketAddr::from(([127, 0, 0, 1], m.peer_port()));
                    rig.proxies.push((Proxy::start(listener, target, 0x51ed + i as u64), port));
                    m.advertised_peer_port = Some(rig.proxies[i].1.get());
                }
            }
            Fault::Process | Fault::Membership | Fault::Corruption => {}
        }
        for i in 0..n {
            rig.cluster.spawn(i);
        }
        if fault == Fault::Membership {
            for _ in 0..MEMBERS_ADDED_MAX {
                rig.cluster.add_member();
            }
        }
        rig
    }

    /// The client endpoints of every slot, added members' included.
    pub fn endpoints(&self) -> Vec<String> {
        self.cluster.members.iter().map(|m| m.endpoint()).collect()
    }

    /// Undoes every fault: heals the network, frees the disk, and runs every active member
    /// again (without the fsync shim for those whose fsyncs failed).
    pub fn heal(&mut self) {
        if let Some(net) = &mut self.net {
            net.heal();
        }
        if let Some(t) = &self.tmpfs {
            let _ = std::fs::remove_file(t.path().join(BALLAST));
        }
        for (p, _) in &self.proxies {
            p.set(Conditions::CLEAN);
        }
        for i in std::mem::take(&mut self.fsync_failed) {
            let m = &mut self.cluster.members[i];
            m.kill9();
            m.env.clear();
            if let Some(shim) = &self.shim {
                shim.untrigger(i);
            }
        }
        for &i in &self.active {
            let m = &mut self.cluster.members[i];
            if m.is_paused() {
                m.resume();
            }
            if !m.is_running() {
                self.cluster.spawn(i);
            }
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Ordering: processes first, so the tmpfs unmounts cleanly and no member outlives
        // its namespace.
        for m in &mut self.cluster.members {
            m.kill9();
        }
        self.tmpfs.take();
        self.net.take();
        self.proxies.clear();
    }
}

/// Name of the file that fills the tmpfs.
const BALLAST: &str = "ballast";

/// Waits for member `i` to exit on its own, up to `limit`; its exit status if it did.
async fn wait_exit(c: &mut Members, i: usize, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = c.members[i].exit_status() {
            return Some(status);
        }
        if !c.members[i].is_running() || Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader among the active members, once they agree.
async fn leader_of(rig: &Rig) -> usize {
    rig.cluster.wait_leader(LEADER_TIMEOUT).await
}

/// Injects `rig.fault` on a schedule drawn from `seed` until `load_end`.
pub async fn inject(rig: &mut Rig, seed: u64, load_end: Instant) -> Injected {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut injected = Injected::default();
    match rig.fault {
        Fault::Process => process(rig, &mut rng, load_end, &mut injected).await,
        Fault::Partition => partitions(rig, &mut rng, load_end, &mut injected).await,
        Fault::Membership => membership(rig, &mut rng, load_end, &mut injected).await,
        Fault::FullDisk => full_disk(rig, &mut rng, load_end, &mut injected).await,
        Fault::FsyncError => fsync_errors(rig, &mut rng, load_end, &mut injected).await,
        Fault::Corruption => corruption(rig, &mut rng, load_end, &mut injected).await,
        Fault::SlowLinks => slow_links(rig, &mut rng, load_end, &mut injected).await,
    }
    injected
}

/// Sleeps a drawn pause; false when the load ends before the pause plus `work` would.
async fn pause(rng: &mut StdRng, load_end: Instant, millis: std::ops::Range<u64>, work: Duration) -> bool {
    let pause = Duration::from_millis(rng.random_range(millis));
    if Instant::now() + pause + work >= load_end {
        return false;
    }
    tokio::time::sleep(pause).await;
    true
}

/// SIGKILL or SIGSTOP of the leader (60 %, and always the lone member of a one-member
/// cluster) or a follower, for 0.3–1.8 s.
async fn process(rig: &mut Rig, rng: &mut StdRng, load_end: Instant, injected: &mut Injected) {
    let n = rig.cluster.members.len();
    while pause(rng, load_end, 1000..2500, Duration::from_secs(2)).await {
        let leader = leader_of(rig).await;
        let victim = if n == 1 || rng.random_bool(0.6) { leader } else { (leader + rng.random_range(1..n)) % n };
        let down = Duration::from_millis(rng.random_range(300..1800));
        let kind = if rng.random_bool(0.5) { "sigkill" } else { "sigstop" };
        let role = if victim == leader { "leader" } else { "follower" };
        eprintln!("fault {}: {kind} {} ({role}) for {down:?}", injected.total(), rig.cluster.members[victim].name);
        let c = &mut rig.cluster;
        if kind == "sigkill" {
            c.members[victim].kill9();
            tokio::time::sleep(down).await;
            c.spawn(victim);
        } else {
            c.members[victim].pause();
            tokio::time::sleep(down).await;
            c.members[victim].resume();
        }
        injected.add(kind);
    }
}

/// One partition at a time for 1–3 s, then healed until a leader is agreed again: a
/// minority without the leader isolated, a random majority/minority split, the leader
/// alone, or one direction cut (the leader towards every follower, or one pair).
async fn partitions(rig: &mut Rig, rng: &mut StdRng, load_end: Instant, injected: &mut Injected) {
    let n = rig.cluster.members.len();
    let minority = (n - 1) / 2;
    while pause(rng, load_end, 800..2000, Duration::from_secs(4)).await {
        let leader = leader_of(rig).await;
        let net = rig.net.as_mut().expect("a partition scenario has a network");
        let mut others: Vec<usize> = (0..n).filter(|i| *i != leader).collect();
        shuffle(&mut others, rng);
        let kind = match rng.random_range(0..4) {
            0 => {
                let side = &others[..rng.random_range(1..=minority)];
                eprintln!("fault {}: minority {side:?} isolated (leader {leader})", injected.total());
                net.split(side);
                "partition-minority"
            }
            1 => {
                let mut all: Vec<usize> = (0..n).collect();
                shuffle(&mut all, rng);
                let side = &all[..minority];
                eprintln!("fault {}: split {side:?} | rest (leader {leader})", injected.total());
                net.split(side);
                "partition-split"
            }
            2 => {
                eprintln!("fault {}: leader {leader} isolated", injected.total());
                net.split(&[leader]);
                // The rest, a quorum, must elect another leader: the cut is real.
                let rest: Vec<usize> = (0..n).filter(|i| *i != leader).collect();
                let new = leader_among(rig, &rest, LEADER_TIMEOUT).await;
                eprintln!("members {rest:?} elected {new} while {leader} is isolated");
                "partition-leader"
            }
            _ => {
                if rng.random_bool(0.5) {
                    eprintln!(
                        "fault {}: followers stop hearing leader {leader} (it still hears them)",
                        injected.total()
                    );
                    for &f in &others {
                        net.cut(leader, f);
                    }
                } else {
                    let (a, b) = (others[0], if rng.random_bool(0.5) { leader } else { others[1] });
                    eprintln!(
                        "fault {}: {b} stops hearing {a} ({a} still hears {b}; leader {leader})",
                        injected.total()
                    );
                    net.cut(a, b);
                }
                "partition-asymmetric"
            }
        };
        injected.add(kind);
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
        rig.net.as_mut().expect("network").heal();
    }
}

/// The membership changes, in order.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// A learner added, started, and promoted once it has caught up.
    AddLearner,
    RemoveFollower,
    RemoveLeader,
}

/// The member that every one of `members` names as leader, once they agree on one of them;
/// panics after `limit`.
async fn leader_among(rig: &Rig, members: &[usize], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let mut named = Vec::new();
        let mut ids = BTreeMap::new();
        for &i in members {
            let Some(mut c) = connect(&rig.cluster.members[i].endpoint()).await else { break };
            let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), c.status()).await else { break };
            ids.insert(s.header().map_or(0, |h| h.member_id()), i);
            named.push(s.leader());
        }
        if named.len() == members.len() && named.iter().all(|l| *l != 0 && *l == named[0]) {
            if let Some(i) = ids.get(&named[0]) {
                return *i;
            }
        }
        assert!(Instant::now() < deadline, "members {members:?} agreed on no leader among them within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Learner added and promoted, a follower removed, a second learner added and promoted,
/// the leader removed: one change at a time, each waited for before the next.
async fn membership(rig: &mut Rig, rng: &mut StdRng, load_end: Instant, injected: &mut Injected) {
    let mut next_slot = rig.cluster.members.len() - MEMBERS_ADDED_MAX;
    for change in [Change::AddLearner, Change::RemoveFollower, Change::AddLearner, Change::RemoveLeader] {
        if !pause(rng, load_end, 1000..2000, Duration::from_secs(5)).await {
            return;
        }
        let leader = leader_of(rig).await;
        let Some(mut client) = connect(&rig.cluster.members[leader].endpoint()).await else {
            panic!("cannot reach leader {}", rig.cluster.members[leader].name);
        };
        match change {
            Change::AddLearner => {
                let i = next_slot;
                next_slot += 1;
                let url = rig.cluster.members[i].peer_url();
                // etcd's strict check refuses any add ("unhealthy cluster") while this member
                // has not been connected to every voter for 5 s, as it may not be just after a
                // removal or a leader change: asked again.
                let added = add_member_when_healthy(&mut client, vec![url.clone()], true).await;
                let id = added.member().expect("the added member").id();
                eprintln!("fault {}: learner {} ({id:x}) added", injected.total(), rig.cluster.members[i].name);
                injected.add("learner-add");
                rig.cluster.spawn(i);
                rig.active.insert(i);
                // Promotion is refused until the learner has caught up: retried.
                let deadline = Instant::now() + LEADER_TIMEOUT;
                loop {
                    let leader = leader_of(rig).await;
                    if let Some(mut c) = connect(&rig.cluster.members[leader].endpoint()).await {
                        match c.member_promote(id).await {
                            Ok(_) => break,
                            Err(e) => eprintln!("promote {id:x}: {e}"),
                        }
                    }
                    assert!(Instant::now() < deadline, "learner {id:x} not promoted within {LEADER_TIMEOUT:?}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                eprintln!("fault {}: learner {id:x} promoted", injected.total());
                injected.add("learner-promote");
            }
            Change::RemoveFollower | Change::RemoveLeader => {
                let victim = match change {
                    Change::RemoveLeader => leader,
                    _ => {
                        let followers: Vec<usize> = rig.active.iter().copied().filter(|i| *i != leader).collect();
                        followers[rng.random_range(0..followers.len())]
                    }
                };
                let name = rig.cluster.members[victim].name.clone();
                let list = client.member_list().await.unwrap_or_else(|e| panic!("member list: {e}"));
                let id = list
                    .members()
                    .iter()
                    .find(|m| m.name() == name)
                    .map(|m| m.id())
                    .unwrap_or_else(|| panic!("{name} not in the member list"));
                let kind = if victim == leader { "remove-leader" } else { "remove-follower" };
                eprintln!("fault {}: {kind} {name} ({id:x})", injected.total());
                remove_member_when_healthy(&mut client, id).await;
                injected.add(kind);
                rig.active.remove(&victim);
                // A removed member stops on its own.
                if wait_exit(&mut rig.cluster, victim, STOP_TIMEOUT).await.is_none() {
                    let log = rig.cluster.members[victim].log_tail(20);
                    panic!("{name} still runs {STOP_TIMEOUT:?} after its removal\n{log}");
                }
            }
        }
    }
}

/// Fills the tmpfs under one member's data dir while it serves, holds it full for 2–4 s,
/// frees it and restarts the member if it stopped.
async fn full_disk(rig: &mut Rig, rng: &mut StdRng, load_end: Instant, injected: &mut Injected) {
    let i = FULL_DISK_MEMBER;
    while pause(rng, load_end, 2000..4000, Duration::from_secs(6)).await {
        let tmpfs = rig.tmpfs.as_ref().expect("a full-disk scenario has a tmpfs");
        let log_before = rig.cluster.members[i].log().len();
        let filled = tmpfs.fill(BALLAST);
        eprintln!(
            "fault {}: {}'s disk full ({filled} bytes of ballast, {} free)",
            injected.total(),
            rig.cluster.members[i].name,
            tmpfs.free_bytes()
        );
        injected.add("disk-full");
        tokio::time::sleep(Duration::from_millis(rng.random_range(2000..4000))).await;
        let stopped = rig.cluster.members[i].exit_status();
        let said = panics(&rig.cluster.members[i].log()[log_before..]);
        if !rig.cluster.members[i].is_running() {
            // Started again while the disk is still full: it may refuse to start, but must
            // not damage what it has (the restart after the disk is freed shows).
            let log_before = rig.cluster.members[i].log().len();
            rig.cluster.spawn(i);
            let again = wait_exit(&mut rig.cluster, i, STOP_TIMEOUT).await;
            let log = rig.cluster.members[i].log();
            let error = log[log_before..].lines().find(|l| l.starts_with("Error") || l.contains("panicked"));
            match again {
                Some(status) => {
                    eprintln!("restarted on the full disk, it stopped ({status}): {}", error.unwrap_or("-"))
                }
                None => eprintln!("restarted on the full disk, it runs"),
            }
        }
        let tmpfs = rig.tmpfs.as_ref().expect("tmpfs");
        // Space comes back as on a real disk: files deleted, or the volume grown (once; the
        // next fill truncates the ballast and fills the larger tmpfs).
        let how = if tmpfs.size_bytes() < TMPFS_GROWN_BYTES && rng.random_bool(0.5) {
            tmpfs.resize(TMPFS_GROWN_BYTES);
            "grown to 256 MiB"
        } else {
            std::fs::remove_file(tmpfs.path().join(BALLAST)).expect("remove ballast");
            "freed"
        };
        eprintln!(
            "disk of {} {how}; it {}",
            rig.cluster.members[i].name,
            match &stopped {
                Some(s) => format!("had stopped ({s}: {said})"),
                None if rig.cluster.members[i].is_running() => "kept running".to_owned(),
                None => "had stopped".to_owned(),
            }
        );
        if !rig.cluster.members[i].is_running() {
            rig.cluster.spawn(i);
        }
    }
}

/// Makes the fsyncs of one member (the leader 60 % of the time) fail with EIO; it must
/// stop within [`STOP_TIMEOUT`]. It is then restarted without the shim.
async fn fsync_errors(rig: &mut Rig, rng: &mut StdRng, load_end: Instant, injected: &mut Injected) {
    while pause(rng, load_end, 2000..4000, STOP_TIMEOUT / 2).await {
        let leader = leader_of(rig).await;
        let candidates: Vec<usize> = (0..rig.cluster.members.len())
            .filter(|i| !rig.cluster.members[*i].env.is_empty() && rig.cluster.members[*i].is_running())
            .collect();
        if candidates.is_empty() {
            return;
        }
        let victim = if candidates.contains(&leader) && rng.random_bool(0.6) {
            leader
        } else {
            candidates[rng.random_range(0..candidates.len())]
        };
        let role = if victim == leader { "leader" } else { "follower" };
        eprintln!("fault {}: fsync EIO in {} ({role})", injected.total(), rig.cluster.members[victim].name);
        let log_before = rig.cluster.members[victim].log().len();
        rig.shim.as_ref().expect("an fsync scenario has the shim").trigger(victim);
        rig.fsync_failed.insert(victim);
        injected.add("fsync-eio");
        let Some(status) = wait_exit(&mut rig.cluster, victim, STOP_TIMEOUT).await else {
            panic!(
                "{} ({role}) still runs {STOP_TIMEOUT:?} after its fsyncs started failing with EIO\n{}",
                rig.cluster.members[victim].name,
                rig.cluster.members[victim].log_tail(30)
            );
        };
        let m = &rig.cluster.members[victim];
        let said = panics(&m.log()[log_before..]);
        eprintln!("{} stopped ({status}): {said}", m.name);
        // The first failed fsync stops it: no second attempt at the disk (the WAL's close
        // trimming and syncing the segment while a panic unwinds), no panic in a destructor.
        // Two components may meet their first failed sync at the same moment on two threads,
        // before the abort (the WAL's fdatasync and the store's periodic flush): each may
        // report once, and none twice. A failed flush also leaves RocksDB refusing writes
        // with its error (no disk access), so an apply that writes in that moment reports
        // the same failure once more.
        let reports: Vec<&str> = said.split(" / ").collect();
        // The apply's and the store flush's reports are known by how they start: their
        // RocksDB error names a file in the data dir's `store` directory, so words inside a
        // report do not tell its component. The rest are the WAL's.
        let is_apply = |r: &str| r.starts_with("applying entries") && r.contains("rocksdb");
        let is_store = |r: &str| r.starts_with("store flush failed");
        let (wal, store, apply) = (
            reports.iter().filter(|r| !is_apply(r) && !is_store(r) && r.contains("WAL")).count(),
            reports.iter().filter(|r| is_store(r)).count(),
            reports.iter().filter(|r| is_apply(r)).count(),
        );
        assert!(
            reports.iter().all(|r| r.contains("fdatasync") || r.contains("fsync") || r.contains("flush"))
                && wal <= 1
                && store <= 1
                && apply <= 1
                && wal + store + apply == reports.len(),
            "{} did not stop at its first failed fsync: {said}",
            m.name
        );
        // Restarted without the shim, from what it made durable.
        rig.fsync_failed.remove(&victim);
        let m = &mut rig.cluster.members[victim];
        m.env.clear();
        rig.shim.as_ref().expect("shim").untrigger(victim);
        rig.cluster.spawn(victim);
    }
}

/// One link condition at a time for 1.5–4 s, then clean links until a leader is agreed
/// again: every link delayed (10–60 ms each way, with jitter), every link losing packets
/// (2–10 % of chunks stall 150–600 ms, holding what follows), the links into one member
/// cut now and then, or one member (the leader 60 % of the time) reached only through links
/// slower than the heartbeat (120–300 ms each way).
async fn slow_links(rig: &mut Rig, rng: &mut StdRng, load_end: Instant, injected: &mut Injected) {
    let n = rig.cluster.members.len();
    while pause(rng, load_end, 800..2000, Duration::from_secs(5)).await {
        let leader = leader_of(rig).await;
        let member = if rng.random_bool(0.6) { leader } else { (leader + rng.random_range(1..n)) % n };
        let name = rig.cluster.members[member].name.clone();
        let (kind, affected, c): (&'static str, Vec<usize>, Conditions) = match rng.random_range(0..4) {
            0 => {
                let delay = Duration::from_millis(rng.random_range(10..60));
                let jitter = Duration::from_millis(rng.random_range(0..30));
                ("link-delay", (0..n).collect(), Conditions { delay, jitter, ..Conditions::CLEAN })
            }
            1 => {
                let stall_per_mille = rng.random_range(20..100);
                let stall = Duration::from_millis(rng.random_range(150..600));
                ("link-loss", (0..n).collect(), Conditions { stall_per_mille, stall, ..Conditions::CLEAN })
            }
            2 => {
                let cut_per_mille = rng.random_range(5..40);
                ("link-cut", vec![member], Conditions { cut_per_mille, ..Conditions::CLEAN })
            }
            _ => {
                let delay = Duration::from_millis(rng.random_range(120..300));
                ("link-slow-member", vec![member], Conditions { delay, ..Conditions::CLEAN })
            }
        };
        let role = if member == leader { "leader" } else { "follower" };
        eprintln!("fault {}: {kind} on links into {affected:?} ({name} is the {role}): {c:?}", injected.total());
        for &i in &affected {
            rig.proxies[i].0.set(c);
        }
        injected.add(kind);
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..4000))).await;
        for (p, _) in &rig.proxies {
            p.set(Conditions::CLEAN);
        }
        let (cuts, stalls): (usize, usize) =
            rig.proxies.iter().fold((0, 0), |(c, s), (p, _)| (c + p.cuts(), s + p.stalls()));
        eprintln!("links clean again; {cuts} connections cut and {stalls} chunks stalled so far");
    }
}

/// What the panics in `log` said (the line after each `panicked at`), joined.
fn panics(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let said: Vec<&str> = lines.windows(2).filter(|w| w[0].contains("panicked at")).map(|w| w[1].trim()).collect();
    if said.is_empty() {
        "no panic".to_owned()
    } else {
        said.join(" / ")
    }
}

/// The last line of `log` that mentions `needle`, or `-`.
fn last_line_with<'a>(log: &'a str, needle: &str) -> &'a str {
    log.lines().rev().find(|l| l.to_lowercase().contains(needle)).unwrap_or("-")
}

/// Stops a follower, corrupts a file of its data dir and restarts it: first a WAL segment,
/// then an SST file; it must refuse to start with an error naming the file (the store
/// verifies every block's checksum when it opens). The file is put back and the member
/// restarted; the others serve meanwhile.
async fn corruption(rig: &mut Rig, rng: &mut StdRng, load_end: Instant, injected: &mut Injected) {
    for (kind, suffix) in [("wal-corruption", ".wal"), ("sst-corruption", ".sst")] {
        if !pause(rng, load_end, 3000..5000, STOP_TIMEOUT).await {
            return;
        }
        let leader = leader_of(rig).await;
        let n = rig.cluster.members.len();
        let victim = (leader + rng.random_range(1..n)) % n;
        let name = rig.cluster.members[victim].name.clone();
        rig.cluster.members[victim].kill9();
        let data = rig.cluster.members[victim].dir().join("data");
        let files = faults::files_ending(&data, suffix);
        let Some(file) = files.first().cloned() else {
            panic!("{name} has no {suffix} file under {}", data.display());
        };
        let len = std::fs::metadata(&file).expect("corrupted file's size").len();
        let offset = match suffix {
            // The middle of the segment's frames: past them the segment may be zeros written
            // ahead of the next frame, which recovery rightly takes as the end of the log.
            ".wal" => wal_frames_middle(&file),
            _ => len / 2,
        };
        let old = faults::flip_bytes(&file, offset, FLIP_BYTES.min(len as usize / 4));
        eprintln!(
            "fault {}: {kind}: {} bytes flipped at {offset} of {} ({len} bytes)",
            injected.total(),
            old.len(),
            file.display()
        );
        injected.add(kind);
        let log_before = rig.cluster.members[victim].log().len();
        rig.cluster.spawn(victim);
        let refused = wait_exit(&mut rig.cluster, victim, STOP_TIMEOUT).await;
        let log = rig.cluster.members[victim].log();
        let new_log = &log[log_before.min(log.len())..];
        match refused {
            Some(status) => {
                assert!(!status.success(), "{name} exited with success on a corrupted {suffix} file");
                check_names_file(new_log, &file, &name);
                eprintln!("{name} refused to start: {}", last_line_with(new_log, "corrupt"));
            }
            None => panic!("{name} started on a corrupted {suffix} file {}\n{new_log}", file.display()),
        }
        faults::restore_bytes(&file, offset, &old);
        rig.cluster.spawn(victim);
    }
}

/// The offset half way through the frames of WAL segment `file` (its name is its sequence
/// number).
fn wal_frames_middle(file: &std::path::Path) -> u64 {
    let seq: u64 = file
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{} is not named by its sequence number", file.display()));
    let bytes = std::fs::read(file).expect("read the WAL segment");
    // The frames end where the scan stopped: at the zeros, or at the end of the file.
    let end = raft_log::scan_frames(seq, &bytes).bad.map_or(bytes.len() as u64, |(offset, _)| offset);
    (raft_log::HEADER_BYTES as u64 + end) / 2
}

/// Asserts that a start-up failure in `log` says what is corrupt and names `file`.
fn check_names_file(log: &str, file: &std::path::Path, name: &str) {
    let file_name = file.file_name().expect("a file name").to_string_lossy();
    let lower = log.to_lowercase();
    assert!(
        lower.contains("corrupt") && log.contains(file_name.as_ref()),
        "{name}'s refusal does not name the corrupted file {} as corrupt:\n{log}",
        file.display()
    );
}

fn shuffle(v: &mut [usize], rng: &mut StdRng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
}
