//! `Cluster`: membership as clients see it. `MemberList` reports the members fixed at
//! bootstrap (`--initial-cluster`), with the client URLs each has announced in its peer
//! `Hello`; `MemberUpdate` changes peer URLs in this member's list only. Adding, removing and
//! promoting members needs replicated conf changes, which this build does not run yet; they
//! are refused with etcd's errors or an explicit message.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::error::EtcdError;
use crate::node::Node;
use crate::pb::etcdserverpb::{self as pb, cluster_server::Cluster};

/// The Cluster service.
pub struct ClusterService {
    pub node: Arc<Node>,
}

impl ClusterService {
    fn members(&self) -> Vec<pb::Member> {
        self.node
            .identity
            .read()
            .members
            .iter()
            .map(|m| pb::Member {
                id: m.id,
                name: m.name.clone(),
                peer_ur_ls: m.peer_urls.clone(),
                client_ur_ls: m.client_urls.clone(),
                is_learner: m.is_learner,
            })
            .collect()
    }

    /// etcd's Cluster responses carry no revision in their header.
    fn header(&self) -> pb::ResponseHeader {
        self.node.header(0)
    }

    fn check_member(&self, id: u64) -> Result<(), Status> {
        if self.node.identity.read().members.iter().any(|m| m.id == id) {
            Ok(())
        } else {
            Err(EtcdError::MemberNotFound.status())
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let req = request.into_inner();
        if req.peer_ur_ls.is_empty() || req.peer_ur_ls.iter().any(|u| crate::config::url_host_port(u).is_err()) {
            return Err(EtcdError::MemberBadUrls.status());
        }
        let existing =
            self.node.identity.read().members.iter().any(|m| m.peer_urls.iter().any(|u| req.peer_ur_ls.contains(u)));
        if existing {
            return Err(EtcdError::PeerUrlExist.status());
        }
        Err(Status::failed_precondition(
            "etcdserver: member add is not supported by this server yet (membership is fixed at bootstrap)",
        ))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.check_member(request.into_inner().id)?;
        if self.node.identity.read().members.len() == 1 {
            // Removing the only member would leave no quorum; etcd refuses it the same way.
            return Err(Status::failed_precondition(
                "etcdserver: re-configuration failed due to not enough started members",
            ));
        }
        Err(Status::failed_precondition(
            "etcdserver: member remove is not supported by this server yet (membership is fixed at bootstrap)",
        ))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let req = request.into_inner();
        self.check_member(req.id)?;
        if req.peer_ur_ls.is_empty() || req.peer_ur_ls.iter().any(|u| crate::config::url_host_port(u).is_err()) {
            return Err(EtcdError::MemberBadUrls.status());
        }
        {
            let mut identity = self.node.identity.write();
            for member in identity.members.iter_mut().filter(|m| m.id == req.id) {
                member.peer_urls = req.peer_ur_ls.clone();
            }
            identity.save(&self.node.data_dir).map_err(|e| Status::unknown(format!("saving membership: {e}")))?;
        }
        Ok(Response::new(pb::MemberUpdateResponse { header: Some(self.header()), members: self.members() }))
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
        let id = request.into_inner().id;
        self.check_member(id)?;
        // Learners are not served yet: every member is a voter.
        Err(EtcdError::MemberNotLearner.status())
    }
}
