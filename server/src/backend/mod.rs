//! KMS backends behind one async trait of ours.
//!
//! Each backend speaks to one KMS key (one configured URI) and classifies its vendor's
//! errors where they happen, per operation, into [`FailureClass`] (STYLE lesson 3). The rest
//! of the daemon never sees a vendor error type. Deadlines and retries are not a backend's
//! concern: [`resilient::Resilient`] wraps every backend with the same policy.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::key_uri::KeyUri;
use crate::secret::SecretBytes;
use crate::state::KeyState;

#[cfg(feature = "aws")]
pub mod aws;
pub mod breaker;
pub mod bucket;
pub mod budget;
pub mod error_text;
pub mod file;
#[cfg(feature = "gcp")]
pub mod gcp;
#[cfg(feature = "mock-kms")]
pub mod mock;
pub mod net;
pub mod params;
pub mod protect;
pub mod resilient;
#[cfg(feature = "vault")]
pub mod vault;

/// How a KMS call failed, in the contract's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The key is switched off, reversibly.
    Disabled,
    /// Our permission to use the key was taken away (403, access denied, bad credentials).
    Revoked,
    /// The key is deleted or scheduled for deletion.
    Destroyed,
    /// Network error, timeout, 5xx, throttling: worth retrying, then UNREACHABLE.
    Unreachable,
    /// The ciphertext does not decrypt under this key with this AAD (tampered, other key,
    /// other context). Not a key-state change.
    InvalidCiphertext,
    /// The KMS refused the request itself, not the key: too large, a bad parameter, a
    /// malformed ciphertext. The caller shaped it, so it never changes a key's state
    /// (INVALID_ARGUMENT to the caller).
    InvalidRequest,
}

impl FailureClass {
    /// The key state a failure of this class implies, if any.
    pub fn key_state(self) -> Option<KeyState> {
        match self {
            FailureClass::Disabled => Some(KeyState::Disabled),
            FailureClass::Revoked => Some(KeyState::Revoked),
            FailureClass::Destroyed => Some(KeyState::Destroyed),
            FailureClass::Unreachable => Some(KeyState::Unreachable),
            FailureClass::InvalidCiphertext | FailureClass::InvalidRequest => None,
        }
    }

    pub fn is_retryable(self) -> bool {
        self == FailureClass::Unreachable
    }
}

/// A classified KMS failure. `detail` is short, human and free of secrets (no credentials,
/// no secret URI parameters, no key bytes): it reaches logs and RevokeStatus.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{class:?}: {detail}")]
pub struct BackendError {
    pub class: FailureClass,
    pub detail: String,
    /// The failure is about one key VERSION (the one this ciphertext names: Cloud KMS
    /// disables versions one by one), not the key: the caller is refused, the URI's state
    /// is left to the status check.
    pub version_only: bool,
    /// The KMS said "slow down" (AWS ThrottlingException, GCP RESOURCE_EXHAUSTED, Vault 429):
    /// [`resilient::Resilient`] backs off longer and pauses the URI's token bucket instead of
    /// retrying at once. Always with class [`FailureClass::Unreachable`].
    pub throttled: bool,
    /// How long the KMS asked us to wait (Retry-After, RetryInfo), where it said.
    pub retry_after: Option<std::time::Duration>,
    /// Refused here, without calling the KMS (our own token bucket or open circuit breaker):
    /// says nothing about the key, so it is never evidence of a key state.
    pub local: bool,
    /// Whether trying again soon can help. True unless the backend knows better: an
    /// Unreachable answer such as "not implemented" or "the API is disabled in the project"
    /// is the same on every attempt (see [`BackendError::not_retryable`]).
    pub retryable: bool,
}

impl BackendError {
    pub fn new(class: FailureClass, detail: impl Into<String>) -> Self {
        Self {
            class,
            detail: detail.into(),
            version_only: false,
            throttled: false,
            retry_after: None,
            local: false,
            retryable: true,
        }
    }
    /// Marks the failure as one that retrying will not fix (see [`BackendError::retryable`]).
    pub fn not_retryable(mut self) -> Self {
        self.retryable = false;
        self
    }
    /// Whether the retry policy should try again: an unreachable KMS, unless the backend
    /// said that retrying cannot help.
    pub fn should_retry(&self) -> bool {
        self.class.is_retryable() && self.retryable
    }
    /// The KMS throttled us; `retry_after` is its hint, where it gave one.
    pub fn throttled(detail: impl Into<String>, retry_after: Option<std::time::Duration>) -> Self {
        let mut e = Self::unreachable(detail);
        e.throttled = true;
        e.retry_after = retry_after;
        e
    }
    /// Refused before reaching the KMS (see [`BackendError::local`]).
    pub fn local(detail: impl Into<String>) -> Self {
        let mut e = Self::unreachable(detail);
        e.local = true;
        e
    }
    /// Marks the failure as about one key version only (see [`BackendError::version_only`]).
    pub fn version_scoped(mut self) -> Self {
        self.version_only = true;
        self
    }
    /// The request was refused for its own shape (size, parameters): never a key-state change.
    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(FailureClass::InvalidRequest, detail)
    }
    /// The key state this failure is evidence of, if any: none for a failure the caller's
    /// request shaped, or one about a single key version.
    pub fn evidence(&self) -> Option<KeyState> {
        if self.version_only || self.local {
            None
        } else {
            self.class.key_state()
        }
    }
    pub fn unreachable(detail: impl Into<String>) -> Self {
        Self::new(FailureClass::Unreachable, detail)
    }
    pub fn invalid_ciphertext(detail: impl Into<String>) -> Self {
        Self::new(FailureClass::InvalidCiphertext, detail)
    }
}

/// The authenticated data every wrap binds: the envelope format, the key NAME and the
/// caller's context.
///
/// Backends with a map-shaped context (AWS EncryptionContext) use [`Aad::context_map`];
/// those with bytes-shaped AAD (GCP, Vault, AES-GCM) use [`Aad::bytes`], a canonical,
/// length-prefixed encoding, so `{"a":"bc"}` and `{"ab":"c"}` differ.
///
/// The envelope format is bound so that a current blob cannot be passed off as an older
/// format with weaker header checks: its ciphertexts would not authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aad {
    format: AadFormat,
    key_name: String,
    context: BTreeMap<String, String>,
}

/// Which envelope format an [`Aad`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AadFormat {
    /// Envelope version 1: name and context only.
    V1,
    /// Envelope version 2: also binds the format itself.
    V2,
}

/// The reserved context key that carries the envelope format in map-shaped contexts.
pub const FORMAT_CONTEXT: &str = "kms-broker:envelope";

/// The reserved context key that carries the key name in map-shaped contexts. Callers may
/// not use keys with the `kms-broker:` prefix.
pub const KEY_NAME_CONTEXT: &str = "kms-broker:key";
pub const RESERVED_CONTEXT_PREFIX: &str = "kms-broker:";

impl Aad {
    /// The AAD of the current envelope format.
    pub fn new(key_name: &str, context: BTreeMap<String, String>) -> Self {
        Self::with_format(AadFormat::V2, key_name, context)
    }

    pub fn with_format(
        format: AadFormat,
        key_name: &str,
        context: BTreeMap<String, String>,
    ) -> Self {
        Self {
            format,
            key_name: key_name.to_owned(),
            context,
        }
    }

    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// Canonical bytes: "kms-broker/aad/v1" (or v2), then the name, then (k, v) pairs in
    /// key order, as u32-BE length-prefixed strings.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = match self.format {
            AadFormat::V1 => b"kms-broker/aad/v1".to_vec(),
            AadFormat::V2 => b"kms-broker/aad/v2".to_vec(),
        };
        let mut put = |s: &str| {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        };
        put(&self.key_name);
        for (k, v) in &self.context {
            put(k);
            put(v);
        }
        out
    }

    /// The context plus the key name under [`KEY_NAME_CONTEXT`] (and, from format 2 on,
    /// the format under [`FORMAT_CONTEXT`]).
    pub fn context_map(&self) -> BTreeMap<String, String> {
        let mut m = self.context.clone();
        m.insert(KEY_NAME_CONTEXT.to_owned(), self.key_name.clone());
        if self.format == AadFormat::V2 {
            m.insert(FORMAT_CONTEXT.to_owned(), "2".to_owned());
        }
        m
    }

    /// Bytes of the caller's part (name and context) as the KMS will see them: what a
    /// backend compares with its vendor's AAD limit.
    pub fn encoded_len(&self) -> usize {
        self.bytes().len()
    }
}

/// One KMS-wrapped copy of the plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ciphertext {
    pub bytes: Vec<u8>,
    /// What the KMS says wrapped it (GCP CryptoKeyVersion, Vault `vN`); may be empty.
    pub key_version: String,
}

/// What a Decrypt recovered.
#[derive(Debug)]
pub struct Decrypted {
    pub plaintext: SecretBytes,
    /// The key version that decrypted, as the KMS said or as the AUTHENTICATED ciphertext
    /// names it (Vault's `vault:vN:` prefix); `None` where neither tells. Never read from
    /// an envelope's header.
    pub key_version: Option<String>,
}

/// What a status check found about a reachable, usable key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyHealth {
    /// E.g. the primary version; shown in RevokeStatus.
    pub detail: String,
    /// The version a new Encrypt would use now, in the form Encrypt reports it (so a
    /// wrapped entry's version can be compared with it); `None` where the KMS hides versions
    /// (AWS rotates behind one key id).
    pub version: Option<String>,
}

/// One KMS key, reached through one configured URI.
#[async_trait]
pub trait KmsBackend: Send + Sync + fmt::Debug + 'static {
    /// Wraps `plaintext` (1..=4096 bytes) binding `aad`.
    async fn encrypt(&self, plaintext: &SecretBytes, aad: &Aad)
        -> Result<Ciphertext, BackendError>;

    /// Unwraps a ciphertext this backend made. `key_version` is what `encrypt` reported
    /// (from an authenticated envelope, but only a hint: use it to explain failures).
    async fn decrypt(
        &self,
        ciphertext: &[u8],
        key_version: &str,
        aad: &Aad,
    ) -> Result<Decrypted, BackendError>;

    /// Refuses, before any KMS call, a request over the vendor's documented limits on
    /// plaintext (or ciphertext) plus AAD, with [`FailureClass::InvalidRequest`]. The
    /// default accepts everything the contract does (4 KiB plaintext, 8 KiB context).
    fn check_size(&self, _payload_len: usize, _aad: &Aad) -> Result<(), BackendError> {
        Ok(())
    }

    /// A key on this machine (the file key): there is no remote KMS to protect, so calls
    /// skip the token bucket and the circuit breaker.
    fn is_local(&self) -> bool {
        false
    }

    /// A cheap check that the key exists, is enabled and that we may use it. Prefer
    /// metadata calls over paid crypto where the KMS offers them.
    async fn check(&self) -> Result<KeyHealth, BackendError>;
}

/// Builds the backend for a parsed URI. Must not contact the KMS: a daemon starts even
/// while its KMS is down (and then hands out nothing until it answers).
pub async fn connect(uri: &KeyUri) -> Result<Arc<dyn KmsBackend>, String> {
    match uri {
        KeyUri::File(u) => Ok(Arc::new(file::FileBackend::new(u.clone()))),
        #[cfg(feature = "mock-kms")]
        KeyUri::Mock(u) => Ok(Arc::new(mock::MockBackend::named(&u.name))),
        #[cfg(feature = "aws")]
        KeyUri::Aws(u) => Ok(Arc::new(aws::AwsBackend::new(u.clone()).await?)),
        #[cfg(feature = "gcp")]
        KeyUri::Gcp(u) => Ok(Arc::new(gcp::GcpBackend::new(u.clone()).await?)),
        #[cfg(feature = "vault")]
        KeyUri::Vault(u) => Ok(Arc::new(vault::VaultBackend::new(u.clone()).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aad_bytes_are_unambiguous() {
        let a = Aad::new("k", BTreeMap::from([("a".into(), "bc".into())]));
        let b = Aad::new("k", BTreeMap::from([("ab".into(), "c".into())]));
        assert_ne!(a.bytes(), b.bytes());
        let c = Aad::new("k2", BTreeMap::new());
        assert_ne!(Aad::new("k", BTreeMap::new()).bytes(), c.bytes());
    }

    #[test]
    fn context_map_carries_the_name() {
        let a = Aad::new("primary", BTreeMap::from([("x".into(), "y".into())]));
        let m = a.context_map();
        assert_eq!(m.get(KEY_NAME_CONTEXT).map(String::as_str), Some("primary"));
        assert_eq!(m.get("x").map(String::as_str), Some("y"));
    }
}
