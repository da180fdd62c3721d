//! The peer's identity after a handshake: only what was verified.
//!
//! rustls tells a verifier's verdict, not the path it built, and hands out the
//! certificates exactly as the peer sent them (an unrelated certificate a client appends
//! included). So after the handshake the path is built again with webpki, against the
//! same trust anchors and CRLs the handshake used, and only the certificates on it are
//! kept. The configs [`ServerTls::build`](crate::ServerTls::build) and
//! [`ClientTls::build`](crate::ClientTls::build) return are remembered (weakly) with how
//! they verify, so the backends need nothing but the config they were given.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};

use qymux_transport::{CertificateNames, HandshakeError, PeerIdentity, PeerText, Verification};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;

use crate::crl::Crls;
use crate::provider;

/// How a config built here verifies its peer.
#[derive(Debug)]
pub(crate) enum PathCheck {
    /// webpki against trust anchors, with CRLs where given.
    Webpki {
        roots: Arc<RootCertStore>,
        crls: Option<Crls>,
    },
    /// A pinned fingerprint.
    Pinned,
    /// Nothing (`dangerous`).
    Unverified,
}

struct Registry<C> {
    entries: Mutex<Vec<(Weak<C>, Arc<PathCheck>)>>,
}

impl<C> Registry<C> {
    const fn new() -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
        }
    }

    fn insert(&self, config: &Arc<C>, check: PathCheck) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(weak, _)| weak.strong_count() > 0);
        entries.push((Arc::downgrade(config), Arc::new(check)));
    }

    fn find(&self, config: &Arc<C>) -> Option<Arc<PathCheck>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // A live `Weak` keeps its allocation, so an equal address is the same config.
        entries
            .iter()
            .find(|(weak, _)| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(config)))
            .map(|(_, check)| check.clone())
    }
}

static SERVER_CONFIGS: Registry<rustls::ServerConfig> = Registry::new();
static CLIENT_CONFIGS: Registry<rustls::ClientConfig> = Registry::new();

pub(crate) fn remember_server_config(config: &Arc<rustls::ServerConfig>, check: PathCheck) {
    SERVER_CONFIGS.insert(config, check);
}

pub(crate) fn remember_client_config(config: &Arc<rustls::ClientConfig>, check: PathCheck) {
    CLIENT_CONFIGS.insert(config, check);
}

/// The verified identity of the client a listener using `config` accepted, from the
/// certificates it presented (`peer_certificates()` of the rustls connection, or quinn's
/// `peer_identity()`). `None` if it presented none (no mTLS).
///
/// For a config from [`ServerTls::build`](crate::ServerTls::build) with a client CA, the
/// identity's chain is the path webpki builds from the client's certificate to that CA
/// (CRLs in force included); certificates the client sent that are not on it are left
/// out. For a config built elsewhere, it is the leaf alone, marked
/// [`Verification::Custom`].
///
/// # Errors
///
/// [`HandshakeError::ClientCertificateRefused`] if no path can be built any more (the
/// CRLs were reloaded, or the certificate expired, since the handshake).
pub fn client_identity(
    config: &Arc<rustls::ServerConfig>,
    presented: Option<&[CertificateDer<'_>]>,
) -> Result<Option<PeerIdentity>, HandshakeError> {
    let check = SERVER_CONFIGS.find(config);
    identity(check.as_deref(), presented, webpki::KeyUsage::client_auth())
        .map_err(HandshakeError::ClientCertificateRefused)
}

/// The verified identity of the server a dialer using `config` reached, from the
/// certificates it presented. As [`client_identity`], for the other side: the path to
/// the CA or roots of [`ClientTls`](crate::ClientTls), or the leaf alone when pinned
/// ([`Verification::Pinned`]) or not verified ([`Verification::Unverified`]).
///
/// # Errors
///
/// [`HandshakeError::UntrustedCertificate`] if no path can be built any more.
pub fn server_identity(
    config: &Arc<rustls::ClientConfig>,
    presented: Option<&[CertificateDer<'_>]>,
) -> Result<Option<PeerIdentity>, HandshakeError> {
    let check = CLIENT_CONFIGS.find(config);
    identity(check.as_deref(), presented, webpki::KeyUsage::server_auth())
        .map_err(HandshakeError::UntrustedCertificate)
}

fn identity(
    check: Option<&PathCheck>,
    presented: Option<&[CertificateDer<'_>]>,
    usage: webpki::KeyUsage,
) -> Result<Option<PeerIdentity>, String> {
    let Some((leaf, intermediates)) = presented.and_then(<[_]>::split_first) else {
        return Ok(None);
    };
    let names = names_of(leaf);
    let leaf_only = |verification| {
        PeerIdentity::from_verified(vec![leaf.clone().into_owned()], verification, names.clone())
    };
    let (roots, crls) = match check {
        None => return Ok(leaf_only(Verification::Custom)),
        Some(PathCheck::Pinned) => return Ok(leaf_only(Verification::Pinned)),
        Some(PathCheck::Unverified) => return Ok(leaf_only(Verification::Unverified)),
        Some(PathCheck::Webpki { roots, crls }) => (roots, crls),
    };
    let chain = verified_path(roots, crls.as_ref(), leaf, intermediates, usage)
        .map_err(|e| format!("the certificate path cannot be verified again: {e}"))?;
    Ok(PeerIdentity::from_verified(
        chain,
        Verification::Path,
        names,
    ))
}

/// The path webpki builds from `leaf` to one of `roots`, leaf first, without the anchor:
/// the same call, with the same inputs, as rustls's webpki verifiers make.
pub(crate) fn verified_path(
    roots: &RootCertStore,
    crls: Option<&Crls>,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    usage: webpki::KeyUsage,
) -> Result<Vec<CertificateDer<'static>>, webpki::Error> {
    let cert = webpki::EndEntityCert::try_from(leaf)?;
    let set = crls.map(Crls::snapshot);
    let crl_refs: Vec<&webpki::CertRevocationList<'_>> = set
        .as_ref()
        .map(|set| set.parsed.iter().collect())
        .unwrap_or_default();
    let revocation = webpki::RevocationOptionsBuilder::new(&crl_refs)
        .ok()
        .map(webpki::RevocationOptionsBuilder::build);
    let provider = provider();
    let path = cert.verify_for_usage(
        provider.signature_verification_algorithms.all,
        &roots.roots,
        intermediates,
        UnixTime::now(),
        usage,
        revocation,
        None,
    )?;
    let mut chain = vec![leaf.clone().into_owned()];
    chain.extend(
        path.intermediate_certificates()
            .map(|c| c.der().into_owned()),
    );
    Ok(chain)
}

/// The common names and the DNS and IP subject alternative names of a certificate.
/// Names that are not valid text are left out; a certificate x509-parser cannot read has
/// none (webpki accepted it, so this does not happen with a verified path).
pub(crate) fn names_of(cert: &CertificateDer<'_>) -> CertificateNames {
    let mut names = CertificateNames::default();
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        tracing::debug!("peer certificate names unreadable");
        return names;
    };
    names.common_names = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.dns_names.push((*dns).to_owned()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => {
                        let octets: [u8; 4] = bytes[..4].try_into().unwrap_or_default();
                        names.ip_addresses.push(IpAddr::from(octets));
                    }
                    16 => {
                        let octets: [u8; 16] = bytes[..16].try_into().unwrap_or_default();
                        names.ip_addresses.push(IpAddr::from(octets));
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    tracing::trace!(
        common_names = ?names.common_names.iter().map(|n| PeerText(n).to_string()).collect::<Vec<_>>(),
        "peer certificate names"
    );
    names
}
