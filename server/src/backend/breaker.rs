//! A circuit breaker per KMS URI.
//!
//! After `failures` consecutive attempts that found the KMS unreachable (a timeout, a
//! connection error, a 5xx; not a throttling answer, not a key-state answer: both prove the
//! KMS is there), the breaker OPENS: encrypt and decrypt fail at once, without a KMS call,
//! for `cooldown`. Then it is HALF-OPEN: ONE call goes through as a probe while the others
//! keep failing fast; the probe's success closes the breaker, its failure opens it for
//! another cool-down.
//!
//! Status checks (the revocation poller, `check()`) are never refused by the breaker: they
//! are how a revocation is noticed, and they are few (one per poll interval). Their result
//! counts like any other, so a check that reaches the KMS closes the breaker at once, even
//! during a cool-down.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// What a breaker is doing now, for stats and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Failing fast until the cool-down ends.
    Open,
    /// The cool-down is over: the next call is a probe.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    consecutive: u32,
    /// Set while open: when the cool-down ends.
    open_until: Option<Instant>,
    probing: bool,
    opened: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct Breaker {
    /// Consecutive failures that open it; 0 turns the breaker off.
    failures: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

/// Leave to make one attempt. A probe that ends without a result (its caller gave up)
/// gives the probe slot back on drop.
#[derive(Debug)]
pub struct Admit<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

impl Drop for Admit<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.lock().probing = false;
        }
    }
}

impl Breaker {
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Self {
            failures,
            cooldown,
            inner: Mutex::new(Inner {
                consecutive: 0,
                open_until: None,
                probing: false,
                opened: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        let i = self.lock();
        match i.open_until {
            None => BreakerState::Closed,
            Some(t) if Instant::now() < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// How many times it has opened.
    pub fn opened(&self) -> u64 {
        self.lock().opened
    }

    /// Leave for one attempt of an encrypt or decrypt, or `Err(retry_in)` to fail fast.
    pub fn admit(&self) -> Result<Admit<'_>, Duration> {
        let mut i = self.lock();
        let Some(until) = i.open_until else {
            return Ok(Admit {
                breaker: self,
                probe: false,
            });
        };
        let now = Instant::now();
        if now < until {
            return Err(until - now);
        }
        if i.probing {
            // Someone else is probing; ask again after a cool-down.
            return Err(self.cooldown);
        }
        i.probing = true;
        Ok(Admit {
            breaker: self,
            probe: true,
        })
    }

    /// A status check's leave: never refused.
    pub fn bypass(&self) -> Admit<'_> {
        Admit {
            breaker: self,
            probe: false,
        }
    }

    /// The attempt under `admit` reached the KMS (whatever it answered).
    pub fn success(&self, admit: Admit<'_>) {
        drop(admit);
        let mut i = self.lock();
        i.consecutive = 0;
        if i.open_until.take().is_some() {
            tracing::info!("KMS answers again: circuit breaker closed");
        }
    }

    /// The attempt under `admit` found the KMS unreachable.
    pub fn failure(&self, admit: Admit<'_>) {
        let probe = admit.probe;
        drop(admit);
        if self.failures == 0 {
            return;
        }
        let mut i = self.lock();
        i.consecutive = i.consecutive.saturating_add(1);
        let now = Instant::now();
        let reopen = probe || i.open_until.is_some_and(|t| now >= t);
        if reopen || (i.open_until.is_none() && i.consecutive >= self.failures) {
            if i.open_until.is_none() {
                i.opened += 1;
                tracing::warn!(
                    failures = i.consecutive,
                    cooldown = ?self.cooldown,
                    "KMS unreachable: circuit breaker open"
                );
            }
            i.open_until = Some(now + self.cooldown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_probes_once_and_closes() {
        let b = Breaker::new(3, Duration::from_secs(5));
        for _ in 0..2 {
            b.failure(b.admit().unwrap());
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure(b.admit().unwrap());
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit().unwrap_err(), Duration::from_secs(5));

        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.admit().unwrap();
        assert!(b.admit().is_err(), "one probe at a time");
        // A failed probe opens it for another cool-down.
        b.failure(probe);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.opened(), 1, "still the same outage");

        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.admit().unwrap();
        b.success(probe);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_the_slot() {
        let b = Breaker::new(1, Duration::from_secs(1));
        b.failure(b.admit().unwrap());
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(b.admit().unwrap());
        assert!(b.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_closes_it_during_the_cooldown() {
        let b = Breaker::new(1, Duration::from_secs(60));
        b.failure(b.admit().unwrap());
        assert_eq!(b.state(), BreakerState::Open);
        b.success(b.bypass());
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn zero_failures_turns_it_off() {
        let b = Breaker::new(0, Duration::from_secs(1));
        for _ in 0..100 {
            b.failure(b.admit().unwrap());
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
