//! A cluster of real `plinth serve` processes on loopback, bootstrapped together with etcd's
//! `--initial-cluster` flags: start, SIGKILL, pause (SIGSTOP) and restart members on their
//! own data dirs, add members that join with `--initial-cluster-state existing`, give every
//! member or one member extra flags, and wait until the running members agree on a leader.
//! A member may listen on another address than loopback and run inside a network namespace
//! ([`crate::netns`]), or with extra environment variables (an `LD_PRELOAD` fault shim).
//! Every process is killed with SIGKILL when the cluster is dropped. This is the one
//! multi-process harness of the tests; single servers are [`crate::cluster::Server`].

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

use crate::cluster::plinth_bin;
use crate::ctl::{self, CtlOutput};
use crate::ports::{self, Port};
use crate::process::{self, scrub_env};

/// Raft heartbeat of the members, in milliseconds.
pub const HEARTBEAT_MS: u64 = 50;
/// Raft election timeout of the members, in milliseconds: failovers take about a second.
pub const ELECTION_MS: u64 = 500;
/// How long [`Members::wait_leader`] waits for one member's `Status`.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// One member process and its data.
pub struct Member {
    pub name: String,
    dir: PathBuf,
    client: Port,
    peer: Port,
    child: Option<Child>,
    /// `new` for the bootstrap members, `existing` for members added later.
    state: &'static str,
    /// Stopped with SIGSTOP: cut off from everyone until [`Member::resume`].
    paused: bool,
    /// Flags only this member gets, after the cluster's (used from its next start on).
    pub flags: Vec<String>,
    /// Its peer URL is `https://` (peer TLS; the certificate flags go in `flags`).
    pub peer_https: bool,
    /// The address it listens on and advertises (`127.0.0.1` unless set before its start).
    pub host: String,
    /// The network namespace it runs in (`ip netns exec`), if any.
    pub netns: Option<String>,
    /// Environment variables only this member gets (used from its next start on).
    pub env: Vec<(String, String)>,
    /// The port its peer URL advertises when something (a [`crate::netproxy::Proxy`]) stands
    /// between its peers and its own peer port; set before the cluster's first start.
    pub advertised_peer_port: Option<u16>,
}

impl Member {
    /// `http://<host>:<client port>`
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.client.get())
    }

    /// The peer URL its peers dial: `http://<host>:<port>` (`https://` with
    /// [`Member::peer_https`]), with the advertised port when one is set.
    pub fn peer_url(&self) -> String {
        self.peer_url_on(self.advertised_peer_port.unwrap_or(self.peer.get()))
    }

    /// The peer URL it listens on.
    pub fn listen_peer_url(&self) -> String {
        self.peer_url_on(self.peer.get())
    }

    fn peer_url_on(&self, port: u16) -> String {
        let scheme = if self.peer_https { "https" } else { "http" };
        format!("{scheme}://{}:{port}", self.host)
    }

    /// The port its peers connect to.
    pub fn peer_port(&self) -> u16 {
        self.peer.get()
    }

    /// The member's data and log directory (certificates for it may be put there).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Whether the process runs (as far as this handle knows; a paused one counts).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process is stopped by [`Member::pause`].
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The member's whole log (every start appends to it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Whether the member's log shows `needle` within `limit`, polling every 50 ms. A log
    /// line is written after the work it reports, so what a client already sees (data from
    /// an installed snapshot, say) may still be ahead of its line for a moment.
    pub fn log_shows(&self, needle: &str, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The last `n` lines of the member's log.
    pub fn log_tail(&self, n: usize) -> String {
        process::log_tail(&self.dir.join("server.log"), n)
    }

    /// SIGKILL and reap; data dir and ports are kept for a restart.
    pub fn kill9(&mut self) {
        process::kill_and_reap(&mut self.child);
        self.paused = false;
    }

    /// SIGSTOP: the process keeps its sockets but answers nobody, as if partitioned away,
    /// until [`Member::resume`].
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT after [`Member::pause`].
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.as_ref().unwrap_or_else(|| panic!("{} is not running", self.name)).id();
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: kill(2) on the pid of our own unreaped child, so it cannot be a reused pid.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }

    /// Whether the process has exited on its own (reaping it if so); true when not started.
    pub fn exited(&mut self) -> bool {
        self.exit_status().is_some() || self.child.is_none()
    }

    /// How the process ended, if it has exited on its own since the last look (reaping it).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => {
                self.child = None;
                self.paused = false;
                Some(status)
            }
            _ => None,
        }
    }

    /// Waits up to `limit` for the process to exit on its own; its exit status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if self.child.is_none() || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `etcdctl --endpoints=<this member> <args>` with etcdctl's default time limit.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        ctl::run(&self.endpoint(), args, None, ctl::DEFAULT_TIMEOUT)
    }
}

/// `n` members bootstrapped together.
pub struct Members {
    _tmp: tempfile::TempDir,
    pub members: Vec<Member>,
    /// Flags every member gets on top of the cluster's.
    extra: Vec<String>,
}

impl Members {
    /// Starts `n` members with `extra` flags; they are not yet known to have a leader.
    pub fn start(n: usize, extra: &[&str]) -> Members {
        let tmp = tempfile::Builder::new().prefix("plinth-members-").tempdir().expect("temp dir");
        let mut c = Members { _tmp: tmp, members: Vec::new(), extra: extra.iter().map(|s| s.to_string()).collect() };
        for _ in 0..n {
            c.new_slot("new");
        }
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    /// `n` bootstrap members with `extra` flags, none started yet: set their per-member
    /// flags or https peer URLs, then [`Members::spawn`] each.
    pub fn create(n: usize, extra: &[&str]) -> Members {
        let tmp = tempfile::Builder::new().prefix("plinth-members-").tempdir().expect("temp dir");
        let mut c = Members { _tmp: tmp, members: Vec::new(), extra: extra.iter().map(|s| s.to_string()).collect() };
        for _ in 0..n {
            c.new_slot("new");
        }
        c
    }

    /// Adds a member that will join the running cluster (`--initial-cluster-state existing`),
    /// not started: add it through `MemberAdd` first (etcdctl's order), then [`Members::spawn`]
    /// it. Returns its index.
    pub fn add_member(&mut self) -> usize {
        self.new_slot("existing")
    }

    fn new_slot(&mut self, state: &'static str) -> usize {
        let i = self.members.len() + 1;
        let dir = self._tmp.path().join(format!("n{i}"));
        std::fs::create_dir_all(&dir).expect("member dir");
        self.members.push(Member {
            name: format!("n{i}"),
            dir,
            client: ports::reserve(),
            peer: ports::reserve(),
            child: None,
            state,
            paused: false,
            flags: Vec::new(),
            peer_https: false,
            host: "127.0.0.1".to_owned(),
            netns: None,
            env: Vec::new(),
            advertised_peer_port: None,
        });
        self.members.len() - 1
    }

    fn initial_cluster(&self) -> String {
        self.members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",")
    }

    /// The `--initial-cluster` a member joining now starts with: the cluster's member list as
    /// a running member answers it (what `etcdctl member add` prints), each member under its
    /// name here. Removed members and slots not yet added are left out, as a joining member
    /// that lists them is refused (etcd's "member count is unequal").
    fn current_cluster(&self) -> String {
        let endpoints: Vec<String> =
            self.members.iter().filter(|m| m.child.is_some() && !m.paused).map(Member::endpoint).collect();
        let listed = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                    rt.block_on(async {
                        for endpoint in &endpoints {
                            let options = ConnectOptions::new().with_timeout(STATUS_TIMEOUT * 5);
                            let Ok(mut client) = Client::connect([endpoint], Some(options)).await else { continue };
                            if let Ok(list) = client.member_list().await {
                                return Some(list);
                            }
                        }
                        None
                    })
                })
                .join()
                .expect("member list thread")
        });
        let list = listed.unwrap_or_else(|| panic!("no running member answered a member list\n{}", self.logs()));
        let mut entries = Vec::new();
        for listed in list.members() {
            for url in listed.peer_urls() {
                let name = match self.members.iter().find(|m| m.peer_url() == *url) {
                    Some(m) => m.name.clone(),
                    None => listed.name().to_owned(),
                };
                entries.push(format!("{name}={url}"));
            }
        }
        entries.join(",")
    }

    /// Starts member `i` (again) on its data dir; it must not be running. A member added
    /// with [`Members::add_member`] first starts with the cluster's current member list.
    pub fn spawn(&mut self, i: usize) {
        let joining = self.members[i].state == "existing" && !self.members[i].dir.join("data/member.json").exists();
        let initial_cluster = if joining { self.current_cluster() } else { self.initial_cluster() };
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "{} already running", m.name);
        let log = OpenOptions::new().create(true).append(true).open(m.dir.join("server.log")).expect("log");
        let mut cmd = match &m.netns {
            // `ip netns exec` execs the binary in place: the child's pid is the member's.
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(plinth_bin());
                cmd
            }
            None => Command::new(plinth_bin()),
        };
        cmd.arg("serve");
        for (flag, value) in [
            ("--name", m.name.clone()),
            ("--data-dir", m.dir.join("data").display().to_string()),
            ("--listen-client-urls", m.endpoint()),
            ("--advertise-client-urls", m.endpoint()),
            ("--listen-peer-urls", m.listen_peer_url()),
            ("--initial-advertise-peer-urls", m.peer_url()),
            ("--initial-cluster", initial_cluster),
            ("--initial-cluster-state", m.state.to_owned()),
            ("--initial-cluster-token", "members-test".to_owned()),
            ("--heartbeat-interval", HEARTBEAT_MS.to_string()),
            ("--election-timeout", ELECTION_MS.to_string()),
        ] {
            cmd.arg(flag).arg(value);
        }
        cmd.args(&self.extra).args(&m.flags);
        cmd.envs(m.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("dup log")).stderr(log);
        scrub_env(&mut cmd);
        m.child = Some(cmd.spawn().expect("spawn plinth"));
    }

    /// The log tails of every member, for failure messages.
    pub fn logs(&self) -> String {
        self.members.iter().map(|m| format!("--- {} ---\n{}", m.name, m.log_tail(30))).collect::<Vec<_>>().join("\n")
    }

    /// Index of the member every running, unpaused member names as leader, once they agree;
    /// panics with the log tails after `timeout`.
    pub async fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ids = BTreeMap::new();
            let mut leaders = Vec::new();
            let up: Vec<usize> = (0..self.members.len())
                .filter(|i| self.members[*i].is_running() && !self.members[*i].is_paused())
                .collect();
            for &i in &up {
                let m = &self.members[i];
                let opts = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(8));
                if let Ok(mut c) = Client::connect([m.endpoint()], Some(opts)).await {
                    if let Ok(Ok(s)) = tokio::time::timeout(STATUS_TIMEOUT, c.status()).await {
                        ids.insert(s.header().map_or(0, |h| h.member_id()), i);
                        leaders.push(s.leader());
                    }
                }
            }
            if leaders.len() == up.len() && leaders.iter().all(|l| *l != 0 && *l == leaders[0]) {
                if let Some(i) = ids.get(&leaders[0]) {
                    return *i;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader within {timeout:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill9();
        }
    }
}

/// How long [`add_member_when_healthy`] and [`remove_member_when_healthy`] retry a change
/// refused as "unhealthy cluster": etcd's health interval (5 s) with room to spare.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether `e` is the strict reconfiguration check's "unhealthy cluster". Like etcd, a member
/// counts a peer as connected only once its stream has been up for 5 s (etcd's
/// `HealthInterval`), so a change asked for just after members start or reconnect is refused
/// this way for a few seconds; an operator (and a test) asks again.
pub fn is_unhealthy_cluster(e: &etcd_client::Error) -> bool {
    e.to_string().contains("etcdserver: unhealthy cluster")
}

/// `member add` through `client`, asked again while it answers "unhealthy cluster" (see
/// [`is_unhealthy_cluster`]), for up to 15 s. Panics on any other error.
pub async fn add_member_when_healthy(
    client: &mut Client,
    peer_urls: Vec<String>,
    learner: bool,
) -> etcd_client::MemberAddResponse {
    let deadline = Instant::now() + HEALTHY_TIMEOUT;
    loop {
        let opts = learner.then(|| etcd_client::MemberAddOptions::new().with_is_learner());
        match client.member_add(peer_urls.clone(), opts).await {
            Ok(added) => return added,
            Err(e) if is_unhealthy_cluster(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("member add {peer_urls:?}: {e}"),
        }
    }
}

/// `member remove` through `client`, asked again while it answers "unhealthy cluster" (see
/// [`is_unhealthy_cluster`]), for up to 15 s. Panics on any other error.
pub async fn remove_member_when_healthy(client: &mut Client, id: u64) -> etcd_client::MemberRemoveResponse {
    let deadline = Instant::now() + HEALTHY_TIMEOUT;
    loop {
        match client.member_remove(id).await {
            Ok(removed) => return removed,
            Err(e) if is_unhealthy_cluster(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("member remove {id:x}: {e}"),
        }
    }
}
