//! `plinth.v1.Tenants`: the cluster admin's API over the tenant registry
//! (`node::tenants`), served on every client router and answered only on the default
//! tenant's. `create`, `update` and `delete` write the registry with txns of the system group
//! whose compares make creation, numbering and group allocation safe against concurrent
//! admins (`number/<k>` claims a number, `next-group` allocates group ids, which are never
//! reused), then wait until this member serves the change; `list` and `show` read it after a
//! read barrier; `import` (`import.rs`) replaces a tenant's data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

mod import;

pub use import::DEFAULT_TENANT_NAME;

use crate::node::limits::TenantLimits;
use crate::node::tenants::{
    apply_quota, read_records, ListenerTenant, TenantRecord, Tenants, RECORD_PREFIX, TENANT_GROUP_FIRST,
};
use crate::node::{Node, DEFAULT_GROUP, SYSTEM_GROUP};
use crate::pb::plinthv1 as pb;

/// Most tenants a cluster holds.
pub const TENANTS_MAX: usize = 4096;
/// Longest tenant name, and the characters it may use (a DNS label, so it fits in paths,
/// metric labels and backup object names).
const NAME_BYTES_MAX: usize = 63;

const NUMBER_PREFIX: &str = "number/";
const NEXT_GROUP_KEY: &[u8] = b"next-group";

/// Time between two looks at whether a group is served and led, for a create or show that
/// waits for it.
const SERVED_POLL: Duration = Duration::from_millis(2);
/// Largest `plinth.v1.Tenants` message decoded: an import step of several proposals' worth
/// (the server splits it) and no more.
pub const IMPORT_MESSAGE_BYTES_MAX: usize = 16 << 20;
/// Times a registry txn is retried when a concurrent change won its compares.
const REGISTRY_RETRIES: usize = 8;

impl TenantRecord {
    fn to_pb(&self) -> pb::Tenant {
        pb::Tenant {
            name: self.name.clone(),
            number: self.number,
            group: self.group,
            state: "active".into(),
            quota_bytes: self.quota_bytes,
            client_cns: self.client_cns.clone(),
            limits: Some(limits_to_pb(&self.limits)),
        }
    }
}

fn limits_to_pb(l: &TenantLimits) -> pb::TenantLimits {
    pb::TenantLimits {
        requests_per_second: l.requests_per_second,
        inflight_proposals: l.inflight_proposals,
        watchers: l.watchers,
        request_bytes_per_second: l.request_bytes_per_second,
    }
}

fn limits_from_pb(l: Option<&pb::TenantLimits>) -> TenantLimits {
    l.map_or_else(TenantLimits::default, |l| TenantLimits {
        requests_per_second: l.requests_per_second,
        inflight_proposals: l.inflight_proposals,
        watchers: l.watchers,
        request_bytes_per_second: l.request_bytes_per_second,
    })
}

/// `plinth.v1.Tenants`, served on every client router; only the default tenant's (reached
/// by the cluster admin) answers.
pub struct TenantsService {
    /// The node of the router it is served on.
    pub node: Arc<Node>,
    /// The member's backup scheduler, when it takes backups (for `show`).
    pub backups: Option<Arc<crate::backup::schedule::Scheduler>>,
}

impl TenantsService {
    fn tenants(&self) -> &Arc<Tenants> {
        &self.node.tenants
    }

    fn check_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        check_admin(&self.node, request)
    }

    fn system(&self) -> Result<Arc<Node>, Status> {
        self.tenants().node(SYSTEM_GROUP).ok_or_else(|| Status::unavailable("plinth: the system group is not served"))
    }

    /// The registry after a read barrier on the system group (linearizable).
    async fn read_registry(&self) -> Result<(BTreeMap<String, TenantRecord>, Vec<store::KeyValue>), Status> {
        let system = self.system()?;
        // Right after a start or an election the system group may have no leader yet: wait
        // for one (as etcd's linearizable reads wait), up to the request timeout.
        let deadline = Instant::now() + self.node.cfg.request_timeout;
        while system.leader() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        system.read_barrier().await?;
        let records = read_records(&system.store).map_err(|e| Status::internal(e.to_string()))?;
        let request = store::RangeRequest { key: Bytes::from_static(NEXT_GROUP_KEY), ..Default::default() };
        let next = system.store.range(system.group(), &request).map_err(|e| crate::error::store_status(&e))?.kvs;
        Ok((records, next))
    }

    /// Adds tenant `req` to the registry and waits until this member serves it.
    async fn create_tenant(&self, req: pb::CreateTenantRequest) -> Result<TenantRecord, Status> {
        check_name(&req.name)?;
        let system = self.system()?;
        for _ in 0..REGISTRY_RETRIES {
            let (records, next) = self.read_registry().await?;
            if records.contains_key(&req.name) {
                return Err(Status::already_exists(format!("plinth: tenant {:?} already exists", req.name)));
            }
            if records.len() >= TENANTS_MAX {
                return Err(Status::resource_exhausted(format!(
                    "plinth: a cluster holds at most {TENANTS_MAX} tenants"
                )));
            }
            check_cns(&records, &req.name, &req.client_cns)?;
            let used: std::collections::HashSet<u64> = records.values().map(|r| r.number).collect();
            let number = (1..).find(|n| !used.contains(n)).expect("fewer tenants than numbers");
            let (group, next_mod) = match next.first() {
                Some(kv) => {
                    let g = std::str::from_utf8(&kv.value).ok().and_then(|s| s.parse::<u64>().ok());
                    (g.ok_or_else(|| Status::internal("plinth: corrupt next-group record"))?, kv.mod_revision)
                }
                None => (TENANT_GROUP_FIRST, 0),
            };
            let voters = self.node.membership.identity.read().voter_ids();
            let record = TenantRecord {
                name: req.name.clone(),
                number,
                group,
                quota_bytes: req.quota_bytes,
                client_cns: req.client_cns.clone(),
                voters,
                limits: limits_from_pb(req.limits.as_ref()),
            };
            let number_key = Bytes::from(format!("{NUMBER_PREFIX}{number}"));
            let txn = store::TxnRequest {
                compare: vec![
                    compare_version(record_key(&req.name), 0),
                    compare_version(number_key.clone(), 0),
                    compare_mod(Bytes::from_static(NEXT_GROUP_KEY), next_mod),
                ],
                success: vec![
                    put(record_key(&req.name), serde_json::to_vec(&record).expect("records serialize")),
                    put(number_key, req.name.clone().into_bytes()),
                    put(Bytes::from_static(NEXT_GROUP_KEY), (group + 1).to_string().into_bytes()),
                ],
                failure: Vec::new(),
            };
            match system.propose(store::CommandBody::Txn(txn)).await? {
                store::CommandResponse::Txn(r) if r.succeeded => {
                    info!(tenant = %record.name, number, group, "tenant created");
                    // Answer once the tenant can take requests here: its group exists on
                    // this member and has elected a leader, and its quota is in force.
                    match self.wait_served(group, true).await {
                        Some(node) => {
                            // This member enforces the limits from the answer on; the others
                            // from their next reconcile pass (within a second).
                            node.runtime.limiter.set(record.limits);
                            apply_quota(&node, record.quota_bytes).await?
                        }
                        None => {
                            warn!(tenant = %record.name, "tenant created but not yet served (no leader) by this member")
                        }
                    }
                    return Ok(record);
                }
                _ => continue,
            }
        }
        Err(Status::aborted("plinth: the tenant registry kept changing; try again"))
    }

    /// Waits until this member serves `group` (and, with `led`, knows its leader), up to the
    /// request timeout.
    /// Waits, at most a request timeout, until this member's registry has been read at the
    /// system group's revision `revision` or later (the reconciler reloads it when told).
    async fn wait_registry(&self, revision: store::Revision) {
        let deadline = Instant::now() + self.node.cfg.request_timeout;
        self.tenants().changed.notify_one();
        while self.tenants().registry_revision().is_none_or(|r| r < revision) && Instant::now() < deadline {
            tokio::time::sleep(SERVED_POLL).await;
        }
    }

    async fn wait_served(&self, group: u64, led: bool) -> Option<Arc<Node>> {
        let deadline = Instant::now() + self.node.cfg.request_timeout;
        // The applier already told the reconciler of the registry change this member applied;
        // one more pass costs little and covers a change it applied before this call.
        self.tenants().changed.notify_one();
        loop {
            if let Some(node) = self.tenants().node(group) {
                if !led || node.leader() != 0 {
                    return Some(node);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            // A look is two map reads under read locks: cheap enough to poll for the few
            // milliseconds a new group needs.
            tokio::time::sleep(SERVED_POLL).await;
        }
    }
}

/// Only the cluster admin: see the module docs of `plinth.v1` (proto/tenants.proto).
pub(crate) fn check_admin<T>(node: &Node, request: &Request<T>) -> Result<(), Status> {
    if !node.is_default() || request.extensions().get::<ListenerTenant>().is_some() {
        // A tenant's connection (its port, or a certificate of a tenant).
        return Err(crate::error::EtcdError::PermissionDenied.status());
    }
    let cn = crate::tls::client_common_name(request).filter(|cn| !cn.is_empty());
    let admin_cn = node.tenants.cfg.admin_cn.as_deref();
    if let (Some(admin), Some(cn)) = (admin_cn, cn.as_deref()) {
        if admin == cn {
            return Ok(());
        }
    }
    let caller = crate::auth::caller(node, request)?;
    if caller.enabled() {
        return caller.check_admin();
    }
    if admin_cn.is_some() && cn.is_some() {
        // Certificates identify clients here: only the admin's may administer.
        return Err(crate::error::EtcdError::PermissionDenied.status());
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if name == crate::backup::manifest::DEFAULT_TENANT {
        // The default tenant's name in backups and in `--tenant` flags.
        return Err(Status::invalid_argument(format!(
            "plinth: tenant name {name:?} is reserved for the default tenant"
        )));
    }
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "plinth: tenant name {name:?} must be 1-{NAME_BYTES_MAX} lowercase letters, digits and '-', not starting \
             or ending with '-'"
        )))
    }
}

fn check_cns(records: &BTreeMap<String, TenantRecord>, name: &str, cns: &[String]) -> Result<(), Status> {
    for cn in cns {
        if cn.is_empty() {
            return Err(Status::invalid_argument("plinth: empty client CN"));
        }
        if let Some(other) = records.values().find(|r| r.name != name && r.client_cns.contains(cn)) {
            return Err(Status::already_exists(format!(
                "plinth: client CN {cn:?} already maps to tenant {:?}",
                other.name
            )));
        }
    }
    Ok(())
}

fn record_key(name: &str) -> Bytes {
    Bytes::from([RECORD_PREFIX, name.as_bytes()].concat())
}

fn compare_version(key: Bytes, version: i64) -> store::Compare {
    compare_version_is(store::CompareResult::Equal, key, version)
}

fn compare_version_is(result: store::CompareResult, key: Bytes, version: i64) -> store::Compare {
    store::Compare {
        result: result as i32,
        target: store::CompareTarget::Version as i32,
        key,
        target_union: Some(store::TargetUnion::Version(version)),
        range_end: Bytes::new(),
    }
}

fn compare_mod(key: Bytes, mod_revision: i64) -> store::Compare {
    store::Compare {
        result: store::CompareResult::Equal as i32,
        target: store::CompareTarget::Mod as i32,
        key,
        target_union: Some(store::TargetUnion::ModRevision(mod_revision)),
        range_end: Bytes::new(),
    }
}

fn put(key: Bytes, value: Vec<u8>) -> store::RequestOp {
    store::RequestOp::put(store::PutRequest { key, value: Bytes::from(value), ..Default::default() })
}

fn delete(key: Bytes) -> store::RequestOp {
    store::RequestOp::delete_range(store::DeleteRangeRequest { key, ..Default::default() })
}

fn not_found(name: &str) -> Status {
    Status::not_found(format!("plinth: tenant {name:?} not found"))
}

#[tonic::async_trait]
impl pb::tenants_server::Tenants for TenantsService {
    async fn create(&self, request: Request<pb::CreateTenantRequest>) -> Result<Response<pb::TenantResponse>, Status> {
        self.check_admin(&request)?;
        let record = self.create_tenant(request.into_inner()).await?;
        Ok(Response::new(pb::TenantResponse { tenant: Some(record.to_pb()) }))
    }

    async fn import(
        &self,
        request: Request<tonic::Streaming<pb::ImportRequest>>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        self.check_admin(&request)?;
        self.run_import(request.into_inner()).await.map(Response::new)
    }

    async fn update(&self, request: Request<pb::UpdateTenantRequest>) -> Result<Response<pb::TenantResponse>, Status> {
        self.check_admin(&request)?;
        let req = request.into_inner();
        let system = self.system()?;
        for _ in 0..REGISTRY_RETRIES {
            let (records, _) = self.read_registry().await?;
            let Some(mut record) = records.get(&req.name).cloned() else { return Err(not_found(&req.name)) };
            let key = record_key(&req.name);
            let kv = system
                .store
                .range(system.group(), &store::RangeRequest { key: key.clone(), ..Default::default() })
                .map_err(|e| crate::error::store_status(&e))?
                .kvs;
            let Some(kv) = kv.first() else { continue };
            if req.set_client_cns {
                check_cns(&records, &req.name, &req.client_cns)?;
                record.client_cns = req.client_cns.clone();
            }
            if req.set_quota_bytes {
                record.quota_bytes = req.quota_bytes;
            }
            let asked = limits_from_pb(req.limits.as_ref());
            let l = &mut record.limits;
            if req.set_requests_per_second {
                l.requests_per_second = asked.requests_per_second;
            }
            if req.set_inflight_proposals {
                l.inflight_proposals = asked.inflight_proposals;
            }
            if req.set_watchers {
                l.watchers = asked.watchers;
            }
            if req.set_request_bytes_per_second {
                l.request_bytes_per_second = asked.request_bytes_per_second;
            }
            let txn = store::TxnRequest {
                compare: vec![compare_mod(key.clone(), kv.mod_revision)],
                success: vec![put(key, serde_json::to_vec(&record).expect("records serialize"))],
                failure: Vec::new(),
            };
            match system.propose(store::CommandBody::Txn(txn)).await? {
                store::CommandResponse::Txn(r) if r.succeeded => {
                    info!(tenant = %record.name, "tenant updated");
                    // Answered once this member routes by the new record: a client of a
                    // client identity just added is served as the tenant from the answer on.
                    self.wait_registry(r.revision).await;
                    if let Some(node) = self.wait_served(record.group, req.set_quota_bytes).await {
                        // As at create: this member's limits now, the others' within a second.
                        node.runtime.limiter.set(record.limits);
                        if req.set_quota_bytes {
                            apply_quota(&node, record.quota_bytes).await?;
                        }
                    }
                    return Ok(Response::new(pb::TenantResponse { tenant: Some(record.to_pb()) }));
                }
                _ => continue,
            }
        }
        Err(Status::aborted("plinth: the tenant registry kept changing; try again"))
    }

    async fn delete(&self, request: Request<pb::DeleteTenantRequest>) -> Result<Response<pb::TenantResponse>, Status> {
        self.check_admin(&request)?;
        let req = request.into_inner();
        let system = self.system()?;
        let (records, _) = self.read_registry().await?;
        let Some(record) = records.get(&req.name).cloned() else { return Err(not_found(&req.name)) };
        let txn = store::TxnRequest {
            compare: vec![compare_version_is(store::CompareResult::Greater, record_key(&req.name), 0)],
            success: vec![
                delete(record_key(&req.name)),
                delete(Bytes::from(format!("{NUMBER_PREFIX}{}", record.number))),
            ],
            failure: Vec::new(),
        };
        match system.propose(store::CommandBody::Txn(txn)).await? {
            store::CommandResponse::Txn(r) if r.succeeded => {
                info!(tenant = %record.name, group = record.group, "tenant deleted");
                self.tenants().changed.notify_one();
                Ok(Response::new(pb::TenantResponse { tenant: Some(record.to_pb()) }))
            }
            _ => Err(not_found(&req.name)),
        }
    }

    async fn list(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        self.check_admin(&request)?;
        let (records, _) = self.read_registry().await?;
        Ok(Response::new(pb::ListTenantsResponse { tenants: records.values().map(TenantRecord::to_pb).collect() }))
    }

    async fn show(&self, request: Request<pb::ShowTenantRequest>) -> Result<Response<pb::TenantStatus>, Status> {
        self.check_admin(&request)?;
        let name = request.into_inner().name;
        let (records, _) = self.read_registry().await?;
        let Some(record) = records.get(&name).cloned() else { return Err(not_found(&name)) };
        let Some(node) = self.wait_served(record.group, false).await else {
            return Err(Status::unavailable(format!("plinth: tenant {name:?} is not served by this member yet")));
        };
        let g = node.group();
        let count = store::RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            count_only: true,
            serializable: true,
            ..Default::default()
        };
        let keys = match node.store.range(g, &count) {
            Ok(r) => r.count,
            // Being restored: its keys are not countable yet.
            Err(store::Error::Importing) => 0,
            Err(e) => return Err(crate::error::store_status(&e)),
        };
        let status = node.raft_status().unwrap_or_default();
        let identity = node.membership.identity.read().clone();
        let voters: Vec<u64> = status.voters.iter().map(|v| v.0).collect();
        let learners: Vec<u64> = status.learners.iter().map(|v| v.0).collect();
        let in_sync = {
            let mut want_v: Vec<u64> = identity.members.iter().filter(|m| !m.is_learner).map(|m| m.id).collect();
            let mut want_l: Vec<u64> = identity.members.iter().filter(|m| m.is_learner).map(|m| m.id).collect();
            let (mut v, mut l) = (voters.clone(), learners.clone());
            want_v.sort_unstable();
            want_l.sort_unstable();
            v.sort_unstable();
            l.sort_unstable();
            want_v == v && want_l == l
        };
        let alarms = node.store.alarms(g).iter().map(|a| format!("{:?}", a.alarm).to_uppercase()).collect();
        let mut tenant = record.to_pb();
        if node.store.import_state(g).is_some() {
            tenant.state = "restoring".into();
        }
        Ok(Response::new(pb::TenantStatus {
            tenant: Some(tenant),
            revision: node.store.current_revision(g),
            compact_revision: node.store.compact_revision(g),
            keys,
            db_size_bytes: node.store.size_bytes(g),
            leader: status.leader.0,
            raft_term: status.term.0,
            applied_index: node.store.applied_index(g),
            requests_total: node.runtime.requests.load(std::sync::atomic::Ordering::Relaxed),
            requests_per_second: node.runtime.request_rate(),
            voters,
            learners,
            membership_in_sync: in_sync,
            alarms,
            backup: Some(match &self.backups {
                Some(scheduler) => scheduler.status(&node),
                None => crate::backup::schedule::status_off(&node),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_dns_labels() {
        for ok in ["a", "team-1", "x".repeat(63).as_str()] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-a", "a-", "a/b", "a.b", "x".repeat(64).as_str()] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_client_cn_maps_to_one_tenant_only() {
        let mut records = BTreeMap::new();
        let r = TenantRecord {
            name: "a".into(),
            number: 1,
            group: TENANT_GROUP_FIRST,
            quota_bytes: 0,
            client_cns: vec!["apiserver-a".into()],
            voters: vec![1],
            limits: TenantLimits::default(),
        };
        records.insert("a".into(), r);
        assert!(check_cns(&records, "b", &["apiserver-a".into()]).is_err());
        assert!(check_cns(&records, "a", &["apiserver-a".into()]).is_ok(), "a tenant keeps its own CN");
        assert!(check_cns(&records, "b", &["apiserver-b".into()]).is_ok());
    }
}
