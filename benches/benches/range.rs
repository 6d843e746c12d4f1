//! Criterion benches of range and list cost in the store, the Kubernetes list shapes:
//!
//! - `paginate_100k_1KiB_pages_500_pinned`: list 100,000 keys of 1 KiB in pages of 500 at a
//!   pinned revision (`revision = R`, `key = last key + "\0"`), with writes after `R` so every
//!   page reads the `history` column family.
//! - `count_only_prefix/{walk,key_counts}`: `count_only` over a prefix of
//!   `PLINTH_BENCH_COUNT_KEYS` keys (default 1,000,000, 64 B values) at the current revision,
//!   walking every key (`StoreConfig::key_counts` off) or from the group's key counts.
//! - `list_100k_1KiB`: one unpaginated list of the 100,000 keys at the current revision.
//! - `encoded/{decoded,wire}/{list_100k,page_500}_1KiB`: the list, and its first page of 500,
//!   read and encoded into the gRPC response bytes the two ways the server can: decoded
//!   records converted and encoded (`Store::range`, as Txn answers are), or the stored values
//!   encoded as they are read (`Store::range_wire`, as Range answers are).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use store::{Message, RangeRequest, Store, StoreConfig};

mod common;

use common::{Bench, G, PREFIX};

const LIST_KEYS: usize = 100_000;
const PAGE_KEYS: i64 = 500;

fn prefix_end() -> Bytes {
    let mut end = PREFIX.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    Bytes::from(end)
}

/// Pages through every key under the prefix at `revision`; returns the number of keys.
fn paginate(store: &Store, revision: i64) -> usize {
    let mut from = Bytes::from_static(PREFIX.as_bytes());
    let mut seen = 0;
    loop {
        let req = RangeRequest { key: from, range_end: prefix_end(), limit: PAGE_KEYS, revision, ..Default::default() };
        let resp = store.range(G, &req).unwrap();
        seen += resp.kvs.len();
        let Some(last) = resp.kvs.last() else { break };
        let mut next = last.key.to_vec();
        next.push(0);
        from = Bytes::from(next);
        if !resp.more {
            break;
        }
    }
    seen
}

fn benches(c: &mut Criterion) {
    let mut b = Bench::new();
    b.load(0..LIST_KEYS, &Bytes::from(vec![b'x'; 1024]));
    let pinned = b.store.current_revision(G);
    // Writes after the pinned revision, as a cluster keeps writing while a client pages:
    // the pages then read `history`, not `kv`.
    b.load(0..1000, &Bytes::from(vec![b'y'; 1024]));
    c.bench_function("paginate_100k_1KiB_pages_500_pinned", |bench| {
        bench.iter(|| assert_eq!(paginate(&b.store, pinned), LIST_KEYS))
    });
    let list =
        RangeRequest { key: Bytes::from_static(PREFIX.as_bytes()), range_end: prefix_end(), ..Default::default() };
    c.bench_function("list_100k_1KiB", |bench| {
        bench.iter(|| assert_eq!(b.store.range(G, &list).unwrap().kvs.len(), LIST_KEYS))
    });
    let mut g = c.benchmark_group("encoded");
    let page = RangeRequest { limit: PAGE_KEYS, ..list.clone() };
    for (name, req) in [("list_100k_1KiB", &list), ("page_500_1KiB", &page)] {
        let decoded = b.store.range(G, req).unwrap();
        let wire = b.store.range_wire(G, req).unwrap();
        assert!(
            decoded.kvs.iter().map(|kv| kv.encode_to_vec()).eq(wire.kvs.iter().map(|kv| kv.to_vec())),
            "the two paths encode {name} differently"
        );
        g.bench_function(format!("decoded/{name}"), |bench| {
            bench.iter(|| {
                let r = b.store.range(G, req).unwrap();
                let pb = grpc_api::pb::etcdserverpb::RangeResponse {
                    header: None,
                    kvs: r.kvs.into_iter().map(grpc_api::kv::kv_to_pb).collect(),
                    more: r.more,
                    count: r.count,
                };
                pb.encode_to_vec().len()
            })
        });
        g.bench_function(format!("wire/{name}"), |bench| {
            bench.iter(|| {
                let r = b.store.range_wire(G, req).unwrap();
                let wire = grpc_api::kv::WireRangeResponse { header: None, kvs: r.kvs, more: r.more, count: r.count };
                let mut out = Vec::with_capacity(grpc_api::codec::WireMessage::encoded_len(&wire));
                grpc_api::codec::WireMessage::encode(&wire, &mut out);
                out.len()
            })
        });
    }
    g.finish();
    drop(b);

    let count_keys: usize =
        std::env::var("PLINTH_BENCH_COUNT_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let count = RangeRequest {
        key: Bytes::from_static(PREFIX.as_bytes()),
        range_end: prefix_end(),
        count_only: true,
        ..Default::default()
    };
    let mut g = c.benchmark_group("count_only_prefix");
    for (name, key_counts) in [("walk", false), ("key_counts", true)] {
        let mut b = Bench::with_config(StoreConfig { key_counts, ..StoreConfig::default() });
        b.load(0..count_keys, &Bytes::from(vec![b'x'; 64]));
        g.bench_function(name, |bench| {
            bench.iter(|| assert_eq!(b.store.range(G, &count).unwrap().count, count_keys as i64))
        });
    }
    g.finish();
}

criterion_group!(name = range_benches; config = Criterion::default().sample_size(10); targets = benches);
criterion_main!(range_benches);
