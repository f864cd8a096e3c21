//! Atomic, durable file replacement: after a crash at any point, `path` holds the old
//! bytes or the new ones, never a torn or empty file, and no temp file is left behind by a
//! failed write (STYLE lesson 7).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::Rng;

/// Replaces `path` with `bytes` atomically and durably: a unique temp file in the same
/// directory (O_EXCL, mode 0600 from creation), written, `sync_all`, renamed over `path`,
/// then the directory fsynced. On error the temp file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, bytes, true, &|_| Ok(()))
}

/// Like [`write_atomic`], but fails with `ErrorKind::AlreadyExists` if `path` exists:
/// the temp file is hard-linked into place (link(2) never replaces), then unlinked.
pub fn write_new_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, bytes, false, &|_| Ok(()))
}

/// `before_commit` runs on the complete temp file just before it goes into place: tests
/// inject a failure there.
fn write_atomic_with(
    path: &Path,
    bytes: &[u8],
    replace: bool,
    before_commit: &dyn Fn(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (tmp, mut file) = create_temp(dir, &name.to_string_lossy())?;
    let committed = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        before_commit(&tmp)?;
        if replace {
            fs::rename(&tmp, path)
        } else {
            fs::hard_link(&tmp, path)?;
            // The key is in place; a leftover second name for it is only untidy.
            if let Err(e) = fs::remove_file(&tmp) {
                tracing::warn!(tmp = %tmp.display(), error = %e, "could not remove temp file");
            }
            Ok(())
        }
    })();
    if let Err(e) = committed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable only once the directory entry is.
    File::open(dir)?.sync_all()
}

fn create_temp(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    let mut attempt = 0;
    loop {
        let tmp = dir.join(format!(".{name}.tmp-{:016x}", rand::rng().random::<u64>()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            // A 64-bit random name collides only with a leftover of our own; try another.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 3 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_atomic(&path, b"old").unwrap();
        let fail = |tmp: &Path| {
            assert_eq!(fs::read(tmp).unwrap(), b"new", "complete before commit");
            assert_eq!(
                fs::metadata(tmp).unwrap().permissions().mode() & 0o777,
                0o600
            );
            Err(io::Error::other("injected"))
        };
        assert_eq!(
            write_atomic_with(&path, b"new", true, &fail)
                .unwrap_err()
                .to_string(),
            "injected"
        );
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(files_in(dir.path()), ["f.json"]);
        // A rename that fails (the target is a non-empty directory) cleans up too.
        let sub = dir.path().join("d");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("x"), b"").unwrap();
        assert!(write_atomic(&sub, b"new").is_err());
        assert_eq!(files_in(dir.path()), ["d", "f.json"]);
        // write_new_atomic never replaces.
        assert_eq!(
            write_new_atomic(&path, b"new").unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(files_in(dir.path()), ["d", "f.json"]);
    }
}
