//! Key states of CONTRACT.md, shared by backends, the revocation tracker and the service.

use std::fmt;

/// What the daemon knows about a key or one of its URIs.
///
/// The declaration order is "best first": a key with several URIs takes the best of them
/// (ACTIVE beats UNREACHABLE, which may come back, beats the revoked kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyState {
    Active,
    Unreachable,
    Disabled,
    Revoked,
    Destroyed,
}

impl KeyState {
    /// States with no grace: held material is dropped and every handout refused.
    pub fn is_revoked_kind(self) -> bool {
        matches!(
            self,
            KeyState::Disabled | KeyState::Revoked | KeyState::Destroyed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "ACTIVE",
            KeyState::Unreachable => "UNREACHABLE",
            KeyState::Disabled => "DISABLED",
            KeyState::Revoked => "REVOKED",
            KeyState::Destroyed => "DESTROYED",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
