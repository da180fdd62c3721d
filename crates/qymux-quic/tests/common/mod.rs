//! Shared set-up for the QUIC backend's tests: a CA, TLS configs, a listener.
#![allow(dead_code, unreachable_pub, missing_debug_implementations)]

use std::net::SocketAddr;
use std::sync::Arc;

use qymux_quic::{Listener, Session};
use qymux_transport::{Options, Result};

#[allow(unused_imports)] // not every test file uses all of them
pub use qymux_conformance::{Pki, options, payload, sha256};

/// A listener with the default PKI, and a dialed session plus the accepted one.
pub async fn pair_with(options: Options) -> (Listener, Session, Session) {
    pair_with_each(options.clone(), options).await
}

/// Like [`pair_with`], with different options for the dialer and the listener.
pub async fn pair_with_each(client: Options, server: Options) -> (Listener, Session, Session) {
    let p = qymux_conformance::pair_with::<Quic>(client, server).await;
    (p.listener, p.client, p.server)
}

/// How the shared conformance suite listens and dials with this backend.
pub struct Quic;

impl qymux_conformance::Backend for Quic {
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
        qymux_quic::dial(&addr.to_string(), server_name, tls, options.clone()).await
    }
}

pub async fn pair() -> (Listener, Session, Session) {
    pair_with(options()).await
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// What a [`UdpRelay`] lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// Both directions.
    Forward,
    /// Client to server only: the server's answers are lost.
    ToServerOnly,
    /// Nothing: the path is cut.
    Nothing,
}

/// A UDP forwarder in front of `target` (one client), whose path can be cut.
pub struct UdpRelay {
    pub addr: std::net::SocketAddr,
    mode: tokio::sync::watch::Sender<Relay>,
}

impl UdpRelay {
    pub async fn start(target: std::net::SocketAddr, mode: Relay) -> UdpRelay {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(target).await.unwrap();
        let addr = front.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(mode);
        tokio::spawn(async move {
            let mut client = None;
            let mut from_client = vec![0u8; 65536];
            let mut from_server = vec![0u8; 65536];
            loop {
                tokio::select! {
                    Ok((n, peer)) = front.recv_from(&mut from_client) => {
                        client = Some(peer);
                        let mode = *rx.borrow();
                        if mode != Relay::Nothing {
                            let _ = back.send(&from_client[..n]).await;
                        }
                    }
                    Ok(n) = back.recv(&mut from_server) => {
                        let mode = *rx.borrow();
                        if let (Some(peer), Relay::Forward) = (client, mode) {
                            let _ = front.send_to(&from_server[..n], peer).await;
                        }
                    }
                    else => return,
                }
            }
        });
        UdpRelay { addr, mode: tx }
    }

    pub fn set(&self, mode: Relay) {
        self.mode.send_replace(mode);
    }
}
