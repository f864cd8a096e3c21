//! The one type for key bytes.
//!
//! Every plaintext key the daemon touches (store keys, data keys a caller asked to wrap,
//! key files), and every key a client receives, lives in a [`SecretBytes`]: zeroized on
//! drop, `REDACTED` in `Debug`, and deliberately without `Clone`, `Display` or `Serialize`,
//! so a copy or a log line is a compile error rather than a review finding.

use std::fmt;

use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

/// Key material. Move request bytes into it at once ([`SecretBytes::take`]).
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes`; they are wiped when the secret drops.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Moves the bytes out of a request field, leaving it empty, so no second copy lingers.
    pub fn take(field: &mut Vec<u8>) -> Self {
        Self::new(std::mem::take(field))
    }

    /// Copies from a slice the caller will wipe (or that is already a secret).
    pub fn copy_from(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// `len` bytes from the operating system's CSPRNG.
    pub fn random(len: usize) -> Self {
        let mut v = vec![0u8; len];
        // ThreadRng is a CSPRNG (ChaCha) seeded and periodically reseeded from the OS.
        rand::rng().fill_bytes(&mut v);
        Self::new(v)
    }

    /// The bytes, for the few places that must use them (a cipher, a response).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Hands the bytes to a protobuf response. The response buffer is outside our control
    /// (tonic encodes and drops it), so this is the single, named place key bytes leave
    /// zeroized memory.
    pub fn into_response_bytes(mut self) -> Vec<u8> {
        std::mem::take(&mut *self.0)
    }

    /// Constant-time equality, for tests and checks that compare keys.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        if self.0.len() != other.len() {
            return false;
        }
        self.0
            .iter()
            .zip(other)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Makes a second secret with the same bytes. Named, not `Clone`, so copies are deliberate.
    pub fn duplicate(&self) -> Self {
        Self::copy_from(&self.0)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(REDACTED, {} bytes)", self.0.len())
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        // Zeroizing wipes on drop already; this also wipes spare capacity left by a move.
        self.0.zeroize();
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
    fn random_is_random() {
        let a = SecretBytes::random(32);
        let b = SecretBytes::random(32);
        assert_eq!(a.len(), 32);
        assert!(!a.ct_eq(b.expose()));
    }
}
