//! `mock://NAME`: the scriptable mock KMS. **Test builds only** (cargo feature `mock-kms`;
//! a production build refuses `mock://` URIs at config load).
//!
//! Every `mock://NAME` URI in the process shares one mock key, found by name in a
//! process-global registry, so a test scripts the KMS the daemon under test is using:
//!
//! ```
//! # use std::time::Duration;
//! use kms_broker::backend::mock::{mock, MockFault};
//! let kms = mock("doc-example");       // get-or-create; use a fresh name per test
//! kms.disable();                       // every call now fails FailureClass::Disabled
//! kms.enable();
//! kms.fail_next(2, MockFault::Throttled); // the next 2 calls are Unreachable
//! kms.set_latency(Duration::from_millis(5)); // tokio::time::sleep, so paused time works
//! assert_eq!(kms.rotate(), "2");       // new primary version; "1" still decrypts
//! assert_eq!(kms.calls().check, 0);    // calls are counted per kind
//! ```
//!
//! A call runs: count it, sleep the latency, then answer in this order, like a real KMS:
//! a fault (`fail_next`, then `set_fault`) → Unreachable; revoked → Revoked; destroyed →
//! Destroyed; disabled → Disabled; else the crypto. The same applies to encrypt, decrypt
//! and check (the cheap metadata call, counted separately). Versions are "1", "2", …,
//! each a random AES-256-GCM key; ciphertexts are `nonce || ciphertext || tag` with
//! [`Aad::bytes`] as authenticated data. [`MockKms::destroy`] drops the key material for
//! good, as a real KMS does: there is no undo.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::file::{open, seal};
use super::{Aad, BackendError, Ciphertext, Decrypted, FailureClass, KeyHealth, KmsBackend};
use crate::key_uri::MockUri;
use crate::secret::SecretBytes;
use crate::state::KeyState;

/// Every mock key of the process, by name.
static REGISTRY: LazyLock<Mutex<HashMap<String, Arc<MockState>>>> = LazyLock::new(Default::default);

/// The mock key named `name`, created (one version, enabled) on first use.
pub fn mock(name: &str) -> MockKms {
    let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let state = reg
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(MockState::new()))
        .clone();
    MockKms {
        name: name.to_owned(),
        state,
    }
}

/// A scripted transport failure. Both are FailureClass::Unreachable; the detail says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockFault {
    /// Like a 503 or a connection refused.
    Unavailable,
    /// Like a 429 / ThrottlingException.
    Throttled,
}

/// How many calls of each kind reached the mock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MockCalls {
    pub encrypt: u64,
    pub decrypt: u64,
    pub check: u64,
}

/// One mock key's state. Shared by every [`MockKms`] handle and [`MockBackend`] of a name.
#[derive(Debug)]
pub struct MockState {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    disabled: bool,
    revoked: bool,
    destroyed: bool,
    latency: Duration,
    /// Delay between the KMS deciding a Decrypt and its answer arriving.
    reply_latency: Duration,
    fail_next: (u32, MockFault),
    fault: Option<MockFault>,
    /// The Retry-After a throttling answer carries.
    retry_after: Option<Duration>,
    /// Version `i + 1` is `versions[i]`; the last is the primary. Emptied by destroy.
    versions: Vec<SecretBytes>,
    calls: MockCalls,
    rate_limit: Option<RateLimit>,
}

/// A KMS request quota: a token bucket holding one second of calls, as AWS KMS and Cloud
/// KMS quotas behave; a call finding it empty is throttled (and still counted: it reached
/// the KMS).
#[derive(Debug)]
struct RateLimit {
    per_second: f64,
    tokens: f64,
    refilled: tokio::time::Instant,
}

impl RateLimit {
    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Encrypt,
    Decrypt,
    Check,
}

impl MockState {
    fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                disabled: false,
                revoked: false,
                destroyed: false,
                latency: Duration::ZERO,
                reply_latency: Duration::ZERO,
                fail_next: (0, MockFault::Unavailable),
                fault: None,
                retry_after: None,
                versions: vec![SecretBytes::random(32)],
                calls: MockCalls::default(),
                rate_limit: None,
            }),
        }
    }

    /// A panicking test must not poison the mock for every other test of the process.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the call, sleeps the latency (never holding the lock), then returns the lock
    /// if the key would answer, or the error it answers with.
    async fn enter(&self, op: Op) -> Result<MutexGuard<'_, Inner>, BackendError> {
        let (latency, throttled) = {
            let mut s = self.lock();
            match op {
                Op::Encrypt => s.calls.encrypt += 1,
                Op::Decrypt => s.calls.decrypt += 1,
                Op::Check => s.calls.check += 1,
            }
            let throttled = s.rate_limit.as_mut().is_some_and(|r| !r.take());
            // Like a real KMS, every answer (refusals too) carries a request id.
            // Written on the stack: the mock is on the benches' measured path.
            let c = s.calls;
            let mut id = [0u8; 32];
            let mut w = &mut id[..];
            let _ = write!(w, "mock-{}", c.encrypt + c.decrypt + c.check);
            let len = 32 - w.len();
            crate::kms_request::note(std::str::from_utf8(&id[..len]).unwrap_or_default());
            (s.latency, throttled)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut s = self.lock();
        if throttled {
            return Err(BackendError::new(
                FailureClass::Unreachable,
                "mock KMS: throttled (over the rate limit)",
            ));
        }
        let fault = if s.fail_next.0 > 0 {
            s.fail_next.0 -= 1;
            Some(s.fail_next.1)
        } else {
            s.fault
        };
        let err =
            |class, detail: &str| Err(BackendError::new(class, format!("mock KMS: {detail}")));
        match fault {
            Some(MockFault::Unavailable) => {
                return err(FailureClass::Unreachable, "unavailable (injected)")
            }
            Some(MockFault::Throttled) => {
                return Err(BackendError::throttled(
                    "mock KMS: throttled (injected)",
                    s.retry_after,
                ))
            }
            None => {}
        }
        if s.revoked {
            return err(FailureClass::Revoked, "access denied");
        }
        if s.destroyed {
            return err(FailureClass::Destroyed, "key destroyed");
        }
        if s.disabled {
            return err(FailureClass::Disabled, "key disabled");
        }
        Ok(s)
    }
}

/// A test's handle on one mock key: cheap to clone, every clone scripts the same key.
#[derive(Debug, Clone)]
pub struct MockKms {
    name: String,
    state: Arc<MockState>,
}

impl MockKms {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Switches the key off, reversibly ([`MockKms::enable`]).
    pub fn disable(&self) {
        self.state.lock().disabled = true;
    }
    pub fn enable(&self) {
        self.state.lock().disabled = false;
    }
    /// Takes the daemon's permission away ([`MockKms::restore_access`] gives it back).
    pub fn revoke(&self) {
        self.state.lock().revoked = true;
    }
    pub fn restore_access(&self) {
        self.state.lock().revoked = false;
    }
    /// Deletes every key version. Irreversible: use a fresh name in the next test.
    pub fn destroy(&self) {
        let mut s = self.state.lock();
        s.destroyed = true;
        s.versions.clear();
    }
    /// Delay before every call answers (a `tokio::time::sleep`, so paused time skips it).
    pub fn set_latency(&self, latency: Duration) {
        self.state.lock().latency = latency;
    }
    /// Delay AFTER a Decrypt is decided and before its answer arrives: a Decrypt admitted
    /// before a revocation still succeeds, late, as a real KMS's answer in flight would.
    pub fn set_reply_latency(&self, latency: Duration) {
        self.state.lock().reply_latency = latency;
    }
    /// The next `n` calls (of any kind) fail with `fault`; later calls behave as before.
    pub fn fail_next(&self, n: u32, fault: MockFault) {
        self.state.lock().fail_next = (n, fault);
    }
    /// At most `per_second` calls (of any kind) a second, with a burst of one second's
    /// worth; calls above it fail Unreachable ("throttled"), as a KMS over its request
    /// quota answers. `None` lifts the limit.
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        self.state.lock().rate_limit = per_second.map(|n| RateLimit {
            per_second: f64::from(n.max(1)),
            tokens: f64::from(n.max(1)),
            refilled: tokio::time::Instant::now(),
        });
    }
    /// Every call fails with `fault` until `set_fault(None)`.
    pub fn set_fault(&self, fault: Option<MockFault>) {
        self.state.lock().fault = fault;
    }
    /// Throttling answers carry this Retry-After.
    pub fn set_retry_after(&self, retry_after: Option<Duration>) {
        self.state.lock().retry_after = retry_after;
    }
    /// Adds a new primary version and returns its name; older versions still decrypt.
    /// A destroyed key stays destroyed.
    pub fn rotate(&self) -> String {
        let mut s = self.state.lock();
        if !s.destroyed {
            s.versions.push(SecretBytes::random(32));
        }
        s.versions.len().to_string()
    }
    /// The version new encrypts use.
    pub fn primary_version(&self) -> String {
        self.state.lock().versions.len().to_string()
    }
    pub fn calls(&self) -> MockCalls {
        self.state.lock().calls
    }
    pub fn reset_calls(&self) {
        self.state.lock().calls = MockCalls::default();
    }
    /// The state a status check would report now (a persistent fault reads Unreachable;
    /// `fail_next` is not consumed).
    pub fn state(&self) -> KeyState {
        let s = self.state.lock();
        if s.fail_next.0 > 0 || s.fault.is_some() {
            KeyState::Unreachable
        } else if s.revoked {
            KeyState::Revoked
        } else if s.destroyed {
            KeyState::Destroyed
        } else if s.disabled {
            KeyState::Disabled
        } else {
            KeyState::Active
        }
    }
}

/// The backend for `mock://NAME`: the registry's key of that name.
#[derive(Debug)]
pub struct MockBackend {
    name: String,
    state: Arc<MockState>,
}

impl std::fmt::Debug for MockUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MockUri({})", self.name)
    }
}

impl MockBackend {
    pub fn named(name: &str) -> Self {
        let MockKms { name, state } = mock(name);
        Self { name, state }
    }
}

#[async_trait]
impl KmsBackend for MockBackend {
    async fn encrypt(
        &self,
        plaintext: &SecretBytes,
        aad: &Aad,
    ) -> Result<Ciphertext, BackendError> {
        let s = self.state.enter(Op::Encrypt).await?;
        // Not destroyed (enter checked), so there is at least one version.
        let key = s.versions.last().ok_or_else(|| {
            BackendError::new(FailureClass::Destroyed, "mock KMS: no key versions")
        })?;
        Ok(Ciphertext {
            bytes: seal(key, plaintext, aad)?,
            key_version: s.versions.len().to_string(),
        })
    }

    async fn decrypt(
        &self,
        ciphertext: &[u8],
        key_version: &str,
        aad: &Aad,
    ) -> Result<Decrypted, BackendError> {
        let (answer, reply_latency) = {
            let s = self.state.enter(Op::Decrypt).await?;
            let answer = key_version
                .parse::<usize>()
                .ok()
                .and_then(|v| v.checked_sub(1))
                .and_then(|i| s.versions.get(i))
                .ok_or_else(|| {
                    BackendError::invalid_ciphertext(format!(
                        "mock KMS {}: no key version {key_version:?}",
                        self.name
                    ))
                })
                .and_then(|key| open(key, ciphertext, aad));
            (answer, s.reply_latency)
        };
        if !reply_latency.is_zero() {
            tokio::time::sleep(reply_latency).await;
        }
        // The version picked the key, and that key authenticated the ciphertext.
        Ok(Decrypted {
            plaintext: answer?,
            key_version: Some(key_version.to_owned()),
        })
    }

    async fn check(&self) -> Result<KeyHealth, BackendError> {
        let s = self.state.enter(Op::Check).await?;
        Ok(KeyHealth {
            detail: format!("primary version {}", s.versions.len()),
            version: Some(s.versions.len().to_string()),
        })
    }
}

#[cfg(test)]
mod tests;
