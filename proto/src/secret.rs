//! The one type for key bytes.
//!
//! Every plaintext key the daemon touches (store keys, data keys a caller asked to wrap,
//! key files), and every key a client receives, lives in a [`SecretBytes`]: in locked pages
//! left out of core dumps ([`crate::locked`]), wiped on drop, `REDACTED` in `Debug`, and
//! deliberately without `Clone`, `Display` or `Serialize`, so a copy or a log line is a
//! compile error rather than a review finding.

use std::fmt;

use rand::RngCore;
use zeroize::Zeroize;

use crate::locked::LockedBuf;

/// Key material. Move request bytes into it at once ([`SecretBytes::take`]).
pub struct SecretBytes(LockedBuf);

impl SecretBytes {
    /// Copies `bytes` into locked memory and wipes the `Vec`, spare capacity included, so
    /// the only copy left is the locked one.
    pub fn new(mut bytes: Vec<u8>) -> Self {
        let s = Self::copy_from(&bytes);
        bytes.zeroize();
        s
    }

    /// Moves the bytes out of a request field, leaving it empty and wiped, so no second
    /// copy lingers.
    pub fn take(field: &mut Vec<u8>) -> Self {
        Self::new(std::mem::take(field))
    }

    /// Copies from a slice the caller will wipe (or that is already a secret).
    pub fn copy_from(bytes: &[u8]) -> Self {
        Self(LockedBuf::copy_from(bytes))
    }

    /// `len` bytes from the operating system's CSPRNG, written straight into locked memory.
    pub fn random(len: usize) -> Self {
        let mut b = LockedBuf::zeroed(len);
        // ThreadRng is a CSPRNG (ChaCha) seeded and periodically reseeded from the OS.
        rand::rng().fill_bytes(b.as_mut_slice());
        Self(b)
    }

    /// The bytes, for the few places that must use them (a cipher, a response).
    pub fn expose(&self) -> &[u8] {
        self.0.as_slice()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// Hands the bytes to a protobuf response: a copy on the ordinary heap, the single,
    /// named place key bytes leave locked memory. The generated messages that carry key
    /// bytes wipe them after encoding and on drop ([`crate::codec`]); tonic's own buffers
    /// are beyond reach (see the README's "Key memory").
    pub fn into_response_bytes(self) -> Vec<u8> {
        self.expose().to_vec()
    }

    /// Constant-time equality, for tests and checks that compare keys.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        let mine = self.expose();
        if mine.len() != other.len() {
            return false;
        }
        mine.iter()
            .zip(other)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Makes a second secret with the same bytes. Named, not `Clone`, so copies are deliberate.
    pub fn duplicate(&self) -> Self {
        Self::copy_from(self.expose())
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(REDACTED, {} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretBytes::new(b"super-secret".to_vec());
        let d = format!("{s:?}");
        assert!(d.contains("REDACTED"));
        assert!(!d.contains("super"));
        // Neither form, plain or pretty, shows a byte in hex or decimal.
        let k = SecretBytes::new(vec![0xAB; 32]);
        let d = format!("{k:?} {k:#?}");
        assert!(d.contains("REDACTED"), "{d}");
        assert!(!d.to_lowercase().contains("ab"), "{d}");
        assert!(!d.contains("171"), "{d}");
    }

    #[test]
    fn take_empties_the_field() {
        let mut field = vec![1, 2, 3];
        let s = SecretBytes::take(&mut field);
        assert!(field.is_empty());
        assert_eq!(s.expose(), &[1, 2, 3]);
        assert!(s.ct_eq(&[1, 2, 3]));
        assert!(!s.ct_eq(&[1, 2, 4]));
        assert!(!s.ct_eq(&[1, 2]));
    }

    #[test]
    fn take_leaves_no_buffer_behind() {
        let mut field = b"0123456789abcdef".to_vec();
        field.truncate(4);
        let s = SecretBytes::take(&mut field);
        assert_eq!(s.expose(), b"0123");
        // Empty and unallocated: the old buffer (wiped whole by `new`) is gone, not kept
        // as spare capacity that still holds "456789abcdef".
        assert_eq!(field.capacity(), 0);
        assert_eq!(
            format!("{:?}", SecretBytes::new(Vec::new())),
            "SecretBytes(REDACTED, 0 bytes)"
        );
    }

    #[test]
    fn response_bytes_are_a_copy_and_duplicates_are_equal() {
        let s = SecretBytes::copy_from(&[9; 100]);
        let d = s.duplicate();
        assert!(d.ct_eq(s.expose()));
        assert_eq!(s.into_response_bytes(), vec![9; 100]);
        assert_eq!(d.len(), 100);
        assert!(!d.is_empty());
    }

    #[test]
    fn random_is_random() {
        let a = SecretBytes::random(32);
        let b = SecretBytes::random(32);
        assert_eq!(a.len(), 32);
        assert!(!a.ct_eq(b.expose()));
    }
}
