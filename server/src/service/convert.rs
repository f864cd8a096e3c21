//! The daemon's values as protobuf messages.

use std::time::SystemTime;

use crate::pb;
use crate::revocation;
use crate::state::KeyState;
use crate::store_key::StoreKey;

pub(super) fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

pub(super) fn pb_state(s: KeyState) -> pb::KeyState {
    match s {
        KeyState::Active => pb::KeyState::Active,
        KeyState::Unreachable => pb::KeyState::Unreachable,
        KeyState::Disabled => pb::KeyState::Disabled,
        KeyState::Revoked => pb::KeyState::Revoked,
        KeyState::Destroyed => pb::KeyState::Destroyed,
    }
}

pub(super) fn pb_store_key(k: StoreKey) -> pb::StoreKey {
    pb::StoreKey {
        key_id: k.key_id.to_vec(),
        algorithm: k.algorithm.as_str().to_owned(),
        created_at: Some(timestamp(k.created_at)),
        key: k.key.into_response_bytes(),
    }
}

pub(super) fn pb_key_status(s: revocation::KeyStatus) -> pb::KeyStatus {
    pb::KeyStatus {
        key: s.key.to_string(),
        state: pb_state(s.state) as i32,
        checked_at: s.checked_at.map(timestamp),
        detail: s.detail,
        uris: s
            .uris
            .into_iter()
            .map(|u| pb::UriStatus {
                uri: u.uri,
                state: pb_state(u.state) as i32,
                checked_at: u.checked_at.map(timestamp),
                detail: u.detail,
            })
            .collect(),
    }
}
