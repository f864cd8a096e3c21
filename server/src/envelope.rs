//! The wrapped-key envelope: what WrapKey returns and UnwrapKey takes.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! magic        4 bytes   "KMSB"
//! version      u8        1
//! key name     u16 len + UTF-8      the [keys.<name>] that wrapped it
//! entry count  u8        1..=16     one per KMS URI of the key
//! entries, each:
//!   uri id       u16 len + UTF-8    KeyUri::id(): the KMS key, no parameters
//!   key version  u16 len + UTF-8    what the KMS said (may be empty)
//!   ciphertext   u32 len + bytes    the KMS's ciphertext of the plaintext
//! ```
//!
//! Nothing here is secret and nothing here is trusted: every ciphertext was made with the
//! key name and the caller's context as authenticated data, so an edited name, id or
//! version makes decryption fail. UnwrapKey reads the name from here but takes the URIs
//! from the config, never from the blob. A new layout gets a new version byte; version 1
//! blobs stay readable.

use crate::error::Error;

const MAGIC: &[u8; 4] = b"KMSB";
const VERSION: u8 = 1;
pub const MAX_ENTRIES: usize = 16;
const MAX_CIPHERTEXT: usize = 64 * 1024;

/// One KMS's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub uri_id: String,
    pub key_version: String,
    pub ciphertext: Vec<u8>,
}

/// A parsed envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub key_name: String,
    pub entries: Vec<Entry>,
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            16 + self.key_name.len()
                + self
                    .entries
                    .iter()
                    .map(|e| 8 + e.uri_id.len() + e.key_version.len() + e.ciphertext.len())
                    .sum::<usize>(),
        );
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        put16(&mut out, self.key_name.as_bytes());
        out.push(self.entries.len() as u8);
        for e in &self.entries {
            put16(&mut out, e.uri_id.as_bytes());
            put16(&mut out, e.key_version.as_bytes());
            out.extend_from_slice(&(e.ciphertext.len() as u32).to_be_bytes());
            out.extend_from_slice(&e.ciphertext);
        }
        out
    }

    /// Parses a blob from a caller. Every failure is INVALID_ARGUMENT with a short reason.
    pub fn decode(blob: &[u8]) -> Result<Self, Error> {
        if blob.is_empty() {
            return Err(Error::invalid("wrapped is empty"));
        }
        let mut r = Reader(blob);
        if r.take(4)? != MAGIC {
            return Err(Error::invalid("wrapped is not a kms-broker envelope"));
        }
        let version = r.take(1)?[0];
        if version != VERSION {
            return Err(Error::invalid(format!(
                "wrapped has envelope version {version}; this daemon reads version {VERSION}"
            )));
        }
        let key_name = r.string16()?;
        let count = r.take(1)?[0] as usize;
        if count == 0 || count > MAX_ENTRIES {
            return Err(Error::invalid("wrapped has a bad entry count"));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let uri_id = r.string16()?;
            let key_version = r.string16()?;
            let len = u32::from_be_bytes(r.take(4)?.try_into().expect("4 bytes")) as usize;
            if len == 0 || len > MAX_CIPHERTEXT {
                return Err(Error::invalid("wrapped has a bad ciphertext length"));
            }
            entries.push(Entry {
                uri_id,
                key_version,
                ciphertext: r.take(len)?.to_vec(),
            });
        }
        if !r.0.is_empty() {
            return Err(Error::invalid("wrapped has trailing bytes"));
        }
        Ok(Self { key_name, entries })
    }
}

fn put16(out: &mut Vec<u8>, b: &[u8]) {
    // Names, ids and versions are short by construction (config-validated); a longer one
    // would be a bug, so truncating silently is not an option.
    let len = u16::try_from(b.len()).expect("envelope strings fit in u16");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::invalid("wrapped is truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn string16(&mut self) -> Result<String, Error> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| Error::invalid("wrapped has a field that is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            key_name: "primary".into(),
            entries: vec![
                Entry {
                    uri_id: "aws:///alias/a".into(),
                    key_version: String::new(),
                    ciphertext: vec![1, 2, 3],
                },
                Entry {
                    uri_id: "file:///k".into(),
                    key_version: "v2".into(),
                    ciphertext: vec![9; 40],
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn every_truncation_is_invalid_argument() {
        let blob = sample().encode();
        for n in 0..blob.len() {
            let err = Envelope::decode(&blob[..n]).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "prefix {n}");
        }
    }

    #[test]
    fn garbage_and_trailing_bytes() {
        assert!(Envelope::decode(b"hello world").is_err());
        let mut blob = sample().encode();
        blob.push(0);
        assert!(Envelope::decode(&blob).is_err());
        let mut blob = sample().encode();
        blob[4] = 9;
        assert!(Envelope::decode(&blob)
            .unwrap_err()
            .to_string()
            .contains("version 9"));
    }
}
