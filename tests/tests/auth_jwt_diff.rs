//! `--auth-token jwt,...` against etcd 3.5.1: the same ES256 keys and flags on both servers,
//! the same etcdctl script with `--user`, the same transcript.
//!
//! The keys are made here with rcgen, in the test's temp dir; none is committed.

use plinth_tests::cluster::{Kind, Options, Server};

/// etcd 3.5.1 (`real_etcd`) or `plinth serve` with JWT tokens signed by `private`.
fn start(real_etcd: bool, private: &str, public: &str) -> Server {
    let flags = vec![
        format!("--auth-token=jwt,pub-key={public},priv-key={private},sign-method=ES256,ttl=10m"),
        "--bcrypt-cost=4".into(),
    ];
    Server::start_with(if real_etcd { Kind::Etcd } else { Kind::Plinth }, Options { flags, ..Options::default() })
}

#[test]
fn jwt_tokens_match_etcd() {
    let keys = tempfile::Builder::new().prefix("plinth-test-jwt-keys-").tempdir().expect("temp dir");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let private = keys.path().join("jwt.key");
    let public = keys.path().join("jwt.pub");
    std::fs::write(&private, pair.serialize_pem()).expect("write key");
    std::fs::write(&public, pair.public_key_pem()).expect("write key");
    let (private, public) = (private.display().to_string(), public.display().to_string());
    let run = |real_etcd: bool| {
        let s = start(real_etcd, &private, &public);
        let steps: &[&[&str]] = &[
            &["user", "add", "root", "--new-user-password=rootpw"],
            &["user", "grant-role", "root", "root"],
            &["role", "add", "app"],
            &["role", "grant-permission", "app", "readwrite", "app/", "--prefix"],
            &["user", "add", "alice", "--new-user-password=pw"],
            &["user", "grant-role", "alice", "app"],
            &["put", "secret", "s"],
            &["auth", "enable"],
            &["get", "secret"],
            &["--user=alice:pw", "put", "app/x", "1"],
            &["--user=alice:pw", "get", "app/x"],
            &["--user=alice:pw", "get", "secret"],
            &["--user=alice:bad", "get", "app/x"],
            &["--user=root:rootpw", "auth", "status"],
            &["--user=root:rootpw", "role", "revoke-permission", "app", "app/", "--prefix"],
            &["--user=alice:pw", "get", "app/x"],
            &["--user=root:rootpw", "user", "delete", "alice"],
            &["--user=alice:pw", "get", "app/x"],
            &["--user=root:rootpw", "auth", "disable"],
            &["get", "secret"],
        ];
        let mut transcript = String::new();
        for args in steps {
            let out = s.ctl(args);
            let error: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("Error:")).collect();
            transcript.push_str(&format!("$ etcdctl {}\n{}{:?} {:?}\n", args.join(" "), out.stdout, error, out.code));
        }
        transcript
    };
    let (etcd, plinth) = (run(true), run(false));
    assert!(plinth.contains("app/x\n1\n"), "{plinth}");
    assert_eq!(plinth, etcd, "Plinth differs from etcd 3.5.1\n--- etcd ---\n{etcd}\n--- plinth ---\n{plinth}");
}
