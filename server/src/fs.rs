//! Private files: the one place that reads a secret file and the one place that writes a
//! file atomically (STYLE lesson 7). Store key files, key files, the Vault token file,
//! dev certificates and the dev config all go through here.
//!
//! - [`read_private`] opens first and checks the OPEN handle (regular file, owner, mode,
//!   size), so the file checked is the file read: no check-then-open race.
//! - [`write_atomic`] / [`write_new_atomic`]: after a crash at any point, `path` holds the
//!   old bytes or the new ones, never a torn or empty file, and no temp file is left behind
//!   by a failed write.
//! - [`lock_dir`]: an exclusive `flock` on `DIR/.lock` for the life of the process, so a
//!   second daemon cannot share a state dir.
//! - [`remove_stale_temps`]: the temp files a killed write left behind.
//! - [`failpoint`]: crash injection at every step of a write, in test builds only.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

mod atomic;
mod failpoint;

#[cfg(test)]
pub(crate) use atomic::tests::files_in;
pub use atomic::{remove_stale_temps, write_atomic, write_new_atomic};
pub use failpoint::failpoint;

/// Why a private file could not be read. `Display` names the file and the fix, never the
/// content.
#[derive(Debug)]
pub enum PrivateFileError {
    /// The file does not exist.
    Missing { path: PathBuf },
    /// The OS refused to open it (EACCES), or its owner-read bit is off (as root would
    /// otherwise read a mode-000 file anyway): an operator's way to revoke it.
    Denied { path: PathBuf, mode: Option<u32> },
    /// A directory, socket, device…
    NotRegular { path: PathBuf },
    /// Group or others have some access.
    Insecure { path: PathBuf, mode: u32 },
    /// Group or others may write it (a file that decides who may do what, like the config).
    Writable { path: PathBuf, mode: u32 },
    /// Owned by a user other than us or root: that user could swap the secret.
    WrongOwner { path: PathBuf, uid: u32 },
    /// Larger than any file of this kind can be.
    TooLarge { path: PathBuf, len: u64, max: u64 },
    /// Any other I/O failure.
    Io { path: PathBuf, error: io::Error },
}

impl fmt::Display for PrivateFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { path } => write!(f, "{} does not exist", path.display()),
            Self::Denied { path, mode: None } => {
                write!(f, "{} cannot be read: permission denied", path.display())
            }
            Self::Denied {
                path,
                mode: Some(m),
            } => write!(
                f,
                "{} has mode {m:04o} (not readable by its owner); to restore it: chmod 600 {}",
                path.display(),
                path.display()
            ),
            Self::NotRegular { path } => write!(f, "{} is not a regular file", path.display()),
            Self::Insecure { path, mode } => write!(
                f,
                "{} has mode {mode:04o}: group and others must have no access; fix: chmod 600 {}",
                path.display(),
                path.display()
            ),
            Self::Writable { path, mode } => write!(
                f,
                "{} has mode {mode:04o}: group or others may write it, and whoever edits it changes the policy; fix: chmod go-w {}",
                path.display(),
                path.display()
            ),
            Self::WrongOwner { path, uid } => write!(
                f,
                "{} is owned by uid {uid}, not by this daemon's user or root; fix: chown it to the daemon's user",
                path.display()
            ),
            Self::TooLarge { path, len, max } => write!(
                f,
                "{} is {len} bytes, more than the {max} a file of this kind can be",
                path.display()
            ),
            Self::Io { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for PrivateFileError {}

/// Reads a secret file of at most `max_len` bytes into zeroized memory. Refuses a file that
/// is not regular, that group or others may access, or that is owned by another user than
/// us or root; all checked on the open handle. Symlinks are followed (Kubernetes mounts
/// secrets through them); the checks apply to the target.
pub fn read_private(path: &Path, max_len: u64) -> Result<Zeroizing<Vec<u8>>, PrivateFileError> {
    read_checked(path, max_len, 0o077)
}

/// Reads a file that is not secret but decides what the daemon allows (the config, with its
/// policy): at most `max_len` bytes of UTF-8. Refuses a file that is not regular, that group
/// or others may WRITE, or that is owned by another user than us or root (either could
/// grant themselves any key), checked on the open handle as [`read_private`] does.
pub fn read_trusted(path: &Path, max_len: u64) -> Result<String, PrivateFileError> {
    let bytes = read_checked(path, max_len, 0o022)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| PrivateFileError::Io {
        path: path.to_owned(),
        error: io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

/// [`read_private`] and [`read_trusted`]: `forbidden` are the mode bits that refuse it.
fn read_checked(
    path: &Path,
    max_len: u64,
    forbidden: u32,
) -> Result<Zeroizing<Vec<u8>>, PrivateFileError> {
    let p = || path.to_owned();
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PrivateFileError::Missing { path: p() })
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(PrivateFileError::Denied {
                path: p(),
                mode: None,
            })
        }
        Err(error) => return Err(PrivateFileError::Io { path: p(), error }),
    };
    let meta = file
        .metadata()
        .map_err(|error| PrivateFileError::Io { path: p(), error })?;
    if !meta.is_file() {
        return Err(PrivateFileError::NotRegular { path: p() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & forbidden != 0 {
        return Err(if forbidden & 0o044 != 0 {
            PrivateFileError::Insecure { path: p(), mode }
        } else {
            PrivateFileError::Writable { path: p(), mode }
        });
    }
    if mode & 0o400 == 0 {
        return Err(PrivateFileError::Denied {
            path: p(),
            mode: Some(mode),
        });
    }
    let uid = meta.uid();
    if uid != 0 && uid != rustix::process::geteuid().as_raw() {
        return Err(PrivateFileError::WrongOwner { path: p(), uid });
    }
    if meta.len() > max_len {
        return Err(PrivateFileError::TooLarge {
            path: p(),
            len: meta.len(),
            max: max_len,
        });
    }
    // Exact capacity (no reallocation leaves a copy behind); one byte more to see a file
    // that grew after the stat.
    let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    (&mut file)
        .take(max_len + 1)
        .read_to_end(&mut buf)
        .map_err(|error| PrivateFileError::Io { path: p(), error })?;
    if buf.len() as u64 > max_len {
        return Err(PrivateFileError::TooLarge {
            path: p(),
            len: buf.len() as u64,
            max: max_len,
        });
    }
    Ok(buf)
}

/// An exclusive lock on a directory, held until dropped (in practice: until the process
/// exits, which also releases it after kill -9).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Why [`lock_dir`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("{} is in use by another kms-broker (it holds {}); stop it, or give this one its own state_dir", dir.display(), lock.display())]
    InUse { dir: PathBuf, lock: PathBuf },
    #[error("cannot lock {}: {error}", lock.display())]
    Io { lock: PathBuf, error: io::Error },
}

/// Takes an exclusive, non-blocking `flock` on `dir/.lock` (created 0600 if missing).
pub fn lock_dir(dir: &Path) -> Result<DirLock, LockError> {
    let lock = dir.join(".lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::CLOEXEC.bits() as i32)
        .open(&lock)
        .map_err(|error| LockError::Io {
            lock: lock.clone(),
            error,
        })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(LockError::InUse {
            dir: dir.to_owned(),
            lock,
        }),
        Err(e) => Err(LockError::Io {
            lock,
            error: e.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn read_private_checks_the_open_handle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        assert!(matches!(
            read_private(&path, 64),
            Err(PrivateFileError::Missing { .. })
        ));
        write_atomic(&path, b"0123456789").unwrap();
        assert_eq!(&read_private(&path, 64).unwrap()[..], b"0123456789");
        let e = read_private(&path, 4).unwrap_err();
        assert!(
            matches!(e, PrivateFileError::TooLarge { len: 10, .. }),
            "{e}"
        );
        for (mode, insecure) in [(0o640, true), (0o604, true), (0o400, false)] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let r = read_private(&path, 64);
            assert_eq!(
                matches!(r, Err(PrivateFileError::Insecure { .. })),
                insecure,
                "{mode:o}"
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
        let e = read_private(&path, 64).unwrap_err();
        assert!(matches!(e, PrivateFileError::Denied { .. }), "{e}");
        assert!(
            read_private(dir.path(), 64).is_err(),
            "a directory is no secret file"
        );
        // Messages name the file and the fix, never the content.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let msg = read_private(&path, 64).unwrap_err().to_string();
        assert!(msg.contains("chmod 600"), "{msg}");
        assert!(!msg.contains("0123456789"), "{msg}");
    }

    #[test]
    fn read_trusted_refuses_what_others_may_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms-broker.toml");
        write_atomic(&path, b"[keys.k]\n").unwrap();
        // Readable by all is fine (no secret needs to be in it); writable by others is not.
        for (mode, ok) in [(0o644, true), (0o600, true), (0o664, false), (0o646, false)] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            match read_trusted(&path, 1024) {
                Ok(text) => {
                    assert!(ok, "{mode:o} accepted");
                    assert_eq!(text, "[keys.k]\n");
                }
                Err(e) => {
                    assert!(!ok, "{mode:o}: {e}");
                    assert!(matches!(e, PrivateFileError::Writable { .. }), "{e}");
                    assert!(e.to_string().contains("chmod go-w"), "{e}");
                }
            }
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        // No allocation sized by the file: a huge one is refused by its length.
        let e = read_trusted(&path, 4).unwrap_err();
        assert!(matches!(e, PrivateFileError::TooLarge { .. }), "{e}");
        assert!(read_trusted(Path::new("/dev/zero"), 1024).is_err());
        fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(read_trusted(&path, 1024).is_err(), "not UTF-8");
    }

    #[test]
    fn a_second_lock_on_a_dir_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path()).unwrap();
        let e = lock_dir(dir.path()).unwrap_err();
        assert!(matches!(e, LockError::InUse { .. }), "{e}");
        assert!(e.to_string().contains(&dir.path().display().to_string()));
        drop(first);
        lock_dir(dir.path()).unwrap();
    }
}
