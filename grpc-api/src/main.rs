//! `plinth`: the server and its operator commands.

use clap::{Parser, Subcommand};

/// mimalloc's thread-local free lists make the many small, short-lived allocations of a
/// request (decoded messages, responses, HTTP/2 frames) cheaper than glibc's malloc does.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Plinth: an etcd v3 compatible, Raft-replicated key-value store.
#[derive(Debug, Parser)]
#[command(name = "plinth", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a member (etcd's flags; with none, one member on 127.0.0.1:2379).
    Serve(Box<grpc_api::config::ServeArgs>),
    /// Manage tenants: create, list, show, update, delete.
    Tenant(Box<grpc_api::tenant_cli::TenantArgs>),
    /// Print the versions this build reports.
    Version,
    /// Backups: list, verify, take one offline.
    #[command(subcommand)]
    Backup(grpc_api::backup::cli::BackupCommand),
    /// Seed a new member's data dir from backups or an etcd snapshot (offline).
    Restore(Box<grpc_api::backup::cli::RestoreArgs>),
    /// Move a running etcd's keys into a tenant, live, keeping every revision.
    Migrate(Box<grpc_api::migrate::MigrateArgs>),
    /// Snapshot files written by `etcdctl snapshot save`.
    #[command(subcommand)]
    Snapshot(grpc_api::backup::cli::SnapshotCommand),
}

fn main() -> anyhow::Result<()> {
    // `serve` reads etcd's flags the way etcd does (Go's single-dash flags, `ETCD_*`
    // variables); an argument that is not UTF-8 leaves the command line to clap as it is.
    let args: Result<Vec<String>, _> = std::env::args_os().map(|a| a.into_string()).collect();
    let etcd_style = match args {
        Ok(args) => {
            match grpc_api::etcd_flags::rewrite(args, &std::env::vars_os().filter_map(utf8_pair).collect::<Vec<_>>()) {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("plinth: {e}");
                    std::process::exit(1);
                }
            }
        }
        Err(_) => None,
    };
    let cli = match &etcd_style {
        Some(r) => Cli::parse_from(&r.args),
        None => Cli::parse(),
    };
    match cli.command {
        Command::Serve(args) => {
            abort_on_panic();
            grpc_api::serve::init_logging(&args.log_level)?;
            if let Some(r) = &etcd_style {
                for used in &r.used_env {
                    tracing::info!("recognized and used environment variable {used}");
                }
                for unknown in &r.unrecognized_env {
                    tracing::warn!("unrecognized environment variable {unknown}");
                }
            }
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("plinth-rpc").build()?;
            runtime.block_on(grpc_api::serve::serve(*args))
        }
        Command::Tenant(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            if let Err(e) = runtime.block_on(grpc_api::tenant_cli::run(*args)) {
                // etcdctl's shape: one line on stderr, exit status 1.
                eprintln!("Error: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Migrate(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            if let Err(e) = runtime.block_on(grpc_api::migrate::run(*args)) {
                eprintln!("Error: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Version => {
            println!("plinth {}", grpc_api::version::PLINTH_VERSION);
            println!("etcd API version: {}", grpc_api::version::ETCD_COMPAT_VERSION);
            Ok(())
        }
        Command::Backup(cmd) => grpc_api::backup::cli::run_backup(cmd),
        Command::Restore(args) => grpc_api::backup::cli::run_restore(*args),
        Command::Snapshot(cmd) => grpc_api::backup::cli::run_snapshot(cmd),
    }
}

/// An environment variable as UTF-8 strings, or none if either part is not.
fn utf8_pair((k, v): (std::ffi::OsString, std::ffi::OsString)) -> Option<(String, String)> {
    Some((k.into_string().ok()?, v.into_string().ok()?))
}

/// Makes every panic of a member stop the whole process at once, in every build profile
/// (release builds abort anyway: `panic = "abort"`). A panic is how a member reports what it
/// cannot go on from (a failed fsync or WAL write, an apply that could not be written);
/// unwinding instead would leave the other threads serving clients with a dead Raft driver
/// or WAL writer, and would run destructors that touch the disk again after it failed.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("plinth: stopping after a panic");
        std::process::abort();
    }));
}
