//! How to reach the daemon and how patiently.

use std::path::PathBuf;
use std::time::Duration;

use crate::Backoff;

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
    /// Default 10 s; `None` waits forever.
    pub call_timeout: Option<Duration>,
    /// Longest a single connection attempt may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How long [`Client::get_store_key`](crate::Client::get_store_key) keeps retrying
    /// while the daemon is unreachable or `Unavailable`. Default 30 s; zero means one try.
    pub startup_deadline: Duration,
    /// Delays between those retries.
    pub backoff: Backoff,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls: None,
            call_timeout: Some(Duration::from_secs(10)),
            connect_timeout: Duration::from_secs(5),
            startup_deadline: Duration::from_secs(30),
            backoff: Backoff::default(),
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
