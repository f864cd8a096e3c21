//! Turning vendor errors into short, safe detail text: the one `short()` and the one
//! source-chain walker every backend uses.
//!
//! Details reach RevokeStatus and logs, so they are one line, bounded, and built from what
//! the vendor said (codes, statuses, its own short messages), never from a response body.

use std::error::Error as StdError;

/// Longest detail fragment we repeat from a vendor.
pub const MAX_DETAIL: usize = 200;

/// `s` on one line (runs of whitespace collapsed), cut to [`MAX_DETAIL`] characters with a
/// trailing `…` when cut.
pub fn short(s: &str) -> String {
    short_to(s, MAX_DETAIL)
}

/// Like [`short`], at most `max` characters (plus the `…`).
pub fn short_to(s: &str, max: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &one[..i]),
        None => one,
    }
}

/// Every error in `err`'s chain, `err` itself first.
pub fn chain_of<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&e| e.source())
}

/// The first error of type `T` in `err`'s chain (`err` itself included).
pub fn source_of<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    chain_of(err).find_map(|e| e.downcast_ref::<T>())
}

/// Each error of the chain's Display, joined by ": ", saying each thing once (wrappers often
/// repeat their source's text).
pub fn chain_text(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in chain_of(err) {
        let shown = e.to_string();
        if parts.last().is_none_or(|last| !last.contains(&shown)) {
            parts.push(shown);
        }
    }
    short(&parts.join(": "))
}

/// The innermost error's text (e.g. "Connection refused (os error 111)"), or `None` if a
/// JSON error is in the chain: its text may quote a response body (a plaintext, on decrypt).
pub fn root_cause(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut last = err;
    for e in chain_of(err) {
        if e.is::<serde_json::Error>() {
            return None;
        }
        last = e;
    }
    Some(short(&last.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "dispatch failure")
        }
    }
    impl StdError for Outer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn short_is_one_bounded_line() {
        assert_eq!(short("a\n\tb  c"), "a b c");
        let long = short(&"x".repeat(1000));
        assert_eq!(long.chars().count(), MAX_DETAIL + 1);
        assert!(long.ends_with('…'));
        // Multi-byte characters are cut on a boundary, never panicking.
        assert_eq!(short_to("ééé", 2), "éé…");
    }

    #[test]
    fn chains() {
        let e = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(source_of::<std::io::Error>(&e).is_some());
        assert!(source_of::<fmt::Error>(&e).is_none());
        assert_eq!(chain_of(&e).count(), 2);
        assert!(
            chain_text(&e).starts_with("dispatch failure: "),
            "{}",
            chain_text(&e)
        );
        assert_eq!(root_cause(&e).as_deref(), Some("connection refused"));
        let json = serde_json::from_str::<u8>("{\"plaintext\":\"c2VjcmV0\"}").unwrap_err();
        assert_eq!(root_cause(&json), None);
    }
}
