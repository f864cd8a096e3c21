//! Finding and starting the KMS stand-ins that `tests/standins/install.sh` installs into
//! `.standins/` at the repository root.
//!
//! With `CI` set, a missing stand-in FAILS the test; on a developer's machine the test
//! prints why it did nothing and returns (run `tests/run` to install everything).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root (this file is `tests/common/standins.rs`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("server/ has a parent")
        .to_owned()
}

pub fn standins_dir() -> PathBuf {
    repo_root().join(".standins")
}

/// The path of stand-in binary `name` (`moto_server`, `bao`, `grpcurl`, `k6`), or `None`
/// (after saying why) when it is not installed and `CI` is not set.
pub fn require_bin(name: &str) -> Option<PathBuf> {
    let path = standins_dir().join("bin").join(name);
    if path.exists() {
        return Some(path);
    }
    let msg = format!(
        "stand-in `{name}` is not installed at {}: run tests/run (it installs the stand-ins)",
        path.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPING (not in CI): {msg}");
    None
}

/// Like [`require_bin`] for a file under `.standins/` (e.g. the npm protos).
pub fn require_file(rel: &str) -> Option<PathBuf> {
    let path = standins_dir().join(rel);
    if path.exists() {
        return Some(path);
    }
    let msg = format!("stand-in file {} is missing: run tests/run", path.display());
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPING (not in CI): {msg}");
    None
}

/// A free TCP port on 127.0.0.1 (bound then released; fine for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, within: Duration) {
    let start = Instant::now();
    while start.elapsed() < within {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port} after {within:?}");
}

/// A child process that is killed when dropped, so a failing test leaves no server behind.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Self(child)
    }

    /// Stops the process now (as in "the KMS went away").
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
