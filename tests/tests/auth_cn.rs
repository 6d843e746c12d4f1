//! CN-as-user (etcd's rule with `--client-cert-auth`): a request without a token acts as the
//! Common Name of its verified client certificate, so kube-apiserver needs no token. etcdctl
//! 3.5.1 with `--cacert --cert --key` against a `plinth serve` with mTLS and auth enabled,
//! and the same script against etcd 3.5.1 with the same flags: the transcripts must match.
//!
//! Every certificate is made here with rcgen, in the test's temp dir; none is committed.

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plinth_tests::cluster::plinth_bin;
use plinth_tests::ctl::{self, CtlOutput};
use plinth_tests::etcd;
use plinth_tests::ports::{self, Port};
use plinth_tests::process::{self, scrub_env};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use time::OffsetDateTime;

/// How long the server gets to answer a linearizable get after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit of one etcdctl command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "plinth auth test CA");
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA cert");
        Ca { cert, key }
    }

    /// A server-and-client certificate for `cn` written under `dir`; returns (cert, key).
    fn leaf(&self, dir: &Path, cn: &str, serial: u64) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.serial_number = Some(serial.into());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(30);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign leaf");
        let (cert_path, key_path) = (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}-key.pem")));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }
}

/// A `plinth serve` with mTLS on its client URL, killed on drop.
struct Server {
    dir: tempfile::TempDir,
    client: Port,
    peer: Port,
    child: Option<Child>,
    ca_file: PathBuf,
}

impl Server {
    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.client.get())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// etcdctl presenting the certificate of `cn`.
    fn ctl_as(&self, cn: &str, args: &[&str]) -> CtlOutput {
        let dir = self.dir.path();
        let mut all = vec![
            format!("--cacert={}", self.ca_file.display()),
            format!("--cert={}", dir.join(format!("{cn}.pem")).display()),
            format!("--key={}", dir.join(format!("{cn}-key.pem")).display()),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        ctl::run(&self.endpoint(), &all, None, COMMAND_TIMEOUT)
    }

    /// `plinth serve`, or etcd 3.5.1 when `real_etcd`, with mTLS and auth flags.
    fn start(ca: &Ca, real_etcd: bool) -> Server {
        let dir = tempfile::Builder::new().prefix("plinth-test-auth-cn-").tempdir().expect("temp dir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert.pem()).expect("write CA");
        let (cert, key) = ca.leaf(dir.path(), "server", 1);
        for (serial, cn) in [(2, "root"), (3, "alice"), (4, "bob")] {
            ca.leaf(dir.path(), cn, serial);
        }
        let mut s = Server { dir, client: ports::reserve(), peer: ports::reserve(), child: None, ca_file };
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
            format!("--cert-file={}", cert.display()),
            format!("--key-file={}", key.display()),
            format!("--trusted-ca-file={}", s.ca_file.display()),
            "--client-cert-auth".into(),
            "--bcrypt-cost=4".into(),
        ]);
        let log = std::fs::File::create(s.dir.path().join("server.log")).expect("server log");
        let mut cmd = Command::new(if real_etcd { etcd::etcd() } else { plinth_bin() });
        cmd.args(args).stdin(Stdio::null()).stdout(log.try_clone().expect("dup log")).stderr(log);
        scrub_env(&mut cmd);
        s.child = Some(cmd.spawn().expect("spawn plinth"));
        let start = Instant::now();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, s.client.get());
        loop {
            assert!(start.elapsed() < READY_TIMEOUT, "plinth not ready\n--- log ---\n{}", s.log());
            if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok()
                && s.ctl_as("root", &["--dial-timeout=1s", "--command-timeout=2s", "get", "probe"]).code == Some(0)
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

fn ok(s: &Server, cn: &str, args: &[&str]) -> String {
    let out = s.ctl_as(cn, args);
    assert_eq!(out.code, Some(0), "{cn}: etcdctl {args:?}: {out:?}\n--- log ---\n{}", s.log());
    out.stdout
}

fn refused(s: &Server, cn: &str, args: &[&str]) -> String {
    let out = s.ctl_as(cn, args);
    assert_ne!(out.code, Some(0), "{cn}: etcdctl {args:?} was allowed: {out:?}");
    out.stderr.lines().filter(|l| l.starts_with("Error:")).collect::<Vec<_>>().join("\n")
}

#[test]
fn the_certificate_common_name_is_the_user_without_a_token() {
    let ca = Ca::new();
    let s = Server::start(&ca, false);
    // Auth still off: anyone sets it up.
    ok(&s, "root", &["user", "add", "root", "--new-user-password=rootpw"]);
    ok(&s, "root", &["user", "grant-role", "root", "root"]);
    ok(&s, "root", &["role", "add", "app"]);
    ok(&s, "root", &["role", "grant-permission", "app", "readwrite", "app/", "--prefix"]);
    ok(&s, "root", &["user", "add", "alice", "--no-password"]);
    ok(&s, "root", &["user", "grant-role", "alice", "app"]);
    ok(&s, "root", &["put", "secret", "s"]);
    ok(&s, "root", &["auth", "enable"]);

    // No token: the certificate's CN is the user.
    assert_eq!(ok(&s, "root", &["put", "app/x", "1"]), "OK\n", "root by its certificate");
    assert_eq!(ok(&s, "alice", &["get", "app/x"]), "app/x\n1\n", "alice reads her prefix");
    assert_eq!(ok(&s, "alice", &["put", "app/y", "2"]), "OK\n");
    assert_eq!(refused(&s, "alice", &["get", "secret"]), "Error: etcdserver: permission denied");
    assert_eq!(refused(&s, "alice", &["user", "list"]), "Error: etcdserver: permission denied");
    // A certificate whose CN is no user is denied, not anonymous.
    assert_eq!(refused(&s, "bob", &["get", "app/x"]), "Error: etcdserver: permission denied");
    // A token wins over the certificate: root's password, alice's certificate.
    assert_eq!(ok(&s, "alice", &["--user=root:rootpw", "get", "secret"]), "secret\ns\n");
}

/// The CN-as-user script on etcd 3.5.1 and on Plinth, each with mTLS, auth enabled and the
/// certificates of one CA: what each command prints (stdout, its `Error:` line, exit code).
#[test]
fn certificate_users_match_etcd() {
    let ca = Ca::new();
    let run = |real_etcd: bool| {
        let s = Server::start(&ca, real_etcd);
        let mut transcript = String::new();
        let steps: &[(&str, &[&str])] = &[
            ("root", &["user", "add", "root", "--new-user-password=rootpw"]),
            ("root", &["user", "grant-role", "root", "root"]),
            ("root", &["role", "add", "app"]),
            ("root", &["role", "grant-permission", "app", "readwrite", "app/", "--prefix"]),
            ("root", &["user", "add", "alice", "--no-password"]),
            ("root", &["user", "grant-role", "alice", "app"]),
            ("root", &["put", "secret", "s"]),
            ("root", &["auth", "enable"]),
            ("root", &["put", "app/x", "1"]),
            ("alice", &["get", "app/x"]),
            ("alice", &["put", "app/y", "2"]),
            ("alice", &["get", "secret"]),
            ("alice", &["user", "list"]),
            ("alice", &["user", "get", "alice"]),
            ("bob", &["get", "app/x"]),
            ("alice", &["--user=root:rootpw", "get", "secret"]),
            ("root", &["user", "list"]),
            ("root", &["auth", "disable"]),
            ("bob", &["get", "secret"]),
        ];
        for (cn, args) in steps {
            let out = s.ctl_as(cn, args);
            let error: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("Error:")).collect();
            transcript.push_str(&format!(
                "$ [{cn}] etcdctl {}\n{}{:?} {:?}\n",
                args.join(" "),
                out.stdout,
                error,
                out.code
            ));
        }
        transcript
    };
    let (etcd, plinth) = (run(true), run(false));
    assert!(plinth.contains("etcdserver: permission denied"), "{plinth}");
    assert_eq!(plinth, etcd, "Plinth differs from etcd 3.5.1\n--- etcd ---\n{etcd}\n--- plinth ---\n{plinth}");
}
