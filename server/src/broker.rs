//! The work behind the RPCs, free of gRPC types: wrap and unwrap under configured keys,
//! poll key states. Store keys are in [`crate::stores`], which uses this.
//!
//! Every KMS answer is recorded on its URI ([`crate::revocation`]), so a revocation seen by
//! a real call takes effect at once, not only at the next poll. A caller's request never
//! changes a key's state: sizes are checked against each KMS's limits before calling it,
//! and refusals the request shaped carry no evidence. After a KMS call succeeds the key's
//! gate is checked AGAIN, so a call admitted just before a revocation does not hand out
//! what it got.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::backend::resilient::Resilient;
use crate::backend::{self, Aad, BackendError, FailureClass, KmsBackend};
use crate::config::{Config, ConfigError, WrapMode};
use crate::envelope::{Entry, Envelope, DOES_NOT_AUTHENTICATE};
use crate::error::Error;
use crate::key_name::KeyName;
use crate::revocation::{Clock, Key, KeyStatus, KmsUri, Source};
use crate::secret::SecretBytes;
use crate::state::KeyState;
use crate::unwrap_cache::{Shared, UnwrapCache};

mod unwrap;

/// What WrapKey made.
#[derive(Debug)]
pub struct Wrapped {
    pub blob: Vec<u8>,
    pub key_version: String,
    /// URIs (redacted) that did not wrap it: only in `available` mode, never empty-handed.
    pub missing: Vec<String>,
}

/// What UnwrapKey recovered.
#[derive(Debug)]
pub struct Unwrapped {
    pub plaintext: SecretBytes,
    pub key_version: String,
}

/// Configured keys, each with its URIs' backends and states.
///
/// A KMS URI listed by several keys (the same text, credentials included) is ONE
/// [`KmsUri`], shared: one backend, one breaker, one state. A denial seen through any key
/// applies to every key that lists it at once (fail closed), and each poll asks the KMS once.
#[derive(Debug)]
pub struct Broker {
    keys: BTreeMap<KeyName, Key>,
    /// Every distinct URI once, with the first key (by name) that lists it: what a poll
    /// checks and what per-URI counters are exported for.
    uris: Vec<(KeyName, Arc<KmsUri>)>,
    clock: Arc<Clock>,
    grace: Duration,
    hedge_after: Duration,
    cache: UnwrapCache,
}

impl Broker {
    /// Builds a backend per distinct URI. Contacts no KMS. A backend that cannot even be
    /// built (a token file that is missing, a CA file that does not parse) is a config error.
    pub async fn new(config: &Config) -> Result<Self, ConfigError> {
        Self::build(config, Arc::new(Clock::default()), UriIndex::default()).await
    }

    /// The broker a reloaded `config` describes (`was`: the config this broker was built
    /// from). A URI whose text (secrets included) and KMS settings are unchanged keeps its
    /// backend AND its state, so a reload never forgets a revocation nor makes a healthy key
    /// wait for its next check. New URIs start unchecked, as at start-up. The clock is
    /// shared: watchers of the old broker's epoch see the new one's changes.
    pub async fn reload(&self, was: &Config, config: &Config) -> Result<Self, ConfigError> {
        let same_settings = was.kms == config.kms && was.max_in_flight == config.max_in_flight;
        let mut kept = UriIndex::default();
        if same_settings {
            for (_, u) in &self.uris {
                kept.insert(u.clone());
            }
        }
        Self::build(config, self.clock.clone(), kept).await
    }

    /// `kept`: URIs of a previous broker that may be reused as they are.
    async fn build(
        config: &Config,
        clock: Arc<Clock>,
        kept: UriIndex,
    ) -> Result<Self, ConfigError> {
        let mut keys = BTreeMap::new();
        let mut built = UriIndex::default();
        let mut distinct = Vec::new();
        for (name, k) in &config.keys {
            let mut uris = Vec::with_capacity(k.uris.len());
            for (i, uri) in k.uris.iter().enumerate() {
                if let Some(shared) = built.find(uri) {
                    uris.push(shared);
                    continue;
                }
                if let Some(kept) = kept.find(uri) {
                    built.insert(kept.clone());
                    distinct.push((name.clone(), kept.clone()));
                    uris.push(kept);
                    continue;
                }
                let inner: Arc<dyn KmsBackend> =
                    backend::connect(uri).await.map_err(|problem| {
                        ConfigError::new(
                            &config.file,
                            format!("keys.{name}.uris[{i}]"),
                            format!("{}: {problem}", uri.redacted()),
                            "correct the URI or the files and variables it names",
                        )
                    })?;
                let fresh = Arc::new(KmsUri::new(
                    uri.clone(),
                    Resilient::new(inner, config.kms),
                    config.max_in_flight,
                ));
                built.insert(fresh.clone());
                distinct.push((name.clone(), fresh.clone()));
                uris.push(fresh);
            }
            let name = name.clone();
            let key = Key {
                name: name.clone(),
                uris,
                wrap_mode: k.wrap_mode,
            };
            keys.insert(name, key);
        }
        Ok(Self {
            keys,
            uris: distinct,
            clock,
            grace: config.revocation.grace_period,
            hedge_after: config.hedge_after,
            cache: UnwrapCache::new(config.cache.max_age, config.cache.max_entries),
        })
    }

    /// The configured key, or NOT_FOUND.
    pub fn key(&self, name: &KeyName) -> Result<&Key, Error> {
        self.keys
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("no key named {:?}", name.as_str())))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.keys.values()
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn status(&self, name: &KeyName) -> Option<KeyStatus> {
        self.keys.get(name).map(Key::status)
    }

    /// Whether material already held for `key` (a store key) may be handed out now.
    pub fn may_hand_out_held(&self, key: &KeyName) -> Result<(), Error> {
        self.key(key)?.may_hand_out_held(self.grace)
    }

    /// UnwrapKey: [`Broker::unwrap`] behind the coalescing cache (see
    /// [`crate::unwrap_cache`]). `blob` is the bytes `env` was decoded from.
    pub async fn unwrap_shared(
        &self,
        blob: &[u8],
        env: &Envelope,
        context: BTreeMap<String, String>,
    ) -> Result<Arc<Shared>, Error> {
        self.key(&env.key_name)?;
        let id = crate::unwrap_cache::id(blob, &context);
        let allowed = |k: &KeyName| self.may_hand_out_held(k).is_ok();
        self.cache
            .get_or_unwrap(id, allowed, || async {
                let u = self.unwrap(env, context).await?;
                Ok(Shared {
                    key: env.key_name.clone(),
                    plaintext: u.plaintext,
                    key_version: u.key_version,
                })
            })
            .await
    }

    /// Drops cached plaintexts that are expired or whose key may no longer hand out held
    /// material (zeroized as they go).
    pub fn purge_cache(&self) {
        let dropped = self.cache.purge(|k| self.may_hand_out_held(k).is_ok());
        if dropped > 0 {
            tracing::debug!(dropped, "purged cached unwraps");
        }
    }

    pub fn cache_stats(&self) -> crate::unwrap_cache::CacheStats {
        self.cache.stats()
    }

    /// Wraps under every URI of `key` (concurrently), binding the key name and `context`.
    /// In `strict` mode every URI must wrap; in `available` mode the URIs that answer do,
    /// and the others are reported in [`Wrapped::missing`].
    pub async fn wrap(
        &self,
        key: &KeyName,
        plaintext: &SecretBytes,
        context: BTreeMap<String, String>,
    ) -> Result<Wrapped, Error> {
        let k = self.key(key)?;
        let strict = k.wrap_mode == WrapMode::Strict;
        if strict {
            k.gate_wrap()?;
        } else {
            k.gate_any()?;
        }
        let aad = Aad::new(key.as_str(), context);
        for u in &k.uris {
            u.backend
                .check_size(plaintext.len(), &aad)
                .map_err(|e| kms_error(key, e))?;
        }
        // In available mode a denied URI is not even asked, nor (while another is ACTIVE) one
        // the poller already found unreachable: every wrap would otherwise wait out the KMS
        // deadline for the whole outage. The gap is filled when it is back.
        let any_active = k.uris.iter().any(|u| u.state() == KeyState::Active);
        // ("Not checked yet" also reads UNREACHABLE: that URI is asked.)
        let asked: Vec<&KmsUri> = k
            .uris
            .iter()
            .map(|u| &**u)
            .filter(|u| {
                let s = u.status();
                match s.state {
                    _ if strict => true,
                    KeyState::Unreachable => !any_active || s.checked_at.is_none(),
                    state => !state.is_revoked_kind(),
                }
            })
            .collect();
        let aad = &aad;
        let calls = asked.iter().map(|u| {
            let ticket = self.clock.ticket(Source::Use);
            async move {
                let _turn = u.turn().await;
                let started = Instant::now();
                let r = u.backend.encrypt(plaintext, aad).await;
                (ticket, started.elapsed(), r)
            }
        });
        let results = join_all(calls).await;
        let mut entries = Vec::with_capacity(k.uris.len());
        let mut failure: Option<BackendError> = None;
        for (u, (ticket, took, r)) in asked.iter().zip(results) {
            match r {
                Ok(ct) => {
                    u.record(&self.clock, key, ticket, Ok(None));
                    u.note_latency(took);
                    if !ct.key_version.is_empty() {
                        u.note_version(&ct.key_version);
                    }
                    entries.push(Entry {
                        uri_id: u.id.clone(),
                        key_version: ct.key_version,
                        ciphertext: ct.bytes,
                    });
                }
                Err(e) => {
                    u.record(&self.clock, key, ticket, Err(&e));
                    tracing::warn!(%key, uri = %u.uri.redacted(), detail = %e.detail, "wrap failed");
                    failure = Some(worse(failure, e));
                }
            }
        }
        match failure {
            Some(e) if strict || entries.is_empty() => return Err(kms_error(key, e)),
            // Caller-shaped: no URI would have taken it.
            Some(e) if e.class == FailureClass::InvalidRequest => return Err(kms_error(key, e)),
            _ => {}
        }
        if strict {
            k.gate_wrap()?;
        } else {
            k.gate_any()?;
        }
        let missing: Vec<String> = k
            .uris
            .iter()
            .filter(|u| entries.iter().all(|e| e.uri_id != u.id))
            .map(|u| u.uri.redacted())
            .collect();
        let key_version = entries
            .iter()
            .map(|e| e.key_version.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let blob = Envelope::seal(key, &entries, plaintext)?;
        Ok(Wrapped {
            blob,
            key_version,
            missing,
        })
    }

    /// Every distinct URI once, with the first key (by name) that lists it.
    pub fn uris(&self) -> impl Iterator<Item = (&KeyName, &Arc<KmsUri>)> {
        self.uris.iter().map(|(k, u)| (k, u))
    }

    /// Checks every distinct URI once, concurrently, and records the answers.
    pub async fn poll_once(&self) {
        let checks = self.uris.iter().map(|(key, u)| {
            let ticket = self.clock.ticket(Source::Check);
            async move {
                let r = u.backend.check().await;
                let r = match &r {
                    Ok(h) => {
                        if let Some(v) = &h.version {
                            u.note_version(v);
                        }
                        Ok(Some(h.detail.as_str()))
                    }
                    Err(e) => Err(e),
                };
                u.record(&self.clock, key, ticket, r);
            }
        });
        join_all(checks).await;
    }
}

/// URIs by their identity, to find one with the same full text (credentials included).
#[derive(Default)]
struct UriIndex(HashMap<String, Vec<Arc<KmsUri>>>);

impl UriIndex {
    fn insert(&mut self, u: Arc<KmsUri>) {
        self.0.entry(u.id.clone()).or_default().push(u);
    }

    fn find(&self, uri: &crate::key_uri::KeyUri) -> Option<Arc<KmsUri>> {
        self.0
            .get(&uri.id())?
            .iter()
            .find(|u| u.uri == *uri)
            .cloned()
    }
}

/// Of two failures, the one that says more: a request or ciphertext the KMS refused beats
/// a revoked key, which beats an unreachable KMS.
fn worse(prev: Option<BackendError>, e: BackendError) -> BackendError {
    fn rank(c: FailureClass) -> u8 {
        match c {
            FailureClass::InvalidCiphertext | FailureClass::InvalidRequest => 3,
            FailureClass::Disabled | FailureClass::Revoked | FailureClass::Destroyed => 2,
            FailureClass::Unreachable => 1,
        }
    }
    match prev {
        Some(p) if rank(p.class) >= rank(e.class) => p,
        _ => e,
    }
}

/// A classified KMS failure as the caller sees it.
pub fn kms_error(key: &KeyName, e: BackendError) -> Error {
    match (e.class, e.class.key_state()) {
        (FailureClass::InvalidCiphertext, _) => Error::invalid(DOES_NOT_AUTHENTICATE),
        (FailureClass::InvalidRequest, _) => Error::invalid(e.detail),
        (FailureClass::Unreachable, _) | (_, None) => Error::Unavailable(format!(
            "the KMS for key {:?} did not answer: {}",
            key.as_str(),
            e.detail
        )),
        (_, Some(state)) if e.version_only => Error::VersionNotUsable {
            key: key.to_string(),
            state,
            detail: e.detail,
        },
        (_, Some(state)) => Error::KeyNotUsable {
            key: key.to_string(),
            state,
            detail: e.detail,
        },
    }
}

#[cfg(test)]
mod tests;
