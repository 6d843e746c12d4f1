//! `plinth migrate`: a running etcd's keyspace moved into a Plinth tenant, live, keeping every
//! revision, so clients such as kube-apiserver keep their resourceVersions.
//!
//! ```text
//!  etcd ──Range @S (paged)──────────▶ Keys{S}*        ─┐
//!       ──Watch from S+1 (ordered)──▶ Events*          ├─▶ plinth.v1.Tenants/Import ─▶ tenant's log
//!       ──LeaseLeases + TimeToLive──▶ Leases, Finish  ─┘
//! ```
//!
//! 1. The tenant is created if missing and must never have held data (revision 1): its
//!    revisions become etcd's, which only an empty tenant can take. From the import's begin
//!    on, the tenant answers its clients `etcdserver: tenant is being restored`.
//! 2. One revision S of etcd (the header of a first read) is read whole with paged ranges
//!    at S: every key with its create and mod revisions, version, lease and value.
//! 3. A watch of every key from S + 1 follows etcd; each response's events keep their order,
//!    and the events of one revision (a txn) get sub revisions 0, 1, ... in that order.
//!    Events are sent in steps of at most [`store::IMPORT_STEP_BYTES_MAX`] bytes or
//!    [`EVENTS_FLUSH_INTERVAL`]. Every [`PROGRESS_INTERVAL`] the watch is asked for its
//!    progress, whose header is etcd's current revision (etcd answers only once the watch
//!    has delivered everything up to it): the lag is that minus the last revision sent to
//!    Plinth, printed to stderr. Sent steps are applied in order before the finish is.
//! 4. With `--until-caught-up`, once two progress answers in a row show no lag at the same
//!    revision (everything sent, and etcd took no write for a whole progress interval: its
//!    writers have stopped), or otherwise on SIGINT/SIGTERM: the lease table is read (LeaseLeases, then
//!    LeaseTimeToLive of each: its granted TTL, and its remaining TTL kept as a checkpoint)
//!    and the import finishes at the last revision applied, with etcd's current revision
//!    then. A key attached to a lease that expired meanwhile gets a lease of
//!    [`store::IMPORT_UNKNOWN_LEASE_TTL_SECS`] (its delete event comes after the finish).
//!
//! If etcd compacts past what the watch has delivered, the watch is canceled with a compact
//! revision and the migration fails, telling so: the tenant is then left unavailable until
//! a migration into it finishes (running it again starts over: a tenant that was empty
//! before the failed one takes it).
//!
//! The etcd side uses the client stubs generated from the etcd protos this crate already
//! compiles for its server: the same tonic, TLS stack and connection code as `plinth tenant`,
//! and no second etcd client library with its own gRPC stack in the server binary.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use prost::Message;
use tokio_stream::StreamExt;

use crate::backup::online::ImportSender;
use crate::pb::etcdserverpb as etcd;
use crate::pb::plinthv1 as pb;
use crate::tenant_cli::ClientEndpoint;

/// Keys per range page read from etcd.
const RANGE_PAGE_KEYS: i64 = 256;
/// Largest etcd response accepted: a page of keys at etcd's largest request size (1.5 MiB
/// values by default), with room to spare.
const ETCD_MESSAGE_BYTES_MAX: usize = 512 << 20;
/// Events wait at most this long before they are sent.
const EVENTS_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// How often the watch is asked for its progress (and the lag printed).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Leases per lease step.
const LEASES_PER_STEP_MAX: usize = 16 * 1024;
/// Watch requests queued for the etcd watch stream (creates and progress requests).
const WATCH_REQUESTS_QUEUED_MAX: usize = 4;

/// `plinth migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// etcd client endpoints (comma-separated URLs or host:port) to migrate from.
    #[arg(long)]
    pub from: String,
    /// CA bundle to verify etcd's certificate.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// `name:password` of an etcd user allowed to read every key and lease.
    #[arg(long)]
    pub from_user: Option<String>,
    /// The Plinth tenant to fill (created if missing; it must be empty).
    #[arg(long)]
    pub tenant: String,
    /// Plinth client endpoints.
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    /// CA bundle to verify Plinth's certificate.
    #[arg(long)]
    pub plinth_cacert: Option<PathBuf>,
    /// Client certificate for Plinth (the cluster admin's).
    #[arg(long)]
    pub plinth_cert: Option<PathBuf>,
    /// Client key for Plinth.
    #[arg(long)]
    pub plinth_key: Option<PathBuf>,
    /// `name:password` of Plinth's root user when auth is on.
    #[arg(long)]
    pub user: Option<String>,
    /// Finish as soon as the tenant has caught up with etcd (otherwise: on SIGINT/SIGTERM).
    #[arg(long)]
    pub until_caught_up: bool,
    /// Output format: `simple` or `json`.
    #[arg(short = 'w', long = "write-out", default_value = "simple")]
    pub write_out: String,
}

/// What a migration did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrateSummary {
    pub tenant: String,
    /// The revision the keys were read at, and the revision the import finished at.
    pub snapshot_revision: i64,
    pub revision: i64,
    pub keys: i64,
    pub events: u64,
    pub leases: usize,
    pub steps: u64,
}

/// The etcd side of a migration.
struct Source {
    kv: etcd::kv_client::KvClient<tonic::transport::Channel>,
    watch: etcd::watch_client::WatchClient<tonic::transport::Channel>,
    lease: etcd::lease_client::LeaseClient<tonic::transport::Channel>,
    token: Option<String>,
}

impl Source {
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("token", t.parse().expect("tokens are ASCII"));
        }
        r
    }
}

fn etcd_error(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("etcd {what}: {}", s.message())
}

/// Events of the watch not yet sent, and where the stream of revisions stands.
struct Pending {
    events: Vec<store::EventRecord>,
    bytes: usize,
    since: Option<Instant>,
    /// The last revision whose events were all read, and the next sub revision of the
    /// revision being read.
    last_main: i64,
    next_sub: i64,
}

/// Runs `plinth migrate`.
pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let json = match args.write_out.as_str() {
        "json" => true,
        "simple" => false,
        other => anyhow::bail!("unsupported output format {other:?} (simple, json)"),
    };
    let (etcd_channel, etcd_token) = ClientEndpoint {
        endpoints: &args.from,
        cacert: args.cacert.as_deref(),
        cert: args.cert.as_deref(),
        key: args.key.as_deref(),
        user: args.from_user.as_deref(),
    }
    .connect()
    .await
    .context("connecting to etcd")?;
    let source = Source {
        kv: etcd::kv_client::KvClient::new(etcd_channel.clone()).max_decoding_message_size(ETCD_MESSAGE_BYTES_MAX),
        watch: etcd::watch_client::WatchClient::new(etcd_channel.clone())
            .max_decoding_message_size(ETCD_MESSAGE_BYTES_MAX),
        lease: etcd::lease_client::LeaseClient::new(etcd_channel),
        token: etcd_token,
    };
    let (plinth_channel, plinth_token) = ClientEndpoint {
        endpoints: &args.endpoints,
        cacert: args.plinth_cacert.as_deref(),
        cert: args.plinth_cert.as_deref(),
        key: args.plinth_key.as_deref(),
        user: args.user.as_deref(),
    }
    .connect()
    .await
    .context("connecting to Plinth")?;

    // The tenant: created unless it exists (the server refuses one that held data).
    let mut admin = pb::tenants_client::TenantsClient::new(plinth_channel.clone());
    let show =
        crate::tenant_cli::with_token(pb::ShowTenantRequest { name: args.tenant.clone() }, plinth_token.as_deref());
    let exists = match admin.show(show).await {
        Ok(_) => true,
        // The default tenant has no registry record.
        Err(_) if args.tenant == crate::tenants::DEFAULT_TENANT_NAME => true,
        Err(s) if s.code() == tonic::Code::NotFound => false,
        Err(s) => anyhow::bail!("tenant {}: {}", args.tenant, s.message()),
    };
    let import = ImportSender::open(plinth_channel, plinth_token.as_deref(), &args.tenant, !exists, true).await?;
    let outcome = migrate(&source, &import, &args, json).await;
    let answer = import.finish().await;
    let summary = match (outcome, answer) {
        (Ok(mut s), Ok(a)) => {
            s.keys = a.keys;
            s.steps = a.steps;
            s.revision = a.revision;
            s
        }
        // The server ended the import: its reason is the one to tell.
        (Ok(_), Err(e)) => return Err(e.context(format!("migrating into tenant {}", args.tenant))),
        (Err(e), Err(server)) if format!("{e:#}").contains(crate::backup::online::SERVER_ENDED) => {
            return Err(server.context(format!("migrating into tenant {}", args.tenant)))
        }
        (Err(e), _) => {
            return Err(
                e.context(format!("tenant {} is left unavailable until a migration into it finishes", args.tenant))
            )
        }
    };
    if json {
        println!("{}", serde_json::to_string(&summary).expect("summaries serialize"));
    } else {
        println!(
            "migrated into tenant {}: revision {} ({} keys read at revision {}, then {} events, {} leases)",
            summary.tenant, summary.revision, summary.keys, summary.snapshot_revision, summary.events, summary.leases
        );
    }
    Ok(())
}

async fn migrate(
    source: &Source,
    import: &ImportSender,
    args: &MigrateArgs,
    json: bool,
) -> anyhow::Result<MigrateSummary> {
    let bar = crate::backup::online::progress(json, "reading etcd");
    // The revision to copy: etcd's current one.
    let head = source
        .kv
        .clone()
        .range(source.request(etcd::RangeRequest { key: Bytes::from_static(b"\0"), limit: 1, ..Default::default() }))
        .await
        .map_err(|s| etcd_error("range", s))?
        .into_inner();
    let s = head.header.map(|h| h.revision).unwrap_or(1).max(1);
    let mut keys_sent = 0u64;
    let mut page_from = Bytes::from_static(b"\0");
    let mut batch: Vec<store::KeyRecord> = Vec::new();
    let mut batch_bytes = 0usize;
    loop {
        let page = source
            .kv
            .clone()
            .range(source.request(etcd::RangeRequest {
                key: page_from.clone(),
                range_end: Bytes::from_static(b"\0"),
                limit: RANGE_PAGE_KEYS,
                revision: s,
                ..Default::default()
            }))
            .await
            .map_err(|st| etcd_error(&format!("range at revision {s}"), st))?
            .into_inner();
        let more = page.more;
        for kv in page.kvs {
            let mut next = kv.key.to_vec();
            next.push(0);
            page_from = Bytes::from(next);
            let record = store::KeyRecord { kv: Some(crate::kv::kv_from_pb(kv)), sub: 0 };
            let len = record.encoded_len();
            if !batch.is_empty() && batch_bytes + len > store::IMPORT_STEP_BYTES_MAX {
                import.send(keys_step(s, std::mem::take(&mut batch))).await?;
                batch_bytes = 0;
            }
            batch_bytes += len;
            batch.push(record);
            keys_sent += 1;
        }
        bar.set_message(format!("{keys_sent} keys read at revision {s}"));
        if !more {
            break;
        }
    }
    // Always sent, even empty: it sets the revision the keys are as of.
    import.send(keys_step(s, batch)).await?;

    // Follow etcd from S + 1.
    let (watch_tx, watch_rx) = tokio::sync::mpsc::channel(WATCH_REQUESTS_QUEUED_MAX);
    let create = etcd::WatchRequest {
        request_union: Some(etcd::watch_request::RequestUnion::CreateRequest(etcd::WatchCreateRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            start_revision: s + 1,
            progress_notify: true,
            ..Default::default()
        })),
    };
    watch_tx.send(create).await.expect("the receiver is alive");
    let mut responses = source
        .watch
        .clone()
        .watch(source.request(tokio_stream::wrappers::ReceiverStream::new(watch_rx)))
        .await
        .map_err(|st| etcd_error("watch", st))?
        .into_inner();
    let mut pending = Pending { events: Vec::new(), bytes: 0, since: None, last_main: s, next_sub: 0 };
    let mut events_sent = 0u64;
    let mut applied = s;
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    let mut flush = tokio::time::interval(EVENTS_FLUSH_INTERVAL);
    let mut stop = stop_signals()?;
    let mut last_lag_print = Instant::now();
    // The revision of the last progress answer with nothing left to send, while no event
    // came after it.
    let mut quiet_at: Option<i64> = None;
    loop {
        tokio::select! {
            response = responses.next() => {
                let r = match response {
                    Some(Ok(r)) => r,
                    Some(Err(st)) => return Err(etcd_error("watch", st)),
                    None => anyhow::bail!("etcd ended the watch"),
                };
                if r.compact_revision != 0 {
                    anyhow::bail!(
                        "etcd compacted its history at revision {}, past revision {} the migration had reached",
                        r.compact_revision, pending.last_main
                    );
                }
                if r.canceled {
                    anyhow::bail!("etcd canceled the watch: {}", r.cancel_reason);
                }
                let current = r.header.as_ref().map_or(0, |h| h.revision);
                if r.events.is_empty() && !r.created {
                    // A progress answer: etcd is at `current` and the watch has delivered
                    // everything up to it.
                    if !pending.events.is_empty() {
                        events_sent += pending.events.len() as u64;
                        import.send(events_step(&mut pending)).await?;
                    }
                    applied = applied.max(pending.last_main);
                    let lag = current - applied;
                    if last_lag_print.elapsed() >= Duration::from_secs(2) {
                        eprintln!("migrate: etcd at revision {current}, tenant at {applied}, lag {lag}");
                        last_lag_print = Instant::now();
                    }
                    bar.set_message(format!("following etcd: revision {applied}, lag {lag}"));
                    if lag > 0 {
                        quiet_at = None;
                    } else if quiet_at == Some(current) {
                        if args.until_caught_up {
                            break;
                        }
                    } else {
                        quiet_at = Some(current);
                    }
                    continue;
                }
                quiet_at = None;
                for ev in r.events {
                    push_event(&mut pending, ev)?;
                    if pending.bytes >= store::IMPORT_STEP_BYTES_MAX {
                        events_sent += pending.events.len() as u64;
                        import.send(events_step(&mut pending)).await?;
                    }
                }
            }
            _ = flush.tick() => {
                if pending.since.is_some_and(|t| t.elapsed() >= EVENTS_FLUSH_INTERVAL) {
                    events_sent += pending.events.len() as u64;
                    import.send(events_step(&mut pending)).await?;
                }
            }
            _ = progress.tick() => {
                let request = etcd::WatchRequest {
                    request_union: Some(etcd::watch_request::RequestUnion::ProgressRequest(etcd::WatchProgressRequest {})),
                };
                // A full queue means the previous requests are still in flight: skip one.
                let _ = watch_tx.try_send(request);
            }
            _ = stop.recv() => {
                eprintln!("migrate: stopping; finishing the import at revision {}", pending.last_main);
                break;
            }
        }
    }
    if !pending.events.is_empty() {
        events_sent += pending.events.len() as u64;
        import.send(events_step(&mut pending)).await?;
    }
    // The events of the revision being read when the migration stopped are all in: a
    // watch response holds whole revisions.
    let revision = pending.last_main;
    drop(watch_tx);

    // The leases as of now.
    let leases = read_leases(source).await?;
    for chunk in leases.chunks(LEASES_PER_STEP_MAX) {
        import.send(store::ImportOp::Leases(store::ImportLeases { leases: chunk.to_vec(), fallback: false })).await?;
    }
    import
        .send(store::ImportOp::Finish(store::ImportFinish {
            revision,
            compact_revision: s,
            auth: None,
            strict_leases: false,
        }))
        .await?;
    bar.finish_and_clear();
    Ok(MigrateSummary {
        tenant: args.tenant.clone(),
        snapshot_revision: s,
        revision,
        keys: 0,
        events: events_sent,
        leases: leases.len(),
        steps: 0,
    })
}

fn keys_step(revision: i64, keys: Vec<store::KeyRecord>) -> store::ImportOp {
    store::ImportOp::Keys(store::ImportKeys { revision, keys })
}

fn events_step(pending: &mut Pending) -> store::ImportOp {
    pending.bytes = 0;
    pending.since = None;
    store::ImportOp::Events(store::ImportEvents { events: std::mem::take(&mut pending.events) })
}

/// Adds one watch event, giving it the next sub revision of its revision.
fn push_event(pending: &mut Pending, ev: crate::pb::mvccpb::Event) -> anyhow::Result<()> {
    let kv = ev.kv.ok_or_else(|| anyhow::anyhow!("etcd sent an event without a key"))?;
    let main = kv.mod_revision;
    anyhow::ensure!(main >= pending.last_main, "etcd sent revision {main} after {}", pending.last_main);
    if main > pending.last_main {
        pending.last_main = main;
        pending.next_sub = 0;
    }
    let delete = ev.r#type == crate::pb::mvccpb::event::EventType::Delete as i32;
    let kv = if delete {
        store::KeyValue { key: kv.key, mod_revision: main, ..Default::default() }
    } else {
        crate::kv::kv_from_pb(kv)
    };
    let record = store::EventRecord { delete, kv: Some(kv), sub: pending.next_sub, prev_kv: None };
    pending.next_sub += 1;
    pending.bytes += record.encoded_len();
    pending.since.get_or_insert_with(Instant::now);
    pending.events.push(record);
    Ok(())
}

/// Every lease of etcd with its granted TTL and, as its checkpoint, its remaining TTL.
async fn read_leases(source: &Source) -> anyhow::Result<Vec<store::Lease>> {
    let list = source
        .lease
        .clone()
        .lease_leases(source.request(etcd::LeaseLeasesRequest {}))
        .await
        .map_err(|s| etcd_error("lease list", s))?
        .into_inner();
    let mut out = Vec::with_capacity(list.leases.len());
    for l in list.leases {
        let ttl = source
            .lease
            .clone()
            .lease_time_to_live(source.request(etcd::LeaseTimeToLiveRequest { id: l.id, keys: false }))
            .await
            .map_err(|s| etcd_error("lease time-to-live", s))?
            .into_inner();
        if ttl.ttl < 0 {
            continue; // Expired since it was listed.
        }
        out.push(store::Lease { id: l.id, ttl: ttl.granted_ttl, remaining_ttl: ttl.ttl });
    }
    out.sort_by_key(|l| l.id);
    Ok(out)
}

/// SIGINT and SIGTERM, as one stream.
fn stop_signals() -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    for kind in [SignalKind::interrupt(), SignalKind::terminate()] {
        let mut s = signal(kind).context("installing a signal handler")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                let _ = tx.try_send(());
            }
        });
    }
    Ok(rx)
}
