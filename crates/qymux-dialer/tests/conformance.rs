//! The shared conformance suite, over Auto-mode sessions (type-erased, whichever
//! transport wins) from the dual listener.

use std::net::SocketAddr;
use std::sync::Arc;

use qymux_dialer::{Dialer, Listener};
use qymux_transport::{BoxSession, Mode, Options, Result};

struct Auto;

impl qymux_conformance::Backend for Auto {
    type Listener = Listener;

    async fn listen(tls: Arc<rustls::ServerConfig>, options: Options) -> Result<Listener> {
        Listener::bind("127.0.0.1:0", tls, options, Mode::Auto).await
    }

    async fn dial(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        options: Options,
    ) -> Result<BoxSession> {
        Dialer::new(addr.to_string(), server_name, tls)
            .options(options)
            .dial()
            .await
    }
}

qymux_conformance::conformance_suite!(Auto);
