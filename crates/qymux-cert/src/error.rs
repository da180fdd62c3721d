//! The error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while generating, loading or writing certificates.
///
/// The enum is `#[non_exhaustive]`: match the variants you care about and keep a
/// catch-all arm. Messages name the file or input they are about (`source_name`),
/// never the contents of a private key.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("I/O error on {}", path.display())]
    Io {
        /// The file that could not be read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// The PEM input holds no `CERTIFICATE` block.
    #[error("{source_name}: no CERTIFICATE block found")]
    NoCertificate {
        /// The file name or description of the input.
        source_name: String,
    },

    /// The PEM input holds no private key block (`PRIVATE KEY`, `RSA PRIVATE KEY`
    /// or `EC PRIVATE KEY`).
    #[error("{source_name}: no PRIVATE KEY block found (PKCS#8, PKCS#1 or SEC1)")]
    NoPrivateKey {
        /// The file name or description of the input.
        source_name: String,
    },

    /// The PEM input is malformed: a bad section header, a missing end line, bad base64,
    /// or a kind of block that is not supported (such as an encrypted private key).
    #[error("{source_name}: invalid PEM: {reason}")]
    Pem {
        /// The file name or description of the input.
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A certificate was read, but cannot be used as asked: it is not valid X.509 DER,
    /// or it is not a CA certificate where one is needed, or it has expired.
    #[error("{source_name}: unusable certificate: {reason}")]
    InvalidCertificate {
        /// The file name or description of the input.
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A private key was read, but this crate cannot sign with it (only PKCS#8
    /// ECDSA P-256/P-384, Ed25519 and RSA keys can sign certificates).
    #[error("{source_name}: unsupported private key: {reason}")]
    UnsupportedKey {
        /// The file name or description of the input.
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The private key does not belong to the certificate it was paired with.
    #[error("{source_name}: the private key does not match the certificate's public key")]
    KeyMismatch {
        /// The file name or description of the input.
        source_name: String,
    },

    /// A name given for a certificate cannot be used: empty, not a valid DNS name or
    /// IP address, or no name at all.
    #[error("invalid certificate name {name:?}: {reason}")]
    InvalidName {
        /// The name as it was given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Generating a key or signing a certificate failed (feature `cert-gen`).
    #[cfg(feature = "cert-gen")]
    #[error("certificate generation failed")]
    Generate(#[source] rcgen::Error),

    /// A file exists already and overwriting was not asked for.
    #[error("refusing to overwrite existing file {}", path.display())]
    AlreadyExists {
        /// The file that exists.
        path: PathBuf,
    },

    /// The path where a certificate or key was to be written is a symbolic link. It is
    /// refused even when overwriting, so a key never lands where the link points.
    #[error("refusing to write through the symbolic link {}", path.display())]
    Symlink {
        /// The symbolic link.
        path: PathBuf,
    },

    /// A validity period is out of range (zero, or longer than the CA's).
    #[error("invalid validity: {0}")]
    InvalidValidity(String),

    /// A SHA-256 fingerprint could not be parsed.
    #[error("invalid SHA-256 fingerprint: {0}")]
    InvalidFingerprint(String),
}

#[cfg(feature = "cert-gen")]
impl From<rcgen::Error> for CertError {
    fn from(error: rcgen::Error) -> Self {
        Self::Generate(error)
    }
}

/// The result type of this crate.
pub type Result<T, E = CertError> = std::result::Result<T, E>;
