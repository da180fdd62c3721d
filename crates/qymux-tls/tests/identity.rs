//! What a peer's identity holds after the handshake, CRL files, and the allow-list.

use std::sync::Arc;

use qymux_cert::{CertificateAuthority, self_signed};
use qymux_testsupport::TempDir;
use qymux_tls::{AllowList, ClientTls, Crls, NotAllowed, ServerTls, TlsError};
use qymux_transport::{CertificateDer, HandshakeError, Verification};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A root CA, an intermediate CA under it, and a client leaf under the intermediate.
struct Hierarchy {
    root: CertificateDer<'static>,
    intermediate: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn hierarchy() -> Hierarchy {
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("Test Root");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);

    let mid_key = KeyPair::generate().unwrap();
    let mid_params = ca_params("Test Intermediate");
    let intermediate = mid_params.signed_by(&mid_key, &root_issuer).unwrap();
    let mid_issuer = Issuer::new(mid_params, mid_key);

    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::default();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "agent-7");
    leaf_params.subject_alt_names = vec![
        SanType::DnsName("agent-7.example".try_into().unwrap()),
        SanType::IpAddress("10.1.2.3".parse().unwrap()),
    ];
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &mid_issuer).unwrap();
    Hierarchy {
        root: root.der().clone(),
        intermediate: intermediate.der().clone(),
        leaf: leaf.der().clone(),
    }
}

fn server_config(roots: Vec<CertificateDer<'static>>) -> Arc<rustls::ServerConfig> {
    let server = CertificateAuthority::new("Server CA")
        .unwrap()
        .issue_server(&["localhost"])
        .unwrap();
    ServerTls::new(server).client_ca(roots).build().unwrap()
}

#[test]
fn the_identity_is_the_verified_path_without_strangers() {
    let h = hierarchy();
    let config = server_config(vec![h.root.clone()]);
    let stranger = self_signed(&["admin.example"]).unwrap();
    let other_ca = CertificateAuthority::new("Other").unwrap();

    // The client sends its leaf, two unrelated certificates, then its intermediate.
    let presented = vec![
        h.leaf.clone(),
        stranger.end_entity().clone(),
        other_ca.certificate().clone(),
        h.intermediate.clone(),
    ];
    let identity = qymux_tls::client_identity(&config, Some(&presented))
        .unwrap()
        .expect("an identity");
    assert_eq!(identity.chain(), [h.leaf.clone(), h.intermediate.clone()]);
    assert_eq!(identity.verification(), Verification::Path);
    assert_eq!(identity.common_names(), ["agent-7"]);
    assert_eq!(identity.dns_names(), ["agent-7.example"]);
    assert_eq!(
        identity.ip_addresses(),
        ["10.1.2.3".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(identity.has_name("AGENT-7.example"));
    assert!(identity.has_name("10.1.2.3"));
    assert!(!identity.has_name("admin.example"));

    // Nothing presented: no identity.
    assert!(qymux_tls::client_identity(&config, None).unwrap().is_none());
    assert!(
        qymux_tls::client_identity(&config, Some(&[]))
            .unwrap()
            .is_none()
    );

    // A leaf that does not chain (never accepted by the handshake) is refused here too.
    let err =
        qymux_tls::client_identity(&config, Some(&[stranger.end_entity().clone()])).unwrap_err();
    assert!(
        matches!(err, HandshakeError::ClientCertificateRefused(_)),
        "{err:?}"
    );
}

#[test]
fn pinned_and_foreign_configs_keep_the_leaf_alone() {
    let server = self_signed(&["localhost"]).unwrap();
    let extra = self_signed(&["extra"]).unwrap();
    let presented = vec![server.end_entity().clone(), extra.end_entity().clone()];

    let pinned = ClientTls::with_pinned(server.fingerprint())
        .build()
        .unwrap();
    let identity = qymux_tls::server_identity(&pinned, Some(&presented))
        .unwrap()
        .unwrap();
    assert!(identity.is_pinned());
    assert_eq!(identity.chain(), [server.end_entity().clone()]);

    let skipped = qymux_tls::dangerous::skip_server_verification()
        .build()
        .unwrap();
    let identity = qymux_tls::server_identity(&skipped, Some(&presented))
        .unwrap()
        .unwrap();
    assert_eq!(identity.verification(), Verification::Unverified);
    assert_eq!(identity.chain().len(), 1);

    // A copy of the config (not the one built) is not known: leaf alone, "custom".
    let copy = Arc::new((*pinned).clone());
    let identity = qymux_tls::server_identity(&copy, Some(&presented))
        .unwrap()
        .unwrap();
    assert_eq!(identity.verification(), Verification::Custom);
    assert_eq!(identity.chain().len(), 1);
}

#[test]
fn crl_files_are_checked_and_reloads_keep_the_old_lists_on_error() {
    let ca = CertificateAuthority::new("CRL CA").unwrap();
    let agent = ca.issue_client("agent").unwrap();
    let dir = TempDir::new("qymux-tls-crl").unwrap();

    let missing = Crls::from_files([dir.join("missing.crl")]).unwrap_err();
    assert!(
        matches!(&missing, TlsError::Crl { source_name, .. } if source_name.contains("missing.crl")),
        "{missing:?}"
    );

    let empty = dir.join("empty.crl");
    std::fs::write(&empty, "").unwrap();
    assert!(matches!(
        Crls::from_files([&empty]),
        Err(TlsError::Crl { .. })
    ));

    let certificate = dir.join("not-a-crl.pem");
    std::fs::write(&certificate, agent.cert_pem()).unwrap();
    assert!(matches!(
        Crls::from_files([&certificate]),
        Err(TlsError::Crl { .. })
    ));

    let garbage = dir.join("garbage.der");
    std::fs::write(&garbage, b"\x30\x82\xff\xff garbage").unwrap();
    assert!(matches!(
        Crls::from_files([&garbage]),
        Err(TlsError::Crl { .. })
    ));

    // PEM with two lists, and a DER file.
    let other = CertificateAuthority::new("Other CA").unwrap();
    let pem = dir.join("both.pem");
    std::fs::write(
        &pem,
        format!(
            "{}{}",
            qymux_cert::crl_to_pem(&ca.revocation_list(&[agent.end_entity()], 1).unwrap()),
            qymux_cert::crl_to_pem(&other.revocation_list(&[], 1).unwrap()),
        ),
    )
    .unwrap();
    let der = dir.join("one.der");
    std::fs::write(&der, ca.revocation_list(&[], 1).unwrap().as_ref()).unwrap();
    let crls = Crls::from_files([&pem, &der]).unwrap();
    assert_eq!(crls.len(), 3);

    std::fs::write(&der, b"").unwrap();
    assert!(crls.reload().is_err());
    assert_eq!(crls.len(), 3, "a failed reload keeps the lists in force");
    std::fs::remove_file(&der).unwrap();
    assert!(crls.reload().is_err());
    std::fs::write(&der, ca.revocation_list(&[], 1).unwrap().as_ref()).unwrap();
    crls.reload().unwrap();

    // A config with CRLs builds, on the server and on the client side.
    ServerTls::new(ca.issue_server(&["localhost"]).unwrap())
        .client_ca(vec![ca.certificate().clone()])
        .client_crls(crls.clone())
        .build()
        .unwrap();
    ClientTls::with_ca(vec![ca.certificate().clone()])
        .server_crls(crls)
        .build()
        .unwrap();
}

#[test]
fn the_identity_is_rebuilt_with_the_crls_in_force() {
    let ca = CertificateAuthority::new("Revoking CA").unwrap();
    let agent = ca.issue_client("agent").unwrap();
    let crls = Crls::from_ders(vec![ca.revocation_list(&[], 1).unwrap()]).unwrap();
    let config = ServerTls::new(ca.issue_server(&["localhost"]).unwrap())
        .client_ca(vec![ca.certificate().clone()])
        .client_crls(crls.clone())
        .build()
        .unwrap();
    let presented = agent.cert_chain();
    assert!(
        qymux_tls::client_identity(&config, Some(presented))
            .unwrap()
            .is_some()
    );
    crls.replace(vec![ca.revocation_list(&[agent.end_entity()], 1).unwrap()])
        .unwrap();
    let err = qymux_tls::client_identity(&config, Some(presented)).unwrap_err();
    assert!(
        err.to_string().contains("revoked") || err.to_string().contains("Revoked"),
        "{err}"
    );
}

#[test]
fn the_allow_list_checks_fingerprints_and_verified_names() {
    let h = hierarchy();
    let config = server_config(vec![h.root.clone()]);
    let presented = [h.leaf.clone(), h.intermediate.clone()];
    let agent = qymux_tls::client_identity(&config, Some(&presented))
        .unwrap()
        .unwrap();

    assert_eq!(AllowList::new().check(None), Err(NotAllowed::NoIdentity));
    assert!(!AllowList::new().allows(Some(&agent)));
    assert!(AllowList::new().name("agent-7").allows(Some(&agent)));
    assert!(
        AllowList::new()
            .name("agent-7.example")
            .allows(Some(&agent))
    );
    assert!(AllowList::new().name("10.1.2.3").allows(Some(&agent)));
    assert!(
        AllowList::new()
            .fingerprint(qymux_cert::Fingerprint::of(&h.leaf))
            .allows(Some(&agent))
    );
    let refused = AllowList::new()
        .name("agent-8")
        .check(Some(&agent))
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("CN=agent-7, DNS=agent-7.example, IP=10.1.2.3"),
        "{refused}"
    );

    // A pinned certificate's names are whatever its maker wrote: only its fingerprint counts.
    let server = self_signed(&["agent-7"]).unwrap();
    let pinned = ClientTls::with_pinned(server.fingerprint())
        .build()
        .unwrap();
    let pinned = qymux_tls::server_identity(&pinned, Some(server.cert_chain()))
        .unwrap()
        .unwrap();
    assert!(!AllowList::new().name("agent-7").allows(Some(&pinned)));
    assert!(
        AllowList::new()
            .fingerprint(server.fingerprint())
            .allows(Some(&pinned))
    );
}

#[test]
fn names_with_control_characters_are_escaped_when_described() {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "evil\n\u{1b}[31mINFO forged");
    params.is_ca = IsCa::ExplicitNoCa;
    let cert = params.self_signed(&key).unwrap();
    let der = cert.der().clone();
    let pinned = ClientTls::with_pinned(qymux_cert::Fingerprint::of(&der))
        .build()
        .unwrap();
    let peer = qymux_tls::server_identity(&pinned, Some(&[der]))
        .unwrap()
        .unwrap();
    assert_eq!(peer.common_names(), ["evil\n\u{1b}[31mINFO forged"]);
    let described = qymux_tls::describe_names(&peer);
    assert_eq!(described, r"CN=evil\n\u{1b}[31mINFO forged");
    let debug = format!("{peer:?}");
    assert!(
        !debug.contains('\u{1b}') && !debug.contains('\n'),
        "{debug}"
    );
}
