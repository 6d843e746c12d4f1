//! TLS building blocks shared by the client listeners and the peer transport: rustls with
//! the `ring` provider, configured from etcd's flags.
//!
//! - [`TlsParams`] turns `--tls-min-version`, `--tls-max-version` and `--cipher-suites`
//!   (etcd's values and Go's suite names) into a rustls crypto provider and protocol list.
//!   rustls speaks only TLS 1.2 and 1.3: `TLS1.0`/`TLS1.1` and suites rustls cannot do are
//!   refused by name, never silently dropped. As in Go, `--cipher-suites` restricts the
//!   TLS 1.2 suites only; TLS 1.3's suites are always all enabled.
//! - [`ReloadingServerConfig`] builds a rustls `ServerConfig` from cert/key/(CA) files and
//!   re-reads them when they change, checked on every handshake (etcd reloads per handshake
//!   too): a rotated certificate is served to the next connection without a restart. The
//!   check is a `stat` of each file (length, mtime, inode), so a handshake does not read or
//!   parse PEM unless a file changed. A new file that does not load (half-written, key not
//!   matching the certificate, ...) keeps the previous config and logs one error per change.
//! - [`client_config`] builds a rustls `ClientConfig` (CA roots, optional client certificate).
//! - [`tls_incoming`] turns accepted TCP connections into TLS connections for tonic's
//!   `serve_with_incoming`: handshakes run in their own tasks, at most
//!   [`HANDSHAKES_IN_FLIGHT_MAX`] at once, each bounded by [`HANDSHAKE_TIMEOUT`], so a slow or
//!   silent client holds neither the accept loop nor other handshakes. ALPN offers `h2` and
//!   `http/1.1`: gRPC and the HTTP endpoints share the port, as in etcd.
//! - [`TlsConnectInfo`] is the connection's identity, put by `conn.rs` into every request's
//!   extensions; [`client_common_name`] reads the client certificate's Common Name from it
//!   (etcd's CN-as-user rule under `--client-cert-auth`).
//! - [`self_signed`] is `--auto-tls`: a self-signed certificate made at start and kept under
//!   the data dir, reused while it exists (as etcd's `SelfCert`).
//!
//! With `--client-cert-auth` a client must present a certificate that chains to the trusted
//! CA and is within its validity period, or the handshake fails; without it the server does
//! not ask for a client certificate (Go's `NoClientCert`, etcd's default), even when a
//! trusted CA is given.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_stream::StreamExt;
use tracing::{error, info, warn};

/// Handshakes one listener runs at once. When they are all busy the listener stops
/// accepting (connections wait in the kernel's backlog) instead of spawning without bound.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;
/// How long a client may take to complete its TLS handshake before the connection is
/// dropped, so a client that connects and stays silent does not hold a handshake slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handshaken but not yet taken by the HTTP server. The server takes them as
/// fast as it can spawn a task, so this only smooths bursts; when full, handshake tasks
/// wait (still holding their slot, so accepting slows down).
const HANDSHAKEN_QUEUE: usize = 64;
/// Pause after a failed `accept` (out of file descriptors, ...), so the loop does not spin
/// while the condition lasts (Go's http server backs off the same way).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// ALPN protocols offered: HTTP/2 for gRPC, HTTP/1.1 for `/health`, `/metrics`, ...
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// TLS protocol versions and cipher suites, from etcd's flags.
#[derive(Clone, Debug)]
pub struct TlsParams {
    /// Protocol versions enabled, from `--tls-min-version` to `--tls-max-version`.
    pub versions: Vec<&'static SupportedProtocolVersion>,
    /// TLS 1.2 suites allowed by `--cipher-suites`; `None`: all of rustls's.
    pub tls12_suites: Option<Vec<SupportedCipherSuite>>,
}

impl Default for TlsParams {
    fn default() -> Self {
        TlsParams { versions: vec![&rustls::version::TLS12, &rustls::version::TLS13], tls12_suites: None }
    }
}

impl TlsParams {
    /// Parses `--tls-min-version`, `--tls-max-version` and `--cipher-suites` (each optional;
    /// empty means unset, as in etcd). Defaults: TLS 1.2 to TLS 1.3, every suite rustls has.
    pub fn parse(min: Option<&str>, max: Option<&str>, cipher_suites: Option<&str>) -> anyhow::Result<Self> {
        let min_name = min.filter(|s| !s.is_empty()).unwrap_or("TLS1.2");
        let max_name = max.filter(|s| !s.is_empty()).unwrap_or("TLS1.3");
        let min = parse_tls_version("--tls-min-version", min_name)?;
        let max = parse_tls_version("--tls-max-version", max_name)?;
        let rank = |v: &SupportedProtocolVersion| u16::from(v.version);
        anyhow::ensure!(rank(min) <= rank(max), "--tls-min-version {min_name} is above --tls-max-version {max_name}");
        let versions: Vec<&'static SupportedProtocolVersion> = [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| rank(v) >= rank(min) && rank(v) <= rank(max))
            .collect();
        let tls12_suites = match cipher_suites.filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(names) => {
                // Go applies the list to TLS 1.2 only; with TLS 1.2 disabled it would
                // configure nothing, which etcd refuses rather than ignores.
                anyhow::ensure!(
                    versions.iter().any(|v| v.version == rustls::ProtocolVersion::TLSv1_2),
                    "--cipher-suites: cipher suites cannot be configured when only TLS1.3 is enabled \
                     (TLS1.3's suites are fixed)"
                );
                Some(parse_cipher_suites(names)?)
            }
        };
        Ok(TlsParams { versions, tls12_suites })
    }

    /// The ring provider restricted to the allowed TLS 1.2 suites.
    pub fn provider(&self) -> Arc<CryptoProvider> {
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(allowed) = &self.tls12_suites {
            provider.cipher_suites.retain(|suite| {
                suite.version().version != rustls::ProtocolVersion::TLSv1_2
                    || allowed.iter().any(|a| a.suite() == suite.suite())
            });
        }
        Arc::new(provider)
    }
}

/// Parses one of etcd's TLS version values for `flag`. rustls has no TLS 1.0 or 1.1, so
/// those are refused with a message saying what is possible.
pub fn parse_tls_version(flag: &str, value: &str) -> anyhow::Result<&'static SupportedProtocolVersion> {
    match value {
        "TLS1.2" => Ok(&rustls::version::TLS12),
        "TLS1.3" => Ok(&rustls::version::TLS13),
        "TLS1.0" | "TLS1.1" => {
            anyhow::bail!("{flag} {value}: not supported; this build's TLS (rustls) speaks only TLS1.2 and TLS1.3")
        }
        other => anyhow::bail!("{flag} {other:?}: unknown TLS version; use TLS1.2 or TLS1.3"),
    }
}

/// Go's names of the TLS 1.2 suites rustls (ring) implements, and the suites.
fn tls12_suite_names() -> [(&'static str, SupportedCipherSuite); 8] {
    use rustls::crypto::ring::cipher_suite as cs;
    [
        ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305", cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
        ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
        ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
        ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
        ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305", cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
        ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
    ]
}

/// Go's names of the TLS 1.3 suites: accepted in `--cipher-suites` (Go accepts them) but,
/// as in Go, they change nothing: TLS 1.3's suites are always all enabled.
const TLS13_SUITE_NAMES: [&str; 3] =
    ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"];

/// Parses `--cipher-suites` (comma-separated Go names) into the TLS 1.2 suites it allows.
/// Names rustls cannot do (CBC, RSA key exchange, 3DES, RC4, ...) and unknown names are
/// refused, all named in one message.
pub fn parse_cipher_suites(names: &str) -> anyhow::Result<Vec<SupportedCipherSuite>> {
    let table = tls12_suite_names();
    let mut suites: Vec<SupportedCipherSuite> = Vec::new();
    let mut refused = Vec::new();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if let Some((_, suite)) = table.iter().find(|(n, _)| *n == name) {
            if !suites.iter().any(|s| s.suite() == suite.suite()) {
                suites.push(*suite);
            }
        } else if !TLS13_SUITE_NAMES.contains(&name) {
            refused.push(name);
        }
    }
    if !refused.is_empty() {
        let supported: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
        anyhow::bail!(
            "--cipher-suites: not supported by this build's TLS (rustls): {}; supported: {}",
            refused.join(", "),
            supported.join(", ")
        );
    }
    anyhow::ensure!(
        !suites.is_empty(),
        "--cipher-suites {names:?} names no TLS1.2 suite; TLS1.3's suites cannot be configured"
    );
    Ok(suites)
}

/// The files a TLS server is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM certificate chain, leaf first (`--cert-file`).
    pub cert_file: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 or SEC1 (`--key-file`).
    pub key_file: PathBuf,
    /// PEM CA certificates that sign client certificates (`--trusted-ca-file`).
    pub trusted_ca_file: Option<PathBuf>,
    /// Require and verify a client certificate (`--client-cert-auth`).
    pub client_cert_auth: bool,
}

impl ServerTlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(self.cert_file.as_path()), Some(self.key_file.as_path()), self.trusted_ca_file.as_deref()]
            .into_iter()
            .flatten()
    }
}

/// Reads every certificate of a PEM file; an empty file is an error.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no PEM certificate in the file", path.display());
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Reads a PEM file of CA certificates into a root store.
pub fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Builds a server config from the files as they are now (no reloading; see
/// [`ReloadingServerConfig`]). Fails if a file is missing or unreadable, the key does not
/// match the certificate, or `client_cert_auth` is asked without a CA.
pub fn server_config(files: &ServerTlsFiles, params: &TlsParams) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = params.provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&params.versions)
        .map_err(|e| anyhow::anyhow!("TLS versions: {e}"))?;
    let builder = match (&files.trusted_ca_file, files.client_cert_auth) {
        (Some(ca), true) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider)
                    .build()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, true) => anyhow::bail!("--client-cert-auth needs --trusted-ca-file (the CA of client certificates)"),
        // etcd (Go's NoClientCert) asks for no client certificate without --client-cert-auth.
        (_, false) => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(load_certs(&files.cert_file)?, load_key(&files.key_file)?)
        .map_err(|e| anyhow::anyhow!("{} and {}: {e}", files.cert_file.display(), files.key_file.display()))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Builds a client config: trust `ca_file`'s certificates only, present `cert_key`
/// (certificate and key files) if given. ALPN `h2` (gRPC).
pub fn client_config(
    ca_file: &Path,
    cert_key: Option<(&Path, &Path)>,
    params: &TlsParams,
) -> anyhow::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(params.provider())
        .with_protocol_versions(&params.versions)
        .map_err(|e| anyhow::anyhow!("TLS versions: {e}"))?
        .with_root_certificates(load_roots(ca_file)?);
    let mut config = match cert_key {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| anyhow::anyhow!("{} and {}: {e}", cert.display(), key.display()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What identifies a file's version without reading it: a rewrite changes the length or
/// mtime, a replacement by rename changes the inode.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamps(files: &ServerTlsFiles) -> Vec<Option<Stamp>> {
    use std::os::unix::fs::MetadataExt;
    files
        .paths()
        .map(|p| std::fs::metadata(p).ok().map(|m| Stamp { len: m.len(), modified: m.modified().ok(), inode: m.ino() }))
        .collect()
}

/// A server config that follows its files: [`current`](Self::current) re-checks them and
/// reloads on change. Built once per listener set and shared.
pub struct ReloadingServerConfig {
    files: ServerTlsFiles,
    params: TlsParams,
    state: Mutex<ReloadState>,
}

struct ReloadState {
    config: Arc<ServerConfig>,
    /// The file versions `config` was built from.
    loaded: Vec<Option<Stamp>>,
    /// File versions that failed to load: not retried (nor logged again) until they change.
    failed: Option<Vec<Option<Stamp>>>,
}

impl ReloadingServerConfig {
    /// Loads the files; fails (at start-up) if they do not load.
    pub fn new(files: ServerTlsFiles, params: TlsParams) -> anyhow::Result<Self> {
        let loaded = stamps(&files);
        let config = server_config(&files, &params)?;
        Ok(ReloadingServerConfig { files, params, state: Mutex::new(ReloadState { config, loaded, failed: None }) })
    }

    /// The files this config is built from.
    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// The config for a new handshake: the files' current contents if they changed and load,
    /// else the last config that loaded.
    pub fn current(&self) -> Arc<ServerConfig> {
        let now = stamps(&self.files);
        let mut state = self.state.lock();
        if now == state.loaded || state.failed.as_ref() == Some(&now) {
            return state.config.clone();
        }
        // Changed since the last load or the last failure: rebuild. The lock is held while
        // the files are parsed so concurrent handshakes do not all reload the same change;
        // this happens once per change, not per handshake.
        match server_config(&self.files, &self.params) {
            Ok(config) => {
                info!(cert_file = %self.files.cert_file.display(), "TLS certificate files changed; reloaded");
                state.config = config;
                state.loaded = now;
                state.failed = None;
            }
            Err(e) => {
                error!(error = %e, "TLS certificate files changed but do not load; serving the previous ones");
                state.failed = Some(now);
            }
        }
        state.config.clone()
    }
}

/// `--auto-tls`: the self-signed certificate and key under `dir` (`cert.pem`, `key.pem`),
/// made now if either is missing (ECDSA P-256, CN `etcd`, valid for `validity_years` from
/// now, subject alternative names `hosts`), as etcd's `SelfCert` does. Existing files are
/// reused, so a restart keeps the certificate clients may have pinned.
pub fn self_signed(dir: &Path, hosts: &[String], validity_years: u32) -> anyhow::Result<ServerTlsFiles> {
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    let files = ServerTlsFiles {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
        trusted_ca_file: None,
        client_cert_auth: false,
    };
    if cert_file.exists() && key_file.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())
        .map_err(|e| anyhow::anyhow!("--auto-tls: hosts {hosts:?}: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "etcd");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "etcd");
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(365 * i64::from(validity_years.max(1)));
    let key = rcgen::KeyPair::generate().map_err(|e| anyhow::anyhow!("--auto-tls: key: {e}"))?;
    let cert = params.self_signed(&key).map_err(|e| anyhow::anyhow!("--auto-tls: certificate: {e}"))?;
    write_private(&key_file, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_file, cert.pem()).map_err(|e| anyhow::anyhow!("{}: {e}", cert_file.display()))?;
    info!(cert_file = %cert_file.display(), "--auto-tls: generated a self-signed certificate");
    Ok(files)
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    f.write_all(bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(())
}

/// The Common Name of a DER certificate's subject, if it has one that is a string.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// The URIs among a certificate's subject alternative names (a SPIFFE ID, say), in order.
pub fn san_uris(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else { return Vec::new() };
    let Ok(Some(san)) = parsed.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect()
}

/// Who is at the other end of a TLS connection; the HTTP server (`conn.rs`) puts it in every
/// request's extensions (see [`client_common_name`]).
#[derive(Clone, Debug)]
pub struct TlsConnectInfo {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// The address the client connected to.
    pub local_addr: Option<SocketAddr>,
    /// The client's certificate chain, leaf first, as verified in the handshake; `None`
    /// when the client sent none (possible only without `--client-cert-auth`).
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The Common Name of the client's leaf certificate.
    pub common_name: Option<String>,
    /// The URIs among the leaf certificate's subject alternative names.
    pub san_uris: Vec<String>,
}

/// The Common Name of the verified client certificate of the connection `req` came on;
/// `None` on a plain connection or when the client sent no certificate.
pub fn client_common_name<T>(req: &tonic::Request<T>) -> Option<String> {
    req.extensions().get::<TlsConnectInfo>().and_then(|info| info.common_name.clone())
}

/// A server-side TLS connection with its identity, for the HTTP server (`conn.rs`).
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl TlsConn {
    fn new(stream: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        let (tcp, session) = stream.get_ref();
        let peer_certificates = session.peer_certificates().map(|c| Arc::new(c.to_vec()));
        let leaf = peer_certificates.as_ref().and_then(|c| c.first());
        let common_name = leaf.and_then(common_name);
        let san_uris = leaf.map(san_uris).unwrap_or_default();
        let info = TlsConnectInfo {
            remote_addr: tcp.peer_addr().ok(),
            local_addr: tcp.local_addr().ok(),
            peer_certificates,
            common_name,
            san_uris,
        };
        TlsConn { stream, info }
    }

    /// The connection's identity.
    pub fn info(&self) -> &TlsConnectInfo {
        &self.info
    }
}

impl std::os::fd::AsRawFd for TlsConn {
    /// The TCP socket the TLS records go through.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.stream.get_ref().0.as_raw_fd()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> TlsConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// TLS connections from `incoming` (accepted TCP connections, with their socket options
/// already set), handshaken with `tls`'s config as it is at each handshake. The accept loop
/// runs in its own task until the returned stream is dropped or `incoming` ends; a failed
/// handshake is logged and dropped, never returned, so the server sees only good connections.
pub fn tls_incoming<I>(
    incoming: I,
    tls: Arc<ReloadingServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, io::Error>>
where
    I: tokio_stream::Stream<Item = Result<TcpStream, io::Error>> + Send + Unpin + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(HANDSHAKEN_QUEUE);
    tokio::spawn(accept_loop(incoming, tls, tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept_loop<I>(
    mut incoming: I,
    tls: Arc<ReloadingServerConfig>,
    tx: tokio::sync::mpsc::Sender<Result<TlsConn, io::Error>>,
) where
    I: tokio_stream::Stream<Item = Result<TcpStream, io::Error>> + Send + Unpin + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    loop {
        // A slot first: with every slot busy, new connections wait in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = tx.closed() => return,
        };
        let tcp = tokio::select! {
            next = incoming.next() => match next {
                None => return,
                Some(Ok(tcp)) => tcp,
                Some(Err(e)) => {
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            _ = tx.closed() => return,
        };
        // The config is picked per handshake: a rotated certificate applies from here on.
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let tx = tx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let remote = tcp.peer_addr().ok();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // The server may be gone (shutting down): the connection is dropped.
                    let _ = tx.send(Ok(TlsConn::new(stream))).await;
                }
                // etcd logs every rejected handshake too ("rejected connection").
                Ok(Err(e)) => info!(remote = ?remote, error = %e, "rejected TLS connection"),
                Err(_) => info!(remote = ?remote, "rejected TLS connection: handshake timed out"),
            }
        });
    }
}
