//! Runs the public decoders on thousands of seeded random and mutated inputs, so CI
//! exercises what the `wal_record_decode` fuzz target does, on stable Rust.
// Protobuf messages read best built field by field.
#![allow(clippy::field_reassign_with_default)]

mod common;

use raft::eraftpb::HardState;
use raft_log::{decode_batch, decode_entry, encode_batch, scan_frames, GroupId, LogIndex, Record};
use rand::{Rng, SeedableRng};

use common::entry;

fn corpus() -> Vec<Vec<u8>> {
    let mut hs = HardState::default();
    hs.term = 4;
    hs.commit = 9;
    vec![
        encode_batch(&[Record::Entries {
            group: GroupId(3),
            entries: (1..6).map(|i| entry(i, 2, &[i as u8; 17])).collect(),
        }]),
        encode_batch(&[
            Record::HardState { group: GroupId(1), state: hs },
            Record::Compact { group: GroupId(1), index: LogIndex(4) },
        ]),
    ]
}

#[test]
fn decoders_never_panic_on_random_or_mutated_input() {
    let seed = 0xdec0de_u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let corpus = corpus();
    let mut decoded_ok = 0;
    for round in 0..5000 {
        let input: Vec<u8> = if round % 2 == 0 {
            let len = rng.random_range(0..256);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let mut b = corpus[round % corpus.len()].clone();
            for _ in 0..rng.random_range(1..4) {
                match rng.random_range(0..3) {
                    0 if !b.is_empty() => {
                        let i = rng.random_range(0..b.len());
                        b[i] ^= 1 << rng.random_range(0..8);
                    }
                    1 if !b.is_empty() => {
                        let cut = rng.random_range(0..b.len());
                        b.truncate(cut);
                    }
                    _ => {
                        let i = rng.random_range(0..=b.len());
                        b.insert(i, rng.random());
                    }
                }
            }
            b
        };
        if let Ok(records) = decode_batch(&input) {
            decoded_ok += 1;
            // Whatever decodes must encode back to the same bytes' meaning.
            assert_eq!(decode_batch(&encode_batch(&records)).unwrap(), records, "seed {seed} round {round}");
        }
        let _ = decode_entry(&input);
        let _ = scan_frames(1, &input);
    }
    assert!(decoded_ok > 0, "some mutated inputs still decode");
}
