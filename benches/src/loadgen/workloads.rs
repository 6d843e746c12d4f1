//! etcd benchmark's basic workloads: put, range, txn-put, lease-keepalive.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use etcd_client::{Client, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

use super::report::Report;
use super::{drive, parallel_setup, seed, Common, Recorder, Worker};

/// Key and value shape shared by the write workloads.
#[derive(Args, Clone, Debug)]
pub struct KeyArgs {
    /// Key size in bytes (keys are zero-padded decimal numbers, longer if they must be).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Keys are drawn from [0, key-space-size).
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Walk the key space in order (i mod key-space-size) instead of at random.
    #[arg(long)]
    pub sequential_keys: bool,
}

pub fn make_key(i: u64, size: usize) -> Vec<u8> {
    format!("{i:0size$}").into_bytes()
}

pub fn random_value(size: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; size];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Picks keys the way etcd's benchmark does: sequential walks share one counter.
struct KeyPicker {
    args: KeyArgs,
    seq: Arc<std::sync::atomic::AtomicU64>,
    rng: SmallRng,
}

impl KeyPicker {
    fn next(&mut self) -> Vec<u8> {
        let space = self.args.key_space_size.max(1);
        let i = if self.args.sequential_keys {
            self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % space
        } else {
            self.rng.random_range(0..space)
        };
        make_key(i, self.args.key_size)
    }
}

fn pickers(common: &Common, args: &KeyArgs) -> Vec<KeyPicker> {
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
    (0..common.clients)
        .map(|i| KeyPicker { args: args.clone(), seq: seq.clone(), rng: SmallRng::seed_from_u64(seed(i)) })
        .collect()
}

// ---- put -------------------------------------------------------------------------------

struct PutWorker {
    c: Client,
    rec: Arc<Recorder>,
    keys: KeyPicker,
    val: Vec<u8>,
}

impl Worker for PutWorker {
    async fn step(&mut self) {
        let key = self.keys.next();
        let c = &mut self.c;
        self.rec.time(0, c.put(key, self.val.clone(), None)).await;
    }
}

pub async fn put(common: &Common, args: &KeyArgs) -> anyhow::Result<Report> {
    let conns = common.connect().await?;
    let rec = Recorder::new(&[("put", true)]);
    let val = random_value(args.val_size, 1);
    let workers = common
        .clients(&conns)
        .into_iter()
        .zip(pickers(common, args))
        .map(|(c, keys)| PutWorker { c, rec: rec.clone(), keys, val: val.clone() })
        .collect();
    let elapsed = drive(common, &rec, workers).await;
    Ok(Report::new("put", common, &rec, elapsed))
}

// ---- txn-put ---------------------------------------------------------------------------

#[derive(Args, Clone, Debug)]
pub struct TxnPutArgs {
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Puts per transaction (distinct keys).
    #[arg(long, default_value_t = 1)]
    pub txn_ops: usize,
}

struct TxnWorker {
    c: Client,
    rec: Arc<Recorder>,
    keys: KeyPicker,
    val: Vec<u8>,
    ops: usize,
}

impl Worker for TxnWorker {
    async fn step(&mut self) {
        let mut seen = std::collections::HashSet::new();
        let mut ops = Vec::with_capacity(self.ops);
        let mut tries = 0;
        while ops.len() < self.ops && tries < self.ops * 10 {
            tries += 1;
            let k = self.keys.next();
            if seen.insert(k.clone()) {
                ops.push(TxnOp::put(k, self.val.clone(), None));
            }
        }
        let c = &mut self.c;
        self.rec.time(0, c.txn(Txn::new().and_then(ops))).await;
    }
}

pub async fn txn_put(common: &Common, args: &TxnPutArgs) -> anyhow::Result<Report> {
    let conns = common.connect().await?;
    let rec = Recorder::new(&[("txn-put", true)]);
    let val = random_value(args.keys.val_size, 1);
    let workers = common
        .clients(&conns)
        .into_iter()
        .zip(pickers(common, &args.keys))
        .map(|(c, keys)| TxnWorker { c, rec: rec.clone(), keys, val: val.clone(), ops: args.txn_ops.max(1) })
        .collect();
    let elapsed = drive(common, &rec, workers).await;
    let mut r = Report::new("txn-put", common, &rec, elapsed);
    r.extra("txn_ops", args.txn_ops);
    Ok(r)
}

// ---- range -----------------------------------------------------------------------------

#[derive(Args, Clone, Debug)]
pub struct RangeArgs {
    /// l = linearizable, s = serializable.
    #[arg(long, default_value = "l")]
    pub consistency: String,
    /// Keys to write before measuring (0 = range whatever is there).
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Key size of the preloaded keys.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of the preloaded keys.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Keys covered by each range request, starting at a random preloaded key (1 = point get).
    #[arg(long, default_value_t = 1)]
    pub range_keys: u64,
    /// Limit on each range request (0 = none).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
}

struct RangeWorker {
    c: Client,
    rec: Arc<Recorder>,
    rng: SmallRng,
    args: RangeArgs,
}

impl Worker for RangeWorker {
    async fn step(&mut self) {
        let a = &self.args;
        let space = a.keys.max(1);
        let i = self.rng.random_range(0..space);
        let mut opts = GetOptions::new().with_limit(a.limit);
        if a.range_keys > 1 {
            opts = opts.with_range(make_key(i + a.range_keys, a.key_size));
        }
        if a.consistency.starts_with('s') {
            opts = opts.with_serializable();
        }
        let key = make_key(i, a.key_size);
        let c = &mut self.c;
        self.rec.time(0, c.get(key, Some(opts))).await;
    }
}

pub async fn range(common: &Common, args: &RangeArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(matches!(args.consistency.as_str(), "l" | "s"), "--consistency must be l or s");
    let conns = common.connect().await?;
    if args.keys > 0 {
        let c = conns[0].clone();
        let (ks, vs) = (args.key_size, args.val_size);
        let val = random_value(vs, 2);
        parallel_setup(args.keys, common.clients.min(64), move |i| {
            let mut c = c.clone();
            let val = val.clone();
            async move {
                c.put(make_key(i, ks), val, None).await.context("preload put")?;
                Ok(())
            }
        })
        .await?;
    }
    let rec = Recorder::new(&[("range", true)]);
    let workers = common
        .clients(&conns)
        .into_iter()
        .enumerate()
        .map(|(i, c)| RangeWorker { c, rec: rec.clone(), rng: SmallRng::seed_from_u64(seed(i)), args: args.clone() })
        .collect();
    let elapsed = drive(common, &rec, workers).await;
    let mut r = Report::new(
        if args.consistency == "s" { "range-serializable" } else { "range-linearizable" },
        common,
        &rec,
        elapsed,
    );
    r.extra("preloaded_keys", args.keys);
    Ok(r)
}

// ---- lease-keepalive -------------------------------------------------------------------

struct LeaseWorker {
    rec: Arc<Recorder>,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

impl Worker for LeaseWorker {
    async fn step(&mut self) {
        let (keeper, stream) = (&mut self.keeper, &mut self.stream);
        self.rec
            .time(0, async move {
                keeper.keep_alive().await.map_err(|e| e.to_string())?;
                match stream.message().await {
                    Ok(Some(r)) if r.ttl() > 0 => Ok(()),
                    Ok(Some(_)) => Err("lease not found (ttl <= 0)".to_string()),
                    Ok(None) => Err("keepalive stream closed".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await;
    }
}

/// etcd's `benchmark lease-keepalive`: each keep-alive is clientv3's `KeepAliveOnce`, which
/// opens a `LeaseKeepAlive` stream, sends one request, reads one answer and cancels the stream.
struct LeaseOnceWorker {
    rec: Arc<Recorder>,
    client: Client,
    id: i64,
}

impl Worker for LeaseOnceWorker {
    async fn step(&mut self) {
        let (client, id) = (&mut self.client, self.id);
        self.rec
            .time(0, async move {
                // The crate's `lease_keep_alive` sends the request and reads its answer (an
                // unknown lease is an error) before it returns the stream's two halves; both
                // drop here, which resets the stream (CANCEL), as a Go client's canceled
                // context does.
                client.lease_keep_alive(id).await.map(drop).map_err(|e| e.to_string())
            })
            .await;
    }
}

#[derive(Args, Clone, Debug)]
pub struct LeaseArgs {
    /// TTL of each client's lease, seconds.
    #[arg(long, default_value_t = 60)]
    pub ttl: i64,
    /// A new stream per keep-alive, as etcd's benchmark (clientv3 `KeepAliveOnce`) does;
    /// without it each client keeps one stream open and sends every keep-alive on it.
    #[arg(long)]
    pub once: bool,
}

pub async fn lease_keepalive(common: &Common, args: &LeaseArgs) -> anyhow::Result<Report> {
    let conns = common.connect().await?;
    let rec = Recorder::new(&[("keepalive", true)]);
    let mut leases = Vec::new();
    for mut c in common.clients(&conns) {
        let id = c.lease_grant(args.ttl, None).await.context("lease grant")?.id();
        leases.push((c, id));
    }
    let elapsed = if args.once {
        let workers = leases.iter().map(|(c, id)| LeaseOnceWorker { rec: rec.clone(), client: c.clone(), id: *id });
        drive(common, &rec, workers.collect()).await
    } else {
        let mut workers = Vec::new();
        for (c, id) in &mut leases {
            let (keeper, stream) = c.lease_keep_alive(*id).await.context("lease keepalive")?;
            workers.push(LeaseWorker { rec: rec.clone(), keeper, stream });
        }
        drive(common, &rec, workers).await
    };
    for (mut c, id) in leases {
        let _ = c.lease_revoke(id).await;
    }
    Ok(Report::new("lease-keepalive", common, &rec, elapsed))
}

/// A put option with a lease, shared by k8s events.
pub fn with_lease(lease: i64) -> Option<PutOptions> {
    (lease != 0).then(|| PutOptions::new().with_lease(lease))
}
