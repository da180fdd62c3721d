//! Reverse tunnels: an agent dials once, and both sides open streams on one encrypted,
//! multiplexed session.
//!
//! An agent behind NAT or a firewall cannot be reached from outside, but it can dial out.
//! Qymux turns that one outgoing connection into a **session** on which *either* side
//! opens **streams** and runs gRPC, HTTP or raw bytes; typically the server calls a
//! service that the agent serves through the tunnel.
//!
//! A session runs over QUIC (UDP) or, where UDP is blocked, over TLS-on-TCP with yamux.
//! Both are wire-compatible with the Go Qymux. In [`Mode::Auto`] (the default) the
//! dialer races QUIC against TCP and remembers where QUIC does not get through, so it
//! connects on any network about as fast as a plain TCP dial; [`Session::protocol`]
//! says which transport won.
//!
//! # Getting started
//!
//! ```
//! use qymux::{Config, Qymux, Session};
//! use qymux::cert::CertificateAuthority;
//! use qymux::tls::{ClientTls, ServerTls};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Certificates: a CA that signs the server's certificate; agents trust the CA.
//! let ca = CertificateAuthority::new("Example CA")?;
//! let server = Qymux::new(
//!     Config::new().server_tls(ServerTls::new(ca.issue_server(&["localhost"])?)),
//! );
//! let listener = server.listen("127.0.0.1:0").await?; // UDP and TCP, same port
//!
//! let agent = Qymux::new(
//!     Config::new()
//!         .server_addr(listener.local_addr().to_string())
//!         .server_name("localhost")
//!         .client_tls(ClientTls::with_ca(vec![ca.certificate().clone()])),
//! );
//! let (session, accepted) = tokio::join!(agent.dial(), listener.accept());
//! let (session, accepted) = (session?, accepted?);
//! println!("connected over {}", session.protocol());
//!
//! // The server opens a stream to the agent: the reverse direction tunnels are for.
//! let mut to_agent = accepted.open().await?;
//! to_agent.write_all(b"hello, agent").await?;
//! to_agent.shutdown().await?;
//! let mut from_server = session.accept().await?;
//! let mut message = String::new();
//! from_server.read_to_string(&mut message).await?;
//! assert_eq!(message, "hello, agent");
//! # Ok(())
//! # }
//! ```
//!
//! # What you get
//!
//! - **Secure by default.** The dialer verifies the server: a CA, the system roots, or a
//!   pinned SHA-256 fingerprint ([`tls::ClientTls`]). Skipping verification exists only
//!   in [`tls::dangerous`]. Optional mTLS puts the agent's verified certificate on the
//!   server's session ([`Session::peer_identity`]).
//! - **Streams behave.** A stream is visible to the peer as soon as `open` returns; a
//!   read ends with EOF only when the peer finished its side; a reset or a lost session
//!   is an error, never a silent EOF.
//! - **Every wait has a bound** and every resource a cap ([`Options`]): connect and
//!   handshake timeouts, keep-alive and dead-peer timeout, graceful close, streams per
//!   session, handshakes in progress.
//! - **One error type** ([`Error`]) that says what failed, convertible to `io::Error`.
//! - **Agents stay connected.** [`Qymux::connect_forever`] keeps a session up: it
//!   redials with exponential backoff and full jitter, moves on to the next of several
//!   servers ([`Config::server_addrs`]), runs a callback on every new session, publishes
//!   its [`ReconnectState`] on a `tokio::sync::watch` channel, and moves a session that
//!   fell back to TCP over to QUIC when QUIC gets through again.
//! - **Agents behind proxies.** Where only an HTTP proxy gets out, [`Config::proxy`]
//!   sends the TCP connection through an HTTP CONNECT or SOCKS5 proxy, with credentials
//!   ([`Proxy`]); the environment (`HTTPS_PROXY`, `NO_PROXY`) only when asked.
//! - **Servers shut down gracefully.** [`Listener::shutdown`](dialer::Listener::shutdown)
//!   stops accepting, then closes each session once its streams are finished (or a
//!   grace period ends); [`Options::max_sessions`] caps the sessions a listener holds.
//!
//! # Staying connected
//!
//! ```no_run
//! use qymux::{Config, Qymux, ReconnectConfig, ReconnectState, Session};
//! use qymux::tls::ClientTls;
//!
//! # async fn agent() -> qymux::Result<()> {
//! let qymux = Qymux::new(
//!     Config::new()
//!         .server_addrs(["tunnel-a.example.com:4433", "tunnel-b.example.com:4433"])
//!         .client_tls(ClientTls::with_system_roots()),
//! );
//! let agent = qymux.connect_forever(ReconnectConfig::default(), |session| async move {
//!     // Runs on every new session: serve what the server opens until it ends.
//!     while let Ok(stream) = session.accept().await {
//!         tokio::spawn(async move { drop(stream) });
//!     }
//! })?;
//! let mut state = agent.state();
//! while state.changed().await.is_ok() {
//!     match &*state.borrow() {
//!         ReconnectState::Connected { server, protocol, .. } => {
//!             tracing::info!(%server, %protocol, "connected")
//!         }
//!         ReconnectState::Reconnecting { retry_in, last_error, .. } => {
//!             tracing::warn!(?retry_in, %last_error, "lost the session")
//!         }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! | feature | default | gives |
//! |---|---|---|
//! | `auto` | yes | [`Qymux`], [`Config`]; enables `tcp` and `quic` |
//! | `tcp` | via `auto` | [`tcp`]: the TLS + yamux backend alone |
//! | `quic` | via `auto` | [`quic`]: the QUIC backend alone |
//! | `grpc` | no | `grpc`: tonic channel over a session, tonic server on a session |
//! | `http` | no | `http`: hyper client and connector over a session, serving any hyper service on a session, reverse proxy on a session |
//! | `axum` | no | `http::axum`: `axum::serve` on a session's incoming streams; enables `http` |
//! | `forward` | no | `forward`: TCP port forwarding both ways, a reconnecting tunnel |
//! | `ring` | yes | the *ring* crypto provider (rustls, quinn, rcgen) |
//! | `aws-lc-rs` | no | the aws-lc-rs provider; ring is used when both are on |
//! | `webpki-roots` | yes | `tls::ClientTls::with_webpki_roots` (bundled Mozilla roots) |
//! | `native-roots` | yes | `tls::ClientTls::with_system_roots`; the dialer's default trust |
//!
//! One crypto provider is needed: `--no-default-features --features auto,aws-lc-rs`
//! builds Qymux on aws-lc-rs without ring.
//!
//! Each backend also works on its own: `qymux-tcp` or `qymux-quic` as the only
//! dependency (plus `qymux-tls` for the configs) gives a working session.
#![deny(missing_docs)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

#[cfg(feature = "auto")]
mod config;
#[cfg(feature = "auto")]
mod qymux;

#[cfg(feature = "auto")]
pub use config::Config;
#[cfg(feature = "auto")]
pub use qymux::{Listener, Qymux};
#[cfg(feature = "auto")]
#[doc(inline)]
pub use qymux_dialer::{Backoff, ReconnectConfig, ReconnectState, Reconnecting};

#[doc(inline)]
pub use qymux_transport::{
    ALPN, BoxListener, BoxSession, BoxStream, CertificateNames, CloseReason, Error, ErrorReport,
    HandshakeError, Incoming, Limit, Mode, Options, PeerIdentity, PeerText, Protocol, Proxy,
    ProxyError, Result, Session, Stream, TimeoutKind, Verification, escape_peer_text,
};

/// Certificates: a CA, server and client certificates, PEM, fingerprints.
#[doc(inline)]
pub use qymux_cert as cert;
/// TLS configurations: CA, roots, pinning, mTLS.
#[doc(inline)]
pub use qymux_tls as tls;
/// The shared traits and types every backend implements.
#[doc(inline)]
pub use qymux_transport as transport;

/// Auto mode: the QUIC/TCP race, the memory of failures, the dual listener.
#[cfg(feature = "auto")]
#[doc(inline)]
pub use qymux_dialer as dialer;
/// Port forwarding: TCP connections through sessions, both ways, and a reconnecting tunnel.
#[cfg(feature = "forward")]
#[doc(inline)]
pub use qymux_forward as forward;
/// gRPC over sessions: a tonic channel whose connections are streams, serving on a session.
#[cfg(feature = "grpc")]
#[doc(inline)]
pub use qymux_grpc as grpc;
/// HTTP over sessions: a hyper client whose connections are streams, a reverse proxy.
#[cfg(feature = "http")]
#[doc(inline)]
pub use qymux_http as http;
/// The QUIC backend.
#[cfg(feature = "quic")]
#[doc(inline)]
pub use qymux_quic as quic;
/// The TLS-over-TCP + yamux backend.
#[cfg(feature = "tcp")]
#[doc(inline)]
pub use qymux_tcp as tcp;
