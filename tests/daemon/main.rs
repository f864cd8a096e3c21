//! Black-box tests of the daemon through its real transports, with the file key and the
//! mock KMS.

#[path = "../common/mod.rs"]
mod common;
