//! `[audit]`: where the trail goes, when it rotates, how often it is fsynced.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// The validated `[audit]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// Rotate before a record would take the file past this.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` … `path.KEEP`).
    pub keep: usize,
    /// Records waiting for the writer at most; past that, records are counted as lost.
    pub queue: usize,
    /// fsync at most this often while records arrive.
    pub sync_interval: Duration,
}

/// The TOML shape of `[audit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    path: PathBuf,
    max_bytes: Option<u64>,
    keep: Option<usize>,
    queue: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    sync_interval: Option<Duration>,
}

impl AuditConfig {
    /// Validates `raw`; a relative `path` is relative to the config file's folder (`base`).
    pub fn from_raw(raw: RawAudit, base: &Path, file: &Path) -> Result<AuditConfig, ConfigError> {
        let err = |field: &str, problem: String, fix: &str| {
            ConfigError::new(file, format!("audit.{field}"), problem, fix)
        };
        if raw.path.as_os_str().is_empty() || raw.path.file_name().is_none() {
            return Err(err(
                "path",
                "is not a file path".into(),
                "name the audit file, e.g. \"/var/log/kms-broker/audit.jsonl\"",
            ));
        }
        let config = AuditConfig {
            path: if raw.path.is_relative() {
                base.join(raw.path)
            } else {
                raw.path
            },
            max_bytes: raw.max_bytes.unwrap_or(64 * 1024 * 1024),
            keep: raw.keep.unwrap_or(10),
            queue: raw.queue.unwrap_or(65536),
            sync_interval: raw.sync_interval.unwrap_or(Duration::from_secs(1)),
        };
        if config.max_bytes < 4096 {
            return Err(err(
                "max_bytes",
                format!("{} is below 4096", config.max_bytes),
                "use a size in bytes such as 67108864 (64 MiB)",
            ));
        }
        if !(1..=1000).contains(&config.keep) {
            return Err(err(
                "keep",
                format!("{} is not 1 to 1000", config.keep),
                "keep e.g. 10 rotated files",
            ));
        }
        if !(16..=1 << 22).contains(&config.queue) {
            return Err(err(
                "queue",
                format!("{} is not 16 to 4194304", config.queue),
                "leave it out (65536)",
            ));
        }
        if config.sync_interval < Duration::from_millis(10)
            || config.sync_interval > Duration::from_secs(60)
        {
            return Err(err(
                "sync_interval",
                format!("{:?} is not 10ms to 60s", config.sync_interval),
                "leave it out (1s)",
            ));
        }
        Ok(config)
    }
}
