//! Range reads at old revisions against the key set recorded at each revision: `count`,
//! `limit`/`more`, `keys_only`, `count_only` and paging (`key = last key + "\0"`), over
//! deleted and re-created keys, keys with many versions, keys containing `\0`, and after
//! compaction.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Node, G};
use store::{CommandBody, CompactRequest, DeleteRangeRequest, KeyValue, PutRequest, RangeRequest, StoreConfig};

/// One seed drives the workload; printed on failure by the assertions' messages.
const SEED: u64 = 0x5eed_1517;

/// A small deterministic generator (xorshift64*), so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Keys over the alphabet {a, b, \0} of 1..=3 bytes, so escaping and `key + "\0"` matter.
fn random_key(rng: &mut Rng) -> Bytes {
    let len = 1 + rng.below(3) as usize;
    Bytes::from((0..len).map(|_| [b'a', b'b', 0][rng.below(3) as usize]).collect::<Vec<u8>>())
}

/// The live keys at each revision, as the current-revision read returned them then.
struct Recorded {
    /// `at[r]`: every live key at revision `r`, in key order (index 0 unused).
    at: Vec<Vec<KeyValue>>,
}

impl Recorded {
    fn record(&mut self, n: &Node) {
        let rev = n.store.current_revision(G) as usize;
        let all = n.all().kvs;
        while self.at.len() <= rev {
            self.at.push(all.clone());
        }
        self.at[rev] = all;
    }
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    match end {
        b"" => k == key,
        b"\0" => k >= key,
        _ => k >= key && k < end,
    }
}

/// What etcd answers for an unsorted, unfiltered range: `(kvs, more, count)`.
fn expected(live: &[KeyValue], req: &RangeRequest) -> (Vec<KeyValue>, bool, i64) {
    let mut kvs: Vec<KeyValue> =
        live.iter().filter(|kv| in_range(&kv.key, &req.key, &req.range_end)).cloned().collect();
    let count = kvs.len() as i64;
    if req.count_only {
        return (Vec::new(), false, count);
    }
    let mut more = false;
    if req.limit > 0 && count > req.limit {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Bytes::new();
        }
    }
    (kvs, more, count)
}

/// Checks every request shape at every revision from `from` to the current one.
fn check_all(n: &Node, rec: &Recorded, from: i64, rng: &mut Rng) {
    let current = n.store.current_revision(G);
    for rev in from..=current {
        for _ in 0..12 {
            let key = random_key(rng);
            let range_end = match rng.below(4) {
                0 => Bytes::new(),
                1 => Bytes::from_static(b"\0"),
                _ => random_key(rng),
            };
            let req = RangeRequest {
                key,
                range_end,
                limit: [0, 1, 2, 3, 7][rng.below(5) as usize],
                revision: if rev == current && rng.below(2) == 0 { 0 } else { rev },
                keys_only: rng.below(3) == 0,
                count_only: rng.below(4) == 0,
                ..Default::default()
            };
            let got = n.store.range(G, &req).unwrap();
            let want = expected(&rec.at[rev as usize], &req);
            assert_eq!((got.kvs, got.more, got.count), want, "seed {SEED:#x}, revision {rev}, {req:?}");
        }
        // Paging through everything at `rev` yields exactly its keys.
        let mut from = Bytes::from_static(b"\0");
        let mut paged = Vec::new();
        loop {
            let req = RangeRequest {
                key: from,
                range_end: Bytes::from_static(b"\0"),
                limit: 2,
                revision: rev,
                ..Default::default()
            };
            let page = n.store.range(G, &req).unwrap();
            let want_count = rec.at[rev as usize].iter().filter(|kv| kv.key >= req.key).count() as i64;
            assert_eq!(page.count, want_count, "seed {SEED:#x}, revision {rev}, page from {:?}", req.key);
            paged.extend(page.kvs.iter().cloned());
            let Some(last) = page.kvs.last() else { break };
            let mut next = last.key.to_vec();
            next.push(0);
            from = Bytes::from(next);
            if !page.more {
                break;
            }
        }
        assert_eq!(paged, rec.at[rev as usize], "seed {SEED:#x}: paging at revision {rev}");
    }
}

#[test]
fn ranges_at_old_revisions_match_the_recorded_key_sets_before_and_after_compaction() {
    let cfg = StoreConfig { compaction_batch_keys: 7, ..StoreConfig::default() };
    let mut n = Node::with_config(cfg);
    let mut rng = Rng(SEED);
    let mut rec = Recorded { at: Vec::new() };
    rec.record(&n);
    for i in 0..160 {
        match rng.below(10) {
            // A hot key gets far more versions than a scan steps over before seeking.
            0..=2 => {
                n.put("a\0a", &format!("hot{i}"));
            }
            3..=7 => {
                let key = random_key(&mut rng);
                let value = Bytes::from(format!("v{i}"));
                n.exec(CommandBody::Put(PutRequest { key, value, ..Default::default() })).unwrap();
            }
            8 => {
                let key = random_key(&mut rng);
                n.exec(CommandBody::DeleteRange(DeleteRangeRequest { key, range_end: Bytes::new(), prev_kv: false }))
                    .unwrap();
            }
            _ => {
                let key = random_key(&mut rng);
                let range_end = random_key(&mut rng);
                n.exec(CommandBody::DeleteRange(DeleteRangeRequest { key, range_end, prev_kv: false })).unwrap();
            }
        }
        rec.record(&n);
    }
    check_all(&n, &rec, 1, &mut rng);

    let current = n.store.current_revision(G);
    let compact_revision = current / 2;
    n.exec(CommandBody::Compact(CompactRequest { revision: compact_revision, physical: false })).unwrap();
    assert!(n.store.wait_compaction_finished(G, compact_revision, Duration::from_secs(20)));
    // More writes after the compaction, so the compacted history is read beside new versions.
    for i in 0..20 {
        n.put("a\0a", &format!("after{i}"));
        rec.record(&n);
        let key = random_key(&mut rng);
        n.exec(CommandBody::DeleteRange(DeleteRangeRequest { key, range_end: Bytes::new(), prev_kv: false })).unwrap();
        rec.record(&n);
    }
    check_all(&n, &rec, compact_revision, &mut rng);
}
