//! Watch hardening (issue 10) through real servers and `etcd-client`:
//!
//! - `prev_kv` of an update whose previous version is exactly at the compact revision, on
//!   the live event, the Put response and catch-up watches, differential against etcd 3.5.1;
//! - a `prev_kv` watch from the compact revision that meets an update there;
//! - watch ids a client chooses, differential against etcd 3.5.1;
//! - a watcher with a future start revision gets no periodic progress notification before
//!   the store reaches that revision (`--experimental-watch-progress-notify-interval`);
//! - a watch stream opened with `hasleader=true` ends with `etcdserver: no leader`
//!   (Unavailable) once its member has lost the leader (3 members, 2 killed).
//!
//! Every wait is bounded.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, DeleteOptions, EventType, KeyValue, PutOptions, WatchOptions, WatchStream};
use plinth_tests::cluster::Options;
use plinth_tests::members::{Members, ELECTION_MS};
use plinth_tests::session::{assert_same_transcripts, async_transcripts};

/// How long members get to start and elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

async fn connect(endpoint: &str, require_leader: bool) -> Client {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_require_leader(require_leader);
    Client::connect([endpoint], Some(opts)).await.unwrap_or_else(|e| panic!("connect {endpoint}: {e}"))
}

fn kv(k: &KeyValue) -> String {
    format!(
        "{{{}={} create={} mod={} ver={}}}",
        String::from_utf8_lossy(k.key()),
        String::from_utf8_lossy(k.value()),
        k.create_revision(),
        k.mod_revision(),
        k.version()
    )
}

/// Appends every response that arrives until none has for 400 ms (at most 5 s).
async fn drain(stream: &mut WatchStream, log: &mut String) {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        match tokio::time::timeout(Duration::from_millis(400), stream.message()).await {
            Err(_) => return,
            Ok(Err(e)) => {
                let _ = writeln!(log, "  stream error: {e}");
                return;
            }
            Ok(Ok(None)) => {
                let _ = writeln!(log, "  stream closed");
                return;
            }
            Ok(Ok(Some(r))) => {
                if r.events().is_empty() || r.created() || r.canceled() {
                    let _ = writeln!(
                        log,
                        "  id={} created={} canceled={} compact_revision={} events={} header.revision={}",
                        r.watch_id(),
                        r.created(),
                        r.canceled(),
                        r.compact_revision(),
                        r.events().len(),
                        r.header().map_or(-999, |h| h.revision())
                    );
                }
                for e in r.events() {
                    let t = if e.event_type() == EventType::Put { "PUT" } else { "DELETE" };
                    let _ = writeln!(
                        log,
                        "  id={} {t} kv={} prev={}",
                        r.watch_id(),
                        e.kv().map_or("none".into(), kv),
                        e.prev_kv().map_or("none".into(), kv)
                    );
                }
            }
        }
    }
    let _ = writeln!(log, "  (still receiving after 5 s)");
}

/// Runs `script` against etcd 3.5.1 and Plinth, checks that etcd's transcript shows each of
/// `etcd_shows` (else the comparison proves little), and that the transcripts are the same.
fn same_as_etcd<F, Fut>(name: &str, script: F, etcd_shows: &[&str])
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = String> + Send + 'static,
{
    // etcd 3.5.1 registers a watcher before it records the request's `prev_kv` flag (v3rpc's
    // `recvLoop`), so a catch-up event sent in between goes out without `prev_kv`: its
    // transcript can differ from one run to the next. A difference must repeat to count.
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        let (la, lb, right) = async_transcripts(name, Options::default, &script);
        for shown in etcd_shows {
            assert!(la.contains(shown), "etcd transcript:\n{la}");
        }
        if la == lb || attempt == ATTEMPTS {
            assert_same_transcripts(name, &la, &lb, &right);
            return;
        }
        eprintln!(
            "`{name}`: attempt {attempt} differs from etcd; both run again\n{}",
            plinth_tests::diff::unified(&la, &lb, "etcd 3.5.1", &right, 3)
        );
    }
}

/// The key `k` is last written at revision 3, the store is compacted at 3, then `k` is
/// updated at 5: every prev_kv of that update is the version at 3.
async fn prev_kv_at_compact_script(endpoint: String) -> String {
    let mut c = connect(&endpoint, false).await;
    let mut log = String::new();
    c.put("other", "1", None).await.expect("put other"); // 2
    c.put("k", "at-c", None).await.expect("put k"); // 3
    let mut live = c.watch("k", Some(WatchOptions::new().with_prev_key())).await.expect("live watch");
    let _ = writeln!(log, "live watch k with prev_kv");
    drain(&mut live, &mut log).await;
    let r = c.compact(3, Some(etcd_client::CompactionOptions::new().with_physical())).await;
    let _ = writeln!(log, "compact 3 physical: {}", if r.is_ok() { "ok".into() } else { format!("{r:?}") });
    c.put("other", "2", None).await.expect("put other"); // 4
    let put = c.put("k", "after", Some(PutOptions::new().with_prev_key())).await.expect("put k"); // 5
    let _ = writeln!(log, "put k=after prev_kv: {}", put.prev_key().map_or("none".into(), kv));
    let _ = writeln!(log, "live stream:");
    drain(&mut live, &mut log).await;
    for start in [3, 4, 5] {
        let opts = WatchOptions::new().with_prev_key().with_start_revision(start);
        let mut w = c.watch("k", Some(opts)).await.expect("catch-up watch");
        let _ = writeln!(log, "watch k from {start} with prev_kv");
        drain(&mut w, &mut log).await;
    }
    // The same for a delete whose previous version is the one after the compact revision.
    let del = c.delete("k", Some(DeleteOptions::new().with_prev_key())).await.expect("delete k"); // 6
    let prevs: Vec<String> = del.prev_kvs().iter().map(kv).collect();
    let _ = writeln!(log, "delete k prev_kvs: {prevs:?}");
    let _ = writeln!(log, "live stream:");
    drain(&mut live, &mut log).await;
    let mut w = c.watch("k", Some(WatchOptions::new().with_prev_key().with_start_revision(4))).await.expect("watch");
    let _ = writeln!(log, "watch k from 4 with prev_kv");
    drain(&mut w, &mut log).await;
    log
}

#[test]
fn prev_kv_of_an_update_at_the_compact_revision_matches_etcd() {
    // etcd itself must show the version at 3 as prev_kv, or the test proves nothing.
    same_as_etcd(
        "watch_prev_kv_at_compact",
        prev_kv_at_compact_script,
        &["put k=after prev_kv: {k=at-c create=3 mod=3 ver=1}"],
    );
}

/// `k` is updated at the compact revision 3. A `prev_kv` watch from 3 cannot have the
/// update's `prev_kv` (the version at 2 is compacted): etcd 3.5.1 sends the update without
/// it, Plinth cancels the watch as compacted at 3 (README); the script logs either as one
/// line. Watches without `prev_kv`, or from 4, replay as usual on both.
async fn update_at_compact_script(endpoint: String) -> String {
    let mut c = connect(&endpoint, false).await;
    let mut log = String::new();
    c.put("k", "v1", None).await.expect("put k"); // 2
    c.put("k", "v2", None).await.expect("put k"); // 3
    c.put("k", "v3", None).await.expect("put k"); // 4
    c.compact(3, Some(etcd_client::CompactionOptions::new().with_physical())).await.expect("compact");
    let opts = WatchOptions::new().with_prev_key().with_start_revision(3);
    let mut w = c.watch("k", Some(opts)).await.expect("watch");
    let created = w.message().await.expect("watch").expect("created");
    let _ = writeln!(log, "watch k from 3 with prev_kv: created={}", created.created());
    match tokio::time::timeout(Duration::from_secs(5), w.message()).await {
        Ok(Ok(Some(r))) => {
            let nil_prev = r.events().first().is_some_and(|e| {
                e.kv().is_some_and(|k| k.mod_revision() == 3 && k.version() > 1) && e.prev_kv().is_none()
            });
            if nil_prev || (r.canceled() && r.compact_revision() == 3) {
                let _ = writeln!(log, "  no prev_kv for the update at 3: compacted");
            } else {
                let _ = writeln!(log, "  unexpected: {r:?}");
            }
        }
        other => {
            let _ = writeln!(log, "  unexpected: {other:?}");
        }
    }
    for (start, prev) in [(3, false), (4, true)] {
        let mut opts = WatchOptions::new().with_start_revision(start);
        if prev {
            opts = opts.with_prev_key();
        }
        let mut w = c.watch("k", Some(opts)).await.expect("watch");
        let _ = writeln!(log, "watch k from {start}, prev_kv {prev}");
        drain(&mut w, &mut log).await;
    }
    log
}

#[test]
fn an_update_at_the_compact_revision_ends_a_prev_kv_watch_from_there() {
    same_as_etcd("watch_update_at_compact", update_at_compact_script, &["no prev_kv for the update at 3: compacted"]);
}

/// Watch ids a client chooses (`watch_id`, etcd 3.4+), on one stream: taken as given; an id
/// in use is refused (created and canceled under -1, "duplicate watch ID"); the stream's own
/// ids skip the chosen ones; events and cancels go by the chosen ids; a canceled id may be
/// chosen again; an id whose watcher the server canceled stays taken until the client
/// cancels it.
async fn chosen_watch_ids_script(endpoint: String) -> String {
    let mut c = connect(&endpoint, false).await;
    let mut log = String::new();
    let mut s = c.watch("a", Some(WatchOptions::new().with_watch_id(1))).await.expect("watch a as 1");
    let _ = writeln!(log, "watch a as 1");
    drain(&mut s, &mut log).await;
    for (key, id) in [("b", 0), ("c", 0), ("d", 2), ("e", 7)] {
        s.watch(key, Some(WatchOptions::new().with_watch_id(id))).await.expect("watch");
        let _ = writeln!(log, "watch {key} as {id}");
        drain(&mut s, &mut log).await;
    }
    for key in ["a", "c", "d", "e"] {
        c.put(key, "1", None).await.expect("put");
    }
    let _ = writeln!(log, "put a, c, d, e");
    drain(&mut s, &mut log).await;
    s.cancel(1).await.expect("cancel 1");
    let _ = writeln!(log, "cancel 1");
    drain(&mut s, &mut log).await;
    for (key, id) in [("f", 1), ("g", 0)] {
        s.watch(key, Some(WatchOptions::new().with_watch_id(id))).await.expect("watch");
        let _ = writeln!(log, "watch {key} as {id}");
        drain(&mut s, &mut log).await;
    }
    let put = c.put("f", "1", None).await.expect("put f");
    let _ = writeln!(log, "put f");
    drain(&mut s, &mut log).await;
    // A watcher the server cancels (its start revision is compacted) keeps its id until the
    // client cancels it; that cancel is answered, and the id may then be chosen again.
    let current = put.header().expect("header").revision();
    c.compact(current, Some(etcd_client::CompactionOptions::new().with_physical())).await.expect("compact");
    let _ = writeln!(log, "compact at the current revision");
    s.watch("h", Some(WatchOptions::new().with_watch_id(9).with_start_revision(1))).await.expect("watch");
    let _ = writeln!(log, "watch h as 9 from 1");
    drain(&mut s, &mut log).await;
    s.watch("i", Some(WatchOptions::new().with_watch_id(9))).await.expect("watch");
    let _ = writeln!(log, "watch i as 9");
    drain(&mut s, &mut log).await;
    s.cancel(9).await.expect("cancel 9");
    let _ = writeln!(log, "cancel 9");
    drain(&mut s, &mut log).await;
    s.watch("i", Some(WatchOptions::new().with_watch_id(9))).await.expect("watch");
    let _ = writeln!(log, "watch i as 9 again");
    drain(&mut s, &mut log).await;
    c.put("i", "1", None).await.expect("put i");
    let _ = writeln!(log, "put i");
    drain(&mut s, &mut log).await;
    // Two creates of one id sent back to back: the answers come in request order, the
    // first watcher's `created` before the second's refusal.
    for id in 20..25 {
        s.watch("j", Some(WatchOptions::new().with_watch_id(id))).await.expect("watch");
        s.watch("k", Some(WatchOptions::new().with_watch_id(id))).await.expect("watch");
        let _ = writeln!(log, "watch j and k as {id}, back to back");
        drain(&mut s, &mut log).await;
    }
    log
}

#[test]
fn chosen_watch_ids_match_etcd() {
    // etcd must show the refusal and the skipped id, or the comparison proves little.
    same_as_etcd(
        "watch_chosen_ids",
        chosen_watch_ids_script,
        &[
            "id=-1 created=true canceled=true",
            "watch c as 0\n  id=2 created=true",
            "watch i as 9\n  id=-1 created=true canceled=true",
        ],
    );
}

/// With a 200 ms progress interval, a watcher starting 3 revisions ahead gets only its
/// `Created` response for 1.5 s; once the store reaches its start revision (with writes to
/// other keys), progress notifications arrive.
#[test]
fn no_progress_notification_before_a_future_start_revision() {
    let m = Members::start(1, &["--experimental-watch-progress-notify-interval", "200ms"]);
    let rt = runtime();
    rt.block_on(async {
        m.wait_leader(START_TIMEOUT).await;
        let mut c = connect(&m.members[0].endpoint(), false).await;
        let current = c.put("a", "1", None).await.expect("put").header().expect("header").revision();
        let start = current + 3;
        let opts = WatchOptions::new().with_start_revision(start).with_progress_notify();
        let mut w = c.watch("a", Some(opts)).await.expect("watch");
        let quiet_until = Instant::now() + Duration::from_millis(1500);
        let mut seen = Vec::new();
        while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
            match tokio::time::timeout(left, w.message()).await {
                Err(_) => break,
                Ok(r) => {
                    let r = r.expect("watch stream").expect("stream open");
                    let rev = r.header().map_or(0, |h| h.revision());
                    seen.push((r.created(), r.canceled(), r.events().len(), rev));
                }
            }
        }
        assert!(
            seen.iter().all(|(created, _, _, _)| *created),
            "before revision {start} is reached only `Created` may arrive; got (created, canceled, events, \
             header.revision) = {seen:?}"
        );
        for v in ["1", "2", "3"] {
            c.put("b", v, None).await.expect("put b");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .expect("no progress notification after the start revision was reached");
            let r = tokio::time::timeout(left, w.message())
                .await
                .expect("no progress notification after the start revision was reached")
                .expect("watch stream")
                .expect("stream open");
            let rev = r.header().map_or(0, |h| h.revision());
            if r.events().is_empty() && !r.created() && !r.canceled() {
                assert!(rev >= start, "progress at {rev} < start {start}");
                break;
            }
        }
    });
}

/// A stream opened with `hasleader=true` on a member that loses its leader (the two other
/// members SIGKILLed) ends with Unavailable `etcdserver: no leader`, within a bound of a few
/// election timeouts.
#[test]
fn hasleader_watch_ends_with_no_leader_after_leader_loss() {
    let mut m = Members::start(3, &[]);
    let rt = runtime();
    rt.block_on(async {
        let leader = m.wait_leader(START_TIMEOUT).await;
        // Watch on a follower, so that it loses the leader by the kills.
        let on = (leader + 1) % 3;
        let mut c = connect(&m.members[on].endpoint(), true).await;
        c.put("a", "1", None).await.expect("put");
        let mut w = c.watch("a", None).await.expect("watch with hasleader");
        let created = tokio::time::timeout(Duration::from_secs(5), w.message())
            .await
            .expect("Created within 5 s")
            .expect("watch stream")
            .expect("stream open");
        assert!(created.created(), "{created:?}");
        for i in 0..3 {
            if i != on {
                m.members[i].kill9();
            }
        }
        let killed = Instant::now();
        // Detecting the loss takes up to about two election timeouts, then etcd's rule waits
        // three more; allow generous slack on a loaded machine.
        let bound = Duration::from_millis(ELECTION_MS * 16);
        let outcome = loop {
            match tokio::time::timeout(bound.saturating_sub(killed.elapsed()), w.message()).await {
                Err(_) => panic!("stream still open {bound:?} after the leader was lost\n{}", m.logs()),
                Ok(Ok(Some(r))) => {
                    assert!(r.events().is_empty() || r.created(), "unexpected response while leaderless: {r:?}")
                }
                Ok(Ok(None)) => panic!("stream closed without an error"),
                Ok(Err(e)) => break e,
            }
        };
        match outcome {
            etcd_client::Error::GRpcStatus(s) => {
                assert_eq!(format!("{:?}", s.code()), "Unavailable", "{s:?}");
                assert_eq!(s.message(), "etcdserver: no leader", "{s:?}");
            }
            other => panic!("expected a gRPC status, got {other:?}"),
        }
        eprintln!("hasleader stream ended {:?} after the kills", killed.elapsed());
    });
}
