//! The lifecycle RPCs (CONTRACT "Additions"): RotateStoreKey, StoreStatus, Rewrap and
//! RewrapKey. None returns key bytes, so the policy may grant them over mutual TLS too.

use std::collections::BTreeMap;

use super::convert::timestamp;
use super::Service;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::key_name::KeyName;
use crate::live::Runtime;
use crate::pb;
use crate::peer::Peer;
use crate::policy::Operation;
use crate::store_key::StoreId;
use crate::stores::{KeyInfo, StoreInfo};

fn pb_key_info(k: &KeyInfo) -> pb::StoreKeyInfo {
    pb::StoreKeyInfo {
        key_id: k.key_id.to_vec(),
        algorithm: k.algorithm.as_str().to_owned(),
        created_at: Some(timestamp(k.created_at)),
    }
}

pub(super) fn pb_store_status(s: StoreInfo) -> pb::StoreStatus {
    pb::StoreStatus {
        store_id: s.store_id.to_string(),
        key: s.key.unwrap_or_default(),
        configured_key: s.configured_key.to_string(),
        key_versions: s.key_versions,
        needs_rewrap: s.needs_rewrap,
        active: s.active.as_ref().map(pb_key_info),
        previous: s.previous.iter().map(pb_key_info).collect(),
        detail: s.detail,
    }
}

impl Service {
    pub(super) async fn rotate(&self, peer: &Peer, id: &StoreId) -> Result<pb::StoreStatus, Error> {
        let rt = self.rt();
        rt.config
            .policy
            .authorize(peer, Operation::RotateStoreKey, None, Some(id))?;
        Ok(pb_store_status(rt.stores.rotate(id).await?))
    }

    /// The stores `peer` may call `op` on: one named, or every one it may see.
    fn stores_for(
        rt: &Runtime,
        peer: &Peer,
        op: Operation,
        store: Option<&StoreId>,
    ) -> Result<Vec<StoreId>, Error> {
        let policy = &rt.config.policy;
        if let Some(id) = store {
            policy.authorize(peer, op, None, Some(id))?;
            return Ok(vec![id.clone()]);
        }
        let ids: Vec<StoreId> = rt
            .stores
            .ids()
            .filter(|id| policy.may_use_store(peer, op, id))
            .cloned()
            .collect();
        if ids.is_empty() {
            // The same answer as a named store the caller may not use.
            policy.authorize(peer, op, None, None)?;
        }
        Ok(ids)
    }

    pub(super) fn store_status(
        &self,
        peer: &Peer,
        store: Option<&StoreId>,
    ) -> Result<pb::StoreStatusResponse, Error> {
        let rt = self.rt();
        let ids = Self::stores_for(&rt, peer, Operation::StoreStatus, store)?;
        let stores = ids
            .iter()
            .map(|id| rt.stores.status(id).map(pb_store_status))
            .collect::<Result<_, _>>()?;
        Ok(pb::StoreStatusResponse { stores })
    }

    pub(super) async fn rewrap(
        &self,
        peer: &Peer,
        store: Option<&StoreId>,
        dry_run: bool,
    ) -> Result<pb::RewrapResponse, Error> {
        let rt = self.rt();
        let ids = Self::stores_for(&rt, peer, Operation::Rewrap, store)?;
        let mut stores = Vec::with_capacity(ids.len());
        let mut rewrapped = 0;
        for id in &ids {
            let (mut infos, n) = rt.stores.rewrap(Some(id), dry_run).await?;
            rewrapped += n;
            stores.extend(infos.drain(..).map(pb_store_status));
        }
        Ok(pb::RewrapResponse { stores, rewrapped })
    }

    /// The copy names its store; the policy is checked for that store before any KMS call.
    pub(super) async fn import(&self, peer: &Peer, copy: &[u8]) -> Result<pb::StoreStatus, Error> {
        let id = crate::store_key::StoreKeyFile::from_json(copy)
            .map(|f| f.store_id)
            .map_err(|_| Error::invalid("wrapped_copy is not a kms-broker store key file"))?;
        let rt = self.rt();
        rt.config
            .policy
            .authorize(peer, Operation::ImportStoreKey, None, Some(&id))?;
        Ok(pb_store_status(rt.stores.import(copy).await?))
    }

    /// Unwraps with the blob's key and wraps under the target (the same key: its current
    /// version; or `key`), with the same context. The plaintext stays in the daemon.
    pub(super) async fn rewrap_key(
        &self,
        peer: &Peer,
        env: Envelope,
        context: BTreeMap<String, String>,
        target: KeyName,
    ) -> Result<pb::WrapKeyResponse, Error> {
        let rt = self.rt();
        let policy = &rt.config.policy;
        policy.authorize(peer, Operation::UnwrapKey, Some(&env.key_name), None)?;
        policy.authorize(peer, Operation::WrapKey, Some(&target), None)?;
        let broker = &rt.broker;
        // Look the target up before spending a KMS call on the source.
        broker.key(&target)?;
        let plain = broker.unwrap(&env, context.clone()).await?;
        let w = broker.wrap(&target, &plain.plaintext, context).await?;
        Ok(pb::WrapKeyResponse {
            wrapped: w.blob,
            key: target.to_string(),
            key_version: w.key_version,
        })
    }
}
