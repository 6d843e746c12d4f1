//! A `plinth serve` process on free loopback ports with its own data dir, killed on drop;
//! the start-up pieces tests that start `plinth serve` themselves share (its command line, the
//! wait for it to listen or exit); and the token calls of the auth tests.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for a server to accept clients.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Server {
    pub child: Option<Child>,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    extra: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

/// The port reservation the process tests share (below Linux's ephemeral range, held by a
/// file lock across test binaries and concurrent runs).
#[path = "../../tests/src/ports.rs"]
mod ports;

/// A loopback port reserved for the rest of this test binary.
///
/// It comes from below the ephemeral range: a port from `bind(:0)` is an ephemeral one, and
/// an outgoing connection of another test's server (to a peer that is not up yet) could hold
/// it as its local port when this test's server binds it, so that server failed to start
/// while the test's wait on its other port went on. The reservation is never released, so no
/// two tests of one binary, nor two binaries running at once, get the same port.
pub fn free_port() -> u16 {
    static HELD: std::sync::Mutex<Vec<ports::Port>> = std::sync::Mutex::new(Vec::new());
    let port = ports::reserve();
    let number = port.get();
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(port);
    number
}

/// `plinth serve` as member `n1` on `client_url` and `peer_url` with `data_dir`, logging
/// warnings only, its stdout discarded; the caller adds the cluster, its flags and stderr.
pub fn serve_command(data_dir: &Path, client_url: &str, peer_url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_plinth"));
    command
        .arg("serve")
        .args(["--name", "n1", "--data-dir"])
        .arg(data_dir)
        .args(["--listen-client-urls", client_url, "--advertise-client-urls", client_url])
        .args(["--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url])
        .args(["--log-level", "warn"])
        .stdout(Stdio::null());
    command
}

/// What a started process did first.
pub enum Started {
    /// It accepted a connection on the port waited for.
    Listening,
    /// It exited (with this status) before that.
    Exited(ExitStatus),
}

/// Waits until `child` exits or, when `port` is given, accepts a connection on it; `None` if
/// neither happened within `timeout` (the child is left running).
pub fn wait_listen_or_exit(child: &mut Child, port: Option<u16>, timeout: Duration) -> Option<Started> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(Started::Exited(status));
        }
        if port.is_some_and(|port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()) {
            return Some(Started::Listening);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `child` listens on `port`, panicking if it exits first or takes over `timeout`.
pub fn wait_listening(child: &mut Child, port: u16, timeout: Duration) {
    match wait_listen_or_exit(child, Some(port), timeout) {
        Some(Started::Listening) => {}
        Some(Started::Exited(status)) => panic!("plinth exited at start-up: {status}"),
        None => panic!("plinth did not listen within {timeout:?}"),
    }
}

/// SIGKILL and reap, no chance to flush anything.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// All a child's piped stderr (call once it has exited).
pub fn read_stderr(child: &mut Child) -> String {
    let mut stderr = String::new();
    child.stderr.take().expect("stderr piped").read_to_string(&mut stderr).unwrap();
    stderr
}

impl Server {
    /// Starts a server with a fresh data dir and extra flags.
    pub fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let mut server = Server {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            data_dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _tmp: Some(tmp),
        };
        server.spawn();
        server
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let client_url = format!("http://127.0.0.1:{}", self.client_port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let child = serve_command(&self.data_dir, &client_url, &peer_url)
            .args(["--initial-cluster", &format!("n1={peer_url}")])
            .args(&self.extra)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning plinth");
        // Held by `self` before the wait, so a failed start is still killed on drop.
        let child = self.child.insert(child);
        wait_listening(child, self.client_port, START_TIMEOUT);
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub async fn client(&self) -> etcd_client::Client {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match etcd_client::Client::connect([self.endpoint()], None).await {
                Ok(mut c) => {
                    // Ready once a linearizable read succeeds (a leader is elected).
                    if c.get("probe", None).await.is_ok() {
                        return c;
                    }
                }
                Err(e) => assert!(Instant::now() < deadline, "connect: {e}"),
            }
            assert!(Instant::now() < deadline, "plinth not ready within {START_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The gRPC status of a failed call.
pub fn status(e: etcd_client::Error) -> tonic::Status {
    match e {
        etcd_client::Error::GRpcStatus(s) => s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// Client options of the auth tests: short connect, bounded calls.
pub fn options() -> etcd_client::ConnectOptions {
    etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(8))
}

/// A raw token from `Authenticate` on `endpoint`.
pub async fn token(endpoint: &str, user: &str, password: &str) -> String {
    let c = etcd_client::Client::connect([endpoint], Some(options())).await.expect("connect");
    c.auth_client().authenticate(user.to_owned(), password.to_owned()).await.expect("authenticate").token().to_owned()
}

/// A get of `key` on `endpoint` carrying `token` in the `token` metadata, as etcd's clients send it.
pub async fn get_with_token(endpoint: &str, token: &str, key: &str) -> Result<(), tonic::Status> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{endpoint}")).unwrap().connect().await.unwrap();
    let mut kv = grpc_api::pb::etcdserverpb::kv_client::KvClient::new(channel);
    let mut request = tonic::Request::new(grpc_api::pb::etcdserverpb::RangeRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    });
    request.metadata_mut().insert("token", token.parse().unwrap());
    tokio::time::timeout(Duration::from_secs(8), kv.range(request)).await.expect("range answered in time").map(|_| ())
}

/// The keys and values under `prefix` in create order, once there are `want` of them (it
/// polls for up to 5 s, then answers what there is): the queue of a lock or an election.
pub async fn settled_queue(client: &mut etcd_client::Client, prefix: &str, want: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let opts = etcd_client::GetOptions::new()
        .with_prefix()
        .with_sort(etcd_client::SortTarget::Create, etcd_client::SortOrder::Ascend);
    let mut queue = Vec::new();
    for _ in 0..50 {
        let resp = client.get(prefix, Some(opts.clone())).await.unwrap();
        queue = resp.kvs().iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())).collect();
        if queue.len() == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    queue
}

/// A process killed (and reaped) on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A learner `n2` on fresh ports: added to `n1`'s cluster through `client` (`member add
/// --learner`), then started to join it with its data in `dir` (etcdctl's order). Returns the
/// `member add` answer, `n2`'s client port and its process.
pub async fn add_learner_n2(
    n1: &Server,
    client: &mut etcd_client::Client,
    dir: &Path,
) -> (etcd_client::MemberAddResponse, u16, Killed) {
    let (client_port, peer_port) = (free_port(), free_port());
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let added = client
        .member_add([peer_url.clone()], Some(etcd_client::MemberAddOptions::new().with_is_learner()))
        .await
        .expect("member add --learner");
    let n2 = join_as_n2(n1, dir, &format!("http://127.0.0.1:{client_port}"), &peer_url);
    (added, client_port, n2)
}

/// `plinth serve` as member `n2` joining the cluster of `n1` (`--initial-cluster-state
/// existing`), which has added it at `peer_url` with `member add`: its data in `dir`, its
/// clients on `client_url`.
pub fn join_as_n2(n1: &Server, dir: &Path, client_url: &str, peer_url: &str) -> Killed {
    let initial = format!("n1=http://127.0.0.1:{},n2={peer_url}", n1.peer_port);
    Killed(
        Command::new(env!("CARGO_BIN_EXE_plinth"))
            .arg("serve")
            .args(["--name", "n2", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", client_url, "--advertise-client-urls", client_url])
            .args(["--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url])
            .args(["--initial-cluster", &initial, "--initial-cluster-state", "existing"])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning the joining member"),
    )
}
