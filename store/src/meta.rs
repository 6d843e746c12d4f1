//! Per-group metadata written by `apply` in the same WriteBatch as the data it describes.
//!
//! ```text
//! meta CF  g | 'a'  ->  version(2) | applied_index | current_revision | compact_revision
//!                       | kv_bytes | history_bytes_written | history_bytes_compacted
//!                       | alarm_count u16 | (member_id u64 | alarm type u8)* | crc32
//!          g | 'c'  ->  finished compact revision (written only by the compactor)
//! ```
//!
//! Version 1 records (no alarm list) are still read, as a group without alarms.
//!
//! The raised alarms (etcd's alarm store: NOSPACE, CORRUPT per member) live here, so they are
//! applied through the log on every member, survive restarts with the applied index they
//! belong to, and travel in the group's snapshots with the rest of the meta record.
//!
//! Invariants (asserted on encode and decode): `current_revision >= 1`,
//! `compact_revision <= current_revision`, `history_bytes_compacted <= history_bytes_written`,
//! at most [`ALARMS_MAX`] alarms, no alarm twice.
//! Monotonic across batches: applied_index, current_revision, compact_revision.

use std::sync::Arc;

use crate::auth::AuthState;
use crate::command::AlarmType;
use crate::error::{Error, Result};
use crate::revision::Revision;

/// The version written; [`META_VERSION_1`] (no alarms) is still read.
const META_VERSION: u8 = 2;
const META_VERSION_1: u8 = 1;
/// Length of a version 1 record, and of a version 2 record without its alarms and count.
const META_LEN: usize = 1 + 6 * 8 + 4;
/// Bytes of the alarm count and of one alarm in a version 2 record.
const ALARM_COUNT_LEN: usize = 2;
const ALARM_LEN: usize = 8 + 1;

/// Most alarms a group holds at once. etcd raises at most one alarm of each type per member,
/// but a client may name any member id, so the list is bounded: an activation past it is
/// refused.
pub const ALARMS_MAX: usize = 256;

/// One raised alarm: etcd's `AlarmMember`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Alarm {
    /// The member the alarm was raised for.
    pub member_id: u64,
    /// What is raised: [`AlarmType::Nospace`] or [`AlarmType::Corrupt`], never `None`.
    pub alarm: AlarmType,
}

/// What `apply` knows about a group, persisted with every batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApplyMeta {
    /// Last log index whose effects are in this record's batch.
    pub applied_index: u64,
    /// etcd's `currentRev`: 1 for an empty group.
    pub current_revision: Revision,
    /// Scheduled compact revision: reads below it fail. -1 = never compacted.
    pub compact_revision: Revision,
    /// Sum of key+value bytes of live keys.
    pub kv_bytes: u64,
    /// Sum of key+value bytes of every history entry ever written.
    pub history_bytes_written: u64,
    /// `history_bytes_written` as of the compact revision: the share compaction frees.
    pub history_bytes_compacted: u64,
    /// Raised alarms, in the order they were raised.
    pub alarms: Vec<Alarm>,
    /// The group's auth store. Not part of this record's encoding: it is persisted under its
    /// own meta key (`g | 'u'`) by the command that changes it, and loaded with the record
    /// on open and snapshot install. Kept here so a command's save point and the committed
    /// state cover it like the rest of the group's metadata.
    pub auth: Arc<AuthState>,
    /// The group's quota in bytes, 0 for the store's default. Like `auth`, persisted under
    /// its own meta key (`g | 's'`) by the command that sets it and loaded with the record.
    pub quota_bytes: u64,
    /// The group's backup mark (`BackupMark` command): the revision its newest backup ends
    /// at (0 = none) and when it was taken. Like `quota_bytes`, persisted under its own meta
    /// key (`g | 'b'`) by the command that moves it and loaded with the record.
    pub backup_revision: Revision,
    pub backup_time_unix_ms: u64,
    /// The revision the group's last import finished at (0: never imported): a backup
    /// chain cannot continue across an import (a delta does not describe its wipe), so no
    /// delta starts before it. Persisted in the backup mark record.
    pub backup_chain_break: Revision,
    /// The import in progress, if any. Like `auth`, persisted under its own meta key
    /// (`g | 'i'`) by the import steps and loaded with the record (see `import`).
    pub import: Option<Arc<crate::import::ImportState>>,
}

impl Default for ApplyMeta {
    fn default() -> Self {
        ApplyMeta {
            applied_index: 0,
            current_revision: 1,
            compact_revision: -1,
            kv_bytes: 0,
            history_bytes_written: 0,
            history_bytes_compacted: 0,
            alarms: Vec::new(),
            auth: Arc::new(crate::auth::initial()),
            quota_bytes: 0,
            backup_revision: 0,
            backup_time_unix_ms: 0,
            backup_chain_break: 0,
            import: None,
        }
    }
}

/// The value of the backup mark key (`g | 'b'`) of `meta`: revision | time in ms | chain
/// break revision, each 8 bytes big-endian.
pub(crate) fn encode_backup_mark(meta: &ApplyMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&(meta.backup_revision as u64).to_be_bytes());
    out.extend_from_slice(&meta.backup_time_unix_ms.to_be_bytes());
    out.extend_from_slice(&(meta.backup_chain_break as u64).to_be_bytes());
    out
}

/// Reads a backup mark value into `meta`.
pub(crate) fn load_backup_mark(meta: &mut ApplyMeta, value: &[u8]) -> Result<()> {
    if value.len() != 24 {
        return Err(Error::Corruption(format!("backup mark of {} bytes", value.len())));
    }
    let field = |i: usize| u64::from_be_bytes(value[8 * i..8 * i + 8].try_into().expect("8 bytes"));
    meta.backup_revision = field(0) as Revision;
    meta.backup_time_unix_ms = field(1);
    meta.backup_chain_break = field(2) as Revision;
    Ok(())
}

impl ApplyMeta {
    pub fn check(&self) {
        assert!(self.current_revision >= 1, "current revision must be >= 1: {self:?}");
        assert!(self.compact_revision <= self.current_revision, "compact revision ahead of current: {self:?}");
        assert!(
            self.history_bytes_compacted <= self.history_bytes_written,
            "compacted history bytes exceed written: {self:?}"
        );
        assert!(self.alarms_are_valid(), "alarm list invalid: {self:?}");
    }

    fn alarms_are_valid(&self) -> bool {
        self.alarms.len() <= ALARMS_MAX
            && self.alarms.iter().all(|a| a.alarm != AlarmType::None)
            && self.alarms.iter().enumerate().all(|(i, a)| !self.alarms[..i].contains(a))
    }

    /// Whether an alarm of type `alarm` is raised for any member.
    pub fn alarm_raised(&self, alarm: AlarmType) -> bool {
        self.alarms.iter().any(|a| a.alarm == alarm)
    }

    /// Raises `alarm` (etcd's `AlarmStore.Activate`): returns it, or the same alarm already
    /// raised. `None` for type `None`; `Err(InvalidCommand)` past [`ALARMS_MAX`].
    pub fn activate_alarm(&mut self, alarm: Alarm) -> Result<Option<Alarm>> {
        if alarm.alarm == AlarmType::None {
            return Ok(None);
        }
        if self.alarms.contains(&alarm) {
            return Ok(Some(alarm));
        }
        if self.alarms.len() >= ALARMS_MAX {
            return Err(Error::InvalidCommand(format!("more than {ALARMS_MAX} alarms raised")));
        }
        self.alarms.push(alarm);
        Ok(Some(alarm))
    }

    /// Disarms `alarm` (etcd's `AlarmStore.Deactivate`): returns it if it was raised.
    pub fn deactivate_alarm(&mut self, alarm: Alarm) -> Option<Alarm> {
        let at = self.alarms.iter().position(|a| *a == alarm)?;
        Some(self.alarms.remove(at))
    }

    pub fn encode(&self) -> Vec<u8> {
        self.check();
        let mut out = Vec::with_capacity(META_LEN + ALARM_COUNT_LEN + ALARM_LEN * self.alarms.len());
        out.push(META_VERSION);
        for v in [
            self.applied_index,
            self.current_revision as u64,
            self.compact_revision as u64,
            self.kv_bytes,
            self.history_bytes_written,
            self.history_bytes_compacted,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&(self.alarms.len() as u16).to_be_bytes());
        for a in &self.alarms {
            out.extend_from_slice(&a.member_id.to_be_bytes());
            out.push(a.alarm as u8);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<ApplyMeta> {
        let corrupt = || Error::Corruption(format!("group meta: {} bytes, version {:?}", bytes.len(), bytes.first()));
        let fixed = match bytes.first() {
            Some(&META_VERSION_1) if bytes.len() == META_LEN => META_LEN - 4,
            Some(&META_VERSION) if bytes.len() >= META_LEN + ALARM_COUNT_LEN => META_LEN - 4,
            _ => return Err(corrupt()),
        };
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != u32::from_be_bytes(crc.try_into().expect("4 bytes")) {
            return Err(Error::Corruption("group meta: crc mismatch".into()));
        }
        let f = |i: usize| u64::from_be_bytes(bytes[1 + 8 * i..9 + 8 * i].try_into().expect("8 bytes"));
        let mut meta = ApplyMeta {
            applied_index: f(0),
            current_revision: f(1) as i64,
            compact_revision: f(2) as i64,
            kv_bytes: f(3),
            history_bytes_written: f(4),
            history_bytes_compacted: f(5),
            alarms: Vec::new(),
            auth: Arc::new(crate::auth::initial()),
            quota_bytes: 0,
            backup_revision: 0,
            backup_time_unix_ms: 0,
            backup_chain_break: 0,
            import: None,
        };
        if bytes[0] == META_VERSION {
            let count = u16::from_be_bytes(body[fixed..fixed + ALARM_COUNT_LEN].try_into().expect("2 bytes")) as usize;
            let list = &body[fixed + ALARM_COUNT_LEN..];
            if list.len() != count * ALARM_LEN {
                return Err(corrupt());
            }
            for a in list.chunks(ALARM_LEN) {
                let alarm = AlarmType::try_from(i32::from(a[8])).map_err(|_| corrupt())?;
                meta.alarms.push(Alarm { member_id: u64::from_be_bytes(a[..8].try_into().expect("8 bytes")), alarm });
            }
        }
        if meta.current_revision < 1
            || meta.compact_revision > meta.current_revision
            || meta.history_bytes_compacted > meta.history_bytes_written
            || !meta.alarms_are_valid()
        {
            return Err(Error::Corruption(format!("group meta violates invariants: {meta:?}")));
        }
        Ok(meta)
    }

    /// The compact revision as clients see it: 0 when never compacted.
    pub fn visible_compact_revision(&self) -> Revision {
        self.compact_revision.max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_detects_bit_flips() {
        let m = ApplyMeta {
            applied_index: 9,
            current_revision: 7,
            compact_revision: 3,
            kv_bytes: 100,
            history_bytes_written: 300,
            history_bytes_compacted: 50,
            alarms: vec![
                Alarm { member_id: 0xabcd, alarm: AlarmType::Nospace },
                Alarm { member_id: 3, alarm: AlarmType::Corrupt },
            ],
            ..Default::default()
        };
        let enc = m.encode();
        assert_eq!(ApplyMeta::decode(&enc).unwrap(), m);
        for i in 0..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= 0x10;
            assert!(ApplyMeta::decode(&bad).is_err(), "flip at byte {i} must be detected");
        }
        assert!(ApplyMeta::decode(&enc[..enc.len() - 1]).is_err(), "a truncated record must be detected");
    }

    #[test]
    fn version_1_records_read_as_without_alarms() {
        let m = ApplyMeta { applied_index: 4, current_revision: 3, ..Default::default() };
        let mut v1 = vec![META_VERSION_1];
        for v in [4u64, 3, u64::MAX, 0, 0, 0] {
            v1.extend_from_slice(&v.to_be_bytes());
        }
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(ApplyMeta::decode(&v1).unwrap(), m);
    }

    #[test]
    fn alarms_activate_and_deactivate_like_etcds_alarm_store() {
        let mut m = ApplyMeta::default();
        let nospace = Alarm { member_id: 7, alarm: AlarmType::Nospace };
        assert_eq!(m.activate_alarm(Alarm { member_id: 7, alarm: AlarmType::None }).unwrap(), None);
        assert_eq!(m.deactivate_alarm(nospace), None, "disarming what is not raised returns nothing");
        assert_eq!(m.activate_alarm(nospace).unwrap(), Some(nospace));
        assert_eq!(m.activate_alarm(nospace).unwrap(), Some(nospace), "raising again returns the raised alarm");
        assert_eq!(m.alarms, vec![nospace]);
        assert!(m.alarm_raised(AlarmType::Nospace) && !m.alarm_raised(AlarmType::Corrupt));
        assert_eq!(m.deactivate_alarm(nospace), Some(nospace));
        assert!(m.alarms.is_empty());
        for id in 0..ALARMS_MAX as u64 {
            m.activate_alarm(Alarm { member_id: id, alarm: AlarmType::Corrupt }).unwrap();
        }
        assert!(m.activate_alarm(nospace).is_err(), "the alarm list is bounded");
        assert_eq!(ApplyMeta::decode(&m.encode()).unwrap(), m);
    }
}
