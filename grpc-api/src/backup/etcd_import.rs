//! Import of an etcd v3 data file (`etcdctl snapshot save` output, or a data dir's
//! `member/snap/db`) into a Plinth group, revisions kept.
//!
//! etcd keeps every version of every key since its compaction in the bbolt bucket `key`,
//! keyed by revision, `main(8, big endian) '_' sub(8)`, with a `t` suffix for a tombstone;
//! the value is the `mvccpb.KeyValue` (which Plinth's `store::KeyValue` decodes as is). The
//! `lease` bucket holds `leasepb.Lease` records (the fields of `store::Lease`), the `meta`
//! bucket the finished compact revision.
//!
//! The `auth`, `authUsers` and `authRoles` buckets hold the auth flag and revision, the
//! `authpb.User` and `authpb.Role` records (bcrypt hashes, as Plinth keeps them).
//!
//! The file is turned into the records of a backup chain, which `Store::import_group`
//! checks and writes like any restore: a *full* export at etcd's compact revision C (every
//! version at or before C, which after etcd's compaction is each key's newest, live one),
//! then a *delta* of every version after C in revision order. The group is restored at
//! etcd's current revision with its compact revision C, so reads at any revision etcd still
//! serves give etcd's answers. The delta alone, from any revision at or after C, continues
//! a backup chain (`plinth backup from-snapshot --delta`).
//!
//! ## CAVEATS
//!
//! - A file whose compaction had not finished (scheduled ahead of finished) is refused.

use std::path::Path;

use anyhow::{bail, ensure, Context};
use store::auth::{AuthRole, AuthState, AuthUser};
use store::{
    BackupBody, BackupEnd, BackupHeader, BackupKind, BackupRecord, EventRecord, KeyRecord, KeyValue, Lease, Message,
};

use super::bbolt::Bbolt;
use super::etcd_export::{EtcdRole, EtcdUser};

/// Bytes of an etcd revision key: main, '_', sub.
const REVISION_KEY_BYTES: usize = 17;
/// What etcd's revision keys carry after the revision for a tombstone.
const TOMBSTONE_MARK: u8 = b't';

/// An etcd revision key: (main, sub, tombstone).
fn parse_revision_key(k: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match k.len() {
        REVISION_KEY_BYTES => false,
        n if n == REVISION_KEY_BYTES + 1 && k[REVISION_KEY_BYTES] == TOMBSTONE_MARK => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(k[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
    (main >= 1 && sub >= 0).then_some((main, sub, tombstone))
}

/// What [`etcd_db_records`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdDbSummary {
    pub revision: i64,
    pub compact_revision: i64,
    pub versions: u64,
    pub leases: u64,
}

fn meta_revision(db: &Bbolt, key: &[u8]) -> anyhow::Result<Option<i64>> {
    let Some(meta) = db.bucket(b"meta")? else { return Ok(None) };
    let mut found = None;
    db.walk(&meta, &mut |k, v, _| {
        if k == key {
            found = parse_revision_key(v).map(|(main, _, _)| main);
            return Ok(false);
        }
        Ok(true)
    })?;
    Ok(found)
}

/// The auth store of an etcd file: etcd's flag, revision, users and roles.
fn read_auth(db: &Bbolt, name: &std::path::Display<'_>) -> anyhow::Result<AuthState> {
    let mut auth = store::auth::initial();
    if let Some(bucket) = db.bucket(b"auth")? {
        db.walk(&bucket, &mut |k, v, _| {
            match k {
                b"authEnabled" => auth.enabled = v.first() == Some(&1),
                b"authRevision" => {
                    let bytes: [u8; 8] = v.try_into().map_err(|_| anyhow::anyhow!("{name}: bad authRevision"))?;
                    auth.revision = u64::from_be_bytes(bytes);
                }
                _ => {}
            }
            Ok(true)
        })?;
    }
    if let Some(bucket) = db.bucket(b"authUsers")? {
        db.walk(&bucket, &mut |_, v, _| {
            let u = EtcdUser::decode(v).with_context(|| format!("{name}: user record"))?;
            let mut roles = u.roles.clone();
            roles.sort();
            roles.dedup();
            auth.users.push(AuthUser {
                name: String::from_utf8(u.name.clone()).with_context(|| format!("{name}: user name"))?,
                password_hash: u.password.clone().into(),
                roles,
                no_password: u.no_password(),
            });
            Ok(true)
        })?;
    }
    if let Some(bucket) = db.bucket(b"authRoles")? {
        db.walk(&bucket, &mut |_, v, _| {
            let r = EtcdRole::decode(v).with_context(|| format!("{name}: role record"))?;
            auth.roles.push(AuthRole {
                name: String::from_utf8(r.name).with_context(|| format!("{name}: role name"))?,
                permissions: r.key_permission,
            });
            Ok(true)
        })?;
    }
    // Plinth keeps both sorted by name (bbolt's key order is byte order already).
    auth.users.sort_by(|a, b| a.name.cmp(&b.name));
    auth.roles.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(auth)
}

/// A delta asked of an etcd file from before the file's compact revision: its history
/// does not reach back there.
#[derive(Debug)]
pub struct FileCompacted {
    pub requested: i64,
    pub compacted: i64,
}

impl std::fmt::Display for FileCompacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the snapshot is compacted at revision {}: its history does not reach back to revision {}",
            self.compacted, self.requested
        )
    }
}

impl std::error::Error for FileCompacted {}

/// Streams the etcd file at `path` as backup records into `sink`, for group `group`:
/// with `delta_from` None, a chain of a full export and one delta ending at etcd's current
/// revision; with `Some(from)`, only the delta of every version after `from`
/// ([`FileCompacted`] if `from` is below the file's compact revision).
pub fn etcd_db_records(
    path: &Path,
    group: u64,
    delta_from: Option<i64>,
    sink: &mut dyn FnMut(BackupRecord) -> anyhow::Result<()>,
) -> anyhow::Result<EtcdDbSummary> {
    let db = Bbolt::open(path)?;
    let name = path.display();
    let keys = db.bucket(b"key")?.ok_or_else(|| anyhow::anyhow!("{name} has no `key` bucket: not an etcd v3 file"))?;
    let finished = meta_revision(&db, b"finishedCompactRev")?.unwrap_or(0);
    let scheduled = meta_revision(&db, b"scheduledCompactRev")?.unwrap_or(0);
    ensure!(
        scheduled <= finished,
        "{name}: etcd's compaction at {scheduled} had not finished (finished at {finished}); take the snapshot again"
    );
    // Pass 1: the current revision (etcd's: the newest revision in `key`, or the compact
    // revision if that is newer).
    let mut newest = 0i64;
    db.walk(&keys, &mut |k, _, _| {
        let (main, _, _) = parse_revision_key(k).ok_or_else(|| anyhow::anyhow!("{name}: bad revision key {k:?}"))?;
        newest = newest.max(main);
        Ok(true)
    })?;
    let compact = finished;
    let revision = newest.max(compact).max(1);
    let header = |kind: BackupKind, from: i64, to: i64| {
        BackupBody::Header(BackupHeader {
            format_version: store::BACKUP_FORMAT_VERSION,
            kind: kind as i32,
            group,
            from_revision: from,
            to_revision: to,
            compact_revision: compact,
        })
    };
    let full_revision = compact.max(1);
    if let Some(from) = delta_from {
        if from < full_revision {
            return Err(FileCompacted { requested: from, compacted: full_revision }.into());
        }
        ensure!(from <= revision, "{name} ends at revision {revision}, before revision {from}");
    }
    let mut count = 0u64;
    let mut emit = |body: BackupBody, count: &mut u64| {
        *count += 1;
        sink(BackupRecord { body: Some(body) })
    };
    // The leases, read once; they go into both exports (the full's table only matters for
    // keys at the compact revision, which the delta's table also holds unless revoked).
    let mut leases = Vec::new();
    if let Some(bucket) = db.bucket(b"lease")? {
        db.walk(&bucket, &mut |_, v, _| {
            leases.push(Lease::decode(v).with_context(|| format!("{name}: lease record"))?);
            Ok(true)
        })?;
    }
    leases.sort_by_key(|l| l.id);
    let auth = read_auth(&db, &name)?;
    let decode_kv = |k: &[u8], v: &[u8]| -> anyhow::Result<(i64, i64, bool, KeyValue)> {
        let (main, sub, tombstone) =
            parse_revision_key(k).ok_or_else(|| anyhow::anyhow!("{name}: bad revision key {k:?}"))?;
        let kv = KeyValue::decode(v).with_context(|| format!("{name}: KeyValue at revision {main}"))?;
        Ok((main, sub, tombstone, kv))
    };
    let mut versions = 0u64;
    // Pass 2: the full export at the compact revision.
    if delta_from.is_none() {
        emit(header(BackupKind::Full, 0, full_revision), &mut count)?;
        emit(BackupBody::Auth(auth.clone()), &mut count)?;
        for l in &leases {
            emit(BackupBody::Lease(l.clone()), &mut count)?;
        }
        let mut failed = None;
        db.walk(&keys, &mut |k, v, _| {
            let (main, sub, tombstone, kv) = decode_kv(k, v)?;
            if main > full_revision {
                return Ok(false);
            }
            if tombstone {
                failed = Some(anyhow::anyhow!("{name}: a tombstone at {main}, at or before the compact revision"));
                return Ok(false);
            }
            ensure!(kv.mod_revision == main, "{name}: KeyValue at revision {main} says {}", kv.mod_revision);
            versions += 1;
            emit(BackupBody::Key(KeyRecord { kv: Some(kv), sub }), &mut count).map(|()| true)
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        emit(BackupBody::End(BackupEnd { records_before: count }), &mut count)?;
    }
    // Pass 3: every version after it, as one delta.
    let from = delta_from.unwrap_or(full_revision);
    let mut delta_count = 0u64;
    emit(header(BackupKind::Delta, from, revision), &mut delta_count)?;
    db.walk(&keys, &mut |k, v, _| {
        let (main, sub, tombstone, mut kv) = decode_kv(k, v)?;
        if main <= from {
            return Ok(true);
        }
        versions += 1;
        if tombstone {
            kv = KeyValue { key: kv.key, mod_revision: main, ..Default::default() };
        } else if kv.mod_revision != main {
            bail!("{name}: KeyValue at revision {main} says {}", kv.mod_revision);
        }
        let event = EventRecord { delete: tombstone, kv: Some(kv), sub, prev_kv: None };
        emit(BackupBody::Event(event), &mut delta_count).map(|()| true)
    })?;
    emit(BackupBody::Auth(auth), &mut delta_count)?;
    for l in &leases {
        emit(BackupBody::Lease(l.clone()), &mut delta_count)?;
    }
    emit(BackupBody::End(BackupEnd { records_before: delta_count }), &mut delta_count)?;
    Ok(EtcdDbSummary { revision, compact_revision: compact, versions, leases: leases.len() as u64 })
}

/// Restores the etcd file at `path` into a new data dir (see `restore`).
pub fn restore_from_etcd(
    path: &Path,
    member: &super::restore::NewMember,
) -> anyhow::Result<super::restore::RestoreSummary> {
    super::restore::seed_data_dir(member, &mut |store, group| import_etcd_file(path, store, group))
}

/// Imports the etcd file at `path` into the empty group `group` of `store`, revisions kept;
/// returns what `GroupImport::finish` does.
pub fn import_etcd_file(path: &Path, store: &store::Store, group: store::GroupId) -> anyhow::Result<u64> {
    // The target revision is etcd's current one, known only after a pass over the file.
    let summary = etcd_db_records(path, group.0, None, &mut |_| Ok(()))?;
    let mut import = store.import_group(group, summary.revision)?;
    etcd_db_records(path, group.0, None, &mut |r| Ok(import.push(r)?))?;
    Ok(import.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_parse_like_etcds() {
        let mut k = Vec::new();
        k.extend_from_slice(&5i64.to_be_bytes());
        k.push(b'_');
        k.extend_from_slice(&2i64.to_be_bytes());
        assert_eq!(parse_revision_key(&k), Some((5, 2, false)));
        k.push(b't');
        assert_eq!(parse_revision_key(&k), Some((5, 2, true)));
        k[17] = b'x';
        assert_eq!(parse_revision_key(&k), None);
        assert_eq!(parse_revision_key(&k[..16]), None);
    }
}
