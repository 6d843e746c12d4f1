//! Snapshot files that `etcdctl snapshot save` wrote against earlier versions of Plinth:
//! the store's chunks of the default group, zero padding to a multiple of 512 bytes, and
//! the SHA-256 of everything before it. (Snapshots are now etcd's data file, see
//! `etcd_export`; these are still read, by `plinth snapshot status` and `plinth backup
//! from-snapshot`.)
//!
//! [`read_snapshot_file`] verifies the whole file (every chunk's crc and sequence, the
//! trailer's SHA-256) while it streams the chunks to a visitor, holding one chunk at a time.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{bail, ensure, Context};
use sha2::{Digest, Sha256};

/// Alignment of the data before the SHA-256 trailer (etcd's shape).
const ALIGN_BYTES: u64 = 512;
/// Bytes of the SHA-256 trailer.
const SHA256_BYTES: usize = 32;
/// Largest chunk accepted: a chunk holds at most `SNAPSHOT_CHUNK_BYTES_MAX` unless one
/// entry alone is larger, and no entry exceeds a request's size limit by this much.
const CHUNK_BYTES_MAX: usize = 256 << 20;

/// What `etcdutl snapshot status` prints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotStatus {
    /// crc32 of every chunk's contents, in order.
    pub hash: u32,
    pub revision: i64,
    /// Entries of the snapshot (keys of every column family, as etcd counts the keys of
    /// every bucket).
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    /// Bytes of the file.
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// Reads and verifies the snapshot file at `path`, handing each verified chunk to
/// `visit`, and returns its status. `visit` may see chunks of a file that later turns out
/// damaged: the caller must not keep what it built from them when this fails.
pub fn read_snapshot_file(
    path: &Path,
    visit: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<SnapshotStatus> {
    let file = File::open(path).with_context(|| format!("opening snapshot {}", path.display()))?;
    let total_size = file.metadata()?.len();
    let name = path.display().to_string();
    ensure!(
        total_size >= SHA256_BYTES as u64 && (total_size - SHA256_BYTES as u64).is_multiple_of(ALIGN_BYTES),
        "snapshot {name}: {total_size} bytes is not a snapshot file (sha256 checksum not found)"
    );
    let data_len = total_size - SHA256_BYTES as u64;
    let mut r = BufReader::new(file);
    let mut sha = Sha256::new();
    let mut hash = crc32fast::Hasher::new();
    let mut read = 0u64;
    let mut revision = None;
    let mut entries;
    let mut expected_seq = 0u32;
    let mut header = vec![0u8; store::SNAPSHOT_CHUNK_HEADER_BYTES];
    loop {
        ensure!(read + header.len() as u64 <= data_len, "snapshot {name} is corrupted: it ends before its last chunk");
        r.read_exact(&mut header)?;
        let len =
            store::snapshot_chunk_len(&header).map_err(|e| anyhow::anyhow!("snapshot {name} is corrupted: {e}"))?;
        ensure!(len <= CHUNK_BYTES_MAX, "snapshot {name} is corrupted: a chunk of {len} bytes");
        ensure!(read + len as u64 <= data_len, "snapshot {name} is corrupted: a chunk runs past the end");
        let mut chunk = header.clone();
        chunk.resize(len, 0);
        r.read_exact(&mut chunk[header.len()..])?;
        read += len as u64;
        sha.update(&chunk);
        let summary =
            store::inspect_snapshot_chunk(&chunk).map_err(|e| anyhow::anyhow!("snapshot {name} is corrupted: {e}"))?;
        ensure!(
            summary.seq == expected_seq,
            "snapshot {name} is corrupted: chunk {} where {expected_seq} was expected",
            summary.seq
        );
        expected_seq += 1;
        hash.update(&chunk[store::SNAPSHOT_CHUNK_HEADER_BYTES..len - 4]);
        revision = revision.or(summary.revision);
        entries = summary.entries_total;
        visit(&chunk)?;
        if summary.last {
            break;
        }
    }
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)?;
    ensure!(rest.len() == (total_size - read) as usize, "snapshot {name}: the file changed while read");
    let (padding, trailer) = rest.split_at(rest.len() - SHA256_BYTES);
    ensure!(
        padding.len() < ALIGN_BYTES as usize && padding.iter().all(|&b| b == 0),
        "snapshot {name} is corrupted: data after the last chunk"
    );
    sha.update(padding);
    if sha.finalize()[..] != trailer[..] {
        bail!("snapshot {name} is corrupted: sha256 mismatch");
    }
    let revision = revision.ok_or_else(|| anyhow::anyhow!("snapshot {name} has no group meta record"))?;
    Ok(SnapshotStatus { hash: hash.finalize(), revision, total_key: entries, total_size })
}

/// Installs the snapshot file at `path` as group `group` of `store` (which must not hold
/// it yet). Every chunk is verified, the file's SHA-256 included, before anything is
/// installed, so the chunks are read twice rather than held in memory.
pub fn install_snapshot_file(path: &Path, store: &store::Store, group: store::GroupId) -> anyhow::Result<()> {
    read_snapshot_file(path, &mut |_| Ok(()))?;
    let file = File::open(path)?;
    let mut r = BufReader::new(file);
    let mut failed: Option<anyhow::Error> = None;
    let chunks = std::iter::from_fn(|| {
        if failed.is_some() {
            return None;
        }
        let mut header = vec![0u8; store::SNAPSHOT_CHUNK_HEADER_BYTES];
        let res = (|| -> anyhow::Result<Vec<u8>> {
            r.read_exact(&mut header)?;
            let len = store::snapshot_chunk_len(&header)?;
            header.resize(len, 0);
            r.read_exact(&mut header[store::SNAPSHOT_CHUNK_HEADER_BYTES..])?;
            Ok(header)
        })();
        match res {
            Ok(chunk) => {
                let last = store::inspect_snapshot_chunk(&chunk).map(|s| s.last).unwrap_or(true);
                if last {
                    failed = Some(anyhow::anyhow!("done"));
                }
                Some(chunk)
            }
            Err(e) => {
                failed = Some(e);
                None
            }
        }
    });
    store.install_snapshot(group, chunks).with_context(|| format!("installing snapshot {}", path.display()))?;
    Ok(())
}

/// etcd's `humanize.Bytes`: SI units, one decimal under 10, as `etcdutl` prints sizes.
pub fn humanize_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let val = (n as f64 / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", units[e])
    } else {
        format!("{val:.0} {}", units[e])
    }
}

#[cfg(test)]
mod tests {
    use super::humanize_bytes;

    #[test]
    fn sizes_print_like_etcdutl() {
        assert_eq!(humanize_bytes(0), "0 B");
        assert_eq!(humanize_bytes(999), "999 B");
        assert_eq!(humanize_bytes(1000), "1.0 kB");
        assert_eq!(humanize_bytes(20480), "20 kB");
        assert_eq!(humanize_bytes(2_100_000), "2.1 MB");
    }
}
