//! Paging through a range the way Kubernetes lists, through `etcd-client`, against etcd
//! 3.5.1 and the target server: the first page at the current revision, each next page from
//! the last key + "\0" at the first page's revision, while keys in the range are written,
//! deleted and compacted around it. Every page's header revision, `count`, `more` and keys
//! must be identical: the target answers a continued page's `count` from what the previous
//! page recorded, and this checks it against etcd's full count.

use std::fmt::Write as _;
use std::time::Duration;

use etcd_client::{Client, CompactionOptions, ConnectOptions, DeleteOptions, GetOptions, SortOrder, SortTarget};
use plinth_tests::cluster::Options;
use plinth_tests::session::{assert_same_transcripts, async_transcripts};

async fn connect(endpoint: &str) -> Client {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(5));
    Client::connect([endpoint], Some(opts)).await.unwrap_or_else(|e| panic!("connect {endpoint}: {e}"))
}

fn key(i: usize) -> String {
    format!("p/{i:03}")
}

/// What one page request changes besides its start key.
#[derive(Clone, Copy)]
struct Shape {
    limit: i64,
    keys_only: bool,
    count_only: bool,
    /// Descending by key (a sort: the whole range is read).
    descending: bool,
    /// `min_mod_revision` (a filter: the whole range is read).
    min_mod: i64,
}

const PLAIN: Shape = Shape { limit: 7, keys_only: false, count_only: false, descending: false, min_mod: 0 };

/// Pages through `[p/, p0)` at `revision` (0: pin the first page's), logging every page;
/// `shapes` gives each page's shape in turn (the last one repeats). Stops at an error.
async fn page(c: &mut Client, log: &mut String, title: &str, revision: i64, shapes: &[Shape]) {
    let _ = writeln!(log, "== {title}");
    let mut from = b"p/".to_vec();
    let mut revision = revision;
    for n in 0.. {
        let s = shapes[n.min(shapes.len() - 1)];
        let mut o = GetOptions::new().with_range("p0").with_limit(s.limit).with_revision(revision);
        if s.keys_only {
            o = o.with_keys_only();
        }
        if s.count_only {
            o = o.with_count_only();
        }
        if s.descending {
            o = o.with_sort(SortTarget::Key, SortOrder::Descend);
        }
        if s.min_mod != 0 {
            o = o.with_min_mod_revision(s.min_mod);
        }
        let r = match c.get(from.clone(), Some(o)).await {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(log, "page {n} from {:?}: error {e}", String::from_utf8_lossy(&from));
                return;
            }
        };
        let header = r.header().map_or(0, |h| h.revision());
        let kvs: Vec<String> = r
            .kvs()
            .iter()
            .map(|kv| {
                format!("{}={}@{}", String::from_utf8_lossy(kv.key()), kv.value_str().unwrap_or("?"), kv.mod_revision())
            })
            .collect();
        let _ = writeln!(
            log,
            "page {n} from {:?} at {revision}: header {header} count {} more {} kvs [{}]",
            String::from_utf8_lossy(&from),
            r.count(),
            r.more(),
            kvs.join(" ")
        );
        if revision == 0 {
            revision = header;
        }
        if s.count_only {
            // Counted the rest; the next shape pages on from the same key.
            continue;
        }
        // Clients continue from the last key returned; a sorted page's last key is its
        // smallest, so such a walk is not a continuation (it stops here).
        let Some(last) = r.kvs().last() else { return };
        if !r.more() || s.descending || n > 40 {
            return;
        }
        from = last.key().to_vec();
        from.push(0);
    }
}

async fn script(endpoint: String) -> String {
    let mut c = connect(&endpoint).await;
    let mut log = String::new();
    for i in 0..40 {
        c.put(key(i), format!("v{i}"), None).await.expect("put");
    }
    // Keys just outside the range on both sides.
    c.put("p.", "before", None).await.expect("put");
    c.put("p0", "after", None).await.expect("put");
    let pinned = c.get("p0", None).await.expect("get").header().map_or(0, |h| h.revision());
    page(&mut c, &mut log, "at the current revision", 0, &[PLAIN]).await;
    page(&mut c, &mut log, "at the pinned revision, same walk again", pinned, &[PLAIN]).await;

    // Writes inside the range after the pinned revision: new keys, deletions, updates.
    for i in (0..40).step_by(3) {
        c.put(key(i), format!("w{i}"), None).await.expect("put");
    }
    for i in 40..46 {
        c.put(key(i), format!("n{i}"), None).await.expect("put");
    }
    c.delete(key(5), None).await.expect("delete");
    c.delete(key(20), Some(DeleteOptions::new().with_range(key(24)))).await.expect("delete range");
    page(&mut c, &mut log, "at the pinned revision after writes", pinned, &[PLAIN]).await;
    page(&mut c, &mut log, "at the current revision after writes", 0, &[PLAIN]).await;
    let shapes = [
        PLAIN,
        Shape { limit: 3, keys_only: true, ..PLAIN },
        Shape { count_only: true, ..PLAIN },
        Shape { limit: 10, ..PLAIN },
        Shape { min_mod: 25, ..PLAIN },
        Shape { limit: 1, ..PLAIN },
        Shape { limit: 50, ..PLAIN },
    ];
    page(&mut c, &mut log, "pinned, page shapes varying", pinned, &shapes).await;
    page(
        &mut c,
        &mut log,
        "pinned, descending after a first page",
        pinned,
        &[PLAIN, Shape { descending: true, ..PLAIN }],
    )
    .await;

    // A client that does not pin: every page at the current revision, with writes between
    // pages (each page counts what is there when it is read).
    let _ = writeln!(log, "== unpinned, writes between pages");
    let mut from = b"p/".to_vec();
    for n in 0..10 {
        let r = c.get(from.clone(), Some(GetOptions::new().with_range("p0").with_limit(5))).await.expect("get");
        let keys: Vec<String> = r.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect();
        let _ = writeln!(
            log,
            "page {n}: header {} count {} more {} keys {keys:?}",
            r.header().map_or(0, |h| h.revision()),
            r.count(),
            r.more()
        );
        let Some(last) = r.kvs().last() else { break };
        if !r.more() {
            break;
        }
        from = last.key().to_vec();
        from.push(0);
        // A key after the page and one before it.
        c.put(format!("{}x", String::from_utf8_lossy(last.key())), "later", None).await.expect("put");
        c.put(key(0), format!("again{n}"), None).await.expect("put");
    }

    // Compaction at the pinned revision keeps it readable; past it, it is gone.
    c.compact(pinned, None).await.expect("compact");
    page(&mut c, &mut log, "pinned, compacted at the pinned revision", pinned, &[PLAIN]).await;
    let current = c.get("p0", None).await.expect("get").header().map_or(0, |h| h.revision());
    c.compact(current, Some(CompactionOptions::new().with_physical())).await.expect("compact");
    page(&mut c, &mut log, "pinned, compacted past it", pinned, &[PLAIN]).await;
    page(&mut c, &mut log, "after the compaction, at the current revision", 0, &[Shape { limit: 9, ..PLAIN }]).await;
    log
}

#[test]
fn paging_at_a_pinned_revision_matches_etcd() {
    let (la, lb, right) = async_transcripts("client_paging", Options::default, script);
    assert_same_transcripts("client_paging", &la, &lb, &right);
}
