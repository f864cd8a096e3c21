//! Protecting the KMS: the `[kms]` settings for the token bucket, the retry budget and the
//! circuit breaker, and the counters they keep (one set per configured URI).
//!
//! See [`super::resilient`] for how a call goes through them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::breaker::BreakerState;

/// How hard the daemon may press one KMS URI.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Protection {
    /// Calls a second, on average, per URI (`[kms] rate_per_second`, default 1,000: a
    /// node's fair share of a cloud KMS quota, far above what coalescing and the cache let
    /// through in normal operation; set it to your share of the quota).
    pub rate_per_second: f64,
    /// Calls at once after a quiet spell (`[kms] burst`, default 2,000).
    pub burst: u32,
    /// Retries as a share of calls (`[kms] retry_budget`, default 0.2), plus a small reserve.
    pub retry_budget: f64,
    /// Consecutive unreachable attempts that open the breaker (`[kms] breaker_failures`,
    /// default 5; 0 turns it off).
    pub breaker_failures: u32,
    /// How long an open breaker fails fast before it lets one probe through
    /// (`[kms] breaker_cooldown`, default 5 s).
    pub breaker_cooldown: Duration,
    /// Backoff after a throttling answer that named no Retry-After: uniform in
    /// `[throttle_backoff / 2, throttle_backoff)`. Not configurable; 1 s.
    pub throttle_backoff: Duration,
}

impl Default for Protection {
    fn default() -> Self {
        Self {
            rate_per_second: 1000.0,
            burst: 2000,
            retry_budget: 0.2,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
            throttle_backoff: Duration::from_secs(1),
        }
    }
}

impl Protection {
    /// Fills unset `[kms]` fields with defaults; `Err((field, problem))` for a value that
    /// cannot work.
    pub fn from_raw(
        rate_per_second: Option<f64>,
        burst: Option<u32>,
        retry_budget: Option<f64>,
        breaker_failures: Option<u32>,
        breaker_cooldown: Option<Duration>,
    ) -> Result<Self, (&'static str, String)> {
        let d = Self::default();
        let p = Self {
            rate_per_second: rate_per_second.unwrap_or(d.rate_per_second),
            burst: burst.unwrap_or(d.burst),
            retry_budget: retry_budget.unwrap_or(d.retry_budget),
            breaker_failures: breaker_failures.unwrap_or(d.breaker_failures),
            breaker_cooldown: breaker_cooldown.unwrap_or(d.breaker_cooldown),
            ..d
        };
        if !(p.rate_per_second.is_finite() && p.rate_per_second >= 0.01) {
            return Err(("rate_per_second", "must be at least 0.01".into()));
        }
        if p.burst == 0 {
            return Err(("burst", "must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&p.retry_budget) {
            return Err(("retry_budget", "must be between 0.0 and 1.0".into()));
        }
        if p.breaker_failures > 0 && p.breaker_cooldown.is_zero() {
            return Err(("breaker_cooldown", "must be above zero".into()));
        }
        Ok(p)
    }
}

/// Counters of one URI's protection, since start.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub calls: AtomicU64,
    pub attempts: AtomicU64,
    pub retries: AtomicU64,
    pub retries_denied: AtomicU64,
    pub throttled_locally: AtomicU64,
    pub throttled_by_kms: AtomicU64,
    pub breaker_rejected: AtomicU64,
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of one URI's protection (for metrics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtectStats {
    /// Calls made by the daemon (each may be several attempts).
    pub calls: u64,
    /// Attempts that reached the KMS (or were cut by their timeout).
    pub attempts: u64,
    /// Attempts after the first.
    pub retries: u64,
    /// Retries the retry budget refused.
    pub retries_denied: u64,
    /// Calls refused by our token bucket: no token before their deadline.
    pub throttled_locally: u64,
    /// Throttling answers from the KMS.
    pub throttled_by_kms: u64,
    /// Calls refused by the open circuit breaker.
    pub breaker_rejected: u64,
    pub breaker: BreakerState,
    /// How many times the breaker has opened.
    pub breaker_opened: u64,
}

impl Counters {
    pub fn snapshot(&self, breaker: BreakerState, breaker_opened: u64) -> ProtectStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ProtectStats {
            calls: get(&self.calls),
            attempts: get(&self.attempts),
            retries: get(&self.retries),
            retries_denied: get(&self.retries_denied),
            throttled_locally: get(&self.throttled_locally),
            throttled_by_kms: get(&self.throttled_by_kms),
            breaker_rejected: get(&self.breaker_rejected),
            breaker,
            breaker_opened,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_refusals() {
        let p = Protection::from_raw(None, None, None, None, None).unwrap();
        assert_eq!(p, Protection::default());
        assert_eq!(
            Protection::from_raw(Some(0.0), None, None, None, None)
                .unwrap_err()
                .0,
            "rate_per_second"
        );
        assert_eq!(
            Protection::from_raw(None, Some(0), None, None, None)
                .unwrap_err()
                .0,
            "burst"
        );
        assert_eq!(
            Protection::from_raw(None, None, Some(1.5), None, None)
                .unwrap_err()
                .0,
            "retry_budget"
        );
        assert_eq!(
            Protection::from_raw(None, None, None, None, Some(Duration::ZERO))
                .unwrap_err()
                .0,
            "breaker_cooldown"
        );
        assert!(Protection::from_raw(None, None, None, Some(0), Some(Duration::ZERO)).is_ok());
    }

    fn config(kms: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        let text = format!(
            "[server]\nunix_socket = \"b.sock\"\nstate_dir = \"state\"\n\
             [keys.k]\nuris = [\"file:///etc/kms/key.bin\"]\n[kms]\n{kms}"
        );
        crate::config::Config::parse(std::path::Path::new("/etc/kms-broker/c.toml"), &text)
    }

    #[test]
    fn read_from_the_kms_section() {
        let c = config(
            "rate_per_second = 5.5\nburst = 7\nretry_budget = 0.1\n\
             breaker_failures = 0\nbreaker_cooldown = \"30s\"\n",
        )
        .expect("valid");
        let p = c.kms.protection;
        assert_eq!((p.rate_per_second, p.burst, p.retry_budget), (5.5, 7, 0.1));
        assert_eq!(p.breaker_failures, 0);
        assert_eq!(p.breaker_cooldown, Duration::from_secs(30));
        assert_eq!(
            config("").expect("defaults").kms.protection,
            Protection::default()
        );
        let e = config("retry_budget = 2.0\n").unwrap_err();
        assert_eq!(e.field, "kms.retry_budget");
        assert!(config("burst = 0\n").is_err());
        assert!(config("brust = 5\n").is_err(), "a typo is an error");
    }
}
