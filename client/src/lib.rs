//! kms-broker-client (being written).

/// Generated protobuf and gRPC client types of `kmsbroker.v1`.
pub mod pb {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("kmsbroker.v1");
}
