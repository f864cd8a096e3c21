//! The TCP transport's mutual TLS: a rustls server config (TLS 1.2+, ALPN `h2`, aws-lc-rs),
//! client certificates REQUIRED and verified against `[tls].ca`.
//!
//! Built whole in `Server::bind`, before anything listens: a file that is missing, not PEM,
//! or a key that does not fit its certificate is a config error (exit 64) naming the field,
//! never a failure after the Unix socket is already serving.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::{ConfigError, TlsFiles};

/// Certificates and CA bundles larger than this are not what the field means.
const MAX_PEM: u64 = 1024 * 1024;

/// The HTTP/2 ALPN id; gRPC clients insist on it.
const ALPN_H2: &[u8] = b"h2";

fn problem(config: &Path, field: &str, problem: String) -> ConfigError {
    ConfigError::new(
        config,
        format!("tls.{field}"),
        problem,
        "point it at a PEM file of the right kind (kms-broker dev-certs --out DIR makes a dev set)",
    )
}

fn read_public(file: &Path, field: &str, config: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_PEM + 1).read_to_end(&mut bytes))
        .map_err(|e| {
            problem(
                config,
                field,
                format!("cannot read {}: {e}", file.display()),
            )
        })?;
    if bytes.len() as u64 > MAX_PEM {
        return Err(problem(
            config,
            field,
            format!("{} is larger than {MAX_PEM} bytes", file.display()),
        ));
    }
    Ok(bytes)
}

/// Every certificate in a PEM file; at least one.
fn certificates(
    file: &Path,
    field: &str,
    config: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read_public(file, field, config)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            problem(
                config,
                field,
                format!("{} is not valid PEM: {e}", file.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(problem(
            config,
            field,
            format!("{} holds no PEM certificate", file.display()),
        ));
    }
    Ok(certs)
}

/// The server's rustls config. Errors name the config field (exit 64).
pub fn server_config(files: &TlsFiles, config: &Path) -> Result<ServerConfig, ConfigError> {
    let mut roots = RootCertStore::empty();
    for ca in certificates(&files.ca, "ca", config)? {
        roots.add(ca).map_err(|e| {
            problem(
                config,
                "ca",
                format!("{}: not a usable CA certificate: {e}", files.ca.display()),
            )
        })?;
    }
    let chain = certificates(&files.cert, "cert", config)?;
    // The server's private key is a secret: the checked reader refuses a file that group or
    // others can read, as for every other secret file.
    let key_pem = crate::fs::read_private(&files.key, MAX_PEM).map_err(|e| ConfigError {
        fix: "a private key must be a regular file of mode 0600 (or stricter), owned by the daemon's user or root".into(),
        ..problem(config, "key", e.to_string())
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        problem(
            config,
            "key",
            format!("{} holds no PEM private key: {e}", files.key.display()),
        )
    })?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // No certificate, or one not signed by the CA: the handshake fails, nothing is served.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| problem(config, "ca", format!("cannot verify clients with it: {e}")))?;
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| problem(config, "cert", format!("TLS versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            problem(
                config,
                "key",
                format!("does not fit tls.cert ({}): {e}", files.cert.display()),
            )
        })?;
    tls.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn set(dir: &Path) -> TlsFiles {
        crate::certs::write_dev_certs(dir).unwrap();
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        }
    }

    #[test]
    fn a_dev_set_builds_and_bad_files_name_their_field() {
        let tmp = tempfile::tempdir().unwrap();
        let files = set(tmp.path());
        let cfg = Path::new("kms.toml");
        let tls = server_config(&files, cfg).unwrap();
        assert_eq!(tls.alpn_protocols, [b"h2".to_vec()]);

        let garbage = tmp.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem at all\n").unwrap();
        std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
        for (field, f) in [
            (
                "tls.ca",
                TlsFiles {
                    ca: garbage.clone(),
                    ..files.clone()
                },
            ),
            (
                "tls.cert",
                TlsFiles {
                    cert: garbage.clone(),
                    ..files.clone()
                },
            ),
            (
                "tls.key",
                TlsFiles {
                    key: garbage.clone(),
                    ..files.clone()
                },
            ),
            // The client's key does not fit the server's certificate.
            (
                "tls.key",
                TlsFiles {
                    key: tmp.path().join("client-key.pem"),
                    ..files.clone()
                },
            ),
            // A certificate where the key belongs.
            (
                "tls.key",
                TlsFiles {
                    key: files.cert.clone(),
                    ..files.clone()
                },
            ),
        ] {
            let e = server_config(&f, cfg).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn a_server_key_others_can_read_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let files = set(tmp.path());
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = server_config(&files, Path::new("kms.toml")).unwrap_err();
        assert_eq!(e.field, "tls.key");
        assert!(e.problem.contains("0644"), "{e}");
    }
}
