//! Feeds arbitrary bytes to the WAL's decoders: a batch payload, a single entry, and a
//! whole segment image. None of them may panic; whatever decodes must re-encode to the
//! same records.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = raft_log::decode_batch(data) {
        let again = raft_log::decode_batch(&raft_log::encode_batch(&records))
            .expect("re-encoded records decode");
        assert_eq!(again, records);
    }
    let _ = raft_log::decode_entry(data);
    let _ = raft_log::scan_frames(1, data);
});
