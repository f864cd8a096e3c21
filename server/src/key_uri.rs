//! KMS key URIs (`aws:///…` or `aws-kms:///…`, `gs:///…` or `gcp-kms:///…`, `vault://…`,
//! `file:///…`, `mock://…`), parsed once at config load into typed values (STYLE lesson 6).
//!
//! Each backend module owns the shape of its URI (`parse`, `id`, `redacted`); this file
//! dispatches on the scheme. Two views of a URI leave the process:
//! - [`KeyUri::id`]: the KMS key's identity, with no query parameters at all. It is what a
//!   wrapped envelope records, so moving an endpoint or rotating credentials does not
//!   orphan old blobs.
//! - [`KeyUri::redacted`]: the URI as RevokeStatus and logs show it, every parameter not
//!   known to be harmless replaced by `redacted`.
//!
//! `Debug` prints the redacted form, so a stray `{:?}` cannot leak a credential.

use std::fmt;
use std::path::PathBuf;

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use url::Url;

/// Characters escaped in a shown query's names and values: the ones that delimit or encode.
const QUERY_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'&')
    .add(b'=')
    .add(b'+')
    .add(b'%');

/// A parsed, validated key URI.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyUri {
    File(FileUri),
    #[cfg(feature = "mock-kms")]
    Mock(MockUri),
    #[cfg(feature = "aws")]
    Aws(crate::backend::aws::AwsUri),
    #[cfg(feature = "gcp")]
    Gcp(crate::backend::gcp::GcpUri),
    #[cfg(feature = "vault")]
    Vault(crate::backend::vault::VaultUri),
}

impl KeyUri {
    /// Parses a URI from the config. The error is safe to print: it never echoes the URI's
    /// query string.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = Url::parse(raw).map_err(|e| format!("not a valid URI ({e})"))?;
        match url.scheme() {
            "file" => FileUri::parse(&url).map(KeyUri::File),
            "mock" => {
                #[cfg(feature = "mock-kms")]
                {
                    MockUri::parse(&url).map(KeyUri::Mock)
                }
                #[cfg(not(feature = "mock-kms"))]
                {
                    Err("mock:// is the test-only mock KMS; this build does not include it (cargo feature `mock-kms`)".into())
                }
            }
            // CockroachDB registers both spellings of each cloud's scheme.
            "aws" | "aws-kms" => {
                #[cfg(feature = "aws")]
                {
                    crate::backend::aws::AwsUri::parse(&url).map(KeyUri::Aws)
                }
                #[cfg(not(feature = "aws"))]
                {
                    Err("this build has no AWS KMS backend (cargo feature `aws`)".into())
                }
            }
            "gs" | "gcp-kms" => {
                #[cfg(feature = "gcp")]
                {
                    crate::backend::gcp::GcpUri::parse(&url).map(KeyUri::Gcp)
                }
                #[cfg(not(feature = "gcp"))]
                {
                    Err("this build has no Google Cloud KMS backend (cargo feature `gcp`)".into())
                }
            }
            "vault" => {
                #[cfg(feature = "vault")]
                {
                    crate::backend::vault::VaultUri::parse(&url).map(KeyUri::Vault)
                }
                #[cfg(not(feature = "vault"))]
                {
                    Err("this build has no Vault Transit backend (cargo feature `vault`)".into())
                }
            }
            other => Err(format!(
                "unknown scheme {other:?}: use aws:/// (or aws-kms:///), gs:/// (or gcp-kms:///), vault://, or file:///"
            )),
        }
    }

    /// The KMS key's identity, free of every query parameter: recorded in envelopes.
    pub fn id(&self) -> String {
        match self {
            KeyUri::File(u) => u.id(),
            #[cfg(feature = "mock-kms")]
            KeyUri::Mock(u) => u.id(),
            #[cfg(feature = "aws")]
            KeyUri::Aws(u) => u.id(),
            #[cfg(feature = "gcp")]
            KeyUri::Gcp(u) => u.id(),
            #[cfg(feature = "vault")]
            KeyUri::Vault(u) => u.id(),
        }
    }

    /// The URI with its secret parameters redacted: for logs and RevokeStatus.
    pub fn redacted(&self) -> String {
        match self {
            KeyUri::File(u) => u.id(),
            #[cfg(feature = "mock-kms")]
            KeyUri::Mock(u) => u.id(),
            #[cfg(feature = "aws")]
            KeyUri::Aws(u) => u.redacted(),
            #[cfg(feature = "gcp")]
            KeyUri::Gcp(u) => u.redacted(),
            #[cfg(feature = "vault")]
            KeyUri::Vault(u) => u.redacted(),
        }
    }

    /// Resolves relative file paths against the config file's folder.
    pub fn resolve_relative(&mut self, base: &std::path::Path) {
        #[allow(irrefutable_let_patterns)]
        if let KeyUri::File(u) = self {
            if u.path.is_relative() {
                u.path = base.join(&u.path);
            }
        }
    }
}

impl fmt::Debug for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyUri({})", self.redacted())
    }
}

/// Rebuilds a URI's query for display, keeping the values of `public` parameters and
/// replacing every other value with `redacted`. Allow-listing (not deny-listing) means a
/// parameter we did not foresee is hidden by default.
pub fn redact_query(url: &Url, public: &[&str]) -> String {
    let mut shown = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let keep = public.iter().any(|p| p.eq_ignore_ascii_case(&k));
            (
                k.into_owned(),
                if keep {
                    v.into_owned()
                } else {
                    "redacted".into()
                },
            )
        })
        .collect();
    if pairs.is_empty() {
        shown.set_query(None);
    } else {
        // Encode only what would change the query's meaning, so an operator reads
        // `AWS_ENDPOINT=http://127.0.0.1:4566`, not `http%3A%2F%2F127.0.0.1%3A4566`.
        let enc = |s: &str| utf8_percent_encode(s, QUERY_VALUE).to_string();
        let query = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        shown.set_query(Some(&query));
    }
    shown.set_fragment(None);
    let _ = shown.set_password(None);
    shown.to_string()
}

/// `file:///<path>`: a local 32-byte key file (AES-256-GCM). Development and self-hosted
/// use only: the key sits on the node's disk, so revocation is deleting or chmod-ing it.
#[derive(Clone, PartialEq, Eq)]
pub struct FileUri {
    pub path: PathBuf,
}

impl FileUri {
    fn parse(url: &Url) -> Result<Self, String> {
        if url.query().is_some() {
            return Err("file:/// URIs take no parameters".into());
        }
        if url.host_str().is_some_and(|h| !h.is_empty()) {
            return Err("file URIs have no host: write file:///absolute/path".into());
        }
        let path = url
            .to_file_path()
            .map_err(|()| "file URI must name an absolute path: file:///path/to/key".to_string())?;
        Ok(Self { path })
    }

    fn id(&self) -> String {
        format!("file://{}", self.path.display())
    }
}

/// `mock://NAME`: the scriptable mock KMS ([`crate::backend::mock`]), test builds only.
#[cfg(feature = "mock-kms")]
#[derive(Clone, PartialEq, Eq)]
pub struct MockUri {
    pub name: String,
}

#[cfg(feature = "mock-kms")]
impl MockUri {
    fn parse(url: &Url) -> Result<Self, String> {
        let name = url.host_str().unwrap_or_default();
        if name.is_empty() || url.query().is_some() || !matches!(url.path(), "" | "/") {
            return Err("mock URIs look like mock://NAME".into());
        }
        Ok(Self {
            name: name.to_owned(),
        })
    }

    fn id(&self) -> String {
        format!("mock://{}", self.name)
    }
}

#[cfg(all(test, feature = "aws", feature = "gcp"))]
mod cockroach_parity;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uri() {
        let u = KeyUri::parse("file:///etc/kms/key.bin").unwrap();
        assert_eq!(u.id(), "file:///etc/kms/key.bin");
        assert!(KeyUri::parse("file:///k?x=1").is_err());
    }

    #[test]
    fn unknown_scheme_is_refused() {
        let e = KeyUri::parse("ftp://x/y").unwrap_err();
        assert!(e.contains("unknown scheme"));
    }

    #[test]
    fn redaction_is_an_allow_list() {
        let url =
            Url::parse("aws:///k?REGION=us-east-1&AWS_SECRET_ACCESS_KEY=s3cr3t&NEW=x").unwrap();
        let r = redact_query(&url, &["REGION"]);
        assert!(r.contains("REGION=us-east-1"));
        assert!(!r.contains("s3cr3t"));
        assert!(!r.contains("NEW=x"));
    }

    #[test]
    fn shown_values_read_as_written_but_cannot_forge_parameters() {
        let url = Url::parse(
            "aws:///k?AWS_ENDPOINT=http://127.0.0.1:4566/x&NOTE=a%26SECRET%3Dx%25&TOKEN=t0k",
        )
        .unwrap();
        let r = redact_query(&url, &["AWS_ENDPOINT", "NOTE"]);
        assert_eq!(
            r,
            "aws:///k?AWS_ENDPOINT=http://127.0.0.1:4566/x&NOTE=a%26SECRET%3Dx%25&TOKEN=redacted"
        );
        // What is shown parses back to the same public values.
        let back = Url::parse(&r).unwrap();
        let note = back.query_pairs().find(|(k, _)| k == "NOTE").unwrap().1;
        assert_eq!(note, "a&SECRET=x%");
    }
}
