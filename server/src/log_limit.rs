//! Log hygiene for what callers can trigger: a caller must not be able to flood the
//! operational log, nor put a secret or a megabyte into it.
//!
//! - [`LogLimit`]: at most N lines per second per call site; the next line admitted says
//!   how many were suppressed.
//! - [`caller_text`]: a string a caller sent, made safe to log: URI-shaped text (a pasted
//!   KMS URI with its credentials) is not shown at all, the rest is cut to 128 characters
//!   and escaped.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest caller string shown in a log line.
pub const MAX_SHOWN: usize = 128;

/// A per-second budget of log lines.
#[derive(Debug)]
pub struct LogLimit {
    per_second: u32,
    second: AtomicU64,
    count: AtomicU32,
    suppressed: AtomicU64,
}

impl LogLimit {
    pub const fn new(per_second: u32) -> Self {
        Self {
            per_second,
            second: AtomicU64::new(0),
            count: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last admitted one)` if a line may be logged now.
    pub fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.admit_at(now)
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// A caller's string, safe for a log line: never URI-shaped text, never more than
/// [`MAX_SHOWN`] characters, control characters escaped.
pub fn caller_text(s: &str) -> String {
    if s.contains("://") || s.contains('?') || s.contains('=') || s.contains('&') {
        return format!("<{} bytes, URI-shaped: not shown>", s.len());
    }
    let mut out: String = s
        .chars()
        .take(MAX_SHOWN)
        .flat_map(char::escape_default)
        .collect();
    if s.chars().nth(MAX_SHOWN).is_some() {
        out.push_str(&format!("…<{} bytes>", s.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_text_hides_uris_and_bounds_length() {
        let uri = "aws:///k?REGION=x&AWS_SECRET_ACCESS_KEY=hunter2";
        let shown = caller_text(uri);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!caller_text("AWS_SECRET_ACCESS_KEY=hunter2").contains("hunter2"));
        let huge = "a".repeat(3_000_000);
        let shown = caller_text(&huge);
        assert!(shown.len() < 200, "{}", shown.len());
        assert!(shown.contains("3000000 bytes"), "{shown}");
        assert_eq!(caller_text("store-1"), "store-1");
        assert_eq!(caller_text("a\nb"), "a\\nb");
    }

    #[test]
    fn a_burst_is_cut_and_the_next_line_counts_what_was_cut() {
        let l = LogLimit::new(3);
        let admitted: Vec<_> = (0..10).map(|_| l.admit_at(100)).collect();
        assert_eq!(admitted.iter().filter(|a| a.is_some()).count(), 3);
        assert_eq!(admitted[0], Some(0));
        assert_eq!(
            l.admit_at(101),
            Some(7),
            "the next second reports the cut lines"
        );
        assert_eq!(l.admit_at(101), Some(0));
    }
}
