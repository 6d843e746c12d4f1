//! Durability: every write the server acknowledged survives SIGKILL + restart on the same
//! data dir, with the same revisions; revisions continue after the restart.
//!
//! Runs against the target server (`PLINTH_DIFF_TARGET`, default plinth).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use plinth_tests::{target, Server};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn connect(endpoint: &str) -> Client {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(5));
    Client::connect([endpoint], Some(opts)).await.unwrap_or_else(|e| panic!("connect {endpoint}: {e}"))
}

/// key -> (value, create_revision, mod_revision, version); None = deleted.
type Expected = BTreeMap<String, Option<(String, i64, i64, i64)>>;

async fn dump(c: &mut Client) -> (i64, BTreeMap<String, (String, i64, i64, i64)>) {
    let r = c.get("", Some(GetOptions::new().with_all_keys())).await.expect("full range after restart");
    let mut m = BTreeMap::new();
    for kv in r.kvs() {
        m.insert(
            String::from_utf8_lossy(kv.key()).into_owned(),
            (String::from_utf8_lossy(kv.value()).into_owned(), kv.create_revision(), kv.mod_revision(), kv.version()),
        );
    }
    (r.header().map_or(0, |h| h.revision()), m)
}

fn check(expected: &Expected, got: &BTreeMap<String, (String, i64, i64, i64)>) {
    let mut problems = Vec::new();
    for (k, want) in expected {
        match (want, got.get(k)) {
            (Some(w), Some(g)) if w == g => {}
            (None, None) => {}
            (w, g) => problems.push(format!("{k}: acknowledged {w:?}, after restart {g:?}")),
        }
    }
    assert!(
        problems.is_empty(),
        "{} acknowledged writes lost or changed after SIGKILL+restart:\n{}",
        problems.len(),
        problems[..problems.len().min(30)].join("\n")
    );
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let rt = runtime();
    let mut srv = Server::start(target());
    let endpoint = srv.endpoint();
    let mut expected = Expected::new();
    let last_rev = rt.block_on(async {
        let mut c = connect(&endpoint).await;
        let mut rev = 0;
        for i in 0..150 {
            let k = format!("key/{:03}", i % 100);
            let v = format!("value-{i}");
            let r = c.put(k.as_str(), v.as_str(), None).await.expect("put");
            rev = r.header().unwrap().revision();
            let (create, version) = match expected.get(&k) {
                Some(Some((_, c, _, ver))) => (*c, ver + 1),
                _ => (rev, 1),
            };
            expected.insert(k, Some((v, create, rev, version)));
            if i % 7 == 3 {
                let d = format!("key/{:03}", (i * 3) % 100);
                let r = c.delete(d.as_str(), None).await.expect("delete");
                if r.deleted() > 0 {
                    rev = r.header().unwrap().revision();
                    expected.insert(d, None);
                }
            }
        }
        rev
    });
    srv.kill9();
    srv.restart();
    let last_rev = rt.block_on(async {
        let mut c = connect(&endpoint).await;
        let (rev, got) = dump(&mut c).await;
        assert_eq!(rev, last_rev, "store revision after restart");
        check(&expected, &got);
        // Revisions continue where they stopped.
        let r = c.put("after-restart", "x", None).await.expect("put after restart");
        assert_eq!(r.header().unwrap().revision(), last_rev + 1);
        last_rev + 1
    });
    expected.insert("after-restart".into(), Some(("x".into(), last_rev, last_rev, 1)));

    // Second round: SIGKILL while a writer is running. Every acknowledged put must survive.
    let acked: Arc<Mutex<Vec<(String, String, i64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let acked = acked.clone();
        let stop = stop.clone();
        let endpoint = endpoint.clone();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut c = connect(&endpoint).await;
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let k = format!("live/{:04}", i);
                    let v = format!("v{i}");
                    match tokio::time::timeout(Duration::from_secs(2), c.put(k.as_str(), v.as_str(), None)).await {
                        Ok(Ok(r)) => acked.lock().unwrap().push((k, v, r.header().unwrap().revision())),
                        _ => break,
                    }
                    i += 1;
                }
            })
        })
    };
    let start = Instant::now();
    while acked.lock().unwrap().len() < 50 && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(10));
    }
    srv.kill9();
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 50, "only {} puts acknowledged in 15 s", acked.len());
    srv.restart();
    rt.block_on(async {
        let mut c = connect(&endpoint).await;
        let (rev, got) = dump(&mut c).await;
        let last_acked = acked.last().unwrap().2;
        assert!(rev >= last_acked, "store revision {rev} < last acknowledged {last_acked}");
        for (k, v, r) in &acked {
            expected.insert(k.clone(), Some((v.clone(), *r, *r, 1)));
        }
        check(&expected, &got);
    });
}
