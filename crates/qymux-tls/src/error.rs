use std::path::PathBuf;

/// Why a TLS configuration could not be built.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Loading or parsing certificate or key material failed (missing file, unreadable PEM).
    #[error(transparent)]
    Cert(#[from] qymux_cert::CertError),
    /// The private key does not belong to the certificate.
    #[error("the private key does not match the certificate {}", describe(.0))]
    KeyMismatch(Option<PathBuf>),
    /// No trust anchor could be used (empty CA file, no system roots).
    #[error("no usable trust anchors: {0}")]
    NoTrustAnchors(String),
    /// rustls refused the configuration.
    #[error("rustls refused the TLS configuration")]
    Rustls(#[from] rustls::Error),
    /// A certificate revocation list could not be loaded or used.
    #[error("{source_name}: {reason}")]
    Crl {
        /// The file (or list position) it came from.
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The client certificate verifier could not be built.
    #[error("client CA: {0}")]
    ClientVerifier(String),
}

fn describe(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("in {}", p.display()),
        None => "given".into(),
    }
}
