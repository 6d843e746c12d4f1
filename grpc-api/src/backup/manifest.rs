//! The manifest of one tenant: the list of its backups, oldest first, as JSON.
//!
//! ```json
//! { "format_version": 1, "tenant": "default", "group": 1,
//!   "backups": [ { "kind": "full", "from_revision": 0, "to_revision": 42, "compact_revision": 0,
//!                  "time_unix_ms": 1764580000000, "time": "2025-12-01T09:06:40Z",
//!                  "size_bytes": 1234, "records": 57, "sha256": "…",
//!                  "object": "default/objects/full-00000000000000000042-1764580000000.plbk" } ] }
//! ```
//!
//! A *chain* is a full backup and the deltas after it, each starting at the revision the
//! previous one ended at. The manifest is rewritten whole (temp file, fsync, rename) after
//! the object it adds is durable, so it never names an object that is not there; an object
//! that no manifest names (a backup interrupted between the two writes) is ignored.

use anyhow::{bail, ensure};
use serde::{Deserialize, Serialize};

/// Version of the manifest layout.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
/// The tenant of a single-tenant server (group 1).
pub const DEFAULT_TENANT: &str = "default";

/// What one backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The whole tenant at `to_revision`.
    Full,
    /// The changes of `(from_revision, to_revision]`.
    Delta,
}

/// One backup in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    /// Delta: exclusive lower bound. Full: 0.
    pub from_revision: i64,
    /// The revision the backup ends at.
    pub to_revision: i64,
    /// The source's compact revision when the backup was taken.
    pub compact_revision: i64,
    /// When the backup was taken (ms since the Unix epoch).
    pub time_unix_ms: u64,
    /// The same time, RFC 3339, for people.
    pub time: String,
    /// Bytes of the object.
    pub size_bytes: u64,
    /// Records in the object.
    pub records: u64,
    /// Lowercase hex SHA-256 of the object.
    pub sha256: String,
    /// The object's name in the target.
    pub object: String,
}

/// The manifest of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub tenant: String,
    /// The source group of the tenant.
    pub group: u64,
    /// Oldest first.
    pub backups: Vec<Entry>,
}

impl Manifest {
    /// An empty manifest for `tenant`.
    pub fn new(tenant: &str, group: u64) -> Manifest {
        Manifest { format_version: MANIFEST_FORMAT_VERSION, tenant: tenant.to_string(), group, backups: Vec::new() }
    }

    /// Parses a manifest; `name` is for errors.
    pub fn decode(name: &str, bytes: &[u8]) -> anyhow::Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("manifest {name}: {e}"))?;
        ensure!(
            m.format_version == MANIFEST_FORMAT_VERSION,
            "manifest {name}: format version {} (this build reads {MANIFEST_FORMAT_VERSION})",
            m.format_version
        );
        Ok(m)
    }

    /// The bytes written.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        out.push(b'\n');
        out
    }

    /// Checks that the list is ordered and every delta continues the backup before it;
    /// the error names the first object that breaks the chain.
    pub fn check_continuity(&self) -> anyhow::Result<()> {
        let mut end: Option<i64> = None;
        for e in &self.backups {
            ensure!(
                e.from_revision <= e.to_revision,
                "backup object {}: range ({}, {}]",
                e.object,
                e.from_revision,
                e.to_revision
            );
            match (e.kind, end) {
                (Kind::Full, Some(prev)) if e.to_revision < prev => {
                    bail!(
                        "backup object {}: full backup at revision {} after one ending at {prev}",
                        e.object,
                        e.to_revision
                    )
                }
                (Kind::Full, _) => {}
                (Kind::Delta, None) => bail!("backup object {}: a delta with no full backup before it", e.object),
                (Kind::Delta, Some(prev)) if e.from_revision != prev => bail!(
                    "backup object {}: delta ({}, {}] does not continue the chain ending at revision {prev}",
                    e.object,
                    e.from_revision,
                    e.to_revision
                ),
                (Kind::Delta, Some(_)) => {}
            }
            end = Some(e.to_revision);
        }
        Ok(())
    }

    /// The newest revision a restore can reach (`None` without a full backup).
    pub fn latest_revision(&self) -> Option<i64> {
        if !self.backups.iter().any(|e| e.kind == Kind::Full) {
            return None;
        }
        self.backups.last().map(|e| e.to_revision)
    }

    /// The backups to read to restore revision `revision`: the newest full backup at or
    /// before it and the deltas after it up to the first that reaches it.
    pub fn chain_to(&self, revision: i64) -> anyhow::Result<Vec<&Entry>> {
        self.check_continuity()?;
        let start =
            self.backups.iter().rposition(|e| e.kind == Kind::Full && e.to_revision <= revision).ok_or_else(|| {
                anyhow::anyhow!("tenant {}: no full backup at or before revision {revision}", self.tenant)
            })?;
        let mut chain = vec![&self.backups[start]];
        for e in &self.backups[start + 1..] {
            if chain.last().expect("chain starts with a full").to_revision >= revision {
                break;
            }
            if e.kind == Kind::Full {
                break;
            }
            chain.push(e);
        }
        let end = chain.last().expect("chain starts with a full").to_revision;
        ensure!(end >= revision, "tenant {}: the backups reach revision {end}, not {revision}", self.tenant);
        Ok(chain)
    }

    /// The revision of the newest backup taken at or before `time_unix_ms`.
    pub fn revision_at_time(&self, time_unix_ms: u64) -> anyhow::Result<i64> {
        self.backups
            .iter()
            .rev()
            .find(|e| e.time_unix_ms <= time_unix_ms)
            .map(|e| e.to_revision)
            .ok_or_else(|| anyhow::anyhow!("tenant {}: no backup taken at or before that time", self.tenant))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn entry(kind: Kind, from: i64, to: i64) -> Entry {
        Entry {
            kind,
            from_revision: from,
            to_revision: to,
            compact_revision: 0,
            time_unix_ms: to as u64 * 1000,
            time: String::new(),
            size_bytes: 1,
            records: 2,
            sha256: String::new(),
            object: format!("{kind:?}-{from}-{to}"),
        }
    }

    fn manifest(backups: Vec<Entry>) -> Manifest {
        Manifest { backups, ..Manifest::new(DEFAULT_TENANT, 1) }
    }

    #[test]
    fn chains_pick_the_newest_full_at_or_before_the_revision() {
        let m = manifest(vec![
            entry(Kind::Full, 0, 10),
            entry(Kind::Delta, 10, 20),
            entry(Kind::Delta, 20, 30),
            entry(Kind::Full, 0, 30),
            entry(Kind::Delta, 30, 40),
        ]);
        let names = |r: i64| m.chain_to(r).unwrap().iter().map(|e| e.object.clone()).collect::<Vec<_>>();
        assert_eq!(names(10), ["Full-0-10"]);
        assert_eq!(names(15), ["Full-0-10", "Delta-10-20"]);
        assert_eq!(names(29), ["Full-0-10", "Delta-10-20", "Delta-20-30"]);
        assert_eq!(names(30), ["Full-0-30"]);
        assert_eq!(names(31), ["Full-0-30", "Delta-30-40"]);
        assert!(m.chain_to(9).is_err() && m.chain_to(41).is_err());
        assert_eq!(m.latest_revision(), Some(40));
        assert_eq!(m.revision_at_time(35_500).unwrap(), 30);
        assert_eq!(Manifest::decode("m", &m.encode()).unwrap(), m);
    }

    #[test]
    fn a_gap_names_the_object_that_breaks_the_chain() {
        let m = manifest(vec![entry(Kind::Full, 0, 10), entry(Kind::Delta, 10, 20), entry(Kind::Delta, 21, 30)]);
        let err = m.check_continuity().unwrap_err().to_string();
        assert!(err.contains("Delta-21-30"), "{err}");
        assert!(m.chain_to(15).is_err(), "a restore refuses a broken manifest");
        let m = manifest(vec![entry(Kind::Delta, 0, 10)]);
        assert!(m.check_continuity().is_err());
    }
}
