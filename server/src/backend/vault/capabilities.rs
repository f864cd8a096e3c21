//! Does the token still hold the rights wrap and unwrap need? `sys/capabilities-self`.
//!
//! Reading the key proves the token works and the key is there, but not that the token
//! may still encrypt and decrypt: an operator who cuts the policy to `read` leaves the key
//! readable while every UnwrapKey fails. So the status check also asks Vault which
//! capabilities the token has on `<mount>/encrypt/<key>` and `<mount>/decrypt/<key>`
//! (both need `update`): one metadata call, no crypto.
//!
//! `sys/capabilities-self` is granted by Vault's and OpenBao's built-in `default` policy.
//! A token created without it (`-no-default-policy`) is refused (403) on this path. That
//! refusal says nothing about the key, so it is NOT read as REVOKED: the check stays
//! ACTIVE and its detail says a lost right will only show at the next wrap or unwrap
//! (whose 403 is REVOKED at once). Attach `default` (or grant `update` on
//! `sys/capabilities-self`) to get the early warning.

use rustify::endpoint::Endpoint;
use rustify::enums::{RequestMethod, RequestType, ResponseType};
use serde_json::Value;
use vaultrs::client::VaultClient;

use super::classify::{classify, is_denied, Op};
use crate::backend::{BackendError, FailureClass};

/// What the capability check found, when it did not find a lost right.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Rights {
    /// `update` on both paths.
    Held,
    /// Vault refused to say (no `default` policy): unknown until a real call.
    Unknown,
}

/// `POST sys/capabilities-self {"paths": [...]}`.
#[derive(Debug)]
struct CapabilitiesSelf {
    paths: [String; 2],
}

impl Endpoint for CapabilitiesSelf {
    // The whole body: Vault answers the paths at the top level (and, in newer versions,
    // again under `data`); `capabilities_of` reads either.
    type Response = Value;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        "sys/capabilities-self".into()
    }

    fn method(&self) -> RequestMethod {
        RequestMethod::POST
    }

    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        serde_json::to_vec(&serde_json::json!({ "paths": self.paths }))
            .map(Some)
            .map_err(|e| rustify::errors::ClientError::DataParseError { source: e.into() })
    }
}

/// Asks Vault for the token's capabilities on the encrypt and decrypt paths of the key.
pub(super) async fn check(
    client: &VaultClient,
    mount: &str,
    key: &str,
) -> Result<Rights, BackendError> {
    let paths = [
        format!("{mount}/encrypt/{key}"),
        format!("{mount}/decrypt/{key}"),
    ];
    let body = match vaultrs::api::exec_with_no_result(
        client,
        CapabilitiesSelf {
            paths: paths.clone(),
        },
    )
    .await
    {
        Ok(body) => body,
        Err(e) if is_denied(&e) => return Ok(Rights::Unknown),
        Err(e) => return Err(classify(Op::Capabilities, &e)),
    };
    for path in &paths {
        let caps = capabilities_of(&body, path);
        if !caps.iter().any(|c| c == "update" || c == "root") {
            let shown = if caps.is_empty() {
                "none".to_owned()
            } else {
                caps.join(", ")
            };
            return Err(BackendError::new(
                FailureClass::Revoked,
                format!("the token may no longer use {path} (needs update; has: {shown})"),
            ));
        }
    }
    Ok(Rights::Held)
}

/// The capability list for `path` in a capabilities-self answer, top level or under `data`.
fn capabilities_of(body: &Value, path: &str) -> Vec<String> {
    let list = body
        .get("data")
        .and_then(|d| d.get(path))
        .or_else(|| body.get(path))
        .and_then(Value::as_array);
    list.map(|l| {
        l.iter()
            .filter_map(Value::as_str)
            // Capability names are short words; anything else is not repeated.
            .filter(|c| c.len() <= 16 && c.bytes().all(|b| b.is_ascii_lowercase()))
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_either_shape() {
        let top = json!({ "transit/decrypt/k": ["read", "update"], "capabilities": ["x"] });
        assert_eq!(
            capabilities_of(&top, "transit/decrypt/k"),
            ["read", "update"]
        );
        let data = json!({ "data": { "transit/decrypt/k": ["deny"] } });
        assert_eq!(capabilities_of(&data, "transit/decrypt/k"), ["deny"]);
        assert!(capabilities_of(&json!({}), "transit/decrypt/k").is_empty());
        let odd = json!({ "p": ["update", "<script>", 7] });
        assert_eq!(capabilities_of(&odd, "p"), ["update"]);
    }
}
