//! The one place where failures become client-visible gRPC statuses.
//!
//! The Go client maps errors back to typed values by their exact message text, and
//! kube-apiserver compares those values by identity, so every message here is etcd's
//! byte for byte, with etcd's gRPC code.

use tonic::{Code, Status};

/// etcd's client-visible errors, by the name etcd gives them (`ErrGRPC...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdError {
    EmptyKey,
    KeyNotFound,
    ValueProvided,
    LeaseProvided,
    TooManyOps,
    DuplicateKey,
    InvalidSortOption,
    Compacted,
    FutureRev,
    NoSpace,
    LeaseNotFound,
    LeaseExist,
    LeaseTtlTooLarge,
    RequestTooLarge,
    TooManyRequests,
    NoLeader,
    NotLeader,
    LeaderChanged,
    Stopped,
    Timeout,
    TimeoutDueToLeaderFail,
    TimeoutDueToConnectionLost,
    /// A leader could not apply what it knows committed in time before a lease renewal or
    /// time-to-live (etcd's `waitAppliedIndex`).
    TimeoutWaitAppliedIndex,
    /// A wait that ended at its context's deadline where etcd returns the context's error:
    /// a write while no leader is known, a linearizable read at the client's deadline
    /// (`grpc-timeout`, see `node::deadline`). etcd 3.5.1's gRPC server sends a plain
    /// error as `Unknown` with its text.
    ContextDeadline,
    Corrupt,
    MemberNotFound,
    MemberNotLearner,
    LearnerNotReady,
    TooManyLearners,
    /// etcd's strict reconfiguration check refused a member change. etcd 3.5.1's error map
    /// turns this one into its client-side error value rather than a gRPC status, so gRPC
    /// sends it as `Unknown` with the text (seen with etcdctl against etcd 3.5.1); Plinth's
    /// code is the same.
    NotEnoughStartedMembers,
    NotSupportedForLearner,
    Unhealthy,
    MemberBadUrls,
    MemberExist,
    PeerUrlExist,
    NotCapable,
    WrongDowngradeVersionFormat,
    InvalidDowngradeTargetVersion,
    NoInflightDowngrade,
    BadLeaderTransferee,
    /// `MoveLeader` waited too long for the target to lead. etcd has no gRPC error for it
    /// (its `togRPCError` falls back to `Unknown` with the text), so neither does Plinth.
    TimeoutLeaderTransfer,
    WatchCanceled,
    RootUserNotExist,
    RootRoleNotExist,
    UserAlreadyExist,
    UserEmpty,
    UserNotFound,
    RoleAlreadyExist,
    RoleNotFound,
    RoleEmpty,
    AuthFailed,
    PermissionNotGiven,
    PermissionDenied,
    RoleNotGranted,
    PermissionNotGranted,
    AuthNotEnabled,
    InvalidAuthToken,
    InvalidAuthMgmt,
    AuthOldRevision,
    /// A request to a tenant whose data an import is replacing (`plinth tenant restore`,
    /// `plinth migrate`). etcd has no such state; Plinth answers as etcd does for a member
    /// that cannot serve for now (`Unavailable`, which clients retry), in etcd's style.
    Restoring,
    /// `Authenticate` of a `no_password` user. etcd 3.5 has no gRPC error for it, so its
    /// client sees `Unknown` with the auth store's text; so does Plinth's.
    NoPasswordUser,
}

impl EtcdError {
    /// etcd's gRPC code for this error.
    pub fn code(self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey
            | KeyNotFound
            | ValueProvided
            | LeaseProvided
            | TooManyOps
            | DuplicateKey
            | InvalidSortOption
            | RequestTooLarge
            | MemberBadUrls
            | UserEmpty
            | RoleEmpty
            | AuthFailed
            | PermissionNotGiven
            | InvalidAuthMgmt
            | AuthOldRevision
            | WrongDowngradeVersionFormat
            | InvalidDowngradeTargetVersion => Code::InvalidArgument,
            RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound | RoleAlreadyExist | RoleNotFound
            | RoleNotGranted | PermissionNotGranted | AuthNotEnabled => Code::FailedPrecondition,
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            NoSpace | TooManyRequests => Code::ResourceExhausted,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExist | NotLeader | MemberNotLearner | LearnerNotReady | TooManyLearners | MemberExist
            | PeerUrlExist | NotCapable | NoInflightDowngrade | BadLeaderTransferee => Code::FailedPrecondition,
            NoLeader
            | NotSupportedForLearner
            | LeaderChanged
            | Stopped
            | Timeout
            | TimeoutDueToLeaderFail
            | TimeoutDueToConnectionLost
            | TimeoutWaitAppliedIndex
            | Unhealthy
            | Restoring => Code::Unavailable,
            Corrupt => Code::DataLoss,
            WatchCanceled => Code::Cancelled,
            TimeoutLeaderTransfer | NoPasswordUser | ContextDeadline | NotEnoughStartedMembers => Code::Unknown,
        }
    }

    /// etcd's exact message for this error.
    pub fn message(self) -> &'static str {
        use EtcdError::*;
        match self {
            EmptyKey => "etcdserver: key is not provided",
            KeyNotFound => "etcdserver: key not found",
            ValueProvided => "etcdserver: value is provided",
            LeaseProvided => "etcdserver: lease is provided",
            TooManyOps => "etcdserver: too many operations in txn request",
            DuplicateKey => "etcdserver: duplicate key given in txn request",
            InvalidSortOption => "etcdserver: invalid sort option",
            Compacted => "etcdserver: mvcc: required revision has been compacted",
            FutureRev => "etcdserver: mvcc: required revision is a future revision",
            NoSpace => "etcdserver: mvcc: database space exceeded",
            LeaseNotFound => "etcdserver: requested lease not found",
            LeaseExist => "etcdserver: lease already exists",
            LeaseTtlTooLarge => "etcdserver: too large lease TTL",
            RequestTooLarge => "etcdserver: request is too large",
            TooManyRequests => "etcdserver: too many requests",
            NoLeader => "etcdserver: no leader",
            NotLeader => "etcdserver: not leader",
            LeaderChanged => "etcdserver: leader changed",
            Stopped => "etcdserver: server stopped",
            Timeout => "etcdserver: request timed out",
            TimeoutDueToLeaderFail => "etcdserver: request timed out, possibly due to previous leader failure",
            TimeoutDueToConnectionLost => "etcdserver: request timed out, possibly due to connection lost",
            TimeoutWaitAppliedIndex => "etcdserver: request timed out, waiting for the applied index took too long",
            ContextDeadline => "context deadline exceeded",
            Corrupt => "etcdserver: corrupt cluster",
            MemberNotFound => "etcdserver: member not found",
            MemberNotLearner => "etcdserver: can only promote a learner member",
            LearnerNotReady => "etcdserver: can only promote a learner member which is in sync with leader",
            TooManyLearners => "etcdserver: too many learner members in cluster",
            NotEnoughStartedMembers => "etcdserver: re-configuration failed due to not enough started members",
            NotSupportedForLearner => "etcdserver: rpc not supported for learner",
            Unhealthy => "etcdserver: unhealthy cluster",
            MemberBadUrls => "etcdserver: given member URLs are invalid",
            // sic: etcd's text ends without an "s".
            MemberExist => "etcdserver: member ID already exist",
            PeerUrlExist => "etcdserver: Peer URLs already exists",
            NotCapable => "etcdserver: not capable",
            WrongDowngradeVersionFormat => "etcdserver: wrong downgrade target version format",
            InvalidDowngradeTargetVersion => "etcdserver: invalid downgrade target version",
            NoInflightDowngrade => "etcdserver: no inflight downgrade job",
            BadLeaderTransferee => "etcdserver: bad leader transferee",
            TimeoutLeaderTransfer => "etcdserver: request timed out, leader transfer took too long",
            WatchCanceled => "etcdserver: watch canceled",
            RootUserNotExist => "etcdserver: root user does not exist",
            RootRoleNotExist => "etcdserver: root user does not have root role",
            UserAlreadyExist => "etcdserver: user name already exists",
            UserEmpty => "etcdserver: user name is empty",
            UserNotFound => "etcdserver: user name not found",
            RoleAlreadyExist => "etcdserver: role name already exists",
            RoleNotFound => "etcdserver: role name not found",
            RoleEmpty => "etcdserver: role name is empty",
            AuthFailed => "etcdserver: authentication failed, invalid user ID or password",
            PermissionNotGiven => "etcdserver: permission not given",
            PermissionDenied => "etcdserver: permission denied",
            RoleNotGranted => "etcdserver: role is not granted to the user",
            PermissionNotGranted => "etcdserver: permission is not granted to the role",
            AuthNotEnabled => "etcdserver: authentication is not enabled",
            InvalidAuthToken => "etcdserver: invalid auth token",
            InvalidAuthMgmt => "etcdserver: invalid auth management",
            AuthOldRevision => "etcdserver: revision of auth store is old",
            NoPasswordUser => "auth: authentication failed, password was given for no password user",
            Restoring => "etcdserver: tenant is being restored",
        }
    }

    /// The gRPC status a client receives.
    pub fn status(self) -> Status {
        Status::new(self.code(), self.message())
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        e.status()
    }
}

/// Maps a store error to etcd's status. Errors with no etcd equivalent (I/O) become
/// `Unknown` with their text, as etcd does for unexpected errors.
pub fn store_status(e: &store::Error) -> Status {
    match store_error(e) {
        Some(known) => known.status(),
        None => Status::new(Code::Unknown, e.to_string()),
    }
}

/// The etcd error a store error stands for, if any.
pub fn store_error(e: &store::Error) -> Option<EtcdError> {
    use store::Error as S;
    Some(match e {
        S::Compacted { .. } => EtcdError::Compacted,
        S::FutureRevision { .. } => EtcdError::FutureRev,
        S::LeaseNotFound(_) => EtcdError::LeaseNotFound,
        S::LeaseExists(_) => EtcdError::LeaseExist,
        S::LeaseTtlTooLarge => EtcdError::LeaseTtlTooLarge,
        S::KeyNotFound => EtcdError::KeyNotFound,
        S::ValueProvided => EtcdError::ValueProvided,
        S::LeaseProvided => EtcdError::LeaseProvided,
        S::EmptyKey => EtcdError::EmptyKey,
        S::TooManyOps => EtcdError::TooManyOps,
        S::DuplicateKey => EtcdError::DuplicateKey,
        S::InvalidSortOption => EtcdError::InvalidSortOption,
        S::RequestTooLarge => EtcdError::RequestTooLarge,
        S::NoSpace => EtcdError::NoSpace,
        S::Corrupt => EtcdError::Corrupt,
        S::AuthUserEmpty => EtcdError::UserEmpty,
        S::AuthUserNotFound => EtcdError::UserNotFound,
        S::AuthUserAlreadyExists => EtcdError::UserAlreadyExist,
        S::AuthRoleEmpty => EtcdError::RoleEmpty,
        S::AuthRoleNotFound => EtcdError::RoleNotFound,
        S::AuthRoleAlreadyExists => EtcdError::RoleAlreadyExist,
        S::AuthRoleNotGranted => EtcdError::RoleNotGranted,
        S::AuthPermissionNotGranted => EtcdError::PermissionNotGranted,
        S::AuthPermissionNotGiven => EtcdError::PermissionNotGiven,
        S::AuthRootUserNotExist => EtcdError::RootUserNotExist,
        S::AuthRootRoleNotExist => EtcdError::RootRoleNotExist,
        S::AuthNotEnabled => EtcdError::AuthNotEnabled,
        S::AuthFailed => EtcdError::AuthFailed,
        S::AuthPermissionDenied => EtcdError::PermissionDenied,
        S::AuthInvalidMgmt => EtcdError::InvalidAuthMgmt,
        S::AuthOldRevision => EtcdError::AuthOldRevision,
        S::Importing => EtcdError::Restoring,
        _ => return None,
    })
}

/// An auth refusal as etcd 3.5's maintenance RPCs (Defragment, Hash, HashKV, Snapshot)
/// return it: the auth store's own error, not mapped to a gRPC error, so the client sees
/// `Unknown` with the `auth:` text. Other errors map as usual.
pub fn unmapped_auth_status(e: &store::Error) -> Status {
    use store::Error as S;
    let text = match e {
        S::AuthPermissionDenied => "auth: permission denied",
        S::AuthUserEmpty => "auth: user name is empty",
        S::AuthOldRevision => "auth: revision in header is old",
        other => return store_status(other),
    };
    Status::new(Code::Unknown, text)
}

/// [`unmapped_auth_status`] for a token this member does not know.
pub fn unmapped_invalid_token() -> Status {
    Status::new(Code::Unknown, "auth: invalid auth token")
}

/// Maps a raft-log error met while proposing or reading to etcd's status.
pub fn raft_status(e: &raft_log::Error) -> Status {
    use raft_log::Error as R;
    match e {
        R::NotLeader => EtcdError::NotLeader.status(),
        R::Busy => EtcdError::TooManyRequests.status(),
        R::Stopped => EtcdError::Stopped.status(),
        R::ProposalDropped => EtcdError::LeaderChanged.status(),
        R::Unavailable => EtcdError::NoLeader.status(),
        other => Status::new(Code::Unknown, other.to_string()),
    }
}

/// Maps the outcome of a leader transfer (`MoveLeader`) to etcd's status.
pub fn move_leader_status(e: &raft_log::Error) -> Status {
    use raft_log::Error as R;
    match e {
        R::NotLeader => EtcdError::NotLeader.status(),
        R::BadLeaderTransferee(_) => EtcdError::BadLeaderTransferee.status(),
        R::Timeout => EtcdError::TimeoutLeaderTransfer.status(),
        other => raft_status(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_etcds() {
        assert_eq!(EtcdError::Compacted.status().message(), "etcdserver: mvcc: required revision has been compacted");
        assert_eq!(EtcdError::Compacted.code(), Code::OutOfRange);
        assert_eq!(EtcdError::RequestTooLarge.code(), Code::InvalidArgument);
        assert_eq!(EtcdError::NoSpace.code(), Code::ResourceExhausted);
        assert_eq!(EtcdError::LeaseNotFound.code(), Code::NotFound);
        assert_eq!(EtcdError::NoLeader.code(), Code::Unavailable);
        let wait = EtcdError::TimeoutWaitAppliedIndex.status();
        assert_eq!(
            (wait.code(), wait.message()),
            (Code::Unavailable, "etcdserver: request timed out, waiting for the applied index took too long")
        );
    }

    #[test]
    fn move_leader_errors_are_etcds() {
        let bad = move_leader_status(&raft_log::Error::BadLeaderTransferee(raft_log::NodeId(7)));
        assert_eq!((bad.code(), bad.message()), (Code::FailedPrecondition, "etcdserver: bad leader transferee"));
        let not_leader = move_leader_status(&raft_log::Error::NotLeader);
        assert_eq!((not_leader.code(), not_leader.message()), (Code::FailedPrecondition, "etcdserver: not leader"));
        let slow = move_leader_status(&raft_log::Error::Timeout);
        assert_eq!(
            (slow.code(), slow.message()),
            (Code::Unknown, "etcdserver: request timed out, leader transfer took too long")
        );
    }
}
