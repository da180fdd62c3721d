//! QUIC-specific handshakes that must fail, with an error that says why, and dials that
//! must not hang. The refusals every backend shares (untrusted CA, wrong name, pinning,
//! mTLS) are in the conformance suite.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Pki, Relay, UdpRelay, options};
use qymux_quic::quinn;
use qymux_quic::{Listener, dial};
use qymux_transport::{Error, HandshakeError, TimeoutKind};

/// Upper bound for "it gave up": far above the configured bounds, so it only catches a
/// hang, never a slow machine.
const HANG: Duration = Duration::from_secs(30);

async fn listen(tls: Arc<rustls::ServerConfig>) -> (Listener, String) {
    let listener = Listener::bind("127.0.0.1:0", tls, options()).await.unwrap();
    let addr = listener.local_addr().to_string();
    (listener, addr)
}

/// Dials and expects a handshake error.
async fn refused(addr: &str, name: &str, tls: Arc<rustls::ClientConfig>) -> HandshakeError {
    match tokio::time::timeout(HANG, dial(addr, name, tls, options()))
        .await
        .expect("the dial must not hang")
    {
        Err(Error::Handshake(e)) => e,
        Ok(_) => panic!("the dial must be refused"),
        Err(other) => panic!("expected a handshake error, got {other:?}"),
    }
}

/// The listener must have handed out no session for the refused dials, and still serve
/// a good client.
async fn still_serves(listener: &Listener, addr: &str, tls: Arc<rustls::ClientConfig>) {
    let opts = options();
    let (session, accepted) = tokio::join!(
        dial(addr, "localhost", tls, opts.clone()),
        listener.accept()
    );
    let (session, accepted) = (session.unwrap(), accepted.unwrap());
    assert_eq!(
        accepted.remote_addr().port(),
        session.local_addr().port(),
        "the accepted session is the good client's, not a refused one"
    );
}

/// A raw quinn client offering another ALPN.
async fn foreign_client(
    tls: Arc<rustls::ClientConfig>,
    alpn: Vec<Vec<u8>>,
    addr: SocketAddr,
) -> quinn::ConnectionError {
    let mut config = (*tls).clone();
    config.alpn_protocols = alpn;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(config)).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            addr,
            "localhost",
        )
        .unwrap();
    let connection = match tokio::time::timeout(HANG, connecting).await.unwrap() {
        Ok(connection) => connection,
        Err(e) => return e,
    };
    // The handshake completed on the client's side: the refusal follows.
    tokio::time::timeout(HANG, connection.closed())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_client_with_another_alpn_is_refused() {
    let pki = Pki::new();
    let (listener, addr) = listen(pki.server_tls()).await;
    let err = foreign_client(
        pki.client_tls(),
        vec![b"h3".to_vec()],
        listener.local_addr(),
    )
    .await;
    match err {
        quinn::ConnectionError::ConnectionClosed(close) => assert_eq!(
            close.error_code,
            quinn::TransportErrorCode::crypto(u8::from(
                rustls::AlertDescription::NoApplicationProtocol
            )),
            "{close}"
        ),
        other => panic!("expected a CONNECTION_CLOSE with no_application_protocol: {other:?}"),
    }
    // A client that offers no ALPN at all is not a Qymux peer either.
    let err = foreign_client(pki.client_tls(), vec![], listener.local_addr()).await;
    assert!(
        !matches!(err, quinn::ConnectionError::TimedOut),
        "refused, not ignored: {err:?}"
    );
    still_serves(&listener, &addr, pki.client_tls()).await;
}

/// A raw quinn server (not Qymux) with the given ALPN list.
fn foreign_server(pki: &Pki, alpn: Vec<Vec<u8>>) -> (quinn::Endpoint, String) {
    let mut config = (*pki.server_tls()).clone();
    config.alpn_protocols = alpn;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(config)).unwrap();
    let endpoint = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap().to_string();
    let server = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                if let Ok(connection) = incoming.await {
                    connection.closed().await;
                }
            });
        }
    });
    (endpoint, addr)
}

#[tokio::test]
async fn a_server_with_another_alpn_or_none_is_refused() {
    let pki = Pki::new();
    let (_server, addr) = foreign_server(&pki, vec![b"h3".to_vec()]);
    assert_eq!(
        refused(&addr, "localhost", pki.client_tls()).await,
        HandshakeError::AlpnMismatch
    );
    let (_server, addr) = foreign_server(&pki, vec![]);
    assert_eq!(
        refused(&addr, "localhost", pki.client_tls()).await,
        HandshakeError::AlpnMismatch
    );
}

#[tokio::test]
async fn a_silent_udp_port_is_a_timeout_not_a_hang() {
    let pki = Pki::new();
    // A socket is bound, so nothing answers (not even ICMP): like a firewall that drops
    // UDP. quinn alone would wait for its idle timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let mut opts = options();
    opts.connect_timeout(Duration::from_secs(1))
        .handshake_timeout(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        HANG,
        dial(&addr, "localhost", pki.client_tls(), opts.clone()),
    )
    .await
    .expect("the dial must give up by itself");
    match result {
        Err(Error::Timeout {
            what: TimeoutKind::Connect,
            after,
        }) => assert_eq!(after, Duration::from_secs(1)),
        Err(other) => panic!("expected a connect timeout, got {other:?}"),
        Ok(_) => panic!("nothing answered"),
    }
    assert!(started.elapsed() < HANG);
}

#[tokio::test]
async fn a_handshake_that_stalls_is_a_timeout_and_the_listener_moves_on() {
    let pki = Pki::new();
    let mut server_opts = options();
    server_opts.handshake_timeout(Duration::from_secs(1));
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), server_opts)
        .await
        .unwrap();
    let addr = listener.local_addr().to_string();
    // The server's answers never reach this client: its handshake stalls on both sides.
    let relay = UdpRelay::start(listener.local_addr(), Relay::ToServerOnly).await;
    let mut opts = options();
    opts.connect_timeout(Duration::from_secs(1))
        .handshake_timeout(Duration::from_secs(1));
    let stalled = tokio::spawn({
        let (relay_addr, tls) = (relay.addr.to_string(), pki.client_tls());
        async move { dial(&relay_addr, "localhost", tls, opts.clone()).await }
    });
    // Good clients are served meanwhile and afterwards.
    still_serves(&listener, &addr, pki.client_tls()).await;
    let result = tokio::time::timeout(HANG, stalled).await.unwrap().unwrap();
    assert!(
        matches!(
            result,
            Err(Error::Timeout {
                what: TimeoutKind::Connect,
                ..
            })
        ),
        "{result:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    still_serves(&listener, &addr, pki.client_tls()).await;
}

#[tokio::test]
async fn a_closed_listener_hands_out_nothing() {
    let pki = Pki::new();
    let (listener, addr) = listen(pki.server_tls()).await;
    listener.close();
    assert!(matches!(listener.accept().await, Err(Error::Closed)));
    let mut opts = options();
    opts.connect_timeout(Duration::from_secs(1));
    let result = tokio::time::timeout(
        HANG,
        dial(&addr, "localhost", pki.client_tls(), opts.clone()),
    )
    .await
    .unwrap();
    assert!(
        result.is_err(),
        "a closed listener must not complete handshakes"
    );
}

#[tokio::test]
async fn handshakes_beyond_max_pending_are_refused_until_a_slot_frees() {
    let pki = Pki::new();
    let mut server_opts = options();
    server_opts
        .handshake_timeout(Duration::from_secs(1))
        .max_pending_handshakes(1);
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), server_opts)
        .await
        .unwrap();
    let addr = listener.local_addr().to_string();

    // A client whose handshake stalls takes the only slot.
    let relay = UdpRelay::start(listener.local_addr(), Relay::ToServerOnly).await;
    let mut opts = options();
    opts.connect_timeout(Duration::from_secs(1));
    let stalled = tokio::spawn({
        let (relay_addr, tls, opts) = (relay.addr.to_string(), pki.client_tls(), opts.clone());
        async move { dial(&relay_addr, "localhost", tls, opts.clone()).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    match dial(&addr, "localhost", pki.client_tls(), opts.clone()).await {
        Err(Error::Connect { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("expected a refused connection, got {other:?}"),
    }
    assert!(stalled.await.unwrap().is_err());

    // Once the stalled handshake timed out, good clients get through again.
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let (session, accepted) = tokio::join!(
            dial(&addr, "localhost", pki.client_tls(), opts.clone()),
            tokio::time::timeout(Duration::from_secs(2), listener.accept())
        );
        match (session, accepted) {
            (Ok(_), Ok(Ok(_))) => break,
            (result, _) if tokio::time::Instant::now() < deadline => {
                eprintln!("not yet: {:?}", result.err());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (result, _) => panic!("the listener must recover: {:?}", result.err()),
        }
    }
}

#[tokio::test]
async fn garbage_datagrams_do_not_disturb_the_listener() {
    let pki = Pki::new();
    let (listener, addr) = listen(pki.server_tls()).await;
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..500u64 {
        let len = [1, 20, 1200, 1350, 1500][i as usize % 5];
        let mut datagram = common::payload(i, len);
        if i % 2 == 0 {
            // Looks like a QUIC v1 long-header Initial, with nonsense after it.
            datagram[0] = 0xc0;
            if len > 5 {
                datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
        }
        junk.send_to(&datagram, listener.local_addr())
            .await
            .unwrap();
    }
    still_serves(&listener, &addr, pki.client_tls()).await;
}
