//! `file:///path`: a local 32-byte key file, AES-256-GCM. (stub: being written)
use async_trait::async_trait;

use super::{Aad, BackendError, Ciphertext, KeyHealth, KmsBackend};
use crate::key_uri::FileUri;
use crate::secret::SecretBytes;

#[derive(Debug)]
pub struct FileBackend {
    #[allow(dead_code)]
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
}

#[async_trait]
impl KmsBackend for FileBackend {
    async fn encrypt(&self, _p: &SecretBytes, _aad: &Aad) -> Result<Ciphertext, BackendError> {
        todo!()
    }
    async fn decrypt(&self, _c: &[u8], _v: &str, _aad: &Aad) -> Result<SecretBytes, BackendError> {
        todo!()
    }
    async fn check(&self) -> Result<KeyHealth, BackendError> {
        todo!()
    }
}
