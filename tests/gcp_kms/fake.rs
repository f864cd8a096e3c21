//! One Cloud KMS fake per test (`tests/standins/gcp_kms_fake/server.js`: the REST face of the
//! real google.cloud.kms.v1 protos), and the key administration an operator would do,
//! through `google-cloud-kms-v1` itself.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use google_cloud_auth::credentials::anonymous;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_kms_v1::client::KeyManagementService;
use google_cloud_kms_v1::model::crypto_key_version::CryptoKeyVersionState;
use google_cloud_kms_v1::model::CryptoKey;
use serde_json::json;

use crate::common::standins::{
    free_port, repo_root, require_bin, require_file, wait_for_port, ChildGuard,
};

pub const RING: &str = "projects/test-project/locations/global/keyRings/ring";
/// The daemon's service account: its private key must never show anywhere.
pub const DAEMON_SA: &str = "broker@test-project.iam.gserviceaccount.com";
pub const ENCRYPTER: &str = "roles/cloudkms.cryptoKeyEncrypterDecrypter";
pub const VIEWER: &str = "roles/cloudkms.viewer";

/// A running fake; killed on drop. Its keys live in a temp dir, so it can be restarted.
#[derive(Debug)]
pub struct Fake {
    pub port: u16,
    child: ChildGuard,
    node: PathBuf,
    dir: tempfile::TempDir,
    /// The operator's client (anonymous: the fake does not check admin methods).
    pub admin: KeyManagementService,
}

/// `node` from `.standins/bin`, else from PATH; `None` (or a panic in CI) if neither.
fn node() -> Option<PathBuf> {
    let pinned = crate::common::standins::standins_dir().join("bin/node");
    if pinned.exists() {
        return Some(pinned);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("node"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| require_bin("node"))
}

impl Fake {
    /// Starts the fake, or `None` (after saying why) where node or the protos are missing.
    pub async fn start() -> Option<Fake> {
        let node = node()?;
        require_file(
            "npm/node_modules/@google-cloud/kms/build/protos/google/cloud/kms/v1/service.proto",
        )?;
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = spawn(&node, port, &dir);
        let admin = client(&format!("http://127.0.0.1:{port}")).await;
        let fake = Fake {
            port,
            child,
            node,
            dir,
            admin,
        };
        fake.admin
            .create_key_ring()
            .set_parent(RING.rsplit_once("/keyRings/").expect("ring").0)
            .set_key_ring_id("ring")
            .send()
            .await
            .expect("CreateKeyRing");
        Some(fake)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the process (as in "Cloud KMS went away").
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Starts it again on the same port with the same keys.
    pub fn restart(&mut self) {
        self.child.kill();
        self.child = spawn(&self.node, self.port, &self.dir);
    }

    /// The daemon's URI for key `id`, with no credentials (`AUTH=none`).
    pub fn uri(&self, id: &str) -> String {
        format!(
            "gs:///{RING}/cryptoKeys/{id}?AUTH=none&GCP_ENDPOINT={}",
            self.endpoint()
        )
    }

    /// The daemon's URI for key `id` as service account [`DAEMON_SA`] (`AUTH=specified`).
    pub fn uri_as_sa(&self, id: &str, sa: &ServiceAccount) -> String {
        format!(
            "gs:///{RING}/cryptoKeys/{id}?AUTH=specified&CREDENTIALS={}&GCP_ENDPOINT={}",
            sa.url_param(),
            self.endpoint()
        )
    }

    /// The daemon's URI for key `id` in key ring `ring` (made by [`Fake::create_ring`]).
    pub fn uri_in(&self, ring: &str, id: &str) -> String {
        let base = RING.rsplit_once("/keyRings/").expect("ring").0;
        format!(
            "gs:///{base}/keyRings/{ring}/cryptoKeys/{id}?AUTH=none&GCP_ENDPOINT={}",
            self.endpoint()
        )
    }

    /// A new key ring beside [`RING`]; returns its resource name.
    pub async fn create_ring(&self, id: &str) -> String {
        self.admin
            .create_key_ring()
            .set_parent(RING.rsplit_once("/keyRings/").expect("ring").0)
            .set_key_ring_id(id)
            .send()
            .await
            .expect("CreateKeyRing")
            .name
    }

    /// A new ENCRYPT_DECRYPT key in `ring` (a resource name), with the same grants as
    /// [`Fake::create_key_with`]; returns its resource name.
    pub async fn create_key_in(&self, ring: &str, id: &str) -> String {
        self.create_key_at(ring, id, json!({ "purpose": "ENCRYPT_DECRYPT" }), false)
            .await
    }

    /// Least privilege: the key grants `allUsers` (the caller of [`Fake::uri`]) the
    /// encrypter/decrypter role and nothing else (no `cloudkms.cryptoKeys.get`).
    pub async fn encrypter_only(&self, key: &str) {
        self.set_bindings(key, &[(ENCRYPTER, &["allUsers"])]).await;
    }

    /// A new ENCRYPT_DECRYPT key with version 1 as its primary; returns its resource name.
    pub async fn create_key(&self, id: &str) -> String {
        self.create_key_with(id, json!({ "purpose": "ENCRYPT_DECRYPT" }), false)
            .await
    }

    /// A new key from a CryptoKey in proto3 JSON (e.g. a short destroyScheduledDuration).
    /// The fake denies by default, as Cloud KMS does: the new key's policy grants
    /// `allUsers` (the anonymous caller of [`Fake::uri`]) the encrypter/decrypter and viewer
    /// roles; tests about IAM replace it with [`Fake::set_bindings`].
    pub async fn create_key_with(
        &self,
        id: &str,
        body: serde_json::Value,
        skip_version: bool,
    ) -> String {
        self.create_key_at(RING, id, body, skip_version).await
    }

    async fn create_key_at(
        &self,
        ring: &str,
        id: &str,
        body: serde_json::Value,
        skip_version: bool,
    ) -> String {
        let key: CryptoKey = serde_json::from_value(body).expect("CryptoKey JSON");
        let made = self
            .admin
            .create_crypto_key()
            .set_parent(ring)
            .set_crypto_key_id(id)
            .set_crypto_key(key)
            .set_skip_initial_version_creation(skip_version)
            .send()
            .await
            .expect("CreateCryptoKey");
        self.set_bindings(
            &made.name,
            &[(ENCRYPTER, &["allUsers"]), (VIEWER, &["allUsers"])],
        )
        .await;
        made.name
    }

    /// Rotation as an operator does it: a new version, made primary. Returns its id.
    pub async fn rotate(&self, key: &str) -> String {
        let v = self
            .admin
            .create_crypto_key_version()
            .set_parent(key)
            .send()
            .await
            .expect("CreateCryptoKeyVersion");
        let id = v.name.rsplit('/').next().expect("id").to_owned();
        self.admin
            .update_crypto_key_primary_version()
            .set_name(key)
            .set_crypto_key_version_id(&id)
            .send()
            .await
            .expect("UpdateCryptoKeyPrimaryVersion");
        id
    }

    /// Sets version `v` of `key` to ENABLED or DISABLED (UpdateCryptoKeyVersion, mask `state`).
    pub async fn set_state(&self, key: &str, v: &str, state: CryptoKeyVersionState) {
        let mut version = google_cloud_kms_v1::model::CryptoKeyVersion::new()
            .set_name(format!("{key}/cryptoKeyVersions/{v}"));
        version.state = state;
        let mask: google_cloud_kms_v1::model::UpdateCryptoKeyVersionRequest =
            serde_json::from_value(json!({ "updateMask": "state" })).expect("mask");
        self.admin
            .update_crypto_key_version()
            .set_crypto_key_version(version)
            .set_or_clear_update_mask(mask.update_mask)
            .send()
            .await
            .expect("UpdateCryptoKeyVersion");
    }

    pub async fn destroy(&self, key: &str, v: &str) {
        self.admin
            .destroy_crypto_key_version()
            .set_name(format!("{key}/cryptoKeyVersions/{v}"))
            .send()
            .await
            .expect("DestroyCryptoKeyVersion");
    }

    pub async fn restore(&self, key: &str, v: &str) {
        self.admin
            .restore_crypto_key_version()
            .set_name(format!("{key}/cryptoKeyVersions/{v}"))
            .send()
            .await
            .expect("RestoreCryptoKeyVersion");
    }

    /// Replaces the key's IAM policy with `bindings` ((role, [members])), the way an
    /// operator grants or revokes (read-modify-write with the etag).
    pub async fn set_bindings(&self, key: &str, bindings: &[(&str, &[&str])]) {
        let mut policy = self
            .admin
            .get_iam_policy()
            .set_resource(key)
            .send()
            .await
            .expect("GetIamPolicy");
        let list: Vec<_> = bindings
            .iter()
            .map(|(role, members)| json!({ "role": role, "members": members }))
            .collect();
        policy.bindings = serde_json::from_value(serde_json::Value::Array(list)).expect("bindings");
        self.admin
            .set_iam_policy()
            .set_resource(key)
            .set_policy(policy)
            .send()
            .await
            .expect("SetIamPolicy");
    }

    /// Queues a fault for the next call(s) of `method` (see the fake's server.js header).
    pub fn fault(&self, fault: serde_json::Value) {
        self.control("POST", "/_fake/faults", &fault);
    }

    pub fn disable_service_account(&self, email: &str, disabled: bool) {
        let verb = if disabled { "disable" } else { "enable" };
        self.control(
            "POST",
            &format!("/_fake/serviceAccounts:{verb}"),
            &json!({ "email": email }),
        );
    }

    /// A test control call over plain HTTP/1.1 (not part of the Google API).
    fn control(&self, method: &str, path: &str, body: &serde_json::Value) {
        let body = body.to_string();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the fake");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("send control");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read control answer");
        assert!(
            out.starts_with("HTTP/1.1 200"),
            "control {path} failed: {out}"
        );
    }
}

fn spawn(node: &PathBuf, port: u16, dir: &tempfile::TempDir) -> ChildGuard {
    let script = repo_root().join("tests/standins/gcp_kms_fake/server.js");
    let child = ChildGuard::spawn(
        Command::new(node)
            .arg(script)
            .arg(port.to_string())
            .arg("--state")
            .arg(dir.path().join("state.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    wait_for_port(port, Duration::from_secs(30));
    child
}

/// An anonymous client for `endpoint`, one attempt per call.
pub async fn client(endpoint: &str) -> KeyManagementService {
    KeyManagementService::builder()
        .with_endpoint(endpoint)
        .with_credentials(anonymous::Builder::new().build())
        .with_retry_policy(NeverRetry)
        .build()
        .await
        .expect("admin client")
}

/// A service-account key made for the test (RSA-2048, PKCS#8), as a JSON key file.
#[derive(Debug)]
pub struct ServiceAccount {
    pub private_key_pem: String,
    pub json: String,
}

impl ServiceAccount {
    pub fn new(email: &str) -> ServiceAccount {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
        let pem = key.serialize_pem();
        let json = json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": "test-key-1",
            "private_key": pem,
            "client_email": email,
            "client_id": "1",
            "token_uri": "https://oauth2.googleapis.com/token",
        })
        .to_string();
        ServiceAccount {
            private_key_pem: pem,
            json,
        }
    }

    /// `CREDENTIALS`: the base64 of the key file, URL-encoded.
    pub fn url_param(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.json);
        url::form_urlencoded::byte_serialize(b64.as_bytes()).collect()
    }

    /// The PEM body lines: none of them may appear in any output.
    pub fn secret_fragments(&self) -> Vec<String> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.json);
        let mut out: Vec<String> = self
            .private_key_pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 16)
            .map(str::to_owned)
            .collect();
        out.push(b64[b64.len() / 2..b64.len() / 2 + 24].to_owned());
        out
    }
}
