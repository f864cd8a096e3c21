//! AWS SDK errors, classified per operation into [`FailureClass`] (STYLE lesson 3).
//!
//! Typed variants first (`EncryptError::DisabledException`, …), then the error code of
//! unmodelled errors (`AccessDeniedException` and the auth codes are not in KMS's model),
//! then the HTTP status. Anything we cannot place is UNREACHABLE: the daemon retries it and
//! the grace period bounds it, where a wrong "revoked" would drop keys for nothing.
//!
//! A request the CALLER shaped can never change a key's state: on Encrypt and Decrypt a
//! `ValidationException` or another 4xx that names no key state is InvalidRequest (on
//! Decrypt: InvalidCiphertext, as the blob is what the caller sent). An authoritative
//! denial (`AccessDeniedException`, 403) on Encrypt or Decrypt is REVOKED for the whole
//! key: AWS has no per-version grants.

use std::error::Error as StdError;

use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::operation::decrypt::DecryptError;
use aws_sdk_kms::operation::describe_key::DescribeKeyError;
use aws_sdk_kms::operation::encrypt::EncryptError;
use aws_sdk_kms::types::{KeyMetadata, KeySpec, KeyState, KeyUsageType};
use aws_smithy_types::error::ErrorMetadata;

use crate::backend::error_text::{chain_of, chain_text, short};
use crate::backend::{BackendError, FailureClass};

use FailureClass::{Destroyed, Disabled, InvalidCiphertext, InvalidRequest, Revoked, Unreachable};

/// Error codes that mean "these credentials may not do this (any more)". KMS itself models
/// none of them; they come from IAM/STS and the request signer.
const AUTH_CODES: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidAccessKeyId",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "MissingAuthenticationTokenException",
    "NotAuthorized",
    "NotAuthorizedException",
    "AuthFailure",
    "OptInRequired",
];

/// Codes that mean "slow down": backed off longer (see `backend::resilient`).
const THROTTLE_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
];

/// Codes of transient trouble on AWS's side.
const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "KMSInternalException",
    "KMSInternal",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    "DependencyTimeoutException",
    "KeyUnavailableException",
];

pub(super) fn encrypt(err: &SdkError<EncryptError, HttpResponse>) -> BackendError {
    classify("Encrypt", Some(InvalidRequest), err, |e| match e {
        EncryptError::DisabledException(_) | EncryptError::InvalidKeyUsageException(_) => {
            Some(Disabled)
        }
        EncryptError::KmsInvalidStateException(_) | EncryptError::NotFoundException(_) => {
            Some(Destroyed)
        }
        EncryptError::InvalidGrantTokenException(_) => Some(Revoked),
        EncryptError::DependencyTimeoutException(_)
        | EncryptError::KmsInternalException(_)
        | EncryptError::KeyUnavailableException(_) => Some(Unreachable),
        // Plaintext over 4096 bytes, an encryption context KMS will not take.
        e if e.code() == Some("ValidationException") => Some(InvalidRequest),
        _ => None,
    })
}

pub(super) fn decrypt(err: &SdkError<DecryptError, HttpResponse>) -> BackendError {
    classify("Decrypt", Some(InvalidCiphertext), err, |e| match e {
        DecryptError::InvalidCiphertextException(_) | DecryptError::IncorrectKeyException(_) => {
            Some(InvalidCiphertext)
        }
        DecryptError::DisabledException(_) | DecryptError::InvalidKeyUsageException(_) => {
            Some(Disabled)
        }
        DecryptError::KmsInvalidStateException(_) | DecryptError::NotFoundException(_) => {
            Some(Destroyed)
        }
        DecryptError::InvalidGrantTokenException(_) => Some(Revoked),
        DecryptError::DependencyTimeoutException(_)
        | DecryptError::KmsInternalException(_)
        | DecryptError::KeyUnavailableException(_) => Some(Unreachable),
        // A blob KMS will not even parse (empty, over 6144 bytes) is a bad ciphertext.
        e if e.code() == Some("ValidationException") => Some(InvalidCiphertext),
        _ => None,
    })
}

pub(super) fn describe_key(err: &SdkError<DescribeKeyError, HttpResponse>) -> BackendError {
    classify("DescribeKey", None, err, |e| match e {
        DescribeKeyError::NotFoundException(_) | DescribeKeyError::InvalidArnException(_) => {
            Some(Destroyed)
        }
        DescribeKeyError::DependencyTimeoutException(_)
        | DescribeKeyError::KmsInternalException(_) => Some(Unreachable),
        _ => None,
    })
}

/// Whether DescribeKey's answer shows a key we can Encrypt and Decrypt with.
///
/// `PendingImport` (its imported material was deleted or expired) and `Unavailable` (its
/// custom key store is disconnected) are DISABLED: the key exists and its owner can bring it
/// back (re-import, reconnect), but until then it is off, deliberately or not, and a
/// revocation tool must not hand out keys under it. `Creating` and `Updating` pass on
/// their own: UNREACHABLE. A state this SDK does not know is DISABLED, to be safe.
pub(super) fn key_metadata(meta: &KeyMetadata) -> Result<(), BackendError> {
    let state = meta.key_state();
    let (class, why) = match state {
        Some(KeyState::Enabled) if meta.enabled() => {
            // Absent fields are not held against the key: Encrypt will tell.
            let usage_ok = meta
                .key_usage()
                .is_none_or(|u| *u == KeyUsageType::EncryptDecrypt);
            let spec_ok = meta
                .key_spec()
                .is_none_or(|s| *s == KeySpec::SymmetricDefault);
            if !(usage_ok && spec_ok) {
                return Err(BackendError::new(
                    Disabled,
                    "not a symmetric ENCRYPT_DECRYPT key (KeySpec SYMMETRIC_DEFAULT)",
                ));
            }
            return Ok(());
        }
        Some(KeyState::Enabled) | Some(KeyState::Disabled) => (Disabled, "key is disabled"),
        Some(KeyState::PendingDeletion) | Some(KeyState::PendingReplicaDeletion) => {
            (Destroyed, "key is scheduled for deletion")
        }
        Some(KeyState::PendingImport) => (Disabled, "key has no key material (re-import it)"),
        Some(KeyState::Unavailable) => (Disabled, "key's custom key store is disconnected"),
        Some(KeyState::Creating) | Some(KeyState::Updating) => {
            (Unreachable, "key is being created or updated")
        }
        _ => (Disabled, "key is in a state this daemon does not know"),
    };
    let shown = state.map(KeyState::as_str).unwrap_or("none");
    Err(BackendError::new(
        class,
        format!("DescribeKey: {why} (KeyState {shown})"),
    ))
}

/// The shared part: typed variant → error code → HTTP status, for a service error; the
/// transport kinds by what they are. `caller_4xx` is the class of a 4xx that names no key
/// state on an operation carrying the caller's data (`None`: the operation carries none).
fn classify<E>(
    op: &str,
    caller_4xx: Option<FailureClass>,
    err: &SdkError<E, HttpResponse>,
    typed: impl Fn(&E) -> Option<FailureClass>,
) -> BackendError
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => {
            let e = ctx.err();
            let status = ctx.raw().status().as_u16();
            // A typed error names itself in Display ("DisabledException: …") even where
            // its metadata carries no code.
            let shown = e.to_string();
            let code = e
                .code()
                .or_else(|| shown.split(':').next().filter(|c| !c.is_empty()))
                .unwrap_or("unknown error");
            let class = typed(e)
                .or_else(|| by_code(code, e.message().unwrap_or_default()))
                .unwrap_or_else(|| by_status(status, caller_4xx));
            let message = e
                .message()
                .map(|m| format!(": {}", short(m)))
                .unwrap_or_default();
            let e = BackendError::new(class, format!("{op}: {code} (HTTP {status}){message}"));
            if status == 429 || THROTTLE_CODES.contains(&code) {
                let retry_after = ctx
                    .raw()
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(std::time::Duration::from_secs);
                BackendError::throttled(e.detail, retry_after)
            } else {
                e
            }
        }
        SdkError::TimeoutError(_) => BackendError::unreachable(format!("{op}: timed out")),
        SdkError::ResponseError(ctx) => {
            let status = ctx.raw().status().as_u16();
            BackendError::new(
                by_status(status, None),
                format!("{op}: unreadable answer (HTTP {status})"),
            )
        }
        // Connection refused, TLS, DNS, and credential resolution (STS AssumeRole, IMDS,
        // …), which the SDK runs before sending: an auth refusal there means REVOKED.
        SdkError::DispatchFailure(_) => {
            let class = auth_refusal_in_chain(err).unwrap_or(Unreachable);
            BackendError::new(class, format!("{op}: {}", chain_text(err)))
        }
        _ => BackendError::unreachable(format!("{op}: {}", chain_text(err))),
    }
}

fn by_code(code: &str, message: &str) -> Option<FailureClass> {
    if AUTH_CODES.contains(&code) {
        // "Signature expired" is this node's clock, not a revocation.
        let clock = message.contains("Signature expired") || message.contains("not yet current");
        return Some(if clock { Unreachable } else { Revoked });
    }
    if TRANSIENT_CODES.contains(&code) {
        return Some(Unreachable);
    }
    match code {
        "DisabledException" => Some(Disabled),
        "KMSInvalidStateException" | "NotFoundException" => Some(Destroyed),
        _ => None,
    }
}

fn by_status(status: u16, caller_4xx: Option<FailureClass>) -> FailureClass {
    match (status, caller_4xx) {
        (401 | 403, _) => Revoked,
        // 408 and 429 are the service's trouble, not the request's.
        (400..=499, Some(caller)) if status != 408 && status != 429 => caller,
        // 5xx, and 4xx codes we do not know on a metadata call: retry, then UNREACHABLE.
        _ => Unreachable,
    }
}

/// An auth error code anywhere in the source chain (e.g. STS's `AccessDenied` inside a
/// credentials error), found either as an `ErrorMetadata` or as a typed error whose
/// Display starts with its code.
fn auth_refusal_in_chain(err: &(dyn StdError + 'static)) -> Option<FailureClass> {
    chain_of(err)
        .any(|e| {
            let code = match e.downcast_ref::<ErrorMetadata>() {
                Some(meta) => meta.code().map(str::to_owned),
                None => e.to_string().split(':').next().map(|s| s.trim().to_owned()),
            };
            code.is_some_and(|c| AUTH_CODES.contains(&c.as_str()))
        })
        .then_some(Revoked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kms::types::error::{DisabledException, IncorrectKeyException};
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_types::body::SdkBody;

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(status.try_into().expect("status"), SdkBody::empty())
    }

    fn generic(code: &str, message: &str) -> ErrorMetadata {
        ErrorMetadata::builder().code(code).message(message).build()
    }

    fn enc(code: &str, status: u16) -> FailureClass {
        let e = EncryptError::generic(generic(code, "m"));
        encrypt(&SdkError::service_error(e, response(status))).class
    }

    #[test]
    fn throttling_is_marked_and_its_retry_after_read() {
        let throttled = |code: &str, status: u16, retry_after: Option<&str>| {
            let e = EncryptError::generic(generic(code, "m"));
            let mut resp = response(status);
            if let Some(v) = retry_after {
                resp.headers_mut().insert("retry-after", v.to_owned());
            }
            let got = encrypt(&SdkError::service_error(e, resp));
            assert_eq!(got.class, Unreachable);
            (got.throttled, got.retry_after)
        };
        assert_eq!(throttled("ThrottlingException", 400, None), (true, None));
        assert_eq!(
            throttled("SomethingNew", 429, Some("3")),
            (true, Some(std::time::Duration::from_secs(3)))
        );
        assert_eq!(throttled("KMSInternalException", 500, None), (false, None));
    }

    #[test]
    fn typed_variants() {
        let e =
            EncryptError::DisabledException(DisabledException::builder().message("off").build());
        let got = encrypt(&SdkError::service_error(e, response(400)));
        assert_eq!(got.class, Disabled);
        assert!(got.detail.contains("DisabledException"), "{}", got.detail);
        let e = DecryptError::IncorrectKeyException(IncorrectKeyException::builder().build());
        assert_eq!(
            decrypt(&SdkError::service_error(e, response(400))).class,
            InvalidCiphertext
        );
    }

    #[test]
    fn codes_and_statuses() {
        for (code, status, want) in [
            ("AccessDeniedException", 400, Revoked),
            ("UnrecognizedClientException", 400, Revoked),
            ("InvalidClientTokenId", 403, Revoked),
            ("ExpiredTokenException", 400, Revoked),
            ("ThrottlingException", 400, Unreachable),
            ("KMSInternalException", 500, Unreachable),
            ("SomethingNew", 503, Unreachable),
            ("SomethingNew", 403, Revoked),
            ("SomethingNew", 400, InvalidRequest),
            ("SomethingNew", 429, Unreachable),
            ("ValidationException", 400, InvalidRequest),
            ("DisabledException", 400, Disabled),
            ("KMSInvalidStateException", 400, Destroyed),
            ("NotFoundException", 400, Destroyed),
        ] {
            assert_eq!(enc(code, status), want, "{code} {status}");
        }
        let e = DecryptError::generic(generic("ValidationException", "too long"));
        assert_eq!(
            decrypt(&SdkError::service_error(e, response(400))).class,
            InvalidCiphertext
        );
        let e = DecryptError::generic(generic("SomethingNew", "?"));
        assert_eq!(
            decrypt(&SdkError::service_error(e, response(400))).class,
            InvalidCiphertext
        );
        let e = DescribeKeyError::generic(generic("SomethingNew", "?"));
        assert_eq!(
            describe_key(&SdkError::service_error(e, response(400))).class,
            Unreachable
        );
        let e = DescribeKeyError::generic(generic("AccessDeniedException", "no"));
        assert_eq!(
            describe_key(&SdkError::service_error(e, response(400))).class,
            Revoked
        );
    }

    #[test]
    fn clock_skew_is_not_revocation() {
        let e = EncryptError::generic(generic(
            "InvalidSignatureException",
            "Signature expired: 2020 is now earlier than 2021",
        ));
        assert_eq!(
            encrypt(&SdkError::service_error(e, response(400))).class,
            Unreachable
        );
    }

    #[test]
    fn transport_failures() {
        let refused = SdkError::<EncryptError, HttpResponse>::dispatch_failure(ConnectorError::io(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
        ));
        assert_eq!(encrypt(&refused).class, Unreachable);
        // STS refusing AssumeRole surfaces as a dispatch failure carrying its ErrorMetadata.
        let sts = SdkError::<EncryptError, HttpResponse>::dispatch_failure(ConnectorError::other(
            Box::new(generic(
                "AccessDenied",
                "not authorized to perform sts:AssumeRole",
            )),
            None,
        ));
        assert_eq!(encrypt(&sts).class, Revoked);
        let timeout = SdkError::<EncryptError, HttpResponse>::timeout_error("slow");
        assert_eq!(encrypt(&timeout).class, Unreachable);
    }

    #[test]
    fn details_are_short() {
        let e = EncryptError::generic(generic("ThrottlingException", &"x".repeat(2000)));
        let got = encrypt(&SdkError::service_error(e, response(400)));
        assert!(got.detail.chars().count() < 300, "{}", got.detail.len());
    }
}
