//! Store configuration. Every field documents its default; [`StoreConfig::validate`] runs
//! at `Store::open`.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// Limits and sizes of one node's store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Quota per group, over the estimate of [`crate::Store::size_bytes`]. Default: 8 GiB.
    pub quota_bytes_per_group: u64,
    /// History entries examined per background compaction batch (one WriteBatch each).
    /// Default: 10,000.
    pub compaction_batch_keys: usize,
    /// Shared RocksDB block cache (data, index and filter blocks). Default: 256 MiB.
    pub block_cache_bytes: usize,
    /// Total memtable budget over all column families. Default: 128 MiB.
    pub memtable_bytes: usize,
    /// Bytes of the node-wide cache of live `kv` entries that the apply path reads each
    /// written key's previous version from (`live_cache.rs`); 0 turns it off.
    pub live_cache_bytes: usize,
    /// Keep each group's live keys counted by segments (`key_counts.rs`), so a range's
    /// `count` at the current revision walks at most the two segments at its ends instead
    /// of every key. Costs up to about 2 × 4,096 bounds (a key and a count) per group, and a
    /// walk over each group's `kv` entries at open. Default: true.
    pub key_counts: bool,
    /// Event-carrying responses buffered per watch stream before its watchers fall back to
    /// catch-up from the `events` CF. Default: 1,024.
    pub watch_stream_buffer: usize,
    /// Events read per catch-up pass of the watch sync thread. Default: 10,000.
    pub watch_sync_batch_events: usize,
    /// Period of the watch sync thread (it is also woken when a watcher falls behind).
    /// Default: 100 ms.
    pub watch_sync_interval: Duration,
    /// A watcher whose stream buffer stays full (its client reads nothing) this long is
    /// canceled, so that it stops holding history and hub work; the client re-watches.
    /// Default: 60 s.
    pub watch_stuck_cancel_after: Duration,
    /// etcd `--max-txn-ops`. Default: 128.
    pub max_txn_ops: usize,
    /// etcd `--max-request-bytes`, checked on the encoded command. Default: 1.5 MiB.
    pub max_request_bytes: usize,
    /// Read every block of the store's files with its checksum verified when the store
    /// opens, so that a damaged file stops the start with an error naming it, rather than
    /// failing the first read (or apply) that reaches the damaged block later. Costs one
    /// sequential read of the store per start. Default: true.
    pub verify_checksums_at_open: bool,
    /// Backups are taken from this store: the background purge of a compaction stops at
    /// each group's backup mark, so the next delta finds every change after it. Default:
    /// false.
    pub hold_history_for_backups: bool,
    /// Flush the memtables when the store closes (its last handle drops). With false, a
    /// close is what a machine crash is to the store: RocksDB's WAL is off, so everything
    /// applied after the last flush is lost, and the next start replays it from the Raft
    /// log (which is purged only up to a flush). Crash tests and simulations use it.
    /// Default: true.
    pub flush_at_close: bool,
    /// Told how long each apply batch's RocksDB write took (etcd's backend commit; see
    /// [`CommitObserver`]). Default: none.
    pub commit_observer: Option<Arc<dyn CommitObserver>>,
}

/// Receives the duration of every RocksDB write of an apply batch (`Store::apply`), the
/// store's equivalent of etcd's bbolt commit. Called on the applying thread while the
/// group's committed state is locked for writing, so it must be cheap (a histogram update).
pub trait CommitObserver: Send + Sync + std::fmt::Debug {
    fn observe(&self, took: Duration);
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            quota_bytes_per_group: 8 << 30,
            compaction_batch_keys: 10_000,
            block_cache_bytes: 256 << 20,
            memtable_bytes: 128 << 20,
            live_cache_bytes: 64 << 20,
            key_counts: true,
            watch_stream_buffer: 1024,
            watch_sync_batch_events: 10_000,
            watch_sync_interval: Duration::from_millis(100),
            watch_stuck_cancel_after: Duration::from_secs(60),
            max_txn_ops: 128,
            max_request_bytes: 3 << 19,
            verify_checksums_at_open: true,
            hold_history_for_backups: false,
            flush_at_close: true,
            commit_observer: None,
        }
    }
}

impl StoreConfig {
    /// Rejects values that would make a limit meaningless.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(Error::InvalidConfig(what.to_string())) };
        check(self.quota_bytes_per_group > 0, "quota_bytes_per_group must be > 0")?;
        check(self.compaction_batch_keys > 0, "compaction_batch_keys must be > 0")?;
        check(self.block_cache_bytes >= 1 << 20, "block_cache_bytes must be >= 1 MiB")?;
        check(self.memtable_bytes >= 1 << 20, "memtable_bytes must be >= 1 MiB")?;
        check(self.watch_stream_buffer > 0, "watch_stream_buffer must be > 0")?;
        check(self.watch_sync_batch_events > 0, "watch_sync_batch_events must be > 0")?;
        check(!self.watch_sync_interval.is_zero(), "watch_sync_interval must be > 0")?;
        check(!self.watch_stuck_cancel_after.is_zero(), "watch_stuck_cancel_after must be > 0")?;
        check(self.max_txn_ops > 0, "max_txn_ops must be > 0")?;
        check(self.max_request_bytes > 0, "max_request_bytes must be > 0")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_zero_limits_do_not() {
        StoreConfig::default().validate().unwrap();
        assert!(StoreConfig { watch_stream_buffer: 0, ..Default::default() }.validate().is_err());
        assert!(StoreConfig { max_txn_ops: 0, ..Default::default() }.validate().is_err());
    }
}
