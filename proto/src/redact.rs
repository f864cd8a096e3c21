//! `Debug` for the messages that carry key bytes: the bytes show as their length only.
//!
//! prost derives `Debug` for every message, and a derived one prints `plaintext` and `key`
//! byte by byte: one `{:?}` in a log line, or a test's `unwrap_err()` on a success, would
//! print a store key. `build.rs` skips the derive for exactly these messages (the ones
//! [`crate::codec`] wipes), so a new field is shown only once someone writes it here.

use std::fmt;

use crate::pb;

/// Key bytes in `Debug` output: how many, never what.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[REDACTED; {} bytes]", self.0)
    }
}

impl fmt::Debug for pb::WrapKeyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Context values are the caller's, and kept out of logs as the audit trail does.
        let mut names: Vec<&String> = self.context.keys().collect();
        names.sort();
        f.debug_struct("WrapKeyRequest")
            .field("key", &self.key)
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("context_names", &names)
            .finish()
    }
}

impl fmt::Debug for pb::UnwrapKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnwrapKeyResponse")
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("key", &self.key)
            .field("key_version", &self.key_version)
            .finish()
    }
}

impl fmt::Debug for pb::StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key_id: String = self.key_id.iter().map(|b| format!("{b:02x}")).collect();
        f.debug_struct("StoreKey")
            .field("key_id", &key_id)
            .field("key", &Redacted(self.key.len()))
            .field("algorithm", &self.algorithm)
            .field("created_at", &self.created_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bytes_never_reach_debug_output() {
        let secret = [0xA5_u8; 32];
        let key = pb::StoreKey {
            key_id: vec![0x01, 0xff],
            key: secret.to_vec(),
            algorithm: "AES-256".into(),
            created_at: None,
        };
        let response = pb::GetStoreKeyResponse {
            active: Some(key),
            previous: vec![],
            wrapped_copy: vec![],
        };
        let request = pb::WrapKeyRequest {
            key: "backup".into(),
            plaintext: secret.to_vec(),
            context: [("cluster".to_owned(), "secret-ish value".to_owned())].into(),
        };
        let unwrapped = pb::UnwrapKeyResponse {
            plaintext: secret.to_vec(),
            key: "backup".into(),
            key_version: "3".into(),
        };
        for shown in [
            format!("{response:?}"),
            format!("{response:#?}"),
            format!("{request:?}"),
            format!("{unwrapped:?}"),
        ] {
            // 0xA5 = 165: a derived Debug prints the bytes as `165, 165, …`.
            assert!(!shown.contains("165"), "{shown}");
            assert!(shown.contains("[REDACTED; 32 bytes]"), "{shown}");
            assert!(!shown.contains("secret-ish"), "{shown}");
        }
        assert!(format!("{response:?}").contains("01ff"));
        assert!(format!("{request:?}").contains("cluster"));
    }
}
