//! The one error type of the crate, and its conversion into `raft::Error` for the
//! `raft::Storage` implementation.

use std::path::PathBuf;

use raft::StorageError;

use crate::types::{GroupId, LogIndex, NodeId};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the WAL and the driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error other than a failed fsync (a failed fsync panics: see the crate docs).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The WAL holds bytes that cannot be trusted at a place where a torn tail is impossible.
    #[error("corruption in {file:?} at offset {offset}: {reason}")]
    Corruption {
        /// The segment (or directory) holding the bad bytes.
        file: PathBuf,
        /// Byte offset of the bad header or frame in `file`.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// The requested entries were compacted away.
    #[error("requested log entries are compacted")]
    Compacted,
    /// The requested entries do not exist yet.
    #[error("requested log entries are unavailable")]
    Unavailable,
    /// No such group on this node.
    #[error("raft group {0} not found")]
    GroupNotFound(GroupId),
    /// This node is not the leader of the group and the operation needs the leader.
    #[error("not the leader")]
    NotLeader,
    /// No leader of the group is known to this node (an election is under way, or this
    /// node is cut off from a quorum); nothing was proposed.
    #[error("no leader")]
    NoLeader,
    /// Leadership cannot be handed to this node: it is not a voter of the group (unknown,
    /// or a learner).
    #[error("node {0} cannot become the leader: not a voter of the group")]
    BadLeaderTransferee(NodeId),
    /// A bounded queue is full; retry later.
    #[error("queue is full")]
    Busy,
    /// The WAL writer or the driver has stopped.
    #[error("stopped")]
    Stopped,
    /// Raft dropped the proposal (for example during a leadership transfer).
    #[error("proposal dropped")]
    ProposalDropped,
    /// A write batch would break the log: a gap after the last index, or a snapshot older
    /// than the compacted prefix.
    #[error("invalid append to group {group}: {reason}")]
    InvalidAppend {
        /// The group the bad record was for.
        group: GroupId,
        /// What was wrong.
        reason: String,
    },
    /// A write batch is larger than one frame may be.
    #[error("write batch of {bytes} bytes exceeds the maximum of {max} bytes")]
    BatchTooLarge {
        /// Encoded size of the batch.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The state machine's applied index is below what the WAL still holds.
    #[error("group {group}: applied index {applied} is below the compacted log (first index {first})")]
    AppliedCompacted {
        /// The group.
        group: GroupId,
        /// What the state machine reported.
        applied: LogIndex,
        /// The first index still in the log.
        first: LogIndex,
    },
    /// A request (such as a read index) did not complete in time; retry.
    #[error("timed out")]
    Timeout,
    /// An error from raft-rs itself.
    #[error("raft: {0}")]
    Raft(String),
}

impl From<Error> for raft::Error {
    fn from(e: Error) -> raft::Error {
        match e {
            Error::Compacted => raft::Error::Store(StorageError::Compacted),
            Error::Unavailable => raft::Error::Store(StorageError::Unavailable),
            Error::Io(io) => raft::Error::Io(io),
            other => raft::Error::Store(StorageError::Other(Box::new(other))),
        }
    }
}

impl From<raft::Error> for Error {
    fn from(e: raft::Error) -> Error {
        match e {
            raft::Error::ProposalDropped => Error::ProposalDropped,
            raft::Error::Store(StorageError::Compacted) => Error::Compacted,
            raft::Error::Store(StorageError::Unavailable) => Error::Unavailable,
            other => Error::Raft(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_map_exactly() {
        assert_eq!(raft::Error::from(Error::Compacted), raft::Error::Store(StorageError::Compacted));
        assert_eq!(raft::Error::from(Error::Unavailable), raft::Error::Store(StorageError::Unavailable));
        let corrupt =
            raft::Error::from(Error::Corruption { file: PathBuf::from("x.wal"), offset: 3, reason: "bad".into() });
        assert!(matches!(corrupt, raft::Error::Store(StorageError::Other(_))));
        assert!(matches!(Error::from(raft::Error::ProposalDropped), Error::ProposalDropped));
    }
}
