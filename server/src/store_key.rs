//! Store keys on disk: CockroachDB-shaped, wrapped, written atomically and durably, never
//! in plaintext.

use std::fmt;

/// A store id: `[A-Za-z0-9._-]{1,128}`, and not `.` or `..`, so it is safe as part of a
/// file name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreId(String);

impl StoreId {
    pub fn parse(s: &str) -> Result<Self, String> {
        if crate::config::valid_name(s) && s != "." && s != ".." {
            Ok(Self(s.to_owned()))
        } else {
            Err("store ids match [A-Za-z0-9._-]{1,128}".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A store key's cipher, by key length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Aes128,
    Aes192,
    Aes256,
}

impl Algorithm {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "AES-128" => Some(Algorithm::Aes128),
            "AES-192" => Some(Algorithm::Aes192),
            "AES-256" => Some(Algorithm::Aes256),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Aes128 => "AES-128",
            Algorithm::Aes192 => "AES-192",
            Algorithm::Aes256 => "AES-256",
        }
    }

    pub fn key_len(self) -> usize {
        match self {
            Algorithm::Aes128 => 16,
            Algorithm::Aes192 => 24,
            Algorithm::Aes256 => 32,
        }
    }
}
