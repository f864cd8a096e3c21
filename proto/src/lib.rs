//! What the kms-broker daemon (`kms-broker`) and its client crate (`kms-broker-client`)
//! share, so that neither defines them twice:
//! - [`pb`]: the generated protobuf types, gRPC client and server of `kmsbroker.v1`, and the
//!   descriptor set that reflection serves;
//! - [`secret::SecretBytes`]: the one type for key bytes, on both sides of the socket, in
//!   locked memory left out of core dumps ([`locked`], the workspace's one `unsafe` module);
//! - [`codec`]: the gRPC codec that wipes key bytes from messages once they are encoded;
//! - [`redact`]: `Debug` for those messages, showing key bytes as their length only;
//! - [`refusal`]: the metadata that says which key (or key version) a FAILED_PRECONDITION
//!   refuses and in what state, set by the daemon and read by the client;
//! - [`Algorithm`]: a store key's cipher and length.

pub mod algorithm;
pub mod codec;
#[allow(unsafe_code)]
pub mod locked;
pub mod redact;
pub mod refusal;
pub mod secret;

pub use algorithm::{Algorithm, KEY_ID_LEN};
pub use secret::SecretBytes;

/// Generated protobuf and gRPC types of `kmsbroker.v1`.
pub mod pb {
    // Generated code; the proto's comments use `<name>`, which rustdoc takes for HTML.
    #![allow(missing_debug_implementations, clippy::all, rustdoc::invalid_html_tags)]
    tonic::include_proto!("kmsbroker.v1");

    /// For reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("kmsbroker_descriptor");
}
