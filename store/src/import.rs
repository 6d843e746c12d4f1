//! Imports into a live group through its own log: a group's data replaced by a backup, or
//! filled from another etcd, while every replica applies the same commands.
//!
//! An import is a sequence of [`CommandBody::Import`] commands, each an [`ImportStep`]
//! carrying one [`ImportOp`] and the import's id:
//!
//! ```text
//!  Begin                         wipe the group's data, enter the importing state
//!  Keys{revision S, keys}*       live keys as of S, each with its revisions and version
//!  Events{events}*               changes after S with their original (main, sub)
//!  Leases{leases, fallback}*     the lease table (and leases kept aside, see below)
//!  Finish{revision R, compact, auth, strict_leases}
//! ```
//!
//! Every step is bounded (the proposer splits at [`IMPORT_STEP_BYTES_MAX`]) and
//! self-contained: what it needs from earlier steps is the group's replicated state, never
//! a proposer's memory. The state between steps is an [`ImportState`] under the meta key
//! `g | 'i'` (written in the step's batch, loaded on open and with snapshots), plus the
//! data the steps wrote.
//!
//! **Begin** records `floor`, the group's current revision before the wipe (the highest
//! revision any client may have seen), wipes the group's kv, gone, events and lease
//! column families and zeroes its quota counters. The auth store, the alarms, the quota
//! setting, the current and compact revisions stay as they are (revisions never move
//! backwards). The apply loop writes a begin's batch before the next command, since an
//! overlay cannot hide the wiped entries ([`crate::engine::WriteSet::wipe_group`]), and
//! then cancels every watcher of the group with a compacted response, so clients relist.
//! A begin while an import is in progress starts a new one with the same floor: steps of
//! the old one are refused from then on.
//!
//! **While importing**, every command of the group other than import steps, alarms and
//! group settings fails with [`Error::Importing`], the same on every replica; exports
//! refuse too.
//!
//! **Keys and events** keep their revisions. Keys come first, all as of one revision S;
//! events come in strictly increasing `(main, sub)` above S. Each step maintains the lease
//! → keys index and the quota counters from the replicated state (the key's previous live
//! version), so steps may be split anywhere.
//!
//! **Leases** are written as lease records; `fallback` ones are kept aside under
//! `g | 'f' | id` instead. **Finish** settles the leases the way an offline restore does:
//! every lease a live key names and the table lacks is taken from the fallback leases, or
//! (unless `strict_leases`, then the finish fails) recreated with
//! [`crate::IMPORT_UNKNOWN_LEASE_TTL_SECS`]; the fallback leases are then dropped. The auth
//! store is replaced when the finish carries one (an auth revision never goes backwards:
//! a group that had auth changes gets the restored store at a revision above its own).
//!
//! **Revisions at finish.** Into an empty group (`floor` <= 1) revisions are kept: current
//! revision R, compact revision `compact` (the full backup's revision, or the snapshot
//! revision of a migration). Into a group that had data ("replace"), the current revision
//! becomes `N = max(R, floor) + 1` and the compact revision N, as etcd's `--bump-revision
//! --mark-compacted`: no client that saw revision `floor` ever sees a smaller one, and a
//! watcher resuming from an old revision is told to relist. Watchers are canceled again at
//! finish.
//!
//! ## CAVEATS
//!
//! - The quota is not checked: an import larger than the group's quota completes, and the
//!   group then refuses writes that add data (NOSPACE) until it is compacted or its quota
//!   raised.
//! - There is no abort: an import that never finishes leaves the group refusing its clients
//!   until another import into it finishes (its data was wiped at the begin).
//! - `Status` (not a data call) reports the group's revision during an import: the floor,
//!   or the revision the import has reached when that is higher.
//! - The begin's wipe is range deletions: RocksDB drops the wiped entries at compaction.

use std::sync::Arc;

use prost::Message;

use crate::auth::AuthState;
use crate::backup::{EventRecord, KeyRecord, IMPORT_UNKNOWN_LEASE_TTL_SECS};
use crate::error::{Error, Result};
use crate::key_codec::{self as kc, Cf};
use crate::kv::{EventKind, KeyValue, LiveLinks, StoredEvent};
use crate::lease::Lease;
use crate::mvcc::{self, BatchWriter};
use crate::response::CommandResponse;
use crate::revision::{Revision, RevisionPair};

/// Most bytes of keys, events or leases one import step carries; a single record larger
/// than this travels alone (and the command must still fit `max_request_bytes`).
pub const IMPORT_STEP_BYTES_MAX: usize = 1 << 20;

/// The payload of [`crate::CommandBody::Import`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImportStep {
    /// The import this step belongs to (picked by the proposer at begin).
    #[prost(uint64, tag = "1")]
    pub import_id: u64,
    #[prost(oneof = "ImportOp", tags = "2, 3, 4, 5, 6")]
    pub op: Option<ImportOp>,
}

/// One step of an import (see the module docs).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ImportOp {
    #[prost(message, tag = "2")]
    Begin(ImportBegin),
    #[prost(message, tag = "3")]
    Keys(ImportKeys),
    #[prost(message, tag = "4")]
    Events(ImportEvents),
    #[prost(message, tag = "5")]
    Leases(ImportLeases),
    #[prost(message, tag = "6")]
    Finish(ImportFinish),
}

/// Starts an import: wipes the group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ImportBegin {
    /// Refuse unless the group never held data (revision 1), or is being imported into
    /// from such a state: an import that keeps its source's revisions (a migration) needs
    /// an empty group. Checked here, in the log, so a write that raced the proposer's own
    /// check cannot turn the import into a replace.
    #[prost(bool, tag = "1")]
    pub require_empty: bool,
}

/// Live keys as of `revision`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImportKeys {
    #[prost(int64, tag = "1")]
    pub revision: i64,
    #[prost(message, repeated, tag = "2")]
    pub keys: Vec<KeyRecord>,
}

/// Changes with their original revisions, ascending.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImportEvents {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<EventRecord>,
}

/// Lease records, or (`fallback`) leases kept aside for keys that name them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImportLeases {
    #[prost(message, repeated, tag = "1")]
    pub leases: Vec<Lease>,
    #[prost(bool, tag = "2")]
    pub fallback: bool,
}

/// Ends an import at `revision`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImportFinish {
    /// R: the revision imported (at or above every revision written).
    #[prost(int64, tag = "1")]
    pub revision: i64,
    /// The compact revision of an import into an empty group (nothing older was imported);
    /// 0 or 1: none.
    #[prost(int64, tag = "2")]
    pub compact_revision: i64,
    /// The auth store to install; none keeps the group's.
    #[prost(message, optional, tag = "3")]
    pub auth: Option<AuthState>,
    /// A live key naming a lease that neither the table nor the fallback leases hold fails
    /// the finish, rather than getting a new lease.
    #[prost(bool, tag = "4")]
    pub strict_leases: bool,
}

impl ImportOp {
    /// This operation as operations whose records take at most `bytes_max` bytes each (a
    /// larger record alone), in order: keys keep their revision, events their order. A
    /// proposer splits what it is sent so that every command stays bounded; begin and
    /// finish are returned whole.
    pub fn split(self, bytes_max: usize) -> Vec<ImportOp> {
        match self {
            ImportOp::Keys(k) => {
                let revision = k.revision;
                let chunks = chunks(k.keys, bytes_max);
                if chunks.is_empty() {
                    return vec![ImportOp::Keys(ImportKeys { revision, keys: Vec::new() })];
                }
                chunks.into_iter().map(|keys| ImportOp::Keys(ImportKeys { revision, keys })).collect()
            }
            ImportOp::Events(e) => chunks(e.events, bytes_max)
                .into_iter()
                .map(|events| ImportOp::Events(ImportEvents { events }))
                .collect(),
            ImportOp::Leases(l) => {
                let fallback = l.fallback;
                chunks(l.leases, bytes_max)
                    .into_iter()
                    .map(|leases| ImportOp::Leases(ImportLeases { leases, fallback }))
                    .collect()
            }
            whole => vec![whole],
        }
    }
}

/// `records` in runs of at most `bytes_max` encoded bytes (a larger record alone).
fn chunks<T: Message>(records: Vec<T>, bytes_max: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0;
    for r in records {
        let len = r.encoded_len();
        match out.last_mut() {
            Some(run) if bytes + len <= bytes_max => run.push(r),
            _ => {
                out.push(vec![r]);
                bytes = 0;
            }
        }
        bytes += len;
    }
    out
}

/// The replicated state of an import in progress (meta key `g | 'i'`).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ImportState {
    #[prost(uint64, tag = "1")]
    pub import_id: u64,
    /// The group's current revision when the first begin applied.
    #[prost(int64, tag = "2")]
    pub floor: i64,
    /// The revision of the keys steps (0 before the first).
    #[prost(int64, tag = "3")]
    pub keys_revision: i64,
    /// The last event written (main 0: none).
    #[prost(int64, tag = "4")]
    pub last_event_main: i64,
    #[prost(int64, tag = "5")]
    pub last_event_sub: i64,
}

impl ImportState {
    pub(crate) fn decode_stored(bytes: &[u8]) -> Result<ImportState> {
        ImportState::decode(bytes).map_err(|e| Error::Corruption(format!("import state: {e}")))
    }

    fn last_event(&self) -> Option<RevisionPair> {
        (self.last_event_main > 0).then(|| RevisionPair::new(self.last_event_main, self.last_event_sub))
    }
}

/// What an applied import step answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportResponse {
    /// The import's floor (see the module docs).
    pub floor: Revision,
    /// The group's current and compact revisions after the step.
    pub revision: Revision,
    pub compact_revision: Revision,
    /// The step began an import (watchers are canceled, leases reset).
    pub began: bool,
    /// The step finished the import.
    pub finished: bool,
}

fn invalid(what: impl Into<String>) -> Error {
    Error::InvalidCommand(format!("import: {}", what.into()))
}

/// Stateless checks of a step (before proposing, and again in apply).
pub(crate) fn validate(step: &ImportStep) -> Result<()> {
    if step.import_id == 0 {
        return Err(invalid("import id 0"));
    }
    match &step.op {
        None => Err(invalid("a step without an operation")),
        Some(ImportOp::Finish(f)) if f.revision < 1 || f.compact_revision > f.revision => {
            Err(invalid(format!("finish at revision {} with compact revision {}", f.revision, f.compact_revision)))
        }
        Some(ImportOp::Keys(k)) if k.revision < 1 => Err(invalid(format!("keys at revision {}", k.revision))),
        Some(_) => Ok(()),
    }
}

/// Applies one validated step to the batch.
pub(crate) fn apply(w: &mut BatchWriter<'_>, step: ImportStep) -> Result<CommandResponse> {
    let op = step.op.expect("validate rejects steps without an operation");
    if let ImportOp::Begin(b) = op {
        return begin(w, step.import_id, b.require_empty);
    }
    let Some(state) = w.meta.import.clone() else {
        return Err(invalid("no import in progress"));
    };
    if state.import_id != step.import_id {
        return Err(invalid(format!(
            "step of import {:x}, but import {:x} is in progress",
            step.import_id, state.import_id
        )));
    }
    let mut state = (*state).clone();
    match op {
        ImportOp::Begin(_) => unreachable!("handled above"),
        ImportOp::Keys(k) => keys(w, &mut state, k)?,
        ImportOp::Events(e) => events(w, &mut state, e)?,
        ImportOp::Leases(l) => leases(w, l)?,
        ImportOp::Finish(f) => return finish(w, &state, f),
    }
    set_state(w, Some(state));
    Ok(CommandResponse::Import(response(w, false, false)))
}

fn response(w: &BatchWriter<'_>, began: bool, finished: bool) -> ImportResponse {
    ImportResponse {
        floor: w.meta.import.as_ref().map_or(0, |s| s.floor),
        revision: w.meta.current_revision,
        compact_revision: w.meta.visible_compact_revision(),
        began,
        finished,
    }
}

/// Durability: the state goes in the step's own batch, under the same applied index as the
/// data it describes, so a restart or a snapshot resumes the import exactly there.
fn set_state(w: &mut BatchWriter<'_>, state: Option<ImportState>) {
    match &state {
        Some(s) => w.ws.put(Cf::Meta, kc::meta_import_key(w.g), s.encode_to_vec()),
        None => w.ws.delete(Cf::Meta, kc::meta_import_key(w.g)),
    }
    w.meta.import = state.map(Arc::new);
}

/// Whether a group whose state is `meta` may take an import that needs an empty group.
pub(crate) fn is_empty_for_import(meta: &crate::meta::ApplyMeta) -> bool {
    match &meta.import {
        Some(s) => s.floor <= 1,
        None => meta.current_revision == 1,
    }
}

fn begin(w: &mut BatchWriter<'_>, import_id: u64, require_empty: bool) -> Result<CommandResponse> {
    if require_empty && !is_empty_for_import(&w.meta) {
        return Err(invalid(format!("the group is not empty (revision {})", w.meta.current_revision)));
    }
    // A begin during an import keeps its floor: what the unfinished import wrote was never
    // served (data calls are refused), and the current revision stays where it got to
    // (revisions never go backwards), which the finish takes into account.
    let floor = match &w.meta.import {
        Some(s) => s.floor,
        None => w.meta.current_revision,
    };
    w.meta.kv_bytes = 0;
    w.meta.history_bytes_written = 0;
    w.meta.history_bytes_compacted = 0;
    set_state(w, Some(ImportState { import_id, floor, ..Default::default() }));
    // Last: nothing reads through the batch after the wipe (the apply loop writes it now).
    w.ws.wipe_group(w.g);
    Ok(CommandResponse::Import(response(w, true, false)))
}

fn check_live(kv: &KeyValue) -> Result<()> {
    if kv.key.is_empty() || kv.version < 1 || kv.create_revision < 1 || kv.create_revision > kv.mod_revision {
        return Err(invalid(format!("key record violates invariants: {kv:?}")));
    }
    Ok(())
}

/// Replaces `prev`, the live version of `key` the caller has just read, with `kv` (`None`:
/// deletes it) and `value`, its `kv` entry, keeping the lease index and the live bytes in
/// step with the replicated state.
fn set_live(
    w: &mut BatchWriter<'_>,
    key: &bytes::Bytes,
    prev: Option<&KeyValue>,
    kv: Option<&KeyValue>,
    value: Option<Vec<u8>>,
) -> Result<()> {
    let g = w.g;
    if let Some(p) = prev {
        w.meta.kv_bytes -= p.quota_bytes();
        if p.lease != 0 {
            w.ws.delete(Cf::Lease, kc::lease_key_entry(g, p.lease, key));
        }
    }
    match (kv, value) {
        (Some(kv), Some(value)) => {
            w.meta.kv_bytes += kv.quota_bytes();
            if kv.lease != 0 {
                w.ws.put(Cf::Lease, kc::lease_key_entry(g, kv.lease, key), Vec::new());
            }
            w.ws.put(Cf::Kv, kc::kv_key(g, key), value);
        }
        _ => {
            if prev.is_none() {
                return Err(invalid(format!("delete of {key:?}, which is not live")));
            }
            w.ws.delete(Cf::Kv, kc::kv_key(g, key));
        }
    }
    Ok(())
}

fn keys(w: &mut BatchWriter<'_>, state: &mut ImportState, k: ImportKeys) -> Result<()> {
    if state.last_event().is_some() {
        return Err(invalid("keys after events"));
    }
    if state.keys_revision != 0 && state.keys_revision != k.revision {
        return Err(invalid(format!("keys as of {} after keys as of {}", k.revision, state.keys_revision)));
    }
    for record in k.keys {
        let kv = record.kv.ok_or_else(|| invalid("key record without a key"))?;
        check_live(&kv)?;
        if kv.mod_revision > k.revision || record.sub < 0 {
            return Err(invalid(format!(
                "key {:?} at revision {} in keys as of {}",
                kv.key, kv.mod_revision, k.revision
            )));
        }
        let stored = kv.encode_stored();
        // A key's version as of the keys' revision starts its chain: nothing before it is
        // imported, and its bytes count as compacted.
        let ev = StoredEvent {
            kind: EventKind::Put,
            history_bytes_before: w.meta.history_bytes_written,
            prev: None,
            key: &kv.key,
            stored: &stored,
        };
        w.ws.put(Cf::Events, kc::event_key(w.g, RevisionPair::new(kv.mod_revision, record.sub)), ev.encode());
        w.meta.history_bytes_written += kv.quota_bytes();
        w.meta.history_bytes_compacted += kv.quota_bytes();
        let value = LiveLinks { sub: record.sub, prev: None }.encode_with(&stored);
        let prev = mvcc::get_current(&w.reader(), w.g, &kv.key)?;
        set_live(w, &kv.key, prev.as_ref(), Some(&kv), Some(value))?;
    }
    state.keys_revision = k.revision;
    w.meta.current_revision = w.meta.current_revision.max(k.revision);
    Ok(())
}

fn events(w: &mut BatchWriter<'_>, state: &mut ImportState, e: ImportEvents) -> Result<()> {
    for event in e.events {
        let kv = event.kv.ok_or_else(|| invalid("event record without a key"))?;
        let rev = RevisionPair::new(kv.mod_revision, event.sub);
        if event.sub < 0 || rev.main <= state.keys_revision || state.last_event().is_some_and(|last| last >= rev) {
            return Err(invalid(format!(
                "event at {rev:?} after {:?} (keys as of {})",
                state.last_event(),
                state.keys_revision
            )));
        }
        if kv.key.is_empty() {
            return Err(invalid("event of an empty key"));
        }
        let g = w.g;
        // The event links to the key's head, as a put or delete applied here would.
        let live = mvcc::get_live(&w.reader(), g, &kv.key)?;
        let (kind, stored, bytes) = if event.delete {
            (EventKind::Delete, Vec::new(), kv.key.len() as u64)
        } else {
            check_live(&kv)?;
            (EventKind::Put, kv.encode_stored(), kv.quota_bytes())
        };
        let link = match (&live, kind) {
            (Some(l), _) => Some(l.revision()),
            (None, EventKind::Delete) => return Err(invalid(format!("delete of {:?}, which is not live", kv.key))),
            (None, EventKind::Put) => w.take_gone(&kv.key)?,
        };
        let ev = StoredEvent {
            kind,
            history_bytes_before: w.meta.history_bytes_written,
            prev: link,
            key: &kv.key,
            stored: &stored,
        };
        w.meta.history_bytes_written += bytes;
        w.ws.put(Cf::Events, kc::event_key(g, rev), ev.encode());
        if let Some(ended) = link.filter(|_| event.delete) {
            w.ws.put(Cf::Gone, kc::gone_key(g, &kv.key, rev), crate::kv::encode_gone(Some(ended)));
            set_live(w, &kv.key, live.as_ref().map(|l| &l.kv), None, None)?;
        } else {
            let value = LiveLinks { sub: rev.sub, prev: link }.encode_with(&stored);
            set_live(w, &kv.key, live.as_ref().map(|l| &l.kv), Some(&kv), Some(value))?;
        }
        state.last_event_main = rev.main;
        state.last_event_sub = rev.sub;
        w.meta.current_revision = w.meta.current_revision.max(rev.main);
    }
    Ok(())
}

fn leases(w: &mut BatchWriter<'_>, l: ImportLeases) -> Result<()> {
    for lease in l.leases {
        if lease.id == 0 || lease.ttl < 0 || lease.ttl > crate::lease::MAX_LEASE_TTL_SECS {
            return Err(invalid(format!("lease {} with TTL {}", lease.id, lease.ttl)));
        }
        let key = if l.fallback { kc::lease_fallback_key(w.g, lease.id) } else { kc::lease_record_key(w.g, lease.id) };
        w.ws.put(Cf::Lease, key, lease.encode_to_vec());
    }
    Ok(())
}

fn finish(w: &mut BatchWriter<'_>, state: &ImportState, f: ImportFinish) -> Result<CommandResponse> {
    let written = state.keys_revision.max(state.last_event_main);
    if f.revision < written {
        return Err(invalid(format!("finish at revision {} below revision {written} already imported", f.revision)));
    }
    let g = w.g;
    // Every lease a live key names, once: the lease index is ordered by lease id, so one
    // seek per lease.
    let mut named = Vec::new();
    {
        let r = w.reader();
        let (start, end) = kc::lease_keys_range(g);
        let mut c = r.cursor(Cf::Lease, &end);
        c.seek(&start);
        while let Some((k, _)) = c.next_entry()? {
            let id = kc::lease_key_entry_id(&k).ok_or_else(|| Error::Corruption("lease key entry".into()))?;
            named.push(id);
            c.seek(&kc::lease_keys_end(g, id));
        }
    }
    for id in named {
        if w.reader().get(Cf::Lease, &kc::lease_record_key(g, id))?.is_some() {
            continue;
        }
        let lease = match w.reader().get(Cf::Lease, &kc::lease_fallback_key(g, id))? {
            Some(v) => Lease::decode(&v[..]).map_err(|e| Error::Corruption(format!("fallback lease {id}: {e}")))?,
            None if f.strict_leases => {
                return Err(invalid(format!("a live key is attached to lease {id}, which the import does not hold")))
            }
            None => Lease { id, ttl: IMPORT_UNKNOWN_LEASE_TTL_SECS, remaining_ttl: 0 },
        };
        w.ws.put(Cf::Lease, kc::lease_record_key(g, id), lease.encode_to_vec());
    }
    let fallbacks: Vec<Vec<u8>> = {
        let r = w.reader();
        let (start, end) = kc::lease_fallback_range(g);
        let mut c = r.cursor(Cf::Lease, &end);
        c.seek(&start);
        let mut out = Vec::new();
        while let Some((k, _)) = c.next_entry()? {
            out.push(k);
        }
        out
    };
    for k in fallbacks {
        w.ws.delete(Cf::Lease, k);
    }
    if let Some(mut auth) = f.auth {
        if *w.meta.auth != crate::auth::initial() {
            // Tokens and checked writes carry the auth revision they were issued at: the
            // restored store must be newer than any of them.
            auth.revision = auth.revision.max(w.meta.auth.revision + 1);
        }
        w.ws.put(Cf::Meta, kc::meta_auth_key(g), auth.encode_to_vec());
        w.meta.auth = Arc::new(auth);
    }
    let (current, compact) = if state.floor <= 1 {
        // Into an empty group: revisions kept.
        let compact = if f.compact_revision > 1 {
            w.meta.compact_revision.max(f.compact_revision)
        } else {
            w.meta.compact_revision
        };
        (f.revision.max(w.meta.current_revision), compact)
    } else {
        // Replace: above anything a client saw, everything older compacted. (The current
        // revision is at least the floor, higher only after an unfinished import before.)
        let n = f.revision.max(state.floor).max(w.meta.current_revision) + 1;
        w.meta.history_bytes_compacted = w.meta.history_bytes_written;
        (n, n)
    };
    assert!(current >= w.meta.current_revision, "import finish moves the revision backwards");
    w.meta.current_revision = current;
    w.meta.compact_revision = compact;
    // Every backup chain of the group ends here: a delta from before the import would not
    // describe its wipe, so the next backup is a full one (see `PinnedExport::delta`).
    w.meta.backup_chain_break = current;
    w.ws.put(Cf::Meta, kc::meta_backup_key(g), crate::meta::encode_backup_mark(&w.meta));
    let floor = state.floor;
    set_state(w, None);
    let mut r = response(w, false, true);
    r.floor = floor;
    Ok(CommandResponse::Import(r))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::backup::BackupRecord;
    use crate::command::{
        Command, CommandBody, CompactRequest, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest,
        RequestOp, TxnRequest,
    };
    use crate::config::StoreConfig;
    use crate::engine;
    use crate::import_plan::ImportPlanner;
    use crate::revision::GroupId;
    use crate::store::Store;
    use crate::watch::WatchSpec;

    const G: GroupId = GroupId(7);

    /// Seeds run by the replica test; `PLINTH_IMPORT_SEED=<n>` replays one.
    const SEEDS: u64 = 4;

    /// A store, the last log index of group `G`, and every entry it applied (its log).
    struct Replica {
        store: Store,
        index: u64,
        log: Vec<(u64, Vec<u8>)>,
    }

    impl Replica {
        fn open(dir: &std::path::Path) -> Replica {
            let store = Store::open(dir, StoreConfig::default()).unwrap();
            let index = store.applied_index(G);
            Replica { store, index, log: Vec::new() }
        }

        /// Applies log entries as a replay does: in one batch, those at or below the
        /// applied index answered `AlreadyApplied`.
        fn replay(&mut self, entries: &[(u64, Vec<u8>)]) -> Vec<Result<CommandResponse>> {
            let batch: Vec<(u64, &[u8])> = entries.iter().map(|(i, d)| (*i, &d[..])).collect();
            self.index = self.index.max(entries.last().map_or(0, |e| e.0));
            self.store.apply(G, &batch).expect("apply")
        }

        /// Applies `bodies` as consecutive log entries, in one apply batch.
        fn apply(&mut self, bodies: &[CommandBody]) -> Vec<Result<CommandResponse>> {
            let encoded: Vec<(u64, Vec<u8>)> = bodies
                .iter()
                .map(|b| {
                    self.index += 1;
                    (self.index, Command::new(self.index, b.clone()).encode_to_vec())
                })
                .collect();
            let entries: Vec<(u64, &[u8])> = encoded.iter().map(|(i, d)| (*i, &d[..])).collect();
            let results = self.store.apply(G, &entries).expect("apply");
            self.log.extend(encoded);
            results
        }
    }

    fn put(key: String, value: String, lease: i64) -> CommandBody {
        CommandBody::Put(PutRequest { key: key.into(), value: value.into(), lease, ..Default::default() })
    }

    fn random_ops(rng: &mut StdRng, n: usize, leases: &mut Vec<i64>) -> Vec<CommandBody> {
        let key = |rng: &mut StdRng| format!("k{:02}", rng.random_range(0..20));
        (0..n)
            .map(|_| match rng.random_range(0..10) {
                0..=4 => {
                    let lease = if !leases.is_empty() && rng.random_bool(0.3) { leases[0] } else { 0 };
                    put(key(rng), format!("v{}", rng.random::<u32>()), lease)
                }
                5 | 6 => CommandBody::DeleteRange(DeleteRangeRequest {
                    key: key(rng).into(),
                    range_end: Bytes::new(),
                    prev_kv: false,
                }),
                7 => {
                    let id = 100 + leases.len() as i64;
                    leases.insert(0, id);
                    CommandBody::LeaseGrant(LeaseGrantRequest { ttl: 30, id })
                }
                _ => CommandBody::Txn(TxnRequest {
                    compare: vec![],
                    success: vec![
                        RequestOp::put(PutRequest { key: "t-a".into(), value: "1".into(), ..Default::default() }),
                        RequestOp::put(PutRequest { key: key(rng).into(), value: "2".into(), ..Default::default() }),
                    ],
                    failure: vec![],
                }),
            })
            .collect()
    }

    fn export(store: &Store, from: Option<Revision>) -> Vec<BackupRecord> {
        let mut out = Vec::new();
        let mut sink = |r: BackupRecord| {
            out.push(r);
            Ok(())
        };
        match from {
            None => store.export_full(G, &mut sink).unwrap(),
            Some(f) => store.export_delta(G, f, &mut sink).unwrap(),
        };
        out
    }

    fn all(revision: Revision) -> RangeRequest {
        RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            revision,
            ..Default::default()
        }
    }

    /// The import steps of a chain to `target`, with import id `id`.
    fn plan(chain: &[Vec<BackupRecord>], target: Revision, id: u64) -> Vec<CommandBody> {
        let mut planner = ImportPlanner::new(target).unwrap();
        let mut ops = vec![ImportOp::Begin(ImportBegin::default())];
        for export in chain {
            for r in export {
                planner
                    .push(r.clone(), &mut |op| {
                        ops.push(op);
                        Ok(())
                    })
                    .unwrap();
            }
        }
        planner
            .finish(&mut |op| {
                ops.push(op);
                Ok(())
            })
            .unwrap();
        ops.into_iter().map(|op| CommandBody::Import(ImportStep { import_id: id, op: Some(op) })).collect()
    }

    /// Every chunk of the group's snapshot: the whole replicated state, byte for byte.
    fn state(store: &Store) -> Vec<Vec<u8>> {
        store.snapshot(G).unwrap().map(|c| c.unwrap()).collect()
    }

    /// A source with history, a full export at F and a delta to its end; targets that had
    /// data of their own. Replicas apply the same log: one entry per batch with a restart in
    /// the middle, all in one batch (a begin ends its batch), and in random batches with a
    /// restart and a replay of the whole log from its start. All end byte-identical, with the
    /// source's keys at R and the bumped revisions.
    #[test]
    fn steps_apply_identically_on_replicas_and_survive_restarts_and_replays() {
        let seeds: Vec<u64> = match std::env::var("PLINTH_IMPORT_SEED") {
            Ok(s) => vec![s.parse().expect("PLINTH_IMPORT_SEED is a number")],
            Err(_) => (0..SEEDS).collect(),
        };
        for seed in seeds {
            eprintln!("import seed {seed} (replay with PLINTH_IMPORT_SEED={seed})");
            replicas_agree(seed);
        }
    }

    fn replicas_agree(seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut source = Replica::open(dirs[0].path());
        let mut leases = Vec::new();
        source.apply(&random_ops(&mut rng, 60, &mut leases));
        let full = export(&source.store, None);
        let full_revision = source.store.current_revision(G);
        source.apply(&random_ops(&mut rng, 40, &mut leases));
        let delta = export(&source.store, Some(full_revision));
        let end = source.store.current_revision(G);
        let target = rng.random_range(full_revision..=end);
        let steps = plan(&[full, delta], target, 42);

        let mut a = Replica::open(dirs[1].path());
        let mut b = Replica::open(dirs[2].path());
        for r in [&mut a, &mut b] {
            r.apply(&(0..150).map(|i| put(format!("old{i}"), "x".into(), 0)).collect::<Vec<_>>());
        }
        let floor = a.store.current_revision(G);
        assert!(floor > end, "the targets are ahead of the source (floor {floor}, source {end})");
        let watcher = a.store.watch_stream(G);
        watcher.watch(WatchSpec { key: "\0".into(), range_end: "\0".into(), ..WatchSpec::default() });
        assert!(watcher.recv_timeout(Duration::from_secs(5)).is_some_and(|e| e.created));

        // Replica a: one step per batch, a write refused in the middle, a restart.
        let half = steps.len() / 2;
        let mut mid_import_snapshot = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let r = a.apply(std::slice::from_ref(step));
            assert!(r[0].is_ok(), "step {i}: {:?}", r[0]);
            if i == 0 {
                let cancel = watcher.recv_timeout(Duration::from_secs(5)).expect("the begin cancels watchers");
                assert!(cancel.canceled && cancel.compact_revision >= floor, "{cancel:?}");
                assert!(a.store.import_state(G).is_some());
                // A watcher created while importing is canceled at once, as compacted.
                let late = a.store.watch_stream(G);
                late.watch(WatchSpec {
                    key: "\0".into(),
                    range_end: "\0".into(),
                    start_revision: 1,
                    ..WatchSpec::default()
                });
                assert!(late.recv_timeout(Duration::from_secs(5)).is_some_and(|e| e.created));
                let cancel = late.recv_timeout(Duration::from_secs(5)).expect("canceled");
                assert!(cancel.canceled && cancel.compact_revision > 0, "{cancel:?}");
            }
            if i == half {
                let refused = a.apply(&[put("during".into(), "x".into(), 0)]);
                assert!(matches!(refused[0], Err(Error::Importing)), "{:?}", refused[0]);
                mid_import_snapshot = state(&a.store);
                a.store.flush().unwrap();
                drop(a);
                a = Replica::open(dirs[1].path());
                assert_eq!(a.store.import_state(G).map(|s| s.floor), Some(floor), "the import state survives");
            }
        }
        // Replica b: everything in one batch, the refused write at the same place.
        let mut all_b: Vec<CommandBody> = steps.clone();
        all_b.insert(half + 1, put("during".into(), "x".into(), 0));
        let results = b.apply(&all_b);
        assert!(matches!(results[half + 1], Err(Error::Importing)));
        assert!(results.iter().enumerate().all(|(i, r)| i == half + 1 || r.is_ok()), "{results:?}");

        // Replica c: b's log in random batches, restarted part way, then the whole log again
        // from its first entry (a replay after a restart that kept nothing of the batches
        // past the flushed point would re-deliver exactly those).
        let mut c = Replica::open(dirs[3].path());
        let log = b.log.clone();
        let cut = rng.random_range(1..log.len());
        let mut at = 0;
        while at < cut {
            let to = (at + rng.random_range(1..8)).min(cut);
            c.replay(&log[at..to]);
            at = to;
        }
        drop(c);
        let mut c = Replica::open(dirs[3].path());
        assert_eq!(c.store.applied_index(G), log[cut - 1].0, "the restart kept the applied index");
        let replayed = c.replay(&log);
        assert!(replayed[..cut].iter().all(|r| matches!(r, Err(Error::AlreadyApplied { .. }))));

        // Replica d: the snapshot a Raft leader would send mid-import, then the rest of the log.
        let mut d = Replica::open(dirs[4].path());
        let index = d.store.install_snapshot(G, mid_import_snapshot.into_iter()).unwrap();
        assert!(d.store.import_state(G).is_some(), "the snapshot carries the import in progress");
        let rest: Vec<(u64, Vec<u8>)> = log.iter().filter(|(i, _)| *i > index).cloned().collect();
        let after = d.replay(&rest);
        assert!(after.iter().all(|r| r.is_ok()), "after the snapshot: {after:?}");

        let n = target.max(floor) + 1;
        for r in [&a, &b, &c, &d] {
            assert!(r.store.wait_compaction_finished(G, n, Duration::from_secs(20)), "compaction at {n}");
        }
        assert_eq!(state(&a.store), state(&b.store), "replicas a and b diverged");
        assert_eq!(state(&c.store), state(&b.store), "the replayed replica diverged");
        assert_eq!(state(&d.store), state(&b.store), "the replica installed from a snapshot diverged");
        let want = source.store.range(G, &all(target)).unwrap().kvs;
        let got = a.store.range(G, &all(0)).unwrap().kvs;
        assert_eq!(got, want, "keys at {target}");
        assert_eq!((a.store.current_revision(G), a.store.compact_revision(G)), (n, n));
        assert!(a.store.import_state(G).is_none());
        for kv in &got {
            if kv.lease != 0 {
                assert!(a.store.lease(G, kv.lease).unwrap().is_some(), "key {:?} names a missing lease", kv.key);
            }
        }
        // The group takes writes again, above everything it had.
        let r = a.apply(&[put("after".into(), "y".into(), 0)]);
        assert!(matches!(&r[0], Ok(CommandResponse::Put(p)) if p.revision == n + 1), "{:?}", r[0]);
        a.store.check_invariants(G);
    }

    /// A source in `dir` with `before` random operations, a full export at F, `after` more
    /// and a delta to its end R: the source, the chain, F and R.
    fn source_chain(
        rng: &mut StdRng,
        dir: &std::path::Path,
        before: usize,
        after: usize,
    ) -> (Replica, Vec<Vec<BackupRecord>>, Revision, Revision) {
        let mut source = Replica::open(dir);
        let mut leases = Vec::new();
        source.apply(&random_ops(rng, before, &mut leases));
        let full = export(&source.store, None);
        let f = source.store.current_revision(G);
        source.apply(&random_ops(rng, after, &mut leases));
        let delta = export(&source.store, Some(f));
        let end = source.store.current_revision(G);
        (source, vec![full, delta], f, end)
    }

    /// The group's `gone` entries and delete records, by revision.
    fn deletes(store: &Store) -> (usize, Vec<Revision>) {
        let db = &store.inner.db;
        let (from, to) = (kc::group_prefix(G).to_vec(), kc::group_end(G));
        let mode = rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward);
        let gone = db.iterator_cf(engine::cf(db, Cf::Gone), mode).map(|e| e.unwrap().0).take_while(|k| k[..] < to[..]);
        let mode = rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward);
        let records =
            db.iterator_cf(engine::cf(db, Cf::Events), mode).map(|e| e.unwrap()).take_while(|(k, _)| k[..] < to[..]);
        let deletes = records
            .filter(|(_, v)| crate::kv::StoredEvent::decode(v).unwrap().kind == EventKind::Delete)
            .map(|(k, _)| kc::decode_event_key(&k).unwrap().main)
            .collect();
        (gone.count(), deletes)
    }

    /// An import into a group that was compacted and purged past the backup's revisions: its
    /// begin resets the finished purge revision, so the purge of the import's final
    /// compaction walks the imported history from its start and removes every delete below
    /// it, with its `gone` entry, as it would have in the source.
    #[test]
    fn a_replace_below_the_old_purge_is_purged_from_its_start() {
        let mut rng = StdRng::seed_from_u64(21);
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let (source, chain, _, end) = source_chain(&mut rng, dirs[0].path(), 60, 120);
        assert!(!deletes(&source.store).1.is_empty(), "the source deleted keys");

        let mut t = Replica::open(dirs[1].path());
        t.apply(&random_ops(&mut rng, 400, &mut Vec::new()));
        let purged = t.store.current_revision(G);
        assert!(purged > end + 10);
        t.apply(&[CommandBody::Compact(CompactRequest { revision: purged, physical: false })]);
        assert!(t.store.wait_compaction_finished(G, purged, Duration::from_secs(20)));

        for (i, r) in t.apply(&plan(&chain, end, 7)).into_iter().enumerate() {
            assert!(r.is_ok(), "step {i}: {r:?}");
        }
        let n = t.store.compact_revision(G);
        assert!(n > purged, "the import's finish compacts above everything the group had");
        assert!(t.store.wait_compaction_finished(G, n, Duration::from_secs(20)));
        assert_eq!(deletes(&t.store), (0, Vec::new()), "every imported delete is below {n}");
        assert_eq!(t.store.range(G, &all(0)).unwrap().kvs, source.store.range(G, &all(end)).unwrap().kvs);
        t.store.check_invariants(G);
    }

    /// Into an empty group revisions are kept: current R, compact at the full export, and
    /// reads between them equal the source's.
    #[test]
    fn import_into_an_empty_group_keeps_revisions() {
        let mut rng = StdRng::seed_from_u64(9);
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let (source, chain, f, end) = source_chain(&mut rng, dirs[0].path(), 50, 50);
        let mut t = Replica::open(dirs[1].path());
        for (i, r) in t.apply(&plan(&chain, end, 5)).into_iter().enumerate() {
            assert!(r.is_ok(), "step {i}: {r:?}");
        }
        assert_eq!((t.store.current_revision(G), t.store.compact_revision(G)), (end, f));
        // The import ends every backup chain of the group: no delta starts before it, not
        // even from revisions the group can still read.
        let refused = t.store.export_delta(G, f, &mut |_| Ok(()));
        assert!(
            matches!(refused, Err(Error::Compacted { requested, compacted }) if requested == f && compacted == end)
        );
        assert!(t.store.export_delta(G, end, &mut |_| Ok(())).is_ok());
        for rev in [f, (f + end) / 2, end] {
            assert_eq!(t.store.range(G, &all(rev)).unwrap().kvs, source.store.range(G, &all(rev)).unwrap().kvs);
        }
        assert_eq!(t.store.leases(G).unwrap(), source.store.leases(G).unwrap());
    }

    #[test]
    fn operations_split_into_bounded_runs_in_order() {
        let lease = |id| Lease { id, ttl: 10, remaining_ttl: 0 };
        let op = ImportOp::Leases(ImportLeases { leases: (1..=100).map(lease).collect(), fallback: true });
        let one = lease(1).encoded_len();
        let parts = op.split(one * 30);
        assert_eq!(parts.len(), 4);
        let mut ids = Vec::new();
        for p in parts {
            let ImportOp::Leases(l) = p else { panic!("a leases operation") };
            let bytes: usize = l.leases.iter().map(Message::encoded_len).sum();
            assert!(l.fallback && bytes <= one * 30, "{bytes} bytes in one part");
            ids.extend(l.leases.iter().map(|l| l.id));
        }
        assert_eq!(ids, (1..=100).collect::<Vec<_>>());
        let empty = ImportOp::Keys(ImportKeys { revision: 4, keys: Vec::new() }).split(10);
        assert!(matches!(&empty[..], [ImportOp::Keys(k)] if k.revision == 4 && k.keys.is_empty()));
        let big = KeyRecord {
            kv: Some(KeyValue { key: "k".into(), value: vec![0; 100].into(), ..Default::default() }),
            sub: 0,
        };
        let parts = ImportOp::Keys(ImportKeys { revision: 9, keys: vec![big.clone(), big.clone()] }).split(50);
        assert_eq!(parts.len(), 2, "a record larger than the bound travels alone");
    }

    /// Steps of another import, steps without a begin, and events that go backwards are
    /// refused deterministically (the group stays as it was).
    #[test]
    fn stray_steps_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Replica::open(dir.path());
        let step = |id, op| CommandBody::Import(ImportStep { import_id: id, op: Some(op) });
        let keys = |revision| ImportOp::Keys(ImportKeys { revision, keys: vec![] });
        let r = t.apply(&[step(1, keys(5))]);
        assert!(matches!(r[0], Err(Error::InvalidCommand(_))), "no import: {:?}", r[0]);
        let r = t.apply(&[step(1, ImportOp::Begin(ImportBegin::default())), step(2, keys(5)), step(1, keys(5))]);
        assert!(r[0].is_ok() && matches!(r[1], Err(Error::InvalidCommand(_))) && r[2].is_ok(), "{r:?}");
        let event = |main, sub| EventRecord {
            delete: false,
            kv: Some(KeyValue {
                key: "a".into(),
                create_revision: main,
                mod_revision: main,
                version: 1,
                ..Default::default()
            }),
            sub,
            prev_kv: None,
        };
        let r = t.apply(&[step(1, ImportOp::Events(ImportEvents { events: vec![event(5, 0)] }))]);
        assert!(matches!(r[0], Err(Error::InvalidCommand(_))), "an event at the keys' revision: {:?}", r[0]);
        let r = t.apply(&[
            step(1, ImportOp::Events(ImportEvents { events: vec![event(6, 0), event(7, 0)] })),
            step(1, ImportOp::Events(ImportEvents { events: vec![event(7, 0)] })),
        ]);
        assert!(r[0].is_ok() && matches!(r[1], Err(Error::InvalidCommand(_))), "{r:?}");
        let finish = |revision| {
            step(1, ImportOp::Finish(ImportFinish { revision, compact_revision: 5, auth: None, strict_leases: true }))
        };
        let r = t.apply(&[finish(6), finish(7)]);
        assert!(matches!(r[0], Err(Error::InvalidCommand(_))) && r[1].is_ok(), "{r:?}");
        assert_eq!((t.store.current_revision(G), t.store.compact_revision(G)), (7, 5));
        // An import that needs an empty group is refused by a group that held data, and
        // taken by one being imported into from empty.
        let begin_empty = |id| step(id, ImportOp::Begin(ImportBegin { require_empty: true }));
        let r = t.apply(&[begin_empty(3)]);
        assert!(matches!(r[0], Err(Error::InvalidCommand(_))), "{:?}", r[0]);
        let other = GroupId(8);
        let cmd = |i: u64, body: CommandBody| Command::new(i, body).encode_to_vec();
        let (b1, k1, b2) = (cmd(1, begin_empty(4)), cmd(2, step(4, keys(9))), cmd(3, begin_empty(5)));
        let r = t.store.apply(other, &[(1, &b1[..]), (2, &k1[..]), (3, &b2[..])]).unwrap();
        assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
        assert_eq!(t.store.import_state(other).map(|s| (s.import_id, s.floor)), Some((5, 1)));
    }
}
