//! What callers can put in the operational log (the real binary's stderr): never a secret
//! they pasted, never megabytes, never a line per call.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kms_broker_client::pb::{GetStoreKeyRequest, WrapKeyRequest};
use tonic::Code;

use crate::common::standins::ChildGuard;
use crate::common::{allow_me_everything, config_text, try_unix_client, Client};

const BIN: &str = env!("CARGO_BIN_EXE_kms-broker");

async fn connect(sock: &std::path::Path) -> Client {
    let start = Instant::now();
    loop {
        if sock.exists() {
            if let Ok(c) = try_unix_client(sock).await {
                return c;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "daemon did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_strings_are_cut_redacted_and_rate_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    kms_broker::certs::write_dev_certs(&dir.join("certs")).unwrap();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir.join("state"))
        .unwrap();
    let key = dir.join("k.bin");
    kms_broker::backend::file::create_key_file(&key).unwrap();
    let body = format!(
        "[keys.k]\nuris = [\"file://{}\"]\n{}",
        key.display(),
        allow_me_everything()
    );
    let config = dir.join("kms.toml");
    std::fs::write(&config, config_text(dir, &body)).unwrap();
    let log = dir.join("stderr.log");
    let mut daemon = ChildGuard::spawn(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("KMS_BROKER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let mut c = connect(&dir.join("broker.sock")).await;
    let secret = "hunter2-very-secret";
    let uri_name = format!("aws:///k?REGION=x&AWS_SECRET_ACCESS_KEY={secret}");
    let huge = "x".repeat(100_000);
    for name in [uri_name.as_str(), huge.as_str(), huge.as_str()] {
        let e = c
            .wrap_key(WrapKeyRequest {
                key: name.into(),
                plaintext: b"dk".to_vec(),
                context: HashMap::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(!e.message().contains(secret), "{}", e.message());
        let e = c
            .get_store_key(GetStoreKeyRequest {
                store_id: name.into(),
                create: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    // A burst of refusals, and a burst of successes.
    for _ in 0..500 {
        let _ = c
            .wrap_key(WrapKeyRequest {
                key: "nope".into(),
                plaintext: b"dk".to_vec(),
                context: HashMap::new(),
            })
            .await;
    }
    for _ in 0..200 {
        c.wrap_key(WrapKeyRequest {
            key: "k".into(),
            plaintext: b"dk".to_vec(),
            context: HashMap::new(),
        })
        .await
        .unwrap();
    }
    daemon.kill();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(secret), "a pasted secret reached the log");
    assert!(
        text.len() < 64 * 1024,
        "{} bytes of log for 706 calls",
        text.len()
    );
    let refused = text.matches("key operation refused").count();
    assert!(
        (1..=100).contains(&refused),
        "{refused} refusal lines for 506 refusals"
    );
    assert!(
        !text.contains("outcome=\"OK\""),
        "successes are not logged at info"
    );
}
