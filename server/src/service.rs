//! The generated `KeyBroker` service: parse → peer → policy → work → response.
//!
//! The order of checks is CONTRACT.md's: parse the request (INVALID_ARGUMENT), identify the
//! caller (UNAUTHENTICATED), authorize (PERMISSION_DENIED, before any lookup, so a caller
//! learns nothing about keys it may not use), look up (NOT_FOUND), key state
//! (FAILED_PRECONDITION), then the KMS.
//!
//! Logging: a successful call is a `debug` line (60,000 calls made 9.5 MB of `info` lines;
//! the audit trail, not the operational log, is the record of every use). Refusals are
//! `info`, failures of the daemon itself `error`, both rate-limited per second, and every
//! string a caller sent is shown through [`crate::log_limit::caller_text`] (cut short, never URI-shaped).
//! Never key bytes.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::envelope::Envelope;
use crate::error::Error;
use crate::key_name::KeyName;
use crate::live::{Live, Runtime};
use crate::pb;
use crate::peer::Peer;
use crate::policy::Operation;
use crate::secret::SecretBytes;

mod call;
mod convert;
mod lifecycle;
mod parse;
mod watch;

use convert::{pb_key_status, pb_store_key};
use parse::{parse_context, parse_key_name, parse_optional, parse_store_id};

pub use parse::MAX_PLAINTEXT;

/// Shared by both transports.
#[derive(Debug, Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The policy, keys and stores in force: each call takes them once, at its start.
    live: Live,
    /// The audit trail and metrics: every call's end passes through it, in `finish`.
    observer: crate::observe::Observer,
    /// Set at shutdown: long-lived streams end, so they never hold the drain.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Service {
    pub fn new(live: Live, observer: crate::observe::Observer) -> Self {
        Self {
            inner: Arc::new(Inner {
                live,
                observer,
                closing: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    /// Ends every WatchRevokeStatus stream (at shutdown, when health goes NOT_SERVING).
    pub fn close_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    /// The runtime in force, for one call.
    fn rt(&self) -> Arc<Runtime> {
        self.inner.live.current()
    }

    /// The keys `peer` may see in RevokeStatus: one named, or every one it may see.
    fn visible_keys(
        &self,
        rt: &Runtime,
        peer: &Peer,
        key: Option<KeyName>,
    ) -> Result<Vec<KeyName>, Error> {
        let policy = &rt.config.policy;
        if let Some(name) = key {
            policy.authorize(peer, Operation::RevokeStatus, Some(&name), None)?;
            rt.broker.key(&name)?;
            return Ok(vec![name]);
        }
        let visible: Vec<KeyName> = rt
            .broker
            .keys()
            .filter(|k| policy.may_see(peer, &k.name))
            .map(|k| k.name.clone())
            .collect();
        if visible.is_empty() {
            // Same answer as a named key the caller may not see.
            policy.authorize(peer, Operation::RevokeStatus, None, None)?;
        }
        Ok(visible)
    }
}

#[tonic::async_trait]
impl pb::key_broker_server::KeyBroker for Service {
    async fn wrap_key(
        &self,
        req: Request<pb::WrapKeyRequest>,
    ) -> Result<Response<pb::WrapKeyResponse>, Status> {
        self.serve(
            "WrapKey",
            Operation::WrapKey,
            req,
            async |mut body, peer, target| {
                // Out of the request buffer at once, before anything can fail.
                let plaintext = SecretBytes::take(&mut body.plaintext);
                target.clone_from(&body.key);
                let name = parse_key_name(&body.key)?;
                if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
                    return Err(Error::invalid(format!(
                        "plaintext must be 1 to {MAX_PLAINTEXT} bytes"
                    )));
                }
                // Taken, not moved: the request wipes its plaintext on drop
                // (kms_broker_api::codec), so it cannot be taken apart.
                let context = parse_context(std::mem::take(&mut body.context))?;
                let peer = peer.as_ref().map_err(Clone::clone)?;
                let rt = self.rt();
                rt.config
                    .policy
                    .authorize(peer, Operation::WrapKey, Some(&name), None)?;
                let w = rt.broker.wrap(&name, &plaintext, context).await?;
                Ok(pb::WrapKeyResponse {
                    wrapped: w.blob,
                    key: name.to_string(),
                    key_version: w.key_version,
                })
            },
        )
        .await
    }

    async fn unwrap_key(
        &self,
        req: Request<pb::UnwrapKeyRequest>,
    ) -> Result<Response<pb::UnwrapKeyResponse>, Status> {
        self.serve(
            "UnwrapKey",
            Operation::UnwrapKey,
            req,
            async |body, peer, target| {
                let env = Envelope::decode(&body.wrapped)?;
                *target = env.key_name.to_string();
                let context = parse_context(body.context)?;
                let peer = peer.as_ref().map_err(Clone::clone)?;
                let rt = self.rt();
                rt.config.policy.authorize(
                    peer,
                    Operation::UnwrapKey,
                    Some(&env.key_name),
                    None,
                )?;
                let out = rt
                    .broker
                    .unwrap_shared(&body.wrapped, &env, context)
                    .await?;
                Ok(pb::UnwrapKeyResponse {
                    plaintext: out.plaintext.duplicate().into_response_bytes(),
                    key: env.key_name.to_string(),
                    key_version: out.key_version.clone(),
                })
            },
        )
        .await
    }

    async fn get_store_key(
        &self,
        req: Request<pb::GetStoreKeyRequest>,
    ) -> Result<Response<pb::GetStoreKeyResponse>, Status> {
        self.serve(
            "GetStoreKey",
            Operation::GetStoreKey,
            req,
            async |body, peer, target| {
                target.clone_from(&body.store_id);
                let id = parse_store_id(&body.store_id)?;
                let peer = peer.as_ref().map_err(Clone::clone)?;
                let rt = self.rt();
                rt.config
                    .policy
                    .authorize(peer, Operation::GetStoreKey, None, Some(&id))?;
                let keys = rt.stores.get(&id, body.create).await?;
                Ok(pb::GetStoreKeyResponse {
                    active: Some(pb_store_key(keys.active)),
                    previous: keys.previous.into_iter().map(pb_store_key).collect(),
                    wrapped_copy: keys.wrapped_copy,
                })
            },
        )
        .await
    }

    async fn revoke_status(
        &self,
        req: Request<pb::RevokeStatusRequest>,
    ) -> Result<Response<pb::RevokeStatusResponse>, Status> {
        self.serve(
            "RevokeStatus",
            Operation::RevokeStatus,
            req,
            async |body, peer, target| {
                target.clone_from(&body.key);
                let name = parse_optional(&body.key, parse_key_name)?;
                let peer = peer.as_ref().map_err(Clone::clone)?;
                let rt = self.rt();
                let keys: Vec<_> = self
                    .visible_keys(&rt, peer, name)?
                    .iter()
                    .filter_map(|k| rt.broker.status(k))
                    .collect();
                Ok(pb::RevokeStatusResponse {
                    keys: keys.into_iter().map(pb_key_status).collect(),
                })
            },
        )
        .await
    }

    async fn rotate_store_key(
        &self,
        req: Request<pb::RotateStoreKeyRequest>,
    ) -> Result<Response<pb::StoreStatus>, Status> {
        self.serve(
            "RotateStoreKey",
            Operation::RotateStoreKey,
            req,
            async |body, peer, target| {
                target.clone_from(&body.store_id);
                let id = parse_store_id(&body.store_id)?;
                let peer = peer.as_ref().map_err(Clone::clone)?;
                self.rotate(peer, &id).await
            },
        )
        .await
    }

    async fn store_status(
        &self,
        req: Request<pb::StoreStatusRequest>,
    ) -> Result<Response<pb::StoreStatusResponse>, Status> {
        self.serve(
            "StoreStatus",
            Operation::StoreStatus,
            req,
            async |body, peer, target| {
                target.clone_from(&body.store_id);
                let id = parse_optional(&body.store_id, parse_store_id)?;
                let peer = peer.as_ref().map_err(Clone::clone)?;
                self.store_status(peer, id.as_ref())
            },
        )
        .await
    }

    async fn rewrap(
        &self,
        req: Request<pb::RewrapRequest>,
    ) -> Result<Response<pb::RewrapResponse>, Status> {
        self.serve(
            "Rewrap",
            Operation::Rewrap,
            req,
            async |body, peer, target| {
                target.clone_from(&body.store_id);
                let id = parse_optional(&body.store_id, parse_store_id)?;
                let peer = peer.as_ref().map_err(Clone::clone)?;
                self.rewrap(peer, id.as_ref(), body.dry_run).await
            },
        )
        .await
    }

    async fn rewrap_key(
        &self,
        req: Request<pb::RewrapKeyRequest>,
    ) -> Result<Response<pb::WrapKeyResponse>, Status> {
        // Governed by UnwrapKey (and WrapKey on the target); recorded under its own name.
        self.serve(
            "RewrapKey",
            Operation::UnwrapKey,
            req,
            async |body, peer, target| {
                let env = Envelope::decode(&body.wrapped)?;
                let to = if body.key.is_empty() {
                    env.key_name.clone()
                } else {
                    parse_key_name(&body.key)?
                };
                *target = to.to_string();
                let context = parse_context(body.context)?;
                let peer = peer.as_ref().map_err(Clone::clone)?;
                self.rewrap_key(peer, env, context, to).await
            },
        )
        .await
    }

    type WatchRevokeStatusStream = watch::EventStream;

    async fn watch_revoke_status(
        &self,
        req: Request<pb::RevokeStatusRequest>,
    ) -> Result<Response<Self::WatchRevokeStatusStream>, Status> {
        // Governed by RevokeStatus; recorded under its own name.
        self.serve(
            "WatchRevokeStatus",
            Operation::RevokeStatus,
            req,
            async |body, peer, target| {
                target.clone_from(&body.key);
                let name = parse_optional(&body.key, parse_key_name)?;
                let peer = peer.as_ref().map_err(Clone::clone)?;
                let rt = self.rt();
                let keys = self.visible_keys(&rt, peer, name)?;
                Ok(watch::stream(
                    self.inner.live.clone(),
                    peer.clone(),
                    keys,
                    self.inner.closing.subscribe(),
                ))
            },
        )
        .await
    }

    async fn import_store_key(
        &self,
        req: Request<pb::ImportStoreKeyRequest>,
    ) -> Result<Response<pb::StoreStatus>, Status> {
        self.serve(
            "ImportStoreKey",
            Operation::ImportStoreKey,
            req,
            async |body, peer, _target| {
                let peer = peer.as_ref().map_err(Clone::clone)?;
                self.import(peer, &body.wrapped_copy).await
            },
        )
        .await
    }

    async fn drop_previous_store_key(
        &self,
        req: Request<pb::DropPreviousStoreKeyRequest>,
    ) -> Result<Response<pb::StoreStatus>, Status> {
        self.serve(
            "DropPreviousStoreKey",
            Operation::DropPreviousStoreKey,
            req,
            async |body, peer, target| {
                target.clone_from(&body.store_id);
                let id = parse_store_id(&body.store_id)?;
                if body.key_id.len() != crate::store_key::KEY_ID_LEN {
                    return Err(Error::invalid("key_id is 32 bytes"));
                }
                let peer = peer.as_ref().map_err(Clone::clone)?;
                let rt = self.rt();
                rt.config.policy.authorize(
                    peer,
                    Operation::DropPreviousStoreKey,
                    None,
                    Some(&id),
                )?;
                let info = rt.stores.drop_previous(&id, &body.key_id).await?;
                Ok(lifecycle::pb_store_status(info))
            },
        )
        .await
    }
}
