//! Row 5: resident memory of the real `kms-broker` process (VmRSS from /proc/PID/status),
//! idle, with 1,000 open Unix-socket connections, and with 10,000 unwrapped keys cached.
//! Each state gets a fresh process, so one's high-water mark is not another's baseline.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kms_broker_client::pb::key_broker_client::KeyBrokerClient;
use kms_broker_client::pb::{RevokeStatusRequest, UnwrapKeyRequest, WrapKeyRequest};
use tonic::transport::Channel;

use super::harness::{rss_mib, uid, unix, Row};

const CONNECTIONS: usize = 1000;
const KEYS: usize = 10_000;
const MIB: f64 = 1.0;

struct Child {
    child: tokio::process::Child,
    sock: std::path::PathBuf,
}

impl Child {
    fn pid(&self) -> String {
        self.child.id().unwrap().to_string()
    }
    async fn stop(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

/// Starts `kms-broker serve` with a file key (the cache at its defaults: 5 min, 10,000
/// entries) and waits until it answers.
async fn spawn(dir: &Path) -> Child {
    let key = dir.join("rss.key");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&key, [9u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let sock = dir.join("rss.sock");
    let _ = std::fs::remove_file(&sock);
    super::make_state_dir(&dir.join("state"));
    let config = dir.join("rss.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nunix_socket = \"{}\"\nstate_dir = \"{}\"\n[keys.k]\nuris = [\"file://{}\"]\n\
             [[policy]]\npeer = \"uid:{}\"\nallow = [\"WrapKey\", \"UnwrapKey\", \"RevokeStatus\"]\n",
            sock.display(),
            dir.join("state").display(),
            key.display(),
            uid()
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kms-broker"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("KMS_BROKER_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if sock.exists() {
            if let Ok(ch) = super::try_unix(&sock).await {
                if KeyBrokerClient::new(ch)
                    .revoke_status(RevokeStatusRequest::default())
                    .await
                    .is_ok()
                {
                    break;
                }
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the daemon did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let the first status round and the pre-warm finish.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Child { child, sock }
}

pub async fn run(root: &Path) -> Vec<Row> {
    let dir = root.join("rss");
    let a = spawn(&dir).await;
    let idle = rss_mib(&a.pid());
    let mut open: Vec<Channel> = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let ch = unix(&a.sock).await;
        // One call each, so every connection is a live HTTP/2 session on the daemon's side.
        KeyBrokerClient::new(ch.clone())
            .revoke_status(RevokeStatusRequest::default())
            .await
            .unwrap();
        open.push(ch);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connected = rss_mib(&a.pid());
    drop(open);
    a.stop().await;

    let b = spawn(&dir).await;
    let before = rss_mib(&b.pid());
    let ch = unix(&b.sock).await;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let mut c = KeyBrokerClient::new(ch.clone());
        tasks.spawn(async move {
            let mut n = 0;
            for i in (w..KEYS).step_by(16) {
                let ctx = HashMap::from([("i".to_string(), i.to_string())]);
                let wrapped = c
                    .wrap_key(WrapKeyRequest {
                        key: "k".into(),
                        plaintext: (i as u64).to_le_bytes().repeat(4),
                        context: ctx.clone(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .wrapped;
                c.unwrap_key(UnwrapKeyRequest {
                    wrapped,
                    context: ctx,
                })
                .await
                .unwrap();
                n += 1;
            }
            n
        });
    }
    let unwrapped: usize = tasks.join_all().await.into_iter().sum();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cached = rss_mib(&b.pid());
    b.stop().await;

    vec![
        Row {
            measure: "RSS of the kms-broker process, idle (after start, status round, pre-warm)"
                .into(),
            target: "≤ 20 MiB",
            result: format!("{idle:.1} MiB"),
            met: idle <= 20.0 * MIB,
        },
        Row {
            measure: format!("RSS with {CONNECTIONS} open Unix-socket connections (one call each)"),
            target: "≤ 64 MiB",
            result: format!("{connected:.1} MiB"),
            met: connected <= 64.0 * MIB,
        },
        Row {
            measure: format!(
                "RSS with {KEYS} distinct keys unwrapped once, cache on (fresh process)"
            ),
            target: "≤ 64 MiB",
            result: format!("{cached:.1} MiB ({before:.1} MiB before; {unwrapped} unwrapped)"),
            met: cached <= 64.0 * MIB && unwrapped == KEYS,
        },
    ]
}
