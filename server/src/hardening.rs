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
//!   fitted under whatever limit we have;
//! - `RLIMIT_MEMLOCK` soft limit raised to the hard limit, and then checked
//!   ([`check_key_memory`]): every key byte lives in locked pages left out of core dumps
//!   (`kms_broker_api::locked`), and the limit must leave room for them.
//!
//! Not done: `mlockall`. The daemon with its TLS and SDK clients is larger than the usual
//! limit, and only key bytes need locking; the copies outside the daemon's reach (SDK and
//! transport buffers) are listed in the README's "Key memory". Run the daemon on nodes
//! without swap, or with encrypted swap, for those.

use rustix::process::Resource;
use serde::Deserialize;

/// `[memory]`: what happens when key memory cannot be locked.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    #[serde(default)]
    pub lock: MemoryLock,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryLock {
    /// The daemon refuses to start when `RLIMIT_MEMLOCK` leaves no room for
    /// [`KEY_MEMORY_RESERVATION`]: key bytes that may be swapped out are a finding.
    #[default]
    Required,
    /// A warning instead (`serve --dev` writes this: dev machines and containers often
    /// allow only 64 KiB). Key bytes still stay out of core dumps.
    BestEffort,
}

/// Locked memory the daemon asks for at start: room for thousands of store keys (a 32-byte
/// slot each) or about sixty 4 KiB data keys in the unwrap cache, on top of what it already
/// holds. Past it the arena keeps locking while the limit allows, then warns once.
pub const KEY_MEMORY_RESERVATION: usize = 256 * 1024;

/// Applies every measure. An error names the one that failed; `main` refuses to serve
/// then, unless the operator passed `--allow-unhardened`.
pub fn apply() -> Result<(), String> {
    use rustix::process::{setrlimit, Rlimit};
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
    // Before any key byte is in memory, so the first locked pages already count against
    // the raised limit.
    raise_soft_limit(Resource::Memlock, "RLIMIT_MEMLOCK", |max| max)?;
    Ok(())
}

/// Checks that [`KEY_MEMORY_RESERVATION`] more bytes can be locked now (a real `mlock`,
/// so `CAP_IPC_LOCK` counts). The error is the operator's message: the limit, what the
/// daemon needs, and how to raise it (the caller adds the `[memory] lock` way out).
pub fn check_key_memory() -> Result<(), String> {
    let Err(e) = kms_broker_api::locked::probe(KEY_MEMORY_RESERVATION) else {
        return Ok(());
    };
    let limit = rustix::process::getrlimit(Resource::Memlock).current;
    let limit = limit.map_or("unlimited".to_owned(), |b| format!("{} KiB", b / 1024));
    let held = match kms_broker_api::locked::stats().locked_bytes / 1024 {
        0 => String::new(),
        kib => format!(" (it holds {kib} KiB locked already)"),
    };
    Err(format!(
        "cannot lock memory for key bytes ({e}): RLIMIT_MEMLOCK is {limit} and the daemon \
         needs {} KiB more{held}; raise it with LimitMEMLOCK=64M in the systemd unit, \
         `ulimit -l 65536` before starting it, or CAP_IPC_LOCK in a container",
        KEY_MEMORY_RESERVATION / 1024
    ))
}

/// Raises a soft limit to `target(hard limit)`; nothing to do when it is already at the
/// hard limit. Returns the soft limit now (`None`: unlimited). The locked-memory and
/// open-file limits are often raised for a service (`LimitMEMLOCK=`, `ulimit -H`) with the
/// soft limit left low.
fn raise_soft_limit(
    resource: Resource,
    name: &str,
    target: impl FnOnce(Option<u64>) -> Option<u64>,
) -> Result<Option<u64>, String> {
    use rustix::process::{getrlimit, setrlimit, Rlimit};
    let now = getrlimit(resource);
    if now.current == now.maximum {
        return Ok(now.current);
    }
    let soft = target(now.maximum);
    setrlimit(
        resource,
        Rlimit {
            current: soft,
            maximum: now.maximum,
        },
    )
    .map_err(|e| format!("setrlimit({name}) from {:?} to {soft:?}: {e}", now.current))?;
    Ok(soft)
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit. Nothing
/// to do (and no error) when it is already there.
pub fn raise_open_files() -> Result<u64, String> {
    // An unlimited hard limit cannot be the soft one: the kernel caps descriptors at
    // fs.nr_open, so ask for that.
    let soft = raise_soft_limit(Resource::Nofile, "RLIMIT_NOFILE", |max| {
        max.or_else(|| {
            std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .or(Some(1 << 20))
        })
    })?;
    Ok(soft.unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use rustix::process::{getrlimit, Resource};

    /// Runs the test `name` of this module in a child process (the test binary again) with
    /// `HARDENING_CHILD` set: hardening changes the whole process (a non-dumpable process's
    /// /proc files turn root-owned, which other tests read), so it is applied out of the way.
    fn in_child(name: &str) -> bool {
        if std::env::var_os("HARDENING_CHILD").is_some() {
            return true;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                &format!("hardening::tests::{name}"),
                "--exact",
                "--nocapture",
            ])
            .env("HARDENING_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name} in a child: {text}");
        // The filter matched: the child really ran it.
        assert!(
            text.contains("1 passed"),
            "{name} did not run in the child: {text}"
        );
        false
    }

    #[test]
    fn apply_makes_the_process_undumpable_and_fixes_the_limits() {
        if !in_child("apply_makes_the_process_undumpable_and_fixes_the_limits") {
            return;
        }
        use rustix::process::{dumpable_behavior, DumpableBehavior};
        assert_eq!(dumpable_behavior().unwrap(), DumpableBehavior::Dumpable);
        super::apply().unwrap();
        // PR_GET_DUMPABLE == 0.
        assert_eq!(dumpable_behavior().unwrap(), DumpableBehavior::NotDumpable);
        let core = getrlimit(Resource::Core);
        assert_eq!((core.current, core.maximum), (Some(0), Some(0)));
        for r in [Resource::Nofile, Resource::Memlock] {
            let l = getrlimit(r);
            assert_eq!(l.current, l.maximum, "{r:?}: soft limit raised to hard");
        }
        // Room for key memory where this machine allows it (CI: 8 MiB, or CAP_IPC_LOCK).
        if std::env::var_os("CI").is_some() {
            super::check_key_memory().unwrap();
        }
    }

    #[test]
    fn too_little_lockable_memory_is_refused_with_the_fix() {
        if !in_child("too_little_lockable_memory_is_refused_with_the_fix") {
            return;
        }
        // CAP_IPC_LOCK lifts the limit; drop it from this thread (the one that probes).
        use rustix::thread::{capabilities, set_capabilities, CapabilitySet};
        let mut caps = capabilities(None).unwrap();
        caps.effective.remove(CapabilitySet::IPC_LOCK);
        caps.permitted.remove(CapabilitySet::IPC_LOCK);
        set_capabilities(None, caps).unwrap();
        let small = 64 * 1024;
        rustix::process::setrlimit(
            Resource::Memlock,
            rustix::process::Rlimit {
                current: Some(small),
                maximum: Some(small),
            },
        )
        .unwrap();
        let e = super::check_key_memory().unwrap_err();
        assert!(e.contains("RLIMIT_MEMLOCK is 64 KiB"), "{e}");
        assert!(e.contains("LimitMEMLOCK="), "{e}");
        assert!(e.contains("ulimit -l"), "{e}");
    }

    #[test]
    fn the_memory_knob_reads_both_modes_and_refuses_others() {
        use super::{MemoryConfig, MemoryLock};
        let read = |t: &str| toml::from_str::<MemoryConfig>(t).map(|m| m.lock);
        assert_eq!(read("").unwrap(), MemoryLock::Required);
        assert_eq!(read("lock = \"required\"").unwrap(), MemoryLock::Required);
        assert_eq!(
            read("lock = \"best-effort\"").unwrap(),
            MemoryLock::BestEffort
        );
        assert!(read("lock = \"sometimes\"").is_err());
        assert!(read("locked = \"required\"").is_err());
    }
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
