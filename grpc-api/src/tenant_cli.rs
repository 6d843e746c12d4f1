//! `plinth tenant ...`: the operator's commands for the tenant registry, a client of the
//! `plinth.v1.Tenants` admin service. Flags follow etcdctl's (`--endpoints`, `--cacert`,
//! `--cert`, `--key`, `--user`, `-w json`) so scripts written for one read like the other.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::pb::plinthv1 as pb;
use crate::pb::plinthv1::tenants_client::TenantsClient;

/// How long a command waits to connect to one endpoint, and for its answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// `plinth tenant`.
#[derive(Debug, Args)]
pub struct TenantArgs {
    #[command(subcommand)]
    pub command: TenantCommand,
    /// Comma-separated client endpoints (host:port or URLs); the first that answers is used.
    #[arg(long, global = true, default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    /// CA bundle to verify the server's certificate (TLS).
    #[arg(long, global = true)]
    pub cacert: Option<PathBuf>,
    /// Client certificate (TLS), e.g. one whose CN is the server's `--admin-cn`.
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// Client key (TLS).
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// `name:password` of the root user when auth is on.
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// Output format: `simple` or `json`.
    #[arg(short = 'w', long = "write-out", global = true, default_value = "simple")]
    pub write_out: String,
}

/// A tenant's limits, enforced by each member on what it serves; 0 removes a limit.
/// Exceeding one answers `etcdserver: too many requests`.
#[derive(Debug, Default, clap::Args)]
pub struct LimitArgs {
    /// Requests per second (a watch or keep-alive stream counts once, when opened).
    #[arg(long)]
    pub max_requests_per_second: Option<u32>,
    /// Proposals (writes) waiting for their answer at once.
    #[arg(long)]
    pub max_inflight_proposals: Option<u32>,
    /// Watchers open at once.
    #[arg(long)]
    pub max_watchers: Option<u32>,
    /// Bytes of writes per second.
    #[arg(long)]
    pub max_request_bytes_per_second: Option<u64>,
}

impl LimitArgs {
    fn to_pb(&self) -> pb::TenantLimits {
        pb::TenantLimits {
            requests_per_second: self.max_requests_per_second.unwrap_or(0),
            inflight_proposals: self.max_inflight_proposals.unwrap_or(0),
            watchers: self.max_watchers.unwrap_or(0),
            request_bytes_per_second: self.max_request_bytes_per_second.unwrap_or(0),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (its own Raft group on every member).
    Create {
        name: String,
        /// Client certificate CN that maps to the tenant (repeatable).
        #[arg(long = "client-cn")]
        client_cn: Vec<String>,
        /// Quota of the tenant's keyspace in bytes (default: the members' quota).
        #[arg(long)]
        quota_bytes: Option<u64>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List tenants.
    List,
    /// Show a tenant's number, revisions, keys, size, leader and request rate.
    Show { name: String },
    /// Change a tenant's client CNs or quota.
    Update {
        name: String,
        /// Replace the client CNs with these (repeatable).
        #[arg(long = "client-cn")]
        client_cn: Vec<String>,
        /// Remove every client CN.
        #[arg(long, conflicts_with = "client_cn")]
        clear_client_cns: bool,
        /// New quota in bytes (0: the members' default).
        #[arg(long)]
        quota_bytes: Option<u64>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Delete a tenant and its data on every member.
    Delete { name: String },
    /// Replace a running tenant's data with its backups at a revision (or restore them into a
    /// new tenant with --as), through the tenant's Raft log. The chain is verified first.
    Restore {
        /// The tenant whose backups to restore ("default" for the default tenant).
        name: String,
        /// A local backup directory.
        #[arg(long, conflicts_with = "backup_url")]
        backup_dir: Option<PathBuf>,
        /// s3://bucket/prefix or file:///path.
        #[arg(long)]
        backup_url: Option<String>,
        /// The revision to restore (default: the newest the backups reach).
        #[arg(long)]
        to_revision: Option<i64>,
        /// Restore into this new tenant (created; it must not exist), keeping revisions.
        #[arg(long = "as")]
        as_tenant: Option<String>,
    },
}

/// Runs a `plinth tenant` command; prints its result on stdout.
pub async fn run(args: TenantArgs) -> anyhow::Result<()> {
    let json = match args.write_out.as_str() {
        "json" => true,
        "simple" => false,
        other => anyhow::bail!("unsupported output format {other:?} (simple, json)"),
    };
    let (channel, token) = connect(&args).await?;
    let mut client = TenantsClient::new(channel.clone());
    let status_error = |s: tonic::Status| match s.message() {
        "" => anyhow::anyhow!("{:?}", s.code()),
        m => anyhow::anyhow!("{m}"),
    };
    match args.command {
        TenantCommand::Create { name, client_cn, quota_bytes, limits } => {
            let msg = pb::CreateTenantRequest {
                name,
                client_cns: client_cn,
                quota_bytes: quota_bytes.unwrap_or(0),
                limits: Some(limits.to_pb()),
            };
            let answer = client.create(with_token(msg, token.as_deref())).await.map_err(status_error)?;
            print_tenant(answer.into_inner(), json, |t| {
                format!("tenant {} created: number {}, group {}", t.name, t.number, t.group)
            });
        }
        TenantCommand::Update { name, client_cn, clear_client_cns, quota_bytes, limits } => {
            let msg = pb::UpdateTenantRequest {
                name,
                set_client_cns: clear_client_cns || !client_cn.is_empty(),
                client_cns: client_cn,
                set_quota_bytes: quota_bytes.is_some(),
                quota_bytes: quota_bytes.unwrap_or(0),
                set_requests_per_second: limits.max_requests_per_second.is_some(),
                set_inflight_proposals: limits.max_inflight_proposals.is_some(),
                set_watchers: limits.max_watchers.is_some(),
                set_request_bytes_per_second: limits.max_request_bytes_per_second.is_some(),
                limits: Some(limits.to_pb()),
            };
            let answer = client.update(with_token(msg, token.as_deref())).await.map_err(status_error)?;
            print_tenant(answer.into_inner(), json, |t| format!("tenant {} updated", t.name));
        }
        TenantCommand::Delete { name } => {
            let request = with_token(pb::DeleteTenantRequest { name }, token.as_deref());
            let answer = client.delete(request).await.map_err(status_error)?;
            print_tenant(answer.into_inner(), json, |t| format!("tenant {} deleted", t.name));
        }
        TenantCommand::Restore { name, backup_dir, backup_url, to_revision, as_tenant } => {
            let (into, create) = match as_tenant {
                Some(new) => (new, true),
                None => (name.clone(), false),
            };
            let restored = crate::backup::online::restore(
                channel.clone(),
                token.as_deref(),
                crate::backup::online::RestoreRequest { name, backup_dir, backup_url, to_revision, into, create },
                json,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string(&restored).expect("summaries serialize"));
            } else {
                println!(
                    "tenant {} restored from {}'s backups at revision {}: revision {} (was {}), compact revision {}, {} \
                     keys",
                    restored.tenant,
                    restored.from,
                    restored.restored_revision,
                    restored.revision,
                    restored.floor,
                    restored.compact_revision,
                    restored.keys
                );
            }
        }
        TenantCommand::List => {
            let list = client
                .list(with_token(pb::ListTenantsRequest {}, token.as_deref()))
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                let all: Vec<_> = list.tenants.iter().map(tenant_json).collect();
                println!("{}", json!({ "tenants": all }));
            } else {
                for t in list.tenants {
                    println!(
                        "{}, number {}, group {}, quota {}, client CNs [{}]",
                        t.name,
                        t.number,
                        t.group,
                        quota_text(t.quota_bytes),
                        t.client_cns.join(" ")
                    );
                }
            }
        }
        TenantCommand::Show { name } => {
            let s = client
                .show(with_token(pb::ShowTenantRequest { name }, token.as_deref()))
                .await
                .map_err(status_error)?
                .into_inner();
            let t = s.tenant.clone().unwrap_or_default();
            let backup = s.backup.clone().unwrap_or_default();
            let backup_time =
                (backup.last_time_unix_ms > 0).then(|| crate::backup::format_time(backup.last_time_unix_ms));
            if json {
                let mut v = tenant_json(&t);
                let extra = json!({
                    "revision": s.revision,
                    "compact_revision": s.compact_revision,
                    "keys": s.keys,
                    "db_size_bytes": s.db_size_bytes,
                    "leader": format!("{:x}", s.leader),
                    "raft_term": s.raft_term,
                    "applied_index": s.applied_index,
                    "requests_total": s.requests_total,
                    "requests_per_second": s.requests_per_second,
                    "voters": s.voters.iter().map(|v| format!("{v:x}")).collect::<Vec<_>>(),
                    "learners": s.learners.iter().map(|v| format!("{v:x}")).collect::<Vec<_>>(),
                    "membership_in_sync": s.membership_in_sync,
                    "alarms": s.alarms,
                    "backup": {
                        "state": backup.state,
                        "last_revision": backup.last_revision,
                        "last_time": backup_time,
                        "last_error": backup.last_error,
                        "consecutive_failures": backup.consecutive_failures,
                    },
                });
                if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
                    v.extend(extra.clone());
                }
                println!("{v}");
            } else {
                println!("name: {}", t.name);
                println!("number: {}", t.number);
                println!("group: {}", t.group);
                println!("client CNs: [{}]", t.client_cns.join(" "));
                println!("quota: {}", quota_text(t.quota_bytes));
                println!("limits: {}", limits_text(t.limits.as_ref()));
                println!("revision: {}", s.revision);
                println!("compact revision: {}", s.compact_revision);
                println!("keys: {}", s.keys);
                println!("db size: {} bytes", s.db_size_bytes);
                println!("leader: {:x}", s.leader);
                println!("raft term: {}", s.raft_term);
                println!("applied index: {}", s.applied_index);
                println!("requests: {} total, {:.1}/s", s.requests_total, s.requests_per_second);
                println!(
                    "membership: {} (voters {:x?}, learners {:x?})",
                    if s.membership_in_sync { "in sync with the cluster" } else { "catching up" },
                    s.voters,
                    s.learners
                );
                println!("alarms: [{}]", s.alarms.join(" "));
                let mut line = format!("backup: {}", backup.state);
                if let Some(time) = &backup_time {
                    line += &format!(", last at revision {} ({time})", backup.last_revision);
                }
                if !backup.last_error.is_empty() {
                    line += &format!(", {} failures, last: {}", backup.consecutive_failures, backup.last_error);
                }
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// A request with the command's deadline and, after `--user`, the auth token.
pub(crate) fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(COMMAND_TIMEOUT);
    if let Some(t) = token {
        r.metadata_mut().insert("token", t.parse().expect("tokens are ASCII"));
    }
    r
}

/// Prints the tenant a create, update or delete answered with: JSON, or `simple`'s line.
fn print_tenant(answer: pb::TenantResponse, json: bool, simple: impl FnOnce(&pb::Tenant) -> String) {
    let t = answer.tenant.unwrap_or_default();
    if json {
        println!("{}", tenant_json(&t));
    } else {
        println!("{}", simple(&t));
    }
}

/// `none`, or the limits that are set: `requests/s 100, watchers 50`.
fn limits_text(l: Option<&pb::TenantLimits>) -> String {
    let l = l.cloned().unwrap_or_default();
    let set: Vec<String> = [
        ("requests/s", u64::from(l.requests_per_second)),
        ("in-flight proposals", u64::from(l.inflight_proposals)),
        ("watchers", u64::from(l.watchers)),
        ("request bytes/s", l.request_bytes_per_second),
    ]
    .into_iter()
    .filter(|(_, v)| *v != 0)
    .map(|(name, v)| format!("{name} {v}"))
    .collect();
    if set.is_empty() {
        "none".into()
    } else {
        set.join(", ")
    }
}

fn quota_text(bytes: u64) -> String {
    if bytes == 0 {
        "default".into()
    } else {
        format!("{bytes} bytes")
    }
}

fn tenant_json(t: &pb::Tenant) -> serde_json::Value {
    json!({
        "name": t.name,
        "number": t.number,
        "group": t.group,
        "state": t.state,
        "quota_bytes": t.quota_bytes,
        "client_cns": t.client_cns,
        "limits": {
            "requests_per_second": t.limits.as_ref().map_or(0, |l| l.requests_per_second),
            "inflight_proposals": t.limits.as_ref().map_or(0, |l| l.inflight_proposals),
            "watchers": t.limits.as_ref().map_or(0, |l| l.watchers),
            "request_bytes_per_second": t.limits.as_ref().map_or(0, |l| l.request_bytes_per_second),
        },
    })
}

/// Connects to the first endpoint that answers; with `--user`, authenticates (etcd's Auth
/// service) and returns the token.
async fn connect(args: &TenantArgs) -> anyhow::Result<(tonic::transport::Channel, Option<String>)> {
    let endpoint = ClientEndpoint {
        endpoints: &args.endpoints,
        cacert: args.cacert.as_deref(),
        cert: args.cert.as_deref(),
        key: args.key.as_deref(),
        user: args.user.as_deref(),
    };
    endpoint.connect().await
}

/// Where a command connects: etcdctl's flags, for a Plinth cluster or an etcd one.
pub(crate) struct ClientEndpoint<'a> {
    /// Comma-separated endpoints (host:port or URLs); the first that answers is used.
    pub endpoints: &'a str,
    pub cacert: Option<&'a std::path::Path>,
    pub cert: Option<&'a std::path::Path>,
    pub key: Option<&'a std::path::Path>,
    /// `name:password`.
    pub user: Option<&'a str>,
}

impl ClientEndpoint<'_> {
    /// Connects to the first endpoint that answers; with a user, authenticates (etcd's Auth
    /// service) and returns the token.
    pub(crate) async fn connect(&self) -> anyhow::Result<(tonic::transport::Channel, Option<String>)> {
        connect_endpoint(self).await
    }
}

async fn connect_endpoint(args: &ClientEndpoint<'_>) -> anyhow::Result<(tonic::transport::Channel, Option<String>)> {
    let tls = match (&args.cacert, &args.cert, &args.key) {
        (None, None, None) => None,
        (Some(ca), cert, key) => {
            let cert_key = match (cert, key) {
                (Some(c), Some(k)) => Some((*c, *k)),
                (None, None) => None,
                _ => anyhow::bail!("--cert and --key go together"),
            };
            Some(crate::tls::client_config(ca, cert_key, &crate::tls::TlsParams::default())?)
        }
        (None, _, _) => anyhow::bail!("--cert and --key need --cacert"),
    };
    let mut last = None;
    for endpoint in args.endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let hostport = endpoint.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{hostport}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let connected = match &tls {
            Some(config) => {
                let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
                let connector = crate::node::peer_tls::TlsConnector::new(config.clone(), host, hostport.to_string())?;
                channel.connect_with_connector(connector).await
            }
            None => channel.connect().await,
        };
        match connected {
            Ok(channel) => {
                let token = match args.user {
                    Some(user) => Some(authenticate(channel.clone(), user).await?),
                    None => None,
                };
                return Ok((channel, token));
            }
            Err(e) => last = Some(anyhow::anyhow!("{endpoint}: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no endpoints given")))
}

async fn authenticate(channel: tonic::transport::Channel, user: &str) -> anyhow::Result<String> {
    let (name, password) = user.split_once(':').ok_or_else(|| anyhow::anyhow!("--user must be name:password"))?;
    let mut auth = crate::pb::etcdserverpb::auth_client::AuthClient::new(channel);
    let request =
        crate::pb::etcdserverpb::AuthenticateRequest { name: name.to_string(), password: password.to_string() };
    let resp = auth.authenticate(request).await.map_err(|s| anyhow::anyhow!("authenticate: {}", s.message()))?;
    Ok(resp.into_inner().token)
}
