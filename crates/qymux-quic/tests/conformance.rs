//! The shared conformance suite, over QUIC.

use std::net::SocketAddr;
use std::sync::Arc;

use qymux_transport::{Options, Result};

struct Quic;

impl qymux_conformance::Backend for Quic {
    type Listener = qymux_quic::Listener;

    async fn listen(
        tls: Arc<rustls::ServerConfig>,
        options: Options,
    ) -> Result<qymux_quic::Listener> {
        qymux_quic::Listener::bind("127.0.0.1:0", tls, options).await
    }

    async fn dial(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        options: Options,
    ) -> Result<qymux_quic::Session> {
        qymux_quic::dial(&addr.to_string(), server_name, tls, &options).await
    }
}

qymux_conformance::conformance_suite!(Quic);
