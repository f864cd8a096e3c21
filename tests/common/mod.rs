//! The black-box test harness: a real daemon (the library's `Server`, with its real Unix
//! socket and mutual-TLS listener) on a temp socket and port 0, and clients for both
//! transports. Shared by every test target in `tests/`.
#![allow(dead_code)]

pub mod backend_daemon;
pub mod standins;

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use kms_broker::certs::{self, Pem};
use kms_broker::config::Config;
use kms_broker::live::{Refused, Reloader};
use kms_broker::server::{ServeError, Server};
use kms_broker_client::pb::key_broker_client::KeyBrokerClient;
use kms_broker_client::pb::{KeyState, KeyStatus, RevokeStatusRequest};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub type Client = KeyBrokerClient<Channel>;

/// The uid of this test process (policies grant it access over the Unix socket).
pub fn my_uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("/proc/self"))
}

pub fn my_gid() -> u32 {
    std::os::unix::fs::MetadataExt::gid(&std::fs::metadata("/proc/self").expect("/proc/self"))
}

/// A `[[policy]]` granting this process every operation over the Unix socket.
pub fn allow_me_everything() -> String {
    format!(
        "\n[[policy]]\npeer = \"uid:{}\"\nallow = [\"WrapKey\", \"UnwrapKey\", \"GetStoreKey\", \"RevokeStatus\"]\n",
        my_uid()
    )
}

/// A running in-process daemon.
#[derive(Debug)]
pub struct Daemon {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub socket: PathBuf,
    pub tcp: SocketAddr,
    /// The `/metrics` listener's address, with `[metrics]` in the body.
    pub metrics: Option<SocketAddr>,
    pub ca: Pem,
    pub body: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    /// What SIGHUP calls in the real binary.
    pub reloader: Reloader,
}

fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Creates `dir/state` (0700) if missing, as an operator (or systemd's `StateDirectory`)
/// would: the daemon never creates its state dir.
pub fn make_state_dir(dir: &Path) -> PathBuf {
    let state = dir.join("state");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&state)
        .expect("create the state dir");
    state
}

/// The full config text for a daemon in `dir`: `[server]` and `[tls]` plus `body`. Also
/// creates the state dir it names ([`make_state_dir`]), so every test that runs a daemon on
/// this text finds it there.
pub fn config_text(dir: &Path, body: &str) -> String {
    make_state_dir(dir);
    format!(
        "[server]\nunix_socket = \"{}\"\ntcp_listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\nshutdown_grace = \"2s\"\n\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n{body}\n",
        dir.join("broker.sock").display(),
        dir.join("state").display(),
        dir.join("certs/ca.pem").display(),
        dir.join("certs/server.pem").display(),
        dir.join("certs/server-key.pem").display(),
    )
}

impl Daemon {
    /// Starts a daemon in a fresh temp dir. `body` holds `[keys.*]`, `[stores.*]`,
    /// `[revocation]`, `[kms]` and `[[policy]]`.
    pub async fn start(body: &str) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let mut d = Self::start_in(&dir, body).await.expect("daemon starts");
        d._tmp = Some(tmp);
        d
    }

    /// Starts a daemon whose files live in `dir` (kept across restarts).
    pub async fn start_in(dir: &Path, body: &str) -> Result<Daemon, ServeError> {
        install_crypto();
        let certs_dir = dir.join("certs");
        if !certs::dev_certs_exist(&certs_dir) {
            certs::write_dev_certs(&certs_dir).expect("dev certs");
        }
        let ca = Pem {
            cert: std::fs::read_to_string(certs_dir.join("ca.pem")).expect("ca"),
            key: std::fs::read_to_string(certs_dir.join("ca-key.pem")).expect("ca key"),
        };
        let path = dir.join("kms-broker.toml");
        let text = config_text(dir, body);
        std::fs::write(&path, &text).expect("write config");
        let config = Config::parse(&path, &text)?;
        let server = Server::bind(config).await?;
        let tcp = server.tcp_addr().expect("tcp is configured");
        let socket = server.unix_path().to_owned();
        let metrics = server.metrics_addr();
        let reloader = server.reloader();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.serve(async {
            let _ = rx.await;
        }));
        Ok(Daemon {
            dir: dir.to_owned(),
            _tmp: None,
            socket,
            tcp,
            metrics,
            ca,
            body: body.to_owned(),
            shutdown: Some(tx),
            task: Some(task),
            reloader,
        })
    }

    /// Rewrites the config file with `body` (as [`config_text`] frames it) and reloads it,
    /// as SIGHUP does.
    pub async fn reload(&mut self, body: &str) -> Result<String, Refused> {
        std::fs::write(
            self.dir.join("kms-broker.toml"),
            config_text(&self.dir, body),
        )
        .expect("write config");
        let result = self.reloader.reload().await;
        if result.is_ok() {
            self.body = body.to_owned();
        }
        result
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// A client on the Unix socket (authority `localhost`, as h2 requires).
    pub async fn unix(&self) -> Client {
        unix_client(&self.socket).await
    }

    /// A raw channel on the Unix socket, for the health and reflection services.
    pub async fn unix_channel(&self) -> Channel {
        try_unix_channel(&self.socket)
            .await
            .expect("connect to the unix socket")
    }

    /// A client over mutual TLS with a fresh certificate whose SAN and CN are `identity`.
    pub async fn tls(&self, identity: &str) -> Client {
        let pem = certs::issue(&self.ca, Some(identity), &[identity], false).expect("client cert");
        self.tls_with(Some(&pem), &self.ca.cert)
            .await
            .expect("tls connect")
    }

    /// A TLS client with `client` (or none) trusting `trust_ca`: for refusal tests.
    pub async fn tls_with(
        &self,
        client: Option<&Pem>,
        trust_ca: &str,
    ) -> Result<Client, tonic::transport::Error> {
        install_crypto();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(trust_ca))
            .domain_name("localhost");
        if let Some(p) = client {
            tls = tls.identity(Identity::from_pem(&p.cert, &p.key));
        }
        let ch = Endpoint::from_shared(format!("https://127.0.0.1:{}", self.tcp.port()))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(KeyBrokerClient::new(ch))
    }

    /// Stops the daemon (as SIGTERM would) and waits for it to drain.
    pub async fn stop(mut self) {
        self.stop_in_place().await;
    }

    async fn stop_in_place(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("daemon stops within 10s")
                .expect("daemon task");
            r.expect("daemon stopped cleanly");
        }
    }

    /// Stops and starts again over the same files (state dir, certs, config).
    pub async fn restart(mut self) -> Daemon {
        self.stop_in_place().await;
        let tmp = self._tmp.take();
        let mut d = Self::start_in(&self.dir, &self.body)
            .await
            .expect("daemon restarts");
        d._tmp = tmp;
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A client on a Unix socket path.
pub async fn unix_client(path: &Path) -> Client {
    try_unix_client(path)
        .await
        .expect("connect to the unix socket")
}

pub async fn try_unix_client(path: &Path) -> Result<Client, tonic::transport::Error> {
    Ok(KeyBrokerClient::new(try_unix_channel(path).await?))
}

/// A channel on a Unix socket path, for any service's client (health, reflection).
pub async fn try_unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
}

/// Awaits `f`, failing the test if it has not returned after `limit`. A guard against a
/// hang (a missing timeout or deadline), with a limit far above the expected time: not a
/// latency measurement, which belongs in the benchmarks.
pub async fn must_return<T>(
    what: &str,
    limit: Duration,
    f: impl std::future::Future<Output = T>,
) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for {limit:?}: a timeout is missing"))
}

/// Polls RevokeStatus until `key` is in state `want`; panics after 20 s with the last state,
/// room for a loaded CI machine. A test that bounds the time itself (the product's
/// revocation bound) uses [`wait_for_state_within`].
pub async fn wait_for_state(c: &mut Client, key: &str, want: KeyState) -> KeyStatus {
    wait_for_state_within(c, key, want, Duration::from_secs(20)).await
}

pub async fn wait_for_state_within(
    c: &mut Client,
    key: &str,
    want: KeyState,
    within: Duration,
) -> KeyStatus {
    let start = Instant::now();
    loop {
        let r = c
            .revoke_status(RevokeStatusRequest {
                key: key.to_owned(),
            })
            .await
            .expect("RevokeStatus")
            .into_inner();
        let s = r.keys.into_iter().next().expect("one key");
        if s.state == want as i32 {
            return s;
        }
        if start.elapsed() > within {
            panic!(
                "key {key} is {:?} ({}), not {want:?}, after {within:?}",
                KeyState::try_from(s.state),
                s.detail
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
