//! Single-node servers under test: real etcd 3.5.1 or `plinth serve`, started with the same
//! etcd flags on reserved loopback ports and a fresh data directory, plus the flags a test
//! adds ([`Options`]: TLS, auth), given alike to both.

use std::fmt;
use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ctl::{self, CtlOutput};
use crate::etcd;
use crate::ports::{self, Port};
use crate::process::{self, scrub_env};

/// How long a server gets to answer a linearizable Range after it is spawned.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Etcd,
    Plinth,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Etcd => "etcd",
            Kind::Plinth => "plinth",
        })
    }
}

/// Path of the plinth binary: `$PLINTH_BIN`, else `<workspace>/target/debug/plinth`.
/// Panics when it does not exist: plinth-side tests must fail, not skip, without it.
pub fn plinth_bin() -> PathBuf {
    let path = match std::env::var_os("PLINTH_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join("target/debug/plinth"),
    };
    assert!(
        path.is_file(),
        "plinth binary not found at {}; build it first: scripts/cargo build -p grpc-api --bin plinth \
         (or point PLINTH_BIN at it)",
        path.display()
    );
    path
}

/// What a server starts with beyond the shared single-member flags.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Flags after the shared ones (TLS files, auth token, bcrypt cost, ...).
    pub flags: Vec<String>,
    /// Client URLs are `https://`; `flags` must give the server its certificate.
    pub https: bool,
    /// etcdctl flags that [`Server::ctl`] and the readiness probe put before their own: the
    /// client's TLS credentials.
    pub ctl_flags: Vec<String>,
    /// Environment variables of the server process (an object store's `AWS_*` settings).
    pub env: Vec<(String, String)>,
}

/// A running single-node server. Killed with SIGKILL (and reaped) on drop.
pub struct Server {
    kind: Kind,
    bin: PathBuf,
    dir: tempfile::TempDir,
    client: Port,
    peer: Port,
    child: Option<Child>,
    starts: u32,
    options: Options,
}

impl Server {
    /// Real etcd 3.5.1 (fetched with `tests/scripts/get-etcd.sh` when absent).
    pub fn etcd() -> Server {
        Server::start(Kind::Etcd)
    }

    /// `plinth serve` with etcd's flags. Panics if the binary is missing.
    pub fn plinth() -> Server {
        Server::start(Kind::Plinth)
    }

    /// A server of `kind` with the shared flags only.
    pub fn start(kind: Kind) -> Server {
        Server::start_with(kind, Options::default())
    }

    /// A server of `kind` with the shared flags and `options`; waits until the readiness
    /// probe (with `options.ctl_flags`) reads.
    pub fn start_with(kind: Kind, options: Options) -> Server {
        let bin = match kind {
            Kind::Etcd => etcd::etcd(),
            Kind::Plinth => plinth_bin(),
        };
        let dir = tempfile::Builder::new().prefix(&format!("plinth-test-{kind}-")).tempdir().expect("temp dir");
        let (client, peer) = (ports::reserve(), ports::reserve());
        let mut s = Server { kind, bin, dir, client, peer, child: None, starts: 0, options };
        s.spawn_and_wait();
        s
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn client_port(&self) -> u16 {
        self.client.get()
    }

    pub fn peer_port(&self) -> u16 {
        self.peer.get()
    }

    /// `http://127.0.0.1:<client port>` (`https://` with [`Options::https`]).
    pub fn endpoint(&self) -> String {
        let scheme = if self.options.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port())
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A scratch directory that lives as long as the server.
    pub fn scratch_dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The exact command line (etcd's flag names) used for both servers.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.kind == Kind::Plinth {
            args.push("serve".to_owned());
        }
        let client = self.endpoint();
        let peer = self.peer_url();
        for (flag, value) in [
            ("--name", "n1".to_owned()),
            ("--data-dir", self.data_dir().display().to_string()),
            ("--listen-client-urls", client.clone()),
            ("--advertise-client-urls", client),
            ("--listen-peer-urls", peer.clone()),
            ("--initial-advertise-peer-urls", peer.clone()),
            ("--initial-cluster", format!("n1={peer}")),
        ] {
            args.push(flag.to_owned());
            args.push(value);
        }
        args.extend(self.options.flags.iter().cloned());
        args
    }

    fn spawn_and_wait(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.starts += 1;
        let log = OpenOptions::new().create(true).append(true).open(self.log_path()).expect("server log");
        {
            use std::io::Write;
            let mut l = &log;
            let _ = writeln!(l, "=== start #{}: {} {}", self.starts, self.bin.display(), self.args().join(" "));
        }
        let mut cmd = Command::new(&self.bin);
        cmd.args(self.args()).stdin(Stdio::null()).stdout(log.try_clone().expect("dup log")).stderr(log);
        scrub_env(&mut cmd);
        cmd.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {} ({}): {e}", self.kind, self.bin.display()));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Bounded wait until the client port accepts connections and a linearizable
    /// `etcdctl get` succeeds. Panics with the server's log tail otherwise.
    fn wait_ready(&mut self) {
        let start = Instant::now();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.client_port());
        let mut last = String::from("client port never accepted a connection");
        while start.elapsed() < READY_TIMEOUT {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                self.child = None;
                panic!("{} exited during startup with {st}\n--- log tail ---\n{}", self.kind, self.log_tail(60));
            }
            if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok() {
                let out = ctl::run(
                    &self.endpoint(),
                    &self.with_ctl_flags(&["--dial-timeout=1s", "--command-timeout=2s", "get", "readiness-probe"]),
                    None,
                    Duration::from_secs(5),
                );
                if out.code == Some(0) {
                    return;
                }
                last = format!("etcdctl get: exit {:?}: {}", out.code, out.stderr.trim());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let tail = self.log_tail(60);
        self.kill9();
        panic!(
            "{} not ready within {:?} on {} ({last})\n--- log tail ---\n{tail}",
            self.kind,
            READY_TIMEOUT,
            self.endpoint()
        );
    }

    /// The server's whole combined stdout/stderr (every start).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `n` lines of the server's combined stdout/stderr.
    pub fn log_tail(&self, n: usize) -> String {
        process::log_tail(&self.log_path(), n)
    }

    /// SIGKILL and reap the server process. The data dir and ports are kept.
    pub fn kill9(&mut self) {
        process::kill_and_reap(&mut self.child);
    }

    /// Starts the server again on the same data dir and ports (after [`Server::kill9`], or
    /// kills it first) and waits until it is ready.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn_and_wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `etcdctl --endpoints=<this server> <ctl_flags> <args>` with a 15 s limit.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        ctl::run(&self.endpoint(), &self.with_ctl_flags(args), None, ctl::DEFAULT_TIMEOUT)
    }

    /// Same as [`Server::ctl`] with `stdin` fed to etcdctl.
    pub fn ctl_stdin(&self, args: &[&str], stdin: &str) -> CtlOutput {
        ctl::run(&self.endpoint(), &self.with_ctl_flags(args), Some(stdin), ctl::DEFAULT_TIMEOUT)
    }

    /// [`Options::ctl_flags`] followed by `args`.
    fn with_ctl_flags<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        self.options.ctl_flags.iter().map(String::as_str).chain(args.iter().copied()).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}
