//! The `qymux` facade: one Config, listen and dial in every mode, secure defaults.

use qymux::cert::CertificateAuthority;
use qymux::tls::{ClientTls, ServerTls};
use qymux::{Config, Error, HandshakeError, Mode, Protocol, Qymux, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn certs() -> (ServerTls, ClientTls) {
    let ca = CertificateAuthority::new("Facade CA").unwrap();
    (
        ServerTls::new(ca.issue_server(&["localhost", "127.0.0.1"]).unwrap()),
        ClientTls::with_ca(vec![ca.certificate().clone()]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_and_dial_in_every_mode() {
    for (mode, expected) in [
        (Mode::Auto, Protocol::Quic),
        (Mode::Quic, Protocol::Quic),
        (Mode::Tcp, Protocol::Tcp),
    ] {
        let (server_tls, client_tls) = certs();
        let server = Qymux::new(Config::new().mode(mode).server_tls(server_tls));
        let listener = server.listen("127.0.0.1:0").await.unwrap();
        // The server name defaults to the host of the address (an IP SAN here).
        let agent = Qymux::new(
            Config::new()
                .mode(mode)
                .server_addr(listener.local_addr().to_string())
                .client_tls(client_tls),
        );
        let (session, accepted) = tokio::join!(agent.dial(), listener.accept());
        let (session, accepted) = (session.unwrap(), accepted.unwrap());
        assert_eq!(session.protocol(), expected, "{mode}");
        assert_eq!(accepted.protocol(), expected, "{mode}");

        let mut s = accepted.open().await.unwrap();
        s.write_all(mode.to_string().as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = String::new();
        session
            .accept()
            .await
            .unwrap()
            .read_to_string(&mut got)
            .await
            .unwrap();
        assert_eq!(got, mode.to_string());
        session.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_is_verified_by_default() {
    let (server_tls, _) = certs();
    let server = Qymux::new(Config::new().mode(Mode::Tcp).server_tls(server_tls));
    let listener = server.listen("127.0.0.1:0").await.unwrap();
    // No client TLS configured: the system roots, which do not know our test CA.
    let agent = Qymux::new(
        Config::new()
            .mode(Mode::Tcp)
            .server_addr(listener.local_addr().to_string()),
    );
    match agent.dial().await {
        Err(Error::Handshake(HandshakeError::UntrustedCertificate(_))) => {}
        // A machine without any system roots refuses to build the config instead.
        Err(Error::Config(msg)) if msg.contains("trust") => {}
        other => panic!("an unknown server must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_configuration_is_a_clear_error() {
    let q = Qymux::new(Config::new());
    match q.listen("127.0.0.1:0").await {
        Err(Error::Config(msg)) => assert!(msg.contains("server_tls"), "{msg}"),
        other => panic!("{other:?}"),
    }
    match q.dial().await {
        Err(Error::Config(msg)) => assert!(msg.contains("server_addr"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let bad = Qymux::new(
        Config::new()
            .server_addr("127.0.0.1:1")
            .client_tls(ClientTls::with_ca(vec![]))
            .connect_timeout(std::time::Duration::from_secs(1)),
    );
    assert!(matches!(bad.dial().await, Err(Error::Config(_))));
}
