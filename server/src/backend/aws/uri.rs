//! `aws:///<key>?REGION=..&AUTH=..` (or `aws-kms:///…`, CockroachDB's other scheme name for
//! the same URI): an AWS KMS key URI in CockroachDB's form, parsed once at config load.
//! Every URI CockroachDB's `pkg/cloud/amazon/aws_kms.go` accepts parses here with the
//! meaning CockroachDB gives it.
//!
//! `<key>` is a key id (`1234abcd-…`, `mrk-…`), a key ARN, `alias/NAME` or an alias ARN.
//! Parameters (upper-case, each at most once; any other name is an error, so a typo fails
//! at config load instead of silently falling back to a default):
//!
//! | parameter | |
//! | --- | --- |
//! | `REGION` | required, except with `AWS_ENDPOINT` where CockroachDB signs for `default-region`; must match the region of a key or alias ARN |
//! | `AUTH` | `specified` (the default, as in CockroachDB) or `implicit` (the SDK's default chain: env, profile, web identity, ECS, IMDS) |
//! | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` | required with `AUTH=specified`; ignored with `implicit`, as in CockroachDB. A space in the secret reads as `+` (CockroachDB's rule: an unescaped `+` in a query arrives as a space, and AWS secrets are base64, never spaces) |
//! | `AWS_SESSION_TOKEN` | optional, with `AUTH=specified` |
//! | `ASSUME_ROLE` | optional: `ROLE_ARN[;external_id=ID]`, comma-separated for a chain (CockroachDB's form); assumed through STS |
//! | `AWS_ENDPOINT` | optional: `https://host[:port]` for KMS only, e.g. a VPC endpoint; `http://` only towards a loopback host (a test stand-in): credentials and keys never cross a network in the clear. STS takes `AWS_ENDPOINT_URL_STS` from the environment |
//!
//! Only `REGION`, `AUTH`, `AWS_ENDPOINT`, `ASSUME_ROLE` and `AWS_ACCESS_KEY_ID` are shown in
//! [`AwsUri::redacted`]; everything else (the secret key, the session token, anything new)
//! prints as `redacted`.

use std::fmt;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use url::Url;

use crate::backend::{net, params::Params};
use crate::key_uri::redact_query;
use crate::secret::SecretBytes;

/// Parameters whose values are safe to show in logs and RevokeStatus.
const PUBLIC_PARAMS: &[&str] = &[
    "REGION",
    "AUTH",
    "AWS_ENDPOINT",
    "ASSUME_ROLE",
    "AWS_ACCESS_KEY_ID",
];

/// Every parameter the URI may carry.
const KNOWN_PARAMS: &[&str] = &[
    "REGION",
    "AUTH",
    "AWS_ENDPOINT",
    "ASSUME_ROLE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// The region CockroachDB signs for when `AWS_ENDPOINT` is given without `REGION`.
const DEFAULT_REGION: &str = "default-region";

const SHAPE: &str = "aws:///<key id | key ARN | alias/NAME>?REGION=..&AUTH=implicit|specified";

/// A parsed `aws:///` URI.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsUri {
    /// As written in the URI (id, ARN or alias): what every KMS call names.
    pub(super) key: String,
    pub(super) region: String,
    pub(super) auth: Auth,
    pub(super) endpoint: Option<String>,
    /// Roles to assume in order, each with the previous one's credentials.
    pub(super) assume_role: Vec<RoleHop>,
    /// Computed once at parse, so nothing later holds the raw query.
    redacted: String,
}

/// Where the daemon's AWS credentials come from.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Auth {
    /// The SDK's default credential chain.
    Implicit,
    Specified {
        access_key_id: String,
        secret_access_key: Secret,
        session_token: Option<Secret>,
    },
}

/// One `ASSUME_ROLE` hop.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct RoleHop {
    pub(super) arn: String,
    pub(super) external_id: Option<String>,
}

/// A credential from the URI. `Clone` (which `KeyUri` needs) shares one wiped-on-drop
/// [`SecretBytes`] instead of copying it.
#[derive(Clone)]
pub(super) struct Secret(Arc<SecretBytes>);

impl Secret {
    fn new(value: String) -> Self {
        Self(Arc::new(SecretBytes::new(value.into_bytes())))
    }

    /// The value, for the SDK's credentials and for scrubbing error details. Always UTF-8:
    /// it was built from a `String`.
    pub(super) fn expose(&self) -> &str {
        std::str::from_utf8(self.0.expose()).unwrap_or_default()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(other.0.expose())
    }
}
impl Eq for Secret {}

impl AwsUri {
    /// Parses and validates an `aws:///` URI. Errors name parameters, never their values.
    pub fn parse(url: &Url) -> Result<Self, String> {
        if url.host_str().is_some_and(|h| !h.is_empty())
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(format!("AWS KMS URIs have no host or user: write {SHAPE}"));
        }
        if url.fragment().is_some() {
            return Err(format!("AWS KMS URIs have no #fragment: write {SHAPE}"));
        }
        let raw_key = url.path().strip_prefix('/').unwrap_or(url.path());
        let key = percent_decode_str(raw_key)
            .decode_utf8()
            .map_err(|_| "the key in the AWS KMS URI is not valid UTF-8".to_string())?
            .into_owned();

        let mut p = Params::read(url, KNOWN_PARAMS, "AWS KMS")?;

        // CockroachDB signs for "default-region" when a custom endpoint is given without
        // REGION (a stand-in like moto accepts any region); the ARN's region is then moot.
        let (region, region_given) = match p.take("REGION") {
            Some(r) => (r, true),
            None if p.has("AWS_ENDPOINT") => (DEFAULT_REGION.to_owned(), false),
            None => return Err(format!("REGION is required: {SHAPE}")),
        };
        if !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "REGION {region:?} is not an AWS region name (like us-east-1)"
            ));
        }
        check_key(&key, region_given.then_some(region.as_str()))?;

        let access_key_id = p.take("AWS_ACCESS_KEY_ID");
        // CockroachDB's rule, in the same place (the secret only): a space is a `+` that
        // the query decoding turned into a space.
        let secret = p
            .take("AWS_SECRET_ACCESS_KEY")
            .map(|s| Secret::new(zeroize::Zeroizing::new(s).replace(' ', "+")));
        let token = p.take("AWS_SESSION_TOKEN").map(Secret::new);
        let auth = match p.take("AUTH").as_deref() {
            // CockroachDB: implicit ignores the keys in the URI (they are dropped here).
            Some("implicit") => Auth::Implicit,
            None | Some("specified") => match (access_key_id, secret) {
                (Some(access_key_id), Some(secret_access_key)) => Auth::Specified {
                    access_key_id,
                    secret_access_key,
                    session_token: token,
                },
                _ => return Err("AUTH=specified (the default) needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; or set AUTH=implicit to use the node's credentials".into()),
            },
            Some(_) => return Err("AUTH must be `implicit` or `specified`".into()),
        };
        let endpoint = p
            .take("AWS_ENDPOINT")
            .map(|e| net::endpoint(&e, "AWS_ENDPOINT"))
            .transpose()?;
        let assume_role = match p.take("ASSUME_ROLE") {
            Some(v) => parse_roles(&v)?,
            None => Vec::new(),
        };

        Ok(Self {
            key,
            region,
            auth,
            endpoint,
            assume_role,
            redacted: redact_query(url, PUBLIC_PARAMS),
        })
    }

    /// `aws:///<key>`: the key's identity, without parameters (recorded in envelopes).
    pub fn id(&self) -> String {
        format!("aws:///{}", self.key)
    }

    /// The URI with every non-public parameter value replaced by `redacted`.
    pub fn redacted(&self) -> String {
        self.redacted.clone()
    }

    /// The key as the URI names it (id, ARN or alias).
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// `implicit` or `specified`.
    pub fn auth_mode(&self) -> &'static str {
        match self.auth {
            Auth::Implicit => "implicit",
            Auth::Specified { .. } => "specified",
        }
    }

    /// The role ARNs to assume, in order.
    pub fn roles(&self) -> Vec<&str> {
        self.assume_role.iter().map(|h| h.arn.as_str()).collect()
    }

    /// Credential values that must never appear in an error detail or a log line.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        match &self.auth {
            Auth::Implicit => Vec::new(),
            Auth::Specified {
                secret_access_key,
                session_token,
                ..
            } => std::iter::once(secret_access_key)
                .chain(session_token)
                .map(Secret::expose)
                .collect(),
        }
    }
}

impl fmt::Debug for AwsUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AwsUri({})", self.redacted)
    }
}

/// A key id, key ARN, `alias/NAME` or alias ARN; an ARN must be in `region`, if given.
fn check_key(key: &str, region: Option<&str>) -> Result<(), String> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 2048
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b))
    };
    if key.is_empty() {
        return Err(format!("the URI names no key: {SHAPE}"));
    }
    if let Some(rest) = key.strip_prefix("arn:") {
        // arn:PARTITION:kms:REGION:ACCOUNT:key/ID or …:alias/NAME
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        let [partition, service, arn_region, account, resource] = parts[..] else {
            return Err(format!("{key:?} is not a KMS key or alias ARN"));
        };
        let resource_ok = resource
            .strip_prefix("key/")
            .or_else(|| resource.strip_prefix("alias/"))
            .is_some_and(name_ok);
        if partition.is_empty() || service != "kms" || account.is_empty() || !resource_ok {
            return Err(format!("{key:?} is not a KMS key or alias ARN"));
        }
        if let Some(region) = region.filter(|r| *r != arn_region) {
            return Err(format!(
                "the key ARN is in region {arn_region:?} but REGION is {region:?}"
            ));
        }
        return Ok(());
    }
    if let Some(alias) = key.strip_prefix("alias/") {
        return if name_ok(alias) {
            Ok(())
        } else {
            Err(format!("{key:?} is not a valid alias/NAME"))
        };
    }
    if key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && key.len() <= 128 {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a key id, key ARN or alias/NAME: {SHAPE}"
        ))
    }
}

/// `ARN[;external_id=ID][,ARN…]`, as CockroachDB writes role chains.
fn parse_roles(raw: &str) -> Result<Vec<RoleHop>, String> {
    raw.split(',')
        .map(|hop| {
            let mut parts = hop.split(';');
            let arn = parts.next().unwrap_or_default().trim();
            if !(arn.starts_with("arn:") && arn.contains(":role/")) {
                return Err("ASSUME_ROLE must be a role ARN (arn:aws:iam::ACCOUNT:role/NAME), optionally `;external_id=ID`, comma-separated for a chain".to_string());
            }
            let mut external_id = None;
            for opt in parts {
                match opt.split_once('=') {
                    Some(("external_id", v)) if !v.is_empty() && external_id.is_none() => {
                        external_id = Some(v.to_owned());
                    }
                    _ => return Err("ASSUME_ROLE options are `;external_id=ID` only".into()),
                }
            }
            Ok(RoleHop {
                arn: arn.to_owned(),
                external_id,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn parse(s: &str) -> Result<AwsUri, String> {
        AwsUri::parse(&Url::parse(s).map_err(|e| e.to_string())?)
    }

    #[test]
    fn key_forms() {
        for key in [
            ARN,
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "alias/my-key",
            "mrk-1234",
        ] {
            let u = parse(&format!("aws:///{key}?REGION=us-east-1&AUTH=implicit")).unwrap();
            assert_eq!(u.key, key);
            assert_eq!(u.id(), format!("aws:///{key}"));
        }
        let alias_arn = "arn:aws:kms:us-east-1:123456789012:alias/prod";
        assert!(parse(&format!(
            "aws:///{alias_arn}?REGION=us-east-1&AUTH=implicit"
        ))
        .is_ok());
    }

    #[test]
    fn specified_auth_and_redaction() {
        let u = parse(&format!(
            "aws:///{ARN}?REGION=us-east-1&AUTH=specified&AWS_ACCESS_KEY_ID=AKIDPUBLIC&AWS_SECRET_ACCESS_KEY=s3cr3tValue&AWS_SESSION_TOKEN=t0kenValue&AWS_ENDPOINT=http://127.0.0.1:5000"
        ))
        .unwrap();
        assert_eq!(u.id(), format!("aws:///{ARN}"));
        assert_eq!(u.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(u.secrets(), vec!["s3cr3tValue", "t0kenValue"]);
        for shown in [u.redacted(), format!("{u:?}")] {
            assert!(shown.contains("AWS_ACCESS_KEY_ID=AKIDPUBLIC"), "{shown}");
            assert!(shown.contains("REGION=us-east-1"), "{shown}");
            assert!(
                !shown.contains("s3cr3t") && !shown.contains("t0ken"),
                "{shown}"
            );
        }
    }

    #[test]
    fn auth_defaults_to_specified() {
        let e = parse(&format!("aws:///{ARN}?REGION=us-east-1")).unwrap_err();
        assert!(e.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
        let e = parse(&format!(
            "aws:///{ARN}?REGION=us-east-1&AUTH=specified&AWS_ACCESS_KEY_ID=a"
        ))
        .unwrap_err();
        assert!(e.contains("AUTH=specified"), "{e}");
        // CockroachDB's meaning: implicit ignores (here, drops) keys in the URI.
        let u = parse(&format!(
            "aws:///{ARN}?REGION=us-east-1&AUTH=implicit&AWS_SECRET_ACCESS_KEY=s3cr3t"
        ))
        .unwrap();
        assert!(u.secrets().is_empty());
    }

    #[test]
    fn refusals_never_echo_values() {
        // Each case is `aws:///` + key, then `?` + the region and auth, + extra parameters.
        let ok = "REGION=us-east-1&AUTH=implicit";
        let cases = [
            ("k", "AUTH=implicit", "", "REGION is required"),
            ("k", ok, "&REGON=s3cr3t", "unknown parameter"),
            ("k", ok, "&region=s3cr3t", "did you mean REGION?"),
            ("k", ok, "&AKIAS3CR3TS3CR3T=1", "unknown parameter"),
            ("k", ok, "&REGION=us-east-1", "twice"),
            (
                "k",
                ok,
                "&AWS_ENDPOINT=http://kms.example.com",
                "only towards",
            ),
            (
                "k",
                ok,
                "&AWS_ENDPOINT=http://10.1.2.3:4566",
                "only towards",
            ),
            ("k", ok, "&AWS_ENDPOINT=https://h/s3cr3t", "AWS_ENDPOINT"),
            ("k", "REGION=us-east-1&AUTH=maybe", "", "AUTH must be"),
            ("", ok, "", "names no key"),
            ("k", ok, "&AWS_ENDPOINT=ftp://x", "AWS_ENDPOINT"),
            ("k", ok, "&AWS_ENDPOINT=http://u:s3cr3t@x", "AWS_ENDPOINT"),
            ("k", ok, "&ASSUME_ROLE=s3cr3t", "ASSUME_ROLE"),
            ("arn:aws:kms:eu-west-1:1:key/k", ok, "", "region"),
            ("arn:aws:s3:us-east-1:1:key/k", ok, "", "not a KMS key"),
            ("a%20b", ok, "", "not a key id"),
        ];
        for (key, base, extra, want) in cases {
            let uri = format!("aws:///{key}?{base}{extra}");
            let e = parse(&uri).unwrap_err();
            assert!(e.contains(want), "{uri}: {e}");
            assert!(!e.to_lowercase().contains("s3cr3t"), "{uri}: {e}");
        }
        let e = parse("aws://host/k?REGION=us-east-1&AUTH=implicit").unwrap_err();
        assert!(e.contains("no host"), "{e}");
    }

    #[test]
    fn role_chain() {
        let u = parse(&format!(
            "aws:///{ARN}?REGION=us-east-1&AUTH=implicit&ASSUME_ROLE=arn:aws:iam::1:role/a;external_id=x,arn:aws:iam::2:role/b"
        ))
        .unwrap();
        assert_eq!(u.assume_role.len(), 2);
        assert_eq!(u.assume_role[0].external_id.as_deref(), Some("x"));
        assert_eq!(u.assume_role[1].arn, "arn:aws:iam::2:role/b");
    }
}
