//! The machine-readable side of a FAILED_PRECONDITION about a key's state, or about the
//! state of the key version that wrapped a blob. The daemon's one conversion into a gRPC
//! status attaches it as trailing metadata, and the client crate reads it, so no client has
//! to parse the human message. CONTRACT.md still has the message name the state, for grpcurl
//! and the like.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

const KEY: &str = "kms-broker-key";
const STATE: &str = "kms-broker-state";
const SCOPE: &str = "kms-broker-scope";

/// What is not usable: the key (every URI), or only the version that wrapped this blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Key,
    Version,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Version => "version",
        }
    }
}

/// A refusal for a key's (or a key version's) state: the key's name, the state's name
/// (`DISABLED`, `REVOKED`, `DESTROYED`) and its scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key: String,
    pub state: String,
    pub scope: Scope,
}

impl Refusal {
    /// Adds the refusal to `status`'s metadata. Key and state names are plain ASCII (the
    /// daemon's config refuses any other key name); a value that is not is left out, and
    /// the client then reads a plain status.
    pub fn attach(&self, status: &mut Status) {
        let md = status.metadata_mut();
        for (name, value) in [
            (KEY, self.key.as_str()),
            (STATE, self.state.as_str()),
            (SCOPE, self.scope.as_str()),
        ] {
            if let Ok(v) = MetadataValue::try_from(value) {
                md.insert(name, v);
            }
        }
    }

    /// The refusal `status` carries, if it is a FAILED_PRECONDITION with all three entries.
    pub fn read(status: &Status) -> Option<Refusal> {
        if status.code() != Code::FailedPrecondition {
            return None;
        }
        let md = status.metadata();
        let get = |name: &str| Some(md.get(name)?.to_str().ok()?.to_owned());
        let scope = match get(SCOPE)?.as_str() {
            "key" => Scope::Key,
            "version" => Scope::Version,
            _ => return None,
        };
        Some(Refusal {
            key: get(KEY)?,
            state: get(STATE)?,
            scope,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_survives_the_status_and_nothing_else_reads_as_one() {
        let r = Refusal {
            key: "k-1".into(),
            state: "REVOKED".into(),
            scope: Scope::Version,
        };
        let mut s = Status::new(Code::FailedPrecondition, "anything at all");
        r.attach(&mut s);
        assert_eq!(Refusal::read(&s), Some(r.clone()));
        let mut other = Status::new(Code::Unavailable, "key \"k-1\" is REVOKED");
        r.attach(&mut other);
        assert_eq!(Refusal::read(&other), None, "only FAILED_PRECONDITION");
        let plain = Status::new(Code::FailedPrecondition, "key \"k-1\" is REVOKED");
        assert_eq!(Refusal::read(&plain), None, "the message is not parsed");
    }
}
