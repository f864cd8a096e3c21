//! Retries, deadlines and the KMS's protection, against closures and the mock KMS, with
//! paused time.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::backend::breaker::BreakerState;
use crate::backend::FailureClass;

fn fast() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: Duration::from_millis(200),
        deadline: Duration::from_secs(2),
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        protection: Protection::default(),
    }
}

/// A backend for `Resilient::new`; the tests call `Resilient::call` with closures.
#[derive(Debug)]
struct Fake;

#[async_trait]
impl KmsBackend for Fake {
    async fn encrypt(&self, _: &SecretBytes, _: &Aad) -> Result<Ciphertext, BackendError> {
        unreachable!("not used")
    }
    async fn decrypt(&self, _: &[u8], _: &str, _: &Aad) -> Result<Decrypted, BackendError> {
        unreachable!("not used")
    }
    async fn check(&self) -> Result<KeyHealth, BackendError> {
        Ok(KeyHealth::default())
    }
}

fn resilient(policy: RetryPolicy) -> Resilient {
    Resilient::new(Arc::new(Fake), policy)
}

#[test]
fn backoff_is_capped() {
    let p = fast();
    for retry in 0..40 {
        assert!(p.backoff(retry) < p.max_delay);
    }
}

#[test]
fn throttle_backoff_honours_retry_after_and_is_longer() {
    let p = fast();
    assert_eq!(
        p.throttle_backoff(0, Some(Duration::from_secs(3))),
        Duration::from_secs(3)
    );
    for retry in 0..10 {
        let d = p.throttle_backoff(retry, None);
        assert!(d >= p.protection.throttle_backoff / 2, "{d:?}");
        assert!(d < p.protection.throttle_backoff, "{d:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn retries_only_unreachable() {
    let r = resilient(fast());
    let calls = AtomicU32::new(0);
    let out: Result<(), _> = r
        .call("t", Kind::Crypto, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(BackendError::new(FailureClass::Disabled, "off"))
        })
        .await;
    assert_eq!(out.unwrap_err().class, FailureClass::Disabled);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    calls.store(0, Ordering::SeqCst);
    let out: Result<(), _> = r
        .call("t", Kind::Crypto, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(BackendError::unreachable("down"))
        })
        .await;
    assert_eq!(out.unwrap_err().class, FailureClass::Unreachable);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(r.stats().retries, 2);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_answer_marked_not_retryable_is_tried_once() {
    // "Not implemented", "the API is disabled in the project": the same on every attempt.
    let r = resilient(fast());
    let calls = AtomicU32::new(0);
    let out: Result<(), _> = r
        .call("t", Kind::Crypto, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(BackendError::unreachable("UNIMPLEMENTED").not_retryable())
        })
        .await;
    let e = out.unwrap_err();
    assert_eq!((e.class, e.retryable), (FailureClass::Unreachable, false));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(r.stats().retries, 0);
    // An answer, however unhelpful, shows the KMS is there: the breaker stays closed.
    for _ in 0..10 {
        let _: Result<(), _> = r
            .call("t", Kind::Crypto, || async {
                Err(BackendError::unreachable("UNIMPLEMENTED").not_retryable())
            })
            .await;
    }
    assert_eq!(r.stats().breaker, BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_hung_kms_is_cut_at_the_deadline() {
    let r = resilient(fast());
    let start = Instant::now();
    let out: Result<(), _> = r
        .call("t", Kind::Crypto, || async {
            std::future::pending::<()>().await;
            Ok(())
        })
        .await;
    assert_eq!(out.unwrap_err().class, FailureClass::Unreachable);
    assert!(start.elapsed() <= fast().deadline);
}

#[tokio::test(start_paused = true)]
async fn a_long_retry_after_is_not_waited_past_the_deadline() {
    let r = resilient(fast());
    let start = Instant::now();
    let calls = AtomicU32::new(0);
    let out: Result<(), _> = r
        .call("t", Kind::Crypto, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(BackendError::throttled(
                "slow down",
                Some(Duration::from_secs(60)),
            ))
        })
        .await;
    let e = out.unwrap_err();
    assert!(e.throttled && !e.local, "the KMS's own answer: {e:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no retry that cannot finish"
    );
    assert!(start.elapsed() <= fast().deadline);
    // The whole URI holds off: the next call is refused here, without a KMS call.
    let out: Result<(), _> = r
        .call("t", Kind::Crypto, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .await;
    let e = out.unwrap_err();
    assert!(e.local && e.evidence().is_none(), "{e:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(r.stats().throttled_locally, 1);
}

#[tokio::test(start_paused = true)]
async fn recovers_after_a_blip() {
    let r = resilient(fast());
    let calls = AtomicU32::new(0);
    let out = r
        .call("t", Kind::Crypto, || async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(BackendError::unreachable("blip"))
            } else {
                Ok(7)
            }
        })
        .await;
    assert_eq!(out.unwrap(), 7);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_fails_fast_lets_checks_probe_and_closes() {
    let mut p = fast();
    p.max_attempts = 1;
    p.protection.breaker_failures = 3;
    p.protection.breaker_cooldown = Duration::from_secs(10);
    let r = resilient(p);
    let calls = AtomicU32::new(0);
    let down = || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Err::<(), _>(BackendError::unreachable("down"))
    };
    for _ in 0..3 {
        r.call("t", Kind::Crypto, down).await.unwrap_err();
    }
    assert_eq!(r.stats().breaker, BreakerState::Open);
    let e = r.call("t", Kind::Crypto, down).await.unwrap_err();
    assert!(e.local && e.detail.contains("circuit breaker"), "{e:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "open: no KMS call");
    assert_eq!(r.stats().breaker_rejected, 1);

    // A status check still goes through, and its success closes the breaker.
    r.call("t", Kind::Check, || async { Ok(()) }).await.unwrap();
    assert_eq!(r.stats().breaker, BreakerState::Closed);

    // Open it again; after the cool-down one probe goes through and closes it.
    for _ in 0..3 {
        r.call("t", Kind::Crypto, down).await.unwrap_err();
    }
    assert_eq!(r.stats().breaker, BreakerState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(r.stats().breaker, BreakerState::HalfOpen);
    r.call("t", Kind::Crypto, || async { Ok(()) })
        .await
        .unwrap();
    assert_eq!(r.stats().breaker, BreakerState::Closed);
    assert_eq!(r.stats().breaker_opened, 2);
}

#[tokio::test(start_paused = true)]
async fn a_check_gets_through_a_held_bucket_and_crypto_does_not() {
    let r = resilient(fast());
    r.bucket.hold(Instant::now() + Duration::from_secs(3600));
    let e = r
        .call("t", Kind::Crypto, || async { Ok(()) })
        .await
        .unwrap_err();
    assert!(e.local, "{e:?}");
    r.call("t", Kind::Check, || async { Ok(()) })
        .await
        .expect("the poller is never held back by our own bucket");
}

#[tokio::test(start_paused = true)]
async fn key_state_answers_do_not_open_the_breaker() {
    let mut p = fast();
    p.protection.breaker_failures = 2;
    let r = resilient(p);
    for _ in 0..10 {
        let out: Result<(), _> = r
            .call("t", Kind::Crypto, || async {
                Err(BackendError::new(FailureClass::Disabled, "off"))
            })
            .await;
        assert_eq!(out.unwrap_err().class, FailureClass::Disabled);
    }
    assert_eq!(r.stats().breaker, BreakerState::Closed);
}

#[cfg(feature = "mock-kms")]
mod with_the_mock {
    use std::collections::BTreeMap;

    use super::*;
    use crate::backend::mock::{mock, MockBackend, MockFault};

    /// 1,000 concurrent decrypts against a KMS that throttles every call: the KMS sees at
    /// most `burst` + `rate` × deadline calls from the bucket, and retries stay within the
    /// budget's share.
    #[tokio::test(start_paused = true)]
    async fn a_throttling_storm_stays_within_the_bucket_and_the_budget() {
        let kms = mock("resilient-storm");
        let backend = Arc::new(MockBackend::named("resilient-storm"));
        let aad = Aad::new("k", BTreeMap::new());
        let blob = backend
            .encrypt(&SecretBytes::random(32), &aad)
            .await
            .unwrap()
            .bytes;
        kms.set_fault(Some(MockFault::Throttled));
        kms.reset_calls();

        let policy = RetryPolicy {
            deadline: Duration::from_secs(5),
            max_attempts: 4,
            protection: Protection {
                rate_per_second: 20.0,
                burst: 10,
                retry_budget: 0.2,
                ..Protection::default()
            },
            ..RetryPolicy::default()
        };
        let r = Arc::new(Resilient::new(backend, policy));
        let start = Instant::now();
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let (r, blob, aad) = (r.clone(), blob.clone(), aad.clone());
                tokio::spawn(async move { r.decrypt(&blob, "1", &aad).await })
            })
            .collect();
        for t in tasks {
            let e = t.await.unwrap().unwrap_err();
            assert_eq!(e.class, FailureClass::Unreachable);
        }
        let s = r.stats();
        let kms_calls = kms.calls().decrypt;
        // The bucket: 10 at once, then 20/s for at most the 5 s deadline.
        assert!(kms_calls <= 10 + 20 * 5, "{kms_calls} KMS calls");
        assert_eq!(kms_calls, s.attempts);
        // The budget: retries are at most a fifth of the calls, plus the reserve.
        assert!(
            (s.retries as f64) <= 0.2 * s.calls as f64 + crate::backend::budget::RESERVE,
            "{s:?}"
        );
        assert!(s.throttled_locally > 0 && s.throttled_by_kms > 0, "{s:?}");
        assert_eq!(s.breaker, BreakerState::Closed, "throttling is an answer");
        assert!(Instant::now() - start <= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_kms_outage_opens_the_breaker_and_a_check_closes_it() {
        let kms = mock("resilient-outage");
        let backend = Arc::new(MockBackend::named("resilient-outage"));
        let policy = RetryPolicy {
            protection: Protection {
                breaker_failures: 5,
                ..Protection::default()
            },
            ..RetryPolicy::default()
        };
        let r = Resilient::new(backend, policy);
        let aad = Aad::new("k", BTreeMap::new());
        kms.set_fault(Some(MockFault::Unavailable));
        // Two calls of up to 4 attempts each: the breaker opens during the second.
        for _ in 0..2 {
            r.encrypt(&SecretBytes::random(32), &aad).await.unwrap_err();
        }
        assert_eq!(r.stats().breaker, BreakerState::Open);
        let before = kms.calls().encrypt;
        assert_eq!(before, 5, "the breaker stopped the 6th attempt");
        r.encrypt(&SecretBytes::random(32), &aad).await.unwrap_err();
        assert_eq!(kms.calls().encrypt, before);

        kms.set_fault(None);
        r.check().await.unwrap();
        assert_eq!(r.stats().breaker, BreakerState::Closed);
        r.encrypt(&SecretBytes::random(32), &aad).await.unwrap();
    }
}
