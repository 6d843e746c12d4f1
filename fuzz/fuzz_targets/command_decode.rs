//! Fuzz the Raft-log command decoder: arbitrary bytes must decode or fail cleanly, the
//! stateless checks must not panic, and a decoded command must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::{Command, Message, StoreConfig};

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = Command::decode_entry(data) {
        let _ = store::validate(&cmd, &StoreConfig::default());
        let again = Command::decode_entry(&cmd.encode_to_vec()).expect("re-encoded command decodes");
        assert_eq!(again, cmd, "command round-trips");
    }
});
