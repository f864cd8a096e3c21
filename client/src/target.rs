//! The endpoint forms the client accepts.

use std::path::PathBuf;

use crate::ClientError;

/// Where the daemon listens, parsed from the endpoint string.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Unix(PathBuf),
    Https,
}

/// Parses gRPC's naming forms `unix:PATH` and `unix:///ABSOLUTE/PATH`, and `https://host:port`.
pub(crate) fn parse_target(endpoint: &str) -> Result<Target, ClientError> {
    let bad = |why: &str| ClientError::Config(format!("endpoint {endpoint:?}: {why}"));
    if let Some(rest) = endpoint.strip_prefix("unix:") {
        let path = match rest.strip_prefix("//") {
            // `unix://host/...` would put a host where gRPC expects none.
            Some(abs) if !abs.starts_with('/') => {
                return Err(bad("write unix:///absolute/path or unix:relative/path"))
            }
            Some(abs) => abs,
            None => rest,
        };
        if path.is_empty() {
            return Err(bad("the socket path is empty"));
        }
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    if endpoint.starts_with("https://") {
        return Ok(Target::Https);
    }
    if endpoint.starts_with("http://") {
        return Err(bad(
            "the daemon's TCP listener speaks only mutual TLS; use https://",
        ));
    }
    Err(bad(
        "expected unix:///path/to/broker.sock or https://host:port",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let unix = |p: &str| Ok(Target::Unix(PathBuf::from(p)));
        assert_eq!(
            parse_target("unix:///run/kb.sock").map_err(|e| e.to_string()),
            unix("/run/kb.sock")
        );
        assert_eq!(
            parse_target("unix:.dev/broker.sock").map_err(|e| e.to_string()),
            unix(".dev/broker.sock")
        );
        assert_eq!(
            parse_target("unix:/abs").map_err(|e| e.to_string()),
            unix("/abs")
        );
        assert_eq!(
            parse_target("https://127.0.0.1:7443").ok(),
            Some(Target::Https)
        );
        for bad in [
            "unix:",
            "unix://",
            "unix://host/x",
            "http://127.0.0.1:1",
            "127.0.0.1:7443",
            "",
        ] {
            let err = parse_target(bad).err();
            assert!(
                matches!(err, Some(ClientError::Config(_))),
                "{bad:?} → {err:?}"
            );
        }
    }
}
