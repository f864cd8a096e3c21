//! Key memory, seen from outside the real binary: the store keys it holds are in locked
//! pages (`VmLck` in /proc/PID/status), and a limit too small for them stops it unless the
//! config says `[memory] lock = "best-effort"`.
//!
//! Where this machine cannot show it (no `prlimit`/`setpriv`, a limit too small to lock
//! anything), a test says so and passes, except with `CI` set: the CI machine can, so a
//! skip there would hide a regression.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kms_broker_client::pb::GetStoreKeyRequest;

use crate::common::standins::ChildGuard;
use crate::common::{allow_me_everything, config_text, unix_client};

const BIN: &str = env!("CARGO_BIN_EXE_kms-broker");

/// How many AES-256 store keys the first test holds: 256 × 32 bytes fill two pages of
/// 32-byte slots, more than the daemon locked for its own start.
const STORES: usize = 256;

fn skip(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "CI can run this: {why}");
    eprintln!("skipped: {why}");
}

/// A config with a file key and `stores` stores, plus `extra` text.
fn config(dir: &Path, stores: usize, extra: &str) -> PathBuf {
    kms_broker::certs::write_dev_certs(&dir.join("certs")).unwrap();
    let key = dir.join("k.bin");
    kms_broker::backend::file::create_key_file(&key).unwrap();
    let mut body = format!("[keys.k]\nuris = [\"file://{}\"]\n", key.display());
    for i in 0..stores {
        body.push_str(&format!("[stores.s{i}]\nkey = \"k\"\n"));
    }
    body.push_str(&allow_me_everything());
    body.push_str(extra);
    let port = crate::common::standins::free_port();
    let text = config_text(dir, &body).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = dir.join("kms.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The daemon's stderr goes to a file: a pipe nobody reads could fill and stall it.
fn stderr_file(dir: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(dir.join("stderr")).unwrap())
}

/// Waits for the socket; `Err(status and stderr)` if the daemon exited instead.
fn wait_for_socket(child: &mut ChildGuard, dir: &Path) -> Result<(), String> {
    let sock = dir.join("broker.sock");
    let start = Instant::now();
    while !sock.exists() {
        if let Some(status) = child.0.try_wait().unwrap() {
            let err = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
            return Err(format!("exited with {status}: {err}"));
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the daemon did not create {sock:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `VmLck` of process `pid`, in bytes.
fn vm_lck(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .expect("a VmLck line");
    let kb: u64 = line
        .trim_start_matches("VmLck:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

fn req(i: usize) -> GetStoreKeyRequest {
    GetStoreKeyRequest {
        store_id: format!("s{i}"),
        create: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlock_where_the_limit_allows_vmlck_grows_once_keys_are_held() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let path = config(dir, STORES, "");
    let sock = dir.join("broker.sock");
    let mut daemon = ChildGuard::spawn(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(stderr_file(dir)),
    );
    if let Err(e) = wait_for_socket(&mut daemon, dir) {
        // `lock = "required"` (the default) refuses to start without room to lock keys.
        assert!(e.contains("LimitMEMLOCK"), "{e}");
        return skip(&format!("RLIMIT_MEMLOCK here is too small: {e}"));
    }
    let pid = daemon.0.id();
    let mut c = unix_client(&sock).await;
    // One key first: the daemon's start-up and the first call's own allocations are done.
    c.get_store_key(req(0)).await.unwrap();
    let before = vm_lck(pid);
    let mut held = 32;
    for i in 1..STORES {
        let k = c.get_store_key(req(i)).await.unwrap().into_inner();
        held += k.active.as_ref().unwrap().key.len() as u64;
    }
    let after = vm_lck(pid);
    // Every held key byte is in locked memory, and holding more keys locked more pages
    // (two pages of 32-byte slots for these keys; the daemon had at most one before).
    assert!(after >= held, "VmLck {after} < {held} bytes of keys held");
    assert!(
        after >= before + 4096,
        "VmLck did not grow with the keys held: {before} -> {after} bytes"
    );
}

/// `prlimit --memlock=64K` around the daemon, and as root without CAP_IPC_LOCK (which
/// would lift the limit); `None` where the tools are missing.
fn with_small_memlock(dir: &Path, config: &Path) -> Option<Command> {
    let found = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !found("prlimit") || !found("setpriv") {
        return None;
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "--"])
        .args([
            "prlimit",
            "--memlock=65536:65536",
            "--",
            BIN,
            "serve",
            "--config",
        ])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(stderr_file(dir));
    Some(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_memlock_limit_stops_the_daemon_unless_best_effort() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let path = config(dir, 1, "");
    let sock = dir.join("broker.sock");
    let Some(mut cmd) = with_small_memlock(dir, &path) else {
        return skip("prlimit or setpriv (util-linux) is missing");
    };
    let mut refused = ChildGuard::spawn(&mut cmd);
    let e = wait_for_socket(&mut refused, dir).expect_err("the daemon served");
    assert!(e.contains("exit status: 1"), "{e}");
    assert!(e.contains("RLIMIT_MEMLOCK is 64 KiB"), "{e}");
    assert!(e.contains("LimitMEMLOCK="), "{e}");
    assert!(e.contains("best-effort"), "{e}");

    std::fs::write(
        &path,
        std::fs::read_to_string(&path).unwrap() + "\n[memory]\nlock = \"best-effort\"\n",
    )
    .unwrap();
    let mut served = ChildGuard::spawn(&mut with_small_memlock(dir, &path).unwrap());
    wait_for_socket(&mut served, dir).unwrap();
    let mut c = unix_client(&sock).await;
    let k = c.get_store_key(req(0)).await.unwrap().into_inner();
    assert_eq!(k.active.as_ref().unwrap().key.len(), 32);
}
