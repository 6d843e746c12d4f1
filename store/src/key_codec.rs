//! RocksDB key layout, one function per key kind.
//!
//! Every key starts with the 8-byte big-endian [`GroupId`], so a group is one contiguous
//! range in every column family (delete_range and snapshots work per group).
//!
//! ```text
//! kv       g(8) | key                                   -> sub | prev link | KeyValue (key field empty)
//! gone     g(8) | esc(key) 00 01 | !main(8) | !sub(8)    -> prev link (a key deleted after compaction)
//! events   g(8) | main(8) | sub(8)                       -> kind | history_bytes_before | prev link
//!                                                            | key | KeyValue (puts only)
//! meta     g(8) | 'a'                                    -> ApplyMeta (applied index, revisions, quota)
//!          g(8) | 'c'                                    -> finished compact revision (compactor only)
//!          g(8) | 'u'                                    -> AuthState (users, roles, auth flag, revision)
//! lease    g(8) | 'l' | id^sign(8)                       -> Lease
//!          g(8) | 'k' | id^sign(8) | key                 -> empty (lease -> attached keys)
//! ```
//!
//! `esc` makes user keys prefix-free while keeping their order: `00` becomes `00 FF` and
//! the key ends with `00 01`. So a key's `gone` entries are adjacent, newest first, and key
//! order is preserved (`"a" < "a\0" < "ab"`), the order of `kv`, which `gone` is merged with.
//! The values are in `kv.rs`. Layout 1 kept every version in a `history` CF keyed like
//! `gone` (its value a version, empty for a tombstone); `migrate.rs` converts it.

use crate::revision::{GroupId, RevisionPair};

/// Column families of the node's one RocksDB.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Cf {
    Kv,
    Gone,
    Events,
    Meta,
    Lease,
}

impl Cf {
    /// Every column family, in snapshot order.
    pub const ALL: [Cf; 5] = [Cf::Kv, Cf::Gone, Cf::Events, Cf::Meta, Cf::Lease];
    /// The column families of a group's data (everything but its meta records): what an
    /// import's begin wipes.
    pub const DATA: [Cf; 4] = [Cf::Kv, Cf::Gone, Cf::Events, Cf::Lease];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Kv => "kv",
            Cf::Gone => "gone",
            Cf::Events => "events",
            Cf::Meta => "meta",
            Cf::Lease => "lease",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: u8) -> Option<Cf> {
        Cf::ALL.get(i as usize).copied()
    }
}

pub const GROUP_PREFIX_LEN: usize = 8;
const TERMINATOR: [u8; 2] = [0x00, 0x01];
const META_APPLY: u8 = b'a';
const META_COMPACT: u8 = b'c';
const META_AUTH: u8 = b'u';
const META_SETTINGS: u8 = b's';
const META_BACKUP: u8 = b'b';
const META_IMPORT: u8 = b'i';
const META_PURGE: u8 = b'p';
const LEASE_FALLBACK: u8 = b'f';
const LEASE_RECORD: u8 = b'l';
const LEASE_KEY: u8 = b'k';

pub fn group_prefix(g: GroupId) -> [u8; 8] {
    g.0.to_be_bytes()
}

/// First key after every key of group `g` (exclusive upper bound of the group).
pub fn group_end(g: GroupId) -> Vec<u8> {
    match g.0.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 9],
    }
}

/// The group id of any stored key.
pub fn group_of(key: &[u8]) -> Option<GroupId> {
    Some(GroupId(u64::from_be_bytes(key.get(..8)?.try_into().ok()?)))
}

fn with_group(g: GroupId, extra: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(GROUP_PREFIX_LEN + extra);
    out.extend_from_slice(&group_prefix(g));
    out
}

// ---- kv ----

pub fn kv_key(g: GroupId, key: &[u8]) -> Vec<u8> {
    let mut out = with_group(g, key.len());
    out.extend_from_slice(key);
    out
}

/// The user key of a `kv` CF key.
pub fn kv_user_key(stored: &[u8]) -> &[u8] {
    assert!(stored.len() >= GROUP_PREFIX_LEN, "kv key shorter than its group prefix");
    &stored[GROUP_PREFIX_LEN..]
}

// ---- gone (and layout 1's history) ----

fn escape_into(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        if b == 0 {
            out.extend_from_slice(&[0x00, 0xff]);
        } else {
            out.push(b);
        }
    }
}

/// `g | esc(key)` without terminator: a lower bound for `key`'s versions and, used as an
/// exclusive upper bound, the end of every key below `key`.
pub fn gone_key_bound(g: GroupId, key: &[u8]) -> Vec<u8> {
    let mut out = with_group(g, key.len() + 2);
    escape_into(&mut out, key);
    out
}

/// `g | esc(key) | 00 01`: prefix shared by every version of `key`.
pub fn gone_key_prefix(g: GroupId, key: &[u8]) -> Vec<u8> {
    let mut out = gone_key_bound(g, key);
    out.extend_from_slice(&TERMINATOR);
    out
}

/// Seek target just past every version of `key`.
pub fn gone_key_after(g: GroupId, key: &[u8]) -> Vec<u8> {
    let mut out = gone_key_bound(g, key);
    out.extend_from_slice(&[0x00, 0x02]);
    out
}

pub fn gone_key(g: GroupId, key: &[u8], rev: RevisionPair) -> Vec<u8> {
    let mut out = gone_key_prefix(g, key);
    out.extend_from_slice(&rev.to_inverted_bytes());
    out
}

/// Splits a `gone` CF key into its version prefix `g | esc(key) | 00 01` (shared by every
/// version of the key, see [`gone_key_prefix`]) and its revision, without decoding the
/// user key. `None` if malformed.
pub fn split_gone_key(stored: &[u8]) -> Option<(&[u8], RevisionPair)> {
    if stored.len() < GROUP_PREFIX_LEN + 2 + RevisionPair::ENCODED_LEN {
        return None;
    }
    let (prefix, rev) = stored.split_at(stored.len() - RevisionPair::ENCODED_LEN);
    if prefix[prefix.len() - 2..] != TERMINATOR {
        return None;
    }
    Some((prefix, RevisionPair::from_inverted_bytes(rev)?))
}

/// Writes the user key of a version prefix (from [`split_gone_key`]) into `out`,
/// replacing its contents. `None` if the escaping is malformed.
pub fn gone_prefix_user_key(prefix: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let esc = prefix.get(GROUP_PREFIX_LEN..prefix.len().checked_sub(2)?)?;
    out.clear();
    let mut i = 0;
    while i < esc.len() {
        if esc[i] == 0 {
            if esc.get(i + 1) != Some(&0xff) {
                return None;
            }
            out.push(0);
            i += 2;
        } else {
            out.push(esc[i]);
            i += 1;
        }
    }
    Some(())
}

// ---- events ----

pub fn event_key(g: GroupId, rev: RevisionPair) -> Vec<u8> {
    let mut out = with_group(g, 16);
    out.extend_from_slice(&rev.to_bytes());
    out
}

pub fn decode_event_key(stored: &[u8]) -> Option<RevisionPair> {
    RevisionPair::from_bytes(stored.get(GROUP_PREFIX_LEN..)?)
}

// ---- meta ----

pub fn meta_apply_key(g: GroupId) -> Vec<u8> {
    let mut out = with_group(g, 1);
    out.push(META_APPLY);
    out
}

pub fn meta_compact_key(g: GroupId) -> Vec<u8> {
    let mut out = with_group(g, 1);
    out.push(META_COMPACT);
    out
}

/// The group's auth record, written by auth commands in their apply batch.
pub fn meta_auth_key(g: GroupId) -> Vec<u8> {
    let mut out = with_group(g, 1);
    out.push(META_AUTH);
    out
}

/// The group's settings (its quota), written by a `GroupSettings` command.
pub fn meta_settings_key(g: GroupId) -> Vec<u8> {
    let mut out = with_group(g, 1);
    out.push(META_SETTINGS);
    out
}

/// The group's backup mark (the revision and time of its last backup), written by a
/// `BackupMark` command.
pub fn meta_backup_key(g: GroupId) -> Vec<u8> {
    let mut out = with_group(g, 1);
    out.push(META_BACKUP);
    out
}

/// The group's import state while an import is in progress (see `import`).
pub fn meta_import_key(g: GroupId) -> Vec<u8> {
    let mut out = with_group(g, 1);
    out.push(META_IMPORT);
    out
}

/// The target of the group's newest purge, written with each of its batches (`compact.rs`):
/// from the first, history below it may be partly gone.
pub fn meta_purge_key(g: GroupId) -> Vec<u8> {
    let mut out = with_group(g, 1);
    out.push(META_PURGE);
    out
}

pub fn is_meta_apply_key(stored: &[u8]) -> bool {
    stored.len() == GROUP_PREFIX_LEN + 1 && stored[GROUP_PREFIX_LEN] == META_APPLY
}

// ---- lease ----

fn lease_id_bytes(id: i64) -> [u8; 8] {
    ((id as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn lease_record_key(g: GroupId, id: i64) -> Vec<u8> {
    let mut out = with_group(g, 9);
    out.push(LEASE_RECORD);
    out.extend_from_slice(&lease_id_bytes(id));
    out
}

/// `[start, end)` of every lease record of `g`.
pub fn lease_record_range(g: GroupId) -> (Vec<u8>, Vec<u8>) {
    let mut start = with_group(g, 1);
    start.push(LEASE_RECORD);
    let mut end = with_group(g, 1);
    end.push(LEASE_RECORD + 1);
    (start, end)
}

/// A lease an import keeps aside for keys that name it (see `import`), until it finishes.
pub fn lease_fallback_key(g: GroupId, id: i64) -> Vec<u8> {
    let mut out = with_group(g, 9);
    out.push(LEASE_FALLBACK);
    out.extend_from_slice(&lease_id_bytes(id));
    out
}

/// `[start, end)` of every fallback lease of `g`.
pub fn lease_fallback_range(g: GroupId) -> (Vec<u8>, Vec<u8>) {
    let mut start = with_group(g, 1);
    start.push(LEASE_FALLBACK);
    let mut end = with_group(g, 1);
    end.push(LEASE_FALLBACK + 1);
    (start, end)
}

/// `[start, end)` of every attached-key entry of `g`.
pub fn lease_keys_range(g: GroupId) -> (Vec<u8>, Vec<u8>) {
    let mut start = with_group(g, 1);
    start.push(LEASE_KEY);
    let mut end = with_group(g, 1);
    end.push(LEASE_KEY + 1);
    (start, end)
}

/// The lease id of an attached-key entry (`g | 'k' | id | key`).
pub fn lease_key_entry_id(stored: &[u8]) -> Option<i64> {
    let id = stored.get(GROUP_PREFIX_LEN + 1..GROUP_PREFIX_LEN + 9)?;
    Some((u64::from_be_bytes(id.try_into().ok()?) ^ (1 << 63)) as i64)
}

pub fn lease_key_entry(g: GroupId, id: i64, key: &[u8]) -> Vec<u8> {
    let mut out = lease_keys_prefix(g, id);
    out.extend_from_slice(key);
    out
}

pub fn lease_keys_prefix(g: GroupId, id: i64) -> Vec<u8> {
    let mut out = with_group(g, 9);
    out.push(LEASE_KEY);
    out.extend_from_slice(&lease_id_bytes(id));
    out
}

/// Exclusive end of every attached-key entry of lease `id`.
pub fn lease_keys_end(g: GroupId, id: i64) -> Vec<u8> {
    prefix_end(&lease_keys_prefix(g, id))
}

pub fn lease_key_entry_user_key(stored: &[u8]) -> &[u8] {
    assert!(stored.len() >= GROUP_PREFIX_LEN + 9, "lease key entry too short");
    &stored[GROUP_PREFIX_LEN + 9..]
}

/// The shortest byte string greater than every string starting with `prefix`: the prefix
/// with its last byte below 0xff raised by one. `None` when every byte is 0xff (no string of
/// the prefix's length is greater); each caller picks its own end for that case.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Smallest byte string greater than every string starting with `prefix` (an internal key's).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    // All 0xff: a longer all-0xff key.
    prefix_successor(prefix).unwrap_or_else(|| vec![0xff; prefix.len() + 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn gone_keys_round_trip_and_sort_by_key_then_newest(
            a in proptest::collection::vec(0u8..4, 0..6), b in proptest::collection::vec(0u8..4, 0..6),
            ra in 1i64..50, rb in 1i64..50)
        {
            let g = GroupId(7);
            let ka = gone_key(g, &a, RevisionPair::new(ra, 0));
            let kb = gone_key(g, &b, RevisionPair::new(rb, 0));
            let (prefix, rev) = split_gone_key(&ka).unwrap();
            prop_assert_eq!(prefix, &gone_key_prefix(g, &a)[..]);
            prop_assert_eq!(rev, RevisionPair::new(ra, 0));
            let mut user_key = vec![9];
            prop_assert_eq!(gone_prefix_user_key(prefix, &mut user_key), Some(()));
            prop_assert_eq!(&user_key, &a);
            let expected = a.cmp(&b).then(rb.cmp(&ra));
            prop_assert_eq!(ka.cmp(&kb), expected);
            // Bounds: every version of `a` lies in [prefix(a), after(a)) and below bound(b) if a < b.
            prop_assert!(ka >= gone_key_prefix(g, &a) && ka < gone_key_after(g, &a));
            if a < b {
                prop_assert!(ka < gone_key_bound(g, &b));
            } else {
                prop_assert!(ka >= gone_key_bound(g, &b) || a == b);
            }
        }
    }

    #[test]
    fn group_ranges_do_not_overlap() {
        let g = GroupId(1);
        assert!(kv_key(g, b"\xff\xff") < group_end(g));
        assert!(kv_key(GroupId(2), b"") >= group_end(g));
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(group_of(&kv_key(g, b"x")), Some(g));
    }
}
