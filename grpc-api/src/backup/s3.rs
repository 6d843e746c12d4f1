//! An S3-compatible [`BackupTarget`] (`--backup-url s3://bucket/prefix`) through the
//! `object_store` crate. Endpoint, region and credentials come from the usual `AWS_*`
//! environment variables (`AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP=true` for a plain-HTTP
//! endpoint).
//!
//! Objects are uploaded from their staging file in multipart parts of
//! [`UPLOAD_PART_BYTES`], at most [`UPLOAD_PARTS_IN_FLIGHT`] at once: S3 shows a multipart
//! object only once the upload completes, so a reader never sees a partial one. A manifest
//! is one PUT, which S3 applies whole. Reads stream the object in the chunks the HTTP
//! client delivers.
//!
//! The target owns a small tokio runtime and blocks on it: it is for the CLI's threads,
//! not for a task of another runtime.
//!
//! ## CAVEATS
//!
//! - "Never over an existing object" is a check before the upload (S3 multipart uploads
//!   have no create-only mode); object names carry the time in ms, so two writers of one
//!   tenant would have to start in the same millisecond to collide.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};
use tokio_stream::StreamExt;

use super::target::{BackupTarget, MANIFEST_NAME};

/// Bytes of one multipart part (S3's minimum is 5 MiB except for the last).
pub const UPLOAD_PART_BYTES: usize = 8 << 20;
/// Parts uploading at once per object.
pub const UPLOAD_PARTS_IN_FLIGHT: usize = 4;

/// A bucket and prefix of an S3-compatible store.
pub struct S3Target {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    runtime: tokio::runtime::Runtime,
    /// This target's staging directory under the system's temp dir, made on first use and
    /// removed with the target (unique per target, so two targets of one process never
    /// remove each other's files). Each staging file is removed after its upload, failed or
    /// not; dropping the directory removes whatever a panic left in it.
    staging: std::sync::Mutex<Option<tempfile::TempDir>>,
}

impl S3Target {
    /// Opens `s3://bucket[/prefix]` with the `AWS_*` settings of the environment.
    pub fn new(url: &str) -> anyhow::Result<S3Target> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| anyhow::anyhow!("--backup-url {url}: not s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(!bucket.is_empty(), "--backup-url {url}: no bucket");
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .with_context(|| format!("--backup-url {url}"))?;
        // One worker drives the I/O, so a reader can block on the runtime's handle.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("plinth-backup-s3")
            .enable_all()
            .build()?;
        Ok(S3Target {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_string(),
            url: url.to_string(),
            runtime,
            staging: std::sync::Mutex::new(None),
        })
    }

    fn path(&self, name: &str) -> anyhow::Result<ObjectPath> {
        anyhow::ensure!(
            !name.is_empty() && name.split('/').all(|p| !p.is_empty() && p != "." && p != ".."),
            "backup object name {name:?} is not a relative path"
        );
        let full = if self.prefix.is_empty() { name.to_string() } else { format!("{}/{name}", self.prefix) };
        ObjectPath::parse(&full).map_err(|e| anyhow::anyhow!("backup object name {name:?}: {e}"))
    }

    fn exists(&self, path: &ObjectPath) -> anyhow::Result<bool> {
        match self.runtime.block_on(self.store.head(path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", self.url)),
        }
    }
}

/// Reads an object's byte stream as `Read`, blocking on the target's runtime.
struct StreamReader {
    stream: futures_stream::BoxStream,
    handle: tokio::runtime::Handle,
    chunk: Bytes,
}

mod futures_stream {
    /// The byte stream of an object.
    pub type BoxStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = object_store::Result<bytes::Bytes>> + Send>>;
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

impl BackupTarget for S3Target {
    fn put_object(&self, name: &str, staged: &Path) -> anyhow::Result<()> {
        let path = self.path(name)?;
        anyhow::ensure!(!self.exists(&path)?, "backup object {name} already exists in {}", self.url);
        let mut file = std::fs::File::open(staged)?;
        self.runtime
            .block_on(async {
                let upload = self.store.put_multipart(&path).await?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART_BYTES);
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    // Bounded: at most UPLOAD_PARTS_IN_FLIGHT parts in memory and on the wire.
                    writer.wait_for_capacity(UPLOAD_PARTS_IN_FLIGHT).await?;
                    writer.write(&buf[..n]);
                }
                writer.finish().await?;
                anyhow::Ok(())
            })
            .with_context(|| format!("uploading backup object {name} to {}", self.url))?;
        std::fs::remove_file(staged)?;
        Ok(())
    }

    fn open_object(&self, name: &str) -> anyhow::Result<Box<dyn Read + Send>> {
        let path = self.path(name)?;
        let result = self
            .runtime
            .block_on(self.store.get(&path))
            .with_context(|| format!("backup object {name} in {}", self.url))?;
        Ok(Box::new(StreamReader {
            stream: result.into_stream(),
            handle: self.runtime.handle().clone(),
            chunk: Bytes::new(),
        }))
    }

    fn delete_object(&self, name: &str) -> anyhow::Result<()> {
        let path = self.path(name)?;
        match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("deleting {name} in {}: {e}", self.url)),
        }
    }

    fn read_small(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let path = self.path(name)?;
        let got = self.runtime.block_on(async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map(|b| b.map(|b| b.to_vec())).map_err(|e| anyhow::anyhow!("reading {name} in {}: {e}", self.url))
    }

    fn replace_small(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.path(name)?;
        self.runtime
            .block_on(self.store.put(&path, Bytes::copy_from_slice(bytes).into()))
            .map_err(|e| anyhow::anyhow!("writing {name} in {}: {e}", self.url))?;
        Ok(())
    }

    fn tenants(&self) -> anyhow::Result<Vec<String>> {
        let base = if self.prefix.is_empty() { None } else { Some(ObjectPath::from(self.prefix.as_str())) };
        let listed = self
            .runtime
            .block_on(self.store.list_with_delimiter(base.as_ref()))
            .map_err(|e| anyhow::anyhow!("listing {}: {e}", self.url))?;
        let mut out = Vec::new();
        for dir in listed.common_prefixes {
            let Some(tenant) = dir.filename().map(str::to_string) else { continue };
            if self.exists(&self.path(&format!("{tenant}/{MANIFEST_NAME}"))?)? {
                out.push(tenant);
            }
        }
        out.sort();
        Ok(out)
    }

    fn staging_dir(&self) -> anyhow::Result<PathBuf> {
        let mut staging = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if staging.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("plinth-backup-staging-")
                .tempdir()
                .context("creating a backup staging directory in the temp dir")?;
            *staging = Some(dir);
        }
        Ok(staging.as_ref().expect("made above").path().to_path_buf())
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}
