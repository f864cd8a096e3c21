//! Vault's answers, classified into the contract's failure classes (STYLE lesson 3). The
//! mapping is documented on [`crate::backend::vault`].
//!
//! Only fixed texts, HTTP statuses, Vault's own short error messages and transport error
//! texts reach a detail: never a vaultrs error's `Debug` (its parse errors carry response
//! bodies, and a decrypt response body is a plaintext).

use serde::Deserialize;
use vaultrs::error::ClientError;

use crate::backend::error_text::{root_cause, short};
use crate::backend::{BackendError, FailureClass};

/// The Vault call that failed: classification is per operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// `POST <mount>/encrypt/<key>`: carries the caller's plaintext and context.
    Encrypt,
    /// `POST <mount>/decrypt/<key>`: carries the caller's ciphertext and context.
    Decrypt,
    /// `GET <mount>/keys/<key>`.
    ReadKey,
    /// `POST sys/capabilities-self`.
    Capabilities,
    /// `GET auth/token/lookup-self`.
    LookupSelf,
    /// `POST auth/token/renew-self`.
    RenewSelf,
}

impl Op {
    pub(super) fn name(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::ReadKey => "read key",
            Op::Capabilities => "capabilities-self",
            Op::LookupSelf => "token lookup-self",
            Op::RenewSelf => "token renew-self",
        }
    }

    /// Whether a 404 here means the key (or its mount) is gone.
    fn names_the_key(self) -> bool {
        matches!(self, Op::Encrypt | Op::Decrypt | Op::ReadKey)
    }
}

/// Key types whose transit encrypt binds `associated_data`.
const AEAD_TYPES: &[&str] = &[
    "aes128-gcm96",
    "aes256-gcm96",
    "chacha20-poly1305",
    "xchacha20-poly1305",
];

/// The fields of `GET <mount>/keys/<key>` we use.
#[derive(Debug, Deserialize)]
pub(super) struct KeyInfo {
    #[serde(rename = "type")]
    pub key_type: String,
    pub latest_version: u64,
    #[serde(default)]
    pub min_decryption_version: u64,
    /// OpenBao only; HashiCorp Vault has no soft deletion and omits it.
    #[serde(default)]
    pub soft_deleted: bool,
}

impl KeyInfo {
    /// Ok if the daemon can wrap and unwrap with this key.
    pub fn usable(&self, mount: &str, key: &str) -> Result<(), BackendError> {
        if self.soft_deleted {
            return Err(BackendError::new(
                FailureClass::Disabled,
                format!("key is soft-deleted (undo: write {mount}/keys/{key}/soft-delete-restore)"),
            ));
        }
        if !AEAD_TYPES.contains(&self.key_type.as_str()) {
            return Err(BackendError::new(
                FailureClass::Disabled,
                format!(
                    "key type {:?} cannot bind associated data; use an AEAD key ({})",
                    short(&self.key_type),
                    AEAD_TYPES.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// The HTTP status and Vault's first error message, if Vault answered with a JSON error.
/// (An error body that is not Vault's JSON, e.g. a proxy's HTML page, is not an APIError:
/// it falls to the transport case of [`classify`], UNREACHABLE.)
pub(super) fn http_status(e: &ClientError) -> Option<(u16, String)> {
    match e {
        ClientError::APIError { code, errors } => {
            Some((*code, errors.first().map(|m| short(m)).unwrap_or_default()))
        }
        _ => None,
    }
}

/// True for 401/403: the token may not do this.
pub(super) fn is_denied(e: &ClientError) -> bool {
    matches!(http_status(e), Some((401 | 403, _)))
}

/// The answer to a 400 when the key itself reads as healthy: the request was at fault.
pub(super) fn after_400(
    op: Op,
    info: &KeyInfo,
    vault_says: &str,
    blob_version: Option<u64>,
) -> BackendError {
    match (op, blob_version) {
        // The version is retired, not the blob bad: DISABLED for this version only, as a
        // disabled Cloud KMS version is. Called "does not authenticate", a store file
        // under it would be reported corrupt, and the cause would never reach an operator.
        (Op::Decrypt, Some(v)) if v < info.min_decryption_version => BackendError::new(
            FailureClass::Disabled,
            format!(
                "ciphertext is from key version v{v}, below the key's min_decryption_version {} (retired by the operator: lower it to read this, then re-wrap)",
                info.min_decryption_version
            ),
        )
        .version_scoped(),
        (Op::Decrypt, _) => {
            BackendError::invalid_ciphertext(format!("Vault refused to decrypt: {vault_says}"))
        }
        _ => BackendError::invalid_request(format!(
            "Vault refused to {}: {vault_says}",
            op.name()
        )),
    }
}

/// Classifies a failed call by operation and status. A 400 on encrypt is the caller's
/// request (InvalidRequest), on decrypt the caller's blob (InvalidCiphertext): neither ever
/// changes a key's state (callers that can ask the key first do so, see
/// `VaultBackend::explain_400`). 401/403 is REVOKED on every operation: Vault policies
/// grant paths, never key versions.
pub(super) fn classify(op: Op, e: &ClientError) -> BackendError {
    let op_name = op.name();
    let Some((code, says)) = http_status(e) else {
        return match e {
            // Transport (connection refused, timeout, TLS), or an answer that is not
            // Vault's: retryable. Named by its root cause, unless that is a JSON error,
            // whose text may quote a response body (a plaintext, on decrypt).
            ClientError::RestClientError { source } => {
                let cause = root_cause(source).unwrap_or_else(|| "unexpected answer".into());
                BackendError::unreachable(format!("Vault {op_name}: {cause}"))
            }
            // vaultrs's own variants display fixed texts (no source, no body).
            _ => BackendError::unreachable(format!("Vault {op_name}: {e}")),
        };
    };
    let with = |what: &str| {
        if says.is_empty() {
            format!("Vault {op_name}: HTTP {code} ({what})")
        } else {
            format!("Vault {op_name}: HTTP {code} ({what}): {says}")
        }
    };
    match (code, op) {
        (401 | 403, _) => BackendError::new(
            FailureClass::Revoked,
            with("token revoked, expired or not allowed"),
        ),
        (404, op) if op.names_the_key() => {
            BackendError::new(FailureClass::Destroyed, with("key or mount not found"))
        }
        // 412: a performance standby not yet consistent; 429 rate limit (and 472/473 DR /
        // perf standby); 5xx: sealed (503), uninitialized, internal.
        (429, _) => BackendError::throttled(with("rate limited"), None),
        (412 | 472 | 473 | 500..=599, _) => BackendError::unreachable(with("Vault unavailable")),
        (400, Op::Encrypt) => BackendError::invalid_request(with("refused the request")),
        (400, Op::Decrypt) => BackendError::invalid_ciphertext(with("refused the ciphertext")),
        _ => BackendError::unreachable(with("unexpected status")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, msg: &str) -> ClientError {
        ClientError::APIError {
            code,
            errors: vec![msg.into()],
        }
    }

    #[test]
    fn statuses_per_operation() {
        use FailureClass::*;
        use Op::*;
        for (op, code, want) in [
            (ReadKey, 403, Revoked),
            (Encrypt, 403, Revoked),
            (Decrypt, 403, Revoked),
            (Capabilities, 403, Revoked),
            (ReadKey, 404, Destroyed),
            (Decrypt, 404, Destroyed),
            (Capabilities, 404, Unreachable),
            (LookupSelf, 404, Unreachable),
            (ReadKey, 503, Unreachable),
            (Encrypt, 429, Unreachable),
            (Encrypt, 400, InvalidRequest),
            (Decrypt, 400, InvalidCiphertext),
            (ReadKey, 400, Unreachable),
            (RenewSelf, 400, Unreachable),
        ] {
            let e = classify(op, &api(code, "m"));
            assert_eq!(e.class, want, "{op:?} {code}");
            assert_eq!(e.throttled, code == 429, "{op:?} {code}");
            assert!(
                e.detail.starts_with(&format!("Vault {}:", op.name())),
                "{}",
                e.detail
            );
            // Denials are about the whole key, never one version.
            assert!(!e.version_only);
        }
        let e = classify(
            ReadKey,
            &api(403, "1 error occurred:\n\t* permission denied\n\n"),
        );
        assert!(
            e.detail.ends_with("1 error occurred: * permission denied"),
            "{}",
            e.detail
        );
    }

    #[test]
    fn a_400_on_a_healthy_key_is_never_key_evidence() {
        let info = KeyInfo {
            key_type: "aes256-gcm96".into(),
            latest_version: 3,
            min_decryption_version: 2,
            soft_deleted: false,
        };
        let e = after_400(Op::Encrypt, &info, "bad request", None);
        assert_eq!(
            (e.class, e.evidence()),
            (FailureClass::InvalidRequest, None)
        );
        let e = after_400(
            Op::Decrypt,
            &info,
            "cipher: message authentication failed",
            Some(3),
        );
        assert_eq!(
            (e.class, e.evidence()),
            (FailureClass::InvalidCiphertext, None)
        );
        let e = after_400(Op::Decrypt, &info, "", Some(1));
        assert!(
            e.detail.contains("min_decryption_version 2"),
            "{}",
            e.detail
        );
        assert_eq!((e.class, e.evidence()), (FailureClass::Disabled, None));
    }

    #[test]
    fn soft_deleted_and_non_aead_keys_are_disabled() {
        let k = |t: &str, soft: bool| KeyInfo {
            key_type: t.into(),
            latest_version: 1,
            min_decryption_version: 1,
            soft_deleted: soft,
        };
        assert!(k("aes256-gcm96", false).usable("transit", "k").is_ok());
        assert_eq!(
            k("aes256-gcm96", true)
                .usable("transit", "k")
                .unwrap_err()
                .class,
            FailureClass::Disabled
        );
        assert_eq!(
            k("rsa-2048", false)
                .usable("transit", "k")
                .unwrap_err()
                .class,
            FailureClass::Disabled
        );
    }
}
