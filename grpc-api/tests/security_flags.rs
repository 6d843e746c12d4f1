//! Security flags are refused at start-up, never accepted and ignored: a manifest that asks
//! for certificates or auth must not get a member serving without them.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a refused start may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts `plinth serve` with `extra` on free ports and returns (exit code, stderr), or
/// panics if it is still running after `EXIT_TIMEOUT` (it accepted the flags).
fn start_and_wait(extra: &[&str]) -> (i32, String) {
    let tmp = tempfile::tempdir().unwrap();
    let port = |_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (client, peer) = (port(0), port(1));
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_plinth"))
        .arg("serve")
        .args(["--name", "n1", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--log-level", "warn"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning plinth");
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("plinth {extra:?} still runs after {EXIT_TIMEOUT:?}: the flag was accepted");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code().unwrap_or(-1), stderr)
}

#[test]
fn every_security_flag_is_refused_with_its_name() {
    let cases: &[&[&str]] = &[
        &["--client-crl-file", "/nonexistent/crl"],
        &["--peer-crl-file", "/nonexistent/crl"],
        &["--client-cert-file", "/nonexistent/c.crt"],
        &["--client-key-file", "/nonexistent/c.key"],
        &["--peer-client-cert-file", "/nonexistent/c.crt"],
        &["--peer-client-key-file", "/nonexistent/c.key"],
        &["--experimental-peer-skip-client-san-verification=true"],
        &["--auth-token", "oauth"],
    ];
    // The starts run side by side: each one that is wrongly accepted costs the full timeout.
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = cases.iter().map(|args| s.spawn(move || (args, start_and_wait(args)))).collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut failures = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok((args, (code, stderr))) => {
                let flag = args[0].split('=').next().unwrap();
                if code == 0 || !stderr.contains(flag) || !stderr.contains("not supported") {
                    failures.push(format!("{args:?}: exit {code}, stderr: {stderr}"));
                }
            }
            Err(panic) => {
                failures.push(panic.downcast_ref::<String>().cloned().unwrap_or_else(|| "a start panicked".to_string()))
            }
        }
    }
    assert!(failures.is_empty(), "security flags not refused:\n{}", failures.join("\n"));
}

#[test]
fn https_urls_are_refused() {
    let (code, stderr) = start_and_wait(&["--listen-metrics-urls", "https://127.0.0.1:1"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--listen-metrics-urls") && stderr.contains("https"), "{stderr}");
}

#[test]
fn boolean_security_flags_set_to_false_ask_for_nothing_and_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let client = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_plinth"))
        .arg("serve")
        .args(["--name", "n1", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--client-cert-auth=false", "--peer-client-cert-auth=false", "--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning plinth");
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let listening = loop {
        if std::net::TcpStream::connect(("127.0.0.1", client)).is_ok() {
            break true;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "plinth refused --client-cert-auth=false");
}
