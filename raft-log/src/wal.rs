//! `Wal`: opening (recovery), submitting batches, reading the index.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::TrySendError;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};
use raft::eraftpb::Entry;

use crate::batch::WriteBatch;
use crate::config::WalConfig;
use crate::error::{Error, Result};
use crate::index::{CacheLimits, GroupState, Index, SegmentInfo};
use crate::mailbox;
use crate::record::Record;
use crate::segment::{
    check_header, is_recycle_file_name, parse_segment_file_name, scan_frames, segment_path, sync_dir,
    valid_frame_after, zero_tail, HeaderCheck, ScannedFrame, FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX,
};
use crate::storage::{read_entries, GroupStorage};
use crate::types::{GroupId, LogIndex, Term};
use crate::writer::{
    purge, start_segment, Callback, Completion, Counters, NewSegment, Recycled, Segment, Shared, Submission, Ticket,
    WalStats, Writer,
};
use crate::zero_ahead::ZeroAhead;

/// Name of the lock file that keeps two processes from opening one WAL directory.
const LOCK_FILE_NAME: &str = "LOCK";

/// The shared, segmented, group-committed write-ahead log of every Raft group on a node.
pub struct Wal {
    shared: Arc<Shared>,
    segment: Arc<Mutex<Segment>>,
    tx: Option<mailbox::Sender<Submission>>,
    writer: Option<JoinHandle<()>>,
    /// The thread keeping zeros ahead of the active segment's frames, if configured.
    zero_ahead: Option<ZeroAhead>,
    config: WalConfig,
    _lock: File,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("dir", &self.config.dir).finish()
    }
}

fn lock_dir(dir: &Path) -> Result<File> {
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE_NAME))?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::Io(std::io::Error::new(
            e.kind(),
            format!("WAL directory {} is in use: {e}", dir.display()),
        )));
    }
    Ok(file)
}

/// One segment as read at recovery.
struct Loaded {
    seq: u64,
    path: PathBuf,
    frames: Vec<ScannedFrame>,
}

/// The truncated index per group of the checkpoint that opens a segment, if the segment's
/// first frame is a complete checkpoint.
fn head_checkpoint(frames: &[ScannedFrame]) -> Option<HashMap<GroupId, u64>> {
    let records = &frames.first()?.records;
    let Some((Record::CheckpointBegin { group_count }, _)) = records.first() else {
        return None;
    };
    if records.len() != *group_count as usize + 1 {
        return None;
    }
    records[1..]
        .iter()
        .map(|(r, _)| match r {
            Record::Checkpoint { group, checkpoint } => Some((*group, checkpoint.truncated_index.0)),
            _ => None,
        })
        .collect()
}

fn corruption(file: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corruption { file: file.to_path_buf(), offset, reason: reason.into() }
}

/// Reads every segment, checking headers and frames. A torn tail of the last segment (a bad
/// frame with no valid frame anywhere after it) is cut off; anything else wrong is an error.
fn load_segments(dir: &Path) -> Result<Vec<Loaded>> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(seq) = name.to_str().and_then(parse_segment_file_name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    let mut loaded = Vec::with_capacity(seqs.len());
    for (i, &seq) in seqs.iter().enumerate() {
        let is_last = i + 1 == seqs.len();
        let path = segment_path(dir, seq);
        let bytes = std::fs::read(&path)?;
        match check_header(&bytes, seq) {
            HeaderCheck::Valid => {}
            HeaderCheck::Torn if is_last => {
                // The process died while creating this segment: nothing in it was ever
                // acknowledged, because creation is fsynced before the first append.
                tracing::warn!(file = %path.display(), "removing WAL segment with a torn header");
                std::fs::remove_file(&path)?;
                sync_dir(dir)?;
                continue;
            }
            HeaderCheck::Torn => return Err(corruption(&path, 0, "torn segment header")),
            HeaderCheck::Bad(reason) => return Err(corruption(&path, 0, reason)),
        }
        let scan = scan_frames(seq, &bytes);
        if let Some((offset, reason)) = scan.bad {
            if !is_last {
                return Err(corruption(&path, offset, reason));
            }
            // Only a torn end may be cut: a valid frame after the bad one was written (and
            // possibly acknowledged) after it, so the bad frame is damaged acknowledged data
            // and cutting there would silently drop both. Refuse to start instead. Zeros to
            // the end are the preallocated, never written part of the segment (the process
            // stopped without closing the WAL): the end of the log, cut off quietly.
            if zero_tail(&bytes, offset) {
                tracing::debug!(file = %path.display(), offset, "cutting the preallocated tail of the last WAL segment");
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(offset)?;
                f.sync_all()?;
                loaded.push(Loaded { seq, path, frames: scan.frames });
                continue;
            }
            if let Some(next) = valid_frame_after(seq, &bytes, offset) {
                return Err(corruption(
                    &path,
                    offset,
                    format!("{reason}, with a valid frame after it at offset {next}"),
                ));
            }
            // A recycled segment always ends so after a crash: the old frames after the new
            // ones are another segment's and do not scan (`writer.rs`, "Recycling").
            tracing::warn!(
                file = %path.display(), offset, %reason,
                "truncating the torn tail (or a recycled file's old frames) of the last WAL segment"
            );
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(offset)?;
            f.sync_all()?;
        }
        loaded.push(Loaded { seq, path, frames: scan.frames });
    }
    Ok(loaded)
}

/// The purged segment files kept for recycling (see `writer.rs`), oldest first; past
/// `keep` of them, the oldest are deleted.
fn load_recycled(dir: &Path, keep: usize) -> Result<VecDeque<Recycled>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(is_recycle_file_name) {
            paths.push(entry.path());
        }
    }
    paths.sort_unstable();
    let extra = paths.len().saturating_sub(keep);
    let mut pool = VecDeque::with_capacity(keep);
    for (i, path) in paths.into_iter().enumerate() {
        if i < extra {
            std::fs::remove_file(&path)?;
        } else {
            pool.push_back(Recycled { file: Arc::new(File::open(&path)?), path });
        }
    }
    Ok(pool)
}

/// Checks that the segments are a contiguous run (purge deletes oldest first, so a crash
/// during purge leaves a shorter run, never a hole).
fn check_contiguous(dir: &Path, loaded: &[Loaded]) -> Result<()> {
    for pair in loaded.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
            return Err(corruption(&segment_path(dir, pair[0].seq + 1), 0, "missing segment"));
        }
    }
    Ok(())
}

impl Wal {
    /// Opens (or creates) the WAL in `config.dir`, recovering every group's log and state,
    /// then starts the writer thread on a fresh segment.
    pub fn open(config: WalConfig) -> Result<Wal> {
        config.validate()?;
        std::fs::create_dir_all(&config.dir)?;
        let lock = lock_dir(&config.dir)?;
        let dir = config.dir.clone();
        let loaded = load_segments(&dir)?;
        check_contiguous(&dir, &loaded)?;

        let mut index = Index::new(CacheLimits {
            entries_max: config.cache_entries_per_group_max,
            bytes_max: config.cache_bytes_per_group_max,
        });
        for seg in &loaded {
            index.segments.insert(
                seg.seq,
                SegmentInfo {
                    path: seg.path.clone(),
                    file: Arc::new(File::open(&seg.path)?),
                    max_index: HashMap::new(),
                    checkpoint: head_checkpoint(&seg.frames),
                },
            );
            for frame in &seg.frames {
                let base = frame.offset + FRAME_HEADER_BYTES as u64;
                for (record, spans) in &frame.records {
                    index
                        .apply(seg.seq, base, record, spans, true)
                        .map_err(|reason| corruption(&seg.path, frame.offset, reason))?;
                }
            }
        }
        if let Err(reason) = index.finish_recovery() {
            let first = loaded.first().map_or_else(|| dir.clone(), |s| s.path.clone());
            return Err(corruption(&first, 0, reason));
        }
        let next_seq = loaded.last().map_or(1, |s| s.seq + 1);
        drop(loaded);

        let shared = Arc::new(Shared {
            dir: dir.clone(),
            index: RwLock::new(index),
            counters: Counters::default(),
            queued: AtomicUsize::new(0),
            preallocate_bytes: if config.segment_preallocate { config.segment_bytes_max } else { 0 },
            fsync_observer: config.fsync_observer.clone(),
            recycled: Mutex::new(load_recycled(&dir, config.segment_recycle_max)?),
            recycle_max: config.segment_recycle_max,
        });
        // Always continue in a new segment: it starts with a checkpoint of the recovered
        // state, and the (possibly truncated) old tail is never appended to again.
        let NewSegment { file: active, len: active_len, written_len } = start_segment(&shared, next_seq)?;
        purge(&shared);

        let (tx, rx) = mailbox::channel(config.queue_capacity);
        let segment = Arc::new(Mutex::new(Segment {
            active,
            active_seq: next_seq,
            active_len,
            segment_bytes_max: config.segment_bytes_max,
            batch_bytes_max: config.batch_bytes_max,
            unsynced: false,
            failed: false,
            faults: config.faults.clone(),
            zeroed_len: written_len,
            zero_ahead_bytes: config.segment_zero_ahead_bytes,
            zero_ahead: None,
        }));
        let zero_ahead = match config.segment_zero_ahead_bytes {
            0 => None,
            _ => Some(ZeroAhead::start(Arc::clone(&shared), Arc::clone(&segment))?),
        };
        let writer = Writer { shared: Arc::clone(&shared), rx, segment: Arc::clone(&segment), carry: None };
        let handle = std::thread::Builder::new().name("raft-log-writer".into()).spawn(move || writer.run())?;
        Ok(Wal { shared, segment, tx: Some(tx), writer: Some(handle), zero_ahead, config, _lock: lock })
    }

    /// The configuration the WAL was opened with.
    pub fn config(&self) -> &WalConfig {
        &self.config
    }

    fn check_size(batch: &WriteBatch) -> Result<()> {
        if batch.encoded_len() > FRAME_PAYLOAD_BYTES_MAX {
            return Err(Error::BatchTooLarge { bytes: batch.encoded_len(), max: FRAME_PAYLOAD_BYTES_MAX });
        }
        Ok(())
    }

    fn sender(&self) -> &mailbox::Sender<Submission> {
        self.tx.as_ref().expect("invariant: sender lives until drop")
    }

    /// Queues `batch`, waiting for room when `block`, failing with `Busy` otherwise.
    fn send(&self, batch: WriteBatch, done: Completion, sync: bool, block: bool) -> Result<()> {
        Self::check_size(&batch)?;
        if batch.is_empty() {
            done.complete(Ok(()));
            return Ok(());
        }
        // Ordering: counted before it is queued, so an inline write cannot overtake it.
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        let submission = Submission { batch, done, sync };
        let sent = if block {
            self.sender().send(submission).map_err(|_| Error::Stopped)
        } else {
            self.sender().try_send(submission).map_err(|e| match e {
                TrySendError::Full(_) => Error::Busy,
                TrySendError::Disconnected(_) => Error::Stopped,
            })
        };
        if sent.is_err() {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        }
        sent
    }

    /// Queues `batch`, blocking while the queue is full. The ticket completes once the
    /// batch is durable and readable.
    pub fn submit(&self, batch: WriteBatch) -> Result<Ticket> {
        let (done, ticket) = Completion::ticket();
        self.send(batch, done, true, true)?;
        Ok(ticket)
    }

    /// Queues `batch` without asking for an fdatasync: it is written in queue order and becomes
    /// durable with the next synced batch, or is lost (with everything after it) if the
    /// process crashes first. Only for records whose loss is harmless, such as a HardState
    /// whose only change is the commit index (Raft recovers it). The ticket completes once the
    /// batch is written and readable.
    pub fn submit_unsynced(&self, batch: WriteBatch) -> Result<Ticket> {
        let (done, ticket) = Completion::ticket();
        self.send(batch, done, false, true)?;
        Ok(ticket)
    }

    /// Like [`Wal::submit`] but fails with `Error::Busy` instead of blocking on a full queue.
    pub fn try_submit(&self, batch: WriteBatch) -> Result<Ticket> {
        let (done, ticket) = Completion::ticket();
        self.send(batch, done, true, false)?;
        Ok(ticket)
    }

    /// Queues `batch` (blocking while the queue is full); `callback` runs on the writer
    /// thread once the batch is durable or rejected, and must not block.
    pub fn submit_with_callback(
        &self,
        batch: WriteBatch,
        callback: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<()> {
        let cb: Callback = Box::new(callback);
        self.send(batch, Completion::callback(cb), true, true)
    }

    /// Submits `batch` and waits until it is durable. When nothing is queued and the writer
    /// is idle, the frame is written and fdatasync'ed on the calling thread (see `writer.rs`),
    /// which saves two thread hand-offs; otherwise it joins the writer's next group commit.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        Self::check_size(&batch)?;
        if batch.is_empty() {
            return Ok(());
        }
        match self.try_inline(batch, true) {
            Ok(r) => r,
            Err(batch) => self.submit(batch)?.wait(),
        }
    }

    /// Like [`Wal::submit_unsynced`] without a ticket: written on the calling thread when the
    /// writer is idle (no wake-up of the writer for a few bytes), queued otherwise.
    pub fn write_unsynced(&self, batch: WriteBatch) -> Result<()> {
        Self::check_size(&batch)?;
        if batch.is_empty() {
            return Ok(());
        }
        match self.try_inline(batch, false) {
            Ok(r) => r,
            Err(batch) => self.submit_unsynced(batch).map(drop),
        }
    }

    /// Commits `batch` on this thread if nothing is queued and the segment is free; gives
    /// the batch back otherwise.
    fn try_inline(&self, batch: WriteBatch, sync: bool) -> std::result::Result<Result<()>, WriteBatch> {
        if self.shared.queued.load(Ordering::SeqCst) != 0 {
            return Err(batch);
        }
        let Some(mut seg) = self.segment.try_lock() else { return Err(batch) };
        // Checked again under the lock: the writer lowers the count only while it holds it,
        // and a submission counted after this point is queued behind this one.
        if self.shared.queued.load(Ordering::SeqCst) != 0 {
            return Err(batch);
        }
        let (done, ticket) = Completion::ticket();
        seg.commit(&self.shared, vec![Submission { batch, done, sync }]);
        seg.rotate_if_full(&self.shared);
        drop(seg);
        Ok(ticket.wait())
    }

    /// Records that `group` no longer needs entries at or below `index` (clamped to its
    /// last index). Segments holding only such entries are deleted at a later rotation.
    pub fn compact(&self, group: GroupId, index: LogIndex) -> Result<Ticket> {
        let mut b = WriteBatch::new();
        b.compact(group, index);
        self.submit(b)
    }

    /// A `raft::Storage` view of one group.
    pub fn storage(&self, group: GroupId) -> GroupStorage {
        GroupStorage::new(group, Arc::clone(&self.shared))
    }

    /// Every group with any record in the log.
    pub fn groups(&self) -> Vec<GroupId> {
        self.shared.index.read().groups.keys().copied().collect()
    }

    /// The durable state of `group`, if it has any record.
    pub fn group_state(&self, group: GroupId) -> Option<GroupState> {
        self.shared.index.read().groups.get(&group).map(|g| g.state())
    }

    /// Drops `group`'s cache of recent entries and frees its memory (the driver calls it when
    /// the group goes to sleep; reads then `pread` from the segments until new appends fill
    /// the cache again). Takes the index lock without the segment lock: an empty cache is
    /// valid at any point (its invariant holds only for a non-empty one), so this does not
    /// need to be ordered with a frame being written.
    pub fn drop_entry_cache(&self, group: GroupId) {
        if let Some(g) = self.shared.index.write().groups.get_mut(&group) {
            g.drop_cache();
        }
    }

    /// How many entries of `group` the cache holds (0 for an unknown group).
    pub fn entry_cache_len(&self, group: GroupId) -> usize {
        self.shared.index.read().groups.get(&group).map_or(0, |g| g.cache_len())
    }

    /// Entries `[low, high)` of `group`, at most `max_size` bytes (but at least one).
    pub fn entries(&self, group: GroupId, low: LogIndex, high: LogIndex, max_size: Option<u64>) -> Result<Vec<Entry>> {
        read_entries(&self.shared, group, low.0, high.0, max_size)
    }

    /// The term of entry `index` of `group`.
    pub fn term(&self, group: GroupId, index: LogIndex) -> Result<Term> {
        let idx = self.shared.index.read();
        match idx.groups.get(&group) {
            Some(g) => g.term(index.0).map(Term),
            None if index.0 == 0 => Ok(Term(0)),
            None => Err(Error::Unavailable),
        }
    }

    /// Counters: fsyncs, entries appended, frames, bytes, purged segments.
    pub fn stats(&self) -> WalStats {
        self.shared.counters.snapshot()
    }

    /// Sequence numbers of the segment files currently live.
    pub fn segment_seqs(&self) -> Vec<u64> {
        self.shared.index.read().segments.keys().copied().collect()
    }

    /// Per group, the highest index of its live (not compacted) entries held by segments
    /// older than the newest `keep_newest`. Compacting a group to that index releases those
    /// segments from it; a group absent from the map holds none of them. A server uses it to
    /// stop a group that writes rarely from keeping every later segment (one entry in an old
    /// segment keeps the whole segment, and with it every segment after it).
    pub fn held_by_old_segments(&self, keep_newest: usize) -> HashMap<GroupId, LogIndex> {
        let idx = self.shared.index.read();
        idx.held_by_old_segments(keep_newest).into_iter().map(|(g, i)| (g, LogIndex(i))).collect()
    }

    /// Number of entry positions held in memory across all groups.
    pub fn indexed_entry_count(&self) -> usize {
        self.shared.index.read().groups.values().map(|g| g.entry_count()).sum()
    }

    /// O(n) check of the index's invariants; tests call it after every step.
    pub fn check_invariants(&self) {
        self.shared.index.read().check_invariants();
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish everything already submitted and exit.
        drop(self.tx.take());
        if let Some(h) = self.writer.take() {
            if !crate::join_thread(h, "WAL writer thread") {
                return;
            }
        }
        // Ordering: no zeros are written after the trim below.
        if let Some(z) = &mut self.zero_ahead {
            z.stop();
        }
        // Every submission is written: a closed WAL's segments end at their last frame. (A
        // process that dies without closing leaves the zeros, which recovery cuts.)
        self.segment.lock().trim_active();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64) -> Entry {
        Entry { index, term: 1, data: format!("e{index}").into_bytes().into(), ..Entry::default() }
    }

    /// After a failed write or fsync (which panics), nothing reaches the disk again: not a
    /// later write, not the close that would trim and fsync the segment.
    #[test]
    fn a_failed_wal_never_writes_or_syncs_again() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
        let mut b = WriteBatch::new();
        b.add_entries(GroupId(1), &[entry(1)]);
        wal.write(b).unwrap();
        let seq = wal.segment.lock().active_seq;
        let path = segment_path(dir.path(), seq);
        // What a failed fdatasync leaves behind (just before its panic). The length is read
        // under the segment lock: the zero-ahead thread extends the file under it too.
        let len = {
            let mut seg = wal.segment.lock();
            seg.failed = true;
            std::fs::metadata(&path).unwrap().len()
        };
        let mut b = WriteBatch::new();
        b.add_entries(GroupId(1), &[entry(2)]);
        assert!(matches!(wal.write(b), Err(Error::Stopped)), "a failed WAL refuses writes");
        let mut b = WriteBatch::new();
        b.add_entries(GroupId(1), &[entry(2)]);
        assert!(matches!(wal.submit(b).unwrap().wait(), Err(Error::Stopped)), "and queued ones");
        drop(wal);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "nothing written or trimmed after the failure");
        let reopened = Wal::open(WalConfig::new(dir.path())).unwrap();
        assert_eq!(reopened.group_state(GroupId(1)).unwrap().last_index, LogIndex(1));
    }

    /// Counts the fdatasyncs it is told of.
    #[derive(Debug, Default)]
    struct CountSyncs(std::sync::atomic::AtomicU64);

    impl crate::FsyncObserver for CountSyncs {
        fn observe(&self, _took: std::time::Duration) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The observer hears of every fdatasync the WAL counts, and of no other.
    #[test]
    fn the_fsync_observer_sees_every_segment_sync() {
        let dir = tempfile::tempdir().unwrap();
        let observer = Arc::new(CountSyncs::default());
        let cfg = WalConfig { fsync_observer: Some(observer.clone()), ..WalConfig::new(dir.path()) };
        let wal = Wal::open(cfg).unwrap();
        for i in 1..=5 {
            let mut b = WriteBatch::new();
            b.add_entries(GroupId(1), &[entry(i)]);
            wal.write(b).unwrap();
        }
        let fsyncs = wal.stats().fsyncs;
        assert!(fsyncs >= 5, "each acknowledged write was synced: {fsyncs}");
        assert_eq!(observer.0.load(Ordering::SeqCst), fsyncs);
    }

    /// Fails the next frame write (half of it reaches the file) or the next fdatasync.
    #[derive(Debug, Default)]
    struct FailNext {
        write: std::sync::atomic::AtomicBool,
        sync: std::sync::atomic::AtomicBool,
    }

    impl crate::WalFaults for FailNext {
        fn short_write(&self, _seq: u64, _offset: u64, len: usize) -> Option<usize> {
            self.write.swap(false, Ordering::SeqCst).then_some(len / 2)
        }

        fn sync_fails(&self, _seq: u64, _len: u64) -> bool {
            self.sync.swap(false, Ordering::SeqCst)
        }
    }

    /// An injected short write or fdatasync error fails the WAL as a real one does: the
    /// write is not acknowledged, nothing is written or synced after it, and recovery
    /// keeps the acknowledged log (a frame whose sync failed may survive, unacknowledged).
    #[test]
    fn injected_disk_faults_fail_the_wal_like_real_ones() {
        for short_write in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let faults = Arc::new(FailNext::default());
            let cfg = WalConfig { faults: Some(faults.clone()), ..WalConfig::new(dir.path()) };
            let wal = Wal::open(cfg).unwrap();
            let mut b = WriteBatch::new();
            b.add_entries(GroupId(1), &[entry(1)]);
            wal.write(b).unwrap();
            if short_write {
                faults.write.store(true, Ordering::SeqCst);
            } else {
                faults.sync.store(true, Ordering::SeqCst);
            }
            let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut b = WriteBatch::new();
                b.add_entries(GroupId(1), &[entry(2)]);
                wal.write(b)
            }));
            // Inline, the failure panics on this thread; through the writer thread, the
            // write reports it.
            assert!(!matches!(failed, Ok(Ok(()))), "a failed write is never acknowledged");
            assert!(wal.segment.lock().failed, "the WAL marks itself failed");
            assert_eq!(wal.group_state(GroupId(1)).unwrap().last_index, LogIndex(1), "nothing indexed");
            let path = segment_path(dir.path(), wal.segment.lock().active_seq);
            let len = std::fs::metadata(&path).unwrap().len();
            let mut b = WriteBatch::new();
            b.add_entries(GroupId(1), &[entry(2)]);
            assert!(matches!(wal.write(b), Err(Error::Stopped)), "a failed WAL refuses writes");
            drop(wal);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "nothing written after the failure");
            let reopened = Wal::open(WalConfig::new(dir.path())).unwrap();
            let last = reopened.group_state(GroupId(1)).unwrap().last_index;
            let want = if short_write { LogIndex(1) } else { LogIndex(2) };
            assert_eq!(last, want, "short write: the torn frame is cut; failed sync: the written frame stays");
        }
    }
}
