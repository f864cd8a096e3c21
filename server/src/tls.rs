//! The TCP transport's mutual TLS: rustls (via tonic), client certificates required and
//! verified against `[tls].ca`.

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::{ConfigError, TlsFiles};

fn read(
    file: &std::path::Path,
    field: &str,
    config: &std::path::Path,
) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(file).map_err(|e| ConfigError {
        file: config.to_owned(),
        field: format!("tls.{field}"),
        problem: format!("cannot read {}: {e}", file.display()),
        fix: "point it at a readable PEM file (kms-broker dev-certs --out DIR makes a dev set)"
            .into(),
    })
}

/// The server's TLS config. Errors name the config field (exit 64).
pub fn server_config(
    files: &TlsFiles,
    config_file: &std::path::Path,
) -> Result<ServerTlsConfig, ConfigError> {
    let ca = read(&files.ca, "ca", config_file)?;
    let cert = read(&files.cert, "cert", config_file)?;
    let key = read(&files.key, "key", config_file)?;
    // tonic requires a client certificate when a client CA root is set
    // (client_auth_optional defaults to false): no certificate, no connection.
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca)))
}
