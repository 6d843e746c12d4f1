//! A Kubernetes-shaped workload: the requests kube-apiserver sends to etcd.
//!
//! Per resource type a prefix `/registry/<type>/<namespace>/<name>`. Reads: get by key with
//! limit 1; paginated lists (limit `--page-size`, later pages pinned to the first page's
//! revision); `count_only` on a type's prefix. Writes are the apiserver's transactions:
//! create = `Txn{MOD(key)==0 → put}`, update = `Txn{MOD(key)==R → put, else get}`,
//! delete = `Txn{MOD(key)==R → delete, else get}`. Events are put with a lease (TTL 3660 s)
//! that is reused for up to 1000 objects. One watch per type prefix with prev_kv and
//! progress_notify. Periodic compaction as the apiserver's compactor does it:
//! `Txn{VERSION(compact_rev_key)==v → put compact_rev_key, else get}` then `Compact(prev)`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::report::Report;
use super::workloads::{random_value, with_lease};
use super::{drive, parallel_setup, prefix_end, seed, Common, Recorder, Worker};

#[derive(Args, Clone, Debug)]
pub struct K8sArgs {
    /// Resource types as name:value_bytes:weight, comma-separated. A type named `events`
    /// is only ever created, with a lease, like the apiserver's events.
    #[arg(
        long,
        default_value = "pods:2500:30,configmaps:1200:10,secrets:800:10,leases:300:25,events:600:20,services:700:5"
    )]
    pub types: String,
    /// Namespaces objects are spread over.
    #[arg(long, default_value_t = 10)]
    pub namespaces: u64,
    /// Objects created per type before measuring.
    #[arg(long, default_value_t = 500)]
    pub objects: u64,
    /// Operation mix as name=weight over get, list, count, create, update, delete.
    #[arg(long, default_value = "get=30,list=5,count=1,create=14,update=40,delete=10")]
    pub mix: String,
    /// Fraction of lists over a whole type rather than one namespace.
    #[arg(long, default_value_t = 0.2)]
    pub cluster_list_ratio: f64,
    /// Page size of lists.
    #[arg(long, default_value_t = 500)]
    pub page_size: i64,
    /// Seconds between compaction rounds (the apiserver's default is 300; 0 = off).
    #[arg(long, default_value_t = 5.0)]
    pub compact_interval: f64,
    /// TTL of event leases, seconds.
    #[arg(long, default_value_t = 3660)]
    pub event_ttl: i64,
    /// Objects attached to one lease before a new lease is granted.
    #[arg(long, default_value_t = 1000)]
    pub lease_reuse: u64,
    /// Do not open the per-type watches.
    #[arg(long)]
    pub no_watch: bool,
}

const GET: usize = 0;
const LIST: usize = 1;
const COUNT: usize = 2;
const CREATE: usize = 3;
const UPDATE: usize = 4;
const DELETE: usize = 5;
const LEASE: usize = 6;
const COMPACT_TXN: usize = 7;
const COMPACT: usize = 8;
const KINDS: &[(&str, bool)] = &[
    ("get", true),
    ("list", true),
    ("count", true),
    ("create", true),
    ("update", true),
    ("delete", true),
    ("lease_grant", false),
    ("compact_txn", false),
    ("compact", false),
];
const OPS: [&str; 6] = ["get", "list", "count", "create", "update", "delete"];

struct Type {
    name: String,
    weight: u32,
    value: Vec<u8>,
    events: bool,
    next_id: AtomicU64,
    /// Live objects: (id, mod_revision). Taken out while an update/delete is in flight.
    live: Mutex<Vec<(u64, i64)>>,
}

struct Shared {
    args: K8sArgs,
    types: Vec<Type>,
    mix: [u32; 6],
    rec: Arc<Recorder>,
    lease: tokio::sync::Mutex<(i64, u64)>,
    conflicts: AtomicU64,
}

fn parse_types(s: &str) -> anyhow::Result<Vec<Type>> {
    let mut out = Vec::new();
    for (i, t) in s.split(',').filter(|t| !t.is_empty()).enumerate() {
        let parts: Vec<_> = t.split(':').collect();
        let [name, size, weight] = parts[..] else {
            bail!("--types entry {t:?} is not name:value_bytes:weight");
        };
        out.push(Type {
            name: name.to_string(),
            weight: weight.parse().context("type weight")?,
            value: random_value(size.parse().context("type value size")?, 100 + i as u64),
            events: name == "events",
            next_id: AtomicU64::new(0),
            live: Mutex::new(Vec::new()),
        });
    }
    if out.is_empty() || out.iter().all(|t| t.weight == 0) {
        bail!("--types needs at least one type with a weight");
    }
    Ok(out)
}

fn parse_mix(s: &str) -> anyhow::Result<[u32; 6]> {
    let mut mix = [0; 6];
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let Some((name, w)) = part.split_once('=') else {
            bail!("--mix entry {part:?} is not op=weight");
        };
        let Some(i) = OPS.iter().position(|o| *o == name) else {
            bail!("unknown op {name:?} in --mix (ops: {})", OPS.join(", "));
        };
        mix[i] = w.parse().context("mix weight")?;
    }
    if mix.iter().all(|&w| w == 0) {
        bail!("--mix has no weight");
    }
    Ok(mix)
}

fn pick(rng: &mut SmallRng, weights: impl Iterator<Item = u32> + Clone) -> usize {
    let total: u32 = weights.clone().sum();
    let mut x = rng.random_range(0..total);
    for (i, w) in weights.enumerate() {
        if x < w {
            return i;
        }
        x -= w;
    }
    0
}

impl Shared {
    fn key(&self, t: usize, id: u64) -> Vec<u8> {
        let ty = &self.types[t];
        format!("/registry/{}/ns-{}/{}-{id}", ty.name, id % self.args.namespaces.max(1), ty.name).into_bytes()
    }

    async fn event_lease(&self, c: &mut Client, rec: &Recorder) -> Option<i64> {
        let mut l = self.lease.lock().await;
        if l.0 == 0 || l.1 >= self.args.lease_reuse {
            let g = rec.time(LEASE, c.lease_grant(self.args.event_ttl, None)).await?;
            *l = (g.id(), 0);
        }
        l.1 += 1;
        Some(l.0)
    }

    async fn create(&self, c: &mut Client, t: usize, rec: &Recorder) {
        let ty = &self.types[t];
        let id = ty.next_id.fetch_add(1, Ordering::Relaxed);
        let key = self.key(t, id);
        let lease = if ty.events {
            match self.event_lease(c, rec).await {
                Some(l) => l,
                None => return,
            }
        } else {
            0
        };
        let txn = Txn::new().when([Compare::mod_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            ty.value.clone(),
            with_lease(lease),
        )]);
        if let Some(resp) = rec.time(CREATE, c.txn(txn)).await {
            if resp.succeeded() {
                let rev = resp.header().map_or(0, |h| h.revision());
                ty.live.lock().unwrap().push((id, rev));
            } else {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn take(&self, t: usize, rng: &mut SmallRng) -> Option<(u64, i64)> {
        let mut live = self.types[t].live.lock().unwrap();
        if live.is_empty() {
            return None;
        }
        let i = rng.random_range(0..live.len());
        Some(live.swap_remove(i))
    }

    fn peek(&self, t: usize, rng: &mut SmallRng) -> Option<u64> {
        let live = self.types[t].live.lock().unwrap();
        if live.is_empty() {
            return None;
        }
        Some(live[rng.random_range(0..live.len())].0)
    }

    /// Update or delete object `(id, rev)` the apiserver way; returns its new state.
    async fn modify(&self, c: &mut Client, t: usize, (id, rev): (u64, i64), delete: bool) {
        let ty = &self.types[t];
        let key = self.key(t, id);
        let op =
            if delete { TxnOp::delete(key.clone(), None) } else { TxnOp::put(key.clone(), ty.value.clone(), None) };
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([op])
            .or_else([TxnOp::get(key, None)]);
        let kind = if delete { DELETE } else { UPDATE };
        let Some(resp) = self.rec.time(kind, c.txn(txn)).await else {
            ty.live.lock().unwrap().push((id, rev));
            return;
        };
        let now = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            if !delete {
                ty.live.lock().unwrap().push((id, now));
            }
            return;
        }
        self.conflicts.fetch_add(1, Ordering::Relaxed);
        // The else-branch get tells us the current state, as it tells the apiserver.
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
            _ => None,
        });
        if let Some(cur) = current {
            ty.live.lock().unwrap().push((id, cur));
        }
    }

    async fn list(&self, c: &mut Client, t: usize, rng: &mut SmallRng) {
        let ty = &self.types[t];
        let prefix = if rng.random_bool(self.args.cluster_list_ratio.clamp(0.0, 1.0)) {
            format!("/registry/{}/", ty.name)
        } else {
            let ns = rng.random_range(0..self.args.namespaces.max(1));
            format!("/registry/{}/ns-{ns}/", ty.name)
        }
        .into_bytes();
        let end = prefix_end(&prefix);
        let mut key = prefix;
        let mut rev = 0;
        loop {
            let opts = GetOptions::new().with_range(end.clone()).with_limit(self.args.page_size).with_revision(rev);
            let Some(resp) = self.rec.time(LIST, c.get(key.clone(), Some(opts))).await else {
                return;
            };
            if rev == 0 {
                rev = resp.header().map_or(0, |h| h.revision());
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    key = last.key().to_vec();
                    key.push(0);
                }
                _ => return,
            }
        }
    }
}

struct K8sWorker {
    c: Client,
    shared: Arc<Shared>,
    rng: SmallRng,
}

impl Worker for K8sWorker {
    async fn step(&mut self) {
        let s = &*self.shared;
        let (c, rng) = (&mut self.c, &mut self.rng);
        let t = pick(rng, s.types.iter().map(|t| t.weight));
        let mut op = pick(rng, s.mix.iter().copied());
        if s.types[t].events && (op == UPDATE || op == DELETE) {
            op = CREATE;
        }
        match op {
            GET => match s.peek(t, rng) {
                Some(id) => {
                    let key = s.key(t, id);
                    let opts = GetOptions::new().with_limit(1);
                    s.rec.time(GET, c.get(key, Some(opts))).await;
                }
                None => s.create(c, t, &s.rec).await,
            },
            LIST => s.list(c, t, rng).await,
            COUNT => {
                let prefix = format!("/registry/{}/", s.types[t].name);
                let opts = GetOptions::new().with_prefix().with_count_only();
                s.rec.time(COUNT, c.get(prefix, Some(opts))).await;
            }
            CREATE => s.create(c, t, &s.rec).await,
            _ => match s.take(t, rng) {
                Some(obj) => s.modify(c, t, obj, op == DELETE).await,
                None => s.create(c, t, &s.rec).await,
            },
        }
    }
}

/// The apiserver's compactor loop (k8s.io/apiserver/pkg/storage/etcd3/compact.go).
async fn compactor(mut c: Client, rec: Arc<Recorder>, interval: Duration, stop: Arc<AtomicBool>) {
    const KEY: &str = "compact_rev_key";
    let (mut version, mut rev) = (0i64, 0i64);
    let mut next = tokio::time::Instant::now() + interval;
    loop {
        while tokio::time::Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        next += interval;
        let txn = Txn::new()
            .when([Compare::version(KEY, CompareOp::Equal, version)])
            .and_then([TxnOp::put(KEY, rev.to_string(), None)])
            .or_else([TxnOp::get(KEY, None)]);
        let Some(resp) = rec.time(COMPACT_TXN, c.txn(txn)).await else {
            continue;
        };
        let cur_rev = resp.header().map_or(0, |h| h.revision());
        if !resp.succeeded() {
            version = resp
                .op_responses()
                .into_iter()
                .find_map(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.version()),
                    _ => None,
                })
                .unwrap_or(version);
            rev = cur_rev;
            continue;
        }
        version += 1;
        if rev != 0 {
            rec.time(COMPACT, c.compact(rev, None)).await;
        }
        rev = cur_rev;
    }
}

pub async fn k8s(common: &Common, args: &K8sArgs) -> anyhow::Result<Report> {
    let types = parse_types(&args.types)?;
    let mix = parse_mix(&args.mix)?;
    let conns = common.connect().await?;
    let shared = Arc::new(Shared {
        args: args.clone(),
        types,
        mix,
        rec: Recorder::new(KINDS),
        lease: tokio::sync::Mutex::new((0, 0)),
        conflicts: AtomicU64::new(0),
    });

    // Preload, unmeasured.
    let ntypes = shared.types.len() as u64;
    let setup_rec = Recorder::new(KINDS);
    {
        let (shared, c, setup_rec) = (shared.clone(), conns[0].clone(), setup_rec.clone());
        parallel_setup(args.objects * ntypes, common.clients.min(64), move |i| {
            let (shared, mut c, rec) = (shared.clone(), c.clone(), setup_rec.clone());
            async move {
                shared.create(&mut c, (i % ntypes) as usize, &rec).await;
                Ok(())
            }
        })
        .await?;
    }
    let setup_errors = setup_rec.errors();
    if !setup_errors.is_empty() {
        bail!("preload failed: {setup_errors:?}");
    }

    // One watch per type prefix, with prev_kv and progress notify.
    let events = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(AtomicU64::new(0));
    let mut watchers = Vec::new();
    if !args.no_watch {
        for (i, ty) in shared.types.iter().enumerate() {
            let mut c = conns[i % conns.len()].clone();
            let opts = WatchOptions::new().with_prefix().with_prev_key().with_progress_notify();
            let mut ws = c.watch(format!("/registry/{}/", ty.name), Some(opts)).await.context("watch")?;
            let (events, progress, rec) = (events.clone(), progress.clone(), shared.rec.clone());
            watchers.push(tokio::spawn(async move {
                let _c = c;
                loop {
                    match ws.message().await {
                        Ok(Some(r)) => {
                            if r.events().is_empty() && !r.created() {
                                progress.fetch_add(1, Ordering::Relaxed);
                            }
                            events.fetch_add(r.events().len() as u64, Ordering::Relaxed);
                            if r.canceled() {
                                rec.err(LIST, format!("watch canceled: {}", r.cancel_reason()));
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(e) => {
                            rec.err(LIST, format!("watch: {e}"));
                            return;
                        }
                    }
                }
            }));
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let compaction = (args.compact_interval > 0.0).then(|| {
        tokio::spawn(compactor(
            conns[0].clone(),
            shared.rec.clone(),
            Duration::from_secs_f64(args.compact_interval),
            stop.clone(),
        ))
    });
    let workers = common
        .clients(&conns)
        .into_iter()
        .enumerate()
        .map(|(i, c)| K8sWorker { c, shared: shared.clone(), rng: SmallRng::seed_from_u64(seed(i)) })
        .collect();
    let elapsed = drive(common, &shared.rec, workers).await;
    stop.store(true, Ordering::Relaxed);
    if let Some(c) = compaction {
        let _ = c.await;
    }
    // Give the watches a moment to deliver the tail.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for w in watchers {
        w.abort();
    }
    let mut r = Report::new("k8s", common, &shared.rec, elapsed);
    let ev = events.load(Ordering::Relaxed);
    r.extra("watch_events", ev);
    r.extra("watch_events_per_s", ev as f64 / elapsed.as_secs_f64().max(1e-9));
    r.extra("progress_notifies", progress.load(Ordering::Relaxed));
    r.extra("txn_conflicts", shared.conflicts.load(Ordering::Relaxed));
    r.extra("live_objects", shared.types.iter().map(|t| t.live.lock().unwrap().len() as u64).sum::<u64>());
    Ok(r)
}
