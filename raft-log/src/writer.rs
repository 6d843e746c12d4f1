//! The writer thread: group commit. It drains the bounded submission queue, writes
//! everything drained as one frame to the active segment, calls ONE fdatasync, updates the
//! index and only then completes the submissions. It also rotates segments and purges old
//! ones.
//!
//! The active segment sits behind a mutex. A caller of `Wal::write` that finds the queue
//! empty and the segment free writes its own frame on its own thread (the same code, the
//! same fdatasync) instead of handing it to the writer and waiting to be woken: with one
//! submitter at a time there is nothing to group, and the two thread hand-offs per write
//! would be most of its latency. `Shared::queued` counts submissions queued and not yet
//! committed; the inline path runs only while it is zero, under the segment lock, so it
//! never overtakes a queued submission (queue order is log order).
//!
//! **Recycling.** Purge renames up to [`crate::WalConfig::segment_recycle_max`] purged
//! segments to `<seq>.recycle` instead of deleting them, and a rotation turns one into the
//! next segment: the new header and checkpoint frame are written over the old head and
//! synced, and only then is the file renamed to the segment's name (directory synced). A
//! crash before the rename leaves a recycle file, which recovery never reads as a segment; a
//! crash after it leaves a segment with a valid header. The old frames after the new ones are
//! never mistaken for log: a frame's crc is seeded with its segment's sequence number, so
//! they fail to scan like a torn tail, which is where recovery cuts the last segment, and
//! rotation trims each segment to its frames before a newer one exists. A recycled file's
//! blocks are all written, so appends into it need no zeros ahead (`zero_ahead.rs`) and their
//! fdatasync has no size or extent change to journal: the WAL writes each block once, not
//! twice. A purged file that a reader still holds open (a slow `pread` of an old entry) is
//! deleted rather than recycled, so no read can see another segment's bytes.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::batch::WriteBatch;
use crate::error::{Error, Result};
use crate::fault::WalFaults;
use crate::index::{project, Index, SegmentInfo};
use crate::record::{encode_batch, Record};
use crate::segment::{
    create_segment, encode_frame_header, encode_header, recycle_file_name, segment_path, sync_dir, trim_segment,
    FRAME_HEADER_BYTES, HEADER_BYTES,
};
use crate::types::GroupId;

/// Most submissions packed into one frame, whatever their size.
pub const SUBMISSIONS_PER_FRAME_MAX: usize = 4096;

/// Counters shared by the writer and readers of `Wal::stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub fsyncs: AtomicU64,
    pub entries_appended: AtomicU64,
    pub frames_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub submissions: AtomicU64,
    pub segments_purged: AtomicU64,
    pub segments_recycled: AtomicU64,
    pub zero_bytes_written: AtomicU64,
}

/// A snapshot of the WAL's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// fdatasync calls on segment files.
    pub fsyncs: u64,
    /// Entries made durable.
    pub entries_appended: u64,
    /// Frames written (one per group commit, plus one per segment checkpoint).
    pub frames_written: u64,
    /// Bytes written to segment files.
    pub bytes_written: u64,
    /// Submissions completed successfully.
    pub submissions: u64,
    /// Segment files purged (deleted or kept for recycling).
    pub segments_purged: u64,
    /// New segments made from recycled files rather than created.
    pub segments_recycled: u64,
    /// Bytes of zeros written ahead of the active segment's frames (`zero_ahead.rs`).
    pub zero_bytes_written: u64,
}

impl Counters {
    pub fn snapshot(&self) -> WalStats {
        WalStats {
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            entries_appended: self.entries_appended.load(Ordering::Relaxed),
            frames_written: self.frames_written.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            submissions: self.submissions.load(Ordering::Relaxed),
            segments_purged: self.segments_purged.load(Ordering::Relaxed),
            segments_recycled: self.segments_recycled.load(Ordering::Relaxed),
            zero_bytes_written: self.zero_bytes_written.load(Ordering::Relaxed),
        }
    }
}

/// State shared by the `Wal`, its `GroupStorage`s and the writer thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub index: RwLock<Index>,
    pub counters: Counters,
    /// Submissions sent to the writer's queue and not yet committed (or rejected). Raised
    /// before a send, lowered by the writer after the commit, under the segment lock.
    pub queued: AtomicUsize,
    /// Bytes a new segment is preallocated to (0: none), from the config.
    pub preallocate_bytes: u64,
    /// [`crate::WalConfig::fsync_observer`].
    pub fsync_observer: Option<Arc<dyn crate::FsyncObserver>>,
    /// Purged segment files kept for recycling, oldest first, at most `recycle_max`.
    pub recycled: Mutex<VecDeque<Recycled>>,
    /// [`crate::WalConfig::segment_recycle_max`].
    pub recycle_max: usize,
}

/// A purged segment file waiting to become a new segment.
#[derive(Debug)]
pub(crate) struct Recycled {
    pub path: PathBuf,
    /// The handle the index held; another holder is a reader still using the old segment.
    pub file: Arc<File>,
}

/// The oldest recycled file no reader holds, opened for writing, with its length. Files a
/// reader still holds, and files that cannot be opened, are deleted instead.
fn take_recycled(shared: &Shared) -> Option<(PathBuf, File, u64)> {
    loop {
        let r = shared.recycled.lock().pop_front()?;
        // Only the pool can hand out this handle now (purge removed it from the index), so a
        // count of one stays one.
        let opened = if Arc::strong_count(&r.file) == 1 {
            std::fs::OpenOptions::new().read(true).write(true).open(&r.path).and_then(|f| {
                let len = f.metadata()?.len();
                Ok((f, len))
            })
        } else {
            Err(std::io::Error::other("a reader still holds it"))
        };
        match opened {
            Ok((f, len)) => return Some((r.path, f, len)),
            Err(e) => {
                tracing::debug!(path = %r.path.display(), error = %e, "WAL file not recycled");
                if let Err(e) = std::fs::remove_file(&r.path) {
                    tracing::warn!(path = %r.path.display(), error = %e, "could not delete a WAL recycle file");
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct TicketState {
    result: Mutex<Option<Result<()>>>,
    cv: Condvar,
}

/// A handle on one submission; `wait` blocks until it is durable (or rejected).
#[derive(Debug)]
pub struct Ticket {
    state: Arc<TicketState>,
}

impl Ticket {
    /// Blocks until the submission is durable and visible through the index, or failed.
    pub fn wait(self) -> Result<()> {
        let mut guard = self.state.result.lock();
        loop {
            if let Some(r) = guard.take() {
                return r;
            }
            self.state.cv.wait(&mut guard);
        }
    }

    /// True once `wait` would not block.
    pub fn is_done(&self) -> bool {
        self.state.result.lock().is_some()
    }
}

/// Callback run on the writer thread when a submission completes; it must not block.
pub type Callback = Box<dyn FnOnce(Result<()>) + Send + 'static>;

enum Notify {
    Ticket(Arc<TicketState>),
    Callback(Callback),
}

/// How a submission tells its submitter it is done. Dropping it uncompleted (the writer
/// stopped or panicked) completes it with `Error::Stopped`, so no waiter hangs.
pub(crate) struct Completion(Option<Notify>);

impl Completion {
    pub fn ticket() -> (Completion, Ticket) {
        let state = Arc::new(TicketState::default());
        (Completion(Some(Notify::Ticket(Arc::clone(&state)))), Ticket { state })
    }

    pub fn callback(cb: Callback) -> Completion {
        Completion(Some(Notify::Callback(cb)))
    }

    pub fn complete(mut self, r: Result<()>) {
        match self.0.take() {
            Some(Notify::Ticket(state)) => {
                *state.result.lock() = Some(r);
                state.cv.notify_all();
            }
            Some(Notify::Callback(cb)) => cb(r),
            None => {}
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if self.0.is_some() {
            Completion(self.0.take()).complete(Err(Error::Stopped));
        }
    }
}

pub(crate) struct Submission {
    pub batch: WriteBatch,
    pub done: Completion,
    /// Whether the submission needs an fdatasync before it completes. Unsynced ones are
    /// written in queue order and become durable with the next synced frame.
    pub sync: bool,
}

/// Runs `sync` (an fdatasync of a segment), telling the WAL's fsync observer how long it took,
/// failed or not.
fn observed_sync(shared: &Shared, sync: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    let synced = sync();
    if let Some(observer) = &shared.fsync_observer {
        observer.observe(started.elapsed());
    }
    synced
}

/// A new active segment: its file, the length of its header and checkpoint frame, and how
/// far its blocks are already written (a recycled file's whole length).
pub(crate) struct NewSegment {
    pub file: File,
    pub len: u64,
    pub written_len: u64,
}

/// Writes the checkpoint frame at the head of new segment `seq`, makes it durable and
/// registers the segment in the index. The file is a recycled one when there is one.
pub(crate) fn start_segment(shared: &Shared, seq: u64) -> std::io::Result<NewSegment> {
    let records = shared.index.read().checkpoint_records();
    let payload = encode_batch(&records);
    let mut frame = encode_frame_header(seq, &payload).to_vec();
    frame.extend_from_slice(&payload);
    let len = (HEADER_BYTES + frame.len()) as u64;
    let (file, recycled_from, written_len) = match take_recycled(shared) {
        Some((recycle_path, file, old_len)) => {
            file.write_all_at(&encode_header(seq), 0)?;
            (file, Some(recycle_path), old_len.max(len))
        }
        None => (create_segment(&shared.dir, seq, shared.preallocate_bytes)?, None, len),
    };
    file.write_all_at(&frame, HEADER_BYTES as u64)?;
    // Durability: the checkpoint must be on disk before purge may delete the segments whose
    // HardState/ConfState/compact records it supersedes, and a recycled file's new header
    // before it takes the segment's name, so a segment never has another's header.
    observed_sync(shared, || file.sync_data())?;
    if let Some(recycle_path) = recycled_from {
        std::fs::rename(&recycle_path, segment_path(&shared.dir, seq))?;
        sync_dir(&shared.dir)?;
        shared.counters.segments_recycled.fetch_add(1, Ordering::Relaxed);
    }
    shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
    shared.counters.frames_written.fetch_add(1, Ordering::Relaxed);
    shared.counters.bytes_written.fetch_add((HEADER_BYTES + frame.len()) as u64, Ordering::Relaxed);
    let checkpoint: HashMap<GroupId, u64> = records
        .iter()
        .filter_map(|r| match r {
            Record::Checkpoint { group, checkpoint } => Some((*group, checkpoint.truncated_index.0)),
            _ => None,
        })
        .collect();
    shared.index.write().segments.insert(
        seq,
        SegmentInfo {
            path: segment_path(&shared.dir, seq),
            file: Arc::new(file.try_clone()?),
            max_index: HashMap::new(),
            checkpoint: Some(checkpoint),
        },
    );
    Ok(NewSegment { file, len, written_len })
}

/// Deletes the segments that no longer hold anything needed. Called only after the
/// newest segment's checkpoint is durable (see `start_segment`): it is what makes them
/// unnecessary.
pub(crate) fn purge(shared: &Shared) {
    let victims: Vec<(u64, SegmentInfo)> = {
        let mut index = shared.index.write();
        let seqs = index.purgeable_prefix();
        seqs.into_iter().map(|s| (s, index.segments.remove(&s).expect("invariant: purgeable segment exists"))).collect()
    };
    if victims.is_empty() {
        return;
    }
    // Oldest first, stopping at the first failure, so the survivors stay a contiguous
    // run of segments (a gap in the middle is corruption at recovery). A rename to a
    // recycle name takes the segment's name away exactly as a deletion does.
    for (seq, info) in victims {
        let path = &info.path;
        let keep = shared.recycled.lock().len() < shared.recycle_max;
        let gone = if keep {
            let to = shared.dir.join(recycle_file_name(seq));
            std::fs::rename(path, &to)
                .map(|()| shared.recycled.lock().push_back(Recycled { path: to, file: info.file }))
        } else {
            std::fs::remove_file(path)
        };
        if let Err(e) = gone {
            tracing::warn!(seq, path = %path.display(), error = %e, "could not remove purged WAL segment");
            break;
        }
        shared.counters.segments_purged.fetch_add(1, Ordering::Relaxed);
    }
    if let Err(e) = sync_dir(&shared.dir) {
        tracing::warn!(error = %e, "could not fsync WAL directory after purge");
    }
}

/// The active segment and how frames are written to it.
pub(crate) struct Segment {
    pub active: File,
    pub active_seq: u64,
    pub active_len: u64,
    pub segment_bytes_max: u64,
    pub batch_bytes_max: usize,
    /// Whether the active segment holds written frames not yet fdatasync'ed.
    pub unsynced: bool,
    /// Set when a write, fdatasync, trim or rotation failed (just before the panic that
    /// reports it). From then on nothing is written or synced again, by any path (a later
    /// submission, the close on drop while a panic unwinds): after a failed fsync the page
    /// cache may have dropped the unwritten pages and marked them clean, so a retry could
    /// "succeed" without the data ever reaching the disk. Recovery works from what is on
    /// disk.
    pub failed: bool,
    /// Injected failures ([`crate::WalConfig::faults`]); none in production.
    pub faults: Option<Arc<dyn WalFaults>>,
    /// The active segment's length once the zero-ahead thread's zeros are counted (at least
    /// its header; see `zero_ahead.rs`).
    pub zeroed_len: u64,
    /// [`crate::WalConfig::segment_zero_ahead_bytes`].
    pub zero_ahead_bytes: u64,
    /// The zero-ahead thread, woken when the frames get within half its distance.
    pub zero_ahead: Option<std::thread::Thread>,
}

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub rx: crate::mailbox::Receiver<Submission>,
    pub segment: Arc<Mutex<Segment>>,
    /// A submission received but left for the next frame because it would overflow this one.
    pub carry: Option<Submission>,
}

impl Writer {
    pub fn run(mut self) {
        loop {
            let first = match self.carry.take() {
                Some(s) => s,
                None => match self.rx.recv() {
                    Ok(s) => s,
                    Err(_) => return,
                },
            };
            let mut seg = self.segment.lock();
            let mut bytes = first.batch.encoded_len();
            let mut subs = vec![first];
            while subs.len() < SUBMISSIONS_PER_FRAME_MAX {
                match self.rx.try_recv() {
                    Ok(s) => {
                        if bytes + s.batch.encoded_len() > seg.batch_bytes_max {
                            self.carry = Some(s);
                            break;
                        }
                        bytes += s.batch.encoded_len();
                        subs.push(s);
                    }
                    Err(_) => break,
                }
            }
            let n = subs.len();
            seg.commit(&self.shared, subs);
            // Ordering: lowered only once these are in the log, still under the segment lock,
            // so an inline writer that sees zero comes after every queued submission.
            self.shared.queued.fetch_sub(n, Ordering::SeqCst);
            seg.rotate_if_full(&self.shared);
        }
    }
}

impl Segment {
    /// Rejects submissions that would break a group's log, in queue order, as if the
    /// earlier accepted ones were already applied.
    fn validate(shared: &Shared, subs: Vec<Submission>) -> Vec<Submission> {
        let index = shared.index.read();
        let mut projected: HashMap<GroupId, (u64, u64)> = HashMap::new();
        let mut accepted = Vec::with_capacity(subs.len());
        for sub in subs {
            let mut trial: HashMap<GroupId, (u64, u64)> = HashMap::new();
            let mut bad = None;
            for (record, _) in &sub.batch.records {
                let group = record.group();
                let (t, l) =
                    trial.get(&group).or_else(|| projected.get(&group)).copied().unwrap_or_else(|| index.bounds(group));
                match project(t, l, record) {
                    Ok(b) => {
                        trial.insert(group, b);
                    }
                    Err(reason) => {
                        bad = Some(Error::InvalidAppend { group, reason });
                        break;
                    }
                }
            }
            match bad {
                Some(e) => sub.done.complete(Err(e)),
                None => {
                    projected.extend(trial);
                    accepted.push(sub);
                }
            }
        }
        accepted
    }

    /// Writes `subs` as one frame, syncs it if any asks for it, indexes it and completes
    /// every submission.
    pub fn commit(&mut self, shared: &Shared, subs: Vec<Submission>) {
        if self.failed {
            // Never acknowledged: the log stopped at the failure.
            for s in subs {
                s.done.complete(Err(Error::Stopped));
            }
            return;
        }
        let subs = Self::validate(shared, subs);
        if subs.is_empty() {
            return;
        }
        let payload_len: usize = subs.iter().map(|s| s.batch.encoded_len()).sum();
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload_len);
        frame.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
        let mut bases = Vec::with_capacity(subs.len());
        for s in &subs {
            bases.push(self.active_len + frame.len() as u64);
            frame.extend_from_slice(&s.batch.buf);
        }
        let header = encode_frame_header(self.active_seq, &frame[FRAME_HEADER_BYTES..]);
        frame[..FRAME_HEADER_BYTES].copy_from_slice(&header);
        // A failed or partial write would leave a hole before later frames, which recovery
        // would treat as the end of the log: stop the process instead.
        if let Err(e) = self.write_frame(&frame) {
            self.failed = true;
            panic!(
                "WAL write to segment {} failed: {e}; refusing to continue with an unknown log tail",
                self.active_seq
            );
        }
        self.active_len += frame.len() as u64;
        self.wake_zero_ahead();
        // Durability: ONE fdatasync for every submission in the frame, before any of them
        // is acknowledged or becomes visible to readers through the index. A frame of only
        // unsynced submissions skips it; the next synced frame covers it (fdatasync flushes
        // every earlier write of the file).
        if subs.iter().any(|s| s.sync) {
            self.sync_active(shared);
        } else {
            self.unsynced = true;
        }
        let c = &shared.counters;
        c.frames_written.fetch_add(1, Ordering::Relaxed);
        c.bytes_written.fetch_add(frame.len() as u64, Ordering::Relaxed);
        let mut entries = 0;
        {
            let mut index = shared.index.write();
            for (s, base) in subs.iter().zip(&bases) {
                for (record, spans) in &s.batch.records {
                    index
                        .apply(self.active_seq, *base, record, spans, false)
                        .unwrap_or_else(|e| panic!("invariant: validated record applies: {e}"));
                }
                entries += s.batch.entry_count;
            }
        }
        c.entries_appended.fetch_add(entries, Ordering::Relaxed);
        c.submissions.fetch_add(subs.len() as u64, Ordering::Relaxed);
        for s in subs {
            s.done.complete(Ok(()));
        }
    }

    /// Wakes the zero-ahead thread if the frames got within half its distance of its zeros.
    fn wake_zero_ahead(&self) {
        if let Some(t) = &self.zero_ahead {
            if self.zeroed_len < self.zeros_wanted_until(self.zero_ahead_bytes / 2) {
                t.unpark();
            }
        }
    }

    /// Where zeros should reach to be `distance` ahead of the frames: never past the size at
    /// which the segment rotates.
    pub fn zeros_wanted_until(&self, distance: u64) -> u64 {
        (self.active_len + distance).min(self.segment_bytes_max)
    }

    /// Writes `frame` at the end of the active segment (or, with an injected short write,
    /// a prefix of it, then fails).
    fn write_frame(&self, frame: &[u8]) -> std::io::Result<()> {
        if let Some(faults) = &self.faults {
            if let Some(n) = faults.short_write(self.active_seq, self.active_len, frame.len()) {
                assert!(n < frame.len(), "an injected short write writes less than the frame");
                self.active.write_all_at(&frame[..n], self.active_len)?;
                return Err(std::io::Error::other("injected short write"));
            }
        }
        self.active.write_all_at(frame, self.active_len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        if let Some(faults) = &self.faults {
            if faults.sync_fails(self.active_seq, self.active_len) {
                return Err(std::io::Error::other("injected fdatasync failure"));
            }
        }
        self.active.sync_data()
    }

    fn sync_active(&mut self, shared: &Shared) {
        if let Err(e) = observed_sync(shared, || self.sync_data()) {
            // Never retried (see `failed`).
            self.failed = true;
            panic!(
                "WAL fdatasync of segment {} failed: {e}; the page cache state is unknown, stopping",
                self.active_seq
            );
        }
        shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.unsynced = false;
    }

    /// Cuts the active segment's preallocated tail off after its last frame. Called when no
    /// more frames will be written to it: at rotation and when the WAL closes.
    pub fn trim_active(&mut self) {
        if self.failed {
            // A failed log is left as it is on disk; recovery cuts what is not whole.
            return;
        }
        if let Err(e) = trim_segment(&self.active, self.active_len) {
            self.failed = true;
            panic!("WAL trim of segment {} to {} bytes failed: {e}", self.active_seq, self.active_len);
        }
    }

    /// Starts a new segment once the active one is full.
    pub fn rotate_if_full(&mut self, shared: &Shared) {
        if self.failed || self.active_len < self.segment_bytes_max {
            return;
        }
        // Recovery tolerates a torn tail only in the last segment: an older one must be whole,
        // so unsynced frames are made durable before a newer segment exists.
        if self.unsynced {
            self.sync_active(shared);
        }
        // Ordering: the preallocated tail is cut off (durably) before the next segment
        // exists, so only the last segment may end in zeros.
        self.trim_active();
        let seq = self.active_seq + 1;
        let new = start_segment(shared, seq).unwrap_or_else(|e| {
            self.failed = true;
            panic!("WAL rotation to segment {seq} failed: {e}")
        });
        self.active = new.file;
        self.active_seq = seq;
        self.active_len = new.len;
        // A recycled file's blocks are written already: nothing to zero ahead in them.
        self.zeroed_len = new.written_len;
        self.wake_zero_ahead();
        purge(shared);
    }
}
