//! Handshakes that must fail, with an error that says why (beyond the shared
//! conformance suite's untrusted CA, wrong pin and missing client certificate).

mod common;

use std::sync::Arc;

use common::{Pki, options};
use qymux_cert::{CertificateAuthority, Fingerprint, self_signed};
use qymux_tcp::{Listener, dial};
use qymux_tls::{ClientTls, ServerTls};
use qymux_transport::{Error, HandshakeError};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn listen(tls: Arc<rustls::ServerConfig>) -> (Listener, String) {
    let listener = Listener::bind("127.0.0.1:0", tls, options()).await.unwrap();
    let addr = listener.local_addr().to_string();
    (listener, addr)
}

/// Dials and expects a handshake error; the listener must hand out no session for it.
async fn refused(addr: &str, name: &str, tls: Arc<rustls::ClientConfig>) -> HandshakeError {
    match dial(addr, name, tls, &options()).await {
        Err(Error::Handshake(e)) => e,
        Ok(_) => panic!("the dial must be refused"),
        Err(other) => panic!("expected a handshake error, got {other:?}"),
    }
}

#[tokio::test]
async fn server_certificate_for_another_name() {
    let pki = Pki::new();
    let (_l, addr) = listen(pki.server_tls()).await;
    let e = refused(&addr, "not-the-server.example", pki.client_tls()).await;
    assert!(
        matches!(e, HandshakeError::UntrustedCertificate(_)),
        "{e:?}"
    );
}

#[tokio::test]
async fn pinned_fingerprint_accepts_the_right_certificate_and_refuses_another() {
    let identity = self_signed(&["localhost"]).unwrap();
    let (listener, addr) = listen(ServerTls::new(identity.clone()).build().unwrap()).await;

    let good = ClientTls::with_pinned(identity.fingerprint())
        .build()
        .unwrap();
    let opts = options();
    let (session, accepted) = tokio::join!(
        dial(&addr, "any-name-works-when-pinned", good, &opts),
        listener.accept()
    );
    let (session, accepted) = (session.unwrap(), accepted.unwrap());
    let peer = session.peer_identity().expect("the server's certificate");
    assert_eq!(Fingerprint::of(peer.end_entity()), identity.fingerprint());
    let mut s = session.open().await.unwrap();
    s.write_all(b"pinned").await.unwrap();
    let mut a = accepted.accept().await.unwrap();
    let mut buf = [0u8; 6];
    a.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pinned");

    let other = self_signed(&["localhost"]).unwrap().fingerprint();
    let wrong = ClientTls::with_pinned(other).build().unwrap();
    match refused(&addr, "localhost", wrong).await {
        HandshakeError::PinMismatch { expected, actual } => {
            assert_eq!(expected, other.to_string());
            assert_eq!(actual, identity.fingerprint().to_string());
        }
        e => panic!("expected PinMismatch, got {e:?}"),
    }
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_right_ca() {
    let pki = Pki::new();
    let server_tls = ServerTls::new(pki.server.clone())
        .client_ca(vec![pki.ca.certificate().clone()])
        .build()
        .unwrap();
    let (listener, addr) = listen(server_tls).await;

    // No client certificate.
    let e = refused(&addr, "localhost", pki.client_tls()).await;
    assert_eq!(e, HandshakeError::ClientCertificateRequired);

    // A client certificate from a CA the server does not trust.
    let stranger = CertificateAuthority::new("Stranger CA")
        .unwrap()
        .issue_client("intruder")
        .unwrap();
    let tls = ClientTls::with_ca(vec![pki.ca.certificate().clone()])
        .client_identity(stranger)
        .build()
        .unwrap();
    let e = refused(&addr, "localhost", tls).await;
    assert!(
        matches!(e, HandshakeError::ClientCertificateRefused(_)),
        "{e:?}"
    );

    // The right one: the server sees who it is.
    let tls = ClientTls::with_ca(vec![pki.ca.certificate().clone()])
        .client_identity(pki.client.clone())
        .build()
        .unwrap();
    let opts = options();
    let (session, accepted) = tokio::join!(dial(&addr, "localhost", tls, &opts), listener.accept());
    session.unwrap();
    let accepted = accepted.expect("only the good client becomes a session");
    let peer = accepted.peer_identity().expect("mTLS identity");
    assert_eq!(peer.end_entity(), pki.client.end_entity());
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
    match dial(&unused, "localhost", pki.client_tls(), &options()).await {
        Err(Error::Connect { addr, source }) => {
            assert_eq!(addr, unused);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
}
