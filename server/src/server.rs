//! `Server::bind` then `serve(shutdown)`: both listeners, health, reflection, the poller,
//! and a bounded drain. Tests bind a temp socket and port 0 and stop it through the
//! shutdown future (STYLE lesson 1).
//!
//! `bind` builds the TLS config (a bad file exits 64), then takes the state dir's lock (held
//! until `serve` returns) before anything touches the state dir, then binds. Every bound of
//! `[limits]` is applied here: the accept loops in [`crate::listener`], the HTTP/2 and
//! request bounds on both tonic servers, and message-size limits on each service.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket, UnixListener};
use tokio::sync::watch;
use tonic::transport::Server as TonicServer;
use tonic_health::ServingStatus;

use crate::broker::Broker;
use crate::config::{Config, ConfigError};
use crate::fs::{DirLock, LockError};
use crate::limits::{Limits, MAX_KEY_BROKER_REQUEST, MAX_KEY_BROKER_RESPONSE, MAX_SMALL_REQUEST};
use crate::live::{Live, LiveTls, Reloader, Runtime};
use crate::pb::key_broker_server::KeyBrokerServer;
use crate::service::Service;
use crate::stores::Stores;

mod poll;

use poll::{poll_loop, report_health};

/// Why the daemon could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A config problem found while starting (unreadable TLS files…): exit 64.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another process holds the state dir's lock: exit 75 (EX_TEMPFAIL).
    #[error("{0}")]
    StateDirInUse(String),
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
    tcp: Option<(TcpListener, LiveTls)>,
    /// The policy, keys and stores in force, which [`Reloader`] replaces.
    live: Live,
    reloader: Reloader,
    /// The audit trail and the metrics listener (`[audit]`, `[metrics]`).
    ops: crate::observe::Ops,
    /// Held for the life of the server: a second daemon on this state dir exits 75.
    state_lock: DirLock,
}

/// Takes the state dir's lock. The daemon never creates a missing state dir: a lost mount
/// must fail at start, not become a fresh empty folder where new keys would be minted.
fn lock_state_dir(dir: &Path) -> Result<DirLock, ServeError> {
    crate::fs::lock_dir(dir).map_err(|e| match e {
        LockError::InUse { .. } => ServeError::StateDirInUse(e.to_string()),
        LockError::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
            ServeError::Startup(format!(
                "state dir {shown} does not exist; kms-broker never creates it (a missing one may be a lost mount); create it with `install -d -m 0700 {shown}` as the daemon's user, or mount it",
                shown = dir.display()
            ))
        }
        LockError::Io { .. } => ServeError::Startup(format!("state_dir: {e}")),
    })
}

/// How many connections the kernel may queue for us (capped by net.core.somaxconn).
const TCP_BACKLOG: u32 = 4096;

/// Binds with a deep accept backlog: while every connection permit is taken, new clients
/// wait there, held by the kernel rather than in our descriptor table.
fn listen_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and tokio do: a restart can bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(TCP_BACKLOG)
}

/// The open-file limit the connection caps must fit in (the soft limit; hardening raised it
/// to the hard limit at start).
fn open_file_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// A tonic server builder with the HTTP/2 and request bounds of `[limits]`.
fn builder(limits: &Limits) -> TonicServer {
    TonicServer::builder()
        .timeout(limits.request_timeout)
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_header_list_size(limits.max_header_list_size)
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
        // Built whole first (files read, PEM parsed, key matched to its certificate), so a
        // bad TLS file is a config error (exit 64) before anything listens.
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(crate::tls::server_config(files, &config.file)?)),
            None => None,
        };
        // Before anything touches the state dir.
        let state_lock = lock_state_dir(&config.server.state_dir)?;
        let broker = Arc::new(Broker::new(&config).await?);
        let stores = Stores::new(&config, broker.clone()).map_err(ServeError::Startup)?;
        let ops = crate::observe::Ops::bind(&config).await?;
        // TCP first: a port in use must not leave a socket file behind that no one serves.
        let tcp = match config.server.tcp_listen {
            Some(addr) if tls.is_some() => Some(
                listen_tcp(addr)
                    .map_err(|e| ServeError::Startup(format!("cannot listen on {addr}: {e}")))?,
            ),
            _ => None,
        };
        let unix = bind_unix(&config.server.unix_socket).await?;
        let (reloader, live, tls) = Reloader::new(
            Runtime {
                config: config.clone(),
                broker,
                stores,
            },
            tls,
            ops.audit(),
        );
        Ok(Server {
            state_lock,
            unix_path: config.server.unix_socket.clone(),
            config,
            unix,
            tcp: tcp.zip(tls),
            live,
            reloader,
            ops,
        })
    }

    /// The bound metrics address, with `[metrics]` (useful with port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.ops.metrics_addr()
    }

    /// The bound TCP address (useful with port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn unix_path(&self) -> &Path {
        &self.unix_path
    }

    /// Puts the config file's current content in force (SIGHUP), or refuses it whole.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Serves until `shutdown` completes, then: health NOT_SERVING, listeners closed,
    /// in-flight calls given `shutdown_grace` to finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Server {
            config,
            unix,
            unix_path,
            tcp,
            live,
            reloader: _,
            ops,
            state_lock,
        } = self;
        let limits = config.limits;
        let (tcp_cap, unix_cap) = limits.connection_caps(open_file_limit());
        if tcp_cap < limits.max_tcp_connections || unix_cap < limits.max_unix_connections {
            tracing::warn!(
                open_files = open_file_limit(),
                tcp_cap,
                unix_cap,
                "connection caps lowered to fit the open-file limit; raise LimitNOFILE to allow more"
            );
        }

        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            // wait_for's guard is not Send; only the wake-up matters here.
            let _ = rx.wait_for(|s| *s).await.map(|_| ());
        };

        let (health, _) = tonic_health::server::health_reporter();
        // "" is liveness: SERVING from now until shutdown, whatever the KMS says. The
        // KeyBroker service is SERVING only while every store with a key file can be handed
        // its key: not before the first check, unless no store has a key yet.
        report_health(&health, &live.current().stores).await;
        // Watch streams end once shutdown has told them NOT_SERVING.
        let health_svc = crate::health::service(health.clone(), stop_rx.clone());
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServeError::Startup(format!("reflection: {e}")))?
            .max_decoding_message_size(MAX_SMALL_REQUEST);
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .build_v1alpha()
            .map_err(|e| ServeError::Startup(format!("reflection: {e}")))?
            .max_decoding_message_size(MAX_SMALL_REQUEST);
        let (observer, ops) = ops.start(live.clone(), stop_rx.clone());
        let svc = Service::new(live.clone(), observer);
        // Each call collects the KMS request ids its audit record names.
        let service = crate::kms_request::Scoped(
            KeyBrokerServer::new(svc.clone())
                .max_decoding_message_size(MAX_KEY_BROKER_REQUEST)
                .max_encoding_message_size(MAX_KEY_BROKER_RESPONSE),
        );

        let poller = tokio::spawn(poll_loop(live, health.clone(), stop_rx.clone()));

        let unix_server = builder(&limits)
            .add_service(health_svc.clone())
            .add_service(reflection_v1.clone())
            .add_service(reflection_v1alpha.clone())
            .add_service(service.clone())
            .serve_with_incoming_shutdown(
                crate::listener::unix_incoming(unix, unix_cap),
                stopped(stop_rx.clone()),
            );
        let mut servers = vec![tokio::spawn(unix_server)];
        tracing::info!(socket = %unix_path.display(), max_connections = unix_cap, "serving on the Unix socket");

        if let Some((tcp, tls)) = tcp {
            let addr = tcp.local_addr().ok();
            let incoming =
                crate::listener::tls_incoming(tcp, tls, tcp_cap, limits.tls_handshake_timeout);
            let tcp_server = builder(&limits)
                .add_service(health_svc)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
            servers.push(tokio::spawn(tcp_server));
            tracing::info!(addr = ?addr, max_connections = tcp_cap, "serving mutual TLS on TCP");
        }

        shutdown.await;
        tracing::info!("shutting down: health NOT_SERVING, draining");
        health.set_not_serving::<KeyBrokerServer<Service>>().await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        svc.close_streams();
        // After NOT_SERVING is set: health watchers pass it on, then end.
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
        ops.close().await;
        let _ = std::fs::remove_file(&unix_path);
        // Only now may another daemon take the state dir.
        drop(state_lock);
        result
    }
}
