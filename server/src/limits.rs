//! `[limits]`: every bound on what a caller can make the daemon hold: connections,
//! handshakes, streams, headers, request sizes and request time. Each one closes a way to
//! starve the daemon (the README's "Limits" table says which).
//!
//! The connection caps are also clamped to the process's open-file limit at start
//! ([`Limits::connection_caps`]), so that TCP can never use the descriptors the Unix socket,
//! key files and KMS connections need.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// Largest KeyBroker request: a wrapped blob is at most 16 entries of at most 8 KiB of KMS
/// ciphertext each plus short headers (~130 KiB), a context at most 64 entries / 8 KiB,
/// a plaintext at most 4 KiB. 256 KiB leaves room, and is 16 times below tonic's default.
pub const MAX_KEY_BROKER_REQUEST: usize = 256 * 1024;
/// Largest KeyBroker response we encode: RevokeStatus lists every configured key and URI,
/// so this is looser than the request bound; it only guards against our own bugs.
pub const MAX_KEY_BROKER_RESPONSE: usize = 4 * 1024 * 1024;
/// Health requests carry one service name; reflection requests one symbol or file name.
pub const MAX_SMALL_REQUEST: usize = 16 * 1024;

/// The validated `[limits]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A TCP client must finish the TLS handshake within this, or is cut.
    pub tls_handshake_timeout: Duration,
    /// TCP connections (handshaking or established) at once; further clients wait in the
    /// kernel's backlog, costing the daemon no descriptor.
    pub max_tcp_connections: usize,
    /// Unix-socket connections at once: separate from TCP's, and higher.
    pub max_unix_connections: usize,
    /// HTTP/2 PING interval on an idle connection, and how long to wait for the answer.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// Concurrent streams (calls) per connection.
    pub max_concurrent_streams: u32,
    /// Total size of one request's headers (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_list_size: u32,
    /// A unary call is cut after this. Always longer than `[kms] deadline`.
    pub request_timeout: Duration,
}

/// The TOML shape of `[limits]`; every field optional.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default, with = "humantime_serde")]
    tls_handshake_timeout: Option<Duration>,
    max_tcp_connections: Option<usize>,
    max_unix_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    http2_keepalive_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    http2_keepalive_timeout: Option<Duration>,
    max_concurrent_streams: Option<u32>,
    max_header_list_size: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
}

/// What `request_timeout` adds to the longest KMS work of one call when derived.
const REQUEST_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

impl Limits {
    /// Validates `raw`. `kms_deadline` bounds one KMS call (with its retries);
    /// `uris_per_key` lists how many URIs each key has: UnwrapKey may try each in turn, so
    /// the derived request timeout covers that many deadlines.
    pub fn from_raw(
        raw: RawLimits,
        kms_deadline: Duration,
        uris_per_key: impl IntoIterator<Item = usize>,
        file: &Path,
    ) -> Result<Limits, ConfigError> {
        let err = |field: &str, problem: String, fix: &str| {
            ConfigError::new(file, format!("limits.{field}"), problem, fix)
        };
        let most_uris = uris_per_key.into_iter().max().unwrap_or(1).max(1);
        let derived_timeout = kms_deadline
            .saturating_mul(u32::try_from(most_uris).unwrap_or(u32::MAX))
            .saturating_add(REQUEST_TIMEOUT_MARGIN);
        let limits = Limits {
            tls_handshake_timeout: raw.tls_handshake_timeout.unwrap_or(Duration::from_secs(10)),
            max_tcp_connections: raw.max_tcp_connections.unwrap_or(512),
            max_unix_connections: raw.max_unix_connections.unwrap_or(1024),
            http2_keepalive_interval: raw
                .http2_keepalive_interval
                .unwrap_or(Duration::from_secs(30)),
            http2_keepalive_timeout: raw
                .http2_keepalive_timeout
                .unwrap_or(Duration::from_secs(10)),
            max_concurrent_streams: raw.max_concurrent_streams.unwrap_or(128),
            max_header_list_size: raw.max_header_list_size.unwrap_or(16 * 1024),
            request_timeout: raw.request_timeout.unwrap_or(derived_timeout),
        };
        let durations = [
            ("tls_handshake_timeout", limits.tls_handshake_timeout),
            ("http2_keepalive_interval", limits.http2_keepalive_interval),
            ("http2_keepalive_timeout", limits.http2_keepalive_timeout),
        ];
        for (field, d) in durations {
            if d < Duration::from_millis(100) {
                return Err(err(
                    field,
                    format!("{d:?} is shorter than 100ms"),
                    "use a value such as \"10s\"",
                ));
            }
        }
        let counts = [
            ("max_tcp_connections", limits.max_tcp_connections),
            ("max_unix_connections", limits.max_unix_connections),
            (
                "max_concurrent_streams",
                limits.max_concurrent_streams as usize,
            ),
        ];
        for (field, n) in counts {
            if n == 0 {
                return Err(err(
                    field,
                    "is 0: nothing could connect".into(),
                    "use e.g. 512",
                ));
            }
        }
        if limits.max_header_list_size < 1024 {
            return Err(err(
                "max_header_list_size",
                format!(
                    "{} bytes cannot hold a gRPC call's headers",
                    limits.max_header_list_size
                ),
                "use at least 1024; the default is 16384",
            ));
        }
        if limits.request_timeout <= kms_deadline {
            return Err(err(
                "request_timeout",
                format!(
                    "{:?} is not longer than kms.deadline ({kms_deadline:?}): a call waiting on the KMS would be cut before the KMS deadline answers it",
                    limits.request_timeout
                ),
                &format!(
                    "remove it (the default is {derived_timeout:?}) or make it longer than kms.deadline"
                ),
            ));
        }
        Ok(limits)
    }

    /// The connection caps that fit in `open_files` descriptors: TCP gets at most a quarter,
    /// the Unix socket at most half, and the rest stays for the listeners, key files, the
    /// state dir and KMS connections, so a TCP flood can never starve the Unix socket.
    /// Returns `(tcp, unix)`.
    pub fn connection_caps(&self, open_files: u64) -> (usize, usize) {
        let budget = usize::try_from(open_files).unwrap_or(usize::MAX);
        (
            self.max_tcp_connections.min(budget / 4).max(1),
            self.max_unix_connections.min(budget / 2).max(1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, deadline: u64) -> Result<Limits, ConfigError> {
        let raw: RawLimits = toml::from_str(text).map_err(|e| ConfigError {
            file: "t".into(),
            field: "limits".into(),
            problem: e.to_string(),
            fix: String::new(),
        })?;
        Limits::from_raw(raw, Duration::from_secs(deadline), [1, 3], Path::new("t"))
    }

    #[test]
    fn defaults_derive_the_request_timeout_from_the_kms_deadline() {
        let l = parse("", 15).unwrap();
        assert_eq!(l.max_tcp_connections, 512);
        assert_eq!(l.max_unix_connections, 1024);
        // Three URIs tried in turn, each up to the deadline, plus the margin.
        assert_eq!(l.request_timeout, Duration::from_secs(50));
    }

    #[test]
    fn a_request_timeout_not_above_the_kms_deadline_is_refused() {
        let e = parse("request_timeout = \"15s\"", 15).unwrap_err();
        assert_eq!(e.field, "limits.request_timeout");
        assert!(parse("request_timeout = \"16s\"", 15).is_ok());
    }

    #[test]
    fn zero_and_unknown_fields_are_refused() {
        assert_eq!(
            parse("max_tcp_connections = 0", 15).unwrap_err().field,
            "limits.max_tcp_connections"
        );
        assert_eq!(
            parse("tls_handshake_timeout = \"1ms\"", 15)
                .unwrap_err()
                .field,
            "limits.tls_handshake_timeout"
        );
        assert!(parse("max_connections = 5", 15).is_err());
    }

    #[test]
    fn caps_leave_descriptors_for_the_unix_socket_and_key_files() {
        let l = parse("", 15).unwrap();
        assert_eq!(l.connection_caps(1024), (256, 512));
        assert_eq!(l.connection_caps(1 << 20), (512, 1024));
        let (tcp, unix) = l.connection_caps(256);
        assert!(tcp + unix < 256, "headroom left");
    }
}
