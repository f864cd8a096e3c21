//! The daemon never creates its state dir: a missing one (a lost mount, a typo) fails at
//! start, loudly, instead of becoming a fresh empty folder where `create=true` would mint
//! new keys for stores whose data is encrypted under the lost ones.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::standins::ChildGuard;
use crate::common::{allow_me_everything, config_text};

const BIN: &str = env!("CARGO_BIN_EXE_kms-broker");

/// Every path under `dir`, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p.display().to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn a_missing_state_dir_fails_the_start_naming_it_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    kms_broker::certs::write_dev_certs(&dir.join("certs")).unwrap();
    let key = dir.join("k.bin");
    kms_broker::backend::file::create_key_file(&key).unwrap();
    let body = format!(
        "[keys.k]\nuris = [\"file://{}\"]\n[stores.s1]\nkey = \"k\"\n{}",
        key.display(),
        allow_me_everything()
    );
    let good_state = dir.join("state").display().to_string();
    let missing = dir.join("mnt/lost/state");
    let text = config_text(dir, &body).replace(
        &format!("state_dir = \"{good_state}\""),
        &format!("state_dir = \"{}\"", missing.display()),
    );
    assert!(text.contains(&missing.display().to_string()), "{text}");
    let config = dir.join("kms.toml");
    std::fs::write(&config, text).unwrap();
    let before = tree(dir);

    let mut child = ChildGuard::spawn(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        // A hang guard only: the daemon serving here is the defect under test.
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the daemon started on a missing state dir"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        matches!(status.code(), Some(c) if c != 0),
        "exits non-zero by itself: {status:?}: {stderr}"
    );
    assert!(
        stderr.contains(&missing.display().to_string()),
        "names the folder: {stderr}"
    );
    assert!(
        stderr.contains("does not exist"),
        "says what is wrong: {stderr}"
    );
    assert!(!dir.join("mnt").exists(), "no folder was created");
    assert_eq!(tree(dir), before, "nothing at all was created");
}
