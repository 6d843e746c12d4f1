//! Zero-ahead: the active segment's next bytes are written with zeros and synced before any
//! frame needs them.
//!
//! An append's fdatasync must also make durable whatever the append changed in the file's
//! metadata. Appending past the end of the file changes its size and allocates blocks;
//! writing into `fallocate`d space converts an unwritten extent to a written one, which ext4
//! journals as well. Both made a 4 KiB write + fdatasync take 101-114 µs here, against
//! 55-62 µs for the same write into blocks already written and synced (`raw/fdatasync_4k`,
//! `raw/fdatasync_4k_preallocated` and `raw/fdatasync_4k_zeroed` in the WAL bench): with
//! nothing but data to flush, the sync is half as long. Every acknowledged write waits for
//! one such sync.
//!
//! So a background thread keeps [`crate::WalConfig::segment_zero_ahead_bytes`] past the end
//! of the active segment's frames written with zeros (in chunks of [`CHUNK_BYTES`], up to the
//! segment's rotation size) and syncs them, on its own file descriptor, while the writer is
//! not looking: the writer then overwrites zeros that are already on disk.
//!
//! Safety of the log:
//! - Zeros are written under the segment lock, only at or after the active segment's end
//!   (`active_len`), and only into the segment that is active at that moment: never over a
//!   frame, never into a segment that rotation has trimmed.
//! - Zeros after the last frame are what recovery already takes as the end of the log (a
//!   preallocated segment ends the same way), and a closed or rotated segment is trimmed to
//!   its frames, so only the last segment may end in zeros.
//! - The zeros' own fdatasync runs on a descriptor opened separately from the writer's. Linux
//!   reports a writeback error to every open file description of the file, so a failure seen
//!   here is seen by the writer's next fdatasync too, which stops the WAL as it must; the
//!   zero-ahead thread only stops zeroing.
//!
//! Cost: a new segment is written twice, once with zeros and once with frames. A recycled
//! segment (`writer.rs`, "Recycling") is not: its blocks are written already, so it needs no
//! zeros, and in a steady state every segment is a recycled one.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::segment::segment_path;
use crate::writer::{Segment, Shared};

/// Bytes of zeros written per hold of the segment lock: short enough that a writer waiting
/// for the lock waits tens of microseconds, not milliseconds.
pub(crate) const CHUNK_BYTES: u64 = 256 << 10;

/// How long the thread sleeps when it is ahead and nobody wakes it: a safety net; the writer
/// wakes it when it gets within half the distance.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// The zero-ahead thread of one WAL.
pub(crate) struct ZeroAhead {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ZeroAhead {
    /// Starts the thread for the WAL whose active segment is `segment`, keeping the segment's
    /// `zero_ahead_bytes` zeroed past its frames, and registers it with the segment so the
    /// writer can wake it.
    pub fn start(shared: Arc<Shared>, segment: Arc<Mutex<Segment>>) -> std::io::Result<ZeroAhead> {
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            shared,
            segment: Arc::clone(&segment),
            stop: Arc::clone(&stop),
            file: None,
            zeros: vec![0; CHUNK_BYTES as usize],
        };
        let handle = std::thread::Builder::new().name("raft-log-zero".into()).spawn(move || worker.run())?;
        segment.lock().zero_ahead = Some(handle.thread().clone());
        Ok(ZeroAhead { stop, handle: Some(handle) })
    }

    /// Stops the thread and waits for it (it finishes the chunk it is writing).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            crate::join_thread(h, "WAL zero-ahead thread");
        }
    }
}

impl Drop for ZeroAhead {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    shared: Arc<Shared>,
    segment: Arc<Mutex<Segment>>,
    stop: Arc<AtomicBool>,
    /// The segment being zeroed and this thread's own descriptor on it.
    file: Option<(u64, File)>,
    /// One chunk of zeros, written again and again.
    zeros: Vec<u8>,
}

impl Worker {
    fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            match self.zero_next_chunk() {
                Ok(true) => {}
                Ok(false) => std::thread::park_timeout(IDLE_WAIT),
                Err(e) => {
                    // The writer's own fdatasync reports a disk failure; without zeros ahead,
                    // appends are only slower.
                    tracing::warn!(error = %e, "WAL zero-ahead stopped");
                    return;
                }
            }
        }
    }

    /// Zeroes the next chunk of the active segment, if it is not far enough ahead, and syncs
    /// it. Whether there was one.
    fn zero_next_chunk(&mut self) -> std::io::Result<bool> {
        {
            let mut seg = self.segment.lock();
            if seg.failed {
                return Ok(false);
            }
            let start = seg.zeroed_len.max(seg.active_len);
            let end = seg.zeros_wanted_until(seg.zero_ahead_bytes).min(start + CHUNK_BYTES);
            if start >= end {
                return Ok(false);
            }
            let seq = seg.active_seq;
            if self.file.as_ref().is_none_or(|(s, _)| *s != seq) {
                let path = segment_path(&self.shared.dir, seq);
                self.file = Some((seq, OpenOptions::new().write(true).open(path)?));
            }
            let (_, file) = self.file.as_ref().expect("opened above");
            // Ordering: under the segment lock, and at or after `active_len`, so no frame is
            // being written there and none was.
            file.write_all_at(&self.zeros[..(end - start) as usize], start)?;
            seg.zeroed_len = end;
            self.shared.counters.zero_bytes_written.fetch_add(end - start, Ordering::Relaxed);
        }
        // Outside the lock: the writer appends meanwhile, into zeros already written.
        self.file.as_ref().expect("opened above").1.sync_data()?;
        Ok(true)
    }
}
