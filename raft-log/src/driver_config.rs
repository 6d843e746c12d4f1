//! Configuration of the Raft driver.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::types::NodeId;

/// Configuration of a [`crate::Driver`]. Every field documents its default.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// This node's id in every group (non-zero). Default: 1.
    pub node_id: NodeId,
    /// Time between Raft ticks. Default: 100 ms.
    pub tick_interval: Duration,
    /// Ticks without a heartbeat before a follower campaigns. Default: 10.
    pub election_ticks: usize,
    /// Upper bound (exclusive) of the randomized election timeout: raft-rs draws each
    /// timeout from `[election_ticks, election_ticks_max)` with its own unseeded random
    /// generator. 0 = `2 * election_ticks`. `election_ticks + 1` makes the timeout fixed,
    /// which a deterministic simulation needs (it randomizes by skewing ticks instead).
    /// Default: 0.
    pub election_ticks_max: usize,
    /// Ticks between leader heartbeats. Default: 1.
    pub heartbeat_ticks: usize,
    /// Most in-flight append messages per follower. Default: 256.
    pub max_inflight: usize,
    /// Most bytes of entries in one append message. Default: 1 MiB.
    pub max_size_per_msg: u64,
    /// Capacity of the driver's inbox (proposals, raft messages, read-index requests,
    /// admin requests); when full, `propose`/`step`/`read_index` fail with `Busy`.
    /// Default: 4096.
    pub proposal_queue_max: usize,
    /// Most read-index requests waiting for a read point across all groups; more fail
    /// with `Busy`. Default: 4096.
    pub read_index_pending_max: usize,
    /// How long a read-index request may wait before failing with `Timeout`.
    /// Default: 3 s.
    pub read_index_timeout: Duration,
    /// Use Raft's pre-vote phase. Default: true.
    pub pre_vote: bool,
    /// Leaders step down when they lose contact with a quorum. Default: true.
    pub check_quorum: bool,
    /// Most groups this driver hosts. Default: 65536.
    pub groups_max: usize,
    /// Ticks without activity after which a leader whose followers are caught up puts its
    /// group to sleep (no ticks, no heartbeats, on every member) until a proposal, read or
    /// peer message wakes it; 0 = never (every group ticks every tick). See the crate's
    /// "Hibernation" section. Must be 0 or more than `heartbeat_ticks`, so that a heartbeat
    /// round tells the followers the commit index before the group sleeps.
    /// Default: 20 (twice the default `election_ticks`).
    pub hibernate_after_ticks: usize,
    /// Pipelined persistence: while the WAL writes and syncs one pass's entries, the driver
    /// goes on taking proposals and messages and builds the next pass (raft-rs's asynchronous
    /// Ready, see `ready.rs`); append answers, votes and applies still wait for their own
    /// sync. A pass with nothing else waiting still writes on the driver thread and waits, which
    /// saves a lone write two thread hand-offs. false: every pass waits for its sync.
    /// Default: true.
    pub pipeline_persistence: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            node_id: NodeId(1),
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            election_ticks_max: 0,
            heartbeat_ticks: 1,
            max_inflight: 256,
            max_size_per_msg: 1 << 20,
            proposal_queue_max: 4096,
            read_index_pending_max: 4096,
            read_index_timeout: Duration::from_secs(3),
            pre_vote: true,
            check_quorum: true,
            groups_max: 65536,
            hibernate_after_ticks: 20,
            pipeline_persistence: true,
        }
    }
}

impl DriverConfig {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: &str| Err(Error::Config(s.to_string()));
        if self.node_id.0 == 0 {
            return bad("node_id must not be 0");
        }
        if self.tick_interval.is_zero() || self.tick_interval > Duration::from_secs(60) {
            return bad("tick_interval must be in (0, 60s]");
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return bad("need 0 < heartbeat_ticks < election_ticks");
        }
        if self.election_ticks_max != 0 && self.election_ticks_max <= self.election_ticks {
            return bad("election_ticks_max must be 0 or greater than election_ticks");
        }
        if self.max_inflight == 0 || self.max_size_per_msg == 0 {
            return bad("max_inflight and max_size_per_msg must be positive");
        }
        if self.proposal_queue_max == 0 || self.proposal_queue_max > 1 << 20 {
            return bad("proposal_queue_max must be in 1..=1048576");
        }
        if self.read_index_pending_max == 0 || self.read_index_pending_max > 1 << 20 {
            return bad("read_index_pending_max must be in 1..=1048576");
        }
        if self.read_index_timeout.is_zero() {
            return bad("read_index_timeout must be positive");
        }
        if self.groups_max == 0 {
            return bad("groups_max must be positive");
        }
        if self.hibernate_after_ticks != 0 && self.hibernate_after_ticks <= self.heartbeat_ticks {
            return bad("hibernate_after_ticks must be 0 or greater than heartbeat_ticks");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_do_not() {
        let c = DriverConfig::default();
        c.validate().unwrap();
        assert!(DriverConfig { node_id: NodeId(0), ..c.clone() }.validate().is_err());
        assert!(DriverConfig { election_ticks: 1, ..c.clone() }.validate().is_err());
        assert!(DriverConfig { election_ticks_max: 10, ..c.clone() }.validate().is_err());
        DriverConfig { election_ticks_max: 11, ..c.clone() }.validate().unwrap();
        assert!(DriverConfig { proposal_queue_max: 0, ..c.clone() }.validate().is_err());
        assert!(DriverConfig { hibernate_after_ticks: 1, ..c.clone() }.validate().is_err());
        DriverConfig { hibernate_after_ticks: 0, ..c }.validate().unwrap();
    }
}
