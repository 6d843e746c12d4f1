//! Peer TLS: `https://` peer URLs, etcd's `--peer-*` certificate flags, and the check that
//! binds a peer's certificate to the member it claims to be.
//!
//! ```text
//!  member A (client side)                           member B (peer port, server side)
//!  PeerTls::connect ── TCP ── TLS (A's peer cert,    tls_incoming ── handshake: B's peer cert;
//!                              verifies B's cert      with --peer-client-cert-auth A's cert must
//!                              against the CA and     chain to --peer-trusted-ca-file, or the
//!                              B's peer URL host)     connection is refused here
//!                                                     │
//!                                  every peer RPC ──► PeerTls::check_identity(request, member)
//! ```
//!
//! Rules (decided here; the README's "A three-member cluster with client and peer mTLS"
//! says the same):
//! - Server: the peer listeners serve TLS with `--peer-cert-file`/`--peer-key-file` (or the
//!   `--peer-auto-tls` self-signed pair), reloaded per handshake when the files change
//!   (`tls::ReloadingServerConfig`). With `--peer-client-cert-auth`, a client without a
//!   certificate signed by `--peer-trusted-ca-file` fails the handshake.
//! - Client: outgoing peer connections to an `https://` URL present the same peer
//!   certificate and verify the other member's certificate against `--peer-trusted-ca-file`
//!   and the host of the URL (its SAN), as etcd does. The files are read again for every new
//!   connection, so a rotated certificate is used from the next reconnect. With
//!   `--peer-auto-tls` there is no CA to verify against: the traffic is encrypted but the
//!   server's certificate is not checked (etcd's `InsecureSkipVerify` for auto TLS), and the
//!   start-up warning says the peer port is unauthenticated.
//! - Identity: with `--peer-client-cert-auth`, every peer RPC checks the verified client
//!   certificate: its Common Name must equal `--peer-cert-allowed-cn`, or it must be valid
//!   for `--peer-cert-allowed-hostname`, when those are given (etcd's rules; every member
//!   then shares that identity). Without them, the certificate must be valid (SAN) for the
//!   host of one of the peer URLs of the member the request is bound to (a Raft or snapshot
//!   stream, a hello), or of some current member for requests that name none: a member's
//!   certificate can then only speak for the members on the hosts it was issued for.
//!   A failed check is `PermissionDenied`, and nothing the request carries is used.
//!
//! CAVEATS:
//! - `--peer-crl-file`, `--peer-client-cert-file`/`--peer-client-key-file` and
//!   `--experimental-peer-skip-client-san-verification` are refused (`config.rs`).
//! - Members on one host (same IP) cannot be told apart by the SAN rule; give them
//!   distinct host names or use `--peer-cert-allowed-cn`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tonic::{Request, Status};

use crate::config::ServeArgs;
use crate::tls::{ReloadingServerConfig, ServerTlsFiles, TlsConnectInfo, TlsParams};

/// Directory under the data dir holding the `--peer-auto-tls` certificate (etcd's
/// `fixtures/peer`).
const AUTO_TLS_DIR: &str = "fixtures/peer";

/// This member's peer TLS: what its listeners serve, what its outgoing connections present
/// and trust, and how a peer's certificate is checked.
pub struct PeerTls {
    server: Arc<ReloadingServerConfig>,
    /// Certificate and key presented to the other members.
    cert_file: PathBuf,
    key_file: PathBuf,
    /// CA of the other members' certificates; `None` with `--peer-auto-tls` (not verified).
    trusted_ca_file: Option<PathBuf>,
    params: TlsParams,
    client_cert_auth: bool,
    allowed_cn: Option<String>,
    allowed_hostname: Option<String>,
}

impl PeerTls {
    /// The peer TLS asked for by `args`, or `None` for plain peer URLs. `args` must have been
    /// validated (`ServeArgs::validate` checks the flag combinations); this loads the files
    /// and fails if they do not load.
    pub fn from_args(args: &ServeArgs, data_dir: &Path) -> anyhow::Result<Option<Arc<PeerTls>>> {
        if !args.peer_https() {
            return Ok(None);
        }
        let s = &args.security;
        // The cipher suites and versions of `--tls-*` apply to the peer port as in etcd.
        let params =
            TlsParams::parse(s.tls_min_version.as_deref(), s.tls_max_version.as_deref(), s.cipher_suites.as_deref())?;
        let files = if s.peer_auto_tls == Some(true) && s.peer_cert_file.is_none() {
            let hosts = peer_hosts(args);
            // `--self-signed-cert-validity` applies to both ports' certificates, as in etcd.
            crate::tls::self_signed(&data_dir.join(AUTO_TLS_DIR), &hosts, args.self_signed_cert_validity()?)?
        } else {
            let (Some(cert), Some(key)) = (&s.peer_cert_file, &s.peer_key_file) else {
                anyhow::bail!("https peer URLs need --peer-cert-file and --peer-key-file, or --peer-auto-tls");
            };
            ServerTlsFiles {
                cert_file: cert.into(),
                key_file: key.into(),
                trusted_ca_file: s.peer_trusted_ca_file.as_ref().map(PathBuf::from),
                client_cert_auth: s.peer_client_cert_auth == Some(true),
            }
        };
        let client_cert_auth = files.client_cert_auth;
        let server =
            ReloadingServerConfig::new(files.clone(), params.clone()).map_err(|e| anyhow::anyhow!("peer TLS: {e}"))?;
        let tls = PeerTls {
            server: Arc::new(server),
            cert_file: files.cert_file,
            key_file: files.key_file,
            trusted_ca_file: files.trusted_ca_file,
            params,
            client_cert_auth,
            allowed_cn: s.peer_cert_allowed_cn.clone(),
            allowed_hostname: s.peer_cert_allowed_hostname.clone(),
        };
        // Fail at start-up, not at the first connection, if the client side does not load.
        tls.client_config().map_err(|e| anyhow::anyhow!("peer TLS (client side): {e}"))?;
        Ok(Some(Arc::new(tls)))
    }

    /// The server config of the peer listeners (reloaded per handshake).
    pub fn server(&self) -> Arc<ReloadingServerConfig> {
        self.server.clone()
    }

    /// Whether a peer's identity is checked at all: without `--peer-client-cert-auth`
    /// peers present no verified certificate, and the port is encrypted but unauthenticated.
    pub fn authenticates_peers(&self) -> bool {
        self.client_cert_auth
    }

    /// The client config for one new outgoing connection, from the files as they are now.
    fn client_config(&self) -> anyhow::Result<Arc<ClientConfig>> {
        match &self.trusted_ca_file {
            Some(ca) => crate::tls::client_config(ca, Some((&self.cert_file, &self.key_file)), &self.params),
            None => {
                // --peer-auto-tls: self-signed certificates, no CA to verify against.
                let certs = crate::tls::load_certs(&self.cert_file)?;
                let key = crate::tls::load_key(&self.key_file)?;
                let provider = self.params.provider();
                let mut config = ClientConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(&self.params.versions)
                    .map_err(|e| anyhow::anyhow!("TLS versions: {e}"))?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoServerVerification(provider)))
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", self.cert_file.display()))?;
                config.alpn_protocols = vec![b"h2".to_vec()];
                Ok(Arc::new(config))
            }
        }
    }

    /// A connector for tonic that opens TLS to `url`'s host and port, verifying the server
    /// certificate for that host.
    pub fn connector(self: &Arc<Self>, url: &str) -> anyhow::Result<TlsConnector> {
        let hostport = url
            .strip_prefix("https://")
            .ok_or_else(|| anyhow::anyhow!("peer URL {url:?} is not https"))?
            .trim_end_matches('/');
        let (host, _) = hostport.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("peer URL {url:?} has no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|e| anyhow::anyhow!("peer URL {url:?}: {e}"))?;
        Ok(TlsConnector { config: self.client_config()?, name, addr: hostport.to_string() })
    }

    /// Checks the certificate of the connection `request` came on (see the module rules).
    /// `member`: the peer URLs of the member the request is bound to, or `None` to accept
    /// a certificate valid for any of `all_members`' peer URL hosts.
    pub fn check_identity<T>(
        &self,
        request: &Request<T>,
        member: Option<&[String]>,
        all_members: &[Vec<String>],
    ) -> Result<(), Status> {
        if !self.client_cert_auth {
            return Ok(());
        }
        let leaf = request
            .extensions()
            .get::<TlsConnectInfo>()
            .and_then(|info| info.peer_certificates.as_ref())
            .and_then(|certs| certs.first().cloned())
            .ok_or_else(|| Status::permission_denied("peer presented no client certificate"))?;
        if let Some(cn) = &self.allowed_cn {
            let theirs = crate::tls::common_name(&leaf);
            if theirs.as_deref() != Some(cn.as_str()) {
                return Err(Status::permission_denied(format!(
                    "peer certificate CN {theirs:?} is not --peer-cert-allowed-cn {cn:?}"
                )));
            }
            return Ok(());
        }
        if let Some(host) = &self.allowed_hostname {
            if !valid_for_host(&leaf, host) {
                return Err(Status::permission_denied(format!(
                    "peer certificate is not valid for --peer-cert-allowed-hostname {host:?}"
                )));
            }
            return Ok(());
        }
        let ok = match member {
            Some(urls) => urls.iter().any(|u| url_host(u).is_some_and(|h| valid_for_host(&leaf, h))),
            None => all_members.iter().flatten().any(|u| url_host(u).is_some_and(|h| valid_for_host(&leaf, h))),
        };
        if !ok {
            return Err(Status::permission_denied(
                "peer certificate is not valid for the host of the member's peer URLs",
            ));
        }
        Ok(())
    }
}

/// Hosts of this member's advertised and listened peer URLs, for the auto-TLS certificate.
fn peer_hosts(args: &ServeArgs) -> Vec<String> {
    let mut hosts: Vec<String> = crate::config::split_urls(&args.initial_advertise_peer_urls)
        .iter()
        .chain(crate::config::split_urls(&args.listen_peer_urls).iter())
        .filter_map(|u| url_host(u).map(str::to_string))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The host of `scheme://host:port[/]`.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1.trim_end_matches('/');
    let (host, _) = rest.rsplit_once(':')?;
    Some(host.trim_start_matches('[').trim_end_matches(']'))
}

/// Whether `cert` is valid for `host` (a DNS name or an IP address, by its SAN).
fn valid_for_host(cert: &CertificateDer<'_>, host: &str) -> bool {
    let Ok(name) = ServerName::try_from(host) else { return false };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(cert) else { return false };
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}

/// A tonic connector opening TLS connections to one peer URL.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    addr: String,
}

impl TlsConnector {
    /// A connector to `addr` (host:port) that verifies the server as `host` with `config`.
    pub fn new(config: Arc<ClientConfig>, host: &str, addr: String) -> anyhow::Result<TlsConnector> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|e| anyhow::anyhow!("host {host:?}: {e}"))?;
        Ok(TlsConnector { config, name, addr })
    }
}

impl tonic::codegen::Service<http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        // The URI tonic passes is the plain-scheme one the channel was built with (see
        // `peer::endpoint`); the address and name to verify are this connector's.
        let (config, name, addr) = (self.config.clone(), self.name.clone(), self.addr.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(&addr).await?;
            // Raft heartbeats and small appends must not wait for Nagle's algorithm.
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// `--peer-auto-tls`: accepts any server certificate (still checking the handshake
/// signatures), since self-signed certificates have no CA to verify against.
#[derive(Debug)]
struct NoServerVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
