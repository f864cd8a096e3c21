//! `[kms]`: per-attempt timeouts, the deadline and retries of every KMS call, hedging, and
//! what protects the KMS from us (rate, retry budget, breaker: `backend::protect`).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::backend::protect::Protection;
use crate::backend::resilient::RetryPolicy;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKms {
    #[serde(default, with = "humantime_serde")]
    attempt_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    deadline: Option<Duration>,
    max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    hedge_after: Option<Duration>,
    max_in_flight: Option<usize>,
    rate_per_second: Option<f64>,
    burst: Option<u32>,
    retry_budget: Option<f64>,
    breaker_failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    breaker_cooldown: Option<Duration>,
}

/// The validated `[kms]` section.
pub(super) struct Kms {
    pub retry: RetryPolicy,
    pub hedge_after: Duration,
    pub max_in_flight: usize,
}

impl Kms {
    pub(super) fn from_raw(raw: RawKms, file: &Path) -> Result<Kms, ConfigError> {
        let defaults = RetryPolicy::default();
        let protection = Protection::from_raw(
            raw.rate_per_second,
            raw.burst,
            raw.retry_budget,
            raw.breaker_failures,
            raw.breaker_cooldown,
        )
        .map_err(|(f, problem)| {
            ConfigError::new(
                file,
                format!("kms.{f}"),
                problem,
                "see the README's \"Protecting the KMS\"",
            )
        })?;
        let retry = RetryPolicy {
            attempt_timeout: raw.attempt_timeout.unwrap_or(defaults.attempt_timeout),
            deadline: raw.deadline.unwrap_or(defaults.deadline),
            max_attempts: raw.max_attempts.unwrap_or(defaults.max_attempts),
            protection,
            ..defaults
        };
        if retry.max_attempts == 0 || retry.attempt_timeout.is_zero() || retry.deadline.is_zero() {
            return Err(ConfigError::new(
                file,
                "kms",
                "timeouts and max_attempts must be above zero",
                "e.g. attempt_timeout = \"5s\", deadline = \"15s\", max_attempts = 4",
            ));
        }
        if raw.max_in_flight == Some(0) {
            return Err(ConfigError::new(
                file,
                "kms.max_in_flight",
                "zero would let no KMS call run",
                "leave it out (256) or give a positive number",
            ));
        }
        Ok(Kms {
            retry,
            hedge_after: raw.hedge_after.unwrap_or(Duration::from_millis(250)),
            max_in_flight: raw.max_in_flight.unwrap_or(256),
        })
    }
}
