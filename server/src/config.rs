//! The TOML config: serde types that reject unknown fields, validated once into typed values
//! (STYLE lesson 6). Nothing downstream re-checks a string from here.
//!
//! Every failure is a [`ConfigError`] naming the file, the field and the fix; `main` turns
//! it into exit code 64 (EX_USAGE).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::backend::resilient::RetryPolicy;
use crate::envelope::{MAX_ENTRIES, MAX_URI_ID};
use crate::key_name::KeyName;
use crate::key_uri::KeyUri;
use crate::policy::{Policy, PolicyRule};
use crate::store_key::{Algorithm, StoreId};

/// A bad config: which file, which field, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: `{}`: {}; fix: {}",
            self.file.display(),
            self.field,
            self.problem,
            self.fix
        )
    }
}

impl std::error::Error for ConfigError {}

/// The validated config the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub server: ServerConfig,
    pub tls: Option<TlsFiles>,
    pub keys: BTreeMap<KeyName, KeyConfig>,
    pub stores: BTreeMap<StoreId, StoreConfig>,
    pub revocation: RevocationConfig,
    pub kms: RetryPolicy,
    /// An unwrap asks a key's next URI when the first has not answered within this; zero
    /// turns hedging off.
    pub hedge_after: Duration,
    /// KMS calls in flight per URI, at most; more wait their turn.
    pub max_in_flight: usize,
    pub policy: Policy,
    pub limits: crate::limits::Limits,
    pub cache: crate::unwrap_cache::CacheConfig,
    pub audit: Option<crate::audit::AuditConfig>,
    pub metrics: Option<crate::metrics::MetricsConfig>,
    /// `[memory]`: whether locked key memory is required at start.
    pub memory: crate::hardening::MemoryConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub unix_socket: PathBuf,
    pub tcp_listen: Option<SocketAddr>,
    pub state_dir: PathBuf,
    /// How long in-flight calls may run after SIGTERM before they are cut.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub uris: Vec<KeyUri>,
    pub wrap_mode: WrapMode,
}

/// What WrapKey and store-key creation do while one of a key's URIs is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WrapMode {
    /// Fail: every URI must wrap (a restore must survive the loss of any region).
    #[default]
    Strict,
    /// Wrap under the URIs that answer; the gap shows in StoreStatus, and a store's missing
    /// wraps are added once the URI is back.
    Available,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub key: KeyName,
    pub algorithm: Algorithm,
    /// Rotate the store key when the active one is this old; `None`: only on request.
    pub rotation_period: Option<Duration>,
    /// How many previous keys the operator means to keep. Never enforced by dropping:
    /// StoreStatus flags a store over it, and DropPreviousStoreKey is the explicit act.
    pub max_previous: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
pub struct RevocationConfig {
    /// The interval while every URI is ACTIVE.
    pub poll_interval: Duration,
    /// The interval while any URI is not: a key coming back (or going) is seen sooner.
    pub degraded_poll_interval: Duration,
    /// Zero turns the grace off.
    pub grace_period: Duration,
}

// ---- the TOML shape -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    tls: Option<RawTls>,
    #[serde(default)]
    keys: BTreeMap<String, RawKey>,
    #[serde(default)]
    stores: BTreeMap<String, RawStore>,
    #[serde(default)]
    revocation: RawRevocation,
    #[serde(default)]
    kms: RawKms,
    #[serde(default)]
    policy: Vec<RawPolicy>,
    #[serde(default)]
    limits: crate::limits::RawLimits,
    #[serde(default)]
    cache: crate::unwrap_cache::CacheConfig,
    audit: Option<crate::audit::RawAudit>,
    metrics: Option<crate::metrics::RawMetrics>,
    #[serde(default)]
    memory: crate::hardening::MemoryConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    unix_socket: PathBuf,
    tcp_listen: Option<String>,
    state_dir: PathBuf,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    uris: Vec<String>,
    wrap_mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    key: String,
    algorithm: Option<String>,
    #[serde(default, with = "humantime_serde")]
    rotation_period: Option<Duration>,
    max_previous: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRevocation {
    #[serde(default, with = "humantime_serde")]
    poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    grace_period: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    degraded_poll_interval: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKms {
    #[serde(default, with = "humantime_serde")]
    attempt_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    deadline: Option<Duration>,
    max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    hedge_after: Option<Duration>,
    max_in_flight: Option<usize>,
    // Protecting the KMS: see backend::protect.
    rate_per_second: Option<f64>,
    burst: Option<u32>,
    retry_budget: Option<f64>,
    breaker_failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    breaker_cooldown: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    peer: String,
    allow: Vec<String>,
    keys: Option<Vec<String>>,
    stores: Option<Vec<String>>,
}

// ---- loading --------------------------------------------------------------------------

/// Key names follow the store id alphabet, so they are safe in logs and file names.
pub fn valid_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        /// Far more than any real config (a thousand keys and policies fit in 200 KiB).
        const MAX_CONFIG_BYTES: u64 = 1 << 20;
        // The config holds the policy: a file others may write, or one of any size, is refused
        // before a byte of it is parsed.
        let text = crate::fs::read_trusted(path, MAX_CONFIG_BYTES).map_err(|e| ConfigError {
            file: path.to_owned(),
            field: "(file)".into(),
            problem: format!("cannot use the config: {e}"),
            fix: "pass --config with the path of a TOML file only its owner (the daemon's user or root) may write".into(),
        })?;
        Self::parse(path, &text)
    }

    /// Validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |field: &str, problem: String, fix: &str| ConfigError {
            file: path.to_owned(),
            field: field.to_owned(),
            problem,
            fix: fix.to_owned(),
        };
        let line_of = |e: &toml::de::Error| {
            e.span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(0)
        };
        let de = toml::Deserializer::parse(text).map_err(|e| {
            err(
                &format!("line {}", line_of(&e)),
                e.message().trim().to_owned(),
                "fix the TOML syntax",
            )
        })?;
        // serde_path_to_error names the field (`revocation.poll_interval`) without echoing
        // its value, which could be a secret URI.
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            err(
                &format!("{path} (line {})", line_of(&inner)),
                inner.message().trim().to_owned(),
                "correct the field name or value (unknown fields are errors); see the README's config reference",
            )
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        let rel = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };

        let tcp_listen = match raw.server.tcp_listen.as_deref() {
            None => None,
            Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| {
                err(
                    "server.tcp_listen",
                    format!("{s:?} is not an address ({e})"),
                    "write HOST:PORT, e.g. \"127.0.0.1:7443\"",
                )
            })?),
        };
        if tcp_listen.is_some() && raw.tls.is_none() {
            return Err(err(
                "tls",
                "server.tcp_listen is set but [tls] is missing: TCP is served with mutual TLS only"
                    .into(),
                "add [tls] with ca, cert and key, or remove server.tcp_listen",
            ));
        }
        let server = ServerConfig {
            unix_socket: rel(raw.server.unix_socket),
            tcp_listen,
            state_dir: rel(raw.server.state_dir),
            shutdown_grace: raw.server.shutdown_grace.unwrap_or(Duration::from_secs(10)),
        };
        let tls = raw.tls.map(|t| TlsFiles {
            ca: rel(t.ca),
            cert: rel(t.cert),
            key: rel(t.key),
        });

        let mut keys = BTreeMap::new();
        for (name, k) in raw.keys {
            let field = format!("keys.{name}");
            let name = KeyName::parse(&name)
                .map_err(|problem| err(&field, problem.into(), "rename the key"))?;
            if k.uris.is_empty() {
                return Err(err(
                    &format!("{field}.uris"),
                    "no URIs".into(),
                    "list at least one KMS key URI",
                ));
            }
            // A wrapped envelope holds one entry per URI, at most MAX_ENTRIES.
            if k.uris.len() > MAX_ENTRIES {
                return Err(err(
                    &format!("{field}.uris"),
                    format!("{} URIs; a key has at most {MAX_ENTRIES}", k.uris.len()),
                    "split the URIs across keys",
                ));
            }
            let mut uris = Vec::with_capacity(k.uris.len());
            for (i, u) in k.uris.iter().enumerate() {
                let mut parsed = KeyUri::parse(u).map_err(|problem| {
                    err(
                        &format!("{field}.uris[{i}]"),
                        problem,
                        "see the README's key URI forms",
                    )
                })?;
                parsed.resolve_relative(&base);
                if parsed.id().len() > MAX_URI_ID {
                    return Err(err(
                        &format!("{field}.uris[{i}]"),
                        format!("the key's identity is over {MAX_URI_ID} bytes"),
                        "use a shorter path or key name",
                    ));
                }
                if uris.iter().any(|p: &KeyUri| p.id() == parsed.id()) {
                    return Err(err(
                        &format!("{field}.uris[{i}]"),
                        "the same KMS key is listed twice".into(),
                        "remove the duplicate",
                    ));
                }
                uris.push(parsed);
            }
            let wrap_mode = match k.wrap_mode.as_deref() {
                None | Some("strict") => WrapMode::Strict,
                Some("available") => WrapMode::Available,
                Some(other) => {
                    return Err(err(
                        &format!("{field}.wrap_mode"),
                        format!("{other:?} is not a wrap mode"),
                        "use \"strict\" (the default) or \"available\"",
                    ))
                }
            };
            keys.insert(name, KeyConfig { uris, wrap_mode });
        }

        let mut stores = BTreeMap::new();
        for (id, s) in raw.stores {
            let field = format!("stores.{id}");
            let store_id =
                StoreId::parse(&id).map_err(|problem| err(&field, problem, "rename the store"))?;
            let key = match KeyName::parse(&s.key) {
                Ok(k) if keys.contains_key(&k) => k,
                _ => {
                    return Err(err(
                        &format!("{field}.key"),
                        format!("no key named {:?} under [keys]", s.key),
                        "name a key defined under [keys.NAME]",
                    ))
                }
            };
            let algorithm = match s.algorithm.as_deref() {
                None => Algorithm::Aes256,
                Some(a) => Algorithm::parse(a).ok_or_else(|| {
                    err(
                        &format!("{field}.algorithm"),
                        format!("{a:?} is not an algorithm"),
                        "use \"AES-128\", \"AES-192\" or \"AES-256\"",
                    )
                })?,
            };
            if s.rotation_period
                .is_some_and(|p| p < Duration::from_secs(60))
            {
                return Err(err(
                    &format!("{field}.rotation_period"),
                    "shorter than a minute".into(),
                    "use e.g. \"90d\", or leave it out to rotate only on request",
                ));
            }
            let config = StoreConfig {
                key,
                algorithm,
                rotation_period: s.rotation_period,
                max_previous: s.max_previous,
            };
            stores.insert(store_id, config);
        }

        let revocation = RevocationConfig {
            poll_interval: raw
                .revocation
                .poll_interval
                .unwrap_or(Duration::from_secs(30)),
            grace_period: raw
                .revocation
                .grace_period
                .unwrap_or(Duration::from_secs(15 * 60)),
            degraded_poll_interval: Duration::ZERO,
        };
        // Default: a sixth of the healthy interval (5 s at the default 30 s), never longer.
        let degraded = raw
            .revocation
            .degraded_poll_interval
            .unwrap_or((revocation.poll_interval / 6).max(Duration::from_millis(100)));
        if degraded < Duration::from_millis(100) || degraded > revocation.poll_interval {
            return Err(err(
                "revocation.degraded_poll_interval",
                "must be between 100ms and poll_interval".into(),
                "use e.g. \"5s\" with poll_interval = \"30s\"",
            ));
        }
        let revocation = RevocationConfig {
            degraded_poll_interval: degraded,
            ..revocation
        };
        if revocation.poll_interval < Duration::from_millis(100) {
            return Err(err(
                "revocation.poll_interval",
                "shorter than 100ms".into(),
                "use e.g. \"30s\"",
            ));
        }

        let defaults = RetryPolicy::default();
        let kms = RetryPolicy {
            attempt_timeout: raw.kms.attempt_timeout.unwrap_or(defaults.attempt_timeout),
            deadline: raw.kms.deadline.unwrap_or(defaults.deadline),
            max_attempts: raw.kms.max_attempts.unwrap_or(defaults.max_attempts),
            protection: crate::backend::protect::Protection::from_raw(
                raw.kms.rate_per_second,
                raw.kms.burst,
                raw.kms.retry_budget,
                raw.kms.breaker_failures,
                raw.kms.breaker_cooldown,
            )
            .map_err(|(f, problem)| {
                err(
                    &format!("kms.{f}"),
                    problem,
                    "see the README's \"Protecting the KMS\"",
                )
            })?,
            ..defaults
        };
        if kms.max_attempts == 0 || kms.attempt_timeout.is_zero() || kms.deadline.is_zero() {
            return Err(err(
                "kms",
                "timeouts and max_attempts must be above zero".into(),
                "e.g. attempt_timeout = \"5s\", deadline = \"15s\", max_attempts = 4",
            ));
        }

        let mut rules = Vec::with_capacity(raw.policy.len());
        for (i, p) in raw.policy.into_iter().enumerate() {
            let field = format!("policy[{i}]");
            let rule = PolicyRule::parse(&p.peer, &p.allow, p.keys.as_deref(), p.stores.as_deref())
                .map_err(|(sub, problem, fix)| err(&format!("{field}.{sub}"), problem, &fix))?;
            if let Some(ks) = &rule.keys {
                if let Some(k) = ks.iter().find(|k| !keys.contains_key(*k)) {
                    return Err(err(
                        &format!("{field}.keys"),
                        format!("no key named {k:?} under [keys]"),
                        "name keys defined under [keys.NAME]",
                    ));
                }
            }
            if let Some(ss) = &rule.stores {
                if let Some(s) = ss.iter().find(|s| !stores.contains_key(*s)) {
                    return Err(err(
                        &format!("{field}.stores"),
                        format!("no store named {:?} under [stores]", s.as_str()),
                        "name stores defined under [stores.ID]",
                    ));
                }
            }
            rules.push(rule);
        }

        let uris_per_key = keys.values().map(|k| k.uris.len());
        let limits = crate::limits::Limits::from_raw(raw.limits, kms.deadline, uris_per_key, path)?;
        Ok(Config {
            limits,
            cache: raw.cache,
            memory: raw.memory,
            audit: raw
                .audit
                .map(|a| crate::audit::AuditConfig::from_raw(a, &base, path))
                .transpose()?,
            metrics: raw
                .metrics
                .map(|m| crate::metrics::MetricsConfig::from_raw(m, path))
                .transpose()?,
            file: path.to_owned(),
            server,
            tls,
            keys,
            stores,
            revocation,
            kms,
            hedge_after: raw.kms.hedge_after.unwrap_or(Duration::from_millis(250)),
            max_in_flight: raw.kms.max_in_flight.unwrap_or(256).max(1),
            policy: Policy::new(rules),
        })
    }
}

#[cfg(test)]
mod tests;
