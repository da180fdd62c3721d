use std::path::Path;
use std::sync::Arc;

use qymux_cert::{Fingerprint, Identity};
use rustls::client::WantsClientCert;
use rustls::{ConfigBuilder, RootCertStore, WantsVerifier};
use rustls_pki_types::CertificateDer;

use crate::crl::Crls;
use crate::error::TlsError;
use crate::identity::{PathCheck, remember_client_config};
use crate::pin::{Accept, FingerprintVerifier};
use crate::reload::ReloadingServerVerifier;
use crate::{provider, versions};

/// How the dialer decides that it reached the right server.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub enum ServerVerification {
    /// The server's chain must lead to one of these CA certificates, and be valid for the
    /// server name dialed.
    Ca(Vec<CertificateDer<'static>>),
    /// The server's chain must lead to a root of the Mozilla set (bundled, `webpki-roots`;
    /// feature `webpki-roots`).
    #[cfg(feature = "webpki-roots")]
    WebPkiRoots,
    /// The server's chain must lead to a root of the operating system's store (feature
    /// `native-roots`).
    #[cfg(feature = "native-roots")]
    SystemRoots,
    /// The server's certificate must have one of these SHA-256 fingerprints. Issuer,
    /// names and dates are not checked, so a self-signed certificate works.
    Pinned(Vec<Fingerprint>),
    /// No verification at all. Only constructible through [`crate::dangerous`]: the
    /// [`NoVerification`](crate::dangerous::NoVerification) it holds cannot be made
    /// anywhere else.
    DangerousSkip(crate::dangerous::NoVerification),
}

/// The client side of TLS: how the server is verified and, for mTLS, the client's own
/// certificate.
#[derive(Clone, Debug)]
pub struct ClientTls {
    verification: ServerVerification,
    identity: Option<Identity>,
    server_crls: Option<Crls>,
    allow_tls12: bool,
}

impl ClientTls {
    /// A client that verifies the server as `verification` says.
    pub fn new(verification: ServerVerification) -> Self {
        if matches!(verification, ServerVerification::DangerousSkip(_)) {
            tracing::warn!("TLS client built without server verification");
        }
        Self {
            verification,
            identity: None,
            server_crls: None,
            allow_tls12: false,
        }
    }

    /// Trusts the given CA certificates.
    pub fn with_ca(roots: Vec<CertificateDer<'static>>) -> Self {
        Self::new(ServerVerification::Ca(roots))
    }

    /// Trusts the CA certificates in a PEM file.
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<Self, TlsError> {
        Ok(Self::with_ca(qymux_cert::load_certs_pem(path)?))
    }

    /// Trusts the bundled Mozilla roots (for servers with a public certificate). Feature
    /// `webpki-roots`.
    #[cfg(feature = "webpki-roots")]
    pub fn with_webpki_roots() -> Self {
        Self::new(ServerVerification::WebPkiRoots)
    }

    /// Trusts the operating system's root store. Feature `native-roots`.
    #[cfg(feature = "native-roots")]
    pub fn with_system_roots() -> Self {
        Self::new(ServerVerification::SystemRoots)
    }

    /// Accepts only a server certificate with this SHA-256 fingerprint.
    pub fn with_pinned(fingerprint: Fingerprint) -> Self {
        Self::new(ServerVerification::Pinned(vec![fingerprint]))
    }

    /// Presents `identity` as the client certificate (for servers that require mTLS).
    pub fn client_identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Like [`ClientTls::client_identity`], reading the certificate and key from PEM files.
    pub fn client_identity_files(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        Ok(self.client_identity(Identity::load_pem_files(cert, key)?))
    }

    /// Checks the server's certificate (and its chain) against these revocation lists,
    /// with a CA or the webpki or system roots (a pinned fingerprint is not revoked this
    /// way: pin another one). `crls` is a handle: [`Crls::reload`] or [`Crls::replace`]
    /// it and every handshake from then on uses the new lists.
    pub fn server_crls(mut self, crls: Crls) -> Self {
        self.server_crls = Some(crls);
        self
    }

    /// Like [`ClientTls::server_crls`], loading the CRLs from PEM or DER files (see
    /// [`Crls::from_files`]).
    pub fn server_crl_files<P: AsRef<Path>>(
        self,
        paths: impl IntoIterator<Item = P>,
    ) -> Result<Self, TlsError> {
        Ok(self.server_crls(Crls::from_files(paths)?))
    }

    /// Also offers TLS 1.2 (off by default).
    pub fn allow_tls12(mut self, allow: bool) -> Self {
        self.allow_tls12 = allow;
        self
    }

    /// How the server is verified.
    pub fn verification(&self) -> &ServerVerification {
        &self.verification
    }

    /// Builds the rustls configuration, with ALPN `qymux`.
    ///
    /// The config is remembered (weakly) with how it verifies the server, so that
    /// [`server_identity`](crate::server_identity) can give sessions dialed with it the
    /// verified path of the server's certificate.
    pub fn build(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions(self.allow_tls12))?;
        let (builder, check) = match &self.verification {
            ServerVerification::Ca(roots) => {
                let mut store = RootCertStore::empty();
                let (added, _) = store.add_parsable_certificates(roots.iter().cloned());
                if added == 0 {
                    return Err(TlsError::NoTrustAnchors(
                        "the CA holds no usable certificate".into(),
                    ));
                }
                self.with_roots(builder, store)?
            }
            #[cfg(feature = "webpki-roots")]
            ServerVerification::WebPkiRoots => {
                let store = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                self.with_roots(builder, store)?
            }
            #[cfg(feature = "native-roots")]
            ServerVerification::SystemRoots => {
                let found = rustls_native_certs::load_native_certs();
                for err in &found.errors {
                    tracing::debug!("system root store: {err}");
                }
                let mut store = RootCertStore::empty();
                let (added, _) = store.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(TlsError::NoTrustAnchors(
                        "the system root store holds no usable certificate".into(),
                    ));
                }
                self.with_roots(builder, store)?
            }
            ServerVerification::Pinned(pins) => {
                if pins.is_empty() {
                    return Err(TlsError::NoTrustAnchors("no fingerprint pinned".into()));
                }
                let builder = builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(FingerprintVerifier::new(
                        Accept::Pinned(pins.clone()),
                        provider.clone(),
                    )));
                (builder, PathCheck::Pinned)
            }
            ServerVerification::DangerousSkip(_) => {
                let builder = builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(FingerprintVerifier::new(
                        Accept::Anything,
                        provider.clone(),
                    )));
                (builder, PathCheck::Unverified)
            }
        };
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some(identity) => builder
                .with_client_auth_cert(identity.cert_chain().to_vec(), identity.private_key())
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch(None),
                    other => TlsError::Rustls(other),
                })?,
        };
        config.alpn_protocols = vec![qymux_transport::ALPN.to_vec()];
        let config = Arc::new(config);
        remember_client_config(&config, check);
        Ok(config)
    }

    /// The verifier for trust anchors: rustls's webpki one, with CRLs (reloadable) if
    /// given.
    fn with_roots(
        &self,
        builder: ConfigBuilder<rustls::ClientConfig, WantsVerifier>,
        store: RootCertStore,
    ) -> Result<
        (
            ConfigBuilder<rustls::ClientConfig, WantsClientCert>,
            PathCheck,
        ),
        TlsError,
    > {
        let store = Arc::new(store);
        let builder = match &self.server_crls {
            None => builder.with_root_certificates(store.clone()),
            Some(crls) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ReloadingServerVerifier::new(
                    store.clone(),
                    crls.clone(),
                )?)),
        };
        let check = PathCheck::Webpki {
            roots: store,
            crls: self.server_crls.clone(),
        };
        Ok((builder, check))
    }
}
