//! Google Cloud KMS (`gs:///projects/…/cryptoKeys/K`), through Google's official REST client
//! `google-cloud-kms-v1`.
//!
//! - wrap = `Encrypt` on the CryptoKey (Cloud KMS picks the primary version) with the AAD
//!   bytes of [`Aad::bytes`]; `key_version` is the response's `name`, the full
//!   CryptoKeyVersion resource name (`projects/…/cryptoKeys/K/cryptoKeyVersions/3`).
//! - unwrap = `Decrypt` on the CryptoKey: the ciphertext itself names its version, so the
//!   stored `key_version` is informational and rotation needs nothing from us.
//! - check = `TestIamPermissions` (may we still encrypt and decrypt?) plus `GetCryptoKey`
//!   (is the primary version ENABLED?). Both are free metadata calls; no paid crypto.
//!   Under least privilege (the encrypter/decrypter role alone, no `cloudkms.cryptoKeys.get`)
//!   GetCryptoKey is denied and the state is proven by an Encrypt instead: see `proof`.
//! - `DecryptResponse.used_primary`: a blob that the primary did not open tells `proof` the
//!   primary may have moved (see there).
//!
//! Data integrity follows Google's guide: every request carries CRC32C checksums of what it
//! sends, and every response's checksums are verified (`verified_*_crc32c`,
//! `ciphertext_crc32c`, `plaintext_crc32c`). A mismatch means the bytes were damaged on
//! the way, so it is reported as Unreachable and the daemon's retry policy tries again.
//!
//! Size limits depend on the key's protection level (HSM: 8 KiB of plaintext and AAD
//! combined): see `limits`, which learns the level and refuses over-limit requests before
//! the call, as INVALID_ARGUMENT.
//!
//! The SDK is told to make exactly ONE attempt per call ([`NeverRetry`]): deadlines and
//! retries belong to [`super::resilient`]. Errors are classified in `classify.rs`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_kms_v1::client::KeyManagementService;
use google_cloud_kms_v1::model::crypto_key::CryptoKeyPurpose;
use google_cloud_kms_v1::model::crypto_key_version::CryptoKeyVersionState;

use super::{Aad, BackendError, Ciphertext, Decrypted, FailureClass, KeyHealth, KmsBackend};
use crate::secret::SecretBytes;

// Private to this backend: `backend/mod.rs` needs no line for them.
mod classify;
mod creds;
mod limits;
mod proof;
mod uri;

use classify::{classify, integrity, Op};
pub use uri::{GcpAuth, GcpUri};

/// A backstop for one HTTP request (connect included). The daemon's per-attempt timeout
/// ([`super::resilient::RetryPolicy`], 5 s by default) cuts calls first; this only stops a
/// request from hanging forever if the backend is ever used without it.
const SDK_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the daemon needs on the key: exactly `roles/cloudkms.cryptoKeyEncrypterDecrypter`.
const USE_PERMISSIONS: [&str; 2] = [
    "cloudkms.cryptoKeyVersions.useToEncrypt",
    "cloudkms.cryptoKeyVersions.useToDecrypt",
];

/// One Cloud KMS CryptoKey.
pub struct GcpBackend {
    uri: GcpUri,
    client: KeyManagementService,
    /// The primary version's protection level, as last seen (it sets the size limits).
    level: limits::Level,
    /// The last Encrypt that succeeded: the key's state where metadata is unreadable.
    proof: proof::Proof,
}

impl fmt::Debug for GcpBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GcpBackend({})", self.uri.redacted())
    }
}

impl GcpBackend {
    /// Builds the client. Reads credentials (the ADC file, or the key from the URI) but
    /// contacts neither Cloud KMS nor a token or metadata server.
    pub async fn new(uri: GcpUri) -> Result<Self, String> {
        let credentials = creds::for_uri(&uri).await?;
        let mut builder = KeyManagementService::builder()
            .with_credentials(credentials)
            .with_retry_policy(NeverRetry)
            .with_attempt_timeout(SDK_ATTEMPT_TIMEOUT);
        if let Some(endpoint) = uri.endpoint() {
            builder = builder.with_endpoint(endpoint);
        }
        let client = builder.build().await.map_err(|e| {
            // The builder's error may quote an ADC file; say what failed, not what it read.
            let why = if e.is_default_credentials() {
                "cannot load Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS or gcloud auth application-default login)"
            } else if e.is_universe_domain_mismatch() {
                "the credentials belong to another universe than googleapis.com"
            } else {
                "cannot build the HTTP client"
            };
            format!("{}: {why}", uri.redacted())
        })?;
        Ok(Self {
            uri,
            client,
            level: limits::Level::default(),
            proof: proof::Proof::default(),
        })
    }
}

fn crc(bytes: &[u8]) -> i64 {
    i64::from(crc32c::crc32c(bytes))
}

impl GcpBackend {
    /// One Encrypt on the key (Cloud KMS picks the primary), checksums verified both ways.
    /// A success proves the key usable ([`proof`]); a failure that is evidence about the
    /// key makes the next check prove again.
    async fn kms_encrypt(
        &self,
        plaintext: &[u8],
        aad: Vec<u8>,
    ) -> Result<Ciphertext, BackendError> {
        let r = self.encrypt_once(plaintext, aad).await;
        match &r {
            Ok(ct) => self.proof.prove(&ct.key_version),
            Err(e) if e.evidence().is_some_and(|s| s.is_revoked_kind()) => self.proof.forget(),
            Err(_) => {}
        }
        r
    }

    async fn encrypt_once(
        &self,
        plaintext: &[u8],
        aad: Vec<u8>,
    ) -> Result<Ciphertext, BackendError> {
        let (pt_crc, aad_crc) = (crc(plaintext), crc(&aad));
        let resp = self
            .client
            .encrypt()
            .set_name(self.uri.key_name())
            // The SDK wants owned bytes and serializes them to base64 JSON: those copies are
            // outside our zeroizing, which no HTTP/JSON client avoids.
            .set_plaintext(plaintext.to_vec())
            .set_additional_authenticated_data(aad)
            .set_plaintext_crc32c(pt_crc)
            .set_additional_authenticated_data_crc32c(aad_crc)
            .send()
            .await
            .map_err(|e| classify(Op::Encrypt, &e))?;
        if !resp.verified_plaintext_crc32c {
            return Err(integrity(
                Op::Encrypt,
                "plaintext checksum not verified by Cloud KMS",
            ));
        }
        if !resp.verified_additional_authenticated_data_crc32c {
            return Err(integrity(
                Op::Encrypt,
                "AAD checksum not verified by Cloud KMS",
            ));
        }
        if resp.ciphertext_crc32c != Some(crc(&resp.ciphertext)) {
            return Err(integrity(Op::Encrypt, "ciphertext checksum mismatch"));
        }
        let ours = resp
            .name
            .strip_prefix(self.uri.key_name())
            .is_some_and(|rest| rest.starts_with("/cryptoKeyVersions/"));
        if !ours {
            return Err(integrity(Op::Encrypt, "the response names another key"));
        }
        // The EncryptResponse names the level: how a key without `get` learns its limits.
        self.level.learn(&resp.protection_level);
        Ok(Ciphertext {
            bytes: resp.ciphertext.into(),
            key_version: resp.name,
        })
    }

    /// GetCryptoKey was denied and TestIamPermissions lists both use permissions: least
    /// privilege. The state is what an Encrypt says (see [`proof`]).
    async fn prove_by_encrypt(&self) -> Result<KeyHealth, BackendError> {
        let version = match self.proof.fresh() {
            Some(v) => v,
            None => {
                let ct = self
                    .kms_encrypt(proof::CANARY, proof::CANARY_AAD.to_vec())
                    .await
                    .map_err(|mut e| {
                        e.detail = format!("canary {}", e.detail);
                        // Our own well-formed canary refused for its shape: the key cannot
                        // serve Encrypt (another purpose or algorithm), not a caller's fault.
                        if matches!(
                            e.class,
                            FailureClass::InvalidRequest | FailureClass::InvalidCiphertext
                        ) {
                            e.class = FailureClass::Disabled;
                        }
                        e
                    })?;
                ct.key_version
            }
        };
        Ok(KeyHealth {
            detail: proof::detail(&version, self.level.is_hsm()),
            version: Some(version),
        })
    }
}

#[async_trait]
impl KmsBackend for GcpBackend {
    async fn encrypt(
        &self,
        plaintext: &SecretBytes,
        aad: &Aad,
    ) -> Result<Ciphertext, BackendError> {
        let aad = aad.bytes();
        self.level.check(plaintext.len(), aad.len())?;
        self.kms_encrypt(plaintext.expose(), aad).await
    }

    async fn decrypt(
        &self,
        ciphertext: &[u8],
        key_version: &str,
        aad: &Aad,
    ) -> Result<Decrypted, BackendError> {
        if ciphertext.is_empty() || ciphertext.len() > limits::MAX_CIPHERTEXT {
            return Err(BackendError::invalid_ciphertext(format!(
                "not a Cloud KMS ciphertext of this daemon (1 to {} bytes)",
                limits::MAX_CIPHERTEXT
            )));
        }
        let aad = aad.bytes();
        let (ct_crc, aad_crc) = (crc(ciphertext), crc(&aad));
        let resp = self
            .client
            .decrypt()
            .set_name(self.uri.key_name())
            .set_ciphertext(ciphertext.to_vec())
            .set_ciphertext_crc32c(ct_crc)
            .set_additional_authenticated_data(aad)
            .set_additional_authenticated_data_crc32c(aad_crc)
            .send()
            .await
            .map_err(|e| {
                let e = classify(Op::Decrypt, &e);
                if e.evidence().is_some_and(|s| s.is_revoked_kind()) {
                    self.proof.forget();
                }
                e
            })?;
        // Vec::from(Bytes) reuses the buffer when it is not shared, so the copy we wipe is
        // the only one we hold.
        let plaintext = SecretBytes::new(Vec::from(resp.plaintext));
        if resp.plaintext_crc32c != Some(crc(plaintext.expose())) {
            return Err(integrity(Op::Decrypt, "plaintext checksum mismatch"));
        }
        // Only the primary's level sets Encrypt's limits; a blob of an older version says
        // nothing about it. A blob of the version we took for the primary that the primary
        // did not open means the key was rotated since the last proof (see `proof`).
        if resp.used_primary {
            self.level.learn(&resp.protection_level);
        } else {
            self.proof.not_primary(key_version);
        }
        Ok(Decrypted {
            plaintext,
            key_version: None,
        })
    }

    fn check_size(&self, payload_len: usize, aad: &Aad) -> Result<(), BackendError> {
        self.level.check(payload_len, aad.encoded_len())
    }

    async fn check(&self) -> Result<KeyHealth, BackendError> {
        let name = self.uri.key_name();
        let (perms, key) = tokio::join!(
            self.client
                .test_iam_permissions()
                .set_resource(name)
                .set_permissions(USE_PERMISSIONS)
                .send(),
            self.client.get_crypto_key().set_name(name).send(),
        );
        // TestIamPermissions may "fail open" (see `proof`): a permission it does not list is
        // REVOKED, one it lists proves nothing. It lists nothing for a missing key.
        // Denied metadata: no `cloudkms.cryptoKeys.get` (least privilege), no grant at all, or
        // no such key (Cloud KMS answers these alike to a caller without access to the ring).
        let key = match key {
            Ok(key) => Some(key),
            Err(e) => {
                let e = classify(Op::GetCryptoKey, &e);
                if e.class != FailureClass::Revoked {
                    return Err(e);
                }
                None
            }
        };
        let granted = perms
            .map_err(|e| classify(Op::TestIamPermissions, &e))?
            .permissions;
        // Revocation usually removes the encrypter/decrypter binding and leaves the viewer
        // role, so GetCryptoKey alone would not notice it.
        if let Some(p) = USE_PERMISSIONS
            .iter()
            .find(|p| !granted.iter().any(|g| g == *p))
        {
            let unseen = if key.is_none() {
                ", or the key does not exist (Cloud KMS does not say which to a caller without access to the key ring)"
            } else {
                ""
            };
            return Err(BackendError::new(
                FailureClass::Revoked,
                format!("TestIamPermissions: {p} is not granted on the key{unseen}"),
            ));
        }
        let Some(key) = key else {
            return self.prove_by_encrypt().await;
        };
        if key.purpose != CryptoKeyPurpose::EncryptDecrypt {
            return Err(BackendError::new(
                FailureClass::Disabled,
                format!(
                    "the key's purpose is {}; kms-broker needs ENCRYPT_DECRYPT",
                    key.purpose
                ),
            ));
        }
        if let Some(template) = &key.version_template {
            self.level.learn(&template.protection_level);
        }
        let Some(primary) = key.primary else {
            // The key exists but cannot encrypt until an operator sets a primary version:
            // reversible, and nothing says key material is gone.
            return Err(BackendError::new(
                FailureClass::Disabled,
                "the key has no primary version (gcloud kms keys set-primary-version)",
            ));
        };
        // The primary's own level wins over the template's (which only shapes new versions).
        self.level.learn(&primary.protection_level);
        // The short version id ("3") reads better in RevokeStatus than the full name.
        let id = primary.name.rsplit('/').next().unwrap_or(&primary.name);
        let state = primary.state.name().unwrap_or("UNKNOWN");
        let class = match primary.state {
            CryptoKeyVersionState::Enabled => {
                let hsm = if self.level.is_hsm() { " (HSM)" } else { "" };
                return Ok(KeyHealth {
                    detail: format!("primary version {id}{hsm}"),
                    version: Some(primary.name.clone()),
                });
            }
            CryptoKeyVersionState::DestroyScheduled
            | CryptoKeyVersionState::Destroyed
            | CryptoKeyVersionState::PendingExternalDestruction
            | CryptoKeyVersionState::ExternalDestructionFailed => FailureClass::Destroyed,
            // Still being made: it settles by itself.
            CryptoKeyVersionState::PendingGeneration | CryptoKeyVersionState::PendingImport => {
                FailureClass::Unreachable
            }
            _ => FailureClass::Disabled,
        };
        Err(BackendError::new(
            class,
            format!("primary version {id} is {state}"),
        ))
    }
}
