//! The crypto provider is a feature, and a build on either one makes sessions.
//!
//! With the default features this runs on *ring*. CI (`.ci/run`) also runs it on
//! aws-lc-rs without ring:
//! `cargo test -p qymux --no-default-features --features auto,aws-lc-rs,cert-gen --test providers`.

use qymux::cert::{CertError, CertificateAuthority, Identity};
use qymux::tls::rustls::NamedGroup;
use qymux::tls::{ClientTls, ServerTls};
use qymux::{ClientConfig, Mode, Protocol, Qymux, ServerConfig, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Whether the features leave aws-lc-rs as the only provider.
const AWS_LC_ONLY: bool = cfg!(all(feature = "aws-lc-rs", not(feature = "ring")));

#[test]
fn every_config_gets_the_provider_the_features_chose() {
    // aws-lc-rs's rustls provider offers the X25519MLKEM768 key exchange and ring's does
    // not: that tells from the outside which library `provider()` (the one every Qymux
    // config is built with) is. A dependency that turned ring on behind the facade's back
    // would make ring win, and this fail.
    let ml_kem = qymux::tls::provider()
        .kx_groups
        .iter()
        .any(|group| group.name() == NamedGroup::X25519MLKEM768);
    assert_eq!(
        ml_kem, AWS_LC_ONLY,
        "provider offers ML-KEM: {ml_kem}; features leave aws-lc-rs alone: {AWS_LC_ONLY}"
    );
}

#[test]
fn keys_are_checked_against_their_certificate() {
    // `Identity::from_pem` matches the key to the certificate with the chosen library.
    let ca = CertificateAuthority::new("Provider CA").unwrap();
    let (a, b) = (ca.issue_client("a").unwrap(), ca.issue_client("b").unwrap());
    Identity::from_pem(&a.cert_pem(), &a.key_pem()).unwrap();
    match Identity::from_pem(&a.cert_pem(), &b.key_pem()) {
        Err(CertError::KeyMismatch { .. }) => {}
        other => panic!("a key of another certificate must be refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_sessions_on_quic_and_tcp() {
    let ca = CertificateAuthority::new("Provider CA").unwrap();
    let roots = vec![ca.certificate().clone()];
    for (mode, protocol) in [(Mode::Quic, Protocol::Quic), (Mode::Tcp, Protocol::Tcp)] {
        let server_tls =
            ServerTls::new(ca.issue_server(&["localhost"]).unwrap()).client_ca(roots.clone());
        let mut server = ServerConfig::new(server_tls);
        server.mode(mode);
        let listener = Qymux::listen("127.0.0.1:0", server).await.unwrap();
        let client_tls =
            ClientTls::with_ca(roots.clone()).client_identity(ca.issue_client("agent").unwrap());
        let mut agent = ClientConfig::new(listener.local_addr().to_string());
        agent
            .mode(mode)
            .server_name("localhost")
            .client_tls(client_tls);
        let agent = Qymux::new(agent);
        let (session, accepted) = tokio::join!(agent.dial(), listener.accept());
        let (session, accepted) = (session.unwrap(), accepted.unwrap());
        assert_eq!(session.protocol(), protocol, "{mode}");
        let agent_names = accepted
            .peer_identity()
            .map(|id| id.common_names().to_vec());
        assert_eq!(
            agent_names,
            Some(vec!["agent".to_owned()]),
            "{mode}: the server sees the agent's verified certificate"
        );

        // A stream each way, each echoed back.
        for opener_is_server in [true, false] {
            let (opener, acceptor) = if opener_is_server {
                (&accepted, &session)
            } else {
                (&session, &accepted)
            };
            let mut out = opener.open().await.unwrap();
            out.write_all(b"ping").await.unwrap();
            out.shutdown().await.unwrap();
            let mut inc = acceptor.accept().await.unwrap();
            let mut got = Vec::new();
            inc.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"ping", "{mode}");
            inc.write_all(b"pong").await.unwrap();
            inc.shutdown().await.unwrap();
            let mut back = Vec::new();
            out.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"pong", "{mode}");
        }
        session.close().await;
    }
}
