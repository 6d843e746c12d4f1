//! Lease state: grant, revoke, checkpoint, and the lease → keys index.
//!
//! Only state lives here; time does not. The leader of a group decides when a lease
//! expires and proposes its revoke; checkpoints persist the remaining TTL so a new leader
//! can resume. A revoke deletes every attached key in ONE revision (sorted key order,
//! DELETE events with prev_kv), then the lease record, in the same batch.
//!
//! Invariant: `lease CF g|'k'|id|key` exists iff `kv` holds `key` with `lease == id`, and
//! then `g|'l'|id` exists (puts with an unknown lease are refused; revoke removes both).

use bytes::Bytes;
use prost::Message;

use crate::engine::Reader;
use crate::error::{Error, Result};
use crate::key_codec::{self as kc, Cf};
use crate::mvcc::{self, BatchWriter};
use crate::response::{LeaseGrantResponse, LeaseRevokeResponse};
use crate::revision::GroupId;

/// etcd's `MaxLeaseTTL`: 9,000,000,000 seconds.
pub const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

/// A granted lease (etcd `leasepb.Lease`).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Lease {
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// TTL granted, in seconds.
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    /// Remaining TTL at the last checkpoint (0 = never checkpointed).
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

pub(crate) fn get(r: &Reader<'_>, g: GroupId, id: i64) -> Result<Option<Lease>> {
    match r.get(Cf::Lease, &kc::lease_record_key(g, id))? {
        Some(v) => Lease::decode(&v[..]).map(Some).map_err(|e| Error::Corruption(format!("lease {id}: {e}"))),
        None => Ok(None),
    }
}

pub(crate) fn list(r: &Reader<'_>, g: GroupId) -> Result<Vec<Lease>> {
    let (start, end) = kc::lease_record_range(g);
    let mut c = r.cursor(Cf::Lease, &end);
    c.seek(&start);
    let mut out = Vec::new();
    while let Some((_, v)) = c.next_entry()? {
        out.push(Lease::decode(&v[..]).map_err(|e| Error::Corruption(format!("lease record: {e}")))?);
    }
    Ok(out)
}

/// Keys attached to lease `id`, in key order.
pub(crate) fn keys(r: &Reader<'_>, g: GroupId, id: i64) -> Result<Vec<Bytes>> {
    let mut c = r.cursor(Cf::Lease, &kc::lease_keys_end(g, id));
    c.seek(&kc::lease_keys_prefix(g, id));
    let mut out = Vec::new();
    while let Some((k, _)) = c.next_entry()? {
        out.push(Bytes::copy_from_slice(kc::lease_key_entry_user_key(&k)));
    }
    Ok(out)
}

impl BatchWriter<'_> {
    pub fn lease_exists(&self, id: i64) -> Result<bool> {
        Ok(id != 0 && get(&self.reader(), self.g, id)?.is_some())
    }

    /// Grants lease `id` (stateless checks were done by `validate`).
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<LeaseGrantResponse> {
        if self.lease_exists(id)? {
            return Err(Error::LeaseExists(id));
        }
        let lease = Lease { id, ttl, remaining_ttl: 0 };
        self.ws.put(Cf::Lease, kc::lease_record_key(self.g, id), lease.encode_to_vec());
        Ok(LeaseGrantResponse { revision: self.meta.current_revision, id, ttl })
    }

    /// Revokes lease `id`, deleting its keys in one revision.
    pub fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse> {
        if !self.lease_exists(id)? {
            return Err(Error::LeaseNotFound(id));
        }
        let attached = keys(&self.reader(), self.g, id)?;
        self.begin();
        for key in &attached {
            let deleted = self.delete_range(&mvcc::KeyRange::Single(key.clone()))?;
            assert_eq!(deleted.len(), 1, "lease {id} index names key {key:?} that is not live");
        }
        self.ws.delete(Cf::Lease, kc::lease_record_key(self.g, id));
        let revision = self.end();
        Ok(LeaseRevokeResponse { revision })
    }

    /// Records the remaining TTL of a live lease; unknown leases are ignored (like etcd).
    pub fn lease_checkpoint(&mut self, id: i64, remaining_ttl: i64) -> Result<()> {
        if let Some(mut lease) = get(&self.reader(), self.g, id)? {
            lease.remaining_ttl = remaining_ttl;
            self.ws.put(Cf::Lease, kc::lease_record_key(self.g, id), lease.encode_to_vec());
        }
        Ok(())
    }
}
