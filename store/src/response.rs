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
    pub kvs: WireKvs,
    pub more: bool,
    pub count: i64,
}

impl WireRangeResponse {
    /// `r` with its records encoded.
    pub fn encode(r: RangeResponse) -> WireRangeResponse {
        let mut buf = Vec::new();
        for kv in &r.kvs {
            buf.push(KVS_FIELD_KEY);
            kv.encode_length_delimited(&mut buf).expect("a vector grows to any message");
        }
        let kvs = WireKvs::from_chunks(vec![Bytes::from(buf)], r.kvs.len());
        WireRangeResponse { revision: r.revision, kvs, more: r.more, count: r.count }
    }
}

/// The key of `RangeResponse.kvs`: field 2, length-delimited.
pub(crate) const KVS_FIELD_KEY: u8 = (2 << 3) | 2;

/// The key-values of a range answer exactly as they appear in an encoded etcd
/// `RangeResponse`: a run of `kvs` fields (the field's key, the length, the `mvccpb.KeyValue`
/// encoding), held in one or more buffers. A server writes each buffer into its answer as it
/// is, one copy per buffer and no work per key.
#[derive(Clone, Debug, Default)]
pub struct WireKvs {
    chunks: Vec<Bytes>,
}

impl WireKvs {
    /// `chunks` must hold exactly `entries` whole `kvs` fields.
    pub(crate) fn from_chunks(chunks: Vec<Bytes>, entries: usize) -> WireKvs {
        let kvs = WireKvs { chunks };
        debug_assert_eq!(kvs.iter().count(), entries, "the chunks do not hold {entries} whole fields");
        kvs
    }

    /// The buffers, to be written in order.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// Bytes of every field, keys and lengths included.
    pub fn encoded_len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// Each key-value's `mvccpb.KeyValue` encoding, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.chunks.iter().flat_map(|chunk| {
            let mut rest = &chunk[..];
            std::iter::from_fn(move || {
                let (&key, mut after) = rest.split_first()?;
                assert_eq!(key, KVS_FIELD_KEY, "a wire chunk holds only kvs fields");
                let len =
                    prost::encoding::decode_varint(&mut after).expect("a wire chunk's lengths are varints") as usize;
                let (kv, tail) = after.split_at(len);
                rest = tail;
                Some(kv)
            })
        })
    }
}

/// Equal when they hold the same key-values, however the buffers are cut.
impl PartialEq for WireKvs {
    fn eq(&self, other: &WireKvs) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for WireKvs {}

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
