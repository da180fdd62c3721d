//! Turning off server verification. **For tests and development only.**
//!
//! A dialer that does not verify the server talks to whoever answers: anybody on the path
//! can read and change the whole session. Use a CA ([`ClientTls::with_ca`]) or a pinned
//! fingerprint ([`ClientTls::with_pinned`]) instead; the latter works with a self-signed
//! certificate too.
//!
//! This module is the only way to build such a client: the
//! [`ServerVerification::DangerousSkip`] variant holds a [`NoVerification`], which only
//! this module can make, so a reviewer finds every unverified client by searching for
//! `dangerous`.
//!
//! ```
//! let client = qymux_tls::dangerous::skip_server_verification();
//! assert!(matches!(
//!     client.verification(),
//!     qymux_tls::ServerVerification::DangerousSkip(_)
//! ));
//! ```
//!
//! Naming the variant outside this module does not compile:
//!
//! ```compile_fail
//! use qymux_tls::{ClientTls, ServerVerification};
//! let _ = ClientTls::new(ServerVerification::DangerousSkip);
//! ```
//!
//! and neither does making its token:
//!
//! ```compile_fail
//! use qymux_tls::{ClientTls, ServerVerification, dangerous::NoVerification};
//! let _ = ClientTls::new(ServerVerification::DangerousSkip(NoVerification(())));
//! ```
//!
//! nor taking one from an existing value (it is not `Default`, and its field is private):
//!
//! ```compile_fail
//! use qymux_tls::{ClientTls, ServerVerification, dangerous::NoVerification};
//! let _ = ClientTls::new(ServerVerification::DangerousSkip(NoVerification::default()));
//! ```

use crate::client::{ClientTls, ServerVerification};

/// Proof that a client without server verification was asked for through this module.
///
/// It has a private field and no public constructor, so
/// [`ServerVerification::DangerousSkip`] can only be made by
/// [`skip_server_verification`].
#[derive(Clone, Debug)]
pub struct NoVerification(());

/// A client configuration that accepts any server certificate without checking it.
///
/// The handshake signature is still checked against the presented certificate, but
/// nothing ties that certificate to the server you meant to reach.
pub fn skip_server_verification() -> ClientTls {
    ClientTls::new(ServerVerification::DangerousSkip(NoVerification(())))
}
