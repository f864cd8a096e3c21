//! The name of a configured key (`[keys.<name>]`), parsed once at the edge (config, request,
//! envelope) so that nothing downstream re-checks a string (STYLE lesson 6).

use std::borrow::Borrow;
use std::fmt;

/// `[A-Za-z0-9._-]{1,128}`: safe in logs, file names and envelopes (it fits a u16 length).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyName(String);

/// Why a string is not a key name. Never echoes the string: a caller may have sent
/// anything, a pasted KMS URI with its credentials included.
pub const KEY_NAME_RULE: &str = "key names use [A-Za-z0-9._-], 1 to 128 characters";

impl KeyName {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if crate::config::valid_name(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(KEY_NAME_RULE)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lets a `BTreeMap<KeyName, _>` be looked up by `&str`.
impl Borrow<str> for KeyName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_alphabet_only() {
        for ok in ["a", "primary", "k.1_-X", &"a".repeat(128)] {
            assert_eq!(KeyName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "aws:///x?AWS_SECRET_ACCESS_KEY=s",
            "é",
            &"a".repeat(129),
        ] {
            assert_eq!(KeyName::parse(bad).unwrap_err(), KEY_NAME_RULE, "{bad:?}");
        }
    }
}
