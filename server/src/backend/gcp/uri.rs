//! `gs:///projects/P/locations/L/keyRings/R/cryptoKeys/K?AUTH=…` (or `gcp-kms:///…`, the
//! same URI under CockroachDB's other scheme name): a Google Cloud KMS key, parsed once at
//! config load (STYLE lesson 6). Every URI CockroachDB's `pkg/cloud/gcp/gcp_kms.go` accepts
//! parses here with the meaning CockroachDB gives it.
//!
//! Parameters (names are case-sensitive, each at most once, anything else is an error):
//! - `AUTH=implicit`: Application Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS`,
//!   `gcloud auth application-default login`, or the metadata server on GCE/GKE/Cloud Run).
//!   As in CockroachDB, `CREDENTIALS` and `BEARER_TOKEN` are then ignored.
//! - `AUTH=specified` (or no `AUTH`, as in CockroachDB) with `CREDENTIALS=<base64 of a
//!   service-account key JSON>`, or else `BEARER_TOKEN=<OAuth2 access token>`.
//!   `CREDENTIALS` wins when both are given, as in CockroachDB.
//! - `ASSUME_ROLE=SA` or `ASSUME_ROLE=D1,D2,SA`: impersonate service account `SA`, through
//!   the delegation chain `D1`, `D2`, on top of the credentials above (CockroachDB's form:
//!   the last entry is the target, the ones before it the delegates).
//! - `GCP_ENDPOINT=<url>`: another endpoint than `https://cloudkms.googleapis.com` (Private
//!   Service Connect, a regional endpoint, the test fake). `http://` only towards loopback.
//! - `AUTH=none`: send no credentials at all. Allowed only together with a loopback
//!   `GCP_ENDPOINT` (`http://127.0.0.1:PORT`, `localhost`, `[::1]`): it exists for the test
//!   fake, and can never reach Google.
//!
//! A path ending in `/cryptoKeyVersions/N` names the key: CockroachDB strips the version
//! (Encrypt always uses the primary version; Decrypt finds the version in the ciphertext).
//!
//! `CREDENTIALS` and `BEARER_TOKEN` are secret: they live in [`SecretBytes`], `redacted()`
//! and `Debug` hide them, and no parse error echoes them.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use url::Url;

use crate::backend::{net, params::Params};
use crate::secret::SecretBytes;

/// Parameters whose values may be shown; everything else is redacted (allow-list).
const PUBLIC_PARAMS: &[&str] = &["AUTH", "GCP_ENDPOINT", "ASSUME_ROLE"];

/// Every parameter a `gs:///` URI takes.
const KNOWN_PARAMS: &[&str] = &[
    "AUTH",
    "CREDENTIALS",
    "BEARER_TOKEN",
    "ASSUME_ROLE",
    "GCP_ENDPOINT",
];

const SHAPE: &str = "gs:///projects/P/locations/L/keyRings/R/cryptoKeys/K?AUTH=implicit";

/// How the backend authenticates to Cloud KMS.
#[derive(Clone)]
pub enum GcpAuth {
    /// Application Default Credentials.
    Implicit,
    /// The service-account key JSON decoded from `CREDENTIALS`.
    Specified(Arc<SecretBytes>),
    /// A ready OAuth2 access token from `BEARER_TOKEN`, sent as is until it expires.
    Bearer(Arc<SecretBytes>),
    /// No credentials (loopback test endpoints only).
    None,
}

/// `ASSUME_ROLE=D1,D2,TARGET`: impersonate `target` through the delegation chain `delegates`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Impersonate {
    pub target: String,
    pub delegates: Vec<String>,
}

/// A parsed `gs:///` key URI.
#[derive(Clone)]
pub struct GcpUri {
    /// `projects/P/locations/L/keyRings/R/cryptoKeys/K`: the CryptoKey resource name.
    key_name: String,
    auth: GcpAuth,
    /// Validated endpoint override, without a trailing slash.
    endpoint: Option<String>,
    /// `ASSUME_ROLE`: the service account to impersonate, with the credentials of `auth`.
    impersonate: Option<Impersonate>,
    /// Computed once, so the raw URI (with its credentials) is not kept around.
    redacted: String,
}

impl GcpUri {
    /// Parses a `gs:///` URI. Errors never contain a parameter value.
    pub fn parse(url: &Url) -> Result<Self, String> {
        if !matches!(url.scheme(), "gs" | "gcp-kms") {
            return Err(format!("not a gs:/// or gcp-kms:/// URI; expected {SHAPE}"));
        }
        if url.host_str().is_some_and(|h| !h.is_empty())
            || url.port().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(format!(
                "gs URIs have no host: write three slashes, {SHAPE}"
            ));
        }
        if url.fragment().is_some() {
            return Err("gs URIs take no #fragment".into());
        }
        let key_name = parse_key_name(url.path())?;

        let mut p = Params::read(url, KNOWN_PARAMS, "gs")?;
        let (auth, creds, bearer, endpoint, roles) = (
            p.take("AUTH"),
            p.take("CREDENTIALS"),
            p.take("BEARER_TOKEN").map(zeroize::Zeroizing::new),
            p.take("GCP_ENDPOINT"),
            p.take("ASSUME_ROLE"),
        );
        let endpoint = endpoint
            .map(|e| net::endpoint(&e, "GCP_ENDPOINT"))
            .transpose()?;
        let auth = match auth.as_deref() {
            // CockroachDB: implicit ignores CREDENTIALS and BEARER_TOKEN.
            Some("implicit") => GcpAuth::Implicit,
            // CockroachDB: no AUTH means specified; CREDENTIALS first, then BEARER_TOKEN.
            Some("specified") | None => match (creds, bearer) {
                (Some(c), _) => GcpAuth::Specified(Arc::new(decode_credentials(c)?)),
                (None, Some(t)) => GcpAuth::Bearer(Arc::new(SecretBytes::new(t.as_bytes().to_vec()))),
                (None, None) if auth.is_none() => {
                    return Err("set AUTH=implicit (Application Default Credentials), or AUTH=specified with CREDENTIALS=<base64 service-account key JSON> or BEARER_TOKEN=<access token>".into())
                }
                (None, None) => {
                    return Err("AUTH=specified needs CREDENTIALS=<base64 of the service-account key JSON> or BEARER_TOKEN=<access token>".into())
                }
            },
            Some("none") => {
                if creds.is_some() || bearer.is_some() || roles.is_some() {
                    return Err("AUTH=none takes no CREDENTIALS, BEARER_TOKEN or ASSUME_ROLE".into());
                }
                let loopback = endpoint
                    .as_deref()
                    .and_then(|e| Url::parse(e).ok())
                    .is_some_and(|u| net::is_loopback_url(&u));
                if !loopback {
                    return Err("AUTH=none (no credentials) is only for a local test endpoint: it needs GCP_ENDPOINT=http://127.0.0.1:PORT".into());
                }
                GcpAuth::None
            }
            Some(_) => {
                return Err("AUTH must be implicit or specified (or none, for a local test endpoint)".into())
            }
        };
        let impersonate = roles.as_deref().map(parse_roles).transpose()?;
        let redacted = crate::key_uri::redact_query(url, PUBLIC_PARAMS);
        Ok(Self {
            key_name,
            auth,
            endpoint,
            impersonate,
            redacted,
        })
    }

    /// `gs:///projects/…/cryptoKeys/K`: the key's identity, recorded in envelopes. The same
    /// for the `gcp-kms` spelling and with or without a `/cryptoKeyVersions/N` suffix, so a
    /// blob wrapped under one form unwraps under the other.
    pub fn id(&self) -> String {
        format!("gs:///{}", self.key_name)
    }

    /// The URI for logs and RevokeStatus: only AUTH and GCP_ENDPOINT values are shown.
    pub fn redacted(&self) -> String {
        self.redacted.clone()
    }

    /// The CryptoKey resource name, as the Cloud KMS API takes it.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    pub fn auth(&self) -> &GcpAuth {
        &self.auth
    }

    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// `ASSUME_ROLE`'s service account and delegation chain, if given.
    pub fn impersonate(&self) -> Option<&Impersonate> {
        self.impersonate.as_ref()
    }
}

impl PartialEq for GcpUri {
    fn eq(&self, other: &Self) -> bool {
        let auth_eq = match (&self.auth, &other.auth) {
            (GcpAuth::Implicit, GcpAuth::Implicit) | (GcpAuth::None, GcpAuth::None) => true,
            (GcpAuth::Specified(a), GcpAuth::Specified(b))
            | (GcpAuth::Bearer(a), GcpAuth::Bearer(b)) => a.ct_eq(b.expose()),
            _ => false,
        };
        auth_eq
            && self.key_name == other.key_name
            && self.endpoint == other.endpoint
            && self.impersonate == other.impersonate
    }
}

impl Eq for GcpUri {}

impl fmt::Debug for GcpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GcpUri({})", self.redacted)
    }
}

impl fmt::Debug for GcpAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GcpAuth::Implicit => "Implicit",
            GcpAuth::Specified(_) => "Specified(REDACTED)",
            GcpAuth::Bearer(_) => "Bearer(REDACTED)",
            GcpAuth::None => "None",
        })
    }
}

/// `ASSUME_ROLE=D1,D2,TARGET` → target `TARGET`, delegates `[D1, D2]` (CockroachDB's
/// `cloud.ParseRoleString`: the last entry is the role, the ones before it the chain).
fn parse_roles(raw: &str) -> Result<Impersonate, String> {
    let mut chain: Vec<String> = raw.split(',').map(str::to_owned).collect();
    let ok = |s: &String| {
        !s.is_empty()
            && s.len() <= 254
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    };
    if !chain.iter().all(ok) {
        return Err("ASSUME_ROLE must be a service account email, or a comma-separated chain D1,D2,TARGET of them".into());
    }
    let target = chain.pop().unwrap_or_default();
    Ok(Impersonate {
        target,
        delegates: chain,
    })
}

/// `/projects/P/locations/L/keyRings/R/cryptoKeys/K` → `projects/P/…/cryptoKeys/K`. A
/// `/cryptoKeyVersions/…` tail is dropped, as CockroachDB does: the key is what is named.
fn parse_key_name(path: &str) -> Result<String, String> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let rest = rest.split("/cryptoKeyVersions/").next().unwrap_or(rest);
    let parts: Vec<&str> = rest.split('/').collect();
    let [p, project, l, location, r, ring, c, key] = parts.as_slice() else {
        return Err(format!("the path must name a CryptoKey: {SHAPE}"));
    };
    if (*p, *l, *r, *c) != ("projects", "locations", "keyRings", "cryptoKeys") {
        return Err(format!("the path must name a CryptoKey: {SHAPE}"));
    }
    // Project ids may be domain-scoped (`example.com:proj`); the others are plain ids.
    check_segment("project", project, |c| {
        c.is_ascii_alphanumeric() || "-_.:".contains(c)
    })?;
    check_segment("location", location, |c| {
        c.is_ascii_alphanumeric() || c == '-'
    })?;
    check_segment("key ring", ring, |c| {
        c.is_ascii_alphanumeric() || "-_".contains(c)
    })?;
    check_segment("key", key, |c| {
        c.is_ascii_alphanumeric() || "-_".contains(c)
    })?;
    Ok(rest.to_owned())
}

fn check_segment(what: &str, s: &str, ok: impl Fn(char) -> bool) -> Result<(), String> {
    if s.is_empty() || s.len() > 100 || !s.chars().all(ok) {
        return Err(format!(
            "the {what} id in the path is empty or has characters Cloud KMS does not allow"
        ));
    }
    Ok(())
}

/// Decodes `CREDENTIALS` (standard or URL-safe base64, padded or not) into the key JSON and
/// checks that it is a service-account key. No error shows any of the value.
fn decode_credentials(raw: String) -> Result<SecretBytes, String> {
    let raw = zeroize::Zeroizing::new(raw);
    // A literal `+` in a query string decodes to a space; undo that rather than fail.
    let cleaned = zeroize::Zeroizing::new(raw.trim().replace(' ', "+"));
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let json = engines
        .iter()
        .find_map(|e| e.decode(cleaned.as_bytes()).ok())
        .map(SecretBytes::new)
        .ok_or("CREDENTIALS is not base64: encode the service-account key file, e.g. `base64 -w0 key.json`")?;
    let value: serde_json::Value = serde_json::from_slice(json.expose())
        .map_err(|_| "CREDENTIALS does not decode to JSON: it must be the base64 of a service-account key file".to_string())?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if field("type") != Some("service_account") {
        return Err("CREDENTIALS must be a service-account key (\"type\": \"service_account\"); for other credential types use AUTH=implicit with GOOGLE_APPLICATION_CREDENTIALS".into());
    }
    if field("client_email").is_none() || field("private_key").is_none() {
        return Err("CREDENTIALS is missing client_email or private_key: use the JSON key file as downloaded".into());
    }
    Ok(json)
}

#[cfg(test)]
mod tests;
