//! Plinth benchmarks. Criterion micro-benches live in `benches/`; this library holds the
//! etcd v3 load generator behind the `plinth-bench` binary (see `BENCHMARKS.md`).

pub mod loadgen;
