//! The work behind the RPCs, free of gRPC types: wrap and unwrap under configured keys,
//! poll key states. Store keys are in [`crate::stores`], which uses this.
//!
//! Every KMS answer is recorded in the [`Tracker`], so revocation seen by a real call takes
//! effect at once, not only at the next poll.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::join_all;

use crate::backend::resilient::Resilient;
use crate::backend::{self, Aad, BackendError, FailureClass, KmsBackend};
use crate::config::{Config, ConfigError};
use crate::envelope::{Entry, Envelope};
use crate::error::Error;
use crate::key_uri::KeyUri;
use crate::revocation::{KeyStatus, Tracker};
use crate::secret::SecretBytes;

/// One configured KMS URI and its backend.
#[derive(Debug)]
pub struct UriBackend {
    pub uri: KeyUri,
    /// `uri.id()`, which envelopes record; computed once, as every call compares it.
    pub id: String,
    pub backend: Resilient,
}

/// What WrapKey made.
#[derive(Debug)]
pub struct Wrapped {
    pub blob: Vec<u8>,
    pub key_version: String,
}

/// What UnwrapKey recovered.
#[derive(Debug)]
pub struct Unwrapped {
    pub plaintext: SecretBytes,
    pub key_version: String,
}

/// Configured keys with their backends and states.
#[derive(Debug)]
pub struct Broker {
    keys: BTreeMap<String, Vec<UriBackend>>,
    tracker: Tracker,
}

impl Broker {
    /// Builds a backend per URI. Contacts no KMS. A backend that cannot even be built (a
    /// token file that is missing, a CA file that does not parse) is a config error.
    pub async fn new(config: &Config) -> Result<Self, ConfigError> {
        let mut keys = BTreeMap::new();
        for (name, k) in &config.keys {
            let mut uris = Vec::with_capacity(k.uris.len());
            for (i, uri) in k.uris.iter().enumerate() {
                let inner: Arc<dyn KmsBackend> =
                    backend::connect(uri).await.map_err(|problem| ConfigError {
                        file: config.file.clone(),
                        field: format!("keys.{name}.uris[{i}]"),
                        problem: format!("{}: {problem}", uri.redacted()),
                        fix: "correct the URI or the files and variables it names".into(),
                    })?;
                uris.push(UriBackend {
                    uri: uri.clone(),
                    id: uri.id(),
                    backend: Resilient::new(inner, config.kms),
                });
            }
            keys.insert(name.clone(), uris);
        }
        let tracker = Tracker::new(
            keys.iter().map(|(n, u): (&String, &Vec<UriBackend>)| {
                (n.as_str(), u.iter().map(|u| u.uri.redacted()).collect())
            }),
            config.revocation.grace_period,
        );
        Ok(Self { keys, tracker })
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    pub fn has_key(&self, name: &str) -> bool {
        self.keys.contains_key(name)
    }

    fn uris(&self, name: &str) -> Result<&[UriBackend], Error> {
        self.keys
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| Error::NotFound(format!("no key named {name:?}")))
    }

    /// Wraps under EVERY URI of `key` (concurrently), binding the key name and `context`.
    pub async fn wrap(
        &self,
        key: &str,
        plaintext: &SecretBytes,
        context: BTreeMap<String, String>,
    ) -> Result<Wrapped, Error> {
        let uris = self.uris(key)?;
        self.tracker.gate_wrap(key)?;
        let aad = Aad::new(key, context);
        let results = join_all(uris.iter().map(|u| u.backend.encrypt(plaintext, &aad))).await;
        let mut entries = Vec::with_capacity(uris.len());
        let mut failure: Option<BackendError> = None;
        for (i, (u, r)) in uris.iter().zip(results).enumerate() {
            match r {
                Ok(ct) => {
                    self.tracker.record_use(key, i);
                    entries.push(Entry {
                        uri_id: u.id.clone(),
                        key_version: ct.key_version,
                        ciphertext: ct.bytes,
                    });
                }
                Err(e) => {
                    self.tracker.record(key, i, Err(&e));
                    tracing::warn!(key, uri = %u.uri.redacted(), detail = %e.detail, "wrap failed");
                    failure = Some(worse(failure, e));
                }
            }
        }
        if let Some(e) = failure {
            return Err(kms_error(key, e));
        }
        let key_version = entries
            .iter()
            .map(|e| e.key_version.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let blob = Envelope {
            key_name: key.to_owned(),
            entries,
        }
        .encode();
        Ok(Wrapped { blob, key_version })
    }

    /// Unwraps with the first configured URI that can: ACTIVE URIs first, revoked kinds
    /// never. URIs come from the config, matched by id; the blob only says which.
    pub async fn unwrap(
        &self,
        envelope: &Envelope,
        context: BTreeMap<String, String>,
    ) -> Result<Unwrapped, Error> {
        let key = envelope.key_name.as_str();
        let uris = self.uris(key)?;
        self.tracker.gate_any(key)?;
        let aad = Aad::new(key, context);

        // (uri index, entry), usable URIs only, ACTIVE before UNREACHABLE.
        let mut candidates: Vec<(usize, &Entry)> = envelope
            .entries
            .iter()
            .filter_map(|e| uris.iter().position(|u| u.id == e.uri_id).map(|i| (i, e)))
            .collect();
        if candidates.is_empty() {
            return Err(Error::invalid(format!(
                "wrapped was made by KMS keys that are not configured for key {key:?}"
            )));
        }
        candidates.sort_by_key(|(i, _)| self.tracker.uri_state(key, *i));
        let mut failure: Option<BackendError> = None;
        for (i, entry) in candidates {
            if self
                .tracker
                .uri_state(key, i)
                .is_some_and(|s| s.is_revoked_kind())
            {
                continue;
            }
            let u = &uris[i];
            match u
                .backend
                .decrypt(&entry.ciphertext, &entry.key_version, &aad)
                .await
            {
                Ok(d) => {
                    self.tracker.record_use(key, i);
                    return Ok(Unwrapped {
                        plaintext: d.plaintext,
                        key_version: d.key_version.unwrap_or_default(),
                    });
                }
                Err(e) => {
                    // Only an unreachable KMS is news about the whole URI here. A refused
                    // Decrypt may be about this blob's key version alone (Cloud KMS disables
                    // versions one by one), so key states come from the status check and
                    // from Encrypt, which always uses the primary.
                    if e.class == FailureClass::Unreachable {
                        self.tracker.record(key, i, Err(&e));
                    }
                    tracing::debug!(key, uri = %u.uri.redacted(), detail = %e.detail, "unwrap attempt failed");
                    failure = Some(worse(failure, e));
                }
            }
        }
        match failure {
            Some(e) => Err(kms_error(key, e)),
            // Every candidate URI is of a revoked kind.
            None => Err(self.tracker.gate_any(key).err().unwrap_or_else(|| {
                Error::Unavailable(format!("no usable KMS URI for key {key:?}"))
            })),
        }
    }

    /// Checks every URI of every key once, concurrently, and records the answers.
    pub async fn poll_once(&self) {
        let checks = self.keys.iter().flat_map(|(name, uris)| {
            uris.iter().enumerate().map(move |(i, u)| async move {
                let r = u.backend.check().await;
                (name.as_str(), i, r)
            })
        });
        for (name, i, r) in join_all(checks).await {
            match r {
                Ok(h) => self.tracker.record(name, i, Ok(&h.detail)),
                Err(e) => self.tracker.record(name, i, Err(&e)),
            }
        }
    }

    pub fn status(&self, key: &str) -> Option<KeyStatus> {
        self.tracker.status(key)
    }
}

/// Of two failures, the one that says more: a ciphertext that does not authenticate beats
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
pub fn kms_error(key: &str, e: BackendError) -> Error {
    match e.class {
        FailureClass::InvalidCiphertext => Error::invalid(
            "wrapped does not authenticate (tampered, another key, or another context)",
        ),
        FailureClass::InvalidRequest => Error::invalid(e.detail),
        FailureClass::Unreachable => Error::Unavailable(format!(
            "the KMS for key {key:?} did not answer: {}",
            e.detail
        )),
        c => Error::KeyNotUsable {
            key: key.to_owned(),
            state: c.key_state().expect("revoked kinds have a state"),
            detail: e.detail,
        },
    }
}
