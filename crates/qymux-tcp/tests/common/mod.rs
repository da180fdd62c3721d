//! Shared set-up for the TCP backend's tests (PKI and payloads come from the
//! conformance crate).
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use qymux_tcp::{Listener, Session};
use qymux_transport::{Options, Result};

#[allow(unused_imports)] // not every test file uses all of them
pub use qymux_conformance::{Pki, options, payload, sha256};

/// A listener with the default PKI, and a dialed session plus the accepted one.
pub async fn pair_with(options: Options) -> (Listener, Session, Session) {
    pair_with_each(options.clone(), options).await
}

/// Like [`pair_with`], with different options for the dialer and the listener.
pub async fn pair_with_each(client: Options, server: Options) -> (Listener, Session, Session) {
    let p = qymux_conformance::pair_with::<Tcp>(client, server).await;
    (p.listener, p.client, p.server)
}

/// How the shared conformance suite listens and dials with this backend.
pub struct Tcp;

impl qymux_conformance::Backend for Tcp {
    type Listener = Listener;

    async fn listen(tls: Arc<rustls::ServerConfig>, options: Options) -> Result<Listener> {
        Listener::bind("127.0.0.1:0", tls, options).await
    }

    async fn dial(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        options: Options,
    ) -> Result<Session> {
        qymux_tcp::dial(&addr.to_string(), server_name, tls, options.clone()).await
    }
}

/// A TCP forwarder in front of `target` whose connections can be cut with a reset.
#[derive(Debug)]
pub struct Cutter {
    pub addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Cutter {
    pub async fn start(target: std::net::SocketAddr) -> Cutter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {
                            // SO_LINGER 0: close with RST, as a crashed host's kernel would.
                            let _ = socket2::SockRef::from(&inbound).set_linger(Some(Duration::ZERO));
                            let _ = socket2::SockRef::from(&outbound).set_linger(Some(Duration::ZERO));
                        }
                    }
                });
            }
        });
        Cutter { addr, cut }
    }

    /// Resets every forwarded connection.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }
}

pub async fn pair() -> (Listener, Session, Session) {
    pair_with(options()).await
}
