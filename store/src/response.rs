//! Responses of the state machine, mirroring etcd's `rpc.proto` response messages (the
//! `ResponseHeader` is reduced to its `revision`; grpc-api fills the rest).

use bytes::Bytes;
use prost::Message;

use crate::kv::KeyValue;
use crate::revision::Revision;

/// etcd `RangeResponse`. `revision` is the store's current revision at read time, also for a
/// read pinned at an older revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub revision: Revision,
    pub kvs: Vec<KeyValue>,
    /// `limit > 0` and more keys matched than were returned.
    pub more: bool,
    /// Every key in the range at the read revision, regardless of `limit` and the
    /// min/max filters (etcd semantics).
    pub count: i64,
}

/// A [`RangeResponse`] whose key-values are already encoded as etcd's `mvccpb.KeyValue`s
/// (`Store::range_wire`): a server sends them without decoding or re-encoding a value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WireRangeResponse {
    pub revision: Revision,
    /// Each one `mvccpb.KeyValue` encoding.
    pub kvs: Vec<Bytes>,
    pub more: bool,
    pub count: i64,
}

impl WireRangeResponse {
    /// `r` with its records encoded.
    pub fn encode(r: RangeResponse) -> WireRangeResponse {
        let kvs = r.kvs.iter().map(|kv| Bytes::from(kv.encode_to_vec())).collect();
        WireRangeResponse { revision: r.revision, kvs, more: r.more, count: r.count }
    }
}

/// etcd `PutResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    pub revision: Revision,
    pub prev_kv: Option<KeyValue>,
}

/// etcd `DeleteRangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    pub revision: Revision,
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

/// etcd `ResponseOp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

/// etcd `TxnResponse`. `revision` is the txn's revision if it changed anything, otherwise
/// the current revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    pub revision: Revision,
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

/// etcd `CompactionResponse` (header revision = current revision).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactResponse {
    pub revision: Revision,
}

/// etcd `LeaseGrantResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseGrantResponse {
    pub revision: Revision,
    pub id: i64,
    pub ttl: i64,
}

/// etcd `LeaseRevokeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRevokeResponse {
    pub revision: Revision,
}

/// The result of applying one log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandResponse {
    /// An empty entry (Raft's no-op after an election).
    Noop,
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseCheckpoint,
    /// etcd `AlarmResponse.alarms`: the alarm raised or disarmed, or none if nothing changed
    /// (disarming what is not raised, raising type `None`).
    Alarm(Vec<crate::meta::Alarm>),
    /// An auth command applied (see [`crate::auth::AuthResponse`]).
    Auth(crate::auth::AuthResponse),
    /// An import step applied (see `import`).
    Import(crate::import::ImportResponse),
}
