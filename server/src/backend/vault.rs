//! `vault://…`: a Vault or OpenBao Transit key.
//!
//! # URI
//!
//! ```text
//! vault://HOST[:PORT]/<mount>/<key>?TOKEN_FILE=/path | TOKEN_ENV=NAME
//!                                   [&TLS=true|false][&NAMESPACE=ns][&CA_FILE=/path]
//! ```
//!
//! - `HOST[:PORT]`: the Vault API address; the port defaults to 8200.
//! - `<mount>/<key>`: the transit mount (may have several segments, `kms/transit`) and key.
//! - `TOKEN_FILE` (absolute path, not readable by other users) or `TOKEN_ENV` (a variable
//!   of the daemon's environment): exactly one. There is no inline token parameter: a URI
//!   travels through configs, tickets and logs. Token loading and renewal: see
//!   `vault/token.rs` (renew-on-check at half the TTL; a Vault Agent sink file is re-read).
//! - `TLS`: default `true` (https, verified against the system roots plus `CA_FILE`, a PEM
//!   bundle). `TLS=false` (plain http) is accepted only for a loopback host.
//! - `NAMESPACE`: sent as `X-Vault-Namespace` (Vault Enterprise / OpenBao namespaces).
//! - Any other parameter is an error. `VAULT_ADDR`, `VAULT_TOKEN`, `VAULT_SKIP_VERIFY`…
//!   in the daemon's environment are ignored: the URI says everything.
//!
//! The key id recorded in envelopes is `vault://HOST:PORT/[NAMESPACE/]<mount>/<key>`.
//!
//! # Operations
//!
//! - **wrap**: read the key (see below), then `POST <mount>/encrypt/<key>` with
//!   `associated_data` = [`Aad::bytes`] (base64). The key must be an AEAD type
//!   (`aes256-gcm96`, the default, `aes128-gcm96`, `chacha20-poly1305`,
//!   `xchacha20-poly1305`). The same bytes are sent as `context`, which a `derived` key
//!   needs for key derivation (so each key name and context gets its own derived key) and
//!   a plain key ignores. The envelope stores Vault's ciphertext string
//!   (`vault:vN:…`) as is, and `key_version` = `vN`, Vault's own spelling.
//! - **unwrap**: `POST <mount>/decrypt/<key>` with the same `associated_data` and
//!   `context`.
//! - **status check**: `GET <mount>/keys/<key>` (metadata only, no crypto), then
//!   `sys/capabilities-self` on the encrypt and decrypt paths: a token whose policy was
//!   cut to `read` is REVOKED at the next check, not only at the next unwrap (see
//!   `vault/capabilities.rs`, also for tokens without the `default` policy).
//!
//! **No key is ever created by accident.** Vault's encrypt endpoint creates a missing key
//! ("upsert"). The daemon reads the key before every encrypt and stops if it is missing
//! (DESTROYED); the policy below grants `update` but not `create` on the encrypt path, so
//! Vault itself refuses an upsert (403) even in the race where the key is deleted between
//! the read and the encrypt; and operators can also set `disable_upsert=true` on
//! `<mount>/config/keys`.
//!
//! # Key states
//!
//! | Vault / OpenBao says | state |
//! | --- | --- |
//! | key readable, usable | ACTIVE |
//! | key `soft_deleted` (OpenBao: `DELETE <mount>/keys/<key>/soft-delete`, undone by `POST …/soft-delete-restore`) | DISABLED |
//! | key type cannot bind associated data (e.g. `rsa-2048`) | DISABLED (fix the config) |
//! | 401 / 403 (token revoked, expired, policy changed) on any call | REVOKED |
//! | capabilities-self: no `update` on `<mount>/encrypt/<key>` or `<mount>/decrypt/<key>` | REVOKED |
//! | 404 (key deleted, mount gone) | DESTROYED |
//! | connection error, timeout, 429, 5xx (503 sealed / standby) | UNREACHABLE |
//!
//! Soft deletion is OpenBao's reversible switch-off for a transit key, and the contract's
//! Vault Transit example for DISABLED. HashiCorp Vault has no such switch (its keys read
//! as never soft-deleted); there, take the daemon's policy away (REVOKED) instead.
//!
//! Vault answers 400 for several different refusals (soft-deleted key, key not found on
//! decrypt, wrong AAD, retired version, a request it cannot take). Rather than parse its
//! English, a 400 is followed by one key read, and the KEY's state decides: missing →
//! DESTROYED, soft-deleted → DISABLED. A healthy key means the request was at fault: the
//! ciphertext on decrypt (InvalidCiphertext), the request on encrypt (InvalidRequest).
//! Neither changes the key's state: a caller cannot switch a key off for everyone by
//! sending something Vault refuses.
//!
//! # Limits
//!
//! Vault has no per-request limit near the contract's (its `max_request_size` is 32 MiB),
//! so nothing is refused before the call. UnwrapKey ciphertexts longer than
//! [`MAX_CIPHERTEXT`] (the base64 text of 8 KiB, plus the `vault:vN:` prefix) are refused
//! without a call: no ciphertext of a 4 KiB plaintext is that long.
//!
//! A blob whose version is below the key's `min_decryption_version` (the operator retired
//! that version) fails **DISABLED for that version only** (`version_scoped`, as a disabled
//! Cloud KMS version): the key itself stays ACTIVE and new wraps work, only that blob is
//! unreadable; the detail names the version. Not InvalidCiphertext: a store file under a
//! retired version would then read as corrupt.
//!
//! # Vault policy for the daemon's token
//!
//! ```hcl
//! path "transit/encrypt/KEY" { capabilities = ["update"] }   # no "create": no upsert
//! path "transit/decrypt/KEY" { capabilities = ["update"] }
//! path "transit/keys/KEY"    { capabilities = ["read"] }
//! ```
//!
//! Plus Vault's `default` policy (for `lookup-self` / `renew-self`).
//!
//! # Secrets in memory
//!
//! The token and plaintexts live in zeroized buffers on our side; vaultrs and its HTTP
//! client copy them into request headers and bodies we cannot wipe.

mod capabilities;
mod ciphertext;
mod classify;
mod client;
mod exec;
mod token;
mod uri;

use std::fmt;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use vaultrs::api::transit::requests::{DecryptDataRequest, EncryptDataRequest};
use vaultrs::client::VaultClient;
use zeroize::Zeroizing;

use super::{Aad, BackendError, Ciphertext, Decrypted, FailureClass, KeyHealth, KmsBackend};
use crate::secret::SecretBytes;
use capabilities::Rights;
pub use ciphertext::MAX_CIPHERTEXT;
use classify::is_denied;
use classify::{after_400, classify, http_status, KeyInfo, Op};
use client::build_client;
use token::{Lease, Token};
pub use uri::{TokenSource, VaultUri};

/// One Vault Transit key.
pub struct VaultBackend {
    uri: VaultUri,
    conn: RwLock<Conn>,
    lease: tokio::sync::Mutex<Lease>,
}

/// The client and the token it was built with; replaced together when the token changes.
struct Conn {
    client: Arc<VaultClient>,
    token: Token,
}

impl fmt::Debug for VaultBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultBackend")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl VaultBackend {
    /// Loads the token and builds the client. Does not contact Vault: the daemon starts
    /// while Vault is down and reports UNREACHABLE until it answers.
    pub async fn new(uri: VaultUri) -> Result<Self, String> {
        let token = token::load(uri.token_source())?;
        let client = Arc::new(build_client(&uri, &token)?);
        Ok(Self {
            uri,
            conn: RwLock::new(Conn { client, token }),
            lease: tokio::sync::Mutex::new(Lease::default()),
        })
    }

    fn client(&self) -> Arc<VaultClient> {
        // A poisoned lock only means a panic elsewhere; the Conn inside is still whole.
        self.conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .client
            .clone()
    }

    /// Picks up a changed token file (a Vault Agent sink rewrites it on re-auth). A file
    /// that cannot be read now keeps the current token: Vault decides whether it works.
    fn reload_token(&self) -> bool {
        if !matches!(self.uri.token_source(), TokenSource::File(_)) {
            return false;
        }
        let fresh = match token::load(self.uri.token_source()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(uri = %self.uri.redacted(), error = %e, "keeping the current Vault token");
                return false;
            }
        };
        let mut conn = self.conn.write().unwrap_or_else(|p| p.into_inner());
        if conn.token == fresh {
            return false;
        }
        match build_client(&self.uri, &fresh) {
            Ok(c) => {
                *conn = Conn {
                    client: Arc::new(c),
                    token: fresh,
                };
                tracing::info!(uri = %self.uri.redacted(), "the Vault token file changed; using the new token");
                true
            }
            Err(e) => {
                tracing::warn!(uri = %self.uri.redacted(), error = %e, "keeping the current Vault token");
                false
            }
        }
    }

    /// `GET <mount>/keys/<key>`, classified; Ok only if the key is usable by us.
    async fn read_key(&self, client: &VaultClient) -> Result<KeyInfo, BackendError> {
        let path = format!("keys/{}", self.uri.key());
        // kv1::get is vaultrs's generic "GET <mount>/<path> and return its data"; its typed
        // transit read lacks `soft_deleted` and `latest_version`.
        let info: KeyInfo = vaultrs::kv1::get(client, self.uri.mount(), &path)
            .await
            .map_err(|e| classify(Op::ReadKey, &e))?;
        info.usable(self.uri.mount(), self.uri.key())?;
        Ok(info)
    }

    /// A 400 from encrypt/decrypt: one key read says whether the key or the request is at
    /// fault (see the module docs). Only the key read can change the key's state.
    async fn explain_400(
        &self,
        client: &VaultClient,
        op: Op,
        vault_says: &str,
        blob_version: Option<u64>,
    ) -> BackendError {
        match self.read_key(client).await {
            Ok(info) => after_400(op, &info, vault_says, blob_version),
            Err(e) => e,
        }
    }
}

#[async_trait]
impl KmsBackend for VaultBackend {
    async fn encrypt(
        &self,
        plaintext: &SecretBytes,
        aad: &Aad,
    ) -> Result<Ciphertext, BackendError> {
        let client = self.client();
        // The guard against Vault's upsert: never encrypt to a key we have not just seen.
        self.read_key(&client).await?;
        let ad = B64.encode(aad.bytes());
        let pt = Zeroizing::new(B64.encode(plaintext.expose()));
        let endpoint = EncryptDataRequest::builder()
            .mount(self.uri.mount())
            .name(self.uri.key())
            .plaintext(pt.as_str())
            .associated_data(ad.as_str())
            .context(ad.as_str())
            .build()
            .map_err(|e| BackendError::unreachable(format!("Vault encrypt request: {e}")))?;
        let resp = match exec::exec(&*client, endpoint).await {
            Ok(r) => r,
            Err(e) => {
                return Err(match http_status(&e) {
                    Some((400, says)) => self.explain_400(&client, Op::Encrypt, &says, None).await,
                    // 403 on encrypt also means "missing key, no create capability".
                    Some((403, _)) => match self.read_key(&client).await {
                        Err(read) if read.class == FailureClass::Destroyed => read,
                        _ => classify(Op::Encrypt, &e),
                    },
                    _ => classify(Op::Encrypt, &e),
                });
            }
        };
        let version = ciphertext::version(&resp.ciphertext).ok_or_else(|| {
            BackendError::unreachable("Vault's ciphertext has no vault:vN: prefix")
        })?;
        Ok(Ciphertext {
            bytes: resp.ciphertext.into_bytes(),
            key_version: format!("v{version}"),
        })
    }

    async fn decrypt(
        &self,
        ciphertext: &[u8],
        key_version: &str,
        aad: &Aad,
    ) -> Result<Decrypted, BackendError> {
        let (ct, version) = ciphertext::parse(ciphertext, key_version)?;
        let client = self.client();
        let ad = B64.encode(aad.bytes());
        let endpoint = DecryptDataRequest::builder()
            .mount(self.uri.mount())
            .name(self.uri.key())
            .ciphertext(ct)
            .associated_data(ad.as_str())
            .context(ad.as_str())
            .build()
            .map_err(|e| BackendError::unreachable(format!("Vault decrypt request: {e}")))?;
        let resp = exec::exec(&*client, endpoint).await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                return Err(match http_status(&e) {
                    Some((400, says)) => {
                        self.explain_400(&client, Op::Decrypt, &says, Some(version))
                            .await
                    }
                    _ => classify(Op::Decrypt, &e),
                })
            }
        };
        let b64 = Zeroizing::new(resp.plaintext);
        let bytes = B64.decode(b64.as_bytes()).map_err(|_| {
            BackendError::unreachable("Vault returned a plaintext that is not base64")
        })?;
        // The version comes from the ciphertext Vault just authenticated.
        Ok(Decrypted {
            plaintext: SecretBytes::new(bytes),
            key_version: Some(format!("v{version}")),
        })
    }

    async fn check(&self) -> Result<KeyHealth, BackendError> {
        let mut lease = self.lease.lock().await;
        if self.reload_token() {
            lease.reset();
        }
        let client = self.client();
        let info = self.read_key(&client).await?;
        let rights = capabilities::check(&client, self.uri.mount(), self.uri.key()).await?;
        let mut detail = format!("latest version v{}", info.latest_version);
        if info.min_decryption_version > 1 {
            detail.push_str(&format!(
                ", min_decryption_version {}",
                info.min_decryption_version
            ));
        }
        if rights == Rights::Unknown {
            detail.push_str("; cannot check the token's encrypt/decrypt rights (sys/capabilities-self refused: attach the `default` policy), a lost right shows at the next wrap or unwrap");
        }
        if let Some(note) = lease.maintain(&client).await {
            detail.push_str("; ");
            detail.push_str(&note);
        }
        Ok(KeyHealth {
            detail,
            version: Some(format!("v{}", info.latest_version)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn new_does_not_contact_vault_and_debug_hides_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s.TOPSECRETTOKEN\n").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        // Port 9 (discard) on loopback: nothing listens, and new() must not care.
        let raw = format!(
            "vault://127.0.0.1:9/transit/k?TLS=false&TOKEN_FILE={}",
            path.display()
        );
        let uri = VaultUri::parse(&url::Url::parse(&raw).unwrap()).unwrap();
        let b = VaultBackend::new(uri).await.unwrap();
        let d = format!("{b:?}");
        assert!(!d.contains("TOPSECRET"), "{d}");
        let e = b.check().await.unwrap_err();
        assert_eq!(e.class, FailureClass::Unreachable, "{e}");
        assert!(!e.detail.contains("TOPSECRET"), "{e}");
    }
}
