//! Who is calling: a Unix-socket peer as the kernel reports it (SO_PEERCRED), or a TLS
//! peer named by its client certificate.

use std::fmt;

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
    /// The client certificate's first DNS/URI SAN, else its CN. The chain was already
    /// verified against `[tls].ca` by rustls during the handshake.
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
        let identity = cert_identity(leaf.as_ref()).ok_or_else(|| {
            Error::Unauthenticated("the client certificate has neither a SAN nor a CN".into())
        })?;
        Ok(Peer::Tls { identity })
    }
}

/// The certificate's first DNS or URI SAN, else its subject CN.
pub fn cert_identity(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(s) | GeneralName::URI(s) if !s.is_empty() => {
                    return Some((*s).to_owned())
                }
                _ => {}
            }
        }
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
