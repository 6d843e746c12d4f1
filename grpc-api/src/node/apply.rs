//! The applier: committed entries of this member's groups applied to the store, in log
//! order per group on raft-log's apply worker (off the Raft driver's thread), and what follows from each on this member — the
//! proposer's waiter answered, lease timers kept in step, membership changes taken into
//! `member.json`, the tenant reconciler told of registry changes.

use std::sync::Arc;

use crate::node::membership::{ConfContext, Membership};
use crate::node::metrics::Metrics;
use crate::node::{decode_prefix, Groups, DEFAULT_GROUP, REQUEST_ID_BYTES, SYSTEM_GROUP};

/// Applies committed entries of this member's groups to the store and answers waiters. Runs
/// on raft-log's apply worker, off the Raft driver's thread, in log order per group.
pub struct Applier {
    pub store: store::Store,
    pub groups: Arc<Groups>,
    pub metrics: Arc<Metrics>,
    pub membership: Arc<Membership>,
    /// Told when the system group applied something (the registry may have changed).
    pub registry_changed: Arc<tokio::sync::Notify>,
    /// What a new leader adds to every lease's TTL (the election timeout, as etcd).
    pub lease_promote_extend: std::time::Duration,
}

impl raft_log::StateMachine for Applier {
    fn applied_index(&self, group: raft_log::GroupId) -> raft_log::LogIndex {
        raft_log::LogIndex(self.store.applied_index(store::GroupId(group.0)))
    }

    fn apply(&mut self, group: raft_log::GroupId, entries: Vec<raft_log::CommittedEntry>) {
        let Some(last) = entries.last().map(|e| e.index.0) else { return };
        let items: Vec<(u64, &[u8])> =
            entries.iter().map(|e| (e.index.0, e.data.get(REQUEST_ID_BYTES..).unwrap_or(&[]))).collect();
        let started = std::time::Instant::now();
        // An apply that fails for a non-deterministic reason (I/O) must stop the member: going
        // on would let this replica diverge from the others.
        let results = self
            .store
            .apply(store::GroupId(group.0), &items)
            .unwrap_or_else(|e| panic!("applying entries up to {last} of group {} failed: {e}", group.0));
        assert_eq!(results.len(), entries.len(), "store returned one result per entry");
        let rt = self.groups.get(group.0);
        if let Some(tenant) = rt.tenant.get() {
            self.metrics.tenant_apply_duration.with_label_values(&[tenant]).observe(started.elapsed().as_secs_f64());
        }
        for (entry, result) in entries.iter().zip(results) {
            if entry.data.len() < REQUEST_ID_BYTES {
                continue; // A leader's empty entry.
            }
            // Every member follows grants and revokes, so whichever becomes leader next
            // has no timer for a lease the log revoked.
            rt.lessor.on_applied(&entry.data[REQUEST_ID_BYTES..], &result);
            if matches!(&result, Ok(store::CommandResponse::Import(r)) if r.finished) {
                // An import finished: its leases are the store's now, each timed from here
                // with the time its source had left (see `Lessor::reset_remaining`).
                match self.store.leases(store::GroupId(group.0)) {
                    Ok(leases) => rt.lessor.reset_remaining(leases.into_iter().map(|l| (l.id, l.ttl, l.remaining_ttl))),
                    Err(e) => tracing::warn!(error = %e, "cannot read leases after an import"),
                }
            }
            let (proposer, id) = decode_prefix(&entry.data).expect("the length was checked above");
            // Only this member's own proposals answer its waiters: another member's request
            // id may equal one of ours, and its client is not ours to answer.
            if proposer == self.membership.member_id {
                if let Some(tx) = rt.waiters.remove(id) {
                    let _ = tx.send(result);
                }
            }
        }
        rt.applied_tx.send_replace(last);
        if group.0 == SYSTEM_GROUP {
            self.registry_changed.notify_one();
        }
    }

    fn on_conf_change(
        &mut self,
        group: raft_log::GroupId,
        index: raft_log::LogIndex,
        change: &raft::eraftpb::ConfChange,
        _state: &raft::eraftpb::ConfState,
    ) {
        use raft::eraftpb::ConfChangeType;
        if group.0 != DEFAULT_GROUP {
            // Other groups' voters follow the default group's (see `tenants::membership_step`);
            // their changes carry no member and change nothing but Raft's view.
            tracing::debug!(group = group.0, index = index.0, node = change.node_id, "group membership changed");
            return;
        }
        let Some(ctx) = ConfContext::decode(&change.context) else {
            tracing::warn!(index = index.0, "a membership change without a member; only Raft's view changed");
            return;
        };
        let removed = change.get_change_type() == ConfChangeType::RemoveNode;
        let mut member = ctx.member;
        member.is_learner = change.get_change_type() == ConfChangeType::AddLearnerNode;
        let members = self.membership.update(|identity| {
            identity.apply_change(&member, removed);
            identity.members.clone()
        });
        tracing::info!(
            member = format_args!("{:x}", member.id),
            name = %member.name,
            removed,
            learner = member.is_learner,
            "membership changed"
        );
        // Only a change this member proposed answers its waiters (request ids of two
        // members may coincide).
        if ctx.proposer == self.membership.member_id {
            if let Some(tx) = self.membership.waiters.lock().remove(&ctx.request_id) {
                let _ = tx.send(members);
            }
        }
    }

    fn on_snapshot(&mut self, group: raft_log::GroupId, index: raft_log::LogIndex) {
        let rt = self.groups.get(group.0);
        // The store was replaced by the snapshot: lease deadlines restart from its leases.
        match self.store.leases(store::GroupId(group.0)) {
            Ok(leases) => rt.lessor.reset(leases.into_iter().map(|l| (l.id, l.ttl))),
            Err(e) => tracing::warn!(error = %e, "cannot read leases after a snapshot"),
        }
        rt.applied_tx.send_replace(index.0);
        if group.0 == SYSTEM_GROUP {
            self.registry_changed.notify_one();
        }
    }

    fn on_leader_change(&mut self, group: raft_log::GroupId, leader: raft_log::NodeId, _term: raft_log::Term) {
        let rt = self.groups.get(group.0);
        if leader.0 != 0 {
            *rt.leader_elected_at.lock() = Some(std::time::Instant::now());
        }
        if group.0 == DEFAULT_GROUP {
            // etcd counts a change to a known leader only: losing the leader is not one.
            if leader.0 != 0 {
                self.metrics.leader_changes.inc();
            }
            self.metrics.has_leader.set(i64::from(leader.0 != 0));
        }
        if leader.0 != 0 && leader.0 == self.membership.identity.read().member_id {
            // A new leader times exactly the leases of its store, each with a full TTL and the
            // election timeout before it expires anything (etcd's Promote). Entries committed
            // but not yet applied adjust the timers as they apply, in log order.
            match self.store.leases(store::GroupId(group.0)) {
                Ok(leases) => {
                    let leases = leases.into_iter().map(|l| (l.id, l.ttl));
                    return rt.lessor.promote(leases, self.lease_promote_extend);
                }
                Err(e) => tracing::warn!(error = %e, "cannot read leases on becoming leader; keeping the timers"),
            }
        }
        rt.lessor.on_leader_change();
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes, BytesMut};
    use prost::Message;
    use tokio::sync::oneshot;

    use super::*;
    use crate::node::membership::runtime_tests::membership;
    use crate::node::membership::Identity;
    use crate::node::{encode_proposal, request_id};

    /// An applier of member `me` on a fresh store, and the lessor it drives.
    fn applier(dir: &std::path::Path, me: u64) -> (Applier, Arc<crate::node::lessor::Lessor>) {
        let store = store::Store::open(&dir.join("store"), store::StoreConfig::default()).unwrap();
        let identity =
            Identity { cluster_id: 1, member_id: me, members: Vec::new(), joined: false, removed: Vec::new() };
        let metrics = Arc::new(Metrics::new("3.5.1", me));
        let transport = crate::node::peer::PeerTransport::new(me, store.clone(), &[], metrics.clone());
        let (membership, _removed) = Membership::new(identity, transport, dir.to_path_buf());
        let groups = Groups::new(store.clone(), 1);
        let lessor = groups.get(DEFAULT_GROUP).lessor.clone();
        let applier = Applier {
            store,
            groups,
            metrics,
            membership,
            registry_changed: Arc::default(),
            lease_promote_extend: std::time::Duration::from_secs(1),
        };
        (applier, lessor)
    }

    /// A committed entry as another member proposed it (no waiter here).
    fn entry(index: u64, body: store::CommandBody) -> raft_log::CommittedEntry {
        let mut data = BytesMut::new();
        // Another member's prefix, whatever its layout: no waiter of this member matches it.
        data.put_bytes(0xab, REQUEST_ID_BYTES);
        store::Command { request_id: 0, body: Some(body) }.encode(&mut data).unwrap();
        raft_log::CommittedEntry { index: raft_log::LogIndex(index), term: raft_log::Term(2), data: data.freeze() }
    }

    /// A tenant's group fails over on its own: its election is what tells a client whose
    /// write to that tenant timed out that a leader failed, not the default group's.
    #[test]
    fn each_group_records_its_own_leader_election() {
        use raft_log::StateMachine;
        let dir = tempfile::tempdir().unwrap();
        let (mut applier, _) = applier(dir.path(), 3);
        let tenant = 65536;
        assert!(applier.groups.get(tenant).leader_elected_at.lock().is_none());
        applier.on_leader_change(raft_log::GroupId(tenant), raft_log::NodeId(2), raft_log::Term(5));
        assert!(applier.groups.get(tenant).leader_elected_at.lock().is_some(), "the tenant's election");
        assert!(applier.groups.get(DEFAULT_GROUP).leader_elected_at.lock().is_none(), "not the default group's");
        // Losing the leader is no election.
        let elected = *applier.groups.get(tenant).leader_elected_at.lock();
        applier.on_leader_change(raft_log::GroupId(tenant), raft_log::NodeId(0), raft_log::Term(6));
        assert_eq!(*applier.groups.get(tenant).leader_elected_at.lock(), elected);
        applier.on_leader_change(raft_log::GroupId(DEFAULT_GROUP), raft_log::NodeId(3), raft_log::Term(2));
        assert!(applier.groups.get(DEFAULT_GROUP).leader_elected_at.lock().is_some());
    }

    #[test]
    fn a_revoke_applied_on_a_follower_drops_the_lease_timer() {
        use raft_log::StateMachine;
        let dir = tempfile::tempdir().unwrap();
        let (mut applier, lessor) = applier(dir.path(), 3);
        let g = raft_log::GroupId(DEFAULT_GROUP);
        let grant = |id| store::CommandBody::LeaseGrant(store::LeaseGrantRequest { id, ttl: 100 });
        let revoke = |id| store::CommandBody::LeaseRevoke(store::LeaseRevokeRequest { id });
        applier.apply(g, vec![entry(1, grant(7)), entry(2, grant(8))]);
        assert_eq!(lessor.keep_alive(7), Some(100), "an applied grant starts a timer on every member");
        // Revoked through another member: this member learns of it only from the log.
        applier.apply(g, vec![entry(3, revoke(7))]);
        assert_eq!(lessor.keep_alive(7), None, "the revoked lease still has a timer on this member");
        assert_eq!(lessor.remaining_seconds(7), None);
        assert_eq!(lessor.keep_alive(8), Some(100), "other leases keep theirs");
        // A revoke of a lease this member never heard of is harmless.
        applier.apply(g, vec![entry(4, revoke(99))]);
        assert_eq!(lessor.keep_alive(8), Some(100));
    }

    #[test]
    fn a_new_leader_takes_its_lease_timers_from_the_store() {
        use raft_log::StateMachine;
        let dir = tempfile::tempdir().unwrap();
        let (mut applier, lessor) = applier(dir.path(), 3);
        let g = raft_log::GroupId(DEFAULT_GROUP);
        applier.apply(g, vec![entry(1, store::CommandBody::LeaseGrant(store::LeaseGrantRequest { id: 5, ttl: 60 }))]);
        // A timer the store does not back (e.g. left over from before a snapshot or a
        // missed revoke) must not survive this member becoming leader.
        lessor.on_granted(6, 60);
        applier.on_leader_change(g, raft_log::NodeId(3), raft_log::Term(2));
        assert_eq!(lessor.keep_alive(6), None, "a lease missing from the store kept its timer on the new leader");
        assert_eq!(lessor.keep_alive(5), Some(60), "the store's leases are timed by the new leader");
    }

    #[test]
    fn members_whose_low_16_bits_match_never_answer_each_others_waiters() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (0x1111_0000_0000_0001_u64, 0x2222_0000_0000_0001_u64);
        assert_eq!(a & 0xffff, b & 0xffff, "the two members share their low 16 bits");
        let (membership, store) = membership(dir.path(), a, &[b]);
        let groups = Groups::new(store.clone(), 1);
        let waiters = groups.get(DEFAULT_GROUP).waiters.clone();
        let mut applier = Applier {
            store,
            groups,
            metrics: Arc::new(Metrics::new("3.5.1", a)),
            membership,
            registry_changed: Arc::default(),
            lease_promote_extend: std::time::Duration::from_secs(1),
        };
        // Both members are at the same point of their counters (e.g. started the same ms).
        let counter = 0x42;
        let (id_a, id_b) = (request_id(a, counter), request_id(b, counter));
        let (tx, mut rx) = oneshot::channel();
        waiters.insert(id_a, tx).unwrap();
        let put = |value: &'static str| store::Command {
            request_id: 0,
            body: Some(store::CommandBody::Put(store::PutRequest {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(value.as_bytes()),
                ..Default::default()
            })),
        };
        let entry = |index: u64, proposer: u64, id: u64, command: store::Command| raft_log::CommittedEntry {
            index: raft_log::LogIndex(index),
            term: raft_log::Term(2),
            data: encode_proposal(proposer, id, &command, command.encoded_len()),
        };
        use raft_log::StateMachine;
        let g = raft_log::GroupId(DEFAULT_GROUP);
        applier.apply(g, vec![entry(1, b, id_b, put("from b"))]);
        assert!(
            matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "member a's waiter was answered by an entry member b proposed"
        );
        applier.apply(g, vec![entry(2, a, id_a, put("from a"))]);
        let answer = rx.try_recv().expect("a's own entry answers a's waiter");
        assert!(answer.is_ok());
    }
}
