//! SIGHUP to the real binary: a bad config is refused with one log line and the old policy
//! stays in force; a good one applies to the connection already open.

use std::time::{Duration, Instant};

use tonic::Code;

use super::site::{allow_me, get, Site};

/// Sends SIGHUP and waits until the daemon's log has one more line containing `want`.
fn hup_and_wait(site: &Site, daemon: &crate::common::standins::ChildGuard, want: &str) -> String {
    let log = site.dir.join("daemon.log");
    let count = |text: &str| text.lines().filter(|l| l.contains(want)).count();
    let before = count(&std::fs::read_to_string(&log).unwrap_or_default());
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(daemon.0.id() as i32).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if count(&text) > before {
            return text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no {want:?} line after SIGHUP; the log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_a_bad_config_and_applies_a_good_one_on_open_connections() {
    let site = Site::new();
    site.configure("a", &allow_me(&["RevokeStatus"]));
    let daemon = site.start();
    let mut c = site.client().await;
    assert_eq!(
        get(&mut c, true).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    std::fs::write(&site.config, "[server\nunix_socket = ").unwrap();
    let log = hup_and_wait(&site, &daemon, "config reload refused");
    let line = log
        .lines()
        .find(|l| l.contains("config reload refused"))
        .unwrap();
    assert!(line.contains("previous config stays in force"), "{line}");
    assert!(line.contains("kms-broker.toml"), "{line}");
    assert_eq!(
        get(&mut c, true).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // check-config says the same of the same file.
    let out = super::site::run(&["check-config", site.config.to_str().unwrap()]);
    assert_eq!(out.code, 64, "{out:?}");

    site.configure("a", &allow_me(&["RevokeStatus", "GetStoreKey"]));
    hup_and_wait(&site, &daemon, "config reloaded");
    let key = get(&mut c, true)
        .await
        .expect("the new policy, on the same connection");
    assert_eq!(key.active.unwrap().key.len(), 32);
}
