//! Crash injection for tests: [`failpoint`].

/// Crash injection for tests (`failpoints` cargo feature, which only the test builds
/// enable): aborts the process, as abruptly as kill -9 (no destructors, no flushing, no
/// drain), when the environment variable `KMS_BROKER_FAILPOINT` equals `name`. The
/// variable is read once. In other builds this is a no-op the compiler removes.
///
/// Names: `atomic-write:<step>` inside [`super::write_atomic`] and
/// [`super::write_new_atomic`], with steps `temp-created`, `half-written`, `written`,
/// `synced`, `committed`, `temp-removed` and `dir-synced`; `store-create:wrapped` once a
/// new store key is wrapped and before its file is written (`stores.rs`).
#[cfg(feature = "failpoints")]
pub fn failpoint(name: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("KMS_BROKER_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        // stderr is unbuffered: the line is out before the abort.
        eprintln!("kms-broker: failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Crash injection for tests: compiled out of this build (no `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn failpoint(_name: &str) {}
