//! Writing a store key file (`key_id || key`, CockroachDB's format) safely.

use std::io::Write;
use std::path::Path;

use crate::StoreKey;

impl StoreKey {
    /// Writes [`StoreKey::key_file_bytes`] to `path`, atomically and private from the first
    /// byte: a temporary file is created in the same folder with mode 0600 (whatever the
    /// umask), written, flushed to disk, then renamed over `path`, and the folder is synced.
    /// A reader sees the old file or the whole new one, never a partial key; nobody but the
    /// owner can ever open it. An existing `path` (even a symlink) is replaced, not followed.
    ///
    /// The temporary file is removed on any error. Its bytes are wiped from this process's
    /// buffer after the write (the page cache and disk are the operating system's).
    pub fn write_key_file(&self, path: &Path) -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        // tempfile creates with O_EXCL and mode 0600 on Unix.
        let mut tmp = tempfile::Builder::new()
            .prefix(".kms-broker-key-")
            .tempfile_in(dir)?;
        let bytes = self.key_file_bytes();
        tmp.write_all(bytes.expose())?;
        drop(bytes);
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::SystemTime;

    use super::*;
    use crate::{Algorithm, SecretBytes, KEY_ID_LEN};

    fn key(byte: u8) -> StoreKey {
        StoreKey {
            key_id: [byte; KEY_ID_LEN],
            key: SecretBytes::new(vec![byte; 32]),
            algorithm: Algorithm::Aes256,
            created_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn written_0600_whole_and_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.key");
        // A world-readable file in the way: replaced by a private one, not reused.
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        key(1).write_key_file(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            key(1).key_file_bytes().expose()
        );

        key(2).write_key_file(&path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            key(2).key_file_bytes().expose()
        );
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["store.key"]);
    }

    #[test]
    fn a_symlink_at_the_path_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        let path = dir.path().join("store.key");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        key(3).write_key_file(&path).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_missing_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/store.key");
        assert!(key(4).write_key_file(&path).is_err());
    }
}
