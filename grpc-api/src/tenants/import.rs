//! The server side of `plinth.v1.Tenants/Import`: a client stream of import steps turned
//! into proposals of the tenant's group, one at a time.
//!
//! The handler begins the import itself (a fresh import id, so the steps of an abandoned
//! stream can never mix with a new one), then for each message decodes its step, stamps the
//! id, proposes it and waits until this member applied it before it reads the next message:
//! at most one step is in memory and in flight, and a slow group slows the client through
//! the stream's flow control. The answer comes once the finish applied.
//!
//! An import that ends early (the client went away, a step failed) leaves the tenant in
//! the importing state, unavailable to its clients, until an import into it finishes: the
//! data it held was wiped at the begin, and only a complete import is a consistent state.

use bytes::Bytes;
use prost::Message;
use tonic::Status;
use tracing::{info, warn};

use super::{TenantsService, DEFAULT_GROUP};
use crate::pb::plinthv1 as pb;

/// The name that addresses the default tenant (group 1) when no tenant record has it.
pub const DEFAULT_TENANT_NAME: &str = "default";

impl TenantsService {
    /// Runs one import stream (the caller checked that it comes from the admin).
    pub(super) async fn run_import(
        &self,
        mut stream: tonic::Streaming<pb::ImportRequest>,
    ) -> Result<pb::ImportResponse, Status> {
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("plinth: an import stream without messages"))?;
        let name = first.tenant.clone();
        if first.create && name == DEFAULT_TENANT_NAME {
            return Err(Status::already_exists(format!("plinth: tenant {name:?} already exists (the default tenant)")));
        }
        let tenant = if first.create {
            let req = pb::CreateTenantRequest { name: name.clone(), ..Default::default() };
            self.create_tenant(req).await?.to_pb()
        } else {
            let (records, _) = self.read_registry().await?;
            match records.get(&name) {
                Some(r) => r.to_pb(),
                None if name == DEFAULT_TENANT_NAME => pb::Tenant {
                    name: name.clone(),
                    group: DEFAULT_GROUP,
                    state: "active".into(),
                    ..Default::default()
                },
                None => return Err(super::not_found(&name)),
            }
        };
        let Some(node) = self.wait_served(tenant.group, true).await else {
            return Err(Status::unavailable(format!("plinth: tenant {name:?} has no leader on this member yet")));
        };
        let g = node.group();
        // A tenant created for the import must still be empty when it begins (the begin
        // checks again in the log, so a racing write fails the import rather than turning it
        // into a replace).
        let require_empty = first.require_empty || first.create;
        if require_empty {
            // A read barrier first: the state read must be the group's, not a lagging
            // replica's.
            node.read_barrier().await?;
            if !node.store.is_empty_for_import(g) {
                let revision = node.store.current_revision(g);
                return Err(Status::failed_precondition(format!(
                    "plinth: tenant {name:?} is not empty (revision {revision}); migrate into a new tenant"
                )));
            }
        }
        let import_id = loop {
            let id = rand::random::<u64>();
            if id != 0 {
                break id;
            }
        };
        let propose = |op: store::ImportOp| {
            let node = node.clone();
            async move {
                let body = store::CommandBody::Import(store::ImportStep { import_id, op: Some(op) });
                match node.propose(body).await? {
                    store::CommandResponse::Import(r) => Ok(r),
                    other => Err(Status::internal(format!("plinth: an import step answered {other:?}"))),
                }
            }
        };
        let began = propose(store::ImportOp::Begin(store::ImportBegin { require_empty })).await?;
        info!(tenant = %name, group = tenant.group, floor = began.floor, import = format_args!("{import_id:x}"), "import began");
        let mut steps: u64 = 1;
        let mut pending = Some(first.step);
        let finished = loop {
            let bytes: Bytes = match pending.take() {
                Some(b) => b,
                None => match stream.message().await {
                    Ok(Some(m)) => m.step,
                    Ok(None) => break None,
                    Err(e) => {
                        warn!(tenant = %name, steps, error = %e, "import stream failed; the tenant stays unavailable");
                        return Err(e);
                    }
                },
            };
            if bytes.is_empty() {
                continue;
            }
            let step = store::ImportStep::decode(&bytes[..])
                .map_err(|e| Status::invalid_argument(format!("plinth: import step {steps}: {e}")))?;
            let op = match step.op {
                None | Some(store::ImportOp::Begin(_)) => {
                    return Err(Status::invalid_argument(format!("plinth: import step {steps} is not a data step")))
                }
                Some(op) => op,
            };
            let is_finish = matches!(op, store::ImportOp::Finish(_));
            // Every command stays bounded, whatever the client sent. Ordering: each part is
            // applied before the next is proposed, and before the next message is read.
            let mut applied = None;
            for part in op.split(store::IMPORT_STEP_BYTES_MAX) {
                applied = Some(propose(part).await.inspect_err(|s| {
                    warn!(tenant = %name, steps, error = %s.message(), "import step failed; the tenant stays unavailable")
                })?);
                steps += 1;
            }
            if is_finish {
                break applied;
            }
        };
        let Some(finished) = finished else {
            warn!(tenant = %name, steps, "import stream ended before its finish; the tenant stays unavailable");
            return Err(Status::aborted(format!(
                "plinth: the import of tenant {name:?} ended before its finish; the tenant stays unavailable until an \
                 import into it finishes"
            )));
        };
        let count = store::RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            count_only: true,
            ..Default::default()
        };
        let keys = node.store.range(g, &count).map_err(|e| crate::error::store_status(&e))?.count;
        info!(tenant = %name, revision = finished.revision, keys, steps, "import finished");
        Ok(pb::ImportResponse {
            tenant: Some(tenant),
            floor: finished.floor,
            revision: finished.revision,
            compact_revision: finished.compact_revision,
            keys,
            steps,
        })
    }
}
