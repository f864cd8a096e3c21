//! One moto server per test (`tests/standins/aws_kms.py`: moto patched to enforce key state
//! and key-policy denials like AWS), and the key administration a customer would do,
//! through `aws-sdk-kms` itself.

use std::process::{Command, Stdio};
use std::time::Duration;

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::Client;

use crate::common::standins::{
    free_port, repo_root, require_bin, standins_dir, wait_for_port, ChildGuard,
};

pub const REGION: &str = "us-east-1";
/// The daemon's secret access key: tests assert it never shows anywhere.
pub const SECRET: &str = "daemonSecretKey-MUST-NOT-LEAK";
pub const TOKEN: &str = "daemonSessionToken-MUST-NOT-LEAK";

/// A running stand-in; killed on drop.
#[derive(Debug)]
pub struct Moto {
    pub port: u16,
    child: ChildGuard,
    _dir: tempfile::TempDir,
    /// The customer's administrator (a different principal from the daemon's).
    pub admin: Client,
}

impl Moto {
    /// Starts the stand-in, or `None` (after saying why) where it is not installed.
    pub fn start() -> Option<Moto> {
        require_bin("moto_server")?;
        Some(Self::start_on(free_port()))
    }

    /// Starts the stand-in on `port` (the caller checked that it is installed).
    pub fn start_on(port: u16) -> Moto {
        let python = standins_dir().join("venv/bin/python");
        let script = repo_root().join("tests/standins/aws_kms.py");
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("moto.log")).expect("log file");
        let child = ChildGuard::spawn(
            Command::new(python)
                .arg(script)
                .args(["--port", &port.to_string()])
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(log),
        );
        wait_for_port(port, Duration::from_secs(30));
        let conf = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .credentials_provider(Credentials::new(
                "AKIDADMIN",
                "admin-secret",
                None,
                None,
                "test",
            ))
            .build();
        Moto {
            port,
            child,
            _dir: dir,
            admin: Client::from_conf(conf),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The daemon's URI for `key` (id, ARN or alias) with static credentials.
    pub fn uri(&self, key: &str) -> String {
        self.uri_as(key, "AKIDDAEMON")
    }

    /// Like [`Moto::uri`] with another access key id (`INVALID…` is unknown to the stand-in).
    pub fn uri_as(&self, key: &str, access_key_id: &str) -> String {
        format!(
            "aws:///{key}?REGION={REGION}&AUTH=specified&AWS_ACCESS_KEY_ID={access_key_id}\
             &AWS_SECRET_ACCESS_KEY={SECRET}&AWS_SESSION_TOKEN={TOKEN}&AWS_ENDPOINT={}",
            self.endpoint()
        )
    }

    /// A new symmetric key; returns (key id, key ARN).
    pub async fn create_key(&self) -> (String, String) {
        let out = self.admin.create_key().send().await.expect("CreateKey");
        let meta = out.key_metadata.expect("KeyMetadata");
        (meta.key_id.clone(), meta.arn.clone().expect("Arn"))
    }

    pub async fn create_alias(&self, alias: &str, key_id: &str) {
        self.admin
            .create_alias()
            .alias_name(alias)
            .target_key_id(key_id)
            .send()
            .await
            .expect("CreateAlias");
    }

    pub async fn disable(&self, key_id: &str) {
        self.admin
            .disable_key()
            .key_id(key_id)
            .send()
            .await
            .expect("DisableKey");
    }

    pub async fn enable(&self, key_id: &str) {
        self.admin
            .enable_key()
            .key_id(key_id)
            .send()
            .await
            .expect("EnableKey");
    }

    pub async fn schedule_deletion(&self, key_id: &str) {
        self.admin
            .schedule_key_deletion()
            .key_id(key_id)
            .pending_window_in_days(7)
            .send()
            .await
            .expect("ScheduleKeyDeletion");
    }

    pub async fn rotate(&self, key_id: &str) {
        self.admin
            .rotate_key_on_demand()
            .key_id(key_id)
            .send()
            .await
            .expect("RotateKeyOnDemand");
    }

    /// Revokes through the key policy: an explicit Deny of `action` (`kms:*`, `kms:Decrypt`).
    pub async fn deny(&self, key_id: &str, action: &str) {
        self.put_policy(key_id, &format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"revoke","Effect":"Deny","Principal":{{"AWS":"*"}},"Action":"{action}","Resource":"*"}}]}}"#
        ))
        .await;
    }

    /// Restores a policy that denies nothing.
    pub async fn allow(&self, key_id: &str) {
        self.put_policy(key_id, r#"{"Version":"2012-10-17","Statement":[{"Sid":"all","Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*","Resource":"*"}]}"#)
            .await;
    }

    async fn put_policy(&self, key_id: &str, policy: &str) {
        self.admin
            .put_key_policy()
            .key_id(key_id)
            .policy_name("default")
            .policy(policy)
            .send()
            .await
            .expect("PutKeyPolicy");
    }

    /// The server's process id: a test pauses it (SIGSTOP) to lose a region without losing
    /// the keys, which moto holds only in memory.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Stops the server (as in "AWS went away").
    pub fn kill(&mut self) {
        self.child.kill();
    }
}
