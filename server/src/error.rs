//! The daemon's error type and the ONE conversion into `tonic::Status`.
//!
//! Every handler returns [`Error`]; the table of CONTRACT.md lives in `From<Error> for Status`
//! and nowhere else. Messages are short and human and never carry key material, credentials
//! or a URI's secret parameters: variants hold only names, states and redacted details.

use std::fmt;

use kms_broker_api::refusal::{Refusal, Scope};
use tonic::{Code, Status};

use crate::state::KeyState;

/// What can go wrong serving a request, in the contract's terms.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Malformed request, or a `wrapped` blob that does not parse or authenticate.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller has no identity the daemon accepts.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but the policy does not allow this.
    #[error("{0}")]
    PermissionDenied(String),
    /// Unknown key name, store id, or a store with no key yet.
    #[error("{0}")]
    NotFound(String),
    /// The key is DISABLED, REVOKED or DESTROYED (or a URI of it, for WrapKey).
    #[error("key {key:?} is {state}{}", detail_suffix(.detail))]
    KeyNotUsable {
        key: String,
        state: KeyState,
        detail: String,
    },
    /// The key is usable, but the key VERSION that wrapped this blob is not (disabled or
    /// destroyed at the KMS, or below Vault's `min_decryption_version`).
    #[error("key {key:?}: the version that wrapped this is {state}{}", detail_suffix(.detail))]
    VersionNotUsable {
        key: String,
        state: KeyState,
        detail: String,
    },
    /// The KMS did not answer in time, or kept throttling.
    #[error("{0}")]
    Unavailable(String),
    /// The thing to create exists already (and differs): nothing was replaced.
    #[error("{0}")]
    AlreadyExists(String),
    /// A fault of the daemon itself (disk, corrupt state). Logged in full, answered briefly.
    #[error("{0}")]
    Internal(String),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl Error {
    pub fn invalid(msg: impl fmt::Display) -> Self {
        Self::InvalidArgument(msg.to_string())
    }

    pub fn internal(msg: impl fmt::Display) -> Self {
        Self::Internal(msg.to_string())
    }

    /// The gRPC code this error answers with; also used for the outcome field of logs.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::NotFound(_) => Code::NotFound,
            Error::KeyNotUsable { .. } | Error::VersionNotUsable { .. } => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Internal(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let refusal = match &e {
            Error::KeyNotUsable { key, state, .. } => Some((key, state, Scope::Key)),
            Error::VersionNotUsable { key, state, .. } => Some((key, state, Scope::Version)),
            _ => None,
        };
        let mut status = Status::new(e.code(), e.to_string());
        if let Some((key, state, scope)) = refusal {
            Refusal {
                key: key.clone(),
                state: state.as_str().to_owned(),
                scope,
            }
            .attach(&mut status);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_precondition_names_the_state() {
        let s: Status = Error::KeyNotUsable {
            key: "primary".into(),
            state: KeyState::Disabled,
            detail: String::new(),
        }
        .into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().contains("DISABLED"), "{}", s.message());
        let r = Refusal::read(&s).expect("the refusal's metadata");
        assert_eq!(
            (r.key.as_str(), r.state.as_str(), r.scope),
            ("primary", "DISABLED", Scope::Key)
        );
        let s: Status = Error::VersionNotUsable {
            key: "primary".into(),
            state: KeyState::Destroyed,
            detail: "version 3".into(),
        }
        .into();
        let r = Refusal::read(&s).expect("the refusal's metadata");
        assert_eq!(
            (r.key.as_str(), r.state.as_str(), r.scope),
            ("primary", "DESTROYED", Scope::Version)
        );
        let s: Status = Error::Unavailable("the KMS did not answer".into()).into();
        assert_eq!(Refusal::read(&s), None);
    }
}
