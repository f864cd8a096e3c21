//! Crash injection: the real binary dies (abort, as abrupt as kill -9) at every step of a
//! store key's creation, and a restart must find either no key (nothing committed: a
//! `create=true` then makes one) or the complete key, never a torn file, and every key ever
//! handed out stays the key on disk. The failpoints are `kms_broker::fs::failpoint`, built
//! into the test build of the binary only (cargo feature `failpoints`).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kms_broker::store_key::{self, StoreId};
use kms_broker_client::pb::{GetStoreKeyRequest, RevokeStatusRequest, StoreKey};
use tonic::Code;

use crate::common::standins::ChildGuard;
use crate::common::{allow_me_everything, config_text, must_return, try_unix_client, Client};

mod lifecycle;

const BIN: &str = env!("CARGO_BIN_EXE_kms-broker");
const HANG: Duration = Duration::from_secs(30);
const SIGABRT: i32 = 6;

/// A policy granting this process every operation, lifecycle ones included.
fn my_policy() -> String {
    format!(
        "[[policy]]\npeer = \"uid:{}\"\nallow = [\"WrapKey\", \"UnwrapKey\", \"GetStoreKey\", \"RevokeStatus\", \"RotateStoreKey\", \"StoreStatus\", \"Rewrap\"]\n",
        crate::common::my_uid()
    )
}

/// One test's folder: certs, a file key, a config with store `s1`, and the state dir.
struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        kms_broker::certs::write_dev_certs(&dir.join("certs")).unwrap();
        let key = dir.join("k.bin");
        kms_broker::backend::file::create_key_file(&key).unwrap();
        let body = format!(
            "[keys.k]\nuris = [\"file://{}\"]\n[stores.s1]\nkey = \"k\"\n{}",
            key.display(),
            allow_me_everything()
        );
        let config = dir.join("kms.toml");
        std::fs::write(&config, config_text(&dir, &body)).unwrap();
        Setup {
            _tmp: tmp,
            dir,
            config,
        }
    }

    /// Every start's stderr, appended to one file in the test's folder.
    fn log(&self) -> Stdio {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        Stdio::from(f)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("broker.sock")
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Starts the real binary (armed with `failpoint`, if any) and waits until it answers.
    async fn start(&self, failpoint: Option<&str>) -> (ChildGuard, Client) {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .env_remove("KMS_BROKER_FAILPOINT")
            .env("KMS_BROKER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(self.log());
        if let Some(fp) = failpoint {
            cmd.env("KMS_BROKER_FAILPOINT", fp);
        }
        let mut child = ChildGuard::spawn(&mut cmd);
        let start = Instant::now();
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                panic!("the daemon exited at start: {status:?}");
            }
            // A socket left by the crashed daemon answers nothing; the new one replaces it.
            if let Ok(mut c) = try_unix_client(&self.socket()).await {
                if c.revoke_status(RevokeStatusRequest::default())
                    .await
                    .is_ok()
                {
                    return (child, c);
                }
            }
            assert!(start.elapsed() < HANG, "the daemon did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn get(c: &mut Client, create: bool) -> Result<StoreKey, tonic::Status> {
    let req = GetStoreKeyRequest {
        store_id: "s1".into(),
        create,
    };
    must_return("GetStoreKey", HANG, c.get_store_key(req))
        .await
        .map(|r| r.into_inner().active.expect("an active key"))
}

/// Waits for the armed daemon to die and checks it died by the failpoint's abort (so the
/// test is not vacuous: the step was reached).
fn wait_for_abort(child: &mut ChildGuard, failpoint: &str) {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < HANG,
            "{failpoint}: the daemon did not die"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(SIGABRT), "{failpoint}: {status:?}");
}

/// The state dir's names, the lock file aside (it is the state dir lock's, not ours).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".lock")
        .collect();
    v.sort();
    v
}

fn is_temp(name: &str) -> bool {
    name.starts_with(".store-s1.json.tmp-")
}

/// Kills the daemon at `failpoint` during the first `create=true`, then checks the
/// restart. `committed`: whether the file is in place at that step (the store then has
/// its key; before it, the store has none and the next `create=true` makes one).
async fn crash_at(failpoint: &str, committed: bool) {
    let s = Setup::new();
    let id = StoreId::parse("s1").unwrap();
    let (mut daemon, mut c) = s.start(Some(failpoint)).await;
    let e = get(&mut c, true)
        .await
        .expect_err("the daemon died before it answered");
    assert_ne!(e.code(), Code::Ok, "{failpoint}");
    wait_for_abort(&mut daemon, failpoint);

    // On disk now: the store file whole (it parses, with a key id) or absent; no other
    // non-temp file.
    let on_disk = store_key::read_store_file(&s.state(), &id)
        .unwrap_or_else(|e| panic!("{failpoint}: a torn or unreadable store file: {e}"));
    assert_eq!(on_disk.is_some(), committed, "{failpoint}: committed?");
    for n in names(&s.state()) {
        assert!(n == "store-s1.json" || is_temp(&n), "{failpoint}: {n}");
    }

    // Restart, unarmed: the first handout after the crash.
    drop(daemon);
    let (daemon, mut c) = s.start(None).await;
    let mut handed_out: Vec<StoreKey> = Vec::new();
    match get(&mut c, false).await {
        Ok(k) => {
            assert!(committed, "{failpoint}: a key nobody committed");
            handed_out.push(k);
        }
        Err(e) => {
            assert_eq!(e.code(), Code::NotFound, "{failpoint}: {e:?}");
            assert!(!committed, "{failpoint}: the committed key is lost");
        }
    }
    handed_out.push(
        get(&mut c, true)
            .await
            .expect("create=true after the crash"),
    );
    handed_out.push(get(&mut c, false).await.expect("the key is there now"));

    // Another restart: the same key comes back from disk.
    drop(daemon);
    let (_daemon, mut c) = s.start(None).await;
    handed_out.push(get(&mut c, false).await.expect("after a second restart"));
    handed_out.push(
        get(&mut c, true)
            .await
            .expect("create=true never re-creates"),
    );

    // Every key ever handed out is one key, and it is the key the file on disk holds.
    let k = &handed_out[0];
    assert_eq!(k.key.len(), 32);
    for other in &handed_out[1..] {
        assert_eq!(
            (&other.key_id, &other.key),
            (&k.key_id, &k.key),
            "{failpoint}"
        );
    }
    let file = store_key::read_store_file(&s.state(), &id)
        .unwrap()
        .expect("the store file");
    assert_eq!(file.active.key_id.to_vec(), k.key_id, "{failpoint}");
    assert!(file.previous.is_empty(), "{failpoint}");

    // What is left: the store file, and no temp file unless the crash came between the
    // link and the unlink of the temp (a second name of the committed file, harmless).
    // Uncommitted temps (torn or whole) were removed by the write that created the key.
    let left = names(&s.state());
    let temps: Vec<_> = left.iter().filter(|n| is_temp(n)).collect();
    assert!(left.contains(&"store-s1.json".to_string()), "{left:?}");
    if !committed {
        assert!(temps.is_empty(), "{failpoint}: stale temps kept: {left:?}");
    }
    for t in temps {
        let bytes = std::fs::read(s.state().join(t)).unwrap();
        let whole = std::fs::read(store_key::path_for(&s.state(), &id)).unwrap();
        assert_eq!(
            bytes, whole,
            "{failpoint}: a leftover is only a second name"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_store_key_is_wrapped() {
    crash_at("store-create:wrapped", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_temp_file_is_created() {
    crash_at("atomic-write:temp-created", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_with_a_torn_temp_file() {
    crash_at("atomic-write:half-written", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_temp_file_is_written() {
    crash_at("atomic-write:written", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_temp_file_is_synced() {
    crash_at("atomic-write:synced", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_file_is_committed() {
    crash_at("atomic-write:committed", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_temp_name_is_removed() {
    crash_at("atomic-write:temp-removed", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_dir_is_synced_before_the_answer() {
    // The key is durable before it is handed out, so a crash between the two loses no key
    // anyone holds: the restart hands out the committed one.
    crash_at("atomic-write:dir-synced", true).await;
}
