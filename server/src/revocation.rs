//! Key states, and the one set of rules that changes them.
//!
//! Each configured URI has ONE home, a [`KmsUri`]: its parsed URI, its backend and its state.
//! A [`Key`] is a name and its URIs. Two sources of evidence feed a URI's state: the
//! background poller's status check (`check()`), and every real KMS call (a Decrypt that
//! comes back AccessDenied marks the URI REVOKED at once, without waiting for a poll).
//!
//! Revocation fails closed:
//! - a denial (DISABLED, REVOKED, DESTROYED) is recorded from any source, at once;
//! - a denial is lifted ONLY by a status check that BEGAN after the denial was recorded.
//!   Every KMS call takes a [`Ticket`] from the [`Clock`] when it starts, and every denial a
//!   sequence number when it is recorded, so a slow Decrypt admitted before a revocation,
//!   or a poll that was already in flight, cannot undo it when it finally succeeds;
//! - an unreachable KMS does not lift a denial either.
//!
//! The gates encode CONTRACT.md's rules:
//! - a key is usable while ANY of its URIs is ACTIVE; its state is the best of its URIs';
//! - WrapKey needs EVERY URI: a URI that is DISABLED/REVOKED/DESTROYED fails it;
//! - held material (an unwrapped store key) is handed out while the key is ACTIVE, or
//!   UNREACHABLE for at most `grace_period` since one of its unreachable URIs last answered;
//!   never while DISABLED, REVOKED or DESTROYED.
//!
//! Every change of any URI's state advances the [`Clock`]'s epoch, which watchers (the store
//! purger) follow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::resilient::Resilient;
use crate::backend::BackendError;
use crate::config::WrapMode;
use crate::error::Error;
use crate::key_name::KeyName;
use crate::key_uri::KeyUri;
use crate::state::KeyState;

/// The daemon's sequence of KMS call starts and state changes, and the epoch watchers see.
#[derive(Debug)]
pub struct Clock {
    seq: AtomicU64,
    epoch: watch::Sender<u64>,
}

impl Default for Clock {
    fn default() -> Self {
        Self {
            seq: AtomicU64::new(0),
            epoch: watch::Sender::new(0),
        }
    }
}

impl Clock {
    fn tick(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Taken when a KMS call starts.
    pub fn ticket(&self, source: Source) -> Ticket {
        Ticket {
            seq: self.tick(),
            source,
        }
    }

    fn changed(&self) {
        let e = self.tick();
        self.epoch.send_modify(|v| *v = (*v).max(e));
    }

    /// Follows the epoch: it changes whenever any URI's state changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    pub fn epoch(&self) -> u64 {
        *self.epoch.borrow()
    }
}

/// Where evidence comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The status check: the only source that may lift a denial.
    Check,
    /// A real Encrypt or Decrypt.
    Use,
}

/// When (in [`Clock`] order) a KMS call began, and what kind it was.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    seq: u64,
    source: Source,
}

/// One URI's state as RevokeStatus shows it.
#[derive(Debug, Clone)]
pub struct UriStatus {
    /// Redacted URI.
    pub uri: String,
    pub state: KeyState,
    /// `None` until the first answer (or failure) is recorded.
    pub checked_at: Option<SystemTime>,
    pub detail: String,
}

/// A key's view: the best URI state plus each URI's own.
#[derive(Debug, Clone)]
pub struct KeyStatus {
    pub key: KeyName,
    pub state: KeyState,
    pub checked_at: Option<SystemTime>,
    pub detail: String,
    pub uris: Vec<UriStatus>,
}

#[derive(Debug)]
struct Record {
    shown: UriStatus,
    /// When this URI last answered as usable: the start of the grace window.
    last_active: Option<Instant>,
    /// The clock's sequence number when the current denial was recorded.
    denied_at: u64,
    /// The version a new Encrypt uses, as the last check or Encrypt reported it.
    version: Option<String>,
}

/// One configured KMS URI: its backend and its state, in one place.
#[derive(Debug)]
pub struct KmsUri {
    pub uri: KeyUri,
    /// `uri.id()`, which envelopes record; computed once, as every unwrap compares it.
    pub id: String,
    pub backend: Resilient,
    record: Mutex<Record>,
    /// Recent answer time (an EWMA, microseconds; 0 = none yet): unwraps ask the
    /// fastest URI first.
    latency_us: AtomicU64,
    /// Every KMS answer by outcome, for metrics (read at scrape time).
    pub outcomes: crate::metrics::KmsOutcomes,
}

impl KmsUri {
    /// Starts UNREACHABLE ("not checked yet") with no grace: a fresh start with the KMS down
    /// hands out nothing.
    pub fn new(uri: KeyUri, backend: Resilient) -> Self {
        Self {
            id: uri.id(),
            record: Mutex::new(Record {
                shown: UriStatus {
                    uri: uri.redacted(),
                    state: KeyState::Unreachable,
                    checked_at: None,
                    detail: "not checked yet".into(),
                },
                last_active: None,
                denied_at: 0,
                version: None,
            }),
            uri,
            backend,
            latency_us: AtomicU64::new(0),
            outcomes: Default::default(),
        }
    }

    /// Notes how long a successful call took (EWMA with weight 1/8).
    pub fn note_latency(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    old - old / 8 + sample / 8
                })
            });
    }

    /// Recent answer time; URIs not heard from yet sort after those that answered.
    pub fn latency(&self) -> Duration {
        match self.latency_us.load(Ordering::Relaxed) {
            0 => Duration::MAX,
            us => Duration::from_micros(us),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        // Updates are a few field writes; a poisoned lock holds a consistent record.
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> KeyState {
        self.lock().shown.state
    }

    pub fn status(&self) -> UriStatus {
        self.lock().shown.clone()
    }

    /// When this URI last answered as usable (a check or a call), for metrics.
    pub fn last_good(&self) -> Option<Instant> {
        self.lock().last_active
    }

    /// The version a new Encrypt would use, if the KMS has said (see
    /// [`crate::backend::KeyHealth::version`]).
    pub fn current_version(&self) -> Option<String> {
        self.lock().version.clone()
    }

    /// Notes the version the KMS says new Encrypts use (from a check, or an Encrypt's answer).
    pub fn note_version(&self, version: &str) {
        let mut r = self.lock();
        if r.version.as_deref() != Some(version) {
            r.version = Some(version.to_owned());
        }
    }

    /// Records what a KMS call that began at `ticket` found: `Ok(detail)` is a usable key
    /// (`detail` from a status check; a real call passes `None` and keeps the last one).
    pub fn record(
        &self,
        clock: &Clock,
        key: &KeyName,
        ticket: Ticket,
        result: Result<Option<&str>, &BackendError>,
    ) {
        self.outcomes.count(result.map(|_| ()));
        let now = SystemTime::now();
        let mut r = self.lock();
        let was = r.shown.state;
        let first = r.shown.checked_at.is_none() && r.last_active.is_none();
        let from = if first { "UNCHECKED" } else { was.as_str() };
        match result {
            Ok(detail) => {
                if was.is_revoked_kind()
                    && !(ticket.source == Source::Check && ticket.seq > r.denied_at)
                {
                    tracing::debug!(%key, uri = %r.shown.uri, state = %was, "a success that began before the denial does not lift it");
                    return;
                }
                r.shown.state = KeyState::Active;
                match detail {
                    Some(d) => r.shown.detail = d.to_owned(),
                    None if was != KeyState::Active => r.shown.detail.clear(),
                    None => {}
                }
                r.shown.checked_at = Some(now);
                r.last_active = Some(Instant::now());
                if was != KeyState::Active {
                    tracing::info!(%key, uri = %r.shown.uri, from, "KMS key is ACTIVE");
                }
            }
            Err(e) => match e.evidence() {
                None => return,
                Some(KeyState::Unreachable) if was.is_revoked_kind() => {
                    // Not evidence that the key came back: the denial stands.
                    r.shown.checked_at = Some(now);
                    return;
                }
                Some(state) => {
                    if state.is_revoked_kind() {
                        r.denied_at = clock.tick();
                    }
                    r.shown.state = state;
                    r.shown.detail = e.detail.clone();
                    r.shown.checked_at = Some(now);
                    if was != state {
                        tracing::warn!(%key, uri = %r.shown.uri, from, to = %state, detail = %e.detail, "KMS key state changed");
                    }
                }
            },
        }
        let changed = r.shown.state != was;
        drop(r);
        if changed {
            clock.changed();
        }
    }
}

/// A configured key: its name and its URIs.
#[derive(Debug)]
pub struct Key {
    pub name: KeyName,
    pub uris: Vec<KmsUri>,
    pub wrap_mode: WrapMode,
}

impl Key {
    pub fn status(&self) -> KeyStatus {
        let uris: Vec<UriStatus> = self.uris.iter().map(KmsUri::status).collect();
        // The config guarantees at least one URI; an empty key would read as DESTROYED.
        let best = uris.iter().min_by_key(|u| u.state);
        KeyStatus {
            key: self.name.clone(),
            state: best.map_or(KeyState::Destroyed, |u| u.state),
            checked_at: uris.iter().filter_map(|u| u.checked_at).max(),
            detail: best.map(|u| u.detail.clone()).unwrap_or_default(),
            uris,
        }
    }

    fn not_usable(&self, state: KeyState, detail: String) -> Error {
        Error::KeyNotUsable {
            key: self.name.to_string(),
            state,
            detail,
        }
    }

    /// Before WrapKey: every URI must be usable. UNREACHABLE URIs are tried anyway (the KMS
    /// may be back); a revoked kind fails at once.
    pub fn gate_wrap(&self) -> Result<(), Error> {
        let worst = self
            .uris
            .iter()
            .map(KmsUri::status)
            .filter(|u| u.state.is_revoked_kind())
            .max_by_key(|u| u.state);
        match worst {
            Some(u) => Err(self.not_usable(u.state, format!("{}: {}", u.uri, u.detail))),
            None => Ok(()),
        }
    }

    /// Before (and after) anything that needs any one URI: fails only when EVERY URI is of
    /// a revoked kind.
    pub fn gate_any(&self) -> Result<(), Error> {
        let s = self.status();
        if s.state.is_revoked_kind() {
            return Err(self.not_usable(s.state, s.detail));
        }
        Ok(())
    }

    /// Whether material already held for this key may be handed out now.
    pub fn may_hand_out_held(&self, grace: Duration) -> Result<(), Error> {
        let s = self.status();
        match s.state {
            KeyState::Active => Ok(()),
            KeyState::Unreachable => {
                // The window starts when a URI that is now merely unreachable last answered;
                // a URI that is denied lends no grace.
                let last = self
                    .uris
                    .iter()
                    .filter_map(|u| {
                        let r = u.lock();
                        (r.shown.state == KeyState::Unreachable)
                            .then_some(r.last_active)
                            .flatten()
                    })
                    .max();
                if last.is_some_and(|t| !grace.is_zero() && t.elapsed() <= grace) {
                    Ok(())
                } else {
                    Err(Error::Unavailable(format!(
                        "the KMS for key {:?} is unreachable and the grace period is over",
                        self.name.as_str()
                    )))
                }
            }
            state => Err(self.not_usable(state, s.detail)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::resilient::RetryPolicy;
    use crate::backend::FailureClass;

    fn key() -> Key {
        let uri = |n: &str| {
            let u = KeyUri::parse(&format!("file:///nonexistent/{n}")).unwrap();
            let KeyUri::File(f) = u.clone() else {
                panic!("a file URI")
            };
            let b = std::sync::Arc::new(crate::backend::file::FileBackend::new(f));
            KmsUri::new(u, Resilient::new(b, RetryPolicy::default()))
        };
        Key {
            name: KeyName::parse("k").unwrap(),
            uris: vec![uri("a"), uri("b")],
            wrap_mode: WrapMode::Strict,
        }
    }

    fn err(class: FailureClass) -> BackendError {
        BackendError::new(class, "x")
    }

    fn check(k: &Key, c: &Clock, i: usize, r: Result<Option<&str>, &BackendError>) {
        k.uris[i].record(c, &k.name, c.ticket(Source::Check), r);
    }

    #[test]
    fn fresh_start_hands_out_nothing() {
        let k = key();
        assert_eq!(k.status().state, KeyState::Unreachable);
        assert!(k.may_hand_out_held(Duration::from_secs(900)).is_err());
    }

    #[test]
    fn best_of_uris_and_wrap_needs_all() {
        let (k, c) = (key(), Clock::default());
        check(&k, &c, 0, Ok(Some("v1")));
        check(&k, &c, 1, Err(&err(FailureClass::Disabled)));
        let s = k.status();
        assert_eq!(s.state, KeyState::Active);
        assert_eq!(s.uris[1].state, KeyState::Disabled);
        assert!(k.gate_any().is_ok());
        assert_eq!(
            k.gate_wrap().unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        assert!(k.may_hand_out_held(Duration::ZERO).is_ok());
    }

    #[test]
    fn revoked_kinds_have_no_grace() {
        let (k, c) = (key(), Clock::default());
        check(&k, &c, 0, Ok(None));
        check(&k, &c, 0, Err(&err(FailureClass::Revoked)));
        check(&k, &c, 1, Err(&err(FailureClass::Destroyed)));
        let e = k.may_hand_out_held(Duration::from_secs(900)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.to_string().contains("REVOKED"), "{e}");
    }

    #[test]
    fn only_a_check_that_began_after_a_denial_lifts_it() {
        let (k, c) = (key(), Clock::default());
        check(&k, &c, 0, Ok(None));
        // A slow Decrypt and a poll are admitted, then the key is revoked.
        let slow_use = c.ticket(Source::Use);
        let slow_check = c.ticket(Source::Check);
        check(&k, &c, 0, Err(&err(FailureClass::Disabled)));
        let epoch = c.epoch();
        k.uris[0].record(&c, &k.name, slow_use, Ok(None));
        k.uris[0].record(&c, &k.name, slow_check, Ok(Some("stale")));
        assert_eq!(k.uris[0].state(), KeyState::Disabled);
        // A real call that began after the denial still cannot lift it: only a check can.
        k.uris[0].record(&c, &k.name, c.ticket(Source::Use), Ok(None));
        assert_eq!(k.uris[0].state(), KeyState::Disabled);
        // An unreachable KMS is no evidence that the key came back.
        check(&k, &c, 0, Err(&BackendError::unreachable("timeout")));
        assert_eq!(k.uris[0].state(), KeyState::Disabled);
        assert_eq!(c.epoch(), epoch, "nothing changed");
        check(&k, &c, 0, Ok(Some("fresh")));
        assert_eq!(k.uris[0].state(), KeyState::Active);
        assert!(c.epoch() > epoch);
    }

    #[test]
    fn caller_shaped_and_version_scoped_failures_change_nothing() {
        let (k, c) = (key(), Clock::default());
        check(&k, &c, 0, Ok(Some("v")));
        for e in [
            BackendError::invalid_ciphertext("bad tag"),
            BackendError::invalid_request("too large"),
            err(FailureClass::Disabled).version_scoped(),
        ] {
            k.uris[0].record(&c, &k.name, c.ticket(Source::Use), Err(&e));
            assert_eq!(k.uris[0].state(), KeyState::Active, "{e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_grace_window() {
        let (k, c) = (key(), Clock::default());
        let grace = Duration::from_secs(60);
        check(&k, &c, 0, Ok(None));
        check(&k, &c, 0, Err(&BackendError::unreachable("timeout")));
        check(&k, &c, 1, Err(&BackendError::unreachable("timeout")));
        assert!(k.may_hand_out_held(grace).is_ok());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            k.may_hand_out_held(grace).unwrap_err().code(),
            tonic::Code::Unavailable
        );
    }

    #[test]
    fn zero_grace_turns_it_off_and_a_denied_uri_lends_none() {
        let (k, c) = (key(), Clock::default());
        check(&k, &c, 0, Ok(None));
        check(&k, &c, 0, Err(&BackendError::unreachable("timeout")));
        check(&k, &c, 1, Err(&BackendError::unreachable("timeout")));
        assert!(k.may_hand_out_held(Duration::ZERO).is_err());
        // URI b was active a moment ago and is now DISABLED; URI a never answered.
        let (k, c) = (key(), Clock::default());
        check(&k, &c, 1, Ok(None));
        check(&k, &c, 1, Err(&err(FailureClass::Disabled)));
        assert_eq!(k.status().state, KeyState::Unreachable);
        assert!(k.may_hand_out_held(Duration::from_secs(900)).is_err());
    }
}
