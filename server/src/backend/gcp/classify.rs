//! Cloud KMS failures, classified per operation into the contract's states (STYLE lesson 3).
//!
//! | Cloud KMS answer | class |
//! | --- | --- |
//! | `PERMISSION_DENIED` (403), `UNAUTHENTICATED` (401), credentials that cannot make a token | Revoked |
//! | `NOT_FOUND` (404 with a Google error body) | Destroyed |
//! | `FAILED_PRECONDITION` "… is not enabled, current state is: DISABLED." | Disabled |
//! | `FAILED_PRECONDITION` "… current state is: DESTROYED / DESTROY_SCHEDULED." | Destroyed |
//! | other `FAILED_PRECONDITION` (no primary version, wrong purpose) | Disabled |
//! | `FAILED_PRECONDITION` "… PENDING_GENERATION / PENDING_IMPORT" | Unreachable (it settles) |
//! | `INVALID_ARGUMENT` on Decrypt | InvalidCiphertext |
//! | `INVALID_ARGUMENT` naming a checksum (`…_crc32c`) | Unreachable (corrupted in transit) |
//! | other `INVALID_ARGUMENT` on Encrypt (too large for an HSM key, …) | InvalidRequest |
//! | other `INVALID_ARGUMENT` on GetCryptoKey / TestIamPermissions | Disabled (the key cannot serve us) |
//! | `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL`, other codes | Unreachable |
//! | a 401/403 without a Google body (e.g. a proxy) | Revoked |
//! | any other HTTP status without a Google body, incl. 404 | Unreachable |
//! | connect, timeout, I/O, a garbled response | Unreachable |
//!
//! Evidence about the key, and only that, changes its state:
//! - `INVALID_ARGUMENT` on Encrypt is about the request the caller shaped (size, AAD), so it
//!   is InvalidRequest and never DISABLED;
//! - a `FAILED_PRECONDITION` on Decrypt names the version the CIPHERTEXT was made with (Cloud
//!   KMS disables and destroys versions one by one), so it is version-scoped: that blob is
//!   refused, the key's state is the status check's to say;
//! - `PERMISSION_DENIED` / `UNAUTHENTICATED` on any call is REVOKED for the whole key: IAM
//!   grants are per key (or ring), never per version.
//!
//! A bare 404 (no Google error body) is not proof that the key is gone: it is what a wrong
//! `GCP_ENDPOINT` or a proxy answers, and DESTROYED drops held key material at once.
//!
//! Details carry the operation, the code and Google's message (which names resources, never
//! our credentials); transport errors are described in our own words, and credential errors
//! never include their source, which could quote the key file.

use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::error::Error as GaxError;

use super::{BackendError, FailureClass};
use crate::backend::error_text::{short, source_of};

/// The Cloud KMS call that failed, for classification and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Encrypt,
    Decrypt,
    GetCryptoKey,
    TestIamPermissions,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Encrypt => "Encrypt",
            Op::Decrypt => "Decrypt",
            Op::GetCryptoKey => "GetCryptoKey",
            Op::TestIamPermissions => "TestIamPermissions",
        }
    }
}

/// Classifies an error from the Cloud KMS client.
pub fn classify(op: Op, err: &GaxError) -> BackendError {
    let what = op.name();
    if let Some(status) = err.status() {
        let code = match (status.code, err.http_status_code()) {
            (Code::Unknown, Some(http)) => code_from_http(http),
            (code, _) => code,
        };
        let msg = short(&status.message);
        let class = class_for(op, code, &status.message);
        let e = BackendError::new(class, format!("{what}: {} {msg}", code.name()));
        if code == Code::ResourceExhausted && class == FailureClass::Unreachable {
            // Quota: slow down (Cloud KMS quotas refill per minute).
            return BackendError::throttled(e.detail, None);
        }
        return if op == Op::Decrypt && code == Code::FailedPrecondition {
            e.version_scoped()
        } else {
            e
        };
    }
    if let Some(cred) = source_of::<google_cloud_gax::error::CredentialsError>(err) {
        // Transient: the token source (metadata server, STS) did not answer. Otherwise the
        // credentials are unusable (bad key, deleted account): our access is gone.
        return if cred.is_transient() {
            BackendError::unreachable(format!(
                "{what}: could not get an access token (will retry)"
            ))
        } else {
            BackendError::new(
                FailureClass::Revoked,
                format!("{what}: the configured credentials cannot make an access token"),
            )
        };
    }
    if let Some(http) = err.http_status_code() {
        let class = match http {
            401 | 403 => FailureClass::Revoked,
            _ => FailureClass::Unreachable,
        };
        return BackendError::new(
            class,
            format!("{what}: HTTP {http} without a Cloud KMS error body"),
        );
    }
    let detail = if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_deserialization() {
        "unreadable response".to_owned()
    } else if let Some(io) = source_of::<std::io::Error>(err) {
        // The io::Error kind ("connection refused", "connection reset") is what an operator
        // needs; its full text may repeat the endpoint, which is not secret either.
        format!("no answer from Cloud KMS ({})", io.kind())
    } else {
        // Connect and I/O failures without an io::Error inside, and (impossible for a
        // validated key name) request-building errors: retrying is harmless.
        "no answer from Cloud KMS".to_owned()
    };
    BackendError::unreachable(format!("{what}: {detail}"))
}

fn class_for(op: Op, code: Code, message: &str) -> FailureClass {
    match code {
        Code::PermissionDenied | Code::Unauthenticated => FailureClass::Revoked,
        Code::NotFound => FailureClass::Destroyed,
        Code::FailedPrecondition => precondition_class(message),
        Code::InvalidArgument if names_checksum(message) => FailureClass::Unreachable,
        Code::InvalidArgument => match op {
            Op::Decrypt => FailureClass::InvalidCiphertext,
            // Encrypt carries the caller's plaintext and AAD: the request is at fault.
            Op::Encrypt => FailureClass::InvalidRequest,
            Op::GetCryptoKey | Op::TestIamPermissions => FailureClass::Disabled,
        },
        _ => FailureClass::Unreachable,
    }
}

/// Cloud KMS says "projects/…/cryptoKeyVersions/N is not enabled, current state is: STATE."
fn precondition_class(message: &str) -> FailureClass {
    let upper = message.to_ascii_uppercase();
    if upper.contains("DESTROY_SCHEDULED") || upper.contains("DESTROYED") {
        FailureClass::Destroyed
    } else if upper.contains("PENDING_GENERATION") || upper.contains("PENDING_IMPORT") {
        FailureClass::Unreachable
    } else {
        // DISABLED, no primary version, a key of another purpose: unusable until an
        // operator acts, and nothing says the material is gone.
        FailureClass::Disabled
    }
}

/// "The checksum in field plaintext_crc32c did not match the data in field plaintext."
fn names_checksum(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("crc32c") || lower.contains("checksum")
}

fn code_from_http(http: u16) -> Code {
    match http {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::Aborted,
        412 => Code::FailedPrecondition,
        429 => Code::ResourceExhausted,
        504 => Code::DeadlineExceeded,
        _ => Code::Unavailable,
    }
}

/// A response whose checksums do not add up: the bytes were corrupted on the way, so the
/// call is retried (Unreachable), as Google's data-integrity guide prescribes.
pub fn integrity(op: Op, what: &str) -> BackendError {
    BackendError::unreachable(format!(
        "{}: integrity check failed ({what}); retrying",
        op.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::rpc::Status;

    fn service(code: Code, msg: &str) -> GaxError {
        GaxError::service(Status::default().set_code(code).set_message(msg))
    }

    #[test]
    fn states_from_status() {
        let disabled = "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1 is not enabled, current state is: DISABLED.";
        let destroyed = disabled.replace("DISABLED", "DESTROYED");
        let scheduled = disabled.replace("DISABLED", "DESTROY_SCHEDULED");
        let cases = [
            (Op::Encrypt, Code::FailedPrecondition, disabled, FailureClass::Disabled),
            (Op::Decrypt, Code::FailedPrecondition, &destroyed, FailureClass::Destroyed),
            (Op::Encrypt, Code::FailedPrecondition, &scheduled, FailureClass::Destroyed),
            (Op::Encrypt, Code::FailedPrecondition, "version is PENDING_GENERATION", FailureClass::Unreachable),
            (Op::GetCryptoKey, Code::PermissionDenied, "Permission denied", FailureClass::Revoked),
            (Op::Encrypt, Code::Unauthenticated, "bad token", FailureClass::Revoked),
            (Op::GetCryptoKey, Code::NotFound, "not found", FailureClass::Destroyed),
            (Op::Decrypt, Code::InvalidArgument, "Decryption failed", FailureClass::InvalidCiphertext),
            (
                Op::Decrypt,
                Code::InvalidArgument,
                "The checksum in field ciphertext_crc32c did not match the data in field ciphertext.",
                FailureClass::Unreachable,
            ),
            (Op::Encrypt, Code::InvalidArgument, "The combined length of plaintext and additional_authenticated_data must be at most 8192 bytes for HSM keys.", FailureClass::InvalidRequest),
            (Op::GetCryptoKey, Code::InvalidArgument, "bad name", FailureClass::Disabled),
            (Op::Encrypt, Code::Unavailable, "", FailureClass::Unreachable),
            (Op::Encrypt, Code::ResourceExhausted, "quota", FailureClass::Unreachable),
            (Op::Decrypt, Code::DeadlineExceeded, "", FailureClass::Unreachable),
            (Op::Decrypt, Code::Internal, "", FailureClass::Unreachable),
        ];
        for (op, code, msg, want) in cases {
            let got = classify(op, &service(code, msg));
            assert_eq!(got.class, want, "{op:?} {code:?} {msg}");
            assert_eq!(
                got.throttled,
                code == Code::ResourceExhausted,
                "{op:?} {code:?}"
            );
            assert!(got.detail.starts_with(op.name()), "{}", got.detail);
        }
    }

    #[test]
    fn only_key_evidence_is_evidence() {
        use crate::state::KeyState;
        let disabled = "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1 is not enabled, current state is: DISABLED.";
        // A decrypt refused because the blob's version is off: refused, but not the key.
        let e = classify(Op::Decrypt, &service(Code::FailedPrecondition, disabled));
        assert_eq!((e.class, e.evidence()), (FailureClass::Disabled, None));
        // Encrypt uses the primary: that is the key's state.
        let e = classify(Op::Encrypt, &service(Code::FailedPrecondition, disabled));
        assert_eq!(e.evidence(), Some(KeyState::Disabled));
        // A denial on a crypto call is the whole key's, at once.
        for op in [Op::Encrypt, Op::Decrypt] {
            let e = classify(op, &service(Code::PermissionDenied, "Permission denied"));
            assert_eq!(e.evidence(), Some(KeyState::Revoked), "{op:?}");
        }
        // What the caller shaped is never evidence.
        for op in [Op::Encrypt, Op::Decrypt] {
            let e = classify(op, &service(Code::InvalidArgument, "too large"));
            assert_eq!(e.evidence(), None, "{op:?}");
        }
    }

    #[test]
    fn bare_http_statuses() {
        let http = |code| GaxError::http(code, Default::default(), "<html>".into());
        assert_eq!(
            classify(Op::Encrypt, &http(403)).class,
            FailureClass::Revoked
        );
        assert_eq!(
            classify(Op::Encrypt, &http(404)).class,
            FailureClass::Unreachable
        );
        assert_eq!(
            classify(Op::Encrypt, &http(502)).class,
            FailureClass::Unreachable
        );
    }

    #[test]
    fn long_messages_are_cut() {
        let e = classify(Op::Encrypt, &service(Code::Internal, &"x".repeat(1000)));
        assert!(e.detail.len() < 300);
    }
}
