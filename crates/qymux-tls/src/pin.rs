//! Server verification outside webpki: by a pinned SHA-256 fingerprint of the server's
//! certificate, or (only through [`crate::dangerous`]) not at all.

use std::sync::Arc;

use qymux_cert::Fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// The error a pinned verifier reports; [`crate::handshake_error`] turns it into
/// `HandshakeError::PinMismatch`.
#[derive(Debug, thiserror::Error)]
#[error("server certificate fingerprint {actual} does not match the pinned {expected}")]
pub(crate) struct PinMismatch {
    pub(crate) expected: String,
    pub(crate) actual: String,
}

/// Which server certificates a [`FingerprintVerifier`] accepts.
#[derive(Debug)]
pub(crate) enum Accept {
    /// Exactly those with one of these SHA-256 fingerprints.
    Pinned(Vec<Fingerprint>),
    /// Any certificate at all: `dangerous::skip_server_verification`.
    Anything,
}

/// Accepts server certificates by fingerprint, whatever their issuer, names or dates,
/// and still checks that the server holds the certificate's private key (the handshake
/// signature), so a copied certificate alone does not pass.
#[derive(Debug)]
pub(crate) struct FingerprintVerifier {
    accept: Accept,
    provider: Arc<CryptoProvider>,
}

impl FingerprintVerifier {
    pub(crate) fn new(accept: Accept, provider: Arc<CryptoProvider>) -> Self {
        Self { accept, provider }
    }
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pins = match &self.accept {
            Accept::Pinned(pins) => pins,
            Accept::Anything => {
                tracing::warn!(
                    "server certificate NOT verified (dangerous::skip_server_verification)"
                );
                return Ok(ServerCertVerified::assertion());
            }
        };
        let actual = Fingerprint::of(end_entity);
        if pins.contains(&actual) {
            Ok(ServerCertVerified::assertion())
        } else {
            let expected = pins
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or ");
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch {
                    expected,
                    actual: actual.to_string(),
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
