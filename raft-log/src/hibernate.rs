//! Hibernation: idle groups stop ticking and heartbeating until something happens to them.
//!
//! The driver keeps, besides every group's RawNode, the set of groups that are awake. Only
//! those are ticked, and only those (plus the groups touched since the last Ready pass) are
//! asked for a Ready, so ticks and readiness checks cost O(awake groups), not O(groups).
//!
//! ```text
//!          idle for hibernate_after_ticks,               notice (a MsgHeartbeat whose
//!          followers caught up, nothing pending          context is HIBERNATE_CTX)
//!  leader ─────────────────────────────────────► asleep ─────────────► follower: steps it
//!    ▲                                              │                  (election timer reset,
//!    │   any proposal, read, conf change, campaign, │                  commit learned), then
//!    └── transfer, snapshot report, or peer message ┘                  sleeps too
//!        other than a notice or a heartbeat response
//! ```
//!
//! Why it is safe:
//!
//! - **No new message type.** raft-rs cannot learn one, so the notice is an ordinary
//!   heartbeat built by the driver exactly as raft-rs builds its own (term, commit =
//!   min(matched, committed)); the follower steps it as one. Its context is a marker whose
//!   length differs from a read-index context ([`crate::driver::READ_CTX_BYTES`]), so raft-rs's
//!   ReadIndex bookkeeping never mistakes one for the other: the leader's `recv_ack` finds no
//!   read with that context and ignores the echoed response.
//! - **A leader sleeps only when nothing is in flight**: it leads, has committed in its term,
//!   has no Ready, has applied everything, holds no pending conf change, leader transfer or
//!   read (in raft-rs or in the driver), and every member's progress has `matched` equal to
//!   the last index and knows the commit index (its `committed_index`, from heartbeat
//!   responses). So a sleeping group has nothing to replicate, commit or answer.
//! - **A follower sleeps only on a notice of its current leader in its current term**, and
//!   only with no read of its own pending. Any other message wakes it; a stale notice that
//!   arrives after the leader woke again only stops the follower's ticks until the leader's
//!   next heartbeat (which wakes it).
//! - **Reads stay linearizable.** Reads use ReadIndex with `ReadOnlySafe`: the read point is
//!   confirmed by a quorum's heartbeat responses in the leader's current term, after the read
//!   arrived. A leader deposed while asleep (a partition; the others elected a new leader
//!   and committed) wakes on the read, asks for the quorum round, and gets no quorum of acks
//!   in its old term: the new term in the answers makes it step down, raft-rs drops the
//!   request, and the driver re-issues it to the new leader. No lease is ever trusted.
//! - **check_quorum.** A leader's `election_elapsed` is frozen while it sleeps. On waking it is
//!   reset to 0, so the first quorum check comes a full election timeout after the wake, with
//!   a full timeout of fresh heartbeat responses behind it: a woken leader does not step down
//!   for the silence of its own sleep. (A `recent_active` flag left over from before the sleep
//!   can only delay a step-down by one check; reads never rely on it.)
//! - **pre_vote and the in-lease rule.** A follower that stepped a notice has
//!   `election_elapsed` = 0 and a known leader, and the counter does not move while it
//!   sleeps, so it refuses (ignores) every vote and pre-vote request of a higher term until
//!   it has been awake for an election timeout without hearing its leader. A sleeping
//!   follower therefore never helps a candidate disrupt a live, sleeping leader. The price is
//!   liveness when the leader really died: a follower woken by a request campaigns after its
//!   election timeout, its pre-vote wakes the other followers, and they refuse it for up to
//!   one election timeout (their own timers then run: at most about two timeouts until a new
//!   leader). `tests/hibernate.rs` checks this bound.
//! - **A lost notice heals itself.** The follower keeps ticking; with no heartbeat it
//!   pre-campaigns after its timeout, the pre-vote wakes the leader (and the others), which
//!   refuse it (in lease) and heartbeat again; the pre-candidate returns to following
//!   without a term change, and the group goes back to sleep once idle again.
//!
//! Memory: when a group sleeps, the WAL's cache of its recent entries is dropped and the
//! leader's per-follower inflight buffers are freed; reads of its entries go to disk until
//! appends fill the cache again.

use std::sync::atomic::Ordering;

use raft::eraftpb::{Message, MessageType};
use raft::StateRole;

use crate::driver::Loop;
use crate::types::GroupId;

/// Context of a hibernation notice (and of the follower's echo in its heartbeat response).
/// Its length differs from `READ_CTX_BYTES`, so it can never be a read-index context.
pub(crate) const HIBERNATE_CTX: &[u8] = b"plinth/hibernate/v1";

const _: () = assert!(HIBERNATE_CTX.len() != crate::driver::READ_CTX_BYTES);

/// What a stepped peer message means for a group's sleep.
enum StepKind {
    /// A hibernation notice: the group may sleep after stepping it.
    Notice,
    /// A heartbeat response (empty or hibernation context): not activity.
    QuietResponse,
    /// Anything else: activity.
    Active,
}

fn step_kind(msg: &Message) -> StepKind {
    match msg.get_msg_type() {
        MessageType::MsgHeartbeat if msg.context.as_ref() == HIBERNATE_CTX => StepKind::Notice,
        MessageType::MsgHeartbeatResponse if msg.context.is_empty() || msg.context.as_ref() == HIBERNATE_CTX => {
            StepKind::QuietResponse
        }
        _ => StepKind::Active,
    }
}

impl Loop {
    /// Whether hibernation is on.
    fn hibernation_enabled(&self) -> bool {
        self.cfg.hibernate_after_ticks != 0
    }

    /// Marks `group` awake (ticked and checked for Readys) and restarts its idle count. Every
    /// path that hands a RawNode something other than a notice or a quiet heartbeat response
    /// calls it first.
    pub(crate) fn wake(&mut self, group: GroupId) {
        let Some(p) = self.peers.get_mut(&group) else { return };
        p.idle_ticks = 0;
        self.dirty.insert(group);
        if self.awake.insert(group) {
            if p.raw.raft.state == StateRole::Leader {
                // check_quorum: the silence of the sleep is not a lost quorum; a full election
                // timeout of heartbeats comes before the next check (see the module essay).
                p.raw.raft.election_elapsed = 0;
            }
            self.awake_count.store(self.awake.len(), Ordering::Relaxed);
            tracing::debug!(%group, "group woke");
            self.publish_status(group);
        }
    }

    /// Steps a peer's message, waking the group unless the message is a hibernation notice
    /// or a heartbeat response; a follower that steps a notice of its leader goes to sleep.
    pub(crate) fn step_peer_message(&mut self, group: GroupId, msg: Message) {
        if !self.peers.contains_key(&group) {
            return;
        }
        let kind = step_kind(&msg);
        let (from, term) = (msg.from, msg.term);
        match kind {
            StepKind::Active => self.wake(group),
            // Stepped without waking; its Ready (if any) is still handled in the next pass.
            StepKind::Notice | StepKind::QuietResponse => {
                self.dirty.insert(group);
            }
        }
        let p = self.peers.get_mut(&group).expect("invariant: checked above");
        if let Err(e) = p.raw.step(msg) {
            tracing::debug!(%group, error = %e, "raft message rejected");
        }
        match kind {
            StepKind::Active => {}
            StepKind::QuietResponse => {
                // A response that makes the leader act (append to a lagging member, answer a
                // read) is activity after all.
                if !self.awake.contains(&group) && !self.peers[&group].raw.raft.msgs.is_empty() {
                    self.wake(group);
                }
            }
            StepKind::Notice => {
                let r = &self.peers[&group].raw.raft;
                let from_leader = r.state == StateRole::Follower && r.leader_id == from && r.term == term && from != 0;
                if self.hibernation_enabled()
                    && from_leader
                    && r.pending_request_snapshot == raft::INVALID_INDEX
                    && !self.reads.has_group(group)
                {
                    self.sleep(group);
                } else {
                    self.wake(group);
                }
            }
        }
    }

    /// One tick for every awake group; a leader idle for `hibernate_after_ticks` ticks that
    /// may sleep sends its notices and sleeps instead of ticking.
    pub(crate) fn tick_awake(&mut self) {
        let awake: Vec<GroupId> = self.awake.iter().copied().collect();
        for group in awake {
            let p = self.peers.get_mut(&group).expect("invariant: an awake group exists");
            p.idle_ticks = p.idle_ticks.saturating_add(1);
            let idle = p.idle_ticks;
            if self.hibernation_enabled() && idle >= self.cfg.hibernate_after_ticks && self.leader_may_sleep(group) {
                self.send_notices(group);
                self.sleep(group);
                continue;
            }
            let p = self.peers.get_mut(&group).expect("invariant: an awake group exists");
            if p.raw.tick() {
                self.dirty.insert(group);
            }
        }
    }

    /// Whether `group` is led here with nothing in flight (see the module essay).
    fn leader_may_sleep(&self, group: GroupId) -> bool {
        let p = &self.peers[&group];
        let r = &p.raw.raft;
        if r.state != StateRole::Leader || !r.commit_to_current_term() || p.raw.has_ready() || p.unpersisted != 0 {
            return false;
        }
        let committed = r.raft_log.committed;
        let last = r.raft_log.last_index();
        let quiet = committed == last
            && p.applied == committed
            && r.pending_conf_index <= p.applied
            && r.lead_transferee.is_none()
            && r.read_only.pending_read_count() == 0
            && r.msgs.is_empty();
        if !quiet {
            return false;
        }
        let me = self.cfg.node_id.0;
        let caught_up = r
            .prs()
            .iter()
            .filter(|(id, _)| **id != me)
            .all(|(_, pr)| pr.matched == last && pr.committed_index >= committed);
        caught_up && !self.reads.has_group(group) && !self.transfers.iter().any(|t| t.group == group)
    }

    /// Sends every other member of `group` a hibernation notice: a heartbeat as raft-rs
    /// builds it, with the marker context. Sent straight to the transport: a heartbeat
    /// promises nothing durable, and the leader has no Ready left (`leader_may_sleep`).
    fn send_notices(&mut self, group: GroupId) {
        let me = self.cfg.node_id.0;
        let r = &self.peers[&group].raw.raft;
        let msgs: Vec<Message> = r
            .prs()
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, pr)| {
                let mut m = Message::default();
                m.set_msg_type(MessageType::MsgHeartbeat);
                m.to = *id;
                m.from = me;
                m.term = r.term;
                m.commit = pr.matched.min(r.raft_log.committed);
                m.context = HIBERNATE_CTX.to_vec().into();
                m
            })
            .collect();
        if !msgs.is_empty() {
            self.transport.send(group, msgs);
        }
    }

    /// Puts `group` to sleep: no more ticks or readiness checks until `wake`, and its memory
    /// caches are given back.
    fn sleep(&mut self, group: GroupId) {
        if !self.awake.remove(&group) {
            return;
        }
        let p = self.peers.get_mut(&group).expect("invariant: a sleeping group exists");
        p.idle_ticks = 0;
        for (_, pr) in p.raw.raft.mut_prs().iter_mut() {
            pr.ins.maybe_free_buffer();
        }
        p.raw.raft.raft_log.unstable.entries.shrink_to_fit();
        self.wal.drop_entry_cache(group);
        self.awake_count.store(self.awake.len(), Ordering::Relaxed);
        tracing::debug!(%group, "group sleeps");
        self.publish_status(group);
    }

    /// Removes `group` from the hibernation sets (the group was removed).
    pub(crate) fn forget(&mut self, group: GroupId) {
        self.awake.remove(&group);
        self.dirty.remove(&group);
        self.awake_count.store(self.awake.len(), Ordering::Relaxed);
    }

    /// Groups to look at for a Ready: the awake ones and those touched since the last pass.
    pub(crate) fn ready_candidates(&mut self) -> Vec<GroupId> {
        let mut v: Vec<GroupId> = self.awake.iter().copied().collect();
        let dirty = std::mem::take(&mut self.dirty);
        v.extend(dirty.into_iter().filter(|g| !self.awake.contains(g)));
        v
    }

    /// O(groups) check for tests: a group that is neither awake nor marked for the next
    /// Ready pass has no Ready (so skipping it loses nothing), and `awake` names only
    /// existing groups.
    pub(crate) fn check_hibernation_invariants(&self) {
        for g in &self.awake {
            assert!(self.peers.contains_key(g), "awake group {g} does not exist");
        }
        for (g, p) in &self.peers {
            if !self.awake.contains(g) && !self.dirty.contains(g) {
                assert!(!p.raw.has_ready(), "sleeping group {g} has a Ready that no pass will handle");
            }
        }
    }
}
