//! Locating (and on first use fetching) the real etcd 3.5.1 binaries.
//!
//! Order: `$ETCD_BIN_DIR` if set (must contain etcd, etcdctl, etcdutl), else the cache that
//! `tests/scripts/get-etcd.sh` fills (`${PLINTH_CACHE:-$HOME/.cache/plinth}/etcd-3.5.1/bin`),
//! running the script when the binaries are missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::run_with_timeout;

/// The etcd version the differential tests compare against.
pub const ETCD_VERSION: &str = "3.5.1";

fn has_all(dir: &Path) -> bool {
    ["etcd", "etcdctl", "etcdutl"].iter().all(|b| dir.join(b).is_file())
}

/// Path of the `tests/scripts/get-etcd.sh` script of this crate.
pub fn fetch_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/get-etcd.sh")
}

/// Directory with etcd, etcdctl and etcdutl 3.5.1; fetched on first use. Panics with the
/// script's output when fetching fails.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("ETCD_BIN_DIR") {
            let dir = PathBuf::from(dir);
            assert!(has_all(&dir), "ETCD_BIN_DIR={} lacks etcd/etcdctl/etcdutl", dir.display());
            return dir;
        }
        let mut cmd = Command::new("bash");
        cmd.arg(fetch_script());
        let out = run_with_timeout(cmd, None, Duration::from_secs(300));
        assert!(
            out.code == Some(0),
            "{} failed (exit {:?}):\n{}\n{}",
            fetch_script().display(),
            out.code,
            out.stdout,
            out.stderr
        );
        let dir = PathBuf::from(out.stdout.trim());
        assert!(has_all(&dir), "get-etcd.sh printed {} which lacks the binaries", dir.display());
        dir
    })
}

pub fn etcd() -> PathBuf {
    bin_dir().join("etcd")
}

pub fn etcdctl() -> PathBuf {
    bin_dir().join("etcdctl")
}

pub fn etcdutl() -> PathBuf {
    bin_dir().join("etcdutl")
}
