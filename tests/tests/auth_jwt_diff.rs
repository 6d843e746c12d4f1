//! `--auth-token jwt,...` against etcd 3.5.1: the same ES256 keys and flags on both servers,
//! the same etcdctl script with `--user`, the same transcript.
//!
//! The keys are made here with rcgen, in the test's temp dir; none is committed.

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plinth_tests::cluster::plinth_bin;
use plinth_tests::ctl::{self, CtlOutput};
use plinth_tests::etcd;
use plinth_tests::ports::{self, Port};
use plinth_tests::process::{self, scrub_env};

/// How long a server gets to answer a linearizable get after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit of one etcdctl command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// A server (plinth or etcd) with JWT tokens, killed on drop.
struct Server {
    dir: tempfile::TempDir,
    client: Port,
    peer: Port,
    child: Option<Child>,
}

impl Server {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client.get())
    }

    fn ctl(&self, args: &[&str]) -> CtlOutput {
        ctl::run(&self.endpoint(), args, None, COMMAND_TIMEOUT)
    }

    fn start(real_etcd: bool, private: &str, public: &str) -> Server {
        let dir = tempfile::Builder::new().prefix("plinth-test-auth-jwt-").tempdir().expect("temp dir");
        let mut s = Server { dir, client: ports::reserve(), peer: ports::reserve(), child: None };
        let peer = format!("http://127.0.0.1:{}", s.peer.get());
        let mut args: Vec<String> = if real_etcd { Vec::new() } else { vec!["serve".into()] };
        args.extend([
            "--name=n1".into(),
            format!("--data-dir={}", s.dir.path().join("data").display()),
            format!("--listen-client-urls={}", s.endpoint()),
            format!("--advertise-client-urls={}", s.endpoint()),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=n1={peer}"),
            format!("--auth-token=jwt,pub-key={public},priv-key={private},sign-method=ES256,ttl=10m"),
            "--bcrypt-cost=4".into(),
        ]);
        let log = std::fs::File::create(s.dir.path().join("server.log")).expect("server log");
        let mut cmd = Command::new(if real_etcd { etcd::etcd() } else { plinth_bin() });
        cmd.args(args).stdin(Stdio::null()).stdout(log.try_clone().expect("dup log")).stderr(log);
        scrub_env(&mut cmd);
        s.child = Some(cmd.spawn().expect("spawn server"));
        let start = Instant::now();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, s.client.get());
        loop {
            let log = || std::fs::read_to_string(s.dir.path().join("server.log")).unwrap_or_default();
            assert!(start.elapsed() < READY_TIMEOUT, "server not ready\n--- log ---\n{}", log());
            if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok()
                && s.ctl(&["--dial-timeout=1s", "--command-timeout=2s", "get", "probe"]).code == Some(0)
            {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        process::kill_and_reap(&mut self.child);
    }
}

#[test]
fn jwt_tokens_match_etcd() {
    let keys = tempfile::Builder::new().prefix("plinth-test-jwt-keys-").tempdir().expect("temp dir");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let private = keys.path().join("jwt.key");
    let public = keys.path().join("jwt.pub");
    std::fs::write(&private, pair.serialize_pem()).expect("write key");
    std::fs::write(&public, pair.public_key_pem()).expect("write key");
    let (private, public) = (private.display().to_string(), public.display().to_string());
    let run = |real_etcd: bool| {
        let s = Server::start(real_etcd, &private, &public);
        let steps: &[&[&str]] = &[
            &["user", "add", "root", "--new-user-password=rootpw"],
            &["user", "grant-role", "root", "root"],
            &["role", "add", "app"],
            &["role", "grant-permission", "app", "readwrite", "app/", "--prefix"],
            &["user", "add", "alice", "--new-user-password=pw"],
            &["user", "grant-role", "alice", "app"],
            &["put", "secret", "s"],
            &["auth", "enable"],
            &["get", "secret"],
            &["--user=alice:pw", "put", "app/x", "1"],
            &["--user=alice:pw", "get", "app/x"],
            &["--user=alice:pw", "get", "secret"],
            &["--user=alice:bad", "get", "app/x"],
            &["--user=root:rootpw", "auth", "status"],
            &["--user=root:rootpw", "role", "revoke-permission", "app", "app/", "--prefix"],
            &["--user=alice:pw", "get", "app/x"],
            &["--user=root:rootpw", "user", "delete", "alice"],
            &["--user=alice:pw", "get", "app/x"],
            &["--user=root:rootpw", "auth", "disable"],
            &["get", "secret"],
        ];
        let mut transcript = String::new();
        for args in steps {
            let out = s.ctl(args);
            let error: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("Error:")).collect();
            transcript.push_str(&format!("$ etcdctl {}\n{}{:?} {:?}\n", args.join(" "), out.stdout, error, out.code));
        }
        transcript
    };
    let (etcd, plinth) = (run(true), run(false));
    assert!(plinth.contains("app/x\n1\n"), "{plinth}");
    assert_eq!(plinth, etcd, "Plinth differs from etcd 3.5.1\n--- etcd ---\n{etcd}\n--- plinth ---\n{plinth}");
}
