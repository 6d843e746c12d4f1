//! # Backups: objects, manifests, targets, restore
//!
//! A backup of a tenant is a chain: a *full* backup (the tenant's group at one revision)
//! followed by *deltas* (every change of a revision range, with values and previous
//! versions). `store` produces and consumes the records (`Store::export_full`,
//! `Store::export_delta`, `Store::import_group`); this module turns exports into
//! compressed, checksummed objects ([`object`]), lists them in a manifest per tenant
//! ([`manifest`]), keeps them in a target ([`target`]), prunes them ([`retention`]), and
//! restores them offline into a new data dir ([`restore`]).
//!
//! ```text
//!  Store::export_* ──records──▶ ObjectWriter ──zstd──▶ staging file ──fsync──▶ target.put_object
//!                                                                           then manifest (tmp+rename)
//!  target ──▶ ObjectReader (sha256, size) ──records──▶ Store::import_group ──▶ data dir
//! ```
//!
//! Ordering, enforced in [`append_backup`]: the object is durable under its final name
//! before the manifest that names it is replaced; retention rewrites the manifest before it
//! deletes objects. A crash at any point leaves at worst an object that no manifest names.
//!
//! ## CAVEATS
//!
//! - `--to-time` picks the newest backup taken at or before the time; events carry no
//!   times, so a restore by time lands on a backup boundary.

pub mod bbolt;
pub mod cli;
pub mod etcd_export;
pub mod etcd_import;
pub mod manifest;
pub mod object;
pub mod online;
pub mod restore;
pub mod retention;
pub mod s3;
pub mod schedule;
pub mod snapshot_file;
pub mod target;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use manifest::{Entry, Kind, Manifest};
use object::{ObjectReader, ObjectWriter};
use target::{BackupTarget, LocalTarget, MANIFEST_NAME};

/// Opens the target named by `--backup-dir` or `--backup-url` (exactly one).
pub fn open_target(dir: Option<&Path>, url: Option<&str>) -> anyhow::Result<Box<dyn BackupTarget>> {
    match (dir, url) {
        (Some(dir), None) => Ok(Box::new(LocalTarget::new(dir)?)),
        (None, Some(url)) => {
            if let Some(path) = url.strip_prefix("file://") {
                Ok(Box::new(LocalTarget::new(Path::new(path))?))
            } else if url.starts_with("s3://") {
                Ok(Box::new(s3::S3Target::new(url)?))
            } else {
                anyhow::bail!("--backup-url {url}: expected s3://bucket/prefix or file:///path")
            }
        }
        _ => anyhow::bail!("give exactly one of --backup-dir and --backup-url"),
    }
}

/// The name of `tenant`'s manifest in a target.
pub fn manifest_name(tenant: &str) -> String {
    format!("{tenant}/{MANIFEST_NAME}")
}

fn check_tenant(tenant: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !tenant.is_empty()
            && tenant.len() <= 128
            && tenant.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !tenant.starts_with('.'),
        "tenant name {tenant:?}: letters, digits, '-', '_' and '.' only"
    );
    Ok(())
}

/// Reads `tenant`'s manifest, `None` if the tenant has no backups.
pub fn load_manifest(target: &dyn BackupTarget, tenant: &str) -> anyhow::Result<Option<Manifest>> {
    check_tenant(tenant)?;
    let name = manifest_name(tenant);
    match target.read_small(&name)? {
        Some(bytes) => Ok(Some(Manifest::decode(&name, &bytes)?)),
        None => Ok(None),
    }
}

/// Milliseconds since the Unix epoch, and the same time in RFC 3339.
pub fn now() -> (u64, String) {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let ms = elapsed.as_millis() as u64;
    (ms, format_time(ms))
}

/// RFC 3339 of `ms` since the Unix epoch.
pub fn format_time(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Parses `--to-time`: RFC 3339, or seconds since the Unix epoch. Returns ms.
pub fn parse_time(s: &str) -> anyhow::Result<u64> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs.saturating_mul(1000));
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| anyhow::anyhow!("--to-time {s:?}: not RFC 3339 nor Unix seconds: {e}"))?;
    Ok(u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}

/// What one backup run takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// A delta from the end of the tenant's chain.
    Delta,
    /// A full backup.
    Full,
    /// A delta that closes the chain and a full backup that starts the next one, both from
    /// one pinned point (so no revision between them is left out); just the full backup
    /// when there is no chain or its history is gone.
    DeltaThenFull,
}

/// Takes a backup of `group` of `store` into `target` as `tenant`'s next backup: a delta
/// from the end of the manifest when `delta` is set (and the manifest has a full backup),
/// else a full backup. Returns the manifest entry added.
pub fn append_backup(
    target: &dyn BackupTarget,
    tenant: &str,
    store: &store::Store,
    group: store::GroupId,
    delta: bool,
) -> anyhow::Result<Entry> {
    let plan = if delta { Plan::Delta } else { Plan::Full };
    let mut entries = take_backup(target, tenant, store, group, plan)?;
    Ok(entries.pop().expect("a backup run adds at least one entry"))
}

/// An export written to a staging file, not yet in the target.
struct Staged {
    path: std::path::PathBuf,
    header: store::BackupHeader,
    summary: object::ObjectSummary,
}

/// Writes one export into a staging file of `target`.
fn stage(
    target: &dyn BackupTarget,
    tenant: &str,
    export: impl FnOnce(
        &mut dyn FnMut(store::BackupRecord) -> store::Result<()>,
    ) -> store::Result<(store::BackupHeader, u64)>,
) -> anyhow::Result<Staged> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = target.staging_dir()?.join(format!("{tenant}-{}-{}-{seq}.plbk", now().0, std::process::id()));
    let mut writer = ObjectWriter::create(&path)?;
    let mut failed: Option<anyhow::Error> = None;
    let mut sink = |r: store::BackupRecord| {
        writer.write(&r).map_err(|e| {
            let err = std::io::Error::other(e.to_string());
            failed = Some(e);
            store::Error::Io(err)
        })
    };
    let exported = export(&mut sink);
    let header = match (exported, failed) {
        (Ok((header, _)), None) => header,
        (_, Some(e)) => {
            let _ = std::fs::remove_file(&path);
            return Err(e.context("writing the backup object"));
        }
        (Err(e), None) => {
            let _ = std::fs::remove_file(&path);
            return Err(anyhow::Error::new(e).context(format!("exporting tenant {tenant}")));
        }
    };
    match writer.finish() {
        Ok(summary) => Ok(Staged { path, header, summary }),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// `tenant`'s manifest in `target` (a new one if it has none), which must be of `group`.
fn tenant_manifest(target: &dyn BackupTarget, tenant: &str, group: store::GroupId) -> anyhow::Result<Manifest> {
    let manifest = load_manifest(target, tenant)?.unwrap_or_else(|| Manifest::new(tenant, group.0));
    anyhow::ensure!(
        manifest.group == group.0,
        "tenant {tenant}'s backups in {} are of group {}, not {}",
        target.describe(),
        manifest.group,
        group.0
    );
    Ok(manifest)
}

/// Takes one backup run of `group` into `target` as `tenant`'s next backups (see [`Plan`])
/// and returns the manifest entries added, oldest first.
pub fn take_backup(
    target: &dyn BackupTarget,
    tenant: &str,
    store: &store::Store,
    group: store::GroupId,
    plan: Plan,
) -> anyhow::Result<Vec<Entry>> {
    let manifest = tenant_manifest(target, tenant, group)?;
    let end = manifest.latest_revision();
    if plan == Plan::Delta && end.is_none() {
        return Err(NoFullBackup(tenant.to_string()).into());
    }
    let mut staged = Vec::new();
    {
        // Both exports from one pin; released before the uploads.
        let pin = store.pin_export(group);
        if let Some(from) = end.filter(|e| plan == Plan::Delta || (plan == Plan::DeltaThenFull && *e < pin.revision()))
        {
            match stage(target, tenant, |sink| pin.delta(from, sink)) {
                Ok(s) => staged.push((Kind::Delta, s)),
                // The chain's history is gone: the full backup starts a new chain.
                Err(e) if plan == Plan::DeltaThenFull && needs_full(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if plan != Plan::Delta {
            match stage(target, tenant, |sink| pin.full(sink)) {
                Ok(s) => staged.push((Kind::Full, s)),
                Err(e) => {
                    for (_, s) in &staged {
                        let _ = std::fs::remove_file(&s.path);
                    }
                    return Err(e);
                }
            }
        }
    }
    store_staged(target, tenant, manifest, staged)
}

/// Stores staged exports as `tenant`'s next backups, in order, then the manifest that names
/// them; returns the entries added. The staging files are removed whatever happens.
fn store_staged(
    target: &dyn BackupTarget,
    tenant: &str,
    mut manifest: Manifest,
    staged: Vec<(Kind, Staged)>,
) -> anyhow::Result<Vec<Entry>> {
    let (time_unix_ms, time) = now();
    let mut added = Vec::new();
    let mut result = Ok(());
    for (kind, s) in &staged {
        if result.is_err() {
            let _ = std::fs::remove_file(&s.path);
            continue;
        }
        let object = match kind {
            Kind::Delta => format!(
                "{tenant}/objects/delta-{:020}-{:020}-{time_unix_ms}.plbk",
                s.header.from_revision, s.header.to_revision
            ),
            Kind::Full => format!("{tenant}/objects/full-{:020}-{time_unix_ms}.plbk", s.header.to_revision),
        };
        // Durability order: the object is complete and durable under its name before the
        // manifest names it.
        result = target.put_object(&object, &s.path).with_context(|| format!("storing backup object {object}"));
        let _ = std::fs::remove_file(&s.path);
        if result.is_ok() {
            added.push(Entry {
                kind: *kind,
                from_revision: s.header.from_revision,
                to_revision: s.header.to_revision,
                compact_revision: s.header.compact_revision,
                time_unix_ms,
                time: time.clone(),
                size_bytes: s.summary.size_bytes,
                records: s.summary.records,
                sha256: s.summary.sha256.clone(),
                object,
            });
        }
    }
    result?;
    manifest.backups.extend(added.iter().cloned());
    manifest.check_continuity()?;
    target.replace_small(&manifest_name(tenant), &manifest.encode())?;
    Ok(added)
}

/// Appends to `tenant`'s backups the delta that continues its chain from the etcd data file
/// at `path` (`plinth backup from-snapshot --delta` of a file `etcdctl snapshot save`
/// wrote): every version after the chain's end.
pub fn append_etcd_file_delta(
    target: &dyn BackupTarget,
    tenant: &str,
    group: store::GroupId,
    path: &std::path::Path,
) -> anyhow::Result<Entry> {
    let manifest = tenant_manifest(target, tenant, group)?;
    let from = manifest.latest_revision().ok_or_else(|| NoFullBackup(tenant.to_string()))?;
    let mut failed: Option<anyhow::Error> = None;
    let staged = stage(target, tenant, |sink| {
        let mut header = None;
        let mut records = 0u64;
        let read = etcd_import::etcd_db_records(path, group.0, Some(from), &mut |r| {
            if let Some(store::BackupBody::Header(h)) = &r.body {
                header = Some(h.clone());
            }
            records += 1;
            Ok(sink(r)?)
        });
        match (read, header) {
            (Ok(_), Some(h)) => Ok((h, records)),
            (Ok(_), None) => Err(store::Error::Corruption("an export without a header".into())),
            (Err(e), _) => {
                // The file's own error is the one reported, below.
                let err = store::Error::Corruption(format!("{e:#}"));
                failed = Some(e);
                Err(err)
            }
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let mut entries = store_staged(target, tenant, manifest, vec![(Kind::Delta, staged?)])?;
    Ok(entries.pop().expect("one export stored"))
}

/// A delta was asked for but the tenant has no full backup to follow.
#[derive(Debug)]
pub struct NoFullBackup(pub String);

impl std::fmt::Display for NoFullBackup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tenant {} has no full backup for a delta to follow", self.0)
    }
}

impl std::error::Error for NoFullBackup {}

/// Whether `append_backup`'s error means a delta cannot continue the chain (no full backup,
/// or the history after the chain's end is purged), so a full backup must start a new one.
pub fn needs_full(e: &anyhow::Error) -> bool {
    e.downcast_ref::<NoFullBackup>().is_some()
        || matches!(e.downcast_ref::<store::Error>(), Some(store::Error::Compacted { .. }))
}

/// Applies `retention` to `tenant`'s manifest: rewrites the manifest without the dropped
/// backups, then deletes their objects. Returns the dropped entries.
pub fn prune(target: &dyn BackupTarget, tenant: &str, retention: retention::Retention) -> anyhow::Result<Vec<Entry>> {
    let Some(mut manifest) = load_manifest(target, tenant)? else { return Ok(Vec::new()) };
    let (kept, dropped) = retention.apply(&manifest.backups);
    if dropped.is_empty() {
        return Ok(dropped);
    }
    manifest.backups = kept;
    // Ordering: the manifest stops naming the objects before they are deleted.
    target.replace_small(&manifest_name(tenant), &manifest.encode())?;
    for e in &dropped {
        target.delete_object(&e.object)?;
    }
    Ok(dropped)
}

/// Opens the object of `entry` for reading, checked against the entry.
pub fn open_object(target: &dyn BackupTarget, entry: &Entry) -> anyhow::Result<ObjectReader> {
    let source = target.open_object(&entry.object)?;
    ObjectReader::new(&entry.object, source, &entry.sha256, entry.size_bytes)
}

/// Reads every record of `entry`'s object into `visit`, then checks the object: its
/// checksum and size, a header matching the entry, and the record count.
pub fn read_object(
    target: &dyn BackupTarget,
    entry: &Entry,
    visit: &mut dyn FnMut(store::BackupRecord) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut reader = open_object(target, entry)?;
    let mut first = true;
    while let Some(record) = reader.next_record()? {
        if first {
            first = false;
            let Some(store::BackupBody::Header(h)) = &record.body else {
                anyhow::bail!("backup object {} is corrupted: it does not start with a header", entry.object);
            };
            let kind = match entry.kind {
                Kind::Full => store::BackupKind::Full,
                Kind::Delta => store::BackupKind::Delta,
            };
            anyhow::ensure!(
                h.backup_kind() == kind && h.from_revision == entry.from_revision && h.to_revision == entry.to_revision,
                "backup object {} holds {:?} ({}, {}], the manifest says {:?} ({}, {}]",
                entry.object,
                h.backup_kind(),
                h.from_revision,
                h.to_revision,
                entry.kind,
                entry.from_revision,
                entry.to_revision
            );
        }
        visit(record)?;
    }
    anyhow::ensure!(
        reader.records() == entry.records,
        "backup object {} holds {} records, the manifest says {}",
        entry.object,
        reader.records(),
        entry.records
    );
    Ok(())
}

/// What `verify` found for one tenant.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub tenant: String,
    pub backups: usize,
    pub bytes: u64,
    /// The newest revision a restore can reach.
    pub latest_revision: Option<i64>,
}

/// Reads every object of every tenant in `target`, checking checksums, headers, record
/// counts and the continuity of each chain. The first problem is the error, naming the
/// object.
pub fn verify(target: &dyn BackupTarget) -> anyhow::Result<Vec<VerifyReport>> {
    let mut out = Vec::new();
    for tenant in target.tenants()? {
        let manifest = load_manifest(target, &tenant)?.expect("tenants() lists tenants with a manifest");
        manifest.check_continuity()?;
        let mut bytes = 0;
        for e in &manifest.backups {
            read_object(target, e, &mut |_| Ok(()))?;
            bytes += e.size_bytes;
        }
        out.push(VerifyReport {
            tenant,
            backups: manifest.backups.len(),
            bytes,
            latest_revision: manifest.latest_revision(),
        });
    }
    Ok(out)
}
