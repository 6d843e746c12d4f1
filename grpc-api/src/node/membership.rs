//! This member's identity: its id, its cluster's id and the member list, fixed when the data
//! dir is created and read back on every restart (flags about the initial cluster are then
//! ignored, as etcd ignores them). Other members' client URLs are learned from their peer
//! `Hello` (see `peer.rs`) and saved here too.
//!
//! [`Membership`] is the running member's view of it, shared by the services and the
//! applier: the identity behind a lock, the peer connections that follow the member list,
//! the membership changes this member proposed and waits for, and whether it was removed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

/// File in the data dir holding the identity.
const MEMBER_FILE: &str = "member.json";

/// One member of the cluster as `MemberList` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// The identity persisted in the data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
    pub members: Vec<Member>,
    /// This member joined a running cluster (`--initial-cluster-state existing`): its Raft
    /// group starts empty and is brought up to date by the leader.
    #[serde(default)]
    pub joined: bool,
    /// Members removed from the cluster; their peer connections are refused with
    /// [`REMOVED_MESSAGE`] so that a removed member that comes back stops.
    #[serde(default)]
    pub removed: Vec<u64>,
}

/// What a member removed from the cluster is told when it tries to talk to the others.
pub const REMOVED_MESSAGE: &str = "the member has been permanently removed from the cluster";

/// The context of every membership conf change: who asked (the proposing member and the
/// request id its waiter is kept under, 0 for the bootstrap) and the member as it is after
/// the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfContext {
    /// The member that proposed the change (0 for the bootstrap and for changes written
    /// before this field existed): only its waiters are answered.
    #[serde(default)]
    pub proposer: u64,
    pub request_id: u64,
    pub member: Member,
}

impl ConfContext {
    /// The bytes carried in the Raft conf change.
    pub fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).expect("a ConfContext always serializes").into()
    }

    /// Decodes a conf change context; `None` for bytes that are not one.
    pub fn decode(bytes: &[u8]) -> Option<ConfContext> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The id of a member added at run time, as etcd's `MemberAdd` derives it (`computeMemberId`
/// with no cluster name): the SHA-1 of the sorted peer URLs, joined, followed by the request's
/// Unix time in seconds; its first 8 bytes, big-endian. Re-adding the same URLs a second or
/// more later gives a new id; within the same second the same id, which etcd then refuses as
/// existing (or removed).
pub fn new_member_id(peer_urls: &[String], now: std::time::SystemTime) -> u64 {
    let seconds = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // etcd's recipe appends the cluster name (empty here), then the seconds.
    member_id(&seconds.to_string(), peer_urls)
}

/// Peer URLs compared the way they are configured: without a trailing slash, sorted.
pub fn normalize_urls(urls: &[String]) -> Vec<String> {
    let mut v: Vec<String> = urls.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
    v.sort();
    v
}

impl Identity {
    /// Loads the identity from `data_dir`, or creates it from the flags on first start.
    ///
    /// Member ids are derived from the cluster token and each member's peer URLs, and the
    /// cluster id from the sorted member ids, as etcd derives them, so every member of a
    /// cluster bootstrapped from the same `--initial-cluster` computes the same ids, and the
    /// same ones etcd would. With one member (or no `--initial-cluster`) the member's own
    /// advertised peer URLs are used. The ids are kept in the data dir (`member.json`), so a
    /// member keeps its ids whatever build it restarts with.
    pub fn load_or_create(
        data_dir: &Path,
        name: &str,
        peer_urls: Vec<String>,
        client_urls: Vec<String>,
        cluster_token: &str,
        initial_cluster: Option<&str>,
    ) -> anyhow::Result<(Identity, bool)> {
        let path = data_dir.join(MEMBER_FILE);
        if path.exists() {
            let bytes = std::fs::read(&path)?;
            let id: Identity =
                serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            return Ok((id, false));
        }
        let cluster = match initial_cluster {
            Some(flag) => parse_initial_cluster(flag)?,
            None => Vec::new(),
        };
        if !cluster.is_empty() {
            verify_initial_cluster(&cluster, name, &peer_urls, false)?;
        }
        let identity = if cluster.len() <= 1 {
            let member_id = member_id(cluster_token, &peer_urls);
            Identity {
                cluster_id: cluster_id(&[member_id]),
                member_id,
                members: vec![Member {
                    id: member_id,
                    name: name.to_string(),
                    peer_urls,
                    client_urls,
                    is_learner: false,
                }],
                joined: false,
                removed: Vec::new(),
            }
        } else {
            let members: Vec<Member> = cluster
                .iter()
                .map(|(n, urls)| Member {
                    id: member_id(cluster_token, urls),
                    name: n.clone(),
                    peer_urls: urls.clone(),
                    client_urls: if n == name { client_urls.clone() } else { Vec::new() },
                    is_learner: false,
                })
                .collect();
            let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
            ids.sort_unstable();
            ids.dedup();
            anyhow::ensure!(ids.len() == members.len(), "--initial-cluster lists the same peer URLs twice");
            Identity {
                cluster_id: cluster_id(&ids),
                // Verified above: this member's entry has its advertised URLs.
                member_id: member_id(cluster_token, &peer_urls),
                members,
                joined: false,
                removed: Vec::new(),
            }
        };
        identity.save(data_dir)?;
        Ok((identity, true))
    }

    /// The identity of a member joining a running cluster, from the member list one of its
    /// members returned: this member is the one whose peer URLs are `peer_urls` (added
    /// before with `member add`).
    pub fn joining(
        data_dir: &Path,
        cluster_id: u64,
        members: Vec<Member>,
        name: &str,
        peer_urls: &[String],
        client_urls: Vec<String>,
    ) -> anyhow::Result<Identity> {
        let own = normalize_urls(peer_urls);
        let me = members.iter().find(|m| normalize_urls(&m.peer_urls) == own).ok_or_else(|| {
            anyhow::anyhow!(
                "the cluster has no member with peer URLs {peer_urls:?}; add this member first \
                 (etcdctl member add {name} --peer-urls=...)"
            )
        })?;
        let member_id = me.id;
        let mut members = members;
        for m in members.iter_mut().filter(|m| m.id == member_id) {
            m.name = name.to_string();
            m.client_urls = client_urls.clone();
        }
        let identity = Identity { cluster_id, member_id, members, joined: true, removed: Vec::new() };
        identity.save(data_dir)?;
        Ok(identity)
    }

    /// This member's entry, if it is still in the list.
    pub fn me(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.id == self.member_id)
    }

    /// Whether this member is a learner.
    pub fn is_learner(&self) -> bool {
        self.me().is_some_and(|m| m.is_learner)
    }

    /// Applies a membership change: `member` added, updated or promoted (`removed` false),
    /// or removed. Idempotent, as conf changes may be replayed after a restart.
    pub fn apply_change(&mut self, member: &Member, removed: bool) {
        if removed {
            self.members.retain(|m| m.id != member.id);
            if !self.removed.contains(&member.id) {
                self.removed.push(member.id);
            }
            return;
        }
        match self.members.iter_mut().find(|m| m.id == member.id) {
            Some(m) => {
                m.peer_urls = member.peer_urls.clone();
                m.is_learner = member.is_learner;
                if !member.name.is_empty() {
                    m.name = member.name.clone();
                }
                if !member.client_urls.is_empty() {
                    m.client_urls = member.client_urls.clone();
                }
            }
            None => self.members.push(member.clone()),
        }
    }

    /// Ids of the members that vote.
    pub fn voter_ids(&self) -> Vec<u64> {
        self.members.iter().filter(|m| !m.is_learner).map(|m| m.id).collect()
    }

    /// Ids of every other member.
    pub fn peer_ids(&self) -> Vec<u64> {
        self.members.iter().filter(|m| m.id != self.member_id).map(|m| m.id).collect()
    }

    /// Writes the identity atomically (temp file, fsync, rename, fsync of the directory).
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let tmp = data_dir.join(format!("{MEMBER_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, data_dir.join(MEMBER_FILE))?;
        std::fs::File::open(data_dir)?.sync_all()?;
        Ok(())
    }
}

/// `name=url,name=url,...` → members in order of first appearance, each with its URLs (a
/// name may appear several times, one URL each, as in etcd).
pub fn parse_initial_cluster(flag: &str) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for item in flag.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) =
            item.split_once('=').ok_or_else(|| anyhow::anyhow!("--initial-cluster: {item:?} is not name=url"))?;
        anyhow::ensure!(!name.is_empty(), "--initial-cluster: {item:?} has no name");
        crate::config::url_host_port(url).map_err(|e| anyhow::anyhow!("--initial-cluster: {e}"))?;
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => members.push((name.to_string(), vec![url.to_string()])),
        }
    }
    Ok(members)
}

/// etcd's checks of `--initial-cluster` (`cluster`, parsed) against this member's `--name`
/// and `--initial-advertise-peer-urls` before it first starts (`VerifyBootstrap` and, when
/// `joining`, `VerifyJoinExisting`, which skips the URL match): the name must be listed, a
/// bootstrapping member's URLs must be its entry's, and no URL may be listed twice. A member
/// started from a mistyped flag would otherwise found a cluster of its own or take the wrong
/// identity. With a data dir, the flags are not looked at (etcd's rule too).
pub fn verify_initial_cluster(
    cluster: &[(String, Vec<String>)],
    name: &str,
    peer_urls: &[String],
    joining: bool,
) -> anyhow::Result<()> {
    let Some((_, own)) = cluster.iter().find(|(n, _)| n == name) else {
        anyhow::bail!("couldn't find local name {name:?} in the initial cluster configuration");
    };
    let all: Vec<String> = cluster.iter().flat_map(|(_, urls)| normalize_urls(urls)).collect();
    if all.iter().enumerate().any(|(i, u)| all[..i].contains(u)) {
        anyhow::bail!("initial cluster {} has duplicate url", urls_map_string(cluster));
    }
    if joining {
        return Ok(());
    }
    let (listed, advertised) = (normalize_urls(own), normalize_urls(peer_urls));
    if listed == advertised {
        return Ok(());
    }
    let missing: Vec<String> =
        listed.iter().filter(|u| !advertised.contains(u)).map(|u| format!("{name}={u}")).collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "--initial-cluster has {} but missing from --initial-advertise-peer-urls={} ({})",
            missing.join(","),
            advertised.join(","),
            urls_unequal(&advertised, &listed)
        );
    }
    let missing: Vec<&str> = advertised.iter().filter(|u| !listed.contains(u)).map(String::as_str).collect();
    anyhow::bail!(
        "--advertise-peer-urls has {} but missing from --initial-cluster={}",
        missing.join(","),
        urls_map_string(&[(name.to_string(), peer_urls.to_vec())])
    )
}

/// etcd's check of a joining member's `--initial-cluster` against the member list the
/// cluster answered (`ValidateClusterAndAssignIDs`): as many members, and every member's peer
/// URLs those of one entry. A member started with a stale list stops here, as etcd's does.
pub fn validate_join(cluster: &[(String, Vec<String>)], members: &[Member]) -> anyhow::Result<()> {
    if members.len() != cluster.len() {
        anyhow::bail!("member count is unequal");
    }
    for m in members {
        let urls = normalize_urls(&m.peer_urls);
        let mut last = String::new();
        let matched = cluster.iter().any(|(_, listed)| {
            let listed = normalize_urls(listed);
            let equal = listed == urls;
            if !equal {
                last = urls_unequal(&urls, &listed);
            }
            equal
        });
        if !matched {
            anyhow::bail!(
                "PeerURLs: no match found for existing member ({:x}, [{}]), last resolver error ({last})",
                m.id,
                m.peer_urls.join(" ")
            );
        }
    }
    Ok(())
}

/// Go's `URLsMap.String()`: `name=url` pairs, sorted, comma-separated.
fn urls_map_string(cluster: &[(String, Vec<String>)]) -> String {
    let mut pairs: Vec<String> =
        cluster.iter().flat_map(|(name, urls)| urls.iter().map(move |u| format!("{name}={u}"))).collect();
    pairs.sort();
    pairs.join(",")
}

/// Why two sorted URL lists differ, in the words of etcd's `URLStringsEqual` (which resolves
/// host names first; Plinth compares them as written).
fn urls_unequal(a: &[String], b: &[String]) -> String {
    if a.len() != b.len() {
        let quoted = |v: &[String]| v.iter().map(|u| format!("{u:?}")).collect::<Vec<_>>().join(" ");
        return format!("len([{}]) != len([{}])", quoted(a), quoted(b));
    }
    match a.iter().zip(b).find(|(x, y)| x != y) {
        Some((x, y)) => format!("{x:?}(resolved from {x:?}) != {y:?}(resolved from {y:?})"),
        None => "<nil>".to_string(),
    }
}

/// A member's id, as etcd derives it (`computeMemberID`): the first 8 bytes, big-endian, of
/// the SHA-1 of its sorted peer URLs concatenated, then `suffix`: the cluster token for a
/// bootstrapped member, so a cluster started with etcd's flags gets etcd's ids (one member
/// with the defaults: `8e9e05c52164694d`); the request's second for one added at run time
/// ([`new_member_id`]).
fn member_id(suffix: &str, peer_urls: &[String]) -> u64 {
    let mut input = normalize_urls(peer_urls).concat();
    input.push_str(suffix);
    sha1_prefix(input.as_bytes())
}

/// The cluster's id, as etcd derives it (`genID`): the SHA-1 of its sorted member ids, each
/// 8 bytes big-endian (one member with the defaults: `cdf818194e3a8c32`).
fn cluster_id(sorted_member_ids: &[u64]) -> u64 {
    let bytes: Vec<u8> = sorted_member_ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    sha1_prefix(&bytes)
}

/// The first 8 bytes of SHA-1, big-endian; never 0 (a Raft id must not be).
fn sha1_prefix(input: &[u8]) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, input);
    let prefix: [u8; 8] = digest.as_ref()[..8].try_into().expect("SHA-1 has 20 bytes");
    u64::from_be_bytes(prefix).max(1)
}

/// This member's view of the cluster: its identity and member list (`member.json`), the
/// peer connections that follow the list, the membership changes this member proposed and
/// is waiting for, and whether it has been removed. Shared by the services and the applier.
pub struct Membership {
    /// This member's id and its cluster's, fixed for the life of the process: response
    /// headers read them here rather than taking the identity lock, which a save may hold.
    pub member_id: u64,
    pub cluster_id: u64,
    pub identity: RwLock<Identity>,
    pub transport: Arc<crate::node::peer::PeerTransport>,
    data_dir: std::path::PathBuf,
    /// Membership changes in flight, by request id; answered with the member list once applied.
    pub(super) waiters: Mutex<HashMap<u64, oneshot::Sender<Vec<Member>>>>,
    /// Set once this member has been removed from the cluster: it stops serving.
    removed: watch::Sender<bool>,
    /// Whether this member is a learner, kept with every change of the identity so the
    /// admission of each request reads it without the identity lock.
    learner: std::sync::atomic::AtomicBool,
    /// Held while `member.json` is written, so saves happen one at a time, each of the
    /// newest list, outside the identity lock that readers take.
    save_lock: Mutex<()>,
}

impl Membership {
    /// The membership of `identity`, saved in `data_dir`, with the receiver that learns when
    /// this member is removed.
    pub fn new(
        identity: Identity,
        transport: Arc<crate::node::peer::PeerTransport>,
        data_dir: std::path::PathBuf,
    ) -> (Arc<Membership>, watch::Receiver<bool>) {
        let (removed, removed_rx) = watch::channel(false);
        let m = Membership {
            member_id: identity.member_id,
            cluster_id: identity.cluster_id,
            learner: std::sync::atomic::AtomicBool::new(identity.is_learner()),
            identity: RwLock::new(identity),
            transport,
            data_dir,
            waiters: Mutex::default(),
            removed,
            save_lock: Mutex::new(()),
        };
        (Arc::new(m), removed_rx)
    }

    /// Changes the identity with `f`, saves it, and brings what follows from the member list
    /// up to date: a peer connection per other member, and this member stopping once it is
    /// removed.
    /// Saves only a change; the file is written after the identity lock is released, so
    /// response headers and member lists never wait for its two fsyncs. Called from the
    /// Raft driver thread or a blocking thread, never on a runtime worker.
    pub fn update<R>(&self, f: impl FnOnce(&mut Identity) -> R) -> R {
        let (r, changed, peers, removed) = {
            let mut identity = self.identity.write();
            let before = identity.clone();
            let r = f(&mut identity);
            // Ordering: stored under the identity lock, so the flag never lags a change a
            // reader of the identity has seen.
            self.learner.store(identity.is_learner(), std::sync::atomic::Ordering::Release);
            (r, *identity != before, identity.peer_ids(), identity.removed.contains(&identity.member_id))
        };
        if changed {
            self.save();
        }
        self.transport.set_peers(&peers);
        if removed {
            self.mark_removed();
        }
        r
    }

    /// Whether this member is a learner (without the identity lock).
    pub fn is_learner(&self) -> bool {
        self.learner.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Writes the newest member list to `member.json`.
    fn save(&self) {
        // Ordering: the save lock is taken before the list is read, so of two saves racing,
        // the later one writes the newer list and the file never goes back in time.
        let _saving = self.save_lock.lock();
        let newest = self.identity.read().clone();
        if let Err(e) = newest.save(&self.data_dir) {
            // Membership changes are in the log and replay on restart if the store had not
            // applied past them; the member list is rebuilt then.
            tracing::warn!(error = %e, "could not save the member list");
        }
    }

    /// Whether a hello announcing `name` and `client_urls` for `member` would change the
    /// member list (most hellos are reconnects that change nothing).
    pub fn hello_changes(&self, member: u64, name: &str, client_urls: &[String]) -> bool {
        let identity = self.identity.read();
        identity
            .members
            .iter()
            .find(|m| m.id == member)
            .is_some_and(|m| m.client_urls != client_urls || (!name.is_empty() && m.name != name))
    }

    /// Remembers a member's name and client URLs, as it announced them in its hello. A
    /// member added at run time has no name until it says hello (etcd's "unstarted").
    /// Writes `member.json` only when the hello changed something; blocking (see `update`).
    pub fn record_hello(&self, member: u64, name: &str, client_urls: Vec<String>) {
        if !self.hello_changes(member, name, &client_urls) {
            return;
        }
        self.update(|identity| {
            if let Some(m) = identity.members.iter_mut().find(|m| m.id == member) {
                m.client_urls = client_urls;
                if !name.is_empty() {
                    m.name = name.to_string();
                }
            }
        });
    }

    /// This member was removed from the cluster: it stops serving (see `serve`).
    pub fn mark_removed(&self) {
        // Only the first call writes: peers report the removal again and again, and a
        // write waits for every outstanding borrow of the value.
        if !*self.removed.borrow() {
            self.removed.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids etcd 3.5.1 reports for one member started with its defaults (`etcdctl member
    /// list`, `endpoint status`): `8e9e05c52164694d` in cluster `cdf818194e3a8c32`.
    #[test]
    fn ids_are_etcds() {
        let member = member_id("etcd-cluster", &["http://localhost:2380".to_string()]);
        assert_eq!(format!("{member:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[member])), "cdf818194e3a8c32");
        // Several peer URLs count sorted, whatever their order on the command line.
        let urls = ["http://b:2380".to_string(), "http://a:2380".to_string()];
        assert_eq!(member_id("t", &urls), sha1_prefix(b"http://a:2380http://b:2380t"));
        // A member added at run time: the sorted URLs and the Unix second of the request
        // (etcd's `MemberAdd`; the value computed with Python's hashlib).
        let urls = ["http://10.0.0.2:2380/".to_string(), "http://10.0.0.1:2380".to_string()];
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_900_000_999);
        assert_eq!(format!("{:x}", new_member_id(&urls, at)), "66d1cfe3e52b95b");
    }

    #[test]
    fn identity_survives_restart_and_ignores_new_flags() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = Identity::load_or_create(
            dir.path(),
            "n1",
            vec!["http://127.0.0.1:2380".into()],
            vec!["http://127.0.0.1:2379".into()],
            "tok",
            None,
        )
        .unwrap();
        assert!(created);
        let (b, created) = Identity::load_or_create(dir.path(), "other", vec![], vec![], "other", None).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        assert_ne!(a.member_id, 0);
        assert_ne!(a.cluster_id, a.member_id);
        // etcd's ids for the same flags.
        assert_eq!(a.member_id, sha1_prefix(b"http://127.0.0.1:2380tok"));
        assert_eq!(a.cluster_id, sha1_prefix(&a.member_id.to_be_bytes()));
        let single = tempfile::tempdir().unwrap();
        let (c, _) = Identity::load_or_create(
            single.path(),
            "n1",
            vec!["http://127.0.0.1:2380".into()],
            vec!["http://127.0.0.1:2379".into()],
            "tok",
            Some("n1=http://127.0.0.1:2380"),
        )
        .unwrap();
        assert_eq!((c.member_id, c.cluster_id), (a.member_id, a.cluster_id));
    }

    #[test]
    fn every_member_of_an_initial_cluster_computes_the_same_ids() {
        let flag = "n1=http://127.0.0.1:1,n2=http://127.0.0.1:2,n3=http://127.0.0.1:3";
        let mut seen = Vec::new();
        for (name, port) in [("n1", 1), ("n2", 2), ("n3", 3)] {
            let dir = tempfile::tempdir().unwrap();
            let (id, _) = Identity::load_or_create(
                dir.path(),
                name,
                vec![format!("http://127.0.0.1:{port}")],
                vec![format!("http://127.0.0.1:{}", 100 + port)],
                "tok",
                Some(flag),
            )
            .unwrap();
            assert_eq!(id.members.len(), 3);
            assert_eq!(id.members.iter().find(|m| m.name == name).unwrap().id, id.member_id);
            assert_eq!(id.peer_ids().len(), 2);
            seen.push((id.cluster_id, id.members.iter().map(|m| m.id).collect::<Vec<_>>()));
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "ids differ between members: {seen:?}");
        let other_token = tempfile::tempdir().unwrap();
        let (x, _) = Identity::load_or_create(
            other_token.path(),
            "n1",
            vec!["http://127.0.0.1:1".into()],
            vec![],
            "other",
            Some(flag),
        )
        .unwrap();
        assert_ne!(x.cluster_id, seen[0].0);
        // A member missing from the flag, or advertising other URLs, is refused.
        let d = tempfile::tempdir().unwrap();
        assert!(Identity::load_or_create(d.path(), "n9", vec![], vec![], "tok", Some(flag)).is_err());
        assert!(Identity::load_or_create(d.path(), "n1", vec!["http://127.0.0.1:9".into()], vec![], "tok", Some(flag))
            .is_err());
        assert!(parse_initial_cluster("n1").is_err());
    }

    /// etcd 3.5.1's refusals of a bootstrap's flags (its `discovery failed` error), seen with
    /// `etcd --name x --initial-cluster ...`; a single-entry flag is checked as any.
    #[test]
    fn initial_cluster_flags_are_verified_as_etcd_verifies_them() {
        let err = |name: &str, urls: &[&str], flag: &str| {
            let d = tempfile::tempdir().unwrap();
            let urls = urls.iter().map(|u| u.to_string()).collect();
            Identity::load_or_create(d.path(), name, urls, vec![], "tok", Some(flag)).unwrap_err().to_string()
        };
        assert_eq!(
            err("x", &["http://127.0.0.1:23992"], "default=http://127.0.0.1:23992"),
            r#"couldn't find local name "x" in the initial cluster configuration"#
        );
        assert_eq!(
            err("x", &["http://127.0.0.1:23992"], "x=http://127.0.0.1:23993"),
            r#"--initial-cluster has x=http://127.0.0.1:23993 but missing from --initial-advertise-peer-urls=http://127.0.0.1:23992 ("http://127.0.0.1:23992"(resolved from "http://127.0.0.1:23992") != "http://127.0.0.1:23993"(resolved from "http://127.0.0.1:23993"))"#
        );
        assert_eq!(
            err("x", &["http://a:1", "http://b:1"], "x=http://a:1"),
            "--advertise-peer-urls has http://b:1 but missing from --initial-cluster=x=http://a:1,x=http://b:1"
        );
        assert_eq!(
            err("x", &["http://a:1"], "x=http://a:1,y=http://b:1,z=http://b:1"),
            "initial cluster x=http://a:1,y=http://b:1,z=http://b:1 has duplicate url"
        );
    }

    #[test]
    fn a_join_lists_the_cluster_as_it_is() {
        let member = |id, url: &str| Member {
            id,
            name: String::new(),
            peer_urls: vec![url.to_string()],
            client_urls: vec![],
            is_learner: false,
        };
        let members = [member(0xa, "http://127.0.0.1:1"), member(0xb, "http://127.0.0.1:2")];
        let cluster = |flag| parse_initial_cluster(flag).unwrap();
        assert!(validate_join(&cluster("n1=http://127.0.0.1:1,n2=http://127.0.0.1:2/"), &members).is_ok());
        let stale = cluster("n1=http://127.0.0.1:1,n2=http://127.0.0.1:2,n3=http://127.0.0.1:3");
        assert_eq!(validate_join(&stale, &members).unwrap_err().to_string(), "member count is unequal");
        assert_eq!(
            validate_join(&cluster("n1=http://127.0.0.1:1,n2=http://127.0.0.1:3"), &members).unwrap_err().to_string(),
            r#"PeerURLs: no match found for existing member (b, [http://127.0.0.1:2]), last resolver error ("http://127.0.0.1:2"(resolved from "http://127.0.0.1:2") != "http://127.0.0.1:3"(resolved from "http://127.0.0.1:3"))"#
        );
        // A joining member's own entry must be there; its URLs are matched against the list.
        assert!(verify_initial_cluster(&cluster("n1=http://127.0.0.1:1"), "n2", &[], true).is_err());
    }
}

#[cfg(test)]
pub(super) mod runtime_tests {
    use super::*;

    /// The membership of `me` (with `others` as members), saved in `dir`.
    pub(in crate::node) fn membership(
        dir: &std::path::Path,
        me: u64,
        others: &[u64],
    ) -> (Arc<Membership>, store::Store) {
        let store = store::Store::open(&dir.join("store"), store::StoreConfig::default()).unwrap();
        let member = |id: u64| Member {
            id,
            name: if id == me { "me".into() } else { String::new() },
            peer_urls: vec![format!("http://127.0.0.1:{}", id % 60000 + 1)],
            client_urls: Vec::new(),
            is_learner: false,
        };
        let members = std::iter::once(me).chain(others.iter().copied()).map(member).collect();
        let identity = Identity { cluster_id: 1, member_id: me, members, joined: false, removed: Vec::new() };
        identity.save(dir).unwrap();
        let metrics = Arc::new(crate::node::metrics::Metrics::new("3.5.1", me));
        let transport = crate::node::peer::PeerTransport::new(me, store.clone(), others, metrics);
        let (membership, _removed) = Membership::new(identity, transport, dir.to_path_buf());
        (membership, store)
    }

    #[test]
    fn a_hello_with_unchanged_data_does_not_rewrite_member_json() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (me, peer) = (1, 2);
        let (membership, _store) = membership(dir.path(), me, &[peer]);
        let file = dir.path().join("member.json");
        let urls = vec!["http://127.0.0.1:2379".to_string()];
        membership.record_hello(peer, "n2", urls.clone());
        let first = std::fs::metadata(&file).unwrap().ino();
        let saved: Identity = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let n2 = saved.members.iter().find(|m| m.id == peer).unwrap();
        assert_eq!((n2.name.as_str(), &n2.client_urls), ("n2", &urls), "a changed hello is saved");
        // Every save replaces the file (temp file, rename): an unchanged hello must not.
        for _ in 0..3 {
            membership.record_hello(peer, "n2", urls.clone());
        }
        assert_eq!(std::fs::metadata(&file).unwrap().ino(), first, "an unchanged hello rewrote member.json");
    }
}
