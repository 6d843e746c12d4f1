//! `Cluster`: membership as clients see it. Every change is a Raft conf change whose context
//! carries the member (see `member::ConfContext`); the member list is rebuilt from those
//! changes on every member as they apply, and answers come once this member has applied the
//! change. Checks follow etcd's (with `--strict-reconfig-check`, its default), with its
//! errors: URLs in use, at most one learner, a learner is promoted only once in sync with the
//! leader (by the leader), and a voter is added or removed only while the cluster keeps a
//! quorum of started and connected voters. As etcd's, the connectivity checks count a peer
//! only once its stream has been up for [`HEALTH_INTERVAL`]: right after a member starts or
//! reconnects, a change answers "unhealthy cluster" for a few seconds.

use std::sync::Arc;

use raft::eraftpb::ConfChangeType;
use tonic::{Request, Response, Status};

use crate::error::EtcdError;
use crate::node::membership::{new_member_id, normalize_urls, Member};
use crate::node::{Node, LEARNERS_MAX};
use crate::pb::etcdserverpb::{self as pb, cluster_server::Cluster};

/// How long a peer's stream must have been up before the strict reconfiguration checks
/// count it as connected (etcd's `HealthInterval`).
pub const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The Cluster service.
pub struct ClusterService {
    pub node: Arc<Node>,
}

fn to_pb(m: &Member) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

impl ClusterService {
    fn members(&self) -> Vec<pb::Member> {
        members_pb(&self.node.membership.identity.read().members)
    }

    /// etcd's Cluster responses carry no revision in their header.
    fn header(&self) -> pb::ResponseHeader {
        self.node.header(0)
    }

    fn member(&self, id: u64) -> Result<Member, Status> {
        self.node
            .membership
            .identity
            .read()
            .members
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .ok_or_else(|| EtcdError::MemberNotFound.status())
    }

    /// Checks that peer URLs asked for a member are well formed: etcd's API layer, before
    /// anything else looks at the request.
    fn check_urls_parse(urls: &[String]) -> Result<(), Status> {
        if urls.is_empty() || urls.iter().any(|u| crate::config::url_host_port(u).is_err()) {
            return Err(EtcdError::MemberBadUrls.status());
        }
        Ok(())
    }

    /// Checks that no member other than `except` uses one of `urls` (etcd checks this when it
    /// applies the change, after its strict reconfiguration checks).
    fn check_urls_unused(&self, urls: &[String], except: Option<u64>) -> Result<(), Status> {
        let wanted = normalize_urls(urls);
        let identity = self.node.membership.identity.read();
        let mut others = identity.members.iter().filter(|m| Some(m.id) != except);
        if others.any(|m| normalize_urls(&m.peer_urls).iter().any(|u| wanted.contains(u))) {
            return Err(EtcdError::PeerUrlExist.status());
        }
        Ok(())
    }

    /// Members whose stream to this member has been up for [`HEALTH_INTERVAL`], this member
    /// included: the ones etcd's strict checks count as connected.
    fn connected_for_health_interval(&self) -> Vec<u64> {
        let before = std::time::Instant::now().checked_sub(HEALTH_INTERVAL);
        self.node.membership.transport.connected_members_since(before)
    }

    /// etcd's strict reconfiguration check before adding a member (`mayAddMember`): for a
    /// voter, enough voters have started (published a name) for a quorum of the larger
    /// cluster, except when a single member takes its second; for a learner too, every voter
    /// has been connected for [`HEALTH_INTERVAL`] (a learner cannot cost the cluster its
    /// quorum, but etcd refuses to reconfigure a cluster this member cannot fully reach).
    fn check_add(&self, learner: bool) -> Result<(), Status> {
        let identity = self.node.membership.identity.read();
        let voters: Vec<&Member> = identity.members.iter().filter(|m| !m.is_learner).collect();
        if !learner {
            let members = voters.len() + 1;
            let started = voters.iter().filter(|m| !m.name.is_empty()).count();
            if !(started == 1 && members == 2) && started < members / 2 + 1 {
                return Err(EtcdError::NotEnoughStartedMembers.status());
            }
        }
        let connected = self.connected_for_health_interval();
        if voters.iter().any(|m| !connected.contains(&m.id)) {
            return Err(EtcdError::Unhealthy.status());
        }
        Ok(())
    }

    /// etcd's strict reconfiguration check before removing voter `id`: the remaining voters
    /// that have started make a quorum, and unless `id` is unreachable now, the voters
    /// connected for [`HEALTH_INTERVAL`] still make a quorum without it. An `id` that is no
    /// member is checked as etcd checks it: every voter remains, and none of them is the one
    /// removed.
    fn check_remove_voter(&self, id: u64) -> Result<(), Status> {
        let identity = self.node.membership.identity.read();
        let voters: Vec<&Member> = identity.members.iter().filter(|m| !m.is_learner).collect();
        let remaining: Vec<&&Member> = voters.iter().filter(|m| m.id != id).collect();
        let started = remaining.iter().filter(|m| !m.name.is_empty()).count();
        if remaining.is_empty() || started < remaining.len() / 2 + 1 {
            return Err(EtcdError::NotEnoughStartedMembers.status());
        }
        let connected = self.node.membership.transport.connected_members();
        if id != identity.member_id && !connected.contains(&id) {
            return Ok(());
        }
        let healthy = self.connected_for_health_interval();
        let active = voters.iter().filter(|m| healthy.contains(&m.id)).count();
        if active < 2 + (voters.len() - 1) / 2 {
            return Err(EtcdError::Unhealthy.status());
        }
        Ok(())
    }
}

/// Members in etcd's order: by id (etcd's `RaftCluster.Members` sorts them), whatever order
/// they joined in. etcdctl prints them in this order, and builds `member add`'s
/// `ETCD_INITIAL_CLUSTER` line from it.
fn members_pb(members: &[Member]) -> Vec<pb::Member> {
    let mut out: Vec<pb::Member> = members.iter().map(to_pb).collect();
    out.sort_unstable_by_key(|m| m.id);
    out
}

impl ClusterService {
    /// Membership changes: the cluster admin's, never a tenant's (a tenant's root user is
    /// root of its own keyspace only); then etcd's root check.
    fn check_cluster_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if !self.node.is_default() {
            return Err(EtcdError::PermissionDenied.status());
        }
        crate::auth::caller(&self.node, request)?.check_admin()
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        // Root only once auth is enabled (etcd's checkMembershipOperationPermission).
        self.check_cluster_admin(&request)?;
        self.node.check_not_learner()?;
        let req = request.into_inner();
        // etcd's order: the URLs parse (its API layer), the strict reconfiguration check
        // (before it proposes), then, once a leader is known, what it checks when it applies
        // the change: the id, removed or in use (the same URLs added within one second give
        // the same id), a URL in use, then too many learners.
        Self::check_urls_parse(&req.peer_ur_ls)?;
        self.check_add(req.is_learner)?;
        let id = new_member_id(&req.peer_ur_ls, std::time::SystemTime::now());
        let member = Member {
            id,
            name: String::new(),
            peer_urls: req.peer_ur_ls.clone(),
            client_urls: Vec::new(),
            is_learner: req.is_learner,
        };
        let check = || {
            {
                let identity = self.node.membership.identity.read();
                if identity.removed.contains(&id) {
                    return Err(EtcdError::MemberNotFound.status());
                }
                if identity.members.iter().any(|m| m.id == id) {
                    return Err(EtcdError::MemberExist.status());
                }
            }
            self.check_urls_unused(&req.peer_ur_ls, None)?;
            if req.is_learner {
                let identity = self.node.membership.identity.read();
                if identity.members.iter().filter(|m| m.is_learner).count() >= LEARNERS_MAX {
                    return Err(EtcdError::TooManyLearners.status());
                }
            }
            let change = if req.is_learner { ConfChangeType::AddLearnerNode } else { ConfChangeType::AddNode };
            Ok((change, member.clone()))
        };
        let members = self.node.propose_checked_conf_change(check).await?;
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.header()),
            member: Some(to_pb(&member)),
            members: members_pb(&members),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        // Root only once auth is enabled (etcd's checkMembershipOperationPermission).
        self.check_cluster_admin(&request)?;
        self.node.check_not_learner()?;
        let id = request.into_inner().id;
        // etcd runs its strict check for any id that is not a learner's, an unknown one too,
        // and finds the id unknown only when it applies the removal (once a leader is known).
        if !self.member(id).is_ok_and(|m| m.is_learner) {
            self.check_remove_voter(id)?;
        }
        let members =
            self.node.propose_checked_conf_change(|| Ok((ConfChangeType::RemoveNode, self.member(id)?))).await?;
        Ok(Response::new(pb::MemberRemoveResponse { header: Some(self.header()), members: members_pb(&members) }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        // Root only once auth is enabled (etcd's checkMembershipOperationPermission).
        self.check_cluster_admin(&request)?;
        self.node.check_not_learner()?;
        let req = request.into_inner();
        // etcd finds an unknown id or a URL in use when it applies the update, once a leader
        // is known; an unknown id comes first. etcd 3.5.1 then stores URLs that do not parse
        // as they are (a member no peer can reach); they are refused here.
        let members = self
            .node
            .propose_checked_conf_change(|| {
                let mut member = self.member(req.id)?;
                Self::check_urls_parse(&req.peer_ur_ls)?;
                self.check_urls_unused(&req.peer_ur_ls, Some(req.id))?;
                member.peer_urls = req.peer_ur_ls.clone();
                // Raft sees a no-op (the member keeps its role); the context carries the new
                // URLs.
                let change = if member.is_learner { ConfChangeType::AddLearnerNode } else { ConfChangeType::AddNode };
                Ok((change, member))
            })
            .await?;
        Ok(Response::new(pb::MemberUpdateResponse { header: Some(self.header()), members: members_pb(&members) }))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.node.read_barrier().await?;
        }
        Ok(Response::new(pb::MemberListResponse { header: Some(self.header()), members: self.members() }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        // Root only once auth is enabled (etcd's checkMembershipOperationPermission).
        self.check_cluster_admin(&request)?;
        let id = request.into_inner().id;
        let members = self.node.promote_on_leader(id).await?;
        Ok(Response::new(pb::MemberPromoteResponse { header: Some(self.header()), members: members_pb(&members) }))
    }
}
