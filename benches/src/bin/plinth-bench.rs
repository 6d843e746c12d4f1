//! `plinth-bench`: an etcd v3 load generator (etcd's `tools/benchmark` workloads plus a
//! Kubernetes-shaped profile). Works against any etcd v3 server: Plinth or etcd itself.

use clap::{Parser, Subcommand};
use plinth_benches::loadgen::{k8s, list, watch, workloads, Common};

#[derive(Parser, Debug)]
#[command(name = "plinth-bench", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Put keys (random or sequential) of a given size.
    Put(workloads::KeyArgs),
    /// Range (get) preloaded keys, linearizable or serializable.
    Range(workloads::RangeArgs),
    /// Transactions of `--txn-ops` puts.
    TxnPut(workloads::TxnPutArgs),
    /// Watch event throughput and put→event latency.
    Watch(watch::WatchArgs),
    /// Lease keep-alive round trips, one lease per client.
    LeaseKeepalive(workloads::LeaseArgs),
    /// Kubernetes apiserver-shaped traffic.
    K8s(k8s::K8sArgs),
    /// Page through a prefix's keys at the first page's revision; times each whole walk.
    Paginate(list::ListArgs),
    /// A count_only range over a prefix.
    CountOnly(list::ListArgs),
    /// One unlimited range over a prefix (every key and value).
    ListAll(list::ListArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.common.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(async {
        let c = &cli.common;
        match &cli.cmd {
            Cmd::Put(a) => workloads::put(c, a).await,
            Cmd::Range(a) => workloads::range(c, a).await,
            Cmd::TxnPut(a) => workloads::txn_put(c, a).await,
            Cmd::Watch(a) => watch::watch(c, a).await,
            Cmd::LeaseKeepalive(a) => workloads::lease_keepalive(c, a).await,
            Cmd::K8s(a) => k8s::k8s(c, a).await,
            Cmd::Paginate(a) => list::list(c, a, list::Op::Paginate).await,
            Cmd::CountOnly(a) => list::list(c, a, list::Op::CountOnly).await,
            Cmd::ListAll(a) => list::list(c, a, list::Op::ListAll).await,
        }
    })?;
    report.print(cli.common.json);
    // Do not wait for lingering streams to close.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}
