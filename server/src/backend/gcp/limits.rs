//! Cloud KMS's documented request-size limits, which depend on the key's protection level
//! (EncryptRequest, google.cloud.kms.v1):
//!
//! | protection level | plaintext | additional_authenticated_data |
//! | --- | --- | --- |
//! | SOFTWARE, EXTERNAL, EXTERNAL_VPC | 64 KiB | 64 KiB |
//! | HSM (and single-tenant HSM) | 8 KiB for plaintext and AAD **combined** | |
//!
//! The contract allows 4 KiB of plaintext and 8 KiB of context, so a legal WrapKey can
//! exceed an HSM key's limit. Such a request is refused here, before the call, as
//! INVALID_ARGUMENT: the caller shaped it, and it says nothing about the key.
//!
//! The level is learnt from the status check's GetCryptoKey (the primary version's level)
//! and from every EncryptResponse, and cached. Until it is known, nothing is refused on the
//! HSM limit (a software key must not lose requests to a guess); should Cloud KMS refuse
//! one, its INVALID_ARGUMENT is classified InvalidRequest, which never changes key state.

use std::sync::atomic::{AtomicU8, Ordering};

use google_cloud_kms_v1::model::ProtectionLevel;

use crate::backend::BackendError;

/// Software (and external) keys: each of plaintext and AAD.
pub const SOFTWARE_MAX: usize = 64 * 1024;
/// HSM keys: plaintext and AAD together.
pub const HSM_MAX_COMBINED: usize = 8 * 1024;
/// Longest ciphertext we pass to Decrypt: Cloud KMS ciphertexts of a 4 KiB plaintext are
/// far shorter; anything longer is not ours, refused without a (billable) call.
pub const MAX_CIPHERTEXT: usize = 8 * 1024;

const UNKNOWN: u8 = 0;
const SOFTWARE: u8 = 1;
const HSM: u8 = 2;

/// The protection level last seen for the key's primary version.
#[derive(Debug)]
pub struct Level(AtomicU8);

impl Default for Level {
    fn default() -> Self {
        Self(AtomicU8::new(UNKNOWN))
    }
}

impl Level {
    /// Records what Cloud KMS said; an unspecified or unknown level changes nothing.
    pub fn learn(&self, level: &ProtectionLevel) {
        let v = match level {
            ProtectionLevel::Hsm | ProtectionLevel::HsmSingleTenant => HSM,
            ProtectionLevel::Software
            | ProtectionLevel::External
            | ProtectionLevel::ExternalVpc => SOFTWARE,
            _ => return,
        };
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn is_hsm(&self) -> bool {
        self.0.load(Ordering::Relaxed) == HSM
    }

    /// Refuses an Encrypt over the documented limit for the level known so far.
    pub fn check(&self, plaintext: usize, aad: usize) -> Result<(), BackendError> {
        if plaintext > SOFTWARE_MAX || aad > SOFTWARE_MAX {
            return Err(BackendError::invalid_request(format!(
                "Cloud KMS takes at most {SOFTWARE_MAX} bytes of plaintext and of authenticated data (key name and context)"
            )));
        }
        let known = self.0.load(Ordering::Relaxed);
        if known == HSM && plaintext + aad > HSM_MAX_COMBINED {
            return Err(BackendError::invalid_request(format!(
                "this Cloud KMS key is an HSM key: plaintext ({plaintext} bytes) and authenticated data (key name and context, {aad} bytes) together must be at most {HSM_MAX_COMBINED} bytes; send a smaller context"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FailureClass;

    #[test]
    fn limits_by_level() {
        let l = Level::default();
        // Unknown: only the software limits apply.
        assert!(l.check(4096, 5000).is_ok());
        assert!(l.check(SOFTWARE_MAX + 1, 0).is_err());
        l.learn(&ProtectionLevel::Hsm);
        assert!(l.is_hsm());
        assert!(l.check(4096, 4096).is_ok());
        let e = l.check(4096, 4097).unwrap_err();
        assert_eq!(
            (e.class, e.evidence()),
            (FailureClass::InvalidRequest, None)
        );
        assert!(e.detail.contains("8192"), "{}", e.detail);
        // An unspecified level keeps what was known; a software one lifts the HSM limit.
        l.learn(&ProtectionLevel::Unspecified);
        assert!(l.is_hsm());
        l.learn(&ProtectionLevel::Software);
        assert!(l.check(4096, 5000).is_ok());
        let e = l.check(10, SOFTWARE_MAX + 1).unwrap_err();
        assert_eq!(e.class, FailureClass::InvalidRequest);
    }
}
