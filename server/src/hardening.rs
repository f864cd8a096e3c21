//! Process hardening at start-up, so key bytes held in memory do not leave it by the side
//! door:
//!
//! - `prctl(PR_SET_DUMPABLE, 0)`: no core dump, and other processes of the same user can no
//!   longer `ptrace` the daemon or read its `/proc/PID/mem` (root, or `CAP_SYS_PTRACE`,
//!   still can: that is the kernel's boundary, not ours);
//! - `RLIMIT_CORE = 0`: no core file either, even where a `core_pattern` pipe would have
//!   ignored the dumpable flag.
//!
//! Not done: `mlockall`. The default `RLIMIT_MEMLOCK` (8 MiB) is smaller than the daemon
//! with its TLS and SDK clients, and locking only the key buffers would need a custom
//! allocator. Run the daemon on nodes without swap, or with encrypted swap.

/// Applies both measures. An error names the one that failed; the caller decides whether
/// to go on (the daemon logs it and serves, as both calls only fail on exotic kernels).
pub fn apply() -> Result<(), String> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|e| format!("setrlimit(RLIMIT_CORE, 0): {e}"))?;
    #[cfg(target_os = "linux")]
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| format!("prctl(PR_SET_DUMPABLE, 0): {e}"))?;
    Ok(())
}
