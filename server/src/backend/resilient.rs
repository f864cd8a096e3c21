//! Deadlines, retries and the KMS's protection, for every backend, in one place.
//!
//! A call to one KMS URI goes through, per attempt:
//! 1. the circuit breaker ([`super::breaker`]): open after sustained unreachability, it
//!    fails encrypt/decrypt at once; status checks always pass (they are its probes too);
//! 2. the token bucket ([`super::bucket`]): a call waits for a token within its deadline,
//!    else fails UNREACHABLE "throttled locally" without calling the KMS; status checks
//!    skip it too (one per URI per poll: the revocation poller must always get through);
//! 3. the attempt, cut by the per-attempt timeout and the call's deadline;
//! 4. on [`super::FailureClass::Unreachable`] (unless the backend marked the answer
//!    [`BackendError::not_retryable`]), a retry if attempts, the deadline and the retry
//!    budget ([`super::budget`]) allow. The sleep is capped full jitter (uniform in
//!    `[0, min(cap, base * 2^attempt))`) so a fleet that lost its KMS at once does not come
//!    back in lockstep; after a THROTTLING answer it is the KMS's Retry-After, or else
//!    longer (see [`Protection::throttle_backoff`]), and the whole URI's bucket pauses
//!    for it, so a throttled KMS sees fewer calls, not more.
//!
//! A caller is never held past the deadline: waits for a token or a retry that would end
//! after it are not started, and the last attempt is cut short to fit. Refusals made here
//! (bucket, breaker) are [`BackendError::local`]: never evidence of a key state.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use tokio::time::Instant;

use super::breaker::Breaker;
use super::bucket::TokenBucket;
use super::budget::RetryBudget;
use super::protect::{Counters, ProtectStats, Protection};
use super::{Aad, BackendError, Ciphertext, Decrypted, KeyHealth, KmsBackend};
use crate::secret::SecretBytes;

#[cfg(test)]
mod tests;

/// How hard to try a KMS before calling it unreachable, and how hard to press it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Longest a single attempt may take.
    pub attempt_timeout: Duration,
    /// Longest a whole call (all attempts and sleeps) may take.
    pub deadline: Duration,
    /// Attempts in all, at least 1.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Token bucket, retry budget and circuit breaker settings.
    pub protection: Protection,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(15),
            max_attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            protection: Protection::default(),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: uniform in `[0, min(max_delay, base_delay * 2^retry))`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX));
        jitter(Duration::ZERO, exp.min(self.max_delay))
    }

    /// After a throttling answer: the KMS's Retry-After if it gave one, else uniform in
    /// `[throttle_backoff / 2, throttle_backoff)`, and never shorter than [`Self::backoff`].
    pub fn throttle_backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let t = self.protection.throttle_backoff;
        let wait = retry_after.unwrap_or_else(|| jitter(t / 2, t));
        wait.max(self.backoff(retry))
    }
}

fn jitter(low: Duration, high: Duration) -> Duration {
    if high <= low {
        return low;
    }
    rand::rng().random_range(low..high)
}

/// Whether an operation may be refused by an open breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Crypto,
    /// A status check: always let through (see [`super::breaker`]).
    Check,
}

/// A backend with the retry policy and the KMS's protection applied to each call.
pub struct Resilient {
    inner: Arc<dyn KmsBackend>,
    policy: RetryPolicy,
    bucket: TokenBucket,
    budget: RetryBudget,
    breaker: Breaker,
    counters: Counters,
}

impl Resilient {
    pub fn new(inner: Arc<dyn KmsBackend>, policy: RetryPolicy) -> Self {
        let p = policy.protection;
        Self {
            inner,
            policy,
            bucket: TokenBucket::new(p.rate_per_second, p.burst),
            budget: RetryBudget::new(p.retry_budget),
            breaker: Breaker::new(p.breaker_failures, p.breaker_cooldown),
            counters: Counters::default(),
        }
    }

    /// Counters and breaker state of this URI, for metrics.
    pub fn stats(&self) -> ProtectStats {
        self.counters
            .snapshot(self.breaker.state(), self.breaker.opened())
    }

    /// Runs `op` under the policy and the protection (see the module docs).
    async fn call<T, F, Fut>(&self, what: &str, kind: Kind, mut op: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let policy = &self.policy;
        let deadline = Instant::now() + policy.deadline;
        Counters::bump(&self.counters.calls);
        self.budget.deposit();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let admit = match kind {
                Kind::Check => self.breaker.bypass(),
                Kind::Crypto if self.inner.is_local() => self.breaker.bypass(),
                Kind::Crypto => self.breaker.admit().map_err(|retry_in| {
                    Counters::bump(&self.counters.breaker_rejected);
                    BackendError::local(format!(
                        "{what}: KMS unreachable, circuit breaker open (next probe in {retry_in:?})"
                    ))
                })?,
            };
            // Status checks skip the bucket as they skip the breaker: one per URI per poll,
            // they cannot flood the KMS, and a check held back by our own bucket (say for a
            // long Retry-After) would leave the key's state unverified.
            let token = match kind {
                Kind::Check => Ok(()),
                Kind::Crypto if self.inner.is_local() => Ok(()),
                Kind::Crypto => self.bucket.acquire(deadline).await,
            };
            if let Err(wait) = token {
                Counters::bump(&self.counters.throttled_locally);
                return Err(BackendError::local(format!(
                    "{what}: throttled locally (next KMS call slot in {wait:?}, past the deadline)"
                )));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(BackendError::unreachable(format!(
                    "{what}: no answer within {:?}",
                    policy.deadline
                )));
            }
            Counters::bump(&self.counters.attempts);
            let budget = remaining.min(policy.attempt_timeout);
            let result = match tokio::time::timeout(budget, op()).await {
                Ok(r) => r,
                Err(_) => Err(BackendError::unreachable(format!(
                    "{what}: attempt timed out after {budget:?}"
                ))),
            };
            let e = match result {
                Ok(v) => {
                    self.breaker.success(admit);
                    self.bucket.release();
                    return Ok(v);
                }
                Err(e) => e,
            };
            // Any answer but "unreachable" proves the KMS is there; so does "slow down", and
            // so does an answer that retrying cannot change ("not implemented").
            if e.should_retry() && !e.throttled {
                self.breaker.failure(admit);
            } else {
                self.breaker.success(admit);
                if !e.throttled {
                    // It takes calls again: a throttling pause ends.
                    self.bucket.release();
                }
            }
            if e.throttled {
                Counters::bump(&self.counters.throttled_by_kms);
            }
            if !e.should_retry() || attempt >= policy.max_attempts.max(1) {
                return Err(e);
            }
            let sleep = if e.throttled {
                policy.throttle_backoff(attempt - 1, e.retry_after)
            } else {
                policy.backoff(attempt - 1)
            };
            let wake = Instant::now() + sleep;
            if e.throttled {
                // Everyone calling this URI slows down, not only this caller.
                self.bucket.hold(wake);
            }
            if wake >= deadline {
                return Err(e);
            }
            if !self.budget.withdraw() {
                Counters::bump(&self.counters.retries_denied);
                tracing::debug!(what, detail = %e.detail, "retry budget spent: not retrying");
                return Err(e);
            }
            Counters::bump(&self.counters.retries);
            tracing::debug!(what, attempt, detail = %e.detail, ?sleep, "retrying KMS call");
            tokio::time::sleep_until(wake).await;
        }
    }
}

impl fmt::Debug for Resilient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resilient")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .field("breaker", &self.breaker.state())
            .finish()
    }
}

#[async_trait]
impl KmsBackend for Resilient {
    async fn encrypt(
        &self,
        plaintext: &SecretBytes,
        aad: &Aad,
    ) -> Result<Ciphertext, BackendError> {
        self.call("encrypt", Kind::Crypto, || {
            self.inner.encrypt(plaintext, aad)
        })
        .await
    }

    async fn decrypt(
        &self,
        ciphertext: &[u8],
        key_version: &str,
        aad: &Aad,
    ) -> Result<Decrypted, BackendError> {
        self.call("decrypt", Kind::Crypto, || {
            self.inner.decrypt(ciphertext, key_version, aad)
        })
        .await
    }

    async fn check(&self) -> Result<KeyHealth, BackendError> {
        self.call("check", Kind::Check, || self.inner.check()).await
    }

    fn check_size(&self, payload_len: usize, aad: &Aad) -> Result<(), BackendError> {
        self.inner.check_size(payload_len, aad)
    }
}
