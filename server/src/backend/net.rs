//! Endpoints: the one check of a KMS endpoint override, and the one loopback test.
//!
//! Plain `http://` would put bearer tokens, signatures and key material on the wire in the
//! clear, so every backend allows it only towards a loopback host (where test stand-ins and
//! local agents listen): `127.0.0.0/8`, `::1` or `localhost`.

use std::net::IpAddr;

use url::{Host, Url};

/// True for `127.x.y.z`, `::1`, `[::1]` and `localhost` (any case). A host as written in a
/// URI: non-special schemes (`vault://`) leave IP addresses unparsed, so this parses them.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// Whether `url`'s host is a loopback host.
pub fn is_loopback_url(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => is_loopback_host(d),
        None => false,
    }
}

/// Validates an endpoint override given as parameter `param`: `https://host[:port]`, or
/// `http://` towards a loopback host only; no user, path, query or fragment. Returns it
/// without a trailing slash. Errors name the parameter, never its value.
pub fn endpoint(raw: &str, param: &str) -> Result<String, String> {
    let url =
        Url::parse(raw).map_err(|_| format!("{param} is not a URL: write https://host[:port]"))?;
    let shape_ok = matches!(url.path(), "" | "/")
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none()
        && url.host_str().is_some_and(|h| !h.is_empty());
    if !shape_ok {
        return Err(format!(
            "{param} must be scheme://host[:port] with no user, path, query or fragment"
        ));
    }
    let out = url.as_str().trim_end_matches('/').to_owned();
    match url.scheme() {
        "https" => Ok(out),
        "http" if is_loopback_url(&url) => Ok(out),
        "http" => Err(format!(
            "{param} may use http:// only towards 127.0.0.1, [::1] or localhost (credentials and keys would cross the network in the clear); use https://"
        )),
        _ => Err(format!("{param} must be an https:// URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "[::1]",
            "localhost",
            "LocalHost",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "10.0.0.1",
            "kms.example.com",
            "localhost.example.com",
            "[::2]",
            "",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn endpoints() {
        let ok = [
            ("https://kms.example.com/", "https://kms.example.com"),
            (
                "https://kms.example.com:8443",
                "https://kms.example.com:8443",
            ),
            ("http://127.0.0.1:4566", "http://127.0.0.1:4566"),
            ("http://localhost:1", "http://localhost:1"),
            ("http://[::1]:1/", "http://[::1]:1"),
        ];
        for (raw, want) in ok {
            assert_eq!(endpoint(raw, "X_ENDPOINT").as_deref(), Ok(want), "{raw}");
        }
        let bad = [
            ("http://kms.example.com", "only towards"),
            ("http://10.0.0.5:4566", "only towards"),
            ("http://127.0.0.1.nip.io", "only towards"),
            ("ftp://h", "https://"),
            ("https://u:s3cr3t@h", "no user"),
            ("https://h/path", "no user, path"),
            ("https://h?x=s3cr3t", "no user, path"),
            ("s3cr3t", "not a URL"),
        ];
        for (raw, want) in bad {
            let e = endpoint(raw, "X_ENDPOINT").unwrap_err();
            assert!(e.contains(want) && e.contains("X_ENDPOINT"), "{raw}: {e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }
}
