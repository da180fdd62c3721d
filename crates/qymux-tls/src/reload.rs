//! rustls's webpki verifiers with CRLs that can be reloaded: each wraps the verifier built
//! from its trust anchors and the current [`Crls`], and builds a new one when the CRLs
//! change, so a reload takes effect for the next handshake.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::crl::Crls;
use crate::error::TlsError;
use crate::provider;

/// The verifier built for one generation of the CRLs.
struct Cached<V: ?Sized> {
    generation: u64,
    verifier: Arc<V>,
}

/// Verifies client certificates (mTLS) with rustls's `WebPkiClientVerifier`, rebuilt with
/// the CRLs in force whenever they change.
pub(crate) struct ReloadingClientVerifier {
    roots: Arc<RootCertStore>,
    subjects: Vec<DistinguishedName>,
    crls: Crls,
    cached: Mutex<Cached<dyn ClientCertVerifier>>,
}

impl ReloadingClientVerifier {
    /// Builds the verifier for the CRLs in force now, so a bad configuration fails here.
    pub(crate) fn new(roots: Arc<RootCertStore>, crls: Crls) -> Result<Self, TlsError> {
        let set = crls.snapshot();
        let verifier = client_verifier(&roots, &set.ders)
            .map_err(|e| TlsError::ClientVerifier(e.to_string()))?;
        Ok(Self {
            subjects: roots.subjects(),
            roots,
            crls,
            cached: Mutex::new(Cached {
                generation: set.generation,
                verifier,
            }),
        })
    }

    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let set = self.crls.snapshot();
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if cached.generation != set.generation {
            let verifier = client_verifier(&self.roots, &set.ders)
                .map_err(|e| rustls::Error::General(format!("client verifier: {e}")))?;
            *cached = Cached {
                generation: set.generation,
                verifier,
            };
        }
        Ok(cached.verifier.clone())
    }
}

fn client_verifier(
    roots: &Arc<RootCertStore>,
    crls: &[rustls_pki_types::CertificateRevocationListDer<'static>],
) -> Result<Arc<dyn ClientCertVerifier>, rustls::server::VerifierBuilderError> {
    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .with_crls(crls.iter().cloned())
        .build()
}

impl fmt::Debug for ReloadingClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingClientVerifier")
            .field("roots", &self.roots.len())
            .field("crls", &self.crls)
            .finish()
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies server certificates with rustls's `WebPkiServerVerifier`, rebuilt with the
/// CRLs in force whenever they change.
pub(crate) struct ReloadingServerVerifier {
    roots: Arc<RootCertStore>,
    crls: Crls,
    cached: Mutex<Cached<WebPkiServerVerifier>>,
}

impl ReloadingServerVerifier {
    /// Builds the verifier for the CRLs in force now, so a bad configuration fails here.
    pub(crate) fn new(roots: Arc<RootCertStore>, crls: Crls) -> Result<Self, TlsError> {
        let set = crls.snapshot();
        let verifier = server_verifier(&roots, &set.ders)
            .map_err(|e| TlsError::ClientVerifier(e.to_string()))?;
        Ok(Self {
            roots,
            crls,
            cached: Mutex::new(Cached {
                generation: set.generation,
                verifier,
            }),
        })
    }

    fn current(&self) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        let set = self.crls.snapshot();
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if cached.generation != set.generation {
            let verifier = server_verifier(&self.roots, &set.ders)
                .map_err(|e| rustls::Error::General(format!("server verifier: {e}")))?;
            *cached = Cached {
                generation: set.generation,
                verifier,
            };
        }
        Ok(cached.verifier.clone())
    }
}

fn server_verifier(
    roots: &Arc<RootCertStore>,
    crls: &[rustls_pki_types::CertificateRevocationListDer<'static>],
) -> Result<Arc<WebPkiServerVerifier>, rustls::server::VerifierBuilderError> {
    WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
        .with_crls(crls.iter().cloned())
        .build()
}

impl fmt::Debug for ReloadingServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingServerVerifier")
            .field("roots", &self.roots.len())
            .field("crls", &self.crls)
            .finish()
    }
}

impl ServerCertVerifier for ReloadingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
