use std::path::Path;
use std::sync::Arc;

use qymux_cert::Identity;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::CertificateDer;

use crate::crl::Crls;
use crate::error::TlsError;
use crate::identity::{PathCheck, remember_server_config};
use crate::reload::ReloadingClientVerifier;
use crate::{provider, versions};

/// The server side of TLS: its identity and, for mTLS, the CA its clients must present.
#[derive(Clone, Debug)]
pub struct ServerTls {
    identity: Identity,
    client_ca: Option<Vec<CertificateDer<'static>>>,
    client_crls: Option<Crls>,
    allow_tls12: bool,
    source: Option<std::path::PathBuf>,
}

impl ServerTls {
    /// A server that presents `identity` (certificate chain and key) and asks no client
    /// certificate.
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            client_ca: None,
            client_crls: None,
            allow_tls12: false,
            source: None,
        }
    }

    /// Loads the server's certificate chain and key from PEM files.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        let identity = Identity::load_pem_files(cert.as_ref(), key.as_ref())?;
        let mut this = Self::new(identity);
        this.source = Some(cert.as_ref().to_path_buf());
        Ok(this)
    }

    /// Requires every client to present a certificate issued by one of `roots` (mTLS).
    /// The verified chain is available on the session as its peer identity.
    pub fn client_ca(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.client_ca = Some(roots);
        self
    }

    /// Like [`ServerTls::client_ca`], reading the CA certificates from a PEM file.
    pub fn client_ca_file(self, path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let roots = qymux_cert::load_certs_pem(path)?;
        Ok(self.client_ca(roots))
    }

    /// Checks client certificates against these revocation lists (with
    /// [`client_ca`](Self::client_ca); without one no client certificate is asked for).
    /// A revoked client certificate fails the handshake
    /// ([`HandshakeError::ClientCertificateRefused`](qymux_transport::HandshakeError)).
    ///
    /// `crls` is a handle: keep a clone and [`Crls::reload`] or [`Crls::replace`] it,
    /// and every handshake from then on uses the new lists, on every config built from
    /// this `ServerTls` (TCP and QUIC alike). Sessions already accepted stay up.
    pub fn client_crls(mut self, crls: Crls) -> Self {
        self.client_crls = Some(crls);
        self
    }

    /// Like [`ServerTls::client_crls`], loading the CRLs from PEM or DER files (see
    /// [`Crls::from_files`]); [`ServerTls::client_revocation`] gives the handle to
    /// reload them.
    pub fn client_crl_files<P: AsRef<Path>>(
        self,
        paths: impl IntoIterator<Item = P>,
    ) -> Result<Self, TlsError> {
        Ok(self.client_crls(Crls::from_files(paths)?))
    }

    /// The revocation lists client certificates are checked against, if any: the handle
    /// to reload them.
    pub fn client_revocation(&self) -> Option<&Crls> {
        self.client_crls.as_ref()
    }

    /// Also accepts TLS 1.2 (off by default: Qymux peers speak TLS 1.3).
    pub fn allow_tls12(mut self, allow: bool) -> Self {
        self.allow_tls12 = allow;
        self
    }

    /// The identity the server presents.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Builds the rustls configuration, with ALPN `qymux`.
    ///
    /// The config is remembered (weakly) with its client trust anchors and CRLs, so that
    /// [`client_identity`](crate::client_identity) can give sessions accepted with it
    /// the verified path of the client's certificate.
    pub fn build(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions(self.allow_tls12))?;
        let mut check = None;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let mut store = RootCertStore::empty();
                let (added, _ignored) = store.add_parsable_certificates(roots.iter().cloned());
                if added == 0 {
                    return Err(TlsError::NoTrustAnchors(
                        "the client CA holds no usable certificate".into(),
                    ));
                }
                let store = Arc::new(store);
                let verifier: Arc<dyn ClientCertVerifier> = match &self.client_crls {
                    None => WebPkiClientVerifier::builder_with_provider(store.clone(), provider())
                        .build()
                        .map_err(|e| TlsError::ClientVerifier(e.to_string()))?,
                    Some(crls) => {
                        Arc::new(ReloadingClientVerifier::new(store.clone(), crls.clone())?)
                    }
                };
                check = Some(PathCheck::Webpki {
                    roots: store,
                    crls: self.client_crls.clone(),
                });
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(
                self.identity.cert_chain().to_vec(),
                self.identity.private_key(),
            )
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch(self.source.clone()),
                other => TlsError::Rustls(other),
            })?;
        config.alpn_protocols = vec![qymux_transport::ALPN.to_vec()];
        let config = Arc::new(config);
        if let Some(check) = check {
            remember_server_config(&config, check);
        }
        Ok(config)
    }
}
