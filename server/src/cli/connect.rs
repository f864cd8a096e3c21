//! Reaching a running daemon: its Unix socket (named directly or through the config's
//! `unix_socket`), or its mutual-TLS listener. The operator commands are clients only: they
//! never open the state dir.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};
use zeroize::Zeroizing;

use super::CliError;
use kms_broker::config::Config;
use kms_broker::pb::key_broker_client::KeyBrokerClient;

pub type Client = KeyBrokerClient<Channel>;

/// A daemon that has not accepted the connection by then is reported unreachable (69).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds every call: a re-wrap of one store is a few KMS calls, each bounded by the
/// daemon's own `[kms] deadline`, so this only catches a daemon that stopped answering.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest PEM file read for `--ca`, `--cert` and `--key`.
const MAX_PEM: u64 = 1 << 20;

/// Where the daemon listens. Exactly one of `--socket`, `--config` or `--endpoint`.
#[derive(Args, Debug, Clone)]
#[group(skip)]
#[command(group(
    clap::ArgGroup::new("daemon")
        .required(true)
        .multiple(false)
        .args(["socket", "config", "endpoint"])
))]
pub struct DaemonArgs {
    /// The daemon's Unix socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The daemon's config file: its `server.unix_socket` is used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The daemon's mutual-TLS listener, `https://HOST:PORT` (needs --ca, --cert, --key).
    #[arg(long, requires_all = ["ca", "cert", "key"])]
    endpoint: Option<String>,
    /// With --endpoint: the CA that signed the daemon's server certificate.
    #[arg(long, requires = "endpoint")]
    ca: Option<PathBuf>,
    /// With --endpoint: this client's certificate (its SAN is the policy's `cert:` identity).
    #[arg(long, requires = "endpoint")]
    cert: Option<PathBuf>,
    /// With --endpoint: this client's private key.
    #[arg(long, requires = "endpoint")]
    key: Option<PathBuf>,
}

impl DaemonArgs {
    /// Connects now, so that a daemon that is down is told apart (69) from one that refuses.
    pub async fn connect(&self) -> Result<Client, CliError> {
        let channel = if let Some(endpoint) = &self.endpoint {
            self.connect_tls(endpoint).await?
        } else {
            let path = match (&self.socket, &self.config) {
                (Some(p), _) => p.clone(),
                (None, Some(c)) => {
                    Config::load(c)
                        .map_err(|e| CliError::Usage(format!("bad config: {e}")))?
                        .server
                        .unix_socket
                }
                (None, None) => {
                    return Err(CliError::Usage(
                        "say where the daemon is: --socket, --config or --endpoint".into(),
                    ))
                }
            };
            let shown = path.display().to_string();
            // h2 rejects a socket path as `:authority`, so the URI names `localhost`; the
            // connector ignores it and dials the socket.
            let connector = tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
            });
            options(Endpoint::from_static("http://localhost"))
                .connect_with_connector(connector)
                .await
                .map_err(|e| unreachable_at(&shown, &e))?
        };
        Ok(KeyBrokerClient::new(channel))
    }

    async fn connect_tls(&self, endpoint: &str) -> Result<Channel, CliError> {
        if !endpoint.starts_with("https://") {
            return Err(CliError::Usage(format!(
                "--endpoint {endpoint:?}: the daemon's TCP listener speaks only mutual TLS; write https://HOST:PORT"
            )));
        }
        let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) else {
            return Err(CliError::Usage(
                "--endpoint needs --ca, --cert and --key (mutual TLS)".into(),
            ));
        };
        let ca = read_pem("--ca", ca)?;
        let cert = read_pem("--cert", cert)?;
        let key = read_pem("--key", key)?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key.as_slice()));
        let bad =
            |e: tonic::transport::Error| CliError::Usage(format!("--endpoint {endpoint:?}: {e}"));
        let ep = Endpoint::from_shared(endpoint.to_owned())
            .map_err(bad)?
            .tls_config(tls)
            .map_err(bad)?;
        options(ep)
            .connect()
            .await
            .map_err(|e| unreachable_at(endpoint, &e))
    }
}

fn options(ep: Endpoint) -> Endpoint {
    ep.connect_timeout(CONNECT_TIMEOUT).timeout(CALL_TIMEOUT)
}

fn read_pem(flag: &str, path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, CliError> {
    use std::io::Read;
    let mut buf = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM).read_to_end(&mut buf))
        .map_err(|e| CliError::Usage(format!("{flag} {}: {e}", path.display())))?;
    Ok(buf)
}

/// The transport error and its innermost cause ("No such file or directory", "Connection
/// refused"), which is what tells an operator whether the daemon is down or the path wrong.
fn unreachable_at(target: &str, e: &(dyn std::error::Error + 'static)) -> CliError {
    CliError::Unreachable(format!("cannot reach kms-broker at {target}: {}", chain(e)))
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// Sorts a failed call into the daemon's answer (a refusal, exit 1) and a failure to talk
/// to it (exit 69). Statuses decoded from the daemon's trailers never carry a `source`;
/// tonic attaches one only to statuses it makes locally, from a transport error (refused,
/// reset, closed connection) or a timeout.
pub fn call_failed(op: &str, status: tonic::Status) -> CliError {
    use std::error::Error as _;
    let Some(source) = status.source() else {
        return CliError::Refused {
            op: op.to_owned(),
            status,
        };
    };
    let mut cause = Some(source);
    while let Some(err) = cause {
        if err.is::<tonic::TimeoutExpired>() {
            return CliError::Unreachable(format!(
                "{op}: the daemon did not answer within {CALL_TIMEOUT:?}"
            ));
        }
        cause = err.source();
    }
    CliError::Unreachable(format!("{op}: lost the daemon: {}", chain(source)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_answers_are_refusals_and_local_failures_are_unreachable() {
        let answer = tonic::Status::permission_denied("uid:1 may not call RotateStoreKey");
        assert!(matches!(
            call_failed("RotateStoreKey", answer),
            CliError::Refused { .. }
        ));
        // A daemon that answers UNAVAILABLE (its KMS is down) has answered: exit 1.
        let kms_down = tonic::Status::unavailable("the KMS did not answer");
        assert!(matches!(
            call_failed("Rewrap", kms_down),
            CliError::Refused { .. }
        ));
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let lost = tonic::Status::from_error(Box::new(reset));
        assert!(matches!(
            call_failed("Rewrap", lost),
            CliError::Unreachable(_)
        ));
        let slow = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        match call_failed("Rewrap", slow) {
            CliError::Unreachable(m) => assert!(m.contains("did not answer"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
