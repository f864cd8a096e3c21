//! Process hardening at start-up, so key bytes held in memory do not leave it by the side
//! door:
//!
//! - `prctl(PR_SET_DUMPABLE, 0)`: no core dump, and other processes of the same user can no
//!   longer `ptrace` the daemon or read its `/proc/PID/mem` (root, or `CAP_SYS_PTRACE`,
//!   still can: that is the kernel's boundary, not ours);
//! - `RLIMIT_CORE = 0`: no core file either, even where a `core_pattern` pipe would have
//!   ignored the dumpable flag;
//! - `RLIMIT_NOFILE` soft limit raised to the hard limit: systemd's default soft limit
//!   (1024) is what a connection flood filled; the connection caps of `[limits]` are then
//!   fitted under whatever limit we have.
//!
//! Not done: `mlockall`. The default `RLIMIT_MEMLOCK` (8 MiB) is smaller than the daemon
//! with its TLS and SDK clients, and locking only the key buffers would need a custom
//! allocator. Run the daemon on nodes without swap, or with encrypted swap.

/// Applies every measure. An error names the one that failed; `main` refuses to serve
/// then, unless the operator passed `--allow-unhardened`.
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
    raise_open_files()?;
    Ok(())
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit. Nothing
/// to do (and no error) when it is already there.
pub fn raise_open_files() -> Result<u64, String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current == now.maximum {
        return Ok(now.current.unwrap_or(u64::MAX));
    }
    // An unlimited hard limit cannot be the soft one: the kernel caps descriptors at
    // fs.nr_open, so ask for that.
    let target = match now.maximum {
        Some(max) => max,
        None => std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20),
    };
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: now.maximum,
        },
    )
    .map_err(|e| {
        format!(
            "setrlimit(RLIMIT_NOFILE) from {:?} to {target}: {e}",
            now.current
        )
    })?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_file_limit_ends_at_the_hard_limit() {
        let soft = super::raise_open_files().unwrap();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now.current, Some(soft));
        if let Some(max) = now.maximum {
            assert_eq!(soft, max);
        }
        // A second call has nothing to do.
        assert_eq!(super::raise_open_files().unwrap(), soft);
    }
}
