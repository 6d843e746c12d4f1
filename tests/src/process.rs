//! Child processes with hard time limits: one-shot commands and background commands.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a finished (or killed) command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    /// Exit code; `None` when the process was killed by a signal (including our timeout).
    pub code: Option<i32>,
    /// True when the time limit was hit and the process was killed.
    pub timed_out: bool,
}

/// Removes every `ETCD_*`/`ETCDCTL_*` variable: etcd and etcdctl read those as flags, and a
/// developer's shell must not change what the tests run.
pub fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("ETCD_") || k.starts_with("ETCDCTL_") {
            cmd.env_remove(&k);
        }
    }
}

fn reader<R: Read + Send + 'static>(mut r: R, sink: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// A running child whose stdout and stderr are collected by background threads.
pub struct Background {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    deadline: Instant,
    what: String,
}

impl Background {
    /// Spawns `cmd` with piped stdio; `stdin` (if any) is written and then closed. The child is
    /// killed at the latest `limit` after start (checked in [`Background::wait_until`] and
    /// [`Background::finish`]) and always on drop.
    pub fn spawn(mut cmd: Command, stdin: Option<&str>, limit: Duration) -> Background {
        let what = format!("{cmd:?}");
        scrub_env(&mut cmd);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            let input = input.to_owned();
            // A thread, so a child that does not read cannot block us.
            std::thread::spawn(move || {
                let _ = pipe.write_all(input.as_bytes());
            });
        }
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            reader(child.stdout.take().unwrap(), stdout.clone()),
            reader(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Background { child, stdout, stderr, readers, deadline: Instant::now() + limit, what }
    }

    /// Stdout collected so far.
    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Stderr collected so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Polls until `pred(stdout so far)` holds, the child exits, or `timeout` (bounded by the
    /// overall limit) passes. Returns whether the predicate held.
    pub fn wait_until(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let end = (Instant::now() + timeout).min(self.deadline);
        loop {
            if pred(&self.stdout_so_far()) {
                return true;
            }
            if Instant::now() >= end || matches!(self.child.try_wait(), Ok(Some(_))) {
                // One last look: output may have arrived together with the exit.
                std::thread::sleep(Duration::from_millis(50));
                return pred(&self.stdout_so_far());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the child to exit on its own until the overall limit, then kills it.
    pub fn finish(self) -> Output {
        self.finish_within(Duration::MAX)
    }

    /// Kills the child now (if still running) and returns what it produced.
    pub fn kill(self) -> Output {
        self.finish_within(Duration::ZERO)
    }

    fn finish_within(mut self, grace: Duration) -> Output {
        let end = Instant::now().checked_add(grace).unwrap_or(self.deadline).min(self.deadline);
        let mut timed_out = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() >= end => {
                    timed_out = grace != Duration::ZERO;
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("wait {}: {e}", self.what),
            }
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Output {
            stdout: String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned(),
            stderr: String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned(),
            code: status.and_then(|s| s.code()),
            timed_out,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion, killing it after `limit`.
pub fn run_with_timeout(cmd: Command, stdin: Option<&str>, limit: Duration) -> Output {
    Background::spawn(cmd, stdin, limit).finish()
}

/// SIGKILL and reap a server process, if there is one; `None` afterwards. Reaping at once
/// keeps no zombie holding the ports while a test restarts the server on them.
pub fn kill_and_reap(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The last `n` lines of a server's log file (empty when it does not exist yet).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_exit_code() {
        let mut c = Command::new("sh");
        c.args(["-c", "cat; echo err >&2; exit 3"]);
        let out = run_with_timeout(c, Some("hello\n"), Duration::from_secs(10));
        assert_eq!(out.stdout, "hello\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.code, Some(3));
        assert!(!out.timed_out);
    }

    #[test]
    fn kills_at_the_limit() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo started; exec sleep 30"]);
        let t = Instant::now();
        let out = run_with_timeout(c, None, Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(out.timed_out);
        assert_eq!(out.code, None);
        assert_eq!(out.stdout, "started\n");
    }

    #[test]
    fn wait_until_sees_partial_output() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo one; sleep 0.2; echo two; exec sleep 30"]);
        let mut bg = Background::spawn(c, None, Duration::from_secs(20));
        assert!(bg.wait_until(Duration::from_secs(5), |s| s.contains("two")));
        assert!(!bg.wait_until(Duration::from_millis(100), |s| s.contains("three")));
        let out = bg.kill();
        assert_eq!(out.stdout, "one\ntwo\n");
        assert!(!out.timed_out);
    }
}
