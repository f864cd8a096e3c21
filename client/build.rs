//! Compiles the contract's proto (client side only) with a vendored `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["../proto/kmsbroker/v1/broker.proto"], &["../proto"])?;
    println!("cargo:rerun-if-changed=../proto/kmsbroker/v1/broker.proto");
    Ok(())
}
