//! The operator commands of backups: `plinth backup ...`, `plinth restore`, `plinth
//! snapshot status`. Each prints a line per item, or JSON with `-w json`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::manifest::DEFAULT_TENANT;
use super::restore::NewMember;
use super::target::BackupTarget;

/// Output formats (etcdctl's `-w`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WriteOut {
    Simple,
    Json,
    Table,
    Fields,
}

/// Where the backups are: exactly one of the two.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// A local directory of backups.
    #[arg(long)]
    pub backup_dir: Option<PathBuf>,
    /// A backup target URL: `s3://bucket/prefix` (endpoint, region and credentials from the
    /// `AWS_*` environment variables) or `file:///path`.
    #[arg(long)]
    pub backup_url: Option<String>,
}

impl TargetArgs {
    fn open(&self) -> anyhow::Result<Box<dyn BackupTarget>> {
        super::open_target(self.backup_dir.as_deref(), self.backup_url.as_deref())
    }
}

/// `plinth backup ...`
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a backup of a tenant now, on the leader of its group, into the members' backup
    /// target (`--backup-dir`/`--backup-url` of `plinth serve`): a delta from the end of
    /// its chain, or a full backup with `--full` or when there is no chain yet.
    Now {
        /// Comma-separated client endpoints; the first that answers is asked, and it sends
        /// the command on to the group's leader.
        #[arg(long, default_value = "127.0.0.1:2379")]
        endpoints: String,
        #[arg(long)]
        cacert: Option<PathBuf>,
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        key: Option<PathBuf>,
        /// `name:password` of the root user when auth is on.
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        #[arg(long)]
        full: bool,
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
        write_out: WriteOut,
    },
    /// List each backup of a tenant: kind, revision range, time, size.
    List {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
        write_out: WriteOut,
    },
    /// Read every object of every tenant; check checksums and the continuity of the chains.
    Verify {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
        write_out: WriteOut,
    },
    /// Take a backup from a snapshot file written by `etcdctl snapshot save` (Plinth): full,
    /// or with `--delta` the changes since the tenant's last backup (the snapshot carries
    /// the history since its compaction).
    FromSnapshot {
        /// The snapshot file.
        file: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        #[arg(long)]
        delta: bool,
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
        write_out: WriteOut,
    },
    /// Take a backup from the data dir of a stopped member: full, or with `--delta` the
    /// changes since the tenant's last backup.
    FromDataDir {
        /// The stopped member's data dir.
        data_dir: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        #[arg(long)]
        delta: bool,
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
        write_out: WriteOut,
    },
    /// Delete old backups: keep the last N full backups with their deltas.
    Prune {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        /// Full backups to keep (`N` or `fulls=N`).
        #[arg(long)]
        retention: String,
    },
}

/// `plinth restore ...`: seed a new member's data dir from backups or an etcd snapshot.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Restore from an etcd v3 snapshot file (bbolt `db`) instead of backups.
    #[arg(long)]
    pub from_etcd_snapshot: Option<PathBuf>,
    #[arg(long, default_value = DEFAULT_TENANT)]
    pub tenant: String,
    /// The revision to restore (default: the newest the backups reach).
    #[arg(long, conflicts_with = "to_time")]
    pub to_revision: Option<i64>,
    /// Restore the newest backup taken at or before this time (RFC 3339 or Unix seconds).
    #[arg(long)]
    pub to_time: Option<String>,
    /// The data dir to create.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// This member's name.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The new cluster (`name=peer-url,...`); default: this member alone.
    #[arg(long, default_value = "")]
    pub initial_cluster: String,
    /// This member's peer URLs, as in `--initial-cluster`.
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    pub initial_advertise_peer_urls: String,
    /// This member's client URLs.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub advertise_client_urls: String,
    /// The new cluster's token (as given to `plinth serve`).
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
    pub write_out: WriteOut,
}

/// `plinth snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Print a snapshot file's hash, revision, total keys and total size (etcdutl's).
    Status {
        file: PathBuf,
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
        write_out: WriteOut,
    },
}

fn split(urls: &str) -> Vec<String> {
    urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect()
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

fn print_entry(tenant: &str, e: &super::manifest::Entry, w: WriteOut) -> anyhow::Result<()> {
    match w {
        WriteOut::Json => print_json(e),
        _ => {
            let kind = match e.kind {
                super::manifest::Kind::Full => "full",
                super::manifest::Kind::Delta => "delta",
            };
            println!(
                "{tenant}, {kind}, ({}, {}], {}, {}, {}",
                e.from_revision,
                e.to_revision,
                e.time,
                super::snapshot_file::humanize_bytes(e.size_bytes),
                e.object
            );
            Ok(())
        }
    }
}

/// How long `plinth backup now` waits for its backup.
const BACKUP_NOW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Asks the member at `flags.endpoints` for a backup of `tenant`; when it does not lead the
/// tenant's group, asks the leader it names (found in the member list) instead.
async fn backup_now(
    flags: &crate::tenant_cli::ClientEndpoint<'_>,
    tenant: &str,
    full: bool,
) -> anyhow::Result<crate::pb::plinthv1::BackupNowResponse> {
    use crate::pb::etcdserverpb::cluster_client::ClusterClient;
    use crate::pb::plinthv1::{backups_client::BackupsClient, BackupNowRequest};
    let (channel, token) = flags.connect().await?;
    let request = || {
        let mut r =
            crate::tenant_cli::with_token(BackupNowRequest { tenant: tenant.to_string(), full }, token.as_deref());
        // A full backup of a large tenant takes as long as it takes.
        r.set_timeout(BACKUP_NOW_TIMEOUT);
        r
    };
    let status = match BackupsClient::new(channel.clone()).now(request()).await {
        Ok(answer) => return Ok(answer.into_inner()),
        Err(status) => status,
    };
    let leader = status
        .message()
        .rsplit_once("its leader is member ")
        .and_then(|(_, id)| u64::from_str_radix(id.trim(), 16).ok())
        .filter(|id| *id != 0 && status.code() == tonic::Code::FailedPrecondition);
    let Some(leader) = leader else { anyhow::bail!("{}", status.message()) };
    let members = ClusterClient::new(channel)
        .member_list(crate::tenant_cli::with_token(
            crate::pb::etcdserverpb::MemberListRequest::default(),
            token.as_deref(),
        ))
        .await
        .map_err(|s| anyhow::anyhow!("member list: {}", s.message()))?
        .into_inner()
        .members;
    let urls = members
        .iter()
        .find(|m| m.id == leader)
        .map(|m| m.client_ur_ls.join(","))
        .filter(|u| !u.is_empty())
        .ok_or_else(|| anyhow::anyhow!("{} (and the member list has no client URL for it)", status.message()))?;
    let flags = crate::tenant_cli::ClientEndpoint { endpoints: &urls, ..*flags };
    let (channel, token) = flags.connect().await?;
    let mut request =
        crate::tenant_cli::with_token(BackupNowRequest { tenant: tenant.to_string(), full }, token.as_deref());
    request.set_timeout(BACKUP_NOW_TIMEOUT);
    let answer = BackupsClient::new(channel).now(request).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    Ok(answer.into_inner())
}

/// Runs `plinth backup ...`.
pub fn run_backup(cmd: BackupCommand) -> anyhow::Result<()> {
    match cmd {
        BackupCommand::Now { endpoints, cacert, cert, key, user, tenant, full, write_out } => {
            let flags = crate::tenant_cli::ClientEndpoint {
                endpoints: &endpoints,
                cacert: cacert.as_deref(),
                cert: cert.as_deref(),
                key: key.as_deref(),
                user: user.as_deref(),
            };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let progress = super::online::progress(write_out == WriteOut::Json, &format!("backing up tenant {tenant}"));
            let answer = runtime.block_on(backup_now(&flags, &tenant, full));
            progress.finish_and_clear();
            let answer = answer?;
            if write_out == WriteOut::Json {
                let backups: Vec<_> = answer
                    .backups
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "tenant": b.tenant,
                            "kind": b.kind,
                            "from_revision": b.from_revision,
                            "to_revision": b.to_revision,
                            "size_bytes": b.size_bytes,
                            "records": b.records,
                            "object": b.object,
                            "time": b.time,
                        })
                    })
                    .collect();
                return print_json(
                    &serde_json::json!({ "member_id": format!("{:x}", answer.member_id), "backups": backups }),
                );
            }
            for b in &answer.backups {
                println!(
                    "{}, {}, ({}, {}], {}, {}, {} (taken by member {:x})",
                    b.tenant,
                    b.kind,
                    b.from_revision,
                    b.to_revision,
                    b.time,
                    super::snapshot_file::humanize_bytes(b.size_bytes),
                    b.object,
                    answer.member_id
                );
            }
            Ok(())
        }
        BackupCommand::List { target, tenant, write_out } => {
            let target = target.open()?;
            let manifest = super::load_manifest(target.as_ref(), &tenant)?
                .unwrap_or_else(|| super::manifest::Manifest::new(&tenant, crate::node::DEFAULT_GROUP));
            if write_out == WriteOut::Json {
                return print_json(&manifest);
            }
            for e in &manifest.backups {
                print_entry(&tenant, e, write_out)?;
            }
            Ok(())
        }
        BackupCommand::Verify { target, write_out } => {
            let target = target.open()?;
            let reports = super::verify(target.as_ref())?;
            if write_out == WriteOut::Json {
                return print_json(&reports);
            }
            for r in &reports {
                println!(
                    "{}: {} backups, {}, restorable to revision {}: OK",
                    r.tenant,
                    r.backups,
                    super::snapshot_file::humanize_bytes(r.bytes),
                    r.latest_revision.map_or("-".to_string(), |v| v.to_string())
                );
            }
            Ok(())
        }
        BackupCommand::FromSnapshot { file, target, tenant, delta, write_out } => {
            let target = target.open()?;
            let staging = target.staging_dir()?.join(format!("snapshot-{}-{}", std::process::id(), super::now().0));
            let group = store::GroupId(crate::node::DEFAULT_GROUP);
            let result = (|| {
                if !super::bbolt::Bbolt::is_bbolt(&file) {
                    // A snapshot file of Plinth's own earlier format: the store's chunks.
                    let store = store::Store::open(&staging, store::StoreConfig::default())?;
                    super::snapshot_file::install_snapshot_file(&file, &store, group)?;
                    return super::append_backup(target.as_ref(), &tenant, &store, group, delta);
                }
                // etcd's data file, as `Maintenance.Snapshot` sends it (from Plinth or etcd):
                // a delta straight from the file's history, a full backup through a store
                // the file is imported into.
                if delta {
                    return super::append_etcd_file_delta(target.as_ref(), &tenant, group, &file);
                }
                let store = store::Store::open(&staging, store::StoreConfig::default())?;
                super::etcd_import::import_etcd_file(&file, &store, group)?;
                super::append_backup(target.as_ref(), &tenant, &store, group, false)
            })();
            let _ = std::fs::remove_dir_all(&staging);
            print_entry(&tenant, &result?, write_out)
        }
        BackupCommand::FromDataDir { data_dir, target, tenant, delta, write_out } => {
            let target = target.open()?;
            let store = super::restore::open_stopped_store(&data_dir)?;
            let group = store::GroupId(crate::node::DEFAULT_GROUP);
            let entry = super::append_backup(target.as_ref(), &tenant, &store, group, delta)?;
            print_entry(&tenant, &entry, write_out)
        }
        BackupCommand::Prune { target, tenant, retention } => {
            let target = target.open()?;
            let policy = super::retention::Retention::parse(&retention)?;
            for e in super::prune(target.as_ref(), &tenant, policy)? {
                println!("deleted {}", e.object);
            }
            Ok(())
        }
    }
}

/// Runs `plinth restore ...`.
pub fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let member = NewMember {
        data_dir: args.data_dir.clone(),
        name: args.name.clone(),
        initial_cluster: args.initial_cluster.clone(),
        initial_advertise_peer_urls: split(&args.initial_advertise_peer_urls),
        advertise_client_urls: split(&args.advertise_client_urls),
        initial_cluster_token: args.initial_cluster_token.clone(),
    };
    let summary = match &args.from_etcd_snapshot {
        Some(file) => {
            anyhow::ensure!(
                args.target.backup_dir.is_none()
                    && args.target.backup_url.is_none()
                    && args.to_revision.is_none()
                    && args.to_time.is_none(),
                "--from-etcd-snapshot restores the snapshot's revision; it takes no backup target nor --to-*"
            );
            super::etcd_import::restore_from_etcd(file, &member)?
        }
        None => {
            let target = args.target.open()?;
            let revision = match (&args.to_revision, &args.to_time) {
                (Some(r), _) => Some(*r),
                (None, Some(t)) => {
                    let manifest = super::load_manifest(target.as_ref(), &args.tenant)?
                        .ok_or_else(|| anyhow::anyhow!("tenant {} has no backups", args.tenant))?;
                    Some(manifest.revision_at_time(super::parse_time(t)?)?)
                }
                (None, None) => None,
            };
            let progress = super::online::progress(args.write_out == WriteOut::Json, "restoring");
            let summary =
                super::restore::restore_from_backups(target.as_ref(), &args.tenant, revision, &member, &progress);
            progress.finish_and_clear();
            summary?
        }
    };
    match args.write_out {
        WriteOut::Json => print_json(&summary),
        _ => {
            println!(
                "restored revision {} ({} keys, {} leases, compacted at {}) into {} as member {} of cluster {}",
                summary.revision,
                summary.keys,
                summary.leases,
                summary.compact_revision,
                summary.data_dir,
                summary.member_id,
                summary.cluster_id
            );
            Ok(())
        }
    }
}

/// Runs `plinth snapshot ...`.
pub fn run_snapshot(cmd: SnapshotCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Status { file, write_out } => {
            let s = if super::bbolt::Bbolt::is_bbolt(&file) {
                super::etcd_export::etcd_db_status(&file)?
            } else {
                super::snapshot_file::read_snapshot_file(&file, &mut |_| Ok(()))?
            };
            let size = super::snapshot_file::humanize_bytes(s.total_size);
            match write_out {
                WriteOut::Json => print_json(&s),
                WriteOut::Simple => {
                    println!("{:x}, {}, {}, {size}", s.hash, s.revision, s.total_key);
                    Ok(())
                }
                WriteOut::Fields => {
                    println!("\"Hash\" : {}", s.hash);
                    println!("\"Revision\" : {}", s.revision);
                    println!("\"Keys\" : {}", s.total_key);
                    println!("\"Size\" : {}", s.total_size);
                    Ok(())
                }
                WriteOut::Table => {
                    // etcdutl's table: headers centred, values right-aligned, one space of
                    // padding on each side.
                    let cells = [format!("{:x}", s.hash), s.revision.to_string(), s.total_key.to_string(), size];
                    let heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
                    let widths: Vec<usize> = heads.iter().zip(&cells).map(|(h, c)| h.len().max(c.len()) + 2).collect();
                    let rule = widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("+");
                    let head = heads
                        .iter()
                        .zip(&widths)
                        .map(|(h, w)| format!("{h:^w$}", w = *w))
                        .collect::<Vec<_>>()
                        .join("|");
                    let row = cells
                        .iter()
                        .zip(&widths)
                        .map(|(c, w)| format!(" {c:>w$} ", w = *w - 2))
                        .collect::<Vec<_>>()
                        .join("|");
                    println!("+{rule}+");
                    println!("|{head}|");
                    println!("+{rule}+");
                    println!("|{row}|");
                    println!("+{rule}+");
                    Ok(())
                }
            }
        }
    }
}
