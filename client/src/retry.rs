//! Start-up retries: capped exponential backoff with full jitter.
//!
//! A database node and its kms-broker usually start together, so the node's first call
//! may find no socket yet, or a daemon whose KMS is still coming up. Full jitter (a delay
//! drawn uniformly from `0..=min(cap, base·2^attempt)`) keeps many nodes restarting at once
//! from calling in lockstep.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::ClientError;

/// Backoff parameters. The defaults (50 ms doubling to 2 s) reach the cap after six
/// attempts, so a daemon that comes up is found within about two seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Upper bound of the first delay.
    pub base: Duration,
    /// Upper bound of every delay.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// The largest delay after the `attempt`-th failure (0-based): `base·2^attempt`, capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A delay drawn uniformly from `0..=ceiling(attempt)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    fn delay_with(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=ceiling))
    }
}

/// Which failures a call may be sent again after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Sending it twice does what sending it once does (UnwrapKey, GetStoreKey, reads):
    /// every [retryable](ClientError::is_retryable) error is retried.
    Idempotent,
    /// Each call makes something new (WrapKey, RewrapKey, RotateStoreKey): retried only
    /// when the request [never reached](ClientError::never_sent) the daemon. After a timeout
    /// or `Unavailable` the daemon may have done it, so the caller decides.
    IfNeverSent,
}

/// Runs `op` until it succeeds, fails with an error that `when` does not retry, or
/// `deadline` has passed; the last error is returned. The final attempt runs at the
/// deadline, so a daemon that appears just before it is still found.
pub(crate) async fn retry_until<T, F, Fut>(
    deadline: Duration,
    backoff: Backoff,
    what: &str,
    when: Retry,
    mut op: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let deadline = Instant::now() + deadline;
    let mut attempt: u32 = 0;
    loop {
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(err) if !err.is_retryable() => return Err(err),
            Err(err) if when == Retry::IfNeverSent && !err.never_sent() => return Err(err),
            Err(err) => err,
        };
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(what, attempts = attempt + 1, error = %err, "kms-broker: giving up");
            return Err(err);
        }
        let delay = backoff.delay(attempt).min(deadline - now);
        tracing::debug!(what, attempt, ?delay, error = %err, "kms-broker not ready; retrying");
        tokio::time::sleep(delay).await;
        attempt = attempt.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use rand::SeedableRng;
    use tonic::Code;

    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(300),
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = backoff();
        assert_eq!(b.ceiling(0), Duration::from_millis(10));
        assert_eq!(b.ceiling(1), Duration::from_millis(20));
        assert_eq!(b.ceiling(4), Duration::from_millis(160));
        assert_eq!(b.ceiling(5), Duration::from_millis(300));
        assert_eq!(b.ceiling(31), Duration::from_millis(300));
        // No overflow however long the daemon takes.
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(300));
        let huge = Backoff {
            base: Duration::MAX,
            cap: Duration::MAX,
        };
        assert_eq!(huge.ceiling(40), Duration::MAX);
        assert!(huge.delay(40) <= Duration::MAX);
    }

    #[test]
    fn delays_stay_within_bounds_and_are_jittered() {
        let b = backoff();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 0..40 {
            let draws: Vec<_> = (0..50).map(|_| b.delay_with(attempt, &mut rng)).collect();
            assert!(draws.iter().all(|d| *d <= b.ceiling(attempt)));
            assert!(
                draws.iter().any(|d| *d != draws[0]),
                "no jitter at {attempt}"
            );
        }
    }

    fn unavailable() -> ClientError {
        ClientError::Status {
            code: Code::Unavailable,
            message: "starting".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_unavailable_until_success() {
        let calls = AtomicU32::new(0);
        let got = retry_until(
            Duration::from_secs(30),
            backoff(),
            "test",
            Retry::Idempotent,
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=4 => Err(unavailable()),
                    _ => Ok(7),
                }
            },
        )
        .await;
        assert_eq!(got.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline() {
        let start = Instant::now();
        let calls = AtomicU32::new(0);
        let got: Result<(), _> = retry_until(
            Duration::from_secs(5),
            backoff(),
            "test",
            Retry::Idempotent,
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(unavailable()) }
            },
        )
        .await;
        assert_eq!(got.err().map(|e| e.code()), Some(Code::Unavailable));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // With a 300 ms cap, 5 s holds at least 5000/300 ≈ 16 attempts.
        assert!(calls.load(Ordering::SeqCst) > 16);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_never_retried() {
        for code in [
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::InvalidArgument,
            Code::Unauthenticated,
        ] {
            let start = Instant::now();
            let calls = AtomicU32::new(0);
            let got: Result<(), _> = retry_until(
                Duration::from_secs(30),
                backoff(),
                "t",
                Retry::Idempotent,
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        Err(ClientError::Status {
                            code,
                            message: String::new(),
                        })
                    }
                },
            )
            .await;
            assert_eq!(got.err().map(|e| e.code()), Some(code));
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{code:?} was retried");
            assert_eq!(start.elapsed(), Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_is_not_idempotent_is_retried_only_if_never_sent() {
        // Unavailable: the daemon may have wrapped (or rotated) already.
        let calls = AtomicU32::new(0);
        let got: Result<(), _> = retry_until(
            Duration::from_secs(30),
            backoff(),
            "t",
            Retry::IfNeverSent,
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(unavailable()) }
            },
        )
        .await;
        assert_eq!(got.err().map(|e| e.code()), Some(Code::Unavailable));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // A connection that failed: nothing was sent, so sending it is safe.
        calls.store(0, Ordering::SeqCst);
        let got = retry_until(
            Duration::from_secs(30),
            backoff(),
            "t",
            Retry::IfNeverSent,
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=2 => Err(ClientError::Connect {
                        endpoint: "unix:///x".into(),
                        message: "refused".into(),
                    }),
                    _ => Ok(7),
                }
            },
        )
        .await;
        assert_eq!(got.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }
}
