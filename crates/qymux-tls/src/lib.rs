//! rustls configurations for Qymux: ALPN `qymux`, TLS 1.3, CA trust, mTLS and pinning.
//!
//! Both backends (TLS over TCP, and QUIC) take their TLS settings from here, so a server
//! and its agents are configured the same way whatever transport wins.
//!
//! - [`ServerTls`]: the server's certificate chain and key; optionally a client CA, which
//!   makes a client certificate mandatory (mTLS).
//! - [`ClientTls`]: how the dialer verifies the server: a CA, the webpki or the system
//!   roots, or a pinned SHA-256 fingerprint; optionally a client certificate.
//! - [`Crls`]: certificate revocation lists (PEM or DER files), for client certificates
//!   ([`ServerTls::client_crls`]) or server certificates ([`ClientTls::server_crls`]);
//!   reloadable while the server runs.
//! - [`client_identity`] / [`server_identity`]: the peer's identity after a handshake,
//!   holding only what was verified (the path webpki built, or the pinned leaf).
//! - [`AllowList`]: the peers an application accepts, by fingerprint or name, checked
//!   per session.
//! - [`dangerous`]: skipping server verification, for tests and development only.
//! - [`handshake_error`]: turns a rustls failure into a typed
//!   [`HandshakeError`](qymux_transport::HandshakeError).
//!
//! One crypto provider is used, and it is passed to every config explicitly, so no
//! process-wide default provider needs to be installed: *ring* (feature `ring`, the
//! default) or aws-lc-rs (feature `aws-lc-rs`; ring wins when both are enabled). The root
//! stores are features too: `webpki-roots` ([`ClientTls::with_webpki_roots`]) and
//! `native-roots` ([`ClientTls::with_system_roots`]), both on by default.
//!
//! # Example
//!
//! ```
//! use qymux_cert::CertificateAuthority;
//! use qymux_tls::{ClientTls, ServerTls};
//!
//! let ca = CertificateAuthority::new("Example CA")?;
//! let server = ServerTls::new(ca.issue_server(&["localhost"])?).build()?;
//! let client = ClientTls::with_ca(vec![ca.certificate().clone()]).build()?;
//! assert_eq!(server.alpn_protocols, vec![b"qymux".to_vec()]);
//! assert_eq!(client.alpn_protocols, vec![b"qymux".to_vec()]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

mod allow;
mod classify;
mod client;
mod crl;
pub mod dangerous;
mod error;
mod identity;
mod pin;
mod reload;
mod server;

pub use allow::{AllowList, NotAllowed, describe_names};
pub use classify::{Side, handshake_error};
pub use client::{ClientTls, ServerVerification};
pub use crl::Crls;
pub use error::TlsError;
pub use identity::{client_identity, server_identity};
pub use qymux_cert::{Fingerprint, Identity};
pub use server::ServerTls;

use std::sync::Arc;

pub use rustls;

#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!("qymux-tls needs a crypto provider: enable the feature `ring` or `aws-lc-rs`");

/// The crypto provider behind every Qymux config: *ring* (feature `ring`), else aws-lc-rs
/// (feature `aws-lc-rs`).
#[cfg(feature = "ring")]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The crypto provider behind every Qymux config: *ring* (feature `ring`), else aws-lc-rs
/// (feature `aws-lc-rs`).
#[cfg(all(feature = "aws-lc-rs", not(feature = "ring")))]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn versions(allow_tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if allow_tls12 {
        rustls::ALL_VERSIONS
    } else {
        TLS13_ONLY
    }
}
