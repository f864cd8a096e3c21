//! Compiles the contract's proto (client and server side) with a vendored `protoc`, so no
//! system install is needed, and emits the descriptor set that reflection serves.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Wipes key bytes from messages once encoded (server and client): see codec.rs.
        .codec_path("crate::codec::ZeroizingCodec")
        // Their `Debug` shows key bytes as a length: see redact.rs.
        .skip_debug([
            "kmsbroker.v1.WrapKeyRequest",
            "kmsbroker.v1.UnwrapKeyResponse",
            "kmsbroker.v1.StoreKey",
        ])
        .file_descriptor_set_path(out.join("kmsbroker_descriptor.bin"))
        .compile_protos(&["kmsbroker/v1/broker.proto"], &["."])?;
    println!("cargo:rerun-if-changed=kmsbroker/v1/broker.proto");
    Ok(())
}
