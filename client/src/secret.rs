//! The client's one type for key bytes.
//!
//! Plaintext that the daemon hands back (a store key, an unwrapped data key) lives in a
//! [`KeyMaterial`]: zeroized on drop, `REDACTED` in `Debug`, and deliberately without
//! `Clone`, `Display` or `Serialize`, so that a copy or a log line is a compile error rather
//! than a review finding.

use std::fmt;

use zeroize::Zeroizing;

/// Key material returned by the daemon.
///
/// The bytes are moved out of the decoded protobuf message the moment it arrives, so this
/// crate keeps no second, un-zeroized copy. (The HTTP/2 receive buffers inside hyper and
/// tonic are outside any caller's control; keep the process's memory private accordingly.)
pub struct KeyMaterial(Zeroizing<Vec<u8>>);

impl KeyMaterial {
    /// Moves the bytes out of a response field, leaving it empty.
    pub(crate) fn take(field: &mut Vec<u8>) -> Self {
        Self(Zeroizing::new(std::mem::take(field)))
    }

    /// Wraps bytes this crate assembled itself (e.g. a key file).
    pub(crate) fn from_vec(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The bytes. Named `expose` so that every use of key bytes stands out in review.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes (16, 24 or 32 for a store key). Not secret: the algorithm says as much.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time equality, for comparisons that must not leak where keys differ.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        self.0.len() == other.len()
            && self
                .0
                .iter()
                .zip(other)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial(REDACTED)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let k = KeyMaterial::from_vec(vec![0xAB; 32]);
        let s = format!("{k:?} {k:#?}");
        assert!(s.contains("REDACTED"));
        assert!(!s.to_lowercase().contains("ab"), "{s}");
        assert!(!s.contains("171"), "{s}");
    }

    #[test]
    fn take_empties_the_source() {
        let mut field = vec![1, 2, 3];
        let k = KeyMaterial::take(&mut field);
        assert!(field.is_empty());
        assert_eq!(k.expose(), &[1, 2, 3]);
        assert!(k.ct_eq(&[1, 2, 3]));
        assert!(!k.ct_eq(&[1, 2, 4]));
        assert!(!k.ct_eq(&[1, 2]));
    }
}
