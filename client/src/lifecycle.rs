//! Typed results of the lifecycle RPCs: store status, re-wrap reports, and the revocation
//! watch's events. None of them holds key bytes.

use std::time::SystemTime;

use crate::types::timestamp;
use crate::{pb, KeyStatus};

/// A store key's metadata (never its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreKeyInfo {
    /// 32 random bytes naming the key (CockroachDB logs key ids; not secret).
    pub key_id: Vec<u8>,
    /// `AES-128`, `AES-192` or `AES-256`.
    pub algorithm: String,
    pub created_at: Option<SystemTime>,
}

impl From<pb::StoreKeyInfo> for StoreKeyInfo {
    fn from(pb: pb::StoreKeyInfo) -> Self {
        Self {
            key_id: pb.key_id,
            algorithm: pb.algorithm,
            created_at: pb.created_at.and_then(timestamp),
        }
    }
}

/// Which key and key versions wrap a store on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    pub store_id: String,
    /// The key that wraps the store's file now; empty while it has no key file.
    pub key: String,
    /// The key the daemon's config asks for.
    pub configured_key: String,
    /// The active key's wrap, per KMS URI, as the KMS reported at wrap time.
    pub key_versions: Vec<String>,
    /// Wrapped under another key, an old version or an older format: `rewrap` fixes it.
    pub needs_rewrap: bool,
    /// Why, for people.
    pub detail: String,
    pub active: Option<StoreKeyInfo>,
    /// Newest first.
    pub previous: Vec<StoreKeyInfo>,
}

impl From<pb::StoreStatus> for StoreStatus {
    fn from(pb: pb::StoreStatus) -> Self {
        Self {
            store_id: pb.store_id,
            key: pb.key,
            configured_key: pb.configured_key,
            key_versions: pb.key_versions,
            needs_rewrap: pb.needs_rewrap,
            detail: pb.detail,
            active: pb.active.map(StoreKeyInfo::from),
            previous: pb.previous.into_iter().map(StoreKeyInfo::from).collect(),
        }
    }
}

/// What a `rewrap` did (or, as a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrapReport {
    /// Each store's status after.
    pub stores: Vec<StoreStatus>,
    /// Store files that changed (or would).
    pub rewrapped: u32,
}

/// One event of [`Client::watch_revoke_status`](crate::Client::watch_revoke_status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeEvent {
    /// Only grows.
    pub epoch: u64,
    /// The first event: every key watched. Later: the keys whose state changed.
    pub keys: Vec<KeyStatus>,
}

impl From<pb::RevokeStatusEvent> for RevokeEvent {
    fn from(pb: pb::RevokeStatusEvent) -> Self {
        Self {
            epoch: pb.epoch,
            keys: pb.keys.into_iter().map(KeyStatus::from).collect(),
        }
    }
}
