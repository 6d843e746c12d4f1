//! A small reader of bbolt files (etcd's `db`: `member/snap/db`, or what `etcdctl snapshot
//! save` writes), enough to walk the buckets of the last committed transaction in key
//! order, and a writer ([`BboltWriter`]) that builds such a file in one pass from buckets
//! whose keys arrive in order.
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
//! Page 2 of a written file is its (empty) freelist: every other page is reachable from the
//! root, as bbolt's consistency check (`tx.Check`, which `etcdutl snapshot status` runs)
//! requires. Every page read is checked against the file's length, its element table against the
//! page, and the walk against a depth limit, so a damaged file gives an error, not a panic.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
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
const FLAG_META: u16 = 0x04;
const FLAG_FREELIST: u16 = 0x10;
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
    /// The meta page's high-water mark: pages in use.
    pages: u64,
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
        let mut best: Option<(u64, u32, u64, u64)> = None;
        // The meta pages sit at 0 and at one page size, which the first tells; read the
        // first 4 KiB of both possible places before trusting any page size.
        let mut first = vec![0u8; 4096.min(len as usize)];
        file.read_exact_at(&mut first, 0)?;
        let mut candidates = vec![0u64];
        if let Some((_, ps, ..)) = Self::parse_meta(&first) {
            candidates.push(u64::from(ps));
        }
        for offset in candidates {
            if offset + 4096 > len && offset != 0 {
                continue;
            }
            let mut page = vec![0u8; 4096.min((len - offset) as usize)];
            file.read_exact_at(&mut page, offset)?;
            if let Some(meta) = Self::parse_meta(&page) {
                if best.is_none_or(|(t, ..)| meta.0 > t) {
                    best = Some(meta);
                }
            }
        }
        let Some((_, page_size, root, pages)) = best else { bail!("{name} is not a bbolt file (no valid meta page)") };
        Ok(Bbolt { file, len, page_size, root, pages, name })
    }

    /// (txid, page size, root bucket page, high-water mark) of a valid meta page.
    fn parse_meta(page: &[u8]) -> Option<(u64, u32, u64, u64)> {
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
        Some((u64_at(m, 48), page_size, u64_at(m, 16), u64_at(m, 40)))
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

    /// Bytes of the pages in use (bbolt's `tx.Size()`).
    pub fn size_in_pages(&self) -> u64 {
        self.pages * u64::from(self.page_size)
    }

    /// Whether `path` starts with a valid bbolt meta page.
    pub fn is_bbolt(path: &Path) -> bool {
        let mut first = [0u8; PAGE_HEADER_BYTES + 64];
        File::open(path).and_then(|f| f.read_exact_at(&mut first, 0)).is_ok() && Self::parse_meta(&first).is_some()
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

/// Page size of the files [`BboltWriter`] writes (bbolt's default on x86-64 Linux, the OS
/// page size).
pub const WRITE_PAGE_BYTES: usize = 4096;
/// The freelist's page in a written file; pages 0 and 1 are the meta pages.
const FREELIST_PAGE: u64 = 2;
/// The first page a written file's trees use.
const FIRST_TREE_PAGE: u64 = 3;

/// Writes a bbolt file in one pass: top-level buckets one after another, each from keys in
/// strictly increasing order, then the root, freelist and meta pages.
///
/// Each bucket's B+tree is built bottom up: leaves are filled to the page size and written
/// as they fill (a larger entry gets a leaf of its own with overflow pages), and the
/// branch levels are written when the bucket ends. Only the first key of each page of the
/// level being built is held, a few bytes per 4 KiB of data. Nothing is ever freed, so
/// the freelist is empty and the file is exactly its pages.
pub struct BboltWriter {
    out: BufWriter<File>,
    next_page: u64,
    /// The top-level buckets written: (name, bucket value).
    buckets: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One top-level bucket being written; see [`BboltWriter::bucket`].
pub struct BucketWriter<'a> {
    w: &'a mut BboltWriter,
    name: Vec<u8>,
    /// Entries of the leaf being filled, and the bytes that leaf's page would take.
    leaf: Vec<(Vec<u8>, Vec<u8>)>,
    leaf_bytes: usize,
    /// First key and page of each leaf written so far.
    leaves: Vec<(Vec<u8>, u64)>,
    last: Option<Vec<u8>>,
}

impl BboltWriter {
    /// Starts a file in `file` (empty, opened for writing).
    pub fn new(mut file: File) -> anyhow::Result<BboltWriter> {
        file.seek(SeekFrom::Start(FIRST_TREE_PAGE * WRITE_PAGE_BYTES as u64))?;
        Ok(BboltWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            next_page: FIRST_TREE_PAGE,
            buckets: Vec::new(),
        })
    }

    /// Starts the top-level bucket `name`; its entries are added with
    /// [`BucketWriter::put`] and it ends with [`BucketWriter::finish`].
    pub fn bucket(&mut self, name: &[u8]) -> anyhow::Result<BucketWriter<'_>> {
        ensure!(!self.buckets.iter().any(|(n, _)| n == name), "bucket {name:?} written twice");
        Ok(BucketWriter {
            w: self,
            name: name.to_vec(),
            leaf: Vec::new(),
            leaf_bytes: 0,
            leaves: Vec::new(),
            last: None,
        })
    }

    /// Writes the top-level bucket `name` whole: `entries`, sorted here (keys unique).
    pub fn sorted_bucket(&mut self, name: &[u8], mut entries: Vec<(Vec<u8>, Vec<u8>)>) -> anyhow::Result<()> {
        entries.sort();
        let mut b = self.bucket(name)?;
        for (k, v) in &entries {
            b.put(k, v)?;
        }
        b.finish()
    }

    /// Writes one page (with its overflow pages) at the next free id and returns the id.
    /// `elements` are `(key, value)` of a leaf or `(key, child page)` of a branch.
    fn write_page(&mut self, flags: u16, leaf: &[(&[u8], &[u8], u32)], branch: &[(&[u8], u64)]) -> anyhow::Result<u64> {
        let count = leaf.len() + branch.len();
        ensure!(count <= usize::from(u16::MAX), "page of {count} elements");
        let mut page = Vec::with_capacity(WRITE_PAGE_BYTES);
        let id = self.next_page;
        page.extend_from_slice(&id.to_le_bytes());
        page.extend_from_slice(&flags.to_le_bytes());
        page.extend_from_slice(&(count as u16).to_le_bytes());
        page.extend_from_slice(&0u32.to_le_bytes()); // overflow, set below
                                                     // Element i sits at header + 16 i; its key (and value) at `pos` bytes after it.
        let mut data_at = PAGE_HEADER_BYTES + count * ELEMENT_BYTES;
        for (i, (k, v, eflags)) in leaf.iter().enumerate() {
            let pos = data_at - (PAGE_HEADER_BYTES + i * ELEMENT_BYTES);
            page.extend_from_slice(&eflags.to_le_bytes());
            page.extend_from_slice(&u32::try_from(pos)?.to_le_bytes());
            page.extend_from_slice(&u32::try_from(k.len())?.to_le_bytes());
            page.extend_from_slice(&u32::try_from(v.len())?.to_le_bytes());
            data_at += k.len() + v.len();
        }
        for (i, (k, child)) in branch.iter().enumerate() {
            let pos = data_at - (PAGE_HEADER_BYTES + i * ELEMENT_BYTES);
            page.extend_from_slice(&u32::try_from(pos)?.to_le_bytes());
            page.extend_from_slice(&u32::try_from(k.len())?.to_le_bytes());
            page.extend_from_slice(&child.to_le_bytes());
            data_at += k.len();
        }
        for (k, v, _) in leaf {
            page.extend_from_slice(k);
            page.extend_from_slice(v);
        }
        for (k, _) in branch {
            page.extend_from_slice(k);
        }
        let pages = page.len().div_ceil(WRITE_PAGE_BYTES).max(1);
        page.resize(pages * WRITE_PAGE_BYTES, 0);
        page[12..16].copy_from_slice(&u32::try_from(pages - 1)?.to_le_bytes());
        self.out.write_all(&page)?;
        self.next_page += pages as u64;
        Ok(id)
    }

    /// Writes the root, freelist and meta pages and returns the file, whose length is its
    /// pages. The buckets are listed in name order whatever order they were written in.
    pub fn finish(mut self) -> anyhow::Result<File> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let elements: Vec<(&[u8], &[u8], u32)> =
            buckets.iter().map(|(n, v)| (n.as_slice(), v.as_slice(), LEAF_FLAG_BUCKET)).collect();
        let root = self.write_page(FLAG_LEAF, &elements, &[])?;
        let pages = self.next_page;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        let mut freelist = vec![0u8; WRITE_PAGE_BYTES];
        freelist[..8].copy_from_slice(&FREELIST_PAGE.to_le_bytes());
        freelist[8..10].copy_from_slice(&FLAG_FREELIST.to_le_bytes());
        file.write_all_at(&freelist, FREELIST_PAGE * WRITE_PAGE_BYTES as u64)?;
        // Both meta pages describe the one transaction; bbolt keeps txid t's meta at page
        // t % 2, so page 0 has the even txid and page 1 the newer, odd one.
        for (page_id, txid) in [(0u64, 2u64), (1, 3)] {
            let mut page = vec![0u8; WRITE_PAGE_BYTES];
            page[..8].copy_from_slice(&page_id.to_le_bytes());
            page[8..10].copy_from_slice(&FLAG_META.to_le_bytes());
            let m = &mut page[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + 64];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(WRITE_PAGE_BYTES as u32).to_le_bytes());
            m[16..24].copy_from_slice(&root.to_le_bytes());
            m[32..40].copy_from_slice(&FREELIST_PAGE.to_le_bytes());
            m[40..48].copy_from_slice(&pages.to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv1a64(&m[..56]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
            file.write_all_at(&page, page_id * WRITE_PAGE_BYTES as u64)?;
        }
        Ok(file)
    }
}

impl BucketWriter<'_> {
    /// Adds an entry; keys must be strictly increasing.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        ensure!(!key.is_empty(), "empty key in bucket {:?}", self.name);
        if let Some(last) = &self.last {
            ensure!(key > last.as_slice(), "keys out of order in bucket {:?}", self.name);
        }
        self.last = Some(key.to_vec());
        let bytes = ELEMENT_BYTES + key.len() + value.len();
        if !self.leaf.is_empty() && self.leaf_bytes + bytes > WRITE_PAGE_BYTES {
            self.flush_leaf()?;
        }
        if self.leaf.is_empty() {
            self.leaf_bytes = PAGE_HEADER_BYTES;
        }
        self.leaf.push((key.to_vec(), value.to_vec()));
        self.leaf_bytes += bytes;
        Ok(())
    }

    fn flush_leaf(&mut self) -> anyhow::Result<()> {
        let elements: Vec<(&[u8], &[u8], u32)> =
            self.leaf.iter().map(|(k, v)| (k.as_slice(), v.as_slice(), 0)).collect();
        let id = self.w.write_page(FLAG_LEAF, &elements, &[])?;
        let first = std::mem::take(&mut self.leaf).swap_remove(0).0;
        self.leaves.push((first, id));
        Ok(())
    }

    /// Writes the bucket's remaining leaf and its branch levels.
    pub fn finish(mut self) -> anyhow::Result<()> {
        // bucket value := root page u64 | sequence u64 (| inline page when root is 0)
        let mut value = Vec::with_capacity(BUCKET_HEADER_BYTES + PAGE_HEADER_BYTES);
        if self.leaf.is_empty() && self.leaves.is_empty() {
            // An empty bucket is inline, as bbolt writes one: a leaf page header, no elements.
            value.extend_from_slice(&[0u8; BUCKET_HEADER_BYTES]);
            let mut page = [0u8; PAGE_HEADER_BYTES];
            page[8..10].copy_from_slice(&FLAG_LEAF.to_le_bytes());
            value.extend_from_slice(&page);
        } else {
            if !self.leaf.is_empty() {
                self.flush_leaf()?;
            }
            let mut level = std::mem::take(&mut self.leaves);
            while level.len() > 1 {
                let mut next = Vec::new();
                let mut start = 0;
                while start < level.len() {
                    // As many children as fit in one page (at least one).
                    let mut end = start;
                    let mut bytes = PAGE_HEADER_BYTES;
                    while end < level.len()
                        && (end == start || bytes + ELEMENT_BYTES + level[end].0.len() <= WRITE_PAGE_BYTES)
                    {
                        bytes += ELEMENT_BYTES + level[end].0.len();
                        end += 1;
                    }
                    let children: Vec<(&[u8], u64)> =
                        level[start..end].iter().map(|(k, id)| (k.as_slice(), *id)).collect();
                    let id = self.w.write_page(FLAG_BRANCH, &[], &children)?;
                    next.push((level[start].0.clone(), id));
                    start = end;
                }
                level = next;
            }
            value.extend_from_slice(&level[0].1.to_le_bytes());
            value.extend_from_slice(&0u64.to_le_bytes());
        }
        self.w.buckets.push((std::mem::take(&mut self.name), value));
        Ok(())
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

    fn entries(db: &Bbolt, bucket: &Bucket) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        db.walk(bucket, &mut |k, v, _| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
        .unwrap();
        out
    }

    #[test]
    fn a_written_file_reads_back_with_every_entry_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let file = std::fs::OpenOptions::new().create_new(true).read(true).write(true).open(&path).unwrap();
        let mut w = BboltWriter::new(file).unwrap();
        // Enough entries for three levels, values of every size (one past a page, one of
        // several pages), a bucket of one entry, an empty one, written out of name order.
        let big: Vec<(Vec<u8>, Vec<u8>)> = (0..60_000u32)
            .map(|i| {
                let len = match i % 1000 {
                    7 => 5000,
                    8 => 3 * WRITE_PAGE_BYTES + 11,
                    n => (n % 40) as usize,
                };
                (format!("key{i:08}").into_bytes(), vec![(i % 251) as u8; len])
            })
            .collect();
        let mut b = w.bucket(b"key").unwrap();
        for (k, v) in &big {
            b.put(k, v).unwrap();
        }
        assert!(b.put(b"key0", b"").is_err(), "a key out of order is refused");
        b.finish().unwrap();
        let mut b = w.bucket(b"cluster").unwrap();
        b.put(b"clusterVersion", b"3.5.0").unwrap();
        b.finish().unwrap();
        w.bucket(b"alarm").unwrap().finish().unwrap();
        let file = w.finish().unwrap();
        let len = file.metadata().unwrap().len();
        assert_eq!(len % WRITE_PAGE_BYTES as u64, 0);

        let db = Bbolt::open(&path).unwrap();
        assert_eq!(db.page_size as usize, WRITE_PAGE_BYTES);
        let names: Vec<Vec<u8>> = entries(&db, &db.root()).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, vec![b"alarm".to_vec(), b"cluster".to_vec(), b"key".to_vec()]);
        assert_eq!(entries(&db, &db.bucket(b"key").unwrap().unwrap()), big);
        assert_eq!(
            entries(&db, &db.bucket(b"cluster").unwrap().unwrap()),
            vec![(b"clusterVersion".to_vec(), b"3.5.0".to_vec())]
        );
        assert!(entries(&db, &db.bucket(b"alarm").unwrap().unwrap()).is_empty());
        // The meta page's high-water mark is the file's length in pages.
        let mut meta = vec![0u8; WRITE_PAGE_BYTES];
        std::fs::File::open(&path).unwrap().read_exact_at(&mut meta, WRITE_PAGE_BYTES as u64).unwrap();
        assert_eq!(u64_at(&meta, PAGE_HEADER_BYTES + 40) * WRITE_PAGE_BYTES as u64, len);
    }

    #[test]
    fn a_file_that_is_not_bbolt_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        assert!(Bbolt::open(&path).is_err());
    }
}
