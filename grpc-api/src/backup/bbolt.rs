//! A small read-only reader of bbolt files (etcd's `db`: `member/snap/db`, or what
//! `etcdctl snapshot save` writes), enough to walk the buckets of the last committed
//! transaction in key order.
//!
//! ```text
//! page     := id u64 | flags u16 | count u16 | overflow u32 | data     (little endian;
//!             spans (1 + overflow) pages)
//! meta     := magic u32 (0xED0CDAED) | version u32 (2) | page_size u32 | flags u32
//!             | root bucket (root pgid u64, sequence u64) | freelist u64 | pgid u64
//!             | txid u64 | checksum u64 (FNV-1a 64 of the bytes before it)
//! branch element := pos u32 | ksize u32 | pgid u64          (key at element + pos)
//! leaf element   := flags u32 | pos u32 | ksize u32 | vsize u32 (key, then value, at
//!                   element + pos; flags 1 = the value is a bucket)
//! bucket value   := root pgid u64 | sequence u64 | (root 0: an inline page follows)
//! ```
//!
//! Pages 0 and 1 are the two meta pages; the valid one with the higher txid is current.
//! Every page read is checked against the file's length, its element table against the
//! page, and the walk against a depth limit, so a damaged file gives an error, not a panic.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, ensure, Context};

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER_BYTES: usize = 16;
const ELEMENT_BYTES: usize = 16;
const BUCKET_HEADER_BYTES: usize = 16;
const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const LEAF_FLAG_BUCKET: u32 = 0x01;
/// Deepest B+tree accepted (bbolt trees of any real size are a handful of levels deep).
const DEPTH_MAX: usize = 64;
/// Largest page size accepted.
const PAGE_BYTES_MAX: u32 = 1 << 20;
/// Largest run of overflow pages accepted for one page (1 GiB at 4 KiB pages).
const OVERFLOW_PAGES_MAX: u32 = 1 << 18;

/// Called with `(key, value, value is a bucket)` for each entry of a bucket, in key
/// order; returns false to stop the walk.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8], bool) -> anyhow::Result<bool> + 'a;

/// An open bbolt file.
pub struct Bbolt {
    file: File,
    len: u64,
    page_size: u32,
    root: u64,
    name: String,
}

/// A bucket: its root page, or its inline page bytes.
#[derive(Clone, Debug)]
pub enum Bucket {
    Page(u64),
    Inline(Vec<u8>),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Bbolt {
    /// Opens `path` and finds its current meta page.
    pub fn open(path: &Path) -> anyhow::Result<Bbolt> {
        let name = path.display().to_string();
        let file = File::open(path).with_context(|| format!("opening {name}"))?;
        let len = file.metadata()?.len();
        let mut best: Option<(u64, u32, u64)> = None;
        // The meta pages sit at 0 and at one page size, which the first tells; read the
        // first 4 KiB of both possible places before trusting any page size.
        let mut first = vec![0u8; 4096.min(len as usize)];
        file.read_exact_at(&mut first, 0)?;
        let mut candidates = vec![0u64];
        if let Some((_, ps, _)) = Self::parse_meta(&first) {
            candidates.push(u64::from(ps));
        }
        for offset in candidates {
            if offset + 4096 > len && offset != 0 {
                continue;
            }
            let mut page = vec![0u8; 4096.min((len - offset) as usize)];
            file.read_exact_at(&mut page, offset)?;
            if let Some((txid, ps, root)) = Self::parse_meta(&page) {
                if best.is_none_or(|(t, _, _)| txid > t) {
                    best = Some((txid, ps, root));
                }
            }
        }
        let Some((_, page_size, root)) = best else { bail!("{name} is not a bbolt file (no valid meta page)") };
        Ok(Bbolt { file, len, page_size, root, name })
    }

    /// (txid, page size, root bucket page) of a valid meta page.
    fn parse_meta(page: &[u8]) -> Option<(u64, u32, u64)> {
        let m = page.get(PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + 64)?;
        if u32_at(m, 0) != MAGIC || u32_at(m, 4) != VERSION {
            return None;
        }
        if fnv1a64(&m[..56]) != u64_at(m, 56) {
            return None;
        }
        let page_size = u32_at(m, 8);
        if !(512..=PAGE_BYTES_MAX).contains(&page_size) || !page_size.is_power_of_two() {
            return None;
        }
        Some((u64_at(m, 48), page_size, u64_at(m, 16)))
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("bbolt file {} is corrupted: {what}", self.name)
    }

    /// Reads page `id` with its overflow pages.
    fn page(&self, id: u64) -> anyhow::Result<Vec<u8>> {
        let ps = u64::from(self.page_size);
        let offset = id
            .checked_mul(ps)
            .filter(|o| o + ps <= self.len)
            .ok_or_else(|| self.corrupt(format!("page {id} past the end")))?;
        let mut head = vec![0u8; ps as usize];
        self.file.read_exact_at(&mut head, offset)?;
        let overflow = u32_at(&head, 12);
        if overflow == 0 {
            return Ok(head);
        }
        ensure!(overflow <= OVERFLOW_PAGES_MAX, self.corrupt(format!("page {id} has {overflow} overflow pages")));
        let total = ps * (1 + u64::from(overflow));
        ensure!(offset + total <= self.len, self.corrupt(format!("page {id} overflows past the end")));
        let mut page = vec![0u8; total as usize];
        self.file.read_exact_at(&mut page, offset)?;
        Ok(page)
    }

    /// The root bucket (which holds the named top-level buckets).
    pub fn root(&self) -> Bucket {
        Bucket::Page(self.root)
    }

    /// The top-level bucket `name`, if present.
    pub fn bucket(&self, name: &[u8]) -> anyhow::Result<Option<Bucket>> {
        let mut found = None;
        self.walk(&self.root(), &mut |k, v, is_bucket| {
            if is_bucket && k == name {
                found = Some(self.parse_bucket(v)?);
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(found)
    }

    fn parse_bucket(&self, v: &[u8]) -> anyhow::Result<Bucket> {
        ensure!(v.len() >= BUCKET_HEADER_BYTES, self.corrupt("bucket value too short"));
        let root = u64_at(v, 0);
        if root == 0 {
            Ok(Bucket::Inline(v[BUCKET_HEADER_BYTES..].to_vec()))
        } else {
            Ok(Bucket::Page(root))
        }
    }

    /// Visits every entry of `bucket` in key order: `(key, value, value is a bucket)`.
    /// `visit` returns false to stop.
    pub fn walk(&self, bucket: &Bucket, visit: &mut Visitor<'_>) -> anyhow::Result<()> {
        match bucket {
            Bucket::Page(id) => self.walk_page(*id, 0, visit).map(|_| ()),
            Bucket::Inline(page) => self.walk_bytes(page, 0, visit).map(|_| ()),
        }
    }

    fn walk_page(&self, id: u64, depth: usize, visit: &mut Visitor<'_>) -> anyhow::Result<bool> {
        ensure!(depth < DEPTH_MAX, self.corrupt(format!("tree deeper than {DEPTH_MAX} levels")));
        let page = self.page(id)?;
        self.walk_bytes(&page, depth, visit)
    }

    fn walk_bytes(&self, page: &[u8], depth: usize, visit: &mut Visitor<'_>) -> anyhow::Result<bool> {
        ensure!(page.len() >= PAGE_HEADER_BYTES, self.corrupt("page shorter than its header"));
        let flags = u16_at(page, 8);
        let count = usize::from(u16_at(page, 10));
        ensure!(PAGE_HEADER_BYTES + count * ELEMENT_BYTES <= page.len(), self.corrupt("element table past the page"));
        for i in 0..count {
            let el = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
            if flags & FLAG_BRANCH != 0 {
                let child = u64_at(page, el + 8);
                if !self.walk_page(child, depth + 1, visit)? {
                    return Ok(false);
                }
            } else if flags & FLAG_LEAF != 0 {
                let (eflags, pos, ksize, vsize) = (
                    u32_at(page, el),
                    u32_at(page, el + 4) as usize,
                    u32_at(page, el + 8) as usize,
                    u32_at(page, el + 12) as usize,
                );
                let start = el + pos;
                let end = start.checked_add(ksize).and_then(|k| k.checked_add(vsize));
                let Some(end) = end.filter(|&e| e <= page.len()) else {
                    return Err(self.corrupt("leaf element past the page"));
                };
                let (k, v) = page[start..end].split_at(ksize);
                if !visit(k, v, eflags & LEAF_FLAG_BUCKET != 0)? {
                    return Ok(false);
                }
            } else {
                return Err(self.corrupt(format!("page of flags {flags:#x} inside a tree")));
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn a_file_that_is_not_bbolt_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        assert!(Bbolt::open(&path).is_err());
    }
}
