//! Deadlines and retries for every backend, in one place.
//!
//! Each KMS call gets a per-attempt timeout and an overall deadline; only
//! [`FailureClass::Unreachable`] failures are retried, with capped full-jitter backoff
//! (sleep a uniform random time in `[0, min(cap, base * 2^attempt))`), so a fleet of nodes
//! that lost their KMS at the same moment does not come back in lockstep. A caller is
//! never held past the deadline: the last attempt is cut short to fit.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use tokio::time::Instant;

use super::{Aad, BackendError, Ciphertext, Decrypted, KeyHealth, KmsBackend};
use crate::secret::SecretBytes;

/// How hard to try a KMS before calling it unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Longest a single attempt may take.
    pub attempt_timeout: Duration,
    /// Longest a whole call (all attempts and sleeps) may take.
    pub deadline: Duration,
    /// Attempts in all, at least 1.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(15),
            max_attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: uniform in `[0, min(max_delay, base_delay * 2^retry))`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX));
        let cap = exp.min(self.max_delay);
        if cap.is_zero() {
            return cap;
        }
        rand::rng().random_range(Duration::ZERO..cap)
    }

    /// Runs `op` under this policy.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let start = Instant::now();
        let deadline = start + self.deadline;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(BackendError::unreachable(format!(
                    "{what}: no answer within {:?}",
                    self.deadline
                )));
            }
            let budget = remaining.min(self.attempt_timeout);
            let result = match tokio::time::timeout(budget, op()).await {
                Ok(r) => r,
                Err(_) => Err(BackendError::unreachable(format!(
                    "{what}: attempt timed out after {budget:?}"
                ))),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.class.is_retryable() && attempt < self.max_attempts.max(1) => {
                    let sleep = self.backoff(attempt - 1);
                    if Instant::now() + sleep >= deadline {
                        return Err(e);
                    }
                    tracing::debug!(what, attempt, detail = %e.detail, ?sleep, "retrying KMS call");
                    tokio::time::sleep(sleep).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A backend with the retry policy applied to each call.
pub struct Resilient {
    inner: Arc<dyn KmsBackend>,
    policy: RetryPolicy,
}

impl Resilient {
    pub fn new(inner: Arc<dyn KmsBackend>, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }
}

impl fmt::Debug for Resilient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resilient")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
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
        self.policy
            .run("encrypt", || self.inner.encrypt(plaintext, aad))
            .await
    }

    async fn decrypt(
        &self,
        ciphertext: &[u8],
        key_version: &str,
        aad: &Aad,
    ) -> Result<Decrypted, BackendError> {
        self.policy
            .run("decrypt", || {
                self.inner.decrypt(ciphertext, key_version, aad)
            })
            .await
    }

    async fn check(&self) -> Result<KeyHealth, BackendError> {
        self.policy.run("check", || self.inner.check()).await
    }

    fn check_size(&self, payload_len: usize, aad: &Aad) -> Result<(), BackendError> {
        self.inner.check_size(payload_len, aad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FailureClass;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: Duration::from_millis(200),
            deadline: Duration::from_secs(2),
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
        }
    }

    #[test]
    fn backoff_is_capped() {
        let p = fast();
        for retry in 0..40 {
            assert!(p.backoff(retry) < p.max_delay);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_unreachable() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = fast()
            .run("t", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(BackendError::new(FailureClass::Disabled, "off"))
            })
            .await;
        assert_eq!(r.unwrap_err().class, FailureClass::Disabled);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        calls.store(0, Ordering::SeqCst);
        let r: Result<(), _> = fast()
            .run("t", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(BackendError::unreachable("down"))
            })
            .await;
        assert_eq!(r.unwrap_err().class, FailureClass::Unreachable);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_kms_is_cut_at_the_deadline() {
        let start = Instant::now();
        let r: Result<(), _> = fast()
            .run("t", || async {
                std::future::pending::<()>().await;
                Ok(())
            })
            .await;
        assert_eq!(r.unwrap_err().class, FailureClass::Unreachable);
        assert!(start.elapsed() <= fast().deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn recovers_after_a_blip() {
        let calls = AtomicU32::new(0);
        let r = fast()
            .run("t", || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(BackendError::unreachable("blip"))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
    }
}
