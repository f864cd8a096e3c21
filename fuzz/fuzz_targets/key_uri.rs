//! `KeyUri::parse` on arbitrary text: config URIs are hand-written, must never panic the
//! config loader, and their secret parameters must never show in `id()`, `redacted()` or
//! `Debug` (which reach logs and RevokeStatus).
#![no_main]

use kms_broker::key_uri::KeyUri;
use libfuzzer_sys::fuzz_target;

/// Query parameters whose values are secrets, in any backend's URI.
const SECRETS: [&str; 4] = [
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "CREDENTIALS",
    "TOKEN",
];

fuzz_target!(|text: &str| {
    let Ok(uri) = KeyUri::parse(text) else {
        return;
    };
    let id = uri.id();
    let shown = uri.redacted();
    let debug = format!("{uri:?}");
    // The identity never carries a query string: it is recorded in envelopes. (A file
    // path may hold a literal `?`, written `%3F` in the URI: no query, so not checked.)
    if !id.starts_with("file:") {
        assert!(!id.contains('?'), "id has a query: {id}");
    }
    let Some((_, query)) = text.split_once('?') else {
        return;
    };
    let query = query.split('#').next().unwrap_or("");
    for pair in query.split('&') {
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        // Only values that are written literally (no escapes), long enough not to match a
        // redaction marker by chance, and found nowhere else in the URI.
        let plain = value.len() >= 12 && !value.contains(['%', '+']);
        if SECRETS.contains(&name) && plain && text.matches(value).count() == 1 {
            assert!(!id.contains(value), "id() shows {name}");
            assert!(!shown.contains(value), "redacted() shows {name}");
            assert!(!debug.contains(value), "Debug shows {name}");
        }
    }
});
