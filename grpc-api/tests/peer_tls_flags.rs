//! The peer TLS flags are checked together at start-up: a combination that would serve
//! without the protection it asks for, or that cannot work, stops the member with a message
//! naming the flag; `--peer-auto-tls` with https peer URLs starts.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{free_port, kill, read_stderr, serve_command, wait_listen_or_exit, Started};

/// How long a refused start may take to exit, or an accepted one to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts `plinth serve` with `peer_scheme` peer URLs and `extra`; returns `Err(stderr)` if it
/// exits, `Ok(())` once it listens on its client port (then it is killed).
fn start(peer_scheme: &str, extra: &[&str]) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    start_in(tmp.path(), peer_scheme, extra, false)
}

/// [`start`] for flags it must refuse: only its exit counts, `Err(stderr)`; `Ok(())` if it
/// still runs after [`START_TIMEOUT`]. A connect to its client port could be answered by
/// another process and must not pass for an accepted start.
fn start_refused(peer_scheme: &str, extra: &[&str]) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    start_in(tmp.path(), peer_scheme, extra, true)
}

/// [`start`] with the member's data dir under `dir` (`dir/data`).
fn start_in(dir: &std::path::Path, peer_scheme: &str, extra: &[&str], refused: bool) -> Result<(), String> {
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("{peer_scheme}://127.0.0.1:{peer}");
    let mut child = serve_command(&dir.join("data"), &client_url, &peer_url)
        .args(["--initial-cluster", &format!("n1={peer_url}")])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning plinth");
    let started = wait_listen_or_exit(&mut child, (!refused).then_some(client), START_TIMEOUT);
    match started {
        Some(Started::Exited(_)) => return Err(read_stderr(&mut child)),
        Some(Started::Listening) => kill(&mut child),
        None if refused => kill(&mut child),
        None => {
            kill(&mut child);
            panic!("plinth {peer_scheme} {extra:?} neither listened nor exited within {START_TIMEOUT:?}");
        }
    }
    Ok(())
}

#[test]
fn inconsistent_peer_tls_flags_are_refused_with_the_flag_named() {
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "http",
            &["--peer-cert-file", "/x/p.crt", "--peer-key-file", "/x/p.key"],
            "--peer-cert-file: peer TLS needs https://",
        ),
        ("http", &["--peer-client-cert-auth"], "--peer-client-cert-auth: peer TLS needs https://"),
        ("http", &["--peer-auto-tls"], "--peer-auto-tls: peer TLS needs https://"),
        ("http", &["--peer-trusted-ca-file", "/x/ca.crt"], "--peer-trusted-ca-file: peer TLS needs https://"),
        ("https", &[], "https needs a certificate"),
        ("https", &["--peer-cert-file", "/x/p.crt"], "--peer-cert-file needs --peer-key-file"),
        ("https", &["--peer-key-file", "/x/p.key"], "--peer-key-file needs --peer-cert-file"),
        ("https", &["--peer-cert-file", "/x/p.crt", "--peer-key-file", "/x/p.key"], "need --peer-trusted-ca-file"),
        ("https", &["--peer-auto-tls", "--peer-client-cert-auth"], "--peer-auto-tls: self-signed"),
        (
            "https",
            &["--peer-auto-tls", "--peer-cert-allowed-cn", "etcd"],
            "--peer-cert-allowed-cn and --peer-cert-allowed-hostname check peer client certificates",
        ),
        (
            "https",
            &[
                "--peer-cert-file=/x/p.crt",
                "--peer-key-file=/x/p.key",
                "--peer-trusted-ca-file=/x/ca.crt",
                "--peer-client-cert-auth",
                "--peer-cert-allowed-cn=a",
                "--peer-cert-allowed-hostname=b",
            ],
            "cannot be given together",
        ),
        // Consistent flags, but the files do not exist: refused when they are loaded.
        (
            "https",
            &["--peer-cert-file=/x/p.crt", "--peer-key-file=/x/p.key", "--peer-trusted-ca-file=/x/ca.crt"],
            "/x/",
        ),
        // Still refused: what this build does not do.
        ("https", &["--peer-auto-tls", "--peer-crl-file", "/x/crl"], "--peer-crl-file"),
    ];
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = cases.iter().map(|case| s.spawn(move || (case, start_refused(case.0, case.1)))).collect();
        handles.into_iter().map(|h| h.join().expect("a start panicked")).collect()
    });
    let mut failures = Vec::new();
    for ((scheme, args, expected), outcome) in outcomes {
        match outcome {
            Ok(()) => failures.push(format!("{scheme} {args:?}: accepted")),
            Err(stderr) if !stderr.contains(expected) => {
                failures.push(format!("{scheme} {args:?}: expected {expected:?} in: {stderr}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "peer TLS flags not refused as expected:\n{}", failures.join("\n"));
}

#[test]
fn https_peer_urls_with_peer_auto_tls_start_and_make_a_certificate() {
    start("https", &["--peer-auto-tls"]).expect("plinth with --peer-auto-tls and https peer URLs");
}

#[test]
fn peer_auto_tls_certificates_last_self_signed_cert_validity_years() {
    let tmp = tempfile::tempdir().unwrap();
    start_in(tmp.path(), "https", &["--peer-auto-tls", "--self-signed-cert-validity", "3"], false)
        .expect("plinth with --peer-auto-tls and --self-signed-cert-validity");
    let pem = std::fs::read(tmp.path().join("data/fixtures/peer/cert.pem")).expect("the peer auto-TLS certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("a PEM certificate");
    let cert = pem.parse_x509().expect("an X.509 certificate");
    let validity = cert.validity();
    let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
    assert!((3 * 365..=3 * 366).contains(&days), "the peer certificate is valid for {days} days, not 3 years");
}
