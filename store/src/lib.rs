//! # store — Plinth's MVCC state machine on RocksDB
//!
//! `store` turns the committed Raft log of each group into an etcd-v3 keyspace. It knows
//! nothing of Raft or gRPC: grpc-api encodes [`Command`]s, raft-log orders them, and
//! [`Store::apply`] executes them.
//!
//! ## Guarantees
//!
//! - **Deterministic**: the same entries on the same state give the same responses, the
//!   same writes to RocksDB and the same [`Store::hash_kv`] on every replica (the background
//!   purge removes the same records, at each replica's own pace). Deterministic
//!   errors (`Compacted`, `FutureRevision`, `LeaseNotFound`, `NoSpace`, ...) are per-entry
//!   results; I/O and corruption are top-level errors that must stop the node. Each
//!   command runs from a save point of the batch: one that fails after it wrote (a check
//!   that missed a case) is rolled back to it, writes, revision and events, and answers
//!   its error instead of stopping every replica.
//! - **etcd semantics** (contract §3): revision 1 for an empty group, one main revision
//!   per changing request with sub revisions inside, `create_revision`/`version` rules,
//!   DELETE events `{key, mod_revision}`, range `count`/`more`/`limit`/sort/filters, txn
//!   compare/check/execute phases, compaction keeping revision R readable.
//! - **Alarms** (etcd's NOSPACE and CORRUPT, per member) are applied from the log like any
//!   command ([`CommandBody::Alarm`]) into the group's meta record, so every replica holds
//!   the same list ([`Store::alarms`]) across restarts and snapshots; while NOSPACE is
//!   raised, puts, txns with puts and lease grants fail with `NoSpace` (etcd's capped
//!   applier) whatever the quota says; while CORRUPT is raised, every command but an
//!   alarm change or a lease checkpoint fails with `Corrupt` (etcd's corrupt applier).
//! - **Auth** (etcd's users, roles, key permissions, enabled flag and auth revision) is
//!   applied from the log ([`CommandBody::Auth`], see [`auth`]) with etcd's checks and
//!   errors, persisted under the group's meta key `g | 'u'` in the command's batch, so
//!   restarts and snapshots keep it and every replica holds the same state
//!   ([`Store::auth`], [`auth::AuthState::hash`]). Passwords arrive as bcrypt hashes. A
//!   write wrapped in [`CommandBody::Checked`] was permission-checked by its proposer at an
//!   auth revision and fails with `AuthOldRevision` if an auth change applied since. Simple
//!   tokens are per-member memory filled from applied `Authenticate` entries
//!   ([`Store::simple_token_user`]), all dropped when a snapshot is installed.
//! - **Groups come and go** (tenants): a group's own quota is applied from its log
//!   ([`CommandBody::GroupSettings`], meta key `g | 's'`, carried in snapshots), so every
//!   replica refuses the same write; [`Store::drop_group`] deletes a removed group's keys
//!   in every column family and flushes.
//! - **Backups** ([`Store::export_full`], [`Store::export_delta`], [`Store::import_group`]):
//!   a group exported whole at its revision or as the changes of a revision range, and
//!   rebuilt from a full export and a chain of deltas at any revision they cover, with
//!   every key's revisions kept (see `backup`). A delta and a full export can come from one
//!   pin ([`Store::pin_export`]); exports scan without filling the block cache. A group's
//!   backup mark ([`CommandBody::BackupMark`], meta key `g | 'b'`, carried in snapshots) is
//!   how far its backups reach; with [`StoreConfig::hold_history_for_backups`] a
//!   compaction's purge stops there, so the next delta finds its history. An import ends
//!   every chain (the mark records it): no delta starts before it.
//! - **Imports through the log** ([`CommandBody::Import`], see `import`): a live group's
//!   data replaced (a backup restored, another etcd migrated) by bounded, self-contained
//!   steps every replica applies alike; the state between them is replicated (meta key
//!   `g | 'i'`), so restarts, replays and snapshots resume an import exactly. A begin wipes
//!   the group in a batch of its own and cancels its watchers as compacted; until the finish
//!   every other command of the group fails with `Importing`. Revisions never go backwards
//!   (an import into a group that had data ends above its old revision, compacted there).
//!   The offline restore runs the same planner ([`ImportPlanner`]) and apply code.
//! - **Atomic batches**: one `apply` call is one RocksDB `WriteBatch`, applied index
//!   included. Reads use a RocksDB snapshot taken together with the matching revision.
//! - **Durability by replay**: RocksDB's WAL is off; the Raft log is the WAL. After a crash
//!   the store reopens at the applied index of some earlier batch, and the log is replayed
//!   from there. [`Store::flush`] makes everything applied durable and tells which index
//!   the log may be purged to (never further: what was applied after the flush is lost in a
//!   crash; [`StoreConfig::flush_at_close`] off makes a close lose it the same way).
//!   [`Store::install_snapshot`] flushes before it returns,
//!   since Raft truncates its log below an installed snapshot; it refuses a snapshot not
//!   ahead of the applied index (checked under the apply lock). Applied index and current
//!   revision only move forward, asserted on every apply and install.
//! - **Damage is found at open**: [`Store::open`] reads every block of the store's files
//!   with its checksum verified ([`StoreConfig::verify_checksums_at_open`], on by default),
//!   so a damaged SST file stops the start with `Corruption` naming the file, instead of
//!   failing whichever later read or apply reaches the block. RocksDB's block checksums
//!   mean a damaged block is an error, never data, either way.
//! - **Bounded memory**: no in-memory key index. Memory is the block cache
//!   ([`StoreConfig::block_cache_bytes`]), the memtables ([`StoreConfig::memtable_bytes`]),
//!   the apply path's cache of live entries ([`StoreConfig::live_cache_bytes`]), one apply
//!   batch, per watch stream at most [`StoreConfig::watch_stream_buffer`] event
//!   responses, and per group at most about 8,192 count segments (a bound key and a count
//!   each, `key_counts.rs`), one per 128 keys in groups below ~500,000 keys.
//! - **Counts without a walk, exact** (`key_counts.rs`, [`StoreConfig::key_counts`]): each
//!   group's live keys are counted by segments of consecutive keys; a range's `count` at the
//!   current revision sums the segments inside it and walks only the two it cuts through.
//!   Apply moves the counts with each batch under the lock readers take their snapshot
//!   under; imports, snapshot installs and opens build them from RocksDB. Debug builds
//!   check every planned count against a walk of the whole range.
//! - **The live cache is the `kv` CF, never ahead of or behind it** (`live_cache.rs`): every
//!   put reads its key's live version first; the apply path reads it from a bounded cache
//!   that only it writes, through every batch it commits, under the group's apply lock;
//!   wipes, snapshot installs and group drops forget the group's entries. Debug builds
//!   compare every hit with RocksDB.
//!
//! ## Keyspace (one RocksDB per node; every key starts with the group id)
//!
//! ```text
//!            ┌──────────── column families ────────────────────────────────────────────┐
//!  kv        │ g | key                          → sub, prev link | KeyValue (live keys) │ current reads
//!  events    │ g | main sub                     → kind | prev link | key | KeyValue     │ older versions,
//!            │                                                                          │ watch catch-up
//!  gone      │ g | esc(key) 00 01 | !main !sub  → prev link (keys deleted since compact) │ reads at rev R
//!  meta      │ g | 'a' → applied index, revisions, quota, alarms; g | 'c' → purged rev │
//!            │ g | 'u' → auth store (users, roles, permissions, flag, auth revision)    │
//!            │ g | 's' → quota setting;  g | 'i' → import in progress                   │
//!            │ g | 'p' → target of the newest purge, finished or not                    │
//!  lease     │ g | 'l' | id → Lease;  g | 'k' | id | key → ();  g | 'f' | id → Lease    │ lease → keys
//!            └─────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! See `key_codec` and `kv` for the encodings, and `mvcc` for the reads. Each change is one
//! `events` record holding the version whole and linking to the key's version before it;
//! each key's newest change is its head, in `kv` (live) or `gone` (deleted). A put writes
//! one entry at a random position (`kv`) and appends one (`events`); a read at R reads each
//! key's head and follows links back only for keys changed since R. The data dir records its
//! layout version (2); a layout 1 data dir, which kept versions in a `history` family, is
//! converted at open (`migrate`).
//!
//! ## Threads
//!
//! ```text
//!  caller's apply loop ── apply(g, entries) ──▶ WriteBatch ──▶ RocksDB ──▶ watch hub publish
//!  any thread          ── range / hash_kv / snapshot (RocksDB snapshot, no apply lock)
//!  store-compactor     ── purges versions below scheduled compact revisions, in batches
//!  store-watch-sync    ── catches unsynced watchers up from the events CF (every ~100 ms)
//! ```
//!
//! Per group, applies are serialized; reads never wait for applies beyond a short lock
//! around taking a snapshot; neither waits for compaction or for slow watchers.
//!
//! ## CAVEATS
//!
//! - `Compact{physical: true}` is answered when scheduled; callers wait with
//!   [`Store::wait_compaction_finished`].
//! - Lease TTL minimums and expiry timing are the caller's (the proposer clamps the TTL).
//! - Watch matching scans the synced watchers of a group linearly per published revision
//!   (no interval tree yet).
//! - No prefix bloom filters yet (whole-key blooms on point lookups only); a read at an
//!   old revision reads `events` by key once per change of a key since that revision.
//! - A member that stopped in the middle of writing a snapshot install, and restarts as a
//!   build of a newer layout, refuses to open before converting anything: the install is in
//!   the older layout, so the older build must be started once to finish it
//!   ([`Error::UnfinishedInstall`]). A receive not yet decided is dropped at open, as always.
//! - `hash_kv` is crc32 over this store's own encoding, in key order: comparable between
//!   Plinth replicas (the simulations use it), not with etcd. The `HashKV` RPC computes
//!   etcd's hash instead, from [`PinnedExport::versions`] sorted by revision (grpc-api
//!   `backup/etcd_export.rs`).
//! - The check at open reads the whole store once per start (seconds per GiB); nothing
//!   checks files again while the store runs, short of the reads that reach them.
//! - An import's begin wipes the group with range deletions in one batch, and its finish
//!   scans the lease index once (a seek per lease); an import that never finishes leaves
//!   its group refusing commands until another import into it finishes (no abort).

pub mod auth;
mod backup;
mod command;
mod compact;
mod config;
mod engine;
mod error;
mod go_sort;
mod import;
mod import_plan;
mod key_codec;
mod key_counts;
mod kv;
mod lease;
mod live_cache;
mod meta;
mod migrate;
mod mvcc;
mod quota;
mod range;
mod response;
mod revision;
mod signal;
mod snapshot;
mod snapshot_install;
mod store;
mod txn;
mod watch;

pub use backup::{
    BackupBody, BackupEnd, BackupHeader, BackupKind, BackupRecord, EventRecord, GroupImport, KeyRecord, PinnedExport,
    BACKUP_FORMAT_VERSION, IMPORT_UNKNOWN_LEASE_TTL_SECS,
};
pub use command::{
    check_range, check_request, validate, AlarmAction, AlarmRequest, AlarmType, BackupMark, CheckedCommand, Command,
    CommandBody, CompactRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest, GroupSettings,
    LeaseCheckpointRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, Request, RequestOp,
    SortOrder, SortTarget, TargetUnion, TxnRequest,
};
pub use config::{CommitObserver, StoreConfig};
pub use error::{Error, Result};
pub use import::{
    ImportBegin, ImportEvents, ImportFinish, ImportKeys, ImportLeases, ImportOp, ImportResponse, ImportState,
    ImportStep, IMPORT_STEP_BYTES_MAX,
};
pub use import_plan::{ImportPlanner, OpSink};
pub use key_codec::prefix_successor;
pub use kv::{Event, EventKind, KeyValue};
pub use lease::{Lease, MAX_LEASE_TTL_SECS};
pub use meta::{Alarm, ALARMS_MAX};
pub use mvcc::KeyRange;
pub use response::{
    CommandResponse, CompactResponse, DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutResponse,
    RangeResponse, ResponseOp, TxnResponse, WireKvs, WireRangeResponse,
};
pub use revision::{GroupId, Revision, RevisionPair};
pub use snapshot::{
    inspect_snapshot_chunk, snapshot_chunk_len, SnapshotChunkSummary, SnapshotReader, SNAPSHOT_CHUNK_BYTES_MAX,
    SNAPSHOT_CHUNK_HEADER_BYTES,
};
pub use snapshot_install::{SnapshotSpool, INSTALL_SST_BYTES};
pub use store::Store;
pub use watch::{SharedEvent, WatchEvent, WatchId, WatchSpec, WatchStream, AUTO_WATCH_ID, DUPLICATE_WATCH_ID};

/// Re-exported so callers can `encode_to_vec` / `decode` commands without naming prost.
pub use prost::Message;
