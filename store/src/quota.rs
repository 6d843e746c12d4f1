//! The per-group space quota.
//!
//! The usage estimate must be identical on every replica, because `NoSpace` is an apply
//! result: it cannot depend on how far the background compactor has come. So it is computed
//! from values that `apply` maintains deterministically:
//!
//! ```text
//! usage = kv_bytes                                   (live key+value bytes)
//!       + history_bytes_written - history_bytes_compacted
//!                                                    (history written after the compact revision)
//! ```
//!
//! `history_bytes_compacted` is the cumulative history byte count at the compact revision,
//! read from the `events` record of that revision when compaction is scheduled. The live
//! versions that compaction keeps are counted by `kv_bytes`, so the estimate tracks what
//! RocksDB holds after compaction without waiting for it.
//!
//! When `usage + cost > quota` a Put, a Txn containing a put (any branch, any depth) or a
//! LeaseGrant (cost 0, refused at `usage >= quota`) fails with `NoSpace`; deletes, revokes and
//! compaction still run, and free space as soon as they apply.
//!
//! The same three fail with `NoSpace` while a NOSPACE alarm is raised in the group's meta,
//! even once space is free again (etcd's capped applier): only disarming the alarm, a
//! command of the log like its raising, lets them through, on every member at the same entry.

use crate::command::{AlarmType, Request, RequestOp, TxnRequest};
use crate::error::{Error, Result};
use crate::meta::ApplyMeta;

/// The group's quota estimate in bytes.
pub(crate) fn usage_bytes(meta: &ApplyMeta) -> u64 {
    meta.kv_bytes + (meta.history_bytes_written - meta.history_bytes_compacted)
}

/// Fails with `NoSpace` if writing `cost` more bytes would exceed the quota. A zero cost
/// (lease grant) fails once usage has reached the quota.
pub(crate) fn check(meta: &ApplyMeta, cost: u64, quota_bytes: u64) -> Result<()> {
    let usage = usage_bytes(meta);
    let over = if cost == 0 { usage >= quota_bytes } else { usage.saturating_add(cost) > quota_bytes };
    if over {
        Err(Error::NoSpace)
    } else {
        Ok(())
    }
}

/// Fails with `NoSpace` while a NOSPACE alarm is raised (etcd's capped applier): called
/// before the quota check for the commands that add data.
pub(crate) fn check_alarm(meta: &ApplyMeta) -> Result<()> {
    if meta.alarm_raised(AlarmType::Nospace) {
        Err(Error::NoSpace)
    } else {
        Ok(())
    }
}

/// Fails with `Corrupt` while a CORRUPT alarm is raised (etcd's corrupt applier): every
/// command but an alarm change is refused, so a group whose replicas were found to differ
/// takes no further writes until an operator disarms the alarm. Reads are not applied
/// commands and keep working, as in etcd.
pub(crate) fn check_not_corrupt(meta: &ApplyMeta) -> Result<()> {
    if meta.alarm_raised(AlarmType::Corrupt) {
        Err(Error::Corrupt)
    } else {
        Ok(())
    }
}

/// Bytes the puts of a txn may add (the larger branch), nested txns included.
pub(crate) fn txn_put_cost(t: &TxnRequest) -> u64 {
    let branch = |ops: &[RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Request::Put(p)) => (p.key.len() + p.value.len()).max(1) as u64,
                Some(Request::Txn(t)) => txn_put_cost(t),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_boundaries() {
        let meta =
            ApplyMeta { kv_bytes: 60, history_bytes_written: 100, history_bytes_compacted: 60, ..Default::default() };
        assert_eq!(usage_bytes(&meta), 100);
        assert!(check(&meta, 10, 110).is_ok());
        assert!(matches!(check(&meta, 11, 110), Err(Error::NoSpace)));
        assert!(check(&meta, 0, 101).is_ok());
        assert!(matches!(check(&meta, 0, 100), Err(Error::NoSpace)));
    }
}
