use std::path::Path;
use std::sync::Arc;

use qymux_cert::Identity;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::CertificateDer;

use crate::error::TlsError;
use crate::{provider, versions};

/// The server side of TLS: its identity and, for mTLS, the CA its clients must present.
#[derive(Clone, Debug)]
pub struct ServerTls {
    identity: Identity,
    client_ca: Option<Vec<CertificateDer<'static>>>,
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
    pub fn build(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions(self.allow_tls12))?;
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
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
                        .build()
                        .map_err(|e| TlsError::ClientVerifier(e.to_string()))?;
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
        Ok(Arc::new(config))
    }
}
