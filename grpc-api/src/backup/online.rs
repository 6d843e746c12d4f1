//! The client side of online imports: `plinth tenant restore` (a backup chain into a live
//! tenant) and the stream both it and `plinth migrate` feed (`plinth.v1.Tenants/Import`).
//!
//! A restore reads the chain twice. First every object the target revision needs is read
//! whole and run through the planner with its output dropped: checksums, sizes, headers,
//! record counts and the chain's continuity are all checked before the tenant is touched,
//! so a corrupted object fails the command while the tenant still serves its data. Then the
//! chain is read again and the planner's operations go to the server, one step per
//! message, through a queue of [`IMPORT_QUEUE_STEPS`]: the server applies a step before it
//! reads the next, so the reader waits for the cluster rather than filling memory.

use std::io::IsTerminal;

use anyhow::Context;
use prost::Message;
use tokio::sync::mpsc;

use super::target::BackupTarget;
use crate::pb::plinthv1 as pb;
use crate::pb::plinthv1::tenants_client::TenantsClient;

/// The error of a send after the server ended the import (its answer tells why).
pub const SERVER_ENDED: &str = "the server ended the import";

/// Steps queued between the producer (backup reader, etcd watch) and the gRPC stream.
pub const IMPORT_QUEUE_STEPS: usize = 4;

/// An open import stream: steps in, the server's answer once the finish applied.
pub struct ImportSender {
    tx: mpsc::Sender<pb::ImportRequest>,
    call: tokio::task::JoinHandle<Result<pb::ImportResponse, tonic::Status>>,
}

impl ImportSender {
    /// Opens the import of `tenant` (created first when `create`; refused unless empty
    /// when `require_empty`). The server begins the import at once.
    pub async fn open(
        channel: tonic::transport::Channel,
        token: Option<&str>,
        tenant: &str,
        create: bool,
        require_empty: bool,
    ) -> anyhow::Result<ImportSender> {
        let (tx, rx) = mpsc::channel(IMPORT_QUEUE_STEPS);
        let first = pb::ImportRequest { tenant: tenant.to_string(), create, require_empty, step: Default::default() };
        tx.send(first).await.expect("the receiver is alive");
        // No deadline: an import lasts as long as its data (or, for a migration, the
        // operator) needs. Every step has the server's request timeout.
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(t) = token {
            request.metadata_mut().insert("token", t.parse().context("auth token")?);
        }
        let mut client = TenantsClient::new(channel).max_decoding_message_size(1 << 20);
        let call = tokio::spawn(async move { client.import(request).await.map(tonic::Response::into_inner) });
        Ok(ImportSender { tx, call })
    }

    /// A handle that sends steps from a blocking thread.
    pub fn blocking_handle(&self) -> BlockingImport {
        BlockingImport { tx: self.tx.clone() }
    }

    /// Sends one step; waits while the queue is full. An error means the server ended the
    /// import: [`ImportSender::finish`] tells why.
    pub async fn send(&self, op: store::ImportOp) -> anyhow::Result<()> {
        self.tx.send(request(op)).await.map_err(|_| anyhow::anyhow!("{SERVER_ENDED}"))
    }

    /// Ends the stream and waits for the server's answer.
    pub async fn finish(self) -> anyhow::Result<pb::ImportResponse> {
        drop(self.tx);
        match self.call.await.context("import call")? {
            Ok(r) => Ok(r),
            Err(s) => anyhow::bail!(
                "{}",
                if s.message().is_empty() { format!("{:?}", s.code()) } else { s.message().to_string() }
            ),
        }
    }
}

/// Sends steps of an [`ImportSender`] from a blocking thread.
#[derive(Clone)]
pub struct BlockingImport {
    tx: mpsc::Sender<pb::ImportRequest>,
}

impl BlockingImport {
    pub fn send(&self, op: store::ImportOp) -> anyhow::Result<()> {
        self.tx.blocking_send(request(op)).map_err(|_| anyhow::anyhow!("{SERVER_ENDED}"))
    }
}

fn request(op: store::ImportOp) -> pb::ImportRequest {
    // The import id is the server's: it stamps its own on every step.
    let step = store::ImportStep { import_id: 0, op: Some(op) };
    pb::ImportRequest { step: step.encode_to_vec().into(), ..Default::default() }
}

/// A progress spinner on stderr, hidden unless stdout and stderr are terminals and the
/// output is text.
pub fn progress(json: bool, what: &str) -> indicatif::ProgressBar {
    if json || !std::io::stderr().is_terminal() || !std::io::stdout().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// The objects of `tenant`'s chain to `revision` (`None`: the newest), read whole and
/// checked, chain and all, without touching anything. Returns the revision.
pub fn verify_chain(target: &dyn BackupTarget, tenant: &str, revision: Option<i64>) -> anyhow::Result<i64> {
    let (revision, chain) = chain(target, tenant, revision)?;
    let mut planner = store::ImportPlanner::new(revision)?;
    for entry in &chain {
        super::read_object(target, entry, &mut |record| {
            planner
                .push(record, &mut |_| Ok(()))
                .with_context(|| format!("backup object {} is corrupted", entry.object))
        })?;
    }
    planner.finish(&mut |_| Ok(())).context("the backup chain is incomplete")?;
    Ok(revision)
}

/// Reads `tenant`'s chain to `revision` and hands every import operation to `send`.
pub fn stream_chain(
    target: &dyn BackupTarget,
    tenant: &str,
    revision: i64,
    send: &mut dyn FnMut(store::ImportOp) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (_, chain) = chain(target, tenant, Some(revision))?;
    let mut planner = store::ImportPlanner::new(revision)?;
    // The planner's sink speaks store errors; a send failure is kept aside and reported.
    let mut failed: Option<anyhow::Error> = None;
    let mut sink = |op: store::ImportOp| match send(op) {
        Ok(()) => Ok(()),
        Err(e) => {
            failed = Some(e);
            Err(store::Error::InvalidCommand("the import stream ended".into()))
        }
    };
    let mut result = Ok(());
    for entry in &chain {
        result = super::read_object(target, entry, &mut |record| {
            planner.push(record, &mut sink).with_context(|| format!("restoring from backup object {}", entry.object))
        });
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = planner.finish(&mut sink).map_err(anyhow::Error::from);
    }
    match failed {
        Some(e) => Err(e),
        None => result,
    }
}

/// The revision to restore (`None`: the newest the backups reach) and the backups that
/// reach it: the newest full backup at or before it and the deltas after it.
pub(crate) fn chain(
    target: &dyn BackupTarget,
    tenant: &str,
    revision: Option<i64>,
) -> anyhow::Result<(i64, Vec<super::manifest::Entry>)> {
    let manifest = super::load_manifest(target, tenant)?
        .ok_or_else(|| anyhow::anyhow!("tenant {tenant} has no backups in {}", target.describe()))?;
    let latest = manifest
        .latest_revision()
        .ok_or_else(|| anyhow::anyhow!("tenant {tenant} has no full backup in {}", target.describe()))?;
    let revision = revision.unwrap_or(latest);
    let chain = manifest.chain_to(revision)?.into_iter().cloned().collect();
    Ok((revision, chain))
}

/// What `plinth tenant restore` restores.
pub struct RestoreRequest {
    /// The tenant whose backups are read.
    pub name: String,
    pub backup_dir: Option<std::path::PathBuf>,
    pub backup_url: Option<String>,
    pub to_revision: Option<i64>,
    /// The tenant restored into, created first when `create`.
    pub into: String,
    pub create: bool,
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreSummary {
    pub tenant: String,
    pub from: String,
    pub restored_revision: i64,
    /// The tenant's revision before the restore.
    pub floor: i64,
    pub revision: i64,
    pub compact_revision: i64,
    pub keys: i64,
    pub steps: u64,
}

/// Runs `plinth tenant restore`: verifies the chain, then streams it into the tenant.
pub async fn restore(
    channel: tonic::transport::Channel,
    token: Option<&str>,
    req: RestoreRequest,
    json: bool,
) -> anyhow::Result<RestoreSummary> {
    let open = {
        let (dir, url) = (req.backup_dir.clone(), req.backup_url.clone());
        move || super::open_target(dir.as_deref(), url.as_deref())
    };
    // Ordering: the whole chain is checked before the import begins (which wipes the
    // tenant), so a corrupted backup leaves the tenant serving its data. Targets block on
    // their own I/O, so they are read off the async runtime.
    let bar = progress(json, &format!("verifying the backups of {}", req.name));
    let (name, to_revision, open2) = (req.name.clone(), req.to_revision, open.clone());
    let revision = tokio::task::spawn_blocking(move || verify_chain(open2()?.as_ref(), &name, to_revision))
        .await
        .context("verifying the backups")?
        .with_context(|| format!("tenant {} untouched", req.into))?;
    bar.set_message(format!("restoring {} at revision {revision} into {}", req.name, req.into));
    let import = ImportSender::open(channel, token, &req.into, req.create, false).await?;
    let handle = import.blocking_handle();
    let name = req.name.clone();
    let bar2 = bar.clone();
    let produced = tokio::task::spawn_blocking(move || {
        let mut steps = 0u64;
        stream_chain(open()?.as_ref(), &name, revision, &mut |op| {
            steps += 1;
            bar2.set_message(format!("restoring {name} at revision {revision}: {steps} steps sent"));
            handle.send(op)
        })
    })
    .await
    .context("reading the backups")?;
    let answer = import.finish().await;
    bar.finish_and_clear();
    let answer = match (produced, answer) {
        (_, Ok(a)) => a,
        (Err(e), Err(_)) if !format!("{e:#}").contains(SERVER_ENDED) => {
            return Err(e.context(format!("tenant {} is left unavailable: run the restore again", req.into)))
        }
        (_, Err(e)) => return Err(e.context(format!("restoring tenant {}", req.into))),
    };
    Ok(RestoreSummary {
        tenant: req.into,
        from: req.name,
        restored_revision: revision,
        floor: answer.floor,
        revision: answer.revision,
        compact_revision: answer.compact_revision,
        keys: answer.keys,
        steps: answer.steps,
    })
}
