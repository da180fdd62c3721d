//! Configurations that cannot work fail with an error that names the problem.

use qymux_cert::{CertError, CertificateAuthority, Identity, self_signed};
use qymux_testsupport::TempDir;
use qymux_tls::{ClientTls, ServerTls, TlsError};

#[test]
fn a_missing_file_names_the_file() {
    let err = ServerTls::from_pem_files("/nonexistent/server.pem", "/nonexistent/server.key")
        .unwrap_err();
    match &err {
        TlsError::Cert(CertError::Io { path, .. }) => {
            assert_eq!(path.to_str(), Some("/nonexistent/server.pem"))
        }
        other => panic!("expected an I/O error naming the file, got {other:?}"),
    }
    assert!(err.to_string().contains("/nonexistent/server.pem"), "{err}");

    let err = ClientTls::with_ca_file("/nonexistent/ca.pem").unwrap_err();
    assert!(
        matches!(err, TlsError::Cert(CertError::Io { .. })),
        "{err:?}"
    );
}

#[test]
fn unreadable_pem_is_reported() {
    let dir = TempDir::new("qymux-tls-errors").unwrap();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM at all\n").unwrap();
    let err = ClientTls::with_ca_file(&garbage).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::Cert(CertError::NoCertificate { .. } | CertError::Pem { .. })
        ),
        "{err:?}"
    );

    // A certificate where the key should be.
    let id = self_signed(&["localhost"]).unwrap();
    let cert = dir.join("cert.pem");
    std::fs::write(&cert, id.cert_pem()).unwrap();
    let err = ServerTls::from_pem_files(&cert, &cert).unwrap_err();
    assert!(
        matches!(err, TlsError::Cert(CertError::NoPrivateKey { .. })),
        "{err:?}"
    );
}

#[test]
fn a_key_that_does_not_match_its_certificate() {
    let dir = TempDir::new("qymux-tls-mismatch").unwrap();
    let a = self_signed(&["localhost"]).unwrap();
    let b = self_signed(&["localhost"]).unwrap();
    let (cert, key) = (dir.join("a.pem"), dir.join("b.key"));
    std::fs::write(&cert, a.cert_pem()).unwrap();
    std::fs::write(&key, b.key_pem()).unwrap();

    for err in [
        ServerTls::from_pem_files(&cert, &key).unwrap_err(),
        ClientTls::with_webpki_roots()
            .client_identity_files(&cert, &key)
            .unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                TlsError::Cert(CertError::KeyMismatch { .. }) | TlsError::KeyMismatch(_)
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("b.key"),
            "names the key file: {err}"
        );
    }
    assert!(Identity::from_pem(&a.cert_pem(), &b.key_pem()).is_err());
}

#[test]
fn empty_trust_is_refused() {
    let err = ClientTls::with_ca(vec![]).build().unwrap_err();
    assert!(matches!(err, TlsError::NoTrustAnchors(_)), "{err:?}");
    let id = self_signed(&["localhost"]).unwrap();
    let err = ServerTls::new(id).client_ca(vec![]).build().unwrap_err();
    assert!(matches!(err, TlsError::NoTrustAnchors(_)), "{err:?}");
}

#[test]
fn defaults_are_tls13_with_alpn_qymux() {
    let ca = CertificateAuthority::new("CA").unwrap();
    let server = ServerTls::new(ca.issue_server(&["localhost"]).unwrap())
        .build()
        .unwrap();
    assert_eq!(server.alpn_protocols, vec![b"qymux".to_vec()]);
    let client = ClientTls::with_ca(vec![ca.certificate().clone()])
        .build()
        .unwrap();
    assert_eq!(client.alpn_protocols, vec![b"qymux".to_vec()]);
    // TLS 1.3 by default: a server that only speaks 1.2 is refused, unless asked for.
    let server = ServerTls::new(ca.issue_server(&["localhost"]).unwrap());
    let tls12_only = {
        let mut c = (*server.clone().allow_tls12(true).build().unwrap()).clone();
        c = rustls::ServerConfig::builder_with_provider(qymux_tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                server.identity().cert_chain().to_vec(),
                server.identity().private_key(),
            )
            .map(|mut n| {
                n.alpn_protocols = c.alpn_protocols.clone();
                n
            })
            .unwrap();
        std::sync::Arc::new(c)
    };
    assert!(handshake(client.clone(), tls12_only.clone()).is_err());
    let both = ClientTls::with_ca(vec![ca.certificate().clone()])
        .allow_tls12(true)
        .build()
        .unwrap();
    assert_eq!(
        handshake(both, tls12_only).unwrap(),
        rustls::ProtocolVersion::TLSv1_2
    );
    assert_eq!(
        handshake(client, server.build().unwrap()).unwrap(),
        rustls::ProtocolVersion::TLSv1_3
    );
}

/// Runs a TLS handshake in memory and returns the negotiated version.
fn handshake(
    client: std::sync::Arc<rustls::ClientConfig>,
    server: std::sync::Arc<rustls::ServerConfig>,
) -> Result<rustls::ProtocolVersion, rustls::Error> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut c = rustls::ClientConnection::new(client, name)?;
    let mut s = rustls::ServerConnection::new(server)?;
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets()?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(c.protocol_version().unwrap());
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn skipping_verification_lives_under_dangerous() {
    let config = qymux_tls::dangerous::skip_server_verification();
    assert!(matches!(
        config.verification(),
        qymux_tls::ServerVerification::DangerousSkip(_)
    ));
    config.build().unwrap();
}
