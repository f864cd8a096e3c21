//! `[stores.ID]`: the stores whose keys GetStoreKey creates and hands out.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, KeyConfig};
use crate::key_name::KeyName;
use crate::store_key::{Algorithm, StoreId};

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub key: KeyName,
    pub algorithm: Algorithm,
    /// Rotate the store key when the active one is this old; `None`: only on request.
    pub rotation_period: Option<Duration>,
    /// How many previous keys the operator means to keep. Never enforced by dropping:
    /// StoreStatus flags a store over it, and DropPreviousStoreKey is the explicit act.
    pub max_previous: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    key: String,
    algorithm: Option<String>,
    #[serde(default, with = "humantime_serde")]
    rotation_period: Option<Duration>,
    max_previous: Option<usize>,
}

/// Validates every store; each names one of `keys`.
pub(super) fn parse(
    file: &Path,
    raw: BTreeMap<String, RawStore>,
    keys: &BTreeMap<KeyName, KeyConfig>,
) -> Result<BTreeMap<StoreId, StoreConfig>, ConfigError> {
    let err = |field: &str, problem: String, fix: &str| ConfigError::new(file, field, problem, fix);
    let mut stores = BTreeMap::new();
    for (id, s) in raw {
        let field = format!("stores.{id}");
        let store_id =
            StoreId::parse(&id).map_err(|problem| err(&field, problem, "rename the store"))?;
        let key = match KeyName::parse(&s.key) {
            Ok(k) if keys.contains_key(&k) => k,
            _ => {
                return Err(err(
                    &format!("{field}.key"),
                    format!("no key named {:?} under [keys]", s.key),
                    "name a key defined under [keys.NAME]",
                ))
            }
        };
        let algorithm = match s.algorithm.as_deref() {
            None => Algorithm::Aes256,
            Some(a) => Algorithm::parse(a).ok_or_else(|| {
                err(
                    &format!("{field}.algorithm"),
                    format!("{a:?} is not an algorithm"),
                    "use \"AES-128\", \"AES-192\" or \"AES-256\"",
                )
            })?,
        };
        if s.rotation_period
            .is_some_and(|p| p < Duration::from_secs(60))
        {
            return Err(err(
                &format!("{field}.rotation_period"),
                "shorter than a minute".into(),
                "use e.g. \"90d\", or leave it out to rotate only on request",
            ));
        }
        let config = StoreConfig {
            key,
            algorithm,
            rotation_period: s.rotation_period,
            max_previous: s.max_previous,
        };
        stores.insert(store_id, config);
    }
    Ok(stores)
}
