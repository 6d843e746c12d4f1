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
//! - **A woken follower forwards no proposal to a leader it has not heard since waking.**
//!   A sleeping follower still names the leader it last heard, however long ago; if that
//!   leader died meanwhile, a proposal forwarded to it at once would be lost, and its client
//!   would wait out its whole timeout although the group elects a new leader within about two
//!   election timeouts. (An awake follower has the same window, etcd's, between a leader's
//!   death and its election timer's firing.) So a proposal that reaches a follower which has
//!   stepped no message of its current leader in its current term since it last slept is
//!   *held* on the driver thread, and the follower sends that leader a read-index request
//!   with a private context ([`PROBE_CTX`]): a live leader wakes and answers with a round of
//!   heartbeats. The first message of the leader in its term releases the held proposals to
//!   it, in arrival order; if this node is elected instead, it proposes them itself. Held
//!   proposals were never handed to raft-rs, so releasing them later cannot apply one twice.
//!   They are bounded (`proposal_queue_max` over all groups; past it a proposal is forwarded
//!   as before), re-probed every `READ_INDEX_RETRY_TICKS` ticks, and each is dropped
//!   unproposed [`HELD_GRACE`] after its own `read_index_timeout` has passed, by which time its
//!   caller (which waits at most that long from before the proposal arrived) gave up, and saw
//!   it still held when it did. The price is one round trip on the first write through a
//!   follower after a sleep.
//!
//! Memory: when a group sleeps, the WAL's cache of its recent entries is dropped and the
//! leader's per-follower inflight buffers are freed; reads of its entries go to disk until
//! appends fill the cache again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::eraftpb::{Message, MessageType};
use raft::StateRole;

use crate::driver::{Loop, Peer, READ_INDEX_RETRY_TICKS};
use crate::types::GroupId;

/// Context of a hibernation notice (and of the follower's echo in its heartbeat response).
/// Its length differs from `READ_CTX_BYTES`, so it can never be a read-index context.
pub(crate) const HIBERNATE_CTX: &[u8] = b"plinth/hibernate/v1";

const _: () = assert!(HIBERNATE_CTX.len() != crate::driver::READ_CTX_BYTES);

/// Context of the read-index request with which a woken follower that holds proposals asks
/// its leader to show itself. Its length differs from a read-index context's (its answer is
/// never taken for a client read) and from a notice's (the leader's heartbeats that carry it
/// wake the followers).
pub(crate) const PROBE_CTX: &[u8] = b"plinth/leader-probe/v1";

const _: () = assert!(PROBE_CTX.len() != crate::driver::READ_CTX_BYTES && PROBE_CTX.len() != HIBERNATE_CTX.len());

/// How long a held proposal outlives its `read_index_timeout`. Its caller waits at most that
/// long, from before the proposal reached the driver, then asks whether the group still holds
/// proposals: held means the proposal never reached Raft, and the caller answers as etcd does
/// for a proposal its raft held (the context's error), not with "request timed out". The grace
/// keeps that answer true when the caller's timer fires late on a busy machine.
pub(crate) const HELD_GRACE: Duration = Duration::from_secs(1);

/// Proposals held by woken followers until they hear from their leader (see the module essay).
/// Invariant: `len` is the number of proposals over all groups, at most `proposal_queue_max`,
/// and no group's entry is empty.
#[derive(Default)]
pub(crate) struct HeldProposals {
    groups: HashMap<GroupId, Held>,
    len: usize,
}

impl HeldProposals {
    /// Whether `group` holds proposals.
    pub(crate) fn holds(&self, group: GroupId) -> bool {
        self.groups.contains_key(&group)
    }
}

struct Held {
    /// In arrival order, each with when it was held: each is dropped `read_index_timeout`
    /// plus [`HELD_GRACE`] after that, so a proposal that arrived later is not dropped with
    /// the first (its caller still waits).
    proposals: VecDeque<(Instant, Bytes)>,
    /// When the leader was last asked to show itself (`None`: not yet, no leader known).
    probed_at: Option<Instant>,
}

/// Whether a proposal on `p` may go to raft-rs now: this node leads, or it follows a leader
/// whose message in its current term it has stepped since it last slept.
fn may_propose(p: &Peer) -> bool {
    let r = &p.raw.raft;
    match r.state {
        StateRole::Leader => true,
        StateRole::Follower => r.leader_id != 0 && p.heard == Some((r.leader_id, r.term)),
        _ => false,
    }
}

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
        let r = &p.raw.raft;
        if r.state == StateRole::Follower && from != 0 && r.leader_id == from && r.term == term {
            p.heard = Some((from, term));
        }
        // A message of the leader (or this node's election) releases held proposals.
        let released = self.release_held(group);
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
                    && !released
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
        // The leader's silence from now on is the sleep's; whether it still lives is learned
        // again before a proposal is forwarded to it.
        p.heard = None;
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
        if let Some(h) = self.held.groups.remove(&group) {
            self.held.len -= h.proposals.len();
        }
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

    /// Hands `data` to raft-rs for `group` now, or holds it until this follower has heard
    /// from its leader since it last slept (see the module essay).
    pub(crate) fn propose_or_hold(&mut self, group: GroupId, data: Bytes) {
        self.wake(group);
        let Some(p) = self.peers.get(&group) else { return };
        let holding = self.held.holds(group);
        // Full: proposed as it would be without holding (raft-rs forwards or drops it).
        if (holding || !may_propose(p)) && self.held.len < self.cfg.proposal_queue_max {
            let now = self.now();
            let h =
                self.held.groups.entry(group).or_insert_with(|| Held { proposals: VecDeque::new(), probed_at: None });
            h.proposals.push_back((now, data));
            self.held.len += 1;
            if !holding {
                self.probe_leader(group, now);
                self.publish_status(group);
            }
            return;
        }
        self.propose_now(group, data);
    }

    fn propose_now(&mut self, group: GroupId, data: Bytes) {
        let Some(p) = self.peers.get_mut(&group) else { return };
        if let Err(e) = p.raw.propose(Vec::new(), data.to_vec()) {
            tracing::debug!(%group, error = %e, "proposal dropped");
        }
    }

    /// Asks the leader this follower names to show itself: a read-index request, which a
    /// live leader (woken by it) answers with a round of heartbeats carrying [`PROBE_CTX`].
    fn probe_leader(&mut self, group: GroupId, now: Instant) {
        let Some(p) = self.peers.get_mut(&group) else { return };
        if p.raw.raft.state != StateRole::Follower || p.raw.raft.leader_id == 0 {
            return;
        }
        p.raw.read_index(PROBE_CTX.to_vec());
        self.dirty.insert(group);
        if let Some(h) = self.held.groups.get_mut(&group) {
            h.probed_at = Some(now);
        }
    }

    /// Proposes `group`'s held proposals, in arrival order, if they may go now; returns
    /// whether it did.
    fn release_held(&mut self, group: GroupId) -> bool {
        // Asked after every stepped peer message: the (nearly always empty) held set first.
        if !self.held.holds(group) || !self.peers.get(&group).is_some_and(may_propose) {
            return false;
        }
        let h = self.held.groups.remove(&group).expect("invariant: checked above");
        self.held.len -= h.proposals.len();
        tracing::debug!(%group, count = h.proposals.len(), "held proposals released");
        for (_, data) in h.proposals {
            self.propose_now(group, data);
        }
        self.publish_status(group);
        true
    }

    /// Releases the held proposals that may go (this node was elected, or heard its leader),
    /// drops those held for `read_index_timeout` and [`HELD_GRACE`], and asks the leader again where the last
    /// probe is `READ_INDEX_RETRY_TICKS` ticks old. O(groups with held proposals).
    pub(crate) fn service_held(&mut self, now: Instant) {
        if self.held.groups.is_empty() {
            return;
        }
        let mut groups: Vec<GroupId> = self.held.groups.keys().copied().collect();
        // In group order, so a simulation replays a run message for message.
        groups.sort_unstable();
        let retry = self.cfg.tick_interval * READ_INDEX_RETRY_TICKS;
        for group in groups {
            if self.release_held(group) {
                continue;
            }
            let expiry = self.cfg.read_index_timeout + HELD_GRACE;
            let h = self.held.groups.get_mut(&group).expect("invariant: present");
            let before = h.proposals.len();
            while h.proposals.front().is_some_and(|(since, _)| *since + expiry <= now) {
                h.proposals.pop_front();
            }
            let dropped = before - h.proposals.len();
            self.held.len -= dropped;
            if dropped > 0 {
                tracing::debug!(%group, count = dropped, "held proposals dropped: no leader heard");
            }
            if h.proposals.is_empty() {
                self.held.groups.remove(&group);
                self.publish_status(group);
                continue;
            }
            if h.probed_at.is_none_or(|t| t + retry <= now) {
                self.probe_leader(group, now);
            }
        }
    }

    /// O(groups) check for tests: a group that is neither awake nor marked for the next
    /// Ready pass has no Ready (so skipping it loses nothing), and `awake` names only
    /// existing groups.
    pub(crate) fn check_hibernation_invariants(&self) {
        for g in &self.awake {
            assert!(self.peers.contains_key(g), "awake group {g} does not exist");
        }
        let held: usize = self.held.groups.values().map(|h| h.proposals.len()).sum();
        assert_eq!(held, self.held.len, "held proposals miscounted");
        for (g, h) in &self.held.groups {
            assert!(!h.proposals.is_empty(), "group {g} holds an empty entry");
            assert!(self.awake.contains(g), "group {g} holds proposals asleep");
        }
        for (g, p) in &self.peers {
            if !self.awake.contains(g) && !self.dirty.contains(g) {
                assert!(!p.raw.has_ready(), "sleeping group {g} has a Ready that no pass will handle");
            }
        }
    }
}
