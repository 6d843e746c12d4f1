//! Backups in an S3-compatible store: moto's server (PyPI `moto[server]`, fetched by
//! `tests/scripts/get-moto.sh`) on loopback, a full backup and a delta taken into it from
//! `etcdctl snapshot save` files, listed and verified there, and restored into a data dir
//! that `plinth serve` starts from with the source's keys and revision; and a server whose
//! automated backups go to the bucket (`--backup-url`), with a tenant, restored from it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plinth_tests::cluster::{plinth_bin, Options};
use plinth_tests::process::run_with_timeout;
use plinth_tests::{ports, Kind, Server};
use serde_json::Value;

/// moto's S3 server, killed on drop.
struct Moto {
    child: Child,
    port: ports::Port,
    /// `TMPDIR` of every plinth process started with [`Moto::env`].
    tmp: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(port: u16, request: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

impl Moto {
    fn start(dir: &Path) -> Moto {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/get-moto.sh");
        let out = run_with_timeout(
            {
                let mut c = Command::new("bash");
                c.arg(script);
                c
            },
            None,
            Duration::from_secs(600),
        );
        assert_eq!(out.code, Some(0), "get-moto.sh: {}", out.stderr);
        let port = ports::reserve();
        let log = std::fs::File::create(dir.join("moto.log")).unwrap();
        let child = Command::new(out.stdout.trim())
            .args(["-H", "127.0.0.1", "-p", &port.get().to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start moto_server");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let moto = Moto { child, port, tmp };
        let deadline = Instant::now() + Duration::from_secs(30);
        let create = "PUT /backups HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        loop {
            if let Some(resp) = http(moto.port.get(), create) {
                assert!(resp.starts_with("HTTP/1.1 200"), "creating the bucket: {resp}");
                return moto;
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The `AWS_*` settings that reach this server.
    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.port.get())),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("TMPDIR", self.tmp.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn plinth(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(plinth_bin());
        cmd.args(args).envs(self.env());
        let out = run_with_timeout(cmd, None, Duration::from_secs(60));
        assert_eq!(out.code, Some(0), "plinth {args:?}:\n{}\n{}", out.stdout, out.stderr);
        out.stdout
    }
}

fn ctl_ok(s: &Server, args: &[&str]) -> String {
    let out = s.ctl(args);
    assert_eq!(out.code, Some(0), "etcdctl {args:?}: {}", out.stderr);
    out.stdout
}

fn keys(s: &Server) -> Value {
    serde_json::from_str(&ctl_ok(s, &["get", "", "--prefix", "-w", "json"])).unwrap()
}

#[test]
fn backups_in_s3_restore_the_source() {
    let work = tempfile::tempdir().unwrap();
    let moto = Moto::start(work.path());
    let url = "s3://backups/cluster-a";
    let source = Server::plinth();
    for i in 0..12 {
        ctl_ok(&source, &["put", &format!("s{i:02}"), &"x".repeat(i * 100)]);
    }
    let snap1 = work.path().join("1.db").display().to_string();
    ctl_ok(&source, &["snapshot", "save", &snap1]);
    moto.plinth(&["backup", "from-snapshot", &snap1, "--backup-url", url]);
    ctl_ok(&source, &["del", "s0", "--prefix"]);
    ctl_ok(&source, &["put", "s11", "changed"]);
    let snap2 = work.path().join("2.db").display().to_string();
    ctl_ok(&source, &["snapshot", "save", &snap2]);
    moto.plinth(&["backup", "from-snapshot", &snap2, "--backup-url", url, "--delta"]);

    let list: Value =
        serde_json::from_str(&moto.plinth(&["backup", "list", "--backup-url", url, "-w", "json"])).unwrap();
    assert_eq!(list["backups"].as_array().unwrap().len(), 2, "{list}");
    assert!(moto.plinth(&["backup", "verify", "--backup-url", url]).contains("OK"));

    let mut restored = Server::plinth();
    restored.kill9();
    std::fs::remove_dir_all(restored.data_dir()).unwrap();
    let (data_dir, peer, endpoint) =
        (restored.data_dir().display().to_string(), restored.peer_url(), restored.endpoint());
    let cluster = format!("n1={peer}");
    moto.plinth(&[
        "restore",
        "--backup-url",
        url,
        "--data-dir",
        &data_dir,
        "--name",
        "n1",
        "--initial-cluster",
        &cluster,
        "--initial-advertise-peer-urls",
        &peer,
        "--advertise-client-urls",
        &endpoint,
    ]);
    restored.restart();
    let (want, got) = (keys(&source), keys(&restored));
    assert_eq!(want["kvs"].as_array().unwrap().len(), 2, "s10 and s11 are left");
    assert_eq!(got["kvs"], want["kvs"]);
    assert_eq!(got["header"]["revision"], want["header"]["revision"]);
    // Every command staged its objects in a directory of its own and removed it on exit.
    let left: Vec<_> = std::fs::read_dir(&moto.tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

#[test]
fn a_server_takes_its_backups_into_s3() {
    let work = tempfile::tempdir().unwrap();
    let moto = Moto::start(work.path());
    let url = "s3://backups/scheduled";
    let flags = ["--backup-url", url, "--backup-full-interval", "1h", "--backup-delta-interval", "300ms"];
    let source = Server::start_with(
        Kind::Plinth,
        Options { flags: flags.iter().map(|s| s.to_string()).collect(), env: moto.env(), ..Options::default() },
    );
    let endpoint = source.endpoint();
    moto.plinth(&["tenant", "create", "t1", "--endpoints", &endpoint]);
    for i in 0..20 {
        ctl_ok(&source, &["put", &format!("d{i:02}"), &format!("v{i}")]);
    }
    let revision = keys(&source)["header"]["revision"].as_i64().unwrap();
    // Scheduled deltas reach the newest revision.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: Value =
            serde_json::from_str(&moto.plinth(&["backup", "list", "--backup-url", url, "-w", "json"])).unwrap();
        let backups = list["backups"].as_array().cloned().unwrap_or_default();
        if backups.last().and_then(|b| b["to_revision"].as_i64()) == Some(revision) {
            assert_eq!(backups[0]["kind"], "full", "{list}");
            assert!(backups.len() >= 2, "a full backup and deltas: {list}");
            break;
        }
        assert!(Instant::now() < deadline, "backups never reached revision {revision}: {list}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The tenant's own chain, and one taken on demand.
    let now: Value = serde_json::from_str(&moto.plinth(&[
        "backup",
        "now",
        "--endpoints",
        &endpoint,
        "--tenant",
        "t1",
        "-w",
        "json",
    ]))
    .unwrap();
    assert_eq!(now["backups"][0]["tenant"], "t1", "{now}");
    let t1: Value =
        serde_json::from_str(&moto.plinth(&["backup", "list", "--backup-url", url, "--tenant", "t1", "-w", "json"]))
            .unwrap();
    assert!(!t1["backups"].as_array().unwrap().is_empty(), "{t1}");
    let show: Value =
        serde_json::from_str(&moto.plinth(&["tenant", "show", "t1", "--endpoints", &endpoint, "-w", "json"])).unwrap();
    assert_eq!(show["backup"]["state"], "ok", "{show}");
    assert!(moto.plinth(&["backup", "verify", "--backup-url", url]).contains("OK"));

    let restored_dir = work.path().join("restored").display().to_string();
    let out = moto.plinth(&["restore", "--backup-url", url, "--data-dir", &restored_dir, "-w", "json"]);
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["revision"].as_i64(), Some(revision), "{out}");
}
