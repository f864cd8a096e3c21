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
//! string a caller sent is shown through [`caller_text`] (cut short, never URI-shaped).
//! Never key bytes.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::broker::Broker;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::key_name::KeyName;
use crate::log_limit::{caller_text, LogLimit};
use crate::pb;
use crate::peer::Peer;
use crate::policy::{Operation, Policy};
use crate::secret::SecretBytes;
use crate::store_key::StoreId;
use crate::stores::Stores;

mod convert;
mod lifecycle;
mod parse;
mod watch;

use convert::{pb_key_status, pb_store_key};
use parse::{parse_context, parse_key_name};

/// Refusal and failure lines per second, each.
static REFUSALS: LogLimit = LogLimit::new(20);
static FAILURES: LogLimit = LogLimit::new(20);

pub use parse::MAX_PLAINTEXT;

/// Shared by both transports.
#[derive(Debug, Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    broker: Arc<Broker>,
    stores: Arc<Stores>,
    policy: Policy,
    /// The audit trail and metrics: every call's end passes through it, in `finish`.
    observer: crate::observe::Observer,
    /// Set at shutdown: long-lived streams end, so they never hold the drain.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Service {
    pub fn new(
        broker: Arc<Broker>,
        stores: Arc<Stores>,
        policy: Policy,
        observer: crate::observe::Observer,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker,
                stores,
                policy,
                observer,
                closing: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    /// Ends every WatchRevokeStatus stream (at shutdown, when health goes NOT_SERVING).
    pub fn close_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    /// The keys `peer` may see in RevokeStatus: one named, or every one it may see.
    fn visible_keys(&self, peer: &Peer, key: &str) -> Result<Vec<KeyName>, Error> {
        let policy = &self.inner.policy;
        if !key.is_empty() {
            let name = parse_key_name(key)?;
            policy.authorize(peer, Operation::RevokeStatus, Some(&name), None)?;
            self.inner.broker.key(&name)?;
            return Ok(vec![name]);
        }
        let visible: Vec<KeyName> = self
            .inner
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

impl Service {
    /// Logs, audits and counts one call's outcome and converts the error in the one place
    /// that does.
    fn finish<T>(
        &self,
        op: Operation,
        target: &str,
        peer: Option<&Peer>,
        started: Instant,
        result: Result<T, Error>,
    ) -> Result<Response<T>, Status> {
        self.finish_rpc(op.as_str(), op, target, peer, started, result)
    }

    /// [`Self::finish`] for an RPC whose name is not its policy operation's (RewrapKey,
    /// WatchRevokeStatus): logs, the audit trail and metrics show the RPC's own name.
    fn finish_rpc<T>(
        &self,
        rpc: &'static str,
        op: Operation,
        target: &str,
        peer: Option<&Peer>,
        started: Instant,
        result: Result<T, Error>,
    ) -> Result<Response<T>, Status> {
        let elapsed = started.elapsed();
        let code = result
            .as_ref()
            .map_or_else(Error::code, |_| tonic::Code::Ok);
        self.inner
            .observer
            .call(rpc, op, target, peer, code, elapsed);
        let latency_ms = elapsed.as_secs_f64() * 1e3;
        let peer = peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unidentified".into());
        let target = caller_text(target);
        match result {
            Ok(v) => {
                tracing::debug!(op = rpc, target, %peer, outcome = "OK", latency_ms, "key operation");
                Ok(Response::new(v))
            }
            Err(e) => {
                let code = e.code();
                if code == tonic::Code::Internal {
                    if let Some(suppressed) = FAILURES.admit() {
                        tracing::error!(op = rpc, target, %peer, outcome = ?code, latency_ms, error = %e, suppressed, "key operation failed");
                    }
                } else if let Some(suppressed) = REFUSALS.admit() {
                    tracing::info!(op = rpc, target, %peer, outcome = ?code, latency_ms, error = %e, suppressed, "key operation refused");
                }
                Err(e.into())
            }
        }
    }
}

#[tonic::async_trait]
impl pb::key_broker_server::KeyBroker for Service {
    async fn wrap_key(
        &self,
        req: Request<pb::WrapKeyRequest>,
    ) -> Result<Response<pb::WrapKeyResponse>, Status> {
        let started = Instant::now();
        let peer = Peer::from_request(&req);
        let mut body = req.into_inner();
        // Out of the request buffer at once, before anything can fail.
        let plaintext = SecretBytes::take(&mut body.plaintext);
        // Taken, not moved: the request wipes its plaintext on drop (kms_broker_api::codec),
        // so it cannot be taken apart.
        let key = std::mem::take(&mut body.key);
        let context = std::mem::take(&mut body.context);
        let result = async {
            let name = parse_key_name(&key)?;
            if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
                return Err(Error::invalid(format!(
                    "plaintext must be 1 to {MAX_PLAINTEXT} bytes"
                )));
            }
            let context = parse_context(context)?;
            let peer = peer.as_ref().map_err(Clone::clone)?;
            self.inner
                .policy
                .authorize(peer, Operation::WrapKey, Some(&name), None)?;
            let w = self.inner.broker.wrap(&name, &plaintext, context).await?;
            Ok(pb::WrapKeyResponse {
                wrapped: w.blob,
                key: name.to_string(),
                key_version: w.key_version,
            })
        }
        .await;
        self.finish(
            Operation::WrapKey,
            &key,
            peer.as_ref().ok(),
            started,
            result,
        )
    }

    async fn unwrap_key(
        &self,
        req: Request<pb::UnwrapKeyRequest>,
    ) -> Result<Response<pb::UnwrapKeyResponse>, Status> {
        let started = Instant::now();
        let peer = Peer::from_request(&req);
        let body = req.into_inner();
        let mut target = String::new();
        let result = async {
            let env = Envelope::decode(&body.wrapped)?;
            target = env.key_name.to_string();
            let context = parse_context(body.context)?;
            let peer = peer.as_ref().map_err(Clone::clone)?;
            self.inner
                .policy
                .authorize(peer, Operation::UnwrapKey, Some(&env.key_name), None)?;
            let out = self
                .inner
                .broker
                .unwrap_shared(&body.wrapped, &env, context)
                .await?;
            Ok(pb::UnwrapKeyResponse {
                plaintext: out.plaintext.duplicate().into_response_bytes(),
                key: env.key_name.to_string(),
                key_version: out.key_version.clone(),
            })
        }
        .await;
        self.finish(
            Operation::UnwrapKey,
            &target,
            peer.as_ref().ok(),
            started,
            result,
        )
    }

    async fn get_store_key(
        &self,
        req: Request<pb::GetStoreKeyRequest>,
    ) -> Result<Response<pb::GetStoreKeyResponse>, Status> {
        let started = Instant::now();
        let peer = Peer::from_request(&req);
        let body = req.into_inner();
        let result = async {
            let id = StoreId::parse(&body.store_id).map_err(Error::InvalidArgument)?;
            let peer = peer.as_ref().map_err(Clone::clone)?;
            self.inner
                .policy
                .authorize(peer, Operation::GetStoreKey, None, Some(&id))?;
            let keys = self.inner.stores.get(&id, body.create).await?;
            Ok(pb::GetStoreKeyResponse {
                active: Some(pb_store_key(keys.active)),
                previous: keys.previous.into_iter().map(pb_store_key).collect(),
                wrapped_copy: keys.wrapped_copy,
            })
        }
        .await;
        self.finish(
            Operation::GetStoreKey,
            &body.store_id,
            peer.as_ref().ok(),
            started,
            result,
        )
    }

    async fn revoke_status(
        &self,
        req: Request<pb::RevokeStatusRequest>,
    ) -> Result<Response<pb::RevokeStatusResponse>, Status> {
        let started = Instant::now();
        let peer = Peer::from_request(&req);
        let key = req.into_inner().key;
        let result = async {
            if !key.is_empty() {
                parse_key_name(&key)?;
            }
            let peer = peer.as_ref().map_err(Clone::clone)?;
            let keys: Vec<_> = self
                .visible_keys(peer, &key)?
                .iter()
                .filter_map(|k| self.inner.broker.status(k))
                .collect();
            Ok(pb::RevokeStatusResponse {
                keys: keys.into_iter().map(pb_key_status).collect(),
            })
        }
        .await;
        self.finish(
            Operation::RevokeStatus,
            &key,
            peer.as_ref().ok(),
            started,
            result,
        )
    }

    async fn rotate_store_key(
        &self,
        req: Request<pb::RotateStoreKeyRequest>,
    ) -> Result<Response<pb::StoreStatus>, Status> {
        let started = Instant::now();
        let peer = Peer::from_request(&req);
        let id = req.into_inner().store_id;
        let result = async {
            StoreId::parse(&id).map_err(Error::InvalidArgument)?;
            let peer = peer.as_ref().map_err(Clone::clone)?;
            self.rotate(peer, &id).await
        }
        .await;
        self.finish(
            Operation::RotateStoreKey,
            &id,
            peer.as_ref().ok(),
            started,
            result,
        )
    }

    async fn store_status(
        &self,
        req: Request<pb::StoreStatusRequest>,
    ) -> Result<Response<pb::StoreStatusResponse>, Status> {
        let started = Instant::now();
        let peer = Peer::from_request(&req);
        let id = req.into_inner().store_id;
        let result = (|| {
            if !id.is_empty() {
                StoreId::parse(&id).map_err(Error::InvalidArgument)?;
            }
            let peer = peer.as_ref().map_err(Clone::clone)?;
            self.store_status(peer, &id)
        })();
        self.finish(
            Operation::StoreStatus,
            &id,
            peer.as_ref().ok(),
            started,
            result,
        )
    }

    async fn rewrap(
        &self,
        req: Request<pb::RewrapRequest>,
    ) -> Result<Response<pb::RewrapResponse>, Status> {
        let started = Instant::now();
        let peer = Peer::from_request(&req);
        let body = req.into_inner();
        let id = body.store_id.clone();
        let result = async {
            if !id.is_empty() {
                StoreId::parse(&id).map_err(Error::InvalidArgument)?;
            }
            let peer = peer.as_ref().map_err(Clone::clone)?;
            self.rewrap(peer, body).await
        }
        .await;
        self.finish(Operation::Rewrap, &id, peer.as_ref().ok(), started, result)
    }

    async fn rewrap_key(
        &self,
        req: Request<pb::RewrapKeyRequest>,
    ) -> Result<Response<pb::WrapKeyResponse>, Status> {
        let started = Instant::now();
        let peer = Peer::from_request(&req);
        let body = req.into_inner();
        let mut target = String::new();
        let result = async {
            let env = Envelope::decode(&body.wrapped)?;
            let to = if body.key.is_empty() {
                env.key_name.clone()
            } else {
                parse_key_name(&body.key)?
            };
            target = to.to_string();
            let context = parse_context(body.context)?;
            let peer = peer.as_ref().map_err(Clone::clone)?;
            self.rewrap_key(peer, env, context, to).await
        }
        .await;
        // Governed by UnwrapKey (and WrapKey on the target); recorded under its own name.
        self.finish_rpc(
            "RewrapKey",
            Operation::UnwrapKey,
            &target,
            peer.as_ref().ok(),
            started,
            result,
        )
    }

    type WatchRevokeStatusStream = watch::EventStream;

    async fn watch_revoke_status(
        &self,
        req: Request<pb::RevokeStatusRequest>,
    ) -> Result<Response<Self::WatchRevokeStatusStream>, Status> {
        let started = Instant::now();
        let peer = Peer::from_request(&req);
        let key = req.into_inner().key;
        let result = (|| {
            if !key.is_empty() {
                parse_key_name(&key)?;
            }
            let peer = peer.as_ref().map_err(Clone::clone)?;
            let keys = self.visible_keys(peer, &key)?;
            Ok(watch::stream(
                self.inner.broker.clone(),
                keys,
                self.inner.closing.subscribe(),
            ))
        })();
        self.finish_rpc(
            "WatchRevokeStatus",
            Operation::RevokeStatus,
            &key,
            peer.as_ref().ok(),
            started,
            result,
        )
    }

    async fn import_store_key(
        &self,
        req: Request<pb::ImportStoreKeyRequest>,
    ) -> Result<Response<pb::StoreStatus>, Status> {
        let started = Instant::now();
        let peer = Peer::from_request(&req);
        let copy = req.into_inner().wrapped_copy;
        let result = async {
            let peer = peer.as_ref().map_err(Clone::clone)?;
            self.import(peer, &copy).await
        }
        .await;
        self.finish(
            Operation::ImportStoreKey,
            "",
            peer.as_ref().ok(),
            started,
            result,
        )
    }

    async fn drop_previous_store_key(
        &self,
        req: Request<pb::DropPreviousStoreKeyRequest>,
    ) -> Result<Response<pb::StoreStatus>, Status> {
        let started = Instant::now();
        let peer = Peer::from_request(&req);
        let body = req.into_inner();
        let result = async {
            let id = StoreId::parse(&body.store_id).map_err(Error::InvalidArgument)?;
            if body.key_id.len() != crate::store_key::KEY_ID_LEN {
                return Err(Error::invalid("key_id is 32 bytes"));
            }
            let peer = peer.as_ref().map_err(Clone::clone)?;
            self.inner
                .policy
                .authorize(peer, Operation::DropPreviousStoreKey, None, Some(&id))?;
            let info = self.inner.stores.drop_previous(&id, &body.key_id).await?;
            Ok(lifecycle::pb_store_status(info))
        }
        .await;
        self.finish(
            Operation::DropPreviousStoreKey,
            &body.store_id,
            peer.as_ref().ok(),
            started,
            result,
        )
    }
}
