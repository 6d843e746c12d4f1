//! Offline restore: seeds the data dir of one member of a new cluster from backups (or from
//! an etcd snapshot, see `etcd_import`), keeping revisions, as `etcdutl snapshot restore`
//! does. Every member of the new cluster is restored from the same backups with its own
//! `--name` and the same `--initial-cluster`.
//!
//! The data dir gets what `plinth serve` creates on a first start, and the store:
//!
//! - `member.json`: the identity `Identity::load_or_create` derives from `--name`,
//!   `--initial-cluster`, `--initial-advertise-peer-urls` and `--initial-cluster-token`, so
//!   the members agree on ids and on the cluster id without talking;
//! - `store/`: the default group rebuilt at the target revision with applied index 0.
//!
//! The WAL is left to `plinth serve`: on its first start it writes the bootstrap log of
//! the new cluster (one conf change per member at indexes `1..n`), and applying those moves
//! the store's applied index past them without touching the restored keys. Every member
//! then holds the same state at the same index, so no snapshot needs to be sent.
//!
//! A restore that fails removes the data dir it created.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::node::membership::Identity;

/// The new member a restore seeds.
#[derive(Debug, Clone)]
pub struct NewMember {
    /// The data dir to create; it must not exist or be empty.
    pub data_dir: PathBuf,
    pub name: String,
    /// `--initial-cluster` (`name=url,...`); empty for a single member.
    pub initial_cluster: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub initial_cluster_token: String,
}

/// What a restore produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreSummary {
    pub data_dir: String,
    pub member_id: String,
    pub cluster_id: String,
    pub revision: i64,
    pub compact_revision: i64,
    pub keys: u64,
    pub leases: usize,
}

/// Creates the data dir of `member` and fills its store with `fill`, which gets the opened
/// store and the group to write. Removes the data dir if anything fails.
pub fn seed_data_dir(
    member: &NewMember,
    fill: &mut dyn FnMut(&store::Store, store::GroupId) -> anyhow::Result<u64>,
) -> anyhow::Result<RestoreSummary> {
    let dir = &member.data_dir;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        anyhow::ensure!(empty, "data dir {} already exists and is not empty", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    let result = seed(member, fill);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn seed(
    member: &NewMember,
    fill: &mut dyn FnMut(&store::Store, store::GroupId) -> anyhow::Result<u64>,
) -> anyhow::Result<RestoreSummary> {
    let dir = &member.data_dir;
    let group = store::GroupId(crate::node::DEFAULT_GROUP);
    let summary = {
        let store = store::Store::open(&dir.join("store"), store::StoreConfig::default())?;
        let keys = fill(&store, group)?;
        store.flush()?;
        (keys, store.current_revision(group), store.compact_revision(group), store.leases(group)?.len())
    };
    // The identity last: `plinth serve` treats a data dir with member.json as created, so
    // it is written only once the store is complete and flushed.
    let initial_cluster = (!member.initial_cluster.is_empty()).then_some(member.initial_cluster.as_str());
    let (identity, created) = Identity::load_or_create(
        dir,
        &member.name,
        member.initial_advertise_peer_urls.clone(),
        member.advertise_client_urls.clone(),
        &member.initial_cluster_token,
        initial_cluster,
    )?;
    anyhow::ensure!(created, "data dir {} already had a member.json", dir.display());
    Ok(RestoreSummary {
        data_dir: dir.display().to_string(),
        member_id: format!("{:x}", identity.member_id),
        cluster_id: format!("{:x}", identity.cluster_id),
        revision: summary.1,
        compact_revision: summary.2,
        keys: summary.0,
        leases: summary.3,
    })
}

/// Restores `tenant` from `target` at `revision` (`None`: the newest) into a new data dir.
/// `progress` counts the records read (a spinner of the CLI, or hidden).
pub fn restore_from_backups(
    target: &dyn super::target::BackupTarget,
    tenant: &str,
    revision: Option<i64>,
    member: &NewMember,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<RestoreSummary> {
    let (revision, chain) = super::online::chain(target, tenant, revision)?;
    seed_data_dir(member, &mut |store, group| {
        let mut import = store.import_group(group, revision)?;
        for (i, entry) in chain.iter().enumerate() {
            progress.set_message(format!(
                "restoring {tenant} to revision {revision}: backup {} of {}",
                i + 1,
                chain.len()
            ));
            super::read_object(target, entry, &mut |record| {
                progress.inc(1);
                import.push(record).with_context(|| format!("restoring from backup object {}", entry.object))
            })?;
        }
        progress.set_message(format!("restoring {tenant} to revision {revision}: writing"));
        Ok(import.finish()?)
    })
}

/// The data dir of a stopped member, for `plinth backup from-data-dir`.
pub fn open_stopped_store(data_dir: &Path) -> anyhow::Result<store::Store> {
    let path = data_dir.join("store");
    anyhow::ensure!(path.is_dir(), "{} has no store (is it a plinth data dir?)", data_dir.display());
    store::Store::open(&path, store::StoreConfig::default())
        .with_context(|| format!("opening {} (is the member stopped?)", path.display()))
}
