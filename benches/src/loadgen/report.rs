//! Turning a [`Recorder`] into a result: text for people, JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use super::hist::Hist;
use super::{Common, Recorder};

/// Latency quantiles in milliseconds.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(h: &Hist) -> Self {
        let ms = |ns: u64| ns as f64 / 1e6;
        if h.count == 0 {
            return Self::default();
        }
        Self {
            count: h.count,
            mean: h.mean() / 1e6,
            min: ms(h.min),
            p50: ms(h.quantile(0.50)),
            p90: ms(h.quantile(0.90)),
            p99: ms(h.quantile(0.99)),
            p999: ms(h.quantile(0.999)),
            max: ms(h.max),
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct KindReport {
    pub ok: u64,
    pub errors: u64,
    pub per_sec: f64,
    pub latency_ms: Latency,
}

#[derive(Serialize, Clone, Debug)]
pub struct Report {
    pub workload: String,
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub rate_limit: f64,
    pub elapsed_s: f64,
    /// Successful headline requests.
    pub ok: u64,
    pub errors: u64,
    /// Successful headline requests per second.
    pub throughput: f64,
    pub latency_ms: Latency,
    pub errors_by_message: BTreeMap<String, u64>,
    pub kinds: BTreeMap<String, KindReport>,
    /// Workload-specific figures (watch events, compactions...).
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// CPU time the load generator itself used over the measured run (user and system,
    /// all threads): near `elapsed_s` times its cores means the figures measure the load
    /// generator rather than the server.
    pub client_cpu_s: Option<f64>,
}

impl Report {
    pub fn new(workload: &str, common: &Common, rec: &Recorder, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut main: Option<Hist> = None;
        let mut kinds = BTreeMap::new();
        let (mut ok, mut errors) = (0, 0);
        for k in &rec.kinds {
            let h = k.hist.snapshot();
            let errs = k.errors.load(Ordering::Relaxed);
            if k.main {
                ok += h.count;
                errors += errs;
                match &mut main {
                    None => main = Some(h.clone()),
                    Some(m) => m.merge(&h),
                }
            }
            if h.count > 0 || errs > 0 {
                kinds.insert(
                    k.name.to_string(),
                    KindReport {
                        ok: h.count,
                        errors: errs,
                        per_sec: h.count as f64 / secs,
                        latency_ms: Latency::of(&h),
                    },
                );
            }
        }
        Self {
            workload: workload.to_string(),
            endpoints: common.endpoints.clone(),
            conns: common.conns,
            clients: common.clients,
            rate_limit: common.rate,
            elapsed_s: secs,
            ok,
            errors,
            throughput: ok as f64 / secs,
            latency_ms: main.as_ref().map(Latency::of).unwrap_or_default(),
            errors_by_message: rec.errors(),
            kinds,
            extra: serde_json::Map::new(),
            client_cpu_s: rec.client_cpu().map(|d| d.as_secs_f64()),
        }
    }

    pub fn extra(&mut self, key: &str, v: impl Into<serde_json::Value>) {
        self.extra.insert(key.to_string(), v.into());
    }

    pub fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string(self).expect("report serializes"));
        } else {
            print!("{}", self.text());
        }
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "{}: {} clients over {} conns to {}{}",
            self.workload,
            self.clients,
            self.conns,
            self.endpoints.join(","),
            if self.rate_limit > 0.0 { format!(", rate limit {}/s", self.rate_limit) } else { String::new() }
        );
        let _ = writeln!(s, "  elapsed      {:.3} s", self.elapsed_s);
        let _ = writeln!(s, "  requests     {} ok, {} errors", self.ok, self.errors);
        let _ = writeln!(s, "  throughput   {:.1} ops/s", self.throughput);
        if let Some(cpu) = self.client_cpu_s {
            let _ = writeln!(s, "  client CPU   {:.2} cores (this load generator)", cpu / self.elapsed_s);
        }
        let _ = writeln!(
            s,
            "  latency ms   mean {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.mean, l.p50, l.p90, l.p99, l.p999, l.max
        );
        if self.kinds.len() > 1 {
            let _ = writeln!(s, "  by request kind:");
            for (name, k) in &self.kinds {
                let l = &k.latency_ms;
                let _ = writeln!(
                    s,
                    "    {name:<14} {:>9} ok {:>6} err {:>10.1}/s  p50 {:.3}  p99 {:.3}  p99.9 {:.3} ms",
                    k.ok, k.errors, k.per_sec, l.p50, l.p99, l.p999
                );
            }
        }
        if !self.extra.is_empty() {
            for (k, v) in &self.extra {
                let _ = writeln!(s, "  {k:<12} {v}");
            }
        }
        if !self.errors_by_message.is_empty() {
            let _ = writeln!(s, "  errors:");
            for (m, n) in &self.errors_by_message {
                let _ = writeln!(s, "    {n:>8}  {m}");
            }
        }
        s
    }
}
