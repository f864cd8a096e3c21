//! Client for the kms-broker daemon, the process on a database node that talks to the
//! customer's KMS.
//!
//! A node links this crate to get its store key at start-up ([`Client::get_store_key`]),
//! to wrap and unwrap data keys ([`Client::wrap_key`], [`Client::unwrap_key`]) and to see
//! whether its KMS keys are still usable ([`Client::revoke_status`]).
//!
//! What the crate adds over the generated gRPC client:
//!
//! - **Transports**: `unix:///path/to/broker.sock` (the daemon identifies the caller by its
//!   uid from the kernel) or `https://host:port` with mutual TLS ([`TlsFiles`]).
//! - **Start-up retries**: the connection is made lazily and `get_store_key` retries with
//!   jittered exponential backoff while the daemon is not yet listening or answers
//!   `Unavailable`, up to [`ClientOptions::startup_deadline`]; real answers such as
//!   `NotFound` or `PermissionDenied` return at once.
//! - **Typed results**: store keys are checked against the contract (32-byte id, key length
//!   matching its [`Algorithm`]) and key bytes arrive as [`SecretBytes`]: zeroized on drop,
//!   `REDACTED` in `Debug`, never `Clone`, in locked pages left out of core dumps where
//!   `RLIMIT_MEMLOCK` allows (best effort: the client never fails for it). The type is the
//!   daemon's own (from `kms-broker-api`, as are [`pb`] and [`Algorithm`]): one secret type
//!   on both sides, and one gRPC codec that wipes key bytes from messages once encoded.
//! - **Errors keep the gRPC code** ([`ClientError::code`]) and never contain key bytes.
//!
//! # Layout
//!
//! - `client.rs`: [`Client`]: connecting, the RPCs.
//! - `lifecycle.rs`: typed results of the lifecycle RPCs ([`StoreStatus`], [`RevokeEvent`]).
//! - `options.rs`: [`ClientOptions`], [`TlsFiles`].
//! - `retry.rs`: [`Backoff`] and the start-up retry loop.
//! - `types.rs`: typed responses ([`StoreKeys`], [`KeyStatus`], ...).
//! - `error.rs`: [`ClientError`] and which failures are retryable.
//! - [`pb`]: the generated protobuf types and raw gRPC client (from `kms-broker-api`).
//!
//! # Example
//!
//! Fetch a store's key and write it as a CockroachDB store key file. Against a local
//! development daemon (`kms-broker serve --dev`, which serves the store `dev-store` on
//! `.dev/broker.sock`), run the bundled example:
//! `cargo run -p kms-broker-client --example get_store_key -- unix:.dev/broker.sock dev-store`.
//!
//! ```no_run
//! use kms_broker_client::{Client, ClientOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("unix:///run/kms-broker/broker.sock", ClientOptions::default()).await?;
//! // `create: false`: a store whose key is missing must fail, not get a fresh key.
//! let keys = client.get_store_key("store-1", false).await?;
//! println!("store key {} ({})", keys.active.key_id_hex(), keys.active.algorithm);
//! std::fs::write("/run/cockroach/store.key", keys.active.key_file_bytes().expose())?;
//!
//! let wrapped = client.wrap_key("primary", &[7u8; 32], [("table", "users")]).await?;
//! let unwrapped = client.unwrap_key(&wrapped.wrapped, [("table", "users")]).await?;
//! assert_eq!(unwrapped.plaintext.expose(), &[7u8; 32]);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod client;
mod error;
mod key_file;
mod lifecycle;
mod options;
mod ready;
mod retry;
mod target;
mod types;

pub use client::Client;
pub use error::{retryable_code, ClientError};
pub use kms_broker_api::{pb, Algorithm, SecretBytes, KEY_ID_LEN};
pub use lifecycle::{RevokeEvent, RewrapReport, StoreKeyInfo, StoreStatus};
pub use options::{ClientOptions, TlsFiles, CALL_TIMEOUT_MARGIN, DAEMON_KMS_DEADLINE};
pub use ready::KEY_BROKER_SERVICE;
pub use retry::Backoff;
pub use tonic::Code;
pub use types::{KeyState, KeyStatus, StoreKey, StoreKeys, Unwrapped, UriStatus, Wrapped};
