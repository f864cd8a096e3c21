//! `kms-broker serve --dev`: zero set-up. Makes dev certificates, a local file key and a
//! config under a dev folder (default `.dev/`) if missing, and serves on `.dev/broker.sock`
//! and 127.0.0.1:7443. DEV ONLY: the key file and the CA key sit on the local disk.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};

/// The dev key's name and the dev store's id, as the printed commands use them.
pub const DEV_KEY: &str = "dev";
pub const DEV_STORE: &str = "dev-store";
pub const DEV_TCP: &str = "127.0.0.1:7443";
/// The state dir, inside the dev folder.
const DEV_STATE: &str = "state";

/// Creates `dir` (and missing parents) with mode 0700; an existing one is left as it is
/// (the daemon's own checks then judge it).
fn private_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Creates what is missing under `dir` and returns the config to serve.
pub fn prepare(dir: &Path) -> Result<Config, String> {
    // 0700: the dev folder holds a key file and the dev CA's key.
    private_dir(dir)?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    // The daemon itself never creates its state dir (a missing one may be a lost mount);
    // dev mode is the one place that makes it, as it makes everything else.
    private_dir(&dir.join(DEV_STATE))?;
    let certs = dir.join("certs");
    if !crate::certs::dev_certs_exist(&certs) {
        crate::certs::write_dev_certs(&certs)?;
        tracing::info!(dir = %certs.display(), "made dev certificates");
    }
    let key = dir.join("dev-key.bin");
    if !key.exists() {
        crate::backend::file::create_key_file(&key)
            .map_err(|e| format!("cannot create {}: {e}", key.display()))?;
        tracing::info!(path = %key.display(), "made a dev file key");
    }
    let uid = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata("/proc/self").map_err(|e| format!("cannot read /proc/self: {e}"))?,
    );
    let text = config_text(&dir, &key, uid);
    let path = dir.join("config.toml");
    crate::fs::write_atomic(&path, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Config::parse(&path, &text).map_err(|e: ConfigError| format!("dev config: {e}"))
}

fn config_text(dir: &Path, key: &Path, uid: u32) -> String {
    format!(
        r#"# Written by `kms-broker serve --dev` at every start. DEV ONLY.
[server]
unix_socket = "broker.sock"
tcp_listen = "{DEV_TCP}"
state_dir = "{DEV_STATE}"

[tls]
ca = "certs/ca.pem"
cert = "certs/server.pem"
key = "certs/server-key.pem"

[keys.{DEV_KEY}]
uris = ["file://{key}"]

[stores.{DEV_STORE}]
key = "{DEV_KEY}"

[revocation]
poll_interval = "5s"

# Dev machines and containers often allow little locked memory (64 KiB): warn, do not fail.
[memory]
lock = "best-effort"

# You (uid {uid}) may do everything over the Unix socket.
[[policy]]
peer = "uid:{uid}"
allow = ["WrapKey", "UnwrapKey", "GetStoreKey", "RevokeStatus", "RotateStoreKey",
         "StoreStatus", "Rewrap", "ImportStoreKey", "DropPreviousStoreKey"]

# The dev client certificate may wrap, unwrap and read states over mutual TLS.
[[policy]]
peer = "cert:{client}"
allow = ["WrapKey", "UnwrapKey", "RevokeStatus", "StoreStatus"]
"#,
        key = key.display(),
        client = crate::certs::DEV_CLIENT_IDENTITY,
    )
    .replace("\"broker.sock\"", &format!("{:?}", dir.join("broker.sock")))
}

/// Ready-to-paste grpcurl commands for the dev daemon.
pub fn usage(dir: &Path) -> String {
    let d = |p: &str| -> PathBuf { dir.join(p) };
    let sock = d("broker.sock");
    let certs = d("certs");
    format!(
        r#"kms-broker (dev) is serving. Try it with grpcurl 1.8.6 (`-authority localhost` is needed on the Unix socket):

  grpcurl -plaintext -unix -authority localhost {sock} list
  grpcurl -plaintext -unix -authority localhost -d '{{"key":"{DEV_KEY}","plaintext":"aGVsbG8="}}' {sock} kmsbroker.v1.KeyBroker/WrapKey
  grpcurl -plaintext -unix -authority localhost -d '{{"store_id":"{DEV_STORE}","create":true}}' {sock} kmsbroker.v1.KeyBroker/GetStoreKey
  grpcurl -plaintext -unix -authority localhost -d '{{}}' {sock} kmsbroker.v1.KeyBroker/RevokeStatus
  grpcurl -plaintext -unix -authority localhost {sock} grpc.health.v1.Health/Check

Over mutual TLS (GetStoreKey is refused there by design):

  grpcurl -cacert {ca} -cert {cert} -key {key} -d '{{}}' {DEV_TCP} kmsbroker.v1.KeyBroker/RevokeStatus
"#,
        sock = sock.display(),
        ca = certs.join("ca.pem").display(),
        cert = certs.join("client.pem").display(),
        key = certs.join("client-key.pem").display(),
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn prepare_makes_a_private_state_dir_the_daemon_accepts() {
        let tmp = tempfile::tempdir().unwrap();
        let dev = tmp.path().join("dev");
        let config = prepare(&dev).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            config.server.state_dir,
            dev.canonicalize().unwrap().join("state")
        );
        assert_eq!(mode(&config.server.state_dir), 0o700);
        assert_eq!(mode(&dev), 0o700);
        crate::store_key::ensure_state_dir(&config.server.state_dir).unwrap();
        // A second start reuses everything.
        prepare(&dev).unwrap();
    }
}
