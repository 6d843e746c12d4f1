//! One backup object: an export's records, framed, compressed with zstd, and checksummed.
//!
//! ```text
//! object := "PLBK" | version u8 | zstd( frame* )
//! frame  := record_len u32 (big endian) | store::BackupRecord (protobuf)
//! ```
//!
//! The SHA-256 and the length of the whole object are kept in the manifest entry that names
//! it; a reader hashes every byte it reads and checks both at the end, so a damaged object
//! is reported with its name however the damage shows up (a zstd error, a record that does
//! not decode, a wrong checksum). A frame is at most [`RECORD_BYTES_MAX`].

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use store::{BackupRecord, Message};

/// Magic bytes opening every object.
pub const OBJECT_MAGIC: &[u8; 4] = b"PLBK";
/// Version of the object framing.
pub const OBJECT_VERSION: u8 = 1;
/// Largest record a reader accepts: a key and value within any request size limit, with
/// its previous version, fit many times over.
pub const RECORD_BYTES_MAX: usize = 64 << 20;
/// zstd level: fast, and still several times smaller than the records.
const ZSTD_LEVEL: i32 = 3;

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What the manifest records of a finished object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSummary {
    /// Lowercase hex SHA-256 of the object's bytes.
    pub sha256: String,
    /// Bytes of the object.
    pub size_bytes: u64,
    /// Records written, the header and end records included.
    pub records: u64,
}

/// Writes one object to a local file.
pub struct ObjectWriter {
    encoder: zstd::Encoder<'static, Hashing<BufWriter<File>>>,
    records: u64,
    frame: Vec<u8>,
}

impl ObjectWriter {
    /// Creates `path` (which must not exist) and writes the object header.
    pub fn create(path: &Path) -> anyhow::Result<ObjectWriter> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut out = Hashing { inner: BufWriter::new(file), sha: Sha256::new(), bytes: 0 };
        out.write_all(OBJECT_MAGIC)?;
        out.write_all(&[OBJECT_VERSION])?;
        let encoder = zstd::Encoder::new(out, ZSTD_LEVEL)?;
        Ok(ObjectWriter { encoder, records: 0, frame: Vec::new() })
    }

    /// Appends one record.
    pub fn write(&mut self, record: &BackupRecord) -> anyhow::Result<()> {
        self.frame.clear();
        record.encode(&mut self.frame).expect("a Vec grows as needed");
        anyhow::ensure!(self.frame.len() <= RECORD_BYTES_MAX, "a record of {} bytes", self.frame.len());
        self.encoder.write_all(&(self.frame.len() as u32).to_be_bytes())?;
        self.encoder.write_all(&self.frame)?;
        self.records += 1;
        Ok(())
    }

    /// Ends the zstd stream and makes the file durable (fsync) before returning its
    /// summary: the manifest may name it only once its bytes are on disk.
    pub fn finish(self) -> anyhow::Result<ObjectSummary> {
        let hashing = self.encoder.finish()?;
        let Hashing { inner, sha, bytes } = hashing;
        let file = inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(ObjectSummary { sha256: hex(&sha.finalize()), size_bytes: bytes, records: self.records })
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A reader that hashes and counts what passes through it.
struct HashingReader<R> {
    inner: R,
    sha: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Reads the records of one object and checks it against its manifest entry at the end.
pub struct ObjectReader {
    name: String,
    decoder: zstd::Decoder<'static, BufReader<HashingReader<Box<dyn Read + Send>>>>,
    expected_sha256: String,
    expected_size_bytes: u64,
    records: u64,
    done: bool,
}

impl ObjectReader {
    /// Starts reading object `name` from `source`; `sha256` and `size_bytes` are what its
    /// manifest entry says.
    pub fn new(
        name: &str,
        source: Box<dyn Read + Send>,
        sha256: &str,
        size_bytes: u64,
    ) -> anyhow::Result<ObjectReader> {
        let mut hashing = HashingReader { inner: source, sha: Sha256::new(), bytes: 0 };
        let mut head = [0u8; 5];
        hashing.read_exact(&mut head).with_context(|| format!("backup object {name}: reading its header"))?;
        if &head[..4] != OBJECT_MAGIC || head[4] != OBJECT_VERSION {
            bail!("backup object {name} is corrupted: not a version {OBJECT_VERSION} backup object");
        }
        let decoder = zstd::Decoder::new(hashing).with_context(|| format!("backup object {name}"))?;
        Ok(ObjectReader {
            name: name.to_string(),
            decoder,
            expected_sha256: sha256.to_string(),
            expected_size_bytes: size_bytes,
            records: 0,
            done: false,
        })
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("backup object {} is corrupted: {what}", self.name)
    }

    /// The next record, or `None` once the object ended and matched its checksum.
    pub fn next_record(&mut self) -> anyhow::Result<Option<BackupRecord>> {
        if self.done {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        match read_full(&mut self.decoder, &mut len) {
            Ok(0) => return self.finish().map(|()| None),
            Ok(4) => {}
            Ok(_) => return Err(self.corrupt("truncated record length")),
            Err(e) => return Err(self.corrupt(e)),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > RECORD_BYTES_MAX {
            return Err(self.corrupt(format!("a record of {len} bytes")));
        }
        let mut frame = vec![0u8; len];
        if let Err(e) = self.decoder.read_exact(&mut frame) {
            return Err(self.corrupt(format!("truncated record: {e}")));
        }
        self.records += 1;
        BackupRecord::decode_record(&frame).map(Some).map_err(|e| self.corrupt(e))
    }

    /// Checks the end of the stream: nothing after the zstd frame, and the checksum.
    fn finish(&mut self) -> anyhow::Result<()> {
        self.done = true;
        let mut rest = Vec::new();
        let reader = self.decoder.get_mut().get_mut();
        reader.read_to_end(&mut rest).map_err(|e| self.corrupt(e))?;
        let reader = self.decoder.get_mut().get_mut();
        let size = reader.bytes;
        let sha = hex(&reader.sha.clone().finalize());
        if size != self.expected_size_bytes {
            return Err(self.corrupt(format!("{size} bytes, the manifest says {}", self.expected_size_bytes)));
        }
        if sha != self.expected_sha256 {
            return Err(self.corrupt(format!("sha256 {sha}, the manifest says {}", self.expected_sha256)));
        }
        Ok(())
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.records
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::{BackupBody, BackupEnd};

    fn record(i: u64) -> BackupRecord {
        BackupRecord { body: Some(BackupBody::End(BackupEnd { records_before: i })) }
    }

    fn write(path: &Path, n: u64) -> ObjectSummary {
        let mut w = ObjectWriter::create(path).unwrap();
        for i in 0..n {
            w.write(&record(i)).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(path: &Path, s: &ObjectSummary) -> anyhow::Result<Vec<BackupRecord>> {
        let file = File::open(path)?;
        let mut r = ObjectReader::new("o", Box::new(file), &s.sha256, s.size_bytes)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }

    #[test]
    fn objects_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o");
        let s = write(&path, 1000);
        assert_eq!(s.records, 1000);
        assert_eq!(s.size_bytes, std::fs::metadata(&path).unwrap().len());
        let got = read_all(&path, &s).unwrap();
        assert_eq!(got, (0..1000).map(record).collect::<Vec<_>>());
        assert!(ObjectWriter::create(&path).is_err(), "an object is never overwritten");
    }

    #[test]
    fn every_flipped_or_cut_byte_is_reported_with_the_object_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o");
        let s = write(&path, 50);
        let good = std::fs::read(&path).unwrap();
        let bad_path = dir.path().join("bad");
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x04;
            std::fs::write(&bad_path, &bad).unwrap();
            let err = read_all(&bad_path, &s).expect_err("a flipped byte must be detected");
            assert!(format!("{err:#}").contains("backup object o"), "{err:#}");
        }
        for cut in [1, good.len() / 2, good.len() - 1] {
            std::fs::write(&bad_path, &good[..cut]).unwrap();
            assert!(read_all(&bad_path, &s).is_err(), "cut at {cut} must be detected");
        }
    }
}
