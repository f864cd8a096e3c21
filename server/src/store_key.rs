//! Store keys on disk: CockroachDB-shaped, wrapped, written atomically and durably, never
//! in plaintext.
//!
//! A store key ([`StoreKey`]) is `key_id` (32 random bytes) and `key` (16, 24 or 32 bytes),
//! so that `key_id || key` is a valid CockroachDB store key file. On disk, each store has
//! one file, `<state_dir>/store-<id>.json` ([`path_for`]), holding only the KMS-wrapped
//! form ([`StoreKeyFile`]):
//!
//! ```json
//! {"format": 1, "store_id": "store-1", "key_name": "primary",
//!  "active":   {"key_id": "<64 hex>", "algorithm": "AES-256",
//!               "created_at": "2025-01-01T00:00:00Z", "wrapped": "<base64 envelope>"},
//!  "previous": [ …same shape, newest first… ]}
//! ```
//!
//! `previous` exists from format 1 on, so store-key rotation adds keys without a format
//! break. Reading is strict: an unknown format, an unknown field or a bad value is an error,
//! and a corrupt file is never mistaken for an absent one (that would mint a new key and
//! make the store's data unreadable). Files are mode 0600 and replaced atomically
//! ([`write_atomic`]): a crash leaves the old file or the new one, never a torn one.
//!
//! Submodule `format`: the records and their JSON. Durable writes are [`crate::fs`]'s.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rand::RngCore;

use crate::secret::SecretBytes;

mod format;

use crate::fs::{read_private, write_atomic, write_new_atomic, PrivateFileError};
pub use format::{FormatError, StoreKeyFile, WrappedStoreKey, FORMAT, MAX_PREVIOUS, MAX_WRAPPED};
pub use kms_broker_api::{Algorithm, KEY_ID_LEN};

/// A store id: `[A-Za-z0-9._-]{1,128}`, and not `.` or `..`, so it is safe as part of a
/// file name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreId(String);

impl StoreId {
    pub fn parse(s: &str) -> Result<Self, String> {
        if crate::config::valid_name(s) && s != "." && s != ".." {
            Ok(Self(s.to_owned()))
        } else {
            Err("store ids match [A-Za-z0-9._-]{1,128}".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A store key in plaintext: in memory only, the key bytes in [`SecretBytes`]. No `Clone`.
pub struct StoreKey {
    pub key_id: [u8; KEY_ID_LEN],
    pub key: SecretBytes,
    pub algorithm: Algorithm,
    pub created_at: SystemTime,
}

impl StoreKey {
    /// A new key and key id from the CSPRNG.
    pub fn generate(algorithm: Algorithm) -> Self {
        let mut key_id = [0u8; KEY_ID_LEN];
        rand::rng().fill_bytes(&mut key_id);
        Self {
            key_id,
            key: SecretBytes::random(algorithm.key_len()),
            algorithm,
            created_at: SystemTime::now(),
        }
    }

    /// A deliberate second copy (e.g. one for the cache, one for the response).
    pub fn duplicate(&self) -> Self {
        Self {
            key_id: self.key_id,
            key: self.key.duplicate(),
            algorithm: self.algorithm,
            created_at: self.created_at,
        }
    }

    /// `key_id || key`: the CockroachDB store key file layout, and what the broker wraps.
    pub fn to_key_file_bytes(&self) -> SecretBytes {
        // Exact capacity: no reallocation leaves a stray copy of the key on the heap.
        let mut v = Vec::with_capacity(KEY_ID_LEN + self.key.len());
        v.extend_from_slice(&self.key_id);
        v.extend_from_slice(self.key.expose());
        SecretBytes::new(v)
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreKey")
            .field("key_id", &hex::encode(self.key_id))
            .field("key", &self.key)
            .field("algorithm", &self.algorithm)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// Reading or writing a store key file failed. Messages name the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreFileError {
    #[error("store key file {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "store key file {} has mode {mode:04o}: group and others must have no access; \
         fix: chmod 600 {}",
        path.display(),
        path.display()
    )]
    Insecure { path: PathBuf, mode: u32 },
    #[error(
        "store key file {} is corrupt: {problem}; restore it from a backup, do not delete it \
         (the store's data is encrypted under the key it holds)",
        path.display()
    )]
    Corrupt { path: PathBuf, problem: FormatError },
    /// Owned by another user, or its owner-read bit is off ([`PrivateFileError`] says
    /// which, and the fix).
    #[error("store key file: {0}")]
    Refused(PrivateFileError),
    /// A write was refused before anything was written: the file would break a bound.
    #[error("store key file {} was not written: {problem}", path.display())]
    Unwritable { path: PathBuf, problem: FormatError },
    /// [`create_store_file`] found a file already there.
    #[error("store key file {} already exists", path.display())]
    Exists { path: PathBuf },
}

/// Store key files are small (a few KiB; 101 keys wrapped under 16 URIs each stay under
/// 1 MiB); anything bigger is not one.
pub const MAX_STORE_FILE: u64 = 4 << 20;

/// The file holding store `id`'s keys: `state_dir/store-<id>.json`. Safe for every
/// [`StoreId`]: the alphabet has no `/`, and the `store-` prefix keeps `.`/`..` out.
pub fn path_for(state_dir: &Path, id: &StoreId) -> PathBuf {
    state_dir.join(format!("store-{}.json", id.as_str()))
}

/// Reads store `id`'s file: `None` if there is none, an error if it is group/world
/// accessible, owned by another user, unreadable, too large, corrupt or belongs to another
/// store. The checks run on the open handle ([`crate::fs::read_private`]).
pub fn read_store_file(
    state_dir: &Path,
    id: &StoreId,
) -> Result<Option<StoreKeyFile>, StoreFileError> {
    let path = path_for(state_dir, id);
    let corrupt = |path: PathBuf, why: String| StoreFileError::Corrupt {
        path,
        problem: FormatError::new(why),
    };
    let bytes = match read_private(&path, MAX_STORE_FILE) {
        Ok(b) => b,
        Err(PrivateFileError::Missing { .. }) => return Ok(None),
        Err(PrivateFileError::Insecure { path, mode }) => {
            return Err(StoreFileError::Insecure { path, mode })
        }
        Err(PrivateFileError::NotRegular { path }) => {
            return Err(corrupt(path, "not a regular file".into()))
        }
        Err(PrivateFileError::TooLarge { path, len, max }) => {
            return Err(corrupt(path, format!("{len} bytes; at most {max}")))
        }
        Err(PrivateFileError::Io { path, error }) => {
            return Err(StoreFileError::Io { path, error })
        }
        Err(e) => return Err(StoreFileError::Refused(e)),
    };
    let parsed = StoreKeyFile::from_json(&bytes).map_err(|problem| StoreFileError::Corrupt {
        path: path.clone(),
        problem,
    })?;
    if parsed.store_id != *id {
        return Err(corrupt(
            path,
            format!("it holds the keys of store {:?}", parsed.store_id.as_str()),
        ));
    }
    Ok(Some(parsed))
}

/// The bytes of `file`, checked to read back as the same file within every bound
/// ([`MAX_STORE_FILE`], [`MAX_PREVIOUS`], [`MAX_WRAPPED`], distinct key ids): a file this
/// code writes is one it can read, so a rotation past a bound fails before it writes.
fn checked_json(path: &Path, file: &StoreKeyFile) -> Result<Vec<u8>, StoreFileError> {
    let json = file.to_json();
    let refuse = |why: String| StoreFileError::Unwritable {
        path: path.to_owned(),
        problem: FormatError::new(why),
    };
    if json.len() as u64 > MAX_STORE_FILE {
        return Err(refuse(format!(
            "{} bytes; at most {MAX_STORE_FILE}",
            json.len()
        )));
    }
    match StoreKeyFile::from_json(&json) {
        Ok(back) if back == *file => Ok(json),
        Ok(_) => Err(refuse("it would not read back the same".into())),
        Err(e) => Err(refuse(e.to_string())),
    }
}

/// Writes `file` to its store's [`path_for`], atomically and durably, replacing the old
/// one (rotation, re-wrap: the caller holds the store's lock and read the old file first).
/// Temp files a killed earlier write left are removed first.
pub fn write_store_file(state_dir: &Path, file: &StoreKeyFile) -> Result<(), StoreFileError> {
    let path = path_for(state_dir, &file.store_id);
    let json = checked_json(&path, file)?;
    remove_stale_temps(&path);
    write_atomic(&path, &json).map_err(|error| StoreFileError::Io { path, error })
}

/// Creates the FIRST file of a store, atomically and durably, and never replaces one: if a
/// file appeared meanwhile, [`StoreFileError::Exists`] (read it: its key is the store's).
pub fn create_store_file(state_dir: &Path, file: &StoreKeyFile) -> Result<(), StoreFileError> {
    let path = path_for(state_dir, &file.store_id);
    let json = checked_json(&path, file)?;
    remove_stale_temps(&path);
    write_new_atomic(&path, &json).map_err(|error| {
        if error.kind() == io::ErrorKind::AlreadyExists {
            StoreFileError::Exists { path }
        } else {
            StoreFileError::Io { path, error }
        }
    })
}

/// Before a write of a store's file (under the store's lock): the temp files an earlier
/// write of it left when the process died. Failing to remove them is untidy, not fatal.
fn remove_stale_temps(path: &Path) {
    if let Err(e) = crate::fs::remove_stale_temps(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove stale temp files");
    }
}

/// Checks the state dir at start, and never creates it: a missing one is most likely a
/// lost mount or a typo, and a fresh empty folder in its place would let `create=true`
/// mint new keys for stores whose data is encrypted under the lost ones. The dir must
/// exist, be a directory (symlinks are followed), be writable by us, be owned by us or
/// root, and not be writable by group or others (whoever can write it can swap store key
/// files). Every message names the folder and the fix.
pub fn ensure_state_dir(dir: &Path) -> io::Result<()> {
    let shown = dir.display();
    let meta = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "state dir {shown} does not exist; kms-broker never creates it (a missing \
                     one may be a lost mount, and an empty one would mint new store keys); \
                     create it with `install -d -m 0700 {shown}` as the daemon's user, or fix \
                     server.state_dir"
                ),
            ))
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("state dir {shown} cannot be examined: {e}"),
            ))
        }
    };
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "state dir {shown} is not a directory; point server.state_dir at a folder"
        )));
    }
    let uid = meta.uid();
    if uid != 0 && uid != rustix::process::geteuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "state dir {shown} is owned by uid {uid}, not by this daemon's user or root; \
                 fix: chown it to the daemon's user"
            ),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "state dir {shown} has mode {mode:04o}: group and others must not write it; \
                 fix: chmod 700 {shown}"
            ),
        ));
    }
    // Store files and the lock file are created in it; better to fail now than at the
    // first GetStoreKey with create=true.
    rustix::fs::access(
        dir,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    )
    .map_err(|e| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "state dir {shown} is not writable by this daemon's user ({e}); fix: chown \
                     it to the daemon's user and chmod 700 {shown}"
            ),
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests;
