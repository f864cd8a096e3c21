//! Vault's answers, classified into the contract's failure classes (STYLE lesson 3). The
//! mapping is documented on [`crate::backend::vault`].
//!
//! Only fixed texts, HTTP statuses, Vault's own short error messages and transport error
//! texts reach a detail: never a vaultrs error's `Debug` (its parse errors carry response
//! bodies, and a decrypt response body is a plaintext).

use serde::Deserialize;
use vaultrs::error::ClientError;

use crate::backend::{BackendError, FailureClass};

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

/// Classifies a failed call `op` by status (a 400 here is taken as-is; callers that can
/// tell the key's fault from the ciphertext's handle 400 first).
pub(super) fn classify(op: &str, e: &ClientError) -> BackendError {
    let Some((code, says)) = http_status(e) else {
        return match e {
            // Transport (connection refused, timeout, TLS), or an answer that is not
            // Vault's: retryable. Named by its root cause, unless that is a JSON error,
            // whose text may quote a response body (a plaintext, on decrypt).
            ClientError::RestClientError { source } => {
                let cause = root_cause(source).unwrap_or_else(|| "unexpected answer".into());
                BackendError::unreachable(format!("Vault {op}: {cause}"))
            }
            // vaultrs's own variants display fixed texts (no source, no body).
            _ => BackendError::unreachable(format!("Vault {op}: {e}")),
        };
    };
    let with = |what: &str| {
        if says.is_empty() {
            format!("Vault {op}: HTTP {code} ({what})")
        } else {
            format!("Vault {op}: HTTP {code} ({what}): {says}")
        }
    };
    match code {
        401 | 403 => BackendError::new(
            FailureClass::Revoked,
            with("token revoked, expired or not allowed"),
        ),
        404 => BackendError::new(FailureClass::Destroyed, with("key or mount not found")),
        // 412: a performance standby not yet consistent; 429 rate limit (and 472/473 DR /
        // perf standby); 5xx: sealed (503), uninitialized, internal.
        412 | 429 | 472 | 473 | 500..=599 => BackendError::unreachable(with("Vault unavailable")),
        400 => BackendError::new(FailureClass::InvalidCiphertext, with("refused")),
        _ => BackendError::unreachable(with("unexpected status")),
    }
}

/// The innermost error text (e.g. "Connection refused (os error 111)", "operation timed
/// out"): what an operator needs, without the layers of "error sending request". `None`
/// if a JSON error is in the chain.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = e;
    loop {
        if cur.is::<serde_json::Error>() {
            return None;
        }
        match cur.source() {
            Some(next) => cur = next,
            None => return Some(short(&cur.to_string())),
        }
    }
}

/// One line, at most 160 characters.
fn short(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &one[..i]),
        None => one,
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
    fn statuses() {
        for (code, msg, want) in [
            (403, "permission denied", FailureClass::Revoked),
            (404, "", FailureClass::Destroyed),
            (503, "Vault is sealed", FailureClass::Unreachable),
            (429, "", FailureClass::Unreachable),
        ] {
            assert_eq!(classify("read", &api(code, msg)).class, want, "{code}");
        }
        let e = classify(
            "read",
            &api(403, "1 error occurred:\n\t* permission denied\n\n"),
        );
        assert!(
            e.detail.ends_with("1 error occurred: * permission denied"),
            "{}",
            e.detail
        );
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

    #[test]
    fn short_is_short() {
        assert_eq!(short(&"x".repeat(500)).chars().count(), 161);
    }
}
