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

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::secret::SecretBytes;

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

/// A store key's cipher, by key length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Aes128,
    Aes192,
    Aes256,
}

impl Algorithm {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "AES-128" => Some(Algorithm::Aes128),
            "AES-192" => Some(Algorithm::Aes192),
            "AES-256" => Some(Algorithm::Aes256),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Aes128 => "AES-128",
            Algorithm::Aes192 => "AES-192",
            Algorithm::Aes256 => "AES-256",
        }
    }

    pub fn key_len(self) -> usize {
        match self {
            Algorithm::Aes128 => 16,
            Algorithm::Aes192 => 24,
            Algorithm::Aes256 => 32,
        }
    }
}

/// Length of a store key id.
pub const KEY_ID_LEN: usize = 32;

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

/// One wrapped store key as it sits on disk: metadata in the clear, the key only inside
/// `wrapped`, an envelope the caller made (the broker wraps [`StoreKey::to_key_file_bytes`]
/// with the store id as context).
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedStoreKey {
    pub key_id: [u8; KEY_ID_LEN],
    pub algorithm: Algorithm,
    pub created_at: SystemTime,
    pub wrapped: Vec<u8>,
}

impl WrappedStoreKey {
    /// The on-disk record of `key`, given its wrapped `key_id || key`.
    pub fn new(key: &StoreKey, wrapped: Vec<u8>) -> Self {
        Self {
            key_id: key.key_id,
            algorithm: key.algorithm,
            created_at: key.created_at,
            wrapped,
        }
    }

    /// Rebuilds the [`StoreKey`] from the unwrapped `key_id || key`, checking it against
    /// this record (length for the algorithm, same key id).
    pub fn open(&self, unwrapped: SecretBytes) -> Result<StoreKey, FormatError> {
        let want = KEY_ID_LEN + self.algorithm.key_len();
        let bytes = unwrapped.expose();
        if bytes.len() != want {
            return Err(FormatError(format!(
                "the unwrapped store key has {} bytes; {} needs {want} (key id + key)",
                bytes.len(),
                self.algorithm.as_str()
            )));
        }
        let (id, key) = bytes.split_at(KEY_ID_LEN);
        if id != self.key_id {
            return Err(FormatError("the unwrapped store key has another key id".into()));
        }
        Ok(StoreKey {
            key_id: self.key_id,
            key: SecretBytes::copy_from(key),
            algorithm: self.algorithm,
            created_at: self.created_at,
        })
    }
}

impl fmt::Debug for WrappedStoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedStoreKey")
            .field("key_id", &hex::encode(self.key_id))
            .field("algorithm", &self.algorithm)
            .field("created_at", &self.created_at)
            .field("wrapped_len", &self.wrapped.len())
            .finish()
    }
}

/// A store's key file: plaintext-free, so its metadata (ids, algorithms, `created_at`) can
/// be read without the KMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreKeyFile {
    pub store_id: StoreId,
    /// The `[keys.<name>]` that wrapped every key here.
    pub key_name: String,
    pub active: WrappedStoreKey,
    /// Older keys still needed to read data written before a rotation, newest first.
    pub previous: Vec<WrappedStoreKey>,
}

/// The on-disk format this code writes and reads.
pub const FORMAT: u64 = 1;

impl StoreKeyFile {
    pub fn new(store_id: StoreId, key_name: &str, active: WrappedStoreKey) -> Self {
        Self {
            store_id,
            key_name: key_name.to_owned(),
            active,
            previous: Vec::new(),
        }
    }

    /// Makes `new_active` the active key; the old one becomes the newest previous key.
    pub fn rotate(&mut self, new_active: WrappedStoreKey) {
        let old = std::mem::replace(&mut self.active, new_active);
        self.previous.insert(0, old);
    }

    /// Every key, active first, then previous ones newest first.
    pub fn keys(&self) -> impl Iterator<Item = &WrappedStoreKey> {
        std::iter::once(&self.active).chain(&self.previous)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let raw = RawFile {
            format: FORMAT,
            store_id: self.store_id.as_str().to_owned(),
            key_name: self.key_name.clone(),
            active: RawKey::from_key(&self.active),
            previous: self.previous.iter().map(RawKey::from_key).collect(),
        };
        // Serializing plain strings and numbers into memory cannot fail; an empty result
        // would be refused by from_json rather than read as "no key".
        let mut out = serde_json::to_vec_pretty(&raw).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Strict parse: an unknown format version, a missing or unknown field, or a bad value
    /// is an error naming what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Self, FormatError> {
        // The version first, so a newer file says "format 2" rather than "unknown field".
        let probe: FormatProbe = serde_json::from_slice(bytes).map_err(|e| FormatError(format!("not JSON: {e}")))?;
        match probe.format {
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(FORMAT) => {}
            Some(v) => return Err(FormatError(format!("format {v} is not supported (this daemon reads format {FORMAT})"))),
            None => return Err(FormatError("no \"format\" field".into())),
        }
        let raw: RawFile = serde_json::from_slice(bytes).map_err(|e| FormatError(e.to_string()))?;
        let store_id = StoreId::parse(&raw.store_id).map_err(|e| FormatError(format!("store_id: {e}")))?;
        if !crate::config::valid_name(&raw.key_name) {
            return Err(FormatError("key_name: key names match [A-Za-z0-9._-]{1,128}".into()));
        }
        let file = Self {
            store_id,
            key_name: raw.key_name,
            active: raw.active.into_key("active")?,
            previous: (raw.previous.into_iter().enumerate())
                .map(|(i, k)| k.into_key(&format!("previous[{i}]")))
                .collect::<Result<_, _>>()?,
        };
        let mut ids: Vec<_> = file.keys().map(|k| k.key_id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(FormatError("two keys share a key_id".into()));
        }
        Ok(file)
    }
}

/// Why a store key file (or an unwrapped key) does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(String);

#[derive(Deserialize)]
struct FormatProbe {
    format: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    format: u64,
    store_id: String,
    key_name: String,
    active: RawKey,
    previous: Vec<RawKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    key_id: String,
    algorithm: String,
    created_at: String,
    wrapped: String,
}

impl RawKey {
    fn from_key(k: &WrappedStoreKey) -> Self {
        Self {
            key_id: hex::encode(k.key_id),
            algorithm: k.algorithm.as_str().to_owned(),
            created_at: rfc3339(k.created_at),
            wrapped: BASE64.encode(&k.wrapped),
        }
    }

    fn into_key(self, at: &str) -> Result<WrappedStoreKey, FormatError> {
        let bad = |field: &str, why: String| FormatError(format!("{at}.{field}: {why}"));
        let key_id = hex::decode(&self.key_id)
            .ok()
            .and_then(|v| <[u8; KEY_ID_LEN]>::try_from(v).ok())
            .ok_or_else(|| bad("key_id", format!("must be {} hex digits", KEY_ID_LEN * 2)))?;
        let algorithm = Algorithm::parse(&self.algorithm)
            .ok_or_else(|| bad("algorithm", format!("{:?} is not AES-128, AES-192 or AES-256", self.algorithm)))?;
        let created_at = OffsetDateTime::parse(&self.created_at, &Rfc3339)
            .map_err(|e| bad("created_at", format!("not an RFC 3339 time ({e})")))?
            .into();
        let wrapped = BASE64
            .decode(&self.wrapped)
            .map_err(|e| bad("wrapped", format!("not base64 ({e})")))?;
        if wrapped.is_empty() {
            return Err(bad("wrapped", "is empty".into()));
        }
        Ok(WrappedStoreKey { key_id, algorithm, created_at, wrapped })
    }
}

/// `t` as RFC 3339 UTC. Times come from the clock or from a parsed file, so they are in
/// range; a wildly wrong clock is clamped to 1970..=9999 rather than panicking, since
/// `created_at` is informational.
fn rfc3339(t: SystemTime) -> String {
    let nanos = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(_) => 0,
    };
    let max = OffsetDateTime::new_utc(time::Date::MAX, time::Time::MIDNIGHT);
    let last = 253_402_300_799_i128 * 1_000_000_000; // 9999-12-31T23:59:59Z
    let t = OffsetDateTime::from_unix_timestamp_nanos(nanos.min(last)).unwrap_or(max);
    t.format(&Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Reading or writing a store key file failed. Messages name the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreFileError {
    #[error("store key file {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("store key file {} has mode {mode:04o}: group and others must have no access; fix: chmod 600 {}", path.display(), path.display())]
    Insecure { path: PathBuf, mode: u32 },
    #[error("store key file {} is corrupt: {problem}; restore it from a backup, do not delete it (the store's data is encrypted under the key it holds)", path.display())]
    Corrupt { path: PathBuf, problem: FormatError },
}

/// Store key files are small; anything bigger is not one.
const MAX_STORE_FILE: u64 = 1 << 20;

/// The file holding store `id`'s keys: `state_dir/store-<id>.json`. Safe for every
/// [`StoreId`]: the alphabet has no `/`, and the `store-` prefix keeps `.`/`..` out.
pub fn path_for(state_dir: &Path, id: &StoreId) -> PathBuf {
    state_dir.join(format!("store-{}.json", id.as_str()))
}

/// Reads store `id`'s file: `None` if there is none, an error if it is group/world
/// accessible, unreadable, corrupt or belongs to another store.
pub fn read_store_file(state_dir: &Path, id: &StoreId) -> Result<Option<StoreKeyFile>, StoreFileError> {
    let path = path_for(state_dir, id);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(StoreFileError::Io { path, error }),
    };
    let corrupt = |path: &Path, why: String| StoreFileError::Corrupt { path: path.to_owned(), problem: FormatError(why) };
    // Checked on the open handle, so the file checked is the file read.
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(error) => return Err(StoreFileError::Io { path, error }),
    };
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_file() {
        return Err(corrupt(&path, "not a regular file".into()));
    }
    if mode & 0o077 != 0 {
        return Err(StoreFileError::Insecure { path, mode });
    }
    if meta.len() > MAX_STORE_FILE {
        return Err(corrupt(&path, format!("{} bytes is too large", meta.len())));
    }
    let mut bytes = Vec::new();
    if let Err(error) = file.read_to_end(&mut bytes) {
        return Err(StoreFileError::Io { path, error });
    }
    let parsed = StoreKeyFile::from_json(&bytes).map_err(|problem| StoreFileError::Corrupt { path: path.clone(), problem })?;
    if parsed.store_id != *id {
        return Err(corrupt(&path, format!("it holds the keys of store {:?}", parsed.store_id.as_str())));
    }
    Ok(Some(parsed))
}

/// Writes `file` to its store's [`path_for`], atomically and durably.
pub fn write_store_file(state_dir: &Path, file: &StoreKeyFile) -> Result<(), StoreFileError> {
    let path = path_for(state_dir, &file.store_id);
    write_atomic(&path, &file.to_json()).map_err(|error| StoreFileError::Io { path, error })
}

/// Creates the state dir (mode 0700) if missing; refuses one that group or others can
/// write, since whoever can write it can swap store key files.
pub fn ensure_state_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!("state dir {} is not a directory", dir.display())));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("state dir {} has mode {mode:04o}: group and others must not write it; fix: chmod 700 {}", dir.display(), dir.display()),
        ));
    }
    Ok(())
}

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
fn write_atomic_with(path: &Path, bytes: &[u8], replace: bool, before_commit: &dyn Fn(&Path) -> io::Result<()>) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no file", path.display())))?;
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
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            // A 64-bit random name collides only with a leftover of our own; try another.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 3 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(byte: u8) -> WrappedStoreKey {
        WrappedStoreKey::new(&StoreKey::generate(Algorithm::Aes256), vec![byte; 40])
    }

    fn sample() -> StoreKeyFile {
        let mut f = StoreKeyFile::new(StoreId::parse("store-1").unwrap(), "primary", record(1));
        f.rotate(record(2));
        f.rotate(record(3));
        f
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn write_read_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let f = sample();
        assert_eq!(f.previous.len(), 2);
        assert_eq!(f.previous[0].wrapped, vec![2; 40], "newest first");
        write_store_file(dir.path(), &f).unwrap();
        let path = path_for(dir.path(), &f.store_id);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = read_store_file(dir.path(), &f.store_id).unwrap().unwrap();
        assert_eq!(back, f);
        assert_eq!(files_in(dir.path()), ["store-store-1.json"]);
        let other = StoreId::parse("store-2").unwrap();
        assert!(read_store_file(dir.path(), &other).unwrap().is_none());
    }

    #[test]
    fn store_key_bytes_round_trip() {
        let k = StoreKey::generate(Algorithm::Aes128);
        let w = WrappedStoreKey::new(&k, vec![0; 8]);
        let back = w.open(k.to_key_file_bytes()).unwrap();
        assert_eq!(back.key_id, k.key_id);
        assert!(back.key.ct_eq(k.key.expose()));
        assert!(!format!("{k:?}").contains(&hex::encode(k.key.expose())));
        let other = StoreKey::generate(Algorithm::Aes128).to_key_file_bytes();
        assert!(w.open(other).unwrap_err().to_string().contains("another key id"));
        let long = StoreKey::generate(Algorithm::Aes256).to_key_file_bytes();
        assert!(w.open(long).unwrap_err().to_string().contains("64 bytes"));
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_atomic(&path, b"old").unwrap();
        let fail = |tmp: &Path| {
            assert_eq!(fs::read(tmp).unwrap(), b"new", "complete before commit");
            assert_eq!(fs::metadata(tmp).unwrap().permissions().mode() & 0o777, 0o600);
            Err(io::Error::other("injected"))
        };
        assert_eq!(write_atomic_with(&path, b"new", true, &fail).unwrap_err().to_string(), "injected");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(files_in(dir.path()), ["f.json"]);
        // A rename that fails (the target is a non-empty directory) cleans up too.
        let sub = dir.path().join("d");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("x"), b"").unwrap();
        assert!(write_atomic(&sub, b"new").is_err());
        assert_eq!(files_in(dir.path()), ["d", "f.json"]);
        // write_new_atomic never replaces.
        assert_eq!(write_new_atomic(&path, b"new").unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(files_in(dir.path()), ["d", "f.json"]);
    }

    #[test]
    fn corrupt_or_insecure_files_are_errors_not_none() {
        let dir = tempfile::tempdir().unwrap();
        let id = StoreId::parse("s").unwrap();
        let good = String::from_utf8(sample().to_json()).unwrap().replace("store-1", "s");
        let cases = [
            ("".to_string(), "not JSON"),
            ("{\"format\":2}".into(), "format 2 is not supported"),
            (good.replace("\"previous\"", "\"extra\": 1, \"previous\""), "unknown field"),
            (good.replacen("AES-256", "AES-512", 1), "active.algorithm"),
            (good.replace("\"s\"", "\"other\""), "store \"other\""),
            (good.replacen("\"key_id\": \"", "\"key_id\": \"zz", 1), "active.key_id"),
        ];
        for (text, want) in cases {
            write_atomic(&path_for(dir.path(), &id), text.as_bytes()).unwrap();
            let e = read_store_file(dir.path(), &id).unwrap_err();
            assert!(matches!(e, StoreFileError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
        let path = path_for(dir.path(), &id);
        write_atomic(&path, good.as_bytes()).unwrap();
        assert!(read_store_file(dir.path(), &id).unwrap().is_some());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_store_file(dir.path(), &id).unwrap_err();
        assert!(e.to_string().contains(&format!("chmod 600 {}", path.display())), "{e}");
    }

    #[test]
    fn path_for_stays_inside_the_state_dir() {
        let dir = Path::new("/var/lib/kms-broker");
        let alphabet = "abcXYZ019._-";
        let mut ids: Vec<String> = alphabet.chars().map(String::from).collect();
        ids.extend(["...", "..a", "a..", "-", "_.", &"a".repeat(128)].map(String::from));
        for raw in ids {
            let id = StoreId::parse(&raw).unwrap();
            let p = path_for(dir, &id);
            assert_eq!(p.parent(), Some(dir), "{raw}");
            assert_eq!(p.file_name().unwrap().to_str().unwrap(), format!("store-{raw}.json"));
        }
        for bad in ["", ".", "..", "a/b", "/a", "../a", "a\\b", "a b", "é", &"a".repeat(129)] {
            assert!(StoreId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn state_dir_is_created_private_and_refused_when_writable() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/state");
        ensure_state_dir(&state).unwrap();
        assert!(state.is_dir());
        ensure_state_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_state_dir(&state).unwrap_err();
        assert!(e.to_string().contains("chmod 700"), "{e}");
    }
}
