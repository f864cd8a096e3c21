//! What every issue-8 row needs: a config with N stores, a daemon started and stopped
//! in-process, Unix-socket and mTLS channels, and a process's resident memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kms_broker::config::Config;
use kms_broker::server::{ServeError, Server};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The uid the bench runs as: the Unix socket's policy names it.
pub fn uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}

/// A bench daemon's config: key `k` on `mock://{mock_name}`, stores `s0..s{stores}`, both
/// listeners (the dev certs are written once per dir), plus `extra` sections.
pub fn config_text(dir: &Path, mock_name: &str, stores: usize, extra: &str) -> String {
    if !dir.join("certs").exists() {
        kms_broker::certs::write_dev_certs(&dir.join("certs")).unwrap();
    }
    super::make_state_dir(&dir.join("state"));
    // The mock stands for a KMS without a quota: these rows measure the daemon, not its
    // token bucket (the storm rows measure that, with `[kms]` given).
    let extra = if extra.contains("[kms]") {
        extra.to_owned()
    } else {
        format!("{extra}\n[kms]\nrate_per_second = 1000000\nburst = 1000000\n")
    };
    let mut text = format!(
        r#"[server]
unix_socket = "{d}/b.sock"
tcp_listen = "127.0.0.1:0"
state_dir = "{d}/state"
[tls]
ca = "{d}/certs/ca.pem"
cert = "{d}/certs/server.pem"
key = "{d}/certs/server-key.pem"
[keys.k]
uris = ["mock://{mock_name}"]
[[policy]]
peer = "uid:{uid}"
allow = ["WrapKey", "UnwrapKey", "GetStoreKey", "RevokeStatus"]
[[policy]]
peer = "cert:dev-client"
allow = ["WrapKey", "UnwrapKey"]
{extra}
"#,
        d = dir.display(),
        uid = uid()
    );
    for i in 0..stores {
        text.push_str(&format!("[stores.s{i}]\nkey = \"k\"\n"));
    }
    text
}

pub fn parse(dir: &Path, text: &str) -> Config {
    Config::parse(&dir.join("k.toml"), text).unwrap()
}

/// A daemon served in this process until [`Daemon::stop`].
pub struct Daemon {
    pub sock: PathBuf,
    pub port: u16,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Daemon {
    pub async fn start(dir: &Path, text: &str) -> Daemon {
        let server = Server::bind(parse(dir, text)).await.unwrap();
        let port = server.tcp_addr().unwrap().port();
        let sock = server.unix_path().to_owned();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Daemon {
            sock,
            port,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// A connected channel (one HTTP/2 connection) to a Unix socket.
pub async fn unix(path: &Path) -> Channel {
    super::unix(path).await
}

/// A connected mutual-TLS channel (client certificate `dev-client`).
pub async fn tls(dir: &Path, port: u16) -> Channel {
    super::tls(dir, port).await
}

/// `VmRSS` of a process (`self` or a pid), in MiB.
pub fn rss_mib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

/// Polls `done` every millisecond until it holds, for at most `limit`.
pub async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let t = tokio::time::Instant::now();
    while !done() {
        if t.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// Creates stores `s0..s{n}` (GetStoreKey with `create`), 16 at a time.
pub async fn create_stores(sock: &Path, n: usize) {
    let ch = unix(sock).await;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let mut c = kms_broker_client::pb::key_broker_client::KeyBrokerClient::new(ch.clone());
        tasks.spawn(async move {
            for i in (w..n).step_by(16) {
                c.get_store_key(kms_broker_client::pb::GetStoreKeyRequest {
                    store_id: format!("s{i}"),
                    create: true,
                })
                .await
                .unwrap();
            }
        });
    }
    tasks.join_all().await;
}

/// One result row of the issue-8 table.
pub struct Row {
    pub measure: String,
    pub target: &'static str,
    pub result: String,
    pub met: bool,
}

impl Row {
    pub fn print(&self) {
        println!(
            "| {} | {} | {} | {} |",
            self.measure,
            self.target,
            self.result,
            if self.met { "yes" } else { "**no**" }
        );
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
