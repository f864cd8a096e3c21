//! The real `kms-broker` binary: bad configs and TLS files exit 64, a second daemon on a
//! state dir exits 75, kill -9 and restart, SIGTERM, serve --dev.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kms_broker_client::pb::GetStoreKeyRequest;

use crate::common::standins::ChildGuard;
use crate::common::{allow_me_everything, config_text, try_unix_client, unix_client};

const BIN: &str = env!("CARGO_BIN_EXE_kms-broker");

fn run_with_config(dir: &Path, text: &str) -> (i32, String) {
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configs_exit_64_naming_file_field_and_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let key = dir.join("k.bin");
    kms_broker::backend::file::create_key_file(&key).unwrap();
    let good_keys = format!("[keys.k]\nuris = [\"file://{}\"]\n", key.display());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown field",
            format!("{good_keys}[stores.s]\nkey = \"k\"\ncolour = \"red\"\n"),
            "colour",
        ),
        (
            "unknown key in store",
            format!("{good_keys}[stores.s]\nkey = \"nope\"\n"),
            "stores.s.key",
        ),
        (
            "bad URI scheme",
            "[keys.k]\nuris = [\"ftp://x/y\"]\n".into(),
            "keys.k.uris[0]",
        ),
        (
            "GetStoreKey for a cert peer",
            format!("{good_keys}[[policy]]\npeer = \"cert:x\"\nallow = [\"GetStoreKey\"]\n"),
            "GetStoreKey",
        ),
        (
            "bad algorithm",
            format!("{good_keys}[stores.s]\nkey = \"k\"\nalgorithm = \"DES\"\n"),
            "algorithm",
        ),
        (
            "bad peer",
            format!("{good_keys}[[policy]]\npeer = \"root\"\nallow = [\"WrapKey\"]\n"),
            "peer",
        ),
        (
            "bad duration",
            format!("{good_keys}[revocation]\npoll_interval = \"soon\"\n"),
            "poll_interval",
        ),
    ];
    for (what, body, needle) in cases {
        let (code, stderr) = run_with_config(dir, &config_text(dir, &body));
        assert_eq!(code, 64, "{what}: {stderr}");
        assert!(
            stderr.contains("bad.toml"),
            "{what}: names the file: {stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{what}: names {needle:?}: {stderr}"
        );
        assert!(stderr.contains("fix"), "{what}: says how to fix: {stderr}");
    }
    // Not TOML at all, and a missing file.
    assert_eq!(run_with_config(dir, "[server\n").0, 64);
    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/kms.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    // TLS files that do not exist are a config error too.
    let body = format!("{good_keys}{}", allow_me_everything());
    let text = config_text(dir, &body);
    let (code, stderr) = run_with_config(dir, &text);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("tls.ca"), "{stderr}");
}

/// The config is the policy: one its group may write would let that group grant itself
/// every key, so serve and check-config refuse it before parsing a byte.
#[test]
fn a_config_others_may_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let key = dir.join("k.bin");
    kms_broker::backend::file::create_key_file(&key).unwrap();
    let body = format!("[keys.k]\nuris = [\"file://{}\"]\n", key.display());
    let path = dir.join("bad.toml");
    std::fs::write(&path, config_text(dir, &body)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
    for args in [&["serve", "--config"][..], &["check-config"][..]] {
        let out = Command::new(BIN).args(args).arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains("chmod go-w"), "{args:?}: {stderr}");
        assert!(stderr.contains("bad.toml"), "{args:?}: {stderr}");
    }
    // The same file, no longer writable by the group: check-config goes past the file.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(BIN)
        .args(["check-config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("chmod go-w"), "{stderr}");
}

/// The daemon never creates its state dir: an operator (or a unit's StateDirectory) does.
fn make_state_dir(dir: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join("state"))
        .unwrap();
}

fn wait_for_socket(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "daemon did not create {path:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_key_survives_kill_dash_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    kms_broker::certs::write_dev_certs(&dir.join("certs")).unwrap();
    let key = dir.join("k.bin");
    kms_broker::backend::file::create_key_file(&key).unwrap();
    make_state_dir(dir);
    let body = format!(
        "[keys.k]\nuris = [\"file://{}\"]\n[stores.s1]\nkey = \"k\"\n{}",
        key.display(),
        allow_me_everything()
    );
    let config = dir.join("kms.toml");
    std::fs::write(&config, config_text(dir, &body)).unwrap();
    let sock = dir.join("broker.sock");
    let start = || {
        ChildGuard::spawn(
            Command::new(BIN)
                .args(["serve", "--config"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };

    let mut daemon = start();
    wait_for_socket(&sock);
    let mut c = unix_client(&sock).await;
    let req = |create| GetStoreKeyRequest {
        store_id: "s1".into(),
        create,
    };
    let first = c
        .get_store_key(req(true))
        .await
        .unwrap()
        .into_inner()
        .active
        .unwrap();
    daemon.kill(); // SIGKILL: no drain, the socket file is left behind.
    assert!(sock.exists(), "a crash leaves a stale socket");

    let _daemon = start(); // replaces the stale socket
    let started = Instant::now();
    let again = loop {
        match tokio::time::timeout(Duration::from_secs(2), async {
            match try_unix_client(&sock).await {
                Ok(mut c) => c.get_store_key(req(false)).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        {
            Ok(Ok(r)) => break r.into_inner().active.unwrap(),
            _ if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("daemon did not come back: {other:?}"),
        }
    };
    assert_eq!(again.key_id, first.key_id);
    assert_eq!(again.key, first.key);
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != ".lock")
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp files: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dev_needs_no_setup_and_prints_grpcurl_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = tmp.path().join("dev");
    // Port 7443 may be taken by a developer's own `serve --dev`; the test then only checks
    // the set-up, which happens before binding.
    let mut child = ChildGuard::spawn(
        Command::new(BIN)
            .args(["serve", "--dev", "--dev-dir"])
            .arg(&dev)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let sock = dev.join("broker.sock");
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(_)) = child.0.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for f in [
        "certs/ca.pem",
        "certs/client.pem",
        "dev-key.bin",
        "config.toml",
    ] {
        assert!(dev.join(f).exists(), "{f} made by serve --dev");
    }
    if sock.exists() {
        let mut c = unix_client(&sock).await;
        let k = c
            .get_store_key(GetStoreKeyRequest {
                store_id: "dev-store".into(),
                create: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(k.active.unwrap().key.len(), 32);
        child.kill();
        let mut out = String::new();
        use std::io::Read;
        child
            .0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(
            out.contains("grpcurl -plaintext -unix -authority localhost"),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    kms_broker::certs::write_dev_certs(&dir.join("certs")).unwrap();
    let key = dir.join("k.bin");
    kms_broker::backend::file::create_key_file(&key).unwrap();
    make_state_dir(dir);
    let body = format!(
        "[keys.k]\nuris = [\"file://{}\"]\n{}",
        key.display(),
        allow_me_everything()
    );
    let config = dir.join("kms.toml");
    std::fs::write(&config, config_text(dir, &body)).unwrap();
    let sock = dir.join("broker.sock");
    // A low soft open-file limit, as systemd's default 1024 is: the daemon raises it.
    let mut child = ChildGuard::spawn(
        Command::new("bash")
            .arg("-c")
            .arg("ulimit -Sn 200 && exec \"$0\" serve --config \"$1\"")
            .arg(BIN)
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_socket(&sock);
    let mut c = unix_client(&sock).await;
    c.revoke_status(kms_broker_client::pb::RevokeStatusRequest::default())
        .await
        .unwrap();
    let pid = child.0.id().to_string();
    // Hardening: no core file can hold key bytes. (Root can read any /proc, so the
    // dumpable flag itself shows only to an unprivileged peer.)
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit listed");
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    // The open-file soft limit was raised to the hard limit.
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open-file limit listed");
    let soft_hard: Vec<_> = files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(soft_hard[0], soft_hard[1], "{files}");
    if soft_hard[1] != "200" {
        assert_ne!(soft_hard[0], "200", "{files}");
    }
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    assert!(!sock.exists(), "a clean stop removes its socket");
}

#[test]
fn dev_certs_writes_a_ca_server_and_client_set() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("certs");
    let o = Command::new(BIN)
        .args(["dev-certs", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in kms_broker::certs::FILES {
        let text = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(text.starts_with("-----BEGIN"), "{f} is PEM");
    }
    // The client certificate's identity is what the dev policy names.
    let pem = std::fs::read(out.join("client.pem")).unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    assert_eq!(
        kms_broker::peer::cert_identity(&der).as_deref(),
        Some("dev-client")
    );
}

/// A config with a file key, in `dir` (state dir made), TCP on a free port.
fn daemon_config(dir: &Path, name: &str) -> std::path::PathBuf {
    if !dir.join("certs").exists() {
        kms_broker::certs::write_dev_certs(&dir.join("certs")).unwrap();
    }
    let key = dir.join("k.bin");
    if !key.exists() {
        kms_broker::backend::file::create_key_file(&key).unwrap();
    }
    let body = format!(
        "[keys.k]\nuris = [\"file://{}\"]\n{}",
        key.display(),
        allow_me_everything()
    );
    let port = crate::common::standins::free_port();
    let text = config_text(dir, &body)
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        .replace("broker.sock", &format!("{name}.sock"));
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text).unwrap();
    config
}

/// Runs `serve` and expects it to exit (it must refuse to start): its code and stderr. A
/// daemon that serves instead is killed after a hang guard and fails the test.
fn serve_output(config: &Path) -> (i32, String) {
    use std::io::Read;
    let mut child = ChildGuard::spawn(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the daemon started serving instead of refusing to start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code().unwrap_or(-1), stderr)
}

#[test]
fn tls_files_that_are_not_pem_exit_64_before_anything_serves() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_state_dir(dir);
    let config = daemon_config(dir, "broker");
    let good = std::fs::read_to_string(&config).unwrap();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 !!\n").unwrap();
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
    let client_key = dir.join("certs/client-key.pem");
    for (field, file, replacement) in [
        ("tls.ca", "certs/ca.pem", &garbage),
        ("tls.cert", "certs/server.pem", &garbage),
        ("tls.key", "certs/server-key.pem", &garbage),
        // PEM, but the wrong key for the server's certificate.
        ("tls.key", "certs/server-key.pem", &client_key),
    ] {
        let text = good.replace(
            &dir.join(file).display().to_string(),
            &replacement.display().to_string(),
        );
        std::fs::write(&config, text).unwrap();
        let (code, stderr) = serve_output(&config);
        assert_eq!(code, 64, "{field}: {stderr}");
        assert!(stderr.contains(field), "names {field}: {stderr}");
        assert!(
            !dir.join("broker.sock").exists(),
            "{field}: the Unix socket was created before the TLS files were checked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_a_state_dir_exits_75_and_the_first_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_state_dir(dir);
    let first = daemon_config(dir, "first");
    let _first = ChildGuard::spawn(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&first)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let sock = dir.join("first.sock");
    wait_for_socket(&sock);

    // Same state dir, its own socket and port.
    let second = daemon_config(dir, "second");
    let (code, stderr) = serve_output(&second);
    assert_eq!(code, 75, "{stderr}");
    assert!(
        stderr.contains(&dir.join("state").display().to_string()),
        "names the folder: {stderr}"
    );
    assert!(!dir.join("second.sock").exists());

    let mut c = unix_client(&sock).await;
    c.revoke_status(kms_broker_client::pb::RevokeStatusRequest::default())
        .await
        .expect("the first daemon still serves");
}
