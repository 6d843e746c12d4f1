//! The state-machine commands: the wire format of the Raft log, and their stateless checks.
//!
//! Every type here is a hand-written prost message whose field numbers match etcd's
//! `rpc.proto` (`RangeRequest`, `PutRequest`, `DeleteRangeRequest`, `TxnRequest`, `Compare`,
//! `RequestOp`, `CompactionRequest`, `LeaseGrantRequest`, `LeaseRevokeRequest`,
//! `LeaseCheckpoint`), so grpc-api can convert field by field. [`Command`] wraps one of them
//! with the proposer's `request_id`; `Command::encode_to_vec()` is the log entry.
//!
//! [`validate`] performs the checks that need no state (etcd's `v3rpc/key.go` checks): grpc-api
//! calls it before proposing, and `apply` calls it again so that a bad entry in the log gives
//! the same error on every replica.

use bytes::Bytes;
use prost::Message;

use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::lease::MAX_LEASE_TTL_SECS;
use crate::mvcc::KeyRange;

/// One Raft log entry's payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
    /// The proposer's waiter key. The store ignores it.
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    #[prost(oneof = "CommandBody", tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14")]
    pub body: Option<CommandBody>,
}

/// What a [`Command`] does.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum CommandBody {
    #[prost(message, tag = "2")]
    Put(PutRequest),
    #[prost(message, tag = "3")]
    DeleteRange(DeleteRangeRequest),
    #[prost(message, tag = "4")]
    Txn(TxnRequest),
    #[prost(message, tag = "5")]
    Compact(CompactRequest),
    /// `id` must be non-zero (the proposer picks it) and `ttl` already clamped to the
    /// minimum TTL by the proposer.
    #[prost(message, tag = "6")]
    LeaseGrant(LeaseGrantRequest),
    #[prost(message, tag = "7")]
    LeaseRevoke(LeaseRevokeRequest),
    #[prost(message, tag = "8")]
    LeaseCheckpoint(LeaseCheckpointRequest),
    /// Raises or disarms an alarm (`action` ACTIVATE or DEACTIVATE; GET is a read and never
    /// enters the log), so every member holds the same alarms.
    #[prost(message, tag = "9")]
    Alarm(AlarmRequest),
    /// A change of the auth store (users, roles, permissions, the enabled flag) or an
    /// `Authenticate` (see [`crate::auth`]); passwords are bcrypt hashes.
    #[prost(message, tag = "10")]
    Auth(crate::auth::AuthRequest),
    /// A write the proposer checked against the permissions at auth revision
    /// `auth_revision`: applied only if the auth store is still at that revision, so a
    /// permission change between the check and the apply refuses it with etcd's
    /// `ErrAuthOldRevision` (etcd checks writes at apply time for the same reason).
    #[prost(message, tag = "11")]
    Checked(Box<CheckedCommand>),
    /// Settings of the group that must be the same on every replica, because apply depends
    /// on them (a tenant's quota): replicated through the group's own log.
    #[prost(message, tag = "12")]
    GroupSettings(GroupSettings),
    /// Records that the group's backups reach `revision`, so that every replica knows it
    /// (a new leader continues the chain, and members that hold history for backups keep
    /// what the next delta needs). Moves forward only; an older mark is a no-op.
    #[prost(message, tag = "13")]
    BackupMark(BackupMark),
    /// One step of an import into the group (see `import`): its data replaced by a backup,
    /// or filled from another etcd, through its own log.
    #[prost(message, tag = "14")]
    Import(crate::import::ImportStep),
}

/// The payload of [`CommandBody::BackupMark`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BackupMark {
    /// The revision the group's newest backup ends at.
    #[prost(int64, tag = "1")]
    pub revision: i64,
    /// When that backup was taken, in ms since the Unix epoch.
    #[prost(uint64, tag = "2")]
    pub time_unix_ms: u64,
}

/// The payload of [`CommandBody::GroupSettings`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupSettings {
    /// Quota of the group in bytes; 0 = the store's `quota_bytes_per_group`.
    #[prost(uint64, tag = "1")]
    pub quota_bytes: u64,
}

/// The payload of [`CommandBody::Checked`]: a command and the auth revision its
/// permissions were checked at.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckedCommand {
    #[prost(uint64, tag = "1")]
    pub auth_revision: u64,
    #[prost(message, optional, boxed, tag = "2")]
    pub command: Option<Box<Command>>,
}

impl Command {
    pub fn new(request_id: u64, body: CommandBody) -> Command {
        Command { request_id, body: Some(body) }
    }

    /// The body that applies: a [`CommandBody::Checked`] command's inner body, any other
    /// command's own. Observers of applied entries (the lessor) match on this.
    pub fn plain_body(&self) -> Option<&CommandBody> {
        match &self.body {
            Some(CommandBody::Checked(c)) => c.command.as_ref().and_then(|inner| inner.body.as_ref()),
            other => other.as_ref(),
        }
    }

    /// Decodes a log entry. A decode failure is deterministic (same bytes everywhere).
    pub fn decode_entry(bytes: &[u8]) -> Result<Command> {
        Command::decode(bytes).map_err(|e| Error::InvalidCommand(e.to_string()))
    }
}

/// etcd `RangeRequest.SortOrder`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SortOrder {
    None = 0,
    Ascend = 1,
    Descend = 2,
}

/// etcd `RangeRequest.SortTarget`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SortTarget {
    Key = 0,
    Version = 1,
    Create = 2,
    Mod = 3,
    Value = 4,
}

/// etcd `RangeRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub range_end: Bytes,
    #[prost(int64, tag = "3")]
    pub limit: i64,
    #[prost(int64, tag = "4")]
    pub revision: i64,
    #[prost(enumeration = "SortOrder", tag = "5")]
    pub sort_order: i32,
    #[prost(enumeration = "SortTarget", tag = "6")]
    pub sort_target: i32,
    /// Ignored by the store (a read-path choice of grpc-api).
    #[prost(bool, tag = "7")]
    pub serializable: bool,
    #[prost(bool, tag = "8")]
    pub keys_only: bool,
    #[prost(bool, tag = "9")]
    pub count_only: bool,
    #[prost(int64, tag = "10")]
    pub min_mod_revision: i64,
    #[prost(int64, tag = "11")]
    pub max_mod_revision: i64,
    #[prost(int64, tag = "12")]
    pub min_create_revision: i64,
    #[prost(int64, tag = "13")]
    pub max_create_revision: i64,
}

/// etcd `PutRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    #[prost(int64, tag = "3")]
    pub lease: i64,
    #[prost(bool, tag = "4")]
    pub prev_kv: bool,
    #[prost(bool, tag = "5")]
    pub ignore_value: bool,
    #[prost(bool, tag = "6")]
    pub ignore_lease: bool,
}

/// etcd `DeleteRangeRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteRangeRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub range_end: Bytes,
    #[prost(bool, tag = "3")]
    pub prev_kv: bool,
}

/// etcd `RequestOp`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestOp {
    #[prost(oneof = "Request", tags = "1, 2, 3, 4")]
    pub request: Option<Request>,
}

/// etcd `RequestOp.request`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Request {
    #[prost(message, tag = "1")]
    Range(RangeRequest),
    #[prost(message, tag = "2")]
    Put(PutRequest),
    #[prost(message, tag = "3")]
    DeleteRange(DeleteRangeRequest),
    #[prost(message, tag = "4")]
    Txn(TxnRequest),
}

impl RequestOp {
    pub fn range(r: RangeRequest) -> RequestOp {
        RequestOp { request: Some(Request::Range(r)) }
    }
    pub fn put(r: PutRequest) -> RequestOp {
        RequestOp { request: Some(Request::Put(r)) }
    }
    pub fn delete_range(r: DeleteRangeRequest) -> RequestOp {
        RequestOp { request: Some(Request::DeleteRange(r)) }
    }
    pub fn txn(r: TxnRequest) -> RequestOp {
        RequestOp { request: Some(Request::Txn(r)) }
    }
}

/// etcd `Compare.CompareResult`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CompareResult {
    Equal = 0,
    Greater = 1,
    Less = 2,
    NotEqual = 3,
}

/// etcd `Compare.CompareTarget`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CompareTarget {
    Version = 0,
    Create = 1,
    Mod = 2,
    Value = 3,
    Lease = 4,
}

/// etcd `Compare`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Compare {
    #[prost(enumeration = "CompareResult", tag = "1")]
    pub result: i32,
    #[prost(enumeration = "CompareTarget", tag = "2")]
    pub target: i32,
    #[prost(bytes = "bytes", tag = "3")]
    pub key: Bytes,
    #[prost(oneof = "TargetUnion", tags = "4, 5, 6, 7, 8")]
    pub target_union: Option<TargetUnion>,
    #[prost(bytes = "bytes", tag = "64")]
    pub range_end: Bytes,
}

/// etcd `Compare.target_union`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum TargetUnion {
    #[prost(int64, tag = "4")]
    Version(i64),
    #[prost(int64, tag = "5")]
    CreateRevision(i64),
    #[prost(int64, tag = "6")]
    ModRevision(i64),
    #[prost(bytes = "bytes", tag = "7")]
    Value(Bytes),
    #[prost(int64, tag = "8")]
    Lease(i64),
}

/// etcd `TxnRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnRequest {
    #[prost(message, repeated, tag = "1")]
    pub compare: Vec<Compare>,
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<RequestOp>,
    #[prost(message, repeated, tag = "3")]
    pub failure: Vec<RequestOp>,
}

impl TxnRequest {
    /// etcd's `isTxnReadonly`: every op of both branches is a range, or a nested txn that is
    /// itself read-only (compares only read). An op without a request is not: it goes
    /// through the log and fails there as etcd's does.
    pub fn is_read_only(&self) -> bool {
        self.success.iter().chain(&self.failure).all(|op| match &op.request {
            Some(Request::Range(_)) => true,
            Some(Request::Txn(t)) => t.is_read_only(),
            _ => false,
        })
    }

    /// etcd's `isTxnSerializable`: every range of both branches (nested txns included) is
    /// serializable, so a read-only txn needs no linearizable read point.
    pub fn is_serializable(&self) -> bool {
        self.success.iter().chain(&self.failure).all(|op| match &op.request {
            Some(Request::Range(r)) => r.serializable,
            Some(Request::Txn(t)) => t.is_serializable(),
            _ => true,
        })
    }
}

/// etcd `CompactionRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CompactRequest {
    #[prost(int64, tag = "1")]
    pub revision: i64,
    /// The store answers once the compaction is scheduled; a caller that wants etcd's
    /// physical semantics waits with [`crate::Store::wait_compaction_finished`].
    #[prost(bool, tag = "2")]
    pub physical: bool,
}

/// etcd `LeaseGrantRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseGrantRequest {
    #[prost(int64, tag = "1")]
    pub ttl: i64,
    #[prost(int64, tag = "2")]
    pub id: i64,
}

/// etcd `LeaseRevokeRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseRevokeRequest {
    #[prost(int64, tag = "1")]
    pub id: i64,
}

/// etcd `LeaseCheckpoint`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseCheckpointRequest {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub remaining_ttl: i64,
}

/// etcd `AlarmRequest.AlarmAction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AlarmAction {
    Get = 0,
    Activate = 1,
    Deactivate = 2,
}

/// etcd `AlarmType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AlarmType {
    None = 0,
    Nospace = 1,
    Corrupt = 2,
}

/// etcd `AlarmRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AlarmRequest {
    #[prost(enumeration = "AlarmAction", tag = "1")]
    pub action: i32,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(enumeration = "AlarmType", tag = "3")]
    pub alarm: i32,
}

/// Stateless checks, in etcd's order. grpc-api calls this before proposing; `apply` repeats
/// it so a bad log entry fails identically everywhere.
pub fn validate(cmd: &Command, cfg: &StoreConfig) -> Result<()> {
    if cmd.encoded_len() > cfg.max_request_bytes {
        return Err(Error::RequestTooLarge);
    }
    check_request(cmd, cfg)
}

/// [`validate`] but for the size: etcd's checks of a request that is served without a log
/// entry (a read-only txn), which `--max-request-bytes` does not bound.
pub fn check_request(cmd: &Command, cfg: &StoreConfig) -> Result<()> {
    match &cmd.body {
        None => Err(Error::InvalidCommand("command without body".into())),
        Some(CommandBody::Put(p)) => check_put(p),
        Some(CommandBody::DeleteRange(d)) => check_delete(d),
        Some(CommandBody::Txn(t)) => {
            check_txn(t, cfg.max_txn_ops)?;
            // Overlap checks after the size checks, to avoid quadratic work on huge txns.
            check_intervals(&t.success)?;
            check_intervals(&t.failure)?;
            Ok(())
        }
        Some(CommandBody::Compact(_)) => Ok(()),
        Some(CommandBody::LeaseGrant(l)) => {
            if l.ttl > MAX_LEASE_TTL_SECS {
                return Err(Error::LeaseTtlTooLarge);
            }
            if l.id == 0 {
                // etcd's lessor refuses NoLease as an id.
                return Err(Error::LeaseNotFound(0));
            }
            Ok(())
        }
        Some(CommandBody::LeaseRevoke(_))
        | Some(CommandBody::LeaseCheckpoint(_))
        | Some(CommandBody::GroupSettings(_)) => Ok(()),
        Some(CommandBody::BackupMark(m)) if m.revision < 1 => {
            Err(Error::InvalidCommand(format!("backup mark at revision {}", m.revision)))
        }
        Some(CommandBody::BackupMark(_)) => Ok(()),
        Some(CommandBody::Auth(a)) => match &a.command {
            None => Err(Error::InvalidCommand("auth command without body".into())),
            Some(_) => Ok(()),
        },
        Some(CommandBody::Checked(c)) => match &c.command {
            Some(inner) if !matches!(inner.body, Some(CommandBody::Checked(_))) => validate(inner, cfg),
            _ => Err(Error::InvalidCommand("checked command without a plain command".into())),
        },
        Some(CommandBody::Import(step)) => crate::import::validate(step),
        Some(CommandBody::Alarm(a)) => {
            let action = AlarmAction::try_from(a.action);
            if !matches!(action, Ok(AlarmAction::Activate | AlarmAction::Deactivate)) {
                return Err(Error::InvalidCommand(format!("alarm action {} does not go through the log", a.action)));
            }
            if AlarmType::try_from(a.alarm).is_err() {
                return Err(Error::InvalidCommand(format!("unknown alarm type {}", a.alarm)));
            }
            Ok(())
        }
    }
}

/// etcd `checkRangeRequest`.
pub fn check_range(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

fn check_put(p: &PutRequest) -> Result<()> {
    if p.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

fn check_delete(d: &DeleteRangeRequest) -> Result<()> {
    if d.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

fn check_txn(t: &TxnRequest, max_txn_ops: usize) -> Result<()> {
    let ops = t.compare.len().max(t.success.len()).max(t.failure.len());
    if ops > max_txn_ops {
        return Err(Error::TooManyOps);
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in t.success.iter().chain(&t.failure) {
        // Nested txns get the remaining budget, like etcd.
        check_op(op, max_txn_ops - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_txn_ops: usize) -> Result<()> {
    match &op.request {
        Some(Request::Range(r)) => check_range(r),
        Some(Request::Put(p)) => check_put(p),
        Some(Request::DeleteRange(d)) => check_delete(d),
        Some(Request::Txn(t)) => check_txn(t, max_txn_ops),
        // etcd answers an empty op with ErrGRPCKeyNotFound.
        None => Err(Error::KeyNotFound),
    }
}

/// etcd `checkIntervals`: puts may not repeat and may not fall inside a delete of the same
/// branch, nested txns included (their then/else puts may repeat each other).
///
/// A delete covers exactly the keys its apply deletes ([`KeyRange`]): the point `key`
/// without `range_end`, `[key, range_end)` bytewise, and every key `>= key` for the
/// `"\0"` range_end (`WithFromKey`, and `WithPrefix` on an empty key). etcd 3.5 builds
/// `[key, "\0")` for the latter, an empty interval, so a put inside such a delete passes
/// its check and the put then fails in the middle of the txn (an `ignore_value` put on a
/// key the delete just removed), on every replica. Here, as in the upstream fix proposed
/// in etcd-io/etcd#22395, it is `[key, +inf)`, and such a txn is refused with
/// `duplicate key given in txn request` before it is proposed.
fn check_intervals(reqs: &[RequestOp]) -> Result<(Vec<Bytes>, Vec<KeyRange>)> {
    let mut dels: Vec<KeyRange> = Vec::new();
    for op in reqs {
        if let Some(Request::DeleteRange(d)) = &op.request {
            dels.push(KeyRange::new(&d.key, &d.range_end));
        }
    }
    let mut puts: Vec<Bytes> = Vec::new();
    let hit = |dels: &[KeyRange], k: &[u8]| dels.iter().any(|r| r.contains(k));
    for op in reqs {
        let Some(Request::Txn(t)) = &op.request else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || hit(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.push(k.clone());
        }
        for k in &puts_else {
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(Error::DuplicateKey);
            }
            if hit(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.push(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in reqs {
        let Some(Request::Put(p)) = &op.request else { continue };
        if puts.contains(&p.key) || hit(&dels, &p.key) {
            return Err(Error::DuplicateKey);
        }
        puts.push(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp::put(PutRequest { key: Bytes::copy_from_slice(k.as_bytes()), ..Default::default() })
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp::delete_range(DeleteRangeRequest {
            key: Bytes::copy_from_slice(k.as_bytes()),
            range_end: Bytes::copy_from_slice(end.as_bytes()),
            prev_kv: false,
        })
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> Command {
        Command::new(1, CommandBody::Txn(TxnRequest { compare: vec![], success, failure }))
    }

    #[test]
    fn duplicate_keys_are_detected_like_etcd() {
        let cfg = StoreConfig::default();
        assert!(matches!(validate(&txn(vec![put("a"), put("a")], vec![]), &cfg), Err(Error::DuplicateKey)));
        assert!(matches!(validate(&txn(vec![del("a", "c"), put("b")], vec![]), &cfg), Err(Error::DuplicateKey)));
        assert!(validate(&txn(vec![del("a", "c"), put("c")], vec![]), &cfg).is_ok());
        assert!(validate(&txn(vec![put("a")], vec![put("a")]), &cfg).is_ok(), "branches are separate");
        let nested = |s, f| RequestOp::txn(TxnRequest { compare: vec![], success: s, failure: f });
        assert!(validate(&txn(vec![nested(vec![put("a")], vec![put("a")])], vec![]), &cfg).is_ok());
        assert!(matches!(
            validate(&txn(vec![nested(vec![put("a")], vec![]), put("a")], vec![]), &cfg),
            Err(Error::DuplicateKey)
        ));
        assert!(matches!(
            validate(&txn(vec![nested(vec![del("a", "")], vec![]), put("a")], vec![]), &cfg),
            Err(Error::DuplicateKey)
        ));
        // Deletes may overlap each other.
        assert!(validate(&txn(vec![del("a", "z"), del("b", "")], vec![]), &cfg).is_ok());
    }

    #[test]
    fn stateless_checks() {
        let cfg = StoreConfig { max_txn_ops: 2, ..StoreConfig::default() };
        assert!(matches!(validate(&txn(vec![put("a"), put("b"), put("c")], vec![]), &cfg), Err(Error::TooManyOps)));
        assert!(matches!(validate(&txn(vec![put("")], vec![]), &cfg), Err(Error::EmptyKey)));
        assert!(matches!(validate(&txn(vec![RequestOp { request: None }], vec![]), &cfg), Err(Error::KeyNotFound)));
        let p = |ignore_value, value: &'static str, ignore_lease, lease| {
            Command::new(
                1,
                CommandBody::Put(PutRequest {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(value.as_bytes()),
                    lease,
                    ignore_value,
                    ignore_lease,
                    prev_kv: false,
                }),
            )
        };
        assert!(matches!(validate(&p(true, "v", false, 0), &cfg), Err(Error::ValueProvided)));
        assert!(matches!(validate(&p(false, "", true, 5), &cfg), Err(Error::LeaseProvided)));
        assert!(validate(&p(true, "", true, 0), &cfg).is_ok());
        let range = RangeRequest { key: Bytes::from_static(b"k"), sort_order: 3, ..Default::default() };
        assert!(matches!(validate(&txn(vec![RequestOp::range(range)], vec![]), &cfg), Err(Error::InvalidSortOption)));
        let big = Command::new(
            1,
            CommandBody::Put(PutRequest {
                key: Bytes::from_static(b"k"),
                value: vec![0; 100].into(),
                ..Default::default()
            }),
        );
        let small = StoreConfig { max_request_bytes: 50, ..StoreConfig::default() };
        assert!(matches!(validate(&big, &small), Err(Error::RequestTooLarge)));
        let grant = |ttl, id| Command::new(1, CommandBody::LeaseGrant(LeaseGrantRequest { ttl, id }));
        assert!(matches!(validate(&grant(9_000_000_001, 1), &cfg), Err(Error::LeaseTtlTooLarge)));
        assert!(validate(&grant(9_000_000_000, 1), &cfg).is_ok());
    }

    #[test]
    fn command_round_trips_through_prost() {
        let cmd = txn(vec![put("a"), del("b", "c")], vec![put("z")]);
        let bytes = cmd.encode_to_vec();
        assert_eq!(Command::decode_entry(&bytes).unwrap(), cmd);
        assert!(Command::decode_entry(&[0xff, 0xff, 0xff]).is_err());
    }
}

#[cfg(test)]
mod checked_tests {
    use super::*;

    #[test]
    fn checked_command_round_trips() {
        let put = PutRequest { key: Bytes::from_static(b"k"), ..Default::default() };
        let inner = Command::new(0, CommandBody::Put(put));
        let cmd = Command::new(
            5,
            CommandBody::Checked(Box::new(CheckedCommand { auth_revision: 3, command: Some(Box::new(inner)) })),
        );
        let bytes = cmd.encode_to_vec();
        assert_eq!(Command::decode_entry(&bytes).unwrap(), cmd);
    }
}
