//! Development certificates (rcgen): a CA, a server certificate for localhost/127.0.0.1 and
//! a client certificate. For `kms-broker dev-certs` and `serve --dev`; DEV ONLY: the CA key
//! sits next to the certificates it signs.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::fs::write_atomic;

/// The dev client certificate's identity (its DNS SAN and CN): `cert:dev-client`.
pub const DEV_CLIENT_IDENTITY: &str = "dev-client";

/// File names inside the output folder.
pub const FILES: [&str; 6] = [
    "ca.pem",
    "ca-key.pem",
    "server.pem",
    "server-key.pem",
    "client.pem",
    "client-key.pem",
];

fn err(e: impl std::fmt::Display) -> String {
    format!("cannot make certificates: {e}")
}

/// A PEM certificate and its PEM private key.
#[derive(Debug)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A self-signed CA that may only sign end-entity certificates.
pub fn make_ca(name: &str) -> Result<Pem, String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// An end-entity certificate signed by `ca`. `sans` are DNS names or IP addresses; `cn` is
/// the subject CN. Either may be empty (tests use a certificate with neither).
pub fn issue(ca: &Pem, cn: Option<&str>, sans: &[&str], server: bool) -> Result<Pem, String> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(err)?;
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .map_err(err)?;
    params.distinguished_name = DistinguishedName::new();
    if let Some(cn) = cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Writes a CA, a server certificate (localhost, 127.0.0.1, ::1) and a `dev-client`
/// client certificate into `out` (mode 0600 files, atomically).
pub fn write_dev_certs(out: &Path) -> Result<(), String> {
    // 0700 when we make it: the CA key lives here.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let ca = make_ca("kms-broker dev CA (DEV ONLY)")?;
    let server = issue(
        &ca,
        Some("localhost"),
        &["localhost", "127.0.0.1", "::1"],
        true,
    )?;
    let client = issue(
        &ca,
        Some(DEV_CLIENT_IDENTITY),
        &[DEV_CLIENT_IDENTITY],
        false,
    )?;
    for (name, text) in FILES.iter().zip([
        &ca.cert,
        &ca.key,
        &server.cert,
        &server.key,
        &client.cert,
        &client.key,
    ]) {
        let path = out.join(name);
        write_atomic(&path, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Whether `dir` already holds a full set.
pub fn dev_certs_exist(dir: &Path) -> bool {
    FILES.iter().all(|f| dir.join(f).exists())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn identities_come_from_san_then_cn() {
        let ca = make_ca("t").unwrap();
        let c = issue(&ca, Some("the-cn"), &["the-san"], false).unwrap();
        assert_eq!(
            crate::peer::cert_identity(&der(&c.cert)).as_deref(),
            Some("the-san")
        );
        let c = issue(&ca, Some("only-cn"), &[], false).unwrap();
        assert_eq!(
            crate::peer::cert_identity(&der(&c.cert)).as_deref(),
            Some("only-cn")
        );
        let c = issue(&ca, None, &[], false).unwrap();
        assert_eq!(crate::peer::cert_identity(&der(&c.cert)), None);
    }

    #[test]
    fn writes_a_full_set() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        write_dev_certs(&out).unwrap();
        assert!(dev_certs_exist(&out));
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "the CA key's folder is private");
    }
}
