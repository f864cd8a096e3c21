//! A retry budget per KMS URI, as in Finagle's RetryBudget and gRPC's retry throttling.
//!
//! Every call deposits `ratio` of a token; every retry withdraws a whole one; the balance is
//! capped at [`RESERVE`]. So over any stretch of time, retries are at most `ratio` × calls
//! plus [`RESERVE`]: when the KMS is down or throttling, a thousand callers make about a
//! thousand calls (and a fifth more), not `max_attempts` thousand. The reserve lets a quiet
//! daemon still retry a blip on its first calls.

use std::sync::Mutex;

/// The most a budget holds, and what it starts with.
pub const RESERVE: f64 = 10.0;

/// See the module docs.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    balance: Mutex<f64>,
}

impl RetryBudget {
    /// `ratio` in `0.0..=1.0`: the share of calls that may be retried.
    pub fn new(ratio: f64) -> Self {
        Self {
            ratio: ratio.clamp(0.0, 1.0),
            balance: Mutex::new(RESERVE),
        }
    }

    /// A new call (its first attempt) begins.
    pub fn deposit(&self) {
        let mut b = self.balance.lock().unwrap_or_else(|p| p.into_inner());
        *b = (*b + self.ratio).min(RESERVE);
    }

    /// Takes the cost of one retry; `false` (and nothing taken) when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let mut b = self.balance.lock().unwrap_or_else(|p| p.into_inner());
        if *b >= 1.0 {
            *b -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_calls_plus_the_reserve() {
        let b = RetryBudget::new(0.2);
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit();
            // Every call would like to retry three times.
            for _ in 0..3 {
                if b.withdraw() {
                    retries += 1;
                }
            }
        }
        assert!(retries <= 200 + RESERVE as usize, "{retries}");
        assert!(retries >= 200, "{retries}");
    }

    #[test]
    fn zero_means_no_retries_after_the_reserve() {
        let b = RetryBudget::new(0.0);
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, RESERVE as usize);
    }
}
