//! The harness itself: etcd against a second etcd must produce identical normalized
//! transcripts (so every difference reported against plinth is real), and a real
//! difference must be reported.

use std::sync::atomic::{AtomicUsize, Ordering};

use plinth_tests::{differential_with, Kind};

#[test]
fn etcd_vs_etcd_is_identical() {
    differential_with("harness_etcd_vs_etcd", Kind::Etcd, |s| {
        s.ctl(&["put", "a", "1"]);
        let grant = s.ctl(&["lease", "grant", "100"]);
        let id = grant.stdout.split_whitespace().nth(1).unwrap_or("0").to_owned();
        s.ctl(&["put", "b", "2", &format!("--lease={id}")]);
        s.ctl(&["get", "", "--prefix", "-w", "json"]);
        s.ctl(&["lease", "timetolive", &id, "--keys"]);
        s.ctl(&["endpoint", "status", "-w", "json"]);
        s.ctl(&["endpoint", "health"]);
        s.ctl(&["member", "list", "-w", "json"]);
        s.ctl(&["member", "list"]);
        s.ctl(&["get", "a", "--rev", "100"]);
    });
}

#[test]
fn a_difference_is_reported() {
    let calls = AtomicUsize::new(0);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        differential_with("harness_difference", Kind::Etcd, |s| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            s.ctl(&["put", "k", &format!("value-{n}")]);
            s.ctl(&["get", "k"]);
        });
    }));
    let err = result.expect_err("differing transcripts must fail the test");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("-value-0") || msg.contains("-value-1"), "{msg}");
    assert!(msg.contains("+value-0") || msg.contains("+value-1"), "{msg}");
}
