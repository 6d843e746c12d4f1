//! etcdctl lease commands against etcd 3.5.1 and the target server.

use std::time::{Duration, Instant};

use plinth_tests::{differential, Session};

/// Extracts the hex id from `lease <id> granted with TTL(..)`.
fn lease_id(out: &str) -> String {
    out.split_whitespace().nth(1).filter(|_| out.starts_with("lease ")).unwrap_or("0").to_owned()
}

fn grant(s: &mut Session<'_>, ttl: &str) -> String {
    let out = s.ctl(&["lease", "grant", ttl]);
    lease_id(&out.stdout)
}

#[test]
fn grant_attach_inspect_revoke() {
    differential("etcdctl_lease", |s| {
        s.ctl(&["put", "plain", "v"]);
        let a = grant(s, "600");
        let b = grant(s, "300");
        let la = format!("--lease={a}");
        s.ctl(&["put", "k1", "v1", &la]);
        s.ctl(&["put", "k2", "v2", &la]);
        s.ctl(&["put", "k3", "v3", &format!("--lease={b}")]);
        s.ctl(&["get", "k", "--prefix", "-w", "json"]);
        s.ctl(&["lease", "timetolive", &a]);
        s.ctl(&["lease", "timetolive", &a, "--keys"]);
        s.ctl(&["lease", "timetolive", &a, "--keys", "-w", "json"]);
        s.ctl(&["lease", "timetolive", &b, "-w", "json"]);
        s.ctl(&["lease", "list"]);
        s.ctl(&["lease", "list", "-w", "json"]);
        s.ctl(&["lease", "keep-alive", "--once", &a]);
        s.ctl(&["lease", "keep-alive", "--once", &a, "-w", "json"]);
        // Moving a key to another lease detaches it from the first.
        s.ctl(&["put", "k2", "v2b", &format!("--lease={b}")]);
        s.ctl(&["lease", "timetolive", &a, "--keys"]);
        s.ctl(&["lease", "timetolive", &b, "--keys"]);
        s.ctl(&["lease", "revoke", &a]);
        s.ctl(&["get", "k", "--prefix", "-w", "json"]);
        s.ctl(&["lease", "timetolive", &a]);
        s.ctl(&["lease", "timetolive", &a, "-w", "json"]);
        s.ctl(&["lease", "revoke", &a]);
        s.ctl(&["lease", "keep-alive", "--once", &a]);
        s.ctl(&["lease", "list"]);
        // Unknown lease.
        s.ctl(&["put", "k9", "v", "--lease=1234abcd"]);
        s.ctl(&["get", "k9", "-w", "json"]);
        s.ctl(&["lease", "revoke", "1234abcd"]);
        s.ctl(&["lease", "timetolive", "1234abcd"]);
        // Revoking a lease with keys deletes them in one revision.
        s.ctl(&["lease", "revoke", &b]);
        s.ctl(&["get", "", "--prefix", "-w", "json"]);
        s.ctl(&["lease", "list", "-w", "json"]);
        // Granting with a TTL of 0 and a huge TTL.
        s.ctl(&["lease", "grant", "0"]);
        s.ctl(&["lease", "grant", "9000000001"]);
        s.ctl(&["lease", "grant", "-5"]);
    });
}

#[test]
fn expiry() {
    differential("etcdctl_lease_expiry", |s| {
        let id = grant(s, "2");
        s.ctl(&["put", "ephemeral", "v", &format!("--lease={id}")]);
        s.ctl(&["put", "ephemeral2", "v", &format!("--lease={id}")]);
        s.ctl(&["get", "ephemeral", "--prefix", "-w", "json"]);
        // Bounded wait: the key must be gone within 6 s (TTL 2 s plus generous slack).
        let start = Instant::now();
        let mut gone = false;
        while start.elapsed() < Duration::from_secs(6) {
            let out = s.server().ctl(&["get", "ephemeral", "--prefix", "--keys-only"]);
            if out.code == Some(0) && out.stdout.trim().is_empty() {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        s.note(&format!("keys gone within 6s of a TTL-2 lease: {gone}"));
        // Expiry deletes both keys through the write path in one revision (rev 4 -> 5).
        s.ctl(&["get", "ephemeral", "--prefix", "-w", "json"]);
        s.ctl(&["lease", "timetolive", &id]);
        s.ctl(&["lease", "list"]);
        s.ctl(&["get", "ephemeral", "--rev", "4", "-w", "json"]);
    });
}
