//! `vault://HOST[:PORT]/<mount>/<key>?…`: the Vault / OpenBao Transit key URI, parsed once
//! at config load (STYLE lesson 6). The shape is documented on [`crate::backend::vault`].

use std::fmt;
use std::path::PathBuf;

use url::{Host, Url};

use crate::backend::{net, params::Params};
use crate::key_uri::redact_query;

/// Vault's default API port.
const DEFAULT_PORT: u16 = 8200;

/// Every parameter a vault URI takes. None of them is a secret (the token itself never
/// appears in a URI), so all are shown by [`VaultUri::redacted`]; the allow-list still
/// hides anything else should parsing ever let it through.
const PARAMS: &[&str] = &["TLS", "TOKEN_FILE", "TOKEN_ENV", "NAMESPACE", "CA_FILE"];

/// Where the daemon's Vault token comes from. Never from the URI itself: a URI is copied
/// into configs, tickets and logs, a token must not be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file holding the token (e.g. a Vault Agent sink). Re-read when it changes.
    File(PathBuf),
    /// An environment variable of the daemon, read once at start.
    Env(String),
}

/// A parsed Vault Transit key URI. Boxed, so that `KeyUri` stays small whatever its
/// other variants are.
#[derive(Clone, PartialEq, Eq)]
pub struct VaultUri(Box<Parts>);

#[derive(Clone, PartialEq, Eq)]
struct Parts {
    /// Lower-cased; IPv6 addresses in brackets.
    host: String,
    port: u16,
    /// The transit mount path, e.g. `transit` or `kms/transit` (no slashes at the ends).
    mount: String,
    /// The transit key name.
    key: String,
    tls: bool,
    token: TokenSource,
    namespace: Option<String>,
    ca_file: Option<PathBuf>,
    /// The URI as written, for [`VaultUri::redacted`].
    url: Url,
}

impl VaultUri {
    /// Parses a `vault://` URL. Errors name the problem but never echo parameter values.
    pub fn parse(url: &Url) -> Result<Self, String> {
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "vault URIs take no user or password; give the token with TOKEN_FILE or TOKEN_ENV"
                    .into(),
            );
        }
        if url.fragment().is_some() {
            return Err("vault URIs take no #fragment".into());
        }
        let (host, loopback) = parse_host(url)?;
        let port = url.port().unwrap_or(DEFAULT_PORT);
        let (mount, key) = parse_path(url.path())?;

        // A token pasted inline gets its own answer (where to put it instead); the shared
        // reader would only call it unknown.
        if url
            .query_pairs()
            .any(|(name, _)| matches!(&*name, "TOKEN" | "VAULT_TOKEN"))
        {
            return Err("vault URIs do not take an inline token: put it in a file (TOKEN_FILE=/path, mode 0600) or an environment variable (TOKEN_ENV=NAME)".into());
        }
        let mut p = Params::read(url, PARAMS, "vault")?;
        let tls = match p.take("TLS").as_deref() {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(_) => return Err("vault URI parameter TLS must be true or false".into()),
        };
        let token = match (p.take("TOKEN_FILE"), p.take("TOKEN_ENV")) {
            (Some(_), Some(_)) => return Err("give exactly one of TOKEN_FILE and TOKEN_ENV".into()),
            (Some(file), None) => Some(TokenSource::File(absolute(&file, "TOKEN_FILE")?)),
            (None, Some(env)) => {
                if !is_env_name(&env) {
                    return Err("vault URI parameter TOKEN_ENV must name an environment variable ([A-Za-z_][A-Za-z0-9_]*)".into());
                }
                Some(TokenSource::Env(env))
            }
            (None, None) => None,
        };
        let namespace = match p.take("NAMESPACE") {
            Some(ns) => {
                let ns = ns.trim_matches('/');
                if !is_path(ns) {
                    return Err(
                        "vault URI parameter NAMESPACE must be a path like team1 or team1/child"
                            .into(),
                    );
                }
                Some(ns.to_owned())
            }
            None => None,
        };
        let ca_file = p
            .take("CA_FILE")
            .map(|f| absolute(&f, "CA_FILE"))
            .transpose()?;
        let token = token.ok_or("a vault URI needs TOKEN_FILE=/path or TOKEN_ENV=NAME")?;
        let tls = tls.unwrap_or(true);
        if !tls && !loopback {
            return Err("TLS=false is only allowed for a loopback host (127.0.0.1, ::1, localhost): the token would cross the network in clear".into());
        }
        if !tls && ca_file.is_some() {
            return Err("CA_FILE needs TLS=true".into());
        }
        Ok(Self(Box::new(Parts {
            host,
            port,
            mount,
            key,
            tls,
            token,
            namespace,
            ca_file,
            url: url.clone(),
        })))
    }

    /// `vault://HOST:PORT/[NAMESPACE/]<mount>/<key>`: the key's identity, no parameters.
    ///
    /// The namespace is part of the key's full path in Vault (`ns/transit/…` and the
    /// `X-Vault-Namespace: ns` header name the same key), so it is folded into the path.
    pub fn id(&self) -> String {
        format!(
            "vault://{}:{}/{}",
            self.0.host,
            self.0.port,
            self.full_path()
        )
    }

    /// The URI as written, every parameter outside the known, harmless set redacted.
    pub fn redacted(&self) -> String {
        redact_query(&self.0.url, PARAMS)
    }

    /// The API address, `https://HOST:PORT` (or `http://` with TLS=false).
    pub fn address(&self) -> String {
        let scheme = if self.0.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.0.host, self.0.port)
    }

    pub fn mount(&self) -> &str {
        &self.0.mount
    }

    pub fn key(&self) -> &str {
        &self.0.key
    }

    pub fn namespace(&self) -> Option<&str> {
        self.0.namespace.as_deref()
    }

    pub fn token_source(&self) -> &TokenSource {
        &self.0.token
    }

    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.0.ca_file.as_deref()
    }

    fn full_path(&self) -> String {
        match &self.0.namespace {
            Some(ns) => format!("{ns}/{}/{}", self.0.mount, self.0.key),
            None => format!("{}/{}", self.0.mount, self.0.key),
        }
    }
}

impl fmt::Debug for VaultUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaultUri({})", self.redacted())
    }
}

/// The host, normalized, and whether it is a loopback address.
fn parse_host(url: &Url) -> Result<(String, bool), String> {
    match url.host() {
        Some(Host::Ipv4(ip)) => Ok((ip.to_string(), ip.is_loopback())),
        Some(Host::Ipv6(ip)) => Ok((format!("[{ip}]"), ip.is_loopback())),
        Some(Host::Domain(d)) if !d.is_empty() => {
            // `vault` is not a special scheme, so the url crate keeps the host opaque and
            // does not parse an IPv4 address or lower-case it: do both here.
            let d = d.to_ascii_lowercase();
            if d.parse::<std::net::IpAddr>().is_ok() {
                let loopback = net::is_loopback_host(&d);
                return Ok((d, loopback));
            }
            let ok = d.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
            if !ok {
                return Err("vault URI host must be a DNS name or an IP address".into());
            }
            let loopback = net::is_loopback_host(&d);
            Ok((d, loopback))
        }
        _ => Err("a vault URI needs a host: vault://HOST:PORT/<mount>/<key>".into()),
    }
}

/// `/<mount…>/<key>` → (mount, key). The mount may have several segments.
fn parse_path(path: &str) -> Result<(String, String), String> {
    const SHAPE: &str = "vault URI path must be /<transit mount>/<key name>, e.g. vault://vault.example:8200/transit/my-key";
    let path = path.strip_prefix('/').unwrap_or(path);
    let (mount, key) = path.rsplit_once('/').ok_or(SHAPE)?;
    if !is_path(mount) {
        return Err(SHAPE.into());
    }
    // Vault's key-name pattern: \w(([\w-.]+)?\w)?
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let kb = key.as_bytes();
    let key_ok = match (kb.first(), kb.last()) {
        (Some(&f), Some(&l)) => {
            word(f) && word(l) && kb.iter().all(|&b| word(b) || b == b'-' || b == b'.')
        }
        _ => false,
    };
    if !key_ok {
        return Err("vault key name must be letters, digits, _ - . (starting and ending with a letter, digit or _)".into());
    }
    Ok((mount.to_owned(), key.to_owned()))
}

/// One or more `/`-separated segments of `[A-Za-z0-9_.-]`, none of them `.` or `..`.
fn is_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        })
}

fn is_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn absolute(value: &str, param: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(value);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!(
            "vault URI parameter {param} must be an absolute path"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<VaultUri, String> {
        VaultUri::parse(&Url::parse(s).unwrap())
    }

    #[test]
    fn full_uri() {
        let u = parse("vault://Vault.Example:8201/kms/transit/db-key?TLS=true&TOKEN_FILE=/run/vault/token&NAMESPACE=team1&CA_FILE=/etc/ca.pem").unwrap();
        assert_eq!(
            u.id(),
            "vault://vault.example:8201/team1/kms/transit/db-key"
        );
        assert_eq!(u.address(), "https://vault.example:8201");
        assert_eq!(u.mount(), "kms/transit");
        assert_eq!(u.key(), "db-key");
        assert_eq!(u.namespace(), Some("team1"));
        assert_eq!(
            u.token_source(),
            &TokenSource::File("/run/vault/token".into())
        );
        let r = u.redacted();
        assert!(r.contains("TOKEN_FILE=/run/vault/token"), "{r}");
    }

    #[test]
    fn defaults_tls_and_port() {
        let u = parse("vault://vault.example/transit/k?TOKEN_ENV=VAULT_TOKEN").unwrap();
        assert_eq!(u.address(), "https://vault.example:8200");
        assert_eq!(u.id(), "vault://vault.example:8200/transit/k");
        assert_eq!(u.token_source(), &TokenSource::Env("VAULT_TOKEN".into()));
    }

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(parse("vault://127.0.0.1:8200/transit/k?TLS=false&TOKEN_ENV=T").is_ok());
        assert!(parse("vault://[::1]:8200/transit/k?TLS=false&TOKEN_ENV=T").is_ok());
        assert!(parse("vault://localhost:8200/transit/k?TLS=false&TOKEN_ENV=T").is_ok());
        let e = parse("vault://vault.example:8200/transit/k?TLS=false&TOKEN_ENV=T").unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        assert!(parse("vault://127.0.0.1/transit/k?TLS=false&CA_FILE=/ca&TOKEN_ENV=T").is_err());
    }

    #[test]
    fn refuses_bad_shapes_without_echoing_values() {
        let secret = "s.SUPERSECRETTOKEN";
        for bad in [
            format!("vault://h/transit/k?TOKEN={secret}"),
            format!("vault://h/transit/k?TOKEN_ENV=T&{secret}=1"),
            format!("vault://h/transit/k?TOKEN_ENV=T&X_UNKNOWN={secret}"),
            format!("vault://h/transit/k?TOKEN_ENV=T&TLS={secret}"),
            format!("vault://user:{secret}@h/transit/k?TOKEN_ENV=T"),
            format!("vault://h/transit/k?TOKEN_ENV=T&TOKEN_FILE=/{secret}"),
            format!("vault://h/transit/k?TOKEN_FILE={secret}"),
        ] {
            let e = parse(&bad).unwrap_err();
            assert!(!e.contains(secret), "{e}");
        }
        for bad in [
            "vault://h/transit/k",                               // no token source
            "vault://h/k?TOKEN_ENV=T",                           // no mount
            "vault:///transit/k?TOKEN_ENV=T",                    // no host
            "vault://h/transit/?TOKEN_ENV=T",                    // no key
            "vault://h/transit/-k?TOKEN_ENV=T",                  // key starts with '-'
            "vault://h/../k?TOKEN_ENV=T",                        // dot segment
            "vault://h/transit/k?TOKEN_ENV=1BAD",                // env name
            "vault://h/transit/k?TOKEN_ENV=T&TLS=true&TLS=true", // twice
            "vault://h/transit/k?TOKEN_ENV=T#frag",
            "vault://h/transit/k?TOKEN_ENV=T&tls=false", // names are case-sensitive
        ] {
            assert!(parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn debug_is_redacted_form() {
        let u = parse("vault://h/transit/k?TOKEN_ENV=T").unwrap();
        assert_eq!(format!("{u:?}"), format!("VaultUri({})", u.redacted()));
    }
}
