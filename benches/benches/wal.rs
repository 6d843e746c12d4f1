//! WAL benchmarks.
//!
//! (a) `raw/fdatasync_4k`: the device's rate for a 4 KiB append + fdatasync, the floor a
//!     WAL append can reach; `raw/fdatasync_4k_preallocated`: the same writes inside a file
//!     extended beforehand with `fallocate`, so no fdatasync has to record a new size;
//!     `raw/fdatasync_4k_zeroed`: inside a file written with zeros and synced beforehand, so
//!     no fdatasync has to record an extent either (ext4 journals the conversion of a
//!     fallocated, unwritten extent to a written one at the fdatasync that follows).
//! (b) `wal_append/segment=S/groups=N`: N appender threads (one per group) each append one
//!     256-byte entry and wait until it is durable, repeatedly, into segments that grow by
//!     appending (`append`), are preallocated with `fallocate` (`fallocate`), or are kept
//!     written with zeros ahead of the frames (`zero-ahead`, the default). Group commit should carry many
//!     groups' entries per fsync; after each group count the entries/s, fsyncs/s and
//!     entries per fsync are printed from the WAL's counters.
//!     `purged-zero-ahead` and `purged-recycle` run with 1 MiB segments while every appender
//!     compacts its group as it goes, so segments rotate and are purged all the time: with
//!     zeros written ahead into every new segment, or with purged segments recycled (the
//!     default); the bytes of zeros written per entry are printed too.
//!
//! Files go to a fresh directory under `std::env::temp_dir()` (on this machine the same
//! ext4 filesystem as the repository).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use raft_log::raft::eraftpb::Entry;
use raft_log::{GroupId, Wal, WalConfig, WriteBatch};

const ENTRY_BYTES: usize = 256;
const RAW_WRITE_BYTES: usize = 4096;

fn raw_fdatasync(c: &mut Criterion) {
    use std::io::Write;
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let mut file = std::fs::File::create(dir.path().join("raw")).unwrap();
    let buf = vec![0xA5u8; RAW_WRITE_BYTES];
    let mut g = c.benchmark_group("raw");
    g.throughput(Throughput::Elements(1));
    g.bench_function("fdatasync_4k", |b| {
        b.iter(|| {
            file.write_all(&buf).unwrap();
            file.sync_data().unwrap();
        })
    });
    let prealloc = std::fs::File::create(dir.path().join("raw-preallocated")).unwrap();
    const PREALLOCATED_BYTES: u64 = 256 << 20;
    // SAFETY: fallocate only reads the descriptor, which `prealloc` keeps open.
    let rc = unsafe {
        libc::fallocate(std::os::unix::io::AsRawFd::as_raw_fd(&prealloc), 0, 0, PREALLOCATED_BYTES as libc::off_t)
    };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    prealloc.sync_all().unwrap();
    bench_writes_inside(&mut g, "fdatasync_4k_preallocated", &prealloc, PREALLOCATED_BYTES, &buf);
    const ZEROED_BYTES: u64 = 64 << 20;
    let zeroed = std::fs::File::create(dir.path().join("raw-zeroed")).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for i in 0..ZEROED_BYTES / zeros.len() as u64 {
        std::os::unix::fs::FileExt::write_all_at(&zeroed, &zeros, i * zeros.len() as u64).unwrap();
    }
    zeroed.sync_all().unwrap();
    bench_writes_inside(&mut g, "fdatasync_4k_zeroed", &zeroed, ZEROED_BYTES, &buf);
    g.finish();
}

/// Benchmarks `name`: `buf` written at successive offsets inside the first `size` bytes of
/// `file` (wrapping), each followed by an fdatasync.
fn bench_writes_inside(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    file: &std::fs::File,
    size: u64,
    buf: &[u8],
) {
    let mut offset = 0u64;
    g.bench_function(name, |b| {
        b.iter(|| {
            std::os::unix::fs::FileExt::write_all_at(file, buf, offset).unwrap();
            file.sync_data().unwrap();
            offset = (offset + buf.len() as u64) % size;
        })
    });
}

fn entry(index: u64) -> Entry {
    Entry { index, term: 1, data: bytes::Bytes::from(vec![index as u8; ENTRY_BYTES]), ..Default::default() }
}

fn wal_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_append");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    let defaults = WalConfig::new("");
    // (name, preallocate, zero-ahead bytes, recycled files, segment bytes, compact as it goes)
    let modes = [
        ("append", false, 0, 0, defaults.segment_bytes_max, false),
        ("fallocate", true, 0, 0, defaults.segment_bytes_max, false),
        ("zero-ahead", false, defaults.segment_zero_ahead_bytes, 0, defaults.segment_bytes_max, false),
        ("purged-zero-ahead", false, defaults.segment_zero_ahead_bytes, 0, 1 << 20, true),
        ("purged-recycle", false, defaults.segment_zero_ahead_bytes, defaults.segment_recycle_max, 1 << 20, true),
    ];
    for ((mode, preallocate, zero_ahead, recycle, segment_bytes, compact), groups) in
        modes.into_iter().flat_map(|m| [(m, 1usize), (m, 16), (m, 256)])
    {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let config = WalConfig {
            segment_preallocate: preallocate,
            segment_zero_ahead_bytes: zero_ahead,
            segment_recycle_max: recycle,
            segment_bytes_max: segment_bytes,
            ..WalConfig::new(dir.path())
        };
        let wal = Arc::new(Wal::open(config).unwrap());
        let next: Arc<Vec<AtomicU64>> = Arc::new((0..groups).map(|_| AtomicU64::new(1)).collect());
        let mut measured = Duration::ZERO;
        let (mut entries, mut fsyncs, mut zeros) = (0u64, 0u64, 0u64);
        g.bench_function(format!("segment={mode}/groups={groups}"), |b| {
            b.iter_custom(|iters| {
                let per_group = iters.div_ceil(groups as u64);
                let barrier = Arc::new(Barrier::new(groups + 1));
                let threads: Vec<_> = (0..groups)
                    .map(|gi| {
                        let (wal, next, barrier) = (Arc::clone(&wal), Arc::clone(&next), Arc::clone(&barrier));
                        std::thread::spawn(move || {
                            barrier.wait();
                            for _ in 0..per_group {
                                let i = next[gi].fetch_add(1, Ordering::Relaxed);
                                let mut batch = WriteBatch::new();
                                batch.add_entries(GroupId(gi as u64), &[entry(i)]);
                                wal.write(batch).unwrap();
                                if compact && i % 64 == 0 {
                                    wal.compact(GroupId(gi as u64), raft_log::LogIndex(i - 16)).unwrap();
                                }
                            }
                        })
                    })
                    .collect();
                let before = wal.stats();
                barrier.wait();
                let start = Instant::now();
                for t in threads {
                    t.join().unwrap();
                }
                let elapsed = start.elapsed();
                let after = wal.stats();
                measured += elapsed;
                entries += after.entries_appended - before.entries_appended;
                fsyncs += after.fsyncs - before.fsyncs;
                zeros += after.zero_bytes_written - before.zero_bytes_written;
                // Report time per entry appended, whatever the rounding per group.
                elapsed.mul_f64(iters as f64 / (per_group * groups as u64) as f64)
            })
        });
        let secs = measured.as_secs_f64().max(1e-9);
        println!(
            "segment={mode} groups={groups} entries/s={:.0} fsyncs/s={:.0} entries_per_fsync={:.1} zero_bytes_per_entry={:.0}",
            entries as f64 / secs,
            fsyncs as f64 / secs,
            entries as f64 / fsyncs.max(1) as f64,
            zeros as f64 / entries.max(1) as f64
        );
    }
    g.finish();
}

criterion_group!(benches, raw_fdatasync, wal_append);
criterion_main!(benches);
