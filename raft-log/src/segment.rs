//! Segment files: naming, the file header, batch frames, and scanning a segment back.
//!
//! ```text
//! {seq:016}.wal
//! +----------------------------------------------------------------+
//! | magic "PLNTHWAL" (8) | version u32 | seq u64 | crc32(header) u32 |  header, 24 bytes
//! +----------------------------------------------------------------+
//! | len u32 | crc u32 | payload (len bytes: records)                |  frame
//! | len u32 | crc u32 | payload                                    |  frame
//! | ...                                                            |
//! +----------------------------------------------------------------+
//! crc = crc32(seq:u64 | len:u32 | payload)
//! ```
//!
//! Mixing the segment's sequence number into every frame's crc means a frame copied from,
//! or left over by, another file never validates here.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::record::{decode_batch_with_spans, records_tile, EntrySpan, Record};

/// First bytes of every segment.
pub const MAGIC: [u8; 8] = *b"PLNTHWAL";
/// Version of the on-disk format written by this code.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the segment header.
pub const HEADER_BYTES: usize = 8 + 4 + 8 + 4;
/// Size of a frame header (`len | crc`).
pub const FRAME_HEADER_BYTES: usize = 8;
/// Largest payload one frame may carry. Bounds what recovery will believe of a length field.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 256 << 20;

/// The file name of segment `seq`.
pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:016}.wal")
}

/// The sequence number encoded in a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    parse_numbered(name, ".wal")
}

/// The sequence number of a file named `<16 digits><suffix>`.
fn parse_numbered(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The name a purged segment `seq` is kept under for recycling (never a segment's name).
pub fn recycle_file_name(seq: u64) -> String {
    format!("{seq:016}.recycle")
}

/// Whether `name` is the name of a purged segment kept for recycling.
pub fn is_recycle_file_name(name: &str) -> bool {
    parse_numbered(name, ".recycle").is_some()
}

/// The path of segment `seq` in `dir`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_file_name(seq))
}

/// Encodes the header of segment `seq`.
pub fn encode_header(seq: u64) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The verdict on a segment's header.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderCheck {
    /// A valid header for the expected sequence number.
    Valid,
    /// Shorter than a header, or all zeros: the file was being created when the process
    /// died (no frame can have been acknowledged from it).
    Torn,
    /// Present but wrong.
    Bad(String),
}

/// Checks the first bytes of a segment file against the expected sequence number.
pub fn check_header(bytes: &[u8], seq: u64) -> HeaderCheck {
    if bytes.len() < HEADER_BYTES {
        return HeaderCheck::Torn;
    }
    let h = &bytes[..HEADER_BYTES];
    if h.iter().all(|b| *b == 0) {
        return HeaderCheck::Torn;
    }
    if h[0..8] != MAGIC {
        return HeaderCheck::Bad("bad magic".into());
    }
    let crc = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
    if crc32fast::hash(&h[..20]) != crc {
        return HeaderCheck::Bad("header crc mismatch".into());
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != FORMAT_VERSION {
        return HeaderCheck::Bad(format!("unsupported format version {version}"));
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&h[12..20]);
    let found = u64::from_le_bytes(s);
    if found != seq {
        return HeaderCheck::Bad(format!("header names segment {found}, file name {seq}"));
    }
    HeaderCheck::Valid
}

/// The crc of a frame in segment `seq`.
pub fn frame_crc(seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The 8-byte header of a frame carrying `payload` in segment `seq`.
pub fn encode_frame_header(seq: u64, payload: &[u8]) -> [u8; FRAME_HEADER_BYTES] {
    assert!(
        !payload.is_empty() && payload.len() <= FRAME_PAYLOAD_BYTES_MAX,
        "frame payload of {} bytes is out of range",
        payload.len()
    );
    let mut h = [0u8; FRAME_HEADER_BYTES];
    h[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[4..8].copy_from_slice(&frame_crc(seq, payload).to_le_bytes());
    h
}

/// One valid frame found by [`scan_frames`].
#[derive(Debug)]
pub struct ScannedFrame {
    /// File offset of the frame header.
    pub offset: u64,
    /// The decoded records with entry spans relative to the payload start, which is at
    /// `offset + FRAME_HEADER_BYTES`.
    pub records: Vec<(Record, Vec<EntrySpan>)>,
}

/// What scanning a segment found.
#[derive(Debug)]
pub struct ScanResult {
    /// The valid frames, in order.
    pub frames: Vec<ScannedFrame>,
    /// The first invalid frame (offset and why), if the scan stopped before the end.
    pub bad: Option<(u64, String)>,
}

/// Walks the frames of a whole segment image (`bytes` includes the header, which the
/// caller has already checked). Stops at the first frame that is short, too long, fails
/// its crc or does not decode.
pub fn scan_frames(seq: u64, bytes: &[u8]) -> ScanResult {
    let mut frames = Vec::new();
    let mut pos = HEADER_BYTES.min(bytes.len());
    let bad = loop {
        let rest = &bytes[pos..];
        if rest.is_empty() {
            break None;
        }
        if rest.len() < FRAME_HEADER_BYTES {
            break Some((pos as u64, "short frame header".to_string()));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 || len > FRAME_PAYLOAD_BYTES_MAX {
            break Some((pos as u64, format!("frame length {len} out of range")));
        }
        if rest.len() - FRAME_HEADER_BYTES < len {
            break Some((pos as u64, format!("frame length {len} runs past end of file")));
        }
        let payload = &rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len];
        if frame_crc(seq, payload) != crc {
            break Some((pos as u64, "frame crc mismatch".to_string()));
        }
        match decode_batch_with_spans(payload) {
            Ok(records) => frames.push(ScannedFrame { offset: pos as u64, records }),
            Err(e) => break Some((pos as u64, format!("undecodable frame: {e}"))),
        }
        pos += FRAME_HEADER_BYTES + len;
    };
    ScanResult { frames, bad }
}

/// The offset of the first valid frame that starts after `bad` (the offset of a frame that
/// failed to scan), if any: evidence that the damage at `bad` is not a torn tail.
///
/// Frames are written one after another and each one is acknowledged only after it and
/// everything before it is durable, so a crash can only leave a bad *end*: a frame that is
/// bad with a valid frame anywhere after it is damage to acknowledged data, and must not be
/// cut off. Where the next frame would start is unknown (the length field itself may be the
/// damaged part), so every offset after `bad` is tried as a frame start. The scan is bounded
/// by the image: a candidate must declare a length that fits in the bytes that remain, its
/// payload must be a run of well-formed record headers ending exactly at its end (a cheap
/// walk that rejects almost every offset of garbage, zeros or a torn payload), and only then
/// is its crc computed. The crc is seeded with `seq`, so a frame of another segment, or
/// random bytes, validates with negligible probability (2^-32 per candidate that got
/// that far).
pub fn valid_frame_after(seq: u64, bytes: &[u8], bad: u64) -> Option<u64> {
    let first = usize::try_from(bad).ok()?.checked_add(1)?;
    let last = bytes.len().checked_sub(FRAME_HEADER_BYTES + 1)?;
    (first..=last)
        .find(|&pos| {
            let rest = &bytes[pos..];
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len == 0 || len > FRAME_PAYLOAD_BYTES_MAX || len > rest.len() - FRAME_HEADER_BYTES {
                return false;
            }
            let payload = &rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len];
            let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
            records_tile(payload) && frame_crc(seq, payload) == crc
        })
        .map(|pos| pos as u64)
}

/// Fsyncs a directory so that file creations, renames and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates segment `seq` with its header, durably: the file's data and the directory
/// entry are both fsynced before this returns.
///
/// With `preallocate_bytes > 0` the file is first extended to that length with
/// `fallocate` (zeros, blocks reserved), as etcd does with its WAL files: appends then write
/// inside the file's length, so their `fdatasync` does not also have to journal a new file
/// size and new blocks. The zeros after the last frame are the end of the log (see
/// [`zero_tail`]); a closed or rotated segment is trimmed back to its frames with
/// [`trim_segment`]. A filesystem without `fallocate` gets a plain appending file.
pub fn create_segment(dir: &Path, seq: u64, preallocate_bytes: u64) -> std::io::Result<File> {
    let path = segment_path(dir, seq);
    let mut file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    if preallocate_bytes > HEADER_BYTES as u64 {
        preallocate(&file, preallocate_bytes)?;
    }
    file.write_all(&encode_header(seq))?;
    // `sync_all`, not `sync_data`: the new length and blocks are metadata.
    file.sync_all()?;
    // The new name must be durable before anything written to the file is acknowledged.
    sync_dir(dir)?;
    Ok(file)
}

/// Extends `file` to `len` bytes of reserved zeros (`fallocate` mode 0). `EOPNOTSUPP` (a
/// filesystem without it) leaves the file as it was.
fn preallocate(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let len = libc::off_t::try_from(len).map_err(|_| std::io::Error::other("preallocation length overflows off_t"))?;
    // SAFETY: fallocate only reads the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return Ok(());
    }
    Err(e)
}

/// Whether every byte of `bytes` from `offset` on is zero: the unwritten, preallocated end
/// of a segment (or a frame torn before any of its bytes reached the disk), never data.
pub fn zero_tail(bytes: &[u8], offset: u64) -> bool {
    usize::try_from(offset).ok().and_then(|o| bytes.get(o..)).is_some_and(|tail| tail.iter().all(|b| *b == 0))
}

/// Cuts a segment's preallocated tail off after its last frame, at `len`, durably.
/// Ordering: a segment is trimmed before any newer segment is created, so every segment but
/// the last always ends exactly at its last frame (recovery accepts no tail there).
pub fn trim_segment(file: &File, len: u64) -> std::io::Result<()> {
    if file.metadata()?.len() > len {
        file.set_len(len)?;
        file.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode_batch;
    use crate::types::{GroupId, LogIndex};

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(42), "0000000000000042.wal");
        assert_eq!(parse_segment_file_name("0000000000000042.wal"), Some(42));
        assert_eq!(parse_segment_file_name("42.wal"), None);
        assert_eq!(parse_segment_file_name("000000000000004x.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000042.tmp"), None);
    }

    #[test]
    fn header_checks() {
        let h = encode_header(7);
        assert_eq!(check_header(&h, 7), HeaderCheck::Valid);
        assert!(matches!(check_header(&h, 8), HeaderCheck::Bad(_)));
        assert_eq!(check_header(&h[..10], 7), HeaderCheck::Torn);
        assert_eq!(check_header(&[0u8; 30], 7), HeaderCheck::Torn);
        for bit in 0..HEADER_BYTES * 8 {
            let mut bad = h;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(matches!(check_header(&bad, 7), HeaderCheck::Bad(_)), "bit {bit}");
        }
    }

    fn image(seq: u64, payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut img = encode_header(seq).to_vec();
        for p in payloads {
            img.extend_from_slice(&encode_frame_header(seq, p));
            img.extend_from_slice(p);
        }
        img
    }

    fn compact(i: u64) -> Vec<u8> {
        encode_batch(&[Record::Compact { group: GroupId(1), index: LogIndex(i) }])
    }

    #[test]
    fn scan_finds_frames_and_stops_at_a_torn_tail() {
        let img = image(3, &[compact(1), compact(2)]);
        let full = scan_frames(3, &img);
        assert_eq!(full.frames.len(), 2);
        assert!(full.bad.is_none());
        let torn = scan_frames(3, &img[..img.len() - 1]);
        assert_eq!(torn.frames.len(), 1);
        assert!(torn.bad.is_some());
    }

    #[test]
    fn a_valid_frame_after_a_bad_one_is_found_and_a_torn_end_has_none() {
        let img = image(3, &[compact(1), compact(2), compact(3)]);
        let second = scan_frames(3, &img).frames[1].offset;
        let third = scan_frames(3, &img).frames[2].offset;
        let mut flipped = img.clone();
        flipped[second as usize + FRAME_HEADER_BYTES] ^= 1;
        assert_eq!(scan_frames(3, &flipped).bad.map(|b| b.0), Some(second));
        assert_eq!(valid_frame_after(3, &flipped, second), Some(third));
        // The last frame damaged, cut, or followed by zeros or garbage: nothing valid after.
        let mut last_flipped = img.clone();
        last_flipped[third as usize + 2] ^= 1;
        assert_eq!(valid_frame_after(3, &last_flipped, third), None);
        assert_eq!(valid_frame_after(3, &img[..img.len() - 1], third), None);
        let mut zeros = img.clone();
        zeros.extend_from_slice(&[0; 300]);
        assert_eq!(valid_frame_after(3, &zeros, img.len() as u64), None);
        let garbage: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let mut tail = img.clone();
        tail.extend_from_slice(&garbage);
        assert_eq!(valid_frame_after(3, &tail, img.len() as u64), None);
        // A frame of another segment does not count.
        let mut moved = img.clone();
        moved[second as usize + FRAME_HEADER_BYTES] ^= 1;
        assert_eq!(valid_frame_after(4, &moved, second), None);
    }

    #[test]
    fn zero_tail_is_only_zeros_to_the_end() {
        let img = image(3, &[compact(1)]);
        let end = img.len() as u64;
        let mut padded = img.clone();
        padded.extend_from_slice(&[0; 100]);
        assert!(zero_tail(&padded, end));
        assert!(zero_tail(&img, end), "an empty tail is a zero tail");
        assert!(!zero_tail(&padded, HEADER_BYTES as u64), "a frame is not zeros");
        padded[end as usize + 99] = 1;
        assert!(!zero_tail(&padded, end));
        assert!(!zero_tail(&img, end + 1), "an offset past the end is not a tail");
    }

    #[test]
    fn a_preallocated_segment_has_its_length_and_is_trimmed_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = create_segment(dir.path(), 5, 1 << 16).unwrap();
        let bytes = std::fs::read(segment_path(dir.path(), 5)).unwrap();
        assert_eq!(check_header(&bytes, 5), HeaderCheck::Valid);
        // Linux filesystems here support fallocate; the length is what was asked for.
        assert_eq!(bytes.len(), 1 << 16);
        assert!(zero_tail(&bytes, HEADER_BYTES as u64));
        let scan = scan_frames(5, &bytes);
        assert!(scan.frames.is_empty());
        assert_eq!(scan.bad.map(|b| b.0), Some(HEADER_BYTES as u64), "zeros are no frame");
        trim_segment(&file, HEADER_BYTES as u64).unwrap();
        assert_eq!(std::fs::metadata(segment_path(dir.path(), 5)).unwrap().len(), HEADER_BYTES as u64);
    }

    #[test]
    fn frames_from_another_segment_do_not_validate() {
        let img = image(3, &[compact(1)]);
        let mut moved = encode_header(4).to_vec();
        moved.extend_from_slice(&img[HEADER_BYTES..]);
        let scan = scan_frames(4, &moved);
        assert!(scan.frames.is_empty());
        assert_eq!(scan.bad.unwrap().1, "frame crc mismatch");
    }
}
