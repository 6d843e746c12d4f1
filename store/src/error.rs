//! The store's one error type.
//!
//! Variants split in two families, and the split decides what the caller does:
//! - **deterministic** errors (everything except [`Error::RocksDb`], [`Error::Io`] and
//!   [`Error::Corruption`]): the same command on the same state gives the same error on
//!   every replica. During `apply` they are per-entry results and become client responses;
//!   whatever the failing command wrote before it failed is rolled back to its save point.
//! - **non-deterministic** errors (I/O, corruption): `apply` returns them at the top level
//!   and the node must stop rather than let replicas diverge.

use crate::revision::Revision;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the store reports. grpc-api maps each variant to etcd's gRPC code and exact
/// message (see `reference/etcd-contract-for-kube-apiserver.md` §4); the `Display` text here
/// is for logs only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `revision < compact revision` (etcd `ErrCompacted`).
    #[error("mvcc: required revision has been compacted (requested {requested}, compacted {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    /// `revision > current revision` (etcd `ErrFutureRev`).
    #[error("mvcc: required revision is a future revision (requested {requested}, current {current})")]
    FutureRevision { requested: Revision, current: Revision },
    /// The lease does not exist (put with an unknown lease, revoke of an unknown lease).
    #[error("requested lease not found: {0}")]
    LeaseNotFound(i64),
    /// Grant of a lease id that already exists.
    #[error("lease already exists: {0}")]
    LeaseExists(i64),
    /// Grant with a TTL above [`crate::lease::MAX_LEASE_TTL_SECS`].
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    /// `ignore_value`/`ignore_lease` on a key that does not exist, or an empty request op.
    #[error("key not found")]
    KeyNotFound,
    /// `ignore_value` with a non-empty value.
    #[error("value is provided")]
    ValueProvided,
    /// `ignore_lease` with a non-zero lease.
    #[error("lease is provided")]
    LeaseProvided,
    /// A request or compare with an empty key.
    #[error("key is not provided")]
    EmptyKey,
    /// More than `max_txn_ops` compares, success ops or failure ops.
    #[error("too many operations in txn request")]
    TooManyOps,
    /// Overlapping puts/deletes in one txn branch.
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    /// `sort_order` or `sort_target` outside its enum.
    #[error("invalid sort option")]
    InvalidSortOption,
    /// The encoded command exceeds `max_request_bytes`.
    #[error("request is too large")]
    RequestTooLarge,
    /// The group is being imported: only import steps, alarms and group settings apply,
    /// and exports are refused (see `import`).
    #[error("the group is being imported")]
    Importing,
    /// The group is over its quota; only deletes, compaction and revokes are accepted.
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// A CORRUPT alarm is raised in the group: every command but an alarm change is refused
    /// (etcd's corrupt applier, `ErrCorrupt`).
    #[error("corrupt cluster")]
    Corrupt,
    /// etcd's auth store errors (`server/auth/store.go`), raised by auth commands and
    /// permission checks; grpc-api maps each to etcd's `ErrGRPC...`.
    #[error("user name is empty")]
    AuthUserEmpty,
    #[error("user name not found")]
    AuthUserNotFound,
    #[error("user name already exists")]
    AuthUserAlreadyExists,
    #[error("role name is empty")]
    AuthRoleEmpty,
    #[error("role name not found")]
    AuthRoleNotFound,
    #[error("role name already exists")]
    AuthRoleAlreadyExists,
    #[error("role is not granted to the user")]
    AuthRoleNotGranted,
    #[error("permission is not granted to the role")]
    AuthPermissionNotGranted,
    #[error("permission not given")]
    AuthPermissionNotGiven,
    #[error("root user does not exist")]
    AuthRootUserNotExist,
    #[error("root user does not have root role")]
    AuthRootRoleNotExist,
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("permission denied")]
    AuthPermissionDenied,
    #[error("invalid auth management")]
    AuthInvalidMgmt,
    /// The request was checked against an auth revision older than the store's.
    #[error("revision of auth store is old")]
    AuthOldRevision,
    /// A log entry that does not decode as a [`crate::Command`] (deterministic: every replica
    /// holds the same bytes).
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// An entry at or below the group's applied index was handed to `apply` again; it is
    /// skipped (replay after restart is idempotent).
    #[error("log index {index} already applied (applied index {applied_index})")]
    AlreadyApplied { index: u64, applied_index: u64 },
    /// `install_snapshot` of a snapshot at or below the group's applied index (apply moved
    /// past it first): refused, the store is unchanged, and the caller must treat the
    /// snapshot as not installed.
    #[error("snapshot at log index {index} is not ahead of the applied index {applied_index}")]
    SnapshotNotAhead { index: u64, applied_index: u64 },
    /// A configuration value out of range.
    #[error("invalid store config: {0}")]
    InvalidConfig(String),
    /// The data dir's store layout is newer than this build reads (see
    /// `engine::check_layout`): it was written by a later Plinth.
    #[error(
        "the data dir's store layout is version {found}, written by a newer Plinth; this build reads version {supported}"
    )]
    UnsupportedLayout { found: u32, supported: u32 },
    /// A data dir of an older store layout with a snapshot install that a crash left
    /// unfinished: the build that wrote the data dir must finish it before this one converts
    /// the data dir.
    #[error(
        "the data dir's store layout is version {layout}, and a snapshot install of group {group} in that layout is \
         unfinished; start the Plinth build that wrote this data dir once so that it finishes the install, then this one"
    )]
    UnfinishedInstall { group: u64, layout: u32 },
    /// Stored bytes or snapshot chunks that fail their checks.
    #[error("corruption: {0}")]
    Corruption(String),
    /// RocksDB failed (non-deterministic: stop the node).
    #[error("rocksdb: {0}")]
    RocksDb(#[from] rocksdb::Error),
    /// File-system failure outside RocksDB (non-deterministic).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// True for errors that every replica reproduces from the same log; false for I/O and
    /// corruption, which must stop the node.
    pub fn is_deterministic(&self) -> bool {
        !matches!(
            self,
            Error::RocksDb(_)
                | Error::Io(_)
                | Error::Corruption(_)
                | Error::UnsupportedLayout { .. }
                | Error::UnfinishedInstall { .. }
        )
    }
}
