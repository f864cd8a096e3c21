//! kms-broker: the one process on a database node that talks to the customer's KMS.
//!
//! It wraps and unwraps key material under configured KMS keys, keeps each store's key on
//! disk only in wrapped form and hands the plaintext only to authorized local processes,
//! and tracks whether each KMS key is still usable (the CockroachDB CMEK model: CMEK →
//! store key → data keys).
//!
//! # Layout
//!
//! - [`config`]: the TOML config, validated once into typed values.
//! - [`server`]: `Server::bind` then `serve(shutdown)`: both listeners (Unix socket, mTLS
//!   TCP), health, reflection, the poller, a bounded drain.
//! - [`live`]: the config in force (policy, keys, stores, TLS), swapped whole on SIGHUP.
//! - [`listener`] / [`limits`]: the accept loops (connection caps, TLS handshake timeout,
//!   backoff when out of descriptors) and every resource bound of `[limits]`.
//! - [`health`]: the health service, whose watchers end on shutdown.
//! - [`service`]: the generated `KeyBroker` service: peer → policy → work → response.
//! - [`broker`]: the work itself, free of gRPC types.
//! - [`log_limit`]: rate limits and safe display for what callers put in logs.
//! - [`peer`] / [`policy`]: who is calling and what they may do.
//! - [`key_name`]: `KeyName`, a configured key's name, parsed once.
//! - [`key_uri`]: KMS key URIs parsed into an enum; redaction.
//! - [`envelope`]: the versioned wrapped-key format.
//! - [`stores`]: one slot per store: GetStoreKey (create once, unwrap after restarts,
//!   hold, coalesce, pre-warm), and the lifecycle: rotate, status, re-wrap (and moving a
//!   store to another key), filling available-mode gaps, import, drop, scheduled rotation.
//! - [`store_key`]: store keys on disk: atomic, durable, never plaintext.
//! - [`revocation`]: one home per configured URI (backend + state), keys, and the rules
//!   that change states (a denial is lifted only by a check that began after it).
//! - [`state`]: `KeyState`, the contract's key states.
//! - [`secret`]: the one type for key bytes (from `kms-broker-api`, shared with the client).
//! - [`error`]: the error enum and the one conversion into `tonic::Status`.
//! - [`backend`]: `trait KmsBackend`, retries, and one module per KMS.
//! - [`unwrap_cache`]: UnwrapKey's coalescing and bounded, revocation-purged cache.
//! - [`tls`] / [`certs`] / [`dev`]: mTLS set-up, rcgen certificates, `serve --dev`.
//! - [`fs`]: private files: checked reads, atomic writes, the state dir lock.
//! - [`audit`] / [`metrics`] / [`observe`]: the hash-chained audit trail, Prometheus
//!   metrics on `/metrics`, and the one hook every finished call passes through.
//! - [`kms_request`]: the KMS's request ids of each call, for its audit record.
//! - [`hardening`]: no core dumps, no same-user ptrace, the open-file limit raised, room to
//!   lock key memory checked (done by `main` before serving).

// The workspace denies `unsafe`; its one user is kms-broker-api's `locked` module.
#![forbid(unsafe_code)]

pub mod audit;
pub mod backend;
pub mod broker;
pub mod certs;
pub mod config;
pub mod dev;
pub mod envelope;
pub mod error;
pub mod fs;
pub mod hardening;
pub mod health;
pub mod key_name;
pub mod key_uri;
pub mod kms_request;
pub mod limits;
pub mod listener;
pub mod live;
pub mod log_limit;
pub mod metrics;
pub mod observe;
pub mod peer;
pub mod policy;
pub mod revocation;
pub mod server;
pub mod service;
pub mod state;
pub mod store_key;
pub mod stores;
pub mod tls;
pub mod unwrap_cache;

/// Generated protobuf and gRPC types of `kmsbroker.v1`, and the descriptor set for reflection.
pub use kms_broker_api::pb;
/// The one type for key bytes.
pub use kms_broker_api::secret;
