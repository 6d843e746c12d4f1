//! etcdctl watch against etcd 3.5.1 and the target server: history (--rev), live events,
//! --prefix, --prev-kv, JSON output, and watching a compacted revision.

use std::time::Duration;

use plinth_tests::differential;
use plinth_tests::{ctl, Session};

/// Number of events in `etcdctl watch` simple output (each event starts with its type).
fn simple_events(out: &str) -> usize {
    out.lines().filter(|l| *l == "PUT" || *l == "DELETE").count()
}

/// Number of events in `etcdctl watch -w json` output (one response per line).
fn json_events(out: &str) -> usize {
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["Events"].as_array().map_or(0, Vec::len))
        .sum()
}

/// `watch -w json` prints one WatchResponse per line. How events are batched into responses
/// (and the header revision of a live batch) depends on timing even between two etcd
/// instances, so the transcript keeps every event in order, plus every response that
/// carries something other than events (created, canceled, compact_revision).
fn flatten_json(out: &str) -> String {
    let mut flat = String::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            flat.push_str(line);
            flat.push('\n');
            continue;
        };
        let mut rest = v.clone();
        if let Some(obj) = rest.as_object_mut() {
            obj.remove("Events");
            obj.remove("Header");
            obj.retain(|_, val| {
                !matches!(val, serde_json::Value::Null | serde_json::Value::Bool(false)) && val.as_i64() != Some(0)
            });
            if !obj.is_empty() {
                flat.push_str(&serde_json::json!({ "response": rest }).to_string());
                flat.push('\n');
            }
        }
        for ev in v["Events"].as_array().into_iter().flatten() {
            flat.push_str(&serde_json::json!({ "event": ev }).to_string());
            flat.push('\n');
        }
    }
    flat
}

/// Runs `etcdctl watch <args>` in the background while `during` runs, waits (bounded) until
/// `want` events were printed, then stops it and records the output.
fn watch(s: &mut Session<'_>, args: &[&str], want: usize, during: impl FnOnce(&mut Session<'_>)) {
    let json = args.contains(&"json");
    let count = move |o: &str| {
        if json {
            json_events(o)
        } else {
            simple_events(o)
        }
    };
    let mut full = vec!["watch"];
    full.extend_from_slice(args);
    let mut bg = ctl::spawn(&s.server().endpoint(), &full, Duration::from_secs(20));
    during(s);
    let complete = bg.wait_until(Duration::from_secs(10), |o| count(o) >= want);
    // A little longer: extra (unexpected) events must show up in the transcript too.
    std::thread::sleep(Duration::from_millis(300));
    let mut out = bg.kill();
    if json {
        out.stdout = flatten_json(&out.stdout);
    }
    s.record(&format!("etcdctl {} &", full.join(" ")), &out, json);
    s.note(&format!("saw {want} events within 10s: {complete}"));
}

#[test]
fn history_live_prefix_prev_kv() {
    differential("etcdctl_watch", |s| {
        for (k, v) in [("w/a", "1"), ("w/b", "2"), ("x", "3"), ("w/a", "4")] {
            s.ctl(&["put", k, v]);
        }
        s.ctl(&["del", "w/b"]); // rev 6
                                // History from revision 1 (includes every event so far).
        watch(s, &["--rev", "1", "w/a"], 2, |_| {});
        watch(s, &["--rev", "1", "--prefix", "w/"], 4, |_| {});
        watch(s, &["--rev", "2", "--prefix", "w/", "--prev-kv"], 4, |_| {});
        watch(s, &["--rev", "3", "--prefix", "w/", "-w", "json"], 3, |_| {});
        watch(s, &["--rev", "1", "--prefix", "", "--prev-kv", "-w", "json"], 5, |_| {});
        watch(s, &["--rev", "4", "w/a", "w/c", "--prev-kv"], 2, |_| {});
        // Live events: start at the next revision so no event can be missed regardless of
        // when the watcher registers; the first ones arrive while the watcher is live.
        watch(s, &["--rev", "7", "--prefix", "w/", "--prev-kv"], 5, |s| {
            s.ctl(&["put", "w/c", "5"]);
            s.ctl(&["put", "w/c", "6"]);
            s.ctl(&["put", "other", "7"]);
            s.ctl(&["del", "w/", "--prefix"]);
            s.ctl(&["put", "w/a", "8"]);
        });
        watch(s, &["--rev", "7", "--prefix", "w/", "--prev-kv", "-w", "json"], 8, |s| {
            s.ctl_stdin(&["txn"], "\nput w/x 1\nput w/y 2\ndel w/a\n\n\n");
        });
        watch(s, &["--rev", "12", "w/x", "--prev-kv", "-w", "json"], 2, |s| {
            s.ctl(&["put", "w/x", "9"]);
        });
    });
}

#[test]
fn compacted_revision() {
    differential("etcdctl_watch_compacted", |s| {
        for v in ["1", "2", "3", "4", "5"] {
            s.ctl(&["put", "k", v]);
        }
        s.ctl(&["compaction", "4"]);
        // Below the compact revision: cancelled with compact_revision; etcdctl exits.
        let out = ctl::spawn(&s.server().endpoint(), &["watch", "--rev", "2", "k"], Duration::from_secs(10)).finish();
        s.record("etcdctl watch --rev 2 k", &out, false);
        let out =
            ctl::spawn(&s.server().endpoint(), &["watch", "--rev", "3", "k", "-w", "json"], Duration::from_secs(10))
                .finish();
        s.record("etcdctl watch --rev 3 k -w json", &out, true);
        // At the compact revision: works and replays from there. (With --prev-kv the update
        // at 4 gets its prev_kv from Plinth and none from etcd 3.5.1, on purpose: that case
        // is tested in store/tests/watch_hardening.rs; from 5 on both fill it.)
        watch(s, &["--rev", "4", "k"], 3, |_| {});
        watch(s, &["--rev", "5", "k", "--prev-kv"], 2, |_| {});
        watch(s, &["--rev", "4", "k", "-w", "json"], 3, |_| {});
    });
}
