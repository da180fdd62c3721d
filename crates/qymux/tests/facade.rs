//! The `qymux` facade: a ServerConfig to listen, a ClientConfig to dial, in every mode;
//! secure defaults.

use qymux::cert::CertificateAuthority;
use qymux::tls::{ClientTls, ServerTls};
use qymux::{ClientConfig, Error, HandshakeError, Mode, Protocol, Qymux, ServerConfig, Session};
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
        let mut server = ServerConfig::new(server_tls);
        server.mode(mode);
        let listener = Qymux::listen("127.0.0.1:0", server).await.unwrap();
        // The server name defaults to the host of the address (an IP SAN here).
        let mut config = ClientConfig::new(listener.local_addr().to_string());
        config.mode(mode).client_tls(client_tls);
        let agent = Qymux::new(config);
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
    let mut server = ServerConfig::new(server_tls);
    server.mode(Mode::Tcp);
    let listener = Qymux::listen("127.0.0.1:0", server).await.unwrap();
    // No client TLS configured: the system roots, which do not know our test CA.
    let mut config = ClientConfig::new(listener.local_addr().to_string());
    config.mode(Mode::Tcp);
    let agent = Qymux::new(config);
    match agent.dial().await {
        Err(Error::Handshake(HandshakeError::UntrustedCertificate(_))) => {}
        // A machine without any system roots refuses to build the config instead.
        Err(Error::Config(msg)) if msg.contains("trust") => {}
        other => panic!("an unknown server must be refused, got {other:?}"),
    }
}

/// A missing server certificate or server address no longer gets this far: each is an
/// argument of its config's constructor (see the `compile_fail` examples on
/// `ServerConfig` and `ClientConfig`). What is left to check at run time is a TLS
/// configuration that cannot be built.
#[tokio::test]
async fn unusable_configuration_is_a_clear_error() {
    let mut config = ClientConfig::new("127.0.0.1:1");
    config
        .client_tls(ClientTls::with_ca(vec![]))
        .connect_timeout(std::time::Duration::from_secs(1));
    let bad = Qymux::new(config);
    assert!(matches!(bad.dial().await, Err(Error::Config(_))));
}
