//! etcdctl `user`, `role`, `auth` and `--user` against etcd 3.5.1 and the target server:
//! enabling auth, users and roles, key, range and prefix permissions, allowed and denied
//! reads, writes and txns (a compare on a forbidden key), a watch on a forbidden range,
//! admin-only calls, a password change, a revoked permission and disabling auth.

use plinth_tests::{differential, Session};

const ROOT: &str = "--user=root:rootpw";
const ALICE: &str = "--user=alice:alicepw";

/// `etcdctl <user> <args>`.
fn as_user(s: &mut Session<'_>, user: &str, args: &[&str]) {
    let mut all = vec![user];
    all.extend_from_slice(args);
    s.ctl(&all);
}

#[test]
fn users_roles_permissions_and_tokens() {
    differential("etcdctl_auth", |s| {
        // Users and roles before auth is on; etcd's errors for the bad ones.
        s.ctl(&["auth", "enable"]);
        s.ctl(&["user", "add", "root", "--new-user-password=rootpw"]);
        s.ctl(&["user", "add", "alice", "--new-user-password=alicepw"]);
        s.ctl(&["user", "add", "alice", "--new-user-password=again"]);
        s.ctl(&["user", "add", "nopass", "--no-password"]);
        s.ctl(&["role", "add", "reader"]);
        s.ctl(&["role", "add", "rw"]);
        s.ctl(&["role", "add", "rw"]);
        s.ctl(&["role", "grant-permission", "reader", "read", "a", "b"]);
        s.ctl(&["role", "grant-permission", "rw", "readwrite", "foo/", "--prefix"]);
        s.ctl(&["role", "grant-permission", "rw", "write", "k1"]);
        s.ctl(&["role", "grant-permission", "nope", "read", "x"]);
        s.ctl(&["role", "grant-permission", "rw", "read", "d", "c"]);
        s.ctl(&["role", "grant-permission", "rw", "read", "e", "e"]);
        s.ctl(&["user", "grant-role", "alice", "reader"]);
        s.ctl(&["user", "grant-role", "alice", "rw"]);
        s.ctl(&["user", "grant-role", "nobody", "reader"]);
        s.ctl(&["user", "grant-role", "alice", "nope"]);
        s.ctl(&["user", "grant-role", "root", "root"]);
        s.ctl(&["user", "list"]);
        s.ctl(&["role", "list"]);
        s.ctl(&["user", "get", "alice"]);
        s.ctl(&["role", "get", "rw"]);
        s.ctl(&["role", "get", "reader", "-w", "json"]);
        s.ctl(&["role", "revoke-permission", "reader", "zz"]);
        s.ctl(&["user", "revoke-role", "alice", "root"]);
        s.ctl(&["auth", "enable"]);

        // Without a user, with a wrong password, and a no-password user.
        s.ctl(&["get", "a"]);
        as_user(s, "--user=alice:wrong", &["get", "a"]);
        as_user(s, "--user=nopass:x", &["get", "a"]);
        for (k, v) in [("a", "1"), ("a0", "2"), ("foo/x", "3"), ("k1", "4"), ("z", "5")] {
            as_user(s, ROOT, &["put", k, v]);
        }

        // Reads and writes inside and outside alice's permissions.
        as_user(s, ALICE, &["get", "a"]);
        as_user(s, ALICE, &["get", "a", "b"]);
        as_user(s, ALICE, &["get", "a", "c"]);
        as_user(s, ALICE, &["get", "z"]);
        as_user(s, ALICE, &["get", "a0", "a"]);
        as_user(s, ALICE, &["get", "a", "a"]);
        as_user(s, ALICE, &["put", "a", "x"]);
        as_user(s, ALICE, &["put", "foo/y", "y"]);
        as_user(s, ALICE, &["get", "foo/", "--prefix"]);
        as_user(s, ALICE, &["get", "foo", "--prefix"]);
        as_user(s, ALICE, &["put", "k1", "v"]);
        as_user(s, ALICE, &["get", "k1"]);
        as_user(s, ALICE, &["put", "foo/y", "y2", "--prev-kv"]);
        as_user(s, ALICE, &["del", "foo/x"]);
        as_user(s, ALICE, &["del", "z"]);
        as_user(s, ALICE, &["del", "foo/", "--prefix", "--prev-kv"]);

        // Txns: a compare on a forbidden key, a forbidden op in the other branch, allowed.
        let txn = |s: &mut Session<'_>, body: &str| {
            s.ctl_stdin(&[ALICE, "txn"], body);
        };
        txn(s, "value(\"z\") = \"5\"\n\nput foo/t 1\n\n\n");
        txn(s, "value(\"a\") = \"1\"\n\nput foo/t 1\n\nput z 6\n\n");
        txn(s, "value(\"a\") = \"1\"\n\nput foo/t 1\nget a\n\nget a0\n\n");
        txn(s, "value(\"a\") = \"9\"\n\nget a\n\nget foo/t\n\n");

        // Admin-only calls.
        as_user(s, ALICE, &["user", "list"]);
        as_user(s, ALICE, &["user", "get", "alice"]);
        as_user(s, ALICE, &["user", "get", "root"]);
        as_user(s, ALICE, &["role", "get", "rw"]);
        as_user(s, ALICE, &["role", "get", "root"]);
        as_user(s, ALICE, &["auth", "status"]);
        as_user(s, ALICE, &["role", "add", "mine"]);
        as_user(s, ALICE, &["compaction", "1"]);
        s.ctl(&["endpoint", "status", "-w", "json"]);
        as_user(s, ALICE, &["endpoint", "hashkv"]);
        as_user(s, ALICE, &["defrag"]);
        as_user(s, ALICE, &["alarm", "list"]);
        as_user(s, ALICE, &["member", "list", "-w", "json"]);
        as_user(s, ALICE, &["member", "remove", "1234"]);
        as_user(s, ALICE, &["snapshot", "save", "alice.db"]);
        as_user(s, ROOT, &["auth", "status"]);
        as_user(s, ROOT, &["user", "get", "alice", "--detail"]);
        as_user(s, ALICE, &["user", "get", "alice", "--detail"]);
        s.ctl_stdin(&[ALICE, "user", "passwd", "alice", "--interactive=false"], "mine\n");
        as_user(s, ALICE, &["auth", "disable"]);
        as_user(s, ALICE, &["role", "grant-permission", "rw", "read", "z"]);
        as_user(s, ALICE, &["get", "a", "--from-key"]);
        as_user(s, ALICE, &["del", "a", "--prev-kv"]);
        // A lease with a key alice may not write: she can neither revoke it nor attach her
        // keys to it (etcd's checkLeasePuts); once it holds only her keys, she can.
        let granted = s.ctl(&[ALICE, "lease", "grant", "60"]).stdout;
        let lease = granted.split_whitespace().nth(1).unwrap_or_else(|| panic!("lease grant printed {granted:?}"));
        let with_lease = format!("--lease={lease}");
        as_user(s, ROOT, &["put", "z", "7", &with_lease]);
        as_user(s, ALICE, &["put", "foo/l", "v", &with_lease]);
        as_user(s, ALICE, &["lease", "revoke", lease]);
        as_user(s, ROOT, &["put", "z", "8"]);
        as_user(s, ALICE, &["put", "foo/l", "v", &with_lease]);
        as_user(s, ALICE, &["lease", "revoke", lease]);
        as_user(s, ALICE, &["get", "foo/l"]);
        as_user(s, ROOT, &["user", "delete", "root"]);
        as_user(s, ROOT, &["user", "revoke-role", "root", "root"]);
        as_user(s, ROOT, &["role", "delete", "root"]);
        as_user(s, ROOT, &["role", "get", "root"]);

        // A watch on a forbidden range is canceled at create.
        as_user(s, ALICE, &["watch", "z", "--rev=1"]);

        // A password change: the old password stops working, the new one works.
        s.ctl_stdin(&[ROOT, "user", "passwd", "alice", "--interactive=false"], "newpw\n");
        as_user(s, ALICE, &["get", "a"]);
        as_user(s, "--user=alice:newpw", &["get", "a"]);

        // A revoked permission takes effect for the next request.
        as_user(s, ROOT, &["role", "revoke-permission", "reader", "a", "b"]);
        as_user(s, "--user=alice:newpw", &["get", "a"]);
        as_user(s, ROOT, &["user", "revoke-role", "alice", "rw"]);
        as_user(s, "--user=alice:newpw", &["put", "foo/y", "v"]);
        as_user(s, ROOT, &["role", "delete", "reader"]);
        as_user(s, ROOT, &["user", "get", "alice"]);
        as_user(s, ROOT, &["user", "delete", "alice"]);
        as_user(s, "--user=alice:newpw", &["get", "a"]);
        as_user(s, ROOT, &["auth", "status"]);

        // Disabling auth: anyone may read again.
        as_user(s, ROOT, &["auth", "disable"]);
        s.ctl(&["get", "a"]);
        s.ctl(&["auth", "status"]);
    });
}

/// Password changes etcd treats specially: a user added without a password keeps none (a
/// login with the new password is refused as one given to such a user), and an empty new
/// password stores no hash, which no password matches.
#[test]
fn password_changes_of_a_user_without_one_and_to_an_empty_one() {
    differential("etcdctl_auth_passwords", |s| {
        for (user, password) in [("root", "--new-user-password=rootpw"), ("f4", "--new-user-password=f4pw")] {
            s.ctl(&["user", "add", user, password]);
            s.ctl(&["user", "grant-role", user, "root"]);
        }
        s.ctl(&["user", "add", "np", "--no-password"]);
        s.ctl(&["user", "grant-role", "np", "root"]);
        s.ctl_stdin(&["user", "passwd", "np", "--interactive=false"], "pw\n");
        s.ctl_stdin(&["user", "passwd", "f4", "--interactive=false"], "\n");
        s.ctl(&["auth", "enable"]);
        as_user(s, "--user=np:pw", &["get", "a"]);
        as_user(s, "--user=f4:", &["get", "a"]);
        as_user(s, "--user=f4:f4pw", &["get", "a"]);
        as_user(s, ROOT, &["get", "a"]);
    });
}
