//! `file:///path`: a local 32-byte key file, AES-256-GCM. Development and self-hosted use
//! only: the key sits on the node's own disk.
//!
//! - Ciphertext: `nonce (12 bytes) || ciphertext || tag (16 bytes)`, with [`Aad::bytes`] as
//!   the authenticated data. The nonce is random per call (OsRng); one key wraps far fewer
//!   than the 2^32 messages where random 96-bit nonces start to risk a collision.
//! - Key version: the first 8 hex digits of SHA-256("kms-broker/file-key-version" || key),
//!   so replacing the key file shows up as a new version in WrapKey and RevokeStatus.
//!   Decrypt ignores it (a file holds one key) except to explain a failure.
//! - The key file is read on every call. It is 32 bytes, and this is what makes revocation
//!   work: `chmod 000 PATH` (REVOKED) or deleting it (DESTROYED) takes effect at the next
//!   call and the next RevokeStatus poll, with no restart.
//! - The key is read by [`crate::fs::read_private`], which checks the open handle: a regular
//!   file, owned by the daemon's user or root, not group/world accessible (mode
//!   `& 0o077 == 0`); and it must be exactly 32 bytes. Anything else is DISABLED with a
//!   message that names the path and the fix.
//!
//! Create a key with `kms-broker serve --dev` (see [`create_key_file`]) or by hand:
//! `(umask 077; head -c 32 /dev/urandom > PATH)`.

use std::io;
use std::path::Path;

use aes_gcm::aead::{Aead, AeadCore, OsRng, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::{Aad, BackendError, Ciphertext, Decrypted, FailureClass, KeyHealth, KmsBackend};
use crate::key_uri::FileUri;
use crate::secret::SecretBytes;

/// A file key is an AES-256 key.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const VERSION_DOMAIN: &[u8] = b"kms-broker/file-key-version";

/// The backend for one `file:///` URI. Holds only the path: the key is read per call.
#[derive(Debug)]
pub struct FileBackend {
    uri: FileUri,
}

impl std::fmt::Debug for FileUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileUri({})", self.path.display())
    }
}

impl FileBackend {
    pub fn new(uri: FileUri) -> Self {
        Self { uri }
    }

    /// Loads the key off the async runtime: a key file on a hung network mount must not
    /// stall a worker thread, and the retry layer's timeout can only cut a call that yields.
    async fn key(&self) -> Result<SecretBytes, BackendError> {
        let path = self.uri.path.clone();
        tokio::task::spawn_blocking(move || load_key(&path))
            .await
            .map_err(|e| BackendError::unreachable(format!("reading the key file failed: {e}")))?
    }
}

#[async_trait]
impl KmsBackend for FileBackend {
    async fn encrypt(
        &self,
        plaintext: &SecretBytes,
        aad: &Aad,
    ) -> Result<Ciphertext, BackendError> {
        let key = self.key().await?;
        Ok(Ciphertext {
            bytes: seal(&key, plaintext, aad)?,
            key_version: key_version(&key),
        })
    }

    async fn decrypt(
        &self,
        ciphertext: &[u8],
        key_version_was: &str,
        aad: &Aad,
    ) -> Result<Decrypted, BackendError> {
        let key = self.key().await?;
        let plaintext = open(&key, ciphertext, aad).map_err(|mut e| {
            // The version is not needed to decrypt, but it tells an operator why a blob no
            // longer opens: the key file was replaced since it was made.
            let now = key_version(&key);
            if !key_version_was.is_empty() && key_version_was != now {
                e.detail = format!(
                    "{}: it was wrapped by file key version {key_version_was}, \
                     but {} now holds version {now}",
                    e.detail,
                    self.uri.path.display()
                );
            }
            e
        })?;
        // A file holds one key: the version is the key that just authenticated it.
        Ok(Decrypted {
            plaintext,
            key_version: Some(key_version(&key)),
        })
    }

    fn is_local(&self) -> bool {
        true
    }

    async fn check(&self) -> Result<KeyHealth, BackendError> {
        let key = self.key().await?;
        Ok(KeyHealth {
            detail: format!("key version {}", key_version(&key)),
            version: Some(key_version(&key)),
        })
    }
}

/// The short, stable fingerprint reported as `key_version`. Domain-separated, so it reveals
/// nothing usable about the key, and truncated because it only has to tell files apart.
pub fn key_version(key: &SecretBytes) -> String {
    let digest = Sha256::new()
        .chain_update(VERSION_DOMAIN)
        .chain_update(key.expose())
        .finalize();
    hex::encode(&digest[..4])
}

/// AES-256-GCM under `key`: `nonce || ciphertext || tag`. Shared with the mock KMS.
pub(crate) fn seal(
    key: &SecretBytes,
    plaintext: &SecretBytes,
    aad: &Aad,
) -> Result<Vec<u8>, BackendError> {
    let cipher = Aes256Gcm::new_from_slice(key.expose())
        .map_err(|_| BackendError::new(FailureClass::Disabled, "the key is not 32 bytes"))?;
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let aad = aad.bytes();
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext.expose(),
                aad: &aad,
            },
        )
        .map_err(|_| BackendError::new(FailureClass::Disabled, "AES-GCM refused the plaintext"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// The inverse of [`seal`]. Any failure is InvalidCiphertext: AES-GCM cannot tell a
/// tampered blob from another key or another context, and must not be asked to.
pub(crate) fn open(
    key: &SecretBytes,
    ciphertext: &[u8],
    aad: &Aad,
) -> Result<SecretBytes, BackendError> {
    if ciphertext.len() < NONCE_LEN + TAG_LEN {
        return Err(BackendError::invalid_ciphertext(
            "the ciphertext is too short",
        ));
    }
    let cipher = Aes256Gcm::new_from_slice(key.expose())
        .map_err(|_| BackendError::new(FailureClass::Disabled, "the key is not 32 bytes"))?;
    let (nonce, sealed) = ciphertext.split_at(NONCE_LEN);
    let aad = aad.bytes();
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        // Straight into SecretBytes: the plaintext Vec never exists outside it.
        .map(SecretBytes::new)
        .map_err(|_| {
            BackendError::invalid_ciphertext(
                "the ciphertext does not authenticate under this key with this context",
            )
        })
}

/// Reads the key file through [`crate::fs::read_private`] (every check on the open handle,
/// so the file checked is the file read) and classifies each failure (STYLE lesson 3):
/// missing → DESTROYED, permission denied or owner-read bit off → REVOKED (an operator's
/// `chmod 000`), insecure mode, not a regular file, wrong owner or wrong size → DISABLED
/// (with the fix), other I/O → UNREACHABLE.
fn load_key(path: &Path) -> Result<SecretBytes, BackendError> {
    use crate::fs::PrivateFileError as E;
    let shown = path.display();
    let wrong_size = |len: u64| {
        BackendError::new(
            FailureClass::Disabled,
            format!(
                "key file {shown} must be exactly {KEY_LEN} bytes, found {len}; fix: create a new \
                 key with `(umask 077; head -c {KEY_LEN} /dev/urandom > {shown})`"
            ),
        )
    };
    let bytes = crate::fs::read_private(path, KEY_LEN as u64).map_err(|e| {
        let class = match &e {
            E::Missing { .. } => FailureClass::Destroyed,
            E::Denied { .. } => FailureClass::Revoked,
            E::TooLarge { len, .. } => return wrong_size(*len),
            E::NotRegular { .. }
            | E::Insecure { .. }
            | E::Writable { .. }
            | E::WrongOwner { .. } => FailureClass::Disabled,
            E::Io { .. } => FailureClass::Unreachable,
        };
        BackendError::new(class, format!("key file {e}"))
    })?;
    if bytes.len() != KEY_LEN {
        return Err(wrong_size(bytes.len() as u64));
    }
    Ok(SecretBytes::copy_from(&bytes))
}

/// Writes a new random key file at `path` with mode 0600, atomically (temp file, fsync,
/// link into place, fsync the directory). Refuses to overwrite an existing file
/// (`ErrorKind::AlreadyExists`): replacing a key orphans everything it wrapped.
pub fn create_key_file(path: &Path) -> io::Result<()> {
    let key = SecretBytes::random(KEY_LEN);
    crate::fs::write_new_atomic(path, key.expose())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;

    fn aad(ctx: &str) -> Aad {
        Aad::new("primary", BTreeMap::from([("store".into(), ctx.into())]))
    }

    fn setup() -> (tempfile::TempDir, PathBuf, FileBackend) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.bin");
        create_key_file(&path).unwrap();
        let backend = FileBackend::new(FileUri { path: path.clone() });
        (dir, path, backend)
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[tokio::test]
    async fn round_trip() {
        let (_dir, path, b) = setup();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let pt = SecretBytes::copy_from(b"thirty-two bytes of data key!!!!");
        let ct = b.encrypt(&pt, &aad("s1")).await.unwrap();
        assert_eq!(ct.key_version.len(), 8);
        assert_eq!(ct.bytes.len(), NONCE_LEN + pt.len() + TAG_LEN);
        let back = b
            .decrypt(&ct.bytes, &ct.key_version, &aad("s1"))
            .await
            .unwrap();
        assert!(back.plaintext.ct_eq(pt.expose()));
        assert_eq!(
            b.check().await.unwrap().detail,
            format!("key version {}", ct.key_version)
        );
    }

    #[tokio::test]
    async fn wrong_aad_and_tampering_fail_invalid_ciphertext() {
        let (_dir, _path, b) = setup();
        let ct = b
            .encrypt(&SecretBytes::copy_from(b"k"), &aad("s1"))
            .await
            .unwrap();
        let e = b
            .decrypt(&ct.bytes, &ct.key_version, &aad("s2"))
            .await
            .unwrap_err();
        assert_eq!(e.class, FailureClass::InvalidCiphertext);
        for i in [0, NONCE_LEN, ct.bytes.len() - 1] {
            let mut bad = ct.bytes.clone();
            bad[i] ^= 1;
            let e = b
                .decrypt(&bad, &ct.key_version, &aad("s1"))
                .await
                .unwrap_err();
            assert_eq!(e.class, FailureClass::InvalidCiphertext, "byte {i}");
        }
        let e = b
            .decrypt(&ct.bytes[..20], "", &aad("s1"))
            .await
            .unwrap_err();
        assert_eq!(e.class, FailureClass::InvalidCiphertext);
    }

    #[tokio::test]
    async fn group_readable_key_file_is_refused_with_the_fix() {
        let (_dir, path, b) = setup();
        chmod(&path, 0o644);
        for e in [
            b.check().await.unwrap_err(),
            b.encrypt(&SecretBytes::copy_from(b"k"), &aad("s"))
                .await
                .unwrap_err(),
        ] {
            assert_eq!(e.class, FailureClass::Disabled);
            assert!(
                e.detail.contains(&format!("chmod 600 {}", path.display())),
                "{}",
                e.detail
            );
            assert!(e.detail.contains("0644"), "{}", e.detail);
        }
    }

    #[tokio::test]
    async fn wrong_size_is_refused() {
        let (_dir, path, b) = setup();
        fs::write(&path, [7u8; 31]).unwrap();
        let e = b.check().await.unwrap_err();
        assert_eq!(e.class, FailureClass::Disabled);
        assert!(
            e.detail.contains("must be exactly 32 bytes, found 31"),
            "{}",
            e.detail
        );
    }

    #[tokio::test]
    async fn missing_file_is_destroyed_and_chmod_000_is_revoked() {
        let (_dir, path, b) = setup();
        chmod(&path, 0o000);
        // Revoked whether we run as root (mode check) or not (EACCES on open).
        assert_eq!(b.check().await.unwrap_err().class, FailureClass::Revoked);
        chmod(&path, 0o600);
        b.check().await.unwrap();
        fs::remove_file(&path).unwrap();
        let e = b.check().await.unwrap_err();
        assert_eq!(e.class, FailureClass::Destroyed);
        assert!(e.detail.contains("does not exist"));
    }

    #[tokio::test]
    async fn replaced_key_is_a_new_version_and_old_ciphertexts_fail() {
        let (_dir, path, b) = setup();
        let ct = b
            .encrypt(&SecretBytes::copy_from(b"k"), &aad("s"))
            .await
            .unwrap();
        fs::remove_file(&path).unwrap();
        create_key_file(&path).unwrap();
        let ct2 = b
            .encrypt(&SecretBytes::copy_from(b"k"), &aad("s"))
            .await
            .unwrap();
        assert_ne!(ct.key_version, ct2.key_version);
        let e = b
            .decrypt(&ct.bytes, &ct.key_version, &aad("s"))
            .await
            .unwrap_err();
        assert_eq!(e.class, FailureClass::InvalidCiphertext);
        assert!(e.detail.contains(&ct.key_version), "{}", e.detail);
    }

    #[test]
    fn create_key_file_refuses_to_overwrite() {
        let (_dir, path, _b) = setup();
        let before = fs::read(&path).unwrap();
        let e = create_key_file(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), before);
        // No temp file is left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }
}
