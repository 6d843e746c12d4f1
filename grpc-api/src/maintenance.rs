//! `Maintenance`: alarms, status, hashes, snapshot streaming, defragment and leader moves.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::error::{move_leader_status, store_status, EtcdError};
use crate::node::alarms::{alarm_name, alarm_to_pb};
use crate::node::shares::Cost;
use crate::node::Node;
use crate::pb::etcdserverpb::{self as pb, maintenance_server::Maintenance, AlarmType};
use crate::version::{ETCD_COMPAT_VERSION, STORAGE_VERSION};

/// How much longer than the driver's own deadline `MoveLeader` waits for the driver's answer
/// before giving up on it (the driver answers by its deadline unless it hangs).
const MOVE_LEADER_ANSWER_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

/// Bytes of snapshot data per `SnapshotResponse`.
const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;

/// Chunks of a `Maintenance.Snapshot` stream read ahead of a slow client.
const SNAPSHOT_CHUNKS_AHEAD: usize = 4;

/// The Maintenance service.
pub struct MaintenanceService {
    pub node: Arc<Node>,
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        let node = &self.node;
        // Every alarm request is a proposal in etcd, which refuses an unknown token (no
        // permission is needed).
        crate::auth::caller(node, &request)?;
        let req = request.into_inner();
        // etcd's semantics (`applierV3backend.Alarm`): GET lists the alarms of the requested
        // type (all for NONE); ACTIVATE returns the alarm, also when it was already raised,
        // and nothing for type NONE; DEACTIVATE returns the alarm if it was raised, else
        // nothing. Raising and disarming go through the log so every member applies them.
        let action = pb::alarm_request::AlarmAction::try_from(req.action)
            .map_err(|_| Status::invalid_argument("etcdserver: unknown alarm action"))?;
        let alarms = match action {
            pb::alarm_request::AlarmAction::Get => {
                // etcd answers GET from its applied state after the request went through
                // Raft; a read barrier gives the same linearizable point without an entry.
                // On a member that knows no leader, etcd's answer is a proposal's.
                node.read_barrier_as_proposal().await?;
                node.alarms
                    .active()
                    .into_iter()
                    .filter(|a| req.alarm == AlarmType::None as i32 || a.alarm == req.alarm)
                    .collect()
            }
            pb::alarm_request::AlarmAction::Activate | pb::alarm_request::AlarmAction::Deactivate
                if req.alarm == AlarmType::None as i32 || store::AlarmType::try_from(req.alarm).is_err() =>
            {
                // Nothing to raise or disarm: etcd's apply answers no alarms.
                vec![]
            }
            pb::alarm_request::AlarmAction::Activate | pb::alarm_request::AlarmAction::Deactivate => {
                let action = if action == pb::alarm_request::AlarmAction::Activate {
                    store::AlarmAction::Activate
                } else {
                    store::AlarmAction::Deactivate
                };
                let body = store::CommandBody::Alarm(store::AlarmRequest {
                    action: action as i32,
                    member_id: req.member_id,
                    alarm: req.alarm,
                });
                let store::CommandResponse::Alarm(changed) = node.propose(body).await? else {
                    return Err(Status::internal("alarm applied as another command"));
                };
                changed.iter().map(alarm_to_pb).collect()
            }
        };
        Ok(Response::new(pb::AlarmResponse { header: Some(node.current_header()), alarms }))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        // Anyone may ask, with auth enabled too (etcd 3.5.1 checks nothing here).
        let node = &self.node;
        let raft = node.raft_status();
        let leader = raft.as_ref().map(|s| s.leader.0).unwrap_or(0);
        // As etcd's: "no leader" first, then every active alarm.
        let no_leader = (leader == 0).then(|| EtcdError::NoLeader.message().to_string());
        let alarms = node.alarms.active();
        let alarms = alarms.iter().map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)));
        let errors = no_leader.into_iter().chain(alarms).collect();
        Ok(Response::new(pb::StatusResponse {
            header: Some(node.current_header()),
            version: ETCD_COMPAT_VERSION.to_string(),
            db_size: node.store.db_size_bytes() as i64,
            leader,
            raft_index: raft.as_ref().map(|s| s.commit.0).unwrap_or(0),
            raft_term: raft.as_ref().map(|s| s.term.0).unwrap_or(0),
            raft_applied_index: *node.applied.borrow(),
            errors,
            db_size_in_use: node.store.size_bytes(node.group()) as i64,
            is_learner: node.is_learner(),
            storage_version: STORAGE_VERSION.to_string(),
            db_size_quota: node.cfg.quota_bytes as i64,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // Root only once auth is enabled (etcd's authMaintenanceServer, whose refusals are
        // the auth store's unmapped errors).
        crate::auth::check_admin_unmapped(&self.node, &request)?;
        // RocksDB reclaims space by background compaction, so there is no stop-the-world
        // rewrite to run; the call only succeeds, as etcd's does, without blocking writers.
        // etcd's answer carries no header.
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    async fn hash(&self, request: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        // Root only once auth is enabled (etcd's authMaintenanceServer, whose refusals are
        // the auth store's unmapped errors).
        crate::auth::check_admin_unmapped(&self.node, &request)?;
        let node = &self.node;
        let (hash, _, _) = node.read(Cost::Scan, |store, group| store.hash_kv(group, 0)).await?;
        Ok(Response::new(pb::HashResponse { header: Some(node.current_header()), hash }))
    }

    async fn hash_kv(&self, request: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        // Root only once auth is enabled (etcd's authMaintenanceServer, whose refusals are
        // the auth store's unmapped errors).
        crate::auth::check_admin_unmapped(&self.node, &request)?;
        let node = &self.node;
        let revision = request.into_inner().revision;
        let (hash, compact_revision, hash_revision) = node.etcd_hash_kv(revision).await?;
        // etcd reports -1 until the first compaction.
        let compact_revision = if compact_revision == 0 { -1 } else { compact_revision };
        Ok(Response::new(pb::HashKvResponse {
            header: Some(node.current_header()),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, request: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        // Root only once auth is enabled (etcd's authMaintenanceServer, whose refusals are
        // the auth store's unmapped errors).
        crate::auth::check_admin_unmapped(&self.node, &request)?;
        let node = self.node.clone();
        // The group is written as etcd's data file (a bbolt `db`, see
        // `backup::etcd_export`) to an unnamed file in the data dir on a blocking thread,
        // then streamed from it through a small bounded channel, so a slow client holds at
        // most a few chunks in memory and the file goes away with the stream.
        //
        // The stream has etcd's shape: data messages, the last of them with
        // `remaining_bytes` 0, then one message holding only the SHA-256 of all the data
        // (also 0). The file is whole pages, so its length is a multiple of 512, as
        // etcdctl's `snapshot save` checks (`sha256 checksum not found` otherwise). The
        // messages carry no header, nor a version: etcd 3.5's carry neither (3.6 added its
        // storage version).
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_CHUNKS_AHEAD);
        tokio::task::spawn_blocking(move || {
            use sha2::Digest;
            use std::os::unix::fs::FileExt;
            let members = node.membership.identity.read().members.clone();
            let term = node.raft_status().map_or(0, |s| s.term.0);
            let written =
                crate::backup::etcd_export::write_etcd_db(&node.store, node.group(), &members, term, &node.data_dir);
            let file = match written {
                Ok((file, _)) => file,
                Err(e) => {
                    let status = match e.downcast_ref::<store::Error>() {
                        Some(e) => store_status(e),
                        None => Status::internal(format!("etcdserver: snapshot: {e:#}")),
                    };
                    let _ = tx.blocking_send(Err(status));
                    return;
                }
            };
            let data = |blob: bytes::Bytes, remaining_bytes: u64| pb::SnapshotResponse {
                header: None,
                remaining_bytes,
                blob,
                version: String::new(),
            };
            let mut digest = sha2::Sha256::new();
            let total = match file.metadata() {
                Ok(m) => m.len(),
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::internal(format!("etcdserver: snapshot: {e}"))));
                    return;
                }
            };
            let mut sent = 0u64;
            while sent < total {
                let mut piece = vec![0u8; (total - sent).min(SNAPSHOT_CHUNK_BYTES as u64) as usize];
                if let Err(e) = file.read_exact_at(&mut piece, sent) {
                    let _ = tx.blocking_send(Err(Status::internal(format!("etcdserver: snapshot: {e}"))));
                    return;
                }
                digest.update(&piece);
                sent += piece.len() as u64;
                if tx.blocking_send(Ok(data(piece.into(), total - sent))).is_err() {
                    return;
                }
            }
            let _ = tx.blocking_send(Ok(data(digest.finalize().to_vec().into(), 0)));
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let node = &self.node;
        let target = request.into_inner().target_id;
        // etcd's order: only the leader moves leadership, and only to a voting member.
        if node.leader() != node.member_id() {
            return Err(EtcdError::NotLeader.status());
        }
        let voter = node.membership.identity.read().members.iter().any(|m| m.id == target && !m.is_learner);
        if !voter {
            return Err(EtcdError::BadLeaderTransferee.status());
        }
        // Answered only once this member sees the target lead (at once when it is this
        // member), as etcd's `MoveLeader` polls its own view of the leader. etcd waits as long
        // as the client does; Plinth bounds the wait by its request timeout.
        let timeout = node.cfg.request_timeout;
        let (tx, rx) = tokio::sync::oneshot::channel();
        node.raft.transfer_leader(
            raft_log::GroupId(crate::node::DEFAULT_GROUP),
            raft_log::NodeId(target),
            timeout,
            Box::new(move |r| {
                // The handler may have gone (client cancelled): nobody to tell.
                let _ = tx.send(r);
            }),
        );
        // The driver answers by `timeout` (it checks every loop iteration) or drops the
        // sender when it stops; the outer bound only guards against a driver that hangs.
        match tokio::time::timeout(timeout + MOVE_LEADER_ANSWER_SLACK, rx).await {
            // etcd's answer carries no header.
            Ok(Ok(Ok(()))) => Ok(Response::new(pb::MoveLeaderResponse { header: None })),
            Ok(Ok(Err(e))) => Err(move_leader_status(&e)),
            Ok(Err(_)) => Err(EtcdError::Stopped.status()),
            Err(_) => Err(EtcdError::TimeoutLeaderTransfer.status()),
        }
    }

    async fn downgrade(
        &self,
        request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        use pb::downgrade_request::DowngradeAction;
        // etcd's checks, in etcd's order; a target etcd would accept is refused as "not
        // capable": no older Plinth exists to run the cluster at an older version, and no
        // downgrade is ever in progress to cancel.
        let req = request.into_inner();
        match DowngradeAction::try_from(req.action) {
            Ok(DowngradeAction::Validate | DowngradeAction::Enable) => {
                let target =
                    downgrade_target(&req.version).ok_or_else(|| EtcdError::WrongDowngradeVersionFormat.status())?;
                if target != DOWNGRADE_TARGET {
                    return Err(EtcdError::InvalidDowngradeTargetVersion.status());
                }
                Err(EtcdError::NotCapable.status())
            }
            Ok(DowngradeAction::Cancel) => Err(EtcdError::NoInflightDowngrade.status()),
            Err(_) => Err(EtcdError::NotCapable.status()),
        }
    }
}

/// The one downgrade target etcd allows: the cluster version's minor release minus one (the
/// cluster version is 3.5).
const DOWNGRADE_TARGET: (u64, u64) = (3, 4);

/// The major and minor release of a downgrade target as etcd reads it: a semantic version
/// (`3.4.2`, with an optional `-pre` or `+build` part) or `major.minor`; `None` if neither.
fn downgrade_target(version: &str) -> Option<(u64, u64)> {
    fn semver(v: &str) -> Option<(u64, u64)> {
        let core = v.split_once('+').map_or(v, |(core, _)| core);
        let core = core.split_once('-').map_or(core, |(core, _)| core);
        let parts: Vec<&str> = core.split('.').collect();
        let number =
            |p: &str| (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse::<u64>().ok()).flatten();
        match parts[..] {
            [major, minor, patch] => {
                number(patch)?;
                Some((number(major)?, number(minor)?))
            }
            _ => None,
        }
    }
    semver(version).or_else(|| semver(&format!("{version}.0")))
}

#[cfg(test)]
mod downgrade_tests {
    use super::downgrade_target;

    #[test]
    fn downgrade_targets_parse_as_etcds() {
        assert_eq!(downgrade_target("3.4"), Some((3, 4)));
        assert_eq!(downgrade_target("3.4.2"), Some((3, 4)));
        assert_eq!(downgrade_target("3.3"), Some((3, 3)));
        assert_eq!(downgrade_target("3.4.0-rc.1"), Some((3, 4)));
        for bad in ["", "abc", "x", "3", "3.4.x", "v3.4", "3..4"] {
            assert_eq!(downgrade_target(bad), None, "{bad:?}");
        }
    }
}
