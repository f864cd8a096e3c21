//! `Envelope::decode` on arbitrary bytes: a caller's `wrapped` reaches it before any
//! authentication, so it must never panic or allocate by a length field it has not checked.
//! What decodes must hold the layout's bounds, and sealing its parts again must give an
//! envelope that decodes to the same parts (one blob layout, one meaning).
#![no_main]

use kms_broker::envelope::{Envelope, Format, MAX_CIPHERTEXT, MAX_ENTRIES};
use kms_broker::secret::SecretBytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(env) = Envelope::decode(data) else {
        return;
    };
    assert!((1..=MAX_ENTRIES).contains(&env.entries.len()));
    for (i, e) in env.entries.iter().enumerate() {
        assert!((1..=MAX_CIPHERTEXT).contains(&e.ciphertext.len()));
        assert!(env.entries[..i].iter().all(|o| o.uri_id != e.uri_id), "duplicate entry");
    }
    // A fuzzer cannot forge the MAC for a plaintext it does not know.
    let pt = SecretBytes::copy_from(b"fuzz plaintext");
    if env.format == Format::V2 {
        let _ = env.verify(&pt);
    }
    let sealed = Envelope::seal(&env.key_name, &env.entries, &pt).expect("decoded parts fit");
    let again = Envelope::decode(&sealed).expect("a sealed envelope decodes");
    assert_eq!((&again.key_name, &again.entries), (&env.key_name, &env.entries));
    again.verify(&pt).expect("its MAC verifies with its plaintext");
});
