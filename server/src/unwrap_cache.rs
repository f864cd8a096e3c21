//! UnwrapKey's coalescing and its bounded plaintext cache.
//!
//! - **Coalescing.** Identical concurrent UnwrapKey calls (the same blob and the same
//!   context) make ONE KMS call; every waiter gets its result, a failure included (it is
//!   not retried once per waiter). If the caller that started the call goes away, a waiter
//!   takes the call over.
//! - **Cache.** A result may be kept for at most `max_age` (0 turns the cache off) and at
//!   most `max_entries` results; the oldest go first. Entries live in [`SecretBytes`]:
//!   dropped means zeroized.
//! - **Revocation.** Before a cached result is handed out, its key must still allow held
//!   material (ACTIVE, or UNREACHABLE within the grace period); [`UnwrapCache::purge`] drops
//!   every entry whose key no longer does, and runs on every key-state change.
//!
//! Entries are keyed by SHA-256 of the blob and the canonical context, so a caller gets a
//! cached plaintext only by presenting the very blob and context that unwrapped it, after
//! its own authorization.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::error::Error;
use crate::key_name::KeyName;
use crate::secret::SecretBytes;

/// A cache key.
pub type Id = [u8; 32];

/// `[cache]`: how long, and how many, unwrapped results may be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Zero turns the cache off (coalescing stays).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(300),
            max_entries: 10_000,
        }
    }
}

/// One unwrap's result, shared by every waiter and the cache.
#[derive(Debug)]
pub struct Shared {
    pub key: KeyName,
    pub plaintext: SecretBytes,
    pub key_version: String,
}

type Flight = Arc<OnceCell<Result<Arc<Shared>, Error>>>;

#[derive(Debug)]
struct Entry {
    value: Arc<Shared>,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    flights: HashMap<Id, Flight>,
    entries: HashMap<Id, Entry>,
}

/// Counters for benchmarks and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub coalesced: u64,
    pub kms_calls: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct UnwrapCache {
    max_age: Duration,
    max_entries: usize,
    inner: Mutex<Inner>,
    stats: Mutex<CacheStats>,
}

/// The cache key: the blob and the context, unambiguously (length-prefixed).
pub fn id(blob: &[u8], context: &BTreeMap<String, String>) -> Id {
    let mut h = Sha256::new();
    h.update(b"kms-broker/unwrap-cache/v1");
    h.update((blob.len() as u64).to_be_bytes());
    h.update(blob);
    for (k, v) in context {
        for s in [k, v] {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
    }
    h.finalize().into()
}

impl UnwrapCache {
    pub fn new(max_age: Duration, max_entries: usize) -> Self {
        Self {
            max_age,
            max_entries,
            inner: Mutex::new(Inner::default()),
            stats: Mutex::new(CacheStats::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain map operations: a poisoned lock still holds whole maps.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut CacheStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn stats(&self) -> CacheStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh cached result, if any. `allowed` says whether its key may hand out held
    /// material now; an entry whose key may not is dropped.
    fn cached(&self, id: &Id, allowed: impl Fn(&KeyName) -> bool) -> Option<Arc<Shared>> {
        let mut inner = self.lock();
        let entry = inner.entries.get(id)?;
        if entry.expires > Instant::now() && allowed(&entry.value.key) {
            let v = entry.value.clone();
            drop(inner);
            self.count(|s| s.hits += 1);
            return Some(v);
        }
        inner.entries.remove(id);
        None
    }

    /// The result for `id`: cached, or from a call already in flight, or from `unwrap` (run
    /// once however many callers ask at the same time).
    pub async fn get_or_unwrap<F, Fut>(
        &self,
        id: Id,
        allowed: impl Fn(&KeyName) -> bool,
        unwrap: F,
    ) -> Result<Arc<Shared>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Shared, Error>>,
    {
        if let Some(v) = self.cached(&id, &allowed) {
            return Ok(v);
        }
        let (flight, joined) = {
            let mut inner = self.lock();
            match inner.flights.get(&id) {
                Some(f) => (f.clone(), true),
                None => {
                    let f: Flight = Arc::new(OnceCell::new());
                    inner.flights.insert(id, f.clone());
                    (f, false)
                }
            }
        };
        if joined {
            self.count(|s| s.coalesced += 1);
        }
        let result = flight
            .get_or_init(|| async {
                self.count(|s| s.kms_calls += 1);
                unwrap().await.map(Arc::new)
            })
            .await
            .clone();
        let mut inner = self.lock();
        // The first waiter out retires the flight; later callers start afresh (or hit
        // the cache).
        if inner
            .flights
            .get(&id)
            .is_some_and(|f| Arc::ptr_eq(f, &flight))
        {
            inner.flights.remove(&id);
            if let Ok(v) = &result {
                self.insert(&mut inner, id, v.clone());
            }
        }
        result
    }

    fn insert(&self, inner: &mut Inner, id: Id, value: Arc<Shared>) {
        if self.max_age.is_zero() || self.max_entries == 0 {
            return;
        }
        let now = Instant::now();
        if inner.entries.len() >= self.max_entries {
            inner.entries.retain(|_, e| e.expires > now);
        }
        if inner.entries.len() >= self.max_entries {
            let oldest = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                inner.entries.remove(&k);
            }
        }
        inner.entries.insert(
            id,
            Entry {
                value,
                expires: now + self.max_age,
            },
        );
    }

    /// Drops (and so zeroizes) expired entries and those whose key may no longer hand out
    /// held material. Returns how many were dropped.
    pub fn purge(&self, allowed: impl Fn(&KeyName) -> bool) -> usize {
        let now = Instant::now();
        let mut inner = self.lock();
        let before = inner.entries.len();
        inner
            .entries
            .retain(|_, e| e.expires > now && allowed(&e.value.key));
        before - inner.entries.len()
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn shared(key: &str) -> Shared {
        Shared {
            key: KeyName::parse(key).unwrap(),
            plaintext: SecretBytes::copy_from(b"pt"),
            key_version: "1".into(),
        }
    }

    #[test]
    fn ids_separate_blob_and_context() {
        let ctx = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert_ne!(id(b"ab", &ctx("c", "d")), id(b"a", &ctx("bc", "d")));
        assert_ne!(id(b"x", &ctx("a", "bc")), id(b"x", &ctx("ab", "c")));
        assert_eq!(id(b"x", &ctx("a", "b")), id(b"x", &ctx("a", "b")));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_call_and_its_failure() {
        let cache = Arc::new(UnwrapCache::new(Duration::ZERO, 0));
        let calls = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_unwrap(
                            [1; 32],
                            |_| true,
                            || async {
                                calls.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                Err::<Shared, _>(Error::Unavailable("down".into()))
                            },
                        )
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(
                t.await.unwrap().unwrap_err().code(),
                tonic::Code::Unavailable
            );
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one KMS call, its failure shared"
        );
        assert_eq!(cache.stats().coalesced, 99);
        assert!(cache.is_empty(), "failures are not cached");
    }

    #[tokio::test(start_paused = true)]
    async fn results_expire_and_revoked_keys_are_purged() {
        let cache = UnwrapCache::new(Duration::from_secs(300), 10);
        let calls = AtomicU32::new(0);
        let unwrap = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(shared("k"))
        };
        cache
            .get_or_unwrap([1; 32], |_| true, unwrap)
            .await
            .unwrap();
        cache
            .get_or_unwrap([1; 32], |_| true, unwrap)
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the second is a hit");
        tokio::time::advance(Duration::from_secs(301)).await;
        cache
            .get_or_unwrap([1; 32], |_| true, unwrap)
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "max_age forces a new call");
        // The key is revoked: a hit is refused, and a purge drops the entry.
        cache
            .get_or_unwrap([1; 32], |_| false, unwrap)
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(cache.purge(|_| false), 1);
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let cache = UnwrapCache::new(Duration::from_secs(300), 3);
        for i in 0..10u8 {
            cache
                .get_or_unwrap([i; 32], |_| true, || async { Ok(shared("k")) })
                .await
                .unwrap();
        }
        assert_eq!(cache.len(), 3);
    }
}
