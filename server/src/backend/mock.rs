//! `mock://NAME`: the scriptable mock KMS. (stub: being written)
use async_trait::async_trait;

use super::{Aad, BackendError, Ciphertext, KeyHealth, KmsBackend};
use crate::key_uri::MockUri;
use crate::secret::SecretBytes;

#[derive(Debug)]
pub struct MockBackend {
    #[allow(dead_code)]
    uri: MockUri,
}

impl std::fmt::Debug for MockUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MockUri({})", self.name)
    }
}

impl MockBackend {
    pub fn named(name: &str) -> Self {
        Self { uri: MockUri { name: name.to_owned() } }
    }
}

#[async_trait]
impl KmsBackend for MockBackend {
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
