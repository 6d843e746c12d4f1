//! The client certificate's Common Name reaches request handlers through tonic's connect
//! info (`tls::client_common_name`), on a server fed by `tls::tls_incoming`; a client
//! without a certificate is refused at the handshake under client-certificate auth.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use grpc_api::tls::{self, ReloadingServerConfig, ServerTlsFiles, TlsParams};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound on every network step of the test.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// A handshake not held up by others is this fast, far below `tls::HANDSHAKE_TIMEOUT`.
const FAST: Duration = Duration::from_secs(3);

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "identity test CA");
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// Writes a leaf for `cn` signed by `ca` as `<name>.pem` and `<name>-key.pem` under `dir`.
fn leaf(ca: &Ca, dir: &Path, name: &str, cn: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// `GET /whoami` over TLS with `config`; the response text, or the error.
async fn whoami(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<String> {
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"GET /whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    Ok(response)
}

#[tokio::test]
async fn client_certificate_common_name_reaches_handlers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let (server_cert, server_key) = leaf(&ca, dir.path(), "server", "server");
    let (alice_cert, alice_key) = leaf(&ca, dir.path(), "alice", "alice");

    let files = ServerTlsFiles {
        cert_file: server_cert,
        key_file: server_key,
        trusted_ca_file: Some(ca_file.clone()),
        client_cert_auth: true,
    };
    let config = Arc::new(ReloadingServerConfig::new(files, TlsParams::default()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route(
        "/whoami",
        axum::routing::get(|req: axum::extract::Request| async move {
            let req = tonic::Request::from_http(req);
            format!("cn={}", tls::client_common_name(&req).unwrap_or_else(|| "none".to_owned()))
        }),
    );
    let incoming = tls::tls_incoming(tonic::transport::server::TcpIncoming::from(listener), config);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(tonic::service::Routes::from(router))
            .serve_with_incoming(incoming),
    );

    // Clients that connect and never start their handshake hold neither the accept loop nor
    // the handshakes of others: alice is served at once (well within HANDSHAKE_TIMEOUT).
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let params = TlsParams::default();
    let alice = tls::client_config(&ca_file, Some((&alice_cert, &alice_key)), &params).unwrap();
    let response = tokio::time::timeout(FAST, whoami(addr, alice))
        .await
        .expect("a silent client held up the next handshake")
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("cn=alice"), "{response}");
    drop(silent);

    let anonymous = tls::client_config(&ca_file, None, &params).unwrap();
    let refused = tokio::time::timeout(STEP_TIMEOUT, whoami(addr, anonymous)).await.expect("timed out");
    assert!(
        refused.as_ref().map_or(true, |r| !r.contains("200")),
        "a client without a certificate was served: {refused:?}"
    );
    server.abort();
}

#[test]
fn tls_flag_values() {
    let err = TlsParams::parse(Some("TLS1.1"), None, None).unwrap_err().to_string();
    assert!(err.contains("--tls-min-version TLS1.1") && err.contains("only TLS1.2 and TLS1.3"), "{err}");
    let err = TlsParams::parse(None, Some("TLS1.0"), None).unwrap_err().to_string();
    assert!(err.contains("--tls-max-version TLS1.0"), "{err}");
    let err = TlsParams::parse(Some("TLS1.3"), Some("TLS1.2"), None).unwrap_err().to_string();
    assert_eq!(err, "--tls-min-version TLS1.3 is above --tls-max-version TLS1.2");
    let only13 = TlsParams::parse(Some("TLS1.3"), None, None).unwrap();
    assert_eq!(only13.versions.len(), 1);
    let err =
        TlsParams::parse(Some("TLS1.3"), None, Some("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")).unwrap_err().to_string();
    assert!(err.contains("only TLS1.3"), "{err}");

    let err = tls::parse_cipher_suites("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_RSA_WITH_3DES_EDE_CBC_SHA,BOGUS")
        .unwrap_err()
        .to_string();
    assert!(err.contains("TLS_RSA_WITH_3DES_EDE_CBC_SHA, BOGUS"), "{err}");
    let suites = tls::parse_cipher_suites(
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305,TLS_AES_128_GCM_SHA256",
    )
    .unwrap();
    assert_eq!(suites.len(), 2);
    // The provider keeps the listed TLS 1.2 suites and every TLS 1.3 suite.
    let params = TlsParams::parse(None, None, Some("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")).unwrap();
    let provider = params.provider();
    let tls12 =
        provider.cipher_suites.iter().filter(|s| s.version().version == rustls::ProtocolVersion::TLSv1_2).count();
    let tls13 =
        provider.cipher_suites.iter().filter(|s| s.version().version == rustls::ProtocolVersion::TLSv1_3).count();
    assert_eq!((tls12, tls13), (1, 3));
}
