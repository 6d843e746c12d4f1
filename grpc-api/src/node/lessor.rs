//! Lease timing. The store replicates lease state (grant, attached keys, revoke); when a
//! lease expires is decided here, on the leader only, which then proposes the revoke so the
//! attached keys are deleted through the log like any other write.
//!
//! Deadlines live in memory. Every member's lessor follows the log: an applied grant starts
//! a timer and an applied revoke (a client's through any member, or an expiry) ends it, so a
//! follower never keeps a lease the cluster revoked. A member that becomes leader (including
//! at start-up) rebuilds its timers from the store's lease table, the truth, each with its
//! full TTL, before expiring anything: a leader change never expires a lease early (etcd's
//! `Promote`) and never revives one the store no longer holds.

use std::time::{Duration, Instant};

use foldhash::{HashMap, HashSet};
use parking_lot::Mutex;

/// Most revokes proposed per expiry pass, so a mass expiry cannot flood the log at once.
pub const EXPIRE_BATCH_MAX: usize = 64;

/// etcd's largest TTL.
pub const TTL_MAX_SECONDS: i64 = 9_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Timer {
    ttl_seconds: i64,
    expiry: Instant,
}

#[derive(Default)]
struct State {
    timers: HashMap<i64, Timer>,
    /// Leases whose revoke is proposed and not yet applied.
    revoking: HashSet<i64>,
}

/// Deadlines of the leases of one group.
pub struct Lessor {
    state: Mutex<State>,
    /// Smallest TTL granted: etcd's `1.5 × election timeout`, rounded up to whole seconds.
    pub min_ttl_seconds: i64,
}

impl Lessor {
    /// A lessor granting at least `min_ttl_seconds`.
    pub fn new(min_ttl_seconds: i64) -> Lessor {
        assert!(min_ttl_seconds > 0, "the minimum lease TTL must be positive");
        Lessor { state: Mutex::default(), min_ttl_seconds }
    }

    /// The TTL a grant of `requested` seconds receives.
    pub fn granted_ttl(&self, requested: i64) -> i64 {
        requested.max(self.min_ttl_seconds)
    }

    /// Records a lease as granted (or found at start-up) with a full TTL from now.
    pub fn on_granted(&self, id: i64, ttl_seconds: i64) {
        let expiry = deadline(ttl_seconds);
        self.state.lock().timers.insert(id, Timer { ttl_seconds, expiry });
    }

    /// Forgets a revoked lease.
    pub fn on_revoked(&self, id: i64) {
        let mut state = self.state.lock();
        state.timers.remove(&id);
        state.revoking.remove(&id);
    }

    /// Applies what an applied command (`command`, its encoded `store::Command`) means for
    /// lease timing; called by every member for every entry, in log order. A grant starts a
    /// timer; a revoke ends it; a command that found its lease missing from the store ends
    /// that lease's timer too, since the store's lease table is the truth.
    pub fn on_applied(&self, command: &[u8], result: &crate::node::ApplyResult) {
        match result {
            Ok(store::CommandResponse::LeaseGrant(r)) => self.on_granted(r.id, r.ttl),
            Ok(store::CommandResponse::LeaseRevoke(_)) => {
                // A revoke response does not name its lease; the command does. Only revokes
                // are decoded again, so other entries cost nothing here. A revoke checked
                // against the auth store is wrapped (`Checked`): its inner body names it.
                if let Ok(cmd) = store::Command::decode_entry(command) {
                    if let Some(store::CommandBody::LeaseRevoke(r)) = cmd.plain_body() {
                        self.on_revoked(r.id);
                    }
                }
            }
            Err(store::Error::LeaseNotFound(id)) => self.on_revoked(*id),
            // An import began: the group's leases are gone until it finishes (the applier
            // then resets the timers from the store's lease table).
            Ok(store::CommandResponse::Import(r)) if r.began => self.reset(std::iter::empty()),
            _ => {}
        }
    }

    /// The leases this lessor times, in id order (for checks that it follows the store).
    pub fn lease_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.state.lock().timers.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Orders `ids` as etcd's `LeaseLeases` lists its lessor's leases: soonest expiry first.
    /// Leases of equal expiry are in id order, and leases this lessor does not time last.
    pub fn sort_by_expiry(&self, ids: &mut [i64]) {
        let state = self.state.lock();
        ids.sort_unstable_by_key(|id| {
            let expiry = state.timers.get(id).map(|t| t.expiry);
            (expiry.is_none(), expiry, *id)
        });
    }

    /// Renews a lease for its full TTL; `None` if it is unknown (or already expiring).
    pub fn keep_alive(&self, id: i64) -> Option<i64> {
        let mut state = self.state.lock();
        if state.revoking.contains(&id) {
            return None;
        }
        let timer = state.timers.get_mut(&id)?;
        timer.expiry = deadline(timer.ttl_seconds);
        Some(timer.ttl_seconds)
    }

    /// Whole seconds until the lease expires, rounded down as etcd's `LeaseTimeToLive`
    /// truncates them (60 s granted read at once: 59); `None` if unknown.
    pub fn remaining_seconds(&self, id: i64) -> Option<i64> {
        let state = self.state.lock();
        let timer = state.timers.get(&id)?;
        let left = timer.expiry.saturating_duration_since(Instant::now());
        Some(left.as_secs() as i64)
    }

    /// Replaces every timer with `leases` (id, TTL), each given a full TTL from now: after a
    /// snapshot replaced the store's leases, and when this member becomes leader.
    pub fn reset(&self, leases: impl IntoIterator<Item = (i64, i64)>) {
        self.promote(leases, Duration::ZERO);
    }

    /// [`reset`](Self::reset) for a member that just became leader: every lease gets its
    /// full TTL plus `extend` (etcd's `Promote` with the election timeout, so a lease whose
    /// keep-alives were going to the old leader has time to find the new one).
    pub fn promote(&self, leases: impl IntoIterator<Item = (i64, i64)>, extend: Duration) {
        let mut state = self.state.lock();
        state.timers.clear();
        state.revoking.clear();
        for (id, ttl_seconds) in leases {
            state.timers.insert(id, Timer { ttl_seconds, expiry: deadline(ttl_seconds) + extend });
        }
    }

    /// Replaces every timer with `leases` (id, TTL, seconds left), each expiring after its
    /// seconds left (its full TTL when that is 0): after an import, whose lease records
    /// carry the time their source had left (a migration's etcd, a backup's checkpoint), as
    /// etcd's lessor recovers a checkpointed lease. Renewals then give the full TTL.
    pub fn reset_remaining(&self, leases: impl IntoIterator<Item = (i64, i64, i64)>) {
        let mut state = self.state.lock();
        state.timers.clear();
        state.revoking.clear();
        for (id, ttl_seconds, left) in leases {
            let first = if left > 0 { left } else { ttl_seconds };
            state.timers.insert(id, Timer { ttl_seconds, expiry: deadline(first) });
        }
    }

    /// Gives every lease a full TTL from now and forgets revokes in flight: called on a
    /// leader change that did not make this member leader (a new leader calls `reset` with
    /// the store's leases instead).
    pub fn on_leader_change(&self) {
        let mut state = self.state.lock();
        for timer in state.timers.values_mut() {
            timer.expiry = deadline(timer.ttl_seconds);
        }
        state.revoking.clear();
    }

    /// Whether no lease is timed (most tenants' groups, most of the time): the expiry loop
    /// then skips the group without asking who leads it.
    pub fn is_empty(&self) -> bool {
        self.state.lock().timers.is_empty()
    }

    /// Expired leases not yet being revoked, at most `EXPIRE_BATCH_MAX`; they are marked as
    /// being revoked until `on_revoked` or `revoke_failed`.
    pub fn take_expired(&self) -> Vec<i64> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let expired: Vec<i64> = state
            .timers
            .iter()
            .filter(|(id, t)| t.expiry <= now && !state.revoking.contains(id))
            .map(|(id, _)| *id)
            .take(EXPIRE_BATCH_MAX)
            .collect();
        state.revoking.extend(expired.iter().copied());
        expired
    }

    /// A proposed revoke did not apply (e.g. leadership moved); it may be retried.
    pub fn revoke_failed(&self, id: i64) {
        self.state.lock().revoking.remove(&id);
    }
}

fn deadline(ttl_seconds: i64) -> Instant {
    let ttl = Duration::from_secs(ttl_seconds.clamp(0, TTL_MAX_SECONDS) as u64);
    Instant::now().checked_add(ttl).unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 40))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_keepalive_and_revoke() {
        let lessor = Lessor::new(2);
        assert_eq!(lessor.granted_ttl(1), 2);
        assert_eq!(lessor.granted_ttl(60), 60);
        lessor.on_granted(7, 0);
        lessor.on_granted(8, 100);
        assert_eq!(lessor.take_expired(), vec![7]);
        assert!(lessor.take_expired().is_empty(), "a lease being revoked is not handed out twice");
        assert_eq!(lessor.keep_alive(7), None, "an expiring lease cannot be renewed");
        lessor.revoke_failed(7);
        assert_eq!(lessor.take_expired(), vec![7]);
        lessor.on_revoked(7);
        assert_eq!(lessor.keep_alive(7), None);
        assert_eq!(lessor.keep_alive(8), Some(100));
        let left = lessor.remaining_seconds(8).unwrap();
        assert!((99..=100).contains(&left), "{left}");
    }

    /// `LeaseLeases` lists leases soonest expiry first, as etcd's lessor (its order for
    /// these grants, seen with etcd 3.5.1), and a renewal moves a lease back.
    #[test]
    fn leases_are_listed_by_expiry() {
        let lessor = Lessor::new(2);
        for (id, ttl) in [(50, 300), (10, 100), (40, 200), (20, 400), (30, 100)] {
            lessor.on_granted(id, ttl);
        }
        let mut ids = vec![99, 10, 20, 30, 40, 50];
        lessor.sort_by_expiry(&mut ids);
        assert_eq!(ids, vec![10, 30, 40, 50, 20, 99], "an untimed lease goes last");
        assert_eq!(lessor.keep_alive(10), Some(100));
        lessor.sort_by_expiry(&mut ids);
        assert_eq!(ids, vec![30, 10, 40, 50, 20, 99]);
    }

    /// etcd truncates the time left: a lease of 60 s read right after its grant has 59.
    #[test]
    fn time_left_is_rounded_down_as_etcds() {
        let lessor = Lessor::new(2);
        lessor.on_granted(9, 60);
        assert_eq!(lessor.remaining_seconds(9), Some(59));
    }

    /// After an import, a lease first expires after the time its source had left, and a
    /// renewal gives it its whole TTL again.
    #[test]
    fn leases_after_an_import_keep_the_time_they_had_left() {
        let lessor = Lessor::new(2);
        lessor.on_granted(1, 100);
        lessor.reset_remaining([(5, 600, 30), (6, 60, 0)]);
        assert_eq!(lessor.remaining_seconds(1), None, "the timers before the import are gone");
        let left = lessor.remaining_seconds(5).unwrap();
        assert!((29..=30).contains(&left), "{left}");
        assert!((59..=60).contains(&lessor.remaining_seconds(6).unwrap()));
        assert_eq!(lessor.keep_alive(5), Some(600));
        assert!(lessor.remaining_seconds(5).unwrap() > 590);
    }

    /// A revoke proposed with auth enabled is wrapped with its auth revision; applying it
    /// must still drop the lease's timer.
    #[test]
    fn a_permission_checked_revoke_drops_the_timer() {
        use store::Message;
        let lessor = Lessor::new(2);
        lessor.on_granted(7, 100);
        let revoke = store::CommandBody::LeaseRevoke(store::LeaseRevokeRequest { id: 7 });
        let checked = store::CommandBody::Checked(Box::new(store::CheckedCommand {
            auth_revision: 3,
            command: Some(Box::new(store::Command::new(0, revoke))),
        }));
        let entry = store::Command::new(1, checked).encode_to_vec();
        let applied = Ok(store::CommandResponse::LeaseRevoke(store::LeaseRevokeResponse { revision: 2 }));
        lessor.on_applied(&entry, &applied);
        assert_eq!(lessor.keep_alive(7), None, "the revoked lease kept its timer");
    }

    #[test]
    fn a_new_leader_adds_the_election_timeout_to_every_lease() {
        let lessor = Lessor::new(2);
        lessor.promote([(7, 5)], Duration::from_secs(1));
        // Five seconds of TTL and one of extension: whole seconds left, rounded down, as etcd
        // reports them, are 5 right after the promotion (4 without the extension).
        assert_eq!(lessor.remaining_seconds(7), Some(5));
    }
}
