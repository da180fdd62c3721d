//! The shared conformance suite, over TLS + yamux.

use std::net::SocketAddr;
use std::sync::Arc;

use qymux_transport::{Options, Result};

struct Tcp;

impl qymux_conformance::Backend for Tcp {
    type Listener = qymux_tcp::Listener;

    async fn listen(
        tls: Arc<rustls::ServerConfig>,
        options: Options,
    ) -> Result<qymux_tcp::Listener> {
        qymux_tcp::Listener::bind("127.0.0.1:0", tls, options).await
    }

    async fn dial(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        options: Options,
    ) -> Result<qymux_tcp::Session> {
        qymux_tcp::dial(&addr.to_string(), server_name, tls, &options).await
    }
}

qymux_conformance::conformance_suite!(Tcp);
