//! An end-entity certificate chain with its private key.

use std::fmt;
use std::path::Path;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::files::write_pair;
use crate::pem::{certs_to_pem, key_to_pem, parse_certs, parse_key, read};
use crate::{CertError, Fingerprint, Result, x509};

/// An end-entity certificate (with the rest of its chain) and its private key: what a
/// server or a client presents in a TLS handshake.
///
/// The chain is never empty; its first certificate is the end entity (the leaf).
/// `Debug` shows the fingerprint, never the key.
///
/// ```
/// let ca = qymux_cert::CertificateAuthority::new("Example CA")?;
/// let server = ca.issue_server(&["localhost", "127.0.0.1"])?;
///
/// // Store it and load it back, e.g. for a rustls ServerConfig:
/// let again = qymux_cert::Identity::from_pem(&server.cert_pem(), &server.key_pem())?;
/// assert_eq!(again.fingerprint(), server.fingerprint());
/// let (chain, key) = (again.cert_chain().to_vec(), again.private_key());
/// # let _ = (chain, key);
/// # Ok::<(), qymux_cert::CertError>(())
/// ```
pub struct Identity {
    /// Never empty; `chain[0]` is the end entity.
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Builds an identity from a PEM certificate chain (leaf first, then any
    /// intermediates) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    ///
    /// [`CertError::NoCertificate`], [`CertError::NoPrivateKey`] or [`CertError::Pem`]
    /// for unusable PEM; [`CertError::InvalidCertificate`] if the leaf is not X.509;
    /// [`CertError::KeyMismatch`] if the key does not belong to the leaf (checked for
    /// the PKCS#8 keys this crate can parse; other formats are checked by rustls later).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        Self::from_pem_bytes(
            cert_pem.as_bytes(),
            "certificate PEM",
            key_pem.as_bytes(),
            "private key PEM",
        )
    }

    /// Reads an identity from a PEM certificate file and a PEM key file
    /// (see [`Identity::from_pem`]). Error messages name the files.
    ///
    /// # Errors
    ///
    /// [`CertError::Io`] if a file cannot be read, otherwise as [`Identity::from_pem`].
    pub fn load_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        Self::from_pem_bytes(
            &read(cert)?,
            &cert.display().to_string(),
            &read(key)?,
            &key.display().to_string(),
        )
    }

    fn from_pem_bytes(
        cert_pem: &[u8],
        cert_name: &str,
        key_pem: &[u8],
        key_name: &str,
    ) -> Result<Self> {
        let chain = parse_certs(cert_pem, cert_name)?;
        let key = parse_key(key_pem, key_name)?;
        let leaf = x509::parse(&chain[0], cert_name)?;
        if x509::key_matches(&leaf, &key) == Some(false) {
            return Err(CertError::KeyMismatch {
                source_name: key_name.to_owned(),
            });
        }
        Ok(Self { chain, key })
    }

    /// Assembles an identity from parts that are known to be valid.
    #[cfg(feature = "cert-gen")]
    pub(crate) fn from_parts(leaf: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Self {
        Self {
            chain: vec![leaf],
            key,
        }
    }

    /// The certificate chain: the end entity first, then any intermediates.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The end-entity (leaf) certificate.
    pub fn end_entity(&self) -> &CertificateDer<'static> {
        // The chain is never empty (see the field).
        &self.chain[0]
    }

    /// A copy of the private key, in the form rustls takes it.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// The certificate chain as PEM, leaf first.
    pub fn cert_pem(&self) -> String {
        certs_to_pem(&self.chain)
    }

    /// The private key as PEM, in its own format (PKCS#8 for keys made by this crate).
    pub fn key_pem(&self) -> String {
        key_to_pem(&self.key)
    }

    /// The SHA-256 fingerprint of the end-entity certificate, for pinning.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.end_entity())
    }

    /// Writes the chain to `cert` and the key to `key` as PEM. The key file gets mode
    /// `0600` on Unix.
    ///
    /// # Errors
    ///
    /// Without `overwrite`, [`CertError::AlreadyExists`] if either file exists, and then
    /// nothing is written. [`CertError::Symlink`] if either path is a symbolic link, even
    /// with `overwrite`. [`CertError::Io`] if writing fails (parent directories are not
    /// created). Both files are written to temporary files beside them first and moved
    /// into place together, so a failure leaves the old pair (or none), never a key with
    /// a certificate it does not belong to.
    pub fn write_pem_files(
        &self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        overwrite: bool,
    ) -> Result<()> {
        write_pair(
            cert.as_ref(),
            &self.cert_pem(),
            key.as_ref(),
            &self.key_pem(),
            overwrite,
        )
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint())
            .field("chain_len", &self.chain.len())
            .field("private_key", &"<redacted>")
            .finish()
    }
}
