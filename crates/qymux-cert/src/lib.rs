//! Certificates for Qymux: a small certificate authority, server and client
//! certificates, PEM in and out, and SHA-256 fingerprints for pinning.
//!
//! Qymux verifies the server by default. A dialer can trust the server in one of two
//! ways, and this crate makes the material for both:
//!
//! - **A CA.** [`CertificateAuthority::new`] makes a CA; [`issue_server`] signs a
//!   server certificate for a list of DNS names and IP addresses; dialers trust the CA
//!   certificate. With [`issue_client`] the same CA signs client certificates, for
//!   mutual TLS: the server trusts the CA for clients too.
//! - **Pinning.** [`self_signed`] makes a self-signed end-entity certificate; dialers
//!   pin its SHA-256 [`Fingerprint`] (or trust exactly that certificate as a root).
//!   It is deliberately not a CA: webpki refuses a CA certificate presented as an
//!   end entity (`CaUsedAsEndEntity`), the classic mistake with home-made dev
//!   certificates.
//!
//! Everything is PEM on disk: [`Identity`] and [`CertificateAuthority`] write and read
//! it, and [`parse_certs_pem`] / [`parse_key_pem`] read certificates and keys (PKCS#8,
//! PKCS#1 or SEC1) made by other tools. The types handed out are the
//! [`rustls_pki_types`] ones that rustls takes ([`CertificateDer`], [`PrivateKeyDer`]).
//!
//! Keys are ECDSA P-256, made, checked and hashed with one crypto library: *ring*
//! (feature `ring`, the default) or aws-lc-rs (feature `aws-lc-rs`). Making certificates
//! (rcgen: [`CertificateAuthority`], [`self_signed`], [`write_dev_set`], [`write_crl`]) is
//! the feature `cert-gen`, on by default; without it the crate reads, writes, names and
//! fingerprints certificates made elsewhere, and does not compile rcgen.
//!
//! # Example
//!
//! ```
//! use qymux_cert::{CertificateAuthority, Fingerprint, Identity};
//!
//! // Once, on the operator's machine:
//! let ca = CertificateAuthority::new("Example Tunnel CA")?;
//! let server = ca.issue_server(&["tunnel.example.com", "127.0.0.1", "::1"])?;
//! let agent = ca.issue_client("agent-eu-1")?;
//!
//! // Saved as PEM and loaded back wherever it is needed:
//! let server = Identity::from_pem(&server.cert_pem(), &server.key_pem())?;
//! assert_eq!(server.cert_chain().len(), 1); // just the leaf; peers trust the CA
//!
//! // Hand these to rustls: the server's chain and key, the CA for the trust roots.
//! let (_chain, _key) = (server.cert_chain().to_vec(), server.private_key());
//! let _root = ca.certificate().clone();
//!
//! // Or pin a certificate by its SHA-256 fingerprint, in whatever form it was pasted:
//! let pin: Fingerprint = agent.fingerprint().to_string().to_uppercase().parse()?;
//! assert_eq!(pin, agent.fingerprint());
//! # Ok::<(), qymux_cert::CertError>(())
//! ```
//!
//! For development, `cargo xtask cert` writes a CA, a server and a client certificate
//! into `certs/`; `docs/certificates.md` explains the choices.
//!
//! [`issue_server`]: CertificateAuthority::issue_server
//! [`issue_client`]: CertificateAuthority::issue_client
#![deny(missing_docs)]

#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!("qymux-cert needs a crypto provider: enable the feature `ring` or `aws-lc-rs`");

#[cfg(all(feature = "aws-lc-rs", not(feature = "ring")))]
use aws_lc_rs as crypto;
#[cfg(feature = "ring")]
use ring as crypto;

#[cfg(feature = "cert-gen")]
mod ca;
#[cfg(feature = "cert-gen")]
mod devset;
mod error;
mod files;
mod fingerprint;
mod identity;
mod names;
mod pem;
mod x509;

pub use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

#[cfg(feature = "cert-gen")]
pub use crate::ca::{CertificateAuthority, MAX_VALIDITY_DAYS, self_signed};
#[cfg(feature = "cert-gen")]
pub use crate::devset::{
    CrlWritten, DEFAULT_CRL_DAYS, DEV_SET_FILES, DevSet, DevSetOptions, existing_dev_set_files,
    write_crl, write_dev_set,
};
pub use crate::error::{CertError, Result};
pub use crate::fingerprint::Fingerprint;
pub use crate::identity::Identity;
pub use crate::names::CertNames;
pub use crate::pem::{crl_to_pem, load_certs_pem, load_key_pem, parse_certs_pem, parse_key_pem};

#[cfg(all(test, feature = "cert-gen"))]
mod tests;
