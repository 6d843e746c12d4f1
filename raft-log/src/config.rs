//! WAL configuration.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fault::WalFaults;
use crate::segment::FRAME_PAYLOAD_BYTES_MAX;

/// Configuration of a [`crate::Wal`]. Every field documents its default.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Directory holding the segment files (created if missing).
    pub dir: PathBuf,
    /// Rotate to a new segment once the active one has grown past this size.
    /// Default: 64 MiB.
    pub segment_bytes_max: u64,
    /// Whether a new segment is created at its full size (`segment_bytes_max`) with
    /// `fallocate`, so appends never grow the file. Default: false, until the WAL bench
    /// shows it pays on a quiet machine (on ext4, writing into fallocated space still
    /// journals an extent conversion at fdatasync).
    pub segment_preallocate: bool,
    /// Bytes past the end of the active segment's frames that a background thread keeps
    /// written with zeros and synced, so an append overwrites blocks already on disk and its
    /// fdatasync has no size or extent change to journal (see `zero_ahead.rs`). 0 turns it
    /// off. Default: 4 MiB.
    pub segment_zero_ahead_bytes: u64,
    /// Purged segment files kept to become later segments instead of being deleted: their
    /// blocks are written already, so a recycled segment needs no zeros ahead and its appends
    /// none of the metadata that makes an fdatasync slow (see `writer.rs`, "Recycling").
    /// More purged files than this are deleted. 0 turns it off. Default: 2.
    pub segment_recycle_max: usize,
    /// Upper bound on the bytes of submissions the writer packs into one frame (one write,
    /// one fdatasync). A single submission larger than this is still written alone.
    /// Default: 4 MiB.
    pub batch_bytes_max: usize,
    /// Capacity of the bounded submission queue in front of the writer thread.
    /// Default: 4096.
    pub queue_capacity: usize,
    /// Most recent entries kept in memory per group (older ones are read back with pread).
    /// Default: 256.
    pub cache_entries_per_group_max: usize,
    /// Bytes of entry payload kept in memory per group. Default: 1 MiB.
    pub cache_bytes_per_group_max: usize,
    /// Injected write and fdatasync failures (see [`WalFaults`]), for crash tests and
    /// simulations. Default: none.
    pub faults: Option<Arc<dyn WalFaults>>,
    /// Told how long each fdatasync of a segment took (etcd's
    /// `etcd_disk_wal_fsync_duration_seconds`), on the thread that synced. Default: none.
    pub fsync_observer: Option<Arc<dyn FsyncObserver>>,
}

/// Receives the duration of every fdatasync of the active segment. Called on the thread doing
/// the sync, under the WAL's segment lock, so it must be cheap (a histogram update).
pub trait FsyncObserver: Send + Sync + std::fmt::Debug {
    fn observe(&self, took: std::time::Duration);
}

impl WalConfig {
    /// A configuration with every default, writing to `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalConfig {
            dir: dir.into(),
            segment_bytes_max: 64 << 20,
            segment_preallocate: false,
            segment_zero_ahead_bytes: 4 << 20,
            segment_recycle_max: 2,
            batch_bytes_max: 4 << 20,
            queue_capacity: 4096,
            cache_entries_per_group_max: 256,
            cache_bytes_per_group_max: 1 << 20,
            faults: None,
            fsync_observer: None,
        }
    }

    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        if self.segment_bytes_max < 1024 {
            return Err(Error::Config("segment_bytes_max must be at least 1 KiB".into()));
        }
        if self.batch_bytes_max == 0 || self.batch_bytes_max > FRAME_PAYLOAD_BYTES_MAX {
            return Err(Error::Config(format!("batch_bytes_max must be in 1..={FRAME_PAYLOAD_BYTES_MAX}")));
        }
        if self.queue_capacity == 0 || self.queue_capacity > 1 << 20 {
            return Err(Error::Config("queue_capacity must be in 1..=1048576".into()));
        }
        if self.cache_entries_per_group_max > 1 << 20 {
            return Err(Error::Config("cache_entries_per_group_max must be <= 1048576".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_do_not() {
        let c = WalConfig::new("/tmp/x");
        c.validate().unwrap();
        assert!(WalConfig { segment_bytes_max: 10, ..c.clone() }.validate().is_err());
        assert!(WalConfig { batch_bytes_max: 0, ..c.clone() }.validate().is_err());
        assert!(WalConfig { queue_capacity: 0, ..c }.validate().is_err());
    }
}
