//! CN-as-user (etcd's rule with `--client-cert-auth`): a request without a token acts as the
//! Common Name of its verified client certificate, so kube-apiserver needs no token. etcdctl
//! 3.5.1 with `--cacert --cert --key` against a `plinth serve` with mTLS and auth enabled,
//! and the same script against etcd 3.5.1 with the same flags: the transcripts must match.
//!
//! Every certificate is made at run time ([`plinth_tests::certs`]), in the test's temp dir;
//! none is committed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use plinth_tests::certs::Ca;
use plinth_tests::cluster::{self, Kind, Options};
use plinth_tests::ctl::{self, CtlOutput};

/// Limit of one etcdctl command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// `plinth serve`, or etcd 3.5.1, with mTLS and auth; the certificates of the server and of
/// the users root, alice and bob under `certs`. Killed on drop.
struct Server {
    server: cluster::Server,
    certs: tempfile::TempDir,
    ca_file: PathBuf,
}

impl Server {
    fn log(&self) -> String {
        self.server.log()
    }

    /// etcdctl presenting the certificate of `cn`.
    fn ctl_as(&self, cn: &str, args: &[&str]) -> CtlOutput {
        let mut all = creds(self.certs.path(), &self.ca_file, cn);
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        ctl::run(&self.server.endpoint(), &all, None, COMMAND_TIMEOUT)
    }

    /// A POST of `body` to etcd's JSON gateway at `path` with the certificate of `cn` (curl):
    /// (HTTP status, body).
    fn gateway_as(&self, cn: &str, path: &str, body: &str) -> (u16, String) {
        let mut curl = std::process::Command::new("curl");
        curl.args(["-s", "--max-time", "10", "-w", "\n%{http_code}", "-X", "POST", "-d", body, "--cacert"])
            .arg(&self.ca_file)
            .arg("--cert")
            .arg(self.certs.path().join(format!("{cn}.pem")))
            .arg("--key")
            .arg(self.certs.path().join(format!("{cn}-key.pem")))
            .arg(format!("{}{path}", self.server.endpoint()));
        let out = plinth_tests::process::run_with_timeout(curl, None, COMMAND_TIMEOUT);
        assert_eq!(out.code, Some(0), "curl {path} as {cn}: {out:?}");
        let (body, status) = out.stdout.rsplit_once('\n').expect("the status after the body");
        (status.parse().expect("an HTTP status"), body.to_string())
    }

    /// `plinth serve`, or etcd 3.5.1 when `real_etcd`, with mTLS and auth flags; ready once
    /// root's certificate reads.
    fn start(ca: &Ca, real_etcd: bool) -> Server {
        let certs = tempfile::Builder::new().prefix("plinth-test-auth-cn-").tempdir().expect("temp dir");
        let ca_file = ca.write(certs.path(), "ca");
        let (cert, key) = ca.write_leaf(certs.path(), "server", ca.leaf("server", 1));
        for (serial, cn) in [(2, "root"), (3, "alice"), (4, "bob")] {
            ca.write_leaf(certs.path(), cn, ca.leaf(cn, serial));
        }
        let flags = vec![
            format!("--cert-file={}", cert.display()),
            format!("--key-file={}", key.display()),
            format!("--trusted-ca-file={}", ca_file.display()),
            "--client-cert-auth".into(),
            "--bcrypt-cost=4".into(),
        ];
        let options =
            Options { flags, https: true, ctl_flags: creds(certs.path(), &ca_file, "root"), ..Options::default() };
        let server = cluster::Server::start_with(if real_etcd { Kind::Etcd } else { Kind::Plinth }, options);
        // Fields drop in order: the server stops before its certificates go.
        Server { server, certs, ca_file }
    }
}

/// The etcdctl flags presenting the certificate of `cn` under `certs`.
fn creds(certs: &Path, ca_file: &Path, cn: &str) -> Vec<String> {
    vec![
        format!("--cacert={}", ca_file.display()),
        format!("--cert={}", certs.join(format!("{cn}.pem")).display()),
        format!("--key={}", certs.join(format!("{cn}-key.pem")).display()),
    ]
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
    let ca = Ca::new("plinth auth test CA");
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

    // etcd's JSON gateway acts as the certificate's user too ("app/x" and "secret" in base64).
    // etcd 3.5.1 refuses a gateway request whose certificate has a CN while auth is on, as
    // its gateway cannot pass the certificate on to the call; here the call gets it.
    let (status, body) = s.gateway_as("alice", "/v3/kv/range", r#"{"key":"YXBwL3g="}"#);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""value":"MQ==""#), "alice reads app/x through the gateway: {body}");
    let (status, body) = s.gateway_as("alice", "/v3/kv/range", r#"{"key":"c2VjcmV0"}"#);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(r#""error":"etcdserver: permission denied""#), "{body}");
}

/// The CN-as-user script on etcd 3.5.1 and on Plinth, each with mTLS, auth enabled and the
/// certificates of one CA: what each command prints (stdout, its `Error:` line, exit code).
#[test]
fn certificate_users_match_etcd() {
    let ca = Ca::new("plinth auth test CA");
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
            // A watch acts as the certificate's user too, checked at create.
            ("alice", &["watch", "secret", "--rev=1"]),
            ("alice", &["watch", "app/", "--prefix", "--rev=1"]),
            ("bob", &["watch", "app/x", "--rev=1"]),
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
    let dir = std::env::temp_dir().join("plinth-differential");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("auth_cn.etcd.txt"), &etcd);
    let _ = std::fs::write(dir.join("auth_cn.plinth.txt"), &plinth);
    assert!(plinth.contains("etcdserver: permission denied"), "{plinth}");
    assert_eq!(plinth, etcd, "Plinth differs from etcd 3.5.1\n--- etcd ---\n{etcd}\n--- plinth ---\n{plinth}");
}
