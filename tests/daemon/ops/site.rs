//! The harness of `ops`: a site (certificates, file keys, config, state dir) whose daemon
//! is the real binary, and the operator commands run as the real binary against it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kms_broker_client::pb::{GetStoreKeyRequest, GetStoreKeyResponse};
use serde_json::Value;

use crate::common::standins::ChildGuard;
use crate::common::{config_text, my_uid, unix_client, Client};

pub const BIN: &str = env!("CARGO_BIN_EXE_kms-broker");

/// Every operation, for this process's uid, over the Unix socket.
pub fn allow_me(ops: &[&str]) -> String {
    let ops: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
    format!(
        "\n[[policy]]\npeer = \"uid:{}\"\nallow = [{}]\n",
        my_uid(),
        ops.join(", ")
    )
}

pub const EVERYTHING: &[&str] = &[
    "WrapKey",
    "UnwrapKey",
    "GetStoreKey",
    "RevokeStatus",
    "RotateStoreKey",
    "StoreStatus",
    "Rewrap",
    "ImportStoreKey",
    "DropPreviousStoreKey",
];

/// A daemon's folder: dev certificates, file keys `a` and `b`, its config and state dir.
pub struct Site {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
}

impl Site {
    pub fn new() -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        kms_broker::certs::write_dev_certs(&dir.join("certs")).unwrap();
        for k in ["a", "b"] {
            kms_broker::backend::file::create_key_file(&dir.join(format!("{k}.key"))).unwrap();
        }
        Site {
            config: dir.join("kms-broker.toml"),
            socket: dir.join("broker.sock"),
            dir,
            _tmp: tmp,
        }
    }

    /// Keys `a` and `b`, store `s1` under `store_key`, then `extra` (policies).
    pub fn configure(&self, store_key: &str, extra: &str) {
        let body = format!(
            "[keys.a]\nuris = [\"file://{}\"]\n[keys.b]\nuris = [\"file://{}\"]\n[stores.s1]\nkey = \"{store_key}\"\n{extra}",
            self.dir.join("a.key").display(),
            self.dir.join("b.key").display(),
        );
        self.configure_body(&body);
    }

    /// Any `[keys]`, `[stores]`, `[revocation]` and `[[policy]]` text.
    pub fn configure_body(&self, body: &str) {
        std::fs::write(&self.config, config_text(&self.dir, body)).unwrap();
    }

    /// Starts `kms-broker serve` and waits until its socket accepts (a stale socket left by
    /// a killed daemon refuses, so a restart is not mistaken for the old one).
    pub fn start(&self) -> ChildGuard {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let child = ChildGuard::spawn(
            Command::new(BIN)
                .args(["serve", "--config"])
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(log),
        );
        let started = Instant::now();
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "daemon did not listen; its log:\n{}",
                std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Runs an operator command against this site's daemon (by `--socket`).
    pub fn cli(&self, args: &[&str]) -> Out {
        let mut full: Vec<&str> = args.to_vec();
        let sock = self.socket.to_str().unwrap();
        full.extend(["--socket", sock]);
        run(&full)
    }

    pub async fn client(&self) -> Client {
        unix_client(&self.socket).await
    }
}

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(args: &[&str]) -> Out {
    let out = Command::new(BIN).args(args).output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `status --json`, parsed; panics unless it exits 0.
pub fn status_json(site: &Site) -> Value {
    let out = site.cli(&["status", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

pub fn store(doc: &Value) -> &Value {
    let stores = doc["stores"].as_array().unwrap();
    assert_eq!(stores.len(), 1, "{doc}");
    &stores[0]
}

pub fn previous_ids(s: &Value) -> Vec<String> {
    s["previous"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key_id"].as_str().unwrap().to_owned())
        .collect()
}

pub async fn get(c: &mut Client, create: bool) -> Result<GetStoreKeyResponse, tonic::Status> {
    c.get_store_key(GetStoreKeyRequest {
        store_id: "s1".into(),
        create,
    })
    .await
    .map(|r| r.into_inner())
}
