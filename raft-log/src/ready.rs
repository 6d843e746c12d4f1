//! The Ready loop of the driver, in raft-rs's required order, for every group at once:
//!
//! 1. send `messages()` (a leader may send before its own write);
//! 2. record an incoming snapshot's metadata;
//! 3. persist entries + HardState of EVERY ready group in ONE WAL batch, ONE fsync, and
//!    wait for it;
//! 4. send `persisted_messages()`;
//! 5. hand `committed_entries` to the apply worker (`apply.rs`), in log order;
//! 6. `advance()`, handle the `LightReady` the same way, `advance_apply()`.
//!
//! **Pipelined persistence** (`DriverConfig::pipeline_persistence`). Waiting in step 3 keeps
//! the driver from everything else for an fdatasync: proposals and read-index requests of
//! every group queue behind one group's write. So a pass that finds more work waiting hands
//! its batch to the WAL writer and goes on, with raft-rs's asynchronous Ready:
//!
//! - the Ready's entries are staged in the group's storage (`storage.rs`) before
//!   `advance_append_async`, which makes raft-rs read them from there from then on;
//! - committed entries are applied at once: raft-rs only hands out entries this node has
//!   persisted (`min(committed, persisted)`), so none depends on the batch in flight;
//! - messages that promise durability (`persisted_messages`) wait with the batch, in a
//!   [`Flight`](crate::driver::Flight), as does `on_persist_ready`, which is what lets a
//!   leader count its own entries;
//! - the writer completes batches in queue order, so flights complete in order, and a
//!   Ready with nothing to write joins the newest flight instead of overtaking it.
//!
//! A snapshot Ready takes the waiting path, because the snapshot's effects are ordered around
//! it; so does a pass that serves one lone message while nothing is in flight and nothing else
//! waits, because a lone write is faster written on this thread (no hand-off to the writer and
//! back). Before a waiting pass, every flight completes first.

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message};
use raft::{ReadState, Ready};

use crate::apply::ApplyTask;
use crate::batch::WriteBatch;
use crate::driver::{CommittedEntry, Flight, Loop, Peer, Persist, READ_CTX_BYTES};
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
        let pipelined = match self.persist {
            Persist::Wait => false,
            Persist::Deferred => installed.is_empty(),
            Persist::Pipelined => installed.is_empty() && !(self.in_flight.is_empty() && self.idle()),
        };
        if pipelined {
            self.pipeline_readies(readies, batch, must_wait);
            return;
        }
        // Ordering: what is in flight completes before this pass persists and advances.
        self.settle_flights();
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

    /// Whether the pass serves one lone message and nothing else waits for the driver: no
    /// inbox message, no peer message.
    fn idle(&self) -> bool {
        self.pass_messages <= 1 && self.rx.is_empty() && self.peer_inbox.is_empty()
    }

    /// Steps 3-6 of a pipelined pass (see the module doc): the batch goes to the WAL writer,
    /// and what must wait for it joins a flight.
    fn pipeline_readies(&mut self, readies: Vec<(GroupId, Ready)>, batch: WriteBatch, must_wait: bool) {
        let seq = self.next_flight;
        let mut waiting = Vec::with_capacity(readies.len());
        let mut readies = readies;
        if must_wait {
            self.next_flight += 1;
            for (group, rd) in &mut readies {
                let entries = rd.take_entries();
                if !entries.is_empty() {
                    let peer = self.peers.get_mut(group).expect("invariant: ready group exists");
                    // Ordering: staged before `advance_append_async` below, from which on
                    // raft-rs reads these entries through the storage.
                    peer.raw.mut_store().stage(seq, entries);
                }
            }
            self.submit_flight(seq, batch);
        } else if !batch.is_empty() {
            // Only commit indexes: queued behind the flights, durable with a later sync.
            if let Err(e) = self.wal.write_unsynced(batch) {
                tracing::warn!(error = %e, "could not queue commit index update");
            }
        }
        for (group, mut rd) in readies {
            let persisted_msgs = rd.take_persisted_messages();
            // 5. Committed entries are durable here already (raft-rs hands out only entries
            //    this node persisted), so they need not wait for this flight.
            let committed = rd.take_committed_entries();
            self.apply_committed(group, committed);
            let peer = self.peers.get_mut(&group).expect("invariant: ready group exists");
            let number = rd.number();
            peer.raw.advance_append_async(rd);
            peer.raw.advance_apply();
            peer.unpersisted += 1;
            waiting.push((group, number, persisted_msgs));
            self.publish_status(group);
        }
        if must_wait {
            self.in_flight.push_back(Flight { seq, readies: waiting });
        } else if let Some(newest) = self.in_flight.back_mut() {
            // Ordering: nothing to write, but its messages may still promise what an
            // earlier flight writes (a vote, an append), so they leave with the newest.
            newest.readies.extend(waiting);
        } else {
            self.persisted(waiting, None);
        }
    }

    /// Hands a flight's batch to the WAL: to the writer thread, whose completion wakes the
    /// driver, or (manual) written here with its completion handled at the next look.
    fn submit_flight(&mut self, seq: u64, batch: WriteBatch) {
        match self.persist {
            Persist::Pipelined => {
                let flights = std::sync::Arc::clone(&self.flights);
                let wake = self.wake.clone();
                let submitted = self.wal.submit_with_callback(batch, move |r| {
                    flights.complete(seq, r);
                    if let Some(tx) = wake {
                        // A full inbox means a busy driver, which looks at flights after
                        // every inbox pass anyway.
                        let _ = tx.try_send(crate::driver::Msg::Persisted);
                    }
                });
                if let Err(e) = submitted {
                    panic!("raft-log driver cannot persist a Ready: {e}");
                }
            }
            Persist::Deferred | Persist::Wait => {
                let r = self.wal.write(batch);
                self.flights.complete(seq, r);
            }
        }
    }

    /// Handles every flight whose batch is durable, oldest first: its persisted messages
    /// go out and its groups learn the Readies are persisted (a leader may then commit).
    pub(crate) fn complete_flights(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        let durable = self.flights.durable();
        while self.in_flight.front().is_some_and(|f| f.seq <= durable) {
            let flight = self.in_flight.pop_front().expect("checked: not empty");
            self.persisted(flight.readies, Some(flight.seq));
        }
    }

    /// Waits until every flight is durable and handles them.
    pub(crate) fn settle_flights(&mut self) {
        if let Some(last) = self.in_flight.back() {
            self.flights.wait(last.seq);
            self.complete_flights();
        }
    }

    /// Readies now persisted (by flight `seq`, or with nothing to write when `None`).
    fn persisted(&mut self, readies: Vec<(GroupId, u64, Vec<Message>)>, seq: Option<u64>) {
        for (group, number, msgs) in readies {
            let Some(peer) = self.peers.get_mut(&group) else {
                // Not reached in practice: `remove_peer` settles every flight first.
                continue;
            };
            peer.raw.on_persist_ready(number);
            if let Some(seq) = seq {
                // The writer indexed the batch before completing it.
                peer.raw.mut_store().release(seq);
            }
            peer.unpersisted -= 1;
            debug_assert!(
                peer.unpersisted != 0 || peer.raw.store().staged_len() == 0,
                "staged entries outlive flights"
            );
            // 4. Votes and append answers promise durability: only now.
            self.send(group, msgs);
            // A leader that counted its own entries may commit: the next pass looks.
            self.dirty.insert(group);
        }
    }
}
