//! How to reach the daemon and how patiently.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Backoff, ClientError};

/// The daemon's default `[kms] deadline`: how long it may work on one KMS call.
pub const DAEMON_KMS_DEADLINE: Duration = Duration::from_secs(15);
/// How much longer than the daemon's KMS deadline a call timeout must be: the daemon's
/// own work and the answer's way back.
pub const CALL_TIMEOUT_MARGIN: Duration = Duration::from_secs(2);

/// Options for [`Client::connect`](crate::Client::connect). Build with struct-update syntax:
///
/// ```
/// use std::time::Duration;
/// use kms_broker_client::ClientOptions;
///
/// let opts = ClientOptions {
///     startup_deadline: Duration::from_secs(60),
///     ..ClientOptions::default()
/// };
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Client certificate and CA for `https://` endpoints (the daemon's TCP listener is
    /// mutual TLS only). Ignored for `unix:` endpoints, where the kernel vouches for the
    /// caller instead.
    pub tls: Option<TlsFiles>,
    /// Longest a single call may take, including connecting. Bounded so that a hung daemon
    /// turns into an error the node can report rather than a stuck start-up.
    /// Default 20 s; `None` waits forever.
    ///
    /// It must not undercut the daemon: [`Client::connect`](crate::Client::connect) refuses
    /// (a `Config` error) a timeout shorter than [`Self::daemon_kms_deadline`] plus
    /// [`CALL_TIMEOUT_MARGIN`]. A shorter one would give up while the daemon is still
    /// waiting on its KMS, turning the daemon's precise answer (UNAVAILABLE, or a key
    /// state) into a bare timeout, and a retry would then pile a second KMS call on the
    /// first.
    pub call_timeout: Option<Duration>,
    /// The daemon's `[kms] deadline` (default [`DAEMON_KMS_DEADLINE`], the daemon's
    /// default). Set it when the daemon's config sets another.
    pub daemon_kms_deadline: Duration,
    /// Longest a single connection attempt may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How long a call keeps retrying while the daemon is unreachable or `Unavailable`
    /// (a node usually starts with its daemon). Default 30 s; zero means one try. Calls that
    /// are not idempotent (WrapKey, RewrapKey, RotateStoreKey) retry only while the
    /// connection fails, when the request certainly never reached the daemon.
    pub startup_deadline: Duration,
    /// Delays between those retries.
    pub backoff: Backoff,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls: None,
            call_timeout: Some(Duration::from_secs(20)),
            daemon_kms_deadline: DAEMON_KMS_DEADLINE,
            connect_timeout: Duration::from_secs(5),
            startup_deadline: Duration::from_secs(30),
            backoff: Backoff::default(),
        }
    }
}

impl ClientOptions {
    /// Refuses a [`Self::call_timeout`] that would undercut the daemon's KMS deadline.
    pub fn validate(&self) -> Result<(), ClientError> {
        let floor = self.daemon_kms_deadline.saturating_add(CALL_TIMEOUT_MARGIN);
        match self.call_timeout {
            Some(t) if t < floor => Err(ClientError::Config(format!(
                "call_timeout {t:?} is shorter than the daemon's KMS deadline ({:?}) plus {:?}: \
                 the client would give up while the daemon still waits on its KMS; use at \
                 least {floor:?}, or set daemon_kms_deadline to the daemon's [kms] deadline",
                self.daemon_kms_deadline, CALL_TIMEOUT_MARGIN
            ))),
            _ => Ok(()),
        }
    }
}

/// PEM files for mutual TLS, e.g. those made by `kms-broker dev-certs --out DIR`
/// (`ca.pem`, `client.pem`, `client-key.pem`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed the daemon's server certificate.
    pub ca: PathBuf,
    /// This client's certificate (chain), signed by the CA the daemon trusts. Its SAN (or
    /// CN) is the identity the daemon's `cert:` policy entries match.
    pub cert: PathBuf,
    /// This client's private key.
    pub key: PathBuf,
    /// The name to verify in the server's certificate, when it differs from the endpoint's
    /// host (e.g. connecting by IP to a certificate issued for `localhost`).
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// The three files, verifying the server under the endpoint's host name.
    pub fn new(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsFiles {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            server_name: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_timeout_cannot_undercut_the_kms_deadline() {
        ClientOptions::default()
            .validate()
            .expect("the defaults fit");
        let short = ClientOptions {
            call_timeout: Some(Duration::from_secs(10)),
            ..ClientOptions::default()
        };
        let err = short.validate().unwrap_err();
        assert!(matches!(err, ClientError::Config(_)), "{err:?}");
        assert!(err.to_string().contains("17s"), "{err}");
        // Right for a daemon configured with a shorter deadline.
        let fits = ClientOptions {
            daemon_kms_deadline: Duration::from_secs(5),
            ..short
        };
        fits.validate().expect("10 s > 5 s + 2 s");
        let forever = ClientOptions {
            call_timeout: None,
            ..ClientOptions::default()
        };
        forever.validate().expect("no timeout never undercuts");
    }
}
