//! Differential runs: one script, two fresh servers (real etcd 3.5.1 and the server under
//! test), two normalized transcripts that must be identical.

use std::path::PathBuf;

use crate::cluster::{Kind, Options, Server};
use crate::ctl::CtlOutput;
use crate::diff;
use crate::normalize::Normalizer;

/// The server compared against etcd: `$PLINTH_DIFF_TARGET` = `plinth` (default) or `etcd`
/// (a second etcd — used to prove the harness and its normalizers on etcd vs etcd).
pub fn target() -> Kind {
    match std::env::var("PLINTH_DIFF_TARGET").as_deref() {
        Err(_) | Ok("") | Ok("plinth") => Kind::Plinth,
        Ok("etcd") => Kind::Etcd,
        Ok(other) => panic!("PLINTH_DIFF_TARGET must be `plinth` or `etcd`, not {other:?}"),
    }
}

/// One server's side of a differential run: runs commands and records a normalized
/// transcript of everything a user would see.
pub struct Session<'a> {
    server: &'a Server,
    /// The normalizer (public so scripts can add literal substitutions).
    pub norm: Normalizer,
    out: String,
}

fn wants_json(args: &[&str]) -> bool {
    args.windows(2).any(|w| w[0] == "-w" && w[1] == "json")
        || args.iter().any(|a| *a == "--write-out=json" || *a == "-w=json")
}

impl<'a> Session<'a> {
    pub fn new(server: &'a Server) -> Session<'a> {
        Session {
            server,
            norm: Normalizer::for_server(
                server.client_port(),
                server.peer_port(),
                &server.scratch_dir().display().to_string(),
            ),
            out: String::new(),
        }
    }

    pub fn server(&self) -> &'a Server {
        self.server
    }

    /// Runs `etcdctl <args>` and records it.
    pub fn ctl(&mut self, args: &[&str]) -> CtlOutput {
        let out = self.server.ctl(args);
        self.record(&format!("etcdctl {}", args.join(" ")), &out, wants_json(args));
        out
    }

    /// Runs `etcdctl <args>` with `stdin` and records both.
    pub fn ctl_stdin(&mut self, args: &[&str], stdin: &str) -> CtlOutput {
        let out = self.server.ctl_stdin(args, stdin);
        let mut cmd = format!("etcdctl {} <<EOF", args.join(" "));
        for l in stdin.lines() {
            cmd.push_str("\n> ");
            cmd.push_str(l);
        }
        cmd.push_str("\n> EOF");
        self.record(&cmd, &out, wants_json(args));
        out
    }

    /// Records a command's output: `$ cmd`, stdout, `! stderr`, `[exit N]`.
    pub fn record(&mut self, cmdline: &str, out: &CtlOutput, json: bool) {
        let cmd = self.norm.text(cmdline);
        self.out.push_str("$ ");
        self.out.push_str(&cmd);
        let stdout = if json && !out.stdout.trim().is_empty() {
            self.norm.json_stream(&out.stdout)
        } else {
            self.norm.text(&out.stdout)
        };
        self.out.push_str(&stdout);
        for l in self.norm.text(&out.stderr).lines() {
            self.out.push_str("! ");
            self.out.push_str(l);
            self.out.push('\n');
        }
        match (out.timed_out, out.code) {
            (true, _) => self.out.push_str("[timed out]\n"),
            (false, Some(c)) => self.out.push_str(&format!("[exit {c}]\n")),
            (false, None) => self.out.push_str("[killed]\n"),
        }
    }

    /// Records a free-form (normalized) line, e.g. the result of a check.
    pub fn note(&mut self, text: &str) {
        let t = self.norm.text(text);
        for l in t.lines() {
            self.out.push_str("# ");
            self.out.push_str(l);
            self.out.push('\n');
        }
    }

    pub fn transcript(&self) -> &str {
        &self.out
    }
}

fn transcript_dir() -> PathBuf {
    let d = std::env::temp_dir().join("plinth-differential");
    let _ = std::fs::create_dir_all(&d);
    d
}

fn join<T>(r: std::thread::Result<T>) -> T {
    r.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Starts a fresh etcd 3.5.1 and a fresh [`target`] server, runs `script` against each
/// (concurrently; the servers are independent), and panics with a line diff when the
/// normalized transcripts differ. Transcripts are also written to
/// `$TMPDIR/plinth-differential/<name>.{etcd,<target>}.txt`.
pub fn differential(name: &str, script: impl Fn(&mut Session<'_>) + Sync) {
    differential_with(name, target(), script)
}

/// [`differential`] with an explicit second server kind.
pub fn differential_with(name: &str, target: Kind, script: impl Fn(&mut Session<'_>) + Sync) {
    let (etcd, other) = std::thread::scope(|s| {
        let a = s.spawn(Server::etcd);
        let b = s.spawn(move || Server::start(target));
        (join(a.join()), join(b.join()))
    });
    let run = |srv: &Server| {
        let mut sess = Session::new(srv);
        script(&mut sess);
        sess.out
    };
    let (ta, tb) = std::thread::scope(|s| {
        let a = s.spawn(|| run(&etcd));
        let b = s.spawn(|| run(&other));
        (join(a.join()), join(b.join()))
    });
    let right = if target == Kind::Etcd { "etcd#2".to_owned() } else { target.to_string() };
    let dir = transcript_dir();
    let pa = dir.join(format!("{name}.etcd.txt"));
    let pb = dir.join(format!("{name}.{right}.txt"));
    let _ = std::fs::write(&pa, &ta);
    let _ = std::fs::write(&pb, &tb);
    if ta != tb {
        let d = diff::unified(&ta, &tb, "etcd 3.5.1", &right, 3);
        panic!(
            "differential test `{name}`: {right} differs from etcd 3.5.1\n{d}\n\
             full transcripts: {} and {}\n--- {right} server log tail ---\n{}",
            pa.display(),
            pb.display(),
            other.log_tail(12)
        );
    }
}

/// An async script's transcripts from a fresh etcd 3.5.1 and a fresh [`target`] server, each
/// started with `options()`: the servers start side by side, and the script runs against
/// both at once (given each one's client endpoint). Both transcripts are written to
/// `$TMPDIR/plinth-differential/<name>.{etcd,<target>}.txt`. Returns etcd's, the target's,
/// and the target's label (`plinth`, or `etcd#2` when comparing etcd with itself).
pub fn async_transcripts<F, Fut>(
    name: &str,
    options: impl Fn() -> Options + Sync,
    script: F,
) -> (String, String, String)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = String> + Send + 'static,
{
    let t = target();
    let (etcd, other) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start_with(Kind::Etcd, options()));
        let b = s.spawn(|| Server::start_with(t, options()));
        (join(a.join()), join(b.join()))
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (ta, tb) = rt.block_on(async {
        let a = tokio::spawn(script(etcd.endpoint()));
        let b = tokio::spawn(script(other.endpoint()));
        (a.await.expect("etcd's script"), b.await.expect("the target's script"))
    });
    let right = if t == Kind::Etcd { "etcd#2".to_owned() } else { t.to_string() };
    let dir = transcript_dir();
    let _ = std::fs::write(dir.join(format!("{name}.etcd.txt")), &ta);
    let _ = std::fs::write(dir.join(format!("{name}.{right}.txt")), &tb);
    (ta, tb, right)
}

/// Panics with a line diff when the target's transcript differs from etcd's.
pub fn assert_same_transcripts(name: &str, etcd: &str, other: &str, right: &str) {
    assert!(
        etcd == other,
        "`{name}`: {right} differs from etcd 3.5.1\n{}",
        diff::unified(etcd, other, "etcd 3.5.1", right, 3)
    );
}
