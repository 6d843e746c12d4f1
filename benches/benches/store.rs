//! Criterion benches of the store: put (alone, and in batches with and without the live-entry
//! cache), range (current and old revision), txn compare-and-put, watch fan-out, and installing
//! a group snapshot.

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use store::{
    Command, CommandBody, Compare, CompareResult, CompareTarget, GroupId, Message, PutRequest, RangeRequest, RequestOp,
    StoreConfig, TargetUnion, TxnRequest, WatchSpec,
};

mod common;

use common::{key, Bench, G};

fn benches(c: &mut Criterion) {
    let value = Bytes::from(vec![b'x'; 256]);

    let mut b = Bench::new();
    let mut i = 0;
    c.bench_function("put_256B", |bench| {
        bench.iter(|| {
            i += 1;
            b.put(key(i % 10_000), value.clone());
        })
    });

    // Batches of 64 puts over 100,000 keys written before, at random: every put reads its
    // key's live version, from RocksDB or from the live-entry cache.
    let mut g = c.benchmark_group("put_batch_64_256B_over_100k_keys");
    for (name, live_cache_bytes) in
        [("live_cache_off", 0), ("live_cache_16MiB", 16 << 20), ("live_cache_64MiB", 64 << 20)]
    {
        let mut b = Bench::with_config(StoreConfig { live_cache_bytes, ..StoreConfig::default() });
        b.load(0..100_000, &value);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next_key = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 100_000) as usize
        };
        g.bench_function(name, |bench| bench.iter(|| b.put_batch((0..64).map(|_| next_key()), &value)));
    }
    g.finish();

    let mut b = Bench::new();
    b.load(0..10_000, &value);
    let old_revision = b.store.current_revision(G);
    // Overwrite everything once so the old revision reads through history.
    b.load(0..10_000, &Bytes::from(vec![b'y'; 256]));
    let single = |rev| RangeRequest { key: key(4242), revision: rev, ..Default::default() };
    let thousand = |rev| RangeRequest { key: key(1000), range_end: key(2000), revision: rev, ..Default::default() };
    c.bench_function("range_1_current", |bench| bench.iter(|| b.store.range(G, &single(0)).unwrap()));
    c.bench_function("range_1_old_revision", |bench| bench.iter(|| b.store.range(G, &single(old_revision)).unwrap()));
    c.bench_function("range_1000_current", |bench| {
        bench.iter(|| assert_eq!(b.store.range(G, &thousand(0)).unwrap().kvs.len(), 1000))
    });
    c.bench_function("range_1000_old_revision", |bench| {
        bench.iter(|| assert_eq!(b.store.range(G, &thousand(old_revision)).unwrap().kvs.len(), 1000))
    });

    c.bench_function("txn_compare_and_put", |bench| {
        bench.iter(|| {
            let k = key(77);
            let current = b.store.range(G, &RangeRequest { key: k.clone(), ..Default::default() }).unwrap();
            let rev = current.kvs[0].mod_revision;
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: k.clone(),
                    target_union: Some(TargetUnion::ModRevision(rev)),
                    range_end: Bytes::new(),
                }],
                success: vec![RequestOp::put(PutRequest { key: k, value: value.clone(), ..Default::default() })],
                failure: vec![],
            };
            b.apply(CommandBody::Txn(txn));
        })
    });

    let mut b = Bench::new();
    let streams: Vec<_> = (0..1000)
        .map(|_| {
            let s = b.store.watch_stream(G);
            s.watch(WatchSpec {
                key: Bytes::from_static(b"/registry/"),
                range_end: Bytes::from_static(b"/registry0"),
                ..Default::default()
            });
            s.recv_timeout(Duration::from_secs(1)).expect("created");
            s
        })
        .collect();
    let mut n = 0;
    c.bench_function("watch_fanout_1000", |bench| {
        bench.iter_batched(
            || (),
            |()| {
                n += 1;
                b.put(key(n), value.clone());
                for s in &streams {
                    let ev = s.recv_timeout(Duration::from_secs(5)).expect("event");
                    assert_eq!(ev.events.len(), 1);
                }
            },
            BatchSize::SmallInput,
        )
    });
}

/// Installing a snapshot of a group of 20,000 keys with 1 KiB values that do not compress
/// (~40 MB of entries with their history) into a store whose memtables already hold
/// another group's writes, as a lagging member's would.
fn snapshot_install(c: &mut Criterion) {
    use rand::{RngCore, SeedableRng};
    let mut src = Bench::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for i in 0..20_000 {
        let mut value = vec![0u8; 1024];
        rng.fill_bytes(&mut value);
        src.put(key(i), value.into());
    }
    let chunks: Vec<Vec<u8>> = src.store.snapshot(G).unwrap().map(|c| c.unwrap()).collect();
    let mut group = c.benchmark_group("snapshot_install");
    group.sample_size(10);
    group.bench_function("20k_keys_1KiB", |bench| {
        bench.iter_batched(
            || {
                let mut dst = Bench::new();
                // Another group's recent writes, unflushed.
                for i in 0..2_000 {
                    dst.index += 1;
                    let put = PutRequest { key: key(i), value: Bytes::from_static(&[7; 256]), ..Default::default() };
                    let bytes = Command::new(dst.index, CommandBody::Put(put)).encode_to_vec();
                    dst.store.apply(GroupId(2), &[(dst.index, &bytes)]).unwrap();
                }
                (dst, chunks.clone())
            },
            |(dst, chunks)| {
                dst.store.install_snapshot(G, chunks.into_iter()).unwrap();
                dst
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(name = store_benches; config = Criterion::default().sample_size(20); targets = benches);
criterion_group!(name = install_benches; config = Criterion::default(); targets = snapshot_install);
criterion_main!(store_benches, install_benches);
