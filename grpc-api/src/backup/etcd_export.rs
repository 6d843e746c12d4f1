//! A group written as etcd v3.5's data file: the bbolt `db` that `etcdctl snapshot save`
//! receives from `Maintenance.Snapshot`, so `etcdutl snapshot status` reads it and `etcdutl
//! snapshot restore` turns it into an etcd member's data dir. `etcd_import` reads the same
//! file back into Plinth.
//!
//! ```text
//! key              main(8 BE) '_' sub(8 BE) ['t']  -> mvccpb.KeyValue (a tombstone: the key only)
//! lease            id(8 BE)                        -> leasepb.Lease
//! meta             consistent_index, term              -> u64 BE
//!                  confState -> raftpb.ConfState as JSON (`{"voters":[..],"auto_leave":false}`)
//!                  finishedCompactRev, scheduledCompactRev -> main(8 BE) '_' sub(8 BE)
//! auth             authEnabled (only while enabled) -> 1 byte, authRevision -> u64 BE
//! authUsers        name -> authpb.User;   authRoles  name -> authpb.Role
//! members          id in hex -> the member as JSON;  members_removed (empty)
//! cluster          clusterVersion -> "3.5.0"
//! alarm            (empty)
//! ```
//!
//! The `key` bucket holds what an etcd compacted at the group's compact revision C holds:
//! every change after C and each key's newest live version at or before C. The store keeps
//! versions by key; etcd keys them by revision, so they pass through [`RunSorter`], which
//! sorts runs of a bounded size in memory, spills each to an unnamed temporary file and
//! merges them. The whole file is written to an unnamed temporary file too (in the data
//! dir): memory stays bounded whatever the group's size, and nothing is left behind if the
//! process dies.
//!
//! ## CAVEATS
//!
//! - Alarms are not written: a restored etcd starts without them, as after `alarm disarm`.
//! - `consistent_index` is the group's applied index, which means nothing to an etcd;
//!   `etcdutl snapshot restore` replaces it, as it does for any snapshot.
//! - `term` is the group's Raft term when the file is written (etcd's is the term of the
//!   entry at its consistent index, the same in a cluster whose leader is stable) and
//!   `confState` the member list's voters and learners; `etcdutl snapshot restore` replaces
//!   both, so they are there for `etcdutl snapshot status` to count keys as in etcd's file.
//! - `authEnabled` is written while auth is enabled. etcd writes it on the first `auth
//!   enable` and keeps it (as 0) after `auth disable`: a file of a group whose auth was
//!   enabled and disabled again counts one key fewer than etcd's.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::Context;
use prost::Message;
use store::{GroupId, RevisionPair};

use super::bbolt::BboltWriter;
use crate::node::membership::Member;

/// The version etcd 3.5 keeps in the `cluster` bucket.
const CLUSTER_VERSION: &str = "3.5.0";
/// Bytes of entries [`RunSorter`] sorts in memory before it spills them.
const SORT_RUN_BYTES: usize = 32 << 20;
/// Free disk a snapshot leaves beyond its own temporary files, so the member's WAL and store
/// keep room to write while it runs.
const SNAPSHOT_FREE_MARGIN_BYTES: u64 = 256 << 20;

/// Bytes free for an unprivileged writer on the file system of `dir`.
fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `st` a writable statvfs, as statvfs(3)
    // requires; nothing is kept past the call.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statvfs {}", dir.display()));
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// etcd's revision key: `main '_' sub`, then `t` for a tombstone.
pub fn revision_key(rev: RevisionPair, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&rev.main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&rev.sub.to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// etcd's `authpb.UserAddOptions`.
#[derive(Clone, PartialEq, Message)]
struct EtcdUserOptions {
    #[prost(bool, tag = "1")]
    no_password: bool,
}

/// etcd's `authpb.User`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct EtcdUser {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub password: Vec<u8>,
    #[prost(string, repeated, tag = "3")]
    pub roles: Vec<String>,
    #[prost(message, optional, tag = "4")]
    options: Option<EtcdUserOptions>,
}

impl EtcdUser {
    pub fn no_password(&self) -> bool {
        self.options.as_ref().is_some_and(|o| o.no_password)
    }
}

/// etcd's `authpb.Role` (its `Permission` is the store's, field for field).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct EtcdRole {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    pub key_permission: Vec<store::auth::Permission>,
}

/// A member as etcd's `membership.Member` marshals to JSON, field order included.
#[derive(serde::Serialize)]
struct EtcdMember<'a> {
    id: u64,
    #[serde(rename = "peerURLs")]
    peer_urls: &'a [String],
    #[serde(rename = "isLearner", skip_serializing_if = "std::ops::Not::not")]
    is_learner: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(rename = "clientURLs", skip_serializing_if = "<[String]>::is_empty")]
    client_urls: &'a [String],
}

/// Sorts `(key, value)` entries of unique keys with bounded memory: runs of up to
/// [`SORT_RUN_BYTES`] are sorted in memory and spilled to unnamed files in `dir`, then
/// merged.
pub struct RunSorter<'a> {
    dir: &'a Path,
    run: Vec<(Vec<u8>, Vec<u8>)>,
    run_bytes: usize,
    spilled: Vec<File>,
}

impl<'a> RunSorter<'a> {
    pub fn new(dir: &'a Path) -> RunSorter<'a> {
        RunSorter { dir, run: Vec::new(), run_bytes: 0, spilled: Vec::new() }
    }

    pub fn push(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        self.run_bytes += key.len() + value.len() + 64;
        self.run.push((key, value));
        if self.run_bytes >= SORT_RUN_BYTES {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> anyhow::Result<()> {
        self.run.sort_unstable();
        let mut out = BufWriter::new(tempfile::tempfile_in(self.dir).context("a sort run's file")?);
        for (k, v) in self.run.drain(..) {
            out.write_all(&(k.len() as u32).to_le_bytes())?;
            out.write_all(&(v.len() as u32).to_le_bytes())?;
            out.write_all(&k)?;
            out.write_all(&v)?;
        }
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        self.spilled.push(file);
        self.run_bytes = 0;
        Ok(())
    }

    /// Hands every entry to `visit` in key order.
    pub fn finish(mut self, mut visit: impl FnMut(&[u8], &[u8]) -> anyhow::Result<()>) -> anyhow::Result<()> {
        if self.spilled.is_empty() {
            self.run.sort_unstable();
            for (k, v) in &self.run {
                visit(k, v)?;
            }
            return Ok(());
        }
        if !self.run.is_empty() {
            self.spill()?;
        }
        fn read_entry(r: &mut BufReader<File>) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
            let mut lens = [0u8; 8];
            match r.read_exact(&mut lens) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            let klen = u32::from_le_bytes(lens[..4].try_into().expect("4 bytes")) as usize;
            let vlen = u32::from_le_bytes(lens[4..].try_into().expect("4 bytes")) as usize;
            let mut k = vec![0u8; klen];
            r.read_exact(&mut k)?;
            let mut v = vec![0u8; vlen];
            r.read_exact(&mut v)?;
            Ok(Some((k, v)))
        }
        let mut readers: Vec<BufReader<File>> = self.spilled.drain(..).map(BufReader::new).collect();
        let mut heap = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some((k, v)) = read_entry(r)? {
                heap.push(Reverse((k, i, v)));
            }
        }
        while let Some(Reverse((k, i, v))) = heap.pop() {
            visit(&k, &v)?;
            if let Some((k, v)) = read_entry(&mut readers[i])? {
                heap.push(Reverse((k, i, v)));
            }
        }
        Ok(())
    }
}

/// Writes group `g` of `store` at one point as etcd's data file into an unnamed file in
/// `dir` (sort runs go there too), with `members` in its `members` bucket and `confState`
/// and `term` (the group's Raft term) in `meta`. Returns the file, positioned nowhere in
/// particular, and the revision it holds.
pub fn write_etcd_db(
    store: &store::Store,
    g: GroupId,
    members: &[Member],
    term: u64,
    dir: &Path,
) -> anyhow::Result<(File, i64)> {
    // The sort runs and the file each take about the group's size: refused up front rather
    // than filling the disk the member's own writes need.
    let need = store.size_bytes(g).saturating_mul(2).saturating_add(SNAPSHOT_FREE_MARGIN_BYTES);
    let free = free_bytes(dir)?;
    anyhow::ensure!(
        free >= need,
        "etcdserver: a snapshot of this group needs {need} bytes free in {}, and {free} are",
        dir.display()
    );
    let pin = store.pin_export(g);
    let revision = pin.revision();
    let compact = pin.compact_revision();
    let mut sorter = RunSorter::new(dir);
    pin.versions(&mut |_, rev, tombstone, wire| sorter.push(revision_key(rev, tombstone), wire.to_vec()))?;

    let file = tempfile::tempfile_in(dir).context("the snapshot's file")?;
    let mut w = BboltWriter::new(file)?;
    let mut b = w.bucket(b"key")?;
    sorter.finish(|k: &[u8], v: &[u8]| b.put(k, v))?;
    b.finish()?;

    let auth = pin.auth();
    let mut auth_keys = vec![(b"authRevision".to_vec(), auth.revision.to_be_bytes().to_vec())];
    if auth.enabled {
        auth_keys.insert(0, (b"authEnabled".to_vec(), vec![1]));
    }
    w.sorted_bucket(b"auth", auth_keys)?;
    let roles = auth.roles.iter().map(|r| {
        let role = EtcdRole { name: r.name.as_bytes().to_vec(), key_permission: r.permissions.clone() };
        (r.name.as_bytes().to_vec(), role.encode_to_vec())
    });
    w.sorted_bucket(b"authRoles", roles.collect())?;
    let users = auth.users.iter().map(|u| {
        let user = EtcdUser {
            name: u.name.as_bytes().to_vec(),
            password: u.password_hash.to_vec(),
            roles: u.roles.clone(),
            options: Some(EtcdUserOptions { no_password: u.no_password }),
        };
        (u.name.as_bytes().to_vec(), user.encode_to_vec())
    });
    w.sorted_bucket(b"authUsers", users.collect())?;
    w.sorted_bucket(b"cluster", vec![(b"clusterVersion".to_vec(), CLUSTER_VERSION.as_bytes().to_vec())])?;

    // Keyed by the id's big-endian bytes, as etcd keys them (negative ids, never granted,
    // would sort last).
    let mut leases = Vec::new();
    pin.leases(&mut |l| {
        leases.push((l.id.to_be_bytes().to_vec(), l.encode_to_vec()));
        Ok(())
    })?;
    w.sorted_bucket(b"lease", leases)?;

    let mut entries = Vec::new();
    for m in members {
        let json = serde_json::to_vec(&EtcdMember {
            id: m.id,
            peer_urls: &m.peer_urls,
            is_learner: m.is_learner,
            name: &m.name,
            client_urls: &m.client_urls,
        })?;
        entries.push((format!("{:x}", m.id).into_bytes(), json));
    }
    w.sorted_bucket(b"members", entries)?;

    let mut meta = vec![
        (b"confState".to_vec(), conf_state_json(members)),
        (b"consistent_index".to_vec(), pin.applied_index().to_be_bytes().to_vec()),
        (b"term".to_vec(), term.to_be_bytes().to_vec()),
    ];
    if compact > 0 {
        let at = revision_key(RevisionPair { main: compact, sub: 0 }, false);
        meta.push((b"finishedCompactRev".to_vec(), at.clone()));
        meta.push((b"scheduledCompactRev".to_vec(), at));
    }
    w.sorted_bucket(b"meta", meta)?;
    for empty in [&b"alarm"[..], b"members_removed"] {
        w.sorted_bucket(empty, Vec::new())?;
    }
    Ok((w.finish()?, revision))
}

/// `raftpb.ConfState` as etcd 3.5 keeps it in `meta`: Go's JSON of the struct, voters and
/// learners ascending (raft's tracker lists them so), empty lists left out, `auto_leave`
/// always there.
fn conf_state_json(members: &[Member]) -> Vec<u8> {
    let ids = |learners: bool| {
        let mut ids: Vec<u64> = members.iter().filter(|m| m.is_learner == learners).map(|m| m.id).collect();
        ids.sort_unstable();
        ids
    };
    let (voters, learners) = (ids(false), ids(true));
    let mut fields = Vec::new();
    for (name, ids) in [("voters", &voters), ("learners", &learners)] {
        if !ids.is_empty() {
            let list: Vec<String> = ids.iter().map(u64::to_string).collect();
            fields.push(format!("\"{name}\":[{}]", list.join(",")));
        }
    }
    fields.push("\"auto_leave\":false".to_string());
    format!("{{{}}}", fields.join(",")).into_bytes()
}

/// etcd's `HashKV` of group `g` at `rev` (0: the current revision): the CRC-32C of the
/// bucket name `key` and of each `key` entry (revision key, `mvccpb.KeyValue`) up to `rev`,
/// in revision order, as etcd's `HashByRev` computes it over a compacted store: the entries
/// after the compact revision C, and those at or before C that are their key's newest
/// version at `rev` (etcd's keep set; all of them if that set is empty). So a Plinth group
/// and an etcd holding the same history answer the same hash. Each entry's own CRC-32C and
/// length are sorted by revision through [`RunSorter`] (spills in `dir`) and combined in
/// that order, which gives the CRC of the entries concatenated. Returns (hash, compact
/// revision, hashed revision).
pub fn etcd_hash_kv(store: &store::Store, g: GroupId, rev: i64, dir: &Path) -> store::Result<(u32, i64, i64)> {
    let pin = store.pin_export(g);
    if pin.importing() {
        return Err(store::Error::Importing);
    }
    let current = pin.revision();
    let compact = pin.compact_revision();
    // etcd's `HashByRev` refuses the compact revision itself too (`rev <= compactRev`), where
    // a range at it is served; a revision of 0 is the current one, even when that is the
    // compact revision.
    if rev > 0 && rev <= compact {
        return Err(store::Error::Compacted { requested: rev, compacted: compact });
    }
    if rev > current {
        return Err(store::Error::FutureRevision { requested: rev, current });
    }
    // A negative revision hashes no entry at all (etcd's walk keeps entries below `rev + 1`),
    // which gives the hash of an empty store.
    let rev = if rev == 0 { current } else { rev };
    let io = |e: anyhow::Error| store::Error::Io(std::io::Error::other(format!("{e:#}")));
    let mut sorter = RunSorter::new(dir);
    // Whether etcd's keep set at `rev` has a member: some key's newest version at `rev` is live.
    let mut keep_nonempty = false;
    let mut key_of_newest: Option<Vec<u8>> = None;
    pin.versions(&mut |key, r, tombstone, wire| {
        if r.main > rev {
            return Ok(());
        }
        // Versions come newest first within a key: the first at or below `rev` is its newest.
        let newest = key_of_newest.as_deref() != Some(key);
        if newest {
            key_of_newest = Some(key.to_vec());
            keep_nonempty |= !tombstone;
        }
        // An entry at or below C counts only as its key's newest version at `rev`, unless the
        // keep set is empty (decided once every key is seen): marked in the value's first byte.
        let conditional = r.main <= compact && !newest;
        let k = revision_key(r, tombstone);
        // Only the entry's CRC-32C and length are sorted; the hashes combine in order below.
        let mut crc = Crc32c::new();
        crc.update(&k);
        crc.update(wire);
        let mut value = Vec::with_capacity(9);
        value.push(u8::from(conditional));
        value.extend_from_slice(&crc.finish().to_le_bytes());
        value.extend_from_slice(&((k.len() + wire.len()) as u32).to_le_bytes());
        sorter.push(k, value).map_err(io)
    })?;
    let mut key_name = Crc32c::new();
    key_name.update(b"key");
    let mut hash = key_name.finish();
    let mut shifts = std::collections::HashMap::new();
    sorter
        .finish(|_: &[u8], v: &[u8]| {
            if v[0] == 0 || !keep_nonempty {
                let crc = u32::from_le_bytes(v[1..5].try_into().expect("4 bytes"));
                let len = u32::from_le_bytes(v[5..9].try_into().expect("4 bytes"));
                hash = crc32c_combine(hash, crc, u64::from(len), &mut shifts);
            }
            Ok(())
        })
        .map_err(io)?;
    Ok((hash, compact, rev))
}

/// CRC-32C's polynomial, reflected (Castagnoli: the hash etcd's `HashKV` and `etcdutl
/// snapshot status` print).
const CRC32C_POLY: u32 = 0x82F6_3B78;

/// CRC-32C's tables for eight bytes at a time: `[0]` is the byte-at-a-time table, and
/// `[k][i]` is `[k - 1][i]` advanced by one more zero byte.
const CRC32C_TABLES: [[u32; 256]; 8] = {
    let mut tables = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ CRC32C_POLY } else { c >> 1 };
            bit += 1;
        }
        tables[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = tables[k - 1][i];
            tables[k][i] = (prev >> 8) ^ tables[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    tables
};

/// A CRC-32C being computed.
struct Crc32c {
    crc: u32,
}

impl Crc32c {
    fn new() -> Crc32c {
        Crc32c { crc: !0 }
    }

    fn update(&mut self, bytes: &[u8]) {
        let t = &CRC32C_TABLES;
        let mut crc = self.crc;
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let lo = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) ^ crc;
            let hi = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
            crc = t[7][(lo & 0xff) as usize]
                ^ t[6][((lo >> 8) & 0xff) as usize]
                ^ t[5][((lo >> 16) & 0xff) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][(hi & 0xff) as usize]
                ^ t[2][((hi >> 8) & 0xff) as usize]
                ^ t[1][((hi >> 16) & 0xff) as usize]
                ^ t[0][(hi >> 24) as usize];
        }
        for &b in words.remainder() {
            crc = t[0][((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
        }
        self.crc = crc;
    }

    fn finish(&self) -> u32 {
        !self.crc
    }
}

/// `a(x) * b(x)` modulo CRC-32C's polynomial, in the reflected bit order; `a` is not zero.
const fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ CRC32C_POLY } else { b >> 1 };
    }
}

/// `x^(2^k)` modulo the polynomial, for k in 0..32.
const X2N: [u32; 32] = {
    let mut table = [0u32; 32];
    let mut p = 1u32 << 30; // x^1
    table[0] = p;
    let mut k = 1;
    while k < 32 {
        p = multmodp(p, p);
        table[k] = p;
        k += 1;
    }
    table
};

/// `x^(8 n)` modulo the polynomial: what appending `n` bytes multiplies a CRC by.
fn x8nmodp(mut n: u64) -> u32 {
    let mut p = 1u32 << 31; // x^0
    let mut k = 3;
    while n != 0 {
        if n & 1 != 0 {
            p = multmodp(X2N[k & 31], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC-32C of `A ‖ B` from `crc(A)`, `crc(B)` and the length of B, with the shift for
/// each length looked up in `shifts` (filled as lengths are met, up to a bound).
fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64, shifts: &mut std::collections::HashMap<u64, u32>) -> u32 {
    /// Distinct lengths whose shift is kept.
    const SHIFTS_KEPT: usize = 4096;
    let shift = match shifts.get(&len_b) {
        Some(s) => *s,
        None => {
            let s = x8nmodp(len_b);
            if shifts.len() < SHIFTS_KEPT {
                shifts.insert(len_b, s);
            }
            s
        }
    };
    multmodp(shift, crc_a) ^ crc_b
}

/// What `etcdutl snapshot status` prints for the etcd data file at `path`: the CRC-32C of
/// every top-level bucket's name and entries, the revision of the last `key` entry, the
/// number of entries and the file's size in pages.
pub fn etcd_db_status(path: &Path) -> anyhow::Result<super::snapshot_file::SnapshotStatus> {
    let db = super::bbolt::Bbolt::open(path)?;
    let mut names = Vec::new();
    db.walk(&db.root(), &mut |k, _, is_bucket| {
        if is_bucket {
            names.push(k.to_vec());
        }
        Ok(true)
    })?;
    let mut hash = Crc32c::new();
    let (mut revision, mut total_key) = (0i64, 0u64);
    for name in names {
        let bucket = db.bucket(&name)?.context("a listed bucket")?;
        hash.update(&name);
        let is_key = name == b"key";
        db.walk(&bucket, &mut |k, v, _| {
            hash.update(k);
            hash.update(v);
            if is_key && k.len() >= 8 {
                revision = i64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
            }
            total_key += 1;
            Ok(true)
        })?;
    }
    Ok(super::snapshot_file::SnapshotStatus {
        hash: hash.finish(),
        revision,
        total_key,
        total_size: db.size_in_pages(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc32c(bytes: &[u8]) -> u32 {
        let mut c = Crc32c::new();
        c.update(bytes);
        c.finish()
    }

    /// The bytes etcd 3.5.1 keeps (`etcdctl snapshot save` of one member, then with an
    /// unstarted learner added).
    #[test]
    fn conf_state_is_etcds_json() {
        let member =
            |id, is_learner| Member { id, name: String::new(), peer_urls: vec![], client_urls: vec![], is_learner };
        let voter = member(13_458_989_633_860_879_742, false);
        assert_eq!(
            conf_state_json(std::slice::from_ref(&voter)),
            br#"{"voters":[13458989633860879742],"auto_leave":false}"#
        );
        let members = [member(7_978_920_764_450_043_775, true), voter, member(5, false)];
        assert_eq!(
            String::from_utf8(conf_state_json(&members)).unwrap(),
            r#"{"voters":[5,13458989633860879742],"learners":[7978920764450043775],"auto_leave":false}"#
        );
    }

    #[test]
    fn crc32c_matches_the_reference_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        // Eight bytes at a time gives what one byte at a time does, at every length and
        // split of the input.
        let data: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        for len in 0..data.len() {
            let mut one = !0u32;
            for &b in &data[..len] {
                one = CRC32C_TABLES[0][((one ^ u32::from(b)) & 0xff) as usize] ^ (one >> 8);
            }
            let mut split = Crc32c::new();
            split.update(&data[..len / 3]);
            split.update(&data[len / 3..len]);
            assert_eq!(split.finish(), !one, "{len} bytes");
        }
    }

    #[test]
    fn combined_crcs_are_the_crc_of_the_concatenation() {
        let mut shifts = std::collections::HashMap::new();
        let data: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for (a, b) in [(0, 0), (0, 7), (3, 0), (1, 1), (17, 300), (1000, 4000), (4999, 1)] {
            let (left, right) = (&data[..a], &data[a..a + b]);
            let combined = crc32c_combine(crc32c(left), crc32c(right), b as u64, &mut shifts);
            assert_eq!(combined, crc32c(&data[..a + b]), "{a} + {b} bytes");
        }
    }

    #[test]
    fn the_sorter_merges_spilled_runs_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RunSorter::new(dir.path());
        // Past two runs' worth, in an order that is not sorted.
        let n = 3 * SORT_RUN_BYTES / (64 + 16 + 200) + 17;
        let mut expected = Vec::new();
        for i in 0..n {
            let k = ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes().to_vec();
            let v = vec![(i % 256) as u8; 200];
            expected.push((k.clone(), v.clone()));
            s.push(k, v).unwrap();
        }
        assert!(s.spilled.len() >= 2, "the test spills");
        expected.sort();
        let mut got = Vec::new();
        s.finish(|k: &[u8], v: &[u8]| {
            got.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        assert!(got == expected);
    }

    #[test]
    fn free_bytes_reads_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn revision_keys_are_etcds() {
        let k = revision_key(RevisionPair { main: 5, sub: 1 }, true);
        assert_eq!(k, [&5i64.to_be_bytes()[..], b"_", &1i64.to_be_bytes()[..], b"t"].concat());
    }
}
