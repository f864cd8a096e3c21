//! Who may do what: `[[policy]]` rules, default deny.
//!
//! A rule matches a peer (`uid:N`, `gid:N`, `cert:IDENTITY`) and allows operations,
//! optionally only on some keys or stores. The service asks [`Policy::authorize`] BEFORE it
//! looks anything up, so a caller who may not use a key or store learns nothing about
//! whether it exists (CONTRACT.md's check order).

use std::collections::BTreeSet;
use std::fmt;

use crate::error::Error;
use crate::key_name::KeyName;
use crate::peer::Peer;
use crate::store_key::StoreId;

/// The KeyBroker operations a rule can allow: the RPC names. `WatchRevokeStatus` is
/// governed by `RevokeStatus`; `RewrapKey` needs `UnwrapKey` on the source key and
/// `WrapKey` on the target (CONTRACT "Additions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    WrapKey,
    UnwrapKey,
    GetStoreKey,
    RevokeStatus,
    RotateStoreKey,
    StoreStatus,
    Rewrap,
    ImportStoreKey,
    DropPreviousStoreKey,
}

impl Operation {
    const ALL: [Operation; 9] = [
        Operation::WrapKey,
        Operation::UnwrapKey,
        Operation::GetStoreKey,
        Operation::RevokeStatus,
        Operation::RotateStoreKey,
        Operation::StoreStatus,
        Operation::Rewrap,
        Operation::ImportStoreKey,
        Operation::DropPreviousStoreKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::WrapKey => "WrapKey",
            Operation::UnwrapKey => "UnwrapKey",
            Operation::GetStoreKey => "GetStoreKey",
            Operation::RevokeStatus => "RevokeStatus",
            Operation::RotateStoreKey => "RotateStoreKey",
            Operation::StoreStatus => "StoreStatus",
            Operation::Rewrap => "Rewrap",
            Operation::ImportStoreKey => "ImportStoreKey",
            Operation::DropPreviousStoreKey => "DropPreviousStoreKey",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which callers a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMatcher {
    Uid(u32),
    Gid(u32),
    Cert(String),
}

impl PeerMatcher {
    fn parse(s: &str) -> Option<Self> {
        let (kind, val) = s.split_once(':')?;
        match kind {
            "uid" => val.parse().ok().map(PeerMatcher::Uid),
            "gid" => val.parse().ok().map(PeerMatcher::Gid),
            "cert" if !val.is_empty() => Some(PeerMatcher::Cert(val.to_owned())),
            _ => None,
        }
    }

    fn matches(&self, peer: &Peer) -> bool {
        match (self, peer) {
            (PeerMatcher::Uid(u), Peer::Unix { uid, .. }) => u == uid,
            (PeerMatcher::Gid(g), Peer::Unix { gid, .. }) => g == gid,
            (PeerMatcher::Cert(id), Peer::Tls { identity }) => id == identity,
            _ => false,
        }
    }
}

/// One `[[policy]]` entry.
#[derive(Debug, Clone)]
pub struct PolicyRule {
    pub peer: PeerMatcher,
    pub allow: BTreeSet<Operation>,
    /// `None`: every key.
    pub keys: Option<BTreeSet<KeyName>>,
    /// `None`: every store.
    pub stores: Option<BTreeSet<StoreId>>,
}

/// (sub-field, problem, fix) for the config loader to wrap.
pub type RuleError = (&'static str, String, String);

impl PolicyRule {
    pub fn parse(
        peer: &str,
        allow: &[String],
        keys: Option<&[String]>,
        stores: Option<&[String]>,
    ) -> Result<Self, RuleError> {
        let peer = PeerMatcher::parse(peer).ok_or_else(|| {
            (
                "peer",
                format!("{peer:?} is not a peer"),
                "write uid:N, gid:N or cert:IDENTITY".to_string(),
            )
        })?;
        let mut ops = BTreeSet::new();
        for a in allow {
            let op = Operation::parse(a).ok_or_else(|| {
                (
                    "allow",
                    format!("{a:?} is not an operation"),
                    format!("use {}", Operation::ALL.map(Operation::as_str).join(", ")),
                )
            })?;
            ops.insert(op);
        }
        if matches!(peer, PeerMatcher::Cert(_)) && ops.contains(&Operation::GetStoreKey) {
            return Err((
                "allow",
                "GetStoreKey is served only over the Unix socket and cannot be granted to a cert: peer".into(),
                "grant GetStoreKey to a uid: or gid: peer instead".into(),
            ));
        }
        let keys = match keys {
            None => None,
            Some(ks) => {
                let mut set = BTreeSet::new();
                for k in ks {
                    set.insert(KeyName::parse(k).map_err(|_| {
                        (
                            "keys",
                            format!("{k:?} is not a key name"),
                            "list key names from [keys]".to_string(),
                        )
                    })?);
                }
                Some(set)
            }
        };
        let stores =
            match stores {
                None => None,
                Some(ss) => {
                    let mut set = BTreeSet::new();
                    for s in ss {
                        set.insert(StoreId::parse(s).map_err(|p| {
                            ("stores", p, "list store ids from [stores]".to_string())
                        })?);
                    }
                    Some(set)
                }
            };
        Ok(Self {
            peer,
            allow: ops,
            keys,
            stores,
        })
    }

    fn allows(
        &self,
        peer: &Peer,
        op: Operation,
        key: Option<&KeyName>,
        store: Option<&StoreId>,
    ) -> bool {
        self.peer.matches(peer)
            && self.allow.contains(&op)
            && key.is_none_or(|k| self.keys.as_ref().is_none_or(|ks| ks.contains(k)))
            && store.is_none_or(|s| self.stores.as_ref().is_none_or(|ss| ss.contains(s)))
    }
}

/// All rules; default deny.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<PolicyRule>,
}

impl Policy {
    pub fn new(rules: Vec<PolicyRule>) -> Self {
        Self { rules }
    }

    /// How many rules (for the reload's log line).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Allows `op` for `peer` on `key` / `store` if any rule does. GetStoreKey over TCP is
    /// refused whatever the rules say (config load refuses such rules too).
    pub fn authorize(
        &self,
        peer: &Peer,
        op: Operation,
        key: Option<&KeyName>,
        store: Option<&StoreId>,
    ) -> Result<(), Error> {
        if op == Operation::GetStoreKey && !matches!(peer, Peer::Unix { .. }) {
            return Err(Error::PermissionDenied(
                "GetStoreKey is served only over the Unix socket".into(),
            ));
        }
        if self.rules.iter().any(|r| r.allows(peer, op, key, store)) {
            Ok(())
        } else {
            // The same words whether or not the key/store exists.
            Err(Error::PermissionDenied(format!(
                "{peer} may not call {op} here"
            )))
        }
    }

    /// Whether `peer` may see `key` in RevokeStatus.
    pub fn may_see(&self, peer: &Peer, key: &KeyName) -> bool {
        self.authorize(peer, Operation::RevokeStatus, Some(key), None)
            .is_ok()
    }

    /// Whether `peer` may call `op` on `store` (to list only what it may see).
    pub fn may_use_store(&self, peer: &Peer, op: Operation, store: &StoreId) -> bool {
        self.authorize(peer, op, None, Some(store)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(peer: &str, allow: &[&str], keys: Option<&[&str]>) -> PolicyRule {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        let keys: Option<Vec<String>> = keys.map(|k| k.iter().map(|s| s.to_string()).collect());
        PolicyRule::parse(peer, &allow, keys.as_deref(), None).unwrap()
    }

    fn name(s: &str) -> KeyName {
        KeyName::parse(s).unwrap()
    }

    fn unix(uid: u32, gid: u32) -> Peer {
        Peer::Unix {
            uid,
            gid,
            pid: None,
        }
    }

    #[test]
    fn default_deny() {
        let p = Policy::default();
        let e = p
            .authorize(&unix(0, 0), Operation::WrapKey, Some(&name("k")), None)
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn uid_gid_and_key_scoping() {
        let p = Policy::new(vec![
            rule("uid:1000", &["WrapKey"], Some(&["a"])),
            rule("gid:50", &["UnwrapKey"], None),
        ]);
        assert!(p
            .authorize(&unix(1000, 1), Operation::WrapKey, Some(&name("a")), None)
            .is_ok());
        assert!(p
            .authorize(&unix(1000, 1), Operation::WrapKey, Some(&name("b")), None)
            .is_err());
        assert!(p
            .authorize(&unix(1000, 1), Operation::UnwrapKey, Some(&name("a")), None)
            .is_err());
        assert!(p
            .authorize(&unix(7, 50), Operation::UnwrapKey, Some(&name("zzz")), None)
            .is_ok());
    }

    #[test]
    fn cert_peers_and_store_keys() {
        let p = Policy::new(vec![rule("cert:backup", &["UnwrapKey"], None)]);
        let tls = Peer::Tls {
            identity: "backup".into(),
        };
        assert!(p
            .authorize(&tls, Operation::UnwrapKey, Some(&name("k")), None)
            .is_ok());
        assert!(p
            .authorize(&tls, Operation::WrapKey, Some(&name("k")), None)
            .is_err());
        let e = PolicyRule::parse("cert:x", &["GetStoreKey".into()], None, None).unwrap_err();
        assert_eq!(e.0, "allow");
        assert!(PolicyRule::parse("user:x", &[], None, None).is_err());
    }
}
