//! # raft-log: the replicated log of every Raft group on a node
//!
//! This crate answers one question for the rest of Plinth: "here are bytes for group G;
//! hand them back in the same order on every replica once a quorum has them durably".
//! It holds two parts:
//!
//! - a **write-ahead log** ([`Wal`]) shared by all groups: segmented, append-only, crc
//!   checked, with group commit (one `fdatasync` for the appends of every group that
//!   arrived while the previous sync ran), an in-memory index per group, and a
//!   [`raft::Storage`] view per group ([`GroupStorage`]);
//! - a **driver** ([`Driver`], [`DriverHandle`]) that owns one `raft::RawNode` per group
//!   on one thread, runs raft-rs's Ready loop in the required order, persists every
//!   group's Ready of one iteration with ONE WAL batch (handed to the writer without waiting
//!   when more work is queued: the next pass is built while it syncs), and hands committed
//!   entries to a [`StateMachine`]. Linearizable reads of a group that arrive while none of its
//!   read-index requests is being issued share ONE request (one context, one round of
//!   heartbeats). [`ManualDriver`] is the same loop without its thread, stepped by the
//!   caller (a deterministic simulation owns ticks and message delivery). Groups come and
//!   go at run time: `create_group_with` bootstraps one durably, `remove_group` ends one
//!   durably (an empty configuration, so recovery skips it, and a compact point past its
//!   last entry, so its entries no longer hold segments back).
//!
//! ## Guarantees
//!
//! - A batch whose ticket completed `Ok` survives a crash (it was written and
//!   fdatasync'ed), unless the bytes are later damaged on disk.
//! - Recovery returns, for every group, the state produced by a prefix of the completed
//!   batches (a torn tail of the last segment, a bad frame with no valid frame anywhere
//!   after it, is cut off with a warning), or `Error::Corruption { file, offset, .. }` when
//!   damage is found where no crash can tear: a header, any frame of an older segment, or a
//!   bad frame of the last segment followed by a valid one (acknowledged data was damaged;
//!   the WAL refuses to open rather than drop it). It never panics on bad data and never
//!   returns an entry whose crc, index or term does not match.
//! - An append starting at index `i` replaces the group's entries `>= i` (Raft's
//!   truncate-on-conflict); a batch that would leave a gap is rejected, not written.
//! - Memory is bounded: the index holds 32 bytes per live entry (no payloads) plus a
//!   per-group cache of the most recent entries bounded by count and bytes; compacted
//!   entries leave the index immediately. Every queue has a named or configured bound.
//!
//! ## File format
//!
//! ```text
//!  dir/
//!   LOCK                      flock'ed while open
//!   0000000000000007.wal      older segment: checkpoint frame, then frames
//!   0000000000000008.wal      active segment (the only one appended to)
//!
//!  segment := header frame*
//!  header  := "PLNTHWAL" | version:u32 | seq:u64 | crc32(previous 20 bytes):u32
//!  frame   := len:u32 | crc32(seq | len | payload):u32 | payload      (one group commit)
//!  payload := record*
//!  record  := kind:u8 | group:u64 | body_len:u32 | body
//!             kinds: Entries, HardState, ConfState, SnapshotMeta, Compact,
//!                    CheckpointBegin, Checkpoint
//!  Entries body := count:u32 | (len:u32 | crc32:u32 | protobuf Entry)*
//!
//!  +--------+------------------+---------------------+---------------------+----
//!  | header | frame:checkpoint | frame: g1 entries,  | frame: g7 HardState | ...
//!  |        | of every group   | g2 entries+HS, ...  | g1 Compact          |
//!  +--------+------------------+---------------------+---------------------+----
//! ```
//!
//! The crc of a frame is mixed with the segment's sequence number, so a stale frame from
//! another file never validates. Each entry has its own crc so a single entry read back
//! with `pread` is still checked. A background thread keeps the next
//! `segment_zero_ahead_bytes` (default 4 MiB) of the active segment written with zeros and
//! synced (`zero_ahead.rs`), so an append overwrites blocks already on disk and its
//! fdatasync journals no size or extent change: on ext4 it takes half as long. (With
//! `segment_preallocate`, off by default, a segment is instead created at its full size with
//! `fallocate`; ext4 still journals the conversion of each unwritten extent, and the WAL
//! bench measured no gain.) The zeros after the last frame are the end of the log, and a
//! segment is trimmed to its last frame when it is rotated or the WAL closes (recovery cuts
//! them off the last segment after a crash). Purged segments are recycled rather than
//! deleted (`segment_recycle_max`, 2; `writer.rs`): a recycled file becomes the next segment
//! once its new header and checkpoint are synced, needs no zeros, and its old frames fail the
//! crc seeded with the new sequence number, so recovery cuts them like a torn tail.
//! A new segment is started when the active one grows past
//! `segment_bytes_max`, and on every open; it begins with a checkpoint of every group's
//! HardState, ConfState, snapshot metadata and compact point (with its term), fsynced
//! together with the directory before anything else is written. Older segments therefore
//! only matter for their entries: once every entry in a prefix of segments is at or below
//! its group's compact point recorded in the newest segment's checkpoint, the prefix is
//! deleted (oldest first, so a crash mid-purge leaves a contiguous run). Recovery from the
//! remaining run may meet a group whose entries resume after a gap; it accepts the gap only
//! if a later durable compact point covers it, and reports `Corruption` otherwise.
//!
//! ## Threads
//!
//! ```text
//!  appenders ──submit(WriteBatch)──► bounded queue ──► writer thread
//!     ▲                                                  │ drain ≤ batch_bytes_max
//!     │                                                  │ write one frame, ONE fdatasync
//!     └──── Ticket::wait() / callback ◄─ index update ◄──┘ rotate + purge when full
//!
//!  Wal::write with nothing queued and the segment lock free: the same frame write,
//!  fdatasync and index update on the caller's thread (no hand-off for a lone write).
//!
//!  DriverHandle ──► bounded inbox ──► driver thread (all RawNodes, ticks, Ready loop)
//!   step() ──► peer inbox (bounded) ──┘  drained first, and every 64 inbox messages
//!                                        │ ticks and Ready checks: awake groups only
//!                                        │ one WriteBatch per loop iteration
//!                                        ├─► Wal (a lone write waits for its fsync; a busy
//!                                        │   pass submits and goes on, see `ready.rs`)
//!                                        ├─► Transport::send (must not block)
//!                                        └─► apply queue (bounded) ──► apply worker thread
//!                                             per-group FIFOs, round robin ──► StateMachine
//! ```
//!
//! The three bounded queues (the writer's, the driver's inbox, the apply queue) are
//! `mailbox.rs` queues, not `std::sync::mpsc`: a producer wakes the parked consumer only after
//! letting go of the queue's lock, so on a member whose threads share a CPU the woken thread
//! does not preempt the producer only to block on the lock it still holds (two context
//! switches per hand-off that std's channel cost on every write).
//!
//! The apply worker (`apply.rs`) is why a slow RocksDB write never silences a leader: the
//! driver hands each group's committed entries, conf-change notices, snapshot installs and
//! leader changes to it in log order once their Ready is durable, and goes on ticking and
//! persisting. The worker gives every group with work at most `APPLY_BUDGET_ENTRIES`
//! entries per pass (one `apply` call for consecutive entries; a larger Ready is split in
//! order), so one tenant's backlog delays another's apply by one budget, not by the backlog. A [`ManualDriver`] applies
//! inline, so simulations stay deterministic.
//!
//! Readers (`GroupStorage`, `Wal::entries`) take a read lock on the index, which only the
//! holder of the segment lock (the writer thread or an inline `write`) changes, after the
//! frame is durable; the one exception is the driver emptying a sleeping group's entry cache
//! (`Wal::drop_entry_cache`), which an empty cache's invariant allows at any point.
//!
//! ## What the driver does besides appending
//!
//! - **Membership.** Groups start from [`Bootstrap`]: voters, etcd's `StartNode` log of one
//!   committed `AddNode` per member, or empty (joining; the leader's log or snapshot brings
//!   the configuration). [`DriverHandle::propose_conf_change`] proposes a change. A committed
//!   conf change is applied to the RawNode only after the normal entries before it, its
//!   ConfState is made durable, [`StateMachine::on_conf_change`] hears of it, and the state
//!   machine then receives an empty entry at its index so its applied index passes it.
//! - **Snapshots.** When Raft needs entries this node has compacted, [`GroupStorage`] asks
//!   the [`SnapshotSource`] (on the driver thread, once the apply worker has run everything
//!   dispatched to it) to pin the state machine
//!   at its applied index; the snapshot's metadata pairs that index with its term and the
//!   ConfState in force, and its data is the source's token (the transport streams the state
//!   beside the message). On a follower the transport installs the data first and then steps
//!   the message; the snapshot's metadata is persisted with the Ready, entries up to it are
//!   never handed over again, and [`StateMachine::on_snapshot`] fires, also when raft-rs
//!   fast-forwards past the snapshot instead of restoring it. The leader learns the outcome
//!   through [`DriverHandle::report_snapshot`]. [`DriverHandle::compact_log`] lets the WAL
//!   drop entries at or below what the state machine made durable (never past this node's
//!   applied index).
//! - **Linearizable reads.** [`DriverHandle::read_index`] reads that arrive while no
//!   read-index request of their group is being issued join one batch with ONE context; the
//!   batch is issued when the node can ask (a leader that committed in its term, a follower
//!   that knows a leader), re-issued every `READ_INDEX_RETRY_TICKS` ticks and at once after a
//!   leader change, and every read in it gets the same index, or `Timeout` at its deadline.
//! - **Leader transfer.** [`DriverHandle::transfer_leader`] starts raft-rs's transfer on the
//!   leader (the target is caught up, then told to campaign at once) and answers `Ok` only
//!   once this node sees the target lead; `NotLeader`, `BadLeaderTransferee` (not a voter)
//!   or `Timeout` otherwise. raft-rs gives up a transfer after an election timeout and the
//!   driver does not ask again (as etcd), so a slow target ends in `Timeout`.
//! - **Hibernation** (`hibernate.rs`, whose essay holds the safety argument). Only awake
//!   groups tick and are asked for a Ready (plus those touched since the last pass), so a
//!   node's idle cost is O(awake groups). A leader idle for
//!   [`DriverConfig::hibernate_after_ticks`] with nothing in flight (every member caught up
//!   and told the commit index, nothing unapplied, no pending conf change, read or transfer)
//!   sends each member a notice, a heartbeat whose context is a reserved marker, and stops
//!   ticking; a follower that steps its leader's notice in its term stops too. Any proposal,
//!   read, conf change, campaign, transfer, snapshot report, [`DriverHandle::touch`] or peer
//!   message other than a notice or heartbeat response wakes the group on that node. Reads
//!   stay linearizable through ReadIndex's quorum round (a leader deposed while asleep cannot
//!   complete one), a woken leader restarts its check-quorum window, and a sleeping follower
//!   refuses (pre-)votes while its frozen timer says its leader is in lease. A follower
//!   that has not heard its leader since it slept holds proposals (bounded, each dropped a
//!   second after its own `read_index_timeout`) and asks the leader to show itself with a read-index request; the
//!   leader's first message releases them to it, or this node's election to itself. A
//!   sleeping group's WAL entry cache and inflight buffers are freed.
//!   [`GroupStatus::hibernating`], [`DriverHandle::awake_groups`].
//!
//! ## CAVEATS
//!
//! - A write or fsync failure panics (the page-cache state is then unknown), and the WAL
//!   never writes or syncs again after it, not even while the panic unwinds through its
//!   close: a retried fsync may "succeed" on pages the kernel already dropped. The `plinth`
//!   binary turns every panic into an abort, so the process stops at once; a bad delete
//!   during purge is only logged. Tests inject short writes and fdatasync failures through
//!   [`WalConfig::faults`] ([`WalFaults`]); the header and checkpoint frame written when a
//!   segment is created are not covered.
//! - Damage to the *last* acknowledged frame of the last segment cannot be told from a torn
//!   write and is cut off. Conversely, a machine crash that loses a page in the middle of
//!   unsynced frames while a later page survives is reported as `Corruption`. The search for
//!   a valid frame after a bad one tries every offset to the end of the segment; a crafted
//!   entry whose bytes form a valid frame of the same segment inside a torn frame would also
//!   make recovery refuse to open.
//! - Segments are purged only at rotation, so a compacted log with no further writes keeps
//!   its files until the next rotation or reopen.
//! - Whole segments are read into memory during recovery (bounded by `segment_bytes_max`
//!   plus one frame).
//! - Without a `SnapshotSource` ([`Driver::start`], or a [`ManualDriver`] built without
//!   one) a leader can only hand back snapshot metadata it received earlier; a follower that
//!   needs compacted entries otherwise waits (`SnapshotTemporarilyUnavailable`).
//! - Followers hand proposals and read-index requests to raft-rs, which forwards them to
//!   the leader it knows (`Error::NoLeader` when it knows none). A forwarded proposal
//!   that is lost is not reported: the caller's wait times out. A dropped read-index
//!   request costs only its retry delay.
//! - A group hibernates only with every member caught up: with a member down or lagging,
//!   its leader stays awake (and heartbeats) until the member is back and caught up. A
//!   removed group (`remove_group`) stops ticking at once.
//! - When a sleeping leader died, a follower woken by a request elects a new leader after
//!   about two election timeouts (the other followers refuse votes while they believe their
//!   leader in lease), not one; a proposal on a follower is held meanwhile and reaches the
//!   new leader, unless the election takes longer than `read_index_timeout`. A leader
//!   deposed while asleep believes it leads (its `GroupStatus` says so) until something
//!   wakes it; only ReadIndex, never that belief, serves reads.
//! - With pre-vote off, a follower that missed its notice campaigns in a new term and
//!   deposes the leader (as any partitioned follower would without pre-vote).
//! - Conf changes are single changes (`ConfChange`); a `ConfChangeV2` entry from elsewhere
//!   is applied, but the state machine hears only of its first change.
//! - [`ManualDriver`] does not expose leader transfers; its read-index deadlines run on its
//!   own tick-driven clock.
//! - The entry cache is per group, so its total size is `awake groups × cache limits` (a
//!   sleeping group's cache is dropped).

mod apply;
mod batch;
mod config;
mod driver;
mod driver_config;
mod error;
mod fault;
mod hibernate;
mod index;
mod mailbox;
mod manual;
mod ready;
mod record;
mod segment;
mod storage;
mod types;
mod wal;
mod writer;
mod zero_ahead;

/// Waits for one of the crate's threads to end; whether it ended without a panic (a panic is
/// logged, naming `what`).
pub(crate) fn join_thread(handle: std::thread::JoinHandle<()>, what: &str) -> bool {
    let ended = handle.join().is_ok();
    if !ended {
        tracing::error!("{what} panicked");
    }
    ended
}

pub use batch::WriteBatch;
pub use config::{FsyncObserver, WalConfig};
pub use driver::{
    Bootstrap, CommittedEntry, Driver, DriverHandle, GroupStatus, ReadIndexCallback, SnapshotSource, StateMachine,
    TransferLeaderCallback, Transport,
};
pub use driver_config::DriverConfig;
pub use error::{Error, Result};
pub use fault::WalFaults;
pub use index::GroupState;
pub use manual::ManualDriver;
/// The raft-rs crate this crate is built on, so users name the same `Message` and `Entry` types.
pub use raft;
pub use record::{decode_batch, decode_entry, encode_batch, Checkpoint, DecodeError, Record};
pub use segment::{scan_frames, segment_file_name, ScanResult, ScannedFrame, FORMAT_VERSION, HEADER_BYTES, MAGIC};
pub use storage::GroupStorage;
pub use types::{GroupId, LogIndex, NodeId, Term};
pub use wal::Wal;
pub use writer::{Ticket, WalStats};
