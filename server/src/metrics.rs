//! Prometheus metrics (`[metrics] listen`), served as text at `/metrics` by [`http`].
//!
//! Built on `prometheus-client`, the official Prometheus Rust client. Two kinds of series:
//! - counted as calls finish ([`Metrics::call`]): `kms_broker_calls_total{op,code}` and
//!   the `kms_broker_call_duration_seconds{op}` histogram;
//! - read from the daemon's own state at scrape time (`StateCollector`), so no hot path
//!   pays for them: each key's and URI's state, the seconds since each key's last good KMS
//!   answer, KMS calls by backend and outcome (counted where every KMS answer is recorded,
//!   [`crate::revocation::KmsUri::record`]), store keys held, and audit records lost.
//!
//! Also read at scrape time: UnwrapKey's cache (hits, coalesced waiters, KMS calls), and per
//! URI the KMS's protection (local and KMS throttling, retries and those the budget refused,
//! breaker refusals and openings) and each breaker's state. Coalesced GetStoreKey waiters
//! are not counted (that would need a counter inside `stores`' lock).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::audit::Lost;
use crate::backend::{BackendError, FailureClass};
use crate::config::ConfigError;
use crate::live::Live;
use crate::state::KeyState;

pub mod http;

/// Every state, in the order the gauges list them.
pub const STATES: [KeyState; 5] = [
    KeyState::Active,
    KeyState::Unreachable,
    KeyState::Disabled,
    KeyState::Revoked,
    KeyState::Destroyed,
];

/// The validated `[metrics]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Plain HTTP: loopback by default.
    pub listen: SocketAddr,
}

/// The TOML shape of `[metrics]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    listen: Option<String>,
}

impl MetricsConfig {
    pub fn from_raw(raw: RawMetrics, file: &Path) -> Result<MetricsConfig, ConfigError> {
        let text = raw.listen.as_deref().unwrap_or("127.0.0.1:9464");
        let listen = text.parse().map_err(|_| ConfigError {
            file: file.to_owned(),
            field: "metrics.listen".into(),
            problem: format!("{text:?} is not an IP address and port"),
            fix: "use e.g. \"127.0.0.1:9464\" (the listener is plain HTTP: keep it on loopback or a private interface)".into(),
        })?;
        Ok(MetricsConfig { listen })
    }
}

/// KMS answers of one URI, by outcome: counted in [`crate::revocation::KmsUri::record`].
#[derive(Debug, Default)]
pub struct KmsOutcomes([AtomicU64; 7]);

const OUTCOMES: [&str; 7] = [
    "ok",
    "disabled",
    "revoked",
    "destroyed",
    "unreachable",
    "invalid_ciphertext",
    "invalid_request",
];

impl KmsOutcomes {
    pub fn count(&self, result: Result<(), &BackendError>) {
        let i = match result.map_err(|e| e.class) {
            Ok(()) => 0,
            Err(FailureClass::Disabled) => 1,
            Err(FailureClass::Revoked) => 2,
            Err(FailureClass::Destroyed) => 3,
            Err(FailureClass::Unreachable) => 4,
            Err(FailureClass::InvalidCiphertext) => 5,
            Err(FailureClass::InvalidRequest) => 6,
        };
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        OUTCOMES
            .iter()
            .zip(&self.0)
            .map(|(o, n)| (*o, n.load(Ordering::Relaxed)))
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    op: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50µs to ~1.6s, doubling: a mock-KMS call to a cloud KMS round trip with retries.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The registry and the call series.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    latency: Family<OpLabels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    /// `lost`: the audit trail's loss counter, when there is a trail.
    pub fn new(live: Live, lost: Option<Arc<Lost>>) -> Metrics {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "kms_broker_calls",
            "KeyBroker calls by RPC name and gRPC code",
            calls.clone(),
        );
        let latency: Family<OpLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "kms_broker_call_duration_seconds",
            "KeyBroker call latency, as the daemon measures it",
            latency.clone(),
        );
        registry.register_collector(Box::new(StateCollector {
            live,
            lost,
            started: tokio::time::Instant::now(),
        }));
        Metrics {
            registry,
            calls,
            latency,
        }
    }

    /// Counts one finished call.
    pub fn call(&self, op: &'static str, code: tonic::Code, latency: std::time::Duration) {
        let code = crate::observe::code_name(code);
        self.calls.get_or_create(&CallLabels { op, code }).inc();
        self.latency
            .get_or_create(&OpLabels { op })
            .observe(latency.as_secs_f64());
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Series read from the broker and the stores at each scrape.
#[derive(Debug)]
struct StateCollector {
    /// The keys and stores in force at each scrape (a reload changes them).
    live: Live,
    lost: Option<Arc<Lost>>,
    /// "Since the last good answer" for a key never heard from: since start.
    started: tokio::time::Instant,
}

fn gauge<L: EncodeLabelSet, V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<V>: EncodeMetric,
{
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rt = self.live.current();
        let (broker, stores) = (&rt.broker, &rt.stores);
        let keys: Vec<_> = broker.keys().collect();
        let one_hot = |name: &str, s: KeyState| {
            STATES
                .iter()
                .map(move |st| (st.as_str(), i64::from(*st == s)))
                .map(|(st, v)| ((name.to_owned(), st), v))
                .collect::<Vec<_>>()
        };
        gauge(
            &mut enc,
            "kms_broker_key_state",
            "1 for each key's current state (the best of its URIs'), 0 for the others",
            keys.iter().flat_map(|k| {
                one_hot(k.name.as_str(), k.status().state)
                    .into_iter()
                    .map(|((key, state), v)| ([("key", key), ("state", state.to_owned())], v))
            }),
        )?;
        // The state is shown under every key that lists a URI; counters and the breaker are
        // shown once per distinct URI (under the first key that lists it), so that a sum
        // counts each KMS call once.
        let listed = || {
            keys.iter()
                .flat_map(|k| k.uris.iter().map(move |u| (k.name.as_str(), u)))
        };
        let uris = || broker.uris().map(|(k, u)| (k.as_str(), u));
        gauge(
            &mut enc,
            "kms_broker_uri_state",
            "1 for each KMS URI's current state (URI shown redacted), 0 for the others",
            listed().flat_map(|(key, u)| {
                let status = u.status();
                STATES.iter().map(move |st| {
                    let labels = [
                        ("key", key.to_owned()),
                        ("uri", status.uri.clone()),
                        ("state", st.as_str().to_owned()),
                    ];
                    (labels, i64::from(*st == status.state))
                })
            }),
        )?;
        let now = tokio::time::Instant::now();
        gauge(
            &mut enc,
            "kms_broker_key_seconds_since_last_good",
            "Seconds since any URI of the key last answered as usable (check or call); since start if never",
            keys.iter().map(|k| {
                let last = k.uris.iter().filter_map(|u| u.last_good()).max();
                let age = now.saturating_duration_since(last.unwrap_or(self.started));
                ([("key", k.name.as_str().to_owned())], age.as_secs_f64())
            }),
        )?;
        let mut family = enc.encode_descriptor(
            "kms_broker_kms_calls",
            "KMS answers (status checks and real calls, after retries) by URI, backend and outcome",
            None,
            MetricType::Counter,
        )?;
        for (key, u) in uris() {
            let uri = u.status().uri;
            let backend = uri.split(':').next().unwrap_or("").to_owned();
            for (outcome, n) in u.outcomes.snapshot() {
                let labels = [
                    ("key", key.to_owned()),
                    ("uri", uri.clone()),
                    ("backend", backend.clone()),
                    ("outcome", outcome.to_owned()),
                ];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut enc,
            "kms_broker_store_key_held",
            "1 while the store's key is held unwrapped in memory",
            stores
                .held()
                .map(|(id, held)| ([("store", id.as_str().to_owned())], i64::from(held))),
        )?;
        // UnwrapKey's coalescing cache: hits, callers that joined a call in flight, and the
        // KMS calls it made.
        let cache = broker.cache_stats();
        let mut family = enc.encode_descriptor(
            "kms_broker_unwrap_cache",
            "UnwrapKey results by how they were served: hit (cached), coalesced (joined a call in flight), kms_call",
            None,
            MetricType::Counter,
        )?;
        for (event, n) in [
            ("hit", cache.hits),
            ("coalesced", cache.coalesced),
            ("kms_call", cache.kms_calls),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("event", event)])?)?;
        }
        // The KMS's protection, per URI: throttling (ours and the KMS's), retries the budget
        // refused, and the circuit breaker (0 closed, 1 half-open, 2 open).
        let mut family = enc.encode_descriptor(
            "kms_broker_kms_protection",
            "Per URI: throttled_locally, throttled_by_kms, retries, retries_denied, breaker_rejected, breaker_opened",
            None,
            MetricType::Counter,
        )?;
        for (key, u) in uris() {
            let p = u.backend.stats();
            let uri = u.status().uri;
            for (event, n) in [
                ("throttled_locally", p.throttled_locally),
                ("throttled_by_kms", p.throttled_by_kms),
                ("retries", p.retries),
                ("retries_denied", p.retries_denied),
                ("breaker_rejected", p.breaker_rejected),
                ("breaker_opened", p.breaker_opened),
            ] {
                let labels = [
                    ("key", key.to_owned()),
                    ("uri", uri.clone()),
                    ("event", event.to_owned()),
                ];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut enc,
            "kms_broker_breaker_state",
            "Each URI's circuit breaker: 0 closed, 1 half-open (the next call probes), 2 open",
            uris().map(|(key, u)| {
                let state = match u.backend.stats().breaker {
                    crate::backend::breaker::BreakerState::Closed => 0,
                    crate::backend::breaker::BreakerState::HalfOpen => 1,
                    crate::backend::breaker::BreakerState::Open => 2,
                };
                ([("key", key.to_owned()), ("uri", u.status().uri)], state)
            }),
        )?;
        let (applied, refused) = self.live.reloads();
        let mut family = enc.encode_descriptor(
            "kms_broker_config_reloads",
            "SIGHUP reloads by outcome; a refused one leaves the previous config in force",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in [("applied", applied), ("refused", refused)] {
            ConstCounter::new(n).encode(family.encode_family(&[("outcome", outcome)])?)?;
        }
        // Key memory: an operator sees swap exposure (`unlocked`) before a core dump would.
        let mem = kms_broker_api::locked::stats();
        gauge(
            &mut enc,
            "kms_broker_key_memory_bytes",
            "Pages mapped for key bytes: locked in RAM, or unlocked (RLIMIT_MEMLOCK reached; still left out of dumps)",
            [
                ([("state", "locked")], mem.locked_bytes as i64),
                ([("state", "unlocked")], mem.unlocked_bytes as i64),
            ],
        )?;
        ConstCounter::new(mem.heap_fallbacks).encode(enc.encode_descriptor(
            "kms_broker_key_memory_heap_fallbacks",
            "Secrets put in ordinary (wiped) heap memory because no page could be mapped",
            None,
            MetricType::Counter,
        )?)?;
        let lost = self.lost.as_ref().map_or(0, |l| l.total());
        let counter = ConstCounter::new(lost);
        counter.encode(enc.encode_descriptor(
            "kms_broker_audit_records_lost",
            "Audit records that could not be written (queue full or disk error); each loss is also marked in the trail",
            None,
            MetricType::Counter,
        )?)?;
        Ok(())
    }
}
