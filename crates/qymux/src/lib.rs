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
//! use qymux::{ClientConfig, Qymux, ServerConfig, Session};
//! use qymux::cert::CertificateAuthority;
//! use qymux::tls::{ClientTls, ServerTls};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Certificates: a CA that signs the server's certificate; agents trust the CA.
//! let ca = CertificateAuthority::new("Example CA")?;
//! let server = ServerConfig::new(ServerTls::new(ca.issue_server(&["localhost"])?));
//! let listener = Qymux::listen("127.0.0.1:0", server).await?; // UDP and TCP, same port
//!
//! let mut client = ClientConfig::new(listener.local_addr().to_string());
//! client
//!     .server_name("localhost")
//!     .client_tls(ClientTls::with_ca(vec![ca.certificate().clone()]));
//! let agent = Qymux::new(client);
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
//!   servers ([`ClientConfig::more_server_addrs`]), runs a callback on every new session, publishes
//!   its [`ReconnectState`] on a `tokio::sync::watch` channel, and moves a session that
//!   fell back to TCP over to QUIC when QUIC gets through again.
//! - **Agents behind proxies.** Where only an HTTP proxy gets out, [`ClientConfig::proxy`]
//!   sends the TCP connection through an HTTP CONNECT or SOCKS5 proxy, with credentials
//!   ([`Proxy`]); the environment (`HTTPS_PROXY`, `NO_PROXY`) only when asked.
//! - **Servers shut down gracefully.** [`Listener::shutdown`](dialer::Listener::shutdown)
//!   stops accepting, then closes each session once its streams are finished (or a
//!   grace period ends); [`Options::max_sessions`] caps the sessions a listener holds.
//!
//! # Staying connected
//!
//! ```no_run
//! use qymux::{ClientConfig, Qymux, ReconnectConfig, ReconnectState, Session};
//! use qymux::tls::ClientTls;
//!
//! # async fn agent() -> qymux::Result<()> {
//! let mut config = ClientConfig::new("tunnel-a.example.com:4433");
//! config
//!     .more_server_addrs(["tunnel-b.example.com:4433"])
//!     .client_tls(ClientTls::with_system_roots());
//! let qymux = Qymux::new(config);
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
//! A build compiles only what its features ask for. The defaults (`auto`, `ring`,
//! `webpki-roots`, `native-roots`, `cert-gen`) give both transports, every way to trust
//! a server, and certificate generation.
//!
//! | feature | default | gives |
//! |---|---|---|
//! | **Transports** | | |
//! | `auto` | yes | [`Qymux`], [`ServerConfig`], [`ClientConfig`]: QUIC raced against TCP, one listener for both; enables `tcp` and `quic` |
//! | `tcp` | via `auto` | [`tcp`]: the TLS + yamux backend alone |
//! | `quic` | via `auto` | [`quic`]: the QUIC backend alone |
//! | **Crypto provider** (exactly one is used) | | |
//! | `ring` | yes | *ring* for rustls, quinn, fingerprints, key checks and certificate generation |
//! | `aws-lc-rs` | no | aws-lc-rs instead of *ring* (it needs a C compiler to build); when both are on, *ring* is used |
//! | **Trusting servers with a public certificate** | | |
//! | `webpki-roots` | yes | `tls::ClientTls::with_webpki_roots`: the Mozilla roots, bundled into the binary |
//! | `native-roots` | yes | `tls::ClientTls::with_system_roots`: the operating system's store, which [`Qymux::dial`] trusts when `client_tls` is not set (without the feature, dialing needs `client_tls`); with `http`, what the reverse proxy trusts for an `https` target by default |
//! | **Certificates** | | |
//! | `cert-gen` | yes | making certificates with rcgen: `cert::CertificateAuthority`, `cert::self_signed`, the development set and CRLs. Without it, [`cert`] still reads, writes and fingerprints PEM files made elsewhere |
//! | **On top of sessions** | | |
//! | `grpc` | no | `grpc`: tonic channel over a session, tonic server on a session |
//! | `http` | no | `http`: hyper client and connector over a session, serving any hyper service on a session, reverse proxy on a session |
//! | `axum` | no | `http::axum`: `axum::serve` on a session's incoming streams; enables `http` |
//! | `forward` | no | `forward`: TCP port forwarding both ways, a reconnecting tunnel |
//!
//! With no provider feature the build stops with a `compile_error!` that says so. Qymux
//! hands its provider to every rustls config it builds, so having both compiled in is
//! harmless. Combinations users pick, each built by CI (`.ci/run`), with
//! `default-features = false`:
//!
//! - `["auto", "ring"]`: both transports, trusting your own CA or pinned certificates
//!   loaded from PEM files; no root store and no rcgen in the binary.
//! - `["auto", "aws-lc-rs", "webpki-roots", "native-roots", "cert-gen"]`: the defaults on
//!   aws-lc-rs, without *ring* (CI also runs sessions on it).
//! - `["tcp", "ring", "webpki-roots"]`: TLS over TCP alone, to servers with a public
//!   certificate.
//! - `["quic", "ring"]`: QUIC alone.
//! - `["auto", "aws-lc-rs", "grpc", "http", "axum", "forward"]`: everything on top of
//!   sessions, on aws-lc-rs.
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
pub use config::{ClientConfig, ServerConfig};
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
