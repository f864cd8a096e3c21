//! The on-disk records ([`WrappedStoreKey`], [`StoreKeyFile`]) and their JSON, version
//! [`FORMAT`]: strict to read, so a file this code does not fully understand is an error,
//! never a silently partial or absent key.

use std::fmt;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{Algorithm, StoreId, StoreKey, KEY_ID_LEN};
use crate::secret::SecretBytes;

/// One wrapped store key as it sits on disk: metadata in the clear, the key only inside
/// `wrapped`, an envelope the caller made (the broker wraps [`StoreKey::to_key_file_bytes`]
/// with the store id as context).
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedStoreKey {
    pub key_id: [u8; KEY_ID_LEN],
    pub algorithm: Algorithm,
    pub created_at: SystemTime,
    pub wrapped: Vec<u8>,
}

impl WrappedStoreKey {
    /// The on-disk record of `key`, given its wrapped `key_id || key`.
    pub fn new(key: &StoreKey, wrapped: Vec<u8>) -> Self {
        Self {
            key_id: key.key_id,
            algorithm: key.algorithm,
            created_at: key.created_at,
            wrapped,
        }
    }

    /// Rebuilds the [`StoreKey`] from the unwrapped `key_id || key`, checking it against
    /// this record (length for the algorithm, same key id).
    pub fn open(&self, unwrapped: SecretBytes) -> Result<StoreKey, FormatError> {
        let want = KEY_ID_LEN + self.algorithm.key_len();
        let bytes = unwrapped.expose();
        if bytes.len() != want {
            return Err(FormatError::new(format!(
                "the unwrapped store key has {} bytes; {} needs {want} (key id + key)",
                bytes.len(),
                self.algorithm.as_str()
            )));
        }
        let (id, key) = bytes.split_at(KEY_ID_LEN);
        if id != self.key_id {
            return Err(FormatError::new(
                "the unwrapped store key has another key id",
            ));
        }
        Ok(StoreKey {
            key_id: self.key_id,
            key: SecretBytes::copy_from(key),
            algorithm: self.algorithm,
            created_at: self.created_at,
        })
    }
}

impl fmt::Debug for WrappedStoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedStoreKey")
            .field("key_id", &hex::encode(self.key_id))
            .field("algorithm", &self.algorithm)
            .field("created_at", &self.created_at)
            .field("wrapped_len", &self.wrapped.len())
            .finish()
    }
}

/// A store's key file: plaintext-free, so its metadata (ids, algorithms, `created_at`) can
/// be read without the KMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreKeyFile {
    pub store_id: StoreId,
    /// The `[keys.<name>]` that wrapped every key here.
    pub key_name: String,
    pub active: WrappedStoreKey,
    /// Older keys still needed to read data written before a rotation, newest first.
    pub previous: Vec<WrappedStoreKey>,
}

/// The on-disk format this code writes and reads.
pub const FORMAT: u64 = 1;

/// At most this many `previous` keys: a store rotated monthly for eight years. Reading
/// refuses more, and so does writing (a rotation past it fails before anything is written),
/// so every file this code writes, it can read.
pub const MAX_PREVIOUS: usize = 100;

/// At most this many bytes in one wrapped key (decoded). A store key wrapped under 16 KMS
/// URIs is a few KiB; this leaves room for every KMS's ciphertext overhead.
pub const MAX_WRAPPED: usize = 64 * 1024;

impl StoreKeyFile {
    pub fn new(store_id: StoreId, key_name: &str, active: WrappedStoreKey) -> Self {
        Self {
            store_id,
            key_name: key_name.to_owned(),
            active,
            previous: Vec::new(),
        }
    }

    /// Makes `new_active` the active key; the old one becomes the newest previous key.
    pub fn rotate(&mut self, new_active: WrappedStoreKey) {
        let old = std::mem::replace(&mut self.active, new_active);
        self.previous.insert(0, old);
    }

    /// Every key, active first, then previous ones newest first.
    pub fn keys(&self) -> impl Iterator<Item = &WrappedStoreKey> {
        std::iter::once(&self.active).chain(&self.previous)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let raw = RawFile {
            format: FORMAT,
            store_id: self.store_id.as_str().to_owned(),
            key_name: self.key_name.clone(),
            active: RawKey::from_key(&self.active),
            previous: self.previous.iter().map(RawKey::from_key).collect(),
        };
        // Serializing plain strings and numbers into memory cannot fail; an empty result
        // would be refused by from_json rather than read as "no key".
        let mut out = serde_json::to_vec_pretty(&raw).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Strict parse: an unknown format version, a missing or unknown field, or a bad value
    /// is an error naming what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Self, FormatError> {
        // The version first, so a newer file says "format 2" rather than "unknown field".
        let probe: FormatProbe =
            serde_json::from_slice(bytes).map_err(|e| FormatError(format!("not JSON: {e}")))?;
        match probe.format {
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(FORMAT) => {}
            Some(v) => {
                return Err(FormatError(format!(
                    "format {v} is not supported (this daemon reads format {FORMAT})"
                )))
            }
            None => return Err(FormatError("no \"format\" field".into())),
        }
        let raw: RawFile = serde_json::from_slice(bytes).map_err(|e| FormatError(e.to_string()))?;
        if raw.previous.len() > MAX_PREVIOUS {
            return Err(FormatError(format!(
                "{} previous keys; at most {MAX_PREVIOUS} are kept",
                raw.previous.len()
            )));
        }
        let store_id =
            StoreId::parse(&raw.store_id).map_err(|e| FormatError(format!("store_id: {e}")))?;
        if !crate::config::valid_name(&raw.key_name) {
            return Err(FormatError(
                "key_name: key names match [A-Za-z0-9._-]{1,128}".into(),
            ));
        }
        let file = Self {
            store_id,
            key_name: raw.key_name,
            active: raw.active.into_key("active")?,
            previous: (raw.previous.into_iter().enumerate())
                .map(|(i, k)| k.into_key(&format!("previous[{i}]")))
                .collect::<Result<_, _>>()?,
        };
        let mut ids: Vec<_> = file.keys().map(|k| k.key_id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(FormatError("two keys share a key_id".into()));
        }
        Ok(file)
    }
}

/// Why a store key file (or an unwrapped key) does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(String);

impl FormatError {
    pub(super) fn new(why: impl Into<String>) -> Self {
        Self(why.into())
    }
}

#[derive(Deserialize)]
struct FormatProbe {
    format: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    format: u64,
    store_id: String,
    key_name: String,
    active: RawKey,
    previous: Vec<RawKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    key_id: String,
    algorithm: String,
    created_at: String,
    wrapped: String,
}

impl RawKey {
    fn from_key(k: &WrappedStoreKey) -> Self {
        Self {
            key_id: hex::encode(k.key_id),
            algorithm: k.algorithm.as_str().to_owned(),
            created_at: rfc3339(k.created_at),
            wrapped: BASE64.encode(&k.wrapped),
        }
    }

    fn into_key(self, at: &str) -> Result<WrappedStoreKey, FormatError> {
        let bad = |field: &str, why: String| FormatError(format!("{at}.{field}: {why}"));
        let key_id = hex::decode(&self.key_id)
            .ok()
            .and_then(|v| <[u8; KEY_ID_LEN]>::try_from(v).ok())
            .ok_or_else(|| bad("key_id", format!("must be {} hex digits", KEY_ID_LEN * 2)))?;
        let algorithm = Algorithm::parse(&self.algorithm).ok_or_else(|| {
            bad(
                "algorithm",
                format!("{:?} is not AES-128, AES-192 or AES-256", self.algorithm),
            )
        })?;
        let created_at = OffsetDateTime::parse(&self.created_at, &Rfc3339)
            .map_err(|e| bad("created_at", format!("not an RFC 3339 time ({e})")))?
            .into();
        // Bounded before decoding: base64 is 4 characters per 3 bytes.
        if self.wrapped.len() > MAX_WRAPPED.div_ceil(3) * 4 {
            return Err(bad("wrapped", format!("longer than {MAX_WRAPPED} bytes")));
        }
        let wrapped = BASE64
            .decode(&self.wrapped)
            .map_err(|e| bad("wrapped", format!("not base64 ({e})")))?;
        if wrapped.is_empty() {
            return Err(bad("wrapped", "is empty".into()));
        }
        if wrapped.len() > MAX_WRAPPED {
            return Err(bad("wrapped", format!("longer than {MAX_WRAPPED} bytes")));
        }
        Ok(WrappedStoreKey {
            key_id,
            algorithm,
            created_at,
            wrapped,
        })
    }
}

/// `t` as RFC 3339 UTC, to the nanosecond. A time read from a file (RFC 3339: years 0000
/// to 9999) is written back exactly as it was, so rewriting a file never changes an old
/// key's `created_at`; a wildly wrong clock is clamped to that range rather than
/// panicking, since `created_at` is informational.
fn rfc3339(t: SystemTime) -> String {
    let nanos = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => i128::try_from(e.duration().as_nanos()).map_or(i128::MIN, |n| -n),
    };
    const NANOS: i128 = 1_000_000_000;
    let first = -62_167_219_200 * NANOS; // 0000-01-01T00:00:00Z
    let last = 253_402_300_800 * NANOS - 1; // 9999-12-31T23:59:59.999999999Z
    OffsetDateTime::from_unix_timestamp_nanos(nanos.clamp(first, last))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn created_at_round_trips_to_the_nanosecond() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let mut w = WrappedStoreKey::new(&StoreKey::generate(Algorithm::Aes192), vec![1]);
        w.created_at = t;
        let f = StoreKeyFile::new(StoreId::parse("s").unwrap(), "k", w);
        let json = String::from_utf8(f.to_json()).unwrap();
        assert!(json.contains("2023-11-14T22:13:20.123456789Z"), "{json}");
        assert!(json.contains("\"format\": 1"), "{json}");
        assert_eq!(StoreKeyFile::from_json(json.as_bytes()).unwrap(), f);
    }

    #[test]
    fn strict_parsing_names_the_problem() {
        let w = WrappedStoreKey::new(&StoreKey::generate(Algorithm::Aes256), vec![7; 9]);
        let mut f = StoreKeyFile::new(StoreId::parse("s").unwrap(), "k", w.clone());
        let good = String::from_utf8(f.to_json()).unwrap();
        f.previous.push(w);
        let cases = [
            ("".to_string(), "not JSON"),
            ("{\"format\":2}".into(), "format 2 is not supported"),
            ("{\"format\":\"1\"}".into(), "format \"1\" is not supported"),
            ("{}".into(), "no \"format\" field"),
            (
                good.replace("\"previous\"", "\"x\": 1, \"previous\""),
                "unknown field `x`",
            ),
            (
                good.replace(",\n  \"previous\": []", ""),
                "missing field `previous`",
            ),
            (good.replace("AES-256", "AES-512"), "active.algorithm"),
            (
                good.replacen("\"key_id\": \"", "\"key_id\": \"zz", 1),
                "active.key_id",
            ),
            (good.replace("Z\"", "\""), "active.created_at"),
            (good.replace("\"k\"", "\"k/1\""), "key_name"),
            (String::from_utf8(f.to_json()).unwrap(), "share a key_id"),
        ];
        for (text, want) in cases {
            let e = StoreKeyFile::from_json(text.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn absurd_clocks_are_clamped_not_panics() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.999999999Z");
        let past = SystemTime::UNIX_EPOCH - Duration::from_secs(100_000_000_000);
        assert_eq!(rfc3339(past), "0000-01-01T00:00:00Z");
    }

    /// A file rewritten (rotation, re-wrap) keeps every old key's `created_at` as read,
    /// before 1970 included (it was clamped to 1970 before).
    #[test]
    fn every_readable_time_is_written_back_unchanged() {
        for t in [
            "1969-12-31T23:59:55Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "2024-02-29T12:00:00.5+05:30",
        ] {
            let w = WrappedStoreKey::new(&StoreKey::generate(Algorithm::Aes256), vec![1]);
            let f = StoreKeyFile::new(StoreId::parse("s").unwrap(), "k", w);
            let json = String::from_utf8(f.to_json()).unwrap();
            let at = json.find("\"created_at\": \"").unwrap() + 15;
            let end = at + json[at..].find('"').unwrap();
            let edited = format!("{}{t}{}", &json[..at], &json[end..]);
            let read = StoreKeyFile::from_json(edited.as_bytes()).unwrap();
            let again = StoreKeyFile::from_json(&read.to_json()).unwrap();
            assert_eq!(again, read, "{t}");
        }
    }

    #[test]
    fn sizes_are_bounded() {
        let k = || WrappedStoreKey::new(&StoreKey::generate(Algorithm::Aes256), vec![1; 16]);
        let mut f = StoreKeyFile::new(StoreId::parse("s").unwrap(), "k", k());
        for _ in 0..MAX_PREVIOUS {
            f.rotate(k());
        }
        assert_eq!(StoreKeyFile::from_json(&f.to_json()).unwrap(), f);
        f.rotate(k());
        let e = StoreKeyFile::from_json(&f.to_json()).unwrap_err();
        assert!(e.to_string().contains("at most 100"), "{e}");

        let mut f = StoreKeyFile::new(StoreId::parse("s").unwrap(), "k", k());
        f.active.wrapped = vec![7; MAX_WRAPPED];
        assert_eq!(StoreKeyFile::from_json(&f.to_json()).unwrap(), f);
        // One byte more, and a base64 text too long to decode to the cap at all.
        for len in [MAX_WRAPPED + 1, MAX_WRAPPED + 3] {
            f.active.wrapped = vec![7; len];
            let e = StoreKeyFile::from_json(&f.to_json()).unwrap_err();
            assert!(e.to_string().contains("active.wrapped: longer than"), "{e}");
        }
    }
}
