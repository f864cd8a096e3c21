//! `aws:///…`: AWS KMS, through the official Rust SDK (`aws-sdk-kms`).
//!
//! - **wrap** is `Encrypt` under the URI's key with the EncryptionContext
//!   [`Aad::context_map`] (the caller's context plus the key name), so KMS itself binds the
//!   context and CloudTrail shows it.
//! - **unwrap** is `Decrypt` naming the URI's `KeyId` and the same context. Naming the key
//!   means a ciphertext never chooses which KMS key is used: a blob made under another key
//!   fails `IncorrectKeyException` (INVALID_ARGUMENT). Consequence: re-pointing an alias
//!   strands blobs wrapped through the old target; name keys by ARN or id where aliases move.
//! - **key_version** is empty: AWS rotates symmetric key material transparently and old
//!   ciphertexts name their backing key themselves.
//! - **check** is `DescribeKey` (KeyState, Enabled, usage), plus a *proof of use*.
//!
//! # Proof of use, and what it costs
//!
//! DescribeKey cannot show that our `kms:Decrypt` permission was taken away (a revoked
//! grant, a key-policy or IAM `Deny` on Encrypt/Decrypt only): describing still works. So
//! `check` also proves, at most every [`PROOF_INTERVAL`] (10 minutes), that it can still
//! Encrypt and Decrypt, by wrapping and unwrapping a fixed canary under a fixed context
//! (`kms-broker:purpose=liveness-canary`; callers cannot use the `kms-broker:` prefix, so the
//! canary can never pass for a real blob). A real wrap or unwrap that succeeds counts as
//! proof of that half, so a busy daemon pays for no canaries at all.
//!
//! Cost at the default 30 s poll, per key URI per daemon: 120 DescribeKey + at most 6
//! Encrypt + 6 Decrypt = **at most 132 billable KMS requests an hour** (about 96,000 a month;
//! at $0.03 per 10,000 requests about $0.29 a month per node and key), all well inside the
//! request quotas. Revocation that DescribeKey itself sees (a policy denying everything,
//! deleted or expired credentials) is REVOKED at the next poll; a Decrypt-only revocation
//! within one proof interval, or at once on a node whose real Decrypt is refused: an
//! `AccessDeniedException` on Encrypt or Decrypt is REVOKED for the whole key (AWS has no
//! per-version grants), never scoped to one blob. AWS offers no free way to test the
//! permission: `DryRun` is billed and rate-limited like the real call.
//!
//! # Limits (AWS KMS API reference)
//!
//! `Encrypt` takes at most 4096 bytes of plaintext ([`MAX_PLAINTEXT`]), refused before the
//! call; `Decrypt` takes a `CiphertextBlob` of 1 to 6144 bytes ([`MAX_CIPHERTEXT`]): a
//! longer blob is refused as a bad ciphertext without a (billable) call. AWS documents no
//! size limit on the encryption context small enough to matter here, so none is applied;
//! should KMS refuse one anyway, the `ValidationException` is the caller's request
//! (INVALID_ARGUMENT), never a key-state change.
//!
//! # Errors
//!
//! One attempt per call: the SDK's own retries are off (`max_attempts` 1) and it gets a
//! 2 s connect timeout and a 5 s attempt timeout, so the daemon's retry policy and deadline
//! ([`super::resilient`]) hold. Classification per operation is in `classify`; every
//! detail is scrubbed of the URI's credentials before it leaves this module.

mod classify;
mod uri;

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kms::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_kms::operation::RequestId;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::Client;
use tokio::time::Instant;

use self::uri::Auth;
pub use self::uri::AwsUri;
use super::{Aad, BackendError, Ciphertext, Decrypted, FailureClass, KeyHealth, KmsBackend};
use crate::secret::SecretBytes;

/// How often `check` proves it can still Encrypt and Decrypt (see the module docs).
pub const PROOF_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// Longest the SDK may spend opening a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest one SDK attempt (connect, send, answer) may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The documented maximum plaintext of `Encrypt` (symmetric keys, SYMMETRIC_DEFAULT).
pub const MAX_PLAINTEXT: usize = 4096;
/// The documented maximum `CiphertextBlob` of `Decrypt`.
pub const MAX_CIPHERTEXT: usize = 6144;

const CANARY: &[u8] = b"kms-broker liveness canary v1";
const CANARY_CONTEXT: (&str, &str) = ("kms-broker:purpose", "liveness-canary");
const ROLE_SESSION_NAME: &str = "kms-broker";

/// One AWS KMS key, reached through one `aws:///` URI.
pub struct AwsBackend {
    uri: AwsUri,
    client: Client,
    proof_interval: Duration,
    proven: Mutex<Proven>,
}

/// When each half of "we may use this key" was last shown by a successful call.
#[derive(Debug, Default)]
struct Proven {
    encrypt: Option<Instant>,
    decrypt: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
enum Half {
    Encrypt,
    Decrypt,
}

impl Proven {
    fn slot(&mut self, half: Half) -> &mut Option<Instant> {
        match half {
            Half::Encrypt => &mut self.encrypt,
            Half::Decrypt => &mut self.decrypt,
        }
    }
}

impl AwsBackend {
    /// Builds the SDK client. Contacts nothing: credentials (the default chain, STS for
    /// `ASSUME_ROLE`) are fetched lazily by the first call and cached by the SDK.
    pub async fn new(uri: AwsUri) -> Result<Self, String> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(uri.region.clone()))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(1));
        if let Auth::Specified {
            access_key_id,
            secret_access_key,
            session_token,
        } = &uri.auth
        {
            loader = loader.credentials_provider(Credentials::new(
                access_key_id,
                secret_access_key.expose(),
                session_token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "kms-broker key URI",
            ));
        }
        let mut sdk = loader.load().await;
        for hop in &uri.assume_role {
            sdk = assume_role(sdk, hop).await;
        }
        let mut conf = aws_sdk_kms::config::Builder::from(&sdk);
        if let Some(endpoint) = &uri.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        Ok(Self {
            client: Client::from_conf(conf.build()),
            uri,
            proof_interval: PROOF_INTERVAL,
            proven: Mutex::new(Proven::default()),
        })
    }

    /// Overrides [`PROOF_INTERVAL`]; `Duration::ZERO` proves on every check (tests).
    pub fn with_proof_interval(mut self, every: Duration) -> Self {
        self.proof_interval = every;
        self
    }

    /// The scrubbed error, after forgetting a proof that the failure disproves.
    fn failed(&self, half: Option<Half>, mut err: BackendError) -> BackendError {
        for secret in self.uri.secrets() {
            err.detail = err.detail.replace(secret, "redacted");
        }
        let lost_access = matches!(
            err.class,
            FailureClass::Revoked | FailureClass::Disabled | FailureClass::Destroyed
        );
        if lost_access {
            let mut proven = self.proven_mut();
            match half {
                Some(half) => *proven.slot(half) = None,
                None => *proven = Proven::default(),
            }
        }
        err
    }

    fn proved(&self, half: Half) {
        *self.proven_mut().slot(half) = Some(Instant::now());
    }

    fn proven_mut(&self) -> std::sync::MutexGuard<'_, Proven> {
        // The guarded data is two timestamps: a panic elsewhere cannot leave them torn.
        self.proven.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn proof_due(&self) -> bool {
        let p = self.proven_mut();
        let fresh = |t: Option<Instant>| t.is_some_and(|t| t.elapsed() < self.proof_interval);
        !fresh(p.encrypt) || !fresh(p.decrypt)
    }

    async fn kms_encrypt(
        &self,
        plaintext: &[u8],
        context: HashMap<String, String>,
    ) -> Result<Vec<u8>, BackendError> {
        // The SDK takes an owned Blob; this copy lives only as long as the request.
        let out = self
            .client
            .encrypt()
            .key_id(&self.uri.key)
            .plaintext(Blob::new(plaintext.to_vec()))
            .set_encryption_context(Some(context))
            .send()
            .await;
        note_request_id(&out);
        let out = out.map_err(|e| self.failed(Some(Half::Encrypt), classify::encrypt(&e)))?;
        let blob = out.ciphertext_blob.ok_or_else(|| {
            BackendError::unreachable("Encrypt answered without a CiphertextBlob")
        })?;
        self.proved(Half::Encrypt);
        Ok(blob.into_inner())
    }

    async fn kms_decrypt(
        &self,
        ciphertext: &[u8],
        context: HashMap<String, String>,
    ) -> Result<SecretBytes, BackendError> {
        let out = self
            .client
            .decrypt()
            .key_id(&self.uri.key)
            .ciphertext_blob(Blob::new(ciphertext.to_vec()))
            .set_encryption_context(Some(context))
            .send()
            .await;
        note_request_id(&out);
        let out = out.map_err(|e| self.failed(Some(Half::Decrypt), classify::decrypt(&e)))?;
        let plaintext = out
            .plaintext
            .ok_or_else(|| BackendError::unreachable("Decrypt answered without a Plaintext"))?;
        self.proved(Half::Decrypt);
        Ok(SecretBytes::new(plaintext.into_inner()))
    }

    /// Wraps and unwraps the canary: fails as the real calls would if we lost either right.
    async fn prove_use(&self) -> Result<(), BackendError> {
        let context =
            || HashMap::from([(CANARY_CONTEXT.0.to_owned(), CANARY_CONTEXT.1.to_owned())]);
        let proof = |mut e: BackendError| {
            e.detail = format!("proof of use: {}", e.detail);
            // The canary is ours and intact; failing to open it is not a caller's bad blob.
            if e.class == FailureClass::InvalidCiphertext {
                e.class = FailureClass::Unreachable;
            }
            e
        };
        let blob = self.kms_encrypt(CANARY, context()).await.map_err(proof)?;
        let back = self.kms_decrypt(&blob, context()).await.map_err(proof)?;
        if !back.ct_eq(CANARY) {
            return Err(BackendError::unreachable(
                "proof of use: Decrypt returned something other than the canary",
            ));
        }
        Ok(())
    }
}

/// Swaps `sdk`'s credentials for a role assumed with them (one `ASSUME_ROLE` hop).
async fn assume_role(sdk: SdkConfig, hop: &uri::RoleHop) -> SdkConfig {
    let mut role = AssumeRoleProvider::builder(hop.arn.clone())
        .session_name(ROLE_SESSION_NAME)
        .configure(&sdk);
    if let Some(id) = &hop.external_id {
        role = role.external_id(id.clone());
    }
    let provider = role.build().await;
    sdk.into_builder()
        .credentials_provider(SharedCredentialsProvider::new(provider))
        .build()
}

impl fmt::Debug for AwsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsBackend")
            .field("uri", &self.uri)
            .field("proof_interval", &self.proof_interval)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl KmsBackend for AwsBackend {
    async fn encrypt(
        &self,
        plaintext: &SecretBytes,
        aad: &Aad,
    ) -> Result<Ciphertext, BackendError> {
        self.check_size(plaintext.len(), aad)?;
        let bytes = self
            .kms_encrypt(plaintext.expose(), aad.context_map().into_iter().collect())
            .await?;
        Ok(Ciphertext {
            bytes,
            key_version: String::new(),
        })
    }

    /// `key_version` is always empty for AWS (see the module docs) and is not consulted.
    async fn decrypt(
        &self,
        ciphertext: &[u8],
        _key_version: &str,
        aad: &Aad,
    ) -> Result<Decrypted, BackendError> {
        if ciphertext.is_empty() || ciphertext.len() > MAX_CIPHERTEXT {
            return Err(BackendError::invalid_ciphertext(format!(
                "an AWS KMS ciphertext is 1 to {MAX_CIPHERTEXT} bytes"
            )));
        }
        let plaintext = self
            .kms_decrypt(ciphertext, aad.context_map().into_iter().collect())
            .await?;
        Ok(Decrypted {
            plaintext,
            key_version: None,
        })
    }

    fn check_size(&self, payload_len: usize, _aad: &Aad) -> Result<(), BackendError> {
        if payload_len > MAX_PLAINTEXT {
            return Err(BackendError::invalid_request(format!(
                "AWS KMS Encrypt takes at most {MAX_PLAINTEXT} bytes of plaintext"
            )));
        }
        Ok(())
    }

    async fn check(&self) -> Result<KeyHealth, BackendError> {
        let out = self
            .client
            .describe_key()
            .key_id(&self.uri.key)
            .send()
            .await;
        note_request_id(&out);
        let out = out.map_err(|e| self.failed(None, classify::describe_key(&e)))?;
        let meta = out
            .key_metadata
            .ok_or_else(|| BackendError::unreachable("DescribeKey answered without KeyMetadata"))?;
        classify::key_metadata(&meta).map_err(|e| self.failed(None, e))?;
        if self.proof_due() {
            self.prove_use().await?;
        }
        Ok(KeyHealth {
            detail: format!("Enabled ({})", meta.arn().unwrap_or(meta.key_id())),
            version: None,
        })
    }
}

/// The `x-amzn-RequestId` of an answer, refusals included, for the call's audit record
/// (CloudTrail files the same call under it).
fn note_request_id<T: RequestId, E>(result: &Result<T, E>)
where
    E: RequestId,
{
    let id = match result {
        Ok(out) => out.request_id(),
        Err(e) => e.request_id(),
    };
    if let Some(id) = id {
        crate::kms_request::note(id);
    }
}
