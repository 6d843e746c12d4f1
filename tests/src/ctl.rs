//! Running the real `etcdctl` / `etcdutl` 3.5.1 against a server.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::etcd;
use crate::process::{run_with_timeout, Background, Output};

/// Output of one etcdctl invocation.
pub type CtlOutput = Output;

/// Time limit for one ordinary etcdctl command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

fn command(endpoint: &str, args: &[&str]) -> Command {
    // etcdctl 3.5 speaks API v3 by default; inherited ETCDCTL_* variables are scrubbed.
    let mut cmd = Command::new(etcd::etcdctl());
    cmd.arg(format!("--endpoints={endpoint}")).args(args);
    cmd
}

/// `etcdctl --endpoints=<endpoint> <args>`, killed after `limit`.
pub fn run(endpoint: &str, args: &[&str], stdin: Option<&str>, limit: Duration) -> CtlOutput {
    run_with_timeout(command(endpoint, args), stdin, limit)
}

/// Starts `etcdctl --endpoints=<endpoint> <args>` in the background (e.g. `watch`), killed
/// at the latest after `limit`.
pub fn spawn(endpoint: &str, args: &[&str], limit: Duration) -> Background {
    Background::spawn(command(endpoint, args), None, limit)
}

/// `etcdutl <args>` (offline tools, e.g. `snapshot status`).
pub fn etcdutl(args: &[&str], cwd: &Path) -> Output {
    let mut cmd = Command::new(etcd::etcdutl());
    cmd.args(args).current_dir(cwd);
    run_with_timeout(cmd, None, DEFAULT_TIMEOUT)
}
