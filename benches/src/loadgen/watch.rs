//! The watch workload: `--streams` watch streams with `--watchers-per-stream` watchers each,
//! all on one key prefix, while `--clients` put to keys under it. Every event carries its
//! put's send time, so each delivery gives a put→event latency; the headline figure is
//! events delivered per second.
//!
//! The watch streams are raw gRPC streams of the etcd v3 `Watch` service, decoded into
//! `Bytes`-backed messages (no copy of keys and values), with latencies kept in per-stream
//! histograms: at a million events a second, a client that copies every event and touches
//! shared counters per event is itself the limit, and hides the server's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use etcd_client::Client;
use grpc_api::pb::etcdserverpb::watch_client::WatchClient;
use grpc_api::pb::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::hist::Hist;
use super::report::Report;
use super::workloads::make_key;
use super::{drive, normalize_endpoint, prefix_end, seed, Common, Recorder, Worker};

#[derive(Args, Clone, Debug)]
pub struct WatchArgs {
    /// Watch streams (spread over the connections).
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Watchers on each stream; every watcher sees every put.
    #[arg(long, default_value_t = 10)]
    pub watchers_per_stream: usize,
    /// Distinct keys the puts go to.
    #[arg(long, default_value_t = 1000)]
    pub key_space_size: u64,
    /// Value size (at least 8: the send timestamp).
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
    /// Seconds to wait for outstanding events after the last put.
    #[arg(long, default_value_t = 10)]
    pub drain_timeout: u64,
}

const PREFIX: &str = "/bench-watch/";
/// A watch stream adds its local event histogram to the shared one after this many events,
const FLUSH_EVENTS: u64 = 1024;
/// or once it has received nothing for this long.
const FLUSH_IDLE: Duration = Duration::from_millis(20);
const PUT: usize = 0;
const EVENT: usize = 1;

struct PutWorker {
    c: Client,
    rec: Arc<Recorder>,
    rng: SmallRng,
    space: u64,
    val_size: usize,
    epoch: Instant,
}

impl Worker for PutWorker {
    async fn step(&mut self) {
        let i = self.rng.random_range(0..self.space);
        let mut key = PREFIX.as_bytes().to_vec();
        key.extend(make_key(i, 8));
        let mut val = vec![b'x'; self.val_size.max(8)];
        let sent = self.epoch.elapsed().as_nanos() as u64;
        val[..8].copy_from_slice(&sent.to_le_bytes());
        let c = &mut self.c;
        self.rec.time(PUT, c.put(key, val, None)).await;
    }
}

pub async fn watch(common: &Common, args: &WatchArgs) -> anyhow::Result<Report> {
    if args.streams == 0 || args.watchers_per_stream == 0 {
        bail!("--streams and --watchers-per-stream must be at least 1");
    }
    let conns = common.connect().await?;
    let rec = Recorder::new(&[("put", true), ("event", false)]);
    let epoch = rec.start;
    let events = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicU64::new(0));
    // Nanoseconds after `epoch` of the latest event delivery.
    let last_event = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    // One channel per connection, as the putters' (connection i to endpoint i mod n).
    let mut channels = Vec::with_capacity(common.conns);
    for i in 0..common.conns {
        let ep = normalize_endpoint(&common.endpoints[i % common.endpoints.len()]);
        let channel = tonic::transport::Endpoint::from_shared(ep.clone())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to {ep}"))?;
        channels.push(channel);
    }
    // The request sides stay open for the whole run: a closed one ends the stream.
    let mut request_sides = Vec::new();
    for s in 0..args.streams {
        let mut client = WatchClient::new(channels[s % channels.len()].clone()).max_decoding_message_size(usize::MAX);
        let (tx, requests) = tokio::sync::mpsc::channel(args.watchers_per_stream.max(1));
        for _ in 0..args.watchers_per_stream {
            let create = WatchCreateRequest {
                key: PREFIX.as_bytes().to_vec().into(),
                range_end: prefix_end(PREFIX.as_bytes()).into(),
                ..Default::default()
            };
            tx.send(WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) })
                .await
                .context("queue a watch create")?;
        }
        request_sides.push(tx);
        let mut rx =
            client.watch(tokio_stream::wrappers::ReceiverStream::new(requests)).await.context("watch")?.into_inner();
        let (rec, events, created, last_event) = (rec.clone(), events.clone(), created.clone(), last_event.clone());
        streams.push(tokio::spawn(async move {
            // Event latencies go to a task-local histogram, added to the shared one every
            // FLUSH_EVENTS events or once the stream is idle for FLUSH_IDLE: at a million
            // events a second, shared counters per event would make the load generator,
            // not the server, the limit.
            let mut local = Hist::default();
            let mut latest = 0u64;
            let flush = |local: &mut Hist, latest: u64| {
                if local.count > 0 {
                    rec.kinds[EVENT].hist.add(local);
                    events.fetch_add(local.count, Ordering::Relaxed);
                    last_event.fetch_max(latest, Ordering::Relaxed);
                    *local = Hist::default();
                }
            };
            loop {
                let message = match tokio::time::timeout(FLUSH_IDLE, rx.message()).await {
                    Ok(m) => m,
                    Err(_) => {
                        flush(&mut local, latest);
                        continue;
                    }
                };
                match message {
                    Ok(Some(resp)) => {
                        if resp.created {
                            created.fetch_add(1, Ordering::Relaxed);
                        }
                        if resp.canceled {
                            rec.err(EVENT, format!("watch canceled: {}", resp.cancel_reason));
                        }
                        if resp.events.is_empty() {
                            continue;
                        }
                        let now = epoch.elapsed().as_nanos() as u64;
                        for ev in &resp.events {
                            match ev.kv.as_ref().map(|kv| &kv.value) {
                                Some(v) if v.len() >= 8 => {
                                    let sent = u64::from_le_bytes(v[..8].try_into().unwrap());
                                    local.record_nanos(now.saturating_sub(sent));
                                }
                                _ => rec.err(EVENT, "event without timestamp"),
                            }
                        }
                        latest = now;
                        if local.count >= FLUSH_EVENTS {
                            flush(&mut local, latest);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        rec.err(EVENT, format!("watch stream: {e}"));
                        break;
                    }
                }
            }
            flush(&mut local, latest);
        }));
    }
    let watchers = (args.streams * args.watchers_per_stream) as u64;
    let t = Instant::now();
    while created.load(Ordering::Relaxed) < watchers {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("only {} of {watchers} watchers created after 30 s", created.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let workers = common
        .clients(&conns)
        .into_iter()
        .enumerate()
        .map(|(i, c)| PutWorker {
            c,
            rec: rec.clone(),
            rng: SmallRng::seed_from_u64(seed(i)),
            space: args.key_space_size.max(1),
            val_size: args.val_size,
            epoch,
        })
        .collect();
    let put_start = epoch.elapsed();
    let elapsed = drive(common, &rec, workers).await;
    let puts = rec.kinds[PUT].hist.count();
    let expected = puts * watchers;
    let t = Instant::now();
    while events.load(Ordering::Relaxed) < expected && t.elapsed() < Duration::from_secs(args.drain_timeout) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = events.load(Ordering::Relaxed);
    let span = Duration::from_nanos(last_event.load(Ordering::Relaxed)).saturating_sub(put_start).max(elapsed);
    for s in streams {
        s.abort();
    }
    drop(request_sides);
    let mut r = Report::new("watch", common, &rec, elapsed);
    let ev = super::report::Latency::of(&rec.kinds[EVENT].hist.snapshot());
    r.extra("watchers", watchers);
    r.extra("events_expected", expected);
    r.extra("events", got);
    r.extra("events_per_s", got as f64 / span.as_secs_f64().max(1e-9));
    r.extra("event_latency_ms", serde_json::to_value(ev)?);
    Ok(r)
}
