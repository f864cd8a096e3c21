//! `StoreKeyFile::from_json` on arbitrary bytes: a damaged store key file must be an error
//! naming the problem, never a panic or a huge allocation, and never a silently partial key.
#![no_main]

use kms_broker::store_key::StoreKeyFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = StoreKeyFile::from_json(data) {
        // Whatever is accepted writes back to a file that reads as the same keys.
        let again = StoreKeyFile::from_json(&file.to_json()).expect("own output parses");
        assert_eq!(again, file);
    }
});
