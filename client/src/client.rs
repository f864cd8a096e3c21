//! The connection and the four typed RPCs.

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};
use zeroize::Zeroizing;

use crate::pb::key_broker_client::KeyBrokerClient;
use crate::retry::{retry_until, Retry};
use crate::target::{parse_target, Target};
use crate::{
    pb, ClientError, ClientOptions, KeyStatus, RevokeEvent, RewrapReport, SecretBytes, StoreKeys,
    StoreStatus, TlsFiles, Unwrapped, Wrapped,
};

/// A handle to one kms-broker daemon. Cheap to clone: clones share one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) grpc: KeyBrokerClient<Channel>,
    pub(crate) health: tonic_health::pb::health_client::HealthClient<Channel>,
    pub(crate) endpoint: String,
    pub(crate) opts: ClientOptions,
}

impl Client {
    /// Prepares a connection to the daemon at `endpoint`: `unix:///path/to/broker.sock`
    /// (also `unix:relative/path`) or `https://host:port` (with [`ClientOptions::tls`]).
    ///
    /// Connects lazily, on the first call, so that a node may create its client before the
    /// daemon listens; the start-up retries of [`Client::get_store_key`] then cover the gap.
    /// Errors here are configuration errors only (bad endpoint, unreadable TLS files, a
    /// [`ClientOptions::call_timeout`] that would undercut the daemon's KMS deadline).
    pub async fn connect(endpoint: &str, opts: ClientOptions) -> Result<Client, ClientError> {
        opts.validate()?;
        let channel = match parse_target(endpoint)? {
            Target::Unix(path) => {
                // h2 rejects a socket path as `:authority`, so the URI names `localhost`;
                // the connector ignores it and dials the socket.
                let connector = tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                });
                endpoint_options(Endpoint::from_static("http://localhost"), &opts)
                    .connect_with_connector_lazy(connector)
            }
            Target::Https => {
                let tls = opts.tls.as_ref().ok_or_else(|| {
                    ClientError::Config(format!(
                        "endpoint {endpoint:?} needs ClientOptions::tls (CA, client certificate and key)"
                    ))
                })?;
                let config = |e: tonic::transport::Error| {
                    ClientError::Config(format!("endpoint {endpoint:?}: {e}"))
                };
                let ep = Endpoint::from_shared(endpoint.to_owned())
                    .map_err(config)?
                    .tls_config(tls_config(tls).await?)
                    .map_err(config)?;
                endpoint_options(ep, &opts).connect_lazy()
            }
        };
        Ok(Client {
            health: tonic_health::pb::health_client::HealthClient::new(channel.clone()),
            grpc: KeyBrokerClient::new(channel),
            endpoint: endpoint.to_owned(),
            opts,
        })
    }

    /// The endpoint this client calls, as given to [`Client::connect`].
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The generated gRPC client on the same connection, for fields this crate does not
    /// type yet. Its responses are plain `Vec<u8>`: move key bytes out promptly.
    pub fn grpc(&self) -> KeyBrokerClient<Channel> {
        self.grpc.clone()
    }

    /// Wraps `plaintext` (1 to 4096 bytes) under the configured key named `key`, binding
    /// `context` as authenticated data: [`Client::unwrap_key`] needs the same map.
    ///
    /// Not idempotent (each call makes a new blob), so retried only while the request
    /// certainly never reached the daemon (the connection failed, e.g. it is still starting),
    /// until [`ClientOptions::startup_deadline`]; a timeout or `Unavailable` returns at once
    /// and the caller decides whether wrapping twice is acceptable.
    /// The request copy of `plaintext` lives in tonic's buffers, outside this crate's reach.
    pub async fn wrap_key<K, V>(
        &self,
        key: &str,
        plaintext: &[u8],
        context: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Wrapped, ClientError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let context = collect_context(context);
        let resp = self
            .retry("WrapKey", Retry::IfNeverSent, || async {
                let req = pb::WrapKeyRequest {
                    key: key.to_owned(),
                    plaintext: plaintext.to_vec(),
                    context: context.clone(),
                };
                let resp = self.grpc.clone().wrap_key(req).await;
                Ok(resp.map_err(|s| self.error(s))?.into_inner())
            })
            .await?;
        Ok(Wrapped {
            wrapped: resp.wrapped,
            key: resp.key,
            key_version: resp.key_version,
        })
    }

    /// Unwraps a blob made by [`Client::wrap_key`], with the same `context`.
    ///
    /// Idempotent: retried while the daemon is unreachable or `Unavailable`, until
    /// [`ClientOptions::startup_deadline`].
    pub async fn unwrap_key<K, V>(
        &self,
        wrapped: &[u8],
        context: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Unwrapped, ClientError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let context = collect_context(context);
        let mut resp = self
            .retry("UnwrapKey", Retry::Idempotent, || async {
                let req = pb::UnwrapKeyRequest {
                    wrapped: wrapped.to_vec(),
                    context: context.clone(),
                };
                let resp = self.grpc.clone().unwrap_key(req).await;
                Ok(resp.map_err(|s| self.error(s))?.into_inner())
            })
            .await?;
        Ok(Unwrapped {
            plaintext: SecretBytes::take(&mut resp.plaintext),
            // Taken, not moved: the response wipes its plaintext on drop, so it cannot
            // be taken apart.
            key: std::mem::take(&mut resp.key),
            key_version: std::mem::take(&mut resp.key_version),
        })
    }

    /// Returns the store's key (and older keys still needed), first creating it if `create`
    /// is set. Set `create` only when initializing a new store: without it a store whose
    /// key was never made (or whose state dir was lost) fails `NotFound` instead of silently
    /// getting a new key that cannot read the old data.
    ///
    /// Retries while the daemon is unreachable or `Unavailable`, until
    /// [`ClientOptions::startup_deadline`], because a node typically asks for its store key
    /// while the daemon is still starting. Answers (`NotFound`, `PermissionDenied`,
    /// `FailedPrecondition`, ...) return at once. Served only over the Unix socket.
    pub async fn get_store_key(
        &self,
        store_id: &str,
        create: bool,
    ) -> Result<StoreKeys, ClientError> {
        self.retry("GetStoreKey", Retry::Idempotent, || async {
            let req = pb::GetStoreKeyRequest {
                store_id: store_id.to_owned(),
                create,
            };
            let resp = self.grpc.clone().get_store_key(req).await;
            StoreKeys::from_pb(resp.map_err(|s| self.error(s))?.into_inner())
        })
        .await
    }

    /// Each configured key's state as the daemon last saw it: `Some(name)` for one key,
    /// `None` for every key the caller's policy lets it see.
    pub async fn revoke_status(&self, key: Option<&str>) -> Result<Vec<KeyStatus>, ClientError> {
        let resp = self
            .retry("RevokeStatus", Retry::Idempotent, || async {
                let req = pb::RevokeStatusRequest {
                    key: key.unwrap_or_default().to_owned(),
                };
                let resp = self.grpc.clone().revoke_status(req).await;
                Ok(resp.map_err(|s| self.error(s))?.into_inner())
            })
            .await?;
        Ok(resp.keys.into_iter().map(KeyStatus::from).collect())
    }

    /// Makes a new active key for `store_id`; the old ones stay readable (`previous`).
    /// Not idempotent (each call rotates): retried only while the request certainly never
    /// reached the daemon.
    pub async fn rotate_store_key(&self, store_id: &str) -> Result<StoreStatus, ClientError> {
        self.retry("RotateStoreKey", Retry::IfNeverSent, || async {
            let req = pb::RotateStoreKeyRequest {
                store_id: store_id.to_owned(),
            };
            let resp = self.grpc.clone().rotate_store_key(req).await;
            Ok(resp.map_err(|s| self.error(s))?.into_inner().into())
        })
        .await
    }

    /// Which key and versions wrap each store: `Some(id)` for one, `None` for every store
    /// the caller may see.
    pub async fn store_status(
        &self,
        store_id: Option<&str>,
    ) -> Result<Vec<StoreStatus>, ClientError> {
        let resp = self
            .retry("StoreStatus", Retry::Idempotent, || async {
                let req = pb::StoreStatusRequest {
                    store_id: store_id.unwrap_or_default().to_owned(),
                };
                let resp = self.grpc.clone().store_status(req).await;
                Ok(resp.map_err(|s| self.error(s))?.into_inner())
            })
            .await?;
        Ok(resp.stores.into_iter().map(StoreStatus::from).collect())
    }

    /// Re-wraps store files under their configured key's current version (one store, or
    /// all); with `dry_run`, only reports what would change. Idempotent (a second run finds
    /// nothing left to do), so retried like [`Client::unwrap_key`].
    pub async fn rewrap(
        &self,
        store_id: Option<&str>,
        dry_run: bool,
    ) -> Result<RewrapReport, ClientError> {
        let resp = self
            .retry("Rewrap", Retry::Idempotent, || async {
                let req = pb::RewrapRequest {
                    store_id: store_id.unwrap_or_default().to_owned(),
                    dry_run,
                };
                let resp = self.grpc.clone().rewrap(req).await;
                Ok(resp.map_err(|s| self.error(s))?.into_inner())
            })
            .await?;
        Ok(RewrapReport {
            stores: resp.stores.into_iter().map(StoreStatus::from).collect(),
            rewrapped: resp.rewrapped,
        })
    }

    /// Re-wraps a blob made by [`Client::wrap_key`] under its key's current version, or
    /// under the key named `to`, without the plaintext ever reaching this process.
    /// Makes a new blob like [`Client::wrap_key`], and is retried like it.
    pub async fn rewrap_key<K, V>(
        &self,
        wrapped: &[u8],
        context: impl IntoIterator<Item = (K, V)>,
        to: Option<&str>,
    ) -> Result<Wrapped, ClientError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let context = collect_context(context);
        let resp = self
            .retry("RewrapKey", Retry::IfNeverSent, || async {
                let req = pb::RewrapKeyRequest {
                    wrapped: wrapped.to_vec(),
                    context: context.clone(),
                    key: to.unwrap_or_default().to_owned(),
                };
                let resp = self.grpc.clone().rewrap_key(req).await;
                Ok(resp.map_err(|s| self.error(s))?.into_inner())
            })
            .await?;
        Ok(Wrapped {
            wrapped: resp.wrapped,
            key: resp.key,
            key_version: resp.key_version,
        })
    }

    /// The current state of one key (`Some`) or every visible key (`None`), then every
    /// change as it happens: drop your keys on a revoked state. The stream ends when the
    /// daemon shuts down; call again to resume (the first event is the full state).
    /// Opening the stream is retried like [`Client::unwrap_key`].
    pub async fn watch_revoke_status(
        &self,
        key: Option<&str>,
    ) -> Result<
        impl tokio_stream::Stream<Item = Result<RevokeEvent, ClientError>> + use<>,
        ClientError,
    > {
        // A watch outlives any call timeout: the channel's timeout applies per message.
        let stream = self
            .retry("WatchRevokeStatus", Retry::Idempotent, || async {
                let req = pb::RevokeStatusRequest {
                    key: key.unwrap_or_default().to_owned(),
                };
                let resp = self.grpc.clone().watch_revoke_status(req).await;
                Ok(resp.map_err(|s| self.error(s))?.into_inner())
            })
            .await?;
        let endpoint = self.endpoint.clone();
        Ok(tokio_stream::StreamExt::map(stream, move |r| {
            r.map(RevokeEvent::from)
                .map_err(|s| ClientError::from_status(s, &endpoint, Default::default()))
        }))
    }

    /// Runs one RPC with the start-up retries (see [`Retry`]).
    async fn retry<T, F, Fut>(&self, what: &str, when: Retry, op: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        retry_until(
            self.opts.startup_deadline,
            self.opts.backoff,
            what,
            when,
            op,
        )
        .await
    }

    pub(crate) fn error(&self, status: tonic::Status) -> ClientError {
        let timeout = self.opts.call_timeout.unwrap_or_default();
        ClientError::from_status(status, &self.endpoint, timeout)
    }
}

/// Applies the timeouts common to both transports.
fn endpoint_options(ep: Endpoint, opts: &ClientOptions) -> Endpoint {
    let ep = ep.connect_timeout(opts.connect_timeout);
    match opts.call_timeout {
        Some(t) => ep.timeout(t),
        None => ep,
    }
}

/// Reads the PEM files; the private key's buffer is wiped once tonic has its own copy.
async fn tls_config(tls: &TlsFiles) -> Result<ClientTlsConfig, ClientError> {
    async fn read(what: &str, path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
        tokio::fs::read(path).await.map_err(|e| {
            ClientError::Config(format!("cannot read TLS {what} {}: {e}", path.display()))
        })
    }
    let ca = read("CA", &tls.ca).await?;
    let cert = read("certificate", &tls.cert).await?;
    let key = Zeroizing::new(read("key", &tls.key).await?);
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, &*key));
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

fn collect_context<K: Into<String>, V: Into<String>>(
    context: impl IntoIterator<Item = (K, V)>,
) -> std::collections::HashMap<String, String> {
    context
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn https_needs_tls_files() {
        let err = Client::connect("https://127.0.0.1:1", ClientOptions::default())
            .await
            .err();
        assert!(matches!(err, Some(ClientError::Config(_))), "{err:?}");
        let opts = ClientOptions {
            tls: Some(TlsFiles::new(
                "/nonexistent/ca.pem",
                "/nonexistent/c.pem",
                "/nonexistent/k.pem",
            )),
            ..ClientOptions::default()
        };
        let err = Client::connect("https://127.0.0.1:1", opts).await.err();
        assert!(err.is_some_and(|e| e.to_string().contains("/nonexistent/ca.pem")));
    }

    #[tokio::test]
    async fn an_absent_socket_is_a_retryable_connect_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let endpoint = format!("unix://{}", dir.path().join("none.sock").display());
        let opts = ClientOptions {
            startup_deadline: std::time::Duration::ZERO,
            ..Default::default()
        };
        let client = Client::connect(&endpoint, opts)
            .await
            .expect("lazy connect");
        let err = client.revoke_status(None).await.err();
        assert!(matches!(err, Some(ClientError::Connect { .. })), "{err:?}");
        let err = client.get_store_key("s1", false).await.err();
        assert!(
            err.as_ref().is_some_and(ClientError::is_retryable),
            "{err:?}"
        );
        assert!(err.is_some_and(|e| e.to_string().contains("none.sock")));
    }
}
