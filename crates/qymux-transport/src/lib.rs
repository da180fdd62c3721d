//! The shared vocabulary of every Qymux backend.
//!
//! Qymux gives an agent behind NAT one encrypted, multiplexed **session** to a server,
//! over QUIC or over TLS-on-TCP with yamux. This crate holds no backend code; it defines
//! what every backend offers, so that code written against it runs on either:
//!
//! - [`Session`]: open and accept [`Stream`]s, addresses, the peer's verified identity,
//!   graceful close and the reason a session ended; [`Session::incoming`] gives the
//!   streams the peer opens as a [`futures::Stream`] ([`Incoming`]);
//! - [`Stream`]: tokio `AsyncRead + AsyncWrite`, half-close with `shutdown`, and
//!   [`Stream::abort`], which the peer sees as an error;
//! - [`Listener`]: accepts sessions;
//! - [`Options`]: timeouts, keep-alive and limits shared by the backends, and the
//!   [`Proxy`] an agent's TCP connections go through;
//! - [`Error`]: one error type saying what failed, convertible to [`std::io::Error`];
//! - [`BoxSession`], [`BoxStream`], [`BoxListener`]: type-erased forms, for a transport
//!   chosen at run time.
//!
//! # Writing code for any backend
//!
//! ```
//! use qymux_transport::{Result, Session};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! /// Sends `request` on a new stream and returns the whole reply.
//! async fn call<S: Session>(session: &S, request: &[u8]) -> Result<Vec<u8>> {
//!     let mut stream = session.open().await?;
//!     stream.write_all(request).await?;
//!     stream.shutdown().await?; // the peer reads EOF after the request
//!     let mut reply = Vec::new();
//!     stream.read_to_end(&mut reply).await?; // an error, not EOF, if the peer aborts
//!     Ok(reply)
//! }
//! ```
#![deny(missing_docs)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod admission;
mod boxed;
mod error;
mod escape;
pub mod eyeballs;
mod incoming;
mod options;
pub mod proxy;
pub mod registry;
mod session;

pub use boxed::{BoxListener, BoxSession, BoxStream};
pub use error::{Error, ErrorReport, HandshakeError, Limit, Result, TimeoutKind};
pub use escape::{PeerText, escape_peer_text};
pub use incoming::Incoming;
pub use options::{DEFAULT_MAX_SESSIONS, Options, QuicRetry, Secret};
pub use proxy::{Proxy, ProxyError};
pub use rustls_pki_types::CertificateDer;
pub use session::{
    CertificateNames, CloseReason, Listener, Mode, PeerIdentity, Protocol, Session, SessionStats,
    Stream, Verification, next_session_id,
};

/// The ALPN protocol id every Qymux connection negotiates, on TLS and on QUIC.
pub const ALPN: &[u8] = b"qymux";
