//! Client TLS against a `plinth serve` process: etcdctl 3.5.1 with `--cacert --cert --key`,
//! `/health` over https, clients refused at the handshake (no certificate, another CA,
//! expired), certificate rotation without restart, and the TLS flags refused with a message.
//!
//! Every certificate is made at run time ([`plinth_tests::certs`]), in the test's temp dir;
//! none is committed.

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plinth_tests::certs::Ca;
use plinth_tests::cluster::plinth_bin;
use plinth_tests::ctl::{self, CtlOutput};
use plinth_tests::ports::{self, Port};
use plinth_tests::process::{self, run_with_timeout, scrub_env, Output};
use time::OffsetDateTime;

/// How long a TLS server gets to answer a linearizable get after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit of one etcdctl, curl or openssl command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a refused start-up may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// What a client presents: CA file to trust, optional certificate and key.
#[derive(Clone)]
struct ClientCreds {
    ca: PathBuf,
    cert_key: Option<(PathBuf, PathBuf)>,
}

impl ClientCreds {
    fn etcdctl_args(&self) -> Vec<String> {
        let mut args = vec![format!("--cacert={}", self.ca.display())];
        if let Some((cert, key)) = &self.cert_key {
            args.push(format!("--cert={}", cert.display()));
            args.push(format!("--key={}", key.display()));
        }
        args
    }
}

/// A `plinth serve` with TLS on its client URL, killed on drop.
struct TlsServer {
    dir: tempfile::TempDir,
    client: Port,
    peer: Port,
    child: Option<Child>,
}

impl TlsServer {
    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.client.get())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn args(&self, extra: &[String]) -> Vec<String> {
        let peer = format!("http://127.0.0.1:{}", self.peer.get());
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--name=n1".into(),
            format!("--data-dir={}", self.dir.path().join("data").display()),
            format!("--listen-client-urls={}", self.endpoint()),
            format!("--advertise-client-urls={}", self.endpoint()),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=n1={peer}"),
        ];
        args.extend(extra.iter().cloned());
        args
    }

    /// Spawns plinth with `extra` flags (TLS files) and waits until `creds` can read.
    fn start(dir: tempfile::TempDir, extra: &[String], creds: &ClientCreds) -> TlsServer {
        let mut server = TlsServer { dir, client: ports::reserve(), peer: ports::reserve(), child: None };
        let log = std::fs::File::create(server.log_path()).expect("server log");
        let mut cmd = Command::new(plinth_bin());
        cmd.args(server.args(extra)).stdin(Stdio::null()).stdout(log.try_clone().expect("dup log")).stderr(log);
        scrub_env(&mut cmd);
        server.child = Some(cmd.spawn().expect("spawn plinth"));
        server.wait_ready(creds);
        server
    }

    fn wait_ready(&mut self, creds: &ClientCreds) {
        let start = Instant::now();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.client.get());
        let mut last = String::from("client port never accepted a connection");
        while start.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.child.as_mut().expect("child").try_wait().expect("try_wait") {
                self.child = None;
                panic!("plinth exited during start-up with {status}\n--- log ---\n{}", self.log());
            }
            if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok() {
                let out = self.ctl(creds, &["--dial-timeout=1s", "--command-timeout=2s", "get", "readiness-probe"]);
                if out.code == Some(0) {
                    return;
                }
                last = format!("etcdctl get: exit {:?}: {}", out.code, out.stderr.trim());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("plinth not ready within {READY_TIMEOUT:?} ({last})\n--- log ---\n{}", self.log());
    }

    fn ctl(&self, creds: &ClientCreds, args: &[&str]) -> CtlOutput {
        let mut all = creds.etcdctl_args();
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        ctl::run(&self.endpoint(), &all, None, COMMAND_TIMEOUT)
    }

    /// The subject of the certificate the server presents to a new connection, as printed
    /// by `openssl s_client` (presenting `creds`' certificate).
    fn served_subject(&self, creds: &ClientCreds) -> String {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect", &format!("127.0.0.1:{}", self.client.get())]);
        cmd.arg("-CAfile").arg(&creds.ca);
        if let Some((cert, key)) = &creds.cert_key {
            cmd.arg("-cert").arg(cert).arg("-key").arg(key);
        }
        let out = run_with_timeout(cmd, Some(""), COMMAND_TIMEOUT);
        out.stdout
            .lines()
            .find(|l| l.starts_with("subject="))
            .unwrap_or_else(|| panic!("openssl s_client printed no subject: {out:?}"))
            .to_owned()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        process::kill_and_reap(&mut self.child);
    }
}

/// A CA, a server certificate and a client certificate under a fresh temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_file: PathBuf,
    server: (PathBuf, PathBuf),
    client: ClientCreds,
}

fn pki() -> Pki {
    let dir = tempfile::Builder::new().prefix("plinth-test-tls-").tempdir().expect("temp dir");
    let ca = Ca::new("plinth test CA");
    let ca_file = ca.write(dir.path(), "ca");
    let server = ca.write_leaf(dir.path(), "server", ca.leaf("plinth-server-1", 1001));
    let (cert, key) = ca.write_leaf(dir.path(), "client", ca.leaf("root", 2001));
    let client = ClientCreds { ca: ca_file.clone(), cert_key: Some((cert, key)) };
    Pki { dir, ca, ca_file, server, client }
}

/// The flags of a server with mTLS from `pki`.
fn mtls_flags(pki: &Pki) -> Vec<String> {
    vec![
        format!("--cert-file={}", pki.server.0.display()),
        format!("--key-file={}", pki.server.1.display()),
        format!("--trusted-ca-file={}", pki.ca_file.display()),
        "--client-cert-auth".to_owned(),
    ]
}

fn server_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("plinth-test-tls-server-").tempdir().expect("temp dir")
}

fn assert_ok(what: &str, out: &CtlOutput) {
    assert_eq!(out.code, Some(0), "{what} failed: {out:?}");
}

#[test]
fn etcdctl_kv_watch_and_health_over_mtls() {
    let pki = pki();
    let server = TlsServer::start(server_dir(), &mtls_flags(&pki), &pki.client);
    let c = &pki.client;

    let mut watch = {
        let mut args = c.etcdctl_args();
        // From revision 1: the events arrive even if the watch connects after the writes.
        args.extend(["watch".to_owned(), "k".to_owned(), "--prefix".to_owned(), "--rev=1".to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl::spawn(&server.endpoint(), &args, Duration::from_secs(30))
    };
    assert_ok("put", &server.ctl(c, &["put", "k1", "v1"]));
    let get = server.ctl(c, &["get", "k1"]);
    assert_ok("get", &get);
    assert_eq!(get.stdout, "k1\nv1\n");
    let txn = "value(\"k1\") = \"v1\"\n\nput k2 v2\n\nput k2 other\n\n";
    let out = {
        let mut args = c.etcdctl_args();
        args.push("txn".to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl::run(&server.endpoint(), &args, Some(txn), COMMAND_TIMEOUT)
    };
    assert_ok("txn", &out);
    assert_eq!(out.stdout, "SUCCESS\n\nOK\n");
    assert_ok("del", &server.ctl(c, &["del", "k1"]));
    assert_eq!(server.ctl(c, &["get", "k1"]).stdout, "");
    assert!(
        watch.wait_until(Duration::from_secs(10), |s| s.contains("PUT\nk1\nv1")
            && s.contains("k2\nv2")
            && s.contains("DELETE\nk1")),
        "watch saw: {:?}",
        watch.stdout_so_far()
    );
    drop(watch);

    // The HTTP endpoints share the TLS port, over HTTP/2 and over HTTP/1.1 (ALPN).
    let curl = |path: &str, version: &str| {
        let mut curl = Command::new("curl");
        curl.args(["-sSi", "--max-time", "10", version, "-w", "\n%{http_version}", "--cacert"]).arg(&pki.ca_file);
        let (cert, key) = c.cert_key.clone().expect("client cert");
        curl.arg("--cert").arg(cert).arg("--key").arg(key).arg(format!("{}{path}", server.endpoint()));
        run_with_timeout(curl, None, COMMAND_TIMEOUT)
    };
    for (version, spoken) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let health = curl("/health", version);
        assert_eq!(health.code, Some(0), "curl {version} /health: {health:?}");
        assert!(health.stdout.contains("\"health\":\"true\""), "/health: {health:?}");
        assert!(health.stdout.ends_with(&format!("\n{spoken}")), "curl {version} spoke: {health:?}");
        // One `Date` header, as Go's net/http sends (hyper's own is off on HTTP/2).
        let dates = health.stdout.lines().filter(|l| l.to_ascii_lowercase().starts_with("date: ")).count();
        assert_eq!(dates, 1, "Date headers over {version}: {health:?}");
        let metrics = curl("/metrics", version);
        assert_eq!(metrics.code, Some(0), "curl {version} /metrics: {metrics:?}");
        assert!(metrics.stdout.contains("etcd_server_has_leader 1"), "/metrics over {version}: {metrics:?}");
    }
}

#[test]
fn clients_without_a_good_certificate_are_refused() {
    let pki = pki();
    let server = TlsServer::start(server_dir(), &mtls_flags(&pki), &pki.client);
    let probe = ["--dial-timeout=2s", "--command-timeout=3s", "get", "k"];

    let no_cert = ClientCreds { ca: pki.ca_file.clone(), cert_key: None };
    let other_ca = Ca::new("another CA");
    let wrong_ca = {
        let (cert, key) = other_ca.write_leaf(pki.dir.path(), "wrong-ca-client", other_ca.leaf("root", 3001));
        ClientCreds { ca: pki.ca_file.clone(), cert_key: Some((cert, key)) }
    };
    let expired = {
        let now = OffsetDateTime::now_utc();
        let pems = pki.ca.leaf_valid("root", 4001, now - time::Duration::days(10), now - time::Duration::days(1));
        let (cert, key) = pki.ca.write_leaf(pki.dir.path(), "expired-client", pems);
        ClientCreds { ca: pki.ca_file.clone(), cert_key: Some((cert, key)) }
    };
    for (what, creds) in
        [("no certificate", &no_cert), ("certificate of another CA", &wrong_ca), ("expired certificate", &expired)]
    {
        let out = server.ctl(creds, &probe);
        assert_ne!(out.code, Some(0), "a client with {what} was served: {out:?}");
    }
    // The refusals are at the handshake: the server logs them, and a good client still works.
    let log = server.log();
    assert!(log.contains("rejected TLS connection"), "no handshake refusal logged:\n{log}");
    assert_ok("get with a good certificate", &server.ctl(&pki.client, &probe));
}

#[test]
fn rotated_certificate_served_to_new_connections_and_broken_file_keeps_the_old() {
    let pki = pki();
    let server = TlsServer::start(server_dir(), &mtls_flags(&pki), &pki.client);
    let first = server.served_subject(&pki.client);
    assert!(first.contains("plinth-server-1"), "first subject: {first}");

    // Rotate: a new certificate (new serial and CN) replaces the files in place.
    let (cert, key) = pki.ca.leaf("plinth-server-2", 1002);
    std::fs::write(&pki.server.1, key).expect("write key");
    std::fs::write(&pki.server.0, cert).expect("write cert");
    let second = server.served_subject(&pki.client);
    assert!(second.contains("plinth-server-2"), "after rotation the server still presents: {second}");
    assert_ok("get after rotation", &server.ctl(&pki.client, &["get", "k"]));

    // A broken file: the previous certificate stays in service, and the error is logged once.
    std::fs::write(&pki.server.0, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write broken cert");
    for _ in 0..3 {
        let subject = server.served_subject(&pki.client);
        assert!(subject.contains("plinth-server-2"), "with a broken file the server presents: {subject}");
    }
    assert_ok("get with a broken cert file", &server.ctl(&pki.client, &["get", "k"]));
    let errors = server.log().matches("do not load").count();
    assert_eq!(errors, 1, "expected one reload error for one broken change:\n{}", server.log());
}

#[test]
fn rotated_client_ca_applies_to_new_connections() {
    let pki = pki();
    // The server trusts client certificates through its own copy of the CA file.
    let client_ca = pki.dir.path().join("client-ca.pem");
    std::fs::copy(&pki.ca_file, &client_ca).expect("copy CA");
    let mut flags = mtls_flags(&pki);
    flags[2] = format!("--trusted-ca-file={}", client_ca.display());
    let server = TlsServer::start(server_dir(), &flags, &pki.client);

    // A new client CA replaces the old one: the old CA's clients are refused from the next
    // connection, the new CA's clients are served.
    let new_ca = Ca::new("rotated client CA");
    std::fs::write(&client_ca, new_ca.cert.pem()).expect("write new CA");
    let (cert, key) = new_ca.write_leaf(pki.dir.path(), "new-ca-client", new_ca.leaf("root", 5001));
    let new_client = ClientCreds { ca: pki.ca_file.clone(), cert_key: Some((cert, key)) };
    let probe = ["--dial-timeout=2s", "--command-timeout=3s", "get", "k"];
    let old = server.ctl(&pki.client, &probe);
    assert_ne!(old.code, Some(0), "a client of the replaced CA was served: {old:?}");
    assert_ok("get with a certificate of the new CA", &server.ctl(&new_client, &probe));
}

/// `plinth serve <flags>` is expected to exit at once with an error naming the problem.
fn refused(extra: &[String]) -> Output {
    let dir = server_dir();
    let server = TlsServer { dir, client: ports::reserve(), peer: ports::reserve(), child: None };
    let mut cmd = Command::new(plinth_bin());
    cmd.args(server.args(extra));
    expect_refused(cmd, extra)
}

/// Runs `cmd` (`plinth serve` with `extra` among its flags) and expects it to exit at once
/// with an error; returns what it printed.
fn expect_refused(mut cmd: Command, extra: &[impl std::fmt::Debug]) -> Output {
    scrub_env(&mut cmd);
    let out = run_with_timeout(cmd, None, EXIT_TIMEOUT);
    assert!(!out.timed_out, "plinth did not exit with {extra:?}: {out:?}");
    assert_ne!(out.code, Some(0), "plinth accepted {extra:?}");
    out
}

#[test]
fn tls_flags_rustls_cannot_honour_are_refused_by_name() {
    let pki = pki();
    let mut flags = mtls_flags(&pki);
    flags.push("--tls-min-version=TLS1.1".to_owned());
    let out = refused(&flags);
    assert!(
        out.stderr.contains("--tls-min-version TLS1.1") && out.stderr.contains("only TLS1.2 and TLS1.3"),
        "{}",
        out.stderr
    );

    let mut flags = mtls_flags(&pki);
    flags.push("--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_RSA_WITH_AES_128_CBC_SHA".to_owned());
    let out = refused(&flags);
    assert!(
        out.stderr.contains("--cipher-suites") && out.stderr.contains("TLS_RSA_WITH_AES_128_CBC_SHA"),
        "{}",
        out.stderr
    );

    let out = refused(&["--client-crl-file=/nonexistent".to_owned()]);
    assert!(out.stderr.contains("--client-crl-file"), "{}", out.stderr);
}

/// `plinth serve` with plain http:// client and peer URLs and `extra`: expected to exit at
/// once with an error.
fn refused_plain(extra: &[&str]) -> Output {
    let dir = server_dir();
    let (client, peer) = (ports::reserve(), ports::reserve());
    let client_url = format!("http://127.0.0.1:{}", client.get());
    let peer_url = format!("http://127.0.0.1:{}", peer.get());
    let mut cmd = Command::new(plinth_bin());
    cmd.arg("serve").arg(format!("--data-dir={}", dir.path().join("data").display()));
    cmd.args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url]);
    cmd.args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url]);
    cmd.args(["--initial-cluster", &format!("default={peer_url}")]).args(extra);
    expect_refused(cmd, extra)
}

/// etcd ignores client TLS flags when no client URL is https; Plinth refuses them, so a
/// manifest that asks for TLS never gets a member serving plain HTTP.
#[test]
fn client_tls_flags_without_an_https_client_url_are_refused() {
    for args in [
        &["--cert-file=/c.pem", "--key-file=/k.pem"][..],
        &["--trusted-ca-file=/ca.pem"],
        &["--client-cert-auth"],
        &["--auto-tls"],
        &["--tls-min-version=TLS1.2"],
        &["--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
    ] {
        let out = refused_plain(args);
        let flag = args[0].split('=').next().unwrap();
        assert!(out.stderr.contains(flag) && out.stderr.contains("https://"), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn https_without_certificates_and_https_metrics_are_refused() {
    // https client URL, no --cert-file/--key-file/--auto-tls.
    let out = refused(&[]);
    assert!(out.stderr.contains("--cert-file") && out.stderr.contains("https"), "{}", out.stderr);
    let pki = pki();
    let mut flags = mtls_flags(&pki);
    flags.push("--listen-metrics-urls=https://127.0.0.1:1".to_owned());
    let out = refused(&flags);
    assert!(out.stderr.contains("--listen-metrics-urls") && out.stderr.contains("http://"), "{}", out.stderr);
}

#[test]
fn auto_tls_serves_a_self_signed_certificate_kept_in_the_data_dir() {
    let dir = server_dir();
    let data = dir.path().join("data");
    let mut server = TlsServer { dir, client: ports::reserve(), peer: ports::reserve(), child: None };
    let log = std::fs::File::create(server.log_path()).expect("log");
    let mut cmd = Command::new(plinth_bin());
    cmd.args(server.args(&["--auto-tls".to_owned()])).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
    scrub_env(&mut cmd);
    server.child = Some(cmd.spawn().expect("spawn"));
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < READY_TIMEOUT {
        if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
            server.child = None;
            panic!("plinth exited with {status}:\n{}", server.log());
        }
        // etcdctl cannot verify a self-signed certificate: it skips verification, as with etcd.
        let out = ctl::run(
            &server.endpoint(),
            &["--insecure-transport=false", "--insecure-skip-tls-verify", "--dial-timeout=1s", "put", "a", "b"],
            None,
            COMMAND_TIMEOUT,
        );
        if out.code == Some(0) {
            last = None;
            break;
        }
        last = Some(out);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(last.is_none(), "auto-tls server never served: {last:?}\n{}", server.log());
    assert!(data.join("fixtures/client/cert.pem").is_file(), "no self-signed cert under the data dir");
    assert!(data.join("fixtures/client/key.pem").is_file(), "no self-signed key under the data dir");
}
