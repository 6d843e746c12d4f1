//! A quick stand-alone version of `benches/benches/wal.rs` that needs no RocksDB build:
//! raw 4 KiB append + fdatasync rate, then WAL appends of 256-byte entries from 1, 16 and
//! 256 concurrent groups (one thread per group, append one entry, wait, repeat).
//!
//! `cargo run -p raft-log --example wal_throughput [seconds_per_case]`
//! Files go under `std::env::temp_dir()`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_log::raft::eraftpb::Entry;
use raft_log::{GroupId, Wal, WalConfig, WriteBatch};

fn main() {
    let secs: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let run_for = Duration::from_secs(secs);
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();

    let mut file = std::fs::File::create(dir.path().join("raw")).unwrap();
    let buf = vec![0xA5u8; 4096];
    let (start, mut n) = (Instant::now(), 0u64);
    while start.elapsed() < run_for {
        file.write_all(&buf).unwrap();
        file.sync_data().unwrap();
        n += 1;
    }
    let raw_us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("raw 4KiB write+fdatasync: {raw_us:.1} us/op ({:.0} ops/s)", 1e6 / raw_us);

    for groups in [1u64, 16, 256] {
        let wal_dir = dir.path().join(format!("wal-{groups}"));
        let wal = Arc::new(Wal::open(WalConfig::new(&wal_dir)).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let before = wal.stats();
        let start = Instant::now();
        let threads: Vec<_> = (0..groups)
            .map(|g| {
                let (wal, stop) = (Arc::clone(&wal), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut index = 1;
                    while !stop.load(Ordering::Relaxed) {
                        let e = Entry {
                            index,
                            term: 1,
                            data: bytes::Bytes::from(vec![g as u8; 256]),
                            ..Default::default()
                        };
                        let mut b = WriteBatch::new();
                        b.add_entries(GroupId(g), &[e]);
                        wal.write(b).unwrap();
                        index += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(run_for);
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        let elapsed = start.elapsed().as_secs_f64();
        let after = wal.stats();
        let entries = (after.entries_appended - before.entries_appended) as f64;
        let fsyncs = (after.fsyncs - before.fsyncs) as f64;
        println!(
            "groups={groups} entries/s={:.0} fsyncs/s={:.0} entries_per_fsync={:.1} us/entry/group={:.1}",
            entries / elapsed,
            fsyncs / elapsed,
            entries / fsyncs.max(1.0),
            elapsed * 1e6 * groups as f64 / entries
        );
    }
}
