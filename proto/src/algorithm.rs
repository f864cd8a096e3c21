//! A store key's cipher, which fixes its length: CockroachDB reads the key length from the
//! key file, so a mismatch would silently select another cipher.

use std::fmt;

/// `AES-128`, `AES-192` or `AES-256`, as the contract spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// 16-byte key.
    Aes128,
    /// 24-byte key.
    Aes192,
    /// 32-byte key.
    Aes256,
}

impl Algorithm {
    /// The contract's name, or `None` for any other text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "AES-128" => Some(Algorithm::Aes128),
            "AES-192" => Some(Algorithm::Aes192),
            "AES-256" => Some(Algorithm::Aes256),
            _ => None,
        }
    }

    /// The contract's name (`AES-256`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Aes128 => "AES-128",
            Algorithm::Aes192 => "AES-192",
            Algorithm::Aes256 => "AES-256",
        }
    }

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Algorithm::Aes128 => 16,
            Algorithm::Aes192 => 24,
            Algorithm::Aes256 => 32,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Length of a store key id: 32 random bytes, CockroachDB's shape.
pub const KEY_ID_LEN: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_fix_the_length() {
        for a in [Algorithm::Aes128, Algorithm::Aes192, Algorithm::Aes256] {
            assert_eq!(Algorithm::parse(a.as_str()), Some(a));
            assert_eq!(a.to_string(), a.as_str());
        }
        assert_eq!(Algorithm::Aes192.key_len(), 24);
        assert_eq!(Algorithm::parse("aes-256"), None);
        assert_eq!(Algorithm::parse(""), None);
    }
}
