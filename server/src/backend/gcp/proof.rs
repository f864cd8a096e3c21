//! Knowing the key's state without `cloudkms.cryptoKeys.get` (least privilege).
//!
//! Google's role for this job, `roles/cloudkms.cryptoKeyEncrypterDecrypter`, grants
//! `useToEncrypt` and `useToDecrypt` but not `cloudkms.cryptoKeys.get`
//! (kms/docs/reference/permissions-and-roles), and it is all that CockroachDB,
//! go-kms-wrapping and k8s-cloudkms-plugin ask for. Without `get`, GetCryptoKey answers 403
//! and the primary version's state cannot be read. Two free signals remain, and neither is
//! enough alone:
//!
//! - `TestIamPermissions` needs no permission, but Google documents that it is "designed to
//!   be used for building permission-aware UIs … not for authorization checking. This
//!   operation may 'fail open' without warning" (google/iam/v1/iam_policy.proto).
//!   It is used only to refuse: a use permission it does not list is REVOKED (the answer
//!   fails closed), one it lists proves nothing.
//! - So the state is proven by an `Encrypt`, the call whose answer IS authoritative: success
//!   is ACTIVE (and names the primary version and its protection level), `FAILED_PRECONDITION`
//!   "current state is: DISABLED / DESTROYED…" is that state, 403 is REVOKED. Like the AWS
//!   backend's proof of use, a real wrap that succeeds counts; otherwise `check` wraps a
//!   canary ([`CANARY`] under [`CANARY_AAD`]).
//!
//! A proof holds for [`PROOF_INTERVAL`]: Encrypt is billed (about $0.03 per 10,000 software
//! key operations), GetCryptoKey is free. So without `get`, a primary disabled or destroyed
//! between proofs shows at the first call that fails (which is evidence at once and makes
//! the next poll prove again), or at the next proof; with `roles/cloudkms.viewer` every poll
//! sees it before any call fails. A Decrypt whose answer says `used_primary = false` for a
//! blob of the version taken for the primary shows the primary moved: the proof is dropped,
//! so the next poll learns the new primary (and StoreStatus which blobs are behind).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long an Encrypt's success stands for the key's state when metadata is unreadable.
pub const PROOF_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// The canary's plaintext: not a secret.
pub const CANARY: &[u8] = b"kms-broker liveness canary v1";

/// The canary's AAD. Not an [`crate::backend::Aad::bytes`] encoding (those begin
/// `kms-broker/aad/v`), so the canary's ciphertext can never authenticate as a blob.
pub const CANARY_AAD: &[u8] = b"kms-broker:purpose=liveness-canary";

/// The last Encrypt that succeeded, while it stands as proof.
#[derive(Debug, Default)]
pub struct Proof(Mutex<Option<Seen>>);

#[derive(Debug)]
struct Seen {
    at: Instant,
    /// The primary version that Encrypt used (its full resource name).
    version: String,
}

impl Proof {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Seen>> {
        // A panic while holding this lock cannot leave it half-written: recover the value.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The primary version an Encrypt used within [`PROOF_INTERVAL`], if any.
    pub fn fresh(&self) -> Option<String> {
        self.lock()
            .as_ref()
            .filter(|s| s.at.elapsed() < PROOF_INTERVAL)
            .map(|s| s.version.clone())
    }

    /// An Encrypt by `version` succeeded just now.
    pub fn prove(&self, version: &str) {
        *self.lock() = Some(Seen {
            at: Instant::now(),
            version: version.to_owned(),
        });
    }

    /// A call failed with evidence about the key: the next check proves again.
    pub fn forget(&self) {
        *self.lock() = None;
    }

    /// A Decrypt of a blob made by `version` said the primary did not decrypt it: if
    /// `version` is what we took for the primary, the primary has moved.
    pub fn not_primary(&self, version: &str) {
        let mut seen = self.lock();
        if seen.as_ref().is_some_and(|s| s.version == version) {
            *seen = None;
        }
    }
}

/// RevokeStatus's detail for a key whose state an Encrypt proved.
pub fn detail(version: &str, hsm: bool) -> String {
    let id = version.rsplit('/').next().unwrap_or(version);
    let hsm = if hsm { " (HSM)" } else { "" };
    format!(
        "primary version {id}{hsm}; key metadata not readable (cloudkms.cryptoKeys.get not granted), state proven by Encrypt; roles/cloudkms.viewer would let every poll see a DISABLED or DESTROYED primary before the first failed call"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_proof_stands_for_its_interval_and_falls_with_evidence() {
        let p = Proof::default();
        assert_eq!(p.fresh(), None);
        p.prove("k/cryptoKeyVersions/1");
        assert_eq!(p.fresh().as_deref(), Some("k/cryptoKeyVersions/1"));
        tokio::time::advance(PROOF_INTERVAL).await;
        assert_eq!(p.fresh(), None, "expired");

        p.prove("k/cryptoKeyVersions/1");
        p.not_primary("k/cryptoKeyVersions/0");
        assert!(p.fresh().is_some(), "an older blob says nothing");
        p.not_primary("k/cryptoKeyVersions/1");
        assert_eq!(p.fresh(), None, "the primary moved");

        p.prove("k/cryptoKeyVersions/2");
        p.forget();
        assert_eq!(p.fresh(), None);
        assert!(detail("k/cryptoKeyVersions/2", true).starts_with("primary version 2 (HSM);"));
    }
}
