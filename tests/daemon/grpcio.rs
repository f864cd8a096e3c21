//! A real grpcio (Python, gRPC C-core) client on the Unix socket: refused as it is (h2
//! rejects the socket path it sends as `:authority`), served with the option the README's
//! "Any gRPC client on the Unix socket" section documents. The client is
//! `tests/standins/grpcio_client.py`, run with the stand-ins' Python (grpcio pinned in
//! `tests/standins/install.sh`).

use std::path::PathBuf;
use std::time::Duration;

use kms_broker::backend::mock::mock;

use crate::common::standins::{repo_root, require_file};
use crate::common::{allow_me_everything, must_return, Daemon};

/// The stand-ins' Python, if it has grpcio; with `CI` set a missing one fails the test.
async fn python_with_grpcio() -> Option<PathBuf> {
    let python = require_file("venv/bin/python")?;
    let probe = tokio::process::Command::new(&python)
        .args(["-c", "import grpc"])
        .output()
        .await
        .expect("run the stand-ins' python");
    if probe.status.success() {
        return Some(python);
    }
    let msg = "grpcio is not installed in .standins/venv: run tests/standins/install.sh";
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPING (not in CI): {msg}");
    None
}

#[tokio::test]
async fn a_real_grpcio_client_is_served_with_the_documented_authority() {
    let Some(python) = python_with_grpcio().await else {
        return;
    };
    mock("grpcio-k");
    let body = format!(
        "[keys.grpcio-k]\nuris = [\"mock://grpcio-k\"]\n{}",
        allow_me_everything()
    );
    let d = Daemon::start(&body).await;
    let script = repo_root().join("tests/standins/grpcio_client.py");
    let out = must_return(
        "the grpcio client",
        Duration::from_secs(120),
        tokio::process::Command::new(python)
            .arg(&script)
            .arg(&d.socket)
            .arg("grpcio-k")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run the grpcio client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // Each half ran: refused as grpcio is, served with the option.
    for line in [
        "ok refused without grpc.default_authority",
        "ok RevokeStatus lists the key",
        "ok WrapKey then UnwrapKey round-trips",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    d.stop().await;
}
