//! `Envelope::decode` on arbitrary bytes: a caller's `wrapped` reaches it before any
//! authentication, so it must never panic or allocate by a length field it has not checked.
#![no_main]

use kms_broker::envelope::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::decode(data) {
        // What decodes re-encodes to the same bytes: one blob, one meaning.
        assert_eq!(env.encode(), data, "decode/encode round trip");
    }
});
