//! `plinth serve` configuration: etcd's flag names and defaults, so that an etcd manifest
//! works by swapping the binary.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::conn::Keepalive;

/// etcd's default request limit: 1.5 MiB.
pub const MAX_REQUEST_BYTES_DEFAULT: usize = 1536 * 1024;
/// gRPC framing overhead etcd allows on top of `--max-request-bytes`.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// etcd's gRPC message limit for a request limit of `max_request_bytes`: the largest request
/// message its server decodes, and the size at which its watch server cuts fragments.
pub fn grpc_message_bytes_max(max_request_bytes: usize) -> usize {
    max_request_bytes + GRPC_OVERHEAD_BYTES
}

/// Flags of `plinth serve`. Names follow etcd. Flags that only tune what etcd does differently
/// (`--snapshot-count`, `--logger`, ...) are accepted so manifests keep working; security
/// flags this build does not serve are refused at start-up (see [`SecurityArgs`]), never
/// accepted and ignored.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Human-readable name of this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Directory of the WAL and the store. Default: `<name>.plinth`.
    #[arg(long)]
    pub data_dir: Option<String>,
    /// URLs to listen on for client traffic (gRPC and HTTP).
    #[arg(long, default_value = "http://localhost:2379")]
    pub listen_client_urls: String,
    /// Client URLs advertised to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2379")]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic.
    #[arg(long, default_value = "http://localhost:2380")]
    pub listen_peer_urls: String,
    /// Peer URLs advertised to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration, `name=peer-url,...`. Ignored when the data dir exists.
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// `new` or `existing`. Ignored when the data dir exists.
    #[arg(long, default_value = "new")]
    pub initial_cluster_state: String,
    /// Token that makes the cluster id unique among clusters bootstrapped from the same config.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Per-tenant backend quota in bytes; 0 means the default (8 GiB).
    #[arg(long, default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Serve tenant number k's plaintext clients on the client host (the host of the first
    /// `--listen-client-urls`) at port P + k, opened when the tenant is created and closed
    /// when it is deleted. Unset: tenants are reached by client certificate only.
    #[arg(long)]
    pub tenant_client_port_base: Option<u16>,
    /// Common Name of the client certificate of the cluster admin, who may use the tenant
    /// admin API (`plinth tenant ...`) besides the root user when auth is on.
    #[arg(long)]
    pub admin_cn: Option<String>,
    /// Whether a client certificate whose identity maps to no tenant is served the default
    /// tenant (`true`, so a plain `plinth serve` behaves as etcd) or refused.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub default_tenant_for_unmapped: bool,
    /// `periodic` or `revision`.
    #[arg(long, default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// Retention for auto compaction: a duration (`1h`, `30m`) or hours for periodic mode, a
    /// revision count for revision mode; `0` disables it.
    #[arg(long, default_value = "0")]
    pub auto_compaction_retention: String,
    /// Largest client request in bytes.
    #[arg(long, default_value_t = MAX_REQUEST_BYTES_DEFAULT)]
    pub max_request_bytes: usize,
    /// Most operations in one txn branch.
    #[arg(long, default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Raft election timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Extra URLs serving only the HTTP endpoints (`/health`, `/metrics`, ...).
    #[arg(long)]
    pub listen_metrics_urls: Option<String>,
    /// Interval of watch progress notifications (Go duration, e.g. `10m`, `5s`).
    #[arg(
        long = "experimental-watch-progress-notify-interval",
        alias = "watch-progress-notify-interval",
        default_value = "10m"
    )]
    pub watch_progress_notify_interval: String,
    /// `debug`, `info`, `warn` or `error`.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Accepted for compatibility with etcd manifests; Plinth always logs structured lines.
    #[arg(long)]
    pub logger: Option<String>,
    /// Accepted for compatibility; Plinth logs to standard error.
    #[arg(long)]
    pub log_outputs: Option<String>,
    /// Accepted for compatibility; Plinth purges its log after the store flushes.
    #[arg(long)]
    pub snapshot_count: Option<u64>,
    /// `basic` or `extensive`: `extensive` adds etcd's gRPC handling-time histogram
    /// (`grpc_server_handling_seconds`) to `/metrics`.
    #[arg(long, default_value = "basic", value_parser = ["basic", "extensive"])]
    pub metrics: String,
    /// Before serving, compare this member's hash of the default keyspace with every
    /// reachable peer's at the same revision, and refuse to start on a mismatch (etcd's
    /// initial corruption check; kubeadm's manifests turn it on).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub experimental_initial_corrupt_check: Option<bool>,
    /// How often the server pings an idle client connection (Go duration). With it or
    /// `--grpc-keepalive-timeout` at 0, grpc-go's defaults (2h, 20s) apply, as in etcd.
    #[arg(long, default_value = "2h")]
    pub grpc_keepalive_interval: String,
    /// How long the server waits for the answer to its ping before it closes the client
    /// connection (Go duration).
    #[arg(long, default_value = "20s")]
    pub grpc_keepalive_timeout: String,
    /// Accepted for compatibility (Go duration): etcd closes the connection of a client that
    /// pings more often than this; Plinth's HTTP/2 server answers every ping.
    #[arg(long, default_value = "5s")]
    pub grpc_keepalive_min_time: String,
    /// Raft's pre-vote phase (etcd 3.5's default). Plinth's members always run it, so
    /// `--pre-vote` and `--pre-vote=true` are accepted and `--pre-vote=false` is refused.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub pre_vote: Option<bool>,
    /// Entries kept in the Raft log below the durably applied index, so a slow follower
    /// catches up from the log rather than a snapshot (etcd's flag of the same name).
    #[arg(long, default_value_t = 5000)]
    pub experimental_snapshot_catchup_entries: u64,
    /// How often the store is flushed and the log purged below it, in milliseconds.
    #[arg(long, default_value_t = 10_000, hide = true)]
    pub experimental_log_purge_interval_ms: u64,
    /// Largest size of one WAL segment file, in bytes (tests make it small to roll often).
    #[arg(long, default_value_t = 64 << 20, hide = true, value_parser = clap::value_parser!(u64).range(1024..))]
    pub experimental_wal_segment_bytes: u64,
    /// Pipelined WAL writes: the Raft driver goes on with other groups' proposals and reads
    /// while one pass's entries are synced (`false`: every pass waits for its sync).
    #[arg(long, default_value_t = true, hide = true, action = clap::ArgAction::Set)]
    pub experimental_wal_pipeline: bool,
    /// Memory for the cache of live keys that writes read their previous version from, in
    /// bytes, shared by every tenant of this member (0 turns it off).
    #[arg(long, default_value_t = 64 << 20)]
    pub live_cache_bytes: usize,
    /// Proposals one tenant may have in flight on this member while it is heavy (many key-value
    /// requests in flight) and another tenant is active: its further writes wait their turn, so
    /// the Raft, WAL and apply work that every tenant shares holds few of its entries when a
    /// quieter tenant's write arrives. 0: no cap (the heavy tenant keeps its full rate).
    #[arg(long, default_value_t = crate::node::lanes::HEAVY_PROPOSALS_MAX)]
    pub heavy_tenant_max_proposals: usize,
    /// Keep every tenant's live keys counted by segments, so a range's `count` does not walk
    /// the whole range (`false`: every count walks it).
    #[arg(long, default_value_t = true, hide = true, action = clap::ArgAction::Set)]
    pub experimental_key_counts: bool,
    /// Accepted for compatibility.
    #[arg(long)]
    pub feature_gates: Option<String>,
    /// Take automated backups of every tenant into this local directory.
    #[arg(long, conflicts_with = "backup_url")]
    pub backup_dir: Option<PathBuf>,
    /// Take automated backups of every tenant into this target: `s3://bucket/prefix`
    /// (endpoint, region and credentials from the `AWS_*` environment variables) or
    /// `file:///path`.
    #[arg(long)]
    pub backup_url: Option<String>,
    /// How often each tenant gets a full backup (Go duration).
    #[arg(long, default_value = "24h")]
    pub backup_full_interval: String,
    /// How often each tenant gets a delta backup of its changes since the last one (Go
    /// duration).
    #[arg(long, default_value = "5m")]
    pub backup_delta_interval: String,
    /// Which backups to keep: `N` full backups with their deltas (`7`, `fulls=7`), or the
    /// newest full backup of each of the last hours/days/weeks (`hourly=24,daily=7,weekly=4`),
    /// comma-separated. Unset: keep everything.
    #[arg(long)]
    pub backup_retention: Option<String>,
    /// The TLS, client-certificate and auth flags of etcd. Those this build serves are
    /// checked together at start-up (`validate`); the others, and TLS flags with no https URL
    /// to apply to, are refused rather than accepted and ignored: a manifest that asks for
    /// certificates must not get a server that silently serves without them.
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// etcd's security flags. Those this build does not serve are refused with a message naming
/// them (see [`SecurityArgs::refused`]). Boolean flags take etcd's forms (`--client-cert-auth`,
/// `--client-cert-auth=true`); `=false` asks for nothing and is accepted.
#[derive(Debug, Clone, Default, Args)]
pub struct SecurityArgs {
    /// Certificate (PEM chain, leaf first) served on `https://` client URLs; re-read when it
    /// changes (see `tls.rs`).
    #[arg(long)]
    pub cert_file: Option<String>,
    /// Private key of `--cert-file` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long)]
    pub key_file: Option<String>,
    /// CA (PEM) of client certificates, used with `--client-cert-auth`.
    #[arg(long)]
    pub trusted_ca_file: Option<String>,
    /// Require a client certificate signed by `--trusted-ca-file` at the TLS handshake.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub client_cert_auth: Option<bool>,
    /// Refused: client certificate revocation list.
    #[arg(long)]
    pub client_crl_file: Option<String>,
    /// Refused: allowed hostname of client certificates.
    #[arg(long)]
    pub client_cert_allowed_hostname: Option<String>,
    /// Refused: certificate this member presents as a client.
    #[arg(long)]
    pub client_cert_file: Option<String>,
    /// Refused: key this member uses as a client.
    #[arg(long)]
    pub client_key_file: Option<String>,
    /// Serve `https://` client URLs with a self-signed certificate made at start under
    /// `<data-dir>/fixtures/client` when `--cert-file`/`--key-file` are not given.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub auto_tls: Option<bool>,
    /// Validity of `--auto-tls` certificates, in years (etcd's default: 1).
    #[arg(long)]
    pub self_signed_cert_validity: Option<String>,
    /// Certificate (PEM chain, leaf first) served on `https://` peer URLs and presented to
    /// the other members as a client; re-read when it changes (see `node/peer_tls.rs`).
    #[arg(long)]
    pub peer_cert_file: Option<String>,
    /// Private key of `--peer-cert-file`.
    #[arg(long)]
    pub peer_key_file: Option<String>,
    /// CA (PEM) of the other members' certificates: verifies their server certificates and,
    /// with `--peer-client-cert-auth`, their client certificates.
    #[arg(long)]
    pub peer_trusted_ca_file: Option<String>,
    /// Require a peer client certificate signed by `--peer-trusted-ca-file` at the handshake,
    /// and bind it to the member it speaks for (see `node/peer_tls.rs`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub peer_client_cert_auth: Option<bool>,
    /// Serve `https://` peer URLs with a self-signed certificate made at start under
    /// `<data-dir>/fixtures/peer` (encrypted, not authenticated).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub peer_auto_tls: Option<bool>,
    /// With `--peer-client-cert-auth`: a peer certificate's Common Name must equal this.
    #[arg(long)]
    pub peer_cert_allowed_cn: Option<String>,
    /// With `--peer-client-cert-auth`: a peer certificate must be valid for this host name.
    #[arg(long)]
    pub peer_cert_allowed_hostname: Option<String>,
    /// Refused: peer certificate revocation list.
    #[arg(long)]
    pub peer_crl_file: Option<String>,
    /// Refused: certificate this member presents to its peers as a client.
    #[arg(long)]
    pub peer_client_cert_file: Option<String>,
    /// Refused: key this member uses as a peer client.
    #[arg(long)]
    pub peer_client_key_file: Option<String>,
    /// Refused when true: skip SAN verification of peer client certificates.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub experimental_peer_skip_client_san_verification: Option<bool>,
    /// TLS 1.2 cipher suites allowed, by Go's names (comma-separated); suites rustls cannot
    /// do are refused by name. TLS 1.3's suites are fixed, as in Go.
    #[arg(long)]
    pub cipher_suites: Option<String>,
    /// Lowest TLS version: `TLS1.2` (default) or `TLS1.3`; `TLS1.0`/`TLS1.1` are refused.
    #[arg(long)]
    pub tls_min_version: Option<String>,
    /// Highest TLS version: `TLS1.2` or `TLS1.3` (default).
    #[arg(long)]
    pub tls_max_version: Option<String>,
    /// Auth token provider: `simple` (etcd's default; see `auth.rs`).
    #[arg(long)]
    pub auth_token: Option<String>,
    /// Lifetime of a simple token without use, in seconds (etcd's default: 300).
    #[arg(long)]
    pub auth_token_ttl: Option<String>,
    /// bcrypt cost of the password hashes this member makes (etcd's default: 10).
    #[arg(long)]
    pub bcrypt_cost: Option<String>,
}

impl SecurityArgs {
    /// The flags that were given and ask for something this build does not do, by their
    /// etcd names, in the order above.
    pub fn refused(&self) -> Vec<&'static str> {
        let on = |b: &Option<bool>| *b == Some(true);
        [
            ("--client-crl-file", self.client_crl_file.is_some()),
            ("--client-cert-allowed-hostname", self.client_cert_allowed_hostname.is_some()),
            ("--client-cert-file", self.client_cert_file.is_some()),
            ("--client-key-file", self.client_key_file.is_some()),
            ("--peer-crl-file", self.peer_crl_file.is_some()),
            ("--peer-client-cert-file", self.peer_client_cert_file.is_some()),
            ("--peer-client-key-file", self.peer_client_key_file.is_some()),
            (
                "--experimental-peer-skip-client-san-verification",
                on(&self.experimental_peer_skip_client_san_verification),
            ),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(flag, _)| flag)
        .collect()
    }
}

impl SecurityArgs {
    /// The auth settings from `--auth-token`, `--auth-token-ttl` and `--bcrypt-cost`.
    pub fn auth_config(&self) -> anyhow::Result<crate::auth_config::AuthConfig> {
        crate::auth_config::AuthConfig::from_flags(
            self.auth_token.as_deref(),
            self.auth_token_ttl.as_deref(),
            self.bcrypt_cost.as_deref(),
            self.client_cert_auth == Some(true),
        )
    }
}

impl ServeArgs {
    /// The data dir, defaulting like etcd to `<name>.plinth`.
    pub fn data_dir(&self) -> String {
        self.data_dir.clone().unwrap_or_else(|| format!("{}.plinth", self.name))
    }

    /// Client listeners: host:port to bind and whether the URL is `https://` (TLS).
    pub fn client_listeners(&self) -> anyhow::Result<Vec<(String, bool)>> {
        split_urls(&self.listen_client_urls).into_iter().map(|u| Ok((url_host_port(&u)?, is_https(&u)))).collect()
    }

    /// The TLS versions and suites of `--tls-min-version`, `--tls-max-version` and
    /// `--cipher-suites` (refusing what rustls cannot do).
    pub fn tls_params(&self) -> anyhow::Result<crate::tls::TlsParams> {
        let s = &self.security;
        crate::tls::TlsParams::parse(
            s.tls_min_version.as_deref(),
            s.tls_max_version.as_deref(),
            s.cipher_suites.as_deref(),
        )
    }

    /// `--self-signed-cert-validity` in years (etcd's default: 1).
    pub fn self_signed_cert_validity(&self) -> anyhow::Result<u32> {
        match self.security.self_signed_cert_validity.as_deref().map(str::trim) {
            None | Some("") => Ok(1),
            Some(v) => match v.parse::<u32>() {
                Ok(years) if years > 0 => Ok(years),
                _ => anyhow::bail!("--self-signed-cert-validity {v:?}: expected a positive number of years"),
            },
        }
    }

    /// Whether `--auto-tls` asks for a self-signed certificate: it does only when no
    /// `--cert-file`/`--key-file` are given (etcd ignores it otherwise).
    pub fn client_auto_tls(&self) -> bool {
        self.security.auto_tls == Some(true) && self.security.cert_file.is_none() && self.security.key_file.is_none()
    }

    /// The client TLS flags, checked together before anything starts: https URLs need a
    /// certificate, a certificate needs its key, client-certificate auth needs a CA, https
    /// metrics URLs are not served, and the version and suite flags must be doable.
    fn validate_client_tls(&self) -> anyhow::Result<()> {
        let s = &self.security;
        self.tls_params()?;
        self.self_signed_cert_validity()?;
        match (&s.cert_file, &s.key_file) {
            (Some(_), None) => anyhow::bail!("--cert-file needs --key-file"),
            (None, Some(_)) => anyhow::bail!("--key-file needs --cert-file"),
            _ => {}
        }
        let client_https = split_urls(&self.listen_client_urls).iter().any(|u| is_https(u));
        let peer_https = split_urls(&self.listen_peer_urls).iter().any(|u| is_https(u));
        // etcd ignores TLS flags that have nothing to apply to (with a warning); Plinth refuses
        // them, so a manifest that asks for TLS never gets a member serving plain HTTP.
        let client_only = [
            ("--cert-file", s.cert_file.is_some()),
            ("--key-file", s.key_file.is_some()),
            ("--trusted-ca-file", s.trusted_ca_file.is_some()),
            ("--client-cert-auth", s.client_cert_auth == Some(true)),
            ("--auto-tls", s.auto_tls == Some(true)),
        ];
        let client_or_peer = [
            ("--cipher-suites", s.cipher_suites.is_some()),
            ("--tls-min-version", s.tls_min_version.is_some()),
            ("--tls-max-version", s.tls_max_version.is_some()),
            ("--self-signed-cert-validity", s.self_signed_cert_validity.is_some()),
        ];
        if !client_https {
            if let Some((flag, _)) = client_only.iter().find(|(_, set)| *set) {
                anyhow::bail!("{flag}: client TLS needs an https:// URL in --listen-client-urls");
            }
            if !peer_https {
                if let Some((flag, _)) = client_or_peer.iter().find(|(_, set)| *set) {
                    anyhow::bail!("{flag}: no TLS is served: it needs https:// client or peer URLs");
                }
            }
        }
        let has_cert = s.cert_file.is_some() || self.client_auto_tls();
        for (flag, urls) in [
            ("--listen-client-urls", &self.listen_client_urls),
            ("--advertise-client-urls", &self.advertise_client_urls),
        ] {
            if let Some(url) = split_urls(urls).into_iter().find(|u| is_https(u)) {
                // etcd: "TLS key/cert (--cert-file, --key-file) must be provided for client url
                // ... with HTTPS scheme".
                anyhow::ensure!(
                    has_cert || flag == "--advertise-client-urls",
                    "{flag}: {url:?}: https needs a certificate: give --cert-file and --key-file (or --auto-tls)"
                );
            }
        }
        if s.client_cert_auth == Some(true) {
            anyhow::ensure!(
                s.trusted_ca_file.is_some(),
                "--client-cert-auth needs --trusted-ca-file (the CA that signs client certificates)"
            );
        }
        if let Some(url) =
            self.listen_metrics_urls.as_deref().and_then(|u| split_urls(u).into_iter().find(|u| is_https(u)))
        {
            anyhow::bail!(
                "--listen-metrics-urls: {url:?}: metrics URLs are served as plain HTTP only; use http:// \
                 (/metrics and /health are also served over TLS on the https client URLs)"
            );
        }
        Ok(())
    }

    /// Whether this member's peer URLs are `https://` (peer TLS). Listen and advertised peer
    /// URLs must agree (checked by `validate`).
    pub fn peer_https(&self) -> bool {
        split_urls(&self.listen_peer_urls).iter().any(|u| u.starts_with("https://"))
    }

    /// The peer TLS flags, checked together before anything starts (etcd's rules where it
    /// has them; where etcd would ignore a flag, it is refused instead): https peer URLs
    /// need a certificate, certificate flags need https peer URLs, client-certificate auth
    /// needs a CA, and at most one of the allowed CN and hostname.
    fn validate_peer_tls(&self) -> anyhow::Result<()> {
        let s = &self.security;
        let own: Vec<String> = split_urls(&self.listen_peer_urls)
            .into_iter()
            .chain(split_urls(&self.initial_advertise_peer_urls))
            .collect();
        let https = self.peer_https();
        if let Some(url) = own.iter().find(|u| u.starts_with("https://") != https) {
            anyhow::bail!(
                "--listen-peer-urls and --initial-advertise-peer-urls must be all http:// or all https://, not {url:?}"
            );
        }
        match (&s.peer_cert_file, &s.peer_key_file) {
            (Some(_), None) => anyhow::bail!("--peer-cert-file needs --peer-key-file"),
            (None, Some(_)) => anyhow::bail!("--peer-key-file needs --peer-cert-file"),
            _ => {}
        }
        let auto = s.peer_auto_tls == Some(true);
        let given: Vec<&str> = [
            ("--peer-cert-file", s.peer_cert_file.is_some()),
            ("--peer-trusted-ca-file", s.peer_trusted_ca_file.is_some()),
            ("--peer-client-cert-auth", s.peer_client_cert_auth == Some(true)),
            ("--peer-auto-tls", auto),
            ("--peer-cert-allowed-cn", s.peer_cert_allowed_cn.is_some()),
            ("--peer-cert-allowed-hostname", s.peer_cert_allowed_hostname.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect();
        if !https {
            // A certificate flag with plain peer URLs would protect nothing: refuse it
            // rather than serve plain HTTP/2 to a manifest that asked for TLS.
            if let Some(flag) = given.first() {
                anyhow::bail!(
                    "{flag}: peer TLS needs https:// peer URLs (--listen-peer-urls, --initial-advertise-peer-urls)"
                );
            }
            return Ok(());
        }
        match (s.peer_cert_file.is_some(), auto) {
            (false, false) => anyhow::bail!(
                "--listen-peer-urls: https needs a certificate: give --peer-cert-file and --peer-key-file (or --peer-auto-tls)"
            ),
            (true, true) => anyhow::bail!("--peer-auto-tls: give either it or --peer-cert-file/--peer-key-file, not both"),
            (true, false) => anyhow::ensure!(
                s.peer_trusted_ca_file.is_some(),
                "--peer-cert-file: https peer URLs need --peer-trusted-ca-file to verify the other members' \
                 certificates (or use --peer-auto-tls)"
            ),
            (false, true) => anyhow::ensure!(
                s.peer_trusted_ca_file.is_none() && s.peer_client_cert_auth != Some(true),
                "--peer-auto-tls: self-signed peer certificates cannot be verified; it does not go with \
                 --peer-trusted-ca-file or --peer-client-cert-auth"
            ),
        }
        anyhow::ensure!(
            !(s.peer_cert_allowed_cn.is_some() && s.peer_cert_allowed_hostname.is_some()),
            "--peer-cert-allowed-cn and --peer-cert-allowed-hostname cannot be given together"
        );
        if s.peer_cert_allowed_cn.is_some() || s.peer_cert_allowed_hostname.is_some() {
            anyhow::ensure!(
                s.peer_client_cert_auth == Some(true),
                "--peer-cert-allowed-cn and --peer-cert-allowed-hostname check peer client certificates: they need \
                 --peer-client-cert-auth"
            );
        }
        Ok(())
    }

    /// Host:port pairs to bind for client traffic.
    pub fn client_listen_addrs(&self) -> anyhow::Result<Vec<String>> {
        split_urls(&self.listen_client_urls).into_iter().map(|u| url_host_port(&u)).collect()
    }

    /// Host:port pairs to bind for peer traffic.
    pub fn peer_listen_addrs(&self) -> anyhow::Result<Vec<String>> {
        split_urls(&self.listen_peer_urls).into_iter().map(|u| url_host_port(&u)).collect()
    }

    /// Host:port pairs to bind for HTTP-only metrics traffic.
    pub fn metrics_listen_addrs(&self) -> anyhow::Result<Vec<String>> {
        match &self.listen_metrics_urls {
            None => Ok(Vec::new()),
            Some(urls) => split_urls(urls).into_iter().map(|u| url_host_port(&u)).collect(),
        }
    }

    /// The client listeners' HTTP/2 pings, from `--grpc-keepalive-interval` and
    /// `--grpc-keepalive-timeout` ([`Keepalive::from_flags`]).
    pub fn client_keepalive(&self) -> anyhow::Result<Keepalive> {
        let interval = parse_go_duration(&self.grpc_keepalive_interval)
            .map_err(|e| anyhow::anyhow!("--grpc-keepalive-interval: {e}"))?;
        let timeout = parse_go_duration(&self.grpc_keepalive_timeout)
            .map_err(|e| anyhow::anyhow!("--grpc-keepalive-timeout: {e}"))?;
        Ok(Keepalive::from_flags(interval, timeout))
    }

    /// The progress notification interval.
    pub fn progress_notify_interval(&self) -> anyhow::Result<Duration> {
        parse_go_duration(&self.watch_progress_notify_interval)
    }

    /// Rejects combinations Plinth cannot serve, before anything starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.security.auth_config()?;
        // Security first: nothing else is worth checking for a member that would serve
        // without the protection its manifest asked for.
        if let Some(flag) = self.security.refused().first() {
            anyhow::bail!(
                "{flag}: not supported by this build (the README's TLS sections list what is); remove the flag"
            );
        }
        self.validate_client_tls()?;
        self.validate_peer_tls()?;
        // Hibernation of idle groups relies on pre-vote (raft-log's `hibernate.rs`): a follower
        // that missed its leader's sleep notice pre-campaigns, is refused, and goes back to
        // following without raising the term.
        anyhow::ensure!(
            self.pre_vote != Some(false),
            "--pre-vote=false: not supported; Plinth's members always run Raft's pre-vote phase (etcd 3.5's \
             default); remove the flag"
        );
        anyhow::ensure!(self.max_request_bytes > 0, "--max-request-bytes must be positive");
        anyhow::ensure!(self.max_txn_ops > 0, "--max-txn-ops must be positive");
        anyhow::ensure!(self.heartbeat_interval > 0, "--heartbeat-interval must be positive");
        anyhow::ensure!(
            self.election_timeout >= 5 * self.heartbeat_interval,
            "--election-timeout must be at least 5 times --heartbeat-interval"
        );
        anyhow::ensure!(
            matches!(self.initial_cluster_state.as_str(), "new" | "existing"),
            "--initial-cluster-state must be 'new' or 'existing'"
        );
        anyhow::ensure!(
            matches!(self.auto_compaction_mode.as_str(), "periodic" | "revision"),
            "--auto-compaction-mode must be 'periodic' or 'revision'"
        );
        self.progress_notify_interval()?;
        self.client_keepalive()?;
        parse_go_duration(&self.grpc_keepalive_min_time)
            .map_err(|e| anyhow::anyhow!("--grpc-keepalive-min-time: {e}"))?;
        self.auto_compaction()?;
        self.client_listen_addrs()?;
        self.peer_listen_addrs()?;
        self.metrics_listen_addrs()?;
        Ok(())
    }

    /// The auto-compaction policy, if enabled.
    pub fn auto_compaction(&self) -> anyhow::Result<Option<AutoCompaction>> {
        let retention = self.auto_compaction_retention.trim();
        if retention.is_empty() || retention == "0" {
            return Ok(None);
        }
        Ok(Some(match self.auto_compaction_mode.as_str() {
            "revision" => {
                AutoCompaction::Revision(retention.parse().map_err(|_| {
                    anyhow::anyhow!("--auto-compaction-retention {retention:?} is not a revision count")
                })?)
            }
            _ => {
                let period = match retention.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours * 3600),
                    Err(_) => parse_go_duration(retention)?,
                };
                anyhow::ensure!(!period.is_zero(), "--auto-compaction-retention must be positive");
                AutoCompaction::Periodic(period)
            }
        }))
    }
}

/// How history is compacted automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions of history.
    Revision(i64),
}

/// Splits a comma-separated URL list.
pub fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect()
}

/// Whether a URL asks for TLS.
pub fn is_https(url: &str) -> bool {
    url.trim().starts_with("https://")
}

/// `http://host:port[/]` → `host:port`; `localhost` becomes 127.0.0.1.
pub fn url_host_port(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("unix://"))
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| anyhow::anyhow!("URL {url:?} must start with http:// or https://"))?;
    let hostport = rest.trim_end_matches('/');
    let (host, port) = hostport.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("URL {url:?} has no port"))?;
    port.parse::<u16>().map_err(|_| anyhow::anyhow!("URL {url:?} has a bad port"))?;
    let host = if host == "localhost" { "127.0.0.1" } else { host };
    Ok(format!("{host}:{port}"))
}

impl ServeArgs {
    /// The backup target and schedule, when `--backup-dir` or `--backup-url` is given.
    pub fn backup_schedule(
        &self,
    ) -> anyhow::Result<Option<(Box<dyn crate::backup::target::BackupTarget>, crate::backup::schedule::ScheduleConfig)>>
    {
        if self.backup_dir.is_none() && self.backup_url.is_none() {
            return Ok(None);
        }
        let target = crate::backup::open_target(self.backup_dir.as_deref(), self.backup_url.as_deref())?;
        let full_interval = parse_go_duration(&self.backup_full_interval)
            .map_err(|e| anyhow::anyhow!("--backup-full-interval: {e}"))?;
        let delta_interval = parse_go_duration(&self.backup_delta_interval)
            .map_err(|e| anyhow::anyhow!("--backup-delta-interval: {e}"))?;
        anyhow::ensure!(
            full_interval >= Duration::from_millis(100) && delta_interval >= Duration::from_millis(100),
            "--backup-full-interval and --backup-delta-interval must be at least 100ms"
        );
        let retention = self.backup_retention.as_deref().map(crate::backup::retention::Retention::parse).transpose()?;
        Ok(Some((target, crate::backup::schedule::ScheduleConfig { full_interval, delta_interval, retention })))
    }
}

/// Parses a Go duration such as `10m`, `5s`, `1h30m`, `250ms`.
pub fn parse_go_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    anyhow::ensure!(!s.is_empty(), "empty duration");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        anyhow::ensure!(digits > 0, "bad duration {s:?}");
        let value: f64 = rest[..digits].parse().map_err(|_| anyhow::anyhow!("bad duration {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => anyhow::bail!("bad duration unit {other:?} in {s:?}"),
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(value * unit_secs);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_go_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_go_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_go_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_go_duration("5x").is_err());
        assert!(parse_go_duration("m").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(url_host_port("http://localhost:2379").unwrap(), "127.0.0.1:2379");
        assert_eq!(url_host_port("http://10.0.0.1:2380/").unwrap(), "10.0.0.1:2380");
        assert!(url_host_port("127.0.0.1:2379").is_err());
        assert_eq!(split_urls("http://a:1, http://b:2"), vec!["http://a:1", "http://b:2"]);
    }
}
