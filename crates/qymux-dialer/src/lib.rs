//! Auto mode for Qymux: connect on any network, about as fast as a plain TCP dial.
//!
//! The Go original tries QUIC, waits for it to fail (about 5 s when UDP is blocked), then
//! tries TCP. Here:
//!
//! - [`Dialer`] races the two (RFC 8305 style): QUIC starts first, TCP joins after an
//!   attempt delay (250 ms, or 1.5 × a known QUIC round-trip time), the first to
//!   connect wins and the other is dropped cleanly.
//! - [`TransportMemory`] remembers per target that QUIC failed where TCP worked, so the
//!   next dials start with TCP at once; QUIC is tried again after a penalty that doubles
//!   on each repeated failure.
//! - [`Listener`] serves UDP and TCP on the same port number, with one `accept` for both.
//!
//! Sessions are handed out type-erased ([`BoxSession`](qymux_transport::BoxSession));
//! `protocol()` says which transport won.
//!
//! # Example
//!
//! ```
//! use qymux_cert::CertificateAuthority;
//! use qymux_dialer::{Dialer, Listener};
//! use qymux_tls::{ClientTls, ServerTls};
//! use qymux_transport::{Mode, Options, Protocol, Session};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ca = CertificateAuthority::new("Example CA")?;
//! let server_tls = ServerTls::new(ca.issue_server(&["localhost"])?).build()?;
//! let listener = Listener::bind("127.0.0.1:0", server_tls, Options::default(), Mode::Auto).await?;
//!
//! let client_tls = ClientTls::with_ca(vec![ca.certificate().clone()]).build()?;
//! let dialer = Dialer::new(listener.local_addr().to_string(), "localhost", client_tls);
//! let (session, accepted) = tokio::join!(dialer.dial(), listener.accept());
//! assert_eq!(session?.protocol(), Protocol::Quic); // UDP gets through on loopback
//! assert_eq!(accepted?.protocol(), Protocol::Quic);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

mod dialer;
mod listener;
mod memory;

pub use dialer::{DEFAULT_ATTEMPT_DELAY, Dialer};
pub use listener::Listener;
pub use memory::{INITIAL_QUIC_PENALTY, MAX_QUIC_PENALTY, TransportMemory};
