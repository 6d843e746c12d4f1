//! The Ready loop of the driver, in raft-rs's required order, for every group at once:
//!
//! 1. send `messages()` (a leader may send before its own write);
//! 2. record an incoming snapshot's metadata;
//! 3. persist entries + HardState of EVERY ready group in ONE WAL batch, ONE fsync, and
//!    wait for it;
//! 4. send `persisted_messages()`;
//! 5. hand `committed_entries` to the apply worker (`apply.rs`), in log order;
//! 6. `advance()`, handle the `LightReady` the same way, `advance_apply()`.

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message};
use raft::{ReadState, Ready};

use crate::apply::ApplyTask;
use crate::batch::WriteBatch;
use crate::driver::{CommittedEntry, Loop, Peer, READ_CTX_BYTES};
use crate::error::Error;
use crate::types::{GroupId, LogIndex, NodeId, Term};

/// Most groups whose Ready is collected into one WAL batch. A node with more ready groups
/// handles them over several batches in the same loop iteration.
pub(crate) const READY_GROUPS_PER_BATCH_MAX: usize = 1024;

impl Loop {
    fn send(&self, group: GroupId, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            self.transport.send(group, msgs);
        }
    }

    fn complete_reads(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let Ok(ctx) = <[u8; READ_CTX_BYTES]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            let (node, id) = ctx.split_at(8);
            if node != self.cfg.node_id.0.to_le_bytes() {
                continue;
            }
            let id = u64::from_le_bytes(id.try_into().expect("8 bytes"));
            // Every read of the batch began before its context was first issued, so this
            // read point (obtained after that) is linearizable for all of them.
            for r in self.reads.take(id).into_iter().flatten() {
                (r.done)(Ok(LogIndex(rs.index)));
            }
        }
    }

    /// The leader of `group` changed: raft-rs dropped the reads it held, so every pending
    /// batch of the group is asked again (of the new leader) right away. A read point
    /// obtained after the request began is still linearizable.
    fn reissue_reads(&mut self, group: GroupId) {
        let now = self.now();
        for b in self.reads.batches.values_mut().filter(|b| b.group == group) {
            b.retry_at = now;
        }
    }

    /// Hands committed entries to the state machine: normal ones (after `skip_through`)
    /// as `CommittedEntry`; a conf change is applied to the RawNode, its new ConfState made
    /// durable and reported, after the normal entries before it and before any after it.
    fn apply_committed(&mut self, group: GroupId, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let peer: &mut Peer = self.peers.get_mut(&group).expect("invariant: ready group exists");
            assert!(
                e.index == peer.applied + 1 || e.index <= peer.skip_through,
                "group {group}: committed entry {} does not follow applied {}",
                e.index,
                peer.applied
            );
            peer.applied = peer.applied.max(e.index);
            let replayed = e.index <= peer.skip_through;
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if !replayed {
                        out.push(CommittedEntry { index: LogIndex(e.index), term: Term(e.term), data: e.data });
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    // Ordering: what came before the change is applied before the change.
                    if !out.is_empty() {
                        self.applier.dispatch(ApplyTask::Entries(group, std::mem::take(&mut out)));
                    }
                    self.apply_conf_change(group, &e);
                    if !replayed {
                        // An empty entry moves the state machine's applied index past the
                        // change, so a restart does not replay it.
                        out.push(CommittedEntry { index: LogIndex(e.index), term: Term(e.term), data: Bytes::new() });
                    }
                }
            }
        }
        if !out.is_empty() {
            self.applier.dispatch(ApplyTask::Entries(group, out));
        }
    }

    /// Applies one conf change entry to the RawNode of `group`, makes the new ConfState
    /// durable, then tells the state machine.
    fn apply_conf_change(&mut self, group: GroupId, e: &Entry) {
        let peer: &mut Peer = self.peers.get_mut(&group).expect("invariant: ready group exists");
        let applied = if e.get_entry_type() == EntryType::EntryConfChange {
            ConfChange::parse_from_bytes(&e.data)
                .map_err(|err| Error::Raft(err.to_string()))
                .and_then(|cc| peer.raw.apply_conf_change(&cc).map(|cs| (cc, cs)).map_err(Error::from))
        } else {
            ConfChangeV2::parse_from_bytes(&e.data).map_err(|err| Error::Raft(err.to_string())).and_then(|cc| {
                let cs = peer.raw.apply_conf_change(&cc).map_err(Error::from)?;
                // Reported to the state machine as its first single change.
                let first = cc.get_changes().first().cloned().unwrap_or_default();
                let v1 = ConfChange {
                    change_type: first.change_type,
                    node_id: first.node_id,
                    context: cc.context.clone(),
                    ..Default::default()
                };
                Ok((v1, cs))
            })
        };
        match applied {
            Ok((cc, cs)) => {
                let mut b = WriteBatch::new();
                b.set_conf_state(group, &cs);
                // Durability: the new membership is on disk before the state machine may
                // record an applied index past the conf change.
                if let Err(err) = self.wal.write(b) {
                    panic!("group {group}: cannot persist ConfState: {err}");
                }
                let me = self.cfg.node_id.0;
                let peer: &mut Peer = self.peers.get_mut(&group).expect("invariant: ready group exists");
                if peer.raw.raft.state == raft::StateRole::Leader && !cs.voters.contains(&me) {
                    // A leader that removed (or demoted) itself: raft-rs keeps it leading (its
                    // `post_conf_change` leaves this case to the application) and then panics
                    // when its next entries persist, since it has no progress of its own any
                    // more. It steps down in its term instead; the voters left elect a leader
                    // after an election timeout (as etcd's removed leader stops). Found by
                    // grpc-api/tests/node_sim.rs (`removing_the_leader`).
                    let term = peer.raw.raft.term;
                    peer.raw.raft.become_follower(term, raft::INVALID_ID);
                    tracing::info!(%group, term, "this leader left the group's voters; stepped down");
                }
                self.applier.dispatch(ApplyTask::ConfChange { group, index: LogIndex(e.index), change: cc, state: cs });
            }
            Err(err) => tracing::warn!(%group, index = e.index, error = %err, "conf change not applied"),
        }
    }

    /// One pass over every group with a Ready. Only awake groups and those touched since the
    /// last pass can have one (`check_hibernation_invariants`), so the pass costs
    /// O(awake + touched groups), not O(groups).
    pub(crate) fn on_ready(&mut self) {
        let candidates = self.ready_candidates();
        let ready_groups: Vec<GroupId> =
            candidates.into_iter().filter(|g| self.peers.get(g).is_some_and(|p| p.raw.has_ready())).collect();
        for chunk in ready_groups.chunks(READY_GROUPS_PER_BATCH_MAX) {
            self.on_ready_groups(chunk);
        }
        for g in ready_groups {
            // Handling a Ready can make another (an apply, a LightReady): a sleeping group
            // then stays marked so the next pass still looks at it.
            if self.peers.get(&g).is_some_and(|p| p.raw.has_ready()) {
                self.dirty.insert(g);
            }
        }
        if !self.pending.is_empty() {
            // Commit-index updates need neither a wait nor an fdatasync of their own (raft-rs's
            // `must_sync` is false for them): Raft re-learns commit after a crash, and the next
            // synced frame makes them durable with it. Term and vote in this HardState are the
            // ones the Ready that changed them already made durable.
            let b = std::mem::take(&mut self.pending);
            if let Err(e) = self.wal.write_unsynced(b) {
                tracing::warn!(error = %e, "could not queue commit index update");
            }
        }
    }

    fn on_ready_groups(&mut self, groups: &[GroupId]) {
        let mut batch = std::mem::take(&mut self.pending);
        let mut must_wait = false;
        let mut readies: Vec<(GroupId, Ready)> = Vec::with_capacity(groups.len());
        let mut installed: Vec<(GroupId, u64)> = Vec::new();
        for &group in groups {
            let peer = self.peers.get_mut(&group).expect("invariant: ready group exists");
            let mut rd = peer.raw.ready();
            let mut leader_changed = None;
            if let Some(ss) = rd.ss() {
                if ss.leader_id != peer.leader {
                    peer.leader = ss.leader_id;
                    leader_changed = Some((ss.leader_id, peer.raw.raft.term));
                }
            }
            if !rd.snapshot().is_empty() {
                // 2. A snapshot replaces the log: its metadata goes first in the batch so
                //    the entries after it apply on top of it. The state machine already holds
                //    the snapshot's data (the transport installed it before stepping the
                //    message), so nothing at or below its index is handed over again.
                let index = rd.snapshot().get_metadata().index;
                batch.set_snapshot_meta(group, rd.snapshot().get_metadata());
                must_wait = true;
                peer.applied = peer.applied.max(index);
                peer.skip_through = peer.skip_through.max(index);
                installed.push((group, index));
            }
            // 3. Entries and HardState of every group join ONE batch.
            if !rd.entries().is_empty() {
                batch.add_entries(group, rd.entries());
                must_wait = true;
            }
            if let Some(hs) = rd.hs() {
                batch.set_hard_state(group, hs);
                // A HardState whose only change is the commit index need not be durable
                // before anything else happens (raft-rs's `must_sync`): Raft recovers the
                // commit index after a crash. Term and vote changes must be.
                must_wait |= rd.must_sync();
            }
            let msgs = rd.take_messages();
            // 1. Messages of a leader may go out before its own entries are durable (the
            //    leader counts itself only once persisted), saving a round of latency.
            self.send(group, msgs);
            let states = rd.take_read_states();
            self.complete_reads(states);
            if let Some((leader, term)) = leader_changed {
                self.reissue_reads(group);
                self.applier.dispatch(ApplyTask::LeaderChange(group, NodeId(leader), Term(term)));
            }
            readies.push((group, rd));
        }
        if must_wait {
            // 3. ONE write and ONE fdatasync for every group; nothing below may run before
            //    it is durable (votes, append acks and applies depend on it).
            if let Err(e) = self.wal.write(batch) {
                panic!("raft-log driver cannot persist a Ready: {e}");
            }
        } else if !batch.is_empty() {
            if let Err(e) = self.wal.write_unsynced(batch) {
                tracing::warn!(error = %e, "could not queue commit index update");
            }
        }
        for (group, index) in installed {
            self.applier.dispatch(ApplyTask::Snapshot(group, LogIndex(index)));
        }
        for (group, mut rd) in readies {
            // 4. Votes and append responses promise durability: send them only now.
            let msgs = rd.take_persisted_messages();
            self.send(group, msgs);
            // 5. Committed entries are applied after the persist of this Ready.
            let committed = rd.take_committed_entries();
            self.apply_committed(group, committed);
            // 6. Advance, then handle the LightReady in the same order.
            let peer = self.peers.get_mut(&group).expect("invariant: ready group exists");
            let mut light = peer.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                let mut hs = peer.raw.raft.hard_state();
                hs.commit = commit;
                // The commit index rides with the next batch (see `pending`).
                self.pending.set_hard_state(group, &hs);
            }
            let msgs = light.take_messages();
            self.send(group, msgs);
            let committed = light.take_committed_entries();
            self.apply_committed(group, committed);
            let peer = self.peers.get_mut(&group).expect("invariant: ready group exists");
            peer.raw.advance_apply();
            self.publish_status(group);
        }
    }
}
