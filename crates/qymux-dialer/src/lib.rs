//! Auto mode for Qymux: connect on any network, about as fast as a plain TCP dial.
//!
//! The Go original tries QUIC, waits for it to fail (about 5 s when UDP is blocked), then
//! tries TCP. Here:
//!
//! - [`Dialer`] resolves the target once per dial and races the two (RFC 8305 style):
//!   QUIC starts first, TCP joins after an attempt delay (250 ms, or 1.5 × the QUIC dial
//!   time measured before, at least 100 ms), the first to connect wins (QUIC in a tie)
//!   and the other is dropped cleanly. Each transport races the resolved addresses too
//!   (Happy Eyeballs).
//! - [`TransportMemory`] remembers per server address that QUIC failed where TCP worked,
//!   so the next dials start with TCP at once; QUIC is tried again after a penalty that
//!   doubles on each repeated failure. Two names of one server share it.
//! - [`Listener`] serves UDP and TCP on the same port number, with one `accept` for both,
//!   caps its live sessions ([`Options::max_sessions`](qymux_transport::Options)) and
//!   shuts down gracefully ([`Listener::shutdown`]): it stops accepting, then closes each
//!   session once its streams are finished or a grace period has passed.
//! - [`Reconnecting`] keeps an agent's session up: it redials with exponential backoff
//!   and full jitter ([`Backoff`]) when the session is lost, moves to the next of
//!   several servers, runs a callback on every new session, publishes its
//!   [`ReconnectState`] on a `tokio::sync::watch` channel, and moves a session that
//!   fell back to TCP over to QUIC once QUIC gets through again (streams open on TCP
//!   finish there first).
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

mod backoff;
mod dialer;
mod listener;
mod memory;
mod reconnect;

pub use backoff::Backoff;
pub use dialer::{DEFAULT_ATTEMPT_DELAY, Dialer, SUPERSEDED};
pub use listener::Listener;
pub use memory::{INITIAL_QUIC_PENALTY, MAX_QUIC_PENALTY, MAX_TARGETS, Target, TransportMemory};
pub use reconnect::{ReconnectConfig, ReconnectState, Reconnecting};
