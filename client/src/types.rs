//! Typed results: the protobuf responses parsed once, at the edge.
//!
//! Store keys are checked against the contract here (32-byte id, 16/24/32-byte key that
//! matches its algorithm), so a caller writing a CockroachDB key file never re-checks.

use std::time::{Duration, SystemTime};

use crate::{pb, Algorithm, ClientError, SecretBytes, KEY_ID_LEN};

/// Result of [`Client::wrap_key`](crate::Client::wrap_key). Nothing here is secret: the
/// blob is only useful to a caller the daemon lets unwrap it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// The daemon's opaque, versioned blob; store it next to the data it protects.
    pub wrapped: Vec<u8>,
    /// Name of the configured key that wrapped it.
    pub key: String,
    /// The KMS key version, empty where the KMS hides versions (AWS symmetric keys).
    pub key_version: String,
}

/// Result of [`Client::unwrap_key`](crate::Client::unwrap_key).
#[derive(Debug)]
pub struct Unwrapped {
    /// The plaintext given to `wrap_key`.
    pub plaintext: SecretBytes,
    /// Name of the configured key, read from the blob.
    pub key: String,
    /// The KMS key version that unwrapped it (may be empty).
    pub key_version: String,
}

/// One store key, CockroachDB-shaped.
#[derive(Debug)]
pub struct StoreKey {
    /// 32 random bytes naming the key. Not secret: CockroachDB logs key ids.
    pub key_id: [u8; KEY_ID_LEN],
    /// The key itself.
    pub key: SecretBytes,
    /// The cipher; `key.len() == algorithm.key_len()`.
    pub algorithm: Algorithm,
    /// When the daemon created the key.
    pub created_at: SystemTime,
}

impl StoreKey {
    /// `key_id || key`: the contents of a valid CockroachDB store key file
    /// (`--enterprise-encryption=...,key=FILE`). Built in a buffer of the final size, so no
    /// reallocation leaves a partial copy behind.
    pub fn key_file_bytes(&self) -> SecretBytes {
        let mut buf = Vec::with_capacity(KEY_ID_LEN + self.key.len());
        buf.extend_from_slice(&self.key_id);
        buf.extend_from_slice(self.key.expose());
        SecretBytes::new(buf)
    }

    /// The key id in lower-case hex, as CockroachDB prints it.
    pub fn key_id_hex(&self) -> String {
        self.key_id.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn from_pb(mut pb: pb::StoreKey, which: &str) -> Result<Self, ClientError> {
        let invalid = |what: String| ClientError::InvalidResponse(format!("{which}: {what}"));
        let key_id: [u8; KEY_ID_LEN] = pb.key_id.as_slice().try_into().map_err(|_| {
            invalid(format!(
                "key_id is {} bytes, not {KEY_ID_LEN}",
                pb.key_id.len()
            ))
        })?;
        // Take the key bytes first, so that every early return below still zeroizes them.
        let key = SecretBytes::take(&mut pb.key);
        let algorithm = Algorithm::parse(&pb.algorithm)
            .ok_or_else(|| invalid(format!("unknown algorithm {:?}", pb.algorithm)))?;
        if key.len() != algorithm.key_len() {
            return Err(invalid(format!(
                "{algorithm} key is {} bytes, not {}",
                key.len(),
                algorithm.key_len()
            )));
        }
        let created_at = pb
            .created_at
            .and_then(timestamp)
            .ok_or_else(|| invalid("created_at missing or out of range".into()))?;
        Ok(StoreKey {
            key_id,
            key,
            algorithm,
            created_at,
        })
    }
}

/// Result of [`Client::get_store_key`](crate::Client::get_store_key).
#[derive(Debug)]
pub struct StoreKeys {
    /// The key to encrypt with.
    pub active: StoreKey,
    /// Older keys still needed to read data written before a rotation, newest first.
    pub previous: Vec<StoreKey>,
    /// The store's key file as the daemon keeps it, every key KMS-wrapped: safe to keep
    /// beside the data or in a backup. `kms-broker import` restores a lost state dir from it.
    pub wrapped_copy: Vec<u8>,
}

impl StoreKeys {
    pub(crate) fn from_pb(mut pb: pb::GetStoreKeyResponse) -> Result<Self, ClientError> {
        let previous = std::mem::take(&mut pb.previous)
            .into_iter()
            .map(|k| StoreKey::from_pb(k, "previous store key"))
            .collect::<Result<Vec<_>, _>>()?;
        let active = pb
            .active
            .take()
            .ok_or_else(|| ClientError::InvalidResponse("no active store key".into()))?;
        Ok(StoreKeys {
            active: StoreKey::from_pb(active, "active store key")?,
            previous,
            wrapped_copy: std::mem::take(&mut pb.wrapped_copy),
        })
    }
}

/// A KMS key's state as the daemon last saw it (see the contract's "Key states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Not reported (or a state newer than this client).
    Unspecified,
    /// KMS reachable, key usable.
    Active,
    /// Switched off, reversibly.
    Disabled,
    /// The daemon's permission to use the key was taken away.
    Revoked,
    /// Deleted or scheduled for deletion.
    Destroyed,
    /// The KMS did not answer; held keys live on for the daemon's grace period.
    Unreachable,
}

impl KeyState {
    /// The state as the daemon names it in messages (`DISABLED`, ...), if it is one.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "ACTIVE" => KeyState::Active,
            "DISABLED" => KeyState::Disabled,
            "REVOKED" => KeyState::Revoked,
            "DESTROYED" => KeyState::Destroyed,
            "UNREACHABLE" => KeyState::Unreachable,
            _ => return None,
        })
    }

    fn from_i32(v: i32) -> Self {
        match pb::KeyState::try_from(v) {
            Ok(pb::KeyState::Active) => KeyState::Active,
            Ok(pb::KeyState::Disabled) => KeyState::Disabled,
            Ok(pb::KeyState::Revoked) => KeyState::Revoked,
            Ok(pb::KeyState::Destroyed) => KeyState::Destroyed,
            Ok(pb::KeyState::Unreachable) => KeyState::Unreachable,
            Ok(pb::KeyState::Unspecified) | Err(_) => KeyState::Unspecified,
        }
    }
}

/// One configured key's state: the best of its URIs' states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// The configured key name.
    pub key: String,
    /// Usable while any one URI is `Active`.
    pub state: KeyState,
    /// When the daemon last checked; `None` if it has not yet.
    pub checked_at: Option<SystemTime>,
    /// A short human explanation (e.g. the KMS's error class).
    pub detail: String,
    /// Each URI's own state.
    pub uris: Vec<UriStatus>,
}

/// One KMS URI's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriStatus {
    /// The URI with its secret parameters redacted by the daemon.
    pub uri: String,
    /// This URI's state.
    pub state: KeyState,
    /// When the daemon last checked this URI.
    pub checked_at: Option<SystemTime>,
    /// A short human explanation.
    pub detail: String,
}

impl From<pb::KeyStatus> for KeyStatus {
    fn from(pb: pb::KeyStatus) -> Self {
        KeyStatus {
            state: KeyState::from_i32(pb.state),
            checked_at: pb.checked_at.and_then(timestamp),
            key: pb.key,
            detail: pb.detail,
            uris: pb.uris.into_iter().map(UriStatus::from).collect(),
        }
    }
}

impl From<pb::UriStatus> for UriStatus {
    fn from(pb: pb::UriStatus) -> Self {
        UriStatus {
            state: KeyState::from_i32(pb.state),
            checked_at: pb.checked_at.and_then(timestamp),
            uri: pb.uri,
            detail: pb.detail,
        }
    }
}

/// A protobuf timestamp as a `SystemTime`; `None` if it is out of range or malformed.
pub(crate) fn timestamp(ts: prost_types::Timestamp) -> Option<SystemTime> {
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    let offset = Duration::new(ts.seconds.unsigned_abs(), 0);
    let whole = if ts.seconds >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(offset)?
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(offset)?
    };
    whole.checked_add(Duration::from_nanos(u64::from(nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb_key(id_len: usize, key_len: usize, alg: &str) -> pb::StoreKey {
        pb::StoreKey {
            key_id: vec![0x11; id_len],
            key: vec![0xEE; key_len],
            algorithm: alg.into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
        }
    }

    #[test]
    fn store_key_parses_and_makes_a_key_file() {
        let k = StoreKey::from_pb(pb_key(32, 24, "AES-192"), "t").expect("valid key");
        assert_eq!(k.algorithm, Algorithm::Aes192);
        assert_eq!(k.key_id_hex(), "11".repeat(32));
        let file = k.key_file_bytes();
        assert_eq!(file.len(), 56);
        assert_eq!(&file.expose()[..32], &[0x11; 32]);
        assert_eq!(&file.expose()[32..], &[0xEE; 24]);
        let since = k.created_at.duration_since(SystemTime::UNIX_EPOCH).ok();
        assert_eq!(since, Some(Duration::new(1_700_000_000, 5)));
    }

    #[test]
    fn debug_of_store_keys_is_redacted() {
        let keys = StoreKeys::from_pb(pb::GetStoreKeyResponse {
            active: Some(pb_key(32, 32, "AES-256")),
            previous: vec![pb_key(32, 16, "AES-128")],
            wrapped_copy: b"{}".to_vec(),
        })
        .expect("valid keys");
        let s = format!("{keys:?}");
        assert!(s.contains("REDACTED"), "{s}");
        // 0xEE = 238 is only in the key bytes.
        assert!(
            !s.contains("238") && !s.to_lowercase().contains("ee,"),
            "{s}"
        );
    }

    #[test]
    fn malformed_store_keys_are_rejected() {
        for (id, key, alg) in [(31, 32, "AES-256"), (32, 16, "AES-256"), (32, 32, "DES")] {
            let err = StoreKey::from_pb(pb_key(id, key, alg), "t").err();
            assert!(
                matches!(err, Some(ClientError::InvalidResponse(_))),
                "{err:?}"
            );
            assert!(!format!("{err:?}").contains("238"));
        }
        let mut no_time = pb_key(32, 32, "AES-256");
        no_time.created_at = None;
        assert!(StoreKey::from_pb(no_time, "t").is_err());
        let none = StoreKeys::from_pb(pb::GetStoreKeyResponse::default());
        assert!(matches!(none, Err(ClientError::InvalidResponse(_))));
    }

    #[test]
    fn key_states_map_and_unknown_is_unspecified() {
        assert_eq!(
            KeyState::from_i32(pb::KeyState::Revoked as i32),
            KeyState::Revoked
        );
        assert_eq!(KeyState::from_i32(99), KeyState::Unspecified);
    }

    #[test]
    fn timestamps_convert() {
        let ts = |seconds, nanos| timestamp(prost_types::Timestamp { seconds, nanos });
        assert_eq!(ts(0, 0), Some(SystemTime::UNIX_EPOCH));
        assert!(ts(-10, 0).is_some());
        assert_eq!(ts(0, -1), None);
        assert_eq!(ts(0, 1_000_000_000), None);
    }
}
