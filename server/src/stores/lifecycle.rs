//! A store key's lifecycle: rotation (a new active key, the old ones kept for reading),
//! status (which KMS key and versions wrap each store on disk), and re-wrap (under the
//! configured key's current version, which also moves a store to another key).
//!
//! Crash safety: each changes a store's file by ONE atomic replace, under the store's lock,
//! after every KMS call it needs has answered. A crash leaves the old file or the new one;
//! a re-wrap interrupted halfway (some stores done) finishes when run again, as the stores
//! already done no longer need it. The store keys themselves never change in a re-wrap.

use std::time::SystemTime;

use super::{context, Held, StoreKeys, Stores};
use crate::envelope::{Envelope, Format};
use crate::error::Error;
use crate::key_name::KeyName;
use crate::store_key::{self, Algorithm, StoreId, StoreKey, StoreKeyFile, WrappedStoreKey};

/// Why a store's file differs from a fresh wrap under its configured key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Reason {
    OtherKey(String),
    Unparsable,
    OldFormat,
    MissingUri(String),
    OldVersion {
        uri: String,
        was: String,
        now: String,
    },
    RetiredUri,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::OtherKey(k) => write!(f, "wrapped under key {k:?}, not the configured one"),
            Reason::Unparsable => f.write_str("a wrapped key does not parse"),
            Reason::OldFormat => f.write_str("a key is in envelope format 1"),
            Reason::MissingUri(u) => write!(f, "not wrapped under {u} (it was down at wrap time)"),
            Reason::OldVersion { uri, was, now } => write!(
                f,
                "wrapped under version {was:?} of {uri}; the current is {now:?}"
            ),
            Reason::RetiredUri => f.write_str("wrapped under a URI no longer configured"),
        }
    }
}

/// A store key's metadata; never key bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub key_id: [u8; store_key::KEY_ID_LEN],
    pub algorithm: Algorithm,
    pub created_at: SystemTime,
}

impl From<&WrappedStoreKey> for KeyInfo {
    fn from(w: &WrappedStoreKey) -> Self {
        Self {
            key_id: w.key_id,
            algorithm: w.algorithm,
            created_at: w.created_at,
        }
    }
}

/// What StoreStatus reports about one store. Read from its file and the key states the
/// daemon already knows: no KMS call.
#[derive(Debug, Clone)]
pub struct StoreInfo {
    pub store_id: StoreId,
    /// The key that wraps the file now; `None` while the store has no key file.
    pub key: Option<String>,
    pub configured_key: KeyName,
    /// The active key's wrap, per entry, as the KMS reported at wrap time.
    pub key_versions: Vec<String>,
    pub needs_rewrap: bool,
    /// Why it needs a re-wrap (or that it does not).
    pub detail: String,
    pub active: Option<KeyInfo>,
    pub previous: Vec<KeyInfo>,
}

impl Stores {
    /// StoreStatus for one store.
    pub fn status(&self, id: &StoreId) -> Result<StoreInfo, Error> {
        let slot = self.slot(id)?;
        let file = self.read(id)?;
        Ok(self.info(id, &slot.config.key, file.as_ref()))
    }

    /// Every configured store's id, in order.
    pub fn ids(&self) -> impl Iterator<Item = &StoreId> {
        self.slots.keys()
    }

    pub(super) fn info(
        &self,
        id: &StoreId,
        configured: &KeyName,
        file: Option<&StoreKeyFile>,
    ) -> StoreInfo {
        let Some(file) = file else {
            return StoreInfo {
                store_id: id.clone(),
                key: None,
                configured_key: configured.clone(),
                key_versions: Vec::new(),
                needs_rewrap: false,
                detail: "no key file yet".into(),
                active: None,
                previous: Vec::new(),
            };
        };
        let reasons: Vec<String> = self
            .rewrap_reasons(configured, file)
            .iter()
            .map(Reason::to_string)
            .collect();
        let key_versions = Envelope::decode(&file.active.wrapped)
            .map(|e| e.entries.into_iter().map(|e| e.key_version).collect())
            .unwrap_or_default();
        let mut detail = if reasons.is_empty() {
            "wrapped under the configured key's current version".to_owned()
        } else {
            reasons.join("; ")
        };
        let max = self.slots.get(id).and_then(|s| s.config.max_previous);
        if let Some(max) = max.filter(|m| file.previous.len() > *m) {
            detail.push_str(&format!(
                "; {} previous keys, more than max_previous = {max}: once no data needs the \
                 oldest, drop it with `kms-broker drop-key {id} KEY_ID`",
                file.previous.len()
            ));
        }
        StoreInfo {
            store_id: id.clone(),
            key: Some(file.key_name.clone()),
            configured_key: configured.clone(),
            key_versions,
            needs_rewrap: !reasons.is_empty(),
            detail,
            active: Some(KeyInfo::from(&file.active)),
            previous: file.previous.iter().map(KeyInfo::from).collect(),
        }
    }

    /// Why `file` is not wrapped the way a fresh wrap under `configured` would be: another
    /// key, an older envelope format, a URI missing or retired, an old key version.
    fn rewrap_reasons(&self, configured: &KeyName, file: &StoreKeyFile) -> Vec<Reason> {
        if file.key_name != configured.as_str() {
            return vec![Reason::OtherKey(file.key_name.clone())];
        }
        let Ok(key) = self.broker.key(configured) else {
            return vec![Reason::Unparsable];
        };
        let mut reasons = Vec::new();
        for w in file.keys() {
            let Ok(env) = Envelope::decode(&w.wrapped) else {
                reasons.push(Reason::Unparsable);
                continue;
            };
            if env.format == Format::V1 {
                reasons.push(Reason::OldFormat);
            }
            for u in &key.uris {
                match env.entries.iter().find(|e| e.uri_id == u.id) {
                    None => reasons.push(Reason::MissingUri(u.id.clone())),
                    Some(e) => match u.current_version() {
                        Some(v) if e.key_version != v => reasons.push(Reason::OldVersion {
                            uri: u.id.clone(),
                            was: e.key_version.clone(),
                            now: v,
                        }),
                        _ => {}
                    },
                }
            }
            if env
                .entries
                .iter()
                .any(|e| key.uris.iter().all(|u| u.id != e.uri_id))
            {
                reasons.push(Reason::RetiredUri);
            }
        }
        reasons.sort();
        reasons.dedup();
        reasons
    }

    /// Adds the wraps a store is missing (made in `available` mode while a URI was down)
    /// once every URI it lacks is ACTIVE again. Runs when key states change.
    pub(super) async fn heal(&self) {
        for (id, slot) in &self.slots {
            let Ok(Some(file)) = store_key::read_store_file(&self.state_dir, id) else {
                continue;
            };
            let reasons = self.rewrap_reasons(&slot.config.key, &file);
            let Ok(key) = self.broker.key(&slot.config.key) else {
                continue;
            };
            let healable = !reasons.is_empty()
                && reasons.iter().all(|r| match r {
                    Reason::MissingUri(id) => key
                        .uris
                        .iter()
                        .any(|u| &u.id == id && u.state() == crate::state::KeyState::Active),
                    _ => false,
                });
            if healable {
                match self.rewrap_one(id, false).await {
                    Ok((info, _)) if !info.needs_rewrap => {
                        tracing::info!(store = %id, "added the wraps the store was missing")
                    }
                    Ok((info, _)) => {
                        tracing::warn!(store = %id, detail = %info.detail, "store still lacks wraps")
                    }
                    Err(e) => {
                        tracing::warn!(store = %id, error = %e, "could not add missing wraps")
                    }
                }
            }
        }
    }

    /// RotateStoreKey: a new active key (the configured algorithm), wrapped under the key
    /// that wraps the file now; the old active key becomes the newest previous one.
    pub async fn rotate(&self, id: &StoreId) -> Result<StoreInfo, Error> {
        let slot = self.slot(id)?;
        let _work = slot.work.lock().await;
        let mut file = self.read(id)?.ok_or_else(|| {
            Error::NotFound(format!("store {:?} has no key yet to rotate", id.as_str()))
        })?;
        let key_name =
            KeyName::parse(&file.key_name).map_err(|_| self.corrupt(id, "bad key name"))?;
        let key = StoreKey::generate(slot.config.algorithm);
        let wrapped = self
            .broker
            .wrap(&key_name, &key.to_key_file_bytes(), context(id))
            .await?;
        crate::fs::failpoint("store-rotate:wrapped");
        file.rotate(WrappedStoreKey::new(&key, wrapped.blob));
        self.replace(id, &file)?;
        // Keys held in memory follow; if none are held, the next GetStoreKey unwraps all.
        let mut held = slot.held();
        if let Some(h) = held.take() {
            let mut previous = vec![h.keys.active.duplicate()];
            previous.extend(h.keys.previous.iter().map(StoreKey::duplicate));
            *held = Some(std::sync::Arc::new(Held {
                key_name: h.key_name.clone(),
                keys: StoreKeys {
                    active: key,
                    previous,
                    wrapped_copy: file.to_json(),
                },
            }));
        }
        drop(held);
        tracing::info!(store = %id, key = %key_name, key_id = %hex::encode(file.active.key_id), previous = file.previous.len(), "rotated store key");
        Ok(self.info(id, &slot.config.key, Some(&file)))
    }

    /// Rewrap: every store (or one) whose file needs it is re-wrapped under its configured
    /// key. Returns each store's status after, and how many files changed (or would).
    pub async fn rewrap(
        &self,
        only: Option<&StoreId>,
        dry_run: bool,
    ) -> Result<(Vec<StoreInfo>, u32), Error> {
        let ids: Vec<StoreId> = match only {
            Some(id) => vec![self.slot(id).map(|_| id.clone())?],
            None => self.slots.keys().cloned().collect(),
        };
        let (mut out, mut changed) = (Vec::with_capacity(ids.len()), 0);
        for (n, id) in ids.iter().enumerate() {
            let (info, did) = self.rewrap_one(id, dry_run).await?;
            if did {
                changed += 1;
                tracing::info!(store = %id, done = n + 1, of = ids.len(), dry_run, "re-wrapped store");
            }
            out.push(info);
        }
        Ok((out, changed))
    }

    async fn rewrap_one(&self, id: &StoreId, dry_run: bool) -> Result<(StoreInfo, bool), Error> {
        let slot = self.slot(id)?;
        let _work = slot.work.lock().await;
        let Some(file) = self.read(id)? else {
            return Ok((self.info(id, &slot.config.key, None), false));
        };
        let before = self.info(id, &slot.config.key, Some(&file));
        if !before.needs_rewrap || dry_run {
            let would = before.needs_rewrap;
            return Ok((before, would));
        }
        // Through the key that wraps it now (the old one, while a store moves)...
        let (_, keys) = self.unwrap_file(id, &file).await?;
        // ...and under the configured key's current version, every key the same.
        let target = &slot.config.key;
        let mut wrapped = Vec::with_capacity(1 + keys.previous.len());
        for k in std::iter::once(&keys.active).chain(&keys.previous) {
            let w = self
                .broker
                .wrap(target, &k.to_key_file_bytes(), context(id))
                .await?;
            wrapped.push(WrappedStoreKey::new(k, w.blob));
        }
        let mut wrapped = wrapped.into_iter();
        let active = wrapped
            .next()
            .ok_or_else(|| Error::internal("no active key"))?;
        let mut new = StoreKeyFile::new(id.clone(), target.as_str(), active);
        new.previous = wrapped.collect();
        crate::fs::failpoint("store-rewrap:wrapped");
        self.replace(id, &new)?;
        let keys = StoreKeys {
            wrapped_copy: new.to_json(),
            ..keys
        };
        *slot.held() = Some(std::sync::Arc::new(Held {
            key_name: target.clone(),
            keys,
        }));
        Ok((self.info(id, target, Some(&new)), true))
    }

    /// Replaces a store's file atomically (the store's lock is held by the caller).
    pub(super) fn replace(&self, id: &StoreId, file: &StoreKeyFile) -> Result<(), Error> {
        store_key::write_store_file(&self.state_dir, file).map_err(|e| {
            tracing::error!(store = %id, error = %e, "cannot write the store's key file");
            Error::internal(format!(
                "cannot write the key file of store {:?}; see the daemon log",
                id.as_str()
            ))
        })
    }
}
