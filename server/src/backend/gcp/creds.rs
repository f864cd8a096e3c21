//! The credentials a `gs`/`gcp-kms` URI names ([`for_uri`]): none (a local fake), the
//! Application Default Credentials, a service-account key, or the two CockroachDB adds,
//! `BEARER_TOKEN` (a ready OAuth2 access token) and `ASSUME_ROLE` (service-account
//! impersonation through a delegation chain), all built on google-cloud-auth.

use std::fmt;
use std::sync::Arc;

use google_cloud_auth::credentials::{
    anonymous, impersonated, service_account, CacheableResource, Credentials, CredentialsProvider,
    EntityTag,
};
use google_cloud_auth::errors::CredentialsError;
use tonic::codegen::http::{header::AUTHORIZATION, Extensions, HeaderMap, HeaderValue};

use super::uri::{GcpAuth, GcpUri, Impersonate};
use crate::secret::SecretBytes;

/// The scope CockroachDB asks for (`kms.DefaultAuthScopes()`), for impersonated tokens.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The universe (the `googleapis.com` of Google Cloud). Pinned so that building the client
/// never asks the metadata server which universe it is in: `new` must not touch the network.
const DEFAULT_UNIVERSE: &str = "googleapis.com";

/// The credentials `uri` names, impersonating its `ASSUME_ROLE` chain if it has one. Reads
/// files and signs a JWT locally; contacts no token or metadata server.
pub(super) async fn for_uri(uri: &GcpUri) -> Result<Credentials, String> {
    let base = base(uri).await?;
    match uri.impersonate() {
        Some(to) => impersonate(base, to).map_err(|why| format!("{}: {why}", uri.redacted())),
        None => Ok(base),
    }
}

async fn base(uri: &GcpUri) -> Result<Credentials, String> {
    match uri.auth() {
        GcpAuth::None => Ok(anonymous::Builder::new().build()),
        GcpAuth::Bearer(token) => bearer(token).map_err(|why| format!("{}: {why}", uri.redacted())),
        GcpAuth::Implicit => {
            let universe = std::env::var("GOOGLE_CLOUD_UNIVERSE_DOMAIN")
                .unwrap_or_else(|_| DEFAULT_UNIVERSE.to_owned());
            google_cloud_auth::credentials::Builder::default()
                .with_universe_domain(universe)
                .build()
                .map_err(|_| {
                    format!(
                        "{}: cannot load Application Default Credentials; check GOOGLE_APPLICATION_CREDENTIALS or run gcloud auth application-default login",
                        uri.redacted()
                    )
                })
        }
        GcpAuth::Specified(json) => {
            let bad = || {
                format!(
                    "{}: CREDENTIALS is not a usable service-account key (its private_key must be the PEM from the JSON key file)",
                    uri.redacted()
                )
            };
            // google-cloud-auth takes a serde_json::Value; that copy is outside our zeroizing.
            let value: serde_json::Value =
                serde_json::from_slice(json.expose()).map_err(|_| bad())?;
            let creds = service_account::Builder::new(value)
                .build()
                .map_err(|_| bad())?;
            // Service-account tokens are self-signed JWTs, made locally: signing one now
            // catches a broken private key at config load instead of at the first wrap.
            creds.headers(Default::default()).await.map_err(|_| bad())?;
            Ok(creds)
        }
    }
}

/// `BEARER_TOKEN`: sent as `Authorization: Bearer …` on every call, as CockroachDB's
/// static token source does. It is never refreshed: when it expires, calls fail with 401
/// and the key reads as unreachable or revoked until the URI carries a new token.
struct Bearer(HeaderValue);

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bearer(REDACTED)")
    }
}

impl CredentialsProvider for Bearer {
    async fn headers(
        &self,
        _: Extensions,
    ) -> Result<CacheableResource<HeaderMap>, CredentialsError> {
        let mut data = HeaderMap::new();
        data.insert(AUTHORIZATION, self.0.clone());
        Ok(CacheableResource::New {
            entity_tag: EntityTag::new(),
            data,
        })
    }

    async fn universe_domain(&self) -> Option<String> {
        Some(DEFAULT_UNIVERSE.to_owned())
    }
}

/// Credentials that send `token` as is. The error never shows the token.
pub(super) fn bearer(token: &Arc<SecretBytes>) -> Result<Credentials, String> {
    let mut value = zeroize::Zeroizing::new(b"Bearer ".to_vec());
    value.extend_from_slice(token.expose());
    let mut header = HeaderValue::from_bytes(&value)
        .ok()
        .filter(|_| token.expose().iter().all(u8::is_ascii_graphic))
        .ok_or(
            "BEARER_TOKEN is not an access token: it has spaces or characters a token never holds",
        )?;
    // Keeps the value out of hyper's and http's Debug output.
    header.set_sensitive(true);
    Ok(Credentials::from(Bearer(header)))
}

/// `source` impersonating `to.target` through `to.delegates`, via the IAM Credentials API
/// (`generateAccessToken`), as CockroachDB's `createImpersonateCredentials` does.
pub(super) fn impersonate(source: Credentials, to: &Impersonate) -> Result<Credentials, String> {
    impersonated::Builder::from_source_credentials(source)
        .with_target_principal(to.target.clone())
        .with_delegates(to.delegates.clone())
        .with_scopes([SCOPE])
        .build()
        .map_err(|_| {
            "cannot build the ASSUME_ROLE (impersonated service account) credentials".to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bearer_sends_the_token_and_never_shows_it() {
        let creds = bearer(&Arc::new(SecretBytes::new(b"ya29.s3cr3t".to_vec()))).unwrap();
        let CacheableResource::New { data, .. } = creds.headers(Extensions::new()).await.unwrap()
        else {
            panic!("a static token is always new data");
        };
        assert_eq!(data.get(AUTHORIZATION).unwrap(), "Bearer ya29.s3cr3t");
        assert!(!format!("{creds:?}").contains("s3cr3t"));
        assert!(!format!("{data:?}").contains("s3cr3t"));
        let e = bearer(&Arc::new(SecretBytes::new(b"s3cr3t x".to_vec()))).unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    // The token cache spawns its refresher: like `GcpBackend::new`, this runs in a runtime.
    #[tokio::test]
    async fn impersonation_builds_from_any_source() {
        let source = Credentials::from(Bearer(HeaderValue::from_static("Bearer t")));
        let to = Impersonate {
            target: "kms@p.iam.gserviceaccount.com".into(),
            delegates: vec!["d1@p.iam.gserviceaccount.com".into()],
        };
        assert!(impersonate(source, &to).is_ok());
    }
}
