//! The wrapped-key envelope: what WrapKey returns and UnwrapKey takes.
//!
//! Layout, version 2 (all integers big-endian):
//!
//! ```text
//! magic        4 bytes   "KMSB"
//! version      u8        2
//! key name     u16 len + UTF-8      the [keys.<name>] that wrapped it
//! entry count  u8        1..=16     one per KMS URI of the key, no URI twice
//! entries, each:
//!   uri id       u16 len + UTF-8    KeyUri::id(): the KMS key, no parameters
//!   key version  u16 len + UTF-8    what the KMS said when it wrapped (may be empty)
//!   ciphertext   u32 len + bytes    the KMS's ciphertext of the plaintext, ≤ 8 KiB
//! mac          32 bytes  HMAC-SHA256(K, every byte above), K = HMAC-SHA256(
//!                        "kms-broker/envelope-mac/v2", plaintext)
//! ```
//!
//! Nothing here is secret and nothing here is trusted until it authenticates:
//! - each ciphertext was made with the key name, the caller's context and the envelope
//!   version as authenticated data (see [`crate::backend::Aad`]), so the KMS refuses an
//!   edited name, another context, or a version 2 blob relabelled as version 1;
//! - once one entry decrypts, the MAC, keyed by the plaintext, covers every other byte
//!   (the other entries, the URI ids, the key versions): a changed byte anywhere fails.
//!   Only someone who knows the plaintext can forge it, and they gain nothing: the MAC
//!   protects the header, the KMS protects the plaintext. (A plaintext an attacker can guess
//!   is such a plaintext; wrapped data keys are random.)
//!
//! UnwrapKey reads the name from here but takes the URIs from the config, never from the
//! blob, and reports key versions from the KMS (or, where the KMS does not say, from a
//! header the MAC just authenticated).
//!
//! Version 1 (no MAC; versions 1 blobs are still read) was the same without the `mac`: its
//! key versions are unauthenticated, so they are never reported. A v1 blob is moved to v2 by
//! unwrapping and wrapping it again (RewrapKey).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::backend::AadFormat;
use crate::error::Error;
use crate::key_name::KeyName;
use crate::secret::SecretBytes;

const MAGIC: &[u8; 4] = b"KMSB";
/// A key has at most this many URIs (checked at config load), so an envelope this many
/// entries.
pub const MAX_ENTRIES: usize = 16;
/// A KMS ciphertext of at most 4 KiB of plaintext: AWS and Cloud KMS add ~200 bytes, Vault
/// base64-encodes (×4/3) and prefixes `vault:vN:`.
pub const MAX_CIPHERTEXT: usize = 8 * 1024;
/// Longest URI id: a `file:///` path up to PATH_MAX, or a cloud key's resource name.
pub const MAX_URI_ID: usize = 4096 + 16;
/// Longest key version string a KMS reports (GCP's full CryptoKeyVersion name is ~200).
pub const MAX_KEY_VERSION: usize = 512;
const MAC_LEN: usize = 32;
const MAC_KEY_DOMAIN: &[u8] = b"kms-broker/envelope-mac/v2";

type HmacSha256 = Hmac<Sha256>;

/// The envelope layouts this daemon reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// No MAC: header fields other than the key name are unauthenticated.
    V1,
    /// Every byte authenticated.
    V2,
}

impl Format {
    /// The authenticated-data flavour the KMS ciphertexts of this format were made with.
    pub fn aad(self) -> AadFormat {
        match self {
            Format::V1 => AadFormat::V1,
            Format::V2 => AadFormat::V2,
        }
    }
}

/// One KMS's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub uri_id: String,
    pub key_version: String,
    pub ciphertext: Vec<u8>,
}

/// A parsed envelope. Its header is a CLAIM until [`Envelope::verify`] passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub format: Format,
    pub key_name: KeyName,
    pub entries: Vec<Entry>,
    /// Version 2: the MAC, and the bytes it covers.
    mac: Option<([u8; MAC_LEN], Vec<u8>)>,
}

impl Envelope {
    /// Builds a version 2 blob for `plaintext`. An entry too large for the layout is an
    /// error (config validation makes it unreachable), never a panic or a silent truncation.
    pub fn seal(
        key_name: &KeyName,
        entries: &[Entry],
        plaintext: &SecretBytes,
    ) -> Result<Vec<u8>, Error> {
        if entries.is_empty() || entries.len() > MAX_ENTRIES {
            return Err(Error::internal(format!(
                "an envelope holds 1 to {MAX_ENTRIES} entries, not {}",
                entries.len()
            )));
        }
        let mut out = Vec::with_capacity(
            16 + key_name.as_str().len()
                + entries
                    .iter()
                    .map(|e| 8 + e.uri_id.len() + e.key_version.len() + e.ciphertext.len())
                    .sum::<usize>()
                + MAC_LEN,
        );
        out.extend_from_slice(MAGIC);
        out.push(2);
        put16(
            &mut out,
            key_name.as_str(),
            usize::from(u16::MAX),
            "key name",
        )?;
        out.push(entries.len() as u8);
        for e in entries {
            put16(&mut out, &e.uri_id, MAX_URI_ID, "URI id")?;
            put16(&mut out, &e.key_version, MAX_KEY_VERSION, "key version")?;
            if e.ciphertext.is_empty() || e.ciphertext.len() > MAX_CIPHERTEXT {
                return Err(Error::internal(format!(
                    "the KMS returned a {}-byte ciphertext; an envelope holds 1 to {MAX_CIPHERTEXT}",
                    e.ciphertext.len()
                )));
            }
            out.extend_from_slice(&(e.ciphertext.len() as u32).to_be_bytes());
            out.extend_from_slice(&e.ciphertext);
        }
        let tag = mac(plaintext).chain_update(&out).finalize().into_bytes();
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Parses a blob from a caller. Every failure is INVALID_ARGUMENT with a short reason.
    /// Allocations are bounded by the blob's own length, never by a length field.
    pub fn decode(blob: &[u8]) -> Result<Self, Error> {
        if blob.is_empty() {
            return Err(Error::invalid("wrapped is empty"));
        }
        let mut r = Reader(blob);
        if r.take(4)? != MAGIC {
            return Err(Error::invalid("wrapped is not a kms-broker envelope"));
        }
        let format = match r.take(1)?[0] {
            1 => Format::V1,
            2 => Format::V2,
            v => {
                return Err(Error::invalid(format!(
                    "wrapped has envelope version {v}; this daemon reads versions 1 and 2"
                )))
            }
        };
        let key_name = KeyName::parse(&r.string16(usize::from(u16::MAX))?)
            .map_err(|_| Error::invalid("wrapped names no valid key"))?;
        let count = usize::from(r.take(1)?[0]);
        if count == 0 || count > MAX_ENTRIES {
            return Err(Error::invalid("wrapped has a bad entry count"));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(count);
        for _ in 0..count {
            let uri_id = r.string16(MAX_URI_ID)?;
            let key_version = r.string16(MAX_KEY_VERSION)?;
            let len = u32::from_be_bytes(r.array()?) as usize;
            if len == 0 || len > MAX_CIPHERTEXT {
                return Err(Error::invalid("wrapped has a bad ciphertext length"));
            }
            // One attempt per KMS key: a blob repeating an entry would buy extra KMS calls.
            if entries.iter().any(|e| e.uri_id == uri_id) {
                return Err(Error::invalid("wrapped names a KMS key twice"));
            }
            entries.push(Entry {
                uri_id,
                key_version,
                ciphertext: r.take(len)?.to_vec(),
            });
        }
        let mac = match format {
            Format::V1 => None,
            Format::V2 => {
                let covered = blob.len() - r.0.len();
                let tag: [u8; MAC_LEN] = r.array()?;
                Some((tag, blob[..covered].to_vec()))
            }
        };
        if !r.0.is_empty() {
            return Err(Error::invalid("wrapped has trailing bytes"));
        }
        Ok(Self {
            format,
            key_name,
            entries,
            mac,
        })
    }

    /// Checks the MAC against the plaintext one entry decrypted to (constant time). Version 1
    /// has none: it passes, and its header must not be believed beyond the key name.
    pub fn verify(&self, plaintext: &SecretBytes) -> Result<(), Error> {
        match &self.mac {
            None => Ok(()),
            Some((tag, covered)) => mac(plaintext)
                .chain_update(covered)
                .verify_slice(tag)
                .map_err(|_| Error::invalid(DOES_NOT_AUTHENTICATE)),
        }
    }

    /// Whether the header's key versions are authenticated (after [`Envelope::verify`]).
    pub fn versions_authenticated(&self) -> bool {
        self.mac.is_some()
    }
}

/// The one message for a blob that does not authenticate, whichever check caught it.
pub const DOES_NOT_AUTHENTICATE: &str =
    "wrapped does not authenticate (tampered, another key, or another context)";

/// The MAC keyed by the plaintext: K = HMAC(domain, plaintext), then HMAC(K, ·).
fn mac(plaintext: &SecretBytes) -> HmacSha256 {
    let mut k: Zeroizing<[u8; MAC_LEN]> = Zeroizing::new([0; MAC_LEN]);
    k.copy_from_slice(
        &<HmacSha256 as Mac>::new_from_slice(MAC_KEY_DOMAIN)
            .expect("HMAC takes keys of any length")
            .chain_update(plaintext.expose())
            .finalize()
            .into_bytes(),
    );
    <HmacSha256 as Mac>::new_from_slice(&k[..]).expect("HMAC takes keys of any length")
}

fn put16(out: &mut Vec<u8>, s: &str, max: usize, what: &str) -> Result<(), Error> {
    let len = u16::try_from(s.len())
        .ok()
        .filter(|l| usize::from(*l) <= max)
        .ok_or_else(|| {
            Error::internal(format!(
                "a {what} of {} bytes does not fit an envelope",
                s.len()
            ))
        })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
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

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn string16(&mut self, max: usize) -> Result<String, Error> {
        let len = usize::from(u16::from_be_bytes(self.array()?));
        if len > max {
            return Err(Error::invalid("wrapped has an over-long field"));
        }
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| Error::invalid("wrapped has a field that is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> KeyName {
        KeyName::parse("primary").unwrap()
    }

    fn entries() -> Vec<Entry> {
        vec![
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
        ]
    }

    fn pt() -> SecretBytes {
        SecretBytes::copy_from(b"a data key of some length")
    }

    fn sample() -> Vec<u8> {
        Envelope::seal(&name(), &entries(), &pt()).unwrap()
    }

    /// A version 1 blob as the previous daemon wrote it.
    fn v1_blob() -> Vec<u8> {
        let mut v = sample();
        v.truncate(v.len() - MAC_LEN);
        v[4] = 1;
        v
    }

    #[test]
    fn round_trip_and_verify() {
        let e = Envelope::decode(&sample()).unwrap();
        assert_eq!(e.format, Format::V2);
        assert_eq!(e.key_name, name());
        assert_eq!(e.entries, entries());
        e.verify(&pt()).unwrap();
        assert!(e.versions_authenticated());
        let other = SecretBytes::copy_from(b"another plaintext");
        assert_eq!(
            e.verify(&other).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn every_changed_byte_fails_to_decode_or_to_verify() {
        let blob = sample();
        for i in 0..blob.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = blob.clone();
                b[i] ^= flip;
                let ok = Envelope::decode(&b).is_ok_and(|e| e.verify(&pt()).is_ok());
                assert!(!ok, "byte {i} ^ {flip:#x} still authenticates");
            }
        }
    }

    #[test]
    fn version_1_blobs_still_decode_without_authenticated_versions() {
        let e = Envelope::decode(&v1_blob()).unwrap();
        assert_eq!(e.format, Format::V1);
        assert_eq!(e.entries, entries());
        assert!(e.verify(&pt()).is_ok());
        assert!(!e.versions_authenticated());
    }

    #[test]
    fn every_truncation_is_invalid_argument() {
        for blob in [sample(), v1_blob()] {
            for n in 0..blob.len() {
                let err = Envelope::decode(&blob[..n]).unwrap_err();
                assert_eq!(err.code(), tonic::Code::InvalidArgument, "prefix {n}");
            }
        }
    }

    #[test]
    fn garbage_trailing_bytes_and_duplicates() {
        assert!(Envelope::decode(b"hello world").is_err());
        let mut blob = sample();
        blob.push(0);
        assert!(Envelope::decode(&blob).is_err());
        let mut blob = sample();
        blob[4] = 9;
        assert!(Envelope::decode(&blob)
            .unwrap_err()
            .to_string()
            .contains("version 9"));
        let mut dup = entries();
        dup[1].uri_id = dup[0].uri_id.clone();
        let blob = Envelope::seal(&name(), &dup, &pt()).unwrap();
        assert!(Envelope::decode(&blob)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn seal_refuses_what_does_not_fit_without_panicking() {
        let mut e = entries();
        e[0].key_version = "v".repeat(MAX_KEY_VERSION + 1);
        assert_eq!(
            Envelope::seal(&name(), &e, &pt()).unwrap_err().code(),
            tonic::Code::Internal
        );
        let mut e = entries();
        e[0].ciphertext = vec![0; MAX_CIPHERTEXT + 1];
        assert!(Envelope::seal(&name(), &e, &pt()).is_err());
        let many: Vec<Entry> = (0..=MAX_ENTRIES)
            .map(|i| Entry {
                uri_id: format!("mock://{i}"),
                key_version: String::new(),
                ciphertext: vec![1],
            })
            .collect();
        assert!(Envelope::seal(&name(), &many, &pt()).is_err());
        assert!(Envelope::seal(&name(), &many[..MAX_ENTRIES], &pt()).is_ok());
    }
}
