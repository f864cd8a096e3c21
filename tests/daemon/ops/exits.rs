//! `check-config`, and the exit codes of the commands that talk to a daemon: 64 for usage,
//! 69 when nothing answers, 1 when the daemon refuses (over the socket and mutual TLS).

use std::path::Path;

use serde_json::Value;

use super::site::{allow_me, get, run, store, Out, Site, EVERYTHING};

/// Writes a config file named `name` in `dir` and runs `check-config` on it.
fn check(dir: &Path, name: &str, text: &str) -> Out {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    run(&["check-config", path.to_str().unwrap()])
}

#[test]
fn check_config_validates_without_serving() {
    let site = Site::new();
    site.configure("a", &allow_me(EVERYTHING));
    let good = std::fs::read_to_string(&site.config).unwrap();
    let out = check(&site.dir, "good.toml", &good);
    assert_eq!((out.code, out.stdout.as_str()), (0, "ok\n"), "{out:?}");
    // Checked, not served: no socket, no lock taken in the state dir, nothing written.
    assert!(!site.socket.exists());
    let state: Vec<_> = std::fs::read_dir(site.dir.join("state")).unwrap().collect();
    assert!(state.is_empty(), "{state:?}");

    let bad = good.replace("[stores.s1]\n", "[stores.s1]\ncolour = \"red\"\n");
    let out = check(&site.dir, "bad.toml", &bad);
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.contains("bad.toml") && out.stderr.contains("colour"),
        "{}",
        out.stderr
    );

    let missing = check(
        &site.dir,
        "nodir.toml",
        &good.replace("/state\"", "/gone\""),
    );
    assert_eq!(missing.code, 64, "{missing:?}");
    assert!(
        missing.stderr.contains("does not exist"),
        "{}",
        missing.stderr
    );

    // A certificate whose key is another one's is found by building the TLS config...
    let other = site.dir.join("other");
    kms_broker::certs::write_dev_certs(&other).unwrap();
    let mismatched = good.replace(
        &site.dir.join("certs/server.pem").display().to_string(),
        &other.join("server.pem").display().to_string(),
    );
    let out = check(&site.dir, "mismatch.toml", &mismatched);
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.contains("`tls.key`: does not fit"),
        "{}",
        out.stderr
    );

    // ...and one that does not parse at all; in each case without binding anything.
    std::fs::write(site.dir.join("certs/server.pem"), "not a certificate\n").unwrap();
    let out = check(&site.dir, "good.toml", &good);
    assert_eq!(out.code, 64, "{out:?}");
    assert!(out.stderr.contains("`tls.cert`"), "{}", out.stderr);
    assert!(out.stderr.contains("server.pem"), "{}", out.stderr);
    assert!(!site.socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_daemon_exits_69_and_a_refused_call_exits_1() {
    let site = Site::new();
    // Status may be read over the socket and by the dev client certificate; nothing else.
    let cert =
        "\n[[policy]]\npeer = \"cert:dev-client\"\nallow = [\"RevokeStatus\", \"StoreStatus\"]\n";
    site.configure(
        "a",
        &format!(
            "{}{cert}",
            allow_me(&["GetStoreKey", "RevokeStatus", "StoreStatus"])
        ),
    );

    // A command that does not say where the daemon is: a usage error, nothing asked.
    let usage = run(&["status"]);
    assert_eq!(usage.code, 64, "{usage:?}");

    // Nothing listens yet: by socket and by config alike.
    let down = site.cli(&["status"]);
    assert_eq!(down.code, 69, "{down:?}");
    assert!(down.stderr.contains("cannot reach"), "{}", down.stderr);
    let by_config = run(&["rotate", "s1", "--config", site.config.to_str().unwrap()]);
    assert_eq!(by_config.code, 69, "{by_config:?}");

    // A known port for the mutual-TLS listener (the config's `127.0.0.1:0` picks any).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&site.config).unwrap();
    let text = text.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&site.config, text).unwrap();

    let _daemon = site.start();
    get(&mut site.client().await, true).await.unwrap();
    let refused = run(&["rotate", "s1", "--config", site.config.to_str().unwrap()]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("RotateStoreKey refused: PermissionDenied"),
        "{}",
        refused.stderr
    );
    assert_eq!(site.cli(&["status"]).code, 0);

    // The same commands over mutual TLS, as the dev client certificate.
    let certs = site.dir.join("certs");
    let file = |n: &str| certs.join(n).to_str().unwrap().to_owned();
    let endpoint = format!("https://127.0.0.1:{port}");
    let tls = |cmd: &[&str]| {
        let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client-key.pem"));
        let mut args = cmd.to_vec();
        args.extend([
            "--endpoint",
            &endpoint,
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
        ]);
        run(&args)
    };
    let out = tls(&["status", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(store(&doc)["store"], "s1");
    let refused = tls(&["rotate", "s1"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("PermissionDenied"),
        "{}",
        refused.stderr
    );
}
