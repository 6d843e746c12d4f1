//! etcdctl put/get/del/txn/compaction against etcd 3.5.1 and the target server: every
//! flag, both output formats, and the error paths.

use plinth_tests::{differential, Session};

fn seed(s: &mut Session<'_>) {
    // Values chosen so that key, value, create and modify orders all differ.
    for (k, v) in [
        ("b", "3"),
        ("a", "5"),
        ("d", "1"),
        ("c", "4"),
        ("foo", "bar"),
        ("foo1", "x"),
        ("foo2", "y"),
        ("a", "2"),
        ("a", "6"),
        ("c", "0"),
    ] {
        s.ctl(&["put", k, v]);
    }
}

#[test]
fn put_and_get_flags() {
    differential("etcdctl_kv_put_get", |s| {
        seed(s);
        s.ctl(&["put", "foo", "bar2", "--prev-kv"]);
        s.ctl(&["put", "foo", "bar3", "--prev-kv", "-w", "json"]);
        s.ctl(&["put", "fresh", "v", "--prev-kv"]);
        s.ctl(&["put", "fresh2", "v", "--prev-kv", "-w", "json"]);
        s.ctl(&["get", "foo"]);
        s.ctl(&["get", "foo", "-w", "json"]);
        s.ctl(&["get", "foo", "-w", "fields"]);
        s.ctl(&["get", "missing"]);
        s.ctl(&["get", "missing", "-w", "json"]);
        s.ctl(&["get", "foo", "--prefix"]);
        s.ctl(&["get", "foo", "--prefix", "-w", "json"]);
        s.ctl(&["get", "foo", "--prefix", "--limit", "2", "-w", "json"]);
        s.ctl(&["get", "foo", "--prefix", "--limit", "3", "-w", "json"]);
        s.ctl(&["get", "foo", "--prefix", "--limit", "2"]);
        s.ctl(&["get", "a", "--from-key"]);
        s.ctl(&["get", "c", "--from-key", "-w", "json"]);
        s.ctl(&["get", "a", "--from-key", "--limit", "2", "-w", "json"]);
        s.ctl(&["get", "a", "d"]);
        s.ctl(&["get", "a", "d", "-w", "json"]);
        s.ctl(&["get", "d", "a", "-w", "json"]);
        s.ctl(&["get", "", "--prefix", "--keys-only"]);
        s.ctl(&["get", "", "--from-key", "--count-only", "-w", "fields"]);
        for target in ["CREATE", "KEY", "MODIFY", "VALUE", "VERSION"] {
            for order in ["ASCEND", "DESCEND"] {
                s.ctl(&["get", "a", "--from-key", "--sort-by", target, "--order", order]);
                s.ctl(&["get", "a", "--from-key", "--sort-by", target, "--order", order, "--limit", "3", "-w", "json"]);
            }
            // Sort target with the default order.
            s.ctl(&["get", "a", "--from-key", "--sort-by", target, "--keys-only"]);
        }
        s.ctl(&["get", "a", "--from-key", "--order", "DESCEND"]);
        s.ctl(&["get", "a", "--from-key", "--order", "ASCEND", "--limit", "2"]);
        s.ctl(&["get", "a", "--from-key", "--keys-only"]);
        s.ctl(&["get", "a", "--from-key", "--keys-only", "-w", "json"]);
        s.ctl(&["get", "a", "--from-key", "--count-only"]);
        s.ctl(&["get", "a", "--from-key", "--count-only", "-w", "fields"]);
        s.ctl(&["get", "foo", "--prefix", "--count-only", "--limit", "1", "-w", "fields"]);
        s.ctl(&["get", "a", "--from-key", "--print-value-only"]);
        s.ctl(&["get", "a", "--print-value-only"]);
        s.ctl(&["get", "foo", "--prefix", "--keys-only", "--limit", "1", "-w", "json"]);
        s.ctl(&["get", "foo", "--hex"]);
        s.ctl(&["get", "foo", "--consistency=s", "-w", "json"]);
        // Historical reads.
        for rev in ["1", "2", "3", "5", "8", "9", "10"] {
            s.ctl(&["get", "a", "--rev", rev, "-w", "json"]);
        }
        s.ctl(&["get", "a", "--from-key", "--rev", "4"]);
        s.ctl(&["get", "a", "--from-key", "--rev", "4", "--count-only", "-w", "fields"]);
        s.ctl(&["get", "", "--prefix", "--rev", "0", "--count-only", "-w", "fields"]);
        // Errors.
        s.ctl(&["get", "a", "--rev", "1000"]);
        s.ctl(&["get", "a", "--rev", "1000", "-w", "json"]);
        s.ctl(&["get", ""]);
        s.ctl(&["put", "", "v"]);
        s.ctl(&["get", "a", "--sort-by", "BOGUS"]);
        // ignore-value / ignore-lease.
        s.ctl(&["put", "foo", "--ignore-value"]);
        s.ctl(&["get", "foo", "-w", "json"]);
        s.ctl(&["put", "nokey", "--ignore-value"]);
        s.ctl(&["put", "foo", "v", "--ignore-value"]);
        s.ctl(&["put", "foo", "v", "--ignore-lease"]);
        s.ctl(&["put", "nokey", "v", "--ignore-lease"]);
        let grant = s.ctl(&["lease", "grant", "600"]);
        let id = lease_id(&grant.stdout);
        s.ctl(&["put", "leased", "v1", &format!("--lease={id}")]);
        s.ctl(&["put", "leased", "v2", "--ignore-lease", "--prev-kv", "-w", "json"]);
        s.ctl(&["put", "leased", "--ignore-value", "--ignore-lease"]);
        s.ctl(&["get", "leased", "-w", "json"]);
        s.ctl(&["put", "leased", "v3", "--ignore-lease", &format!("--lease={id}")]);
        s.ctl(&["put", "leased", "v4"]);
        s.ctl(&["get", "leased", "-w", "json"]);
        s.ctl(&["get", "", "--prefix", "-w", "json"]);
    });
}

/// Extracts the hex id from `lease <id> granted with TTL(..)`.
fn lease_id(out: &str) -> String {
    out.split_whitespace().nth(1).filter(|_| out.starts_with("lease ")).unwrap_or("0").to_owned()
}

#[test]
fn delete_flags() {
    differential("etcdctl_kv_del", |s| {
        seed(s);
        s.ctl(&["del", "missing"]);
        s.ctl(&["del", "missing", "-w", "json"]);
        s.ctl(&["del", "a"]);
        s.ctl(&["del", "b", "--prev-kv"]);
        s.ctl(&["del", "c", "--prev-kv", "-w", "json"]);
        s.ctl(&["get", "", "--prefix", "-w", "json"]);
        s.ctl(&["del", "foo", "--prefix", "--prev-kv"]);
        s.ctl(&["del", "foo", "--prefix"]);
        seed(s);
        s.ctl(&["del", "b", "d"]);
        s.ctl(&["del", "c", "--from-key", "--prev-kv", "-w", "json"]);
        s.ctl(&["get", "", "--prefix", "-w", "json"]);
        s.ctl(&["del", ""]);
        s.ctl(&["del", "a", "--rev", "2"]);
        // Deleted then re-created: create_revision and version restart.
        s.ctl(&["put", "a", "again"]);
        s.ctl(&["get", "a", "-w", "json"]);
        s.ctl(&["put", "a", "again2"]);
        s.ctl(&["get", "a", "-w", "json"]);
        s.ctl(&["del", "", "--from-key"]);
        s.ctl(&["get", "", "--from-key", "-w", "json"]);
    });
}

#[test]
fn compaction_and_history() {
    differential("etcdctl_kv_compaction", |s| {
        seed(s); // revisions 2..=11
        s.ctl(&["compaction", "5"]);
        s.ctl(&["get", "a", "--rev", "4"]);
        s.ctl(&["get", "a", "--rev", "4", "-w", "json"]);
        s.ctl(&["get", "a", "--rev", "5", "-w", "json"]);
        s.ctl(&["get", "a", "--from-key", "--rev", "5"]);
        s.ctl(&["get", "a", "--from-key", "--rev", "6", "-w", "json"]);
        s.ctl(&["get", "a", "--from-key", "-w", "json"]);
        s.ctl(&["compaction", "5"]);
        s.ctl(&["compaction", "3"]);
        s.ctl(&["compaction", "1000"]);
        s.ctl(&["compaction", "--physical", "8"]);
        s.ctl(&["get", "a", "--rev", "7"]);
        s.ctl(&["get", "a", "--rev", "8", "-w", "json"]);
        s.ctl(&["get", "a", "--from-key", "--rev", "9", "--count-only", "-w", "fields"]);
        s.ctl(&["put", "after", "compaction"]);
        s.ctl(&["get", "", "--prefix", "-w", "json"]);
        s.ctl(&["compaction", "12"]);
        s.ctl(&["compaction", "13"]);
        s.ctl(&["get", "", "--prefix", "--rev", "12", "-w", "json"]);
    });
}

const TXN_SUCCESS: &str = "value(\"foo\") = \"bar\"\n\nput foo baz\nget foo\n\nget foo\n\n";

#[test]
fn txn() {
    differential("etcdctl_kv_txn", |s| {
        seed(s);
        // Interactive form (prompts on stdout), compare on value: success then failure.
        s.ctl_stdin(&["txn", "-i"], TXN_SUCCESS);
        s.ctl_stdin(&["txn", "-i"], TXN_SUCCESS);
        s.ctl_stdin(&["txn", "-i", "-w", "json"], TXN_SUCCESS);
        // Non-interactive stdin form.
        s.ctl_stdin(
            &["txn"],
            "version(\"a\") = \"3\"\ncreate(\"a\") = \"3\"\nmod(\"a\") > \"5\"\n\n\
             put a txn1\ndel b --prev-kv\nget a\n\nput nope 1\n\n",
        );
        s.ctl_stdin(&["txn", "-w", "json"], "version(\"a\") = \"3\"\n\nput a txn2\n\nget a\nget c --prefix\n\n");
        s.ctl_stdin(
            &["txn", "-w", "json"],
            "mod(\"a\") < \"5\"\n\nput x 1\n\nget a --rev 4\nget foo --prefix --limit 1\n\n",
        );
        s.ctl_stdin(
            &["txn", "-w", "json"],
            "create(\"c\") != \"0\"\nversion(\"c\") > \"1\"\n\nget c\ndel c\nput c new\nget c\n\n\n",
        );
        // Compares on a missing key: MOD/VERSION/CREATE are zero, VALUE is always false.
        s.ctl_stdin(
            &["txn", "-w", "json"],
            "create(\"missing\") = \"0\"\nmod(\"missing\") = \"0\"\nversion(\"missing\") = \"0\"\n\n\
             put missing 1\n\n\n",
        );
        s.ctl_stdin(&["txn", "-w", "json"], "value(\"missing2\") = \"x\"\n\nput missing2 1\n\nget missing2\n\n");
        s.ctl_stdin(&["txn", "-w", "json"], "value(\"missing2\") != \"x\"\n\nput missing2 1\n\nget missing2\n\n");
        s.ctl_stdin(&["txn", "-w", "json"], "value(\"foo\") > \"bar\"\nvalue(\"foo\") < \"zzz\"\n\nput foo ok\n\n\n");
        // No compares: always succeeds; read-only txn does not bump the revision.
        s.ctl_stdin(&["txn", "-w", "json"], "\nget foo\n\n\n");
        s.ctl_stdin(&["txn"], "\nput t1 1\nput t2 2\ndel t1\n\n\n");
        // Errors: duplicate keys, empty key, future revision inside a txn.
        s.ctl_stdin(&["txn"], "\nput dup 1\nput dup 2\n\n\n");
        s.ctl_stdin(&["txn"], "\nget zz --rev 1000\n\n\n");
        s.ctl_stdin(&["txn"], "mod(\"a\") = \"x\"\n\n\n\n");
        s.ctl(&["get", "", "--prefix", "-w", "json"]);
    });
}

#[test]
fn request_size_limits() {
    differential("etcdctl_kv_request_size", |s| {
        // etcd's default --max-request-bytes is 1.5 MiB: 1.4 MiB is accepted, 1.6 MiB is
        // rejected with "etcdserver: request is too large" (below the 2 MiB gRPC limit, which
        // etcdctl itself enforces on sends).
        for (name, len) in [("1.4MiB", 1_400_000usize), ("1.6MiB", 1_600_000)] {
            let value = "x".repeat(len);
            let out = s.server().ctl_stdin(&["put", "big"], &value);
            s.record(&format!("etcdctl put big <<< ({name} value)"), &out, false);
        }
        s.ctl(&["get", "big", "--keys-only", "-w", "json"]);
    });
}
