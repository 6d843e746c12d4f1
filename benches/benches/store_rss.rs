//! Memory check: loads 1,000,000 keys (256 B values, 1,000-entry batches) and prints the
//! process RSS at 0, 250k, 500k, 750k and 1M keys. With no per-key index and a bounded
//! block cache and memtables, RSS should stay roughly flat.
//!
//! Run: `cargo bench -p plinth-benches --bench store_rss`

use bytes::Bytes;
use store::{Command, CommandBody, GroupId, Message, PutRequest, Store, StoreConfig};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig { block_cache_bytes: 64 << 20, memtable_bytes: 64 << 20, ..StoreConfig::default() };
    let store = Store::open(dir.path(), cfg).unwrap();
    let g = GroupId(1);
    let value = Bytes::from(vec![b'x'; 256]);
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` this runs as a quick
    // smoke test of the same path.
    let total = if std::env::args().any(|a| a == "--bench") { 1_000_000usize } else { 20_000 };
    let mut index = 0u64;
    println!("keys=0 rss_kib={}", rss_kib());
    for start in (0..total).step_by(1000) {
        let entries: Vec<(u64, Vec<u8>)> = (start..start + 1000)
            .map(|i| {
                index += 1;
                let put = PutRequest {
                    key: Bytes::from(format!("/registry/k/{i:08}")),
                    value: value.clone(),
                    ..Default::default()
                };
                (index, Command::new(index, CommandBody::Put(put)).encode_to_vec())
            })
            .collect();
        let refs: Vec<(u64, &[u8])> = entries.iter().map(|(i, b)| (*i, &b[..])).collect();
        for r in store.apply(g, &refs).unwrap() {
            r.unwrap();
        }
        let done = start + 1000;
        if done % 250_000 == 0 || done == total {
            println!("keys={done} rss_kib={} db_bytes={}", rss_kib(), store.db_size_bytes());
        }
    }
}
