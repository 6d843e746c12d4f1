//! An etcd v3 load generator modelled on etcd's `tools/benchmark`, speaking gRPC through the
//! `etcd-client` crate (tonic). Every workload runs `--clients` concurrent tasks spread over
//! `--conns` gRPC connections, for `--total` operations or `--duration`, optionally paced to
//! `--rate` operations per second, and reports throughput, latency quantiles and errors.

pub mod hist;
pub mod k8s;
pub mod list;
pub mod report;
pub mod watch;
pub mod workloads;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use etcd_client::{Client, ConnectOptions};

use hist::AtomicHist;

/// Flags shared by every workload (etcd benchmark's global flags).
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Comma-separated gRPC endpoints; connection i goes to endpoint i mod n.
    #[arg(long, global = true, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Number of gRPC connections; clients are spread over them round-robin.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Number of concurrent clients (tasks with one request in flight each).
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Total operations (default 10000 when --duration is not given).
    #[arg(long, global = true)]
    pub total: Option<u64>,
    /// Run for this many seconds instead of a fixed total (fractions allowed).
    #[arg(long, global = true)]
    pub duration: Option<f64>,
    /// Limit to this many operations per second over all clients (0 = unlimited).
    #[arg(long, global = true, default_value_t = 0.0)]
    pub rate: f64,
    /// Print the result as one JSON object on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Per-request timeout in seconds.
    #[arg(long, global = true, default_value_t = 30)]
    pub timeout: u64,
    /// Progress line on stderr: auto (runs over 3 s), always, never.
    #[arg(long, global = true, default_value = "auto")]
    pub progress: String,
}

impl Common {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.endpoints.is_empty() {
            bail!("--endpoints is empty");
        }
        if self.conns == 0 || self.clients == 0 {
            bail!("--conns and --clients must be at least 1");
        }
        if let Some(d) = self.duration {
            if !(d > 0.0 && d.is_finite()) {
                bail!("--duration must be positive");
            }
        }
        if self.rate < 0.0 || !self.rate.is_finite() {
            bail!("--rate must be >= 0");
        }
        Ok(())
    }

    /// The op budget: `--total`, or unbounded when only `--duration` is set, else 10000.
    pub fn total(&self) -> Option<u64> {
        match (self.total, self.duration) {
            (Some(t), _) => Some(t),
            (None, Some(_)) => None,
            (None, None) => Some(10_000),
        }
    }

    pub fn duration(&self) -> Option<Duration> {
        self.duration.map(Duration::from_secs_f64)
    }

    /// Opens `--conns` connections, connection i to endpoint i mod n.
    pub async fn connect(&self) -> anyhow::Result<Vec<Client>> {
        let opts = ConnectOptions::new()
            .with_timeout(Duration::from_secs(self.timeout))
            .with_connect_timeout(Duration::from_secs(5));
        let mut conns = Vec::with_capacity(self.conns);
        for i in 0..self.conns {
            let ep = normalize_endpoint(&self.endpoints[i % self.endpoints.len()]);
            let c = Client::connect([ep.as_str()], Some(opts.clone()))
                .await
                .with_context(|| format!("connecting to {ep}"))?;
            conns.push(c);
        }
        Ok(conns)
    }

    /// One client handle per `--clients`, spread over the connections.
    pub fn clients(&self, conns: &[Client]) -> Vec<Client> {
        (0..self.clients).map(|i| conns[i % conns.len()].clone()).collect()
    }
}

pub use grpc_api::kv::prefix_end;

pub fn normalize_endpoint(ep: &str) -> String {
    if ep.contains("://") {
        ep.to_string()
    } else {
        format!("http://{ep}")
    }
}

/// Latency and error counters for one kind of request.
pub struct Kind {
    pub name: &'static str,
    /// Counted in the run's headline throughput and latency.
    pub main: bool,
    pub hist: AtomicHist,
    pub errors: AtomicU64,
}

const MAX_ERROR_KINDS: usize = 32;

/// Where every request's outcome goes. Lock-free on success; errors take a small lock.
pub struct Recorder {
    pub kinds: Vec<Kind>,
    errors: Mutex<BTreeMap<String, u64>>,
    pub start: Instant,
    /// CPU time this process (the load generator) used over [`drive`]'s run, in ns;
    /// `u64::MAX` until a run has ended.
    client_cpu_ns: AtomicU64,
}

impl Recorder {
    /// `kinds`: (name, counted in the headline figures).
    pub fn new(kinds: &[(&'static str, bool)]) -> Arc<Self> {
        Arc::new(Self {
            kinds: kinds
                .iter()
                .map(|&(name, main)| Kind { name, main, hist: AtomicHist::new(), errors: AtomicU64::new(0) })
                .collect(),
            errors: Mutex::new(BTreeMap::new()),
            start: Instant::now(),
            client_cpu_ns: AtomicU64::new(u64::MAX),
        })
    }

    /// The load generator's CPU time over the measured run, if one ran.
    pub fn client_cpu(&self) -> Option<Duration> {
        let ns = self.client_cpu_ns.load(Ordering::Relaxed);
        (ns != u64::MAX).then(|| Duration::from_nanos(ns))
    }

    pub fn ok(&self, kind: usize, lat: Duration) {
        self.kinds[kind].hist.record(lat);
    }

    pub fn err(&self, kind: usize, msg: impl std::fmt::Display) {
        self.kinds[kind].errors.fetch_add(1, Ordering::Relaxed);
        let mut msg = msg.to_string();
        if msg.len() > 160 {
            let mut cut = 160;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
        }
        let mut errors = self.errors.lock().unwrap();
        if errors.len() >= MAX_ERROR_KINDS && !errors.contains_key(&msg) {
            msg = "(other errors)".to_string();
        }
        *errors.entry(msg).or_default() += 1;
    }

    /// Times one request and records it under `kind`; `Some(response)` on success.
    pub async fn time<T, E: std::fmt::Display>(
        &self,
        kind: usize,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Option<T> {
        let t = Instant::now();
        match fut.await {
            Ok(v) => {
                self.ok(kind, t.elapsed());
                Some(v)
            }
            Err(e) => {
                self.err(kind, e);
                None
            }
        }
    }

    /// (successful, failed) requests of the headline kinds.
    pub fn main_counts(&self) -> (u64, u64) {
        self.kinds
            .iter()
            .filter(|k| k.main)
            .fold((0, 0), |(o, e), k| (o + k.hist.count(), e + k.errors.load(Ordering::Relaxed)))
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().unwrap().clone()
    }
}

/// One client's loop body: issue one logical operation (which may be several requests) and
/// record its requests in the recorder.
pub trait Worker: Send + 'static {
    fn step(&mut self) -> impl Future<Output = ()> + Send;
}

/// Runs `workers` concurrently under the budget, pacing and progress of `common`.
/// Returns the wall time from the first to the last operation.
pub async fn drive<W: Worker>(common: &Common, rec: &Arc<Recorder>, workers: Vec<W>) -> Duration {
    let total = common.total();
    let deadline_after = common.duration();
    let rate = common.rate;
    let issued = Arc::new(AtomicU64::new(0));
    let cpu_before = process_cpu();
    let start = Instant::now();
    let deadline = deadline_after.map(|d| start + d);
    let done = Arc::new(AtomicBool::new(false));
    let progress = spawn_progress(common, rec.clone(), done.clone(), total, deadline_after);

    let mut tasks = Vec::with_capacity(workers.len());
    for mut w in workers {
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if total.is_some_and(|t| n >= t) {
                    break;
                }
                if rate > 0.0 {
                    let at = start + Duration::from_secs_f64(n as f64 / rate);
                    if deadline.is_some_and(|d| at >= d) {
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                w.step().await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    if let (Some(before), Some(after)) = (cpu_before, process_cpu()) {
        rec.client_cpu_ns.store(after.saturating_sub(before).as_nanos() as u64, Ordering::Relaxed);
    }
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    elapsed
}

/// CPU time (user and system) this process has used so far.
fn process_cpu() -> Option<Duration> {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    Some(tv(ru.ru_utime) + tv(ru.ru_stime))
}

fn spawn_progress(
    common: &Common,
    rec: Arc<Recorder>,
    done: Arc<AtomicBool>,
    total: Option<u64>,
    duration: Option<Duration>,
) -> Option<tokio::task::JoinHandle<()>> {
    let show = match common.progress.as_str() {
        "always" => true,
        "never" => false,
        _ => duration.is_some_and(|d| d > Duration::from_secs(3)) || total.is_some_and(|t| t > 50_000),
    };
    if !show {
        return None;
    }
    let tty = std::io::stderr().is_terminal();
    Some(tokio::spawn(async move {
        let start = Instant::now();
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = wait_flag(&done) => break,
            }
            n += 1;
            let (ok, err) = rec.main_counts();
            let el = start.elapsed().as_secs_f64();
            let goal = match (total, duration) {
                (Some(t), _) => format!("{:5.1}%", 100.0 * (ok + err) as f64 / t.max(1) as f64),
                (None, Some(d)) => format!("{:5.1}%", 100.0 * el / d.as_secs_f64()),
                _ => String::new(),
            };
            let line = format!("[{el:6.1}s] {goal} {ok} ok {err} err, {:.0} ops/s", (ok - last) as f64);
            last = ok;
            let mut e = std::io::stderr().lock();
            if tty {
                let _ = write!(e, "\r{line}   ");
            } else if n.is_multiple_of(5) {
                let _ = writeln!(e, "{line}");
            }
        }
        if tty {
            let _ = writeln!(std::io::stderr());
        }
    }))
}

async fn wait_flag(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `count` setup operations (not measured) with `concurrency` tasks; `op(i)` does the
/// i-th. Fails on the first error.
pub async fn parallel_setup<F, Fut>(count: u64, concurrency: usize, op: F) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let op = op.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(());
                }
                op(i).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Deterministic per-client RNG seeds (so runs differ only by timing).
pub fn seed(client: usize) -> u64 {
    0x9e37_79b9_7f4a_7c15u64.wrapping_mul(client as u64 + 1)
}
