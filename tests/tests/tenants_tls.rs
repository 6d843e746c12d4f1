//! Tenants reached by client certificate on the shared TLS client port: the certificate's
//! CN (or a SAN URI) picks the tenant (no tenant port, nothing in the client changed), a certificate that
//! maps to no tenant is refused with `--default-tenant-for-unmapped=false`, and only the
//! `--admin-cn` certificate administers tenants.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use plinth_tests::certs::Ca;
use plinth_tests::cluster::{self, plinth_bin, Options};
use plinth_tests::ctl::{self, CtlOutput};
use plinth_tests::Kind;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// etcdctl flags presenting the certificate of `cn`.
fn creds(certs: &Path, cn: &str) -> Vec<String> {
    vec![
        format!("--cacert={}", certs.join("ca.pem").display()),
        format!("--cert={}", certs.join(format!("{cn}.pem")).display()),
        format!("--key={}", certs.join(format!("{cn}-key.pem")).display()),
    ]
}

fn ctl_as(server: &cluster::Server, certs: &Path, cn: &str, args: &[&str]) -> CtlOutput {
    let mut all = creds(certs, cn);
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    ctl::run(&server.endpoint(), &all, None, COMMAND_TIMEOUT)
}

fn ok(server: &cluster::Server, certs: &Path, cn: &str, args: &[&str]) -> String {
    let out = ctl_as(server, certs, cn, args);
    assert_eq!(out.code, Some(0), "{cn}: etcdctl {args:?}: {out:?}\n--- log ---\n{}", server.log());
    out.stdout
}

/// `plinth tenant ...` presenting the certificate of `cn`.
fn tenant_cli(server: &cluster::Server, certs: &Path, cn: &str, args: &[&str]) -> std::process::Output {
    Command::new(plinth_bin())
        .arg("tenant")
        .args(args)
        .arg("--endpoints")
        .arg(server.endpoint())
        .arg("--cacert")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join(format!("{cn}.pem")))
        .arg("--key")
        .arg(certs.join(format!("{cn}-key.pem")))
        .output()
        .expect("run plinth tenant")
}

#[test]
fn the_client_certificate_picks_the_tenant_on_the_shared_port() {
    let ca = Ca::new("plinth tenants test CA");
    let dir = tempfile::Builder::new().prefix("plinth-test-tenants-tls-").tempdir().expect("temp dir");
    let certs = dir.path();
    ca.write(certs, "ca");
    let (cert, key) = ca.write_leaf(certs, "server", ca.leaf("server", 1));
    for (serial, cn) in [(2, "admin"), (3, "apiserver-a"), (4, "apiserver-b"), (5, "stranger")] {
        ca.write_leaf(certs, cn, ca.leaf(cn, serial));
    }
    // A workload identity in a SAN URI, beside a CN that maps elsewhere.
    let now = time::OffsetDateTime::now_utc();
    let spiffe = "spiffe://plinth.test/ns/team-a/sa/apiserver";
    let leaf =
        ca.leaf_with_uris("stranger", 6, now - time::Duration::days(1), now + time::Duration::days(1), &[spiffe]);
    ca.write_leaf(certs, "workload", leaf);
    let flags = vec![
        format!("--cert-file={}", cert.display()),
        format!("--key-file={}", key.display()),
        format!("--trusted-ca-file={}", certs.join("ca.pem").display()),
        "--client-cert-auth".into(),
        "--admin-cn=admin".into(),
        "--default-tenant-for-unmapped=false".into(),
    ];
    let server = cluster::Server::start_with(
        Kind::Plinth,
        Options { flags, https: true, ctl_flags: creds(certs, "admin"), ..Options::default() },
    );

    // Only the admin's certificate administers tenants.
    for (name, cn) in [("team-a", "apiserver-a"), ("team-b", "apiserver-b")] {
        let out = tenant_cli(&server, certs, "admin", &["create", name, "--client-cn", cn]);
        assert!(out.status.success(), "create {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = tenant_cli(&server, certs, "apiserver-a", &["list"]);
    assert!(!out.status.success(), "a tenant's certificate listed tenants");
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"), "{out:?}");

    // Each certificate sees its own tenant.
    ok(&server, certs, "apiserver-a", &["put", "/registry/pods/a", "from-a"]);
    ok(&server, certs, "apiserver-b", &["put", "/registry/pods/b", "from-b"]);
    ok(&server, certs, "admin", &["put", "/registry/pods/default", "from-admin"]);
    let a = ok(&server, certs, "apiserver-a", &["get", "/registry/", "--prefix", "--keys-only"]);
    assert_eq!(a.split_whitespace().collect::<Vec<_>>(), ["/registry/pods/a"]);
    let b = ok(&server, certs, "apiserver-b", &["get", "/registry/", "--prefix", "--keys-only"]);
    assert_eq!(b.split_whitespace().collect::<Vec<_>>(), ["/registry/pods/b"]);
    // The admin's certificate maps to no tenant: it is served the default tenant.
    let d = ok(&server, certs, "admin", &["get", "/registry/", "--prefix", "--keys-only"]);
    assert_eq!(d.split_whitespace().collect::<Vec<_>>(), ["/registry/pods/default"]);
    // Revisions are each tenant's own.
    let status = ok(&server, certs, "apiserver-a", &["get", "/registry/pods/a", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(v["header"]["revision"], 2, "tenant a's first write is its revision 2: {v}");

    // A certificate that maps to no tenant is refused.
    let out = ctl_as(&server, certs, "stranger", &["get", "x"]);
    assert_ne!(out.code, Some(0), "an unmapped certificate was served: {out:?}");
    assert!(out.stderr.contains("maps to no tenant"), "{out:?}");

    // Re-mapping a CN moves its certificate to the other tenant for new requests.
    let out = tenant_cli(&server, certs, "admin", &["update", "team-b", "--client-cn", "stranger"]);
    assert!(out.status.success(), "update: {}", String::from_utf8_lossy(&out.stderr));
    let s = ok(&server, certs, "stranger", &["get", "/registry/", "--prefix", "--keys-only"]);
    assert_eq!(s.split_whitespace().collect::<Vec<_>>(), ["/registry/pods/b"]);
    let out = ctl_as(&server, certs, "apiserver-b", &["get", "x"]);
    assert!(out.stderr.contains("maps to no tenant"), "a CN taken off its tenant is still served: {out:?}");

    // A SAN URI the registry maps picks the tenant, before the certificate's CN.
    let out =
        tenant_cli(&server, certs, "admin", &["update", "team-a", "--client-cn", "apiserver-a", "--client-cn", spiffe]);
    assert!(out.status.success(), "update: {}", String::from_utf8_lossy(&out.stderr));
    let w = ok(&server, certs, "workload", &["get", "/registry/", "--prefix", "--keys-only"]);
    assert_eq!(w.split_whitespace().collect::<Vec<_>>(), ["/registry/pods/a"]);
}
