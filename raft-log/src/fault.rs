//! Fault injection into the WAL's segment I/O, for crash tests and simulations.
//!
//! A [`WalFaults`] in [`crate::WalConfig::faults`] is asked before every frame write and
//! every fdatasync of the active segment, and may make it fail the way a disk does: a short
//! write (a prefix of the frame reaches the file, then the write reports an error) or an
//! fdatasync error (the file is not synced, and the page cache state is then unknown). The
//! WAL handles an injected failure exactly like a real one: it marks itself failed, never
//! writes or syncs again, and panics.
//!
//! Production WALs have none (the default): the cost is one branch on an `Option` per frame
//! and per fdatasync.
//!
//! Not covered: the segment header and checkpoint frame written when a segment is created
//! (at open and at rotation), the directory fsyncs, trims and purges.

use std::fmt::Debug;

/// Decides which segment writes and syncs fail. Called on the thread doing the I/O (the
/// writer thread, or a caller writing inline), under the WAL's segment lock, so calls are
/// serialized.
pub trait WalFaults: Send + Sync + Debug {
    /// Before `len` bytes of a frame are written at `offset` of segment `seq`. `Some(n)`
    /// (with `n < len`) writes only the first `n` bytes, then fails the write.
    fn short_write(&self, seq: u64, offset: u64, len: usize) -> Option<usize>;

    /// Before the fdatasync of segment `seq`, whose length is then `len`. `true` fails it
    /// without syncing.
    fn sync_fails(&self, seq: u64, len: u64) -> bool;
}
