//! Versions reported to clients.

/// The etcd version Plinth reports in `Status.version` and `/version`. kube-apiserver enables
/// watch progress requests (and with them consistent reads from its cache) only for etcd
/// ≥ 3.5.13, so this must stay a semver at or above that.
pub const ETCD_COMPAT_VERSION: &str = "3.5.16";

/// The cluster version reported by `/version`.
pub const CLUSTER_VERSION: &str = "3.5.0";

/// The storage version reported by `Status.storageVersion`.
pub const STORAGE_VERSION: &str = "3.5.0";

/// Plinth's own version.
pub const PLINTH_VERSION: &str = env!("CARGO_PKG_VERSION");
