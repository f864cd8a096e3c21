//! Keeping a store's keys over time: scheduled rotation (`rotation_period`), the explicit
//! drop of one previous key, and restoring a store's file from a wrapped copy.
//!
//! Nothing here drops a key silently: `max_previous` only makes StoreStatus say a store is
//! over it; dropping is DropPreviousStoreKey, naming the key by id.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use super::{Held, StoreInfo, Stores};
use crate::error::Error;
use crate::log_limit::caller_text;
use crate::store_key::{self, StoreFileError, StoreId, StoreKeyFile};

/// How often the rotation schedule looks at the stores' files (cheap: file reads only).
const SCHEDULE_TICK: Duration = Duration::from_secs(60);

impl Stores {
    /// DropPreviousStoreKey: removes one previous key, named by its id, from the file and
    /// from memory. Data still encrypted under it can no longer be read.
    pub async fn drop_previous(&self, id: &StoreId, key_id: &[u8]) -> Result<StoreInfo, Error> {
        let slot = self.slot(id)?;
        let _work = slot.work.lock().await;
        let mut file = self
            .read(id)?
            .ok_or_else(|| Error::NotFound(format!("store {:?} has no key yet", id.as_str())))?;
        if file.active.key_id.as_slice() == key_id {
            return Err(Error::invalid(
                "that is the active key; rotate first, then drop it once no data needs it",
            ));
        }
        let pos = file
            .previous
            .iter()
            .position(|p| p.key_id.as_slice() == key_id)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "store {:?} has no previous key with that id",
                    id.as_str()
                ))
            })?;
        file.previous.remove(pos);
        self.replace(id, &file)?;
        let mut held = slot.held();
        if let Some(h) = held.take() {
            let mut keys = h.keys.duplicate();
            keys.previous.retain(|k| k.key_id.as_slice() != key_id);
            keys.wrapped_copy = file.to_json();
            *held = Some(Arc::new(Held {
                key_name: h.key_name.clone(),
                keys,
            }));
        }
        drop(held);
        tracing::warn!(store = %id, key_id = %hex::encode(key_id), "dropped a previous store key on request");
        Ok(self.info(id, &slot.config.key, Some(&file)))
    }

    /// ImportStoreKey: restores a store's file from a wrapped copy. Every key in it must
    /// unwrap under this daemon's configured keys with this store's context (the proof that
    /// it is this store's, not a planted file); an existing file is never replaced.
    pub async fn import(&self, copy: &[u8]) -> Result<StoreInfo, Error> {
        let file = StoreKeyFile::from_json(copy).map_err(|e| {
            tracing::info!(problem = %caller_text(&e.to_string()), "refused a store key file copy");
            Error::invalid("wrapped_copy is not a kms-broker store key file")
        })?;
        let id = file.store_id.clone();
        let slot = self.slot(&id)?;
        let _work = slot.work.lock().await;
        let (key_name, keys) = self.unwrap_file(&id, &file).await.map_err(|e| match e {
            Error::Internal(_) => Error::invalid(format!(
                "the copy of store {:?} does not unwrap under this daemon's keys",
                id.as_str()
            )),
            e => e,
        })?;
        match store_key::create_store_file(&self.state_dir, &file) {
            Ok(()) => {}
            Err(StoreFileError::Exists { .. }) => {
                let existing = self.read(&id)?;
                if existing.as_ref() != Some(&file) {
                    return Err(Error::AlreadyExists(format!(
                        "store {:?} already has a different key file; nothing was replaced",
                        id.as_str()
                    )));
                }
            }
            Err(e) => {
                tracing::error!(store = %id, error = %e, "cannot write the imported key file");
                return Err(Error::internal(format!(
                    "cannot write the key file of store {:?}; see the daemon log",
                    id.as_str()
                )));
            }
        }
        *slot.held() = Some(Arc::new(Held { key_name, keys }));
        tracing::warn!(store = %id, "imported the store's key file from a copy");
        Ok(self.info(&id, &slot.config.key, Some(&file)))
    }

    /// Rotates every store whose active key is older than its `rotation_period`.
    async fn rotate_due(&self) {
        let now = SystemTime::now();
        for (id, slot) in &self.slots {
            let Some(period) = slot.config.rotation_period else {
                continue;
            };
            let Ok(Some(file)) = store_key::read_store_file(&self.state_dir, id) else {
                continue;
            };
            let due = file
                .active
                .created_at
                .checked_add(period)
                .is_some_and(|t| t <= now);
            if due {
                match self.rotate(id).await {
                    Ok(_) => tracing::info!(store = %id, ?period, "rotated on schedule"),
                    Err(e) => {
                        tracing::warn!(store = %id, error = %e, "scheduled rotation failed; will retry")
                    }
                }
            }
        }
    }
}

impl Stores {
    /// Whether every configured store with a key file can be handed its key now: held
    /// and allowed (ACTIVE, or UNREACHABLE within grace), or not held and its key ACTIVE.
    /// No KMS call: a health check must never cost one.
    pub fn servable(&self) -> Result<(), String> {
        for (id, slot) in &self.slots {
            if !store_key::path_for(&self.state_dir, id).exists() {
                continue;
            }
            let held = slot.held().clone();
            let ok = match held {
                Some(h) => self.broker.may_hand_out_held(&h.key_name).is_ok(),
                None => {
                    let key = match store_key::read_store_file(&self.state_dir, id) {
                        Ok(Some(f)) => crate::key_name::KeyName::parse(&f.key_name).ok(),
                        _ => None,
                    };
                    key.and_then(|k| self.broker.status(&k))
                        .is_some_and(|s| s.state == crate::state::KeyState::Active)
                }
            };
            if !ok {
                return Err(format!("store {id}'s key cannot be handed out"));
            }
        }
        Ok(())
    }

    /// Unwraps every store key that has a file, concurrently, so the first GetStoreKey of
    /// each node is served from memory. Failures are logged; GetStoreKey retries them.
    pub async fn prewarm(self: Arc<Self>) {
        let ids: Vec<StoreId> = self
            .slots
            .keys()
            .filter(|id| store_key::path_for(&self.state_dir, id).exists())
            .cloned()
            .collect();
        let started = tokio::time::Instant::now();
        let results =
            futures_util::future::join_all(ids.iter().map(|id| self.get(id, false))).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        for (id, r) in ids.iter().zip(&results) {
            if let Err(e) = r {
                tracing::warn!(store = %id, error = %e, "could not pre-warm the store key");
            }
        }
        tracing::info!(stores = ids.len(), failed, took = ?started.elapsed(), "pre-warmed store keys");
    }
}

/// Checks the rotation schedule at start and every [`SCHEDULE_TICK`]. Ends with the stores.
pub(super) async fn rotation_schedule(stores: Weak<Stores>) {
    let mut tick = tokio::time::interval(SCHEDULE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match stores.upgrade() {
            Some(s) => s.rotate_due().await,
            None => return,
        }
    }
}
