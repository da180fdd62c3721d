//! TCP-specific handshakes that must fail, with an error that says why. The refusals
//! every backend shares (untrusted CA, wrong name, pinning, mTLS) are in the conformance
//! suite.

mod common;

use std::sync::Arc;

use common::{Pki, options};
use qymux_tcp::{Listener, dial};
use qymux_transport::{Error, HandshakeError};
use rustls_pki_types::ServerName;
use tokio::io::AsyncReadExt;

async fn listen(tls: Arc<rustls::ServerConfig>) -> (Listener, String) {
    let listener = Listener::bind("127.0.0.1:0", tls, options()).await.unwrap();
    let addr = listener.local_addr().to_string();
    (listener, addr)
}

/// Dials and expects a handshake error; the listener must hand out no session for it.
async fn refused(addr: &str, name: &str, tls: Arc<rustls::ClientConfig>) -> HandshakeError {
    match dial(addr, name, tls, options()).await {
        Err(Error::Handshake(e)) => e,
        Ok(_) => panic!("the dial must be refused"),
        Err(other) => panic!("expected a handshake error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_with_another_alpn_is_refused() {
    let pki = Pki::new();
    let (_l, addr) = listen(pki.server_tls()).await;
    let mut config = (*pki.client_tls()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").unwrap();
    let err = connector.connect(name, tcp).await.unwrap_err();
    assert_eq!(
        qymux_tls::handshake_error(&err, qymux_tls::Side::Client),
        HandshakeError::AlpnMismatch
    );
}

/// A plain rustls server (not Qymux) with the given ALPN list, echoing nothing.
async fn foreign_server(pki: &Pki, alpn: Vec<Vec<u8>>) -> String {
    let mut config = (*pki.server_tls()).clone();
    config.alpn_protocols = alpn;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = tcp.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let mut sink = Vec::new();
                    let _ = tls.read_to_end(&mut sink).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_server_with_another_alpn_or_none_is_refused() {
    let pki = Pki::new();
    let addr = foreign_server(&pki, vec![b"h2".to_vec()]).await;
    assert_eq!(
        refused(&addr, "localhost", pki.client_tls()).await,
        HandshakeError::AlpnMismatch
    );
    let addr = foreign_server(&pki, vec![]).await;
    assert_eq!(
        refused(&addr, "localhost", pki.client_tls()).await,
        HandshakeError::AlpnMismatch
    );
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let pki = Pki::new();
    let unused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    match dial(&unused, "localhost", pki.client_tls(), options()).await {
        Err(Error::Connect { addr, source }) => {
            assert_eq!(addr, unused);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn dangerous_skip_connects_to_a_server_nobody_vouches_for() {
    let pki = Pki::new();
    let (listener, addr) = listen(pki.server_tls()).await;
    let tls = qymux_tls::dangerous::skip_server_verification()
        .build()
        .unwrap();
    let opts = options();
    let (session, accepted) = tokio::join!(
        dial(&addr, "whatever", tls, opts.clone()),
        listener.accept()
    );
    session.expect("no verification at all");
    accepted.unwrap();
}
