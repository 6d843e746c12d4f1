//! Security flags are refused at start-up, never accepted and ignored: a manifest that asks
//! for certificates or auth must not get a member serving without them.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{free_port, kill, read_stderr, serve_command, wait_listen_or_exit, Started};

/// How long a refused start may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts `plinth serve` with `extra` on free ports and returns (exit code, stderr), or
/// panics if it is still running after `EXIT_TIMEOUT` (it accepted the flags).
fn start_and_wait(extra: &[&str]) -> (i32, String) {
    let tmp = tempfile::tempdir().unwrap();
    let client_url = format!("http://127.0.0.1:{}", free_port());
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let mut child = serve_command(&tmp.path().join("data"), &client_url, &peer_url)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning plinth");
    let Some(Started::Exited(status)) = wait_listen_or_exit(&mut child, None, EXIT_TIMEOUT) else {
        kill(&mut child);
        panic!("plinth {extra:?} still runs after {EXIT_TIMEOUT:?}: the flag was accepted");
    };
    (status.code().unwrap_or(-1), read_stderr(&mut child))
}

#[test]
fn every_security_flag_is_refused_with_its_name() {
    let cases: &[&[&str]] = &[
        &["--client-crl-file", "/nonexistent/crl"],
        &["--client-cert-allowed-hostname", "example.com"],
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
    let client = free_port();
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let mut child = serve_command(&tmp.path().join("data"), &client_url, &peer_url)
        .args(["--client-cert-auth=false", "--peer-client-cert-auth=false"])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning plinth");
    let listening = matches!(wait_listen_or_exit(&mut child, Some(client), EXIT_TIMEOUT), Some(Started::Listening));
    kill(&mut child);
    assert!(listening, "plinth refused --client-cert-auth=false");
}
