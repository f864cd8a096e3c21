//! The Vault HTTP client, built from the URI alone: nothing in the daemon's environment
//! (VAULT_ADDR, VAULT_TOKEN, VAULT_SKIP_VERIFY, …) changes where it connects or what it
//! trusts.

use std::time::Duration;

use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

use super::token::Token;
use super::uri::VaultUri;

/// Per-request HTTP timeout. The daemon's retry policy cuts an attempt sooner if it is
/// configured shorter; this only keeps a hung connection from living forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn build_client(uri: &VaultUri, token: &Token) -> Result<VaultClient, String> {
    // Every setting is given explicitly so that VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT,
    // VAULT_SKIP_VERIFY or VAULT_CLIENT_CERT in the daemon's environment change nothing.
    // reqwest (built with `rustls-no-provider`) panics without a process-wide crypto
    // provider. The daemon installs aws-lc-rs at start; this makes the backend safe in any
    // other embedding (tools, tests). A no-op when one is installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let address = uri.address();
    url::Url::parse(&address).map_err(|_| "cannot form the Vault address".to_string())?;
    let mut b = VaultClientSettingsBuilder::default();
    b.address(&address)
        .token(token.expose())
        .verify(true)
        .ca_certs(
            uri.ca_file()
                .map(|p| p.display().to_string())
                .into_iter()
                .collect(),
        )
        .identity(None)
        .timeout(Some(REQUEST_TIMEOUT))
        .namespace(uri.namespace().map(str::to_owned))
        .wrapping(false);
    // The builder's error could only be about the address, never the token.
    let settings = b
        .build()
        .map_err(|_| "invalid Vault client settings".to_string())?;
    VaultClient::new(settings)
        .map_err(|e| format!("cannot set up the Vault client for {}: {e}", uri.redacted()))
}
