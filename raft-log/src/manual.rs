//! `ManualDriver`: the driver's loop without its thread, stepped by the caller.
//!
//! A deterministic simulation must own time and message delivery: it decides when each
//! node ticks, when a message arrives, and when a node handles its Readys. `ManualDriver`
//! holds the same state as the driver thread (built by the same `Loop::new`), takes the
//! same inbox messages through the same handler, and runs the same Ready code
//! (`ready.rs`), so the order of persistence, sends and applies under test is the real
//! one. Only the thread, the inbox and the wall-clock ticks are gone.
//!
//! The WAL keeps its writer thread: `Wal::write` blocks until the batch is durable, so
//! every `process` call returns with the same state for the same inputs.
//!
//! Time: the driver keeps a clock of its own that only `tick` moves (one `tick_interval` per
//! tick, from the instant the driver was built), and read-index deadlines and retries are
//! measured against it, so a read answers or times out after the same ticks on every run.
//!
//! ## CAVEATS
//!
//! - Leader transfers are not exposed.
//! - For a run that is the same on every execution, set
//!   `DriverConfig::election_ticks_max` to `election_ticks + 1` (raft-rs draws election
//!   timeouts from an unseeded generator otherwise).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use raft::eraftpb::{ConfChange, Message};

use crate::driver::{Bootstrap, GroupStatus, Loop, Msg, ReadIndexCallback, SnapshotSource, StateMachine, Transport};
use crate::driver_config::DriverConfig;
use crate::error::{Error, Result};
use crate::types::{GroupId, LogIndex, NodeId};
use crate::wal::Wal;

/// Most Ready passes one `process` call runs. Each pass handles every ready group, and a
/// pass only makes new Readys through applies and advances, so a handful suffice; running
/// into the bound means a group never settles, which is a bug.
const PROCESS_PASSES_MAX: usize = 64;

/// A driver stepped by its caller on the caller's thread: no thread, no inbox, no clock.
pub struct ManualDriver {
    lp: Loop,
    /// Keeps the unused inbox of `Loop` connected.
    _inbox: crate::mailbox::Sender<Msg>,
}

impl std::fmt::Debug for ManualDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualDriver").field("node_id", &self.lp.cfg.node_id).finish_non_exhaustive()
    }
}

impl ManualDriver {
    /// Builds the driver state as [`crate::Driver::start`] does: every group with a
    /// ConfState in the WAL is re-created, with Raft's applied index taken from
    /// `sm.applied_index`, so later committed entries are replayed by `process`.
    pub fn new(
        cfg: DriverConfig,
        wal: Arc<Wal>,
        sm: Box<dyn StateMachine>,
        transport: Arc<dyn Transport>,
    ) -> Result<ManualDriver> {
        ManualDriver::with_snapshots(cfg, wal, sm, transport, None)
    }

    /// Like [`ManualDriver::new`], with a source of state-machine snapshots, as
    /// [`crate::Driver::start_with_snapshots`]: a leader then sends a snapshot to a member
    /// that needs entries it has purged.
    pub fn with_snapshots(
        cfg: DriverConfig,
        wal: Arc<Wal>,
        sm: Box<dyn StateMachine>,
        transport: Arc<dyn Transport>,
        snapshots: Option<Arc<dyn SnapshotSource>>,
    ) -> Result<ManualDriver> {
        cfg.validate()?;
        let (inbox, rx) = crate::mailbox::channel(1);
        let mut lp = Loop::new(cfg, wal, sm, transport, snapshots, rx, false)?;
        lp.clock = Some(Instant::now());
        Ok(ManualDriver { lp, _inbox: inbox })
    }

    /// Creates `group` with `voters` on first creation (the ConfState is made durable);
    /// idempotent when the group exists.
    pub fn create_group(&mut self, group: GroupId, voters: &[NodeId]) -> Result<()> {
        self.create_group_with(group, &Bootstrap::Voters(voters.to_vec()))
    }

    /// Creates `group` as `bootstrap` says on first creation; idempotent when it exists.
    pub fn create_group_with(&mut self, group: GroupId, bootstrap: &Bootstrap) -> Result<()> {
        self.lp.create_peer(group, bootstrap)
    }

    /// Proposes a membership change of `group`, as `DriverHandle::propose_conf_change`
    /// (`NoLeader` when this node knows no leader; an accepted change may still be lost).
    pub fn propose_conf_change(&mut self, group: GroupId, change: ConfChange) -> Result<()> {
        self.leader_check(group)?;
        self.lp.handle(Msg::ProposeConfChange { group, change });
        Ok(())
    }

    /// Tells the leader of `group` whether the snapshot it sent to `to` was installed.
    pub fn report_snapshot(&mut self, group: GroupId, to: NodeId, ok: bool) {
        self.lp.handle(Msg::ReportSnapshot { group, to, ok });
    }

    /// The state machine made `durable_applied` durable: the WAL may drop `group`'s
    /// entries at or below it (never past what this node applied).
    /// Returns once the WAL has recorded it, so the run does not depend on the writer thread.
    pub fn compact_log(&mut self, group: GroupId, durable_applied: LogIndex) {
        if let Some(ticket) = self.lp.compact_log(group, durable_applied) {
            if let Err(e) = ticket.wait() {
                tracing::warn!(%group, error = %e, "compaction not recorded");
            }
        }
    }

    /// Asks for a linearizable read point of `group`, as `DriverHandle::read_index`: `done`
    /// runs during a later `process` (or at once when the request cannot be taken), with
    /// `Timeout` once `read_index_timeout` of this driver's ticks has passed unanswered.
    pub fn read_index(&mut self, group: GroupId, done: ReadIndexCallback) {
        match self.leader_check(group) {
            Err(e) => done(Err(e)),
            Ok(()) => {
                self.lp.handle(Msg::ReadIndex { group, done });
            }
        }
    }

    /// Proposes `data` to `group` (forwarded to the leader on a follower). `NoLeader` when
    /// this node knows no leader. As with `DriverHandle::propose`, an accepted proposal may
    /// still be lost.
    pub fn propose(&mut self, group: GroupId, data: Bytes) -> Result<()> {
        self.leader_check(group)?;
        self.lp.handle(Msg::Propose { group, data });
        Ok(())
    }

    /// What `DriverHandle` checks before handing a request to Raft: the group exists and this
    /// node knows its leader.
    fn leader_check(&self, group: GroupId) -> Result<()> {
        match self.status(group) {
            None => Err(Error::GroupNotFound(group)),
            Some(s) if s.leader.0 == 0 => Err(Error::NoLeader),
            Some(_) => Ok(()),
        }
    }

    /// Hands a Raft message of `group` to its RawNode (ignored for an unknown group).
    pub fn step(&mut self, group: GroupId, msg: Message) {
        self.lp.handle(Msg::Step { group, msg });
    }

    /// One Raft tick for every awake group, as the driver thread's tick (an idle leader may
    /// put its group to sleep instead); this driver's clock moves one `tick_interval`.
    pub fn tick(&mut self) {
        self.lp.clock = Some(self.lp.now() + self.lp.cfg.tick_interval);
        self.lp.tick_awake();
    }

    /// How many groups are awake (ticking) on this node.
    pub fn awake_groups(&self) -> usize {
        self.lp.awake.len()
    }

    /// Makes this node campaign for leadership of `group` (nothing happens when it is not a
    /// voter of the group's configuration).
    pub fn campaign(&mut self, group: GroupId) {
        self.lp.handle(Msg::Campaign(group));
    }

    /// The transport lost `node` (raft-rs's `report_unreachable` in every led group).
    pub fn report_unreachable(&mut self, node: NodeId) {
        self.lp.handle(Msg::Unreachable(node));
    }

    /// Issues the read-index requests that are due and fails those past their deadline (as
    /// the driver thread does before each Ready pass), then handles Readys until no group
    /// has one: persist, send, apply, advance.
    pub fn process(&mut self) {
        let now = self.lp.now();
        self.lp.service_reads(now);
        self.lp.service_held(now);
        for _ in 0..PROCESS_PASSES_MAX {
            // Every group, not only the awake and touched ones the driver looks at: the
            // check below then proves the driver's narrower look misses nothing.
            if !self.lp.peers.values().any(|p| p.raw.has_ready()) {
                if !self.lp.in_flight.is_empty() {
                    // Deferred completions (`Persist::Deferred`): the writes are on disk;
                    // their persisted messages and Raft's progress follow now.
                    self.lp.complete_flights();
                    continue;
                }
                self.lp.check_hibernation_invariants();
                return;
            }
            self.lp.check_hibernation_invariants();
            self.lp.on_ready();
        }
        panic!("node {}: groups still ready after {PROCESS_PASSES_MAX} passes", self.lp.cfg.node_id);
    }

    /// The status of `group` as of the last `process` (or creation).
    pub fn status(&self, group: GroupId) -> Option<GroupStatus> {
        self.lp.status.read().get(&group).cloned()
    }

    /// Persists a last commit-index update and drops the driver. Dropping it without
    /// `stop` is a crash as far as the driver is concerned.
    pub fn stop(mut self) {
        self.lp.finish();
    }
}
