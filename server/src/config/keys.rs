//! `[keys.NAME]`: each key's KMS URIs and what a wrap does while one of them is down.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use crate::envelope::{MAX_ENTRIES, MAX_URI_ID};
use crate::key_name::KeyName;
use crate::key_uri::KeyUri;

#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub uris: Vec<KeyUri>,
    pub wrap_mode: WrapMode,
}

/// What WrapKey and store-key creation do while one of a key's URIs is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WrapMode {
    /// Fail: every URI must wrap (a restore must survive the loss of any region).
    #[default]
    Strict,
    /// Wrap under the URIs that answer; the gap shows in StoreStatus, and a store's missing
    /// wraps are added once the URI is back.
    Available,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    uris: Vec<String>,
    wrap_mode: Option<String>,
}

/// Validates every key; `base` anchors relative `file://` paths.
pub(super) fn parse(
    file: &Path,
    base: &Path,
    raw: BTreeMap<String, RawKey>,
) -> Result<BTreeMap<KeyName, KeyConfig>, ConfigError> {
    let err = |field: &str, problem: String, fix: &str| ConfigError::new(file, field, problem, fix);
    let mut keys = BTreeMap::new();
    for (name, k) in raw {
        let field = format!("keys.{name}");
        let name = KeyName::parse(&name)
            .map_err(|problem| err(&field, problem.into(), "rename the key"))?;
        if k.uris.is_empty() {
            return Err(err(
                &format!("{field}.uris"),
                "no URIs".into(),
                "list at least one KMS key URI",
            ));
        }
        // A wrapped envelope holds one entry per URI, at most MAX_ENTRIES.
        if k.uris.len() > MAX_ENTRIES {
            return Err(err(
                &format!("{field}.uris"),
                format!("{} URIs; a key has at most {MAX_ENTRIES}", k.uris.len()),
                "split the URIs across keys",
            ));
        }
        let mut uris = Vec::with_capacity(k.uris.len());
        for (i, u) in k.uris.iter().enumerate() {
            let mut parsed = KeyUri::parse(u).map_err(|problem| {
                err(
                    &format!("{field}.uris[{i}]"),
                    problem,
                    "see the README's key URI forms",
                )
            })?;
            parsed.resolve_relative(base);
            if parsed.id().len() > MAX_URI_ID {
                return Err(err(
                    &format!("{field}.uris[{i}]"),
                    format!("the key's identity is over {MAX_URI_ID} bytes"),
                    "use a shorter path or key name",
                ));
            }
            if uris.iter().any(|p: &KeyUri| p.id() == parsed.id()) {
                return Err(err(
                    &format!("{field}.uris[{i}]"),
                    "the same KMS key is listed twice".into(),
                    "remove the duplicate",
                ));
            }
            uris.push(parsed);
        }
        let wrap_mode = match k.wrap_mode.as_deref() {
            None | Some("strict") => WrapMode::Strict,
            Some("available") => WrapMode::Available,
            Some(other) => {
                return Err(err(
                    &format!("{field}.wrap_mode"),
                    format!("{other:?} is not a wrap mode"),
                    "use \"strict\" (the default) or \"available\"",
                ))
            }
        };
        keys.insert(name, KeyConfig { uris, wrap_mode });
    }
    Ok(keys)
}
