//! `Server::bind` then `serve(shutdown)`: both listeners, health, reflection, the poller,
//! and a bounded drain. Tests bind a temp socket and port 0 and stop it through the
//! shutdown future (STYLE lesson 1).

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server as TonicServer;
use tonic_health::ServingStatus;

use crate::broker::Broker;
use crate::config::{Config, ConfigError};
use crate::pb::key_broker_server::KeyBrokerServer;
use crate::service::Service;
use crate::stores::Stores;

/// Why the daemon could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A config problem found while starting (unreadable TLS files…): exit 64.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Startup(String),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Bound listeners and the daemon's state, ready to serve.
#[derive(Debug)]
pub struct Server {
    config: Config,
    unix: UnixListener,
    unix_path: PathBuf,
    tcp: Option<TcpListener>,
    broker: Arc<Broker>,
    stores: Arc<Stores>,
}

/// Binds the Unix socket with mode 0660: bound under a temporary name, chmod-ed, then
/// renamed into place, so no caller ever sees it with the umask's mode. A stale socket from
/// a crash is replaced; a live one (another daemon answers) is an error.
async fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    let fail = |what: &str, e: std::io::Error| {
        ServeError::Startup(format!("unix socket {}: {what}: {e}", path.display()))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| fail("cannot create its folder", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(ServeError::Startup(format!(
                    "unix socket {} is in use by a running process (another kms-broker?)",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(|e| fail("cannot remove the stale socket", e))?;
            tracing::info!(path = %path.display(), "replaced a stale socket");
        }
        Ok(_) => {
            return Err(ServeError::Startup(format!(
                "unix socket {} exists and is not a socket; refusing to replace it",
                path.display()
            )))
        }
        Err(_) => {}
    }
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("broker.sock"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| fail("cannot bind", e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| fail("cannot chmod", e))?;
    std::fs::rename(&tmp, path).map_err(|e| fail("cannot move into place", e))?;
    Ok(listener)
}

impl Server {
    /// Validates what a config names on disk, builds the backends (contacting no KMS) and
    /// binds both listeners.
    pub async fn bind(config: Config) -> Result<Server, ServeError> {
        let broker = Arc::new(Broker::new(&config).await?);
        let stores = Stores::new(&config, broker.clone()).map_err(ServeError::Startup)?;
        if let Some(files) = &config.tls {
            // Read now, so a bad path is a config error before anything listens.
            crate::tls::server_config(files, &config.file)?;
        }
        let unix = bind_unix(&config.server.unix_socket).await?;
        let tcp = match config.server.tcp_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| ServeError::Startup(format!("cannot listen on {addr}: {e}")))?,
            ),
            None => None,
        };
        Ok(Server {
            unix_path: config.server.unix_socket.clone(),
            config,
            unix,
            tcp,
            broker,
            stores,
        })
    }

    /// The bound TCP address (useful with port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn unix_path(&self) -> &Path {
        &self.unix_path
    }

    /// Serves until `shutdown` completes, then: health NOT_SERVING, listeners closed,
    /// in-flight calls given `shutdown_grace` to finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Server {
            config,
            unix,
            unix_path,
            tcp,
            broker,
            stores,
        } = self;
        let (health, health_svc) = tonic_health::server::health_reporter();
        health.set_serving::<KeyBrokerServer<Service>>().await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServeError::Startup(format!("reflection: {e}")))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .build_v1alpha()
            .map_err(|e| ServeError::Startup(format!("reflection: {e}")))?;
        let svc = Service::new(broker.clone(), stores.clone(), config.policy.clone());
        let service = KeyBrokerServer::new(svc.clone());

        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            // wait_for's guard is not Send; only the wake-up matters here.
            let _ = rx.wait_for(|s| *s).await.map(|_| ());
        };

        let poller = tokio::spawn(poll_loop(
            broker.clone(),
            stores.clone(),
            config.revocation.poll_interval,
            stop_rx.clone(),
        ));

        let unix_server = TonicServer::builder()
            .add_service(health_svc.clone())
            .add_service(reflection_v1.clone())
            .add_service(reflection_v1alpha.clone())
            .add_service(service.clone())
            .serve_with_incoming_shutdown(UnixListenerStream::new(unix), stopped(stop_rx.clone()));
        let mut servers = vec![tokio::spawn(unix_server)];
        tracing::info!(socket = %unix_path.display(), "serving on the Unix socket");

        if let (Some(tcp), Some(files)) = (tcp, &config.tls) {
            let addr = tcp.local_addr().ok();
            let tls = crate::tls::server_config(files, &config.file)?;
            let tcp_server = TonicServer::builder()
                .tls_config(tls)?
                .add_service(health_svc)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(service)
                .serve_with_incoming_shutdown(
                    // Without TCP_NODELAY, a response's HEADERS, DATA and trailers frames
                    // wait on the peer's delayed ACK: ~40 ms per call (measured with k6).
                    TcpIncoming::from(tcp).with_nodelay(Some(true)),
                    stopped(stop_rx.clone()),
                );
            servers.push(tokio::spawn(tcp_server));
            tracing::info!(addr = ?addr, "serving mutual TLS on TCP");
        }

        shutdown.await;
        tracing::info!("shutting down: health NOT_SERVING, draining");
        health.set_not_serving::<KeyBrokerServer<Service>>().await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        svc.close_streams();
        let _ = stop_tx.send(true);
        let grace = config.server.shutdown_grace;
        let drain = futures_util::future::join_all(servers.iter_mut());
        let result = match tokio::time::timeout(grace, drain).await {
            Ok(results) => results
                .into_iter()
                .map(|r| match r {
                    Ok(inner) => inner.map_err(ServeError::from),
                    Err(e) => Err(ServeError::Startup(format!("server task: {e}"))),
                })
                .collect::<Result<Vec<()>, _>>()
                .map(|_| ()),
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "in-flight calls did not finish within the grace period; cutting them"
                );
                for s in &servers {
                    s.abort();
                }
                Ok(())
            }
        };
        poller.abort();
        let _ = std::fs::remove_file(&unix_path);
        result
    }
}

/// Checks every key at once (so a fresh start learns states quickly), then every
/// `interval`; after each round drops held material that may no longer be handed out.
async fn poll_loop(
    broker: Arc<Broker>,
    stores: Arc<Stores>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                broker.poll_once().await;
                stores.purge();
            }
            _ = async { let _ = stop.wait_for(|s| *s).await.map(|_| ()); } => return,
        }
    }
}
