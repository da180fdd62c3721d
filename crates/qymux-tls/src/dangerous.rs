//! Turning off server verification. **For tests and development only.**
//!
//! A dialer that does not verify the server talks to whoever answers: anybody on the path
//! can read and change the whole session. Use a CA ([`ClientTls::with_ca`]) or a pinned
//! fingerprint ([`ClientTls::with_pinned`]) instead; the latter works with a self-signed
//! certificate too.

use crate::client::{ClientTls, ServerVerification};

/// A client configuration that accepts any server certificate without checking it.
///
/// The handshake signature is still checked against the presented certificate, but
/// nothing ties that certificate to the server you meant to reach.
pub fn skip_server_verification() -> ClientTls {
    ClientTls::new(ServerVerification::DangerousSkip)
}
