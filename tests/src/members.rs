//! A cluster of real `plinth serve` processes on loopback, bootstrapped together with etcd's
//! `--initial-cluster` flags: start, SIGKILL and restart members on their own data dirs.
//! Every process is killed with SIGKILL when the cluster is dropped.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::cluster::plinth_bin;
use crate::ctl::{self, CtlOutput};
use crate::ports::{self, Port};
use crate::process::scrub_env;

/// Raft heartbeat of the members, in milliseconds.
pub const HEARTBEAT_MS: u64 = 50;
/// Raft election timeout of the members, in milliseconds: failovers take about a second.
pub const ELECTION_MS: u64 = 500;

/// One member process and its data.
pub struct Member {
    pub name: String,
    dir: PathBuf,
    client: Port,
    peer: Port,
    child: Option<Child>,
}

impl Member {
    /// `http://127.0.0.1:<client port>`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client.get())
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer.get())
    }

    /// Whether the process runs (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The last `n` lines of the member's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGKILL and reap; data dir and ports are kept for a restart.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
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
        let members = (1..=n)
            .map(|i| {
                let dir = tmp.path().join(format!("n{i}"));
                std::fs::create_dir_all(&dir).expect("member dir");
                Member { name: format!("n{i}"), dir, client: ports::reserve(), peer: ports::reserve(), child: None }
            })
            .collect();
        let mut c = Members { _tmp: tmp, members, extra: extra.iter().map(|s| s.to_string()).collect() };
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    fn initial_cluster(&self) -> String {
        self.members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",")
    }

    /// Starts member `i` (again) on its data dir; it must not be running.
    pub fn spawn(&mut self, i: usize) {
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
            ("--initial-cluster-token", "members-test".to_owned()),
            ("--heartbeat-interval", HEARTBEAT_MS.to_string()),
            ("--election-timeout", ELECTION_MS.to_string()),
        ] {
            cmd.arg(flag).arg(value);
        }
        cmd.args(&self.extra);
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("dup log")).stderr(log);
        scrub_env(&mut cmd);
        m.child = Some(cmd.spawn().expect("spawn plinth"));
    }

    /// The log tails of every member, for failure messages.
    pub fn logs(&self) -> String {
        self.members.iter().map(|m| format!("--- {} ---\n{}", m.name, m.log_tail(30))).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill9();
        }
    }
}
