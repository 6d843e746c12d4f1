//! Range and list cost: what reading a large range costs, timed per whole operation.
//!
//! - `paginate`: page through every key under a prefix in pages of `--page`, the way
//!   Kubernetes lists (the first page at the current revision, each next page from the last
//!   key + "\0" at the first page's revision); one operation is the whole walk.
//! - `count-only`: one `count_only` range over the prefix.
//! - `list-all`: one unlimited range over the prefix (every key and value in one response).
//!
//! Each loads `--keys` keys under its prefix first (not timed), with puts batched in txns,
//! then repeats its operation for `--total` operations or `--duration`. The report's
//! `extra.time_ms` is the median time of one operation, its headline figure.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use clap::Args;
use etcd_client::{Client, GetOptions, Txn, TxnOp};

use super::report::Report;
use super::workloads::random_value;
use super::{drive, parallel_setup, Common, Recorder, Worker};

/// Puts per setup txn (etcd's default `--max-txn-ops` is 128).
const LOAD_TXN_OPS: u64 = 64;
/// Concurrent setup txns.
const LOAD_CONCURRENCY: usize = 32;

#[derive(Args, Clone, Debug)]
pub struct ListArgs {
    /// Keys to load under the prefix before measuring (0 = use what is there).
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Value size of the loaded keys, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub val_size: usize,
    /// The prefix of every key.
    #[arg(long, default_value = "/bench/list/")]
    pub prefix: String,
    /// Page size (`paginate` only).
    #[arg(long, default_value_t = 500)]
    pub page: i64,
}

impl ListArgs {
    fn key(&self, i: u64) -> Vec<u8> {
        format!("{}{i:010}", self.prefix).into_bytes()
    }

    /// The end of the prefix's range (the prefix with its last byte incremented).
    fn range_end(&self) -> Vec<u8> {
        let mut end = self.prefix.clone().into_bytes();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return end;
            }
        }
        vec![0]
    }
}

/// Loads `args.keys` keys, `LOAD_TXN_OPS` puts per txn.
async fn load(conns: &[Client], args: &ListArgs) -> anyhow::Result<()> {
    let c = conns[0].clone();
    let args = Arc::new(args.clone());
    let val = random_value(args.val_size, 3);
    let batches = args.keys.div_ceil(LOAD_TXN_OPS);
    parallel_setup(batches, LOAD_CONCURRENCY, move |b| {
        let mut c = c.clone();
        let args = args.clone();
        let val = val.clone();
        async move {
            let ops = (b * LOAD_TXN_OPS..((b + 1) * LOAD_TXN_OPS).min(args.keys))
                .map(|i| TxnOp::put(args.key(i), val.clone(), None))
                .collect::<Vec<_>>();
            c.txn(Txn::new().and_then(ops)).await.context("load txn")?;
            Ok(())
        }
    })
    .await
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Paginate,
    CountOnly,
    ListAll,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Paginate => "paginate",
            Op::CountOnly => "count-only",
            Op::ListAll => "list-all",
        }
    }
}

struct ListWorker {
    c: Client,
    rec: Arc<Recorder>,
    args: ListArgs,
    op: Op,
    /// Every operation's time, for the median.
    times: Arc<Mutex<Vec<Duration>>>,
    /// Requests per operation (pages of the last walk).
    requests: Arc<Mutex<u64>>,
}

impl ListWorker {
    /// One whole operation; checks it saw every key.
    async fn run(&mut self) -> anyhow::Result<u64> {
        let (prefix, end) = (self.args.prefix.clone().into_bytes(), self.args.range_end());
        let want = self.args.keys as i64;
        match self.op {
            Op::CountOnly => {
                let r = self.c.get(prefix, Some(GetOptions::new().with_range(end).with_count_only())).await?;
                ensure!(want == 0 || r.count() == want, "count_only counted {} keys, want {want}", r.count());
                Ok(1)
            }
            Op::ListAll => {
                let mut kv = self.c.kv_client().max_decoding_message_size(usize::MAX);
                let r = kv.get(prefix, Some(GetOptions::new().with_range(end))).await?;
                ensure!(want == 0 || r.kvs().len() as i64 == want, "listed {} keys, want {want}", r.kvs().len());
                Ok(1)
            }
            Op::Paginate => {
                let mut key = prefix;
                let mut revision = 0;
                let (mut seen, mut pages) = (0i64, 0u64);
                loop {
                    let opts =
                        GetOptions::new().with_range(end.clone()).with_limit(self.args.page).with_revision(revision);
                    let r = self.c.get(key, Some(opts)).await?;
                    pages += 1;
                    if revision == 0 {
                        revision = r.header().map_or(0, |h| h.revision());
                    }
                    seen += r.kvs().len() as i64;
                    let Some(last) = r.kvs().last() else { break };
                    let mut next = last.key().to_vec();
                    next.push(0);
                    key = next;
                    if !r.more() {
                        break;
                    }
                }
                ensure!(want == 0 || seen == want, "paged through {seen} keys, want {want}");
                Ok(pages)
            }
        }
    }
}

impl Worker for ListWorker {
    async fn step(&mut self) {
        let t = Instant::now();
        match self.run().await {
            Ok(requests) => {
                let el = t.elapsed();
                self.rec.ok(0, el);
                self.times.lock().unwrap().push(el);
                *self.requests.lock().unwrap() = requests;
            }
            Err(e) => self.rec.err(0, e),
        }
    }
}

pub async fn list(common: &Common, args: &ListArgs, op: Op) -> anyhow::Result<Report> {
    ensure!(op != Op::Paginate || args.page > 0, "--page must be positive");
    let conns = common.connect().await?;
    let load_start = Instant::now();
    if args.keys > 0 {
        load(&conns, args).await?;
    }
    let load_s = load_start.elapsed().as_secs_f64();
    let rec = Recorder::new(&[(op.name(), true)]);
    let times = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(Mutex::new(0));
    let workers = common
        .clients(&conns)
        .into_iter()
        .map(|c| ListWorker {
            c,
            rec: rec.clone(),
            args: args.clone(),
            op,
            times: times.clone(),
            requests: requests.clone(),
        })
        .collect();
    let elapsed = drive(common, &rec, workers).await;
    let mut r = Report::new(op.name(), common, &rec, elapsed);
    let mut times: Vec<f64> = times.lock().unwrap().iter().map(|d| d.as_secs_f64() * 1e3).collect();
    times.sort_by(f64::total_cmp);
    if !times.is_empty() {
        r.extra("time_ms", times[times.len() / 2]);
        r.extra("time_min_ms", times[0]);
    }
    r.extra("times_ms", times);
    r.extra("keys", args.keys);
    r.extra("val_size", args.val_size as u64);
    r.extra("requests_per_op", *requests.lock().unwrap());
    r.extra("load_s", load_s);
    if op == Op::Paginate {
        r.extra("page", args.page);
    }
    Ok(r)
}
