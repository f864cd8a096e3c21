//! GetStoreKey's work: create a store's key once, persist it only wrapped, unwrap it after a
//! restart, hold it in zeroized memory, and hand it out only while its KMS key allows.
//!
//! Each configured store has ONE slot: its config, the lock that coalesces concurrent calls
//! (one KMS unwrap, or one creation, however many node processes ask at once) and the keys
//! held in memory. Held keys are dropped as soon as their KMS key's state changes to one that
//! may not hand them out: a purger follows the revocation epoch.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use crate::broker::Broker;
use crate::config::{Config, StoreConfig};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::key_name::KeyName;
use crate::store_key::{self, StoreFileError, StoreId, StoreKey, StoreKeyFile, WrappedStoreKey};

mod lifecycle;
mod retention;

pub use lifecycle::{KeyInfo, StoreInfo};

/// The context every store-key wrap binds. Its `kms-broker:` prefix is reserved: a caller
/// of UnwrapKey cannot supply it, so UnwrapKey can never open a store key's blob.
pub const STORE_CONTEXT: &str = "kms-broker:store_id";

/// Keys of one store, as handed out.
#[derive(Debug)]
pub struct StoreKeys {
    pub active: StoreKey,
    /// Newest first.
    pub previous: Vec<StoreKey>,
    /// The store's key file, every key in it KMS-wrapped: a copy safe to keep beside the
    /// data, which ImportStoreKey restores.
    pub wrapped_copy: Vec<u8>,
}

impl StoreKeys {
    fn duplicate(&self) -> StoreKeys {
        StoreKeys {
            active: self.active.duplicate(),
            previous: self.previous.iter().map(StoreKey::duplicate).collect(),
            wrapped_copy: self.wrapped_copy.clone(),
        }
    }
}

/// Keys held in memory, with the KMS key that unwrapped them (the file's, which may differ
/// from the configured one while a store moves between keys).
#[derive(Debug)]
struct Held {
    key_name: KeyName,
    keys: StoreKeys,
}

/// One configured store. `work` and `held` are shared with the slot of the same store in
/// the config a reload replaces, so calls still running under the old config and calls
/// under the new one take the same lock and see the same held keys.
#[derive(Debug)]
struct Slot {
    config: StoreConfig,
    /// Held across the KMS call and the file write: one creation or unwrap at a time.
    work: Arc<tokio::sync::Mutex<()>>,
    held: Arc<Mutex<Option<Arc<Held>>>>,
}

impl Slot {
    fn held(&self) -> std::sync::MutexGuard<'_, Option<Arc<Held>>> {
        // A poisoned lock still holds a whole Option.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every configured store, its on-disk state and the keys held in memory.
#[derive(Debug)]
pub struct Stores {
    broker: Arc<Broker>,
    state_dir: PathBuf,
    slots: BTreeMap<StoreId, Slot>,
}

/// Whether the keys `slot` holds (now or once a call in flight finishes) may stay held
/// across a reload from `old` to `new` (`config`: the store's new config): only if the
/// store keeps its key and that key (and the one held keys were unwrapped under) still lists
/// exactly the same KMS URIs. Held keys are gated by their key's URIs; were those swapped (a
/// CMEK migration, or a typo), a revocation of the CMEK that really protects the store file
/// would go unseen, as it is no longer polled. Dropped, the next GetStoreKey reads the file
/// and asks the KMS: fresh evidence, at the cost of one call per store.
fn still_protected_alike(slot: &Slot, config: &StoreConfig, old: &Broker, new: &Broker) -> bool {
    let same_uris = |name: &KeyName| {
        let uris = |b: &Broker| {
            b.key(name)
                .ok()
                .map(|k| k.uris.iter().map(|u| u.uri.clone()).collect::<Vec<_>>())
        };
        matches!((uris(old), uris(new)), (Some(was), Some(now)) if was == now)
    };
    let held = slot.held().clone();
    slot.config.key == config.key
        && same_uris(&config.key)
        && held.is_none_or(|h| same_uris(&h.key_name))
}

impl Stores {
    /// Checks the state dir (never creates it: a lost mount must fail here, not become a
    /// fresh empty folder), names the stores that have no key yet, and starts the purger.
    /// Needs a Tokio runtime.
    pub fn new(config: &Config, broker: Arc<Broker>) -> Result<Arc<Self>, String> {
        let dir = &config.server.state_dir;
        store_key::ensure_state_dir(dir)
            .map_err(|e| format!("state_dir {}: {e}", dir.display()))?;
        Ok(Self::build(config, broker, None))
    }

    /// The stores a reloaded `config` describes, served by `broker`. A store kept by the
    /// reload keeps its lock and the keys held for it (still gated by `broker` on every
    /// hand-out); a removed store's keys go with the old value. The state dir cannot change
    /// on reload, and [`crate::live::check`] has just examined it.
    pub fn reload(&self, config: &Config, broker: Arc<Broker>) -> Arc<Self> {
        Self::build(config, broker, Some(self))
    }

    fn build(config: &Config, broker: Arc<Broker>, previous: Option<&Stores>) -> Arc<Self> {
        let dir = &config.server.state_dir;
        for id in config.stores.keys() {
            let known = previous.is_some_and(|p| p.slots.contains_key(id));
            if !known && !store_key::path_for(dir, id).exists() {
                tracing::info!(store = %id, "store has no key file yet: a node's first GetStoreKey with create=true makes it");
            }
        }
        let slots = config
            .stores
            .iter()
            .map(|(id, c)| {
                let kept = previous.and_then(|p| p.slots.get(id).map(|slot| (p, slot)));
                let slot = Slot {
                    config: c.clone(),
                    work: kept.map_or_else(Default::default, |(_, k)| k.work.clone()),
                    held: match kept {
                        Some((p, k)) if still_protected_alike(k, c, &p.broker, &broker) => {
                            k.held.clone()
                        }
                        _ => Default::default(),
                    },
                };
                (id.clone(), slot)
            })
            .collect();
        let stores = Arc::new(Self {
            broker,
            state_dir: dir.clone(),
            slots,
        });
        // Subscribed before the tasks start, so no change between now and then is missed.
        let epochs = stores.broker.clock().subscribe();
        tokio::spawn(purge_on_change(Arc::downgrade(&stores), epochs.clone()));
        tokio::spawn(heal_on_change(Arc::downgrade(&stores), epochs));
        if stores
            .slots
            .values()
            .any(|s| s.config.rotation_period.is_some())
        {
            tokio::spawn(retention::rotation_schedule(Arc::downgrade(&stores)));
        }
        stores
    }

    fn slot(&self, id: &StoreId) -> Result<&Slot, Error> {
        self.slots
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("no store named {:?}", id.as_str())))
    }

    /// Hands out held material if the key's state allows; drops it otherwise (a revoked
    /// kind is refused; after the grace period the caller may try the KMS again).
    fn hand_out_held(&self, slot: &Slot) -> Option<Result<StoreKeys, Error>> {
        let h = slot.held().clone()?;
        match self.broker.may_hand_out_held(&h.key_name) {
            Ok(()) => Some(Ok(h.keys.duplicate())),
            Err(e) => {
                *slot.held() = None;
                match e {
                    e @ Error::KeyNotUsable { .. } => Some(Err(e)),
                    _ => None,
                }
            }
        }
    }

    /// GetStoreKey after authorization.
    pub async fn get(&self, id: &StoreId, create: bool) -> Result<StoreKeys, Error> {
        let slot = self.slot(id)?;
        if let Some(r) = self.hand_out_held(slot) {
            return r;
        }
        let _work = slot.work.lock().await;
        if let Some(r) = self.hand_out_held(slot) {
            return r;
        }
        let file = self.read(id)?;
        let (key_name, keys) = match file {
            Some(file) => self.unwrap_file(id, &file).await?,
            None if !create => {
                return Err(Error::NotFound(format!(
                    "store {:?} has no key yet (a node creates it with create=true when it initializes the store)",
                    id.as_str()
                )))
            }
            None => self.create(id, &slot.config).await?,
        };
        // The KMS answered, but the key may have been revoked while it did: fail closed.
        self.broker.may_hand_out_held(&key_name)?;
        let out = keys.duplicate();
        *slot.held() = Some(Arc::new(Held { key_name, keys }));
        Ok(out)
    }

    fn read(&self, id: &StoreId) -> Result<Option<StoreKeyFile>, Error> {
        store_key::read_store_file(&self.state_dir, id).map_err(|e| {
            tracing::error!(store = %id, error = %e, "cannot read the store's key file");
            Error::internal(format!(
                "the key file of store {:?} is unreadable; see the daemon log",
                id.as_str()
            ))
        })
    }

    /// Makes, wraps and durably saves a new key, create-new: if a file appeared meanwhile
    /// (another process on the same state dir, despite its lock), that file's key is the
    /// store's, and the new one is discarded before anyone saw it.
    async fn create(&self, id: &StoreId, cfg: &StoreConfig) -> Result<(KeyName, StoreKeys), Error> {
        let key = StoreKey::generate(cfg.algorithm);
        let wrapped = self
            .broker
            .wrap(&cfg.key, &key.to_key_file_bytes(), context(id))
            .await?;
        crate::fs::failpoint("store-create:wrapped");
        let wrapped_missing = wrapped.missing;
        let file = StoreKeyFile::new(
            id.clone(),
            cfg.key.as_str(),
            WrappedStoreKey::new(&key, wrapped.blob),
        );
        match store_key::create_store_file(&self.state_dir, &file) {
            Ok(()) => {}
            Err(StoreFileError::Exists { .. }) => {
                tracing::warn!(store = %id, "a key file appeared while creating one; using the saved key");
                let saved = self.read(id)?.ok_or_else(|| {
                    Error::internal(format!(
                        "the key file of store {:?} appeared and vanished; see the daemon log",
                        id.as_str()
                    ))
                })?;
                return self.unwrap_file(id, &saved).await;
            }
            Err(e) => {
                tracing::error!(store = %id, error = %e, "cannot persist the store key");
                return Err(Error::internal(format!(
                    "cannot persist the key of store {:?}; see the daemon log",
                    id.as_str()
                )));
            }
        }
        tracing::info!(store = %id, key = %cfg.key, algorithm = cfg.algorithm.as_str(), "created store key");
        if !wrapped_missing.is_empty() {
            tracing::warn!(store = %id, missing = ?wrapped_missing, "store key wrapped without some URIs (available mode); the wraps are added when they are back");
        }
        let keys = StoreKeys {
            active: key,
            previous: Vec::new(),
            wrapped_copy: file.to_json(),
        };
        Ok((cfg.key.clone(), keys))
    }

    /// Unwraps every key of a store's file; returns the key name that wraps them.
    async fn unwrap_file(
        &self,
        id: &StoreId,
        file: &StoreKeyFile,
    ) -> Result<(KeyName, StoreKeys), Error> {
        let key_name =
            KeyName::parse(&file.key_name).map_err(|_| self.corrupt(id, "bad key name"))?;
        if self.broker.key(&key_name).is_err() {
            return Err(Error::internal(format!(
                "store {:?} is wrapped under key {:?}, which is no longer configured",
                id.as_str(),
                key_name.as_str()
            )));
        }
        let active = self.unwrap_one(id, &key_name, &file.active).await?;
        let mut previous = Vec::with_capacity(file.previous.len());
        for p in &file.previous {
            previous.push(self.unwrap_one(id, &key_name, p).await?);
        }
        let keys = StoreKeys {
            active,
            previous,
            wrapped_copy: file.to_json(),
        };
        Ok((key_name, keys))
    }

    fn corrupt(&self, id: &StoreId, why: &str) -> Error {
        tracing::error!(store = %id, why, "store key file does not match its wrapped key");
        Error::internal(format!(
            "the key file of store {:?} is corrupt; see the daemon log",
            id.as_str()
        ))
    }

    async fn unwrap_one(
        &self,
        id: &StoreId,
        key_name: &KeyName,
        w: &WrappedStoreKey,
    ) -> Result<StoreKey, Error> {
        let env = Envelope::decode(&w.wrapped)
            .map_err(|_| self.corrupt(id, "envelope does not parse"))?;
        if env.key_name != *key_name {
            return Err(self.corrupt(id, "envelope names another key"));
        }
        // Not corrupt: the key's URIs were swapped (a CMEK migration done out of order).
        let k = self.broker.key(key_name)?;
        if !env
            .entries
            .iter()
            .any(|e| k.uris.iter().any(|u| u.id == e.uri_id))
        {
            let wrapped_under: Vec<&str> = env.entries.iter().map(|e| e.uri_id.as_str()).collect();
            tracing::error!(store = %id, key = %key_name, ?wrapped_under, "the store's key file is wrapped only under KMS keys that its key no longer lists");
            return Err(Error::internal(format!(
                "store {:?} is wrapped only under KMS keys that key {:?} no longer lists (the daemon log names them); list one again, and to migrate, list both until Rewrap has run",
                id.as_str(),
                key_name.as_str()
            )));
        }
        let out = self
            .broker
            .unwrap(&env, context(id))
            .await
            .map_err(|e| match e {
                Error::InvalidArgument(_) => self.corrupt(id, "wrapped key does not authenticate"),
                e => e,
            })?;
        w.open(out.plaintext)
            .map_err(|_| self.corrupt(id, "unwrapped key has the wrong size or id"))
    }

    /// Each store, and whether its keys are held in memory now (for metrics).
    pub fn held(&self) -> impl Iterator<Item = (&StoreId, bool)> {
        self.slots.iter().map(|(id, s)| (id, s.held().is_some()))
    }

    /// Drops held material whose key may no longer be handed out (revoked kinds at once;
    /// UNREACHABLE once the grace period is over), so it does not linger in memory.
    pub fn purge(&self) {
        // The broker's cached unwraps follow the same rule as the store keys held here.
        self.broker.purge_cache();
        for (id, slot) in &self.slots {
            let mut held = slot.held();
            let drop_it = held
                .as_ref()
                .is_some_and(|h| self.broker.may_hand_out_held(&h.key_name).is_err());
            if drop_it {
                let h = held.take().expect("checked above");
                tracing::warn!(store = %id, key = %h.key_name, "dropped the held store key");
            }
        }
    }
}

/// Purges held keys whenever any URI's state changes, so a revocation seen by a real call
/// drops them at once rather than at the next poll. Ends with the [`Stores`].
async fn purge_on_change(stores: Weak<Stores>, mut rx: tokio::sync::watch::Receiver<u64>) {
    while rx.changed().await.is_ok() {
        match stores.upgrade() {
            Some(s) => s.purge(),
            None => return,
        }
    }
}

/// When a URI comes back, adds the wraps `available` mode had to leave out. Its own task:
/// KMS calls here must never delay a purge.
async fn heal_on_change(stores: Weak<Stores>, mut rx: tokio::sync::watch::Receiver<u64>) {
    while rx.changed().await.is_ok() {
        match stores.upgrade() {
            Some(s) => s.heal().await,
            None => return,
        }
    }
}

fn context(id: &StoreId) -> BTreeMap<String, String> {
    BTreeMap::from([(STORE_CONTEXT.to_owned(), id.as_str().to_owned())])
}
