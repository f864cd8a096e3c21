//! The client's error type, keeping the gRPC code so callers can branch on it.

use std::error::Error as _;
use std::time::Duration;

use kms_broker_api::refusal::{Refusal, Scope};
use tonic::Code;

use crate::KeyState;

/// What went wrong in a call to the daemon.
///
/// Messages are the daemon's short status messages or a transport description; they
/// never contain key bytes (the daemon's contract forbids them in statuses, and this crate
/// never formats response payloads).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint or options are unusable (bad URI, unreadable TLS file). Not retried:
    /// the same input fails the same way.
    #[error("kms-broker client configuration: {0}")]
    Config(String),

    /// The daemon could not be reached (nothing listening yet, connection refused or reset).
    /// Retried by [`Client::get_store_key`](crate::Client::get_store_key) until the start-up
    /// deadline, since a node usually starts alongside the daemon.
    #[error("cannot reach kms-broker at {endpoint}: {message}")]
    Connect {
        /// The endpoint as given to [`Client::connect`](crate::Client::connect).
        endpoint: String,
        /// The transport's description of the failure.
        message: String,
    },

    /// The TLS handshake with the daemon failed (a certificate the daemon does not trust,
    /// or a server certificate this client does not): never a daemon answer, and not
    /// retried, since the same files fail the same way. Code `Unavailable`, as a gRPC
    /// client would see it.
    #[error("TLS with kms-broker at {endpoint} failed: {message}")]
    Tls {
        /// The endpoint as given to [`Client::connect`](crate::Client::connect).
        endpoint: String,
        /// The TLS library's description of the failure.
        message: String,
    },

    /// No answer within [`ClientOptions::call_timeout`](crate::ClientOptions::call_timeout).
    #[error("kms-broker did not answer within {0:?}")]
    Timeout(Duration),

    /// The daemon answered with an error status.
    #[error("kms-broker: {code:?}: {message}")]
    Status {
        /// The gRPC code, as listed in the daemon's contract.
        code: Code,
        /// The daemon's short, human message.
        message: String,
    },

    /// The key is switched off, revoked or destroyed at the KMS: the daemon answered
    /// `FAILED_PRECONDITION` naming the key and its state. Match on `state` to tell a
    /// reversible [`KeyState::Disabled`] from [`KeyState::Revoked`] (our access was taken
    /// away) and [`KeyState::Destroyed`] (the data under it is gone for good). Not retried:
    /// the state changes only at the KMS.
    #[error("kms-broker: key {key:?} is not usable: {message}")]
    KeyNotUsable {
        /// The configured key name.
        key: String,
        /// Its state, as the daemon saw it.
        state: KeyState,
        /// The daemon's full message (state and the KMS's short explanation).
        message: String,
    },

    /// The key is usable, but the key VERSION that wrapped this blob is not (disabled or
    /// destroyed at the KMS, or below Vault's `min_decryption_version`): only blobs of
    /// that version are refused. Re-enable the version and re-wrap (RewrapKey) before
    /// retiring it. Not retried.
    #[error("kms-broker: key {key:?}: the version that wrapped this is not usable: {message}")]
    VersionNotUsable {
        /// The configured key name.
        key: String,
        /// The version's state, as the KMS reported it.
        state: KeyState,
        /// The daemon's full message.
        message: String,
    },

    /// The daemon answered, but not in the shape the contract promises (e.g. a store key
    /// of the wrong length). Not retried: it points at a version mismatch or a bug.
    #[error("kms-broker sent an invalid response: {0}")]
    InvalidResponse(String),
}

impl ClientError {
    /// The gRPC code of this error. Errors that did not come from the daemon map to the
    /// code a gRPC client would see for them: `Connect` → `Unavailable`, `Timeout` →
    /// `DeadlineExceeded`, `Config` → `InvalidArgument`, `InvalidResponse` → `Internal`.
    pub fn code(&self) -> Code {
        match self {
            ClientError::Config(_) => Code::InvalidArgument,
            ClientError::Connect { .. } | ClientError::Tls { .. } => Code::Unavailable,
            ClientError::Timeout(_) => Code::DeadlineExceeded,
            ClientError::Status { code, .. } => *code,
            ClientError::KeyNotUsable { .. } | ClientError::VersionNotUsable { .. } => {
                Code::FailedPrecondition
            }
            ClientError::InvalidResponse(_) => Code::Internal,
        }
    }

    /// Whether a retry may succeed while the daemon (or its KMS) is still starting: the
    /// daemon is unreachable, slow, or says `Unavailable`. Everything else (`NotFound`,
    /// `PermissionDenied`, `FailedPrecondition`, ...) is an answer, and asking again would
    /// only delay the caller's failure.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Timeout(_) => true,
            ClientError::Status { code, .. } => retryable_code(*code),
            ClientError::Config(_)
            | ClientError::Tls { .. }
            | ClientError::InvalidResponse(_)
            | ClientError::KeyNotUsable { .. }
            | ClientError::VersionNotUsable { .. } => false,
        }
    }

    /// Sorts a tonic status into daemon answers and local transport failures. Statuses
    /// decoded from the daemon's trailers never carry a `source`; tonic attaches one only
    /// to statuses it makes locally from a transport error, which is how a connection
    /// failure reported as `Unknown` is told apart from a daemon that answered `Unknown`.
    pub(crate) fn from_status(status: tonic::Status, endpoint: &str, timeout: Duration) -> Self {
        let mut cause = status.source();
        let mut transport = false;
        // rustls reports a failed handshake (a bad certificate, a fatal alert) as an
        // io::Error of kind InvalidData; refused or reset connections are other kinds.
        let mut tls = false;
        while let Some(err) = cause {
            tls |= err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::InvalidData);
            if err.is::<tonic::TimeoutExpired>() {
                return ClientError::Timeout(timeout);
            }
            transport |= err.is::<tonic::ConnectError>()
                || err.is::<tonic::transport::Error>()
                || err.is::<hyper::Error>()
                || err.is::<std::io::Error>();
            cause = err.source();
        }
        let code = status.code();
        if transport && matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled) {
            if tls {
                return ClientError::Tls {
                    endpoint: endpoint.to_owned(),
                    message: describe_transport(&status),
                };
            }
            return ClientError::Connect {
                endpoint: endpoint.to_owned(),
                message: describe_transport(&status),
            };
        }
        let message = status.message().to_owned();
        if let Some(r) = Refusal::read(&status) {
            if let Some(state) = KeyState::from_name(&r.state) {
                let key = r.key;
                return match r.scope {
                    Scope::Key => ClientError::KeyNotUsable {
                        key,
                        state,
                        message,
                    },
                    Scope::Version => ClientError::VersionNotUsable {
                        key,
                        state,
                        message,
                    },
                };
            }
        }
        ClientError::Status { code, message }
    }

    /// The key's state, for a [`ClientError::KeyNotUsable`] (and the version's, for a
    /// [`ClientError::VersionNotUsable`]).
    pub fn key_state(&self) -> Option<KeyState> {
        match self {
            ClientError::KeyNotUsable { state, .. }
            | ClientError::VersionNotUsable { state, .. } => Some(*state),
            _ => None,
        }
    }

    /// Whether the request certainly never reached the daemon (the connection failed), so
    /// that even a call that is not idempotent may be sent again.
    pub fn never_sent(&self) -> bool {
        matches!(self, ClientError::Connect { .. })
    }
}

/// Codes that mean "not now" rather than "no": only `Unavailable`. (Transport failures
/// that tonic reports as `Unknown` become [`ClientError::Connect`] first.)
pub fn retryable_code(code: Code) -> bool {
    code == Code::Unavailable
}

/// The status message plus the innermost cause ("No such file or directory"), which is
/// what tells an operator whether the daemon is down or the path is wrong.
fn describe_transport(status: &tonic::Status) -> String {
    let mut innermost = None;
    let mut cause = status.source();
    while let Some(err) = cause {
        innermost = Some(err);
        cause = err.source();
    }
    match innermost {
        Some(err) if !status.message().contains(&err.to_string()) => {
            format!("{}: {err}", status.message())
        }
        _ => status.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    fn status_err(code: Code) -> ClientError {
        ClientError::from_status(tonic::Status::new(code, "m"), "unix:///x", T)
    }

    #[test]
    fn only_unavailable_answers_are_retried() {
        assert!(status_err(Code::Unavailable).is_retryable());
        for code in [
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::Unknown,
            Code::Internal,
            Code::Cancelled,
        ] {
            let err = status_err(code);
            assert_eq!(err.code(), code);
            assert!(!err.is_retryable(), "{code:?} must not be retried");
        }
    }

    #[test]
    fn transport_failures_are_connect_errors() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such socket");
        let status = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(io))));
        let err = ClientError::from_status(status, "unix:///x", T);
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
        assert!(err.is_retryable());
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.to_string().contains("no such socket"), "{err}");

        // A reset connection that tonic can only call Unknown is still a transport failure.
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let status = tonic::Status::from_error(Box::new(reset));
        assert_eq!(status.code(), Code::Unknown);
        assert!(ClientError::from_status(status, "unix:///x", T).is_retryable());
    }

    #[test]
    fn a_failed_tls_handshake_is_not_retried() {
        let bad = std::io::Error::new(std::io::ErrorKind::InvalidData, "invalid peer certificate");
        let status = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(bad))));
        let err = ClientError::from_status(status, "https://x:1", T);
        assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
        assert!(!err.is_retryable());
        assert_eq!(err.code(), Code::Unavailable);
    }

    #[test]
    fn timeouts_are_retryable() {
        let status = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        let err = ClientError::from_status(status, "unix:///x", T);
        assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
        assert!(err.is_retryable());
    }

    /// A FAILED_PRECONDITION as the daemon sends it: the message and the refusal's metadata.
    fn refused(key: &str, state: &str, scope: Scope, msg: &str) -> tonic::Status {
        let mut s = tonic::Status::new(Code::FailedPrecondition, msg);
        Refusal {
            key: key.into(),
            state: state.into(),
            scope,
        }
        .attach(&mut s);
        s
    }

    #[test]
    fn key_states_are_typed() {
        for (state, want) in [
            ("DISABLED", KeyState::Disabled),
            ("REVOKED", KeyState::Revoked),
            ("DESTROYED", KeyState::Destroyed),
        ] {
            let msg = format!("key \"primary\" is {state}: KMS says so");
            let s = refused("primary", state, Scope::Key, &msg);
            let err = ClientError::from_status(s, "unix:///x", T);
            match &err {
                ClientError::KeyNotUsable {
                    key,
                    state,
                    message,
                } => {
                    assert_eq!((key.as_str(), *state), ("primary", want));
                    assert_eq!(message, &msg);
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(err.code(), Code::FailedPrecondition);
            assert_eq!(err.key_state(), Some(want));
            assert!(!err.is_retryable());
        }
        // A version, not the key: its own variant, so a caller knows to re-wrap.
        let s = refused(
            "primary",
            "DISABLED",
            Scope::Version,
            "version 3 is DISABLED",
        );
        let err = ClientError::from_status(s, "unix:///x", T);
        match &err {
            ClientError::VersionNotUsable { key, state, .. } => {
                assert_eq!((key.as_str(), *state), ("primary", KeyState::Disabled));
            }
            other => panic!("{other:?}"),
        }
        assert!(!err.is_retryable());
        assert_eq!(err.code(), Code::FailedPrecondition);
        // Without the metadata, or with a state the client does not know, a plain status
        // with its code: the message alone is never parsed.
        for s in [
            tonic::Status::new(Code::FailedPrecondition, "key \"k\" is DISABLED"),
            refused("k", "SLEEPY", Scope::Key, "key \"k\" is SLEEPY"),
        ] {
            let err = ClientError::from_status(s, "unix:///x", T);
            assert!(matches!(err, ClientError::Status { .. }), "{err:?}");
            assert_eq!(err.code(), Code::FailedPrecondition);
        }
    }

    #[test]
    fn local_errors_are_not_retried() {
        assert!(!ClientError::Config("x".into()).is_retryable());
        assert!(!ClientError::InvalidResponse("x".into()).is_retryable());
    }
}
