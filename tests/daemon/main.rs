//! Black-box tests of the daemon through its real transports (Unix socket and mutual TLS),
//! with the file key and the scriptable mock KMS; `cli` runs the real binary.

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod availability;
mod cli;
mod crash;
mod custody;
mod flood;
mod grpcio;
mod lifecycle;
mod logs;
mod memory;
mod metrics;
mod ops;
mod regions;
mod reload;
mod revocation;
mod state_dir;
mod store_keys;
mod transport;
mod wrap;
