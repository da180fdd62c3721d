//! Generates the Rust code for `proto/echo.proto` with the protoc that the
//! `protoc-bin-vendored` crate ships: no system protoc needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    // Same effect as setting PROTOC, without `std::env::set_var` (unsafe in edition 2024).
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        // Clients are made from a `Channel` (`qymux_grpc::channel`), never by dialing a URL.
        .build_transport(false)
        .compile_with_config(config, &["proto/echo.proto"], &["proto"])?;
    Ok(())
}
