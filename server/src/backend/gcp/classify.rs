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
//! | other `INVALID_ARGUMENT` on Encrypt / GetCryptoKey | Disabled (the key cannot serve us) |
//! | `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL`, other codes | Unreachable |
//! | a 401/403 without a Google body (e.g. a proxy) | Revoked |
//! | any other HTTP status without a Google body, incl. 404 | Unreachable |
//! | connect, timeout, I/O, a garbled response | Unreachable |
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

/// Longest slice of a server message we repeat.
const MAX_MESSAGE: usize = 200;

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
        return BackendError::new(class, format!("{what}: {} {msg}", code.name()));
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

/// The first error of type `T` in `err`'s source chain.
fn source_of<T: std::error::Error + 'static>(err: &GaxError) -> Option<&T> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        next = e.source();
    }
    None
}

fn class_for(op: Op, code: Code, message: &str) -> FailureClass {
    match code {
        Code::PermissionDenied | Code::Unauthenticated => FailureClass::Revoked,
        Code::NotFound => FailureClass::Destroyed,
        Code::FailedPrecondition => precondition_class(message),
        Code::InvalidArgument if names_checksum(message) => FailureClass::Unreachable,
        Code::InvalidArgument if op == Op::Decrypt => FailureClass::InvalidCiphertext,
        Code::InvalidArgument => FailureClass::Disabled,
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

fn short(message: &str) -> String {
    let one_line = message.replace(['\n', '\r'], " ");
    match one_line.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
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
            (Op::Encrypt, Code::InvalidArgument, "bad purpose", FailureClass::Disabled),
            (Op::Encrypt, Code::Unavailable, "", FailureClass::Unreachable),
            (Op::Encrypt, Code::ResourceExhausted, "quota", FailureClass::Unreachable),
            (Op::Decrypt, Code::DeadlineExceeded, "", FailureClass::Unreachable),
            (Op::Decrypt, Code::Internal, "", FailureClass::Unreachable),
        ];
        for (op, code, msg, want) in cases {
            let got = classify(op, &service(code, msg));
            assert_eq!(got.class, want, "{op:?} {code:?} {msg}");
            assert!(got.detail.starts_with(op.name()), "{}", got.detail);
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
