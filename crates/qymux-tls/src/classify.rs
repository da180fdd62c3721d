use std::io;

use qymux_transport::HandshakeError;
use rustls::{AlertDescription, CertificateError};

use crate::pin::PinMismatch;

/// Which end of the handshake reports the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The dialer.
    Client,
    /// The listener.
    Server,
}

/// Classifies a failed TLS handshake (an `io::Error` from tokio-rustls, or a
/// `rustls::Error` inside one) as a [`HandshakeError`] that says what went wrong.
///
/// On the server, a certificate that fails verification is the client's, so it is
/// reported as [`HandshakeError::ClientCertificateRefused`].
pub fn handshake_error(err: &io::Error, side: Side) -> HandshakeError {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) if side == Side::Server => {
            HandshakeError::ClientCertificateRefused(err.to_string())
        }
        Some(tls) => from_rustls(tls),
        None if err.kind() == io::ErrorKind::UnexpectedEof => {
            HandshakeError::Tls("connection closed during the handshake".into())
        }
        None => HandshakeError::Tls(err.to_string()),
    }
}

fn from_rustls(err: &rustls::Error) -> HandshakeError {
    use rustls::Error as E;
    match err {
        E::NoApplicationProtocol | E::AlertReceived(AlertDescription::NoApplicationProtocol) => {
            HandshakeError::AlpnMismatch
        }
        E::NoCertificatesPresented | E::AlertReceived(AlertDescription::CertificateRequired) => {
            HandshakeError::ClientCertificateRequired
        }
        E::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<PinMismatch>() {
                Some(pin) => HandshakeError::PinMismatch {
                    expected: pin.expected.clone(),
                    actual: pin.actual.clone(),
                },
                None => HandshakeError::UntrustedCertificate(err.to_string()),
            }
        }
        E::InvalidCertificate(_) => HandshakeError::UntrustedCertificate(err.to_string()),
        // The server refused our client certificate.
        E::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied,
        ) => HandshakeError::ClientCertificateRefused(err.to_string()),
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => HandshakeError::NotTls(err.to_string()),
        other => HandshakeError::Tls(other.to_string()),
    }
}
