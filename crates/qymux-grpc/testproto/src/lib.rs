//! The protobuf services that `qymux-grpc`'s tests, doc examples and examples run over
//! Qymux sessions, generated at build time from `proto/echo.proto` by `tonic-prost-build`
//! with the `protoc` of `protoc-bin-vendored`.
//!
//! - `Echo`: unary, server-streaming, client-streaming and bidirectional echo RPCs.
//! - `Probe`: test hooks (handlers that wait to be cancelled, and `WhoAmI`).
//! - `Greeter`: one method, for short examples.

/// Generated messages, clients (`echo_client`, ...) and servers (`echo_server`, ...).
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    rust_2018_idioms
)]
pub mod pb {
    tonic::include_proto!("qymux.echo.v1");
}

pub use pb::*;
