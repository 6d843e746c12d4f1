//! A store on a temporary directory, written with one group's log: what the store and range
//! benches share. Each bench binary uses part of it.
#![allow(dead_code)]

use bytes::Bytes;
use store::{Command, CommandBody, GroupId, Message, PutRequest, Store, StoreConfig};

pub const G: GroupId = GroupId(1);
pub const PREFIX: &str = "/registry/pods/";

pub struct Bench {
    pub store: Store,
    pub index: u64,
    _dir: tempfile::TempDir,
}

impl Bench {
    pub fn new() -> Bench {
        Bench::with_config(StoreConfig::default())
    }

    pub fn with_config(cfg: StoreConfig) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), cfg).unwrap();
        Bench { store, index: 0, _dir: dir }
    }

    /// Applies one command as one entry.
    pub fn apply(&mut self, body: CommandBody) {
        self.index += 1;
        let bytes = Command::new(self.index, body).encode_to_vec();
        let mut r = self.store.apply(G, &[(self.index, &bytes)]).unwrap();
        r.pop().unwrap().unwrap();
    }

    pub fn put(&mut self, key: Bytes, value: Bytes) {
        self.apply(CommandBody::Put(PutRequest { key, value, ..Default::default() }));
    }

    /// Applies one batch of puts of `key(i)` for each `i` of `keys` (as the apply worker does
    /// with a pass's entries).
    pub fn put_batch(&mut self, keys: impl Iterator<Item = usize>, value: &Bytes) {
        let entries: Vec<(u64, Vec<u8>)> = keys
            .map(|i| {
                self.index += 1;
                let put = PutRequest { key: key(i), value: value.clone(), ..Default::default() };
                (self.index, Command::new(self.index, CommandBody::Put(put)).encode_to_vec())
            })
            .collect();
        let refs: Vec<(u64, &[u8])> = entries.iter().map(|(i, b)| (*i, &b[..])).collect();
        for r in self.store.apply(G, &refs).unwrap() {
            r.unwrap();
        }
    }

    /// Puts `key(i)` for every `i` in `keys`, 1,000 commands per apply batch.
    pub fn load(&mut self, keys: std::ops::Range<usize>, value: &Bytes) {
        let mut done = keys.start;
        while done < keys.end {
            let upto = (done + 1000).min(keys.end);
            self.put_batch(done..upto, value);
            done = upto;
        }
    }
}

/// The `i`th key, under [`PREFIX`].
pub fn key(i: usize) -> Bytes {
    Bytes::from(format!("{PREFIX}default/pod-{i:07}"))
}
