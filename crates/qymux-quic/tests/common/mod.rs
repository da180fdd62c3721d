//! Shared set-up for the QUIC backend's tests: a CA, TLS configs, a listener.
#![allow(dead_code, unreachable_pub, missing_debug_implementations)]

use std::sync::Arc;
use std::time::Duration;

use qymux_cert::{CertificateAuthority, Identity};
use qymux_quic::{Listener, Session, dial};
use qymux_tls::{ClientTls, ServerTls};
use qymux_transport::Options;

pub struct Pki {
    pub ca: CertificateAuthority,
    pub server: Identity,
    pub client: Identity,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = CertificateAuthority::new("Qymux Test CA").unwrap();
        let server = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        let client = ca.issue_client("test-agent").unwrap();
        Pki { ca, server, client }
    }

    pub fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        ServerTls::new(self.server.clone()).build().unwrap()
    }

    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        ClientTls::with_ca(vec![self.ca.certificate().clone()])
            .build()
            .unwrap()
    }
}

pub fn options() -> Options {
    let mut o = Options::default();
    o.handshake_timeout(Duration::from_secs(5));
    o
}

/// A listener with the default PKI, and a dialed session plus the accepted one.
pub async fn pair_with(options: Options) -> (Listener, Session, Session) {
    pair_with_each(options.clone(), options).await
}

/// Like [`pair_with`], with different options for the dialer and the listener.
pub async fn pair_with_each(client: Options, server: Options) -> (Listener, Session, Session) {
    let pki = Pki::new();
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), server)
        .await
        .unwrap();
    let addr = listener.local_addr().to_string();
    let (client, server) = tokio::join!(
        dial(&addr, "localhost", pki.client_tls(), &client),
        listener.accept()
    );
    (listener, client.unwrap(), server.unwrap())
}

pub async fn pair() -> (Listener, Session, Session) {
    pair_with(options()).await
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
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
