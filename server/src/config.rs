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
use crate::key_name::KeyName;
use crate::policy::{Policy, PolicyRule};
use crate::store_key::StoreId;

mod keys;
mod kms;
mod revocation;
mod stores;

pub use keys::{KeyConfig, WrapMode};
pub use revocation::RevocationConfig;
pub use stores::StoreConfig;

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

impl ConfigError {
    pub fn new(
        file: &Path,
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

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

// ---- the TOML shape -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    tls: Option<RawTls>,
    #[serde(default)]
    keys: BTreeMap<String, keys::RawKey>,
    #[serde(default)]
    stores: BTreeMap<String, stores::RawStore>,
    #[serde(default)]
    revocation: revocation::RawRevocation,
    #[serde(default)]
    kms: kms::RawKms,
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
struct RawPolicy {
    peer: String,
    allow: Vec<String>,
    keys: Option<Vec<String>>,
    stores: Option<Vec<String>>,
}

// ---- loading --------------------------------------------------------------------------

/// `msg` with every double-quoted string in it (serde quotes a value that way, escapes
/// included) shown as `"…"`: a config value may be a URI with credentials.
fn without_values(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' {
            continue;
        }
        out.push_str("…\"");
        // Skip to the closing quote; a backslash escapes the character after it.
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                _ => {}
            }
        }
    }
    out
}

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
        let err =
            |field: &str, problem: String, fix: &str| ConfigError::new(path, field, problem, fix);
        let line_of = |e: &toml::de::Error| {
            e.span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(0)
        };
        let de = toml::Deserializer::parse(text).map_err(|e| {
            err(
                &format!("line {}", line_of(&e)),
                without_values(e.message().trim()),
                "fix the TOML syntax",
            )
        })?;
        // serde_path_to_error names the field (`revocation.poll_interval`); serde's own
        // message may quote the value (`invalid type: string "…"`), which could be a secret
        // URI, so quoted values are cut from it.
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            err(
                &format!("{path} (line {})", line_of(&inner)),
                without_values(inner.message().trim()),
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

        let keys = keys::parse(path, &base, raw.keys)?;
        let stores = stores::parse(path, raw.stores, &keys)?;
        let revocation = RevocationConfig::from_raw(raw.revocation, path)?;
        let kms = kms::Kms::from_raw(raw.kms, path)?;

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
        let limits =
            crate::limits::Limits::from_raw(raw.limits, kms.retry.deadline, uris_per_key, path)?;
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
            kms: kms.retry,
            hedge_after: kms.hedge_after,
            max_in_flight: kms.max_in_flight,
            policy: Policy::new(rules),
        })
    }
}

#[cfg(test)]
mod tests;
