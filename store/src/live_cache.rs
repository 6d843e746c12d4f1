//! A bounded cache of the `kv` column family's latest entries, read by the apply path.
//!
//! Every put reads the key's live version first (its create revision, version, lease and
//! `prev_kv`). Read from RocksDB, that is a memtable skiplist search plus, for flushed keys,
//! block-cache lookups, and it was about a quarter of a busy server's CPU. Keys written
//! again soon (objects updated in place, leases' keys, a benchmark's key space) find their
//! live entry here instead.
//!
//! Consistency rests on one rule: only a group's apply path reads or writes this cache for
//! that group, under the group's apply lock, and every change to the group's `kv` entries is
//! reflected here before that lock is released:
//! - a batch's `kv` writes are written through at commit, just before RocksDB takes the
//!   batch; if RocksDB refuses it, the group's entries are forgotten;
//! - a batch that wipes the group (an import's begin), a snapshot install and a group drop
//!   remove every entry of the group first;
//! - a miss is not filled: the apply path reads a key's live version because it is about to
//!   write the key, and the commit writes the new version through.
//!
//! Reads at a snapshot (ranges, read-only txns) never use it: they must see the snapshot's
//! revision, not the latest one. Nothing here is durable; a restart starts empty.
//!
//! The cache is sharded by key hash; each shard holds a byte budget and evicts with the
//! CLOCK algorithm (second chance): a hit marks an entry, eviction walks a queue in insert
//! order and skips each marked entry once. Queue slots of replaced or removed entries stay
//! until eviction reaches them and are counted in the budget meanwhile, so memory stays
//! within the budget whatever the pattern of writes.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use foldhash::HashMap;
use parking_lot::Mutex;

const SHARDS: usize = 16;
/// Bookkeeping counted per cached entry besides its key and value (map slot, queue slot,
/// allocation headers), so that many small entries cannot exceed the budget unseen.
const ENTRY_OVERHEAD: usize = 96;
/// Bookkeeping counted per queue slot whose entry is gone.
const STALE_OVERHEAD: usize = 40;

pub(crate) struct LiveCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    shard_budget: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Vec<u8>, Slot>,
    /// Keys in insert order, each with the generation of the entry it was queued for; a
    /// slot whose generation no longer matches the map's entry is stale.
    clock: VecDeque<(Vec<u8>, u64)>,
    next_generation: u64,
    /// Bytes charged: live entries plus stale queue slots.
    bytes: usize,
}

struct Slot {
    value: Vec<u8>,
    generation: u64,
    referenced: bool,
}

fn entry_cost(key: &[u8], value: &[u8]) -> usize {
    // The key is held twice: by the map and by the queue.
    2 * key.len() + value.len() + ENTRY_OVERHEAD
}

fn stale_cost(key: &[u8]) -> usize {
    key.len() + STALE_OVERHEAD
}

impl LiveCache {
    /// A cache of at most `budget_bytes` (0 disables it: nothing is ever kept).
    pub fn new(budget_bytes: usize) -> LiveCache {
        LiveCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            // Its own seed, not the shards' maps': their buckets must not see only the
            // keys of one residue.
            hasher: RandomState::default(),
            shard_budget: budget_bytes / SHARDS,
        }
    }

    fn shard(&self, key: &[u8]) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// The cached `kv` value of `key` (a `kv` CF key, group prefix included).
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut shard = self.shard(key).lock();
        let slot = shard.map.get_mut(key)?;
        slot.referenced = true;
        Some(slot.value.clone())
    }

    /// Records `value` as the live `kv` value of `key`. An entry larger than an eighth of a
    /// shard's budget is not kept (and any older one is dropped).
    pub fn insert(&self, key: &[u8], value: &[u8]) {
        let cost = entry_cost(key, value);
        let mut shard = self.shard(key).lock();
        if cost > self.shard_budget / 8 {
            shard.remove(key);
            return;
        }
        let Shard { map, clock, next_generation, bytes } = &mut *shard;
        // A key already cached (most writes) is updated in place, without copying the key.
        if let Some(slot) = map.get_mut(key) {
            *bytes = *bytes + value.len() - slot.value.len();
            slot.value.clear();
            slot.value.extend_from_slice(value);
        } else {
            map.insert(key.to_vec(), Slot { value: value.to_vec(), generation: *next_generation, referenced: false });
            clock.push_back((key.to_vec(), *next_generation));
            *next_generation += 1;
            *bytes += cost;
        }
        shard.evict_to(self.shard_budget);
    }

    /// Forgets `key` (its `kv` entry was deleted).
    pub fn remove(&self, key: &[u8]) {
        self.shard(key).lock().remove(key);
    }

    /// Forgets every key starting with `prefix` (a group whose data was replaced or dropped).
    pub fn remove_prefix(&self, prefix: &[u8]) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let Shard { map, bytes, .. } = &mut *shard;
            map.retain(|k, slot| {
                let keep = !k.starts_with(prefix);
                if !keep {
                    *bytes = *bytes - entry_cost(k, &slot.value) + stale_cost(k);
                }
                keep
            });
        }
    }

    /// Bytes charged against the budget (entries and not yet reclaimed queue slots).
    #[cfg(test)]
    pub fn charged_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }
}

impl Shard {
    fn remove(&mut self, key: &[u8]) {
        if let Some(slot) = self.map.remove(key) {
            // The queue slot stays, stale, until eviction reaches it.
            self.bytes = self.bytes - entry_cost(key, &slot.value) + stale_cost(key);
        }
    }

    /// Evicts in CLOCK order until the shard is within `budget`.
    fn evict_to(&mut self, budget: usize) {
        while self.bytes > budget {
            let Some((key, generation)) = self.clock.pop_front() else {
                debug_assert_eq!(self.bytes, 0, "bytes charged with an empty queue");
                self.bytes = 0;
                return;
            };
            match self.map.get_mut(&key) {
                Some(slot) if slot.generation == generation => {
                    if slot.referenced {
                        slot.referenced = false;
                        self.clock.push_back((key, generation));
                    } else {
                        let slot = self.map.remove(&key).expect("entry just found");
                        self.bytes -= entry_cost(&key, &slot.value);
                    }
                }
                _ => self.bytes -= stale_cost(&key),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_follow_inserts_and_removes() {
        let c = LiveCache::new(1 << 20);
        assert_eq!(c.get(b"a"), None);
        c.insert(b"a", b"1");
        assert_eq!(c.get(b"a"), Some(b"1".to_vec()));
        c.insert(b"a", b"22");
        assert_eq!(c.get(b"a"), Some(b"22".to_vec()));
        c.remove(b"a");
        assert_eq!(c.get(b"a"), None);
        c.insert(b"a", b"3");
        assert_eq!(c.get(b"a"), Some(b"3".to_vec()));
    }

    #[test]
    fn remove_prefix_forgets_only_that_group() {
        let c = LiveCache::new(1 << 20);
        for i in 0..100u32 {
            c.insert(&[&[1u8][..], &i.to_be_bytes()].concat(), b"x");
            c.insert(&[&[2u8][..], &i.to_be_bytes()].concat(), b"y");
        }
        c.remove_prefix(&[1]);
        for i in 0..100u32 {
            assert_eq!(c.get(&[&[1u8][..], &i.to_be_bytes()].concat()), None);
            assert_eq!(c.get(&[&[2u8][..], &i.to_be_bytes()].concat()), Some(b"y".to_vec()));
        }
    }

    #[test]
    fn memory_stays_within_the_budget_under_churn() {
        let budget = 64 << 10;
        let c = LiveCache::new(budget);
        for round in 0..50u32 {
            for i in 0..2_000u32 {
                let key = i.to_be_bytes();
                match (i + round) % 3 {
                    0 => c.remove(&key),
                    _ => c.insert(&key, &[round as u8; 40]),
                }
            }
            c.remove_prefix(&[0, 0]);
            assert!(c.charged_bytes() <= budget, "round {round}: {} > {budget}", c.charged_bytes());
        }
        // Entries still cached are the latest values.
        for i in 0..2_000u32 {
            if let Some(v) = c.get(&i.to_be_bytes()) {
                assert_eq!(v, vec![49u8; 40]);
            }
        }
    }

    #[test]
    fn a_referenced_entry_survives_one_pass_of_eviction() {
        // One shard's worth of budget spread over the shards: fill, touch one key, overflow.
        let c = LiveCache::new(SHARDS * 8 * entry_cost(b"k0000", &[0; 8]) * 2);
        let keys: Vec<Vec<u8>> = (0..2_000u32).map(|i| format!("k{i:04}").into_bytes()).collect();
        c.insert(&keys[0], &[0; 8]);
        for k in &keys[1..] {
            assert!(c.get(&keys[0]).is_some(), "the hot key was evicted");
            c.insert(k, &[0; 8]);
        }
    }

    #[test]
    fn oversized_values_are_not_kept() {
        let c = LiveCache::new(SHARDS * 1024);
        c.insert(b"a", b"small");
        c.insert(b"a", &[0; 1024]);
        assert_eq!(c.get(b"a"), None);
        assert!(c.charged_bytes() > 0, "the stale queue slot is charged");
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let c = LiveCache::new(0);
        c.insert(b"a", b"1");
        assert_eq!(c.get(b"a"), None);
    }
}
