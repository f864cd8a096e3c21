//! `[revocation]`: how often each key's state is checked, and how long an unreachable KMS
//! is trusted on its last good answer.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Clone, Copy)]
pub struct RevocationConfig {
    /// The interval while every URI is ACTIVE.
    pub poll_interval: Duration,
    /// The interval while any URI is not: a key coming back (or going) is seen sooner.
    pub degraded_poll_interval: Duration,
    /// Zero turns the grace off.
    pub grace_period: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRevocation {
    #[serde(default, with = "humantime_serde")]
    poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    grace_period: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    degraded_poll_interval: Option<Duration>,
}

impl RevocationConfig {
    pub(super) fn from_raw(raw: RawRevocation, file: &Path) -> Result<Self, ConfigError> {
        let poll_interval = raw.poll_interval.unwrap_or(Duration::from_secs(30));
        if poll_interval < Duration::from_millis(100) {
            return Err(ConfigError::new(
                file,
                "revocation.poll_interval",
                "shorter than 100ms",
                "use e.g. \"30s\"",
            ));
        }
        // Default: a sixth of the healthy interval (5 s at the default 30 s), never longer.
        let degraded_poll_interval = raw
            .degraded_poll_interval
            .unwrap_or((poll_interval / 6).max(Duration::from_millis(100)));
        if degraded_poll_interval < Duration::from_millis(100)
            || degraded_poll_interval > poll_interval
        {
            return Err(ConfigError::new(
                file,
                "revocation.degraded_poll_interval",
                "must be between 100ms and poll_interval",
                "use e.g. \"5s\" with poll_interval = \"30s\"",
            ));
        }
        Ok(RevocationConfig {
            poll_interval,
            degraded_poll_interval,
            grace_period: raw.grace_period.unwrap_or(Duration::from_secs(15 * 60)),
        })
    }
}
