//! The key-state tracker: what the daemon last learned about each key and each of its URIs.
//!
//! Two sources feed it: the background poller (a cheap `check()` per URI every
//! `poll_interval`, see `Broker::poll_once`) and every real KMS call (a Decrypt that comes
//! back DisabledException marks the URI DISABLED at once, without waiting for a poll).
//!
//! The gates here encode CONTRACT.md's rules:
//! - a key is usable while ANY of its URIs is ACTIVE; its state is the best of its URIs';
//! - WrapKey needs EVERY URI: a URI that is DISABLED/REVOKED/DESTROYED fails it;
//! - held material (an unwrapped store key) is handed out while the key is ACTIVE, or
//!   UNREACHABLE for at most `grace_period` since a URI last answered ACTIVE; never while
//!   DISABLED, REVOKED or DESTROYED.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::backend::BackendError;
use crate::error::Error;
use crate::state::KeyState;

/// One URI's last known state.
#[derive(Debug, Clone)]
pub struct UriStatus {
    /// Redacted URI, as RevokeStatus shows it.
    pub uri: String,
    pub state: KeyState,
    /// `None` until the first answer (or failure) is recorded.
    pub checked_at: Option<SystemTime>,
    pub detail: String,
    /// When this URI last answered as usable: the start of the grace window.
    last_active: Option<Instant>,
}

/// A key's view: the best URI state plus each URI's own.
#[derive(Debug, Clone)]
pub struct KeyStatus {
    pub key: String,
    pub state: KeyState,
    pub checked_at: Option<SystemTime>,
    pub detail: String,
    pub uris: Vec<UriStatus>,
}

impl UriStatus {
    /// The state a change is logged as coming from: the first answer is not a recovery.
    fn was(&self) -> &'static str {
        if self.checked_at.is_none() && self.last_active.is_none() {
            "UNCHECKED"
        } else {
            self.state.as_str()
        }
    }
}

/// All keys' states. Locks are held only to copy or update a few fields.
#[derive(Debug)]
pub struct Tracker {
    keys: BTreeMap<String, Mutex<Vec<UriStatus>>>,
    grace: Duration,
}

impl Tracker {
    /// Every URI starts UNREACHABLE ("not checked yet") with no grace: a fresh start with
    /// the KMS down hands out nothing.
    pub fn new<'a>(
        keys: impl IntoIterator<Item = (&'a str, Vec<String>)>,
        grace: Duration,
    ) -> Self {
        let keys = keys
            .into_iter()
            .map(|(name, uris)| {
                let v = uris
                    .into_iter()
                    .map(|uri| UriStatus {
                        uri,
                        state: KeyState::Unreachable,
                        checked_at: None,
                        detail: "not checked yet".into(),
                        last_active: None,
                    })
                    .collect();
                (name.to_owned(), Mutex::new(v))
            })
            .collect();
        Self { keys, grace }
    }

    fn with<R>(&self, key: &str, f: impl FnOnce(&mut Vec<UriStatus>) -> R) -> Option<R> {
        let m = self.keys.get(key)?;
        // A panic while holding this lock cannot leave half-updated state that matters
        // more than availability, so recover from poisoning.
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        Some(f(&mut g))
    }

    /// Records a URI's answer: `Ok(detail)` is ACTIVE; an error changes the state only if
    /// its class implies one (an unauthentic ciphertext says nothing about the key).
    pub fn record(&self, key: &str, uri_index: usize, result: Result<&str, &BackendError>) {
        let now = SystemTime::now();
        self.with(key, |uris| {
            let Some(u) = uris.get_mut(uri_index) else {
                return;
            };
            match result {
                Ok(detail) => {
                    if u.state != KeyState::Active {
                        tracing::info!(key, uri = %u.uri, from = %u.was(), "KMS key is ACTIVE");
                    }
                    u.state = KeyState::Active;
                    u.detail = detail.to_owned();
                    u.checked_at = Some(now);
                    u.last_active = Some(Instant::now());
                }
                Err(e) => {
                    if let Some(state) = e.class.key_state() {
                        if u.state != state {
                            tracing::warn!(key, uri = %u.uri, from = %u.was(), to = %state, detail = %e.detail, "KMS key state changed");
                        }
                        u.state = state;
                        u.detail = e.detail.clone();
                        u.checked_at = Some(now);
                    }
                }
            }
        });
    }

    /// Records that a real KMS call through this URI just worked: ACTIVE, and the grace
    /// window restarts. The detail of the last status check (e.g. the primary version) is
    /// kept; a wrap or unwrap only says which version it used.
    pub fn record_use(&self, key: &str, uri_index: usize) {
        let now = SystemTime::now();
        self.with(key, |uris| {
            if let Some(u) = uris.get_mut(uri_index) {
                if u.state != KeyState::Active {
                    tracing::info!(key, uri = %u.uri, from = %u.was(), "KMS key is ACTIVE");
                    u.detail.clear();
                }
                u.state = KeyState::Active;
                u.checked_at = Some(now);
                u.last_active = Some(Instant::now());
            }
        });
    }

    /// The status of one key, or `None` if it is not configured.
    pub fn status(&self, key: &str) -> Option<KeyStatus> {
        self.with(key, |uris| {
            let best = uris
                .iter()
                .min_by_key(|u| u.state)
                .expect("config guarantees at least one URI");
            KeyStatus {
                key: key.to_owned(),
                state: best.state,
                checked_at: uris.iter().filter_map(|u| u.checked_at).max(),
                detail: best.detail.clone(),
                uris: uris.clone(),
            }
        })
    }

    pub fn key_names(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The state of one URI.
    pub fn uri_state(&self, key: &str, uri_index: usize) -> Option<KeyState> {
        self.with(key, |uris| uris.get(uri_index).map(|u| u.state))
            .flatten()
    }

    /// Before WrapKey: every URI must be usable. UNREACHABLE URIs are tried anyway (the KMS
    /// may be back); a revoked kind fails at once.
    pub fn gate_wrap(&self, key: &str) -> Result<(), Error> {
        let worst = self
            .with(key, |uris| {
                uris.iter()
                    .filter(|u| u.state.is_revoked_kind())
                    .max_by_key(|u| u.state)
                    .map(|u| (u.state, format!("{}: {}", u.uri, u.detail)))
            })
            .flatten();
        match worst {
            Some((state, detail)) => Err(Error::KeyNotUsable {
                key: key.to_owned(),
                state,
                detail,
            }),
            None => Ok(()),
        }
    }

    /// Before anything that needs any one URI (UnwrapKey, unwrapping a store key): fails
    /// only when EVERY URI is of a revoked kind.
    pub fn gate_any(&self, key: &str) -> Result<(), Error> {
        let status = self
            .status(key)
            .ok_or_else(|| Error::NotFound(format!("no key named {key:?}")))?;
        if status.state.is_revoked_kind() {
            return Err(Error::KeyNotUsable {
                key: key.to_owned(),
                state: status.state,
                detail: status.detail,
            });
        }
        Ok(())
    }

    /// Whether material already held for `key` may be handed out now.
    pub fn may_hand_out_held(&self, key: &str) -> Result<(), Error> {
        let (status, last_active) = self
            .with(key, |uris| {
                let last = uris.iter().filter_map(|u| u.last_active).max();
                (uris.clone(), last)
            })
            .ok_or_else(|| Error::NotFound(format!("no key named {key:?}")))?;
        let best = status
            .iter()
            .min_by_key(|u| u.state)
            .expect("at least one URI");
        match best.state {
            KeyState::Active => Ok(()),
            KeyState::Unreachable => {
                let within =
                    last_active.is_some_and(|t| !self.grace.is_zero() && t.elapsed() <= self.grace);
                if within {
                    Ok(())
                } else {
                    Err(Error::Unavailable(format!(
                        "the KMS for key {key:?} is unreachable and the grace period is over"
                    )))
                }
            }
            state => Err(Error::KeyNotUsable {
                key: key.to_owned(),
                state,
                detail: best.detail.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FailureClass;

    fn tracker(grace: Duration) -> Tracker {
        Tracker::new(
            [("k", vec!["mock://a".to_string(), "mock://b".to_string()])],
            grace,
        )
    }

    #[test]
    fn fresh_start_hands_out_nothing() {
        let t = tracker(Duration::from_secs(900));
        assert_eq!(t.status("k").unwrap().state, KeyState::Unreachable);
        assert!(t.may_hand_out_held("k").is_err());
    }

    #[test]
    fn best_of_uris_and_wrap_needs_all() {
        let t = tracker(Duration::from_secs(900));
        t.record("k", 0, Ok("v1"));
        t.record(
            "k",
            1,
            Err(&BackendError::new(FailureClass::Disabled, "off")),
        );
        let s = t.status("k").unwrap();
        assert_eq!(s.state, KeyState::Active);
        assert_eq!(s.uris[1].state, KeyState::Disabled);
        assert!(t.gate_any("k").is_ok());
        let e = t.gate_wrap("k").unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(t.may_hand_out_held("k").is_ok());
    }

    #[test]
    fn revoked_kinds_have_no_grace() {
        let t = tracker(Duration::from_secs(900));
        t.record("k", 0, Ok(""));
        t.record(
            "k",
            0,
            Err(&BackendError::new(FailureClass::Revoked, "403")),
        );
        t.record(
            "k",
            1,
            Err(&BackendError::new(FailureClass::Destroyed, "gone")),
        );
        let e = t.may_hand_out_held("k").unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.to_string().contains("REVOKED"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_grace_window() {
        let t = tracker(Duration::from_secs(60));
        t.record("k", 0, Ok(""));
        t.record("k", 0, Err(&BackendError::unreachable("timeout")));
        t.record("k", 1, Err(&BackendError::unreachable("timeout")));
        assert!(t.may_hand_out_held("k").is_ok());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            t.may_hand_out_held("k").unwrap_err().code(),
            tonic::Code::Unavailable
        );
    }

    #[test]
    fn zero_grace_turns_it_off() {
        let t = tracker(Duration::ZERO);
        t.record("k", 0, Ok(""));
        t.record("k", 0, Err(&BackendError::unreachable("timeout")));
        t.record("k", 1, Err(&BackendError::unreachable("timeout")));
        assert!(t.may_hand_out_held("k").is_err());
    }

    #[test]
    fn invalid_ciphertext_changes_nothing() {
        let t = tracker(Duration::ZERO);
        t.record("k", 0, Ok("v"));
        t.record("k", 0, Err(&BackendError::invalid_ciphertext("bad tag")));
        assert_eq!(t.uri_state("k", 0), Some(KeyState::Active));
    }
}
