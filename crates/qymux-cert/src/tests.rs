//! Tests of the whole crate: what the certificates contain, PEM and file round trips,
//! and real verification by rustls/webpki.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::*;

// ---------------------------------------------------------------- helpers

/// A fresh, empty directory under the system temp dir; removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "qymux-cert-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn parse<'a>(cert: &'a CertificateDer<'_>) -> X509Certificate<'a> {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .unwrap()
        .1
}

#[derive(Debug, PartialEq)]
enum San {
    Dns(String),
    Ip(IpAddr),
}

fn sans(cert: &X509Certificate<'_>) -> Vec<San> {
    let Some(ext) = cert.subject_alternative_name().unwrap() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => San::Dns((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => San::Ip(match bytes.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap()),
                16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap()),
                n => panic!("IP SAN of {n} bytes"),
            }),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

fn common_name(cert: &X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()
        .map(|cn| cn.as_str().unwrap().to_owned())
}

fn is_ca(cert: &X509Certificate<'_>) -> bool {
    cert.basic_constraints()
        .unwrap()
        .is_some_and(|bc| bc.value.ca)
}

fn ekus(cert: &X509Certificate<'_>) -> (bool, bool) {
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    (eku.server_auth, eku.client_auth)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(cert: &CertificateDer<'static>) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    Arc::new(roots)
}

fn verify_server(
    root: &CertificateDer<'static>,
    server: &Identity,
    name: &str,
) -> Result<(), rustls::Error> {
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(root), provider())
            .build()
            .unwrap();
    verifier
        .verify_server_cert(
            server.end_entity(),
            &server.cert_chain()[1..],
            &ServerName::try_from(name).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

fn verify_client(root: &CertificateDer<'static>, client: &Identity) -> Result<(), rustls::Error> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(root), provider())
            .build()
            .unwrap();
    verifier
        .verify_client_cert(
            client.end_entity(),
            &client.cert_chain()[1..],
            UnixTime::now(),
        )
        .map(|_| ())
}

/// Runs a TLS 1.3 handshake with mutual authentication in memory and returns the
/// client certificate the server saw.
fn handshake(
    ca: &CertificateAuthority,
    server: &Identity,
    client: &Identity,
    name: &str,
) -> Result<CertificateDer<'static>, rustls::Error> {
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(ca.certificate()),
        provider(),
    )
    .build()
    .unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(server.cert_chain().to_vec(), server.private_key())?;
    let client_config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca.certificate()))
        .with_client_auth_cert(client.cert_chain().to_vec(), client.private_key())?;
    let mut tls_client = rustls::Connection::from(rustls::ClientConnection::new(
        Arc::new(client_config),
        ServerName::try_from(name).unwrap().to_owned(),
    )?);
    let mut tls_server =
        rustls::Connection::from(rustls::ServerConnection::new(Arc::new(server_config))?);

    fn pump(
        from: &mut rustls::Connection,
        to: &mut rustls::Connection,
    ) -> Result<(), rustls::Error> {
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).unwrap();
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            to.process_new_packets()?;
        }
        Ok(())
    }

    for _ in 0..10 {
        if !tls_client.is_handshaking() && !tls_server.is_handshaking() {
            break;
        }
        pump(&mut tls_client, &mut tls_server)?;
        pump(&mut tls_server, &mut tls_client)?;
    }
    assert!(!tls_client.is_handshaking() && !tls_server.is_handshaking());
    Ok(tls_server.peer_certificates().unwrap()[0].clone())
}

// ---------------------------------------------------------------- contents

#[test]
fn ca_certificate_is_a_ca_that_signs_certificates() {
    let ca = CertificateAuthority::new("Test CA").unwrap();
    let cert = parse(ca.certificate());
    assert!(is_ca(&cert));
    assert_eq!(
        cert.basic_constraints()
            .unwrap()
            .unwrap()
            .value
            .path_len_constraint,
        Some(0)
    );
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign() && usage.crl_sign());
    assert_eq!(common_name(&cert).as_deref(), Some("Test CA"));
    assert_eq!(cert.subject(), cert.issuer());
    let years = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
        / (365 * 86400);
    assert!((9..=11).contains(&years), "{years} years");
    assert_eq!(ca.fingerprint(), Fingerprint::of(ca.certificate()));
}

#[test]
fn server_certificate_has_the_names_as_sans() {
    let ca = CertificateAuthority::new("Test CA").unwrap();
    let server = ca
        .issue_server(&["localhost", "127.0.0.1", "::1", "*.tunnel.example"])
        .unwrap();
    assert_eq!(server.cert_chain().len(), 1);
    let cert = parse(server.end_entity());
    assert_eq!(
        sans(&cert),
        vec![
            San::Dns("localhost".into()),
            San::Ip("127.0.0.1".parse().unwrap()),
            San::Ip("::1".parse().unwrap()),
            San::Dns("*.tunnel.example".into()),
        ]
    );
    assert_eq!(common_name(&cert).as_deref(), Some("localhost"));
    assert!(!is_ca(&cert));
    assert_eq!(ekus(&cert), (true, false));
    assert_eq!(cert.issuer(), parse(ca.certificate()).subject());
    assert!(cert.validity().not_after <= parse(ca.certificate()).validity().not_after);
    assert!(cert.validity().is_valid());

    // Survives PEM.
    let again = Identity::from_pem(&server.cert_pem(), &server.key_pem()).unwrap();
    assert_eq!(again.cert_chain(), server.cert_chain());
    assert_eq!(
        again.private_key().secret_der(),
        server.private_key().secret_der()
    );
    assert_eq!(again.fingerprint(), server.fingerprint());
}

#[test]
fn client_certificate_is_for_client_auth() {
    let ca = CertificateAuthority::new("Test CA").unwrap();
    let agent = ca.issue_client("qymux-agent").unwrap();
    let cert = parse(agent.end_entity());
    assert_eq!(common_name(&cert).as_deref(), Some("qymux-agent"));
    assert_eq!(sans(&cert), vec![San::Dns("qymux-agent".into())]);
    assert_eq!(ekus(&cert), (false, true));
    assert!(!is_ca(&cert));

    // A common name that is no DNS name gets no SAN.
    for name in ["Agent #7 (Berlin)", "10.1.2.3", "ünïcode"] {
        let agent = ca.issue_client(name).unwrap();
        let cert = parse(agent.end_entity());
        assert_eq!(common_name(&cert).as_deref(), Some(name));
        assert_eq!(sans(&cert), vec![], "{name}");
    }
}

#[test]
fn self_signed_is_an_end_entity_for_both_sides() {
    let dev = self_signed(&["localhost", "127.0.0.1", "::1"]).unwrap();
    let cert = parse(dev.end_entity());
    assert!(!is_ca(&cert));
    assert_eq!(cert.subject(), cert.issuer());
    assert_eq!(ekus(&cert), (true, true));
    assert_eq!(sans(&cert).len(), 3);
    assert_eq!(
        dev.fingerprint()
            .to_string()
            .parse::<Fingerprint>()
            .unwrap(),
        dev.fingerprint()
    );
}

#[test]
fn bad_names_are_refused() {
    let ca = CertificateAuthority::new("Test CA").unwrap();
    let too_long_cn = "x".repeat(65);
    for names in [
        &[][..],
        &[""],
        &["localhost", ""],
        &["two words"],
        &["-leading-hyphen.example"],
        &["trailing-dot.example."],
        &["a..b"],
        &["*"],
        &["foo.*.example"],
        &["ünïcode.example"],
        &["[::1]"],
        &["1.2.3"],
    ] {
        for result in [ca.issue_server(names), self_signed(names)] {
            assert!(
                matches!(result, Err(CertError::InvalidName { .. })),
                "{names:?}: {result:?}"
            );
        }
    }
    for name in ["", "   ", "line\nbreak", too_long_cn.as_str()] {
        assert!(
            matches!(ca.issue_client(name), Err(CertError::InvalidName { .. })),
            "{name:?}"
        );
        assert!(
            matches!(
                CertificateAuthority::new(name),
                Err(CertError::InvalidName { .. })
            ),
            "{name:?}"
        );
    }
}

#[test]
fn a_long_server_name_is_a_san_without_a_common_name() {
    let long = format!("{}.{}.example", "a".repeat(60), "b".repeat(60));
    let ca = CertificateAuthority::new("Test CA").unwrap();
    let server = ca.issue_server(&[&long, "localhost"]).unwrap();
    let cert = parse(server.end_entity());
    assert_eq!(common_name(&cert), None);
    assert_eq!(sans(&cert)[0], San::Dns(long.clone()));
    verify_server(ca.certificate(), &server, &long).unwrap();
}

#[test]
fn duplicate_names_give_one_san() {
    let dev = self_signed(&["localhost", "localhost", "::1", "0:0:0:0:0:0:0:1"]).unwrap();
    assert_eq!(sans(&parse(dev.end_entity())).len(), 2);
}

#[test]
fn debug_never_shows_the_key() {
    let ca = CertificateAuthority::new("Test CA").unwrap();
    let server = ca.issue_server(&["localhost"]).unwrap();
    let secret_lines = |pem: &str| {
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let debug = format!("{ca:?} {server:?} {:#?}", server.clone());
    for line in secret_lines(&ca.key_pem())
        .iter()
        .chain(&secret_lines(&server.key_pem()))
    {
        assert!(!debug.contains(line.as_str()));
    }
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(!debug.contains(&hex(&server.private_key().secret_der()[36..52])));
    assert!(debug.contains(&server.fingerprint().to_string()));
    assert!(debug.contains("redacted"));
}

#[test]
fn types_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<CertificateAuthority>();
    assert_send_sync::<Identity>();
    assert_send_sync::<CertError>();
    assert_send_sync::<Fingerprint>();
}

// ---------------------------------------------------------------- PEM and files

#[test]
fn identity_pem_errors() {
    let ca = CertificateAuthority::new("Test CA").unwrap();
    let server = ca.issue_server(&["localhost"]).unwrap();
    let (cert, key) = (server.cert_pem(), server.key_pem());

    assert!(matches!(
        Identity::from_pem("", &key),
        Err(CertError::NoCertificate { .. })
    ));
    assert!(matches!(
        Identity::from_pem("garbage", &key),
        Err(CertError::NoCertificate { .. })
    ));
    assert!(matches!(
        Identity::from_pem(&cert, ""),
        Err(CertError::NoPrivateKey { .. })
    ));
    // A certificate where the key should be.
    assert!(matches!(
        Identity::from_pem(&cert, &cert),
        Err(CertError::NoPrivateKey { .. })
    ));
    // A key where the certificate should be.
    assert!(matches!(
        Identity::from_pem(&key, &key),
        Err(CertError::NoCertificate { .. })
    ));
    // Truncated PEM.
    assert!(matches!(
        Identity::from_pem(&cert[..cert.len() / 2], &key),
        Err(CertError::Pem { .. })
    ));
    // Well-formed PEM around something that is not a certificate.
    let not_x509 = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        Identity::from_pem(not_x509, &key),
        Err(CertError::InvalidCertificate { .. })
    ));
    // Somebody else's key.
    let other = ca.issue_server(&["localhost"]).unwrap();
    match Identity::from_pem(&cert, &other.key_pem()) {
        Err(CertError::KeyMismatch { source_name }) => assert_eq!(source_name, "private key PEM"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn identity_chain_keeps_every_certificate_in_order() {
    let ca = CertificateAuthority::new("Test CA").unwrap();
    let server = ca.issue_server(&["localhost"]).unwrap();
    let chain_pem = format!("{}{}", server.cert_pem(), ca.cert_pem());
    let identity = Identity::from_pem(&chain_pem, &server.key_pem()).unwrap();
    assert_eq!(identity.cert_chain().len(), 2);
    assert_eq!(identity.end_entity(), server.end_entity());
    assert_eq!(&identity.cert_chain()[1], ca.certificate());
    assert_eq!(identity.cert_pem(), chain_pem);
    assert_eq!(identity.fingerprint(), server.fingerprint());
}

#[test]
fn write_refuses_to_overwrite_without_the_flag() {
    let dir = TempDir::new();
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let ca = CertificateAuthority::new("Test CA").unwrap();
    let first = ca.issue_server(&["localhost"]).unwrap();
    let second = ca.issue_server(&["localhost"]).unwrap();

    first.write_pem_files(&cert, &key, false).unwrap();
    match second.write_pem_files(&cert, &key, false) {
        Err(CertError::AlreadyExists { path }) => assert_eq!(path, cert),
        other => panic!("{other:?}"),
    }
    let loaded = Identity::load_pem_files(&cert, &key).unwrap();
    assert_eq!(loaded.fingerprint(), first.fingerprint());

    second.write_pem_files(&cert, &key, true).unwrap();
    let loaded = Identity::load_pem_files(&cert, &key).unwrap();
    assert_eq!(loaded.fingerprint(), second.fingerprint());
    assert_eq!(load_certs_pem(&cert).unwrap(), second.cert_chain());
    assert_eq!(
        load_key_pem(&key).unwrap().secret_der(),
        second.private_key().secret_der()
    );
}

#[test]
fn write_writes_nothing_if_only_the_key_exists() {
    let dir = TempDir::new();
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    std::fs::write(&key, "keep me").unwrap();
    let ca = CertificateAuthority::new("Test CA").unwrap();
    match ca.write_pem_files(&cert, &key, false) {
        Err(CertError::AlreadyExists { path }) => assert_eq!(path, key),
        other => panic!("{other:?}"),
    }
    assert!(!cert.exists());
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "keep me");
}

#[test]
fn write_into_a_missing_directory_is_an_io_error() {
    let dir = TempDir::new();
    let dev = self_signed(&["localhost"]).unwrap();
    let result = dev.write_pem_files(
        dir.join("no/such/dir/a.pem"),
        dir.join("no/such/dir/a.key"),
        false,
    );
    assert!(matches!(result, Err(CertError::Io { .. })), "{result:?}");
}

#[cfg(unix)]
#[test]
fn key_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;

    let dir = TempDir::new();
    let (cert, key) = (dir.join("c.pem"), dir.join("c.key"));
    let dev = self_signed(&["localhost"]).unwrap();
    dev.write_pem_files(&cert, &key, false).unwrap();
    assert_eq!(mode(&key), 0o600);

    // Overwriting a key file that was readable by all tightens it.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    dev.write_pem_files(&cert, &key, true).unwrap();
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn loading_missing_files_names_them() {
    let dir = TempDir::new();
    match Identity::load_pem_files(dir.join("absent.pem"), dir.join("absent.key")) {
        Err(error @ CertError::Io { .. }) => {
            assert!(error.to_string().contains("absent.pem"), "{error}")
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- reloading a CA

#[test]
fn ca_survives_pem_and_issues_again() {
    let dir = TempDir::new();
    let ca = CertificateAuthority::new("Reloaded CA").unwrap();
    ca.write_pem_files(dir.join("ca.pem"), dir.join("ca.key"), false)
        .unwrap();

    let cert_pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let key_pem = std::fs::read_to_string(dir.join("ca.key")).unwrap();
    let reloaded = CertificateAuthority::from_pem(&cert_pem, &key_pem).unwrap();
    assert_eq!(reloaded.certificate(), ca.certificate());
    assert_eq!(reloaded.fingerprint(), ca.fingerprint());
    assert_eq!(reloaded.cert_pem(), ca.cert_pem());
    assert_eq!(reloaded.key_pem(), ca.key_pem());

    // Certificates issued after reloading chain to the original CA certificate.
    let server = reloaded.issue_server(&["localhost", "127.0.0.1"]).unwrap();
    let client = reloaded.issue_client("qymux-agent").unwrap();
    assert_eq!(
        parse(server.end_entity()).issuer(),
        parse(ca.certificate()).subject()
    );
    verify_server(ca.certificate(), &server, "localhost").unwrap();
    verify_server(ca.certificate(), &server, "127.0.0.1").unwrap();
    verify_client(ca.certificate(), &client).unwrap();

    // A clone signs with the same key.
    let clone = reloaded.clone();
    verify_client(ca.certificate(), &clone.issue_client("clone").unwrap()).unwrap();

    // And reloading the reloaded one works too.
    let twice = CertificateAuthority::from_pem(&reloaded.cert_pem(), &reloaded.key_pem()).unwrap();
    verify_client(ca.certificate(), &twice.issue_client("second").unwrap()).unwrap();
}

#[test]
fn ca_from_pem_refuses_what_cannot_sign() {
    let ca = CertificateAuthority::new("Test CA").unwrap();
    let other = CertificateAuthority::new("Other CA").unwrap();
    let server = ca.issue_server(&["localhost"]).unwrap();
    let dev = self_signed(&["localhost"]).unwrap();

    // End-entity certificates are not CAs.
    for identity in [&server, &dev] {
        let result = CertificateAuthority::from_pem(&identity.cert_pem(), &identity.key_pem());
        assert!(
            matches!(result, Err(CertError::InvalidCertificate { .. })),
            "{result:?}"
        );
    }
    // The wrong key.
    assert!(matches!(
        CertificateAuthority::from_pem(&ca.cert_pem(), &other.key_pem()),
        Err(CertError::KeyMismatch { .. })
    ));
    // A key format that cannot sign here (garbage SEC1 body).
    let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAAECAwQF\n-----END EC PRIVATE KEY-----\n";
    assert!(matches!(
        CertificateAuthority::from_pem(&ca.cert_pem(), sec1),
        Err(CertError::UnsupportedKey { .. })
    ));
    // PEM problems.
    assert!(matches!(
        CertificateAuthority::from_pem("", &ca.key_pem()),
        Err(CertError::NoCertificate { .. })
    ));
    assert!(matches!(
        CertificateAuthority::from_pem(&ca.cert_pem(), ""),
        Err(CertError::NoPrivateKey { .. })
    ));
    assert!(matches!(
        CertificateAuthority::from_pem(&ca.cert_pem(), &ca.cert_pem()),
        Err(CertError::NoPrivateKey { .. })
    ));
}

// ---------------------------------------------------------------- rustls / webpki

#[test]
fn webpki_verifies_server_certificates_by_name() {
    let ca = CertificateAuthority::new("Test CA").unwrap();
    let server = ca.issue_server(&["localhost", "127.0.0.1", "::1"]).unwrap();
    for name in ["localhost", "127.0.0.1", "::1"] {
        verify_server(ca.certificate(), &server, name).unwrap();
    }
    let wrong_name = verify_server(ca.certificate(), &server, "example.com").unwrap_err();
    assert!(
        matches!(
            wrong_name,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
                    | rustls::CertificateError::NotValidForName
            )
        ),
        "{wrong_name:?}"
    );

    let stranger = CertificateAuthority::new("Other CA").unwrap();
    let unknown = verify_server(stranger.certificate(), &server, "localhost").unwrap_err();
    assert!(
        matches!(
            unknown,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{unknown:?}"
    );

    // A server certificate is no client certificate, and the reverse.
    assert!(verify_client(ca.certificate(), &server).is_err());
    let client = ca.issue_client("localhost").unwrap();
    assert!(verify_server(ca.certificate(), &client, "localhost").is_err());
    verify_client(ca.certificate(), &client).unwrap();
}

#[test]
fn webpki_refuses_a_ca_certificate_as_end_entity() {
    // The pitfall that `self_signed` avoids: a CA:TRUE certificate presented by a server.
    let ca = CertificateAuthority::new("localhost").unwrap();
    let as_server = Identity::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
    let error = verify_server(ca.certificate(), &as_server, "localhost").unwrap_err();
    assert!(
        format!("{error:?}").contains("CaUsedAsEndEntity"),
        "{error:?}"
    );
}

#[test]
fn self_signed_is_also_accepted_as_its_own_root() {
    // webpki takes a non-CA self-signed certificate as its own trust anchor (a
    // CA:TRUE one would fail with CaUsedAsEndEntity, see above).
    let dev = self_signed(&["localhost", "127.0.0.1"]).unwrap();
    verify_server(dev.end_entity(), &dev, "localhost").unwrap();
    verify_server(dev.end_entity(), &dev, "127.0.0.1").unwrap();
    assert!(verify_server(dev.end_entity(), &dev, "example.com").is_err());
    verify_client(dev.end_entity(), &dev).unwrap();
}

#[test]
fn self_signed_pins_by_fingerprint() {
    let dev = self_signed(&["localhost", "127.0.0.1"]).unwrap();
    let pin: Fingerprint = dev.fingerprint().to_string().parse().unwrap();
    assert!(pin.matches(dev.end_entity()));
    let other = self_signed(&["localhost"]).unwrap();
    assert!(!pin.matches(other.end_entity()));
}

#[test]
fn mutual_tls_handshake_succeeds() {
    let ca = CertificateAuthority::new("Test CA").unwrap();
    let server = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
    let client = ca.issue_client("qymux-agent").unwrap();
    let seen = handshake(&ca, &server, &client, "localhost").unwrap();
    assert_eq!(&seen, client.end_entity());
    handshake(&ca, &server, &client, "127.0.0.1").unwrap();
    assert!(handshake(&ca, &server, &client, "other.example").is_err());

    // A client certificate from another CA is refused.
    let stranger = CertificateAuthority::new("Other CA")
        .unwrap()
        .issue_client("qymux-agent")
        .unwrap();
    assert!(handshake(&ca, &server, &stranger, "localhost").is_err());
}

#[test]
fn damaged_input_is_an_error_never_a_panic() {
    let ca = CertificateAuthority::new("Test CA").unwrap();
    let (cert, key) = (ca.cert_pem(), ca.key_pem());
    // Every truncation, and every single-character change in the base64 bodies.
    let mut inputs = Vec::new();
    for text in [&cert, &key] {
        for end in 0..text.len() {
            inputs.push((text == &cert, text[..end].to_owned()));
        }
        for (index, c) in text.char_indices() {
            if c.is_ascii_alphanumeric() {
                let mut damaged = text.clone();
                let replacement = if c == 'A' { "B" } else { "A" };
                damaged.replace_range(index..index + 1, replacement);
                inputs.push((text == &cert, damaged));
            }
        }
    }
    for (is_cert, input) in inputs {
        let (cert_pem, key_pem) = if is_cert {
            (input.as_str(), key.as_str())
        } else {
            (cert.as_str(), input.as_str())
        };
        let _ = CertificateAuthority::from_pem(cert_pem, key_pem);
        let _ = Identity::from_pem(cert_pem, key_pem);
        let _ = parse_certs_pem(&input, "x");
        let _ = parse_key_pem(&input, "x");
        let _ = input.parse::<Fingerprint>();
    }
}

#[test]
fn leaf_validity_can_be_short() {
    let ca = CertificateAuthority::new("Short CA")
        .unwrap()
        .with_leaf_validity_days(2)
        .unwrap();
    let agent = ca.issue_client("agent").unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(agent.end_entity().as_ref()).unwrap();
    let validity = parsed.validity();
    let span = validity.not_after.timestamp() - validity.not_before.timestamp();
    // Two days, plus the hour it is backdated.
    assert_eq!(span, 2 * 86_400 + 3_600);
    for days in [0, MAX_VALIDITY_DAYS + 1] {
        assert!(matches!(
            CertificateAuthority::new("CA")
                .unwrap()
                .with_leaf_validity_days(days),
            Err(CertError::InvalidValidity(_))
        ));
    }
}

#[test]
fn revocation_lists_name_the_revoked_serials() {
    let ca = CertificateAuthority::new("CRL CA").unwrap();
    let revoked = ca.issue_client("revoked").unwrap();
    let kept = ca.issue_client("kept").unwrap();
    let crl = ca.revocation_list(&[revoked.end_entity()], 7).unwrap();
    let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref()).unwrap();
    let (_, revoked_cert) =
        x509_parser::parse_x509_certificate(revoked.end_entity().as_ref()).unwrap();
    let (_, kept_cert) = x509_parser::parse_x509_certificate(kept.end_entity().as_ref()).unwrap();
    let serials: Vec<_> = parsed
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect();
    assert_eq!(serials, [revoked_cert.raw_serial().to_vec()]);
    assert!(!serials.contains(&kept_cert.raw_serial().to_vec()));
    assert_eq!(parsed.issuer(), revoked_cert.issuer());
    assert!(crl_to_pem(&crl).starts_with("-----BEGIN X509 CRL-----\n"));

    let stranger = CertificateAuthority::new("Other")
        .unwrap()
        .issue_client("x")
        .unwrap();
    assert!(matches!(
        ca.revocation_list(&[stranger.end_entity()], 7),
        Err(CertError::InvalidCertificate { .. })
    ));
    assert!(matches!(
        ca.revocation_list(&[], 0),
        Err(CertError::InvalidValidity(_))
    ));
    // An empty list is a valid CRL that revokes nothing.
    let empty = ca.revocation_list(&[], 1).unwrap();
    let (_, parsed) = x509_parser::parse_x509_crl(empty.as_ref()).unwrap();
    assert_eq!(parsed.iter_revoked_certificates().count(), 0);
}

#[cfg(unix)]
#[test]
fn writing_refuses_a_symlink_at_the_key_path_even_when_overwriting() {
    let dir = TempDir::new();
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let elsewhere = dir.join("elsewhere");
    std::fs::write(&elsewhere, "not a key").unwrap();
    std::os::unix::fs::symlink(&elsewhere, &key).unwrap();
    let dev = self_signed(&["localhost"]).unwrap();
    for overwrite in [false, true] {
        match dev.write_pem_files(&cert, &key, overwrite) {
            Err(CertError::Symlink { path }) => assert_eq!(path, key),
            other => panic!("overwrite {overwrite}: {other:?}"),
        }
        // Nothing went through the link, nothing else was written, no temporary file left.
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "not a key");
        assert!(
            std::fs::symlink_metadata(&key)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(!cert.exists());
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 2);
    }

    // A dangling link is refused too.
    std::fs::remove_file(&elsewhere).unwrap();
    let result = dev.write_pem_files(&cert, &key, true);
    assert!(
        matches!(result, Err(CertError::Symlink { .. })),
        "{result:?}"
    );
    assert!(!elsewhere.exists());

    // So is the development set, with nothing of it written.
    let set_dir = TempDir::new();
    std::fs::write(set_dir.join("target"), "keep").unwrap();
    std::os::unix::fs::symlink(set_dir.join("target"), set_dir.join("client.key")).unwrap();
    let mut options = DevSetOptions::default();
    options.overwrite(true);
    match write_dev_set(&set_dir.0, options) {
        Err(CertError::Symlink { path }) => assert_eq!(path, set_dir.join("client.key")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(set_dir.join("target")).unwrap(),
        "keep"
    );
    assert_eq!(std::fs::read_dir(&set_dir.0).unwrap().count(), 2);
}

#[test]
fn a_failed_key_write_leaves_the_old_certificate() {
    let dir = TempDir::new();
    let cert = dir.join("server.pem");
    let ca = CertificateAuthority::new("Test CA").unwrap();
    let first = ca.issue_server(&["localhost"]).unwrap();
    first
        .write_pem_files(&cert, dir.join("server.key"), false)
        .unwrap();

    // The key cannot be written (its directory does not exist): the certificate, which
    // comes first, must not be replaced either.
    let second = ca.issue_server(&["localhost"]).unwrap();
    let result = second.write_pem_files(&cert, dir.join("missing/server.key"), true);
    assert!(matches!(result, Err(CertError::Io { .. })), "{result:?}");
    assert_eq!(load_certs_pem(&cert).unwrap(), first.cert_chain());
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 2);
}

#[test]
fn writing_leaves_no_temporary_files() {
    let dir = TempDir::new();
    let options = DevSetOptions::default();
    write_dev_set(&dir.0, options.clone()).unwrap();
    let mut overwrite = options.clone();
    overwrite.overwrite(true);
    write_dev_set(&dir.0, overwrite).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected = DEV_SET_FILES.map(str::to_owned).to_vec();
    expected.sort();
    assert_eq!(names, expected);
}
