//! Harness: a real daemon, in-process, on a temp socket, with the mock KMS.
//!
//! The mock registry is process-global, so every test names its own mock key.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::PathBuf;
use std::time::Duration;

use kms_broker::server::{ServeError, Server};
use kms_broker_client::{Backoff, Client, ClientError, ClientOptions, Code};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const ALL: &[&str] = &["WrapKey", "UnwrapKey", "GetStoreKey", "RevokeStatus"];

/// Long enough that a wrongly retried answer would hold the call for many minutes; the
/// tests then require the call to come back (within [`RETURNS_WITHIN`]) with its code.
pub const LONG_STARTUP: Duration = Duration::from_secs(600);
pub const RETURNS_WITHIN: Duration = Duration::from_secs(30);

/// A running daemon; [`Daemon::stop`] shuts it down and checks it exited cleanly.
pub struct Daemon {
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), ServeError>>,
    pub tcp: Option<std::net::SocketAddr>,
}

impl Daemon {
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let res = (&mut self.handle).await.expect("serve task panicked");
        assert!(res.is_ok(), "serve: {res:?}");
    }
}

/// One test's temp dir and mock key. The config has key `k1` on the mock, stores `s1`
/// (AES-256) and `s2` (AES-128), and one policy rule for this process's uid.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub mock: String,
}

impl Setup {
    pub fn new(test: &str) -> Setup {
        Setup {
            dir: tempfile::tempdir().expect("tempdir"),
            mock: format!("client-test-{test}"),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("broker.sock")
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The config: `allow` for this uid, and `extra` TOML appended (more tables or rules).
    pub fn config(&self, allow: &[&str], server_extra: &str, extra: &str) -> String {
        let uid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
        let allow = allow
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            r#"
[server]
unix_socket = "{socket}"
state_dir = "{state}"
{server_extra}

[keys.k1]
uris = ["mock://{mock}"]

[stores.s1]
key = "k1"

[stores.s2]
key = "k1"
algorithm = "AES-128"

[revocation]
poll_interval = "200ms"

[[policy]]
peer = "uid:{uid}"
allow = [{allow}]
{extra}
"#,
            socket = self.socket().display(),
            state = self.dir.path().join("state").display(),
            mock = self.mock,
        )
    }

    pub async fn start(&self, allow: &[&str]) -> Daemon {
        self.start_with(&self.config(allow, "", "")).await
    }

    pub async fn start_with(&self, text: &str) -> Daemon {
        // As an operator would: the daemon never creates its state dir.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.dir.path().join("state"))
            .expect("create the state dir");
        let path = self.dir.path().join("broker.toml");
        let config = kms_broker::config::Config::parse(&path, text).expect("valid test config");
        let server = Server::bind(config).await.expect("bind");
        let tcp = server.tcp_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.serve(async move {
            let _ = rx.await;
        }));
        Daemon {
            shutdown: Some(tx),
            handle,
            tcp,
        }
    }

    pub async fn client(&self, startup_deadline: Duration) -> Client {
        Client::connect(&self.endpoint(), fast_options(startup_deadline))
            .await
            .expect("connect is lazy and the endpoint valid")
    }
}

/// Short backoff so retry tests take milliseconds.
pub fn fast_options(startup_deadline: Duration) -> ClientOptions {
    ClientOptions {
        startup_deadline,
        backoff: Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
        },
        ..ClientOptions::default()
    }
}

/// Awaits `fut`, failing the test if it does not finish: how a wrongly retried call shows.
pub async fn returns<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(RETURNS_WITHIN, fut)
        .await
        .expect("the call was retried instead of returning its answer")
}

/// The error code of a call that must fail.
pub fn code<T: std::fmt::Debug>(res: Result<T, ClientError>) -> Code {
    match res {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code(),
    }
}
