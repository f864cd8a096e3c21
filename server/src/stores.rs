//! GetStoreKey's work: create a store's key once, persist it only wrapped, unwrap it after a
//! restart, hold it in zeroized memory, and hand it out only while its KMS key allows.
//!
//! Concurrent calls for one store are coalesced: a per-store lock means one KMS unwrap (or
//! one creation) however many node processes ask at once.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::broker::Broker;
use crate::config::{Config, StoreConfig};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::store_key::{self, StoreId, StoreKey, StoreKeyFile, WrappedStoreKey};

/// The context every store-key wrap binds. Its `kms-broker:` prefix is reserved: a caller
/// of UnwrapKey cannot supply it, so UnwrapKey can never open a store key's blob.
pub const STORE_CONTEXT: &str = "kms-broker:store_id";

/// Keys of one store, as handed out.
#[derive(Debug)]
pub struct StoreKeys {
    pub active: StoreKey,
    /// Newest first.
    pub previous: Vec<StoreKey>,
}

#[derive(Debug)]
struct Held {
    key_name: String,
    keys: StoreKeys,
}

impl StoreKeys {
    fn duplicate(&self) -> StoreKeys {
        StoreKeys {
            active: self.active.duplicate(),
            previous: self.previous.iter().map(StoreKey::duplicate).collect(),
        }
    }
}

/// Store configs, their on-disk state and the keys held in memory.
#[derive(Debug)]
pub struct Stores {
    configs: BTreeMap<StoreId, StoreConfig>,
    state_dir: PathBuf,
    held: Mutex<HashMap<StoreId, Arc<Held>>>,
    locks: BTreeMap<StoreId, tokio::sync::Mutex<()>>,
}

impl Stores {
    pub fn new(config: &Config) -> Result<Self, String> {
        store_key::ensure_state_dir(&config.server.state_dir)
            .map_err(|e| format!("state_dir {}: {e}", config.server.state_dir.display()))?;
        Ok(Self {
            configs: config.stores.clone(),
            state_dir: config.server.state_dir.clone(),
            held: Mutex::new(HashMap::new()),
            locks: config
                .stores
                .keys()
                .map(|id| (id.clone(), tokio::sync::Mutex::new(())))
                .collect(),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<StoreId, Arc<Held>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store's configured KMS key name, or NOT_FOUND.
    pub fn key_of(&self, id: &StoreId) -> Result<&str, Error> {
        self.configs
            .get(id)
            .map(|c| c.key.as_str())
            .ok_or_else(|| Error::NotFound(format!("no store named {:?}", id.as_str())))
    }

    /// Hands out held material if the key's state allows; drops it if the key is revoked.
    fn hand_out_held(&self, broker: &Broker, id: &StoreId) -> Option<Result<StoreKeys, Error>> {
        let h = self.held().get(id).cloned()?;
        match broker.tracker().may_hand_out_held(&h.key_name) {
            Ok(()) => Some(Ok(h.keys.duplicate())),
            Err(e @ Error::KeyNotUsable { .. }) => {
                self.held().remove(id);
                Some(Err(e))
            }
            // Grace is over: forget the material and let the caller try the KMS.
            Err(_) => {
                self.held().remove(id);
                None
            }
        }
    }

    /// GetStoreKey after authorization.
    pub async fn get(
        &self,
        broker: &Broker,
        id: &StoreId,
        create: bool,
    ) -> Result<StoreKeys, Error> {
        let cfg = self
            .configs
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("no store named {:?}", id.as_str())))?;
        if let Some(r) = self.hand_out_held(broker, id) {
            return r;
        }
        let _guard = self
            .locks
            .get(id)
            .expect("a lock per configured store")
            .lock()
            .await;
        if let Some(r) = self.hand_out_held(broker, id) {
            return r;
        }
        let file = store_key::read_store_file(&self.state_dir, id).map_err(|e| {
            tracing::error!(store = %id, error = %e, "cannot read the store's key file");
            Error::internal(format!(
                "the key file of store {:?} is unreadable; see the daemon log",
                id.as_str()
            ))
        })?;
        let (key_name, keys) = match file {
            Some(file) => (file.key_name.clone(), self.unwrap_file(broker, id, &file).await?),
            None if !create => {
                return Err(Error::NotFound(format!(
                    "store {:?} has no key yet (a node creates it with create=true when it initializes the store)",
                    id.as_str()
                )))
            }
            None => (cfg.key.clone(), self.create(broker, id, cfg).await?),
        };
        let out = keys.duplicate();
        self.held()
            .insert(id.clone(), Arc::new(Held { key_name, keys }));
        Ok(out)
    }

    async fn create(
        &self,
        broker: &Broker,
        id: &StoreId,
        cfg: &StoreConfig,
    ) -> Result<StoreKeys, Error> {
        let key = StoreKey::generate(cfg.algorithm);
        let wrapped = broker
            .wrap(&cfg.key, &key.to_key_file_bytes(), context(id))
            .await?;
        crate::fs::failpoint("store-create:wrapped");
        let file = StoreKeyFile::new(
            id.clone(),
            &cfg.key,
            WrappedStoreKey::new(&key, wrapped.blob),
        );
        store_key::write_store_file(&self.state_dir, &file).map_err(|e| {
            tracing::error!(store = %id, error = %e, "cannot persist the store key");
            Error::internal(format!(
                "cannot persist the key of store {:?}; see the daemon log",
                id.as_str()
            ))
        })?;
        tracing::info!(store = %id, key = %cfg.key, algorithm = cfg.algorithm.as_str(), "created store key");
        Ok(StoreKeys {
            active: key,
            previous: Vec::new(),
        })
    }

    async fn unwrap_file(
        &self,
        broker: &Broker,
        id: &StoreId,
        file: &StoreKeyFile,
    ) -> Result<StoreKeys, Error> {
        if !broker.has_key(&file.key_name) {
            return Err(Error::internal(format!(
                "store {:?} is wrapped under key {:?}, which is no longer configured",
                id.as_str(),
                file.key_name
            )));
        }
        let active = self.unwrap_one(broker, id, file, &file.active).await?;
        let mut previous = Vec::with_capacity(file.previous.len());
        for p in &file.previous {
            previous.push(self.unwrap_one(broker, id, file, p).await?);
        }
        Ok(StoreKeys { active, previous })
    }

    async fn unwrap_one(
        &self,
        broker: &Broker,
        id: &StoreId,
        file: &StoreKeyFile,
        w: &WrappedStoreKey,
    ) -> Result<StoreKey, Error> {
        let corrupt = |why: &str| {
            tracing::error!(store = %id, why, "store key file does not match its wrapped key");
            Error::internal(format!(
                "the key file of store {:?} is corrupt; see the daemon log",
                id.as_str()
            ))
        };
        let env = Envelope::decode(&w.wrapped).map_err(|_| corrupt("envelope does not parse"))?;
        if env.key_name != file.key_name {
            return Err(corrupt("envelope names another key"));
        }
        let out = broker
            .unwrap(&env, context(id))
            .await
            .map_err(|e| match e {
                Error::InvalidArgument(_) => corrupt("wrapped key does not authenticate"),
                e => e,
            })?;
        w.open(out.plaintext)
            .map_err(|_| corrupt("unwrapped key has the wrong size or id"))
    }

    /// Drops held material whose key may no longer be handed out (revoked kinds at once;
    /// UNREACHABLE once the grace period is over), so it does not linger in memory.
    pub fn purge(&self, broker: &Broker) {
        self.held().retain(|id, h| {
            let keep = broker.tracker().may_hand_out_held(&h.key_name).is_ok();
            if !keep {
                tracing::warn!(store = %id, key = %h.key_name, "dropped the held store key");
            }
            keep
        });
    }
}

fn context(id: &StoreId) -> BTreeMap<String, String> {
    BTreeMap::from([(STORE_CONTEXT.to_owned(), id.as_str().to_owned())])
}
