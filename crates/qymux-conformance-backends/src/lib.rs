//! The two transports as [`qymux_conformance::Backend`]s, on loopback, for the tests of
//! the crates that run on sessions (gRPC, HTTP, forwarding): each of them runs its
//! scenarios once per backend through these.
//!
//! The backends' own conformance tests define theirs next to the code they test (a
//! dependency of `qymux-tcp`'s tests on this crate would build `qymux-tcp` twice).
//!
//! ```
//! use qymux_conformance::Backend;
//! use qymux_conformance_backends::{Quic, Tcp};
//!
//! fn names<B: Backend>() -> &'static str {
//!     std::any::type_name::<B::Listener>()
//! }
//! assert!(names::<Tcp>().contains("qymux_tcp"));
//! assert!(names::<Quic>().contains("qymux_quic"));
//! ```
#![deny(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;

use qymux_conformance::Backend;
use qymux_transport::{Options, Result};

/// TLS + yamux over TCP, listening on `127.0.0.1:0`.
#[derive(Debug, Clone, Copy)]
pub struct Tcp;

impl Backend for Tcp {
    type Listener = qymux_tcp::Listener;

    async fn listen(tls: Arc<rustls::ServerConfig>, options: Options) -> Result<Self::Listener> {
        qymux_tcp::Listener::bind("127.0.0.1:0", tls, options).await
    }

    async fn dial(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        options: Options,
    ) -> Result<qymux_tcp::Session> {
        qymux_tcp::dial(&addr.to_string(), server_name, tls, options).await
    }
}

/// QUIC, listening on `127.0.0.1:0`.
#[derive(Debug, Clone, Copy)]
pub struct Quic;

impl Backend for Quic {
    type Listener = qymux_quic::Listener;

    async fn listen(tls: Arc<rustls::ServerConfig>, options: Options) -> Result<Self::Listener> {
        qymux_quic::Listener::bind("127.0.0.1:0", tls, options).await
    }

    async fn dial(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        options: Options,
    ) -> Result<qymux_quic::Session> {
        qymux_quic::dial(&addr.to_string(), server_name, tls, options).await
    }
}
