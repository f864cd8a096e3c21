//! A real OpenBao dev server per test (in memory, 127.0.0.1, free port), administered with
//! the `bao` CLI and the root token. The daemon never gets the root token: it gets a
//! limited token, through a 0600 TOKEN_FILE, whose policy is the one the README tells
//! operators to paste.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::standins::{free_port, require_bin, wait_for_port, ChildGuard};

const ROOT: &str = "root-token-for-tests";

/// The policy an operator grants the daemon for transit key `key` (README snippet).
pub fn daemon_policy(key: &str) -> String {
    format!(
        "path \"transit/encrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"transit/decrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"transit/keys/{key}\" {{ capabilities = [\"read\"] }}\n"
    )
}

#[derive(Debug)]
pub struct Bao {
    pub server: ChildGuard,
    pub port: u16,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    tls: bool,
}

impl Bao {
    /// A dev server with transit enabled at `transit/`, or `None` (after saying why) when
    /// `bao` is not installed and CI is not set.
    pub fn start() -> Option<Bao> {
        Self::start_with(false)
    }

    /// With `tls`, the server speaks https with a generated CA (`ca_file()`).
    pub fn start_with(tls: bool) -> Option<Bao> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let bin = require_bin("bao")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("bao.log")).expect("log file");
        // OpenBao enables audit devices only from its config (not through the API), so each
        // server gets a file audit device: tests compare its request ids with ours.
        let audit_config = dir.path().join("audit.hcl");
        std::fs::write(
            &audit_config,
            format!(
                "audit \"file\" \"file\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                dir.path().join("audit.log").display()
            ),
        )
        .expect("audit config");
        let mut cmd = Command::new(&bin);
        cmd.args([
            "server",
            "-dev",
            &format!("-dev-listen-address=127.0.0.1:{port}"),
            &format!("-dev-root-token-id={ROOT}"),
            &format!("-config={}", audit_config.display()),
        ]);
        if tls {
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log));
        let server = ChildGuard::spawn(&mut cmd);
        wait_for_port(port, Duration::from_secs(20));
        let bao = Bao {
            server,
            port,
            dir,
            bin,
            tls,
        };
        bao.wait_unsealed();
        bao.cli(&["secrets", "enable", "transit"]);
        Some(bao)
    }

    fn wait_unsealed(&self) {
        let start = Instant::now();
        loop {
            if self.try_cli(&["status"]).is_ok() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "bao did not unseal"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn addr(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The dev CA (with `start_with(true)`).
    /// OpenBao's own audit log (one JSON object per line).
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("vault-ca.pem")
    }

    /// Runs `bao ARGS` as root; Err(stderr) on failure.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env_clear()
            .env("HOME", self.dir.path())
            .env("BAO_ADDR", self.addr())
            .env("BAO_TOKEN", ROOT)
            .stdin(Stdio::null());
        if self.tls {
            cmd.env("BAO_CACERT", self.ca_file());
        }
        let out = cmd.output().expect("run bao");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("bao {args:?} failed: {e}"))
    }

    /// Creates transit key `key` (aes256-gcm96 unless `extra` says otherwise).
    pub fn create_key(&self, key: &str, extra: &[&str]) {
        let path = format!("transit/keys/{key}");
        let mut args = vec!["write", "-f", path.as_str()];
        args.extend_from_slice(extra);
        self.cli(&args);
    }

    pub fn key_exists(&self, key: &str) -> bool {
        self.try_cli(&["read", &format!("transit/keys/{key}")])
            .is_ok()
    }

    pub fn rotate(&self, key: &str) {
        self.cli(&["write", "-f", &format!("transit/keys/{key}/rotate")]);
    }

    pub fn configure(&self, key: &str, setting: &str) {
        self.cli(&["write", &format!("transit/keys/{key}/config"), setting]);
    }

    pub fn soft_delete(&self, key: &str) {
        self.cli(&["delete", &format!("transit/keys/{key}/soft-delete")]);
    }

    pub fn restore(&self, key: &str) {
        self.cli(&[
            "write",
            "-f",
            &format!("transit/keys/{key}/soft-delete-restore"),
        ]);
    }

    pub fn delete_key(&self, key: &str) {
        self.configure(key, "deletion_allowed=true");
        self.cli(&["delete", &format!("transit/keys/{key}")]);
    }

    /// Writes policy `name` from HCL text.
    pub fn policy(&self, name: &str, hcl: &str) {
        let file = self.dir.path().join(format!("{name}.hcl"));
        std::fs::write(&file, hcl).expect("policy file");
        self.cli(&["policy", "write", name, &file.display().to_string()]);
    }

    /// A token for the daemon with the README policy on `key` (policy name `daemon-KEY`).
    pub fn daemon_token(&self, key: &str, ttl: &str) -> String {
        let name = format!("daemon-{key}");
        self.policy(&name, &daemon_policy(key));
        self.token(&[&format!("-policy={name}"), &format!("-ttl={ttl}")])
    }

    /// `bao token create ARGS -field=token`.
    pub fn token(&self, args: &[&str]) -> String {
        let mut a = vec!["token", "create", "-field=token"];
        a.extend_from_slice(args);
        self.cli(&a)
    }

    /// Writes `token` to a fresh 0600 file and returns its path.
    pub fn token_file(&self, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("token-{}", rand_suffix()));
        write_token(&path, token);
        path
    }

    /// The daemon's URI for `key` with TOKEN_FILE `file`.
    pub fn uri(&self, key: &str, file: &Path) -> String {
        if self.tls {
            format!(
                "vault://127.0.0.1:{}/transit/{key}?TOKEN_FILE={}&CA_FILE={}",
                self.port,
                file.display(),
                self.ca_file().display()
            )
        } else {
            format!(
                "vault://127.0.0.1:{}/transit/{key}?TLS=false&TOKEN_FILE={}",
                self.port,
                file.display()
            )
        }
    }

    /// Key `key`, a daemon token for it (1h) in a token file, and the URI: the usual set-up.
    pub fn setup(&self, key: &str) -> (String, String) {
        self.create_key(key, &[]);
        let token = self.daemon_token(key, "1h");
        let file = self.token_file(&token);
        (self.uri(key, &file), token)
    }

    /// Stops the server (as in "Vault went away").
    pub fn kill(&mut self) {
        self.server.kill();
    }
}

/// Writes a token file with mode 0600, atomically (as a Vault Agent sink does).
pub fn write_token(path: &Path, token: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{token}\n")).expect("write token");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::rename(&tmp, path).expect("rename token");
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::SeqCst).to_string()
}
