//! The one planner of restores: the records of a backup chain in, import operations out.
//!
//! [`ImportPlanner`] reads a full export and the deltas after it (record by record, export
//! by export) and emits the [`ImportOp`]s that rebuild the group at a target revision R:
//! the full export's keys as of its revision F, the events of `(F, R]` (previous versions
//! dropped: the store links each change to the key's version before it), the lease tables, and a finish with the
//! auth store and the revisions. Both the offline restore ([`crate::GroupImport`], which
//! applies the operations to a local store) and the online one (which proposes them through
//! the group's log) use it, so the chain checks and the lease rules exist once.
//!
//! Checks: the chain starts with a full export at or before R, each delta continues where
//! the previous export ended, nothing follows the export that reaches R, every export is
//! complete (its `End` record counts its records), events are in revision order inside
//! their range. A failure is `Corruption` naming what is wrong.
//!
//! Leases: a delta knows the lease table only at its end. The finish writes the table of
//! the last export read; the table of the export before it goes as fallback leases, taken
//! for a key live at R that names a lease the last table lacks. When R is the end of the
//! last export the import is strict (a key naming a lease neither table holds fails);
//! inside a delta such a lease was granted and revoked within it and is recreated with
//! [`crate::IMPORT_UNKNOWN_LEASE_TTL_SECS`] (see `import`).

use prost::Message;

use crate::auth::AuthState;
use crate::backup::{
    BackupBody, BackupHeader, BackupKind, BackupRecord, EventRecord, KeyRecord, BACKUP_FORMAT_VERSION,
};
use crate::error::{Error, Result};
use crate::import::{ImportEvents, ImportFinish, ImportKeys, ImportLeases, ImportOp, IMPORT_STEP_BYTES_MAX};
use crate::lease::Lease;
use crate::revision::{Revision, RevisionPair};

/// Leases per lease operation (about 30 bytes each, well under a step's bytes).
const LEASES_PER_OP_MAX: usize = 16 * 1024;

fn bad(what: impl Into<String>) -> Error {
    Error::Corruption(format!("backup chain: {}", what.into()))
}

/// The export being read.
struct OpenExport {
    header: BackupHeader,
    records: u64,
    last_event: Option<RevisionPair>,
}

/// Turns a backup chain into import operations (see the module docs). Feed it records with
/// [`ImportPlanner::push`], then call [`ImportPlanner::finish`]; operations go to the sink
/// given to each, in order, each at most about [`IMPORT_STEP_BYTES_MAX`].
pub struct ImportPlanner {
    target: Revision,
    /// The revision the exports read so far end at (`None` before the full export).
    chain_revision: Option<Revision>,
    full_revision: Revision,
    in_export: Option<OpenExport>,
    leases_prev: Vec<Lease>,
    leases_cur: Vec<Lease>,
    auth_cur: Option<AuthState>,
    auth_at_or_before_target: Option<AuthState>,
    /// An export ending at or past the target was read: later ones are refused.
    reached_target: bool,
    keys: Vec<KeyRecord>,
    events: Vec<EventRecord>,
    pending_bytes: usize,
}

/// Where operations go.
pub type OpSink<'a> = dyn FnMut(ImportOp) -> Result<()> + 'a;

impl ImportPlanner {
    /// A planner for target revision `target` (>= 1).
    pub fn new(target: Revision) -> Result<ImportPlanner> {
        if target < 1 {
            return Err(Error::InvalidCommand(format!("import to revision {target}")));
        }
        Ok(ImportPlanner {
            target,
            chain_revision: None,
            full_revision: 0,
            in_export: None,
            leases_prev: Vec::new(),
            leases_cur: Vec::new(),
            auth_cur: None,
            auth_at_or_before_target: None,
            reached_target: false,
            keys: Vec::new(),
            events: Vec::new(),
            pending_bytes: 0,
        })
    }

    /// The target revision.
    pub fn target(&self) -> Revision {
        self.target
    }

    /// Feeds the next record. Records must come export by export, each complete from its
    /// header to its end, the full export first.
    pub fn push(&mut self, record: BackupRecord, out: &mut OpSink<'_>) -> Result<()> {
        let body = record.body.ok_or_else(|| bad("record without a body"))?;
        let Some(open) = &mut self.in_export else {
            let BackupBody::Header(h) = body else { return Err(bad("an export does not start with its header")) };
            return self.begin_export(h);
        };
        open.records += 1;
        let kind = open.header.backup_kind();
        match body {
            BackupBody::Header(_) => Err(bad("header inside an export")),
            BackupBody::Key(k) if kind == BackupKind::Full => self.full_key(k, out),
            BackupBody::Event(e) if kind == BackupKind::Delta => self.event(e, out),
            BackupBody::Key(_) | BackupBody::Event(_) => Err(bad("a key in a delta or an event in a full export")),
            BackupBody::Lease(l) => {
                if let Some(l2) = self.leases_cur.last() {
                    if l2.id >= l.id {
                        return Err(bad("lease records out of order"));
                    }
                }
                self.leases_cur.push(l);
                Ok(())
            }
            BackupBody::Auth(a) => {
                self.auth_cur = Some(a);
                Ok(())
            }
            BackupBody::End(end) => {
                let open = self.in_export.take().expect("an export is open");
                if end.records_before != open.records - 1 {
                    return Err(bad(format!(
                        "export ({}, {}] ends after {} records, its end record says {}",
                        open.header.from_revision,
                        open.header.to_revision,
                        open.records - 1,
                        end.records_before
                    )));
                }
                self.end_export(open.header, out)
            }
        }
    }

    fn begin_export(&mut self, h: BackupHeader) -> Result<()> {
        if h.format_version != BACKUP_FORMAT_VERSION {
            return Err(bad(format!("format version {} (this build reads {BACKUP_FORMAT_VERSION})", h.format_version)));
        }
        if self.reached_target {
            return Err(bad("an export after the one that reaches the target revision"));
        }
        match (h.backup_kind(), self.chain_revision) {
            (BackupKind::Full, None) => {
                if h.to_revision > self.target {
                    return Err(bad(format!(
                        "the full export is at revision {}, after the target {}",
                        h.to_revision, self.target
                    )));
                }
                if h.to_revision < 1 {
                    return Err(bad(format!("a full export at revision {}", h.to_revision)));
                }
                self.full_revision = h.to_revision;
            }
            (BackupKind::Delta, Some(at)) => {
                if h.from_revision != at || h.to_revision < h.from_revision {
                    return Err(bad(format!(
                        "delta ({}, {}] does not continue the chain at revision {at}",
                        h.from_revision, h.to_revision
                    )));
                }
            }
            (BackupKind::Full, Some(_)) => return Err(bad("a second full export in one chain")),
            (_, None) => return Err(bad("the chain does not start with a full export")),
            (kind, _) => return Err(bad(format!("unknown export kind {kind:?}"))),
        }
        if h.group == u64::MAX {
            return Err(bad("group id out of range"));
        }
        self.leases_prev = std::mem::take(&mut self.leases_cur);
        self.auth_cur = None;
        self.in_export = Some(OpenExport { header: h, records: 1, last_event: None });
        Ok(())
    }

    fn end_export(&mut self, h: BackupHeader, out: &mut OpSink<'_>) -> Result<()> {
        let auth = self.auth_cur.take().ok_or_else(|| bad("an export without its auth record"))?;
        if h.backup_kind() == BackupKind::Full {
            // The keys step always goes, even empty: it sets the revision the keys are as of.
            self.flush_keys(out)?;
        } else {
            self.flush_events(out)?;
        }
        self.chain_revision = Some(h.to_revision);
        if h.to_revision <= self.target {
            self.auth_at_or_before_target = Some(auth);
        }
        if h.to_revision >= self.target {
            self.reached_target = true;
        }
        Ok(())
    }

    fn flush_keys(&mut self, out: &mut OpSink<'_>) -> Result<()> {
        self.pending_bytes = 0;
        out(ImportOp::Keys(ImportKeys { revision: self.full_revision, keys: std::mem::take(&mut self.keys) }))
    }

    fn flush_events(&mut self, out: &mut OpSink<'_>) -> Result<()> {
        self.pending_bytes = 0;
        if self.events.is_empty() {
            return Ok(());
        }
        out(ImportOp::Events(ImportEvents { events: std::mem::take(&mut self.events) }))
    }

    fn full_key(&mut self, k: KeyRecord, out: &mut OpSink<'_>) -> Result<()> {
        let kv = k.kv.as_ref().ok_or_else(|| bad("key record without a key"))?;
        if kv.mod_revision > self.full_revision || k.sub < 0 {
            return Err(bad(format!(
                "key {:?} at revision {} in a full export at {}",
                kv.key, kv.mod_revision, self.full_revision
            )));
        }
        let len = k.encoded_len();
        if !self.keys.is_empty() && self.pending_bytes + len > IMPORT_STEP_BYTES_MAX {
            self.flush_keys(out)?;
        }
        self.pending_bytes += len;
        self.keys.push(k);
        Ok(())
    }

    fn event(&mut self, mut e: EventRecord, out: &mut OpSink<'_>) -> Result<()> {
        let kv = e.kv.as_ref().ok_or_else(|| bad("event record without a key"))?;
        let open = self.in_export.as_mut().expect("an export is open");
        if e.sub < 0 || kv.mod_revision <= open.header.from_revision || kv.mod_revision > open.header.to_revision {
            return Err(bad(format!(
                "event at ({}, {}) outside its delta ({}, {}]",
                kv.mod_revision, e.sub, open.header.from_revision, open.header.to_revision
            )));
        }
        let rev = RevisionPair::new(kv.mod_revision, e.sub);
        if open.last_event.is_some_and(|last| last >= rev) {
            return Err(bad(format!("event at {rev:?} out of order")));
        }
        open.last_event = Some(rev);
        if rev.main > self.target {
            return Ok(());
        }
        if kv.key.is_empty() {
            return Err(bad("event of an empty key"));
        }
        // The import reads previous versions from what it wrote.
        e.prev_kv = None;
        let len = e.encoded_len();
        if !self.events.is_empty() && self.pending_bytes + len > IMPORT_STEP_BYTES_MAX {
            self.flush_events(out)?;
        }
        self.pending_bytes += len;
        self.events.push(e);
        Ok(())
    }

    /// Checks that the chain reached the target and emits the leases and the finish.
    pub fn finish(mut self, out: &mut OpSink<'_>) -> Result<()> {
        if self.in_export.is_some() {
            return Err(bad("the last export has no end record"));
        }
        let Some(chain_revision) = self.chain_revision else { return Err(bad("no full export")) };
        if chain_revision < self.target {
            return Err(bad(format!("the chain ends at revision {chain_revision}, before the target {}", self.target)));
        }
        self.flush_events(out)?;
        for (leases, fallback) in
            [(std::mem::take(&mut self.leases_cur), false), (std::mem::take(&mut self.leases_prev), true)]
        {
            for chunk in leases.chunks(LEASES_PER_OP_MAX) {
                out(ImportOp::Leases(ImportLeases { leases: chunk.to_vec(), fallback }))?;
            }
        }
        let auth = self.auth_at_or_before_target.take().ok_or_else(|| bad("no export ends at or before the target"))?;
        out(ImportOp::Finish(ImportFinish {
            revision: self.target,
            compact_revision: self.full_revision,
            auth: Some(auth),
            strict_leases: chain_revision == self.target,
        }))
    }
}
