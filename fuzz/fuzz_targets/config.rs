//! `Config::parse` on arbitrary text: errors must be values (exit 64), never panics.
#![no_main]

use std::path::Path;

use kms_broker::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = Config::parse(Path::new("/nonexistent/fuzz/kms-broker.toml"), text) {
        // Every error renders (names the file).
        let shown = e.to_string();
        assert!(shown.contains("kms-broker.toml"), "{shown}");
    }
});
