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
use std::sync::{Arc, Mutex};
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
    /// Bounds the KMS calls in flight through this URI (`[kms] max_in_flight`).
    in_flight: tokio::sync::Semaphore,
    /// Every KMS answer by outcome, for metrics (read at scrape time).
    pub outcomes: crate::metrics::KmsOutcomes,
}

impl KmsUri {
    /// Starts UNREACHABLE ("not checked yet") with no grace: a fresh start with the KMS down
    /// hands out nothing.
    pub fn new(uri: KeyUri, backend: Resilient, max_in_flight: usize) -> Self {
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
            in_flight: tokio::sync::Semaphore::new(max_in_flight),
            outcomes: Default::default(),
        }
    }

    /// Waits for a turn to call the KMS through this URI. The semaphore is never closed;
    /// were it, the call goes ahead unbounded rather than failing.
    pub async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.in_flight.acquire().await.ok()
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

/// A configured key: its name and its URIs. A URI is shared (`Arc`) so that a reload which
/// keeps it keeps its backend and its state: a config change never forgets a revocation.
#[derive(Debug)]
pub struct Key {
    pub name: KeyName,
    pub uris: Vec<Arc<KmsUri>>,
    pub wrap_mode: WrapMode,
}

impl Key {
    pub fn status(&self) -> KeyStatus {
        let uris: Vec<UriStatus> = self.uris.iter().map(|u| u.status()).collect();
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
            .map(|u| u.status())
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
mod tests;
