//! Who is calling: a Unix-socket peer as the kernel reports it (SO_PEERCRED), or a TLS
//! peer named by its client certificate.

use std::collections::HashMap;
use std::fmt;
use std::sync::{LazyLock, Mutex};

use tonic::transport::server::UdsConnectInfo;
use tonic::Request;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::Error;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// From the kernel, not from anything the caller said.
    Unix {
        uid: u32,
        gid: u32,
        pid: Option<i32>,
    },
    /// The client certificate's identity, as [`cert_identity`] defines it. The chain was
    /// already verified against `[tls].ca` by rustls during the handshake.
    Tls { identity: String },
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Unix { uid, gid, pid } => match pid {
                Some(pid) => write!(f, "uid:{uid} gid:{gid} pid:{pid}"),
                None => write!(f, "uid:{uid} gid:{gid}"),
            },
            Peer::Tls { identity } => write!(f, "cert:{identity}"),
        }
    }
}

impl Peer {
    /// Identifies the caller of `req`, or UNAUTHENTICATED.
    pub fn from_request<T>(req: &Request<T>) -> Result<Peer, Error> {
        if let Some(info) = req.extensions().get::<UdsConnectInfo>() {
            let cred = info.peer_cred.ok_or_else(|| {
                Error::Unauthenticated("cannot read the Unix peer's credentials".into())
            })?;
            return Ok(Peer::Unix {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            });
        }
        let certs = req.peer_certs().ok_or_else(|| {
            Error::Unauthenticated("no client certificate: TCP callers need mutual TLS".into())
        })?;
        let leaf = certs.first().ok_or_else(|| {
            Error::Unauthenticated("no client certificate: TCP callers need mutual TLS".into())
        })?;
        let identity = cached_identity(leaf.as_ref()).ok_or_else(|| {
            Error::Unauthenticated(
                "the client certificate names no identity: it needs a DNS or URI SAN (or, with no SAN extension at all, a CN)".into(),
            )
        })?;
        Ok(Peer::Tls { identity })
    }
}

/// The certificate's identity:
///
/// - with a subjectAltName extension: its first non-empty DNS or URI name. A SAN extension
///   with neither (only IP addresses or e-mail names, say) gives NO identity: the CN is
///   not consulted, because an issuer that writes SANs vouches for those, and may put
///   anything in the CN (RFC 6125 deprecates the CN as an identity when SANs exist);
/// - without a SAN extension: its subject CN;
/// - an unparsable certificate or SAN extension: no identity.
///
/// No identity means the caller is UNAUTHENTICATED.
/// [`cert_identity`], remembered for the few certificates a daemon sees: parsing a
/// certificate on every call was a quarter of the daemon's own CPU per mTLS call. Keyed by
/// the certificate's full DER bytes, so the answer depends on nothing else; bounded, and
/// cleared whole when full (a flood of distinct certificates costs parses, not memory).
fn cached_identity(der: &[u8]) -> Option<String> {
    const MAX: usize = 256;
    static CACHE: LazyLock<Mutex<HashMap<Vec<u8>, Option<String>>>> =
        LazyLock::new(Default::default);
    if let Some(hit) = CACHE.lock().unwrap_or_else(|p| p.into_inner()).get(der) {
        return hit.clone();
    }
    let identity = cert_identity(der);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= MAX {
        cache.clear();
    }
    cache.insert(der.to_vec(), identity.clone());
    identity
}

pub fn cert_identity(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if let Some(san) = cert.subject_alternative_name().ok()? {
        return san.value.general_names.iter().find_map(|name| match name {
            GeneralName::DNSName(s) | GeneralName::URI(s) if !s.is_empty() => Some((*s).to_owned()),
            _ => None,
        });
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    cn
}

#[cfg(test)]
mod tests {
    use super::{cached_identity, cert_identity};
    use crate::certs::{issue, make_ca};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn identity(cn: Option<&str>, sans: &[&str]) -> Option<String> {
        let ca = make_ca("t").unwrap();
        let pem = issue(&ca, cn, sans, false).unwrap();
        let der = CertificateDer::from_pem_slice(pem.cert.as_bytes()).unwrap();
        cert_identity(&der)
    }

    #[test]
    fn san_first_cn_only_without_a_san_extension() {
        assert_eq!(
            identity(Some("cn"), &["dns-name"]).as_deref(),
            Some("dns-name")
        );
        assert_eq!(
            identity(Some("cn"), &["127.0.0.1", "second"]).as_deref(),
            Some("second")
        );
        assert_eq!(identity(Some("only-cn"), &[]).as_deref(), Some("only-cn"));
        // A SAN extension with no DNS or URI name: no fallback to the CN.
        assert_eq!(identity(Some("backup-job"), &["127.0.0.1"]), None);
        assert_eq!(identity(None, &[]), None);
        assert_eq!(cert_identity(b"not a certificate"), None);
    }

    #[test]
    fn the_cache_answers_as_the_parser_does_for_every_certificate() {
        let ca = make_ca("t").unwrap();
        let ders: Vec<_> = (0..300)
            .map(|i| {
                let name = format!("node-{i}");
                let sans: &[&str] = if i % 3 == 0 { &["127.0.0.1"] } else { &[&name] };
                let pem = issue(&ca, Some(&name), sans, false).unwrap();
                CertificateDer::from_pem_slice(pem.cert.as_bytes()).unwrap()
            })
            .collect();
        // Twice round, past the cache's bound: hits and misses both answer right.
        for der in ders.iter().chain(&ders) {
            assert_eq!(cached_identity(der), cert_identity(der));
        }
        assert_eq!(cached_identity(b"not a certificate"), None);
    }
}
