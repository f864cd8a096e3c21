//! The daemon's Vault token: where it comes from, and keeping it alive.
//!
//! - **Loading.** `TOKEN_FILE` is read at start and re-read at every status check, so a
//!   Vault Agent file sink (or an operator) can swap the token without a restart. It is
//!   read by [`crate::fs::read_private`], the daemon's one reader of secret files, which
//!   checks the OPEN handle (no check-then-read race): a regular file, owned by the
//!   daemon's user or root, with no access for group or others (`chmod 600`; in Kubernetes
//!   `defaultMode: 0400`; a Vault Agent `file` sink needs `mode = 0600`, its default
//!   0640 is refused). `TOKEN_ENV` is read once at start.
//! - **Renewal (renew-on-check).** At the first status check with a token, the daemon
//!   looks it up (`auth/token/lookup-self`); from then on it tracks the expiry locally and,
//!   at a status check that finds less than half the token's TTL (or period) left, renews
//!   it (`auth/token/renew-self`) by that TTL. The revocation poller checks every
//!   `poll_interval`, so the token's TTL must be well above twice the poll interval. A
//!   token that is not renewable, or that reached its max TTL, is used until it expires,
//!   and the status detail says when that is; an expired token answers 403: REVOKED.
//!   Both calls are in Vault's `default` policy; without it renewal is skipped (warned).
//!
//! The token never reaches a log, an error or `Debug`: [`Token`] prints `REDACTED`, and no
//! message here formats it.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use vaultrs::client::VaultClient;
use zeroize::Zeroizing;

use super::classify::{classify, Op};
use super::uri::TokenSource;

/// Longest token file we read: tokens are ~100 bytes; anything bigger is a wrong path.
const MAX_TOKEN_FILE: u64 = 16 * 1024;

/// A Vault token. Zeroized on drop; `Debug` prints `REDACTED`; no `Display`.
pub(super) struct Token(Zeroizing<String>);

impl Token {
    pub(super) fn expose(&self) -> &str {
        &self.0
    }

    /// Tokens are printable ASCII without spaces; anything else would also make the HTTP
    /// client panic when it puts the token in a header.
    fn validate(raw: &str, from: &str) -> Result<Self, String> {
        let t = raw.trim();
        if t.is_empty() {
            return Err(format!("the Vault token from {from} is empty"));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the Vault token from {from} has characters a token cannot have (spaces or non-ASCII)"
            ));
        }
        Ok(Self(Zeroizing::new(t.to_owned())))
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        *self.0 == *other.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(REDACTED)")
    }
}

/// Reads the token from its source. Errors name the file or variable, never the content.
pub(super) fn load(source: &TokenSource) -> Result<Token, String> {
    match source {
        TokenSource::File(path) => {
            let raw = crate::fs::read_private(path, MAX_TOKEN_FILE)
                .map_err(|e| format!("Vault token file: {e}"))?;
            let text = std::str::from_utf8(&raw).map_err(|_| {
                format!(
                    "the Vault token file {} is not text: a token is printable ASCII",
                    path.display()
                )
            })?;
            Token::validate(text, &format!("file {}", path.display()))
        }
        TokenSource::Env(name) => {
            let raw = Zeroizing::new(std::env::var(name).map_err(|_| {
                format!("environment variable {name} (TOKEN_ENV) is not set or not UTF-8")
            })?);
            Token::validate(&raw, &format!("environment variable {name}"))
        }
    }
}

/// What we know about the current token's lifetime.
#[derive(Debug, Default)]
pub(super) struct Lease {
    info: Option<LeaseInfo>,
    /// Lookup was refused (no `default` policy): do not ask again for this token.
    lookup_denied: bool,
}

#[derive(Debug, Clone, Copy)]
struct LeaseInfo {
    renewable: bool,
    /// The TTL a renewal asks for: the token's period, else its creation TTL.
    granted: Duration,
    /// `None`: the token does not expire (e.g. a root token).
    expires: Option<Instant>,
}

/// The fields of `lookup-self` we use. Deliberately not vaultrs's `LookupTokenResponse`,
/// which also holds the token itself (`id`) and prints it in `Debug`.
#[derive(Deserialize)]
struct SelfLookup {
    ttl: u64,
    #[serde(default)]
    renewable: Option<bool>,
    #[serde(default)]
    creation_ttl: Option<u64>,
    #[serde(default)]
    period: Option<u64>,
}

impl Lease {
    /// Forgets what we knew: called when the token changes.
    pub(super) fn reset(&mut self) {
        *self = Self::default();
    }

    /// Looks the token up if needed and renews it if less than half its TTL is left.
    /// Never fails the status check (the key read already proved the token works);
    /// returns a note for the status detail, e.g. "token expires in 4m (not renewable)".
    pub(super) async fn maintain(&mut self, client: &VaultClient) -> Option<String> {
        if self.info.is_none() && !self.lookup_denied {
            // lookup-self is a GET on auth/token/lookup-self; kv1::get is vaultrs's
            // generic "GET a path, return its data" and lets us pick the fields.
            match vaultrs::kv1::get::<SelfLookup>(client, "auth/token", "lookup-self").await {
                Ok(l) => {
                    let granted = l
                        .period
                        .filter(|p| *p > 0)
                        .or(l.creation_ttl)
                        .unwrap_or(l.ttl);
                    self.info = Some(LeaseInfo {
                        renewable: l.renewable.unwrap_or(false),
                        granted: Duration::from_secs(granted),
                        expires: (l.ttl > 0).then(|| Instant::now() + Duration::from_secs(l.ttl)),
                    });
                }
                Err(e) => {
                    if super::is_denied(&e) {
                        self.lookup_denied = true;
                    }
                    let e = classify(Op::LookupSelf, &e);
                    tracing::warn!(error = %e.detail, "cannot look up the Vault token (is the `default` policy attached?); token renewal is off until it works");
                    return None;
                }
            }
        }
        let info = self.info?;
        let expires = info.expires?;
        let left = expires.saturating_duration_since(Instant::now());
        if !info.renewable || info.granted.is_zero() {
            return Some(format!("token expires in {} (not renewable)", human(left)));
        }
        if left >= info.granted / 2 {
            return None;
        }
        let increment = format!("{}s", info.granted.as_secs());
        match vaultrs::token::renew_self(client, Some(&increment)).await {
            Ok(auth) => {
                let new_left = Duration::from_secs(auth.lease_duration);
                tracing::info!(ttl = %human(new_left), "renewed the Vault token");
                self.info = Some(LeaseInfo {
                    // No longer than before: the max TTL is reached; stop renewing.
                    renewable: auth.renewable && new_left > left,
                    expires: Some(Instant::now() + new_left),
                    ..info
                });
                if new_left <= left {
                    tracing::warn!(ttl = %human(new_left), "the Vault token reached its max TTL; give the daemon a new token before it expires");
                }
                None
            }
            Err(e) => {
                let e = classify(Op::RenewSelf, &e);
                tracing::warn!(error = %e.detail, "cannot renew the Vault token");
                Some(format!("token renewal failed; expires in {}", human(left)))
            }
        }
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn file_with(mode: u32, content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    #[test]
    fn token_file_is_trimmed_and_redacted() {
        let f = file_with(0o600, "s.SECRETTOKEN\n");
        let t = load(&TokenSource::File(f.path().into())).unwrap();
        assert_eq!(t.expose(), "s.SECRETTOKEN");
        assert!(!format!("{t:?}").contains("SECRET"));
    }

    #[test]
    fn refuses_world_readable_empty_and_odd_files() {
        // Group-readable is refused too (the old check let 0640 through).
        for mode in [0o644, 0o640, 0o604] {
            let f = file_with(mode, "s.SECRETTOKEN");
            let e = load(&TokenSource::File(f.path().into())).unwrap_err();
            assert!(
                e.contains("chmod 600") && !e.contains("SECRET"),
                "{mode:o}: {e}"
            );
        }
        let f = file_with(0o600, "s.\u{ff}");
        std::fs::write(f.path(), b"s.\xff\xfe").unwrap();
        let e = load(&TokenSource::File(f.path().into())).unwrap_err();
        assert!(e.contains("not text"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = load(&TokenSource::File(dir.path().into())).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let f = file_with(0o600, "  \n");
        assert!(load(&TokenSource::File(f.path().into()))
            .unwrap_err()
            .contains("empty"));
        let f = file_with(0o600, "s.SECRET TOKEN");
        let e = load(&TokenSource::File(f.path().into())).unwrap_err();
        assert!(!e.contains("SECRET TOKEN"), "{e}");
        let e = load(&TokenSource::File("/nonexistent/token".into())).unwrap_err();
        assert!(e.contains("/nonexistent/token"), "{e}");
    }

    #[test]
    fn missing_env_is_named() {
        let e = load(&TokenSource::Env("KMS_BROKER_TEST_SURELY_UNSET_VAR".into())).unwrap_err();
        assert!(e.contains("KMS_BROKER_TEST_SURELY_UNSET_VAR"), "{e}");
    }
}
