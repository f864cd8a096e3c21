//! Atomic, durable writes ([`write_atomic`], [`write_new_atomic`]) and the clean-up of the
//! temp files a killed write leaves ([`remove_stale_temps`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::Rng;

use super::failpoint;

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
    failpoint("atomic-write:temp-created");
    let committed = (|| {
        // Two writes, so that a crash test can leave a torn temp file behind.
        let (head, tail) = bytes.split_at(bytes.len() / 2);
        file.write_all(head)?;
        failpoint("atomic-write:half-written");
        file.write_all(tail)?;
        failpoint("atomic-write:written");
        file.sync_all()?;
        failpoint("atomic-write:synced");
        before_commit(&tmp)?;
        if replace {
            fs::rename(&tmp, path)?;
            failpoint("atomic-write:committed");
        } else {
            fs::hard_link(&tmp, path)?;
            failpoint("atomic-write:committed");
            // The file is in place; a leftover second name for it is only untidy (and
            // removed by the next write of `path`: remove_stale_temps).
            if let Err(e) = fs::remove_file(&tmp) {
                tracing::warn!(tmp = %tmp.display(), error = %e, "could not remove temp file");
            }
        }
        // Either way the temp name is gone now (renamed or unlinked).
        failpoint("atomic-write:temp-removed");
        Ok(())
    })();
    if let Err(e) = committed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable only once the directory entry is.
    File::open(dir)?.sync_all()?;
    failpoint("atomic-write:dir-synced");
    Ok(())
}

/// The temp file name for a write of `name`: `.{name}.tmp-{16 hex digits}`.
fn temp_name(name: &str, n: u64) -> String {
    format!(".{name}.tmp-{n:016x}")
}

/// Removes the temp files that writes of `path` left behind when the process died
/// mid-write (kill -9, power loss). They are never read: each is either an uncommitted,
/// possibly torn copy, or a second name of the committed file. Only names this module
/// makes for `path` exactly (`.{name}.tmp-` and 16 hex digits) and only regular files are
/// removed, never `path` itself. The caller must be the only writer of `path` (the daemon
/// holds the state dir's lock, and a store's own lock while writing its file), or it could
/// remove a temp file another write is still filling. Returns how many were removed.
pub fn remove_stale_temps(path: &Path) -> io::Result<usize> {
    let (Some(name), Some(dir)) = (path.file_name(), path.parent()) else {
        return Ok(0);
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = temp_name(&name.to_string_lossy(), 0);
    let prefix = &prefix[..prefix.len() - 16];
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        if rest.len() != 16 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        // file_type() does not follow symlinks: only our own regular files go.
        if !entry.file_type()?.is_file() {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => {
                tracing::warn!(tmp = %entry.path().display(), "removed a temp file left by an interrupted write");
                removed += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

fn create_temp(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    let mut attempt = 0;
    loop {
        let tmp = dir.join(temp_name(name, rand::rng().random::<u64>()));
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
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The names in `dir`, sorted: what a test expects to find after a write.
    pub(crate) fn files_in(dir: &Path) -> Vec<String> {
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

    #[test]
    fn stale_temps_of_one_file_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store-s1.json");
        write_new_atomic(&path, b"committed").unwrap();
        let hex = "0123456789abcdef";
        let keep = [
            "store-s1.json".to_string(),
            // Another file's temps, including one whose name starts like ours.
            format!(".store-s2.json.tmp-{hex}"),
            format!(".store-s1.json.tmp-x.json.tmp-{hex}"),
            format!(".store-s1.json.tmp-{}", &hex[..15]),
            format!(".store-s1.json.tmp-{hex}0"),
            "store-s1.json.tmp-0123456789abcdef".to_string(),
        ];
        for k in &keep[1..] {
            fs::write(dir.path().join(k), b"x").unwrap();
        }
        // A torn temp, an empty one, and a second name of the committed file.
        fs::write(
            dir.path().join(format!(".store-s1.json.tmp-{hex}")),
            b"{\"form",
        )
        .unwrap();
        fs::write(dir.path().join(".store-s1.json.tmp-ffffffffffffffff"), b"").unwrap();
        fs::hard_link(
            &path,
            dir.path().join(".store-s1.json.tmp-00000000000000AB"),
        )
        .unwrap();
        // A directory or a symlink with a temp's name is not ours to remove.
        fs::create_dir(dir.path().join(".store-s1.json.tmp-1111111111111111")).unwrap();
        std::os::unix::fs::symlink(
            &path,
            dir.path().join(".store-s1.json.tmp-2222222222222222"),
        )
        .unwrap();
        assert_eq!(remove_stale_temps(&path).unwrap(), 3);
        let mut want: Vec<String> = keep.to_vec();
        want.push(".store-s1.json.tmp-1111111111111111".into());
        want.push(".store-s1.json.tmp-2222222222222222".into());
        want.sort();
        assert_eq!(files_in(dir.path()), want);
        assert_eq!(fs::read(&path).unwrap(), b"committed");
        assert_eq!(remove_stale_temps(&path).unwrap(), 0);
    }
}
