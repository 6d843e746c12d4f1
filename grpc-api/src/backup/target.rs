//! Where backups are kept: a [`BackupTarget`] stores named objects and the per-tenant
//! manifests. Names are `/`-separated paths relative to the target's root:
//!
//! ```text
//! <tenant>/manifest.json
//! <tenant>/objects/full-<to_revision>-<unix_ms>.plbk
//! <tenant>/objects/delta-<from_revision>-<to_revision>-<unix_ms>.plbk
//! ```
//!
//! Every object is first written to a local staging file (compressed and hashed on the way)
//! and only then stored under its name; the manifest is replaced whole. So a reader sees an
//! object either complete or not at all, and a manifest only after the objects it names.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// File name of a tenant's manifest.
pub const MANIFEST_NAME: &str = "manifest.json";

/// A place that keeps backup objects and manifests.
pub trait BackupTarget: Send + Sync {
    /// Stores the finished local file `staged` as object `name`, durably, atomically (the
    /// name never shows a partial object), and never over an existing object.
    fn put_object(&self, name: &str, staged: &Path) -> anyhow::Result<()>;
    /// Opens object `name` for reading.
    fn open_object(&self, name: &str) -> anyhow::Result<Box<dyn Read + Send>>;
    /// Deletes object `name` (no error if it is already gone).
    fn delete_object(&self, name: &str) -> anyhow::Result<()>;
    /// Reads a small file (a manifest), `None` if it does not exist.
    fn read_small(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>>;
    /// Replaces a small file (a manifest) atomically and durably.
    fn replace_small(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()>;
    /// The tenants that have a manifest, sorted.
    fn tenants(&self) -> anyhow::Result<Vec<String>>;
    /// A local directory for staging files before `put_object`.
    fn staging_dir(&self) -> anyhow::Result<PathBuf>;
    /// The target as the user named it, for messages.
    fn describe(&self) -> String;
}

/// Rejects names that could leave the target's root.
fn check_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty() && !name.starts_with('/') && name.split('/').all(|p| !p.is_empty() && p != "." && p != ".."),
        "backup object name {name:?} is not a relative path"
    );
    Ok(())
}

/// A local directory (`--backup-dir`).
pub struct LocalTarget {
    root: PathBuf,
}

impl LocalTarget {
    /// A target rooted at `root`, created if missing.
    pub fn new(root: &Path) -> anyhow::Result<LocalTarget> {
        std::fs::create_dir_all(root).with_context(|| format!("creating backup dir {}", root.display()))?;
        Ok(LocalTarget { root: root.to_path_buf() })
    }

    fn path(&self, name: &str) -> anyhow::Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }
}

/// fsyncs a directory, so a rename or create inside it is durable.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)?.sync_all().with_context(|| format!("fsync of {}", dir.display()))
}

impl BackupTarget for LocalTarget {
    fn put_object(&self, name: &str, staged: &Path) -> anyhow::Result<()> {
        let path = self.path(name)?;
        let dir = path.parent().expect("a checked name has a parent").to_path_buf();
        std::fs::create_dir_all(&dir)?;
        anyhow::ensure!(!path.exists(), "backup object {name} already exists in {}", self.describe());
        // The staged file is already fsynced; copy it when staging is on another
        // filesystem, through a temporary name, so the final name appears complete.
        let tmp = dir.join(format!(".{}.tmp", path.file_name().expect("a file name").to_string_lossy()));
        if std::fs::rename(staged, &tmp).is_err() {
            std::fs::copy(staged, &tmp)
                .with_context(|| format!("copying {} to {}", staged.display(), tmp.display()))?;
            File::open(&tmp)?.sync_all()?;
            std::fs::remove_file(staged)?;
        }
        std::fs::rename(&tmp, &path)?;
        // Durability: the directory entry of the new object, before any manifest names it.
        sync_dir(&dir)
    }

    fn open_object(&self, name: &str) -> anyhow::Result<Box<dyn Read + Send>> {
        let path = self.path(name)?;
        let file = File::open(&path).with_context(|| format!("backup object {name} ({})", path.display()))?;
        Ok(Box::new(std::io::BufReader::new(file)))
    }

    fn delete_object(&self, name: &str) -> anyhow::Result<()> {
        match std::fs::remove_file(self.path(name)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn read_small(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(name)?) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("reading {name} in {}: {e}", self.describe())),
        }
    }

    fn replace_small(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.path(name)?;
        let dir = path.parent().expect("a checked name has a parent").to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{}.tmp", path.file_name().expect("a file name").to_string_lossy()));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            // Durability: the new contents before the rename makes them the manifest.
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        sync_dir(&dir)
    }

    fn tenants(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            if entry.path().join(MANIFEST_NAME).is_file() {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    fn staging_dir(&self) -> anyhow::Result<PathBuf> {
        let dir = self.root.join(".staging");
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_target_stores_objects_once_and_replaces_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let t = LocalTarget::new(dir.path()).unwrap();
        let staged = t.staging_dir().unwrap().join("x");
        std::fs::write(&staged, b"object").unwrap();
        t.put_object("a/objects/o1", &staged).unwrap();
        assert!(!staged.exists(), "the staged file moves into place");
        let mut got = Vec::new();
        t.open_object("a/objects/o1").unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got, b"object");
        std::fs::write(&staged, b"again").unwrap();
        assert!(t.put_object("a/objects/o1", &staged).is_err(), "objects are never overwritten");
        assert_eq!(t.read_small("a/manifest.json").unwrap(), None);
        t.replace_small("a/manifest.json", b"1").unwrap();
        t.replace_small("a/manifest.json", b"2").unwrap();
        assert_eq!(t.read_small("a/manifest.json").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(t.tenants().unwrap(), ["a"]);
        t.delete_object("a/objects/o1").unwrap();
        t.delete_object("a/objects/o1").unwrap();
        assert!(t.open_object("a/objects/o1").is_err());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b"] {
            assert!(t.read_small(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
