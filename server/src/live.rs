//! The config in force, and its replacement on SIGHUP.
//!
//! Everything a call reads from the config (the policy, the keys with their backends and
//! states, the stores) is one [`Runtime`], swapped whole: a call takes the current one when
//! it starts and uses it to its end, so no call ever mixes an old policy with new keys.
//! Connections are untouched by a reload; they simply see the new runtime on their next
//! call. The TCP listener's TLS config (certificate, key, client CA) is swapped the same
//! way: handshakes after the reload use the new files, established sessions go on.
//!
//! A reload is all or nothing. The file is loaded and checked exactly as `check-config`
//! does ([`check`]: TLS files parsed, every new backend built, the state dir examined); any
//! problem, or a change to a setting only a restart can apply (listeners, state dir,
//! limits, audit, metrics), refuses the whole reload with one log line and leaves the old
//! config in force.
//!
//! What a reload keeps: a URI whose text and KMS settings are unchanged keeps its backend
//! and its state (a revocation is never forgotten, a healthy key never waits for its next
//! check); a store kept keeps its lock and held keys. What it drops: removed keys and
//! stores, and the UnwrapKey cache (entries are re-gated by the new policy on their next
//! use anyway; dropping them keeps the rule simple).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::audit::Audit;
use crate::broker::Broker;
use crate::config::{Config, ConfigError};
use crate::stores::Stores;

/// What calls read from the config, swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    pub config: Config,
    pub broker: Arc<Broker>,
    pub stores: Arc<Stores>,
}

/// A reader of the runtime in force.
#[derive(Debug, Clone)]
pub struct Live {
    runtime: watch::Receiver<Arc<Runtime>>,
    reloads: Arc<ReloadCounts>,
}

/// Reloads since start, for metrics: a refused one means the file on disk is not what the
/// daemon runs, which an operator wants an alert for.
#[derive(Debug, Default)]
pub struct ReloadCounts {
    pub applied: AtomicU64,
    pub refused: AtomicU64,
}

impl Live {
    /// The runtime in force now. Take it once per call.
    pub fn current(&self) -> Arc<Runtime> {
        self.runtime.borrow().clone()
    }

    /// Wakes on every reload that was applied.
    pub fn changes(&self) -> watch::Receiver<Arc<Runtime>> {
        self.runtime.clone()
    }

    /// (applied, refused) reloads since start.
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads.applied.load(Ordering::Relaxed),
            self.reloads.refused.load(Ordering::Relaxed),
        )
    }
}

/// The TLS config new handshakes use.
pub type LiveTls = watch::Receiver<Arc<rustls::ServerConfig>>;

/// Replaces the runtime (and the TLS config) from the config file. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reloader {
    inner: Arc<ReloaderInner>,
}

#[derive(Debug)]
struct ReloaderInner {
    file: PathBuf,
    runtime: watch::Sender<Arc<Runtime>>,
    tls: Option<watch::Sender<Arc<rustls::ServerConfig>>>,
    /// A policy change is a security event: each reload, applied or refused, is recorded.
    audit: Option<Audit>,
    reloads: Arc<ReloadCounts>,
    /// One reload at a time: two SIGHUPs in a row must not race to build two brokers.
    busy: tokio::sync::Mutex<()>,
}

/// How many names of each list a reload's summary shows.
const SHOWN_NAMES: usize = 10;

/// Why a reload was refused: the whole message is the one log line.
#[derive(Debug, thiserror::Error)]
#[error("config reload refused, the previous config stays in force: {0}")]
pub struct Refused(pub String);

impl Reloader {
    /// The runtime of a freshly bound server, and the TLS config its TCP listener uses.
    pub fn new(
        runtime: Runtime,
        tls: Option<Arc<rustls::ServerConfig>>,
        audit: Option<Audit>,
    ) -> (Reloader, Live, Option<LiveTls>) {
        let file = runtime.config.file.clone();
        let (runtime_tx, runtime_rx) = watch::channel(Arc::new(runtime));
        let (tls_tx, tls_rx) = match tls {
            Some(t) => {
                let (tx, rx) = watch::channel(t);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let reloads = Arc::new(ReloadCounts::default());
        let reloader = Reloader {
            inner: Arc::new(ReloaderInner {
                file,
                runtime: runtime_tx,
                tls: tls_tx,
                audit,
                reloads: reloads.clone(),
                busy: tokio::sync::Mutex::new(()),
            }),
        };
        let live = Live {
            runtime: runtime_rx,
            reloads,
        };
        (reloader, live, tls_rx)
    }

    /// Loads the config file again and, if it passes every check, puts it in force. Logs
    /// one line either way and returns it.
    pub async fn reload(&self) -> Result<String, Refused> {
        let _one = self.inner.busy.lock().await;
        let result = self.try_reload().await;
        match &result {
            Ok(summary) => {
                tracing::info!(file = %self.inner.file.display(), "config reloaded: {summary}")
            }
            Err(e) => tracing::error!(file = %self.inner.file.display(), "{e}"),
        }
        let counter = match &result {
            Ok(_) => &self.inner.reloads.applied,
            Err(_) => &self.inner.reloads.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(audit) = &self.inner.audit {
            match &result {
                Ok(summary) => audit.event("reload", summary.clone()),
                Err(Refused(why)) => audit.event("reload_refused", why.clone()),
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<String, Refused> {
        let old = self.inner.runtime.borrow().clone();
        let config = Config::load(&self.inner.file).map_err(|e| Refused(e.to_string()))?;
        restart_only_changes(&old.config, &config)?;
        let Checked { tls, broker } = check(&config, Some(&old))
            .await
            .map_err(|e| Refused(e.to_string()))?;
        // `[tls]` can neither come nor go without a restart (refused above).
        let tls = tls.filter(|_| self.inner.tls.is_some()).map(Arc::new);
        let broker = Arc::new(broker);
        let stores = old.stores.reload(&config, broker.clone());
        let summary = summary(&old.config, &config);
        // TLS first: were the runtime swapped first, a client could be refused by the old
        // CA for a key the new policy grants it, and nothing would tell it to retry.
        if let (Some(tls), Some(tx)) = (tls, &self.inner.tls) {
            tx.send_replace(tls);
        }
        self.inner.runtime.send_replace(Arc::new(Runtime {
            config,
            broker,
            stores,
        }));
        Ok(summary)
    }
}

/// What a config that passed [`check`] is served with.
#[derive(Debug)]
pub struct Checked {
    /// The TCP listener's TLS config, when the config has `[tls]`.
    pub tls: Option<rustls::ServerConfig>,
    pub broker: Broker,
}

/// Everything a loaded config must pass before it is served, short of binding and locking:
/// the TLS files are read and parsed (key matched to certificate), every KMS backend is
/// built (tokens and CA files read; no KMS is contacted), and the state dir is examined
/// (exists, a folder, owner, mode, writable) without writing in it. `check-config` runs
/// exactly this, and so does a reload, which passes the runtime it replaces so that
/// unchanged URIs keep their backends and states.
pub async fn check(config: &Config, previous: Option<&Runtime>) -> Result<Checked, ConfigError> {
    let tls = match &config.tls {
        Some(files) => Some(crate::tls::server_config(files, &config.file)?),
        None => None,
    };
    let broker = match previous {
        Some(old) => old.broker.reload(&old.config, config).await?,
        None => Broker::new(config).await?,
    };
    crate::store_key::ensure_state_dir(&config.server.state_dir).map_err(|e| {
        ConfigError::new(
            &config.file,
            "server.state_dir",
            e.to_string(),
            "as the problem says; ownership is compared with the user running the check, so \
             check as the daemon's user",
        )
    })?;
    Ok(Checked { tls, broker })
}

/// Refuses changes that only a restart can apply: the listeners and state dir are bound and
/// locked, the limits sized the accept loops, and the audit trail and metrics own a file
/// and a port.
fn restart_only_changes(old: &Config, new: &Config) -> Result<(), Refused> {
    let mut changed = Vec::new();
    if old.server.unix_socket != new.server.unix_socket {
        changed.push("server.unix_socket");
    }
    if old.server.tcp_listen != new.server.tcp_listen {
        changed.push("server.tcp_listen");
    }
    if old.server.state_dir != new.server.state_dir {
        changed.push("server.state_dir");
    }
    if old.server.shutdown_grace != new.server.shutdown_grace {
        changed.push("server.shutdown_grace");
    }
    if old.tls.is_some() != new.tls.is_some() {
        changed.push("[tls] (added or removed)");
    }
    if old.limits != new.limits {
        changed.push("[limits]");
    }
    if old.audit != new.audit {
        changed.push("[audit]");
    }
    if old.metrics != new.metrics {
        changed.push("[metrics]");
    }
    if changed.is_empty() {
        Ok(())
    } else {
        Err(Refused(format!(
            "{}: {} can only change with a restart",
            new.file.display(),
            changed.join(", ")
        )))
    }
}

/// What changed, for the log line and the audit record: names only, never URIs, and at
/// most [`SHOWN_NAMES`] of each list (a config may hold thousands of keys).
fn summary(old: &Config, new: &Config) -> String {
    fn changes<K: Ord + std::fmt::Display, V>(
        old: &BTreeMap<K, V>,
        new: &BTreeMap<K, V>,
    ) -> (String, String) {
        let only =
            |a: &BTreeMap<K, V>, b: &BTreeMap<K, V>| list(a.keys().filter(|k| !b.contains_key(*k)));
        (only(new, old), only(old, new))
    }
    fn list(names: impl Iterator<Item = impl std::fmt::Display>) -> String {
        let mut shown = Vec::new();
        let mut more = 0;
        for n in names {
            if shown.len() < SHOWN_NAMES {
                shown.push(n.to_string());
            } else {
                more += 1;
            }
        }
        match (shown.is_empty(), more) {
            (true, _) => "none".to_owned(),
            (false, 0) => shown.join(","),
            (false, n) => format!("{} and {n} more", shown.join(",")),
        }
    }
    let (keys_added, keys_removed) = changes(&old.keys, &new.keys);
    let (stores_added, stores_removed) = changes(&old.stores, &new.stores);
    format!(
        "{} keys (added {keys_added}, removed {keys_removed}), {} stores (added {stores_added}, removed {stores_removed}), {} policy rules{}",
        new.keys.len(),
        new.stores.len(),
        new.policy.len(),
        if new.tls.is_some() {
            ", TLS files re-read"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keys: impl Iterator<Item = String>) -> Config {
        let mut text = "[server]\nunix_socket = \"s.sock\"\nstate_dir = \"state\"\n".to_owned();
        for k in keys {
            text += &format!("[keys.{k}]\nuris = [\"file:///k/{k}\"]\n");
        }
        Config::parse(std::path::Path::new("/etc/kms-broker/c.toml"), &text).unwrap()
    }

    #[test]
    fn the_summary_names_what_changed_and_stays_short() {
        let old = config(["a", "b"].into_iter().map(String::from));
        let new = config(["b", "c"].into_iter().map(String::from));
        assert_eq!(
            summary(&old, &new),
            "2 keys (added c, removed a), 0 stores (added none, removed none), 0 policy rules"
        );
        let many = config((0..5000).map(|i| format!("k{i:04}")));
        let s = summary(&old, &many);
        assert!(s.starts_with("5000 keys (added k0000,k0001,k0002,"), "{s}");
        assert!(s.contains("k0009 and 4990 more, removed a,b)"), "{s}");
        assert!(s.len() < 300, "{} bytes", s.len());
    }
}
