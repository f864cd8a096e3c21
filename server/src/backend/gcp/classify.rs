//! Cloud KMS failures, classified per operation into the contract's states (STYLE lesson 3).
//!
//! Classification reads what Google sends as STRUCTURE (AIP-193, "Errors"): the status
//! code, the `google.rpc.ErrorInfo.reason`, the `google.rpc.PreconditionFailure` violation
//! types (Cloud EKM's "error domain", kms/docs/reference/ekm_errors), the
//! `google.rpc.RetryInfo` delay, and of the free-text message only its documented
//! "…, current state is: STATE." ending. Never a substring search over the whole message:
//! it names resources, and a key ring called `destroyed-ring` is not a destroyed key.
//!
//! | Cloud KMS answer | class |
//! | --- | --- |
//! | `PERMISSION_DENIED` (403), `UNAUTHENTICATED` (401), credentials that cannot make a token | Revoked |
//! | `PERMISSION_DENIED` with reason `SERVICE_DISABLED` / `BILLING_DISABLED` | Unreachable, not retried (see [`project_off`]) |
//! | `NOT_FOUND` (404 with a Google error body) | Destroyed: the key does not exist (see `class_for`) |
//! | `FAILED_PRECONDITION` "…, current state is: DISABLED." | Disabled |
//! | `FAILED_PRECONDITION` "…, current state is: DESTROYED / DESTROY_SCHEDULED." | Destroyed |
//! | `FAILED_PRECONDITION` "…, current state is: PENDING_GENERATION / PENDING_IMPORT." | Unreachable (it settles) |
//! | `FAILED_PRECONDITION`, EKM domain `EXTERNAL_PERMISSION_DENIED` | Revoked (at the external key manager) |
//! | `FAILED_PRECONDITION`, any other EKM domain (`EXTERNAL_…`) | Unreachable (the EKM, not the key) |
//! | other `FAILED_PRECONDITION` (no primary version, wrong purpose) | Disabled |
//! | `INVALID_ARGUMENT` on a checksum field (`…_crc32c`) | Unreachable (corrupted in transit) |
//! | other `INVALID_ARGUMENT` on Decrypt | InvalidCiphertext |
//! | other `INVALID_ARGUMENT` on Encrypt (too large for an HSM key, …) | InvalidRequest |
//! | other `INVALID_ARGUMENT` on GetCryptoKey / TestIamPermissions | Disabled (the key cannot serve us) |
//! | `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL` | Unreachable, retried |
//! | `RESOURCE_EXHAUSTED` (429, quota) | Unreachable, throttled: slower backoff, `RetryInfo` honoured |
//! | any other code (`UNIMPLEMENTED`, `UNKNOWN`, `ABORTED`, `DATA_LOSS`, …) | Unreachable, not retried |
//! | a 401/403 without a Google body (e.g. a proxy) | Revoked |
//! | any other HTTP status without a Google body, incl. 404 | Unreachable |
//! | connect, timeout, I/O, a garbled response | Unreachable, retried |
//!
//! Retries follow Google's generated Cloud KMS clients: their retry codes are
//! `DEADLINE_EXCEEDED` and `UNAVAILABLE` with exponential backoff
//! (`key_management_service_client_config.json` of `@google-cloud/kms`, "idempotent"; up to
//! 2.3.0 also `INTERNAL`, "deadline_exceeded_internal_unavailable"). `INTERNAL` is retried
//! here too: it is a transient server fault, and Encrypt and Decrypt change nothing, so a
//! second attempt is harmless. `RESOURCE_EXHAUSTED` (quota, refilled per minute) is retried
//! with a slower backoff that honours `RetryInfo.retry_delay` (AIP-193). Everything else
//! (`UNIMPLEMENTED`, `UNKNOWN`, `ABORTED`, …) would be the same on the next attempt.
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
//! Missing key or no grant: Cloud KMS answers a caller without access to the key ring
//! `403 "Permission '…' denied on resource '…' (or it may not exist)."` for both, and
//! `NOT_FOUND` only to a caller with a grant on the ring or project (IAM's "(or it may not
//! exist)" convention). So a 403's detail says it may be either, and a `NOT_FOUND` is real
//! evidence that the key does not exist.
//!
//! A bare 404 (no Google error body) is not proof that the key is gone: it is what a wrong
//! `GCP_ENDPOINT` or a proxy answers, and DESTROYED drops held key material at once.
//!
//! Details carry the operation, the code and Google's message (which names resources, never
//! our credentials); transport errors are described in our own words, and credential errors
//! never include their source, which could quote the key file.

use std::time::Duration;

use google_cloud_gax::error::rpc::{Code, Status, StatusDetails};
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
    pub fn name(self) -> &'static str {
        match self {
            Op::Encrypt => "Encrypt",
            Op::Decrypt => "Decrypt",
            Op::GetCryptoKey => "GetCryptoKey",
            Op::TestIamPermissions => "TestIamPermissions",
        }
    }
}

/// The structured part of a Google error (`google.rpc.Status.details`).
#[derive(Debug, Default)]
struct Details<'a> {
    /// `ErrorInfo.reason` (e.g. `IAM_PERMISSION_DENIED`, `SERVICE_DISABLED`).
    reason: Option<&'a str>,
    /// `PreconditionFailure` violation types (Cloud EKM's error domains).
    violations: Vec<&'a str>,
    /// `RetryInfo.retry_delay`.
    retry_delay: Option<Duration>,
    /// `BadRequest` field names.
    bad_fields: Vec<&'a str>,
}

impl<'a> Details<'a> {
    fn of(status: &'a Status) -> Self {
        let mut d = Details::default();
        for detail in &status.details {
            match detail {
                StatusDetails::ErrorInfo(info) if d.reason.is_none() => {
                    d.reason = Some(info.reason.as_str()).filter(|r| !r.is_empty());
                }
                StatusDetails::PreconditionFailure(p) => {
                    d.violations
                        .extend(p.violations.iter().map(|v| v.r#type.as_str()));
                }
                StatusDetails::RetryInfo(r) => {
                    d.retry_delay = r
                        .retry_delay
                        .and_then(|delay| Duration::try_from(delay).ok());
                }
                StatusDetails::BadRequest(b) => {
                    d.bad_fields
                        .extend(b.field_violations.iter().map(|f| f.field.as_str()));
                }
                _ => {}
            }
        }
        d
    }

    /// The Cloud EKM error domain, if the error came from an external key manager.
    fn ekm_domain(&self) -> Option<&'a str> {
        self.violations
            .iter()
            .copied()
            .find(|t| t.starts_with("EXTERNAL_"))
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
        return from_status(op, code, status);
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

fn from_status(op: Op, code: Code, status: &Status) -> BackendError {
    let d = Details::of(status);
    let msg = short(&status.message);
    let name = code.name();
    let what = op.name();
    let (class, why) = class_for(op, code, &status.message, &d);
    let shown = match d.reason {
        Some(r) => format!("{name} ({r})"),
        None => name.to_owned(),
    };
    let detail = match why {
        Some(why) => format!("{what}: {shown} {msg} [{why}]"),
        None => format!("{what}: {shown} {msg}"),
    };
    if code == Code::ResourceExhausted && class == FailureClass::Unreachable {
        // Quota (429): back off longer, for as long as RetryInfo says where it says.
        return BackendError::throttled(detail, d.retry_delay);
    }
    let e = BackendError::new(class, detail);
    if class == FailureClass::Unreachable && !retried(code) {
        return e.not_retryable();
    }
    if op == Op::Decrypt && code == Code::FailedPrecondition && d.ekm_domain().is_none() {
        e.version_scoped()
    } else {
        e
    }
}

/// Whether another attempt may succeed: Google's retryable codes (module docs), and an
/// answer that is about the moment (a version still being generated, an EKM outage).
fn retried(code: Code) -> bool {
    match code {
        Code::Unavailable | Code::DeadlineExceeded | Code::Internal => true,
        // Classified Unreachable because it settles by itself: a version being generated,
        // a checksum damaged in transit, an external key manager that did not answer.
        Code::FailedPrecondition | Code::InvalidArgument => true,
        // Incl. the 403s of a disabled API or billing ([`project_off`]).
        _ => false,
    }
}

/// A 403 that is about the key's PROJECT, not the key: the Cloud KMS API is disabled there
/// (`SERVICE_DISABLED`) or its billing is (`BILLING_DISABLED`) (ErrorInfo reasons of the
/// `googleapis.com` domain).
///
/// Not Revoked: nobody took our permission on the key away, and REVOKED would tell the
/// operator the customer revoked it and drop every held store key at once. It is
/// Unreachable instead: the KMS cannot serve us, held key material lives out the grace
/// period and then nothing is handed out (fails closed), RevokeStatus names the cause,
/// and as soon as the project is fixed the next poll makes it ACTIVE. Not retried:
/// retrying within seconds cannot enable an API.
fn project_off(d: &Details) -> Option<&'static str> {
    match d.reason {
        Some("SERVICE_DISABLED") => Some("the Cloud KMS API is disabled in the key's project: not a revocation of the key; enable cloudkms.googleapis.com"),
        Some("BILLING_DISABLED") => Some("billing is disabled on the key's project: not a revocation of the key; re-enable billing"),
        _ => None,
    }
}

fn class_for(
    op: Op,
    code: Code,
    message: &str,
    d: &Details,
) -> (FailureClass, Option<&'static str>) {
    match code {
        Code::PermissionDenied => match project_off(d) {
            Some(why) => (FailureClass::Unreachable, Some(why)),
            None => (
                FailureClass::Revoked,
                Some("not granted, or the key does not exist: Cloud KMS does not say which to a caller without access to the key ring"),
            ),
        },
        Code::Unauthenticated => (FailureClass::Revoked, None),
        // Only a caller with a grant on the ring or project is told NOT_FOUND, so this is
        // real evidence. Cloud KMS deletes a key (DeleteCryptoKey) only after every version
        // was destroyed and deleted, so a key that is gone had its material destroyed; one
        // that never existed (a typo in the URI) never wrapped anything we hold.
        Code::NotFound => (
            FailureClass::Destroyed,
            Some("the key does not exist (deleted, or never created: check the URI)"),
        ),
        Code::FailedPrecondition => precondition_class(message, d),
        Code::InvalidArgument if names_checksum(message, d) => {
            (FailureClass::Unreachable, Some("corrupted in transit"))
        }
        Code::InvalidArgument => match op {
            Op::Decrypt => (FailureClass::InvalidCiphertext, None),
            // Encrypt carries the caller's plaintext and AAD: the request is at fault.
            Op::Encrypt => (FailureClass::InvalidRequest, None),
            Op::GetCryptoKey | Op::TestIamPermissions => (FailureClass::Disabled, None),
        },
        _ => (FailureClass::Unreachable, None),
    }
}

fn precondition_class(message: &str, d: &Details) -> (FailureClass, Option<&'static str>) {
    // Cloud EKM: violation[1].type is the "error domain" (kms/docs/reference/ekm_errors).
    // EXTERNAL_PERMISSION_DENIED is the external key manager refusing Cloud KMS: the
    // customer revoked access at the EKM (Cloud EKM also disables the version). Any other
    // domain is the EKM or the path to it failing (unreachable, timed out, misconfigured):
    // not the key's state, and not a revocation.
    if let Some(domain) = d.ekm_domain() {
        return if domain == "EXTERNAL_PERMISSION_DENIED" {
            (
                FailureClass::Revoked,
                Some("the external key manager denied access (EKM)"),
            )
        } else {
            (
                FailureClass::Unreachable,
                Some("the external key manager failed (EKM): not the key's state"),
            )
        };
    }
    match current_state(message) {
        Some(
            "DESTROYED"
            | "DESTROY_SCHEDULED"
            | "PENDING_EXTERNAL_DESTRUCTION"
            | "EXTERNAL_DESTRUCTION_FAILED",
        ) => (FailureClass::Destroyed, None),
        Some("PENDING_GENERATION" | "PENDING_IMPORT") => (FailureClass::Unreachable, None),
        // DISABLED, IMPORT_FAILED, GENERATION_FAILED, no primary version, a key of another
        // purpose: unusable until an operator acts, and nothing says the material is gone.
        _ => (FailureClass::Disabled, None),
    }
}

/// The STATE of Cloud KMS's "projects/…/cryptoKeyVersions/N is not enabled, current state
/// is: STATE." — the message's documented ending, and nothing else of it.
fn current_state(message: &str) -> Option<&str> {
    let (_, tail) = message.trim_end().rsplit_once("current state is: ")?;
    let state = tail.strip_suffix('.').unwrap_or(tail);
    state
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'_')
        .then_some(state)
        .filter(|s| !s.is_empty())
}

/// A checksum Cloud KMS could not verify: a `BadRequest` naming a `…_crc32c` field, or
/// its message "The checksum in field X_crc32c did not match the data in field X." (read
/// from its start, where no resource name can be).
fn names_checksum(message: &str, d: &Details) -> bool {
    d.bad_fields.iter().any(|f| f.ends_with("_crc32c"))
        || message.starts_with("The checksum in field ")
}

/// The code of a Google-shaped error body that names no `status` (Google's own always do):
/// from its HTTP status, as google.rpc.Code maps them. A bare 500 stays UNKNOWN (not
/// retried): Google sends INTERNAL, which is, with its name.
fn code_from_http(http: u16) -> Code {
    match http {
        500 => Code::Unknown,
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::Aborted,
        412 => Code::FailedPrecondition,
        429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
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
mod tests;
